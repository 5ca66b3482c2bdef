// Package router is Herald's write path: Publish authenticates the caller,
// validates each event against the locally cached catalog, and appends it to
// the durable log on Redis Streams, deduplicated on (source, id).
package router

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/config"
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
}

// Service is a configured router.
type Service struct{ base *service.Base }

// New builds the router. It does not listen or contact Redis yet.
func New(cfg Config) (*Service, error) {
	if cfg.Addr == "" {
		cfg.Addr = cfg.RouterAddr
	}
	base, cat, err := service.NewWithCatalog(service.Options{Name: "router", Addr: cfg.Addr, Common: cfg.Common, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	app := appender.New(base.Redis, appender.Options{DedupeWindow: cfg.DedupeWindow})
	h := publish.New(cat, app, base.Redis, base.Log, publish.Limits{MaxEvents: cfg.MaxBatch})
	base.Server.Handle(routerv1connect.NewRouterServiceHandler(h, base.HandlerOptions()...))
	return &Service{base: base}, nil
}

// Listen binds the listen address, so that Addr is known before Run.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }
