// Package config reads the settings every Herald service shares, from
// HERALD_* environment variables with defaults, and opens Redis.
package config

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
)

// Default listen addresses; each is also how the others find the service.
const (
	DefaultEdgeAddr     = "127.0.0.1:7700"
	DefaultRouterAddr   = "127.0.0.1:7701"
	DefaultRegistryAddr = "127.0.0.1:7702"
	DefaultMeteringAddr = "127.0.0.1:7703"
	DefaultRedisURL     = "redis://127.0.0.1:7779/0"
)

// Common are the settings every service reads.
type Common struct {
	RedisURL     string // HERALD_REDIS_URL
	AdminKey     string // HERALD_ADMIN_KEY
	EdgeAddr     string // HERALD_EDGE_ADDR
	RouterAddr   string // HERALD_ROUTER_ADDR
	RegistryAddr string // HERALD_REGISTRY_ADDR
	MeteringAddr string // HERALD_METERING_ADDR

	// MaxConnections is the listener's connection ceiling (suggested
	// variable HERALD_MAX_CONNECTIONS); 0 derives it from RLIMIT_NOFILE,
	// negative disables it. See platform/server.
	MaxConnections int
	// BodyReadTimeout bounds reading a request body (suggested variable
	// HERALD_BODY_READ_TIMEOUT); 0 means 30s, negative none.
	BodyReadTimeout time.Duration
}

// FromEnv reads Common from the environment, with defaults.
func FromEnv() Common {
	return Common{
		RedisURL:     Env("HERALD_REDIS_URL", DefaultRedisURL),
		AdminKey:     os.Getenv("HERALD_ADMIN_KEY"),
		EdgeAddr:     Env("HERALD_EDGE_ADDR", DefaultEdgeAddr),
		RouterAddr:   Env("HERALD_ROUTER_ADDR", DefaultRouterAddr),
		RegistryAddr: Env("HERALD_REGISTRY_ADDR", DefaultRegistryAddr),
		MeteringAddr: Env("HERALD_METERING_ADDR", DefaultMeteringAddr),
	}
}

// Env returns the variable's value, or def when it is unset or empty.
func Env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Validate checks what every service needs.
func (c Common) Validate() error {
	if c.AdminKey == "" {
		return errors.New("HERALD_ADMIN_KEY is not set: every route needs a key, and this is the operator's (at least 16 characters)")
	}
	if len(c.AdminKey) < 16 {
		return errors.New("HERALD_ADMIN_KEY must be at least 16 characters")
	}
	if c.RedisURL == "" {
		return errors.New("HERALD_REDIS_URL is not set")
	}
	return nil
}

// OpenRedis parses a redis:// (or rediss://) URL and returns a client. It
// does not wait for Redis: readiness checks and retries do.
func OpenRedis(url string, poolSize int) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("HERALD_REDIS_URL %q: %w", url, err)
	}
	if poolSize > 0 {
		opt.PoolSize = poolSize
	}
	opt.ReadTimeout = 5 * time.Second
	opt.WriteTimeout = 5 * time.Second
	return redis.NewClient(opt), nil
}

// PingRedis is a readiness check.
func PingRedis(rdb redis.Cmdable) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		return nil
	}
}
