package usage

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
)

const delivered = meteringv1.UsageMetric_USAGE_METRIC_DELIVERED

func TestDeliveryIDIsStableAndDistinct(t *testing.T) {
	parts := []string{"acme", "app_c", "sub_1", "/shop", "e1", "webhook"}
	id := DeliveryID(parts[0], parts[1], parts[2], parts[3], parts[4], parts[5])
	// A golden value: ids must not change between versions, or a record
	// appended before an upgrade and again after it would count twice.
	if id != "d_DYuM_VnlgAF0QL8wh8hXEzCe" {
		t.Errorf("DeliveryID = %q; the derivation changed", id)
	}
	seen := map[string]int{id: -1}
	for i := range parts {
		p := append([]string(nil), parts...)
		p[i] += "x"
		other := DeliveryID(p[0], p[1], p[2], p[3], p[4], p[5])
		if j, dup := seen[other]; dup {
			t.Errorf("changing part %d gives the id of %d", i, j)
		}
		seen[other] = i
	}
	// Moving a boundary between parts changes the id.
	if DeliveryID("ab", "c", "", "", "", "") == DeliveryID("a", "bc", "", "", "", "") {
		t.Error("parts are not delimited")
	}
	d := Delivery{Tenant: "acme", Application: "app_c", Subscription: "sub_1", EventSource: "/shop", EventID: "e1", Channel: "webhook", Attempt: 3}
	recs := d.Records(meteringv1.UsageMetric_USAGE_METRIC_FAILED, time.Now())
	if len(recs) != 2 || recs[0].Id != id+".3.3" || recs[1].Id != id+".5.3" || recs[1].Metric != meteringv1.UsageMetric_USAGE_METRIC_RETRIED {
		t.Errorf("failed third attempt: %v", recs)
	}
	if r := d.Record(delivered, time.Now()); r.Id != id || r.Attempt != 3 {
		t.Errorf("delivered: %v", r)
	}
}

func TestEventDelivery(t *testing.T) {
	ev := &eventv1.CloudEvent{Id: "e1", Source: "/s", Type: "a.b", Data: &eventv1.CloudEvent_TextData{TextData: "12345"}}
	d := EventDelivery(ev, "1700000000123-4", "app_p")
	if d.EventID != "e1" || d.EventSource != "/s" || d.EventType != "a.b" || d.Bytes != 5 || d.Producer != "app_p" ||
		!d.Published.Equal(time.UnixMilli(1700000000123)) {
		t.Fatalf("delivery = %+v", d)
	}
	r := d.Record(delivered, time.UnixMilli(1700000000623))
	if r.LatencyMs != 500 || r.Bytes != 5 || r.ProducerApplicationId != "app_p" {
		t.Fatalf("record = %v", r)
	}
}

func stored(t *testing.T, rdb redis.Cmdable) (entries int, ids []string) {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		recs, err := Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			ids = append(ids, r.Id)
		}
	}
	return len(msgs), ids
}

func rec(i int) *meteringv1.UsageRecord {
	return &meteringv1.UsageRecord{Id: fmt.Sprint("r", i), Metric: delivered, Quantity: 1}
}

func TestAppenderBatchesInOrder(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := NewAppender(rdb, AppenderOptions{BatchSize: 10, FlushEvery: time.Hour})
	ctx := context.Background()
	for i := range 25 {
		if err := a.Add(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	entries, ids := stored(t, rdb)
	if entries != 3 || len(ids) != 25 || ids[0] != "r0" || ids[24] != "r24" {
		t.Fatalf("%d entries, ids %v", entries, ids)
	}
	if a.Pending() != 0 {
		t.Fatalf("%d pending", a.Pending())
	}
}

// TestAppenderFlushesAFullBatchAtOnce: Run does not wait for the interval
// when a batch is full.
func TestAppenderFlushesAFullBatchAtOnce(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	a := NewAppender(rdb, AppenderOptions{BatchSize: 5, FlushEvery: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	for i := range 5 {
		_ = a.Add(ctx, rec(i))
	}
	testutil.Eventually(t, 5*time.Second, func() bool { _, ids := stored(t, rdb); return len(ids) == 5 }, "a full batch flushed")
	_ = a.Add(ctx, rec(5))
	cancel()
	<-done // Run flushes what is left when it stops
	if _, ids := stored(t, rdb); len(ids) != 6 {
		t.Fatalf("after Run: %v", ids)
	}
}

// TestAppenderKeepsRecordsWhileRedisIsDown: a failed flush keeps its
// records; they are appended once Redis is back. Memory is bounded: Add
// waits for room, and gives up with its context.
func TestAppenderKeepsRecordsWhileRedisIsDown(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), DialTimeout: 200 * time.Millisecond, ReadTimeout: time.Second, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	a := NewAppender(rdb, AppenderOptions{BatchSize: 4, MaxPending: 8, FlushEvery: 20 * time.Millisecond})
	ctx := context.Background()
	srv.Kill()
	for i := range 8 {
		if err := a.Add(ctx, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Flush(ctx); err == nil {
		t.Fatal("flush with Redis down succeeded")
	}
	if a.Pending() != 8 {
		t.Fatalf("%d pending after a failed flush, want 8", a.Pending())
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := a.Add(short, rec(99)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Add beyond MaxPending = %v, want to wait and give up", err)
	}
	// A caller waiting for room gets in once Redis is back and Run flushes.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- a.Run(runCtx) }()
	added := make(chan error, 1)
	go func() { added <- a.Add(ctx, rec(8)) }()
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return a.Pending() == 0 }, "flushed after Redis came back")
	stop()
	<-done
	_, ids := stored(t, rdb)
	if len(ids) != 9 || ids[0] != "r0" || ids[8] != "r8" {
		t.Fatalf("ids = %v", ids)
	}
}

// A test event's delivery has no usage records: test events are never
// counted, let alone billed.
func TestTestEventsAreNeverCounted(t *testing.T) {
	ev := &eventv1.CloudEvent{Id: "t1", Source: "/herald/test", Type: "billing.invoice.paid"}
	d := EventDelivery(ev, "1700000000000-33554432", "app_1")
	if d.Test || len(d.Records(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, time.Now())) != 1 {
		t.Fatalf("a log delivery has no record: %+v", d)
	}
	d.Test = true
	if len(d.Records(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, time.Now())) != 0 {
		t.Fatalf("a test delivery has records: %+v", d)
	}
}
