package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/redis/go-redis/v9"
)

func TestOpenRedisClusterURL(t *testing.T) {
	rdb, err := config.OpenRedis("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001, 10.0.0.3:7002?dial_timeout=3s", 7)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("a redis+cluster:// URL opened a %T", rdb)
	}
	o := cc.Options()
	if strings.Join(o.Addrs, ",") != "10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002" {
		t.Errorf("addresses %v", o.Addrs)
	}
	if o.Username != "app" || o.Password != "s3cret" || o.DialTimeout != 3*time.Second || o.PoolSize != 7 {
		t.Errorf("options: user %q password %q dial timeout %v pool %d", o.Username, o.Password, o.DialTimeout, o.PoolSize)
	}
	if o.ClusterStateReloadInterval != time.Second {
		t.Errorf("topology reload every %v, want 1s (a dead master's replica must be found quickly)", o.ClusterStateReloadInterval)
	}
	if !config.IsClusterURL("rediss+cluster://h:1") || config.IsClusterURL("redis://h:1/0") {
		t.Error("IsClusterURL")
	}
	one, err := config.OpenRedis("redis://127.0.0.1:7779/0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	if _, ok := one.(*redis.Client); !ok {
		t.Fatalf("a redis:// URL opened a %T", one)
	}
}

func TestOpenRedisBadURLs(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"redis+cluster://", "no node address"},
		{"redis+cluster://app:hunter2@,", "no node address"},
		{"redis+cluster://app:hunter2@10.0.0.1", "is not host:port"},
		{"redis+cluster://10.0.0.1:7000/3", "only database 0"},
		{"redis+cluster://10.0.0.1:7000?bogus=1", "redis+cluster://"},
		{"redis://app:hunter2@10.0.0.1:7000/x", "HERALD_REDIS_URL"},
	} {
		_, err := config.OpenRedis(c.url, 0)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.url, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the password: %v", c.url, err)
		}
	}
}

// No URL makes OpenRedis panic, and no error shows the URL's password.
func FuzzOpenRedis(f *testing.F) {
	for _, s := range []string{"redis://u:p@h:1/0", "redis+cluster://u:p@a:1,b:2?dial_timeout=1s", "rediss+cluster://@", "redis+cluster://a:1/0/", "redis://h:1/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, url string) {
		rdb, err := config.OpenRedis(url, 0)
		if err == nil {
			rdb.Close()
			return
		}
		scheme, rest, ok := strings.Cut(url, "://")
		if !ok || !strings.HasPrefix(scheme, "redis") {
			return
		}
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if _, pw, ok := strings.Cut(rest[:at], ":"); ok && len(pw) >= 6 && !strings.Contains(rest[at:], pw) && strings.Contains(err.Error(), pw) {
				t.Errorf("the error shows the password %q: %v", pw, err)
			}
		}
	})
}
