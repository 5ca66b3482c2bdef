package subscription

import (
	"log/slog"
	"strconv"
	"testing"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestHashTagOfSubscriptionKeys(t *testing.T) {
	for _, key := range []string{
		eventlog.StreamKey("shop.order.created"), eventlog.PartitionKey("shop.order.created", 3), ReplayKey(testSub),
		"herald:{usage}:log", "plain", "a{}b{c}", "{}", "a{b", "x}{y}",
	} {
		// Keys with the same tag share a slot; a key's tag has its slot.
		if got, want := redisserver.Slot(redisserver.HashTag(key)), redisserver.Slot(key); got != want {
			t.Errorf("redisserver.HashTag(%q) = %q, in slot %d; the key is in slot %d", key, redisserver.HashTag(key), got, want)
		}
	}
	if redisserver.HashTag(eventlog.PartitionKey("a.b", 2)) != "a.b#2" || redisserver.HashTag(ReplayKey("s1")) != "s1" {
		t.Errorf("tags: %q %q", redisserver.HashTag(eventlog.PartitionKey("a.b", 2)), redisserver.HashTag(ReplayKey("s1")))
	}
}

// Streams over the Manager's limit of watches are polled: their events
// still come, with the sweep off.
func TestStreamsOverTheWatchLimitArePolled(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	types := []string{"shop.a.created", "shop.b.created"}
	sub := &registryv1.Subscription{
		Id: "sub_polled", ApplicationId: clusterApp, Types: types,
		Channel:  &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Start:    &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}},
		Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(time.Minute)},
	}
	cat := clusterCatalog(t, &fakeRegistry{types: types, subs: []*registryv1.Subscription{sub}})
	m := NewManager(rdb, cat, slog.New(slog.DiscardHandler), nil)
	m.maxWatches, m.sweep = 1, time.Hour
	got := clusterConsumer(t, m, sub, 10)
	testutil.Eventually(t, 10*time.Second, func() bool { return m.Watched() == 1 }, "one stream watched")
	for i := range 3 {
		for j, typ := range types {
			id := strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + strconv.Itoa(10*i+j+1)
			clusterEvent(t, rdb, typ, id)
			if d := next(t, got, typ); d.GetCursor() != id {
				t.Fatalf("%s: cursor %s, want %s", typ, d.GetCursor(), id)
			}
		}
	}
	if n := m.Watched(); n != 1 {
		t.Fatalf("watched %d streams, over the limit of 1", n)
	}
}

// A Manager watches about as many streams as its pool held blocking reads
// for: the pool size less 16 (per node on a cluster: the total bound is
// conservative), half of a small pool.
func TestMaxWatchesFollowsThePool(t *testing.T) {
	for _, c := range []struct {
		rdb  redis.UniversalClient
		want int
	}{
		{redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", PoolSize: 1016}), 1000},
		{redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}, PoolSize: 116}), 100},
		{redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", PoolSize: 20}), 10},
		{redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", PoolSize: 1}), 1},
	} {
		if got := maxWatchesFor(c.rdb); got != c.want {
			t.Errorf("%T: %d watches, want %d", c.rdb, got, c.want)
		}
		_ = c.rdb.Close()
	}
}
