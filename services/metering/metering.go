// Package metering is Herald's usage service: it folds the usage records
// router and edge append to Redis into hourly counters, exactly once, and
// answers usage queries over Connect, gRPC, gRPC-Web and a REST gateway
// (GET /v1/usage, described by GET /openapi.json), all on one port.
package metering

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/heraldmesh/herald/api"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/metering/internal/fold"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"github.com/heraldmesh/herald/services/metering/internal/usageapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
}

// Service is a metering service: built by New, driven by Run.
type Service struct {
	base  *service.Base
	gwmux *runtime.ServeMux

	mu     sync.Mutex
	gwconn *grpc.ClientConn
}

// New validates cfg, opens the Redis client and builds the handlers. It
// does not contact Redis or the registry, and does not listen.
func New(cfg Config) (*Service, error) {
	if cfg.Addr == "" {
		cfg.Addr = cfg.MeteringAddr
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
	folder := fold.New(st, fold.Options{Log: base.Log, Metrics: base.Metrics, ClaimIdle: cfg.ClaimIdle, ClaimEvery: cfg.ClaimEvery})
	s := &Service{base: base, gwmux: runtime.NewServeMux(runtime.WithErrorHandler(gatewayError))}
	base.Server.Handle(meteringv1connect.NewMeteringServiceHandler(usageapi.New(st), base.HandlerOptions()...))
	// The gateway calls this very server over gRPC (wired in Listen, once
	// the address is known), so authentication and metrics apply unchanged.
	base.Server.HandleHTTP("/v1/", s.gwmux)
	base.Server.HandlePublic("GET /openapi.json", http.HandlerFunc(serveOpenAPI))
	base.Server.OnReady(folder.Ready)
	base.Go(func(ctx context.Context) error { folder.Run(ctx); return nil })
	return s, nil
}

// gatewayError is grpc-gateway's error handler, except that a 401 carries
// the same Bearer challenge as Herald's other routes (grpc-gateway would put
// the error message there).
func gatewayError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, bearerChallenge{w}, r, err)
}

type bearerChallenge struct{ http.ResponseWriter }

func (b bearerChallenge) WriteHeader(status int) {
	if status == http.StatusUnauthorized {
		b.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
	}
	b.ResponseWriter.WriteHeader(status)
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(api.MeteringOpenAPI)
}

// Listen binds the listen address and returns the bound address, which
// tells a caller the port when the configured port is 0. Calling it again
// returns the same address.
func (s *Service) Listen() (net.Addr, error) {
	bound, err := s.base.Listen()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gwconn != nil {
		return bound, nil
	}
	// grpc.NewClient does not dial until the first call.
	conn, err := grpc.NewClient(dialAddr(bound), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("metering: gateway client: %w", err)
	}
	if err := meteringv1.RegisterMeteringServiceHandler(context.Background(), s.gwmux, conn); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("metering: gateway: %w", err)
	}
	s.gwconn = conn
	return bound, nil
}

// Run listens if Listen was not called, folds usage and serves until ctx is
// done, then shuts down: it drains in-flight requests, stops the fold and
// closes Redis. It returns nil after a clean shutdown.
func (s *Service) Run(ctx context.Context) error {
	if _, err := s.Listen(); err != nil {
		return err
	}
	defer s.gwconn.Close()
	return s.base.Run(ctx)
}

// dialAddr is where the gateway reaches this server: a wildcard bind
// address is reached on loopback.
func dialAddr(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	ip := tcp.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
		if tcp.IP.To4() == nil && tcp.IP != nil {
			ip = net.IPv6loopback
		}
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(tcp.Port))
}
