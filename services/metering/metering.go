// Package metering is Herald's usage service: it folds the usage records
// router and edge append to Redis into hourly counters, exactly once, and
// answers usage queries over Connect, gRPC, gRPC-Web and a REST gateway
// (GET /v1/usage, described by GET /openapi.json), all on one port.
package metering

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/heraldmesh/herald/api"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/server"
	"github.com/heraldmesh/herald/platform/telemetry"
	"github.com/heraldmesh/herald/services/metering/internal/fold"
	"github.com/heraldmesh/herald/services/metering/internal/keyresolver"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"github.com/heraldmesh/herald/services/metering/internal/usageapi"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config configures the metering service.
type Config struct {
	config.Common
	// Addr is the listen address. Default: Common.MeteringAddr, then
	// config.DefaultMeteringAddr. Port 0 picks a free port (see Listen).
	Addr string
	// Logger receives the service's logs. Nil: JSON logs to stderr.
	Logger *slog.Logger
}

// drain is how long a shutdown waits for in-flight requests.
const drain = 10 * time.Second

// Service is a metering service: built by New, driven by Run.
type Service struct {
	addr   string
	log    *slog.Logger
	rdb    *redis.Client
	srv    *server.Server
	folder *fold.Folder
	gwmux  *runtime.ServeMux

	mu     sync.Mutex
	bound  net.Addr
	gwconn *grpc.ClientConn
	ran    bool
}

// New validates cfg, opens the Redis client and builds the handlers. It
// does not contact Redis or the registry, and does not listen.
func New(cfg Config) (*Service, error) {
	if err := cfg.Common.Validate(); err != nil {
		return nil, fmt.Errorf("metering: %w", err)
	}
	addr := cmp.Or(cfg.Addr, cfg.MeteringAddr, config.DefaultMeteringAddr)
	registryAddr := cmp.Or(cfg.RegistryAddr, config.DefaultRegistryAddr)
	log := cfg.Logger
	if log == nil {
		log = telemetry.Logger(os.Stderr, "metering", slog.LevelInfo)
	}
	authn, err := auth.New(auth.Options{AdminKey: cfg.AdminKey, Resolver: keyresolver.New(registryAddr, cfg.AdminKey)})
	if err != nil {
		return nil, fmt.Errorf("metering: %w", err)
	}
	rdb, err := config.OpenRedis(cfg.RedisURL, 0)
	if err != nil {
		return nil, fmt.Errorf("metering: %w", err)
	}

	reg := telemetry.Registry()
	st := store.New(rdb)
	s := &Service{
		addr:   addr,
		log:    log,
		rdb:    rdb,
		srv:    server.New("metering", log, reg),
		folder: fold.New(st, fold.Options{Log: log, Metrics: reg}),
		gwmux:  runtime.NewServeMux(runtime.WithErrorHandler(gatewayError)),
	}
	path, handler := meteringv1connect.NewMeteringServiceHandler(
		usageapi.New(st),
		connect.WithInterceptors(telemetry.NewRPCMetrics(reg), authn.Interceptor()),
	)
	s.srv.Handle(path, handler)
	// The gateway calls this very server over gRPC (wired in Listen, once
	// the address is known), so authentication and metrics apply unchanged.
	s.srv.HandleHTTP("/v1/", s.gwmux)
	s.srv.HandleHTTP("GET /openapi.json", http.HandlerFunc(serveOpenAPI))
	s.srv.OnReady(config.PingRedis(rdb))
	s.srv.OnReady(s.folder.Ready)
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bound != nil {
		return s.bound, nil
	}
	bound, err := s.srv.Listen(s.addr)
	if err != nil {
		return nil, err
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
	s.bound, s.gwconn = bound, conn
	return bound, nil
}

// Run listens if Listen was not called, folds usage and serves until ctx is
// done, then shuts down: it drains in-flight requests, stops the fold and
// closes Redis. It returns nil after a clean shutdown. A Service runs once.
func (s *Service) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.ran {
		s.mu.Unlock()
		return errors.New("metering: Run called twice")
	}
	s.ran = true
	s.mu.Unlock()
	defer s.rdb.Close()

	if _, err := s.Listen(); err != nil {
		return err
	}
	defer s.gwconn.Close()

	foldCtx, stopFold := context.WithCancel(context.Background())
	folded := make(chan struct{})
	go func() {
		defer close(folded)
		s.folder.Run(foldCtx)
	}()
	err := s.srv.Serve(ctx, drain)
	stopFold()
	<-folded
	if err != nil {
		return err
	}
	s.log.Info("stopped")
	return nil
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
