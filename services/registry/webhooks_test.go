package registry_test

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/heraldmesh/herald/services/registry"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// resolver answers host names from a table, as a DNS server would.
type resolver map[string][]netip.Addr

func (r resolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := r[host]; ok {
		return a, nil
	}
	return nil, &netErr{host}
}

type netErr struct{ host string }

func (e *netErr) Error() string   { return "lookup " + e.host + ": no such host" }
func (e *netErr) Timeout() bool   { return false }
func (e *netErr) Temporary() bool { return false }

// testResolver is the resolver of the registries tests start: public names
// that nothing answers at (their endpoints are created disabled), and a
// name that resolves to a private address.
var testResolver = resolver{
	"partner.example":  {netip.MustParseAddr("8.8.8.8")},
	"hooks.example":    {netip.MustParseAddr("8.8.4.4")},
	"internal.example": {netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("10.1.2.3")},
}

// allowLoopback lets endpoints on 127.0.0.1 (the test receivers) through.
func allowLoopback(c *registry.Config) {
	c.WebhookAllow = "127.0.0.0/8"
	c.PublicURL = "https://mesh.example.com"
}

// received is one request a receiver got.
type received struct {
	method string
	header http.Header
	body   []byte
}

// receiver is a webhook endpoint on 127.0.0.1 that answers with answer and
// records every request.
type receiver struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []received
}

func newReceiver(t *testing.T, answer func(w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, received{r.Method, r.Header.Clone(), body})
		rc.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.reqs...)
}

// consenting answers the handshake with the origin it was asked for.
func consenting(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodOptions {
		w.Header().Set("WebHook-Allowed-Origin", r.Header.Get("WebHook-Request-Origin"))
		w.Header().Set("WebHook-Allowed-Rate", "60")
	}
	w.WriteHeader(http.StatusOK)
}

// pinged answers 405 to OPTIONS (no handshake) and status to the rest.
func pinged(status int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		if status/100 == 3 {
			w.Header().Set("Location", "/elsewhere")
		}
		w.WriteHeader(status)
	}
}

// hookApp registers a type and a consumer application that may subscribe
// to it, and returns the application's key.
func (e *env) hookApp(t *testing.T, name string) (*registryv1.Application, string) {
	t.Helper()
	if _, err := e.admin.GetEventType(context.Background(), connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "billing.invoice.paid"})); err != nil {
		e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	}
	return e.createApp(t, &registryv1.Application{Name: name, Grants: []*registryv1.Grant{subscribe("billing.*")}})
}

func hookSub(wh *registryv1.WebhookChannel) *registryv1.CreateSubscriptionRequest {
	return &registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		Types: []string{"billing.invoice.paid"}, Channel: &registryv1.Subscription_Webhook{Webhook: wh},
	}}
}

func createHook(ctx context.Context, c interface {
	CreateSubscription(context.Context, *connect.Request[registryv1.CreateSubscriptionRequest]) (*connect.Response[registryv1.CreateSubscriptionResponse], error)
}, wh *registryv1.WebhookChannel) (*registryv1.CreateSubscriptionResponse, error) {
	res, err := c.CreateSubscription(ctx, connect.NewRequest(hookSub(wh)))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func durations(ds ...time.Duration) []*durationpb.Duration {
	out := make([]*durationpb.Duration, len(ds))
	for i, d := range ds {
		out[i] = durationpb.New(d)
	}
	return out
}

// Every setting of a webhook endpoint is checked, with a message naming
// the field; defaults are filled in and stored.
func TestWebhookSettings(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	_, key := e.hookApp(t, "shop")
	app := e.as(key)
	base := func() *registryv1.WebhookChannel {
		return &registryv1.WebhookChannel{Url: "https://hooks.example/h", Disabled: true}
	}
	with := func(f func(*registryv1.WebhookChannel)) *registryv1.WebhookChannel {
		wh := base()
		f(wh)
		return wh
	}
	many := map[string]string{}
	for i := range 21 {
		many["X-H"+itoa(int64(i))] = "v"
	}
	long := make([]time.Duration, 51)
	for i := range long {
		long[i] = time.Second
	}
	for _, c := range []struct {
		name string
		wh   *registryv1.WebhookChannel
		want []string
	}{
		{"no url", with(func(w *registryv1.WebhookChannel) { w.Url = "" }), []string{"webhook.url is required"}},
		{"relative url", with(func(w *registryv1.WebhookChannel) { w.Url = "/hooks" }), []string{"webhook.url", "absolute"}},
		{"ftp", with(func(w *registryv1.WebhookChannel) { w.Url = "ftp://hooks.example/x" }), []string{"http"}},
		{"fragment", with(func(w *registryv1.WebhookChannel) { w.Url = "https://hooks.example/h#x" }), []string{"fragment"}},
		{"too many headers", with(func(w *registryv1.WebhookChannel) { w.Headers = many }), []string{"headers has 21 entries", "20"}},
		{"header name not a token", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"X Bad": "v"} }), []string{`headers["X Bad"]`, "token"}},
		{"webhook-* header", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"Webhook-Id": "v"} }), []string{"Standard Webhooks"}},
		{"ce-* header", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"ce-type": "v"} }), []string{"CloudEvents"}},
		{"content-type", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"Content-Type": "text/plain"} }), []string{"Herald sets Content-Type"}},
		{"content-length", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"content-length": "1"} }), []string{"Herald sets content-length"}},
		{"host", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"Host": "x"} }), []string{"Herald sets Host"}},
		{"hop-by-hop", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"Transfer-Encoding": "chunked"} }), []string{"hop-by-hop"}},
		{"connection", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"Connection": "close"} }), []string{"hop-by-hop"}},
		{"header value with CRLF", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"X-A": "a\r\nX-B: b"} }), []string{"control characters"}},
		{"same header twice", with(func(w *registryv1.WebhookChannel) { w.Headers = map[string]string{"X-A": "1", "x-a": "2"} }), []string{"same header"}},
		{"long schedule", with(func(w *registryv1.WebhookChannel) { w.RetrySchedule = durations(long...) }), []string{"retry_schedule has 51 entries", "50"}},
		{"retry too soon", with(func(w *registryv1.WebhookChannel) { w.RetrySchedule = durations(time.Second, 5*time.Millisecond) }), []string{"retry_schedule[1] is 5ms", "10ms", "24h"}},
		{"retry too late", with(func(w *registryv1.WebhookChannel) { w.RetrySchedule = durations(25 * time.Hour) }), []string{"retry_schedule[0] is 25h"}},
		{"retry zero", with(func(w *registryv1.WebhookChannel) { w.RetrySchedule = durations(0) }), []string{"retry_schedule[0] is zero"}},
		{"retry negative", with(func(w *registryv1.WebhookChannel) { w.RetrySchedule = durations(-time.Second) }), []string{"retry_schedule[0] is -1s"}},
		{"short timeout", with(func(w *registryv1.WebhookChannel) { w.Timeout = durationpb.New(500 * time.Millisecond) }), []string{"timeout is 500ms", "1s", "1m0s"}},
		{"long timeout", with(func(w *registryv1.WebhookChannel) { w.Timeout = durationpb.New(61 * time.Second) }), []string{"timeout is 1m1s"}},
		{"invalid duration", with(func(w *registryv1.WebhookChannel) { w.Timeout = &durationpb.Duration{Seconds: 1, Nanos: -5} }), []string{"webhook.timeout"}},
		{"short disable_after", with(func(w *registryv1.WebhookChannel) { w.DisableAfter = durationpb.New(30 * time.Second) }), []string{"disable_after is 30s", "1m0s"}},
		{"long disable_after", with(func(w *registryv1.WebhookChannel) { w.DisableAfter = durationpb.New(31 * 24 * time.Hour) }), []string{"disable_after is 744h"}},
		{"negative concurrency", with(func(w *registryv1.WebhookChannel) { w.MaxConcurrency = -1 }), []string{"max_concurrency is -1", "100"}},
		{"too much concurrency", with(func(w *registryv1.WebhookChannel) { w.MaxConcurrency = 101 }), []string{"max_concurrency is 101"}},
		{"negative rate", with(func(w *registryv1.WebhookChannel) { w.RateLimit = -1 }), []string{"rate_limit is -1"}},
		{"NaN rate", with(func(w *registryv1.WebhookChannel) { w.RateLimit = math.NaN() }), []string{"rate_limit is NaN"}},
		{"infinite rate", with(func(w *registryv1.WebhookChannel) { w.RateLimit = math.Inf(1) }), []string{"rate_limit is +Inf"}},
		{"ordering", with(func(w *registryv1.WebhookChannel) { w.Ordering = 9 }), []string{"webhook.ordering: 9"}},
		{"signing", with(func(w *registryv1.WebhookChannel) { w.Signing = 9 }), []string{"webhook.signing: 9"}},
		{"content mode", with(func(w *registryv1.WebhookChannel) { w.ContentMode = 9 }), []string{"webhook.content_mode: 9"}},
		{"secrets given", with(func(w *registryv1.WebhookChannel) {
			w.Secrets = []*registryv1.WebhookSecret{{Id: "mine", Sealed: "x"}}
		}), []string{"webhook.secrets is output only"}},
	} {
		_, err := createHook(ctx, app, c.wh)
		wantCode(t, c.name, err, connect.CodeInvalidArgument, c.want...)
	}

	// Defaults, stored; output-only fields given are ignored; the
	// Authorization header is the endpoint's to set.
	res, err := createHook(ctx, app, with(func(w *registryv1.WebhookChannel) {
		w.JwksUrl, w.DisableTime, w.DisabledReason = "https://evil.example/jwks", timestamppb.Now(), "my words"
		w.Headers = map[string]string{"Authorization": "Bearer abc", "X-Tenant": "t 1"}
		w.RetrySchedule = durations(10*time.Millisecond, time.Second)
	}))
	if err != nil {
		t.Fatal(err)
	}
	stored := must(app.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: res.GetSubscription().GetId()}))).msg(t).GetSubscription().GetWebhook()
	if stored.GetMaxConcurrency() != 10 || stored.GetTimeout().AsDuration() != 15*time.Second || stored.GetDisableAfter().AsDuration() != 5*24*time.Hour ||
		len(stored.GetRetrySchedule()) != 2 || stored.GetRetrySchedule()[0].AsDuration() != 10*time.Millisecond ||
		stored.GetHeaders()["Authorization"] != "Bearer abc" || stored.GetJwksUrl() != "" ||
		stored.GetDisabledReason() != "disabled by the application" || stored.GetDisableTime() == nil || time.Since(stored.GetDisableTime().AsTime()) > time.Minute {
		t.Errorf("stored settings: %v", stored)
	}
	res, err = createHook(ctx, app, base())
	if err != nil {
		t.Fatal(err)
	}
	var schedule []time.Duration
	for _, d := range res.GetSubscription().GetWebhook().GetRetrySchedule() {
		schedule = append(schedule, d.AsDuration())
	}
	want := []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}
	if len(schedule) != len(want) {
		t.Fatalf("default schedule: %v", schedule)
	}
	for i := range want {
		if schedule[i] != want[i] {
			t.Errorf("default schedule: %v, want %v", schedule, want)
		}
	}
}

// URLs are checked against the outbound policy at creation: no loopback
// or private addresses (by literal or by name) without the allowlist, https
// for everything else; the message never shows a resolved address.
func TestWebhookURLPolicy(t *testing.T) {
	t.Parallel()
	e := start(t) // no allowlist
	ctx := context.Background()
	_, key := e.hookApp(t, "shop")
	app := e.as(key)
	rc := newReceiver(t, consenting)
	for _, c := range []struct {
		name, url string
		want      []string
	}{
		{"loopback literal", rc.URL + "/hooks", []string{"127.0.0.1"}},
		{"loopback https", "https://127.0.0.1:8443/hooks", []string{"loopback"}},
		{"metadata", "https://169.254.169.254/latest", []string{"metadata"}},
		{"IPv4-mapped IPv6", "https://[::ffff:10.0.0.1]/x", []string{"private"}},
		{"name resolving to private", "https://internal.example/x", []string{"internal.example", "private"}},
		{"plain http", "http://hooks.example/x", []string{"https"}},
		{"unknown host", "https://nowhere.example/x", []string{"nowhere.example"}},
		{"userinfo", "https://user:pw@hooks.example/x", []string{"user"}},
	} {
		_, err := createHook(ctx, app, &registryv1.WebhookChannel{Url: c.url})
		wantCode(t, c.name, err, connect.CodeInvalidArgument, c.want...)
		if err != nil && strings.Contains(err.Error(), "10.1.2.3") {
			t.Errorf("%s: the message shows the resolved address: %v", c.name, err)
		}
	}
	if n := len(rc.requests()); n != 0 {
		t.Errorf("the refused loopback receiver got %d requests", n)
	}
	subs := must(app.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t).GetSubscriptions()
	if len(subs) != 0 {
		t.Errorf("refused endpoints were stored: %v", subs)
	}
}

// The abuse-protection handshake: an endpoint that answers with the origin
// (or *) consents; no ping is sent.
func TestWebhookHandshake(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, allowLoopback)
	ctx := context.Background()
	app, key := e.hookApp(t, "shop")
	rc := newReceiver(t, consenting)
	res, err := createHook(ctx, e.as(key), &registryv1.WebhookChannel{Url: rc.URL + "/hooks", Headers: map[string]string{"Authorization": "Bearer t"}})
	if err != nil {
		t.Fatal(err)
	}
	reqs := rc.requests()
	if len(reqs) != 1 || reqs[0].method != http.MethodOptions {
		t.Fatalf("requests: %v", reqs)
	}
	h := reqs[0].header
	if h.Get("WebHook-Request-Origin") != "mesh.example.com" || h.Get("WebHook-Request-Rate") != "120" || h.Get("Authorization") != "Bearer t" {
		t.Errorf("handshake headers: %v", h)
	}
	sub := res.GetSubscription()
	if sub.GetApplicationId() != app.GetId() || sub.GetWebhook().GetDisabled() || !strings.HasPrefix(res.GetWebhookSecret(), "whsec_") {
		t.Errorf("created: %v (secret %q)", sub, res.GetWebhookSecret())
	}

	star := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WebHook-Allowed-Origin", "*")
	})
	if _, err := createHook(ctx, e.as(key), &registryv1.WebhookChannel{Url: star.URL}); err != nil {
		t.Errorf("an endpoint allowing *: %v", err)
	}
	// Another origin is a refusal, not a reason to ping.
	other := newReceiver(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WebHook-Allowed-Origin", "other.example.org")
	})
	_, err = createHook(ctx, e.as(key), &registryv1.WebhookChannel{Url: other.URL})
	wantCode(t, "another origin", err, connect.CodeFailedPrecondition, "other.example.org", "mesh.example.com")
	if n := len(other.requests()); n != 1 {
		t.Errorf("the refusing endpoint got %d requests, want the handshake only", n)
	}
}

// An endpoint without the handshake gets a signed herald.endpoint.ping,
// which it must answer with a 2xx; a redirect is a failure, never followed.
func TestWebhookPing(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, allowLoopback)
	ctx := context.Background()
	app, key := e.hookApp(t, "shop")
	client := e.as(key)

	ok := newReceiver(t, pinged(http.StatusNoContent))
	res, err := createHook(ctx, client, &registryv1.WebhookChannel{Url: ok.URL + "/hooks"})
	if err != nil {
		t.Fatal(err)
	}
	reqs := ok.requests()
	if len(reqs) != 2 || reqs[0].method != http.MethodOptions || reqs[1].method != http.MethodPost {
		t.Fatalf("requests: %v", reqs)
	}
	ping := reqs[1]
	v, err := webhook.NewVerifier(res.GetWebhookSecret())
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(ping.header, ping.body, time.Now()); err != nil {
		t.Errorf("the ping does not verify with the secret shown: %v", err)
	}
	if ct := ping.header.Get("Content-Type"); ct != "application/cloudevents+json" {
		t.Errorf("content type %q", ct)
	}
	var ev struct {
		SpecVersion string `json:"specversion"`
		ID          string `json:"id"`
		Source      string `json:"source"`
		Type        string `json:"type"`
		Data        struct {
			SubscriptionID string `json:"subscription_id"`
			ApplicationID  string `json:"application_id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(ping.body, &ev); err != nil {
		t.Fatalf("ping body %s: %v", ping.body, err)
	}
	if ev.SpecVersion != "1.0" || ev.Type != "herald.endpoint.ping" || ev.Source != "herald" || ev.ID == "" ||
		ping.header.Get("webhook-id") != ev.ID || ev.Data.SubscriptionID != res.GetSubscription().GetId() || ev.Data.ApplicationID != app.GetId() {
		t.Errorf("ping: %s (headers %v)", ping.body, ping.header)
	}

	// Ed25519 endpoints: the public key is shown, the ping verifies with
	// it, and the JWKS URL is under the public URL. Binary content mode.
	edRes, err := createHook(ctx, client, &registryv1.WebhookChannel{Url: ok.URL + "/ed", Signing: registryv1.WebhookSigning_WEBHOOK_SIGNING_ED25519,
		ContentMode: registryv1.WebhookContentMode_WEBHOOK_CONTENT_MODE_BINARY})
	if err != nil {
		t.Fatal(err)
	}
	id := edRes.GetSubscription().GetId()
	wh := edRes.GetSubscription().GetWebhook()
	if !strings.HasPrefix(edRes.GetWebhookSecret(), "whpk_") || wh.GetJwksUrl() != "https://mesh.example.com/v1/webhooks/"+id+"/jwks.json" ||
		len(wh.GetSecrets()) != 1 || wh.GetSecrets()[0].GetPublicKey() != edRes.GetWebhookSecret() {
		t.Errorf("ed25519 endpoint: %v (shown %q)", wh, edRes.GetWebhookSecret())
	}
	if kid, _ := webhook.KeyID(edRes.GetWebhookSecret()); wh.GetSecrets()[0].GetId() != kid {
		t.Errorf("secret id %q, want the JWKS kid %q", wh.GetSecrets()[0].GetId(), kid)
	}
	reqs = ok.requests()
	edPing := reqs[len(reqs)-1]
	v, err = webhook.NewVerifier(edRes.GetWebhookSecret())
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(edPing.header, edPing.body, time.Now()); err != nil {
		t.Errorf("the ed25519 ping does not verify: %v", err)
	}
	if edPing.header.Get("ce-type") != "herald.endpoint.ping" || edPing.header.Get("Content-Type") != "application/json" ||
		!strings.Contains(string(edPing.body), id) {
		t.Errorf("binary ping: %v %s", edPing.header, edPing.body)
	}

	// Failures: what the endpoint answered, nothing stored, redirects not
	// followed.
	before := len(must(client.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t).GetSubscriptions())
	failing := newReceiver(t, pinged(http.StatusInternalServerError))
	_, err = createHook(ctx, client, &registryv1.WebhookChannel{Url: failing.URL})
	wantCode(t, "ping answered 500", err, connect.CodeFailedPrecondition, "answered 500 to the validation ping")
	missing := newReceiver(t, pinged(http.StatusNotFound))
	_, err = createHook(ctx, client, &registryv1.WebhookChannel{Url: missing.URL})
	wantCode(t, "ping answered 404", err, connect.CodeFailedPrecondition, "the endpoint answered 404 to the validation ping")
	redirect := newReceiver(t, pinged(http.StatusFound))
	_, err = createHook(ctx, client, &registryv1.WebhookChannel{Url: redirect.URL + "/start"})
	wantCode(t, "ping answered 302", err, connect.CodeFailedPrecondition, "302", "redirects are not followed")
	for _, r := range redirect.requests() {
		if r.method == http.MethodPost && len(redirect.requests()) != 2 {
			t.Errorf("the redirect was followed: %v", redirect.requests())
		}
	}
	if n := len(redirect.requests()); n != 2 {
		t.Errorf("redirecting endpoint got %d requests, want the handshake and the ping", n)
	}
	down := newReceiver(t, consenting)
	down.Close()
	_, err = createHook(ctx, client, &registryv1.WebhookChannel{Url: down.URL, Timeout: durationpb.New(time.Second)})
	wantCode(t, "endpoint down", err, connect.CodeFailedPrecondition, "no answer", "connection refused")
	if err != nil && strings.Contains(err.Error(), "dial tcp") {
		t.Errorf("the message shows the dialler's detail: %v", err)
	}
	after := len(must(client.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t).GetSubscriptions())
	if after != before {
		t.Errorf("%d subscriptions after the failures, %d before", after, before)
	}
	// Created disabled: no request at all.
	quiet := newReceiver(t, pinged(http.StatusInternalServerError))
	if _, err := createHook(ctx, client, &registryv1.WebhookChannel{Url: quiet.URL, Disabled: true}); err != nil {
		t.Errorf("created disabled: %v", err)
	}
	if n := len(quiet.requests()); n != 0 {
		t.Errorf("a disabled endpoint got %d requests at creation", n)
	}
}

// The secret is shown once: never in Get or List, and stored sealed, which
// only Watch (the operator's stream to the services) carries.
func TestWebhookSecretShownOnce(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, allowLoopback)
	ctx := context.Background()
	_, key := e.hookApp(t, "shop")
	client := e.as(key)
	rc := newReceiver(t, consenting)
	w := e.watch(t, e.revision(t))
	res, err := createHook(ctx, client, &registryv1.WebhookChannel{Url: rc.URL})
	if err != nil {
		t.Fatal(err)
	}
	secret := res.GetWebhookSecret()
	sub := res.GetSubscription()
	if _, err := webhook.ParseSecret(secret); err != nil || !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("secret %q: %v", secret, err)
	}
	sec := sub.GetWebhook().GetSecrets()
	if len(sec) != 1 || sec[0].GetId() == "" || sec[0].GetCreateTime() == nil || sec[0].GetSealed() != "" || sec[0].GetPublicKey() != "" {
		t.Errorf("secrets in the create response: %v", sec)
	}
	for what, m := range map[string]interface{ String() string }{
		"create":           res,
		"get":              must(client.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: sub.GetId()}))).msg(t),
		"list":             must(client.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t),
		"list as operator": must(e.admin.ListSubscriptions(ctx, connect.NewRequest(&registryv1.ListSubscriptionsRequest{}))).msg(t),
		"get as operator":  must(e.admin.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: sub.GetId()}))).msg(t),
	} {
		text := m.String()
		if what != "create" && strings.Contains(text, strings.TrimPrefix(secret, "whsec_")) {
			t.Errorf("%s shows the secret: %s", what, text)
		}
		if strings.Contains(text, "sealed") {
			t.Errorf("%s carries the sealed secret: %s", what, text)
		}
	}
	// Watch carries it sealed, and it opens to the secret shown.
	m := w.next(t)
	watched := m.GetSubscription().GetWebhook().GetSecrets()
	if len(watched) != 1 || watched[0].GetSealed() == "" {
		t.Fatalf("watched: %v", prototext.Format(m))
	}
	if strings.Contains(watched[0].GetSealed(), strings.TrimPrefix(secret, "whsec_")) {
		t.Error("the sealed value holds the secret in clear")
	}
	box, err := secretbox.New(testSecretKey)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := box.Open(watched[0].GetSealed(), sub.GetId()+"/"+watched[0].GetId())
	if err != nil || string(plain) != secret {
		t.Errorf("the sealed secret opens to %q, %v; want the secret shown", plain, err)
	}
	// The raw record in Redis has no secret in clear either.
	raw, err := e.rdb.HGet(ctx, "herald:{registry}:subs", sub.GetId()).Result()
	if err != nil || strings.Contains(raw, strings.TrimPrefix(secret, "whsec_")) {
		t.Errorf("stored record: %v (holds the secret in clear: %v)", err, strings.Contains(raw, strings.TrimPrefix(secret, "whsec_")))
	}
}

// Rotation: a new secret shown once; the old ones sign until the overlap
// ends; expired ones are dropped; overlap 0 retires them at once.
func TestWebhookRotation(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, allowLoopback)
	ctx := context.Background()
	_, key := e.hookApp(t, "shop")
	client := e.as(key)
	rc := newReceiver(t, consenting)
	res, err := createHook(ctx, client, &registryv1.WebhookChannel{Url: rc.URL})
	if err != nil {
		t.Fatal(err)
	}
	id := res.GetSubscription().GetId()
	first := res.GetSubscription().GetWebhook().GetSecrets()[0]
	rotate := func(overlap *durationpb.Duration) (*registryv1.RotateWebhookSecretResponse, error) {
		r, err := client.RotateWebhookSecret(ctx, connect.NewRequest(&registryv1.RotateWebhookSecretRequest{Id: id, Overlap: overlap}))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	}
	w := e.watch(t, e.revision(t))
	r1, err := rotate(nil)
	if err != nil {
		t.Fatal(err)
	}
	secrets := r1.GetSubscription().GetWebhook().GetSecrets()
	if !strings.HasPrefix(r1.GetWebhookSecret(), "whsec_") || r1.GetWebhookSecret() == res.GetWebhookSecret() || len(secrets) != 2 ||
		secrets[0].GetId() != first.GetId() || secrets[1].GetId() == first.GetId() {
		t.Fatalf("after a rotation: %v", r1)
	}
	if exp := secrets[0].GetExpireTime().AsTime(); exp.Before(time.Now().Add(23*time.Hour)) || exp.After(time.Now().Add(25*time.Hour)) {
		t.Errorf("old secret expires at %v, want in 24h", exp)
	}
	if secrets[1].GetExpireTime() != nil || strings.Contains(r1.GetSubscription().String(), "sealed") {
		t.Errorf("new secret: %v", secrets[1])
	}
	// Watch sees both, sealed, each opening to its own secret.
	box, _ := secretbox.New(testSecretKey)
	watched := w.next(t).GetSubscription().GetWebhook().GetSecrets()
	if len(watched) != 2 {
		t.Fatalf("watched secrets: %v", watched)
	}
	for i, want := range []string{res.GetWebhookSecret(), r1.GetWebhookSecret()} {
		if plain, err := box.Open(watched[i].GetSealed(), id+"/"+watched[i].GetId()); err != nil || string(plain) != want {
			t.Errorf("watched secret %d opens to %q, %v", i, plain, err)
		}
	}
	// A short overlap: the older secrets expire soon, and the next
	// rotation drops them.
	if _, err := rotate(durationpb.New(time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	r3, err := rotate(durationpb.New(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	secrets = r3.GetSubscription().GetWebhook().GetSecrets()
	if len(secrets) != 2 || secrets[0].GetExpireTime() == nil || secrets[1].GetExpireTime() != nil {
		t.Errorf("after the expired ones were dropped: %v", secrets)
	}
	for _, s := range secrets {
		if s.GetId() == first.GetId() || s.GetId() == r1.GetSubscription().GetWebhook().GetSecrets()[1].GetId() {
			t.Errorf("an expired secret was kept: %v", s)
		}
	}
	// Overlap 0: only the new one.
	r4, err := rotate(durationpb.New(0))
	if err != nil {
		t.Fatal(err)
	}
	if s := r4.GetSubscription().GetWebhook().GetSecrets(); len(s) != 1 || s[0].GetExpireTime() != nil {
		t.Errorf("after a rotation with no overlap: %v", s)
	}
	// Bounds, and what has no secret.
	_, err = rotate(durationpb.New(8 * 24 * time.Hour))
	wantCode(t, "overlap of 8 days", err, connect.CodeInvalidArgument, "overlap is 192h", "168h")
	_, err = rotate(durationpb.New(-time.Second))
	wantCode(t, "negative overlap", err, connect.CodeInvalidArgument, "overlap is -1s")
	stream := must(client.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		Types: []string{"billing.invoice.paid"}, Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
	}}))).msg(t).GetSubscription()
	_, err = client.RotateWebhookSecret(ctx, connect.NewRequest(&registryv1.RotateWebhookSecretRequest{Id: stream.GetId()}))
	wantCode(t, "rotate a stream subscription", err, connect.CodeFailedPrecondition, "stream")
	_, err = client.RotateWebhookSecret(ctx, connect.NewRequest(&registryv1.RotateWebhookSecretRequest{}))
	wantCode(t, "rotate without id", err, connect.CodeInvalidArgument, "id")
	// Too many secrets in their overlap at once.
	for range 9 {
		if _, err := rotate(nil); err != nil {
			t.Fatal(err)
		}
	}
	_, err = rotate(nil)
	wantCode(t, "an eleventh live secret", err, connect.CodeFailedPrecondition, "10 secrets", "overlap of 0s")
}

// UpdateSubscription changes what the mask names, validates the endpoint
// again when its URL changes or it is enabled, and records who disabled it.
func TestUpdateSubscription(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, allowLoopback)
	ctx := context.Background()
	_, key := e.hookApp(t, "shop")
	client := e.as(key)
	rc := newReceiver(t, consenting)
	res, err := createHook(ctx, client, &registryv1.WebhookChannel{Url: rc.URL})
	if err != nil {
		t.Fatal(err)
	}
	id := res.GetSubscription().GetId()
	update := func(c interface {
		UpdateSubscription(context.Context, *connect.Request[registryv1.UpdateSubscriptionRequest]) (*connect.Response[registryv1.UpdateSubscriptionResponse], error)
	}, sub *registryv1.Subscription, paths ...string) (*registryv1.Subscription, error) {
		if sub.Id == "" {
			sub.Id = id
		}
		r, err := c.UpdateSubscription(ctx, connect.NewRequest(&registryv1.UpdateSubscriptionRequest{Subscription: sub, UpdateMask: paths}))
		if err != nil {
			return nil, err
		}
		return r.Msg.GetSubscription(), nil
	}
	hook := func(wh *registryv1.WebhookChannel) *registryv1.Subscription {
		return &registryv1.Subscription{Channel: &registryv1.Subscription_Webhook{Webhook: wh}}
	}
	w := e.watch(t, e.revision(t))

	// Every path but url and disabled, at once; what is not named stays.
	got, err := update(client, &registryv1.Subscription{
		Filter: `data.amount > 5`, Delivery: &registryv1.DeliveryPolicy{MaxAttempts: 3},
		Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{
			Url: "https://ignored.example/", Ordering: registryv1.WebhookOrdering_WEBHOOK_ORDERING_PARTITION_KEY, MaxConcurrency: 4, RateLimit: 2.5,
			Headers: map[string]string{"X-Env": "test"}, ContentMode: registryv1.WebhookContentMode_WEBHOOK_CONTENT_MODE_BINARY,
			RetrySchedule: durations(time.Second, time.Minute), Timeout: durationpb.New(3 * time.Second), DisableAfter: durationpb.New(time.Hour),
		}},
	}, "filter", "delivery", "webhook.ordering", "webhook.max_concurrency", "webhook.rate_limit", "webhook.headers",
		"webhook.content_mode", "webhook.retry_schedule", "webhook.timeout", "webhook.disable_after")
	if err != nil {
		t.Fatal(err)
	}
	wh := got.GetWebhook()
	if got.GetFilter() != `data.amount > 5` || got.GetDelivery().GetMaxAttempts() != 3 || got.GetDelivery().GetAckTimeout().AsDuration() != 30*time.Second ||
		wh.GetUrl() != rc.URL || wh.GetOrdering() != registryv1.WebhookOrdering_WEBHOOK_ORDERING_PARTITION_KEY || wh.GetMaxConcurrency() != 4 ||
		wh.GetRateLimit() != 2.5 || wh.GetHeaders()["X-Env"] != "test" || wh.GetContentMode() != registryv1.WebhookContentMode_WEBHOOK_CONTENT_MODE_BINARY ||
		len(wh.GetRetrySchedule()) != 2 || wh.GetTimeout().AsDuration() != 3*time.Second || wh.GetDisableAfter().AsDuration() != time.Hour ||
		len(wh.GetSecrets()) != 1 || wh.GetSecrets()[0].GetSealed() != "" || got.GetRevision() <= res.GetSubscription().GetRevision() {
		t.Errorf("updated: %v", got)
	}
	if n := len(rc.requests()); n != 1 {
		t.Errorf("the endpoint was validated again without a URL change: %d requests", n)
	}
	// Watch streams the change, secrets sealed.
	if m := w.next(t); m.GetSubscription().GetId() != id || m.GetSubscription().GetFilter() != `data.amount > 5` || m.GetSubscription().GetWebhook().GetSecrets()[0].GetSealed() == "" {
		t.Errorf("watched: %v", m)
	}
	// A path named with no value is the default again.
	got, err = update(client, hook(&registryv1.WebhookChannel{}), "webhook.timeout", "webhook.max_concurrency")
	if err != nil || got.GetWebhook().GetTimeout().AsDuration() != 15*time.Second || got.GetWebhook().GetMaxConcurrency() != 10 || got.GetWebhook().GetRateLimit() != 2.5 {
		t.Errorf("reset to defaults: %v, %v", got, err)
	}

	// The URL: checked, validated at the new place; a refusal changes
	// nothing.
	moved := newReceiver(t, pinged(http.StatusOK))
	failing := newReceiver(t, pinged(http.StatusInternalServerError))
	_, err = update(client, hook(&registryv1.WebhookChannel{Url: failing.URL}), "webhook.url")
	wantCode(t, "move to a failing endpoint", err, connect.CodeFailedPrecondition, "answered 500")
	_, err = update(client, hook(&registryv1.WebhookChannel{Url: "https://internal.example/x"}), "webhook.url")
	wantCode(t, "move to a private address", err, connect.CodeInvalidArgument, "private")
	got, err = update(client, hook(&registryv1.WebhookChannel{Url: moved.URL + "/new"}), "webhook.url")
	if err != nil || got.GetWebhook().GetUrl() != moved.URL+"/new" {
		t.Fatalf("moved: %v, %v", got, err)
	}
	// The ping at the new place is signed with the endpoint's secret, in
	// its content mode.
	reqs := moved.requests()
	if len(reqs) != 2 {
		t.Fatalf("the new endpoint got %v", reqs)
	}
	v, _ := webhook.NewVerifier(res.GetWebhookSecret())
	if err := v.Verify(reqs[1].header, reqs[1].body, time.Now()); err != nil || reqs[1].header.Get("ce-type") != "herald.endpoint.ping" || reqs[1].header.Get("X-Env") != "test" {
		t.Errorf("ping after the move: %v (%v)", err, reqs[1].header)
	}

	// Disabled by the application: when and why; enabling validates again
	// and clears them.
	got, err = update(client, hook(&registryv1.WebhookChannel{Disabled: true, DisabledReason: "not mine to say"}), "webhook.disabled")
	if err != nil || !got.GetWebhook().GetDisabled() || got.GetWebhook().GetDisabledReason() != "disabled by the application" || got.GetWebhook().GetDisableTime() == nil {
		t.Fatalf("disabled: %v, %v", got, err)
	}
	before := len(moved.requests())
	got, err = update(client, hook(&registryv1.WebhookChannel{}), "webhook.disabled")
	if err != nil || got.GetWebhook().GetDisabled() || got.GetWebhook().GetDisabledReason() != "" || got.GetWebhook().GetDisableTime() != nil {
		t.Fatalf("enabled: %v, %v", got, err)
	}
	if n := len(moved.requests()) - before; n != 2 {
		t.Errorf("enabling sent %d validation requests, want the handshake and the ping", n)
	}
	// The operator (the edge) disables with the failure as the reason.
	got, err = update(e.admin, hook(&registryv1.WebhookChannel{Disabled: true, DisabledReason: "failing since Monday: 500"}), "webhook.disabled")
	if err != nil || got.GetWebhook().GetDisabledReason() != "failing since Monday: 500" {
		t.Fatalf("disabled by the operator: %v, %v", got, err)
	}
	// Enabling an endpoint that now fails is refused; it stays disabled.
	moved.Close()
	_, err = update(client, hook(&registryv1.WebhookChannel{}), "webhook.disabled")
	wantCode(t, "enable an endpoint that is down", err, connect.CodeFailedPrecondition, "no answer")
	if cur := must(client.GetSubscription(ctx, connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: id}))).msg(t).GetSubscription(); !cur.GetWebhook().GetDisabled() {
		t.Errorf("a refused enable enabled it: %v", cur)
	}

	// Refusals.
	_, err = update(client, &registryv1.Subscription{Types: []string{"x.y.z"}}, "types")
	wantCode(t, "unknown path", err, connect.CodeInvalidArgument, `"types"`, "webhook.url")
	_, err = update(client, hook(&registryv1.WebhookChannel{}), "webhook.secrets")
	wantCode(t, "secrets path", err, connect.CodeInvalidArgument, `"webhook.secrets"`)
	_, err = update(client, &registryv1.Subscription{})
	wantCode(t, "empty mask", err, connect.CodeInvalidArgument, "update_mask is empty")
	_, err = update(client, hook(&registryv1.WebhookChannel{Timeout: durationpb.New(2 * time.Minute)}), "webhook.timeout")
	wantCode(t, "timeout out of bounds", err, connect.CodeInvalidArgument, "timeout is 2m0s")
	_, err = update(client, &registryv1.Subscription{Filter: "data.amount >"}, "filter")
	wantCode(t, "bad filter", err, connect.CodeInvalidArgument, "subscription.filter")
	_, err = update(client, &registryv1.Subscription{Delivery: &registryv1.DeliveryPolicy{MaxAttempts: 5000}}, "delivery")
	wantCode(t, "bad delivery", err, connect.CodeInvalidArgument, "max_attempts")
	_, err = update(client, &registryv1.Subscription{Filter: "true", Revision: 1}, "filter")
	wantCode(t, "stale revision", err, connect.CodeAborted, "revision 1")
	_, err = client.UpdateSubscription(ctx, connect.NewRequest(&registryv1.UpdateSubscriptionRequest{UpdateMask: []string{"filter"}}))
	wantCode(t, "no subscription", err, connect.CodeInvalidArgument, "subscription is required")
	_, err = update(client, &registryv1.Subscription{Id: "sub_unknown"}, "filter")
	wantCode(t, "unknown id", err, connect.CodeNotFound, "sub_unknown")
	stream := must(client.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		Types: []string{"billing.invoice.paid"}, Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
	}}))).msg(t).GetSubscription()
	_, err = update(client, &registryv1.Subscription{Id: stream.GetId()}, "webhook.url")
	wantCode(t, "webhook path on a stream", err, connect.CodeInvalidArgument, "stream", "webhook.url")
	if got, err := update(client, &registryv1.Subscription{Id: stream.GetId(), Filter: "true"}, "filter"); err != nil || got.GetFilter() != "true" {
		t.Errorf("filter of a stream subscription: %v, %v", got, err)
	}
}

// Another application's subscription is NOT_FOUND, as an unknown one;
// without a valid key, UNAUTHENTICATED.
func TestWebhookAccess(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, allowLoopback)
	ctx := context.Background()
	_, key := e.hookApp(t, "shop")
	other, otherKey := e.hookApp(t, "other")
	rc := newReceiver(t, consenting)
	res, err := createHook(ctx, e.as(key), &registryv1.WebhookChannel{Url: rc.URL})
	if err != nil {
		t.Fatal(err)
	}
	id := res.GetSubscription().GetId()
	upd := &registryv1.UpdateSubscriptionRequest{Subscription: &registryv1.Subscription{Id: id, Filter: "true"}, UpdateMask: []string{"filter"}}
	_, err = e.as(otherKey).UpdateSubscription(ctx, connect.NewRequest(upd))
	wantCode(t, "update another's", err, connect.CodeNotFound, id)
	_, err = e.as(otherKey).RotateWebhookSecret(ctx, connect.NewRequest(&registryv1.RotateWebhookSecretRequest{Id: id}))
	wantCode(t, "rotate another's", err, connect.CodeNotFound, id)
	// Nor may an application create an endpoint for another.
	_, err = e.as(otherKey).CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: "app_someone", Types: []string{"billing.invoice.paid"},
		Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: rc.URL}},
	}}))
	wantCode(t, "create for another", err, connect.CodeNotFound)
	for what, c := range map[string]string{"no key": "", "unknown key": "hk_not-a-key-at-all"} {
		_, err = e.as(c).UpdateSubscription(ctx, connect.NewRequest(upd))
		wantCode(t, what+": update", err, connect.CodeUnauthenticated)
		_, err = e.as(c).RotateWebhookSecret(ctx, connect.NewRequest(&registryv1.RotateWebhookSecretRequest{Id: id}))
		wantCode(t, what+": rotate", err, connect.CodeUnauthenticated)
	}
	// A revoked key.
	keys := must(e.admin.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: other.GetId()}))).msg(t).GetKeys()
	must(e.admin.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keys[0].GetId()}))).msg(t)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := e.as(otherKey).RotateWebhookSecret(ctx, connect.NewRequest(&registryv1.RotateWebhookSecretRequest{Id: id}))
		return connect.CodeOf(err) == connect.CodeUnauthenticated
	}, "a revoked key is refused")
	_, err = e.as(otherKey).UpdateSubscription(ctx, connect.NewRequest(upd))
	wantCode(t, "revoked key: update", err, connect.CodeUnauthenticated)
	if n := len(rc.requests()); n != 1 {
		t.Errorf("the endpoint got %d requests, want the creation handshake only", n)
	}
}

// Without HERALD_SECRET_KEY, webhook endpoints cannot be made (the operator
// is told what to set); stream subscriptions still work.
func TestWebhookWithoutSecretKey(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, allowLoopback, func(c *registry.Config) { c.SecretKey = "" })
	ctx := context.Background()
	_, key := e.hookApp(t, "shop")
	rc := newReceiver(t, consenting)
	_, err := createHook(ctx, e.as(key), &registryv1.WebhookChannel{Url: rc.URL})
	wantCode(t, "create without a secret key", err, connect.CodeFailedPrecondition, "HERALD_SECRET_KEY")
	if n := len(rc.requests()); n != 0 {
		t.Errorf("the endpoint got %d requests", n)
	}
	stream, err := e.as(key).CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		Types: []string{"billing.invoice.paid"}, Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
	}}))
	if err != nil || stream.Msg.GetWebhookSecret() != "" {
		t.Errorf("stream subscription without a secret key: %v", err)
	}
	// A key that is not one is refused at start.
	if _, err := registry.New(registry.Config{Common: e.common(), Addr: "127.0.0.1:0"}); err != nil {
		t.Errorf("New without a secret key: %v", err)
	}
	bad := e.common()
	bad.SecretKey = "not-base64-of-32-bytes"
	if _, err := registry.New(registry.Config{Common: bad, Addr: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "HERALD_SECRET_KEY") {
		t.Errorf("New with a bad secret key: %v", err)
	}
	bad = e.common()
	bad.WebhookAllow = "not a prefix/99"
	if _, err := registry.New(registry.Config{Common: bad, Addr: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "HERALD_WEBHOOK_ALLOW") {
		t.Errorf("New with a bad allowlist: %v", err)
	}
}

// The herald domain and its types are registered at start, through the
// catalog's own path (Watch streams them), and a restart changes nothing.
func TestMeshCatalog(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	check := func() {
		t.Helper()
		d := must(e.admin.GetDomain(ctx, connect.NewRequest(&registryv1.GetDomainRequest{Name: "herald"}))).msg(t).GetDomain()
		if d.GetOwner() != "herald" {
			t.Errorf("domain: %v", d)
		}
		disabled := must(e.admin.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "herald.endpoint.disabled"}))).msg(t).GetEventType()
		var schema struct {
			Required []string `json:"required"`
		}
		if err := json.Unmarshal([]byte(disabled.GetSchema()), &schema); err != nil || strings.Join(schema.Required, ",") != "subscription_id,application_id,reason,disable_time" {
			t.Errorf("herald.endpoint.disabled schema: %s (%v)", disabled.GetSchema(), err)
		}
		must(e.admin.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "herald.endpoint.ping"}))).msg(t)
	}
	check()
	rev := e.revision(t)
	if rev != 5 {
		t.Errorf("revision %d after start, want 5 (the domain and four types)", rev)
	}
	w := e.watch(t, 0)
	_, msgs := w.snapshot(t)
	var names []string
	for _, m := range msgs {
		if d := m.GetDomain(); d != nil {
			names = append(names, d.GetName())
		}
		if et := m.GetEventType(); et != nil {
			names = append(names, et.GetName())
		}
	}
	if strings.Join(names, ",") != "herald,herald.endpoint.disabled,herald.endpoint.ping,herald.invoice.finalized,herald.quota.warning" {
		t.Errorf("watched: %v", names)
	}
	// Restart on the same Redis, twice at once as two replicas would.
	e.stop()
	e2 := startWith(t, e.redis)
	e3 := startWith(t, e.redis)
	if r := e2.revision(t); r != rev {
		t.Errorf("revision %d after restarts, was %d: something was written again", r, rev)
	}
	e = e2
	check()
	_ = e3
}

// common is the configuration the env's registry runs with, for New.
func (e *env) common() config.Common {
	return config.Common{RedisURL: e.redis.URL(), AdminKey: adminKey, EdgeAddr: config.DefaultEdgeAddr}
}
