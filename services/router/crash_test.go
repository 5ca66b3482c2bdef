package router_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/router"
)

// processEnv, set to 1, makes this test binary a router process configured
// from HERALD_* variables, like services/router/cmd/router: the crash test
// kills it with SIGKILL, which a router inside the test process could not
// be.
const processEnv = "HERALD_TEST_ROUTER_PROCESS"

func TestMain(m *testing.M) {
	if os.Getenv(processEnv) == "1" {
		os.Exit(routerProcess())
	}
	os.Exit(m.Run())
}

func routerProcess() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := router.RunFromEnv(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "router:", err)
		return 1
	}
	return 0
}

// routerProc is a router running as a child process.
type routerProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startRouterProcess starts a router process on addr and waits until it
// is ready. Its output is logged if the test fails; it is killed when the
// test ends.
func (e *env) startRouterProcess(t *testing.T, addr string) *routerProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		processEnv+"=1",
		"HERALD_REDIS_URL="+e.common.RedisURL,
		"HERALD_ADMIN_KEY="+adminKey,
		"HERALD_REGISTRY_ADDR="+e.common.RegistryAddr,
		"HERALD_ROUTER_ADDR="+addr,
	)
	var out bytes.Buffer // read only once the process has ended
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start router process: %v", err)
	}
	p := &routerProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("router process %d output:\n%s", cmd.Process.Pid, tailLines(out.String(), 40))
		}
	})
	waitReady(t, addr)
	return p
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *routerProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// crashPublisher publishes batches of events with one partition key, each
// batch retried until it is acknowledged, as a client should.
type crashPublisher struct {
	key     string // partition key, also the prefix of the event ids
	batch   int
	first   []*eventv1.CloudEvent // the first batch, to publish again at the end
	mu      sync.Mutex
	acked   map[string]string // event id -> cursor
	retries atomic.Int64      // failed attempts
	dups    atomic.Int64      // events answered duplicate=true
}

func (p *crashPublisher) count() int { p.mu.Lock(); defer p.mu.Unlock(); return len(p.acked) }

func (p *crashPublisher) run(ctx context.Context, stop <-chan struct{}, addr, key string) error {
	client := routerClient(addr, key)
	for b := 0; ; b++ {
		select {
		case <-stop:
			return nil
		default:
		}
		evs := make([]*eventv1.CloudEvent, p.batch)
		for j := range evs {
			n := b*p.batch + j
			evs[j] = event(orderCreated, fmt.Sprintf("%s-%06d", p.key, n), order(p.key, n+1))
			evs[j].Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
				"partitionkey": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: p.key}},
			}
		}
		if b == 0 {
			p.first = evs
		}
		for {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := publish(cctx, client, evs...)
			cancel()
			if err == nil {
				p.mu.Lock()
				for j, r := range res {
					if r.GetCursor() == "" {
						p.mu.Unlock()
						return fmt.Errorf("event %s refused: %v", evs[j].GetId(), r.GetError())
					}
					if r.GetDuplicate() {
						// Stored by an earlier attempt: a retry of this
						// client's, or of the router's Redis client when a
						// connection broke after Redis took the write.
						p.dups.Add(1)
					}
					p.acked[evs[j].GetId()] = r.GetCursor()
				}
				p.mu.Unlock()
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("batch %d of %s never acknowledged: %w", b, p.key, err)
			}
			p.retries.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(5 * time.Millisecond) // a steady stream, not a flood the consumer cannot keep up with
	}
}

// crashConsumer reads a durable subscription through whatever router
// listens on addr, reconnecting when its stream ends. It acknowledges
// what it receives, nacks the poison event, and, while holding, keeps what
// it receives unacknowledged.
type crashConsumer struct {
	addr, key, subID string
	poisonReason     string

	mu       sync.Mutex
	attempts map[string][]int32 // event id -> the attempt numbers it was delivered with
	holding  bool
	held     []string // event ids received and deliberately not acknowledged
	streams  int      // Subscribe streams opened
}

func (c *crashConsumer) received() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.attempts) }

func (c *crashConsumer) hold(on bool) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holding = on
	held := c.held
	if !on {
		c.held = nil
	}
	return held
}

func (c *crashConsumer) heldCount() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.held) }

func (c *crashConsumer) run(ctx context.Context) {
	client := routerClient(c.addr, c.key)
	acks := make(chan string, 10000)
	go func() { // acknowledges in batches; a failed Ack is redelivered later
		for ctx.Err() == nil {
			var ids []string
			select {
			case <-ctx.Done():
				return
			case id := <-acks:
				ids = append(ids, id)
			}
		drain:
			for len(ids) < 100 {
				select {
				case id := <-acks:
					ids = append(ids, id)
				default:
					break drain
				}
			}
			_, _ = client.Ack(ctx, connect.NewRequest(&routerv1.AckRequest{SubscriptionId: c.subID, AckIds: ids}))
		}
	}()
	for ctx.Err() == nil {
		stream, err := client.Subscribe(ctx, connect.NewRequest(&routerv1.SubscribeRequest{SubscriptionId: c.subID, MaxInFlight: 50}))
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		c.mu.Lock()
		c.streams++
		c.mu.Unlock()
		for stream.Receive() {
			d := stream.Msg()
			id := d.GetEvent().GetId()
			c.mu.Lock()
			c.attempts[id] = append(c.attempts[id], d.GetAttempt())
			holding := c.holding
			if holding && id != "poison" {
				c.held = append(c.held, id)
			}
			c.mu.Unlock()
			switch {
			case id == "poison":
				_, _ = client.Nack(ctx, connect.NewRequest(&routerv1.NackRequest{SubscriptionId: c.subID, AckIds: []string{d.GetAckId()}, Reason: c.poisonReason}))
			case !holding:
				acks <- d.GetAckId()
			}
		}
		stream.Close()
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRouterKilledMidBatchAndRedisRestarted is the router's crash test.
// Four producers publish batches of 50 events, each with its own
// partition key, to a router process, and a consumer reads a durable
// subscription through it. The router is killed with SIGKILL while
// batches are in flight and while the consumer holds deliveries it has
// not acknowledged; a new router process starts on the same address; then
// Redis (AOF, appendfsync always) is killed and restarted. Producers retry
// every batch until it is acknowledged. In the end:
//   - every acknowledged event is in the log exactly once, at the cursor
//     it was acknowledged with, in order per partition key;
//   - a batch published again is answered duplicate=true with the
//     original cursors, and the log does not grow;
//   - the deliveries the consumer held when the router died are delivered
//     again, with a higher attempt number, and every event reaches it;
//   - the publisher's usage counts every event in the log exactly once;
//   - the poison event, nacked on every attempt, is in the dead-letter
//     stream with its attempts and the consumer's reason.
func TestRouterKilledMidBatchAndRedisRestarted(t *testing.T) {
	if testing.Short() {
		t.Skip("starts router processes")
	}
	const (
		producers   = 4
		batch       = 50
		maxAttempts = 3
		reason      = "poison: order_id is not a number"
	)
	e := newEnv(t)
	if _, err := e.registry.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{
		EventType: &registryv1.EventType{Name: orderCreated, Schema: orderSchema, Partitions: 3},
	})); err != nil {
		t.Fatal(err)
	}
	pubID, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}, Delivery: policy(time.Second, maxAttempts)})
	began := time.Now()
	addr := testutil.FreeAddr(t)
	first := e.startRouterProcess(t, addr)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	mustPublish(t, routerClient(addr, pubKey), event(orderCreated, "poison", order("poison", 1)))

	cons := &crashConsumer{addr: addr, key: consumerKey, subID: sub.GetId(), poisonReason: reason, attempts: map[string][]int32{}}
	cctx, stopConsumer := context.WithCancel(ctx)
	defer stopConsumer()
	consumerDone := make(chan struct{})
	go func() { cons.run(cctx); close(consumerDone) }()

	stop := make(chan struct{})
	pubs := make([]*crashPublisher, producers)
	errc := make(chan error, producers)
	for i := range pubs {
		pubs[i] = &crashPublisher{key: "p" + strconv.Itoa(i), batch: batch, acked: map[string]string{}}
		go func() { errc <- pubs[i].run(ctx, stop, addr, pubKey) }()
	}
	acked := func() int {
		n := 0
		for _, p := range pubs {
			n += p.count()
		}
		return n
	}
	retries := func() int64 {
		var n int64
		for _, p := range pubs {
			n += p.retries.Load()
		}
		return n
	}

	// 1. Kill the router mid-batch, while the consumer holds deliveries.
	testutil.Eventually(t, time.Minute, func() bool { return acked() >= 1000 && cons.received() >= 300 }, "1000 events acknowledged and 300 delivered by the first router")
	t.Logf("%v: %d acknowledged, %d delivered", time.Since(began), acked(), cons.received())
	cons.hold(true)
	testutil.Eventually(t, 30*time.Second, func() bool { return cons.heldCount() >= 50 }, "the consumer holds a full window of deliveries")
	before := retries()
	first.kill()
	held := cons.hold(false)
	killedAt := acked()
	testutil.Eventually(t, 30*time.Second, func() bool { return retries() > before }, "a publish in flight failed when the router died")
	t.Logf("router killed with %d events acknowledged, %d deliveries held", killedAt, len(held))

	// 2. A new router process on the same address; producers and the
	// consumer carry on through it.
	e.startRouterProcess(t, addr)
	testutil.Eventually(t, time.Minute, func() bool { return acked() >= killedAt+1000 }, "1000 more events acknowledged by the second router")

	// 3. Redis crashes and comes back from its AOF. (Publishers may not
	// notice: go-redis retries a command whose connection broke, which the
	// dedupe makes safe.)
	if err := e.redis.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	restartedAt := acked()
	testutil.Eventually(t, time.Minute, func() bool { return acked() >= restartedAt+500 }, "500 more events acknowledged after Redis restarted")
	close(stop)
	for range pubs {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	var dups int64
	for _, p := range pubs {
		dups += p.dups.Load()
	}
	t.Logf("%d events acknowledged; %d publish attempts failed and were retried; %d events of retried batches were already stored (duplicate=true)", acked(), retries(), dups)

	// The log: every acknowledged event once, at its cursor, in order per key.
	entries := map[string]eventlog.Entry{} // event id -> entry
	total := 0
	for p := range 3 {
		stream := eventlog.PartitionKey(orderCreated, p)
		msgs, err := e.rdb.XRange(ctx, stream, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		lastSeq := map[string]int{} // partition key -> the sequence number last seen in this stream
		for _, m := range msgs {
			en, err := eventlog.Decode(stream, m)
			if err != nil {
				t.Fatal(err)
			}
			id := en.Event.GetId()
			if prev, dup := entries[id]; dup {
				t.Errorf("event %s is stored twice: %s and %s", id, prev.ID, en.ID)
			}
			entries[id] = en
			total++
			if id == "poison" {
				continue
			}
			key, n, _ := strings.Cut(id, "-")
			seq, _ := strconv.Atoi(n)
			if last, ok := lastSeq[key]; ok && seq <= last {
				t.Errorf("partition %d: %s after %s-%06d: out of order for key %s", p, id, key, last, key)
			}
			lastSeq[key] = seq
		}
	}
	want := 1 // the poison event
	for _, p := range pubs {
		p.mu.Lock()
		for id, cursor := range p.acked {
			en, ok := entries[id]
			switch {
			case !ok:
				t.Errorf("acknowledged event %s (cursor %s) is not in the log", id, cursor)
			case en.ID.String() != cursor:
				t.Errorf("event %s acknowledged at %s, stored at %s", id, cursor, en.ID)
			}
		}
		want += len(p.acked)
		p.mu.Unlock()
	}
	if total != want {
		t.Errorf("the log holds %d events, %d were acknowledged", total, want)
	}

	// Publishing a batch again after both crashes: every event is a
	// duplicate, answered with its original cursor.
	again := pubs[0].first
	res, err := publish(ctx, routerClient(addr, pubKey), again...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !r.GetDuplicate() || r.GetCursor() != pubs[0].acked[again[i].GetId()] {
			t.Fatalf("%s published again: %v, want duplicate=true at %s", again[i].GetId(), r, pubs[0].acked[again[i].GetId()])
		}
	}
	var n int64
	for p := range 3 {
		n += e.rdb.XLen(ctx, eventlog.PartitionKey(orderCreated, p)).Val()
	}
	if n != int64(want) {
		t.Errorf("the log grew from %d to %d entries on a republished batch", want, n)
	}

	// Published usage, counted for money: every event in the log once, no
	// matter which router counted it or died.
	var counted int64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if counted = e.published(t, pubID); counted == int64(want) || time.Now().After(deadline) {
			break
		}
	}
	if counted != int64(want) {
		t.Errorf("published usage counts %d events, the log holds %d", counted, want)
	}

	// The consumer: every event reaches it; what it held when the router
	// died comes again with a higher attempt number.
	for deadline := time.Now().Add(time.Minute); cons.received() < want; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the consumer received %d of the %d events", cons.received(), want)
		}
	}
	redelivered := func() bool {
		cons.mu.Lock()
		defer cons.mu.Unlock()
		for _, id := range held {
			if as := cons.attempts[id]; len(as) < 2 || slices.Max(as) < 2 {
				return false
			}
		}
		return true
	}
	for deadline := time.Now().Add(30 * time.Second); !redelivered() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%v: checking the deliveries", time.Since(began))
	cons.mu.Lock()
	for id := range entries {
		if len(cons.attempts[id]) == 0 {
			t.Errorf("event %s never reached the consumer", id)
		}
	}
	for _, id := range held {
		as := cons.attempts[id]
		if len(as) < 2 || slices.Max(as) < 2 {
			t.Errorf("event %s, held unacknowledged when the router died, was not delivered again: attempts %v", id, as)
		}
	}
	t.Logf("the consumer opened %d Subscribe streams", cons.streams)
	cons.mu.Unlock()

	// The poison event is dead-lettered with the consumer's reason.
	client := routerClient(addr, consumerKey)
	var dead *routerv1.ListDeadLettersResponse
	testutil.Eventually(t, 30*time.Second, func() bool {
		res, err := client.ListDeadLetters(ctx, connect.NewRequest(&routerv1.ListDeadLettersRequest{SubscriptionId: sub.GetId()}))
		if err != nil {
			return false
		}
		dead = res.Msg
		return res.Msg.GetTotal() >= 1
	}, "the poison event is dead-lettered")
	if len(dead.GetDeadLetters()) != 1 {
		t.Fatalf("dead letters: %v", dead.GetDeadLetters())
	}
	dl := dead.GetDeadLetters()[0]
	if dl.GetEvent().GetId() != "poison" || dl.GetReason() != reason || dl.GetAttempts() != maxAttempts || dl.GetCursor() != entries["poison"].ID.String() {
		t.Errorf("dead letter: %v", dl)
	}
	stopConsumer()
	<-consumerDone
	if err := ctx.Err(); errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("the test ran out of time")
	}
}
