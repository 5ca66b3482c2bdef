// Package registry is Herald's catalog service: event types with their JSON
// Schemas, and the applications that publish and consume them, with their
// keys. New builds it; Run serves it on one port.
package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/secretbox"
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

	// WebhookOrigin is the WebHook-Request-Origin of the CloudEvents
	// abuse-protection handshake that validates webhook endpoints
	// (HERALD_REGISTRY_WEBHOOK_ORIGIN); default the host of
	// Common.PublicURL.
	WebhookOrigin string
	// WebhookResolver resolves the host names of webhook endpoints, for the
	// URL check at creation and the validation requests; nil is the
	// system's resolver. Tests give one whose answers they choose; the
	// allowlist is Common.WebhookAllow.
	WebhookResolver safehttp.Resolver
	// WebhookMinDisableAfter is the shortest disable_after an endpoint may
	// ask for (HERALD_REGISTRY_WEBHOOK_MIN_DISABLE_AFTER); default the
	// contract's one minute. Tests lower it.
	WebhookMinDisableAfter time.Duration
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
	hooks, err := webhookSettings(&cfg)
	if err != nil {
		return nil, err
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
	h = api.New(st, base.Server.StreamContext()).WithWebhooks(hooks)
	// The herald domain and its types, registered once Redis answers; the
	// registry is not ready until they are.
	var meshReady atomic.Bool
	base.Go(func(ctx context.Context) error {
		bo := backoff.New(backoff.Options{})
		migrated := false
		for {
			var err error
			if !migrated {
				// First move an older registry's catalog to the
				// hash-tagged keys, before anything is written.
				var n int
				if n, err = st.MigrateLayout(ctx); err == nil {
					migrated = true
					if n > 0 {
						log.Info("moved the catalog under the {registry} hash tag", "keys", n)
					}
				}
			}
			if err == nil {
				err = h.EnsureMeshCatalog(ctx)
			}
			if err == nil {
				meshReady.Store(true)
				return nil
			}
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("registering the herald domain; retrying", "err", err.Error())
			if !backoff.Sleep(ctx, bo.Next()) {
				return nil
			}
		}
	})
	base.Server.OnReady(func(context.Context) error {
		if !meshReady.Load() {
			return errMeshCatalog
		}
		return nil
	})
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
	// The AsyncAPI servers are the edge as consumers reach it.
	views := base.Auth.Middleware(true, catalogview.Handler(load, hooks.PublicURL, catalogview.WithCaller(caller)))
	for _, route := range []string{"GET /asyncapi.json", "GET /asyncapi.yaml", "GET /catalog"} {
		base.Server.HandleHTTP(route, views)
	}
	return &Service{base: base}, nil
}

// What the catalog routes answer when Redis fails; the detail is logged.
var (
	errKeyStore = errors.New("the key store is unavailable; retry later")
	errCatalog  = catalogview.ErrUnavailable
	// errMeshCatalog is the readiness failure until the herald domain is
	// registered.
	errMeshCatalog = errors.New("the herald domain is not registered yet")
)

// webhookSettings derives what webhook endpoints need from the
// configuration: the secret box (none without HERALD_SECRET_KEY), the
// outbound policy, the public URL and the handshake's origin.
func webhookSettings(cfg *Config) (api.Webhooks, error) {
	var w api.Webhooks
	if cfg.SecretKey != "" {
		box, err := secretbox.New(strings.Split(cfg.SecretKey, ",")...)
		if err != nil {
			return w, fmt.Errorf("registry: HERALD_SECRET_KEY: %w", err)
		}
		w.Box = box
	}
	policy, err := safehttp.ParsePolicy(cfg.WebhookAllow)
	if err != nil {
		return w, fmt.Errorf("registry: HERALD_WEBHOOK_ALLOW: %w", err)
	}
	policy.Resolver = cfg.WebhookResolver
	w.Policy = policy
	w.PublicURL = strings.TrimSuffix(cfg.PublicURL, "/")
	if w.PublicURL == "" {
		w.PublicURL = "http://" + cmp.Or(cfg.EdgeAddr, config.DefaultEdgeAddr)
	}
	u, err := url.Parse(w.PublicURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return w, fmt.Errorf("registry: HERALD_PUBLIC_URL %q is not an absolute http or https URL", w.PublicURL)
	}
	w.Origin = cmp.Or(cfg.WebhookOrigin, u.Hostname())
	w.MinDisableAfter = cfg.WebhookMinDisableAfter
	if !validOrigin(w.Origin) {
		return w, fmt.Errorf("registry: HERALD_REGISTRY_WEBHOOK_ORIGIN %q is not a host name", w.Origin)
	}
	return w, nil
}

// validOrigin reports whether s can be a WebHook-Request-Origin: a host
// name (or address) without spaces or control characters.
func validOrigin(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f || c == '/' || c == ',' {
			return false
		}
	}
	return true
}

// Listen binds the listen address, so that Addr is known before Run.
func (s *Service) Listen() (net.Addr, error) { return s.base.Listen() }

// Run serves until ctx ends, then shuts down gracefully.
func (s *Service) Run(ctx context.Context) error { return s.base.Run(ctx) }
