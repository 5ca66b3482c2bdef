package appender_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/router/internal/appender"
	"github.com/redis/go-redis/v9"
)

// commandCalls is how many times a node ran a command (INFO commandstats,
// commands inside scripts included).
func commandCalls(t *testing.T, s *redisserver.Server, cmd string) int {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
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

// onReplica reads a stream's entries on a replica (READONLY), as it
// would serve them once promoted.
func onReplica(t *testing.T, s *redisserver.Server, typ string) []string {
	t.Helper()
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer rdb.Close()
	conn := rdb.Conn()
	defer conn.Close()
	if err := conn.ReadOnly(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	msgs, err := conn.XRange(ctx, eventlog.StreamKey(typ), "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE on replica %s: %v", s.Addr(), err)
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

// typesOnMasters returns two event types whose streams live on different
// masters, and those masters.
func typesOnMasters(t *testing.T, c *redisserver.Cluster) (x, y string, mx, my *redisserver.Server) {
	t.Helper()
	ctx := context.Background()
	x = "shop.order.created"
	mx, err := c.MasterOf(ctx, eventlog.StreamKey(x))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		y = fmt.Sprintf("shop.order.kind%d", i)
		if my, err = c.MasterOf(ctx, eventlog.StreamKey(y)); err != nil {
			t.Fatal(err)
		}
		if my != mx {
			return x, y, mx, my
		}
	}
	t.Fatal("every type on one master")
	return
}

// With ReplicaAcks, each master's share of a batch ends with WAIT on that
// master's own connection, so that a replica holds every acknowledged
// entry before Append answers. With the replica of one master dead, the
// calls writing there fail with ErrNotReplicated (their events stored on
// the master) while the others succeed; once the replica is back, the
// retry is answered duplicate with the stored entries' cursors.
func TestAppendWaitsForReplicas(t *testing.T) {
	ctx := context.Background()
	c := testutil.RedisCluster(t, 3, 1)
	rdb := c.Client()
	defer rdb.Close()
	x, y, mx, my := typesOnMasters(t, c)
	a := appender.New(rdb, appender.Options{ReplicaAcks: 1, ReplicaTimeout: 500 * time.Millisecond})
	// The first events of a stream give it its number (a write, waited
	// for too, on the numbers hash's master).
	mustAppend(t, a, itemsOf("app_1", newEvent(x, "/shop", "r-0"), newEvent(y, "/shop", "r-0")))
	waits := map[*redisserver.Server]int{}
	for _, s := range c.Nodes {
		waits[s] = commandCalls(t, s, "wait")
	}

	res := mustAppend(t, a, itemsOf("app_1", newEvent(x, "/shop", "r-1"), newEvent(y, "/shop", "r-2"), newEvent(x, "/shop", "r-3")))
	for _, typ := range []string{x, y} {
		m := mx
		if typ == y {
			m = my
		}
		// No waiting here: the WAIT said the replica has them.
		got := onReplica(t, replicaOf(t, c, m), typ)[1:]
		var want []string
		for i, r := range res {
			if (i == 1) == (typ == y) {
				want = append(want, r.Cursor)
			}
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s on the replica of its master: %v, want the acknowledged %v", typ, got, want)
		}
	}
	// The WAITs ran on the two masters written to, not on any node.
	for _, s := range c.Nodes {
		n := commandCalls(t, s, "wait") - waits[s]
		if wrote := s == mx || s == my; wrote != (n > 0) {
			t.Errorf("node %s (a master written to: %v) ran WAIT %d times", s.Addr(), wrote, n)
		}
	}

	// A call whose events were all stored before writes anyway, so that
	// its WAIT covers the entries it answers with.
	sets := commandCalls(t, mx, "set")
	again := mustAppend(t, a, itemsOf("app_1", newEvent(x, "/shop", "r-1")))
	if !again[0].Duplicate || again[0].Cursor != res[0].Cursor {
		t.Fatalf("r-1 again: %+v, want a duplicate at %s", again[0], res[0].Cursor)
	}
	if commandCalls(t, mx, "set") == sets {
		t.Error("a call answering only duplicates wrote nothing: its WAIT would not cover the entries it names")
	}

	// The replica of x's master dies.
	rx := replicaOf(t, c, mx)
	rx.Kill()
	lost := newEvent(x, "/shop", "r-4")
	type answer struct {
		res []appender.Result
		err error
	}
	xc, yc := make(chan answer, 1), make(chan answer, 1)
	go func() {
		r, err := a.Append(ctx, itemsOf("app_1", lost))
		xc <- answer{r, err}
	}()
	go func() {
		r, err := a.Append(ctx, itemsOf("app_1", newEvent(y, "/shop", "r-5")))
		yc <- answer{r, err}
	}()
	if got := <-xc; !errors.Is(got.err, appender.ErrNotReplicated) || got.res != nil {
		t.Fatalf("append to %s with its master's replica dead: %+v, %v; want ErrNotReplicated", x, got.res, got.err)
	}
	if got := <-yc; got.err != nil || got.res[0].Duplicate {
		t.Fatalf("append to %s, whose master's replica is up: %+v, %v", y, got.res, got.err)
	}
	stored := stream(t, rdb, x)
	if len(stored) != 4 || stored[3].Event.GetId() != "r-4" {
		t.Fatalf("%s holds %d entries, want r-0, r-1, r-3 and the unconfirmed r-4", x, len(stored))
	}
	// Retried while the replica is still down: still not confirmed.
	if _, err := a.Append(ctx, itemsOf("app_1", lost)); !errors.Is(err, appender.ErrNotReplicated) {
		t.Fatalf("retry with the replica down: %v, want ErrNotReplicated", err)
	}

	// The replica comes back and catches up: the retry is the stored event.
	if err := rx.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitHealthy(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	retry := mustAppend(t, a, itemsOf("app_1", lost))
	if !retry[0].Duplicate || retry[0].Cursor != stored[3].ID.String() {
		t.Fatalf("retry once the replica is back: %+v, want a duplicate at %s", retry[0], stored[3].ID)
	}
	if n := len(stream(t, rdb, x)); n != 4 {
		t.Fatalf("%s holds %d entries after the retry, want 4", x, n)
	}
	if got := onReplica(t, rx, x); len(got) != 4 {
		t.Fatalf("the replica holds %d entries of %s, want 4", len(got), x)
	}

	// Asking for more replicas than there are: never confirmed.
	two := appender.New(rdb, appender.Options{ReplicaAcks: 2, ReplicaTimeout: 100 * time.Millisecond})
	if _, err := two.Append(ctx, itemsOf("app_1", newEvent(y, "/shop", "r-6"))); !errors.Is(err, appender.ErrNotReplicated) {
		t.Fatalf("2 replicas asked of a master with 1: %v, want ErrNotReplicated", err)
	}
}

// On one server (a plain client) the WAIT runs on the same connection: a
// Redis with no replica never confirms, so the first append to a stream
// fails at numbering it, before anything is stored (an unconfirmed
// number could be given again after a failover).
func TestAppendReplicaAcksOnOneServer(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{ReplicaAcks: 1, ReplicaTimeout: 100 * time.Millisecond})
	ev := newEvent(orderCreated, "/shop", "one-1")
	if res, err := a.Append(ctx, itemsOf("app_1", ev)); !errors.Is(err, appender.ErrNotReplicated) || res != nil {
		t.Fatalf("Append with no replica: %+v, %v; want ErrNotReplicated", res, err)
	}
	if n := len(stream(t, rdb, orderCreated)); n != 0 {
		t.Fatalf("%d entries stored before the stream's number was confirmed", n)
	}
	res := mustAppend(t, appender.New(rdb, appender.Options{}), itemsOf("app_1", ev))
	if res[0].Duplicate {
		t.Fatalf("Append without the wait: %+v, want new", res[0])
	}
}

// clusterDo runs a command on one node.
func clusterDo(t *testing.T, s *redisserver.Server, args ...any) any {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer rdb.Close()
	v, err := rdb.Do(context.Background(), args...).Result()
	if err != nil {
		t.Fatalf("%v on %s: %v", args, s.Addr(), err)
	}
	return v
}

// A slot moving from one master to another while the appender's topology
// is stale. Once its keys are moved but before the slot is handed over,
// the old master answers ASK: the appender sends the script with ASKING,
// and its WAIT, to the new one. There a retried event (all of whose keys
// moved) is answered duplicate; a new event is refused (TRYAGAIN: Redis
// runs no multi-key script with a missing key on a slot being imported),
// tried again a few times and failed, stored nowhere. Once the slot is
// handed over, the old master answers MOVED: the appender reads the
// topology again and writes to the new master. Nothing is stored twice,
// and the dedupe keys moved with the stream.
func TestAppendFollowsAMovingSlot(t *testing.T) {
	ctx := context.Background()
	c := testutil.RedisCluster(t, 3, 1)
	// A topology read once, never again unless the appender asks.
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: time.Hour})
	defer rdb.Close()
	a := appender.New(rdb, appender.Options{ReplicaAcks: 1, ReplicaTimeout: time.Second})
	key := eventlog.StreamKey(orderCreated)
	slot := redisserver.Slot(key)
	first := mustAppend(t, a, itemsOf("app_1", newEvent(orderCreated, "/shop", "mv-1")))[0]

	from, err := c.MasterOf(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var to *redisserver.Server
	var masters []*redisserver.Server
	for _, s := range c.Nodes {
		info := clusterDo(t, s, "info", "replication").(string)
		if strings.Contains(info, "role:master") {
			masters = append(masters, s)
			if s != from && to == nil {
				to = s
			}
		}
	}
	fromID, toID := clusterDo(t, from, "cluster", "myid"), clusterDo(t, to, "cluster", "myid")
	clusterDo(t, to, "cluster", "setslot", slot, "importing", fromID)
	clusterDo(t, from, "cluster", "setslot", slot, "migrating", toID)
	host, port, _ := strings.Cut(to.Addr(), ":")
	for {
		keys := clusterDo(t, from, "cluster", "getkeysinslot", slot, 100).([]any)
		if len(keys) == 0 {
			break
		}
		clusterDo(t, from, append([]any{"migrate", host, port, "", 0, 5000, "KEYS"}, keys...)...)
	}

	asks, waits := commandCalls(t, to, "asking"), commandCalls(t, to, "wait")
	again := mustAppend(t, a, itemsOf("app_1", newEvent(orderCreated, "/shop", "mv-1")))[0]
	if !again.Duplicate || again.Cursor != first.Cursor || commandCalls(t, to, "asking") == asks || commandCalls(t, to, "wait") == waits {
		t.Fatalf("retry while the slot migrates: %+v; want a duplicate at %s, sent to the importing master with ASKING and waited for there", again, first.Cursor)
	}
	if _, err := a.Append(ctx, itemsOf("app_1", newEvent(orderCreated, "/shop", "mv-2"))); err == nil || errors.Is(err, appender.ErrNotReplicated) {
		t.Fatalf("a new event while the slot migrates: %v, want the migration's refusal", err)
	}

	for _, m := range append([]*redisserver.Server{to}, masters...) {
		clusterDo(t, m, "cluster", "setslot", slot, "node", toID)
	}
	waits = commandCalls(t, to, "wait")
	third := mustAppend(t, a, itemsOf("app_1", newEvent(orderCreated, "/shop", "mv-2"), newEvent(orderCreated, "/shop", "mv-1")))
	if third[0].Duplicate || !third[1].Duplicate || third[1].Cursor != first.Cursor || commandCalls(t, to, "wait") == waits {
		t.Fatalf("append once the slot moved: %+v; want mv-2 new and mv-1 a duplicate at %s, waited for on the new master", third, first.Cursor)
	}
	got := stream(t, rdb, orderCreated)
	var ids []string
	for _, en := range got {
		ids = append(ids, en.Event.GetId()+"@"+en.ID.String())
	}
	want := []string{"mv-1@" + first.Cursor, "mv-2@" + third[0].Cursor}
	if strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Fatalf("the stream holds %v, want %v", ids, want)
	}
}
