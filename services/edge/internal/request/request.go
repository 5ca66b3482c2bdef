// Package request is what every delivery channel of the edge (SSE,
// StreamEvents, long polling) shares about a request: its types and
// patterns, the caller's grants, a CEL filter, a token's scope and the
// resume cursor; and, while the request is served, the re-checks that end
// it when the caller may no longer receive events. Channels are thin
// adapters over this package and the hub; none imports another.
package request

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/filter"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
)

// Scope is what a bearer token (a browser token minted by an application)
// allows on top of its application's grants. The zero value allows
// everything the grants allow.
type Scope struct {
	// Types are the patterns the bearer may receive; empty: every type the
	// application may. A request's patterns are narrowed to them.
	Types []string
	// Filter is a CEL filter ANDed with the request's own.
	Filter string
	// Expires ends the request (an open stream too) at that time; zero:
	// never.
	Expires time.Time
}

// Params is what a channel read from the wire.
type Params struct {
	// Types are type names or patterns, each possibly a comma-separated list.
	Types []string
	// Filter is a CEL expression over event and data (see platform/filter).
	Filter string
	// Cursor resumes after this entry id; "" starts with events published
	// from now on, "0" replays the retained log.
	Cursor string
	// JSONData asks for Protobuf and Avro data rendered as JSON.
	JSONData bool
}

// Request is a parsed request, checked against the caller's grants.
type Request struct {
	Patterns []string
	After    *eventlog.ID
	// Filter is the request's filter ANDed with the scope's; nil when
	// there is none.
	Filter *filter.Filter
	// Allow limits delivery to the types visible to the caller (nil: all).
	// It reads the caller's audience as last seen by the catalog.
	Allow func(eventType string) bool
	// Expires is when the request must end (the token's expiry); zero:
	// never.
	Expires time.Time
	// AsJSON, when the request asked for JSON data, renders an event's
	// Protobuf or Avro data as JSON (see hub.Event.WithJSONData); nil
	// otherwise.
	AsJSON func(*eventv1.CloudEvent) *eventv1.CloudEvent

	caller   auth.Principal
	audience atomic.Int32 // registryv1.Audience
}

// Caller is the authenticated principal of the request.
func (r *Request) Caller() auth.Principal { return r.caller }

// Options are what the hub needs of the request.
func (r *Request) Options() hub.Options {
	return hub.Options{After: r.After, Allow: r.Allow, Filter: r.Filter}
}

// Parser parses requests for one edge. Its zero value is not usable: build
// it with NewParser and run Run while requests are guarded.
type Parser struct {
	cat     *catalog.Cache
	filters *filterCache
	guards  *guards
	quotas  *quota.Cache
	// ScopeOf, when set, gives the scope of a caller's token (nil: none).
	// It is how a token's claims reach every channel in one place.
	ScopeOf func(auth.Principal) *Scope
}

// NewParser returns a parser over the catalog.
func NewParser(cat *catalog.Cache) *Parser {
	return &Parser{cat: cat, filters: newFilterCache(filterCacheSize), guards: newGuards(cat)}
}

// Parse reads the types, filter and resume cursor of a request and checks
// them against the caller (from ctx) and its token's scope. Exact names
// must be registered and visible to the caller; patterns may match
// nothing yet, and deliver only the types visible to the caller. Errors
// are connect errors meant for the client.
func (p *Parser) Parse(ctx context.Context, in Params) (*Request, error) {
	caller, _ := auth.FromContext(ctx)
	var scope *Scope
	if p.ScopeOf != nil {
		scope = p.ScopeOf(caller)
	}
	types := in.Types
	if scope != nil && len(scope.Types) > 0 && !hasTypes(types) {
		types = scope.Types
	}
	patterns, err := eventtype.ParsePatterns(types)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	req := &Request{caller: caller}
	if in.JSONData {
		req.AsJSON = p.cat.JSONData
	}
	if scope != nil {
		if !scope.Expires.IsZero() && !time.Now().Before(scope.Expires) {
			return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("the token has expired"))
		}
		req.Expires = scope.Expires
		if patterns, err = narrow(patterns, scope.Types); err != nil {
			return nil, err
		}
	}
	if req.Filter, err = p.filter(in.Filter, scope); err != nil {
		return nil, err
	}
	var app *registryv1.Application
	if !caller.Admin {
		if app, err = p.cat.Application(ctx, caller.ApplicationID); err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("cannot load the grants of %s: %w", caller.ApplicationID, err))
		}
		if ce := OverQuota(p.quotas, app); ce != nil {
			return nil, ce
		}
	}
	for _, pat := range patterns {
		if app != nil && !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, pat) {
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s has no subscribe grant covering %s", app.GetId(), pat))
		}
		if strings.Contains(pat, "*") {
			continue
		}
		t, err := p.cat.Lookup(ctx, pat)
		if errors.Is(err, catalog.ErrUnknownType) || (err == nil && app != nil && !access.Visible(app.GetAudience(), t.GetVisibility())) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("event type %s is not registered", pat))
		} else if err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, err)
		}
	}
	req.Patterns = patterns
	if app != nil {
		req.audience.Store(int32(app.GetAudience()))
		cat := p.cat
		req.Allow = func(eventType string) bool {
			t, ok := cat.Get(eventType)
			return ok && access.Visible(registryv1.Audience(req.audience.Load()), t.GetVisibility())
		}
	}
	if in.Cursor == "" {
		return req, nil
	}
	id, err := eventlog.ParseID(in.Cursor)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	req.After = &id
	return req, nil
}

func hasTypes(types []string) bool {
	for _, t := range types {
		if strings.Trim(t, " ,") != "" {
			return true
		}
	}
	return false
}

// narrow intersects the requested patterns with a scope's: each requested
// pattern is kept where a scope pattern covers it, or replaced by the scope
// patterns it covers. A requested pattern that meets none of the scope's
// is refused rather than silently dropped.
func narrow(patterns, scope []string) ([]string, error) {
	if len(scope) == 0 {
		return patterns, nil
	}
	var out []string
	add := func(p string) {
		for _, q := range out {
			if q == p {
				return
			}
		}
		out = append(out, p)
	}
	for _, p := range patterns {
		met := false
		for _, s := range scope {
			switch {
			case access.Covers(s, p):
				add(p)
				met = true
			case access.Covers(p, s):
				add(s)
				met = true
			}
		}
		if !met {
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("the token does not allow %s: it allows %s", p, strings.Join(scope, ", ")))
		}
	}
	return out, nil
}

// filter compiles the request's filter ANDed with the scope's, through
// the shared cache.
func (p *Parser) filter(expr string, scope *Scope) (*filter.Filter, error) {
	var scoped string
	if scope != nil {
		scoped = strings.TrimSpace(scope.Filter)
	}
	expr = strings.TrimSpace(expr)
	if expr != "" {
		if _, err := p.filters.get(expr); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("filter: %v", err))
		}
	}
	if scoped != "" {
		if _, err := p.filters.get(scoped); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("the token's filter: %v", err))
		}
	}
	combined := expr
	switch {
	case expr == "" && scoped == "":
		return nil, nil
	case expr == "":
		combined = scoped
	case scoped != "":
		combined = "(" + scoped + ") && (" + expr + ")"
	}
	f, err := p.filters.get(combined)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("filter, with the token's: %v", err))
	}
	return f, nil
}

// Refusal is the connect error that ended a guarded request, if any.
func Refusal(guarded context.Context) *connect.Error {
	var ce *connect.Error
	if errors.As(context.Cause(guarded), &ce) {
		return ce
	}
	return nil
}

// StreamError is the client's answer to a hub error: what the client
// can act on, and no internals.
func StreamError(err error) error {
	var ahead *hub.CursorAheadError
	if errors.As(err, &ahead) {
		return connect.NewError(connect.CodeInvalidArgument, ahead)
	}
	var lagged *hub.LaggedError
	if errors.As(err, &lagged) {
		ce := connect.NewError(connect.CodeAborted, lagged)
		ce.Meta().Set(CursorHeader, lagged.Cursor.String())
		return ce
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	return connect.NewError(connect.CodeUnavailable, errors.New("cannot read the log; retry later"))
}

// CursorHeader names the cursor to resume after in an error's metadata.
const CursorHeader = "Herald-Resume-Cursor"

// Delivered is told about every event a channel handed to its client.
type Delivered func(ctx context.Context, ev *hub.Event)

// GapJSON is a gap notice in JSON, as SSE and long polling send it:
// {"from": cursor, "to": cursor, "resume": cursor, "types": [...]}.
type GapJSON struct {
	// From is the cursor the client resumed after.
	From string `json:"from"`
	// To is the newest cursor that may have been trimmed.
	To string `json:"to"`
	// Resume is the oldest cursor still retained after To; absent when
	// nothing is left.
	Resume string `json:"resume,omitempty"`
	// Types lost events.
	Types []string `json:"types"`
}

// NewGapJSON is g for the wire.
func NewGapJSON(g hub.Gap) GapJSON {
	j := GapJSON{From: g.From.String(), To: g.To.String(), Types: g.Types}
	if g.Resume != eventlog.Zero {
		j.Resume = g.Resume.String()
	}
	return j
}

// DataMode reads the data= query parameter of the HTTP channels: "json"
// renders Protobuf and Avro data as JSON; "" or "binary" keeps it in
// data_base64.
func DataMode(v string) (jsonData bool, err error) {
	switch v {
	case "", "binary":
		return false, nil
	case "json":
		return true, nil
	}
	return false, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("data=%q: use data=json (Protobuf and Avro data as JSON) or data=binary (data_base64, the default)", v))
}
