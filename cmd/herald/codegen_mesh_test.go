package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/codegen"
	"github.com/heraldmesh/herald/platform/codegen/codegentest"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
)

// hookCatcher is a webhook endpoint that keeps the raw requests it gets
// (validation pings apart) and answers 204.
type hookCatcher struct {
	mu   sync.Mutex
	got  []caughtHook
	seen chan struct{}
}

type caughtHook struct {
	header http.Header
	body   []byte
}

func (c *hookCatcher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.WriteHeader(http.StatusMethodNotAllowed) // no handshake: the registry pings instead
		return
	}
	body, _ := io.ReadAll(r.Body)
	if !strings.Contains(string(body), `"herald.endpoint.ping"`) {
		c.mu.Lock()
		c.got = append(c.got, caughtHook{header: r.Header.Clone(), body: body})
		c.mu.Unlock()
		select {
		case c.seen <- struct{}{}:
		default:
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (c *hookCatcher) first() (caughtHook, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		return caughtHook{}, false
	}
	return c.got[0], true
}

// codegenMesh is a running mesh with a catalog of three types (one of them
// internal) and a public application that may publish billing.* and
// subscribe to everything it sees.
type codegenMesh struct {
	common config.Common
	reg    registryv1connect.RegistryServiceClient
	appKey string
	appID  string
}

func startCodegenMesh(t *testing.T) *codegenMesh {
	t.Helper()
	c := startMeshWith(t, func(c *config.Common) {
		c.SecretKey = secretbox.NewKey()
		c.WebhookAllow = "127.0.0.0/8"
	})
	ctx := context.Background()
	reg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(c.RegistryAddr), rpc.ClientOptions(cliTestKey)...)
	invoiceSchema, err := os.ReadFile(filepath.Join("..", "..", "platform", "codegen", "testdata", "invoice_paid.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, et := range []*registryv1.EventType{
		{Name: "billing.invoice.paid", Description: "An invoice was paid in full.", Schema: string(invoiceSchema), Visibility: registryv1.Visibility_VISIBILITY_PUBLIC},
		{Name: "identity.user.created", Description: "A user signed up.", Visibility: registryv1.Visibility_VISIBILITY_PUBLIC,
			Schema: `{"type":"object","required":["user_id"],"properties":{"user_id":{"type":"string"},"plan":{"enum":["free","pro"]}}}`},
		{Name: "ops.node.failed", Description: "Internal only.", Visibility: registryv1.Visibility_VISIBILITY_INTERNAL, Schema: `{"type":"object"}`},
	} {
		if _, err := reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: et})); err != nil {
			t.Fatal(err)
		}
	}
	app, err := reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "partner-shop", Audience: registryv1.Audience_AUDIENCE_PUBLIC,
		Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "billing.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("HERALD_REGISTRY_ADDR", c.RegistryAddr)
	t.Setenv("HERALD_ADMIN_KEY", "")
	t.Setenv("HERALD_KEY", app.Msg.GetKey().GetSecret())
	return &codegenMesh{common: c, reg: reg, appKey: app.Msg.GetKey().GetSecret(), appID: app.Msg.GetApplication().GetId()}
}

// paidData is billing.invoice.paid data that its schema accepts.
const paidData = `{"invoice_id":"in_1","amount":4200,"currency":"EUR","status":"paid","paid_at":"2026-12-03T09:00:00Z",` +
	`"lines":[{"sku":"a","quantity":1,"children":[{"sku":"b","quantity":2}]}],"customer":{"id":"cus_1","email":"ann@example.com","vip":true},` +
	`"payment":{"last4":"4242"},"reference":7,"metadata":{"k":"v"},"discounts":{"code":"W26","WINTER":5},"note":null,"shipping_address":null,"priority":2}`

// deliver subscribes a webhook endpoint of the application to
// billing.invoice.paid, publishes one event and returns the request the
// endpoint got, with the endpoint's secret.
func (m *codegenMesh) deliver(t *testing.T) (caughtHook, string) {
	t.Helper()
	ctx := context.Background()
	catcher := &hookCatcher{seen: make(chan struct{}, 1)}
	srv := httptest.NewServer(catcher)
	t.Cleanup(srv.Close)
	sub, err := m.reg.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: m.appID, Types: []string{"billing.invoice.paid"},
		Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: srv.URL + "/hooks"}},
	}}))
	if err != nil {
		t.Fatalf("create webhook endpoint: %v", err)
	}
	secret := sub.Msg.GetWebhookSecret()
	router := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(m.common.RouterAddr), rpc.ClientOptions(m.appKey)...)
	var res *connect.Response[routerv1.PublishResponse]
	// The edge starts delivering to a new endpoint from now on: publish
	// until one arrives (the first publishes may precede its consumer).
	testutil.Eventually(t, 30*time.Second, func() bool {
		if _, ok := catcher.first(); ok {
			return true
		}
		if res == nil {
			res, err = router.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{{
				Id: "evt_codegen_1", Source: "//billing.example/invoices", SpecVersion: "1.0", Type: "billing.invoice.paid",
				Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
					"partitionkey":    {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "cus_1"}},
					"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
				},
				Data: &eventv1.CloudEvent_TextData{TextData: paidData},
			}}}))
			if err != nil {
				t.Fatal(err)
			}
			if e := res.Msg.GetResults()[0].GetError(); e != nil {
				t.Fatalf("publish refused: %v", e)
			}
		}
		select {
		case <-catcher.seen:
		case <-time.After(200 * time.Millisecond):
		}
		return false
	}, "the webhook delivery")
	hook, _ := catcher.first()
	return hook, secret
}

// generate runs herald codegen with args and returns its output.
func generate(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cli(context.Background(), t, append([]string{"codegen"}, args...)...)
	if err != nil {
		t.Fatalf("herald codegen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// The TypeScript of herald codegen type-checks a webhook Herald delivered
// (tsc --strict), verifies its real signature in Node and refuses it
// tampered; an event without a required field is a type error.
func TestCodegenTypeScriptAgainstTheMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	m := startCodegenMesh(t)
	dir := codegentest.TSDir(t)
	out := generate(t, "--lang", "ts", "--types", "billing.*,identity.*", "--out", dir)
	if !strings.Contains(out, "wrote "+filepath.Join(dir, "events.ts")) || !strings.Contains(out, "2 event types: billing.invoice.paid v1, identity.user.created v1") {
		t.Fatalf("codegen said:\n%s", out)
	}
	hook, secret := m.deliver(t)
	body := string(hook.body)
	if !strings.Contains(body, `"invoice_id":"in_1",`) {
		t.Fatalf("delivered body %s", body)
	}
	headers := fmt.Sprintf(`{ "webhook-id": %s, "webhook-timestamp": %s, "webhook-signature": %s }`,
		strconv.Quote(hook.header.Get("webhook-id")), strconv.Quote(hook.header.Get("webhook-timestamp")), strconv.Quote(hook.header.Get("webhook-signature")))
	check := `import { verifyWebhook, parseWebhook, type BillingInvoicePaidEvent, type HeraldEvent } from "./events.js";

// The delivered body, as a literal: tsc checks it against the types.
const received: BillingInvoicePaidEvent = ` + body + `;
const any: HeraldEvent = received;

const body = ` + strconv.Quote(body) + `;
const headers = ` + headers + `;
const secret = ` + strconv.Quote(secret) + `;
const result = await verifyWebhook(secret, headers, body);
if (!result.valid) {
  throw new Error("Herald's signature did not verify: " + result.reason);
}
const tampered = await verifyWebhook(secret, headers, body.replace('"in_1"', '"in_2"'));
if (tampered.valid) {
  throw new Error("a tampered body verified");
}
const parsed = await parseWebhook(secret, new Headers(headers), new TextEncoder().encode(body));
if (parsed.type !== "billing.invoice.paid") {
  throw new Error("parsed " + parsed.type);
}
console.log("valid", result.id, any.type, received.data.invoice_id, received.data.currency, parsed.data.lines[0].children?.[0].sku, "tampered:", tampered.reason);
`
	codegentest.WriteFiles(t, dir, codegen.File{Name: "check.ts", Content: []byte(check)})
	if out, ok := codegentest.TSC(t, dir, "--noEmit", "events.ts", "check.ts"); !ok {
		t.Fatalf("tsc --strict refused the delivered event:\n%s", out)
	}
	if out, ok := codegentest.TSC(t, dir, "--outDir", "out", "events.ts", "check.ts"); !ok {
		t.Fatalf("tsc: %s", out)
	}
	out, ok := codegentest.Node(t, dir, filepath.Join("out", "check.js"))
	if want := "valid evt_codegen_1 billing.invoice.paid in_1 EUR b tampered: no signature matched\n"; !ok || out != want {
		t.Fatalf("node check.js said %q, want %q", out, want)
	}

	// Negative: the same event without a required property.
	wrong := `import type { BillingInvoicePaidEvent } from "./events.js";
export const ev: BillingInvoicePaidEvent = ` + strings.Replace(body, `"invoice_id":"in_1",`, "", 1) + ";\n"
	codegentest.WriteFiles(t, dir, codegen.File{Name: "wrong.ts", Content: []byte(wrong)})
	out, ok = codegentest.TSC(t, dir, "--noEmit", "events.ts", "wrong.ts")
	if ok || !strings.Contains(out, "wrong.ts(") || !strings.Contains(out, "Property 'invoice_id' is missing") {
		t.Fatalf("tsc on an event without invoice_id: ok=%v\n%s", ok, out)
	}
}

// The Go of herald codegen builds, verifies a webhook Herald delivered and
// decodes it; a tampered body is refused. The application's key sees only
// what its audience may: the internal type is left out.
func TestCodegenGoAgainstTheMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	m := startCodegenMesh(t)
	pkgDir := filepath.Join(t.TempDir(), "heraldevents")
	out := generate(t, "--lang", "go", "--package", "heraldevents", "--out", pkgDir)
	if !strings.Contains(out, "2 event types: billing.invoice.paid v1, identity.user.created v1") {
		t.Fatalf("codegen said:\n%s", out)
	}
	var files []codegen.File
	for _, name := range []string{"events.go", "webhook.go"} {
		b, err := os.ReadFile(filepath.Join(pkgDir, name))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, codegen.File{Name: name, Content: b})
	}
	if strings.Contains(string(files[0].Content), "ops.node.failed") || !strings.Contains(string(files[0].Content), "//   identity.user.created v1\n") {
		t.Fatalf("events.go header:\n%.600s", files[0].Content)
	}
	hook, secret := m.deliver(t)
	main := fmt.Sprintf(`package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"

	events "example.com/consumer/heraldevents"
)

func main() {
	body := []byte(%q)
	h := http.Header{}
	h.Set("webhook-id", %q)
	h.Set("webhook-timestamp", %q)
	h.Set("webhook-signature", %q)
	v, err := events.NewWebhookVerifier(%q)
	if err != nil {
		fail(err)
	}
	ev, err := v.ParseWebhook(h, body)
	if err != nil {
		fail(fmt.Errorf("Herald's webhook: %%w", err))
	}
	paid, ok := ev.(*events.BillingInvoicePaidEvent)
	if !ok {
		fail(fmt.Errorf("parsed a %%T", ev))
	}
	tampered := []byte(string(body[:len(body)-2]) + " }")
	if err := v.Verify(h, tampered); !errors.Is(err, events.ErrWebhookSignature) {
		fail(fmt.Errorf("tampered body: %%v", err))
	}
	fmt.Println(paid.ID, paid.Type, string(paid.Extensions["partitionkey"]), paid.Data.InvoiceID2, paid.Data.Amount,
		paid.Data.Currency == events.BillingInvoicePaidCurrencyEUR, paid.Data.Lines[0].Children[0].SKU, paid.Data.Discounts.AdditionalProperties["WINTER"])
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
`, hook.body, hook.header.Get("webhook-id"), hook.header.Get("webhook-timestamp"), hook.header.Get("webhook-signature"), secret)
	dir := codegentest.GoModule(t, "heraldevents", files, main)
	if out, ok := codegentest.Go(t, dir, "vet", "./..."); !ok {
		t.Fatalf("go vet: %s", out)
	}
	out, ok := codegentest.Go(t, dir, "run", ".")
	if want := "evt_codegen_1 billing.invoice.paid \"cus_1\" in_1 4200 true b 5\n"; !ok || out != want {
		t.Fatalf("go run said %q, want %q", out, want)
	}
}

// Bad input gets a clear error, before the registry is asked when it can
// be; a pattern that matches nothing the key may see says so.
func TestCodegenRefusesBadInput(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	startCodegenMesh(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--types", "billing.*"}, "give the language with --lang (go or ts)"},
		{[]string{"--lang", "py"}, `unknown --lang "py": want go or ts`},
		{[]string{"--lang", "ts", "--types", "Billing.*"}, `--types: pattern "Billing.*"`},
		{[]string{"--lang", "ts", "--types", "bill*ing"}, `--types: pattern "bill*ing": '*' may only stand alone or as the last segment`},
		{[]string{"--lang", "ts", "--types", ","}, "--types: no event types given"},
		{[]string{"--lang", "go", "--package", "my-events"}, `--package: codegen: package name "my-events": want a lower-case Go identifier`},
		{[]string{"--lang", "ts", "--types", "shipping.*"}, "no event type matches shipping.* among the 2 your key may see"},
		// Internal: the public application does not see it at all.
		{[]string{"--lang", "ts", "--types", "ops.node.failed"}, "no event type matches ops.node.failed among the 2 your key may see"},
		{[]string{"--lang", "ts", "--key", "hk_unknown"}, "the registry refused the key"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		out, err := cli(context.Background(), t, append([]string{"codegen", "--out", dir}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("codegen %s: err %v (output %q), want one with %q", strings.Join(c.args, " "), err, out, c.want)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("codegen %s wrote %d files", strings.Join(c.args, " "), len(entries))
		}
	}
}
