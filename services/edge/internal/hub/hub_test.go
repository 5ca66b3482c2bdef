package hub_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(testutil.StoppingSpares(m))
}

// Generous bounds: these tests run under -race next to other packages.
const (
	waitLong  = 60 * time.Second
	waitShort = 20 * time.Second
)

// registry is a real Connect RegistryService serving event types from a
// list the test can add to while it runs: each addition is one catalog
// revision, sent to watchers as a change.
type registry struct {
	registryv1connect.UnimplementedRegistryServiceHandler

	mu      sync.Mutex
	log     []*registryv1.EventType // log[i] has revision i+1
	changed chan struct{}           // closed and replaced on every addition
}

func newRegistry(names ...string) *registry {
	r := &registry{changed: make(chan struct{})}
	r.add(names...)
	return r
}

func (r *registry) add(names ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range names {
		// "name/3" registers a type with 3 partitions.
		var partitions int32
		if name, p, ok := strings.Cut(n, "/"); ok {
			n = name
			fmt.Sscan(p, &partitions)
		}
		r.log = append(r.log, &registryv1.EventType{Name: n, Schema: "{}", Revision: int64(len(r.log) + 1), Partitions: partitions})
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// since returns the changes after revision from and a channel closed at the
// next one.
func (r *registry) since(from int64) ([]*registryv1.EventType, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if from > int64(len(r.log)) {
		from = int64(len(r.log))
	}
	return slices.Clone(r.log[from:]), r.changed
}

func (r *registry) Watch(ctx context.Context, req *connect.Request[registryv1.WatchRequest], stream *connect.ServerStream[registryv1.WatchResponse]) error {
	sent := req.Msg.GetFromRevision()
	snapshot := sent == 0
	for {
		changes, changed := r.since(sent)
		for _, et := range changes {
			if err := stream.Send(&registryv1.WatchResponse{Revision: et.GetRevision(), Change: &registryv1.WatchResponse_EventType{EventType: et}}); err != nil {
				return err
			}
			sent = et.GetRevision()
		}
		if snapshot {
			if err := stream.Send(&registryv1.WatchResponse{Revision: sent, SnapshotComplete: true}); err != nil {
				return err
			}
			snapshot = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

func (r *registry) ListEventTypes(_ context.Context, _ *connect.Request[registryv1.ListEventTypesRequest]) (*connect.Response[registryv1.ListEventTypesResponse], error) {
	all, _ := r.since(0)
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return connect.NewResponse(&registryv1.ListEventTypesResponse{EventTypes: all}), nil
}

func (r *registry) GetEventType(_ context.Context, req *connect.Request[registryv1.GetEventTypeRequest]) (*connect.Response[registryv1.GetEventTypeResponse], error) {
	all, _ := r.since(0)
	for _, et := range all {
		if et.GetName() == req.Msg.GetName() {
			return connect.NewResponse(&registryv1.GetEventTypeResponse{EventType: et}), nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("event type %q not found", req.Msg.GetName()))
}

// env is a hub over a private redis-server and a test registry.
type env struct {
	rdb redis.UniversalClient
	reg *registry
	hub *hub.Hub

	stop    context.CancelFunc
	hubDone chan error
	catDone chan error
}

func newEnv(t *testing.T, types ...string) *env {
	t.Helper()
	return newEnvOn(t, testutil.RedisClient(t, testutil.Redis(t)), types...)
}

// newEnvOn is newEnv on a given Redis (e.g. a cluster's client).
func newEnvOn(t *testing.T, rdb redis.UniversalClient, types ...string) *env {
	t.Helper()
	reg := newRegistry(types...)
	mux := httptestServer(t, reg)
	client := registryv1connect.NewRegistryServiceClient(mux.Client(), mux.URL)

	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	cat := catalog.New(client, log)
	h := hub.New(rdb, cat, log)

	ctx, cancel := context.WithCancel(context.Background())
	e := &env{rdb: rdb, reg: reg, hub: h, stop: cancel, hubDone: make(chan error, 1), catDone: make(chan error, 1)}
	go func() { e.catDone <- cat.Run(ctx) }()
	go func() { e.hubDone <- h.Run(ctx) }()
	t.Cleanup(func() { e.shutdown(t) })

	deadline := time.Now().Add(waitShort)
	for h.Ready(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("hub not ready after %v", waitShort)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return e
}

func httptestServer(t *testing.T, reg *registry) *httptest.Server {
	t.Helper()
	path, handler := registryv1connect.NewRegistryServiceHandler(reg)
	mux := http.NewServeMux()
	mux.Handle(path, handler)
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// shutdown stops the hub and the catalog and waits for both; it is
// idempotent.
func (e *env) shutdown(t *testing.T) {
	t.Helper()
	e.stop()
	for name, ch := range map[string]chan error{"hub.Run": e.hubDone, "catalog.Run": e.catDone} {
		select {
		case err, ok := <-ch:
			if ok && err != nil {
				t.Errorf("%s returned %v", name, err)
			}
			if ok {
				close(ch)
			}
		case <-time.After(waitShort):
			t.Fatalf("%s did not return within %v of cancelling its context", name, waitShort)
		}
	}
}

var seq int

// publish appends one event the way the router does.
func (e *env) publish(t testing.TB, typ string) published {
	t.Helper()
	seq++
	return e.publishID(t, typ, fmt.Sprintf("ev-%d", seq))
}

func (e *env) publishID(t testing.TB, typ, id string) published {
	t.Helper()
	return publishTo(t, e.rdb, typ, id)
}

type published struct {
	Type   string
	ID     string // CloudEvent id
	Cursor eventlog.ID
}

func publishTo(t testing.TB, rdb redis.Cmdable, typ, id string) published {
	t.Helper()
	fields, err := eventlog.Encode(newEvent(typ, id), "app")
	if err != nil {
		t.Fatal(err)
	}
	s, err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ), Values: fields}).Result()
	if err != nil {
		t.Fatalf("XADD %s: %v", typ, err)
	}
	return published{Type: typ, ID: id, Cursor: eventlog.MustParseID(s)}
}

func newEvent(typ, id string) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: id, Source: "/test", SpecVersion: "1.0", Type: typ,
		Data: &eventv1.CloudEvent_TextData{TextData: `{"id":"` + id + `"}`},
	}
}

// received is what a subscriber got.
type received struct {
	Type   string
	ID     string
	Cursor eventlog.ID
	Late   bool
}

// subscriber runs one Stream in the background and records what it gets.
type subscriber struct {
	name    string
	cancel  context.CancelFunc
	done    chan error
	started chan struct{}

	mu      sync.Mutex
	got     []received
	batches []int       // the length of each batch handed to send
	gate    func(n int) // called before recording the n-th event (0-based), may block
}

type subOpt func(*subscriber, *hub.Options)

func after(id eventlog.ID) subOpt {
	return func(_ *subscriber, o *hub.Options) { o.After = &id }
}

func gated(g func(n int)) subOpt {
	return func(s *subscriber, _ *hub.Options) { s.gate = g }
}

func (e *env) subscribe(t *testing.T, name string, patterns []string, opts ...subOpt) *subscriber {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscriber{name: name, cancel: cancel, done: make(chan error, 1), started: make(chan struct{})}
	var o hub.Options
	for _, f := range opts {
		f(s, &o)
	}
	o.Started = func() error { close(s.started); return nil }
	go func() {
		s.done <- e.hub.Stream(ctx, patterns, o, func(batch []*hub.Event) error {
			s.mu.Lock()
			s.batches = append(s.batches, len(batch))
			s.mu.Unlock()
			for _, ev := range batch {
				if err := s.record(ev); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	t.Cleanup(func() { s.stop(t) })
	select {
	case <-s.started:
	case err := <-s.done:
		t.Fatalf("%s: Stream returned before starting: %v", name, err)
	case <-time.After(waitShort):
		t.Fatalf("%s: Stream did not start within %v", name, waitShort)
	}
	return s
}

// record records one event, after the gate.
func (s *subscriber) record(ev *hub.Event) error {
	s.mu.Lock()
	n := len(s.got)
	s.mu.Unlock()
	if s.gate != nil {
		s.gate(n)
	}
	if ev.Event.GetType() != ev.Type {
		return fmt.Errorf("event %s: CloudEvent type %q on stream of %q", ev.ID, ev.Event.GetType(), ev.Type)
	}
	if _, err := ev.JSON(); err != nil {
		return fmt.Errorf("event %s: JSON: %w", ev.ID, err)
	}
	s.mu.Lock()
	s.got = append(s.got, received{Type: ev.Type, ID: ev.Event.GetId(), Cursor: ev.ID, Late: ev.Late})
	s.mu.Unlock()
	return nil
}

// stop cancels the stream and waits for it to return; idempotent.
func (s *subscriber) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	select {
	case err, ok := <-s.done:
		if ok {
			close(s.done)
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("%s: Stream returned %v", s.name, err)
			}
		}
	case <-time.After(waitShort):
		t.Fatalf("%s: Stream did not return within %v of cancelling its context", s.name, waitShort)
	}
}

func (s *subscriber) snapshot() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// waitN waits until the subscriber has at least n events and returns them.
func (s *subscriber) waitN(t *testing.T, n int, timeout time.Duration) []received {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.snapshot()
		if len(got) >= n {
			return got
		}
		select {
		case err := <-s.done:
			s.done <- err // keep it for stop
			t.Fatalf("%s: Stream ended with %v after %d of %d events", s.name, err, len(got), n)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %d of %d events within %v", s.name, len(got), n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectExactly waits for want and checks that the subscriber got exactly
// those events, none twice, in cursor order. Events of different types can
// share a cursor (entry ids are unique per stream only); their relative
// order is not defined.
func (s *subscriber) expectExactly(t *testing.T, want []published, timeout time.Duration) {
	t.Helper()
	got := s.waitN(t, len(want), timeout)
	checkOrder(t, s.name, got)
	if len(got) != len(want) {
		t.Fatalf("%s: got %d events, want %d", s.name, len(got), len(want))
	}
	want = slices.Clone(want)
	slices.SortStableFunc(want, func(a, b published) int {
		return cmp.Or(a.Cursor.Compare(b.Cursor), cmp.Compare(a.Type, b.Type))
	})
	slices.SortStableFunc(got, func(a, b received) int {
		return cmp.Or(a.Cursor.Compare(b.Cursor), cmp.Compare(a.Type, b.Type))
	})
	for i := range want {
		g, w := got[i], want[i]
		if g.ID != w.ID || g.Type != w.Type || g.Cursor != w.Cursor {
			t.Fatalf("%s: event %d is %s %s at %v, want %s %s at %v", s.name, i, g.Type, g.ID, g.Cursor, w.Type, w.ID, w.Cursor)
		}
		if g.Late {
			t.Fatalf("%s: event %d (%s) marked late for a type known from the start", s.name, i, g.ID)
		}
	}
}

// checkOrder checks that cursors never decrease and that two events share a
// cursor only when they are of different types (different streams).
func checkOrder(t *testing.T, name string, got []received) {
	t.Helper()
	for i := 1; i < len(got); i++ {
		a, b := got[i-1], got[i]
		switch c := a.Cursor.Compare(b.Cursor); {
		case c > 0:
			t.Fatalf("%s: cursor %v (event %d, %s) after %v (event %d, %s): out of order", name, b.Cursor, i, b.ID, a.Cursor, i-1, a.ID)
		case c == 0 && a.Type == b.Type:
			t.Fatalf("%s: events %d (%s) and %d (%s) of %s both at %v", name, i-1, a.ID, i, b.ID, a.Type, a.Cursor)
		}
	}
}

func matching(all []published, match func(typ string) bool) []published {
	var out []published
	for _, p := range all {
		if match(p.Type) {
			out = append(out, p)
		}
	}
	return out
}

func TestLiveFanOut(t *testing.T) {
	types := []string{"billing.invoice.paid", "billing.invoice.created", "identity.user.created", "identity.user.deleted", "shipping.order.sent"}
	e := newEnv(t, types...)
	billing := e.subscribe(t, "billing", []string{"billing.*"})
	user := e.subscribe(t, "user", []string{"identity.user.created"})
	all := e.subscribe(t, "all", []string{"*"})

	var pub []published
	for i := range 100 {
		pub = append(pub, e.publish(t, types[i%len(types)]))
	}

	all.expectExactly(t, pub, waitLong)
	billing.expectExactly(t, matching(pub, func(typ string) bool {
		return typ == "billing.invoice.paid" || typ == "billing.invoice.created"
	}), waitLong)
	user.expectExactly(t, matching(pub, func(typ string) bool { return typ == "identity.user.created" }), waitLong)
	if n := e.hub.Subscribers(); n != 3 {
		t.Errorf("Subscribers() = %d, want 3", n)
	}
}

// Events written concurrently to several streams reach a subscriber in
// cursor order, none lost or repeated. Cursors are entry ids, unique per
// stream: events of different streams stamped in the same millisecond can
// share one, so across streams the order is non-decreasing (checkOrder).
func TestConcurrentWritersAcrossStreams(t *testing.T) {
	types := []string{"a.one.x", "b.two.x", "c.three.x", "d.four.x"}
	e := newEnv(t, types...)
	s := e.subscribe(t, "all", []string{"*"})

	const perWriter = 500
	var wg sync.WaitGroup
	errs := make(chan error, len(types))
	for w, typ := range types {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				fields, err := eventlog.Encode(newEvent(typ, fmt.Sprintf("w%d-%d", w, i)), "app")
				if err == nil {
					err = e.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ), Values: fields}).Err()
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	total := perWriter * len(types)
	got := s.waitN(t, total, waitLong)
	checkOrder(t, s.name, got)
	if len(got) != total {
		t.Fatalf("got %d events, want %d", len(got), total)
	}
	seen := map[string]bool{}
	next := make([]int, len(types)) // per writer, events arrive in write order
	for _, r := range got {
		if seen[r.ID] {
			t.Fatalf("event %s delivered twice", r.ID)
		}
		seen[r.ID] = true
		var w, i int
		if _, err := fmt.Sscanf(r.ID, "w%d-%d", &w, &i); err != nil || types[w] != r.Type {
			t.Fatalf("unexpected event %s of %s", r.ID, r.Type)
		}
		if i != next[w] {
			t.Fatalf("writer %d: got event %d, want %d", w, i, next[w])
		}
		next[w]++
	}
}

func TestResume(t *testing.T) {
	types := []string{"billing.invoice.paid", "identity.user.created"}
	e := newEnv(t, types...)
	var pub []published
	for i := range 30 {
		if i == 10 {
			// Events of different streams written in the same millisecond
			// can share a cursor, and a cursor counts all events at it as
			// delivered: keep the 11th from sharing the 10th's.
			waitRedisPast(t, e.rdb, pub[9].Cursor.Ms)
		}
		pub = append(pub, e.publish(t, types[i%2]))
	}

	t.Run("after the 10th event", func(t *testing.T) {
		s := e.subscribe(t, "after10", []string{"*"}, after(pub[9].Cursor))
		s.expectExactly(t, pub[10:], waitLong)
		live := []published{e.publish(t, types[0]), e.publish(t, types[1])}
		s.expectExactly(t, append(slices.Clone(pub[10:]), live...), waitLong)
		pub = append(pub, live...)
	})

	t.Run("from zero", func(t *testing.T) {
		s := e.subscribe(t, "zero", []string{"*"}, after(eventlog.Zero))
		s.expectExactly(t, pub, waitLong)
		live := e.publish(t, types[1])
		s.expectExactly(t, append(slices.Clone(pub), live), waitLong)
		pub = append(pub, live)
	})

	t.Run("from zero, one type", func(t *testing.T) {
		s := e.subscribe(t, "zero-billing", []string{"billing.*"}, after(eventlog.Zero))
		s.expectExactly(t, matching(pub, func(typ string) bool { return typ == types[0] }), waitLong)
	})

	t.Run("at the head", func(t *testing.T) {
		s := e.subscribe(t, "head", []string{"*"}, after(pub[len(pub)-1].Cursor))
		waitRedisPast(t, e.rdb, pub[len(pub)-1].Cursor.Ms)
		live := []published{e.publish(t, types[0]), e.publish(t, types[1])}
		s.expectExactly(t, live, waitLong)
		pub = append(pub, live...)
	})

	t.Run("beyond the head", func(t *testing.T) {
		last := pub[len(pub)-1].Cursor
		beyond := eventlog.ID{Ms: last.Ms, Seq: math.MaxUint64}
		s := e.subscribe(t, "beyond", []string{"*"}, after(beyond))
		// Make sure the next writes get a later millisecond than the cursor.
		waitRedisPast(t, e.rdb, last.Ms)
		live := []published{e.publish(t, types[1]), e.publish(t, types[0])}
		s.expectExactly(t, live, waitLong)
	})
}

// waitRedisPast waits until the Redis clock is past millisecond ms.
func waitRedisPast(t *testing.T, rdb redis.Cmdable, ms uint64) {
	t.Helper()
	deadline := time.Now().Add(waitShort)
	for {
		now, err := rdb.Time(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if uint64(now.UnixMilli()) > ms {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis clock did not pass %d within %v", ms, waitShort)
		}
		time.Sleep(time.Millisecond)
	}
}

// A subscriber that stalls for longer than its buffer lasts is cut off, catches
// up from Redis, and rejoins, without losing or repeating anything.
func TestSlowSubscriber(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid", "billing.invoice.created")
	release := make(chan struct{})
	s := e.subscribe(t, "slow", []string{"billing.*"}, gated(func(n int) {
		if n == 0 {
			select {
			case <-release:
			case <-time.After(waitLong):
				// The test fails below on the missing events.
			}
		}
	}))

	const total = 5000
	var pub []published
	pipe := e.rdb.Pipeline()
	var cmds []*redis.StringCmd
	var ids []string
	typ := []string{"billing.invoice.paid", "billing.invoice.created"}
	flush := func() {
		if _, err := pipe.Exec(context.Background()); err != nil {
			t.Fatalf("XADD: %v", err)
		}
		for i, c := range cmds {
			pub = append(pub, published{Type: typ[len(pub)%2], ID: ids[i], Cursor: eventlog.MustParseID(c.Val())})
		}
		cmds, ids = nil, nil
	}
	for i := range total {
		id := fmt.Sprintf("slow-%d", i)
		fields, err := eventlog.Encode(newEvent(typ[i%2], id), "app")
		if err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ[i%2]), Values: fields}))
		ids = append(ids, id)
		if len(cmds) == 100 {
			flush()
		}
	}
	flush()

	// The stalled subscriber overflows and is cut off from the live feed.
	deadline := time.Now().Add(waitLong)
	for e.hub.Subscribers() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stalled subscriber was not cut off within %v after %d events", waitLong, total)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(release)

	s.expectExactly(t, pub, waitLong)
	// It rejoined the live feed.
	live := e.publish(t, "billing.invoice.paid")
	s.expectExactly(t, append(pub, live), waitLong)
	if n := e.hub.Subscribers(); n != 1 {
		t.Errorf("Subscribers() = %d after rejoining, want 1", n)
	}
}

// Events of different streams that share a cursor all reach live
// subscribers, subscribers catching up, and a subscriber cut off in the
// middle of a group of equal cursors.
func TestTiedCursors(t *testing.T) {
	types := []string{"billing.invoice.paid", "billing.invoice.created"}
	e := newEnv(t, types...)
	fast := e.subscribe(t, "fast", []string{"*"})
	release := make(chan struct{})
	slow := e.subscribe(t, "slow", []string{"billing.*"}, gated(func(n int) {
		if n == 0 {
			select {
			case <-release:
			case <-time.After(waitLong):
			}
		}
	}))

	// Every entry id is used by both streams. The ids lie a little in the
	// future so the hub reads them only once all are written.
	now, err := e.rdb.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Far enough ahead that a loaded machine writes them all in time: a
	// hub reading some before the rest are written would skip the rest.
	base := uint64(now.UnixMilli()) + 3000
	const pairs = 1500
	var pub []published
	pipe := e.rdb.Pipeline()
	for i := range pairs {
		for _, typ := range types {
			id := fmt.Sprintf("tie-%s-%d", typ, i)
			fields, err := eventlog.Encode(newEvent(typ, id), "app")
			if err != nil {
				t.Fatal(err)
			}
			cursor := eventlog.ID{Ms: base, Seq: uint64(i)}
			pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ), ID: cursor.String(), Values: fields})
			pub = append(pub, published{Type: typ, ID: id, Cursor: cursor})
		}
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatalf("XADD: %v", err)
	}

	fast.expectExactly(t, pub, waitLong)
	// The hub handed all of them to the slow subscriber too, which holds one
	// and buffers 1024: it was cut off.
	close(release)
	slow.expectExactly(t, pub, waitLong)

	replay := e.subscribe(t, "replay", []string{"*"}, after(eventlog.Zero))
	replay.expectExactly(t, pub, waitLong)
	from := e.subscribe(t, "from", []string{"*"}, after(eventlog.ID{Ms: base, Seq: 9}))
	from.expectExactly(t, pub[20:], waitLong)
}

// A type created after a subscriber connected is followed, and its events
// reach the subscriber exactly once.
func TestNewType(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid", "identity.user.created")
	s := e.subscribe(t, "billing", []string{"billing.*"})
	other := e.subscribe(t, "identity", []string{"identity.*"})

	want := []published{e.publish(t, "billing.invoice.paid")}
	e.reg.add("billing.refund.created")
	for range 10 {
		want = append(want, e.publish(t, "billing.refund.created"))
	}
	want = append(want, e.publish(t, "billing.invoice.paid"))
	identity := e.publish(t, "identity.user.created")

	got := s.waitN(t, len(want), waitLong)
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d: %v", len(got), len(want), got)
	}
	// Late events arrive out of cursor order; the others are in order.
	var inOrder []received
	byID := map[string]received{}
	for _, r := range got {
		if _, dup := byID[r.ID]; dup {
			t.Fatalf("event %s delivered twice", r.ID)
		}
		byID[r.ID] = r
		if r.Late && r.Type != "billing.refund.created" {
			t.Errorf("event %s of %s marked late", r.ID, r.Type)
		}
		if !r.Late {
			inOrder = append(inOrder, r)
		}
	}
	checkOrder(t, s.name, inOrder)
	for _, w := range want {
		r, ok := byID[w.ID]
		if !ok {
			t.Fatalf("event %s of %s not delivered", w.ID, w.Type)
		}
		if r.Cursor != w.Cursor || r.Type != w.Type {
			t.Errorf("event %s: got %s at %v, want %s at %v", w.ID, r.Type, r.Cursor, w.Type, w.Cursor)
		}
	}
	other.expectExactly(t, []published{identity}, waitLong)

	// Later events of the new type are live, in order, and a new subscriber
	// replaying from zero sees the whole history once.
	more := e.publish(t, "billing.refund.created")
	got = s.waitN(t, len(want)+1, waitLong)
	if r := got[len(want)]; r.ID != more.ID || r.Late {
		t.Fatalf("after the new type was followed: got %+v, want %s live", r, more.ID)
	}
	all := append(slices.Clone(want), more)
	slices.SortFunc(all, func(a, b published) int { return a.Cursor.Compare(b.Cursor) })
	replay := e.subscribe(t, "replay", []string{"billing.*"}, after(eventlog.Zero))
	replay.expectExactly(t, all, waitLong)
}

// Starting with an empty catalog works: the first type is picked up.
func TestEmptyCatalog(t *testing.T) {
	e := newEnv(t)
	s := e.subscribe(t, "all", []string{"*"})
	e.reg.add("billing.invoice.paid")
	p := e.publish(t, "billing.invoice.paid")
	got := s.waitN(t, 1, waitLong)
	if len(got) != 1 || got[0].ID != p.ID {
		t.Fatalf("got %+v, want %s", got, p.ID)
	}
	q := e.publish(t, "billing.invoice.paid")
	got = s.waitN(t, 2, waitLong)
	if len(got) != 2 || got[1].ID != q.ID || got[1].Late {
		t.Fatalf("got %+v, want %s live second", got, q.ID)
	}
}

func TestShutdown(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid")

	t.Run("cancel stream", func(t *testing.T) {
		s := e.subscribe(t, "idle", []string{"*"})
		s.cancel()
		select {
		case err := <-s.done:
			s.done <- err
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Stream returned %v, want context.Canceled", err)
			}
		case <-time.After(waitShort):
			t.Fatalf("Stream did not return within %v of cancelling its context", waitShort)
		}
		deadline := time.Now().Add(waitShort)
		for e.hub.Subscribers() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("cancelled subscriber still registered")
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	t.Run("send error ends stream", func(t *testing.T) {
		boom := errors.New("client went away")
		done := make(chan error, 1)
		started := make(chan struct{})
		go func() {
			done <- e.hub.Stream(context.Background(), []string{"*"}, hub.Options{Started: func() error { close(started); return nil }},
				func([]*hub.Event) error { return boom })
		}()
		select {
		case <-started:
		case <-time.After(waitShort):
			t.Fatal("Stream did not start")
		}
		e.publish(t, "billing.invoice.paid")
		select {
		case err := <-done:
			if !errors.Is(err, boom) {
				t.Fatalf("Stream returned %v, want %v", err, boom)
			}
		case <-time.After(waitLong):
			t.Fatal("Stream did not return after send failed")
		}
		if n := e.hub.Subscribers(); n != 0 {
			t.Fatalf("Subscribers() = %d after the stream failed, want 0", n)
		}
	})

	t.Run("started error", func(t *testing.T) {
		boom := errors.New("cannot start")
		err := e.hub.Stream(context.Background(), []string{"*"}, hub.Options{Started: func() error { return boom }}, func([]*hub.Event) error { return nil })
		if !errors.Is(err, boom) {
			t.Fatalf("Stream returned %v, want %v", err, boom)
		}
		if n := e.hub.Subscribers(); n != 0 {
			t.Fatalf("Subscribers() = %d, want 0", n)
		}
	})

	t.Run("heartbeat", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		beats := make(chan struct{}, 100)
		done := make(chan error, 1)
		go func() {
			done <- e.hub.Stream(ctx, []string{"*"}, hub.Options{
				Interval:  5 * time.Millisecond,
				Heartbeat: func() error { beats <- struct{}{}; return nil },
			}, func([]*hub.Event) error { return nil })
		}()
		for i := range 3 {
			select {
			case <-beats:
			case <-time.After(waitShort):
				t.Fatalf("heartbeat %d not called", i)
			}
		}
		cancel()
		select {
		case <-done:
		case <-time.After(waitShort):
			t.Fatal("Stream did not return")
		}
	})

	t.Run("stream before ready returns on cancel", func(t *testing.T) {
		// A hub that is never run is never ready.
		h := hub.New(e.rdb, catalog.New(nil, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- h.Stream(ctx, []string{"*"}, hub.Options{}, func([]*hub.Event) error { return nil }) }()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Stream returned %v, want context.Canceled", err)
			}
		case <-time.After(waitShort):
			t.Fatal("Stream did not return")
		}
	})

	t.Run("cancel hub", func(t *testing.T) {
		s := e.subscribe(t, "live", []string{"*"})
		e.shutdown(t) // fails the test if hub.Run does not return
		// A subscriber of a stopped hub still ends on its own context.
		s.stop(t)
	})
}

func allow(f func(string) bool) subOpt {
	return func(_ *subscriber, o *hub.Options) { o.Allow = f }
}

// Allow (the caller's visibility) narrows what a pattern delivers, live and
// on replay.
func TestAllowNarrowsPatterns(t *testing.T) {
	types := []string{"billing.invoice.paid", "billing.ledger.closed"}
	e := newEnv(t, types...)
	public := func(typ string) bool { return typ == "billing.invoice.paid" }
	live := e.subscribe(t, "live", []string{"*"}, allow(public))
	var pub []published
	for i := range 40 {
		pub = append(pub, e.publish(t, types[i%2]))
	}
	want := matching(pub, public)
	live.expectExactly(t, want, waitLong)
	replay := e.subscribe(t, "replay", []string{"billing.*"}, allow(public), after(eventlog.Zero))
	replay.expectExactly(t, want, waitLong)
}

// Every partition of a type is followed: events of all partitions arrive,
// live and on replay, each partition in its own order.
func TestPartitionsAreFollowed(t *testing.T) {
	const typ = "orders.order.placed"
	e := newEnv(t, typ+"/3")
	live := e.subscribe(t, "live", []string{"orders.*"})
	var pub []published
	// Ids unique across the partitions, stamped atomically on the Redis
	// clock, as the router's append script does.
	stamp := redis.NewScript(`
local t = redis.call('TIME')
local id = string.format('%.0f-%s', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return redis.call('XADD', KEYS[1], id, unpack(ARGV, 2))`)
	for i := range 60 {
		p := i % 3
		fields, err := eventlog.Encode(newEvent(typ, fmt.Sprint(i)), "app")
		if err != nil {
			t.Fatal(err)
		}
		id, err := stamp.Run(context.Background(), e.rdb, []string{eventlog.PartitionKey(typ, p)}, append([]any{i + 1}, fields...)...).Text()
		if err != nil {
			t.Fatal(err)
		}
		pub = append(pub, published{Type: typ, ID: fmt.Sprint(i), Cursor: eventlog.MustParseID(id)})
	}
	live.expectExactly(t, pub, waitLong)
	replay := e.subscribe(t, "replay", []string{typ}, after(eventlog.Zero))
	replay.expectExactly(t, pub, waitLong)
}
