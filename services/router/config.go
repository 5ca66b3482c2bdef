package router

import (
	"context"
	"fmt"
	"os"
	"strconv"

	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/service"
)

// EnvVars are the variables ConfigFromEnv reads besides the common ones.
var EnvVars = []string{
	"HERALD_ROUTER_DEDUPE_WINDOW", "HERALD_ROUTER_MAX_BATCH", "HERALD_ROUTER_MAX_BATCH_BYTES", "HERALD_ROUTER_MAX_EVENT_BYTES",
	"HERALD_ROUTER_MEMORY_HIGH_WATER", "HERALD_ROUTER_MAX_SUBSCRIBE_STREAMS",
}

// ConfigFromEnv reads the router's settings from the environment: the
// common HERALD_* settings and
//
//	HERALD_ROUTER_DEDUPE_WINDOW          how long a publisher's (source, id) is remembered (Go duration, default 24h)
//	HERALD_ROUTER_MAX_BATCH              events per Publish (default 1000)
//	HERALD_ROUTER_MAX_BATCH_BYTES        bytes per request, such as a Publish batch (default 8388608, 8 MiB)
//	HERALD_ROUTER_MAX_EVENT_BYTES        bytes per event (default 1048576, 1 MiB)
//	HERALD_ROUTER_MEMORY_HIGH_WATER      share of Redis maxmemory above which Publish is refused (default 0.9)
//	HERALD_ROUTER_MAX_SUBSCRIBE_STREAMS  open Subscribe streams per router (default 1000)
func ConfigFromEnv() (Config, error) {
	cfg := Config{Common: config.FromEnv()}
	var err error
	if cfg.DedupeWindow, err = config.EnvDuration("HERALD_ROUTER_DEDUPE_WINDOW"); err != nil {
		return cfg, err
	}
	if cfg.MaxBatch, err = config.EnvInt("HERALD_ROUTER_MAX_BATCH"); err != nil {
		return cfg, err
	}
	if cfg.MaxBatchBytes, err = config.EnvInt("HERALD_ROUTER_MAX_BATCH_BYTES"); err != nil {
		return cfg, err
	}
	if cfg.MaxEventBytes, err = config.EnvInt("HERALD_ROUTER_MAX_EVENT_BYTES"); err != nil {
		return cfg, err
	}
	if cfg.MaxSubscribeStreams, err = config.EnvInt("HERALD_ROUTER_MAX_SUBSCRIBE_STREAMS"); err != nil {
		return cfg, err
	}
	if v := os.Getenv("HERALD_ROUTER_MEMORY_HIGH_WATER"); v != "" {
		hw, err := strconv.ParseFloat(v, 64)
		if err != nil || !(hw > 0 && hw <= 1) {
			return cfg, fmt.Errorf("HERALD_ROUTER_MEMORY_HIGH_WATER %q: give a share of maxmemory above 0 and at most 1, such as 0.9", v)
		}
		cfg.MemoryHighWater = hw
	}
	return cfg, nil
}

// RunFromEnv runs a router configured by ConfigFromEnv until ctx ends, as
// the router binary does.
func RunFromEnv(ctx context.Context) error {
	return service.RunFromEnv(ctx, ConfigFromEnv, New)
}
