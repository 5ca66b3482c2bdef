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
	"HERALD_REDIS_REPLICA_ACKS", "HERALD_REDIS_REPLICA_TIMEOUT",
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
//	HERALD_REDIS_REPLICA_ACKS            replicas of a stream's master that must acknowledge a publish's writes
//	                                     (WAIT) before the router acknowledges it (default 0: none)
//	HERALD_REDIS_REPLICA_TIMEOUT         how long a publish waits for them (Go duration, default 1s, at most 3s)
//
// (The two HERALD_REDIS_REPLICA_* settings describe the Redis deployment,
// like HERALD_REDIS_URL; only the router reads them.)
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
	if v := os.Getenv("HERALD_REDIS_REPLICA_ACKS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxReplicaAcks {
			return cfg, fmt.Errorf("HERALD_REDIS_REPLICA_ACKS %q: give the number of replicas that must acknowledge each publish, 0 to %d (0: none)", v, MaxReplicaAcks)
		}
		cfg.ReplicaAcks = n
	}
	if cfg.ReplicaTimeout, err = config.EnvDuration("HERALD_REDIS_REPLICA_TIMEOUT"); err != nil {
		return cfg, err
	}
	if cfg.ReplicaTimeout > MaxReplicaTimeout {
		return cfg, fmt.Errorf("HERALD_REDIS_REPLICA_TIMEOUT %q: give at most %v (a publish holds its batch that long when replicas lag)", os.Getenv("HERALD_REDIS_REPLICA_TIMEOUT"), MaxReplicaTimeout)
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
