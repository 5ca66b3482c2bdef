package router_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/heraldmesh/herald/services/router"
	"github.com/redis/go-redis/v9"
)

const adminKey = "test-admin-key-0123456789"

const orderSchema = `{
  "type": "object",
  "required": ["order_id", "amount"],
  "properties": {
    "order_id": {"type": "string"},
    "amount": {"type": "integer", "minimum": 1}
  }
}`

// env is a Redis and a registry, running for one test; routers are started
// on it with startRouter.
type env struct {
	common   config.Common
	redis    *redisserver.Server
	rdb      *redis.Client
	registry registryv1connect.RegistryServiceClient // with the admin key
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := testutil.Redis(t)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey, SecretKey: secretbox.NewKey(), WebhookAllow: "127.0.0.0/8"}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := reg.Listen()
	if err != nil {
		t.Fatal(err)
	}
	common.RegistryAddr = addr.String()
	run(t, reg.Run)
	waitReady(t, common.RegistryAddr)
	return &env{
		common:   common,
		redis:    srv,
		rdb:      testutil.RedisClient(t, srv),
		registry: registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...),
	}
}

// run runs a service until the test ends, and checks that it stopped
// cleanly. It returns a function that stops it earlier.
func run(t testing.TB, serve func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("service stopped with: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitReady(t testing.TB, addr string) {
	t.Helper()
	var last string
	defer func() {
		if t.Failed() {
			t.Logf("last /readyz answer: %s", last)
		}
	}()
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := http.Get(rpc.BaseURL(addr) + "/readyz")
		if err != nil {
			last = err.Error()
			return false
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			last = string(b)
		}
		return res.StatusCode == http.StatusOK
	}, addr+"/readyz answers 200")
}

// startRouter starts a router on addr ("127.0.0.1:0" for any port), waits
// until it is ready, and returns its address and a graceful stop.
func (e *env) startRouter(t testing.TB, addr string, maxBatch int) (string, func()) {
	t.Helper()
	return e.startRouterWith(t, router.Config{Addr: addr, MaxBatch: maxBatch})
}

// startRouterWith starts a router with cfg on the env's Redis and registry.
func (e *env) startRouterWith(t testing.TB, cfg router.Config) (string, func()) {
	t.Helper()
	cfg.Common, cfg.Logger = e.common, quietLogger()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	svc, err := router.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	bound, err := svc.Listen()
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, svc.Run)
	waitReady(t, bound.String())
	return bound.String(), stop
}

func (e *env) createType(t testing.TB, name, schema string) {
	t.Helper()
	_, err := e.registry.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{
		EventType: &registryv1.EventType{Name: name, Schema: schema},
	}))
	if err != nil {
		t.Fatalf("create event type %s: %v", name, err)
	}
}

// createApp returns a new application's id and key secret.
func (e *env) createApp(t testing.TB, name string) (string, string) {
	t.Helper()
	res, err := e.registry.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{
		Application: &registryv1.Application{Name: name, Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "*"},
		}},
	}))
	if err != nil {
		t.Fatalf("create application: %v", err)
	}
	return res.Msg.GetApplication().GetId(), res.Msg.GetKey().GetSecret()
}

func routerClient(addr, key string) routerv1connect.RouterServiceClient {
	return routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(addr), rpc.ClientOptions(key)...)
}

func publish(ctx context.Context, c routerv1connect.RouterServiceClient, evs ...*eventv1.CloudEvent) ([]*routerv1.PublishResult, error) {
	res, err := c.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: evs}))
	if err != nil {
		return nil, err
	}
	if n := len(res.Msg.GetResults()); n != len(evs) {
		return nil, fmt.Errorf("%d results for %d events", n, len(evs))
	}
	return res.Msg.GetResults(), nil
}

func mustPublish(t *testing.T, c routerv1connect.RouterServiceClient, evs ...*eventv1.CloudEvent) []*routerv1.PublishResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := publish(ctx, c, evs...)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return res
}

func event(typ, id, data string) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{Id: id, Source: "/shop", SpecVersion: "1.0", Type: typ, Data: &eventv1.CloudEvent_TextData{TextData: data}}
}

func (e *env) streamLen(t *testing.T, typ string) int64 {
	t.Helper()
	n, err := e.rdb.XLen(context.Background(), eventlog.StreamKey(typ)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *env) entries(t *testing.T, typ string) []eventlog.Entry {
	t.Helper()
	key := eventlog.StreamKey(typ)
	msgs, err := e.rdb.XRange(context.Background(), key, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]eventlog.Entry, len(msgs))
	for i, m := range msgs {
		if out[i], err = eventlog.Decode(key, m); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

const (
	orderCreated = "shop.order.created"
	valid        = `{"order_id":"o-1","amount":5}`
)

func TestPublish(t *testing.T) {
	const maxBatch = 5
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	appID, appKey := e.createApp(t, "shop")
	addr, _ := e.startRouter(t, "127.0.0.1:0", maxBatch)
	client := routerClient(addr, appKey)

	t.Run("valid event gets a cursor", func(t *testing.T) {
		ev := event(orderCreated, "valid-1", valid)
		r := mustPublish(t, client, ev)[0]
		if r.GetCursor() == "" || r.GetError() != nil || r.GetDuplicate() {
			t.Fatalf("result %v, want a new cursor", r)
		}
		found := false
		for _, en := range e.entries(t, orderCreated) {
			if en.ID.String() == r.GetCursor() {
				found = true
				if en.Event.GetId() != "valid-1" || en.Account != appID {
					t.Errorf("cursor %s holds %s from %q, want valid-1 from %s", r.GetCursor(), en.Event.GetId(), en.Account, appID)
				}
			}
		}
		if !found {
			t.Fatalf("cursor %s is not in the stream", r.GetCursor())
		}
	})

	t.Run("refused events", func(t *testing.T) {
		type violation struct{ instance, keyword string }
		cases := []struct {
			name      string
			ev        *eventv1.CloudEvent
			code      connect.Code
			violation *violation // the one expected, when set
		}{
			{name: "amount below minimum", ev: event(orderCreated, "bad-1", `{"order_id":"o-1","amount":0}`),
				code: connect.CodeInvalidArgument, violation: &violation{"/amount", "/properties/amount/minimum"}},
			{name: "order_id of the wrong type", ev: event(orderCreated, "bad-2", `{"order_id":7,"amount":1}`),
				code: connect.CodeInvalidArgument, violation: &violation{"/order_id", "/properties/order_id/type"}},
			{name: "required property missing", ev: event(orderCreated, "bad-3", `{"amount":1}`),
				code: connect.CodeInvalidArgument, violation: &violation{"", "/required"}},
			{name: "data not JSON", ev: event(orderCreated, "bad-4", `{"order_id":`), code: connect.CodeInvalidArgument},
			{name: "no data", ev: &eventv1.CloudEvent{Id: "bad-5", Source: "/shop", SpecVersion: "1.0", Type: orderCreated}, code: connect.CodeInvalidArgument},
			{name: "unknown type", ev: event("shop.order.unknown", "bad-6", valid), code: connect.CodeNotFound},
			{name: "invalid type name", ev: event("Shop", "bad-7", valid), code: connect.CodeInvalidArgument},
			{name: "missing id", ev: event(orderCreated, "", valid), code: connect.CodeInvalidArgument},
			{name: "missing source", ev: &eventv1.CloudEvent{Id: "bad-8", SpecVersion: "1.0", Type: orderCreated, Data: &eventv1.CloudEvent_TextData{TextData: valid}}, code: connect.CodeInvalidArgument},
			{name: "wrong spec_version", ev: &eventv1.CloudEvent{Id: "bad-9", Source: "/shop", SpecVersion: "0.3", Type: orderCreated, Data: &eventv1.CloudEvent_TextData{TextData: valid}}, code: connect.CodeInvalidArgument},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				before := e.streamLen(t, orderCreated)
				r := mustPublish(t, client, c.ev)[0]
				perr := r.GetError()
				if perr == nil || r.GetCursor() != "" {
					t.Fatalf("result %v, want an error", r)
				}
				if got := connect.Code(perr.GetCode()); got != c.code {
					t.Errorf("code %v (%s), want %v", got, perr.GetMessage(), c.code)
				}
				if c.violation != nil {
					found := false
					for _, v := range perr.GetViolations() {
						found = found || v.GetInstanceLocation() == c.violation.instance && v.GetKeywordLocation() == c.violation.keyword
					}
					if !found {
						t.Errorf("violations %v, want one at %q breaking %s", perr.GetViolations(), c.violation.instance, c.violation.keyword)
					}
				}
				if after := e.streamLen(t, orderCreated); after != before {
					t.Errorf("stream grew from %d to %d: a refused event was stored", before, after)
				}
			})
		}
	})

	t.Run("mixed batch stores only the valid events, and a retry is deduplicated", func(t *testing.T) {
		batch := []*eventv1.CloudEvent{
			event(orderCreated, "mix-1", valid),
			event(orderCreated, "mix-2", `{"order_id":"o-2","amount":-3}`),
			event(orderCreated, "mix-3", valid),
			event("shop.order.nope", "mix-4", valid),
			event(orderCreated, "", valid),
		}
		wantCodes := []connect.Code{0, connect.CodeInvalidArgument, 0, connect.CodeNotFound, connect.CodeInvalidArgument}
		before := e.streamLen(t, orderCreated)
		first := mustPublish(t, client, batch...)
		check := func(res []*routerv1.PublishResult, duplicate bool) {
			t.Helper()
			for i, r := range res {
				if wantCodes[i] == 0 {
					if r.GetCursor() == "" || r.GetDuplicate() != duplicate {
						t.Errorf("event %d: %v, want a cursor with duplicate=%v", i, r, duplicate)
					}
					continue
				}
				if got := connect.Code(r.GetError().GetCode()); got != wantCodes[i] || r.GetCursor() != "" {
					t.Errorf("event %d: %v, want error code %v", i, r, wantCodes[i])
				}
			}
			if after := e.streamLen(t, orderCreated); after != before+2 {
				t.Errorf("stream grew by %d, want 2", after-before)
			}
		}
		check(first, false)

		retry := mustPublish(t, client, batch...)
		check(retry, true)
		for _, i := range []int{0, 2} {
			if retry[i].GetCursor() != first[i].GetCursor() {
				t.Errorf("event %d: retry cursor %s, first %s", i, retry[i].GetCursor(), first[i].GetCursor())
			}
		}
	})

	t.Run("whole request refused", func(t *testing.T) {
		tooMany := make([]*eventv1.CloudEvent, maxBatch+1)
		for i := range tooMany {
			tooMany[i] = event(orderCreated, fmt.Sprintf("many-%d", i), valid)
		}
		noKey := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(addr), connect.WithGRPC())
		cases := []struct {
			name   string
			client routerv1connect.RouterServiceClient
			events []*eventv1.CloudEvent
			code   connect.Code
		}{
			{name: "empty batch", client: client, events: nil, code: connect.CodeInvalidArgument},
			{name: "batch over the limit", client: client, events: tooMany, code: connect.CodeInvalidArgument},
			{name: "missing key", client: noKey, events: []*eventv1.CloudEvent{event(orderCreated, "auth-1", valid)}, code: connect.CodeUnauthenticated},
			{name: "wrong key", client: routerClient(addr, "hk_not-a-key-anyone-was-given"), events: []*eventv1.CloudEvent{event(orderCreated, "auth-2", valid)}, code: connect.CodeUnauthenticated},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				before := e.streamLen(t, orderCreated)
				_, err := publish(context.Background(), c.client, c.events...)
				if got := connect.CodeOf(err); got != c.code {
					t.Errorf("Publish: %v, want code %v", err, c.code)
				}
				if after := e.streamLen(t, orderCreated); after != before {
					t.Errorf("stream grew from %d to %d", before, after)
				}
			})
		}
		// Exactly MaxBatch is allowed.
		for _, r := range mustPublish(t, client, tooMany[:maxBatch]...) {
			if r.GetCursor() == "" {
				t.Errorf("full batch: %v", r)
			}
		}
	})

	t.Run("type created after the router started", func(t *testing.T) {
		const shipped = "shop.order.shipped"
		e.createType(t, shipped, `{"type":"object","required":["carrier"]}`)
		res := mustPublish(t, client, event(shipped, "ship-1", `{"carrier":"ups"}`), event(shipped, "ship-2", `{}`))
		if res[0].GetCursor() == "" {
			t.Errorf("valid event of the new type: %v", res[0])
		}
		if connect.Code(res[1].GetError().GetCode()) != connect.CodeInvalidArgument {
			t.Errorf("invalid event of the new type: %v, want the new type's schema applied", res[1])
		}
		if n := e.streamLen(t, shipped); n != 1 {
			t.Errorf("%s stream has %d entries, want 1", shipped, n)
		}
	})
}

// TestRouterRestartMidStream stops the router gracefully while a publisher
// sends events one by one (retrying each until it is acknowledged, as a
// client should), then starts a new router on the same address. Nothing
// acknowledged is lost and nothing is stored twice.
func TestRouterRestartMidStream(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, appKey := e.createApp(t, "shop")
	addr, stopFirst := e.startRouter(t, "127.0.0.1:0", 0)
	client := routerClient(addr, appKey)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var (
		mu       sync.Mutex
		acked    = map[string]string{} // event id -> cursor
		failures atomic.Int64          // failed attempts, retried
		dups     atomic.Int64          // retries answered duplicate=true
		stop     = make(chan struct{})
		done     = make(chan error, 1)
	)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			ev := event(orderCreated, fmt.Sprintf("evt-%05d", i), valid)
			for {
				res, err := publish(ctx, client, ev)
				if err == nil && res[0].GetCursor() != "" {
					if res[0].GetDuplicate() {
						dups.Add(1)
					}
					mu.Lock()
					acked[ev.GetId()] = res[0].GetCursor()
					mu.Unlock()
					break
				}
				if err == nil { // a valid event must never be refused
					done <- fmt.Errorf("event %s refused: %v", ev.GetId(), res[0].GetError())
					return
				}
				if ctx.Err() != nil {
					done <- fmt.Errorf("event %s never acknowledged: %w", ev.GetId(), err)
					return
				}
				failures.Add(1)
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	testutil.Eventually(t, 30*time.Second, func() bool { return count() >= 50 }, "50 events acknowledged by the first router")
	stopFirst() // graceful: in-flight requests finish, then it closes
	if _, err := publish(ctx, client, event(orderCreated, "while-down", valid)); err == nil {
		t.Error("Publish succeeded with no router running")
	}
	downAt := count()
	_, _ = e.startRouter(t, addr, 0)
	testutil.Eventually(t, 30*time.Second, func() bool { return count() >= downAt+50 }, "50 events acknowledged by the second router")
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events acknowledged, %d attempts failed and were retried, %d retries were duplicates", len(acked), failures.Load(), dups.Load())

	entries := e.entries(t, orderCreated)
	stored := map[string]string{} // event id -> cursor
	cursors := map[string]bool{}
	for _, en := range entries {
		if prev, dup := stored[en.Event.GetId()]; dup {
			t.Errorf("event %s is stored twice, at %s and %s", en.Event.GetId(), prev, en.ID)
		}
		stored[en.Event.GetId()] = en.ID.String()
		cursors[en.ID.String()] = true
	}
	for id, c := range acked {
		if !cursors[c] {
			t.Errorf("acknowledged cursor %s (%s) is not in the stream", c, id)
		} else if stored[id] != c {
			t.Errorf("%s acknowledged at %s, stored at %s", id, c, stored[id])
		}
	}
	if len(entries) != len(acked) {
		t.Errorf("stream has %d entries, %d events were acknowledged", len(entries), len(acked))
	}
}

// An event over MaxEventBytes is refused in its result while the rest of
// its batch is stored; a request over MaxBatchBytes is refused whole,
// before the router decodes it.
func TestPublishByteLimits(t *testing.T) {
	const maxEvent, maxBatch = 8 << 10, 64 << 10
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, appKey := e.createApp(t, "shop")
	addr, _ := e.startRouterWith(t, router.Config{MaxBatchBytes: maxBatch, MaxEventBytes: maxEvent})
	client := routerClient(addr, appKey)
	sized := func(id string, bytes int) *eventv1.CloudEvent {
		return event(orderCreated, id, fmt.Sprintf(`{"order_id":%q,"amount":5}`, strings.Repeat("x", bytes)))
	}

	res := mustPublish(t, client, sized("small", 100), sized("big", maxEvent), sized("small-2", 100))
	if res[0].GetCursor() == "" || res[2].GetCursor() == "" {
		t.Errorf("small events of the batch: %v, %v", res[0], res[2])
	}
	if e := res[1].GetError(); connect.Code(e.GetCode()) != connect.CodeInvalidArgument || !strings.Contains(e.GetMessage(), "more than the 8192 allowed") {
		t.Errorf("event over MaxEventBytes: %v", res[1])
	}

	var batch []*eventv1.CloudEvent
	for i := range 10 { // 10 events of about 7 KiB: each fits, together they do not
		batch = append(batch, sized(fmt.Sprintf("part-%d", i), 7<<10))
	}
	before := e.streamLen(t, orderCreated)
	_, err := publish(context.Background(), client, batch...)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "larger than configured max 65536") {
		t.Errorf("batch over MaxBatchBytes: %v", err)
	}
	if after := e.streamLen(t, orderCreated); after != before {
		t.Errorf("the refused batch grew the log from %d to %d", before, after)
	}
	if res := mustPublish(t, client, batch[:8]...); res[7].GetCursor() == "" {
		t.Errorf("a batch under MaxBatchBytes: %v", res[7])
	}

	if _, err := router.New(router.Config{Common: e.common, MaxBatchBytes: 1 << 10, MaxEventBytes: 2 << 10}); err == nil {
		t.Error("router.New accepted events larger than batches")
	}
}
