package mesh_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
	"github.com/heraldmesh/herald/platform/webhook"
	"google.golang.org/protobuf/types/known/durationpb"
)

// startWebhooks runs the mesh with a secret key and local receivers
// allowlisted.
func startWebhooks(t *testing.T) *env {
	return startWith(t, func(c *config.Common) {
		c.SecretKey = secretbox.NewKey()
		c.WebhookAllow = "127.0.0.0/8"
	})
}

// hit is one request a receiver got.
type hit struct {
	header http.Header
	body   []byte
	at     time.Time
}

// receiver is a local webhook endpoint whose answers a test decides.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	hits   []hit
	answer func(n int, h hit, w http.Header) int // status (and response headers) for the n-th POST (1-based)
}

func newReceiver(t *testing.T, answer func(n int, h hit) int) *receiver {
	if answer == nil {
		return newResponder(t, nil)
	}
	return newResponder(t, func(n int, h hit, _ http.Header) int { return answer(n, h) })
}

// newResponder is newReceiver with answers that may set response headers
// (Location, Retry-After).
func newResponder(t *testing.T, answer func(n int, h hit, w http.Header) int) *receiver {
	r := &receiver{answer: answer}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

// serve records a delivery and answers it (a validation ping is answered
// 204 and not recorded).
func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.WriteHeader(http.StatusMethodNotAllowed) // no handshake: the registry falls back to a ping
		return
	}
	body, _ := io.ReadAll(req.Body)
	h := hit{header: req.Header.Clone(), body: body, at: time.Now()}
	if req.Header.Get("webhook-id") != "" && (isPing(body) || req.Header.Get("ce-type") == "herald.endpoint.ping") {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	r.mu.Lock()
	r.hits = append(r.hits, h)
	n := len(r.hits)
	r.mu.Unlock()
	status := http.StatusNoContent
	if r.answer != nil {
		status = r.answer(n, h, w.Header())
	}
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "answer %d", n)
}

func isPing(body []byte) bool {
	var ev struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(body, &ev) == nil && ev.Type == "herald.endpoint.ping"
}

func (r *receiver) got() []hit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.hits)
}

// ids are the webhook-ids received, in order.
func (r *receiver) ids() []string {
	var out []string
	for _, h := range r.got() {
		out = append(out, h.header.Get("webhook-id"))
	}
	return out
}

// createEndpoint creates a webhook subscription of the test application and
// returns it with its secret.
func (e *env) createEndpoint(t *testing.T, wh *registryv1.WebhookChannel, types ...string) (*registryv1.Subscription, string) {
	t.Helper()
	return e.createEndpointOf(t, e.appID, wh, types...)
}

// createEndpointOf is createEndpoint for another application.
func (e *env) createEndpointOf(t *testing.T, appID string, wh *registryv1.WebhookChannel, types ...string) (*registryv1.Subscription, string) {
	t.Helper()
	if len(types) == 0 {
		types = []string{e.invoice}
	}
	res, err := e.reg.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: appID, Types: types, Channel: &registryv1.Subscription_Webhook{Webhook: wh},
	}}))
	if err != nil {
		t.Fatalf("create webhook subscription: %v", err)
	}
	return res.Msg.GetSubscription(), res.Msg.GetWebhookSecret()
}

func (e *env) webhooks(key string) edgev1connect.WebhookServiceClient {
	return edgev1connect.NewWebhookServiceClient(http.DefaultClient, rpc.BaseURL(e.common.EdgeAddr), connect.WithInterceptors(bearer(key)))
}

func bearer(key string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+key)
			return next(ctx, req)
		}
	}
}

func short(ds ...time.Duration) []*durationpb.Duration {
	out := make([]*durationpb.Duration, len(ds))
	for i, d := range ds {
		out[i] = durationpb.New(d)
	}
	return out
}

// webhookCount is the webhook deliveries metering counted for the app.
func (e *env) webhookCount(t *testing.T) int64 {
	t.Helper()
	req, _ := http.NewRequest("GET", rpc.BaseURL(e.common.MeteringAddr)+"/v1/usage?metric=USAGE_METRIC_DELIVERED", nil)
	req.Header.Set("Authorization", "Bearer "+e.appKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Rows []struct {
			Channel string `json:"channel"`
			Count   string `json:"count"`
		} `json:"rows"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, r := range body.Rows {
		if r.Channel == "webhook" {
			var c int64
			fmt.Sscan(r.Count, &c)
			n += c
		}
	}
	return n
}

func TestWebhookDeliveredSignedAndVerifiedByBothLibraries(t *testing.T) {
	e := startWebhooks(t)
	r := newReceiver(t, nil)
	sub, secret := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL + "/hooks"})
	if len(secret) < len("whsec_")+32 {
		t.Fatalf("secret %q", secret)
	}
	cursors := e.publish(invoiceEvent("inv-1", 10), invoiceEvent("inv-2", 20))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 2 }, "both events delivered")
	v, err := webhook.NewVerifier(secret)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range r.got() {
		if err := v.Verify(h.header, h.body, time.Now()); err != nil {
			t.Fatalf("delivery %d does not verify: %v", i, err)
		}
		if ct := h.header.Get("Content-Type"); ct != "application/cloudevents+json" {
			t.Fatalf("content type %q", ct)
		}
		var ev map[string]any
		// Unordered endpoint: either order.
		if err := json.Unmarshal(h.body, &ev); err != nil || (ev["id"] != "inv-1" && ev["id"] != "inv-2") || h.header.Get("webhook-id") != ev["id"] {
			t.Fatalf("body %s, webhook-id %q", h.body, h.header.Get("webhook-id"))
		}
	}
	// The attempts are on record, per endpoint and per event (the edge
	// records one once it has read the answer: a moment after the receiver
	// sees the request).
	wh := e.webhooks(e.appKey)
	var at *connect.Response[edgev1.ListAttemptsResponse]
	testutil.Eventually(t, 10*time.Second, func() bool {
		var err error
		at, err = wh.ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: sub.GetId(), Cursor: cursors[0]}))
		if err != nil {
			t.Fatal(err)
		}
		return len(at.Msg.GetAttempts()) > 0
	}, "the attempt on record")
	if len(at.Msg.GetAttempts()) != 1 || !at.Msg.GetAttempts()[0].GetSuccess() || at.Msg.GetAttempts()[0].GetStatus() != 204 || at.Msg.GetAttempts()[0].GetNumber() != 1 {
		t.Fatalf("attempts: %v", at.Msg.GetAttempts())
	}
	// The npm standardwebhooks library verifies what Herald signs: the
	// endpoint moves to a node receiver that knows its secret.
	nodeOwn := nodehook.Start(t, secret)
	if _, err := e.reg.UpdateSubscription(context.Background(), connect.NewRequest(&registryv1.UpdateSubscriptionRequest{
		Subscription: &registryv1.Subscription{Id: sub.GetId(), Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: nodeOwn.URL()}}},
		UpdateMask:   []string{"webhook.url"},
	})); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the edge restarts the endpoint on the change
	e.publish(invoiceEvent("inv-3", 30))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(nodeOwn.Results(t)) >= 2 }, "node receiver got the ping and the event")
	for _, res := range nodeOwn.Results(t) {
		if !res.Valid {
			t.Fatalf("the npm standardwebhooks library refused Herald's signature: %+v", res)
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return e.webhookCount(t) == 3 }, "three webhook deliveries counted")
}

func TestWebhookRetriedUntilSuccessOnceWithTheSameID(t *testing.T) {
	e := startWebhooks(t)
	r := newReceiver(t, func(n int, _ hit) int {
		if n == 1 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	sub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL, RetrySchedule: short(50 * time.Millisecond)})
	cur := e.publish(invoiceEvent("retry-me", 1))[0]
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 2 }, "delivered twice")
	time.Sleep(300 * time.Millisecond)
	if ids := r.ids(); len(ids) != 2 || ids[0] != "retry-me" || ids[1] != "retry-me" {
		t.Fatalf("webhook-ids %v", ids)
	}
	at, err := e.webhooks(e.appKey).ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: sub.GetId(), Cursor: cur}))
	if err != nil {
		t.Fatal(err)
	}
	a := at.Msg.GetAttempts()
	if len(a) != 2 || a[0].GetNumber() != 2 || !a[0].GetSuccess() || a[1].GetStatus() != 500 || a[1].GetSuccess() || string(a[1].GetResponseBody()) != "answer 1" {
		t.Fatalf("attempts (newest first): %v", a)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return e.webhookCount(t) == 1 }, "one delivery counted")
	time.Sleep(1500 * time.Millisecond)
	if n := e.webhookCount(t); n != 1 {
		t.Fatalf("counted %d deliveries for one event delivered after a retry", n)
	}
}

func TestWebhookDeadLetterWithAttemptsThenReplay(t *testing.T) {
	e := startWebhooks(t)
	var failing atomic.Bool
	failing.Store(true)
	r := newReceiver(t, func(int, hit) int {
		if failing.Load() {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	sub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL, RetrySchedule: short(20*time.Millisecond, 20*time.Millisecond)})
	cur := e.publish(invoiceEvent("doomed", 1))[0]
	wh := e.webhooks(e.appKey)
	var dead *edgev1.WebhookDeadLetter
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := wh.ListWebhookDeadLetters(context.Background(), connect.NewRequest(&edgev1.ListWebhookDeadLettersRequest{SubscriptionId: sub.GetId()}))
		if err != nil || len(res.Msg.GetDeadLetters()) == 0 {
			return false
		}
		dead = res.Msg.GetDeadLetters()[0]
		return true
	}, "dead-lettered after three attempts")
	if dead.GetCursor() != cur || len(dead.GetAttempts()) != 3 || len(r.got()) != 3 {
		t.Fatalf("dead letter %v; %d requests", dead, len(r.got()))
	}
	for i, a := range dead.GetAttempts() {
		if a.GetNumber() != int32(i+1) || a.GetStatus() != 503 || a.GetResponseHeaders() == nil {
			t.Fatalf("attempt %d: %v", i, a)
		}
	}
	failing.Store(false)
	res, err := wh.Replay(context.Background(), connect.NewRequest(&edgev1.ReplayRequest{SubscriptionId: sub.GetId(), Selection: &edgev1.ReplayRequest_FailedSince{FailedSince: dead.GetTime()}}))
	if err != nil || res.Msg.GetQueued() != 1 {
		t.Fatalf("replay: %v %v", res, err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 4 }, "replayed delivery")
	if r.ids()[3] != "doomed" {
		t.Fatalf("replayed id %q", r.ids()[3])
	}
	// The replayed attempt is recorded once its response is in.
	testutil.Eventually(t, 10*time.Second, func() bool {
		at, err := wh.ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: sub.GetId(), Cursor: cur}))
		return err == nil && len(at.Msg.GetAttempts()) == 4
	}, "the replayed attempt on record")
	// A manual retry is an attempt on record too.
	rd, err := wh.RetryDelivery(context.Background(), connect.NewRequest(&edgev1.RetryDeliveryRequest{SubscriptionId: sub.GetId(), Cursor: cur}))
	if err != nil || !rd.Msg.GetAttempt().GetSuccess() || rd.Msg.GetAttempt().GetTrigger() != edgev1.AttemptTrigger_ATTEMPT_TRIGGER_MANUAL || rd.Msg.GetAttempt().GetNumber() != 5 {
		t.Fatalf("manual retry: %v %v", rd, err)
	}
	// A range of the log, by cursor, to this endpoint.
	more := e.publish(invoiceEvent("r1", 1), invoiceEvent("r2", 2))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 7 }, "new events")
	res, err = wh.Replay(context.Background(), connect.NewRequest(&edgev1.ReplayRequest{SubscriptionId: sub.GetId(), Selection: &edgev1.ReplayRequest_Range{Range: &edgev1.LogRange{
		From: &edgev1.LogRange_AfterCursor{AfterCursor: cur}, To: &edgev1.LogRange_ToCursor{ToCursor: more[1]},
	}}}))
	if err != nil || res.Msg.GetQueued() != 2 {
		t.Fatalf("range replay: %v %v", res, err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 9 }, "range replayed")
	// The endpoint is unordered: the two replayed deliveries may cross.
	if ids := slices.Sorted(slices.Values(r.ids()[7:])); ids[0] != "r1" || ids[1] != "r2" {
		t.Fatalf("range replay order %v", ids)
	}
	// Counted once per event, whatever the number of deliveries.
	testutil.Eventually(t, 20*time.Second, func() bool { return e.webhookCount(t) == 3 }, "three events counted")
}

func TestWebhookOrderedPerKeyThroughRetries(t *testing.T) {
	e := startWebhooks(t)
	var mu sync.Mutex
	failedOnce := map[string]bool{}
	r := newReceiver(t, func(_ int, h hit) int {
		var ev struct {
			ID  string `json:"id"`
			Key string `json:"partitionkey"`
		}
		_ = json.Unmarshal(h.body, &ev)
		mu.Lock()
		defer mu.Unlock()
		// The first event of key a fails twice before it succeeds.
		if ev.ID == "a1" && !failedOnce["a1#2"] {
			if failedOnce["a1"] {
				failedOnce["a1#2"] = true
			}
			failedOnce["a1"] = true
			return http.StatusBadGateway
		}
		return http.StatusOK
	})
	e.createEndpoint(t, &registryv1.WebhookChannel{
		Url: r.URL, Ordering: registryv1.WebhookOrdering_WEBHOOK_ORDERING_PARTITION_KEY, MaxConcurrency: 4,
		RetrySchedule: short(100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond),
	})
	keyed := func(id, key string) *eventv1.CloudEvent {
		ev := invoiceEvent(id, 1)
		ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"partitionkey": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: key}},
		}
		return ev
	}
	e.publish(keyed("a1", "a"), keyed("b1", "b"), keyed("a2", "a"), keyed("b2", "b"), keyed("a3", "a"))
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 7 }, "five events, two retries")
	var a, b []string
	for _, id := range r.ids() {
		switch id[0] {
		case 'a':
			a = append(a, id)
		case 'b':
			b = append(b, id)
		}
	}
	if !slices.Equal(a, []string{"a1", "a1", "a1", "a2", "a3"}) || !slices.Equal(b, []string{"b1", "b2"}) {
		t.Fatalf("order per key: a %v, b %v", a, b)
	}
	// Key b did not wait for key a's retries.
	ids := r.ids()
	if slices.Index(ids, "b2") > slices.Index(ids, "a2") {
		t.Fatalf("key b waited behind key a: %v", ids)
	}
}

func TestWebhookSlowEndpointDoesNotDelayAHealthyOne(t *testing.T) {
	e := startWebhooks(t)
	release := make(chan struct{})
	slow := newReceiver(t, func(int, hit) int { <-release; return http.StatusOK })
	fast := newReceiver(t, nil)
	t.Cleanup(func() { close(release) }) // before the receivers close: cleanups run last first
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: slow.URL, MaxConcurrency: 1})
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: fast.URL})
	for i := range 20 {
		e.publish(invoiceEvent(fmt.Sprintf("e%d", i), i))
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(fast.got()) == 20 }, "the healthy endpoint got everything while the slow one holds its first request")
	if n := len(slow.got()); n != 1 {
		t.Fatalf("the slow endpoint (concurrency 1) got %d requests at once", n)
	}
}

func TestWebhookGoneDisablesAndPublishesEndpointDisabled(t *testing.T) {
	e := startWebhooks(t)
	r := newReceiver(t, func(int, hit) int { return http.StatusGone })
	watcher := newReceiver(t, nil)
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: watcher.URL}, "herald.endpoint.disabled")
	sub, _ := e.createEndpoint(t, &registryv1.WebhookChannel{Url: r.URL})
	e.publish(invoiceEvent("gone", 1))
	testutil.Eventually(t, 20*time.Second, func() bool {
		got, err := e.reg.GetSubscription(context.Background(), connect.NewRequest(&registryv1.GetSubscriptionRequest{Id: sub.GetId()}))
		return err == nil && got.Msg.GetSubscription().GetWebhook().GetDisabled()
	}, "endpoint disabled after 410")
	testutil.Eventually(t, 20*time.Second, func() bool { return len(watcher.got()) == 1 }, "herald.endpoint.disabled delivered")
	var ev struct {
		Type string            `json:"type"`
		Data map[string]string `json:"data"`
	}
	if err := json.Unmarshal(watcher.got()[0].body, &ev); err != nil || ev.Type != "herald.endpoint.disabled" || ev.Data["subscription_id"] != sub.GetId() {
		t.Fatalf("disabled event %s", watcher.got()[0].body)
	}
	if n := len(r.got()); n != 1 {
		t.Fatalf("a gone endpoint got %d requests", n)
	}
}

// WebhookService answers only the endpoint's own application (and the
// operator): no key and a revoked key are UNAUTHENTICATED, another
// tenant's key is NOT_FOUND, as for an endpoint that does not exist, and no
// error carries internals.
func TestWebhookServiceAccess(t *testing.T) {
	e := startWebhooks(t)
	r := newReceiver(t, nil)
	owner, ownerKey, ownerKeyID := e.newReader(t, "partner")
	_, strangerKey, _ := e.newReader(t, "stranger")
	res, err := e.reg.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: owner.GetId(), Types: []string{e.invoice}, Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: r.URL}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	subID := res.Msg.GetSubscription().GetId()
	list := func(key string) error {
		_, err := e.webhooks(key).ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: subID}))
		return err
	}
	if err := list(ownerKey); err != nil {
		t.Fatalf("owner: %v", err)
	}
	noKey := edgev1connect.NewWebhookServiceClient(http.DefaultClient, rpc.BaseURL(e.common.EdgeAddr))
	if _, err := noKey.ListAttempts(context.Background(), connect.NewRequest(&edgev1.ListAttemptsRequest{SubscriptionId: subID})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("no key: %v", err)
	}
	err = list(strangerKey)
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("another tenant's key: %v", err)
	}
	for _, leak := range []string{"127.0.0.1", "herald:", r.URL} {
		if strings.Contains(err.Error(), leak) {
			t.Fatalf("error carries %q: %v", leak, err)
		}
	}
	if _, err := e.webhooks(strangerKey).Replay(context.Background(), connect.NewRequest(&edgev1.ReplayRequest{SubscriptionId: subID, Selection: &edgev1.ReplayRequest_Cursor{Cursor: "0-1"}})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("another tenant's replay: %v", err)
	}
	if _, err := e.reg.RevokeKey(context.Background(), connect.NewRequest(&registryv1.RevokeKeyRequest{Id: ownerKeyID})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return connect.CodeOf(list(ownerKey)) == connect.CodeUnauthenticated }, "a revoked key is refused")
}
