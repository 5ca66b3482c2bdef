// Package router is Herald's write path: Publish authenticates the caller,
// validates each event against the locally cached catalog, and appends it to
// the durable log on Redis Streams, deduplicated on (source, id) per
// publishing application.
package router

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/router/internal/appender"
	"github.com/heraldmesh/herald/services/router/internal/backpressure"
	"github.com/heraldmesh/herald/services/router/internal/publish"
)

// Config configures the router.
type Config struct {
	config.Common
	// Addr is the listen address; default Common.RouterAddr.
	Addr string
	// Logger; nil logs JSON to stderr.
	Logger *slog.Logger
	// DedupeWindow is how long a publisher's (source, id) pair is remembered. Default 24h.
	DedupeWindow time.Duration
	// MaxBatch is the most events one Publish may carry. Default 1000.
	MaxBatch int
	// MaxBatchBytes is the largest encoded request the router reads (a
	// Publish batch, or any other call); a larger one is refused whole with
	// RESOURCE_EXHAUSTED, as gRPC does. Default 8 MiB.
	MaxBatchBytes int
	// MaxEventBytes is the largest encoded event; a larger one is refused
	// with INVALID_ARGUMENT in its result, and the rest of its batch goes
	// on. Default 1 MiB.
	MaxEventBytes int
	// MemoryHighWater is the share of Redis's maxmemory above which every
	// Publish is refused with RESOURCE_EXHAUSTED: 0 < x <= 1. Default 0.9.
	MemoryHighWater float64
	// MaxSubscribeStreams is the most RouterService.Subscribe streams one
	// router serves at once. Default 1000.
	MaxSubscribeStreams int
	// ReplicaAcks is how many replicas of a stream's master must
	// acknowledge a publish's writes (Redis WAIT) before the router
	// acknowledges the publish: 1 with one replica per master means an
	// acknowledged event survives the loss of its master once the replica
	// is promoted. Fewer within ReplicaTimeout fail the publish with
	// UNAVAILABLE; the events may be stored, and the producer's retry is
	// deduplicated. 0 to MaxReplicaAcks; default 0 (no wait).
	ReplicaAcks int
	// ReplicaTimeout bounds that wait: at most MaxReplicaTimeout, default
	// 1s.
	ReplicaTimeout time.Duration
	// MeterInterval is how often published counts move to metering.
	// Default appender.DefaultMeterInterval (250ms).
	MeterInterval time.Duration
}

// Bounds of Config.ReplicaAcks and Config.ReplicaTimeout. The timeout
// stays below the Redis client's 5s read timeout, which bounds the
// pipeline WAIT ends.
const (
	MaxReplicaAcks    = 16
	MaxReplicaTimeout = 3 * time.Second
)

// Service is a configured router.
type Service struct{ base *service.Base }

// New builds the router. It does not listen or contact Redis yet.
func New(cfg Config) (*Service, error) {
	if cfg.Addr == "" {
		cfg.Addr = cfg.RouterAddr
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = 8 << 20
	}
	if cfg.MaxEventBytes <= 0 {
		cfg.MaxEventBytes = publish.DefaultMaxEventBytes
	}
	if cfg.MaxEventBytes > cfg.MaxBatchBytes {
		return nil, fmt.Errorf("router: the largest event (%d bytes) cannot be larger than the largest batch (%d bytes)", cfg.MaxEventBytes, cfg.MaxBatchBytes)
	}
	if cfg.ReplicaAcks < 0 || cfg.ReplicaAcks > MaxReplicaAcks {
		return nil, fmt.Errorf("router: ReplicaAcks %d: want 0 to %d", cfg.ReplicaAcks, MaxReplicaAcks)
	}
	if cfg.ReplicaTimeout < 0 || cfg.ReplicaTimeout > MaxReplicaTimeout {
		return nil, fmt.Errorf("router: ReplicaTimeout %v: want at most %v", cfg.ReplicaTimeout, MaxReplicaTimeout)
	}
	base, cat, err := service.NewWithCatalog(service.Options{Name: "router", Addr: cfg.Addr, Common: cfg.Common, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	mem, err := backpressure.NewMemory(base.Redis, backpressure.MemoryOptions{HighWater: cfg.MemoryHighWater, Logger: base.Log})
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	base.Go(mem.Run)
	app := appender.New(base.Redis, appender.Options{DedupeWindow: cfg.DedupeWindow, ReplicaAcks: cfg.ReplicaAcks, ReplicaTimeout: cfg.ReplicaTimeout})
	// Published usage is counted by the append itself; the meter moves the
	// counts to metering.
	base.Go(appender.NewMeter(base.Redis, appender.MeterOptions{Log: base.Log, Interval: cfg.MeterInterval, Tenant: func(ctx context.Context, app string) string {
		if app == "admin" {
			return ""
		}
		a, err := cat.Application(ctx, app)
		if err != nil {
			return "" // the operator's "admin" account, or an application gone
		}
		return a.GetTenant()
	}}).Run)
	quotas := quota.NewCache(base.Redis, quota.Options{Log: base.Log})
	base.Go(quotas.Run)
	h := publish.New(cat, app, base.Redis, base.Log, publish.Limits{MaxEvents: cfg.MaxBatch, MaxEventBytes: cfg.MaxEventBytes}, publish.Guards{Memory: mem, Quotas: quotas})
	if cfg.MaxSubscribeStreams <= 0 {
		cfg.MaxSubscribeStreams = 1000
	}
	// Subscribe streams wait for events on connections blocked in Redis,
	// one per stream they read (the Manager's watches, per node on a
	// cluster, up to the pool size less 16): they get a pool of their own,
	// so that they never starve Publish of connections.
	subRedis, err := config.OpenRedis(cfg.RedisURL, cfg.MaxSubscribeStreams+16)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	mgr := subscription.NewManager(subRedis, cat, base.Log, base.Metrics)
	// One usage record per delivery sent, keyed by the delivery's id: a
	// redelivery or a replay counts once as DELIVERED (and each redelivery
	// as RETRIED).
	deliveries := usage.NewAppender(base.Redis, usage.AppenderOptions{Log: base.Log, Metrics: base.Metrics})
	mgr.Delivered = func(ctx context.Context, d usage.Delivery) {
		if app, err := cat.Application(ctx, d.Application); err == nil {
			d.Tenant = app.GetTenant()
		}
		_ = deliveries.Add(ctx, d.Records(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, time.Now())...)
	}
	base.Go(deliveries.Run)
	base.Go(mgr.Run)
	base.Go(func(ctx context.Context) error {
		<-ctx.Done() // after the server drained its streams
		return subRedis.Close()
	})
	sh := subscription.NewHandler(mgr, base.Server.StreamContext(), subscription.Limits{MaxSessions: cfg.MaxSubscribeStreams})
	sh.UseQuotas(quotas)
	base.Server.Handle(routerv1connect.NewRouterServiceHandler(handler{h, sh}, base.HandlerOptions(connect.WithReadMaxBytes(cfg.MaxBatchBytes))...))
	return &Service{base: base}, nil
}

// handler serves RouterService: publishing and subscribing.
type handler struct {
	*publisher
	*subscriber
}

type (
	publisher  = publish.Handler
	subscriber = subscription.Handler
)

// Listen binds the listen address, so that Addr is known before Run.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }
