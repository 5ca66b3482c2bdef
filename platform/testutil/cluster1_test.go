package testutil_test

import (
	"context"
	"strings"
	"testing"

	"github.com/heraldmesh/herald/platform/testutil"
)

func TestRedisRefusesCrossSlot(t *testing.T) {
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	ctx := context.Background()
	if err := rdb.Set(ctx, "a", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	err := rdb.MGet(ctx, "a", "b").Err()
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("MGET across slots: %v, want CROSSSLOT", err)
	}
	err = rdb.Eval(ctx, "return redis.call('GET', KEYS[1])", []string{"a", "b"}).Err()
	if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("a script with keys in two slots: %v, want CROSSSLOT", err)
	}
	pipe := rdb.TxPipeline()
	pipe.Get(ctx, "a")
	pipe.Get(ctx, "b")
	if _, err := pipe.Exec(ctx); err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
		t.Fatalf("MULTI across slots: %v, want CROSSSLOT", err)
	}
	if err := rdb.MGet(ctx, "{x}a", "{x}b").Err(); err != nil {
		t.Fatal(err)
	}
}
