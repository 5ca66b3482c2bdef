package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/redis/go-redis/v9"
)

// foldAll appends recs in entries of per records and folds them as one
// consumer, returning what the fold counted.
func foldAll(t *testing.T, st *Store, per int, recs ...*meteringv1.UsageRecord) FoldResult {
	t.Helper()
	ctx := context.Background()
	if err := usage.AppendBatch(ctx, st.Redis(), per, recs...); err != nil {
		t.Fatal(err)
	}
	res, err := st.Fold(ctx, readAll(t, st, "c"))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// mix makes n delivered records over a few cells and two minutes, ids
// prefix0 ... prefix<n-1>.
func mix(prefix string, n int, at time.Time) []*meteringv1.UsageRecord {
	var out []*meteringv1.UsageRecord
	for i := range n {
		r := delivery(fmt.Sprintf("%s%d", prefix, i), at.Add(time.Duration(i%2)*time.Minute), int64(i%7)*20)
		r.ApplicationId = fmt.Sprintf("app_%d", i%5)
		r.Channel = []string{"sse", "webhook", "poll"}[i%3]
		r.Bytes = int64(100 + i)
		out = append(out, r)
	}
	return out
}

// TestRollupIsIdempotentAndChangesNoRead: reads answer the same before,
// during (a rollup cut off after some chunks, as by a crash) and after the
// rollup; rolling up again, or from two processes at once, moves nothing
// twice; records folded after a rollup (late records of a rolled-up
// minute) are rolled up on the next pass.
func TestRollupIsIdempotentAndChangesNoRead(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := New(rdb)
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	// Hashes as large ones are (a small one's HSCAN returns it whole).
	if err := rdb.ConfigSet(ctx, "hash-max-listpack-entries", "0").Err(); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 10, 22, 14, 10, 0, time.UTC) // two minutes in two quarter-hours
	if res := foldAll(t, st, 50, mix("r", 300, at)...); res.Counted != 300 {
		t.Fatalf("fold = %+v", res)
	}
	want := readBack(t, st, at)

	// A crash between the fold and the rollup, or in the middle of the
	// rollup: nothing rolled up, then a few chunks only.
	if err := rdb.ScriptFlush(ctx).Err(); err != nil { // as after a Redis restart
		t.Fatal(err)
	}
	cursor, partial := "0", 0
	for range 3 {
		next, n, err := st.rollupOnce(ctx, at.Format(minuteLayout), cursor, 7)
		if err != nil || next == "0" {
			t.Fatalf("rollup step = %s %d, %v; want a part of the minute", next, n, err)
		}
		cursor, partial = next, partial+n
	}
	if partial == 0 {
		t.Fatal("the partial rollup moved nothing")
	}
	if got := readBack(t, st, at); got != want {
		t.Fatalf("reads after a partial rollup:\n%s\nwant:\n%s", got, want)
	}

	// Two processes roll up at once.
	var wg sync.WaitGroup
	moved := make([]int, 4)
	for i := range moved {
		wg.Go(func() {
			n, err := New(rdb).Rollup(ctx, at.Add(time.Hour), 5, 0)
			if err != nil {
				t.Error(err)
			}
			moved[i] = n
		})
	}
	wg.Wait()
	if got := readBack(t, st, at); got != want {
		t.Fatalf("reads after concurrent rollups:\n%s\nwant:\n%s", got, want)
	}
	if n := rdb.Exists(ctx, "herald:{usage}:p:"+at.Format(minuteLayout), "herald:{usage}:pm").Val(); n != 0 {
		t.Fatalf("%d pending keys left after the rollup", n)
	}
	if n, err := st.Rollup(ctx, at.Add(time.Hour), 0, 0); err != nil || n != 0 {
		t.Fatalf("rollup again = %d, %v; want nothing moved", n, err)
	}
	if got := readBack(t, st, at); got != want {
		t.Fatalf("reads after a repeated rollup:\n%s\nwant:\n%s", got, want)
	}

	// Late records of the rolled-up minutes, and copies of counted ones.
	late := mix("late", 40, at)
	if res := foldAll(t, st, 50, append(late, mix("r", 10, at)...)...); res.Counted != 40 || res.Duplicates != 10 {
		t.Fatalf("late fold = %+v", res)
	}
	// The same 340 records folded into a fresh Redis answer the same.
	ref := New(testutil.RedisClient(t, testutil.Redis(t)))
	if err := ref.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	foldAll(t, ref, 50, append(mix("r", 300, at), late...)...)
	want = readBack(t, ref, at)
	if got := readBack(t, st, at); got != want {
		t.Fatalf("reads with late records pending:\n%s\nwant:\n%s", got, want)
	}
	if _, err := st.Rollup(ctx, at.Add(time.Hour), 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, st, at); got != want {
		t.Fatalf("reads with late records rolled up:\n%s\nwant:\n%s", got, want)
	}
	// Only closed minutes: before the second minute, the first alone.
	foldAll(t, st, 50, mix("x", 4, at)...)
	if _, err := st.Rollup(ctx, at.Add(time.Minute), 0, 0); err != nil {
		t.Fatal(err)
	}
	if ms, err := st.PendingMinutes(ctx); err != nil || len(ms) != 1 || !ms[0].Equal(at.Add(time.Minute).Truncate(time.Minute)) {
		t.Fatalf("pending minutes = %v, %v; want the second one", ms, err)
	}
}

// TestReadsDuringRollupCountOnce reads the hour while rollups run
// concurrently: every read answers the total, never a record in neither or
// both of the pending hash and the bucket.
func TestReadsDuringRollupCountOnce(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	st := New(rdb)
	if err := st.EnsureGroup(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(ctx, "hash-max-listpack-entries", "0").Err(); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 10, 22, 14, 10, 0, time.UTC)
	foldAll(t, st, 100, mix("r", 600, at)...)
	total := func() (events int64) {
		bs, err := st.Buckets(ctx, Hour, []time.Time{at})
		if err != nil {
			t.Error(err)
			return -1
		}
		for _, s := range bs[0].Cells {
			events += s.Events
		}
		return events
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := New(rdb).Rollup(ctx, at.Add(time.Hour), 2, 0); err != nil {
			t.Error(err)
		}
	}()
	reads := 0
	for running := true; running; reads++ {
		select {
		case <-done:
			running = false
		default:
		}
		if n := total(); n != 600 {
			t.Fatalf("read %d during the rollup: %d events, want 600", reads, n)
		}
	}
}

// TestSeenSetsAndPreviousLayout: a copy of a record is a duplicate
// whichever day within the TTL of the last copy it was folded on; past the
// TTL it counts again. On a Redis the per-record seen keys of the previous layout were
// written to (its day buckets exist when the sets are first used), those
// keys are honoured too.
func TestSeenSetsAndPreviousLayout(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 3, 10, 22, 14, 10, 0, time.UTC) // the records' time
	// The fold's clock: from today (Redis expires the seen sets on its own
	// clock).
	day0 := time.Now().UTC().Truncate(24 * time.Hour).Add(22 * time.Hour)
	clock := day0
	newStore := func() (*Store, *redis.Client) {
		rdb := testutil.RedisClient(t, testutil.Redis(t))
		st := New(rdb)
		st.SeenTTL = 3 * 24 * time.Hour
		st.Now = func() time.Time { return clock }
		if err := st.EnsureGroup(ctx); err != nil {
			t.Fatal(err)
		}
		return st, rdb
	}

	st, rdb := newStore()
	if res := foldAll(t, st, 10, mix("r", 20, at)...); res.Counted != 20 {
		t.Fatalf("fold = %+v", res)
	}
	clock = day0.Add(3*24*time.Hour - time.Minute)
	if res := foldAll(t, st, 10, mix("r", 20, at)...); res.Counted != 0 || res.Duplicates != 20 {
		t.Fatalf("refold within the TTL = %+v, want 20 duplicates", res)
	}
	if n := rdb.Exists(ctx, "herald:{usage}:seen:r1").Val(); n != 0 {
		t.Fatal("a per-record seen key was written")
	}
	// A copy is remembered from when it was last seen: the sets of that
	// day hold the ids too.
	for sh := range usage.SeenShards {
		rdb.Del(ctx, fmt.Sprintf("herald:{usage}:s:%s:%x", day0.Format(dayLayout), sh))
	}
	clock = day0.Add(4 * 24 * time.Hour)
	if res := foldAll(t, st, 10, mix("r", 20, at)...); res.Counted != 0 {
		t.Fatalf("refold within the TTL of the last copy = %+v, want 20 duplicates", res)
	}
	// Past the TTL (every set holding the ids has expired: simulate it).
	for _, d := range []time.Time{day0.Add(3*24*time.Hour - time.Minute), day0.Add(4 * 24 * time.Hour)} {
		for sh := range usage.SeenShards {
			rdb.Del(ctx, fmt.Sprintf("herald:{usage}:s:%s:%x", d.Format(dayLayout), sh))
		}
	}
	clock = day0.Add(8 * 24 * time.Hour)
	if res := foldAll(t, st, 10, mix("r", 20, at)...); res.Counted != 20 {
		t.Fatalf("refold past the TTL = %+v, want 20 counted", res)
	}

	// The previous layout folded here: its day bucket and seen keys exist.
	clock = day0
	st, rdb = newStore()
	rdb.HSet(ctx, "herald:{usage}:d:"+day0.Add(-24*time.Hour).Format(dayLayout), "c||app_a||t.x|sse|2", 1)
	rdb.Set(ctx, "herald:{usage}:seen:r3", "1", time.Hour)
	if res := foldAll(t, st, 10, mix("r", 5, at)...); res.Counted != 4 || res.Duplicates != 1 {
		t.Fatalf("fold with a previous seen key = %+v, want 4 counted, 1 duplicate", res)
	}
	clock = day0.Add(3 * 24 * time.Hour) // the previous keys have all expired
	rdb.Set(ctx, "herald:{usage}:seen:r6", "1", time.Hour)
	if res := foldAll(t, st, 10, mix("r", 7, at)[6]); res.Counted != 1 {
		t.Fatalf("fold after the window = %+v, want the record counted", res)
	}
}
