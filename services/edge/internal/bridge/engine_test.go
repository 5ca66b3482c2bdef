package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/heraldmesh/herald/services/router"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const adminKey = "hk_bridge_engine_test_admin_key_0123456789"

// env is a registry, a router and a catalog cache over a private
// redis-server: what the engine runs against in an edge.
type env struct {
	t         *testing.T
	rdb       *redis.Client
	reg       registryv1connect.RegistryServiceClient
	router    routerv1connect.RouterServiceClient
	routerURL string
	cat       *catalog.Cache
	box       *secretbox.Box
	appID     string
	appKey    string
}

func start(t *testing.T) *env {
	t.Helper()
	srv := testutil.Redis(t)
	key := secretbox.NewKey()
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey, SecretKey: key}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	common.RegistryAddr = testutil.Serve(t, reg)
	rt, err := router.New(router.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	common.RouterAddr = testutil.Serve(t, rt)
	box, err := secretbox.New(key)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, rdb: testutil.RedisClient(t, srv), box: box, routerURL: rpc.BaseURL(common.RouterAddr)}
	e.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...)
	e.router = routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), e.routerURL, rpc.ClientOptions(adminKey)...)
	ctx := context.Background()
	testutil.Eventually(t, 20*time.Second, func() bool {
		_, err := e.reg.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))
		return err == nil
	}, "the registry answers")
	for _, n := range []string{"shop.order.paid", "shop.order.created"} {
		if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
			Name: n, Schema: `{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}`,
		}})); err != nil {
			t.Fatal(err)
		}
	}
	app, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "shop", Tenant: "acme", Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "shop.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "shop.*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	e.appID, e.appKey = app.Msg.GetApplication().GetId(), app.Msg.GetKey().GetSecret()
	e.cat = catalog.New(e.reg, slog.New(slog.DiscardHandler))
	cctx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	go func() { _ = e.cat.Run(cctx) }()
	testutil.Eventually(t, 10*time.Second, func() bool { return e.cat.Ready(ctx) == nil }, "the catalog is synced")
	return e
}

// engine starts an engine with systems; stop ends it (as a process that
// shuts down would).
func (e *env) engine(sys bridge.Systems) (eng *bridge.Engine, stop func()) {
	eng = bridge.New(bridge.Options{
		Redis: e.rdb, Catalog: e.cat, Box: e.box, Systems: sys,
		Router: func(key string) routerv1connect.RouterServiceClient {
			return routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), e.routerURL, rpc.ClientOptions(key)...)
		},
		LeaseTTL: time.Second, AckTimeout: time.Second,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = eng.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	return eng, stop
}

func (e *env) sink(name string, sink *registryv1.BridgeSink) *registryv1.Bridge {
	e.t.Helper()
	res, err := e.reg.CreateBridge(context.Background(), connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: &registryv1.Bridge{
		Name: name, ApplicationId: e.appID, Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://127.0.0.1:1"}},
		Sink:   sink,
	}}))
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Msg.GetBridge()
}

// publish publishes n events of typ with the partition keys keys[i%len].
func (e *env) publish(typ string, from, n int, keys ...string) []string {
	e.t.Helper()
	var evs []*eventv1.CloudEvent
	for i := from; i < from+n; i++ {
		ev := &eventv1.CloudEvent{Id: fmt.Sprintf("e%d", i), Source: "/shop", SpecVersion: "1.0", Type: typ,
			Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"n":%d}`, i)}}
		if len(keys) > 0 {
			ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{"partitionkey": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: keys[i%len(keys)]}}}
		}
		evs = append(evs, ev)
	}
	pub := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), e.routerURL, rpc.ClientOptions(e.appKey)...)
	res, err := pub.Publish(context.Background(), connect.NewRequest(&routerv1.PublishRequest{Events: evs}))
	if err != nil {
		e.t.Fatal(err)
	}
	var cursors []string
	for _, r := range res.Msg.GetResults() {
		if r.GetError() != nil {
			e.t.Fatalf("publish refused: %v", r.GetError())
		}
		cursors = append(cursors, r.GetCursor())
	}
	return cursors
}

// delivered returns the DELIVERED usage records of a channel, by event id.
func (e *env) delivered(channel string) map[string]int {
	e.t.Helper()
	msgs, err := e.rdb.XRange(context.Background(), usage.StreamKey, "-", "+").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	seen := map[string]bool{}
	for _, m := range msgs {
		recs, err := usage.Decode(m)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range recs {
			if r.GetMetric() != meteringv1.UsageMetric_USAGE_METRIC_DELIVERED || r.GetChannel() != channel || seen[r.GetId()] {
				continue
			}
			seen[r.GetId()] = true // metering dedupes by record id
			out[r.GetEventId()]++
		}
	}
	return out
}

// recorder is the test's far side: it keeps what it took, per key, and
// fails as told.
type recorder struct {
	mu       sync.Mutex
	got      map[string][]string // key -> event ids, in the order taken
	all      []string
	sends    map[string]int // event id -> sends
	failOnce func(id string) bool
	failAll  func(id string) error // every send of id fails with this
	down     bool
	closed   int
}

func newRecorder() *recorder {
	return &recorder{got: map[string][]string{}, sends: map[string]int{}}
}

func (r *recorder) Send(_ context.Context, msgs []bridge.Message, done func(int, error)) {
	for i, m := range msgs {
		id := m.Event.GetId()
		r.mu.Lock()
		r.sends[id]++
		n := r.sends[id]
		var err error
		switch {
		case r.down:
			err = errors.New("connection refused")
		case r.failAll != nil && r.failAll(id) != nil:
			err = r.failAll(id)
		case n == 1 && r.failOnce != nil && r.failOnce(id):
			err = errors.New("timed out")
		default:
			r.got[m.Key] = append(r.got[m.Key], id)
			r.all = append(r.all, id)
		}
		r.mu.Unlock()
		go done(i, err) // confirmations come from another goroutine, as from a client library
	}
}

func (r *recorder) Close(context.Context) error {
	r.mu.Lock()
	r.closed++
	r.mu.Unlock()
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.all)
}

func sinks(r bridge.Sink) bridge.Systems {
	return bridge.Systems{Sinks: map[string]func(bridge.Config) (bridge.Sink, error){"mqtt": func(bridge.Config) (bridge.Sink, error) { return r, nil }}}
}

func fastSchedule(n int) []*durationpb.Duration {
	var out []*durationpb.Duration
	for range n {
		out = append(out, durationpb.New(20*time.Millisecond))
	}
	return out
}

// TestSinkKeepsKeyOrderThroughRetries: every event reaches the far side
// once, in log order per partition key, although a third of the sends fail
// once; each is counted once for metering on the bridge's channel.
func TestSinkKeepsKeyOrderThroughRetries(t *testing.T) {
	e := start(t)
	rec := newRecorder()
	rec.failOnce = func(id string) bool { return len(id)%3 == 0 || strings.HasSuffix(id, "7") }
	e.sink("orders", &registryv1.BridgeSink{Types: []string{"shop.*"}, RetrySchedule: fastSchedule(3), Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}}})
	keys := []string{"k1", "k2", "k3", "k4", "k5"}
	e.publish("shop.order.paid", 0, 150, keys...)
	e.engine(sinks(rec))
	e.publish("shop.order.created", 150, 150, keys...)
	testutil.Eventually(t, 30*time.Second, func() bool { return rec.count() == 300 }, "300 events delivered")
	rec.mu.Lock()
	for _, k := range keys {
		var want []string
		for i := 0; i < 300; i++ {
			if keys[i%len(keys)] == k {
				want = append(want, fmt.Sprintf("e%d", i))
			}
		}
		if !slices.Equal(rec.got[k], want) {
			t.Errorf("key %s: got %v\nwant %v", k, rec.got[k], want)
		}
	}
	rec.mu.Unlock()
	testutil.Eventually(t, 10*time.Second, func() bool { return len(e.delivered("mqtt")) == 300 }, "300 deliveries counted")
	for id, n := range e.delivered("mqtt") {
		if n != 1 {
			t.Errorf("%s counted %d times", id, n)
		}
	}
}

// TestSinkDeadLettersAndReplays: an event the far side refuses for good is
// dead-lettered at once, one it keeps failing after its schedule; both are
// listed with the reason, and a replay delivers them once the far side
// takes them.
func TestSinkDeadLettersAndReplays(t *testing.T) {
	e := start(t)
	rec := newRecorder()
	var mu sync.Mutex
	refuse := map[string]error{"e3": bridge.Permanent(errors.New("record too large")), "e5": errors.New("broker busy")}
	rec.failAll = func(id string) error { mu.Lock(); defer mu.Unlock(); return refuse[id] }
	b := e.sink("dl", &registryv1.BridgeSink{Types: []string{"shop.order.paid"}, RetrySchedule: fastSchedule(2)})
	eng, _ := e.engine(sinks(rec))
	api := &bridge.API{E: eng}
	testutil.Eventually(t, 10*time.Second, func() bool { return eng.Running(b.GetId()) }, "the engine runs the bridge")
	time.Sleep(200 * time.Millisecond) // the consumer group exists before publishing (start: now)
	e.publish("shop.order.paid", 0, 8)
	testutil.Eventually(t, 20*time.Second, func() bool { return rec.count() == 6 }, "6 of 8 delivered")
	ctx := auth.WithPrincipal(context.Background(), auth.Principal{Admin: true})
	var dead *edgev1.ListBridgeDeadLettersResponse
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := api.ListBridgeDeadLetters(ctx, connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{Bridge: "dl"}))
		if err != nil {
			t.Fatal(err)
		}
		dead = res.Msg
		return len(dead.GetDeadLetters()) == 2
	}, "two dead letters")
	reasons := map[string]string{}
	for _, d := range dead.GetDeadLetters() {
		reasons[d.GetEvent().GetId()] = d.GetReason()
	}
	if !strings.Contains(reasons["e3"], "record too large") || !strings.Contains(reasons["e5"], "broker busy") {
		t.Fatalf("reasons: %v", reasons)
	}
	rec.mu.Lock()
	if rec.sends["e3"] != 1 || rec.sends["e5"] != 3 {
		t.Errorf("sends: e3 %d (want 1, permanent), e5 %d (want 3: 1 + a schedule of 2)", rec.sends["e3"], rec.sends["e5"])
	}
	rec.mu.Unlock()
	st, err := api.ListBridgeStatus(ctx, connect.NewRequest(&edgev1.ListBridgeStatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Msg.GetStatuses(); len(s) != 1 || !s[0].GetRunning() || s[0].GetDeadLetters() != 2 || s[0].GetLag() != 0 || s[0].GetSystem() != "mqtt" {
		t.Fatalf("status: %v", s)
	}
	mu.Lock()
	refuse = nil
	mu.Unlock()
	rep, err := api.ReplayBridge(ctx, connect.NewRequest(&edgev1.ReplayBridgeRequest{Bridge: b.GetId(), Selection: &edgev1.ReplayBridgeRequest_FailedSince{FailedSince: timestamppb.New(time.Now().Add(-time.Hour))}}))
	if err != nil || rep.Msg.GetQueued() != 2 {
		t.Fatalf("replay: %v %v", rep, err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return rec.count() == 8 }, "the replayed two delivered")
	// An application sees its own bridge; the replay is the operator's.
	appCtx := auth.WithPrincipal(context.Background(), auth.Principal{ApplicationID: e.appID})
	if _, err := api.ReplayBridge(appCtx, connect.NewRequest(&edgev1.ReplayBridgeRequest{Bridge: "dl"})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("application replay: %v", err)
	}
	other := auth.WithPrincipal(context.Background(), auth.Principal{ApplicationID: "app_other"})
	if _, err := api.ListBridgeDeadLetters(other, connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{Bridge: "dl"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("another application's view: %v", err)
	}
	if res, err := api.ListBridgeStatus(other, connect.NewRequest(&edgev1.ListBridgeStatusRequest{})); err != nil || len(res.Msg.GetStatuses()) != 0 {
		t.Fatalf("another application lists: %v %v", res, err)
	}
	if _, err := api.ListBridgeStatus(context.Background(), connect.NewRequest(&edgev1.ListBridgeStatusRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("no key: %v", err)
	}
}

// TestSinkFarSideDownThenBack: nothing is lost while the far side is down;
// a second engine (another edge) takes over what the first held when it
// stops, with the lease.
func TestSinkFarSideDownThenBack(t *testing.T) {
	e := start(t)
	rec := newRecorder()
	rec.down = true
	b := e.sink("outage", &registryv1.BridgeSink{Types: []string{"shop.order.paid"}, RetrySchedule: fastSchedule(50), Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}}})
	e.publish("shop.order.paid", 0, 50)
	first, stopFirst := e.engine(sinks(rec))
	testutil.Eventually(t, 10*time.Second, func() bool { return first.Running(b.GetId()) }, "the first engine runs it")
	testutil.Eventually(t, 10*time.Second, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.sends) == 50
	}, "every event tried")
	second, _ := e.engine(sinks(rec))
	stopFirst()
	testutil.Eventually(t, 10*time.Second, func() bool { return second.Running(b.GetId()) }, "the second engine takes over")
	rec.mu.Lock()
	rec.down = false
	rec.mu.Unlock()
	e.publish("shop.order.paid", 50, 50)
	testutil.Eventually(t, 30*time.Second, func() bool { return len(e.delivered("mqtt")) == 100 }, "all 100 delivered and counted")
	seen := map[string]bool{}
	rec.mu.Lock()
	for _, id := range rec.all {
		seen[id] = true
	}
	rec.mu.Unlock()
	if len(seen) != 100 {
		t.Fatalf("%d distinct events reached the far side, want 100", len(seen))
	}
}

// source is the test's far side for a source bridge: it hands out records
// and keeps what was committed.
type source struct {
	mu        sync.Mutex
	recs      []bridge.Record
	committed int
	failures  int
}

func (s *source) Run(ctx context.Context, batch int, publish bridge.PublishFunc) error {
	for ctx.Err() == nil {
		s.mu.Lock()
		next := s.recs[s.committed:min(len(s.recs), s.committed+batch)]
		s.mu.Unlock()
		if len(next) == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if err := publish(ctx, next); err != nil {
			s.mu.Lock()
			s.failures++
			s.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		s.committed += len(next)
		s.mu.Unlock()
	}
	return nil
}

func (s *source) Lag(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int64(len(s.recs) - s.committed), nil
}

func (s *source) Close() error { return nil }

// TestSourcePublishesAsItsApplication: records become events of the
// bridge's type, published with the bridge's key; those the schema refuses
// or that cannot be read are dead-lettered with the reason and the source
// moves on.
func TestSourcePublishesAsItsApplication(t *testing.T) {
	e := start(t)
	res, err := e.reg.CreateBridge(context.Background(), connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: &registryv1.Bridge{
		Name: "in", ApplicationId: e.appID, Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
		System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://127.0.0.1:1", Topic: "orders/#"}},
		Source: &registryv1.BridgeSource{EventType: "shop.order.paid", BatchSize: 7},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	b := res.Msg.GetBridge()
	cfg := bridge.Config{Bridge: b}
	src := &source{}
	for i := range 40 {
		payload := fmt.Sprintf(`{"n":%d}`, i)
		switch i {
		case 10:
			payload = `{"n":"ten"}` // refused by the schema
		case 20:
			src.recs = append(src.recs, bridge.Record{Err: errors.New("not a CloudEvent: bad JSON"), Raw: []byte("{"), Position: "orders/x@20"})
			continue
		}
		src.recs = append(src.recs, bridge.Record{Event: bridge.NewEvent(cfg, fmt.Sprintf("r%d", i), "mqtt://orders", "", []byte(payload), time.Time{}), Raw: []byte(payload), Position: fmt.Sprintf("orders/x@%d", i)})
	}
	// The same record read twice (a crash before the commit) is stored once.
	src.recs = append(src.recs, src.recs[5])
	eng, _ := e.engine(bridge.Systems{Sources: map[string]func(bridge.Config) (bridge.Source, error){"mqtt": func(bridge.Config) (bridge.Source, error) { return src, nil }}})
	testutil.Eventually(t, 20*time.Second, func() bool { n, _ := src.Lag(context.Background()); return n == 0 }, "every record committed")
	n, err := e.rdb.XLen(context.Background(), "herald:log:{shop.order.paid}").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 38 {
		t.Fatalf("the log holds %d events, want 38 (40 less one refused, one unreadable; the repeat deduplicated)", n)
	}
	entries, _ := e.rdb.XRangeN(context.Background(), "herald:log:{shop.order.paid}", "-", "+", 1).Result()
	if app := entries[0].Values["app"]; app != e.appID {
		t.Fatalf("published as %v, want the bridge's application %s", app, e.appID)
	}
	api := &bridge.API{E: eng}
	ctx := auth.WithPrincipal(context.Background(), auth.Principal{Admin: true})
	dead, err := api.ListBridgeDeadLetters(ctx, connect.NewRequest(&edgev1.ListBridgeDeadLettersRequest{Bridge: "in"}))
	if err != nil {
		t.Fatal(err)
	}
	if d := dead.Msg.GetDeadLetters(); len(d) != 2 || !strings.Contains(d[0].GetReason(), "invalid_argument: data does not match the schema") || d[0].GetPosition() != "orders/x@10" ||
		!strings.Contains(d[1].GetReason(), "bad JSON") || string(d[1].GetRaw()) != "{" {
		t.Fatalf("dead letters: %v", d)
	}
}

// holder confirms nothing until released: what it was handed shows how
// many messages of one key the runner lets out at once.
type holder struct {
	mu     sync.Mutex
	handed []string
	dones  []func()
}

func (h *holder) Send(_ context.Context, msgs []bridge.Message, done func(int, error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, m := range msgs {
		h.handed = append(h.handed, m.Event.GetId())
		h.dones = append(h.dones, func() { done(i, nil) })
	}
}

func (h *holder) Close(context.Context) error { h.release(); return nil }

func (h *holder) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.handed)
}

func (h *holder) release() {
	h.mu.Lock()
	dones := h.dones
	h.dones = nil
	h.mu.Unlock()
	for _, d := range dones {
		go d()
	}
}

// unorderedHolder is a holder whose far side keeps no order (as the lake).
type unorderedHolder struct{ *holder }

func (unorderedHolder) Unordered() {}

// TestUnorderedSinkGetsEveryMessageOfAKeyAtOnce: a sink that keeps order
// is handed one message of a key at a time, the next once the previous is
// confirmed; an Unordered one (the lake, whose confirmation is a file
// commit, up to the file's max age away) gets them all without waiting.
func TestUnorderedSinkGetsEveryMessageOfAKeyAtOnce(t *testing.T) {
	for _, unordered := range []bool{false, true} {
		t.Run(fmt.Sprintf("unordered=%v", unordered), func(t *testing.T) {
			e := start(t)
			h := &holder{}
			var s bridge.Sink = h
			if unordered {
				s = unorderedHolder{h}
			}
			e.sink("orders", &registryv1.BridgeSink{Types: []string{"shop.*"}, Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}}})
			e.publish("shop.order.paid", 0, 20, "k1")
			e.engine(sinks(s))
			if unordered {
				testutil.Eventually(t, 20*time.Second, func() bool { return h.count() == 20 }, "all 20 messages of the key handed over unconfirmed")
			} else {
				testutil.Eventually(t, 20*time.Second, func() bool { return h.count() == 1 }, "the key's first message handed over")
				time.Sleep(300 * time.Millisecond)
				if n := h.count(); n != 1 {
					t.Fatalf("%d messages of one key handed over before the first was confirmed, want 1", n)
				}
				testutil.Eventually(t, 20*time.Second, func() bool { h.release(); return h.count() == 20 }, "the rest, one by one as each is confirmed")
			}
			h.release()
			testutil.Eventually(t, 10*time.Second, func() bool { return len(e.delivered("mqtt")) == 20 }, "20 deliveries counted")
		})
	}
}
