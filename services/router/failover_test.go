package router_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
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

// A router waiting for a replica that is not there refuses the batch with
// UNAVAILABLE, saying what to do and nothing of Redis. The event may be in
// the log all the same: once the replica is back, the producer's retry is
// answered duplicate with the stored cursor.
func TestPublishRefusedWhenReplicasDoNotConfirm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := testutil.RedisCluster(t, 3, 1)
	e, rdb := clusterEnv(t, c)
	e.createType(t, orderCreated, orderSchema)
	_, key := e.createApp(t, "shop")
	addr, _ := e.startRouterWith(t, router.Config{ReplicaAcks: 1, ReplicaTimeout: 200 * time.Millisecond})
	client := routerClient(addr, key)
	mustPublish(t, client, event(orderCreated, "rep-0", valid))

	master, err := c.MasterOf(ctx, eventlog.StreamKey(orderCreated))
	if err != nil {
		t.Fatal(err)
	}
	replica := replicaOf(t, c, master)
	replica.Kill()
	ev := event(orderCreated, "rep-1", valid)
	_, err = publish(ctx, client, ev)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("publish with its master's replica dead: %v, want UNAVAILABLE", err)
	}
	msg := message(err)
	for _, internal := range []string{"127.0.0.1", "redis", "WAIT", "wait for"} {
		if strings.Contains(msg, internal) {
			t.Errorf("refusal %q names %q", msg, internal)
		}
	}
	if !strings.Contains(msg, "retry") || !strings.Contains(msg, "replicas") {
		t.Errorf("refusal %q does not say the batch was not confirmed and to retry it", msg)
	}
	msgs, err := rdb.XRange(ctx, eventlog.StreamKey(orderCreated), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("the log holds %d entries, want rep-0 and the unconfirmed rep-1", len(msgs))
	}
	if err := replica.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	r := mustPublish(t, client, ev)[0]
	if !r.GetDuplicate() || r.GetCursor() != msgs[1].ID {
		t.Fatalf("retry once the replica is back: %v, want duplicate=true at %s", r, msgs[1].ID)
	}
}

// message is what a refusal says to the client.
func message(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

// replicaOf is the running node that replicates master.
func replicaOf(t *testing.T, c *redisserver.Cluster, master *redisserver.Server) *redisserver.Server {
	t.Helper()
	_, port, _ := strings.Cut(master.Addr(), ":")
	for _, s := range c.Nodes {
		if s == master || !s.Running() {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
		info, err := rdb.Info(context.Background(), "replication").Result()
		rdb.Close()
		if err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+port+"\r\n") {
			return s
		}
	}
	t.Fatalf("no replica of %s", master.Addr())
	return nil
}

// clusterEnv is a registry on a Redis Cluster, with a cluster client for
// the test's own reads.
func clusterEnv(t *testing.T, c *redisserver.Cluster) (*env, *redis.ClusterClient) {
	t.Helper()
	common := config.Common{RedisURL: c.URL(), AdminKey: adminKey, SecretKey: secretbox.NewKey(), WebhookAllow: "127.0.0.0/8"}
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
	rdb := c.Client()
	t.Cleanup(func() { _ = rdb.Close() })
	return &env{
		common:   common,
		registry: registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...),
	}, rdb
}

// failoverPublisher publishes batches of one type, retrying each until it
// is acknowledged, with the same ids, as a producer should.
type failoverPublisher struct {
	typ, prefix string
	batch       int

	mu       sync.Mutex
	acked    []string          // event ids, in the order acknowledged
	cursors  map[string]string // event id -> cursor
	accepted [][2]time.Time    // when each acknowledged attempt was sent, and answered
	refused  []string          // each refused attempt: code and message
}

func (p *failoverPublisher) count() int { p.mu.Lock(); defer p.mu.Unlock(); return len(p.acked) }

// firstAcceptedAfter is when the first attempt sent after t was sent and
// acknowledged (zero if none was).
func (p *failoverPublisher) firstAcceptedAfter(t time.Time) (sent, answered time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.accepted {
		if a[0].After(t) {
			return a[0], a[1]
		}
	}
	return time.Time{}, time.Time{}
}

func (p *failoverPublisher) run(ctx context.Context, stop <-chan struct{}, client interface {
	publishBatch(context.Context, []*eventv1.CloudEvent) (time.Time, []string, error)
}) error {
	for b := 0; ; b++ {
		select {
		case <-stop:
			return nil
		default:
		}
		evs := make([]*eventv1.CloudEvent, p.batch)
		for j := range evs {
			evs[j] = event(p.typ, fmt.Sprintf("%s-%06d", p.prefix, b*p.batch+j), order(p.prefix, b*p.batch+j+1))
		}
		for {
			sent, cursors, err := client.publishBatch(ctx, evs)
			if err == nil {
				p.mu.Lock()
				for j, c := range cursors {
					p.acked = append(p.acked, evs[j].GetId())
					p.cursors[evs[j].GetId()] = c
				}
				p.accepted = append(p.accepted, [2]time.Time{sent, time.Now()})
				p.mu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("batch %d of %s never acknowledged: %w", b, p.prefix, err)
			}
			p.mu.Lock()
			p.refused = append(p.refused, fmt.Sprintf("%v: %s", connect.CodeOf(err), message(err)))
			p.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// batchClient publishes one batch through a router and returns when it
// was sent and the cursors, or why it was refused.
type batchClient struct{ addr, key string }

func (c batchClient) publishBatch(ctx context.Context, evs []*eventv1.CloudEvent) (time.Time, []string, error) {
	sent := time.Now()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := publish(cctx, routerClient(c.addr, c.key), evs...)
	if err != nil {
		return sent, nil, err
	}
	cursors := make([]string, len(res))
	for j, r := range res {
		if r.GetCursor() == "" {
			return sent, nil, fmt.Errorf("event %s refused: %v", evs[j].GetId(), r.GetError())
		}
		cursors[j] = r.GetCursor()
	}
	return sent, cursors, nil
}

// The failover test. A router waiting for one replica
// (HERALD_REDIS_REPLICA_ACKS=1) takes publishes of two types, on two
// masters of a three-master cluster, from three producers that retry
// every refused batch with the same ids. The master holding the first
// type's stream is killed with SIGKILL and its replica is promoted. With
// one replica per master, the new master has none left to confirm writes:
// the dead node is restarted (as a supervisor would) and rejoins as its
// replica. With two, the other replica follows the new master by itself.
// Publishes to the type are acknowledged again; those to the other type,
// on another master, went on meanwhile. In the end every
// acknowledged event is in the log once, at the cursor it was acknowledged
// with, in each producer's order, and the log holds nothing else; every
// refusal was UNAVAILABLE with no internals. The failover time (kill to
// the first publish accepted of those sent after it) is logged.
func TestPublishSurvivesMasterFailover(t *testing.T) {
	t.Run("one replica per master, the dead master restarted", func(t *testing.T) { testFailover(t, 1) })
	t.Run("two replicas per master", func(t *testing.T) { testFailover(t, 2) })
}

func testFailover(t *testing.T, replicas int) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := testutil.RedisCluster(t, 3, replicas)
	e, rdb := clusterEnv(t, c)
	x, y := orderCreated, ""
	mx, err := c.MasterOf(ctx, eventlog.StreamKey(x))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; y == ""; i++ {
		name := fmt.Sprintf("shop.order.kind%d", i)
		if m, err := c.MasterOf(ctx, eventlog.StreamKey(name)); err != nil {
			t.Fatal(err)
		} else if m != mx {
			y = name
		}
	}
	e.createType(t, x, orderSchema)
	e.createType(t, y, orderSchema)
	_, key := e.createApp(t, "shop")
	addr, _ := e.startRouterWith(t, router.Config{ReplicaAcks: 1, ReplicaTimeout: time.Second})
	client := batchClient{addr: addr, key: key}

	pubs := []*failoverPublisher{
		{typ: x, prefix: "xa", batch: 5}, {typ: x, prefix: "xb", batch: 5}, {typ: y, prefix: "ya", batch: 5},
	}
	stop := make(chan struct{})
	errc := make(chan error, len(pubs))
	for _, p := range pubs {
		p.cursors = map[string]string{}
		go func() { errc <- p.run(ctx, stop, client) }()
	}
	ackedOf := func(typ string) int {
		n := 0
		for _, p := range pubs {
			if p.typ == typ {
				n += p.count()
			}
		}
		return n
	}
	stopped := false
	stopPublishers := func() {
		if stopped {
			return
		}
		stopped = true
		close(stop)
		for range pubs {
			if err := <-errc; err != nil {
				t.Error(err)
			}
		}
	}
	defer stopPublishers()

	testutil.Eventually(t, time.Minute, func() bool { return ackedOf(x) >= 300 && ackedOf(y) >= 100 }, "300 events of the first type and 100 of the second acknowledged")
	before, yBefore := ackedOf(x), ackedOf(y)
	mx.Kill()
	killed := time.Now()
	t.Logf("master %s of %s killed with %d of its events acknowledged", mx.Addr(), x, before)

	// The replica takes over: CLUSTER SLOTS names another master.
	testutil.Eventually(t, time.Minute, func() bool {
		m, err := c.MasterOf(ctx, eventlog.StreamKey(x))
		return err == nil && m != mx
	}, "the replica of the killed master is promoted")
	promoted := time.Since(killed)
	yDuring := ackedOf(y) - yBefore
	if replicas == 1 {
		if err := mx.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitHealthy(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("the old master rejoined as a replica %v after the kill", time.Since(killed).Round(time.Millisecond))
	}
	if yDuring == 0 {
		t.Errorf("no publish to %s (another master) was acknowledged while %s's master was down: a dead master holds up the others", y, x)
	}
	var sent, answered time.Time
	testutil.Eventually(t, time.Minute, func() bool {
		for _, p := range pubs {
			if s, a := p.firstAcceptedAfter(killed); p.typ == x && !s.IsZero() && (sent.IsZero() || a.Before(answered)) {
				sent, answered = s, a
			}
		}
		return !sent.IsZero()
	}, "a publish to the failed-over stream is acknowledged")
	t.Logf("failover with %d replica(s) per master: replica promoted %v after the kill; first accepted publish sent %v after the kill, acknowledged %v after it; %d events of the other shard acknowledged until the promotion",
		replicas, promoted.Round(time.Millisecond), sent.Sub(killed).Round(time.Millisecond), answered.Sub(killed).Round(time.Millisecond), yDuring)
	after := ackedOf(x)
	testutil.Eventually(t, time.Minute, func() bool { return ackedOf(x) >= after+300 }, "300 more events of the first type acknowledged after the failover")
	stopPublishers()
	// The log: every acknowledged event once, at its cursor, and nothing
	// else (every batch was retried until acknowledged).
	for _, typ := range []string{x, y} {
		msgs, err := rdb.XRange(ctx, eventlog.StreamKey(typ), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		stored := map[string]string{} // event id -> cursor
		for _, m := range msgs {
			en, err := eventlog.Decode(eventlog.StreamKey(typ), m)
			if err != nil {
				t.Fatal(err)
			}
			if prev, dup := stored[en.Event.GetId()]; dup {
				t.Errorf("%s is stored twice: %s and %s", en.Event.GetId(), prev, en.ID)
			}
			stored[en.Event.GetId()] = en.ID.String()
		}
		acked := 0
		for _, p := range pubs {
			if p.typ != typ {
				continue
			}
			p.mu.Lock()
			var last eventlog.ID
			for _, id := range p.acked {
				cursor := p.cursors[id]
				switch got, ok := stored[id]; {
				case !ok:
					t.Errorf("acknowledged event %s (cursor %s) is not in the log", id, cursor)
				case got != cursor:
					t.Errorf("event %s acknowledged at %s, stored at %s", id, cursor, got)
				}
				cur := eventlog.MustParseID(cursor)
				if !last.Less(cur) {
					t.Errorf("%s: %s acknowledged at %s, not after the producer's previous event (%s)", p.prefix, id, cursor, last)
				}
				last = cur
			}
			acked += len(p.acked)
			for _, r := range p.refused {
				if !strings.HasPrefix(r, connect.CodeUnavailable.String()+":") || strings.Contains(r, "127.0.0.1") {
					t.Errorf("%s: a refusal during the failover: %s, want UNAVAILABLE with no internals", p.prefix, r)
				}
			}
			t.Logf("%s: %d events acknowledged, %d attempts refused (first: %s)", p.prefix, len(p.acked), len(p.refused), strings.Join(p.refused[:min(1, len(p.refused))], ""))
			p.mu.Unlock()
		}
		if len(stored) != acked {
			t.Errorf("%s: the log holds %d events, %d were acknowledged", typ, len(stored), acked)
		}
	}
}
