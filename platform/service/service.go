// Package service is the bootstrap every Herald service shares: logger,
// metrics, authenticator, the one-port server, Redis, and a lifecycle that
// runs background loops beside the server and stops them all on shutdown.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/server"
	"github.com/heraldmesh/herald/platform/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
)

// Base holds what a service is made of besides its own handlers.
type Base struct {
	Name    string
	Addr    string
	Log     *slog.Logger
	Metrics *prometheus.Registry
	Auth    *auth.Authenticator
	Server  *server.Server
	Redis   redis.UniversalClient

	rpcMetrics *telemetry.RPCMetrics
	loops      []func(context.Context) error
}

// Options configure New.
type Options struct {
	Name     string
	Addr     string
	Common   config.Common
	Logger   *slog.Logger  // nil: JSON logs to stderr
	Resolver auth.Resolver // how application keys are checked
	// RedisPool sizes the Redis connection pool (0: go-redis default).
	RedisPool int
}

// New validates the common settings and builds the base.
func New(o Options) (*Base, error) {
	if err := o.Common.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", o.Name, err)
	}
	if o.Addr == "" {
		return nil, fmt.Errorf("%s: no listen address", o.Name)
	}
	log := serviceLogger(o)
	rdb, err := config.OpenRedis(o.Common.RedisURL, o.RedisPool)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Name, err)
	}
	authn, err := auth.New(auth.Options{AdminKey: o.Common.AdminKey, Resolver: o.Resolver})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Name, err)
	}
	metrics := telemetry.Registry()
	b := &Base{
		Name: o.Name, Addr: o.Addr, Log: log, Metrics: metrics, Auth: authn, Redis: rdb,
		Server:     server.New(o.Name, log, metrics),
		rpcMetrics: telemetry.NewRPCMetrics(metrics),
	}
	// Authentication happens in the server, from the headers, before any
	// body is read; the interceptor then finds the principal in the context.
	b.Server.Configure(server.Options{Auth: authn, BodyReadTimeout: o.Common.BodyReadTimeout, MaxConnections: o.Common.MaxConnections, ShutdownDelay: o.Common.ShutdownDelay})
	b.Server.OnReady(config.PingRedis(rdb))
	return b, nil
}

// serviceLogger is o.Logger tagged with the service name, or JSON to stderr.
func serviceLogger(o Options) *slog.Logger {
	if o.Logger != nil {
		return o.Logger.With("service", o.Name)
	}
	return telemetry.Logger(os.Stderr, o.Name, slog.LevelInfo)
}

// HandlerOptions are the Connect handler options of every authenticated
// service handler: metrics, then the error rule (ErrorInterceptor), then
// authentication. Responses smaller than
// compressMinBytes are sent uncompressed even to clients that accept gzip:
// gzip costs more CPU than it saves on small messages, such as one event
// of a stream.
func (b *Base) HandlerOptions(extra ...connect.HandlerOption) []connect.HandlerOption {
	return append([]connect.HandlerOption{
		connect.WithInterceptors(b.rpcMetrics, ErrorInterceptor(b.Log), b.Auth.Interceptor()),
		connect.WithReadMaxBytes(8 << 20),
		connect.WithCompressMinBytes(compressMinBytes),
	}, extra...)
}

const compressMinBytes = 4 << 10

// GatewayInterceptors are the interceptors an in-process REST gateway runs
// around a handler: the error rule, then authentication (which passes a
// principal the HTTP middleware already set). RPC metrics are left out: a
// gateway request carries no procedure name.
func (b *Base) GatewayInterceptors() []connect.Interceptor {
	return []connect.Interceptor{ErrorInterceptor(b.Log), b.Auth.Interceptor()}
}

// Go adds a background loop that runs while the service runs. Its context
// ends at shutdown; a loop returning an error stops the service.
func (b *Base) Go(loop func(context.Context) error) { b.loops = append(b.loops, loop) }

// Listen binds the listen address (idempotent).
func (b *Base) Listen() (net.Addr, error) {
	if a := b.Server.Addr(); a != nil {
		return a, nil
	}
	return b.Server.Listen(b.Addr)
}

// Run serves until ctx ends, then shuts down: the server drains (streams end
// first), the loops stop, and Redis closes last.
func (b *Base) Run(ctx context.Context) error {
	if _, err := b.Listen(); err != nil {
		return err
	}
	defer b.Redis.Close()
	loopCtx, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLoops()
	if err := pprofFromEnv(loopCtx); err != nil {
		return fmt.Errorf("%s: %w", b.Name, err)
	}
	g, gctx := errgroup.WithContext(loopCtx)
	for _, loop := range b.loops {
		g.Go(func() error { return loop(gctx) })
	}
	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	loopsDone := make(chan error, 1)
	go func() {
		err := g.Wait()
		if err != nil {
			stopServe() // a failed loop takes the service down
		}
		loopsDone <- err
	}()
	serveErr := b.Server.Serve(serveCtx, 10*time.Second)
	stopLoops()
	loopErr := <-loopsDone
	if loopErr != nil && !errors.Is(loopErr, context.Canceled) {
		return fmt.Errorf("%s: %w", b.Name, loopErr)
	}
	return serveErr
}

// NewWithCatalog builds the base of a service that follows the registry:
// a catalog cache fed by the registry's Watch stream, which also resolves
// application keys locally (a revoked key stops working as soon as the
// change arrives). The cache runs with the service and gates readiness.
func NewWithCatalog(o Options) (*Base, *catalog.Cache, error) {
	client := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(o.Common.RegistryAddr), rpc.ClientOptions(o.Common.AdminKey)...)
	cat := catalog.New(client, serviceLogger(o))
	o.Resolver = cat
	b, err := New(o)
	if err != nil {
		return nil, nil, err
	}
	cat.OnKeyChange(b.Auth.Forget)
	b.Server.OnReady(cat.Ready)
	b.Go(cat.Run)
	return b, cat, nil
}

// RegistryResolver checks application keys with the registry's
// AuthenticateKey RPC, authenticated with the admin key.
func RegistryResolver(registryAddr, adminKey string) auth.Resolver {
	client := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(registryAddr), rpc.ClientOptions(adminKey)...)
	return auth.ResolverFunc(func(ctx context.Context, keyHash string) (auth.Principal, error) {
		res, err := client.AuthenticateKey(ctx, connect.NewRequest(&registryv1.AuthenticateKeyRequest{KeyHash: keyHash}))
		if err != nil {
			if connect.CodeOf(err) == connect.CodeNotFound {
				return auth.Principal{}, auth.ErrUnknownKey
			}
			return auth.Principal{}, err
		}
		return auth.Principal{ApplicationID: res.Msg.GetKey().GetApplicationId(), KeyID: res.Msg.GetKey().GetId()}, nil
	})
}

// RunFromEnv builds a service from its settings in the environment and
// runs it until ctx ends: what each service's binary does. fromEnv is the
// service's ConfigFromEnv, build its New.
func RunFromEnv[C any, S interface{ Run(context.Context) error }](ctx context.Context, fromEnv func() (C, error), build func(C) (S, error)) error {
	cfg, err := fromEnv()
	if err != nil {
		return err
	}
	svc, err := build(cfg)
	if err != nil {
		return err
	}
	return svc.Run(ctx)
}
