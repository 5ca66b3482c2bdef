package registry_test

import (
	"strings"
	"testing"

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
	if _, err := registry.New(registry.Config{ChangeLogEntries: -1}); err == nil {
		t.Error("New accepted a negative change log size")
	}
}
