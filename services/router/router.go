// Package router is Herald's write path: Publish authenticates the caller,
// validates each event against the locally cached catalog, and appends it to
// the durable log on Redis Streams, deduplicated on (source, id).
package router

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/router/internal/appender"
	"github.com/heraldmesh/herald/services/router/internal/publish"
)

// Config configures the router.
type Config struct {
	config.Common
	// Addr is the listen address; default Common.RouterAddr.
	Addr string
	// Logger; nil logs JSON to stderr.
	Logger *slog.Logger
	// DedupeWindow is how long a (source, id) pair is remembered. Default 24h.
	DedupeWindow time.Duration
	// MaxBatch is the most events one Publish may carry. Default 1000.
	MaxBatch int
	// CatalogRefresh is how often the catalog is re-read. Default 1s.
	CatalogRefresh time.Duration
}

// Service is a configured router.
type Service struct{ base *service.Base }

// New builds the router. It does not listen or contact Redis yet.
func New(cfg Config) (*Service, error) {
	if cfg.Addr == "" {
		cfg.Addr = cfg.RouterAddr
	}
	if cfg.CatalogRefresh <= 0 {
		cfg.CatalogRefresh = time.Second
	}
	base, err := service.New(service.Options{
		Name: "router", Addr: cfg.Addr, Common: cfg.Common, Logger: cfg.Logger,
		Resolver: service.RegistryResolver(cfg.RegistryAddr, cfg.AdminKey),
	})
	if err != nil {
		return nil, err
	}
	registry := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RegistryAddr), rpc.ClientOptions(cfg.AdminKey)...)
	cat := catalog.New(registry, base.Log)
	app := appender.New(base.Redis, appender.Options{DedupeWindow: cfg.DedupeWindow})
	h := publish.New(cat, app, base.Redis, base.Log, publish.Limits{MaxEvents: cfg.MaxBatch})
	base.Server.Handle(routerv1connect.NewRouterServiceHandler(h, base.HandlerOptions()...))
	base.Server.OnReady(cat.Ready)
	base.Go(func(ctx context.Context) error { return cat.Run(ctx, cfg.CatalogRefresh) })
	return &Service{base: base}, nil
}

// Listen binds the listen address, so that Addr is known before Run.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }
