package subscription

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
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
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fakeRegistry serves a fixed catalog: event types, one application that
// may subscribe to everything, and subscriptions.
type fakeRegistry struct {
	registryv1connect.UnimplementedRegistryServiceHandler
	types []string
	subs  []*registryv1.Subscription
}

const clusterApp = "app_cluster"

func (r *fakeRegistry) Watch(ctx context.Context, _ *connect.Request[registryv1.WatchRequest], stream *connect.ServerStream[registryv1.WatchResponse]) error {
	rev := int64(0)
	send := func(m *registryv1.WatchResponse) error {
		rev++
		m.Revision = rev
		return stream.Send(m)
	}
	for _, n := range r.types {
		if err := send(&registryv1.WatchResponse{Change: &registryv1.WatchResponse_EventType{EventType: &registryv1.EventType{Name: n, Schema: "{}", Revision: rev + 1}}}); err != nil {
			return err
		}
	}
	app := &registryv1.Application{Id: clusterApp, Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"}}}
	if err := send(&registryv1.WatchResponse{Change: &registryv1.WatchResponse_Application{Application: app}}); err != nil {
		return err
	}
	for _, s := range r.subs {
		if err := send(&registryv1.WatchResponse{Change: &registryv1.WatchResponse_Subscription{Subscription: s}}); err != nil {
			return err
		}
	}
	if err := stream.Send(&registryv1.WatchResponse{Revision: rev, SnapshotComplete: true}); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// clusterCatalog is a running catalog of r.
func clusterCatalog(t *testing.T, r *fakeRegistry) *catalog.Cache {
	t.Helper()
	_, h := registryv1connect.NewRegistryServiceHandler(r)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	cat := catalog.New(registryv1connect.NewRegistryServiceClient(http.DefaultClient, srv.URL), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cat.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testutil.Eventually(t, 10*time.Second, func() bool { return cat.Ready(ctx) == nil }, "catalog ready")
	return cat
}

// typesOnMasters picks n event type names whose streams are served by n
// different masters of c.
func typesOnMasters(t *testing.T, c *redisserver.Cluster, n int) []string {
	t.Helper()
	ctx := context.Background()
	var names []string
	masters := map[string]bool{}
	for i := 0; len(names) < n && i < 1000; i++ {
		name := fmt.Sprintf("shop.kind%d.created", i)
		m, err := c.MasterOf(ctx, eventlog.StreamKey(name))
		if err != nil {
			t.Fatal(err)
		}
		if !masters[m.Addr()] {
			masters[m.Addr()] = true
			names = append(names, name)
		}
	}
	if len(names) < n {
		t.Fatalf("found types on %d masters, want %d", len(names), n)
	}
	return names
}

// clusterEvent appends an event to a type's stream under the given id.
func clusterEvent(t *testing.T, rdb redis.Cmdable, typ, id string) {
	t.Helper()
	if err := appendEvent(rdb, typ, id); err != nil {
		t.Fatal(err)
	}
}

func appendEvent(rdb redis.Cmdable, typ, id string) error {
	b, err := proto.Marshal(&eventv1.CloudEvent{Id: "ev-" + id, Source: "/test", SpecVersion: "1.0", Type: typ})
	if err != nil {
		return err
	}
	if err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ), ID: id,
		Values: []any{eventlog.FieldEvent, b, eventlog.FieldApp, clusterApp}}).Err(); err != nil {
		return fmt.Errorf("append %s to %s: %w", id, typ, err)
	}
	return nil
}

// clusterConsumer runs a session of sub and hands its deliveries over.
func clusterConsumer(t *testing.T, m *Manager, sub *registryv1.Subscription, window int, resume ...string) <-chan *routerv1.SubscribeResponse {
	t.Helper()
	out := make(chan *routerv1.SubscribeResponse, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := m.serve(ctx, sub, window, strings.Join(resume, ""), "c-"+sub.GetId(), func() error { return nil }, func(d *routerv1.SubscribeResponse, _ Meta) error {
			out <- d
			return nil
		})
		if err != nil && ctx.Err() == nil {
			t.Errorf("session of %s: %v", sub.GetId(), err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return out
}

func next(t *testing.T, ch <-chan *routerv1.SubscribeResponse, what string) *routerv1.SubscribeResponse {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(30 * time.Second):
		t.Fatalf("no delivery: %s", what)
		return nil
	}
}

// A subscription over types whose streams sit on three different masters
// of a real Redis Cluster gets every event once, in cursor order, its
// unacknowledged and nacked deliveries come again, one past its attempts
// is dead-lettered, and a waiting session wakes for an event on any shard
// through its Manager's watches (sessions never block in Redis: with the
// sweep off, a watch is the only way a new event is read).
func TestClusterSubscriptionAcrossShards(t *testing.T) {
	ctx := context.Background()
	c := testutil.RedisCluster(t, 3, 0)
	rdb := c.Client()
	t.Cleanup(func() { rdb.Close() })
	types := typesOnMasters(t, c, 3)
	sub := &registryv1.Subscription{
		Id: "sub_cluster", ApplicationId: clusterApp, Types: types,
		Channel:  &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Start:    &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}},
		Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(3 * time.Second), MaxAttempts: 2},
	}
	other := proto.CloneOf(sub)
	other.Id = "sub_cluster_2"
	resumed := proto.CloneOf(sub)
	resumed.Id = "sub_cluster_3"
	cat := clusterCatalog(t, &fakeRegistry{types: types, subs: []*registryv1.Subscription{sub, other, resumed}})
	m := NewManager(rdb, cat, slog.New(slog.DiscardHandler), nil)
	m.sweep = time.Hour

	// A backlog over the three shards, interleaved by cursor.
	var want []string
	base := time.Now().Add(-time.Hour).UnixMilli()
	for i := range 12 {
		id := strconv.FormatInt(base+int64(i), 10) + "-" + strconv.Itoa(i%3+1)
		clusterEvent(t, rdb, types[i%3], id)
		want = append(want, id)
	}
	got := clusterConsumer(t, m, sub, 100)
	var held []*routerv1.SubscribeResponse
	for i, id := range want {
		d := next(t, got, "backlog "+id)
		if d.GetCursor() != id || d.GetAttempt() != 1 {
			t.Fatalf("delivery %d: cursor %s attempt %d; want %s attempt 1", i, d.GetCursor(), d.GetAttempt(), id)
		}
		held = append(held, d)
	}
	// Ack all but two: one left unacknowledged comes back after the ack
	// timeout, one nacked comes back at once.
	var acks []string
	for _, d := range held[:10] {
		acks = append(acks, d.GetAckId())
	}
	if n, err := m.Ack(ctx, sub.GetId(), acks...); err != nil || n != 10 {
		t.Fatalf("ack: %d, %v", n, err)
	}
	if r, dead, err := m.Nack(ctx, sub, []string{held[11].GetAckId()}, 0, "later"); err != nil || r != 1 || dead != 0 {
		t.Fatalf("nack: %d retrying, %d dead, %v", r, dead, err)
	}
	again := map[string]*routerv1.SubscribeResponse{}
	for range 2 {
		d := next(t, got, "redelivery")
		again[d.GetCursor()] = d
	}
	for _, d := range held[10:] {
		r := again[d.GetCursor()]
		if r == nil || r.GetAttempt() != 2 || r.GetAckId() != d.GetAckId() {
			t.Fatalf("redeliveries %v; want %s again, attempt 2", again, d.GetCursor())
		}
	}
	if n, err := m.Ack(ctx, sub.GetId(), held[10].GetAckId()); err != nil || n != 1 {
		t.Fatalf("ack of the redelivery: %d, %v", n, err)
	}
	// The nacked one has used up its attempts: a Nack now dead-letters it.
	if _, dead, err := m.Nack(ctx, sub, []string{held[11].GetAckId()}, 0, "broken"); err != nil || dead != 1 {
		t.Fatalf("second nack: %d dead, %v", dead, err)
	}
	letters, _, total, err := m.ListDead(ctx, sub.GetId(), "", 10)
	if err != nil || total != 1 || letters[0].Cursor != held[11].GetCursor() || letters[0].Reason != "broken" {
		t.Fatalf("dead letters: %v (%d), %v", letters, total, err)
	}
	// Replayed through another process's Manager, the dead letter comes
	// back at once: its replay notice wakes this session.
	m2 := NewManager(rdb, cat, slog.New(slog.DiscardHandler), nil)
	if n, err := m2.replay(ctx, sub.GetId(), nil, true); err != nil || n != 1 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	if d := next(t, got, "replayed dead letter"); d.GetCursor() != held[11].GetCursor() || !strings.HasPrefix(d.GetAckId(), replayTag+"/") {
		t.Fatalf("replayed: cursor %s ack id %s; want %s from the replay stream", d.GetCursor(), d.GetAckId(), held[11].GetCursor())
	} else if n, err := m.Ack(ctx, sub.GetId(), d.GetAckId()); err != nil || n != 1 {
		t.Fatalf("ack of the replayed one: %d, %v", n, err)
	}

	// A second subscription on the same streams shares the watches: one
	// per log stream in the process.
	got2 := clusterConsumer(t, m, other, 100)
	for _, id := range want {
		if d := next(t, got2, "second subscription "+id); d.GetCursor() != id {
			t.Fatalf("second subscription: cursor %s, want %s", d.GetCursor(), id)
		}
	}
	if n := m.Watched(); n != len(types) {
		t.Errorf("the Manager watches %d streams; want %d (one per log stream)", n, len(types))
	}
	// A session resuming after a cursor moves the groups on every shard.
	got3 := clusterConsumer(t, m, resumed, 100, want[5])
	for _, id := range want[6:] {
		if d := next(t, got3, "resumed after "+want[5]); d.GetCursor() != id {
			t.Fatalf("resumed subscription: cursor %s, want %s", d.GetCursor(), id)
		}
	}

	// The session waits now; an event on each shard in turn wakes it.
	for i, typ := range types {
		id := strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + strconv.Itoa(100+i)
		clusterEvent(t, rdb, typ, id)
		d := next(t, got, "new event on the shard of "+typ)
		if d.GetCursor() != id || d.GetAttempt() != 1 {
			t.Fatalf("new event on %s: cursor %s attempt %d; want %s", typ, d.GetCursor(), d.GetAttempt(), id)
		}
		if n, err := m.Ack(ctx, sub.GetId(), d.GetAckId()); err != nil || n != 1 {
			t.Fatalf("ack: %d, %v", n, err)
		}
	}
	select {
	case d := <-got:
		t.Fatalf("an extra delivery: %s attempt %d", d.GetCursor(), d.GetAttempt())
	default:
	}
}

// Two processes (two Managers) serve one subscription over three shards
// while three writers append to them at once: every event is delivered
// once in all, and each session gets each stream's events in order.
func TestClusterCompetingSessionsGetEveryEventOnce(t *testing.T) {
	ctx := context.Background()
	c := testutil.RedisCluster(t, 3, 0)
	rdb := c.Client()
	t.Cleanup(func() { rdb.Close() })
	types := typesOnMasters(t, c, 3)
	sub := &registryv1.Subscription{
		Id: "sub_competing", ApplicationId: clusterApp, Types: types,
		Channel:  &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Start:    &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}},
		Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(time.Minute)},
	}
	cat := clusterCatalog(t, &fakeRegistry{types: types, subs: []*registryv1.Subscription{sub}})
	var sessions []<-chan *routerv1.SubscribeResponse
	var managers []*Manager
	for i := range 2 {
		m := NewManager(rdb, cat, slog.New(slog.DiscardHandler), nil)
		m.sweep = time.Hour
		managers = append(managers, m)
		s := proto.CloneOf(sub)
		out := make(chan *routerv1.SubscribeResponse, 1000)
		sctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = m.Serve(sctx, s, 20, fmt.Sprintf("c-%d", i), func(d *routerv1.SubscribeResponse) error { out <- d; return nil })
		}()
		t.Cleanup(func() { cancel(); wg.Wait() })
		sessions = append(sessions, out)
	}
	const perType = 100
	var wg sync.WaitGroup
	for j, typ := range types {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perType {
				id := strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + strconv.Itoa((i+1)<<4|j)
				if err := appendEvent(rdb, typ, id); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	defer wg.Wait() // the writers end before the test does, even when it fails
	seen := map[string]int{}
	last := map[string]eventlog.ID{} // by session and stream
	deadline := time.After(60 * time.Second)
	for len(seen) < perType*len(types) {
		var d *routerv1.SubscribeResponse
		var from int
		select {
		case d = <-sessions[0]:
		case d = <-sessions[1]:
			from = 1
		case <-deadline:
			t.Fatalf("%d of %d events delivered", len(seen), perType*len(types))
		}
		seen[d.GetCursor()]++
		if seen[d.GetCursor()] > 1 || d.GetAttempt() != 1 {
			t.Fatalf("%s delivered %d times, attempt %d", d.GetCursor(), seen[d.GetCursor()], d.GetAttempt())
		}
		k := fmt.Sprintf("%d %s", from, d.GetEvent().GetType())
		id := eventlog.MustParseID(d.GetCursor())
		if prev, ok := last[k]; ok && !prev.Less(id) {
			t.Fatalf("session %d got %s after %s on %s", from, id, prev, d.GetEvent().GetType())
		}
		last[k] = id
		if n, err := managers[from].Ack(ctx, sub.GetId(), d.GetAckId()); err != nil || n != 1 {
			t.Fatalf("ack %s: %d, %v", d.GetCursor(), n, err)
		}
	}
}
