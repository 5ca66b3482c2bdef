package backpressure_test

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/router/internal/backpressure"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(testutil.StoppingSpares(m)) }

// usedMemory reads used_memory from INFO memory.
func usedMemory(t *testing.T, rdb *redis.Client) uint64 {
	t.Helper()
	info, err := rdb.InfoMap(context.Background(), "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	used, err := strconv.ParseUint(info["Memory"]["used_memory"], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return used
}

func setMaxMemory(t *testing.T, rdb *redis.Client, bytes uint64) {
	t.Helper()
	if err := rdb.ConfigSet(context.Background(), "maxmemory", strconv.FormatUint(bytes, 10)).Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory %d: %v", bytes, err)
	}
}

// runMemory runs m until the test ends.
func runMemory(t *testing.T, m *backpressure.Memory) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func refusing(m *backpressure.Memory) bool { _, r := m.Refusing(); return r }

// TestMemoryFollowsMaxmemory moves Redis's maxmemory around its used memory
// and checks that the guard refuses exactly while used_memory is above the
// high-water mark, with a message that says so.
func TestMemoryFollowsMaxmemory(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	m, err := backpressure.NewMemory(rdb, backpressure.MemoryOptions{Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runMemory(t, m)

	testutil.Eventually(t, 10*time.Second, func() bool { return m.State().Used > 0 }, "a first reading")
	if refusing(m) {
		t.Fatalf("refusing with no maxmemory: %+v", m.State())
	}

	used := usedMemory(t, rdb)
	setMaxMemory(t, rdb, used*2) // about 50%: below 90%
	testutil.Eventually(t, 10*time.Second, func() bool { return m.State().Max == used*2 }, "the guard reads the new maxmemory")
	if refusing(m) {
		t.Fatalf("refusing at %d of %d bytes", m.State().Used, m.State().Max)
	}

	setMaxMemory(t, rdb, used-used/50) // just below used memory: above 90%
	testutil.Eventually(t, 10*time.Second, func() bool { return refusing(m) }, "refusing above the high-water mark")
	reason, _ := m.Refusing()
	st := m.State()
	for _, want := range []string{"% of maxmemory", strconv.FormatUint(st.Max, 10) + " bytes", "90% high-water mark", "retry later"} {
		if !strings.Contains(reason, want) {
			t.Errorf("reason %q does not mention %q", reason, want)
		}
	}

	setMaxMemory(t, rdb, used*4)
	testutil.Eventually(t, 10*time.Second, func() bool { return !refusing(m) }, "accepting again below the high-water mark")

	setMaxMemory(t, rdb, 0) // no limit: never refuse, whatever is used
	testutil.Eventually(t, 10*time.Second, func() bool { return m.State().Max == 0 }, "the guard reads maxmemory 0")
	if refusing(m) {
		t.Error("refusing with maxmemory 0")
	}
}

// TestMemoryHighWater checks that the mark is the configured share.
func TestMemoryHighWater(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	used := usedMemory(t, rdb)
	setMaxMemory(t, rdb, used*3/2) // about 67%
	for _, c := range []struct {
		high   float64
		refuse bool
	}{{0.5, true}, {0.9, false}, {1, false}} {
		m, err := backpressure.NewMemory(rdb, backpressure.MemoryOptions{HighWater: c.high, Interval: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }() // reads once at start
		testutil.Eventually(t, 10*time.Second, func() bool { return m.State().Max > 0 }, "a first reading")
		cancel()
		<-done
		if got := refusing(m); got != c.refuse {
			t.Errorf("high water %v at %d of %d bytes: refusing %v, want %v", c.high, m.State().Used, m.State().Max, got, c.refuse)
		}
	}
}

// TestMemoryProbe checks that Probe takes a reading at once, as after an
// append refused for lack of memory, rather than at the next tick.
func TestMemoryProbe(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	m, err := backpressure.NewMemory(rdb, backpressure.MemoryOptions{Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runMemory(t, m)
	testutil.Eventually(t, 10*time.Second, func() bool { return m.State().Used > 0 }, "a first reading")
	setMaxMemory(t, rdb, usedMemory(t, rdb)/2)
	testutil.Eventually(t, 10*time.Second, func() bool { m.Probe(); return refusing(m) }, "refusing after Probe")
}

// logRecorder keeps the messages logged to it.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, rec.Message)
	r.mu.Unlock()
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }
func (r *logRecorder) logged(prefix string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}

// TestMemoryKeepsStateWhenRedisIsGone stops Redis while the guard refuses:
// a failed reading is logged and changes nothing.
func TestMemoryKeepsStateWhenRedisIsGone(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := testutil.RedisClient(t, srv)
	logs := &logRecorder{}
	m, err := backpressure.NewMemory(rdb, backpressure.MemoryOptions{Interval: 10 * time.Millisecond, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	runMemory(t, m)
	setMaxMemory(t, rdb, usedMemory(t, rdb)/2)
	testutil.Eventually(t, 10*time.Second, func() bool { return refusing(m) }, "refusing above the high-water mark")

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return logs.logged("cannot read Redis memory") }, "the failed reading is logged")
	// The last reading is the one before Redis stopped (the state just
	// before the stop could be an older one: readings go on until then).
	before := m.State()
	if !refusing(m) {
		t.Fatalf("a failed reading changed the state to %+v", before)
	}
	time.Sleep(100 * time.Millisecond) // ten more failed readings
	if after := m.State(); after != before || !refusing(m) {
		t.Errorf("after a failed reading: %+v, want the last reading %+v kept", after, before)
	}
}

func TestNewMemoryHighWater(t *testing.T) {
	for _, c := range []struct {
		high float64
		ok   bool
	}{{0, true}, {0.5, true}, {1, true}, {-0.1, false}, {1.01, false}, {90, false}, {math.NaN(), false}} {
		_, err := backpressure.NewMemory(nil, backpressure.MemoryOptions{HighWater: c.high})
		if (err == nil) != c.ok {
			t.Errorf("HighWater %v: %v, want ok=%v", c.high, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "high-water") {
			t.Errorf("HighWater %v: %q does not say which setting is wrong", c.high, err)
		}
	}
}

func TestNilMemoryNeverRefuses(t *testing.T) {
	var m *backpressure.Memory
	m.Probe()
	if refusing(m) {
		t.Error("a nil guard refuses")
	}
}

// TestQuota draws from one application's quota in Redis.
func TestQuota(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	ctx := context.Background()
	q := backpressure.NewQuota(rdb)
	five := backpressure.Limit{EventsPerSecond: 5, Burst: 5}

	if wait, err := q.Take(ctx, "app_a", five, 5); err != nil || wait != 0 {
		t.Fatalf("first 5 events: wait %v, err %v; want them taken", wait, err)
	}
	wait, err := q.Take(ctx, "app_a", five, 5)
	if err != nil || wait <= 0 || wait > time.Second {
		t.Fatalf("5 more events at once: wait %v, err %v; want a wait of at most 1s", wait, err)
	}
	// Another application has its own quota.
	if wait, err := q.Take(ctx, "app_b", five, 5); err != nil || wait != 0 {
		t.Errorf("app_b: wait %v, err %v; want its own quota", wait, err)
	}
	// The count is one key per application, with a hash tag.
	if n, err := rdb.Exists(ctx, "rate:"+backpressure.QuotaKey("app_a")).Result(); err != nil || n != 1 {
		t.Errorf("key %s: exists %d, %v", backpressure.QuotaKey("app_a"), n, err)
	}
	if k := backpressure.QuotaKey("app_a"); !strings.Contains(k, "{app_a}") {
		t.Errorf("key %s has no hash tag", k)
	}

	// More than the burst never passes, and costs no Redis call.
	var over *backpressure.OverBurstError
	if _, err := q.Take(ctx, "app_c", five, 6); !errors.As(err, &over) || over.Events != 6 {
		t.Errorf("6 events against a burst of 5: %v, want an OverBurstError", err)
	}
	if n, _ := rdb.Exists(ctx, "rate:"+backpressure.QuotaKey("app_c")).Result(); n != 0 {
		t.Error("an over-burst batch touched the quota")
	}

	// Burst 0 is one second's worth.
	oneSecond := backpressure.Limit{EventsPerSecond: 3}
	if wait, err := q.Take(ctx, "app_d", oneSecond, 3); err != nil || wait != 0 {
		t.Errorf("3 events at 3/s, burst 0: wait %v, err %v", wait, err)
	}
	if _, err := q.Take(ctx, "app_d", oneSecond, 4); !errors.As(err, &over) {
		t.Errorf("4 events at 3/s, burst 0: %v, want an OverBurstError", err)
	}
}

func TestQuotaRedisDown(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := testutil.RedisClient(t, srv)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := backpressure.NewQuota(rdb).Take(ctx, "app_a", backpressure.Limit{EventsPerSecond: 5}, 1); err == nil {
		t.Error("Take with Redis down: no error")
	}
}
