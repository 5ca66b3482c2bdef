package appender_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/router/internal/appender"
)

// nodeClock is a node's clock, asked with redis-cli TIME.
func nodeClock(t *testing.T, s *redisserver.Server) time.Time {
	t.Helper()
	_, port, _ := strings.Cut(s.Addr(), ":")
	out, err := exec.Command("redis-cli", "-p", port, "TIME").Output()
	if err != nil {
		t.Fatalf("redis-cli TIME on %s: %v", s.Addr(), err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		t.Fatalf("redis-cli TIME on %s: %q", s.Addr(), out)
	}
	sec, err1 := strconv.ParseInt(f[0], 10, 64)
	usec, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("redis-cli TIME on %s: %q", s.Addr(), out)
	}
	return time.Unix(sec, usec*1000)
}

// typeOn returns an event type whose stream's master is node.
func typeOn(t *testing.T, c *redisserver.Cluster, node *redisserver.Server, prefix string) string {
	t.Helper()
	for i := range 1000 {
		typ := fmt.Sprintf("%s.t%d", prefix, i)
		m, err := c.MasterOf(context.Background(), eventlog.StreamKey(typ))
		if err != nil {
			t.Fatal(err)
		}
		if m == node {
			return typ
		}
	}
	t.Fatalf("no type on %s", node.Addr())
	return ""
}

// One master's clock is 3s behind the others'. Events appended alternately
// to a stream on that shard and one on a normal shard get ids out of their
// publication order (a normal-shard event gets a higher id than the
// slow-shard event published after it). A live reader must then hold the
// normal shard's events back until the slow master's clock has passed them:
// it never releases an id below one it already released, so every cursor
// it hands out stays true; and a reader resuming after any cursor gets
// exactly the events after it, no gap and no repeat.
func TestCursorUnderClockSkew(t *testing.T) {
	const skew = 3 * time.Second
	c := testutil.RedisClusterWith(t, redisserver.ClusterOptions{Masters: 3,
		Env: map[int][]string{0: testutil.ClockShift(t, -skew)}})
	slow, normal := c.Nodes[0], c.Nodes[1]
	if d := nodeClock(t, normal).Sub(nodeClock(t, slow)); d < skew-500*time.Millisecond || d > skew+500*time.Millisecond {
		t.Fatalf("node %s's clock is %v behind node %s's, want about %v", slow.Addr(), d, normal.Addr(), skew)
	}
	cc := c.Client()
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	slowType, normalType := typeOn(t, c, slow, "skew.slow"), typeOn(t, c, normal, "skew.normal")
	streams := []string{eventlog.StreamKey(slowType), eventlog.StreamKey(normalType)}

	start, err := eventlog.Watermark(ctx, cc, streams)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	type released struct {
		ids      []eventlog.ID
		complete []eventlog.ID
		err      error
	}
	live := make(chan released, 1)
	newest := make(chan eventlog.ID, 1) // the highest cursor, once all are appended
	go func() {
		var r released
		defer func() { live <- r }()
		w := eventlog.NewWaiter(cc)
		pos := start
		var end *eventlog.ID
		// Until every event is released, or the position passed them all
		// (a reader that skipped some stops there).
		for len(r.ids) < n && (end == nil || pos.Less(*end)) {
			if end == nil {
				select {
				case id := <-newest:
					end = &id
				default:
				}
			}
			b, err := eventlog.Read(ctx, cc, streams, pos, 4)
			if err != nil {
				r.err = err
				return
			}
			r.ids = append(r.ids, idsOf(b.Entries)...)
			r.complete = append(r.complete, b.Complete)
			pos = b.Complete
			if len(b.Entries) == 0 {
				if _, err := w.WaitPast(ctx, b, time.Second); err != nil {
					r.err = err
					return
				}
			}
		}
	}()

	a := appender.New(cc, appender.Options{})
	var cursors []eventlog.ID // in publication order
	for k := range n {
		typ := slowType
		if k%2 == 1 {
			typ = normalType
		}
		res := mustAppend(t, a, itemsOf("acct", newEvent(typ, "skew", fmt.Sprint(k))))
		cursors = append(cursors, eventlog.MustParseID(res[0].Cursor))
		time.Sleep(10 * time.Millisecond)
	}
	high := cursors[0]
	for _, id := range cursors {
		if high.Less(id) {
			high = id
		}
	}
	newest <- high
	// The skew shows: an event on the normal shard is above the slow-shard
	// event published after it.
	if !cursors[2].Less(cursors[1]) {
		t.Fatalf("cursors %v: the normal shard's %v is not above the later slow-shard %v; no skew to test", cursors, cursors[1], cursors[2])
	}

	r := <-live
	if r.err != nil {
		t.Fatal(r.err)
	}
	for i := 1; i < len(r.ids); i++ {
		if !r.ids[i-1].Less(r.ids[i]) {
			t.Fatalf("live reader released %v after %v", r.ids[i], r.ids[i-1])
		}
	}
	for i := 1; i < len(r.complete); i++ {
		if r.complete[i].Less(r.complete[i-1]) {
			t.Fatalf("live reader's position went back from %v to %v", r.complete[i-1], r.complete[i])
		}
	}
	if len(r.ids) != n {
		t.Fatalf("live reader released %d events, want %d: %v", len(r.ids), n, r.ids)
	}

	// Resume after each cursor in turn: exactly the events after it.
	for i, cursor := range cursors {
		var want []eventlog.ID
		for _, id := range cursors {
			if cursor.Less(id) {
				want = append(want, id)
			}
		}
		var got []eventlog.ID
		pos := cursor
		for tries := 0; len(got) < len(want); tries++ {
			if tries > 10_000 {
				t.Fatalf("resume after %v (event %d): %d of %d events", cursor, i, len(got), len(want))
			}
			b, err := eventlog.Read(ctx, cc, streams, pos, 3)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, idsOf(b.Entries)...)
			pos = b.Complete
			if len(b.Entries) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		sortIDs(want)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("resume after %v (event %d): got %v, want %v", cursor, i, got, want)
		}
	}
}

func idsOf(es []eventlog.Entry) []eventlog.ID {
	out := make([]eventlog.ID, len(es))
	for i, e := range es {
		out[i] = e.ID
	}
	return out
}

func sortIDs(ids []eventlog.ID) {
	for i := 1; i < len(ids); i++ {
		for j := i; j > 0 && ids[j].Less(ids[j-1]); j-- {
			ids[j], ids[j-1] = ids[j-1], ids[j]
		}
	}
}
