package request

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/quota"
)

// recheckEvery is how often open requests are re-checked without a
// catalog change: a key's expiry is announced by no change.
const recheckEvery = time.Second

// guards re-checks every open request of the edge with one goroutine, on
// each catalog change and every recheckEvery: no goroutine nor timer per
// request but a token expiry's, so that an idle stream costs little.
type guards struct {
	cat    *catalog.Cache
	quotas *quota.Cache // nil: no quotas

	mu   sync.Mutex
	open map[*guard]struct{}
}

type guard struct {
	req    *Request
	cancel context.CancelCauseFunc
	expiry *time.Timer // the token's expiry, if any
}

func newGuards(cat *catalog.Cache) *guards {
	return &guards{cat: cat, open: map[*guard]struct{}{}}
}

// Run re-checks guarded requests until ctx ends. Requests guarded while it
// does not run are checked once, when guarded.
func (p *Parser) Run(ctx context.Context) error {
	g := p.guards
	t := time.NewTicker(recheckEvery)
	defer t.Stop()
	for {
		updated, quotas := g.cat.Updated(), g.quotas.Changed()
		g.recheckAll(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-quotas: // a hard quota reached ends open streams at once
		case <-updated:
		case <-t.C:
		}
	}
}

// Guard watches a request while it is served: the returned context ends
// when ctx does or when the caller may no longer receive events (a revoked
// or expired key, withdrawn grants, a deleted application, the token's
// expiry); context.Cause (see Refusal) is then the connect error to end
// with. A changed audience narrows or widens the visible types at once.
// stop ends the watch.
func (p *Parser) Guard(ctx context.Context, r *Request) (guarded context.Context, stop func()) {
	guarded, cancel := context.WithCancelCause(ctx)
	g := &guard{req: r, cancel: cancel}
	if !r.Expires.IsZero() {
		g.expiry = time.AfterFunc(time.Until(r.Expires), func() {
			cancel(connect.NewError(connect.CodeUnauthenticated, errors.New("the token of this stream has expired")))
		})
	}
	if r.caller.Admin || r.caller.ApplicationID == "" {
		// The operator key is never revoked.
		return guarded, func() {
			if g.expiry != nil {
				g.expiry.Stop()
			}
			cancel(nil)
		}
	}
	gs := p.guards
	gs.mu.Lock()
	gs.open[g] = struct{}{}
	gs.mu.Unlock()
	// A change between Parse and now is seen here; later ones by Run.
	if err := newCheck(gs.cat, gs.quotas).request(guarded, r); err != nil {
		cancel(err)
	}
	return guarded, func() {
		gs.mu.Lock()
		delete(gs.open, g)
		gs.mu.Unlock()
		if g.expiry != nil {
			g.expiry.Stop()
		}
		cancel(nil)
	}
}

func (g *guards) recheckAll(ctx context.Context) {
	g.mu.Lock()
	open := make([]*guard, 0, len(g.open))
	for o := range g.open {
		open = append(open, o)
	}
	g.mu.Unlock()
	c := newCheck(g.cat, g.quotas)
	for _, o := range open {
		if err := c.request(ctx, o.req); err != nil {
			o.cancel(err)
		}
	}
}

// check is one pass of re-checks: each application is looked up once per
// pass, however many requests it has open.
type check struct {
	cat    *catalog.Cache
	quotas *quota.Cache
	apps   map[string]appResult
}

type appResult struct {
	app *registryv1.Application
	err error
}

func newCheck(cat *catalog.Cache, quotas *quota.Cache) *check {
	return &check{cat: cat, quotas: quotas, apps: map[string]appResult{}}
}

func (c *check) request(ctx context.Context, r *Request) error {
	if r.caller.KeyID != "" && c.cat.KeyRevoked(r.caller.KeyID) {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("the key of this stream was revoked or has expired"))
	}
	id := r.caller.ApplicationID
	res, ok := c.apps[id]
	if !ok {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res.app, res.err = c.cat.Application(lctx, id)
		cancel()
		c.apps[id] = res
	}
	if res.err != nil {
		switch connect.CodeOf(res.err) {
		case connect.CodeNotFound, connect.CodePermissionDenied:
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s no longer exists", id))
		}
		return nil // the registry is unreachable: keep what was granted
	}
	for _, p := range r.Patterns {
		if !access.Allowed(res.app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, p) {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s no longer has a subscribe grant covering %s", res.app.GetId(), p))
		}
	}
	r.audience.Store(int32(res.app.GetAudience()))
	if ce := OverQuota(c.quotas, res.app); ce != nil {
		return ce
	}
	return nil
}
