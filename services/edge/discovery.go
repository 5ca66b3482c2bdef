package edge

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/edge/internal/discovery"
)

// discoveryLinks are the services' public base URLs for GET /apis.json:
// the *_PUBLIC_URL settings, else each service's address. The edge's own,
// unset, is its bound address (known once it listens).
func discoveryLinks(cfg Config) (discovery.Links, error) {
	var l discovery.Links
	for _, u := range []struct {
		name, value, addr string
		dst               *string
	}{
		{"HERALD_PUBLIC_URL", cfg.PublicURL, "", &l.Edge},
		{"HERALD_REGISTRY_PUBLIC_URL", cfg.RegistryPublicURL, cfg.RegistryAddr, &l.Registry},
		{"HERALD_ROUTER_PUBLIC_URL", cfg.RouterPublicURL, cfg.RouterAddr, &l.Router},
		{"HERALD_METERING_PUBLIC_URL", cfg.MeteringPublicURL, cfg.MeteringAddr, &l.Metering},
	} {
		if u.value == "" {
			if u.addr != "" {
				*u.dst = config.AddrURL(u.addr)
			}
			continue
		}
		v, err := config.CheckPublicURL(u.name, u.value)
		if err != nil {
			return l, fmt.Errorf("edge: %w", err)
		}
		*u.dst = v
	}
	if l.Registry == "" {
		l.Registry = config.AddrURL(config.DefaultRegistryAddr)
	}
	if l.Router == "" {
		l.Router = config.AddrURL(config.DefaultRouterAddr)
	}
	if l.Metering == "" {
		l.Metering = config.AddrURL(config.DefaultMeteringAddr)
	}
	return l, nil
}

// apisJSON serves GET /apis.json (see package discovery) to callers with a
// key: what it lists depends on the caller's grants.
func apisJSON(base *service.Base, cat *catalog.Cache, links discovery.Links) http.Handler {
	started := time.Now()
	h := base.Auth.Middleware(false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l := links
		if l.Edge == "" {
			if a := base.Server.Addr(); a != nil {
				l.Edge = config.AddrURL(a.String())
			}
		}
		caller, err := discoveryCaller(r, cat)
		if err != nil {
			if !errors.Is(err, auth.ErrUnknownKey) {
				base.Log.Error("apis.json: reading the caller's application", "err", err.Error())
				err = connect.NewError(connect.CodeUnavailable, errors.New("the catalog is temporarily unavailable; retry later"))
			} else {
				err = connect.NewError(connect.CodeUnauthenticated, err)
			}
			auth.WriteError(w, r, err)
			return
		}
		if err := discovery.Write(w, discovery.Build(l, caller, started, time.Now())); err != nil {
			base.Log.Error("apis.json: encoding", "err", err.Error())
			auth.WriteError(w, r, err)
		}
	}))
	base.Server.HandleHTTP("GET "+discovery.Path, h)
	return h
}

// discoveryCaller is what the document needs to know of the caller.
func discoveryCaller(r *http.Request, cat *catalog.Cache) (discovery.Caller, error) {
	p, _ := auth.FromContext(r.Context())
	if p.Admin {
		return discovery.Caller{Admin: true}, nil
	}
	app, err := cat.Application(r.Context(), p.ApplicationID)
	if connect.CodeOf(err) == connect.CodeNotFound {
		return discovery.Caller{}, auth.ErrUnknownKey
	}
	if err != nil {
		return discovery.Caller{}, err
	}
	c := discovery.Caller{Audience: app.GetAudience()}
	for _, g := range app.GetGrants() {
		switch g.GetAction() {
		case registryv1.GrantAction_GRANT_ACTION_PUBLISH:
			c.Publish = true
		case registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE:
			c.Subscribe = true
		}
	}
	return c, nil
}
