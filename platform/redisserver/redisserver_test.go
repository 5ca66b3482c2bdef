package redisserver_test

import (
	"context"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/redis/go-redis/v9"
)

// An AOF server rewrites its AOF only past DefaultAOFRewriteMinSize, or the
// size it is given (Redis' own default, 64mb, rewrote every few seconds
// under Herald's write rates).
func TestAppendOnlyRewriteMinSize(t *testing.T) {
	for _, tc := range []struct{ set, want string }{
		{"", "1073741824"},
		{"64mb", "67108864"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		srv, err := redisserver.Start(ctx, redisserver.Options{Dir: t.TempDir(), AppendOnly: true, AOFRewriteMinSize: tc.set})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		got, err := rdb.ConfigGet(ctx, "auto-aof-rewrite-min-size").Result()
		if err != nil {
			t.Fatal(err)
		}
		if got["auto-aof-rewrite-min-size"] != tc.want {
			t.Errorf("AOFRewriteMinSize %q: auto-aof-rewrite-min-size is %q, want %s", tc.set, got["auto-aof-rewrite-min-size"], tc.want)
		}
		if fsync, _ := rdb.ConfigGet(ctx, "appendfsync").Result(); fsync["appendfsync"] != "always" {
			t.Errorf("appendfsync is %q, want always", fsync["appendfsync"])
		}
		rdb.Close()
		srv.Stop()
		cancel()
	}
}
