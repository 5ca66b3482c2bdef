package fold

import (
	"context"
	"fmt"
	"testing"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/metering/internal/report"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(testutil.StoppingSpares(m)) }

var when = time.Date(2026, 3, 10, 22, 15, 0, 0, time.UTC)

var key = report.Key{ApplicationID: "app_a", EventType: "shop.order.created", Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, Channel: "grpc"}

func record(id string, n int64) *meteringv1.UsageRecord {
	return &meteringv1.UsageRecord{Id: id, ApplicationId: key.ApplicationID, EventType: key.EventType,
		Metric: key.Metric, Channel: key.Channel, Quantity: n, Time: timestamppb.New(when)}
}

func appendN(t *testing.T, rdb redis.Cmdable, prefix string, n int) {
	t.Helper()
	recs := make([]*meteringv1.UsageRecord, n)
	for i := range recs {
		recs[i] = record(fmt.Sprintf("%s%d", prefix, i), 1)
	}
	if err := usage.Append(context.Background(), rdb, recs...); err != nil {
		t.Fatal(err)
	}
}

func counted(st *store.Store) int64 {
	hours, err := st.Hours(context.Background(), []time.Time{when.Truncate(time.Hour)})
	if err != nil {
		return -1
	}
	return hours[0].Counts[key]
}

func waitCount(t *testing.T, st *store.Store, want int64) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool { return counted(st) == want }, fmt.Sprintf("count %d", want))
	time.Sleep(50 * time.Millisecond) // nothing more arrives
	if got := counted(st); got != want {
		t.Fatalf("count = %d, want %d", got, want)
	}
}

// start runs f until the returned stop is called.
func start(f *Folder) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	return func() { cancel(); <-done }
}

func newClient(t *testing.T, addr string) *redis.Client {
	t.Helper()
	// Short timeouts so that the test notices a dead Redis quickly.
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestFoldsNewRecordsExactlyOnce(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := store.New(rdb)
	f := New(st, Options{Block: 100 * time.Millisecond})
	if f.Ready(context.Background()) == nil {
		t.Fatal("ready before running")
	}
	stop := start(f)
	defer stop()
	testutil.Eventually(t, 5*time.Second, func() bool { return f.Ready(context.Background()) == nil }, "ready")

	appendN(t, rdb, "u_", 300) // more than one read's worth
	if err := usage.Append(context.Background(), rdb, record("u_0", 1), record("u_1", 1)); err != nil {
		t.Fatal(err) // copies of records already sent
	}
	waitCount(t, st, 300)
	testutil.Eventually(t, 5*time.Second, func() bool { return rdb.XLen(context.Background(), usage.StreamKey).Val() == 0 }, "stream trimmed")

	stop()
	if f.Ready(context.Background()) == nil {
		t.Error("ready after stopping")
	}
	cs, err := st.Consumers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 0 {
		t.Errorf("consumers after a clean stop = %+v, want none", cs)
	}
}

func TestRefoldsOwnPendingAfterCrash(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := store.New(rdb)
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, rdb, "u_", 10)
	// A process named "me" read the records and died before folding them.
	if _, err := st.Read(ctx, "me", ">", 100, -1); err != nil {
		t.Fatal(err)
	}
	f := New(st, Options{Consumer: "me", Block: 100 * time.Millisecond, ClaimIdle: time.Hour})
	stop := start(f)
	defer stop()
	waitCount(t, st, 10)
}

func TestTakesOverDeadConsumers(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := store.New(rdb)
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, rdb, "u_", 600)
	// Another process read everything and died without acknowledging.
	for {
		msgs, err := st.Read(ctx, "dead", ">", 256, -1)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			break
		}
	}
	f := New(st, Options{Block: 50 * time.Millisecond, ClaimIdle: 300 * time.Millisecond, ClaimEvery: 50 * time.Millisecond, ForgetIdle: 500 * time.Millisecond})
	stop := start(f)
	defer stop()
	// Not before the entries have been idle for ClaimIdle.
	time.Sleep(100 * time.Millisecond)
	if n := counted(st); n != 0 {
		t.Fatalf("counted %d entries of a consumer that may still be alive", n)
	}
	waitCount(t, st, 600)
	testutil.Eventually(t, 5*time.Second, func() bool {
		cs, err := st.Consumers(ctx)
		return err == nil && len(cs) == 1 && cs[0].Name == f.Consumer()
	}, "the dead consumer forgotten")
}

func TestSkipsInvalidEntries(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := store.New(rdb)
	f := New(st, Options{Block: 50 * time.Millisecond})
	stop := start(f)
	defer stop()
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: usage.StreamKey, Values: []any{usage.FieldRecord, "\xff\xff"}})
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: usage.StreamKey, Values: []any{"x", "y"}})
	appendN(t, rdb, "u_", 3)
	waitCount(t, st, 3)
	testutil.Eventually(t, 5*time.Second, func() bool {
		return rdb.XLen(ctx, usage.StreamKey).Val() == 0 && rdb.XPending(ctx, usage.StreamKey, store.Group).Val().Count == 0
	}, "invalid entries dropped")
}

func TestSurvivesRedisRestart(t *testing.T) {
	ctx := context.Background()
	srv := testutil.Redis(t)
	rdb := newClient(t, srv.Addr())
	st := store.New(rdb)
	f := New(st, Options{Block: 100 * time.Millisecond})
	stop := start(f)
	defer stop()
	appendN(t, rdb, "a_", 5)
	waitCount(t, st, 5)

	srv.Kill()
	time.Sleep(500 * time.Millisecond) // the loop hits errors and backs off
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, rdb, "b_", 5)
	waitCount(t, st, 10)
	if err := f.Ready(ctx); err != nil {
		t.Fatalf("not ready after Redis came back: %v", err)
	}
}

func TestStopsWhileRedisIsDown(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := newClient(t, srv.Addr())
	srv.Kill()
	f := New(store.New(rdb), Options{Block: 100 * time.Millisecond})
	stop := start(f)
	time.Sleep(300 * time.Millisecond)
	if f.Ready(context.Background()) == nil {
		t.Error("ready without Redis")
	}
	begun := time.Now()
	stop()
	if d := time.Since(begun); d > 3*time.Second {
		t.Errorf("stop took %v", d)
	}
}

// TestFoldsLargeReadsInChunks folds a read of many batch entries in chunks
// of about FoldBytes (here one entry each): every record counts once, a
// copy in a later entry counts as a duplicate, and the counters agree.
func TestFoldsLargeReadsInChunks(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := store.New(rdb)
	f := New(st, Options{Block: 100 * time.Millisecond, FoldBytes: 1})
	ctx := context.Background()
	recs := make([]*meteringv1.UsageRecord, 1000)
	for i := range recs {
		recs[i] = record(fmt.Sprintf("c_%d", i), 1)
	}
	if err := usage.AppendBatch(ctx, rdb, 100, recs...); err != nil {
		t.Fatal(err)
	}
	if err := usage.AppendBatch(ctx, rdb, 100, recs[:10]...); err != nil { // copies
		t.Fatal(err)
	}
	stop := start(f)
	defer stop()
	waitCount(t, st, 1000)
	testutil.Eventually(t, 5*time.Second, func() bool { return rdb.XLen(ctx, usage.StreamKey).Val() == 0 }, "stream trimmed")
	if c, d := promtest.ToFloat64(f.counted), promtest.ToFloat64(f.duplicates); c != 1000 || d != 10 {
		t.Errorf("counted %v, duplicates %v; want 1000 and 10", c, d)
	}
}

// TestWorkersAndRollup folds with several workers, each a consumer of its
// own, pacing their reads: every record counts once, and the rollup moves
// the closed minute into the buckets (nothing left pending) without
// changing what reads answer. A clean stop leaves no consumer behind.
func TestWorkersAndRollup(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := store.New(rdb)
	f := New(st, Options{Block: 50 * time.Millisecond, Workers: 3, ReadEvery: 20 * time.Millisecond,
		RollupEvery: 20 * time.Millisecond, Count: 2})
	ctx := context.Background()
	for i := range 10 {
		recs := make([]*meteringv1.UsageRecord, 50)
		for j := range recs {
			recs[j] = record(fmt.Sprintf("w_%d_%d", i, j), 1)
		}
		if err := usage.AppendBatch(ctx, rdb, 10, recs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := usage.AppendBatch(ctx, rdb, 10, record("w_0_0", 1), record("w_9_49", 1)); err != nil { // copies
		t.Fatal(err)
	}
	stop := start(f)
	defer stop()
	waitCount(t, st, 500)
	// The records' minute (in 2026) has long ended: it is rolled up.
	testutil.Eventually(t, 5*time.Second, func() bool {
		ms, err := st.PendingMinutes(ctx)
		return err == nil && len(ms) == 0
	}, "the minute rolled up")
	if got := rdb.HGet(ctx, "herald:{usage}:h:2026031022", "c||app_a||shop.order.created|grpc|1").Val(); got != "500" {
		t.Errorf("hour bucket field = %q, want 500", got)
	}
	if n := counted(st); n != 500 {
		t.Errorf("count after the rollup = %d, want 500", n)
	}
	if c, d := promtest.ToFloat64(f.counted), promtest.ToFloat64(f.duplicates); c != 500 || d != 2 {
		t.Errorf("counted %v, duplicates %v; want 500 and 2", c, d)
	}
	stop()
	if cs, err := st.Consumers(ctx); err != nil || len(cs) != 0 {
		t.Errorf("consumers after a clean stop = %+v, %v; want none", cs, err)
	}
}
