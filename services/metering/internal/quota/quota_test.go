package quota

import (
	"context"
	"errors"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	pq "github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/testutil"
	"go.uber.org/goleak"
)

func TestPeriodIsUTC(t *testing.T) {
	at := time.Date(2026, 3, 1, 0, 30, 0, 0, time.FixedZone("CET", 3600)) // Feb 28 23:30 UTC
	start, end := Period(meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY, at)
	if !start.Equal(time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC)) || !end.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("day: %v .. %v", start, end)
	}
	start, end = Period(meteringv1.QuotaPeriod_QUOTA_PERIOD_MONTH, at)
	if !start.Equal(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) || !end.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("month: %v .. %v", start, end)
	}
	start, end = Period(meteringv1.QuotaPeriod_QUOTA_PERIOD_MONTH, time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC))
	if !start.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) || !end.Equal(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("December: %v .. %v", start, end)
	}
}

func TestStatusAndPercent(t *testing.T) {
	q := &meteringv1.Quota{Limit: 10, Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY}
	for _, c := range []struct {
		used, limit, pct int64
		state            meteringv1.QuotaState
	}{
		{0, 10, 0, meteringv1.QuotaState_QUOTA_STATE_OK},
		{7, 10, 70, meteringv1.QuotaState_QUOTA_STATE_OK},
		{8, 10, 80, meteringv1.QuotaState_QUOTA_STATE_WARNING},
		{9, 10, 90, meteringv1.QuotaState_QUOTA_STATE_WARNING},
		{10, 10, 100, meteringv1.QuotaState_QUOTA_STATE_EXHAUSTED},
		{25, 10, 250, meteringv1.QuotaState_QUOTA_STATE_EXHAUSTED},
		{0, 0, 100, meteringv1.QuotaState_QUOTA_STATE_EXHAUSTED},
		{2, 3, 66, meteringv1.QuotaState_QUOTA_STATE_OK},
		{math.MaxInt64, math.MaxInt64, 100, meteringv1.QuotaState_QUOTA_STATE_EXHAUSTED},
	} {
		q.Limit = c.limit
		s := Status(q, c.used, time.Now())
		if s.GetPercent() != c.pct || s.GetState() != c.state || s.GetUsed() != c.used || s.GetLimit() != c.limit {
			t.Fatalf("used %d of %d: %d%% %v", c.used, c.limit, s.GetPercent(), s.GetState())
		}
	}
}

// recorder is a Publisher that records what it publishes and fails while
// told to, standing in for the router (the mesh tests use the real one).
type recorder struct {
	mu   sync.Mutex
	fail int
	evs  []*eventv1.CloudEvent
	try  int
}

func (r *recorder) Publish(_ context.Context, ev *eventv1.CloudEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.try++
	if r.fail > 0 {
		r.fail--
		return errors.New("router unavailable")
	}
	r.evs = append(r.evs, ev)
	return nil
}

func (r *recorder) published() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, ev := range r.evs {
		ids = append(ids, ev.GetId())
	}
	return ids
}

func TestEnforcerBlocksAndWarnsOnce(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := testutil.RedisClient(t, srv)
	ctx := context.Background()
	now := time.Date(2026, 3, 15, 12, 0, 0, 0, time.UTC)
	pub := &recorder{fail: 1}
	st := NewStore(rdb)
	e := NewEnforcer(st, rdb, Options{Now: func() time.Time { return now }, Publisher: pub, Interval: 10 * time.Millisecond})
	put := func(q *meteringv1.Quota) *meteringv1.Quota {
		q.Id = ID(q.GetScope(), q.GetSubject(), q.GetMetric(), q.GetPeriod())
		if err := st.Put(ctx, q); err != nil {
			t.Fatal(err)
		}
		return q
	}
	seed := func(day time.Time, field string, n int64) {
		if err := rdb.HIncrBy(ctx, TotalsKey(day), field, n).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pubField := TotalsField(meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, "app|1", meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED)
	monthly := put(&meteringv1.Quota{Scope: meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, Subject: "app|1", Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED,
		Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_MONTH, Limit: 100, Mode: meteringv1.QuotaMode_QUOTA_MODE_HARD})
	daily := put(&meteringv1.Quota{Scope: meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, Subject: "app|1", Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED,
		Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY, Limit: 50, Mode: meteringv1.QuotaMode_QUOTA_MODE_HARD})
	soft := put(&meteringv1.Quota{Scope: meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, Subject: "acme", Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED,
		Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY, Limit: 10, Mode: meteringv1.QuotaMode_QUOTA_MODE_SOFT, Tenant: "acme"})
	// February and days of March: only March counts for the month, only
	// the 15th for the day.
	seed(time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC), pubField, 1000)
	seed(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), pubField, 40)
	seed(time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC), pubField, 30)
	seed(now, pubField, 20)
	seed(now, TotalsField(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme", meteringv1.UsageMetric_USAGE_METRIC_DELIVERED), 9)
	used, err := st.Used(ctx, []*meteringv1.Quota{monthly, daily, soft}, now)
	if err != nil || used[0] != 90 || used[1] != 20 || used[2] != 9 {
		t.Fatalf("used %v (%v)", used, err)
	}
	if err := e.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.HLen(ctx, pq.BlockedKey).Result(); n != 0 {
		t.Fatalf("%d blocked under every hard limit", n)
	}
	v0, _ := rdb.Get(ctx, pq.VersionKey).Int64()

	// Both hard quotas exhausted: one field, blocked until the later reset.
	seed(now, pubField, 40)
	if err := e.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	blocked, _ := rdb.HGetAll(ctx, pq.BlockedKey).Result()
	f := pq.Field(meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, pq.ScopeApplication, "app|1")
	if len(blocked) != 1 || blocked[f] != strconv.FormatInt(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC).UnixMilli(), 10) {
		t.Fatalf("blocked %v", blocked)
	}
	v1, _ := rdb.Get(ctx, pq.VersionKey).Int64()
	if err := e.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if v2, _ := rdb.Get(ctx, pq.VersionKey).Int64(); v1 != v0+1 || v2 != v1 {
		t.Fatalf("versions %d, %d, %d: one change, one increment", v0, v1, v2)
	}

	// The soft quota at 90%: the 80% warning, published once though the
	// first try fails.
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- e.Run(rctx) }()
	defer func() { cancel(); <-done }()
	id80 := soft.GetId() + "-20260315-80"
	testutil.Eventually(t, 10*time.Second, func() bool { return len(pub.published()) == 1 }, "the 80% warning is published")
	seed(now, TotalsField(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme", meteringv1.UsageMetric_USAGE_METRIC_DELIVERED), 1)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(pub.published()) == 2 }, "the 100% warning is published")
	time.Sleep(300 * time.Millisecond) // many passes
	if ids := pub.published(); len(ids) != 2 || ids[0] != id80 || ids[1] != soft.GetId()+"-20260315-100" {
		t.Fatalf("published %v", ids)
	}
	if pub.try < 3 {
		t.Fatalf("%d tries: the failed publish was not retried", pub.try)
	}
	ev := pub.evs[1]
	if ev.GetType() != WarningType || ev.GetSource() != "herald/metering" || ev.GetTextData() == "" {
		t.Fatalf("warning event %v", ev)
	}
	// Deleting the hard quotas unblocks.
	for _, q := range []*meteringv1.Quota{monthly, daily} {
		if _, err := st.Delete(ctx, q.GetId()); err != nil {
			t.Fatal(err)
		}
	}
	e.Kick()
	testutil.Eventually(t, 10*time.Second, func() bool {
		n, _ := rdb.HLen(ctx, pq.BlockedKey).Result()
		return n == 0
	}, "still blocked after the hard quotas were deleted")
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(testutil.StoppingSpares(m)) }
