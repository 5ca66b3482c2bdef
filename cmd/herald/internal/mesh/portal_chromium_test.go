package mesh_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// chromeAnswer is one answer of tests/portal/portal.mjs.
type chromeAnswer struct {
	Seq            int            `json:"seq"`
	Kind           string         `json:"kind"`
	Error          string         `json:"error"`
	Text           string         `json:"text"`
	URL            string         `json:"url"`
	State          string         `json:"state"`
	View           string         `json:"view"`
	Message        string         `json:"message"`
	Notice         string         `json:"notice"`
	SigninError    string         `json:"signinError"`
	Who            string         `json:"who"`
	DocumentCookie string         `json:"documentCookie"`
	Foreign        []string       `json:"foreign"`
	Elements       []chromeElem   `json:"elements"`
	Status         int            `json:"status"`
	ContentType    string         `json:"contentType"`
	Body           string         `json:"body"`
	Filename       string         `json:"filename"`
	Failure        string         `json:"failure"`
	Cookies        []chromeCookie `json:"cookies"`
}

type chromeElem struct {
	Tag      string            `json:"tag"`
	Text     string            `json:"text"`
	Value    string            `json:"value"`
	Href     string            `json:"href"`
	Checked  bool              `json:"checked"`
	Disabled bool              `json:"disabled"`
	Visible  bool              `json:"visible"`
	Data     map[string]string `json:"data"`
}

type chromeCookie struct {
	Name     string `json:"name"`
	Value    string `json:"value"`
	Path     string `json:"path"`
	HTTPOnly bool   `json:"httpOnly"`
	SameSite string `json:"sameSite"`
}

// chrome is a running portal.mjs: one browser, one page.
type chrome struct {
	t       *testing.T
	node    *nodehook.Script
	seq     int
	console []string
	secrets []string // never printed
}

func (b *chrome) do(cmd map[string]any) chromeAnswer {
	b.t.Helper()
	b.seq++
	cmd["seq"] = b.seq
	raw, _ := json.Marshal(cmd)
	if _, err := fmt.Fprintf(b.node.Stdin, "%s\n", raw); err != nil {
		b.t.Fatalf("portal.mjs: %v; stderr:\n%s", err, b.node.Stderr())
	}
	shown := b.redact(string(raw))
	for {
		p := b.line("the answer to " + shown)
		if p.Kind == "console" {
			b.console = append(b.console, p.Text)
			b.t.Logf("page console: %s", b.redact(p.Text))
			continue
		}
		if p.Seq != b.seq {
			b.t.Fatalf("portal.mjs answered %d, want %d", p.Seq, b.seq)
		}
		if p.Kind == "error" {
			b.t.Fatalf("portal.mjs: %s: %s (page %s: state %q, view %q, message %q, notice %q, sign-in %q)",
				shown, b.redact(p.Error), p.URL, p.State, p.View, p.Message, p.Notice, p.SigninError)
		}
		return p
	}
}

func (b *chrome) redact(s string) string {
	for _, x := range b.secrets {
		if x != "" {
			s = strings.ReplaceAll(s, x, "<secret>")
		}
	}
	return strings.ReplaceAll(s, adminKey, "<admin key>")
}

func (b *chrome) line(what string) chromeAnswer {
	b.t.Helper()
	select {
	case s, ok := <-b.node.Lines:
		if !ok {
			b.t.Fatalf("portal.mjs exited waiting for %s; stderr:\n%s", what, b.node.Stderr())
		}
		var p chromeAnswer
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			b.t.Fatalf("portal.mjs printed %q", s)
		}
		return p
	case <-time.After(90 * time.Second):
		b.t.Fatalf("portal.mjs printed nothing for 90s waiting for %s; stderr:\n%s", what, b.node.Stderr())
		return chromeAnswer{}
	}
}

func tid(id string) string { return `[data-testid="` + id + `"]` }

func (b *chrome) open(u string) chromeAnswer {
	b.t.Helper()
	return b.do(map[string]any{"cmd": "open", "url": u})
}
func (b *chrome) click(sel string) { b.t.Helper(); b.do(map[string]any{"cmd": "click", "sel": sel}) }
func (b *chrome) fill(sel, v string) {
	b.t.Helper()
	b.do(map[string]any{"cmd": "fill", "sel": sel, "value": v})
}
func (b *chrome) choose(sel, v string) {
	b.t.Helper()
	b.do(map[string]any{"cmd": "select", "sel": sel, "value": v})
}
func (b *chrome) check(sel string) {
	b.t.Helper()
	b.do(map[string]any{"cmd": "check", "sel": sel, "checked": true})
}
func (b *chrome) read(sel string) []chromeElem {
	b.t.Helper()
	return b.do(map[string]any{"cmd": "read", "sel": sel}).Elements
}

// wait waits for an element matching sel with the given attributes
// ("k", "v", ...) and returns every match.
func (b *chrome) wait(sel string, attrs ...string) []chromeElem {
	b.t.Helper()
	a := map[string]string{}
	for i := 0; i+1 < len(attrs); i += 2 {
		a[attrs[i]] = attrs[i+1]
	}
	return b.do(map[string]any{"cmd": "wait", "sel": sel, "attrs": a}).Elements
}

// shown waits for a visible element matching sel and returns every
// match.
func (b *chrome) shown(sel string) []chromeElem {
	b.t.Helper()
	return b.do(map[string]any{"cmd": "wait", "sel": sel, "visible": true}).Elements
}

// view waits until the page shows view, loaded.
func (b *chrome) view(name string) {
	b.t.Helper()
	b.wait(`#app[data-view="` + name + `"]`)
	if name != "notfound" && name != "signedout" {
		b.wait(tid("view-"+name), "data-state", "ready")
	}
}

// fetch runs fetch() in the page: its origin, its cookies.
func (b *chrome) fetch(method, path string, headers map[string]string, body string) (int, string) {
	b.t.Helper()
	cmd := map[string]any{"cmd": "fetch", "method": method, "path": path, "headers": headers}
	if body != "" {
		cmd["body"] = body
	}
	p := b.do(cmd)
	return p.Status, p.Body
}

// rpc calls a method through the portal's proxy with the session's CSRF
// token; it returns the status and the JSON answer.
func (b *chrome) rpc(csrf, method string, req any) (int, map[string]any) {
	b.t.Helper()
	raw, _ := json.Marshal(req)
	h := map[string]string{"Content-Type": "application/json"}
	if csrf != "" {
		h["X-Herald-CSRF"] = csrf
	}
	status, body := b.fetch("POST", "/portal/rpc/"+method, h, string(raw))
	var out map[string]any
	_ = json.Unmarshal([]byte(body), &out)
	return status, out
}

// csrf reads the session (GET /portal/session) as the page would.
func (b *chrome) session() (int, map[string]any) {
	b.t.Helper()
	status, body := b.fetch("GET", "/portal/session", nil, "")
	var out map[string]any
	_ = json.Unmarshal([]byte(body), &out)
	return status, out
}

// shot saves a screenshot of the page when HERALD_PORTAL_SCREENSHOTS names
// a directory (to look at the page; the test asserts nothing on them).
func (b *chrome) shot(name string) {
	b.t.Helper()
	if dir := os.Getenv("HERALD_PORTAL_SCREENSHOTS"); dir != "" {
		b.do(map[string]any{"cmd": "screenshot", "path": filepath.Join(dir, name+".png")})
	}
}

func one(t *testing.T, what string, els []chromeElem) chromeElem {
	t.Helper()
	if len(els) != 1 {
		t.Fatalf("%s: %d elements, want 1: %+v", what, len(els), els)
	}
	return els[0]
}

// The consumer portal in Debian's headless Chromium, from a portal link to
// signed webhooks, and what it keeps out of reach: two tenants' partner
// applications, a type only internal applications see; a forged link is
// refused; the operator's link signs application A in (HttpOnly cookie,
// link gone from the address bar); A sees its catalog (not the internal
// type), a schema diff, examples and prices; subscribes a local receiver
// to a type with a filter checked live against the examples; sends test
// events (one delivered, signed, its attempt shown with the receiver's
// status, header and body; one filtered out; one refused by the schema);
// replays and retries it (same webhook-id); rotates the secret (shown once,
// the next deliveries verify with it and not with the old one); disables
// and enables the endpoint; creates and revokes a key; streams over SSE
// with a minted browser token; sees its usage, quota and invoices
// (downloads one). B's types, endpoint and invoice are not reachable by URL
// nor through the API with A's session; calls without the CSRF token are
// refused; a spent link and an expired one sign nobody in.
func TestPortalInChromium(t *testing.T) {
	e := startWebhooks(t)
	ctx := context.Background()
	origin := rpc.BaseURL(e.common.EdgeAddr)
	bill := meteringv1connect.NewBillingServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.MeteringAddr), rpc.ClientOptions(adminKey)...)
	quotas := meteringv1connect.NewQuotaServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.MeteringAddr), rpc.ClientOptions(adminKey)...)

	// The catalog.
	if _, err := e.reg.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: &registryv1.Domain{
		Name: "shipping", Description: "Parcels on their way.", Owner: "logistics",
	}})); err != nil {
		t.Fatal(err)
	}
	const (
		sent  = "shipping.parcel.sent"
		lost  = "shipping.parcel.lost"
		audit = "shipping.audit.logged"
	)
	sentV1 := `{"type":"object","required":["parcel_id","weight_kg"],"properties":{"parcel_id":{"type":"string"},"weight_kg":{"type":"number","minimum":0}}}`
	sentV2 := `{"type":"object","required":["parcel_id","weight_kg"],"properties":{"parcel_id":{"type":"string"},"weight_kg":{"type":"number","minimum":0},"carrier":{"type":"string"}}}`
	for _, et := range []*registryv1.EventType{
		{Name: sent, Description: "A parcel left the warehouse.", Schema: sentV1, Visibility: registryv1.Visibility_VISIBILITY_PARTNER, Owner: "logistics",
			Compatibility: registryv1.Compatibility_COMPATIBILITY_NONE,
			Examples: []*registryv1.Example{
				{Name: "heavy", Summary: "A 12 kg parcel.", Data: `{"parcel_id":"p-heavy","weight_kg":12}`},
				{Name: "light", Summary: "A 2 kg parcel.", Data: `{"parcel_id":"p-light","weight_kg":2}`},
			}},
		{Name: lost, Description: "A parcel was lost.", Schema: `{"type":"object"}`, Visibility: registryv1.Visibility_VISIBILITY_PUBLIC},
		{Name: audit, Description: "Internal audit trail.", Schema: `{"type":"object"}`, Visibility: registryv1.Visibility_VISIBILITY_INTERNAL},
	} {
		if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et})); err != nil {
			t.Fatalf("create %s: %v", et.GetName(), err)
		}
	}
	if _, err := e.reg.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: sent, Schema: sentV2})); err != nil {
		t.Fatal(err)
	}
	got, err := e.reg.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: lost}))
	if err != nil {
		t.Fatal(err)
	}
	sunset := time.Now().UTC().AddDate(0, 3, 0).Truncate(24 * time.Hour)
	lostType := got.Msg.GetEventType()
	lostType.Lifecycle, lostType.SunsetTime = registryv1.Lifecycle_LIFECYCLE_DEPRECATED, timestamppb.New(sunset)
	if _, err := e.reg.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: lostType})); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: &registryv1.Product{
		Name: "parcels", Description: "Every parcel event.", EventTypes: []string{"shipping.parcel.*"},
	}})); err != nil {
		t.Fatal(err)
	}

	// Two partner applications in two tenants, and a producer.
	newApp := func(name, tenant string, audience registryv1.Audience, grants ...*registryv1.Grant) (*registryv1.Application, string) {
		t.Helper()
		res, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
			Name: name, Tenant: tenant, Audience: audience, Grants: grants,
		}}))
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		return res.Msg.GetApplication(), res.Msg.GetKey().GetSecret()
	}
	subscribeAll := &registryv1.Grant{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "shipping.*"}
	appA, _ := newApp("acme-shop", "acme", registryv1.Audience_AUDIENCE_PARTNER, subscribeAll)
	appB, _ := newApp("globex-ops", "globex", registryv1.Audience_AUDIENCE_INTERNAL, subscribeAll)
	_, makerKey := newApp("parcel-maker", "logistics", registryv1.Audience_AUDIENCE_INTERNAL,
		&registryv1.Grant{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "shipping.*"})

	// B's endpoint and both tenants' invoices (last month, a monthly fee).
	bReceiver := newReceiver(t, nil)
	bSub, _ := e.createEndpointOf(t, appB.GetId(), &registryv1.WebhookChannel{Url: bReceiver.URL + "/b"}, audit)
	lastMonth := time.Now().UTC().AddDate(0, 0, -time.Now().UTC().Day()).Format("2006-01")
	if _, err := bill.CreatePlan(ctx, connect.NewRequest(&meteringv1.CreatePlanRequest{PlanId: "starter", Name: "Starter", Version: &meteringv1.PlanVersion{
		Currency: "EUR", MonthlyFeeMinor: 1900, IncludedUnits: 100, DefaultUnitPriceMinor: 2,
		Rules: []*meteringv1.PriceRule{{Product: "parcels", Model: meteringv1.PricingModel_PRICING_MODEL_FLAT, UnitPriceMinor: 5}},
	}})); err != nil {
		t.Fatal(err)
	}
	invoiceOf := map[string]string{}
	for _, id := range []string{appA.GetId(), appB.GetId()} {
		if _, err := bill.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: id, PlanId: "starter", PlanVersion: 1, StartMonth: lastMonth})); err != nil {
			t.Fatal(err)
		}
		res, err := bill.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{ApplicationId: id, Month: lastMonth}))
		if err != nil {
			t.Fatal(err)
		}
		invoiceOf[id] = res.Msg.GetInvoice().GetId()
	}
	aInvoice, bInvoice := invoiceOf[appA.GetId()], invoiceOf[appB.GetId()]
	if _, err := quotas.SetQuota(ctx, connect.NewRequest(&meteringv1.SetQuotaRequest{Quota: &meteringv1.Quota{
		Scope: meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, Subject: appA.GetId(), Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED,
		Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY, Limit: 1000, Mode: meteringv1.QuotaMode_QUOTA_MODE_SOFT,
	}})); err != nil {
		t.Fatal(err)
	}

	// Portal links for A: one to use, one to expire.
	mint := func(ttl time.Duration) *registryv1.CreatePortalLinkResponse {
		t.Helper()
		req := &registryv1.CreatePortalLinkRequest{ApplicationId: appA.GetId()}
		if ttl > 0 {
			req.LinkTtl = durationpb.New(ttl)
		}
		res, err := e.reg.CreatePortalLink(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatalf("CreatePortalLink: %v", err)
		}
		if want := origin + "/portal/#link=" + res.Msg.GetToken(); res.Msg.GetUrl() != want || !strings.HasPrefix(res.Msg.GetToken(), "hpl_") {
			t.Fatalf("portal link %q (token %q), want %q", res.Msg.GetUrl(), res.Msg.GetToken(), want)
		}
		return res.Msg
	}
	expiring := mint(time.Minute)
	link := mint(0)

	// A local receiver: 202, a header and a body of its own (500 while
	// failing).
	var failing atomic.Bool
	receiver := newResponder(t, func(_ int, _ hit, w http.Header) int {
		w.Set("X-Receiver", "portal-test")
		if failing.Load() {
			return http.StatusInternalServerError
		}
		return http.StatusAccepted
	})

	node := nodehook.Run(t, "portal", "portal.mjs", "playwright-core", "PORTAL_ORIGIN="+origin)
	b := &chrome{t: t, node: node, secrets: []string{link.GetToken(), expiring.GetToken()}}
	if p := b.line("ready"); p.Kind != "ready" {
		t.Fatalf("portal.mjs: first line %+v; stderr:\n%s", p, node.Stderr())
	}

	// Without a session or link: the page says how to get in.
	b.open("/portal/")
	b.view("signedout")
	// A forged link is refused, and leaves the address bar.
	b.open("/portal/#link=hpl_forged0123456789abcdefghijklmnopqrstuvwxyz")
	b.wait(`#app[data-signin="refused"]`)
	p := b.do(map[string]any{"cmd": "read", "sel": "#app"})
	if p.State != "signed-out" || !strings.Contains(p.SigninError, "refused") || strings.Contains(p.URL, "#link") {
		t.Fatalf("forged link: state %q, sign-in message %q, URL %s", p.State, p.SigninError, p.URL)
	}

	// The operator's link signs A in.
	b.open(link.GetUrl())
	b.view("catalog")
	p = b.do(map[string]any{"cmd": "cookies"})
	if strings.Contains(p.URL, "link=") || !strings.HasSuffix(p.URL, "/portal/#catalog") {
		t.Fatalf("after sign-in the address bar shows %s", b.redact(p.URL))
	}
	if p.DocumentCookie != "" {
		t.Fatalf("the page's script sees the cookie %q: it must be HttpOnly", p.DocumentCookie)
	}
	var session *chromeCookie
	for i, c := range p.Cookies {
		if c.Name == "herald_portal" {
			session = &p.Cookies[i]
			b.secrets = append(b.secrets, c.Value)
		}
	}
	if session == nil || !session.HTTPOnly || session.SameSite != "Strict" || session.Path != "/portal" {
		t.Fatalf("session cookie %+v, want HttpOnly, SameSite=Strict, Path=/portal", session)
	}
	if who := one(t, "who", b.read(tid("who"))); who.Data["data-app-id"] != appA.GetId() || who.Data["data-tenant"] != "acme" {
		t.Fatalf("signed in as %+v, want %s of acme", who, appA.GetId())
	}
	status, info := b.session()
	csrf, _ := info["csrf"].(string)
	if status != http.StatusOK || csrf == "" {
		t.Fatalf("GET /portal/session: %d %v", status, info)
	}
	b.secrets = append(b.secrets, csrf)
	// A forged link while signed in is refused too; the page offers the
	// session the cookie holds.
	b.open("/portal/#link=hpl_forged-while-signed-in")
	b.wait(`#app[data-signin="refused"]`)
	b.click(tid("signin-resume"))
	b.view("catalog")

	// The catalog A may see: not the internal type (nor the test's
	// internal billing type).
	var names []string
	for _, r := range b.read(tid("types") + " tr[data-name]") {
		names = append(names, r.Data["data-name"])
	}
	if !slices.Equal(names, []string{lost, sent}) {
		t.Fatalf("catalog shows types %v, want %v", names, []string{lost, sent})
	}
	lostRow := one(t, "the lost row", b.read(tid("types")+` tr[data-name="`+lost+`"]`))
	if lostRow.Data["data-lifecycle"] != "LIFECYCLE_DEPRECATED" || !strings.Contains(lostRow.Text, "sunset "+sunset.Format("2006-01-02")) {
		t.Fatalf("deprecated type shown as %+v", lostRow)
	}
	b.shot("catalog")
	one(t, "the shipping domain", b.read(tid("domains")+` tr[data-name="shipping"]`))
	product := one(t, "the parcels product", b.read(tid("products")+` tr[data-name="parcels"]`))
	if !strings.Contains(product.Text, "Starter: 0.05 EUR per event") {
		t.Fatalf("product row %q does not show the Starter plan's price", product.Text)
	}
	// The AsyncAPI document of what A sees.
	dl := b.do(map[string]any{"cmd": "download", "sel": tid("asyncapi")})
	if dl.Failure != "" || !strings.Contains(dl.Body, sent) || strings.Contains(dl.Body, audit) {
		t.Fatalf("AsyncAPI download %q (failure %q): %.300s", dl.Filename, dl.Failure, dl.Body)
	}

	// Typed clients of what A sees, and the APIs.json of its APIs.
	b.fill(tid("codegen-types"), "shipping.*")
	dl = b.do(map[string]any{"cmd": "download", "sel": tid("codegen-ts")})
	if dl.Failure != "" || !strings.HasSuffix(dl.Filename, ".ts") || !strings.Contains(dl.Body, sent) || strings.Contains(dl.Body, audit) {
		t.Fatalf("TypeScript download %q (failure %q): %.300s", dl.Filename, dl.Failure, dl.Body)
	}
	dl = b.do(map[string]any{"cmd": "download", "sel": tid("codegen-go")})
	if dl.Failure != "" || !strings.HasSuffix(dl.Filename, ".zip") || !strings.HasPrefix(dl.Body, "PK") {
		t.Fatalf("Go download %q (failure %q): %d bytes", dl.Filename, dl.Failure, len(dl.Body))
	}
	dl = b.do(map[string]any{"cmd": "download", "sel": tid("apis-json")})
	var apis map[string]any
	if dl.Failure != "" || json.Unmarshal([]byte(dl.Body), &apis) != nil || apis["apis"] == nil {
		t.Fatalf("APIs.json download %q (failure %q): %.300s", dl.Filename, dl.Failure, dl.Body)
	}

	// One type: versions, their diff, examples.
	b.click(`a[href="#type/` + sent + `"]`)
	b.view("type")
	diff := one(t, "the diff", b.read(tid("schema-diff")))
	if diff.Data["data-from"] != "1" || diff.Data["data-to"] != "2" || diff.Data["data-added"] == "0" {
		t.Fatalf("schema diff %+v", diff.Data)
	}
	added := b.read(tid("schema-diff") + ` div[data-op="+"]`)
	if !anyText(added, `"carrier"`) {
		t.Fatalf("the diff adds %+v, want the carrier property", added)
	}
	b.shot("type")
	if ex := b.read(tid("example")); len(ex) != 2 || ex[0].Data["data-name"] != "heavy" || !strings.Contains(ex[0].Text, `"weight_kg": 12`) {
		t.Fatalf("examples %+v", ex)
	}

	// Subscribe the receiver to it with a filter, checked live.
	b.click(tid("type-subscribe"))
	b.view("subscriptions")
	if !one(t, "the preselected type", b.read(`#subtypes input[value="`+sent+`"]`)).Checked {
		t.Fatal("Subscribe to this type did not preselect it")
	}
	b.fill(tid("sub-filter"), "data.weight_kg >")
	b.wait(tid("filter-verdict"), "data-state", "error")
	const filter = "data.weight_kg > 10"
	b.fill(tid("sub-filter"), filter)
	b.wait(tid("filter-verdict"), "data-state", "ok", "data-filter", filter, "data-type", sent)
	verdict := map[string]string{}
	for _, r := range b.read(tid("filter-result")) {
		verdict[r.Data["data-name"]] = r.Data["data-match"]
	}
	if verdict["heavy"] != "true" || verdict["light"] != "false" || len(verdict) != 2 {
		t.Fatalf("live filter verdict %v, want heavy delivered and light filtered out", verdict)
	}
	b.fill(tid("sub-url"), receiver.URL+"/hooks")
	b.choose(tid("sub-ordering"), "WEBHOOK_ORDERING_ORDERED")
	b.fill(tid("sub-rate"), "5")
	b.click(tid("sub-create"))
	created := b.shown(tid("sub-created") + `[data-id^="sub_"]`)
	subID := created[0].Data["data-id"]
	secret1 := one(t, "the new secret", b.read(tid("new-webhook-secret"))).Text
	b.secrets = append(b.secrets, secret1)
	if subID == "" || !strings.HasPrefix(secret1, webhook.PrefixSecret) {
		t.Fatalf("created %q with secret shown %v", subID, strings.HasPrefix(secret1, webhook.PrefixSecret))
	}
	stored, err := e.reg.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: subID}))
	if err != nil {
		t.Fatal(err)
	}
	if s := stored.Msg.GetSubscription(); s.GetApplicationId() != appA.GetId() || s.GetFilter() != filter || !slices.Equal(s.GetTypes(), []string{sent}) ||
		s.GetWebhook().GetOrdering() != registryv1.WebhookOrdering_WEBHOOK_ORDERING_ORDERED || s.GetWebhook().GetRateLimit() != 5 || s.GetWebhook().GetUrl() != receiver.URL+"/hooks" {
		t.Fatalf("the portal created %v", s)
	}
	one(t, "the new row", b.wait(tid("subs")+` tr[data-id="`+subID+`"]`))

	// The endpoint: a test event from the heavy example.
	b.click(tid("sub-created-link"))
	b.view("endpoint")
	b.choose(tid("test-type"), sent)
	b.choose(tid("test-example"), "0")
	b.wait(tid("test-validation"), "data-state", "valid")
	send := func() chromeElem {
		t.Helper()
		// The click sets data-state "sending" before the request goes.
		b.click(tid("test-send"))
		return b.wait(tid("test-result") + `:not([data-state="sending"])`)[0]
	}
	res := send()
	evID, cursor := res.Data["data-event-id"], res.Data["data-cursor"]
	if res.Data["data-state"] != "sent" || evID == "" || cursor == "" || res.Data["data-filtered-out"] != "false" {
		t.Fatalf("test event: %+v", res)
	}
	first := receiver.await(t, evID)
	if err := mustVerify(secret1, first); err != nil {
		t.Fatalf("the test event does not verify with the secret the portal showed: %v", err)
	}
	var ce map[string]any
	if err := json.Unmarshal(first.body, &ce); err != nil || ce["type"] != sent || ce["id"] != evID {
		t.Fatalf("delivered %s", first.body)
	}
	// Its attempt, with the receiver's answer.
	at := one(t, "the first attempt", b.wait(tid("attempt")+`[data-event-id="`+evID+`"]`, "data-status", "202"))
	if at.Data["data-success"] != "true" || at.Data["data-body"] != "answer 1" || at.Data["data-cursor"] != cursor || at.Data["data-number"] != "1" {
		t.Fatalf("attempt shown %+v", at.Data)
	}
	hdr := b.read(tid("attempt") + `[data-event-id="` + evID + `"] ` + tid("attempt-headers") + ` tr[data-name="x-receiver"]`)
	if len(hdr) != 1 || hdr[0].Data["data-value"] != "portal-test" {
		t.Fatalf("response headers shown %+v", hdr)
	}
	// And the request as sent: its signature headers.
	sig := b.read(tid("attempt") + `[data-event-id="` + evID + `"] ` + tid("attempt-request-headers") + ` tr[data-name="webhook-id"]`)
	if len(sig) != 1 || sig[0].Data["data-value"] != evID {
		t.Fatalf("request headers shown %+v", sig)
	}
	// The light example is filtered out: nothing sent.
	b.choose(tid("test-example"), "1")
	if res := send(); res.Data["data-state"] != "sent" || res.Data["data-filtered-out"] != "true" {
		t.Fatalf("filtered test event: %+v", res)
	}
	// Data that breaks the schema: the page says so, and so does the mesh.
	b.fill(tid("test-data"), `{"parcel_id": 5, "weight_kg": 20}`)
	b.wait(tid("test-validation"), "data-state", "invalid")
	if res := send(); res.Data["data-state"] != "refused" {
		t.Fatalf("a test event that breaks the schema: %+v", res)
	}

	// Replay it: the receiver gets it again with the same webhook-id.
	b.click(tid("attempt-replay") + `[data-cursor="` + cursor + `"]`)
	b.wait(tid("ep-action-result"), "data-state", "ok", "data-method", "Replay")
	testutil.Eventually(t, 20*time.Second, func() bool { return countID(receiver, evID) == 2 }, "the replayed delivery")
	// Its attempt shows up too, as a replay.
	b.wait(tid("attempt")+`[data-cursor="`+cursor+`"]`, "data-number", "2", "data-status", "202", "data-body", "answer 2", "data-trigger", "ATTEMPT_TRIGGER_REPLAY")
	// And retry it now.
	b.click(tid("attempt-retry") + `[data-cursor="` + cursor + `"]`)
	b.wait(tid("ep-action-result"), "data-state", "ok", "data-method", "RetryDelivery")
	testutil.Eventually(t, 20*time.Second, func() bool { return countID(receiver, evID) == 3 }, "the retried delivery")
	b.wait(tid("attempt")+`[data-cursor="`+cursor+`"]`, "data-trigger", "ATTEMPT_TRIGGER_MANUAL")
	for _, h := range receiver.got() {
		if err := mustVerify(secret1, h); err != nil {
			t.Fatalf("delivery %s does not verify: %v", h.header.Get("webhook-id"), err)
		}
	}

	// Rotate the secret, retiring the old one at once: the new one is
	// shown once; deliveries verify with it, and no longer with the old.
	b.choose(tid("ep-rotate-overlap"), "0s")
	b.click(tid("ep-rotate"))
	secret2 := one(t, "the rotated secret", b.wait(tid("ep-new-secret"))).Text
	b.secrets = append(b.secrets, secret2)
	if !strings.HasPrefix(secret2, webhook.PrefixSecret) || secret2 == secret1 {
		t.Fatal("the rotation showed no new whsec_ secret")
	}
	b.choose(tid("test-example"), "0")
	for i := 0; ; i++ {
		// The engine restarts the endpoint with the new secret a moment
		// after the change: probe until a delivery carries it.
		id := send().Data["data-event-id"]
		h := receiver.await(t, id)
		if mustVerify(secret2, h) == nil {
			if mustVerify(secret1, h) == nil {
				t.Fatal("after a rotation without overlap the old secret still verifies")
			}
			break
		}
		if i == 30 {
			t.Fatal("after 30 test events the deliveries still do not verify with the rotated secret")
		}
	}
	b.do(map[string]any{"cmd": "reload"})
	b.view("endpoint")
	if n := len(b.read(tid("ep-new-secret"))); n != 0 {
		t.Fatal("the rotated secret is shown again after a reload")
	}
	if strings.Contains(one(t, "the page", b.read("body")).Text, secret2) {
		t.Fatal("the page shows the rotated secret again")
	}

	// Disable and enable the endpoint.
	b.click(tid("ep-toggle"))
	b.wait(tid("view-endpoint"), "data-disabled", "true", "data-state", "ready")
	stored, err = e.reg.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: subID}))
	if err != nil || !stored.Msg.GetSubscription().GetWebhook().GetDisabled() {
		t.Fatalf("disabled in the page, stored %v %v", stored, err)
	}
	b.click(tid("ep-toggle"))
	b.wait(tid("view-endpoint"), "data-disabled", "false", "data-state", "ready")

	// A failing receiver: a test event is dead-lettered (the operator set a
	// short retry schedule), the page lists it, and its Replay delivers it
	// once the receiver answers again.
	if _, err := e.reg.UpdateSubscription(ctx, connect.NewRequest(&registryv1.UpdateSubscriptionRequest{
		Subscription: &registryv1.Subscription{Id: subID, Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{RetrySchedule: short(20*time.Millisecond, 20*time.Millisecond)}}},
		UpdateMask:   []string{"webhook.retry_schedule"},
	})); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the engine restarts the endpoint with the change
	failing.Store(true)
	doomed := send()
	doomedID, doomedCursor := doomed.Data["data-event-id"], doomed.Data["data-cursor"]
	dead := one(t, "the dead letter", b.wait(tid("deadletter")+`[data-event-id="`+doomedID+`"]`))
	if dead.Data["data-cursor"] != doomedCursor || countID(receiver, doomedID) != 3 {
		t.Fatalf("dead letter %+v after %d requests, want 3", dead.Data, countID(receiver, doomedID))
	}
	b.wait(tid("attempt")+`[data-event-id="`+doomedID+`"]`, "data-status", "500", "data-number", "3", "data-success", "false")
	b.shot("endpoint")
	failing.Store(false)
	b.click(tid("deadletter-replay") + `[data-cursor="` + doomedCursor + `"]`)
	testutil.Eventually(t, 20*time.Second, func() bool { return countID(receiver, doomedID) == 4 }, "the dead letter replayed")
	b.wait(tid("attempt")+`[data-event-id="`+doomedID+`"]`, "data-status", "202", "data-number", "4")

	// A stream subscription to a product, then deleted.
	b.click(tid("tab-subscriptions"))
	b.view("subscriptions")
	b.check(tid("sub-source-product"))
	b.choose(tid("sub-product"), "parcels")
	b.check(tid("sub-channel-stream"))
	b.fill(tid("sub-filter"), "")
	b.wait(tid("filter-verdict"), "data-state", "empty")
	b.click(tid("sub-create"))
	streamID := b.shown(tid("sub-created") + `[data-id^="sub_"]:not([data-id="` + subID + `"])`)[0].Data["data-id"]
	if n := len(b.read(tid("new-webhook-secret"))); n != 0 {
		t.Fatal("a stream subscription shows a webhook secret")
	}
	stream, err := e.reg.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: streamID}))
	if err != nil || stream.Msg.GetSubscription().GetStream() == nil || !slices.Equal(stream.Msg.GetSubscription().GetTypes(), []string{"shipping.parcel.*"}) ||
		stream.Msg.GetSubscription().GetApplicationId() != appA.GetId() {
		t.Fatalf("the product's stream subscription: %v %v", stream, err)
	}
	b.wait(tid("subs")+` tr[data-id="`+streamID+`"]`, "data-channel", "stream")
	b.shot("subscriptions")
	b.click(tid("sub-delete") + `[data-id="` + streamID + `"]`)
	b.click(tid("sub-delete") + `[data-id="` + streamID + `"]`)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(b.read(tid("subs")+` tr[data-id="`+streamID+`"]`)) == 0 }, "the deleted row gone")
	if _, err := e.reg.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: streamID})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("the deleted subscription: %v", err)
	}

	// Keys: one created (shown once, and it works), then revoked.
	b.click(tid("tab-keys"))
	b.view("keys")
	b.click(tid("key-create"))
	keyID := b.shown(tid("key-created") + `[data-id^="key_"]`)[0].Data["data-id"]
	newKey := one(t, "the new key", b.read(tid("new-key-secret"))).Text
	b.secrets = append(b.secrets, newKey)
	if _, err := e.router.Publish(withKey(newKey), &routerv1.PublishRequest{}); err != nil && strings.Contains(err.Error(), "nauthenticated") {
		t.Fatalf("the key the portal created does not authenticate: %v", err)
	}
	b.wait(tid("keys")+` tr[data-id="`+keyID+`"]`, "data-state", "active")
	b.click(tid("key-revoke") + `[data-id="` + keyID + `"]`)
	b.click(tid("key-revoke") + `[data-id="` + keyID + `"]`)
	b.wait(tid("keys")+` tr[data-id="`+keyID+`"]`, "data-state", "revoked")

	// A browser token and the SSE console: an event published by the
	// producer shows up.
	b.fill(tid("token-types"), sent)
	b.click(tid("sse-connect"))
	if st := b.wait(tid("sse-state") + `:not([data-state="connecting"])`)[0]; st.Data["data-state"] != "open" {
		t.Fatalf("the console's stream: %s (%s; token: %s)", st.Data["data-state"], one(t, "the note", b.read("#ssenote")).Text, b.redact(one(t, "the token", b.read(tid("token"))).Text))
	}
	pub, err := e.router.Publish(withKey(makerKey), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{{
		Id: "console-1", Source: "//warehouse", SpecVersion: "1.0", Type: sent,
		Data: &eventv1.CloudEvent_TextData{TextData: `{"parcel_id":"p-console","weight_kg":30}`},
	}}})
	if err != nil || pub.GetResults()[0].GetError() != nil {
		t.Fatalf("publish: %v %v", pub, err)
	}
	consoleCursor := pub.GetResults()[0].GetCursor()
	b.wait(tid("sse-event"), "data-cursor", consoleCursor, "data-type", sent)
	b.shot("keys")
	b.click(tid("sse-disconnect"))
	// The published event also reached the webhook (it passes the filter).
	receiver.await(t, "console-1")
	// A range of the log replayed from the endpoint's page: the one event
	// of its type that passes its filter.
	b.open("/portal/#endpoint/" + subID)
	b.view("endpoint")
	b.fill(tid("replay-after"), "0")
	b.fill(tid("replay-to"), consoleCursor)
	b.click(tid("replay-range"))
	if r := one(t, "the range replay", b.wait(tid("ep-action-result")+`:not([data-state="working"])`)); r.Data["data-state"] != "ok" || !strings.HasPrefix(r.Text, "1 event(s) queued") {
		t.Fatalf("range replay: %+v %q", r.Data, r.Text)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return countID(receiver, "console-1") == 2 }, "the range replayed")

	// Usage: what QueryUsage says for A, drawn by type and channel.
	b.click(tid("tab-usage"))
	b.view("usage")
	testutil.Eventually(t, 30*time.Second, func() bool {
		b.click(tid("usage-refresh"))
		b.view("usage")
		return len(b.read(tid("usage-table")+` tr[data-type="`+sent+`"][data-channel="sse"]`)) == 1 &&
			len(b.read(tid("usage-table")+` tr[data-type="`+sent+`"][data-channel="webhook"]`)) == 1
	}, "the console's and the webhook's deliveries in the usage table")
	b.shot("usage")
	if q := b.read(tid("quotas") + " tr[data-id]"); len(q) != 1 || q[0].Data["data-limit"] != "1000" {
		t.Fatalf("quotas shown %+v", q)
	}

	// Invoices: A's, downloadable; not B's.
	b.click(tid("tab-invoices"))
	b.view("invoices")
	var invs []string
	for _, r := range b.read(tid("invoices") + " tr[data-id]") {
		invs = append(invs, r.Data["data-id"])
	}
	if !slices.Equal(invs, []string{aInvoice}) {
		t.Fatalf("invoices shown %v, want only A's %s", invs, aInvoice)
	}
	b.shot("invoices")
	dl = b.do(map[string]any{"cmd": "download", "sel": tid("invoice-csv") + `[data-id="` + aInvoice + `"]`})
	if dl.Failure != "" || dl.Body == "" || !strings.HasSuffix(dl.Filename, ".csv") {
		t.Fatalf("CSV download %q: failure %q, %d bytes", dl.Filename, dl.Failure, len(dl.Body))
	}
	dl = b.do(map[string]any{"cmd": "download", "sel": tid("invoice-json") + `[data-id="` + aInvoice + `"]`})
	var invJSON map[string]any
	if dl.Failure != "" || json.Unmarshal([]byte(dl.Body), &invJSON) != nil || !strings.Contains(dl.Body, aInvoice) {
		t.Fatalf("JSON download %q: failure %q: %.300s", dl.Filename, dl.Failure, dl.Body)
	}

	// B's things by URL: nothing.
	for _, u := range []string{"#endpoint/" + bSub.GetId(), "#invoice/" + bInvoice, "#type/" + audit} {
		b.open("/portal/" + u)
		b.view("notfound")
		if body := one(t, "the page", b.read("main")).Text; strings.Contains(body, bReceiver.URL) || strings.Contains(body, "globex") {
			t.Fatalf("%s shows B's data: %s", u, body)
		}
	}
	if status, body := b.fetch("GET", "/portal/invoices/"+bInvoice+"/export?format=csv", nil, ""); status != http.StatusNotFound {
		t.Fatalf("B's invoice export: %d %.200s", status, body)
	}
	// ... and through the API with A's session: not found.
	for _, c := range []struct {
		method string
		req    map[string]any
	}{
		{"herald.registry.v1.RegistryService/GetSubscription", map[string]any{"id": bSub.GetId()}},
		{"herald.registry.v1.RegistryService/UpdateSubscription", map[string]any{"subscription": map[string]any{"id": bSub.GetId(), "webhook": map[string]any{"disabled": true}}, "updateMask": []string{"webhook.disabled"}}},
		{"herald.registry.v1.RegistryService/DeleteSubscription", map[string]any{"id": bSub.GetId()}},
		{"herald.registry.v1.RegistryService/RotateWebhookSecret", map[string]any{"id": bSub.GetId()}},
		{"herald.registry.v1.RegistryService/GetEventType", map[string]any{"name": audit}},
		{"herald.registry.v1.RegistryService/ListSchemaVersions", map[string]any{"eventType": audit}},
		{"herald.registry.v1.RegistryService/GetApplication", map[string]any{"id": appB.GetId()}},
		{"herald.edge.v1.WebhookService/ListAttempts", map[string]any{"subscriptionId": bSub.GetId()}},
		{"herald.edge.v1.WebhookService/ListWebhookDeadLetters", map[string]any{"subscriptionId": bSub.GetId()}},
		{"herald.edge.v1.WebhookService/Replay", map[string]any{"subscriptionId": bSub.GetId(), "cursor": cursor}},
		{"herald.edge.v1.WebhookService/RetryDelivery", map[string]any{"subscriptionId": bSub.GetId(), "cursor": cursor}},
		{"herald.edge.v1.WebhookService/SendTestEvent", map[string]any{"subscriptionId": bSub.GetId(), "type": audit}},
		{"herald.metering.v1.BillingService/GetInvoice", map[string]any{"invoiceId": bInvoice}},
	} {
		status, out := b.rpc(csrf, c.method, c.req)
		if status != http.StatusNotFound || out["code"] != "not_found" {
			t.Errorf("%s with B's id as A: %d %v, want 404 not_found", c.method, status, out)
		}
		if raw, _ := json.Marshal(out); strings.Contains(string(raw), bReceiver.URL) || strings.Contains(string(raw), "globex") {
			t.Errorf("%s: the refusal carries B's data: %s", c.method, raw)
		}
	}
	// Lists never hold B's.
	for _, c := range []struct {
		method string
		req    map[string]any
		not    string
	}{
		{"herald.registry.v1.RegistryService/ListEventTypes", map[string]any{}, audit},
		{"herald.registry.v1.RegistryService/ListSubscriptions", map[string]any{"applicationId": appB.GetId()}, bSub.GetId()},
		{"herald.registry.v1.RegistryService/ListSubscriptions", map[string]any{}, bSub.GetId()},
		{"herald.metering.v1.BillingService/ListInvoices", map[string]any{"applicationId": appB.GetId()}, bInvoice},
		{"herald.metering.v1.BillingService/ListInvoices", map[string]any{}, bInvoice},
		{"herald.registry.v1.RegistryService/ListKeys", map[string]any{"applicationId": appB.GetId()}, appB.GetId()},
	} {
		status, out := b.rpc(csrf, c.method, c.req)
		raw, _ := json.Marshal(out)
		if status == http.StatusOK && strings.Contains(string(raw), c.not) || status == http.StatusInternalServerError {
			t.Errorf("%s %v as A: %d %s", c.method, c.req, status, raw)
		}
	}
	// B's endpoint is untouched.
	if s, err := e.reg.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: bSub.GetId()})); err != nil || s.Msg.GetSubscription().GetWebhook().GetDisabled() {
		t.Fatalf("B's endpoint after A's attempts: %v %v", s, err)
	}
	// Methods the portal does not offer.
	for _, m := range []string{"herald.registry.v1.RegistryService/ListApplications", "herald.registry.v1.RegistryService/CreatePortalLink", "herald.metering.v1.BillingService/FinalizeInvoice"} {
		if status, out := b.rpc(csrf, m, map[string]any{}); status != http.StatusNotFound {
			t.Errorf("%s through the portal: %d %v", m, status, out)
		}
	}
	// Without the CSRF token (or with a wrong one), nothing changes.
	for _, token := range []string{"", "forged-" + csrf[:8]} {
		if status, out := b.rpc(token, "herald.registry.v1.RegistryService/ListKeys", map[string]any{"applicationId": appA.GetId()}); status != http.StatusForbidden {
			t.Errorf("RPC with CSRF token %q: %d %v", token, status, out)
		}
		h := map[string]string{"Content-Type": "application/json"}
		if token != "" {
			h["X-Herald-CSRF"] = token
		}
		if status, body := b.fetch("POST", "/portal/token", h, `{"types":["`+sent+`"]}`); status != http.StatusForbidden {
			t.Errorf("token without CSRF: %d %s", status, body)
		}
		if status, body := b.fetch("DELETE", "/portal/session", h, ""); status != http.StatusForbidden {
			t.Errorf("sign-out without CSRF: %d %s", status, body)
		}
	}
	if status, _ := b.session(); status != http.StatusOK {
		t.Fatalf("the session ended after refused calls: %d", status)
	}

	// Sign out: the session is over.
	b.open("/portal/#catalog")
	b.view("catalog")
	b.click(tid("signout"))
	b.view("signedout")
	if status, _ := b.session(); status != http.StatusUnauthorized {
		t.Fatalf("GET /portal/session after sign-out: %d", status)
	}
	if status, _ := b.rpc(csrf, "herald.registry.v1.RegistryService/ListKeys", map[string]any{"applicationId": appA.GetId()}); status != http.StatusUnauthorized {
		t.Fatalf("RPC after sign-out: %d", status)
	}
	// A spent link and an expired one sign nobody in. (The expired one's
	// record is made to run out now rather than in a minute: it is gone
	// from Redis when its TTL ends.)
	opt, err := redis.ParseURL(e.common.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	sum := sha256.Sum256([]byte(expiring.GetToken()))
	if ok, err := rdb.PExpire(ctx, "herald:{registry}:portal_links:"+hex.EncodeToString(sum[:]), time.Millisecond).Result(); err != nil || !ok {
		t.Fatalf("expire the link's record: %v %v", ok, err)
	}
	time.Sleep(10 * time.Millisecond)
	for what, u := range map[string]string{"spent": link.GetUrl(), "expired": expiring.GetUrl()} {
		b.do(map[string]any{"cmd": "clearCookies"})
		b.open("/portal/#catalog")
		b.view("signedout")
		b.open(u)
		b.wait(`#app[data-signin="refused"]`)
		if p := b.do(map[string]any{"cmd": "read", "sel": "#app"}); p.State != "signed-out" || strings.Contains(p.URL, "#link") {
			t.Fatalf("%s link: state %q, URL %s", what, p.State, b.redact(p.URL))
		}
		if status, _ := b.session(); status != http.StatusUnauthorized {
			t.Fatalf("%s link opened a session: %d", what, status)
		}
	}

	// The page ran under its Content-Security-Policy without a violation
	// and asked nothing of another origin.
	for _, c := range b.console {
		if strings.Contains(c, "Content Security Policy") || strings.Contains(c, "Refused to") || strings.HasPrefix(c, "pageerror") {
			t.Errorf("page console: %s", b.redact(c))
		}
	}
	if p := b.do(map[string]any{"cmd": "read", "sel": "body"}); len(p.Foreign) != 0 {
		t.Errorf("the page requested other origins: %v", p.Foreign)
	}
	// The filtered-out test event never reached the receiver.
	for _, h := range receiver.got() {
		var ev struct {
			Data struct {
				ParcelID string `json:"parcel_id"`
			} `json:"data"`
		}
		_ = json.Unmarshal(h.body, &ev)
		if ev.Data.ParcelID == "p-light" {
			t.Errorf("the filtered-out test event was delivered: %s", h.body)
		}
	}
}

func anyText(els []chromeElem, s string) bool {
	for _, e := range els {
		if strings.Contains(e.Text, s) {
			return true
		}
	}
	return false
}

func countID(r *receiver, id string) int {
	n := 0
	for _, h := range r.got() {
		if h.header.Get("webhook-id") == id {
			n++
		}
	}
	return n
}

// mustVerify checks a delivery's signature with one secret.
func mustVerify(secret string, h hit) error {
	v, err := webhook.NewVerifier(secret)
	if err != nil {
		return err
	}
	return v.Verify(h.header, h.body, time.Now())
}
