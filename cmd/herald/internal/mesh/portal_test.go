package mesh_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

// portalClient is a browser stand-in: a cookie jar, the page's origin on
// every request, and the CSRF token the session answers with.
type portalClient struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
}

func (e *env) portalClient(t *testing.T) *portalClient {
	jar, _ := cookiejar.New(nil)
	return &portalClient{t: t, base: rpc.BaseURL(e.common.EdgeAddr), hc: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// do sends a request as the page would (same origin, CSRF token), with
// change applied to it first.
func (c *portalClient) do(method, path string, body any, change func(*http.Request)) (int, []byte, http.Header) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", c.base)
	if c.csrf != "" {
		req.Header.Set("X-Herald-CSRF", c.csrf)
	}
	if change != nil {
		change(req)
	}
	res, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	return res.StatusCode, out, res.Header
}

func (c *portalClient) signIn(link string) (int, []byte, http.Header) {
	c.t.Helper()
	status, body, hdr := c.do("POST", "/portal/session", map[string]string{"link": link}, nil)
	if status == http.StatusOK {
		var s struct {
			CSRF string `json:"csrf"`
		}
		_ = json.Unmarshal(body, &s)
		c.csrf = s.CSRF
	}
	return status, body, hdr
}

// call is an RPC through the portal; it returns the status and the body
// decoded as a JSON object.
func (c *portalClient) call(service, method string, req any) (int, map[string]any) {
	c.t.Helper()
	if req == nil {
		req = map[string]any{}
	}
	status, body, _ := c.do("POST", "/portal/rpc/"+service+"/"+method, req, nil)
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil && len(body) > 0 {
		c.t.Fatalf("%s/%s: %d %s", service, method, status, body)
	}
	return status, out
}

func (c *portalClient) mustCall(service, method string, req any) map[string]any {
	c.t.Helper()
	status, out := c.call(service, method, req)
	if status != http.StatusOK {
		c.t.Fatalf("%s/%s: %d %v", service, method, status, out)
	}
	return out
}

const (
	regSvc     = "herald.registry.v1.RegistryService"
	webhookSvc = "herald.edge.v1.WebhookService"
)

func (e *env) portalLink(t *testing.T, appID string) string {
	t.Helper()
	res, err := e.reg.CreatePortalLink(context.Background(), connect.NewRequest(&registryv1.CreatePortalLinkRequest{ApplicationId: appID}))
	if err != nil {
		t.Fatal(err)
	}
	u := res.Msg.GetUrl()
	if !strings.HasPrefix(u, "http://") || !strings.Contains(u, "/portal/#link="+res.Msg.GetToken()) {
		t.Fatalf("portal link %q does not carry its token in the fragment", u)
	}
	return res.Msg.GetToken()
}

// The portal's sign-in: a single-use link from the operator opens a
// session for one application; forged, spent and expired links are
// refused, and only the operator mints links.
func TestPortalSignIn(t *testing.T) {
	e := startWebhooks(t)
	link := e.portalLink(t, e.appID)

	c := e.portalClient(t)
	if status, _, _ := c.do("GET", "/portal/session", nil, nil); status != http.StatusUnauthorized {
		t.Fatalf("no session: %d", status)
	}
	status, body, hdr := c.signIn(link)
	if status != http.StatusOK {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	cookie := hdr.Get("Set-Cookie")
	for _, want := range []string{"herald_portal=", "HttpOnly", "SameSite=Strict", "Path=/portal"} {
		if !strings.Contains(cookie, want) {
			t.Fatalf("cookie %q lacks %s", cookie, want)
		}
	}
	var s struct {
		Application struct{ ID string } `json:"application"`
		CSRF        string              `json:"csrf"`
		ExpireTime  string              `json:"expireTime"`
	}
	if err := json.Unmarshal(body, &s); err != nil || s.Application.ID != e.appID || s.CSRF == "" || s.ExpireTime == "" {
		t.Fatalf("session: %s", body)
	}
	if status, body, _ := c.do("GET", "/portal/session", nil, nil); status != http.StatusOK || !strings.Contains(string(body), e.appID) {
		t.Fatalf("whoami: %d %s", status, body)
	}

	// The link is spent.
	again := e.portalClient(t)
	if status, body, _ := again.signIn(link); status != http.StatusUnauthorized || strings.Contains(string(body), "herald:") {
		t.Fatalf("a second use of the link: %d %s", status, body)
	}
	// A forged link.
	if status, _, _ := again.signIn("hpl_" + strings.Repeat("A", 43)); status != http.StatusUnauthorized {
		t.Fatalf("forged link: %d", status)
	}
	// An expired link: its record is gone from Redis when its TTL runs out.
	expired := e.portalLink(t, e.appID)
	opt, err := redis.ParseURL(e.common.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	sum := sha256.Sum256([]byte(expired))
	if n, err := rdb.PExpire(context.Background(), "herald:{registry}:portal_links:"+hex.EncodeToString(sum[:]), time.Millisecond).Result(); err != nil || !n {
		t.Fatalf("expire the link: %v %v", n, err)
	}
	time.Sleep(10 * time.Millisecond)
	if status, _, _ := again.signIn(expired); status != http.StatusUnauthorized {
		t.Fatalf("expired link: %d", status)
	}
	// Only the operator mints links.
	appReg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.RegistryAddr), rpc.ClientOptions(e.appKey)...)
	if _, err := appReg.CreatePortalLink(context.Background(), connect.NewRequest(&registryv1.CreatePortalLinkRequest{ApplicationId: e.appID})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("an application minting a link: %v", err)
	}
	if _, err := e.reg.CreatePortalLink(context.Background(), connect.NewRequest(&registryv1.CreatePortalLinkRequest{ApplicationId: e.appID, LinkTtl: durationpb.New(48 * time.Hour)})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("a link for two days: %v", err)
	}
	if _, err := e.reg.RedeemPortalLink(context.Background(), connect.NewRequest(&registryv1.RedeemPortalLinkRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("an empty token: %v", err)
	}

	// The session is a key of the application, marked as a portal
	// session; key rotation leaves it alone, revocation ends it.
	c.mustCall(regSvc, "CreateKey", map[string]any{"applicationId": e.appID, "rotateOverlap": "0s"})
	if status, _ := c.call(regSvc, "ListKeys", map[string]any{"applicationId": e.appID}); status != http.StatusOK {
		t.Fatalf("the session after a key rotation: %d", status)
	}
	keys, err := e.reg.ListKeys(context.Background(), connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: e.appID}))
	if err != nil {
		t.Fatal(err)
	}
	var sessionKey string
	for _, k := range keys.Msg.GetKeys() {
		if k.GetPurpose() == registryv1.KeyPurpose_KEY_PURPOSE_PORTAL_SESSION && k.GetRevokeTime() == nil {
			sessionKey = k.GetId()
		}
	}
	if sessionKey == "" {
		t.Fatalf("no portal session key among %v", keys.Msg.GetKeys())
	}
	if _, err := e.reg.RevokeKey(context.Background(), connect.NewRequest(&registryv1.RevokeKeyRequest{Id: sessionKey})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		status, _ := c.call(regSvc, "ListSubscriptions", map[string]any{"applicationId": e.appID})
		return status == http.StatusUnauthorized
	}, "a revoked portal session is refused")

	// Sign-out revokes the session's key.
	d := e.portalClient(t)
	if status, body, _ := d.signIn(e.portalLink(t, e.appID)); status != http.StatusOK {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	if status, body, _ := d.do("DELETE", "/portal/session", nil, nil); status != http.StatusNoContent {
		t.Fatalf("sign-out: %d %s", status, body)
	}
	if status, _, _ := d.do("GET", "/portal/session", nil, nil); status != http.StatusUnauthorized {
		t.Fatalf("after sign-out: %d", status)
	}

	// Last, as it limits every request from this address: guessing links
	// runs out of tries like guessing keys: 429 with
	// Retry-After, and then even a good link waits.
	good := e.portalLink(t, e.appID)
	var limited http.Header
	for i := 0; i < 40 && limited == nil; i++ {
		status, _, hdr := again.signIn(fmt.Sprintf("hpl_guess%d", i))
		if status == http.StatusTooManyRequests {
			limited = hdr
		} else if status != http.StatusUnauthorized {
			t.Fatalf("guess %d: %d", i, status)
		}
	}
	if limited == nil || limited.Get("Retry-After") == "" {
		t.Fatalf("40 wrong links were never limited")
	}
	if status, _, _ := again.signIn(good); status != http.StatusTooManyRequests {
		t.Fatalf("a good link from a limited address: %d", status)
	}
}

// The portal acts as its application and nothing more: another tenant's
// subscriptions and attempts are not found, operator-only methods are not
// offered, and state changes need the CSRF token and the same origin.
func TestPortalAuthorization(t *testing.T) {
	e := startWebhooks(t)
	r := newReceiver(t, nil)
	other, _, _ := e.newReader(t, "other-tenant")
	theirs, _ := e.createEndpointOf(t, other.GetId(), &registryv1.WebhookChannel{Url: r.URL})

	c := e.portalClient(t)
	if status, body, _ := c.signIn(e.portalLink(t, e.appID)); status != http.StatusOK {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	for _, call := range []struct {
		service, method string
		req             map[string]any
	}{
		{regSvc, "GetSubscription", map[string]any{"id": theirs.GetId()}},
		{regSvc, "GetApplication", map[string]any{"id": other.GetId()}},
		{regSvc, "ListKeys", map[string]any{"applicationId": other.GetId()}},
		{webhookSvc, "ListAttempts", map[string]any{"subscriptionId": theirs.GetId()}},
		{webhookSvc, "SendTestEvent", map[string]any{"subscriptionId": theirs.GetId(), "type": e.invoice, "data": `{"invoice_id":"x","amount":1}`}},
	} {
		status, out := c.call(call.service, call.method, call.req)
		if status != http.StatusNotFound || out["code"] != "not_found" {
			t.Fatalf("%s with another application's id: %d %v", call.method, status, out)
		}
		if msg := fmt.Sprint(out["message"]); strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "herald:") {
			t.Fatalf("%s: the error carries internals: %s", call.method, msg)
		}
	}
	// Metering through the portal: its own usage and invoices, nobody
	// else's.
	const meterSvc, billSvc = "herald.metering.v1.MeteringService", "herald.metering.v1.BillingService"
	c.mustCall(meterSvc, "GetUsage", map[string]any{"applicationId": e.appID})
	for _, call := range []struct {
		service, method string
		req             map[string]any
	}{
		{meterSvc, "GetUsage", map[string]any{"applicationId": other.GetId()}},
		{billSvc, "ListInvoices", map[string]any{"applicationId": other.GetId()}},
	} {
		if status, out := c.call(call.service, call.method, call.req); status == http.StatusOK {
			t.Fatalf("%s of another application through the portal: %v", call.method, out)
		}
	}
	if status, _ := c.call(billSvc, "CreatePlan", map[string]any{}); status != http.StatusNotFound {
		t.Fatalf("an operator-only billing method through the portal: %d", status)
	}
	if status, _ := c.call(regSvc, "CreateEventType", map[string]any{"eventType": map[string]any{"name": "x.y.z"}}); status != http.StatusNotFound {
		t.Fatalf("an operator-only method through the portal: %d", status)
	}
	if status, _ := c.call(regSvc, "CreatePortalLink", map[string]any{"applicationId": e.appID}); status != http.StatusNotFound {
		t.Fatalf("minting links through the portal: %d", status)
	}
	noCSRF := func(r *http.Request) { r.Header.Del("X-Herald-CSRF") }
	if status, _, _ := c.do("POST", "/portal/rpc/"+regSvc+"/ListSubscriptions", map[string]any{}, noCSRF); status != http.StatusForbidden {
		t.Fatalf("no CSRF token: %d", status)
	}
	wrongCSRF := func(r *http.Request) { r.Header.Set("X-Herald-CSRF", "x"+c.csrf) }
	if status, _, _ := c.do("POST", "/portal/rpc/"+regSvc+"/ListSubscriptions", map[string]any{}, wrongCSRF); status != http.StatusForbidden {
		t.Fatalf("wrong CSRF token: %d", status)
	}
	crossSite := func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "cross-site") }
	if status, _, _ := c.do("POST", "/portal/rpc/"+regSvc+"/ListSubscriptions", map[string]any{}, crossSite); status != http.StatusForbidden {
		t.Fatalf("a cross-site request: %d", status)
	}
	otherOrigin := func(r *http.Request) { r.Header.Set("Origin", "https://evil.example") }
	if status, _, _ := c.do("POST", "/portal/rpc/"+regSvc+"/ListSubscriptions", map[string]any{}, otherOrigin); status != http.StatusForbidden {
		t.Fatalf("another origin: %d", status)
	}
	// No session at all.
	anon := e.portalClient(t)
	anon.csrf = c.csrf
	if status, _ := anon.call(regSvc, "ListSubscriptions", map[string]any{}); status != http.StatusUnauthorized {
		t.Fatalf("no session: %d", status)
	}
	// A key as the cookie is still only that key: another tenant's key
	// sees only its own.
	if status, body, _ := c.do("GET", "/portal/asyncapi.json", nil, nil); status != http.StatusOK || !strings.Contains(string(body), e.invoice) {
		t.Fatalf("asyncapi: %d %s", status, body)
	}
	if status, body, _ := c.do("GET", "/portal/apis.json", nil, nil); status != http.StatusOK || !strings.Contains(string(body), "specificationVersion") {
		t.Fatalf("apis.json through the portal: %d %s", status, body)
	}
	if status, _, _ := anon.do("GET", "/portal/apis.json", nil, nil); status != http.StatusUnauthorized {
		t.Fatalf("apis.json without a session: %d", status)
	}
	// Typed clients of the types it may see.
	if status, body, hdr := c.do("GET", "/portal/codegen?lang=ts&types=billing.*", nil, nil); status != http.StatusOK ||
		!strings.Contains(string(body), "interface BillingInvoicePaid") || !strings.Contains(hdr.Get("Content-Disposition"), "attachment") {
		t.Fatalf("codegen ts: %d %s", status, body)
	}
	status, body, hdr := c.do("GET", "/portal/codegen?lang=go", nil, nil)
	if status != http.StatusOK || hdr.Get("Content-Type") != "application/zip" {
		t.Fatalf("codegen go: %d %s", status, body)
	}
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil || len(zr.File) < 2 {
		t.Fatalf("codegen go archive: %v", err)
	}
	for _, q := range []string{"lang=rust", "lang=ts&types=Bad Pattern", "lang=ts&types=nothing.here.*"} {
		if status, body, _ := c.do("GET", "/portal/codegen?"+strings.ReplaceAll(q, " ", "%20"), nil, nil); status == http.StatusOK {
			t.Fatalf("codegen %s: %d %s", q, status, body)
		}
	}
	if status, _, _ := anon.do("GET", "/portal/codegen?lang=ts", nil, nil); status != http.StatusUnauthorized {
		t.Fatalf("codegen without a session: %d", status)
	}
}

// A consumer goes from a portal link to receiving signed webhooks for a
// filtered type with no operator step, sends a test event, sees its
// attempt with the receiver's answer, replays it, rotates the secret, and
// mints a browser token for the SSE console; test events are never billed.
func TestPortalWebhookSelfService(t *testing.T) {
	e := startWebhooks(t)
	r := newReceiver(t, nil)
	c := e.portalClient(t)
	if status, body, _ := c.signIn(e.portalLink(t, e.appID)); status != http.StatusOK {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	verdict := c.mustCall(regSvc, "EvaluateFilter", map[string]any{"filter": "data.amount > 100", "type": e.invoice,
		"data": []string{`{"invoice_id":"a","amount":50}`, `{"invoice_id":"b","amount":500}`}})
	results, _ := verdict["results"].([]any)
	if len(results) != 2 || results[0].(map[string]any)["match"] != nil || results[1].(map[string]any)["match"] != true {
		t.Fatalf("filter verdicts: %v", verdict)
	}
	if status, _ := c.call(regSvc, "EvaluateFilter", map[string]any{"filter": "data.amount >", "type": e.invoice}); status != http.StatusBadRequest {
		t.Fatalf("a broken filter: %d", status)
	}
	created := c.mustCall(regSvc, "CreateSubscription", map[string]any{"subscription": map[string]any{
		"applicationId": e.appID, "types": []string{e.invoice}, "filter": "data.amount > 100",
		"webhook": map[string]any{"url": r.URL},
	}})
	sub := created["subscription"].(map[string]any)
	subID, secret := sub["id"].(string), created["webhookSecret"].(string)

	// A test event that the filter drops is not sent.
	out := c.mustCall(webhookSvc, "SendTestEvent", map[string]any{"subscriptionId": subID, "type": e.invoice, "data": `{"invoice_id":"t0","amount":1}`})
	if out["filteredOut"] != true || out["cursor"] != nil {
		t.Fatalf("filtered test event: %v", out)
	}
	if status, got := c.call(webhookSvc, "SendTestEvent", map[string]any{"subscriptionId": subID, "type": e.invoice, "data": `{"invoice_id":"t1"}`}); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(got["message"]), "amount") {
		t.Fatalf("a test event against the schema: %d %v", status, got)
	}
	out = c.mustCall(webhookSvc, "SendTestEvent", map[string]any{"subscriptionId": subID, "type": e.invoice, "data": `{"invoice_id":"t1","amount":1000}`})
	cursor, _ := out["cursor"].(string)
	if cursor == "" {
		t.Fatalf("test event: %v", out)
	}
	testutil.Eventually(t, 15*time.Second, func() bool { return len(r.got()) == 1 }, "the test event arrives")
	first := r.got()[0]
	if err := mustVerifier(t, secret).Verify(first.header, first.body, time.Now()); err != nil {
		t.Fatalf("the test event's signature: %v", err)
	}
	var ce map[string]any
	_ = json.Unmarshal(first.body, &ce)
	if ce["heraldtest"] != true || ce["type"] != e.invoice {
		t.Fatalf("test event body: %s", first.body)
	}
	var attempts map[string]any
	testutil.Eventually(t, 10*time.Second, func() bool {
		attempts = c.mustCall(webhookSvc, "ListAttempts", map[string]any{"subscriptionId": subID})
		list, _ := attempts["attempts"].([]any)
		return len(list) == 1
	}, "the attempt is listed")
	att := attempts["attempts"].([]any)[0].(map[string]any)
	if att["cursor"] != cursor || att["status"] != float64(204) || att["success"] != true || att["trigger"] != "ATTEMPT_TRIGGER_TEST" {
		t.Fatalf("attempt: %v", att)
	}
	// The attempt shows the request as sent: its signature headers and body.
	if hdrs, _ := att["requestHeaders"].(map[string]any); hdrs["Webhook-Id"] != first.header.Get("webhook-id") || hdrs["Webhook-Signature"] != first.header.Get("webhook-signature") {
		t.Fatalf("attempt request headers: %v", att["requestHeaders"])
	}
	if b64, _ := att["requestBody"].(string); b64 != base64.StdEncoding.EncodeToString(first.body) {
		t.Fatalf("attempt request body %q, sent %s", b64, first.body)
	}
	// Replay it: the same webhook-id again.
	if q := c.mustCall(webhookSvc, "Replay", map[string]any{"subscriptionId": subID, "cursor": cursor}); q["queued"] != float64(1) {
		t.Fatalf("replay: %v", q)
	}
	testutil.Eventually(t, 15*time.Second, func() bool { return len(r.got()) == 2 }, "the replayed test event arrives")
	testutil.Eventually(t, 10*time.Second, func() bool {
		list, _ := c.mustCall(webhookSvc, "ListAttempts", map[string]any{"subscriptionId": subID})["attempts"].([]any)
		return len(list) == 2 && list[0].(map[string]any)["trigger"] == "ATTEMPT_TRIGGER_REPLAY"
	}, "the replay's attempt is recorded as a replay")
	if ids := r.ids(); ids[0] != ids[1] {
		t.Fatalf("replay changed the webhook-id: %v", ids)
	}
	// Rotate the secret: the next delivery verifies with the new one.
	rot := c.mustCall(regSvc, "RotateWebhookSecret", map[string]any{"id": subID, "overlap": "0s"})
	newSecret, _ := rot["webhookSecret"].(string)
	if newSecret == "" || newSecret == secret {
		t.Fatalf("rotation: %v", rot)
	}
	real := e.publish(invoiceEvent("real-1", 5000))
	testutil.Eventually(t, 15*time.Second, func() bool { return len(r.got()) == 3 }, "a real event arrives")
	third := r.got()[2]
	if err := mustVerifier(t, newSecret).Verify(third.header, third.body, time.Now()); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	_ = real
	// Billing counts the real delivery only.
	testutil.Eventually(t, 20*time.Second, func() bool {
		return e.usage(adminKey, "application="+e.appID+"&channel=webhook")["USAGE_METRIC_DELIVERED"] == 1
	}, "one webhook delivery counted")
	time.Sleep(500 * time.Millisecond)
	if n := e.usage(adminKey, "application="+e.appID+"&channel=webhook")["USAGE_METRIC_DELIVERED"]; n != 1 {
		t.Fatalf("webhook deliveries counted: %d, want 1 (test events are never billed)", n)
	}

	// A browser token for the console, after creating a token secret.
	if status, body, _ := c.do("POST", "/portal/token", map[string]any{"types": []string{"billing.*"}}, nil); status != http.StatusBadRequest || !strings.Contains(string(body), "failed_precondition") {
		t.Fatalf("a token without a secret: %d %s", status, body)
	}
	c.mustCall(regSvc, "RotateTokenSecret", map[string]any{"applicationId": e.appID})
	if status, body, _ := c.do("POST", "/portal/token", map[string]any{"types": []string{"billing.*"}, "filter": "data.amount >"}, nil); status != http.StatusBadRequest || !strings.Contains(string(body), "filter") {
		t.Fatalf("a token with a broken filter: %d %s", status, body)
	}
	var tok struct {
		Token string `json:"token"`
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		status, body, _ := c.do("POST", "/portal/token", map[string]any{"types": []string{"billing.*"}, "ttlSeconds": 60}, nil)
		return status == http.StatusOK && json.Unmarshal(body, &tok) == nil && tok.Token != ""
	}, "a browser token is minted once the edge knows the secret")
	res, err := http.Get(rpc.BaseURL(e.common.EdgeAddr) + "/v1/stream?types=billing.*&access_token=" + url.QueryEscape(tok.Token))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("the minted token on /v1/stream: %d", res.StatusCode)
	}
}

func mustVerifier(t *testing.T, secret string) *webhook.Verifier {
	t.Helper()
	v, err := webhook.NewVerifier(secret)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// A test event to a durable stream subscription arrives on the router's
// Subscribe like any event, marked heraldtest, and is never counted.
func TestPortalTestEventToAStream(t *testing.T) {
	e := startWebhooks(t)
	c := e.portalClient(t)
	if status, body, _ := c.signIn(e.portalLink(t, e.appID)); status != http.StatusOK {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	created := c.mustCall(regSvc, "CreateSubscription", map[string]any{"subscription": map[string]any{
		"applicationId": e.appID, "types": []string{e.invoice}, "stream": map[string]any{},
	}})
	subID := created["subscription"].(map[string]any)["id"].(string)
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+e.appKey))
	defer cancel()
	stream, err := e.router.Subscribe(ctx, &routerv1.SubscribeRequest{SubscriptionId: subID, MaxInFlight: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		t.Fatal(err)
	}
	out := c.mustCall(webhookSvc, "SendTestEvent", map[string]any{"subscriptionId": subID, "type": e.invoice, "data": `{"invoice_id":"s1","amount":7}`})
	d, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	attr := d.GetEvent().GetAttributes()["heraldtest"]
	if d.GetCursor() != out["cursor"] || d.GetEvent().GetSource() != "/herald/test" || attr == nil || !attr.GetCeBoolean() {
		t.Fatalf("test event on the stream: %v (sent %v)", d, out)
	}
	if _, err := e.router.Ack(ctx, &routerv1.AckRequest{SubscriptionId: subID, AckIds: []string{d.GetAckId()}}); err != nil {
		t.Fatal(err)
	}
	// A real event after it is counted; the test event is not.
	cur := e.publish(invoiceEvent("real-s", 9))[0]
	if d, err = stream.Recv(); err != nil || d.GetCursor() != cur {
		t.Fatalf("the real event: %v %v", d, err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		return e.usage(adminKey, "application="+e.appID+"&channel=subscribe")["USAGE_METRIC_DELIVERED"] == 1
	}, "the real delivery counted")
	time.Sleep(500 * time.Millisecond)
	if n := e.usage(adminKey, "application="+e.appID+"&channel=subscribe")["USAGE_METRIC_DELIVERED"]; n != 1 {
		t.Fatalf("stream deliveries counted: %d, want 1", n)
	}
}

// The RPCs the portal added, with no key, a revoked key, another tenant's
// key and a withdrawn grant: refused with the right code, and no error
// carries internals.
func TestPortalRPCsRefuseWithoutTheRight(t *testing.T) {
	e := startWebhooks(t)
	ctx := context.Background()
	r := newReceiver(t, nil)
	sub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL})
	if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "ledger.entry.posted", Schema: `{"type":"object"}`, Visibility: registryv1.Visibility_VISIBILITY_INTERNAL,
	}})); err != nil {
		t.Fatal(err)
	}
	other, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "partner", Tenant: "elsewhere", Audience: registryv1.Audience_AUDIENCE_PARTNER,
		Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	strangerKey := other.Msg.GetKey().GetSecret()
	revoked, err := e.reg.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: e.appID}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: revoked.Msg.GetKey().GetId()})); err != nil {
		t.Fatal(err)
	}
	revokedKey := revoked.Msg.GetKey().GetSecret()
	regAs := func(key string) registryv1connect.RegistryServiceClient {
		if key == "" {
			return registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.RegistryAddr))
		}
		return registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.RegistryAddr), rpc.ClientOptions(key)...)
	}
	whAs := func(key string) edgev1connect.WebhookServiceClient {
		if key == "" {
			return edgev1connect.NewWebhookServiceClient(http.DefaultClient, rpc.BaseURL(e.common.EdgeAddr))
		}
		return e.webhooks(key)
	}
	link := e.portalLink(t, e.appID)
	calls := map[string]func(key string) error{
		"CreatePortalLink": func(key string) error {
			_, err := regAs(key).CreatePortalLink(ctx, connect.NewRequest(&registryv1.CreatePortalLinkRequest{ApplicationId: e.appID}))
			return err
		},
		"RedeemPortalLink": func(key string) error {
			_, err := regAs(key).RedeemPortalLink(ctx, connect.NewRequest(&registryv1.RedeemPortalLinkRequest{Token: link}))
			return err
		},
		"EvaluateFilter": func(key string) error {
			_, err := regAs(key).EvaluateFilter(ctx, connect.NewRequest(&registryv1.EvaluateFilterRequest{Type: "ledger.entry.posted", Filter: "true"}))
			return err
		},
		"SendTestEvent": func(key string) error {
			_, err := whAs(key).SendTestEvent(ctx, connect.NewRequest(&edgev1.SendTestEventRequest{SubscriptionId: sub.GetId(), Type: e.invoice, Data: `{"invoice_id":"x","amount":1}`}))
			return err
		},
	}
	want := map[string]connect.Code{ // another tenant's key
		"CreatePortalLink": connect.CodePermissionDenied, "RedeemPortalLink": connect.CodePermissionDenied,
		"EvaluateFilter": connect.CodeNotFound, "SendTestEvent": connect.CodeNotFound,
	}
	noInternals := func(what string, err error) {
		t.Helper()
		for _, leak := range []string{"127.0.0.1", "herald:", r.URL, auth.HashSecret(e.appKey), auth.HashSecret(revokedKey)} {
			if strings.Contains(err.Error(), leak) {
				t.Fatalf("%s: the error carries %q: %v", what, leak, err)
			}
		}
	}
	for name, call := range calls {
		for _, c := range []struct {
			who, key string
			code     connect.Code
		}{{"no key", "", connect.CodeUnauthenticated}, {"a revoked key", revokedKey, connect.CodeUnauthenticated}, {"another tenant's key", strangerKey, want[name]}} {
			err := call(c.key)
			if connect.CodeOf(err) != c.code {
				t.Errorf("%s with %s: %v, want %v", name, c.who, err, c.code)
				continue
			}
			noInternals(name+" with "+c.who, err)
		}
	}
	// The link survived every refused redemption.
	if err := calls["RedeemPortalLink"](adminKey); err != nil {
		t.Fatalf("the operator redeems the link: %v", err)
	}
	// A session open before the grant is withdrawn: SendTestEvent through
	// the portal and directly is refused once the grant is gone.
	c := e.portalClient(t)
	if status, body, _ := c.signIn(e.portalLink(t, e.appID)); status != http.StatusOK {
		t.Fatalf("sign-in: %d %s", status, body)
	}
	got, err := e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: e.appID}))
	if err != nil {
		t.Fatal(err)
	}
	app := got.Msg.GetApplication()
	app.Grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "billing.*"}}
	if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: app})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return connect.CodeOf(calls["SendTestEvent"](e.appKey)) == connect.CodePermissionDenied
	}, "SendTestEvent refused once the subscribe grant is withdrawn")
	status, out := c.call(webhookSvc, "SendTestEvent", map[string]any{"subscriptionId": sub.GetId(), "type": e.invoice, "data": `{"invoice_id":"x","amount":1}`})
	if status != http.StatusForbidden || out["code"] != "permission_denied" {
		t.Fatalf("SendTestEvent through an open portal session after the grant is withdrawn: %d %v", status, out)
	}
}
