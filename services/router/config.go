package router

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/heraldmesh/herald/platform/config"
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
	if cfg.DedupeWindow, err = envDuration("HERALD_ROUTER_DEDUPE_WINDOW"); err != nil {
		return cfg, err
	}
	if cfg.MaxBatch, err = envInt("HERALD_ROUTER_MAX_BATCH"); err != nil {
		return cfg, err
	}
	if cfg.MaxBatchBytes, err = envInt("HERALD_ROUTER_MAX_BATCH_BYTES"); err != nil {
		return cfg, err
	}
	if cfg.MaxEventBytes, err = envInt("HERALD_ROUTER_MAX_EVENT_BYTES"); err != nil {
		return cfg, err
	}
	if cfg.MaxSubscribeStreams, err = envInt("HERALD_ROUTER_MAX_SUBSCRIBE_STREAMS"); err != nil {
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
	cfg, err := ConfigFromEnv()
	if err != nil {
		return err
	}
	svc, err := New(cfg)
	if err != nil {
		return err
	}
	return svc.Run(ctx)
}

func envInt(name string) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s %q: give a whole number of at least 1", name, v)
	}
	return n, nil
}

func envDuration(name string) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q: give a positive duration such as 24h or 90m", name, v)
	}
	return d, nil
}
