package quota_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
)

const (
	published = meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED
	delivered = meteringv1.UsageMetric_USAGE_METRIC_DELIVERED
)

// block writes the blocked set as metering's enforcer does, and announces it.
func block(t *testing.T, rdb *redis.Client, fields map[string]time.Time) {
	t.Helper()
	ctx := context.Background()
	vals := map[string]string{}
	for f, at := range fields {
		vals[f] = strconv.FormatInt(at.UnixMilli(), 10)
	}
	pipe := rdb.TxPipeline()
	pipe.Del(ctx, quota.BlockedKey)
	if len(vals) > 0 {
		pipe.HSet(ctx, quota.BlockedKey, vals)
	}
	v := pipe.Incr(ctx, quota.VersionKey)
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Publish(ctx, quota.Channel, v.Val()).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestCacheFollowsTheBlockedSet(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := testutil.RedisClient(t, srv)
	// A refresh far longer than the test: only the notices refresh it.
	c := quota.NewCache(rdb, quota.Options{Refresh: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		select { // Run's goroutine ends with its context
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	}()
	testutil.Eventually(t, 10*time.Second, c.Ready, "the cache loads")
	if _, blocked := c.Blocked(published, "acme", "app_1"); blocked {
		t.Fatal("blocked with an empty set")
	}

	tomorrow := time.Now().Add(20 * time.Hour)
	changed := c.Changed()
	block(t, rdb, map[string]time.Time{
		quota.Field(published, quota.ScopeApplication, "app_1"): tomorrow,
		quota.Field(delivered, quota.ScopeTenant, "acme"):       tomorrow.Add(time.Hour),
	})
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the change notice did not reach the cache")
	}
	wait, blocked := c.Blocked(published, "globex", "app_1")
	if !blocked || wait < 19*time.Hour || wait > 20*time.Hour {
		t.Fatalf("app_1 published: %v %v", wait, blocked)
	}
	if _, blocked := c.Blocked(published, "acme", "app_2"); blocked {
		t.Fatal("a delivered quota of acme blocks acme's publishes")
	}
	if wait, blocked := c.Blocked(delivered, "acme", "app_2"); !blocked || wait < 20*time.Hour {
		t.Fatalf("acme delivered: %v %v", wait, blocked)
	}
	if _, blocked := c.Blocked(delivered, "", "app_1"); blocked {
		t.Fatal("a published quota blocks deliveries")
	}
	if _, blocked := c.Blocked(published, "", ""); blocked {
		t.Fatal("the operator (no application, no tenant) is blocked")
	}

	// A period that ends unblocks at once, whatever the enforcer does.
	changed = c.Changed()
	block(t, rdb, map[string]time.Time{quota.Field(published, quota.ScopeApplication, "app_1"): time.Now().Add(300 * time.Millisecond)})
	<-changed
	if _, blocked := c.Blocked(published, "", "app_1"); !blocked {
		t.Fatal("not blocked before the reset")
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, blocked := c.Blocked(published, "", "app_1")
		return !blocked
	}, "still blocked after the period reset")

	// Lifted.
	changed = c.Changed()
	block(t, rdb, nil)
	<-changed
	if _, blocked := c.Blocked(delivered, "acme", ""); blocked {
		t.Fatal("blocked after the set was emptied")
	}
}

func TestNilCacheBlocksNothing(t *testing.T) {
	var c *quota.Cache
	if _, blocked := c.Blocked(published, "acme", "app_1"); blocked || !c.Ready() || c.Changed() != nil {
		t.Fatal("a nil cache blocks")
	}
}

func TestFieldRoundTrip(t *testing.T) {
	for _, f := range []string{quota.Field(published, quota.ScopeApplication, "app|1"), quota.Field(delivered, quota.ScopeTenant, "a b")} {
		m, scope, subject, ok := quota.ParseField(f)
		if !ok || quota.Field(m, scope, subject) != f {
			t.Fatalf("%q: %v %q %q %v", f, m, scope, subject, ok)
		}
	}
	for _, bad := range []string{"", "1", "1|x|app", "x|a|app"} {
		if _, _, _, ok := quota.ParseField(bad); ok {
			t.Fatalf("%q parsed", bad)
		}
	}
	if got := quota.RetryAfter(1500 * time.Millisecond); got != "2" {
		t.Fatalf("RetryAfter(1.5s) = %s", got)
	}
}
