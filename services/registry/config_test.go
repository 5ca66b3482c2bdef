package registry_test

import (
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/services/registry"
)

func TestConfigFromEnv(t *testing.T) {
	cfg, err := registry.ConfigFromEnv()
	if err != nil || cfg.ChangeLogEntries != 0 {
		t.Fatalf("unset: %+v, %v (want 0: New's default)", cfg, err)
	}
	t.Setenv("HERALD_REGISTRY_CHANGE_LOG_ENTRIES", "5000")
	if cfg, err = registry.ConfigFromEnv(); err != nil || cfg.ChangeLogEntries != 5000 {
		t.Fatalf("config: %+v, %v", cfg, err)
	}
	for _, bad := range []string{"0", "-1", "many", "1e6"} {
		t.Setenv("HERALD_REGISTRY_CHANGE_LOG_ENTRIES", bad)
		if _, err := registry.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "HERALD_REGISTRY_CHANGE_LOG_ENTRIES") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	t.Setenv("HERALD_REGISTRY_CHANGE_LOG_ENTRIES", "")
	t.Setenv("HERALD_REGISTRY_WEBHOOK_ORIGIN", "hooks.mesh.example")
	if cfg, err = registry.ConfigFromEnv(); err != nil || cfg.WebhookOrigin != "hooks.mesh.example" {
		t.Fatalf("webhook origin: %+v, %v", cfg, err)
	}
	t.Setenv("HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER", "2s")
	if cfg, err = registry.ConfigFromEnv(); err != nil || cfg.WebhookMinDisableAfter != 2*time.Second {
		t.Fatalf("webhook min disable_after: %+v, %v", cfg, err)
	}
	t.Setenv("HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER", "soon")
	if _, err := registry.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER") {
		t.Errorf("bad min disable_after: %v", err)
	}
	t.Setenv("HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER", "")
	if _, err := registry.New(registry.Config{ChangeLogEntries: -1}); err == nil {
		t.Error("New accepted a negative change log size")
	}
}

// The public URL and the handshake origin are checked at start.
func TestWebhookConfig(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(*registry.Config)
		target string
	}{
		{"public URL without a scheme", func(c *registry.Config) { c.PublicURL = "mesh.example.com" }, "HERALD_PUBLIC_URL"},
		{"origin with a space", func(c *registry.Config) { c.WebhookOrigin = "mesh example" }, "HERALD_REGISTRY_WEBHOOK_ORIGIN"},
	} {
		cfg := registry.Config{Common: config.Common{RedisURL: "redis://127.0.0.1:1/0", AdminKey: "registry-test-admin-key"}, Addr: "127.0.0.1:0"}
		c.change(&cfg)
		if _, err := registry.New(cfg); err == nil || !strings.Contains(err.Error(), c.target) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
