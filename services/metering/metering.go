// Package metering is Herald's usage service: it folds the usage records
// router and edge append to Redis into hourly counters, exactly once, and
// answers usage queries over Connect, gRPC, gRPC-Web and a REST gateway
// (GET /v1/usage, described by GET /openapi.json, served in process by
// grpc-gateway), all on one port, with the operator dashboard at
// GET /dashboard.
package metering

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/heraldmesh/herald/api"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/metering/internal/billing"
	"github.com/heraldmesh/herald/services/metering/internal/dashboard"
	"github.com/heraldmesh/herald/services/metering/internal/fold"
	"github.com/heraldmesh/herald/services/metering/internal/gateway"
	"github.com/heraldmesh/herald/services/metering/internal/quota"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"github.com/heraldmesh/herald/services/metering/internal/usageapi"
)

// Config configures the metering service.
type Config struct {
	config.Common
	// Addr is the listen address. Default: Common.MeteringAddr. Port 0 picks
	// a free port (see Listen).
	Addr string
	// Logger receives the service's logs. Nil: JSON logs to stderr.
	Logger *slog.Logger
	// ClaimIdle is how long a usage record must have been pending with
	// another metering process before this one takes it over: how long the
	// records of a process that died wait to be counted. Default 30s.
	ClaimIdle time.Duration
	// ClaimEvery is how often pending records are scanned for takeover.
	// Default 10s.
	ClaimEvery time.Duration
	// FoldWorkers is how many loops fold the usage stream at once, each a
	// consumer of its own: one decodes records while Redis runs another's
	// fold script. Default 2.
	FoldWorkers int
	// FoldReadEvery is the shortest time between two reads of one fold
	// worker (see fold.Options.ReadEvery). Default none: in the bench at
	// 50,000 records/s, pacing the reads (250ms) made the folds larger but
	// folded no faster, and it adds to the lag.
	FoldReadEvery time.Duration
	// QuotaInterval is how often usage is compared with the quotas.
	// Default 200ms: a hard quota takes effect within a second.
	QuotaInterval time.Duration
	// BillingOutboxInterval is how often unpublished herald.invoice.finalized
	// events are retried. Default 1s.
	BillingOutboxInterval time.Duration
	// BillingClock is the clock billing tells the end of a month by (a
	// month is invoiced once it has ended). Nil: time.Now. Tests move it.
	BillingClock func() time.Time
	// DashboardSessionTTL is how long a dashboard sign-in lasts.
	// Default 30m.
	DashboardSessionTTL time.Duration
}

// Service is a metering service: built by New, driven by Run.
type Service struct {
	base *service.Base
}

// New validates cfg, opens the Redis client and builds the handlers. It
// does not contact Redis or the registry, and does not listen.
func New(cfg Config) (*Service, error) {
	if cfg.Addr == "" {
		cfg.Addr = cfg.MeteringAddr
	}
	if cfg.FoldWorkers < 0 {
		return nil, fmt.Errorf("metering: negative fold workers %d", cfg.FoldWorkers)
	}
	if cfg.ClaimIdle < 0 || cfg.ClaimEvery < 0 {
		return nil, fmt.Errorf("metering: negative claim interval (idle %v, every %v)", cfg.ClaimIdle, cfg.ClaimEvery)
	}
	base, err := service.New(service.Options{
		Name: "metering", Addr: cfg.Addr, Common: cfg.Common, Logger: cfg.Logger,
		Resolver: service.RegistryResolver(cfg.RegistryAddr, cfg.AdminKey),
	})
	if err != nil {
		return nil, err
	}
	st := store.New(base.Redis)
	folder := fold.New(st, fold.Options{Log: base.Log, Metrics: base.Metrics, ClaimIdle: cfg.ClaimIdle, ClaimEvery: cfg.ClaimEvery,
		Workers: cmp.Or(cfg.FoldWorkers, 2), ReadEvery: max(cfg.FoldReadEvery, 0)})
	s := &Service{base: base}
	registry := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RegistryAddr), rpc.ClientOptions(cfg.AdminKey)...)
	usageHandler := usageapi.New(st, usageapi.NewDirectory(registry))
	base.Server.Handle(meteringv1connect.NewMeteringServiceHandler(usageHandler, base.HandlerOptions()...))
	// The REST gateway calls the same handlers in process; the HTTP
	// middleware authenticates, as the interceptor does for RPCs.
	gwmux := gateway.NewMux()
	if err := meteringv1.RegisterMeteringServiceHandlerServer(context.Background(), gwmux, meteringGRPC{c: gateway.NewCaller(base.GatewayInterceptors()...), h: usageHandler}); err != nil {
		return nil, fmt.Errorf("metering: gateway: %w", err)
	}
	if err := quotas(base, cfg, gwmux); err != nil {
		return nil, err
	}
	if err := billings(base, cfg, st, gwmux); err != nil {
		return nil, err
	}
	// The operator dashboard: the page, its sign-in and sign-out; the REST
	// routes accept its session cookie besides a bearer key.
	dash := dashboard.New(base.Auth, base.Redis, cfg.DashboardSessionTTL, base.Log)
	base.Server.HandlePublic("GET /dashboard", http.HandlerFunc(dash.ServePage))
	base.Server.HandleSelfAuth("POST /dashboard/session", http.HandlerFunc(dash.SignIn))
	base.Server.HandleSelfAuth("DELETE /dashboard/session", http.HandlerFunc(dash.SignOut))
	base.Server.HandleSelfAuth("/v1/", dash.Middleware(base.Auth.Middleware(false, gwmux)))
	base.Server.HandlePublic("GET /openapi.json", http.HandlerFunc(serveOpenAPI))
	base.Server.OnReady(folder.Ready)
	base.Go(func(ctx context.Context) error { folder.Run(ctx); return nil })
	return s, nil
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(api.MeteringOpenAPI)
}

// Listen binds the listen address and returns the bound address, which
// tells a caller the port when the configured port is 0. Calling it again
// returns the same address.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run listens if Listen was not called, folds usage and serves until ctx is
// done, then shuts down: it drains in-flight requests, stops the fold and
// closes Redis. It returns nil after a clean shutdown.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }

// meteringGRPC is MeteringService as the gateway calls it.
type meteringGRPC struct {
	meteringv1.UnimplementedMeteringServiceServer
	c *gateway.Caller
	h *usageapi.Handler
}

func (g meteringGRPC) GetUsage(ctx context.Context, r *meteringv1.GetUsageRequest) (*meteringv1.GetUsageResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.GetUsage)
}

func (g meteringGRPC) QueryUsage(ctx context.Context, r *meteringv1.QueryUsageRequest) (*meteringv1.QueryUsageResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.QueryUsage)
}

func (g meteringGRPC) TopUsage(ctx context.Context, r *meteringv1.TopUsageRequest) (*meteringv1.TopUsageResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.TopUsage)
}

func (g meteringGRPC) GetDeliveryStats(ctx context.Context, r *meteringv1.GetDeliveryStatsRequest) (*meteringv1.GetDeliveryStatsResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.GetDeliveryStats)
}

// quotas serves QuotaService (Connect, gRPC and the REST gateway on gwmux)
// and runs the enforcer that writes the blocked set router and edge read.
func quotas(base *service.Base, cfg Config, gwmux *runtime.ServeMux) error {
	st := quota.NewStore(base.Redis)
	router := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RouterAddr), rpc.ClientOptions(cfg.AdminKey)...)
	enforcer := quota.NewEnforcer(st, base.Redis, quota.Options{Log: base.Log, Interval: cfg.QuotaInterval, Publisher: quota.RouterPublisher{Router: router}})
	registry := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RegistryAddr), rpc.ClientOptions(cfg.AdminKey)...)
	h := quota.NewHandler(st, enforcer, registry)
	base.Server.Handle(meteringv1connect.NewQuotaServiceHandler(h, base.HandlerOptions()...))
	if err := meteringv1.RegisterQuotaServiceHandlerServer(context.Background(), gwmux, quotaGRPC{c: gateway.NewCaller(base.GatewayInterceptors()...), h: h}); err != nil {
		return fmt.Errorf("metering: quota gateway: %w", err)
	}
	base.Go(enforcer.Run)
	return nil
}

// quotaGRPC is QuotaService as the gateway calls it.
type quotaGRPC struct {
	meteringv1.UnimplementedQuotaServiceServer
	c *gateway.Caller
	h *quota.Handler
}

func (g quotaGRPC) SetQuota(ctx context.Context, r *meteringv1.SetQuotaRequest) (*meteringv1.SetQuotaResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.SetQuota)
}

func (g quotaGRPC) DeleteQuota(ctx context.Context, r *meteringv1.DeleteQuotaRequest) (*meteringv1.DeleteQuotaResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.DeleteQuota)
}

func (g quotaGRPC) ListQuotas(ctx context.Context, r *meteringv1.ListQuotasRequest) (*meteringv1.ListQuotasResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.ListQuotas)
}

func (g quotaGRPC) GetQuotaStatus(ctx context.Context, r *meteringv1.GetQuotaStatusRequest) (*meteringv1.GetQuotaStatusResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.GetQuotaStatus)
}

// billings serves BillingService (Connect, gRPC and the REST gateway on
// gwmux, plus the invoice export download) and runs the loop that
// publishes herald.invoice.finalized from the outbox.
func billings(base *service.Base, cfg Config, usage *store.Store, gwmux *runtime.ServeMux) error {
	router := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RouterAddr), rpc.ClientOptions(cfg.AdminKey)...)
	registry := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(cfg.RegistryAddr), rpc.ClientOptions(cfg.AdminKey)...)
	h := billing.NewHandler(billing.NewStore(base.Redis), usage, registry, billing.Options{
		Log: base.Log, Publisher: quota.RouterPublisher{Router: router}, OutboxInterval: cfg.BillingOutboxInterval, Now: cfg.BillingClock,
	})
	base.Server.Handle(meteringv1connect.NewBillingServiceHandler(h, base.HandlerOptions()...))
	if err := meteringv1.RegisterBillingServiceHandlerServer(context.Background(), gwmux, billingGRPC{c: gateway.NewCaller(base.GatewayInterceptors()...), h: h}); err != nil {
		return fmt.Errorf("metering: billing gateway: %w", err)
	}
	// A plain download, on the gateway's mux (behind the same /v1/
	// authentication): registered last, so it is matched before
	// GET /v1/invoices/{invoice_id}.
	if err := gwmux.HandlePath(http.MethodGet, "/v1/invoices/{invoice_id}/export", h.Export); err != nil {
		return fmt.Errorf("metering: billing export: %w", err)
	}
	base.Go(h.Run)
	return nil
}

// billingGRPC is BillingService as the gateway calls it.
type billingGRPC struct {
	meteringv1.UnimplementedBillingServiceServer
	c *gateway.Caller
	h *billing.Handler
}

func (g billingGRPC) CreatePlan(ctx context.Context, r *meteringv1.CreatePlanRequest) (*meteringv1.CreatePlanResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.CreatePlan)
}

func (g billingGRPC) CreatePlanVersion(ctx context.Context, r *meteringv1.CreatePlanVersionRequest) (*meteringv1.CreatePlanVersionResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.CreatePlanVersion)
}

func (g billingGRPC) ListPlans(ctx context.Context, r *meteringv1.ListPlansRequest) (*meteringv1.ListPlansResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.ListPlans)
}

func (g billingGRPC) GetPlan(ctx context.Context, r *meteringv1.GetPlanRequest) (*meteringv1.GetPlanResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.GetPlan)
}

func (g billingGRPC) AssignPlan(ctx context.Context, r *meteringv1.AssignPlanRequest) (*meteringv1.AssignPlanResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.AssignPlan)
}

func (g billingGRPC) ListAssignments(ctx context.Context, r *meteringv1.ListAssignmentsRequest) (*meteringv1.ListAssignmentsResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.ListAssignments)
}

func (g billingGRPC) DeleteAssignment(ctx context.Context, r *meteringv1.DeleteAssignmentRequest) (*meteringv1.DeleteAssignmentResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.DeleteAssignment)
}

func (g billingGRPC) FinalizeInvoice(ctx context.Context, r *meteringv1.FinalizeInvoiceRequest) (*meteringv1.FinalizeInvoiceResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.FinalizeInvoice)
}

func (g billingGRPC) ListInvoices(ctx context.Context, r *meteringv1.ListInvoicesRequest) (*meteringv1.ListInvoicesResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.ListInvoices)
}

func (g billingGRPC) GetInvoice(ctx context.Context, r *meteringv1.GetInvoiceRequest) (*meteringv1.GetInvoiceResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.GetInvoice)
}

func (g billingGRPC) PreviewInvoice(ctx context.Context, r *meteringv1.PreviewInvoiceRequest) (*meteringv1.PreviewInvoiceResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.PreviewInvoice)
}

func (g billingGRPC) CreateCreditNote(ctx context.Context, r *meteringv1.CreateCreditNoteRequest) (*meteringv1.CreateCreditNoteResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.CreateCreditNote)
}

func (g billingGRPC) GetProducerStatement(ctx context.Context, r *meteringv1.GetProducerStatementRequest) (*meteringv1.GetProducerStatementResponse, error) {
	return gateway.Call(ctx, g.c, r, g.h.GetProducerStatement)
}
