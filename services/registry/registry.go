// Package registry is Herald's catalog service: event types with their JSON
// Schemas, and the applications that publish and consume them, with their
// keys. New builds it; Run serves it on one port.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/registry/internal/api"
	"github.com/heraldmesh/herald/services/registry/internal/catalogview"
	"github.com/heraldmesh/herald/services/registry/internal/store"
)

// Config configures the registry.
type Config struct {
	config.Common
	// Addr is the listen address; default Common.RegistryAddr.
	Addr string
	// Logger; nil logs JSON to stderr.
	Logger *slog.Logger
	// ChangeLogEntries is about how many catalog changes the change log
	// keeps for Watch streams to resume from; a router or edge that was
	// away for more changes than that reloads the whole catalog. Default
	// 100000.
	ChangeLogEntries int
}

// Service is a configured registry.
type Service struct{ base *service.Base }

// New builds the registry. It does not listen or contact Redis yet.
func New(cfg Config) (*Service, error) {
	if cfg.Addr == "" {
		cfg.Addr = cfg.RegistryAddr
	}
	if cfg.ChangeLogEntries < 0 {
		return nil, fmt.Errorf("registry: the change log cannot keep %d entries", cfg.ChangeLogEntries)
	}
	if cfg.ChangeLogEntries == 0 {
		cfg.ChangeLogEntries = store.DefaultChangeLogLimit
	}
	var h *api.Handler
	var log *slog.Logger
	base, err := service.New(service.Options{
		Name: "registry", Addr: cfg.Addr, Common: cfg.Common, Logger: cfg.Logger,
		// The registry checks keys against its own store.
		Resolver: auth.ResolverFunc(func(ctx context.Context, hash string) (auth.Principal, error) {
			p, err := h.Resolver().ResolveKey(ctx, hash)
			if err != nil && !errors.Is(err, auth.ErrUnknownKey) {
				// The store's error names the key hash and Redis: log it,
				// answer without it (HTTP routes write this message).
				log.Error("checking a key", "err", err.Error())
				return p, errKeyStore
			}
			return p, err
		}),
	})
	if err != nil {
		return nil, err
	}
	log = base.Log
	st := store.New(base.Redis).WithChangeLogLimit(int64(cfg.ChangeLogEntries))
	h = api.New(st, base.Server.StreamContext())
	base.Server.Handle(registryv1connect.NewRegistryServiceHandler(h, base.HandlerOptions()...))

	// The catalog as documents: AsyncAPI 3.0 and a page for people, each
	// narrowed to what the caller's audience may see.
	load := func(ctx context.Context) (*catalogview.Catalog, error) {
		snap, err := st.Snapshot(ctx)
		if err != nil {
			log.Error("reading the catalog", "err", err.Error())
			return nil, errCatalog
		}
		return (*catalogview.Catalog)(snap), nil
	}
	caller := func(r *http.Request) (catalogview.Caller, error) {
		p, _ := auth.FromContext(r.Context())
		if p.Admin {
			return catalogview.Caller{Audience: registryv1.Audience_AUDIENCE_INTERNAL}, nil
		}
		app, err := st.GetApplication(r.Context(), p.ApplicationID)
		if errors.Is(err, store.ErrNotFound) {
			return catalogview.Caller{}, auth.ErrUnknownKey
		}
		if err != nil {
			log.Error("reading the caller's application", "err", err.Error())
			return catalogview.Caller{}, errCatalog
		}
		return catalogview.Caller{Audience: app.GetAudience(), ApplicationID: app.GetId()}, nil
	}
	views := base.Auth.Middleware(true, catalogview.Handler(load, rpc.BaseURL(cfg.EdgeAddr), catalogview.WithCaller(caller)))
	for _, route := range []string{"GET /asyncapi.json", "GET /asyncapi.yaml", "GET /catalog"} {
		base.Server.HandleHTTP(route, views)
	}
	return &Service{base: base}, nil
}

// What the catalog routes answer when Redis fails; the detail is logged.
var (
	errKeyStore = errors.New("the key store is unavailable; retry later")
	errCatalog  = catalogview.ErrUnavailable
)

// Listen binds the listen address, so that Addr is known before Run.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }
