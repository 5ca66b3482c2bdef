package edge

import (
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/server"
)

func TestConfigFromEnv(t *testing.T) {
	for _, name := range []string{"HERALD_EDGE_HEARTBEAT", "HERALD_EDGE_MAX_STREAMS", "HERALD_EDGE_USAGE_FLUSH", "HERALD_EDGE_WRITE_TIMEOUT"} {
		t.Setenv(name, "")
	}
	cfg, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	// The stream ceiling follows the connection ceiling: 19,900 streams
	// under a 20,000-file limit.
	if want := int64(server.Ceiling(0)); want <= 0 || cfg.MaxStreams != want {
		t.Fatalf("default stream ceiling %d, want the connection ceiling %d", cfg.MaxStreams, want)
	}
	if cfg.Heartbeat != DefaultHeartbeat || cfg.UsageFlush != DefaultUsageFlush || cfg.WriteTimeout != DefaultWriteTimeout {
		t.Fatalf("defaults: %+v", cfg)
	}

	t.Setenv("HERALD_EDGE_HEARTBEAT", "5s")
	t.Setenv("HERALD_EDGE_MAX_STREAMS", "42")
	t.Setenv("HERALD_EDGE_USAGE_FLUSH", "250ms")
	t.Setenv("HERALD_EDGE_WRITE_TIMEOUT", "1m")
	cfg, err = ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Heartbeat != 5*time.Second || cfg.MaxStreams != 42 || cfg.UsageFlush != 250*time.Millisecond || cfg.WriteTimeout != time.Minute {
		t.Fatalf("set: %+v", cfg)
	}

	for name, bad := range map[string]string{
		"HERALD_EDGE_HEARTBEAT":      "15",
		"HERALD_EDGE_MAX_STREAMS":    "0",
		"HERALD_EDGE_USAGE_FLUSH":    "-1s",
		"HERALD_EDGE_WRITE_TIMEOUT":  "soon",
		"HERALD_REGISTRY_PUBLIC_URL": "catalog.example.com",
		"HERALD_PUBLIC_URL":          "https://events.example.com/?x",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, bad)
			_, err := ConfigFromEnv()
			if err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), bad) {
				t.Fatalf("%s=%q: got %v, want an error naming the setting and value", name, bad, err)
			}
		})
	}
}
