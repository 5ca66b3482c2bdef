package hub_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/testutil"
)

// clusterTypes returns one event type per master of c whose stream lives
// on that master.
func clusterTypes(t *testing.T, c *redisserver.Cluster, masters int) []string {
	t.Helper()
	out := make([]string, masters)
	found := 0
	for i := 0; found < masters; i++ {
		if i > 1000 {
			t.Fatalf("no type on every master: %v", out)
		}
		typ := fmt.Sprintf("shard%d.event.x", i)
		m, err := c.MasterOf(context.Background(), eventlog.StreamKey(typ))
		if err != nil {
			t.Fatal(err)
		}
		for j := range masters {
			if c.Nodes[j] == m && out[j] == "" {
				out[j] = typ
				found++
			}
		}
	}
	return out
}

// The hub on a 3-master Redis Cluster, types on every shard: live
// subscribers get every event once, in cursor order; a subscriber resuming
// after any cursor gets exactly the events after it, then the live ones.
func TestHubOnCluster(t *testing.T) {
	c := testutil.RedisCluster(t, 3, 0)
	cc := c.Client()
	t.Cleanup(func() { cc.Close() })
	types := clusterTypes(t, c, 3)
	e := newEnvOn(t, cc, types...)
	all := e.subscribe(t, "all", []string{"*"})
	one := e.subscribe(t, "one", []string{types[1]})

	var pub []published
	for i := range 60 {
		pub = append(pub, e.publish(t, types[i%len(types)]))
	}
	got := all.waitN(t, len(pub), waitLong)
	checkOrder(t, all.name, got)
	// In cursor order (the shards' clocks stamp them; '*' ids of different
	// streams can tie).
	slices.SortStableFunc(pub, func(a, b published) int { return a.Cursor.Compare(b.Cursor) })
	all.expectExactly(t, pub, waitLong)
	one.expectExactly(t, matching(pub, func(typ string) bool { return typ == types[1] }), waitLong)

	for _, i := range []int{0, 17, 30, len(pub) - 1} {
		// A cursor shared by events of two streams counts both as sent.
		if i+1 < len(pub) && pub[i+1].Cursor == pub[i].Cursor {
			continue
		}
		s := e.subscribe(t, fmt.Sprintf("after-%d", i), []string{"*"}, after(pub[i].Cursor))
		s.expectExactly(t, pub[i+1:], waitLong)
		s.stop(t)
	}
	live := []published{e.publish(t, types[2]), e.publish(t, types[0])}
	all.expectExactly(t, append(slices.Clone(pub), live...), waitLong)
}

// One master's clock is 3s behind the others'. The hub starts at the lowest
// master clock, so a live subscriber that joined at once gets the slow
// shard's events (stamped 3s "earlier"); events published alternately on
// the slow and a normal shard reach it once each, in cursor order, the
// normal shard's held back until the slow clock has passed them; and a
// subscriber resuming after any of those cursors gets exactly the later
// events.
func TestHubUnderClockSkew(t *testing.T) {
	c := testutil.RedisClusterWith(t, redisserver.ClusterOptions{Masters: 3,
		Env: map[int][]string{0: testutil.ClockShift(t, -3*time.Second)}})
	cc := c.Client()
	t.Cleanup(func() { cc.Close() })
	types := clusterTypes(t, c, 3)
	slow, normal := types[0], types[1]
	e := newEnvOn(t, cc, types...)
	all := e.subscribe(t, "all", []string{"*"})

	var pub []published
	for i := range 20 {
		typ := slow
		if i%2 == 1 {
			typ = normal
		}
		pub = append(pub, e.publish(t, typ))
	}
	if !pub[2].Cursor.Less(pub[1].Cursor) {
		t.Fatalf("no skew: %v (normal) is not above the later %v (slow)", pub[1].Cursor, pub[2].Cursor)
	}
	all.expectExactly(t, pub, waitLong)
	got := all.snapshot()
	for i, r := range got {
		s := e.subscribe(t, fmt.Sprintf("after-%d", i), []string{"*"}, after(r.Cursor))
		var want []published
		for _, p := range pub {
			if r.Cursor.Less(p.Cursor) {
				want = append(want, p)
			}
		}
		s.expectExactly(t, want, waitLong)
		s.stop(t)
	}
}
