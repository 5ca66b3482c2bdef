package store

import (
	"context"
	"testing"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/metering/internal/report"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func FuzzField(f *testing.F) {
	f.Add("app_1", "shop.order.created", int32(1), "sse")
	f.Add("a|b", "%7C", int32(-3), "|%|")
	f.Fuzz(func(t *testing.T, app, typ string, metric int32, channel string) {
		k := report.Key{ApplicationID: app, EventType: typ, Metric: meteringv1.UsageMetric(metric), Channel: channel}
		got, ok := ParseField(Field(k))
		if !ok || got != k {
			t.Fatalf("ParseField(Field(%+v)) = %+v, %v", k, got, ok)
		}
	})
}

func FuzzParseField(f *testing.F) {
	f.Add("app_1|shop.order.created|1|sse")
	f.Add("|||")
	f.Fuzz(func(t *testing.T, s string) {
		if k, ok := ParseField(s); ok {
			if _, ok := ParseField(Field(k)); !ok {
				t.Fatalf("Field of a parsed key does not parse: %q", s)
			}
		}
	})
}

// readAll reads every new entry as consumer, as the fold loop would.
func readAll(t *testing.T, st *Store, consumer string) []redis.XMessage {
	t.Helper()
	msgs, err := st.Read(context.Background(), consumer, ">", 1000, -1)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func TestFoldCountsOnceAndTrims(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := New(rdb)
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatalf("second EnsureGroup: %v", err)
	}
	when := time.Date(2026, 3, 10, 22, 15, 0, 0, time.UTC)
	rec := &meteringv1.UsageRecord{Id: "u_1", ApplicationId: "app_a", EventType: "shop.order.created",
		Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, Channel: "grpc", Quantity: 3, Time: timestamppb.New(when)}
	if err := usage.Append(ctx, rdb, rec, rec); err != nil {
		t.Fatal(err)
	}
	// Not a record at all, and a record with a bad quantity.
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: usage.StreamKey, Values: []any{usage.FieldRecord, "\xff\xff not protobuf"}})
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: usage.StreamKey, Values: []any{"other", "x"}})
	if err := usage.Append(ctx, rdb, &meteringv1.UsageRecord{Id: "u_2", ApplicationId: "app_a", Quantity: -1}); err != nil {
		t.Fatal(err)
	}

	msgs := readAll(t, st, "c1")
	if len(msgs) != 5 {
		t.Fatalf("read %d entries, want 5", len(msgs))
	}
	// The script cache may be empty (as after a Redis restart): Fold reloads.
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := st.Fold(ctx, msgs)
	if err != nil {
		t.Fatal(err)
	}
	if res.Counted != 1 || res.Duplicates != 1 || len(res.Skipped) != 3 {
		t.Fatalf("result = %+v, want 1 counted, 1 duplicate, 3 skipped", res)
	}
	// Folding the same entries again (a retry after a lost reply) changes nothing.
	if res, err = st.Fold(ctx, msgs); err != nil || res.Counted != 0 {
		t.Fatalf("refold = %+v, %v; want nothing counted", res, err)
	}

	if n := rdb.XLen(ctx, usage.StreamKey).Val(); n != 0 {
		t.Errorf("stream holds %d entries after the fold, want 0", n)
	}
	if p := rdb.XPending(ctx, usage.StreamKey, Group).Val(); p.Count != 0 {
		t.Errorf("%d entries still pending", p.Count)
	}
	if !rdb.SIsMember(ctx, usage.SeenSetKey(time.Now(), "u_1"), "u_1").Val() {
		t.Errorf("u_1 not in today's seen set")
	}
	if _, err := st.Rollup(ctx, when.Add(time.Hour), 0, 0); err != nil {
		t.Fatal(err)
	}
	k := report.Key{ApplicationID: "app_a", EventType: "shop.order.created", Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, Channel: "grpc"}
	if got := rdb.HGet(ctx, "herald:{usage}:h:2026031022", "c||app_a||shop.order.created|grpc|1").Val(); got != "3" {
		t.Errorf("hour field = %q, want 3", got)
	}

	hours, err := st.Hours(ctx, []time.Time{when.Truncate(time.Hour), when.Truncate(time.Hour).Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if len(hours) != 2 || hours[0].Counts[k] != 3 || len(hours[0].Counts) != 1 || len(hours[1].Counts) != 0 {
		t.Fatalf("hours = %+v", hours)
	}
}

func TestFoldWithoutTimeOrID(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := New(rdb)
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	before := time.Now().UTC().Truncate(time.Hour)
	if err := usage.Append(ctx, rdb, &meteringv1.UsageRecord{ApplicationId: "app_a", Quantity: 2}); err != nil {
		t.Fatal(err)
	}
	msgs := readAll(t, st, "c1")
	if res, err := st.Fold(ctx, msgs); err != nil || res.Counted != 1 {
		t.Fatalf("fold = %+v, %v", res, err)
	}
	if res, err := st.Fold(ctx, msgs); err != nil || res.Duplicates != 1 {
		t.Fatalf("refold = %+v, %v; want a duplicate", res, err)
	}
	starts := []time.Time{before}
	if after := time.Now().UTC().Truncate(time.Hour); !after.Equal(before) {
		starts = append(starts, after) // the append crossed an hour
	}
	hours, err := st.Hours(ctx, starts)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, h := range hours {
		sum += h.Counts[report.Key{ApplicationID: "app_a"}]
	}
	if sum != 2 {
		t.Fatalf("counted %d in the append hour, want 2", sum)
	}
}

func TestDeleteConsumerKeepsPending(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := New(rdb)
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := usage.Append(ctx, rdb, &meteringv1.UsageRecord{Id: "u_1", ApplicationId: "app_a", Quantity: 1}); err != nil {
		t.Fatal(err)
	}
	readAll(t, st, "busy")
	readAll(t, st, "idle")
	for _, name := range []string{"busy", "idle"} {
		if err := st.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := st.Consumers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].Name != "busy" || cs[0].Pending != 1 {
		t.Fatalf("consumers = %+v, want only busy with 1 pending", cs)
	}
}
