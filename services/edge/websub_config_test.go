package edge

import (
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/config"
)

func TestWebSubConfigFromEnv(t *testing.T) {
	t.Setenv("HERALD_EDGE_WEBSUB_LEASE", "")
	t.Setenv("HERALD_EDGE_WEBSUB_MAX_LEASE", "")
	t.Setenv("HERALD_EDGE_WEBSUB_SUBSCRIPTIONS", "")
	cfg, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.WebSubLease != 0 || cfg.WebSubMaxLease != 0 || cfg.WebSubSubscriptions != DefaultWebSubSubscriptions {
		t.Fatalf("defaults: lease %s, max %s, subscriptions %d", cfg.WebSubLease, cfg.WebSubMaxLease, cfg.WebSubSubscriptions)
	}
	t.Setenv("HERALD_EDGE_WEBSUB_LEASE", "1h")
	t.Setenv("HERALD_EDGE_WEBSUB_MAX_LEASE", "48h")
	t.Setenv("HERALD_EDGE_WEBSUB_SUBSCRIPTIONS", "7")
	if cfg, err = ConfigFromEnv(); err != nil {
		t.Fatal(err)
	}
	if cfg.WebSubLease != time.Hour || cfg.WebSubMaxLease != 48*time.Hour || cfg.WebSubSubscriptions != 7 {
		t.Fatalf("set: lease %s, max %s, subscriptions %d", cfg.WebSubLease, cfg.WebSubMaxLease, cfg.WebSubSubscriptions)
	}
	for name, bad := range map[string]string{"HERALD_EDGE_WEBSUB_LEASE": "10", "HERALD_EDGE_WEBSUB_MAX_LEASE": "-1h", "HERALD_EDGE_WEBSUB_SUBSCRIPTIONS": "none"} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, bad)
			if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("%s=%q: got %v, want an error naming the setting", name, bad, err)
			}
		})
	}
}

// A default lease longer than the longest is refused at start.
func TestWebSubLeaseLongerThanMax(t *testing.T) {
	_, err := New(Config{
		Common:      config.Common{RedisURL: "redis://127.0.0.1:1/0", AdminKey: "test-admin-key-0123456789", EdgeAddr: "127.0.0.1:0"},
		WebSubLease: 48 * time.Hour, WebSubMaxLease: time.Hour,
	})
	if err == nil || !strings.Contains(err.Error(), "HERALD_EDGE_WEBSUB_LEASE") {
		t.Fatalf("got %v, want the lease refused", err)
	}
}
