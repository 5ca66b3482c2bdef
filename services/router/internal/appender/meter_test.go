package appender_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/router/internal/appender"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// published sums the published usage records in the usage stream by
// "<account> <type>", and checks that no record id repeats.
func published(t *testing.T, rdb redis.Cmdable) map[string]int64 {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), usage.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	ids := map[string]bool{}
	for _, m := range msgs {
		raw, _ := m.Values[usage.FieldRecord].(string)
		rec := new(meteringv1.UsageRecord)
		if err := proto.Unmarshal([]byte(raw), rec); err != nil {
			t.Fatal(err)
		}
		if rec.GetMetric() != meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED || rec.GetChannel() != "grpc" {
			t.Fatalf("record %v", rec)
		}
		if ids[rec.GetId()] {
			t.Fatalf("record id %s appears twice", rec.GetId())
		}
		ids[rec.GetId()] = true
		if rec.GetProducerApplicationId() != rec.GetApplicationId() {
			t.Errorf("record %s: producer %q, want the publisher %q", rec.GetId(), rec.GetProducerApplicationId(), rec.GetApplicationId())
		}
		if h := rec.GetTime().AsTime(); !h.Equal(h.Truncate(time.Minute)) || time.Since(h) > time.Hour {
			t.Errorf("record %s is timed %v, not at the start of its minute", rec.GetId(), h)
		}
		out[rec.GetApplicationId()+" "+rec.GetEventType()] += rec.GetQuantity()
	}
	return out
}

func sameCounts(t *testing.T, got, want map[string]int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("published usage %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("published usage %v, want %v", got, want)
		}
	}
}

// Published usage is counted by the append and moved to the usage stream
// exactly once: duplicates are not counted, a second move adds nothing, and
// partitions of a type add up under the type.
func TestMeterCountsEachNewEventOnce(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})
	m := appender.NewMeter(rdb, appender.MeterOptions{})

	mustAppend(t, a, itemsOf("app_a", newEvent(orderCreated, "/s", "1"), newEvent(orderCreated, "/s", "2"), newEvent(orderPaid, "/s", "3")))
	mustAppend(t, a, itemsOf("app_a", newEvent(orderCreated, "/s", "1"))) // a duplicate
	part := itemsOf("app_b", newEvent(orderCreated, "/s", "4"), newEvent(orderCreated, "/s", "5"))
	part[1].Partition = 2
	mustAppend(t, a, part)
	if err := m.Move(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"app_a " + orderCreated: 2, "app_a " + orderPaid: 1, "app_b " + orderCreated: 2}
	sameCounts(t, published(t, rdb), want)

	n := rdb.XLen(ctx, usage.StreamKey).Val()
	if err := m.Move(ctx); err != nil {
		t.Fatal(err)
	}
	if after := rdb.XLen(ctx, usage.StreamKey).Val(); after != n {
		t.Fatalf("a move with nothing new appended %d records", after-n)
	}

	mustAppend(t, a, itemsOf("app_a", newEvent(orderCreated, "/s", "6"), newEvent(orderCreated, "/s", "2")))
	if err := m.Move(ctx); err != nil {
		t.Fatal(err)
	}
	want["app_a "+orderCreated] = 3
	sameCounts(t, published(t, rdb), want)

	if _, err := a.Append(ctx, itemsOf("app|x", newEvent(orderCreated, "/s", "7"))); err == nil {
		t.Fatal("an account with | was appended")
	}
}

// Several routers move concurrently while events are appended: every event
// is counted once, whoever moves it.
func TestMeterConcurrentMovers(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})
	var appended atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			m := appender.NewMeter(rdb, appender.MeterOptions{})
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := m.Move(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for b := range 50 {
		items := itemsOf("app_a", newEvent(orderCreated, "/s", fmt.Sprintf("a%d", b)), newEvent(orderPaid, "/s", fmt.Sprintf("b%d", b)))
		items = append(items, itemsOf("app_b", newEvent(orderCreated, "/s", fmt.Sprintf("c%d", b)))...)
		mustAppend(t, a, items)
		appended.Add(3)
	}
	close(stop)
	wg.Wait()
	if err := appender.NewMeter(rdb, appender.MeterOptions{}).Move(ctx); err != nil {
		t.Fatal(err)
	}
	sameCounts(t, published(t, rdb), map[string]int64{"app_a " + orderCreated: 50, "app_a " + orderPaid: 50, "app_b " + orderCreated: 50})
}

// Counts of hours long over are removed once moved, on both sides, and
// the totals do not change.
func TestMeterForgetsPastHours(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})
	mustAppend(t, a, itemsOf("app_a", newEvent(orderCreated, "/s", "1"), newEvent(orderCreated, "/s", "2")))
	later := func() time.Time { return time.Now().Add(3 * time.Hour) }
	m := appender.NewMeter(rdb, appender.MeterOptions{Now: later})
	if err := m.Move(ctx); err != nil {
		t.Fatal(err)
	}
	sameCounts(t, published(t, rdb), map[string]int64{"app_a " + orderCreated: 2})
	if n := rdb.HLen(ctx, appender.CountKey(orderCreated)).Val(); n != 0 {
		t.Errorf("%d counts left after their hour was moved and over", n)
	}
	if n := rdb.HLen(ctx, appender.MovedKey).Val(); n != 0 {
		t.Errorf("%d moved counts left", n)
	}
	// A moved count left behind by a router that died between the two
	// removals goes too.
	rdb.HSet(ctx, appender.MovedKey, orderCreated+"|1|app_a", "7")
	if err := m.Move(ctx); err != nil {
		t.Fatal(err)
	}
	if n := rdb.HLen(ctx, appender.MovedKey).Val(); n != 0 {
		t.Errorf("an orphaned moved count was kept")
	}
	sameCounts(t, published(t, rdb), map[string]int64{"app_a " + orderCreated: 2})
}

// A router's Run moves on its own, and once more when it stops.
func TestMeterRun(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := appender.New(rdb, appender.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- appender.NewMeter(rdb, appender.MeterOptions{Interval: 20 * time.Millisecond}).Run(ctx)
	}()
	mustAppend(t, a, itemsOf("app_a", newEvent(orderCreated, "/s", "1")))
	testutil.Eventually(t, 10*time.Second, func() bool { return published(t, rdb)["app_a "+orderCreated] == 1 }, "the meter moves the count")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Published counts are per minute, so analytics by the minute see a
// publish in its own minute; a count an older router kept per hour is
// still moved, timed at its hour.
func TestMeterMovesMinuteAndLegacyHourCounts(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	ctx := context.Background()
	a := appender.New(rdb, appender.Options{})
	before := time.Now().Truncate(time.Minute)
	mustAppend(t, a, itemsOf("acct", newEvent(orderPaid, "//shop", "m1"), newEvent(orderPaid, "//shop", "m2")))
	hour := time.Now().Add(-time.Hour).Truncate(time.Hour)
	if err := rdb.HSet(ctx, appender.CountKey(orderPaid), fmt.Sprintf("%d|old", hour.UnixMilli()/time.Hour.Milliseconds()), 3).Err(); err != nil {
		t.Fatal(err)
	}
	if err := appender.NewMeter(rdb, appender.MeterOptions{}).Move(ctx); err != nil {
		t.Fatal(err)
	}
	msgs, err := rdb.XRange(ctx, usage.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]time.Time{}
	for _, m := range msgs {
		recs, err := usage.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			got[fmt.Sprintf("%s %d", r.GetApplicationId(), r.GetQuantity())] = r.GetTime().AsTime()
		}
	}
	if at, ok := got["acct 2"]; !ok || at.Before(before) || !at.Equal(at.Truncate(time.Minute)) {
		t.Errorf("the minute's count: %v (records %v), want 2 at the minute of the publish (%v)", at, got, before)
	}
	if at, ok := got["old 3"]; !ok || !at.Equal(hour) {
		t.Errorf("the legacy hour's count: %v (records %v), want 3 at %v", at, got, hour)
	}
}
