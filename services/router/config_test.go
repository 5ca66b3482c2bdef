package router_test

import (
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/services/router"
)

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("HERALD_ROUTER_DEDUPE_WINDOW", "90m")
	t.Setenv("HERALD_ROUTER_MAX_BATCH", "50")
	t.Setenv("HERALD_ROUTER_MAX_BATCH_BYTES", "65536")
	t.Setenv("HERALD_ROUTER_MAX_EVENT_BYTES", "4096")
	t.Setenv("HERALD_ROUTER_MEMORY_HIGH_WATER", "0.75")
	t.Setenv("HERALD_ROUTER_MAX_SUBSCRIBE_STREAMS", "20")
	t.Setenv("HERALD_REDIS_REPLICA_ACKS", "1")
	t.Setenv("HERALD_REDIS_REPLICA_TIMEOUT", "500ms")
	cfg, err := router.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DedupeWindow != 90*time.Minute || cfg.MaxBatch != 50 || cfg.MaxBatchBytes != 65536 || cfg.MaxEventBytes != 4096 || cfg.MemoryHighWater != 0.75 || cfg.MaxSubscribeStreams != 20 ||
		cfg.ReplicaAcks != 1 || cfg.ReplicaTimeout != 500*time.Millisecond {
		t.Fatalf("config: %+v", cfg)
	}
	for name, bad := range map[string]string{
		"HERALD_ROUTER_DEDUPE_WINDOW":         "a day",
		"HERALD_ROUTER_MAX_BATCH":             "-1",
		"HERALD_ROUTER_MAX_BATCH_BYTES":       "8MiB",
		"HERALD_ROUTER_MAX_EVENT_BYTES":       "0",
		"HERALD_ROUTER_MEMORY_HIGH_WATER":     "1.5",
		"HERALD_ROUTER_MAX_SUBSCRIBE_STREAMS": "many",
		"HERALD_REDIS_REPLICA_ACKS":           "-1",
		"HERALD_REDIS_REPLICA_TIMEOUT":        "10s",
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(name, bad)
			if _, err := router.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), name) {
				t.Fatalf("%s=%q: %v", name, bad, err)
			}
		})
	}
}
