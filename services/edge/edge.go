// Package edge is Herald's way out: it follows the log and delivers events
// to consumers outside the mesh as Server-Sent Events (GET /v1/stream),
// HTTP/2 server streams (EdgeService.StreamEvents) and long polls
// (GET /v1/poll), and lists Herald's APIs for a caller (GET /apis.json,
// APIs.json).
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/console"
	"github.com/heraldmesh/herald/services/edge/internal/cors"
	"github.com/heraldmesh/herald/services/edge/internal/discovery"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/poll"
	"github.com/heraldmesh/herald/services/edge/internal/portal"
	"github.com/heraldmesh/herald/services/edge/internal/request"
	"github.com/heraldmesh/herald/services/edge/internal/sse"
	"github.com/heraldmesh/herald/services/edge/internal/streamrpc"
	"github.com/heraldmesh/herald/services/edge/internal/webhook"
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
	// UsageFlush is the longest a usage record waits in memory before it is
	// appended (records go out at once when a batch fills). Default 100ms.
	UsageFlush time.Duration
	// WriteTimeout drops a client that cannot take a write for this long.
	// Default 30s.
	WriteTimeout time.Duration
	// StreamBuffer bounds the events queued for one SSE or StreamEvents
	// client while it writes; a client further behind the live feed is
	// ended with its cursor (herald.lagged). Default hub.DefaultBuffer.
	StreamBuffer int
	// CORSOrigins are the browser origins allowed to read SSE streams and
	// polls from another origin, credentials included ("*": any origin).
	CORSOrigins []string
	// TLSCert and TLSKey, both set, serve HTTPS (and HTTP/2 to browsers)
	// instead of h2c.
	TLSCert, TLSKey string
	// WebhookEndpoints bounds the webhook endpoints this edge delivers to
	// at once. Default 1000.
	WebhookEndpoints int
	// Bridges bounds the sink bridges this edge runs at once (each holds
	// a Redis connection while it waits for events).
	Bridges int
	// BridgeLease and BridgeAckTimeout: see HERALD_EDGE_BRIDGE_LEASE and
	// HERALD_EDGE_BRIDGE_ACK_TIMEOUT. Zero takes the defaults.
	BridgeLease, BridgeAckTimeout time.Duration
	// WebhookAppConcurrency caps one application's webhook requests in
	// flight. Default 200.
	WebhookAppConcurrency int
	// WebhookResolver, when set, resolves webhook hosts instead of the
	// system resolver (tests).
	WebhookResolver safehttp.Resolver
	// WebSubLease is the lease of a WebSub subscription that asks for
	// none, WebSubMaxLease the longest granted. Defaults 10 and 30 days.
	WebSubLease, WebSubMaxLease time.Duration
	// WebSubSubscriptions bounds the WebSub subscriptions this edge
	// delivers to at once. Default 1000.
	WebSubSubscriptions int
	// WebSubRetry is the delays between attempts at one WebSub delivery;
	// default websub.DefaultRetry.
	WebSubRetry []time.Duration
}

// Service is a configured edge.
type Service struct {
	base *service.Base
	hub  *hub.Hub
}

// New builds the edge. It does not listen or contact Redis yet.
func New(cfg Config) (*Service, error) {
	cfg.setDefaults()
	links, err := discoveryLinks(cfg)
	if err != nil {
		return nil, err
	}
	base, cat, err := service.NewWithCatalog(service.Options{Name: "edge", Addr: cfg.Addr, Common: cfg.Common, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	h := hub.New(base.Redis, cat, base.Log)
	origins, err := cors.New(cfg.CORSOrigins)
	if err != nil {
		return nil, fmt.Errorf("edge: HERALD_EDGE_CORS_ORIGINS: %w", err)
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("edge: set both HERALD_EDGE_TLS_CERT and HERALD_EDGE_TLS_KEY, or neither")
	} else if cfg.TLSCert != "" {
		if err := base.Server.UseTLS(cfg.TLSCert, cfg.TLSKey); err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
	}
	// One usage record per delivery, keyed by usage.DeliveryID, appended
	// in batches.
	meter := usage.NewAppender(base.Redis, usage.AppenderOptions{FlushEvery: cfg.UsageFlush, Log: base.Log, Metrics: base.Metrics})
	requests := request.NewParser(cat)
	// Hard quotas on delivered events, from memory (see platform/quota).
	quotas := quota.NewCache(base.Redis, quota.Options{Log: base.Log})
	requests.UseQuotas(quotas)
	// A browser token's claims (auth.Principal.Scope) narrow every channel
	// in one place: types, filter, expiry.
	requests.ScopeOf = func(p auth.Principal) *request.Scope {
		if p.Scope == nil {
			return nil
		}
		return &request.Scope{Types: p.Scope.Types, Filter: p.Scope.Filter, Expires: p.Scope.Expires}
	}
	delivered := func(channel string) request.Delivered {
		return func(ctx context.Context, ev *hub.Event) {
			p, _ := auth.FromContext(ctx)
			d := usage.EventDelivery(ev.Event, ev.ID.String(), ev.Account)
			// Ad-hoc streams have no subscription: one application's
			// deliveries of an event on one channel count once, however
			// often a stream replays it.
			d.Application, d.Channel = p.Account(), channel
			d.Tenant = tenantOf(ctx, cat, p)
			_ = meter.Add(ctx, d.Record(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, time.Now()))
		}
	}
	shutdown := base.Server.StreamContext()
	streams := ceiling.New(cfg.MaxStreams, retryAfter, sse.Channel, streamrpc.Channel, poll.Channel)
	sseHandler := &sse.Handler{
		Hub: h, Requests: requests, Log: base.Log, Delivered: delivered(sse.Channel), Shutdown: shutdown,
		Heartbeat: cfg.Heartbeat, Ceiling: streams, WriteTimeout: cfg.WriteTimeout, Buffer: cfg.StreamBuffer, Detach: true,
	}
	base.Server.HandleHTTP("GET /v1/stream", origins.Wrap(base.Auth.Middleware(true, sseHandler)))
	// The console page is static and public: the events it shows come from
	// GET /v1/stream, authenticated by the token its user gives.
	base.Server.HandlePublic("GET /{$}", console.Handler())
	base.Server.HandleHTTP("GET /v1/poll", origins.Wrap(base.Auth.Middleware(true, &poll.Handler{
		Hub: h, Requests: requests, Log: base.Log, Delivered: delivered(poll.Channel), Shutdown: shutdown, Ceiling: streams,
	})))
	base.Server.HandlePublic("OPTIONS /v1/stream", origins.Preflight())
	base.Server.HandlePublic("OPTIONS /v1/poll", origins.Preflight())
	rpcPath, rpcHandler := edgev1connect.NewEdgeServiceHandler(&streamrpc.Handler{
		Hub: h, Requests: requests, Log: base.Log, Delivered: delivered(StreamUsageChannel), Shutdown: shutdown, Ceiling: streams, Buffer: cfg.StreamBuffer,
	}, base.HandlerOptions()...)
	base.Server.Handle(rpcPath, origins.WrapRPC(rpcHandler))
	base.Server.HandlePublic("OPTIONS "+rpcPath, origins.PreflightRPC())
	base.Metrics.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "herald_edge_sse_streams", Help: "Open SSE streams."}, func() float64 { return float64(streams.Active(sse.Channel)) }),
		streams.Collector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "herald_edge_live_subscribers", Help: "Subscribers following the live feed."}, func() float64 { return float64(h.Subscribers()) }),
	)
	webhookAPI, err := webhooks(base, cat, cfg, meter, quotas)
	if err != nil {
		return nil, err
	}
	apis := apisJSON(base, cat, links)
	if err := consumerPortal(base, cat, cfg, webhookAPI, apis); err != nil {
		return nil, err
	}
	if err := bridges(base, cat, cfg); err != nil {
		return nil, err
	}
	if err := browserTokens(base, cat, cfg); err != nil {
		return nil, err
	}
	if err := webSub(base, cat, cfg, quotas); err != nil {
		return nil, err
	}
	base.Server.OnReady(h.Ready)
	base.Go(h.Run)
	base.Go(requests.Run)
	base.Go(quotas.Run)
	base.Go(func(ctx context.Context) error { <-ctx.Done(); sseHandler.Wait(); return nil })
	base.Go(meter.Run)
	return &Service{base: base, hub: h}, nil
}

// StreamUsageChannel is the usage channel of StreamEvents deliveries
// ("stream"; the RPC's own name, grpc, is publish's usage channel).
const StreamUsageChannel = "stream"

// tenantOf is the tenant of the caller's application, from the catalog
// ("" for the operator, or when it cannot be told).
func tenantOf(ctx context.Context, cat *catalog.Cache, p auth.Principal) string {
	if p.Admin || p.ApplicationID == "" {
		return ""
	}
	app, err := cat.Application(ctx, p.ApplicationID)
	if err != nil {
		return ""
	}
	return app.GetTenant()
}

// webhooks sets up the webhook engine and its API.
func webhooks(base *service.Base, cat *catalog.Cache, cfg Config, meter *usage.Appender, quotas *quota.Cache) (http.Handler, error) {
	box, policy, err := outbound(cfg)
	if err != nil {
		return nil, err
	}
	// The endpoints' consumers wait for events on connections blocked in
	// Redis, one per stream they read (platform/subscription's watches): a
	// pool of their own, so that the SSE hub never waits for a connection.
	rdb, err := config.OpenRedis(cfg.RedisURL, cfg.WebhookEndpoints+16)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	engine := webhook.New(webhook.Options{
		Redis: rdb, Catalog: cat, Log: base.Log, Box: box, Policy: policy,
		Registry: registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RegistryAddr), rpc.ClientOptions(cfg.AdminKey)...),
		Router:   routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RouterAddr), rpc.ClientOptions(cfg.AdminKey)...),
		Metrics:  base.Metrics, AppConcurrency: cfg.WebhookAppConcurrency, MaxEndpoints: cfg.WebhookEndpoints,
		Usage:  meter,
		Quotas: quotas,
	})
	api := &webhook.API{E: engine}
	path, handler := edgev1connect.NewWebhookServiceHandler(api, base.HandlerOptions()...)
	base.Server.Handle(path, handler)
	base.Server.HandlePublic("GET /v1/webhooks/{id}/jwks.json", http.HandlerFunc(api.JWKS))
	base.Go(func(ctx context.Context) error {
		defer rdb.Close()
		return engine.Run(ctx)
	})
	return handler, nil
}

// consumerPortal mounts the consumer portal (/portal/): its page, its
// sessions, and the RPCs it forwards as the session's application to the
// registry, metering and the edge's own WebhookService.
func consumerPortal(base *service.Base, cat *catalog.Cache, cfg Config, webhookAPI, apis http.Handler) error {
	box, _, err := outbound(cfg)
	if err != nil {
		return err
	}
	var issuers auth.Issuers
	if box != nil {
		issuers = cat.TokenIssuers(box)
	}
	client := rpc.HTTPClient()
	// What the portal serves from the edge itself: WebhookService and
	// apis.json (which authenticates by itself).
	local := http.NewServeMux()
	local.Handle("/"+edgev1connect.WebhookServiceName+"/", base.Auth.Middleware(false, webhookAPI))
	local.Handle("GET "+discovery.Path, apis)
	p, err := portal.New(portal.Options{
		Auth:        base.Auth,
		Registry:    registryv1connect.NewRegistryServiceClient(client, rpc.BaseURL(cfg.RegistryAddr), rpc.ClientOptions(cfg.AdminKey)...),
		RegistryURL: rpc.BaseURL(cfg.RegistryAddr), MeteringURL: rpc.BaseURL(cfg.MeteringAddr),
		Local:     local,
		Transport: client.Transport,
		Issuers:   issuers, Audience: "herald",
		Log: base.Log,
	})
	if err != nil {
		return fmt.Errorf("edge: portal: %w", err)
	}
	p.Mount(func(pattern string, h http.Handler, public bool) {
		if public {
			base.Server.HandlePublic(pattern, h)
			return
		}
		base.Server.HandleSelfAuth(pattern, h)
	})
	return nil
}

// Listen binds the listen address, so that Addr is known before Run.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }
