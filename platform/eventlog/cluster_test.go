package eventlog_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
)

// typesOn returns, for each master of the cluster in order, n event types
// whose streams live on it, each in a slot of its own.
func typesOn(t *testing.T, c *redisserver.Cluster, masters, n int) [][]string {
	t.Helper()
	ctx := context.Background()
	out := make([][]string, masters)
	slots := map[uint16]bool{}
	for i := 0; ; i++ {
		done := true
		for _, ts := range out {
			done = done && len(ts) == n
		}
		if done {
			return out
		}
		if i > 1000 {
			t.Fatalf("no types for every master after %d tries: %v", i, out)
		}
		typ := fmt.Sprintf("shard.t%d", i)
		key := eventlog.StreamKey(typ)
		if slots[redisserver.Slot(key)] {
			continue
		}
		m, err := c.MasterOf(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		for j := range masters {
			if c.Nodes[j] == m && len(out[j]) < n {
				out[j] = append(out[j], typ)
				slots[redisserver.Slot(key)] = true
			}
		}
	}
}

func newCluster(t *testing.T) (*redisserver.Cluster, *redis.ClusterClient) {
	t.Helper()
	c := testutil.RedisCluster(t, 3, 0)
	cc := c.Client()
	t.Cleanup(func() { cc.Close() })
	return c, cc
}

// Streams on three shards (two slots on each) are merged in id order, with
// every count, and a reader resuming after any entry gets exactly the
// entries after it.
func TestReadAfterAcrossShards(t *testing.T) {
	c, cc := newCluster(t)
	on := typesOn(t, c, 3, 2)
	var types, streams []string
	for _, ts := range on {
		for _, typ := range ts {
			types = append(types, typ)
			streams = append(streams, eventlog.StreamKey(typ))
		}
	}
	// Ids far in the past, interleaved across the six streams, each unique.
	want := map[string]eventlog.ID{}
	var order []eventlog.ID
	for k := range 8 {
		for s, typ := range types {
			id := eventlog.ID{Ms: uint64(10 + k*len(types) + (s*5)%len(types)), Seq: uint64(s + 1)}
			evID := fmt.Sprintf("%s-%d", typ, k)
			want[evID] = add(t, cc, typ, id.String(), evID)
			order = append(order, want[evID])
		}
	}
	for _, count := range []int64{1, 2, 3, 100} {
		checkMerged(t, collect(t, cc, streams, count, len(want)), want)
	}
	// Newest: the newest entry of every shard, and a master's clock.
	newest, now, err := eventlog.Newest(context.Background(), cc, streams)
	if err != nil {
		t.Fatal(err)
	}
	var top eventlog.ID
	for _, id := range order {
		if top.Less(id) {
			top = id
		}
	}
	if newest != top {
		t.Fatalf("Newest = %v, want %v", newest, top)
	}
	if d := time.Since(now); d < -time.Minute || d > time.Minute {
		t.Fatalf("Newest's clock %v is %v off this machine's", now, d)
	}
	// Resume after each entry: exactly the later ones, in order.
	for _, cursor := range order {
		later := map[string]eventlog.ID{}
		for evID, id := range want {
			if cursor.Less(id) {
				later[evID] = id
			}
		}
		got := collectAfter(t, cc, streams, cursor, 3, len(later))
		checkMerged(t, got, later)
	}
}

// Writers on three shards at once, ids stamped by each shard's clock
// ('*'): a live reader (Read, then Waiter.WaitPast) gets every entry once,
// in id order, and its position never goes back.
func TestLiveReaderAcrossShards(t *testing.T) {
	c, cc := newCluster(t)
	on := typesOn(t, c, 3, 1)
	var streams []string
	for _, ts := range on {
		streams = append(streams, eventlog.StreamKey(ts[0]))
	}
	ctx := context.Background()
	start, err := eventlog.Watermark(ctx, cc, streams)
	if err != nil {
		t.Fatal(err)
	}
	const perStream = 200
	var wg sync.WaitGroup
	errs := make(chan error, len(on))
	for _, ts := range on {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range perStream {
				fields, _ := eventlog.Encode(event(ts[0], fmt.Sprintf("%s-%d", ts[0], k)), "acct-"+fmt.Sprintf("%s-%d", ts[0], k))
				if err := cc.XAdd(ctx, &redis.XAddArgs{Stream: eventlog.StreamKey(ts[0]), Values: fields}).Err(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	w := eventlog.NewWaiter(cc)
	pos := start
	seen := map[string]bool{}
	var last eventlog.ID
	deadline := time.Now().Add(60 * time.Second)
	for len(seen) < perStream*len(on) {
		if time.Now().After(deadline) {
			t.Fatalf("live reader got %d of %d entries", len(seen), perStream*len(on))
		}
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		b, err := eventlog.Read(ctx, cc, streams, pos, 16)
		if err != nil {
			t.Fatal(err)
		}
		if b.Complete.Less(pos) {
			t.Fatalf("position went back from %v to %v", pos, b.Complete)
		}
		for _, e := range b.Entries {
			if seen[e.Event.GetId()] {
				t.Fatalf("entry %s (%v) released twice", e.Event.GetId(), e.ID)
			}
			seen[e.Event.GetId()] = true
			if e.ID.Less(last) {
				t.Fatalf("entry %v released after %v", e.ID, last)
			}
			last = e.ID
		}
		pos = b.Complete
		if len(b.Entries) == 0 {
			if _, err := w.WaitPast(ctx, b, time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
}

// WaitAfter on streams of three shards wakes up on a write to any of them.
func TestWaitAfterAcrossShards(t *testing.T) {
	c, cc := newCluster(t)
	on := typesOn(t, c, 3, 1)
	var streams []string
	for _, ts := range on {
		streams = append(streams, eventlog.StreamKey(ts[0]))
	}
	ctx := context.Background()
	blocking := eventlog.NewWaiter(cc)
	if more, err := blocking.WaitAfter(ctx, streams, eventlog.Zero, 10*time.Millisecond); more || err != nil {
		t.Fatalf("empty streams: %v %v", more, err)
	}
	// One that blocks on one slot only, and polls the others.
	polling := eventlog.NewWaiter(cc)
	eventlog.SetMaxBlocked(polling, 1)
	var after eventlog.ID
	for i, ts := range append(slices.Clone(on), on...) {
		w := blocking
		if i >= len(on) {
			w = polling
		}
		done := make(chan error, 1)
		from := after
		go func() {
			more, err := w.WaitAfter(ctx, streams, from, 30*time.Second)
			if err == nil && !more {
				err = fmt.Errorf("woke up without an entry")
			}
			done <- err
		}()
		// Write until the waiter sees one: it may not be blocked yet.
		deadline := time.After(30 * time.Second)
	wait:
		for k := 0; ; k++ {
			id := add(t, cc, ts[0], "*", fmt.Sprintf("wake-%d-%d", i, k))
			if after.Less(id) {
				after = id
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				break wait
			case <-time.After(100 * time.Millisecond):
			case <-deadline:
				t.Fatalf("WaitAfter did not wake up on a write to shard %d", i)
			}
		}
		// Later waits on the other shards start after the newest write.
		now, err := eventlog.Watermark(ctx, cc, streams)
		if err != nil {
			t.Fatal(err)
		}
		if after.Less(now) {
			after = now
		}
	}
}
