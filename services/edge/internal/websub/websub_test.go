package websub_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/edge/internal/websub"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/redis/go-redis/v9"
)

const (
	adminKey = "test-admin-key-0123456789"
	paid     = "billing.invoice.paid"
	sent     = "billing.invoice.sent"
	wait     = 30 * time.Second
)

// env is a real registry and a real edge on a private redis-server, with
// two event types and two applications (tenants) allowed to receive both.
type env struct {
	t      *testing.T
	rdb    *redis.Client
	reg    registryv1connect.RegistryServiceClient
	base   string // the edge, as subscribers reach it
	client *http.Client

	app, other    *registryv1.Application
	key, otherKey string
	common        config.Common
	stopEdge      func()
}

func start(t *testing.T) *env {
	t.Helper()
	srv := testutil.Redis(t)
	e := &env{t: t, rdb: testutil.RedisClient(t, srv)}
	tr := &http.Transport{}
	e.client = &http.Client{Transport: tr, Timeout: 20 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	edgeAddr := testutil.FreeAddr(t)
	e.common = config.Common{
		RedisURL: srv.URL(), AdminKey: adminKey, EdgeAddr: edgeAddr, PublicURL: "http://" + edgeAddr,
		SecretKey: secretbox.NewKey(), WebhookAllow: "127.0.0.0/8",
	}
	reg, err := registry.New(registry.Config{Common: e.common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	e.common.RegistryAddr = testutil.Serve(t, reg)
	e.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.RegistryAddr), rpc.ClientOptions(adminKey)...)
	ctx := context.Background()
	testutil.Eventually(t, wait, func() bool {
		_, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
			Name: paid, Description: "An invoice was paid.", Schema: `{"type":"object"}`,
		}}))
		return err == nil
	}, "the registry never answered")
	if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: sent, Description: "An invoice was sent.", Schema: `{"type":"object"}`,
	}})); err != nil {
		t.Fatal(err)
	}
	e.app, e.key = e.application("shop")
	e.other, e.otherKey = e.application("other-tenant")
	svc, err := edge.New(edge.Config{
		Common: e.common, Logger: slog.New(slog.DiscardHandler),
		WebSubRetry: []time.Duration{20 * time.Millisecond, 20 * time.Millisecond, 20 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	var addr string
	addr, e.stopEdge = testutil.Start(t, svc)
	e.base = rpc.BaseURL(addr)
	testutil.Eventually(t, wait, func() bool {
		res, err := e.client.Get(e.base + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "the edge never became ready")
	return e
}

// application creates an application allowed to receive billing.*.
func (e *env) application(name string) (*registryv1.Application, string) {
	e.t.Helper()
	res, err := e.reg.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: name, Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
	}}))
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Msg.GetApplication(), res.Msg.GetKey().GetSecret()
}

// setGrants replaces the application's subscribe grants and waits until
// the edge has the change (its topic discovery answers as the grants say).
func (e *env) setGrants(app *registryv1.Application, key string, patterns ...string) *registryv1.Application {
	e.t.Helper()
	cur, err := e.reg.GetApplication(context.Background(), connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))
	if err != nil {
		e.t.Fatal(err)
	}
	a := cur.Msg.GetApplication()
	a.Grants = nil
	for _, p := range patterns {
		a.Grants = append(a.Grants, &registryv1.Grant{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: p})
	}
	res, err := e.reg.UpdateApplication(context.Background(), connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: a}))
	if err != nil {
		e.t.Fatal(err)
	}
	want := http.StatusForbidden
	if slices.Contains(patterns, "billing.*") || slices.Contains(patterns, paid) {
		want = http.StatusOK
	}
	testutil.Eventually(e.t, wait, func() bool { code, _, _ := e.topic(key, paid); return code == want }, "the edge never saw the new grants")
	return res.Msg.GetApplication()
}

// topic asks for a topic's discovery.
func (e *env) topic(key, typ string) (int, http.Header, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.base+websub.TopicsPath+typ, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(body)
}

func (e *env) topicURL(typ string) string { return e.common.PublicURL + websub.TopicsPath + typ }

// request posts a form to the hub.
func (e *env) request(key string, form url.Values) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.base+websub.Path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

func subscribeForm(topic, callback string, extra ...string) url.Values {
	f := url.Values{"hub.mode": {"subscribe"}, "hub.topic": {topic}, "hub.callback": {callback}}
	for i := 0; i+1 < len(extra); i += 2 {
		f.Set(extra[i], extra[i+1])
	}
	return f
}

// subscribe asks for a subscription and waits until it is stored.
func (e *env) subscribe(key string, app *registryv1.Application, typ string, s *subscriber, extra ...string) string {
	e.t.Helper()
	if code, body := e.request(key, subscribeForm(e.topicURL(typ), s.callback(), extra...)); code != http.StatusAccepted {
		e.t.Fatalf("subscribe: %d %s", code, body)
	}
	id := websub.SubscriptionID(app.GetId(), typ, s.callback())
	testutil.Eventually(e.t, wait, func() bool { return e.live(id) }, "the subscription was never stored")
	return id
}

// stored reports whether a subscription is on record (live, or ended and
// not removed yet); live whether its lease is running.
func (e *env) stored(id string) bool {
	_, err := e.rdb.ZScore(context.Background(), websub.SubsKey, id).Result()
	return err == nil
}

func (e *env) live(id string) bool {
	s, err := e.rdb.ZScore(context.Background(), websub.SubsKey, id).Result()
	return err == nil && int64(s) > time.Now().UnixMilli()
}

// publish appends events to the log as the router does, and returns their
// cursors.
func (e *env) publish(typ string, ids ...string) []string {
	e.t.Helper()
	var out []string
	for _, id := range ids {
		ev := &eventv1.CloudEvent{
			Id: id, Source: "//billing.example", SpecVersion: "1.0", Type: typ,
			Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"invoice":%q}`, id)},
		}
		fields, err := eventlog.Encode(ev, "producer")
		if err != nil {
			e.t.Fatal(err)
		}
		c, err := e.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ), Values: fields}).Result()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// metric reads one sample of the edge's /metrics ("" when absent).
func (e *env) metric(sample string) string {
	e.t.Helper()
	res, err := e.client.Get(e.base + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return v
		}
	}
	return ""
}

func (e *env) waitMetric(sample, want string) {
	e.t.Helper()
	testutil.Eventually(e.t, wait, func() bool { return e.metric(sample) == want }, sample+" never reached "+want)
}

// usage lists the WebSub DELIVERED usage records.
func (e *env) usage() []*meteringv1.UsageRecord {
	return e.usageOf(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED)
}

// usageOf lists the WebSub usage records of a metric.
func (e *env) usageOf(metric meteringv1.UsageMetric) []*meteringv1.UsageRecord {
	e.t.Helper()
	msgs, err := e.rdb.XRange(context.Background(), usage.StreamKey, "-", "+").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*meteringv1.UsageRecord
	for _, m := range msgs {
		recs, err := usage.Decode(m)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range recs {
			if r.GetChannel() == websub.Channel && r.GetMetric() == metric {
				out = append(out, r)
			}
		}
	}
	return out
}

// pendingBy lists the consumers holding a subscription's pending entries
// on a type's stream.
func (e *env) pendingBy(id, typ string) []string {
	p, err := e.rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{
		Stream: eventlog.StreamKey(typ), Group: subscription.Group(id), Start: "-", End: "+", Count: 100,
	}).Result()
	if err != nil {
		return nil
	}
	var out []string
	for _, x := range p {
		out = append(out, x.Consumer)
	}
	return out
}

// subscriber is a WebSub subscriber whose answers a test decides.
type subscriber struct {
	*httptest.Server
	path string

	mu         sync.Mutex
	verifies   []url.Values
	deliveries []delivery
	// echo answers a verification: the body to send (the challenge by
	// default).
	echo func(q url.Values) string
	// status answers the n-th delivery (1-based); 204 by default.
	status func(n int) int
}

type delivery struct {
	header http.Header
	body   []byte
}

func newSubscriber(t *testing.T) *subscriber {
	s := &subscriber{path: "/callback/" + strings.ReplaceAll(t.Name(), "/", "-")}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			q := r.URL.Query()
			s.mu.Lock()
			s.verifies = append(s.verifies, q)
			echo := s.echo
			s.mu.Unlock()
			answer := q.Get("hub.challenge")
			if echo != nil {
				answer = echo(q)
			}
			_, _ = io.WriteString(w, answer)
		case http.MethodPost:
			body, _ := io.ReadAll(r.Body)
			s.mu.Lock()
			s.deliveries = append(s.deliveries, delivery{header: r.Header.Clone(), body: body})
			n, status := len(s.deliveries), s.status
			s.mu.Unlock()
			code := http.StatusNoContent
			if status != nil {
				code = status(n)
			}
			w.WriteHeader(code)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *subscriber) callback() string { return s.URL + s.path + "?tenant=shop" }

func (s *subscriber) got() []delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.deliveries)
}

func (s *subscriber) verifications() []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.verifies)
}

// ids are the CloudEvent ids delivered, in arrival order.
func (s *subscriber) ids() []string {
	var out []string
	for _, d := range s.got() {
		var ev struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(d.body, &ev)
		out = append(out, ev.ID)
	}
	return out
}

func (s *subscriber) waitIDs(t *testing.T, want ...string) {
	t.Helper()
	testutil.Eventually(t, wait, func() bool {
		got := s.ids()
		for _, w := range want {
			if !slices.Contains(got, w) {
				return false
			}
		}
		return true
	}, fmt.Sprintf("events %v never delivered", want))
}

func sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// A subscription is verified with the subscriber, then every event of its
// type reaches the callback as a CloudEvent, signed with the subscriber's
// secret, with the discovery links; each delivery is counted once.
func TestSubscribeVerifyDeliverSigned(t *testing.T) {
	e := start(t)
	code, h, body := e.topic(e.key, paid)
	if code != http.StatusOK {
		t.Fatalf("topic discovery: %d %s", code, body)
	}
	wantLinks := []string{"<" + e.common.PublicURL + `/websub>; rel="hub"`, "<" + e.topicURL(paid) + `>; rel="self"`}
	if !slices.Equal(h.Values("Link"), wantLinks) {
		t.Fatalf("discovery links %q, want %q", h.Values("Link"), wantLinks)
	}

	s := newSubscriber(t)
	const secret = "a shared secret of the subscriber"
	id := e.subscribe(e.key, e.app, paid, s, "hub.secret", secret, "hub.lease_seconds", "3600")
	v := s.verifications()
	if len(v) != 1 {
		t.Fatalf("%d verifications, want 1", len(v))
	}
	if v[0].Get("hub.mode") != "subscribe" || v[0].Get("hub.topic") != e.topicURL(paid) || v[0].Get("hub.lease_seconds") != "3600" ||
		len(v[0].Get("hub.challenge")) < 16 || v[0].Get("tenant") != "shop" {
		t.Fatalf("verification query %v", v[0])
	}
	// The secret is sealed at rest.
	stored, err := e.rdb.HGet(context.Background(), websub.RecordKey(id), "secret").Result()
	if err != nil || stored == "" || strings.Contains(stored, secret) {
		t.Fatalf("stored secret %q (%v): want it sealed", stored, err)
	}

	e.publish(paid, "inv-1", "inv-2")
	e.publish(sent, "not-subscribed")
	s.waitIDs(t, "inv-1", "inv-2")
	for _, d := range s.got() {
		if got, want := d.header.Get("X-Hub-Signature"), sign(secret, d.body); got != want {
			t.Fatalf("X-Hub-Signature %q, want %q", got, want)
		}
		if ct := d.header.Get("Content-Type"); ct != "application/cloudevents+json" {
			t.Fatalf("Content-Type %q", ct)
		}
		if !slices.Equal(d.header.Values("Link"), wantLinks) {
			t.Fatalf("delivery links %q", d.header.Values("Link"))
		}
		var ev map[string]any
		if err := json.Unmarshal(d.body, &ev); err != nil || ev["type"] != paid || ev["specversion"] != "1.0" {
			t.Fatalf("body %s", d.body)
		}
	}
	testutil.Eventually(t, wait, func() bool { return len(e.usage()) == 2 }, "deliveries never counted")
	for _, r := range e.usage() {
		if r.GetApplicationId() != e.app.GetId() || r.GetEventType() != paid || r.GetQuantity() != 1 ||
			r.GetMetric() != meteringv1.UsageMetric_USAGE_METRIC_DELIVERED || r.GetSubscription() != id ||
			r.GetId() != usage.DeliveryID(e.app.GetTenant(), e.app.GetId(), id, r.GetEventSource(), r.GetEventId(), websub.Channel) ||
			r.GetEventId() == "" || r.GetProducerApplicationId() == "" || r.GetAttempt() != 1 {
			t.Fatalf("usage record %v", r)
		}
	}
	if slices.Contains(s.ids(), "not-subscribed") {
		t.Fatal("an event of another type was delivered")
	}
}

// A failed delivery is tried again until the callback takes it, and is
// counted once.
func TestDeliveryRetried(t *testing.T) {
	e := start(t)
	s := newSubscriber(t)
	s.status = func(n int) int {
		if n <= 2 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}
	id := e.subscribe(e.key, e.app, paid, s)
	cursor := e.publish(paid, "retried")[0]
	testutil.Eventually(t, wait, func() bool { return len(s.got()) == 3 }, "never delivered three times")
	testutil.Eventually(t, wait, func() bool { return len(e.usage()) == 1 }, "the delivery was never counted")
	if r := e.usage()[0]; r.GetAttempt() != 3 || r.GetSubscription() != id {
		t.Fatalf("usage record %v", r)
	}
	// Each failed attempt counts once as FAILED, each attempt after the
	// first as RETRIED; none is billable.
	testutil.Eventually(t, wait, func() bool {
		return len(e.usageOf(meteringv1.UsageMetric_USAGE_METRIC_FAILED)) == 2 && len(e.usageOf(meteringv1.UsageMetric_USAGE_METRIC_RETRIED)) == 2
	}, "failed and retried attempts counted")
	_ = cursor
	if d := s.got()[2].header.Get("X-Hub-Signature"); d != "" {
		t.Fatalf("a subscription without hub.secret got X-Hub-Signature %q", d)
	}
	testutil.Eventually(t, wait, func() bool { return len(e.pendingBy(id, paid)) == 0 }, "the delivery was never acknowledged")
}

// A subscriber that does not echo the challenge is not subscribed.
func TestWrongChallengeNotSubscribed(t *testing.T) {
	e := start(t)
	bad := newSubscriber(t)
	bad.echo = func(url.Values) string { return "not the challenge" }
	if code, body := e.request(e.key, subscribeForm(e.topicURL(paid), bad.callback())); code != http.StatusAccepted {
		t.Fatalf("subscribe: %d %s", code, body)
	}
	e.waitMetric(`herald_websub_verifications_total{mode="subscribe",outcome="refused"}`, "1")
	if e.stored(websub.SubscriptionID(e.app.GetId(), paid, bad.callback())) {
		t.Fatal("a subscription whose challenge was not echoed was stored")
	}
	// A subscriber that answers an error is not subscribed either.
	failing := newSubscriber(t)
	failing.Close()
	if code, body := e.request(e.key, subscribeForm(e.topicURL(paid), failing.callback())); code != http.StatusAccepted {
		t.Fatalf("subscribe: %d %s", code, body)
	}
	e.waitMetric(`herald_websub_verifications_total{mode="subscribe",outcome="refused"}`, "2")

	good := newSubscriber(t)
	e.subscribe(e.key, e.app, paid, good)
	e.publish(paid, "after")
	good.waitIDs(t, "after")
	if n := len(bad.got()); n != 0 {
		t.Fatalf("the unverified callback got %d deliveries", n)
	}
	if n, _ := e.rdb.ZCard(context.Background(), websub.SubsKey).Result(); n != 1 {
		t.Fatalf("%d subscriptions stored, want 1", n)
	}
}

// Unsubscribing is verified too; another tenant cannot unsubscribe.
func TestUnsubscribe(t *testing.T) {
	e := start(t)
	s := newSubscriber(t)
	id := e.subscribe(e.key, e.app, paid, s)
	e.publish(paid, "before")
	s.waitIDs(t, "before")

	unsub := url.Values{"hub.mode": {"unsubscribe"}, "hub.topic": {e.topicURL(paid)}, "hub.callback": {s.callback()}}
	if code, body := e.request(e.otherKey, unsub); code != http.StatusNotFound {
		t.Fatalf("unsubscribe with another tenant's key: %d %s, want 404", code, body)
	}
	// A refused unsubscription keeps the subscription.
	s.mu.Lock()
	s.echo = func(q url.Values) string {
		if q.Get("hub.mode") == "unsubscribe" {
			return "no"
		}
		return q.Get("hub.challenge")
	}
	s.mu.Unlock()
	if code, body := e.request(e.key, unsub); code != http.StatusAccepted {
		t.Fatalf("unsubscribe: %d %s", code, body)
	}
	e.waitMetric(`herald_websub_verifications_total{mode="unsubscribe",outcome="refused"}`, "1")
	if !e.live(id) {
		t.Fatal("an unconfirmed unsubscription ended the subscription")
	}

	s.mu.Lock()
	s.echo = nil
	s.mu.Unlock()
	if code, body := e.request(e.key, unsub); code != http.StatusAccepted {
		t.Fatalf("unsubscribe: %d %s", code, body)
	}
	testutil.Eventually(t, wait, func() bool { return !e.live(id) }, "never unsubscribed")
	v := s.verifications()
	last := v[len(v)-1]
	if last.Get("hub.mode") != "unsubscribe" || last.Get("hub.topic") != e.topicURL(paid) || last.Get("hub.challenge") == "" {
		t.Fatalf("unsubscribe verification %v", last)
	}
	// Its consumer group is gone: nothing can deliver to it any more.
	testutil.Eventually(t, wait, func() bool {
		groups, err := e.rdb.XInfoGroups(context.Background(), eventlog.StreamKey(paid)).Result()
		return err == nil && !slices.ContainsFunc(groups, func(g redis.XInfoGroup) bool { return g.Name == subscription.Group(id) })
	}, "the consumer group was never removed")

	barrier := newSubscriber(t)
	e.subscribe(e.otherKey, e.other, paid, barrier)
	e.publish(paid, "after")
	barrier.waitIDs(t, "after")
	if slices.Contains(s.ids(), "after") {
		t.Fatal("delivered after unsubscribing")
	}
	if code, body := e.request(e.key, unsub); code != http.StatusNotFound {
		t.Fatalf("unsubscribe again: %d %s, want 404", code, body)
	}
}

// A lease ends delivery when it runs out; subscribing again renews it.
func TestLeaseExpiryAndRenewal(t *testing.T) {
	e := start(t)
	short := newSubscriber(t)
	id := e.subscribe(e.key, e.app, paid, short, "hub.lease_seconds", "5")
	if got := short.verifications()[0].Get("hub.lease_seconds"); got != "5" {
		t.Fatalf("lease %q", got)
	}
	e.publish(paid, "within")
	short.waitIDs(t, "within")

	renewed := newSubscriber(t)
	rid := e.subscribe(e.key, e.app, paid, renewed, "hub.lease_seconds", "5")
	first, _ := e.rdb.ZScore(context.Background(), websub.SubsKey, rid).Result()
	if code, body := e.request(e.key, subscribeForm(e.topicURL(paid), renewed.callback(), "hub.lease_seconds", "3600")); code != http.StatusAccepted {
		t.Fatalf("renew: %d %s", code, body)
	}
	testutil.Eventually(t, wait, func() bool {
		s, _ := e.rdb.ZScore(context.Background(), websub.SubsKey, rid).Result()
		return s > first+3000_000
	}, "the lease was never renewed")

	// The short lease runs out: the subscription and its group go.
	testutil.Eventually(t, wait, func() bool { return !e.stored(id) }, "the expired subscription was never removed")
	// And so has the first lease of the renewed one.
	testutil.Eventually(t, wait, func() bool { return time.Now().UnixMilli() > int64(first)+100 }, "the clock stopped")
	e.publish(paid, "after-expiry")
	renewed.waitIDs(t, "after-expiry")
	if slices.Contains(short.ids(), "after-expiry") {
		t.Fatal("delivered after the lease ran out")
	}
	if n := len(renewed.verifications()); n != 2 {
		t.Fatalf("%d verifications of the renewed subscription, want 2", n)
	}
}

// Callbacks go through the webhooks' outbound guard: refused at once, with
// the reason.
func TestDisallowedCallback(t *testing.T) {
	e := start(t)
	for _, cb := range []string{"http://169.254.169.254/latest", "http://10.1.2.3/hook", "ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/x", "not a url"} {
		code, body := e.request(e.key, subscribeForm(e.topicURL(paid), cb))
		if code != http.StatusBadRequest || !strings.Contains(body, "hub.callback") || !strings.Contains(body, "refused") {
			t.Errorf("callback %q: %d %s, want 400 naming hub.callback and why", cb, code, body)
		}
	}
}

// Every request needs an application key with a subscribe grant on the
// topic's type; what is malformed is refused with the reason.
func TestRequestsRefused(t *testing.T) {
	e := start(t)
	s := newSubscriber(t)
	noGrant, noGrantKey := e.application("no-grant")
	e.setGrants(noGrant, noGrantKey, sent)
	revoked, revokedKey := e.application("revoked")
	keys, err := e.reg.ListKeys(context.Background(), connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: revoked.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.RevokeKey(context.Background(), connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keys.Msg.GetKeys()[0].GetId()})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, wait, func() bool { code, _, _ := e.topic(revokedKey, paid); return code == http.StatusUnauthorized }, "the revoked key kept working")

	long := strings.Repeat("s", websub.MaxSecret)
	for _, c := range []struct {
		name, key string
		form      url.Values
		code      int
		says      string
	}{
		{"no key", "", subscribeForm(e.topicURL(paid), s.callback()), 401, ""},
		{"unknown key", "hk_unknown", subscribeForm(e.topicURL(paid), s.callback()), 401, ""},
		{"revoked key", revokedKey, subscribeForm(e.topicURL(paid), s.callback()), 401, ""},
		{"operator key", adminKey, subscribeForm(e.topicURL(paid), s.callback()), 403, "application"},
		{"no grant", noGrantKey, subscribeForm(e.topicURL(paid), s.callback()), 403, "grant"},
		{"unknown type", e.key, subscribeForm(e.topicURL("billing.invoice.unknown"), s.callback()), 404, "not registered"},
		{"foreign topic", e.key, subscribeForm("https://elsewhere.example/v1/topics/"+paid, s.callback()), 400, "hub.topic"},
		{"bad mode", e.key, subscribeForm(e.topicURL(paid), s.callback(), "hub.mode", "publish"), 400, "hub.mode"},
		{"no callback", e.key, subscribeForm(e.topicURL(paid), ""), 400, "hub.callback"},
		{"bad lease", e.key, subscribeForm(e.topicURL(paid), s.callback(), "hub.lease_seconds", "-5"), 400, "hub.lease_seconds"},
		{"long secret", e.key, subscribeForm(e.topicURL(paid), s.callback(), "hub.secret", long), 400, "hub.secret"},
	} {
		code, body := e.request(c.key, c.form)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("%s: %d %s, want %d saying %q", c.name, code, body, c.code, c.says)
		}
		for _, internal := range []string{"redis", e.common.RegistryAddr, "herald:"} {
			if strings.Contains(body, internal) {
				t.Errorf("%s: answer %q names %q", c.name, body, internal)
			}
		}
	}
	// Not a form.
	req, _ := http.NewRequest(http.MethodPost, e.base+websub.Path, strings.NewReader(`{"hub.mode":"subscribe"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+e.key)
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("JSON request: %d, want 400", res.StatusCode)
	}
	// Discovery is authenticated and granted too.
	for _, c := range []struct {
		key  string
		typ  string
		code int
	}{{"", paid, 401}, {revokedKey, paid, 401}, {noGrantKey, paid, 403}, {e.key, "billing.invoice.unknown", 404}, {adminKey, paid, 200}, {e.key, "Not-A-Type", 400}} {
		if code, _, body := e.topic(c.key, c.typ); code != c.code {
			t.Errorf("discovery of %s with key %q: %d %s, want %d", c.typ, c.key, code, body, c.code)
		}
	}
	if len(s.verifications()) != 0 {
		t.Fatalf("a refused request was verified: %v", s.verifications())
	}
}

// A grant withdrawn from an existing subscription stops its delivery: the
// events stay pending, and come once the grant is back. A new subscription
// is refused meanwhile.
func TestWithdrawnGrantStopsDelivery(t *testing.T) {
	e := start(t)
	s := newSubscriber(t)
	e.subscribe(e.key, e.app, paid, s)
	e.publish(paid, "granted")
	s.waitIDs(t, "granted")

	e.setGrants(e.app, e.key, sent)
	if code, body := e.request(e.key, subscribeForm(e.topicURL(paid), newSubscriber(t).callback())); code != http.StatusForbidden {
		t.Fatalf("subscribe without the grant: %d %s, want 403", code, body)
	}
	e.publish(paid, "withheld")
	barrier := newSubscriber(t)
	e.subscribe(e.otherKey, e.other, paid, barrier)
	e.publish(paid, "barrier")
	barrier.waitIDs(t, "barrier")
	if slices.Contains(s.ids(), "withheld") || slices.Contains(s.ids(), "barrier") {
		t.Fatalf("delivered without the grant: %v", s.ids())
	}

	e.setGrants(e.app, e.key, "billing.*")
	s.waitIDs(t, "withheld", "barrier")
}

// A subscription with hub.secret needs HERALD_SECRET_KEY; without a secret
// it works without one.
func TestSecretNeedsKey(t *testing.T) {
	e := start(t)
	// A second edge on the same mesh, without the key.
	common := e.common
	common.SecretKey = ""
	common.EdgeAddr = testutil.FreeAddr(t)
	common.PublicURL = "http://" + common.EdgeAddr
	svc, err := edge.New(edge.Config{Common: common, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	other := &env{t: t, rdb: e.rdb, reg: e.reg, client: e.client, common: common, base: rpc.BaseURL(testutil.Serve(t, svc)), app: e.app, key: e.key}
	testutil.Eventually(t, wait, func() bool { code, _, _ := other.topic(e.key, paid); return code == http.StatusOK }, "the second edge never served")
	s := newSubscriber(t)
	code, body := other.request(e.key, subscribeForm(other.topicURL(paid), s.callback(), "hub.secret", "x"))
	if code != http.StatusBadRequest || !strings.Contains(body, "HERALD_SECRET_KEY") {
		t.Fatalf("secret without a key: %d %s", code, body)
	}
	other.subscribe(e.key, e.app, paid, s)
}

// A grant withdrawn while the subscriber answers the verification: the
// subscription is denied (hub.mode=denied, with the reason) and not made.
func TestDeniedWhenGrantWithdrawnDuringVerification(t *testing.T) {
	e := start(t)
	s := newSubscriber(t)
	s.echo = func(q url.Values) string {
		if q.Get("hub.mode") == "subscribe" {
			e.setGrants(e.app, e.key, sent)
		}
		return q.Get("hub.challenge")
	}
	if code, body := e.request(e.key, subscribeForm(e.topicURL(paid), s.callback())); code != http.StatusAccepted {
		t.Fatalf("subscribe: %d %s", code, body)
	}
	testutil.Eventually(t, wait, func() bool { return len(s.verifications()) == 2 }, "never denied")
	d := s.verifications()[1]
	if d.Get("hub.mode") != "denied" || d.Get("hub.topic") != e.topicURL(paid) || !strings.Contains(d.Get("hub.reason"), "grant") || d.Get("tenant") != "shop" {
		t.Fatalf("denial %v", d)
	}
	e.waitMetric(`herald_websub_verifications_total{mode="subscribe",outcome="denied"}`, "1")
	if e.stored(websub.SubscriptionID(e.app.GetId(), paid, s.callback())) {
		t.Fatal("a denied subscription was stored")
	}
}

// Two edges share the subscriptions: one delivers each (it holds the
// lease); when it stops, the other takes over.
func TestSecondEdgeTakesOver(t *testing.T) {
	e := start(t)
	common := e.common
	common.EdgeAddr = testutil.FreeAddr(t)
	svc, err := edge.New(edge.Config{Common: common, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	second := rpc.BaseURL(testutil.Serve(t, svc))
	testutil.Eventually(t, wait, func() bool {
		res, err := e.client.Get(second + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "the second edge never became ready")

	s := newSubscriber(t)
	const secret = "shared by both edges"
	id := e.subscribe(e.key, e.app, paid, s, "hub.secret", secret)
	e.publish(paid, "one")
	s.waitIDs(t, "one")
	testutil.Eventually(t, wait, func() bool { return len(e.pendingBy(id, paid)) == 0 }, "never acknowledged")
	e.stopEdge()
	e.publish(paid, "two")
	s.waitIDs(t, "two")
	for _, d := range s.got() {
		if d.header.Get("X-Hub-Signature") != sign(secret, d.body) {
			t.Fatalf("signature %q", d.header.Get("X-Hub-Signature"))
		}
	}
	if n := len(s.ids()); n != 2 {
		t.Fatalf("delivered %v, want each once", s.ids())
	}
	if holder, _ := e.rdb.Get(context.Background(), "herald:websub:lease:"+id).Result(); holder == "" {
		t.Fatal("nobody holds the lease")
	}
}

// A renewal may change hub.secret: deliveries are then signed with the new
// one (within a sync of the edges), and never with anything else.
func TestRenewalChangesSecret(t *testing.T) {
	e := start(t)
	s := newSubscriber(t)
	id := e.subscribe(e.key, e.app, paid, s, "hub.secret", "first secret", "hub.lease_seconds", "600")
	e.publish(paid, "old")
	s.waitIDs(t, "old")
	before, _ := e.rdb.ZScore(context.Background(), websub.SubsKey, id).Result()
	if code, body := e.request(e.key, subscribeForm(e.topicURL(paid), s.callback(), "hub.secret", "second secret", "hub.lease_seconds", "1200")); code != http.StatusAccepted {
		t.Fatalf("renew: %d %s", code, body)
	}
	testutil.Eventually(t, wait, func() bool {
		now, _ := e.rdb.ZScore(context.Background(), websub.SubsKey, id).Result()
		return now > before
	}, "never renewed")
	n := 0
	testutil.Eventually(t, wait, func() bool {
		n++
		evID := fmt.Sprintf("new-%d", n)
		e.publish(paid, evID)
		s.waitIDs(t, evID)
		for _, d := range s.got() {
			if strings.Contains(string(d.body), `"`+evID+`"`) {
				return d.header.Get("X-Hub-Signature") == sign("second secret", d.body)
			}
		}
		return false
	}, "never signed with the new secret")
	for _, d := range s.got() {
		if h := d.header.Get("X-Hub-Signature"); h != sign("first secret", d.body) && h != sign("second secret", d.body) {
			t.Fatalf("signature %q matches neither secret", h)
		}
	}
}
