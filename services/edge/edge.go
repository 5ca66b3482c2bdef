// Package edge is Herald's way out: it follows the log and delivers events
// to consumers outside the mesh as Server-Sent Events (GET /v1/stream) and
// HTTP/2 server streams (EdgeService.StreamEvents).
package edge

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/sse"
	"github.com/heraldmesh/herald/services/edge/internal/streamrpc"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures the edge.
type Config struct {
	config.Common
	// Addr is the listen address; default Common.EdgeAddr.
	Addr string
	// Logger; nil logs JSON to stderr.
	Logger *slog.Logger
	// Heartbeat is the SSE idle heartbeat interval. Default 15s.
	Heartbeat time.Duration
	// MaxStreams bounds concurrent streams of every channel (SSE and
	// StreamEvents together). Default 10000.
	MaxStreams int64
	// UsageFlush is how often delivery counts are reported. Default 1s.
	UsageFlush time.Duration
	// WriteTimeout drops a client that cannot take a write for this long.
	// Default 30s.
	WriteTimeout time.Duration
}

// Service is a configured edge.
type Service struct {
	base *service.Base
	hub  *hub.Hub
}

// New builds the edge. It does not listen or contact Redis yet.
func New(cfg Config) (*Service, error) {
	cfg.setDefaults()
	base, cat, err := service.NewWithCatalog(service.Options{Name: "edge", Addr: cfg.Addr, Common: cfg.Common, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	h := hub.New(base.Redis, cat, base.Log)
	batcher := usage.NewBatcher(base.Redis, base.Log, cfg.UsageFlush)
	delivered := func(channel string) sse.Delivered {
		return func(ctx context.Context, ev *hub.Event) {
			p, _ := auth.FromContext(ctx)
			batcher.Add(usage.Key{Account: p.Account(), EventType: ev.Type, Channel: channel, Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED}, 1)
		}
	}
	shutdown := base.Server.StreamContext()
	streams := ceiling.New(cfg.MaxStreams, retryAfter, sse.Channel, streamrpc.Channel)
	sseHandler := &sse.Handler{
		Hub: h, Catalog: cat, Log: base.Log, Delivered: delivered(sse.Channel), Shutdown: shutdown,
		Heartbeat: cfg.Heartbeat, Ceiling: streams, WriteTimeout: cfg.WriteTimeout,
	}
	base.Server.HandleHTTP("GET /v1/stream", base.Auth.Middleware(true, sseHandler))
	base.Server.Handle(edgev1connect.NewEdgeServiceHandler(&streamrpc.Handler{
		Hub: h, Catalog: cat, Log: base.Log, Delivered: delivered(streamrpc.Channel), Shutdown: shutdown, Ceiling: streams,
	}, base.HandlerOptions()...))
	base.Metrics.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "herald_edge_sse_streams", Help: "Open SSE streams."}, func() float64 { return float64(streams.Active(sse.Channel)) }),
		streams.Collector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "herald_edge_live_subscribers", Help: "Subscribers following the live feed."}, func() float64 { return float64(h.Subscribers()) }),
	)
	base.Server.OnReady(h.Ready)
	base.Go(h.Run)
	base.Go(func(ctx context.Context) error { batcher.Run(ctx); return nil })
	return &Service{base: base, hub: h}, nil
}

// Listen binds the listen address, so that Addr is known before Run.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }
