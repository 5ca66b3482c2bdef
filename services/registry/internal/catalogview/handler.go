package catalogview

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Routes the handler serves, for mounting on a mux: every one answers GET
// (and HEAD).
var Routes = []string{"/asyncapi.json", "/asyncapi.yaml", "/catalog"}

// ErrUnavailable is the answer (503) when the catalog cannot be read: a
// loader or audience function returns it (or any error, for load) and logs
// the detail itself.
var ErrUnavailable = errors.New("the catalog is temporarily unavailable; retry later")

// Option configures Handler.
type Option func(*handler)

// WithAudience bounds what each request may see: audience returns the
// widest audience the caller is entitled to (INTERNAL sees everything), or
// an error to refuse the request with 401. A request that asks for a wider
// audience than that is refused with 403; one that asks for none gets the
// caller's. Without this option every request may see the whole catalog,
// so mount the handler behind authentication, or give this option.
func WithAudience(audience func(*http.Request) (registryv1.Audience, error)) Option {
	return WithCaller(func(r *http.Request) (Caller, error) {
		a, err := audience(r)
		return Caller{Audience: a}, err
	})
}

// Caller is who asks for a view: the widest audience it may see and, for an
// application key, its application. An application may name only itself
// in application=; any other id answers 404, as an unknown one does.
type Caller struct {
	Audience      registryv1.Audience
	ApplicationID string // empty: the operator, who may name any application
}

// WithCaller is WithAudience that also bounds the application filter.
func WithCaller(caller func(*http.Request) (Caller, error)) Option {
	return func(h *handler) { h.caller = caller }
}

type handler struct {
	load      func(context.Context) (*Catalog, error)
	serverURL string
	caller    func(*http.Request) (Caller, error)
	mux       *http.ServeMux
}

// Handler serves the catalog views, each narrowed by the query parameters
// domain=, product=, audience= (public, partner, internal) and
// application= (an application id):
//
//	GET /asyncapi.json  the AsyncAPI 3.0 document (application/json)
//	GET /asyncapi.yaml  the same document in YAML (application/yaml)
//	GET /catalog        a human-readable HTML page
//
// load reads the catalog on each request. serverURL is the edge's base URL
// put in the document's servers. Malformed filters answer 400; a domain,
// product or application the catalog does not hold answers 404.
func Handler(load func(ctx context.Context) (*Catalog, error), serverURL string, opts ...Option) http.Handler {
	h := &handler{load: load, serverURL: serverURL, mux: http.NewServeMux()}
	for _, o := range opts {
		o(h)
	}
	h.mux.HandleFunc("GET /asyncapi.json", h.serveAsyncAPI(false))
	h.mux.HandleFunc("GET /asyncapi.yaml", h.serveAsyncAPI(true))
	h.mux.HandleFunc("GET /catalog", h.serveCatalog)
	return h.mux
}

// prepare parses the filter, applies the caller's audience bound and loads
// the catalog. It answers the request itself when it returns false.
func (h *handler) prepare(w http.ResponseWriter, r *http.Request) (*Catalog, Filter, bool) {
	f, err := ParseFilter(r.URL.Query())
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return nil, Filter{}, false
	}
	// bridges is whose bridges the caller sees: "*" all (the operator),
	// an application id its own, "" none.
	bridges := "*"
	if h.caller != nil {
		caller, err := h.caller(r)
		bridges = caller.ApplicationID
		if bridges == "" && normAudience(caller.Audience) == registryv1.Audience_AUDIENCE_INTERNAL {
			bridges = "*"
		}
		allowed := caller.Audience
		if errors.Is(err, ErrUnavailable) {
			httpError(w, http.StatusServiceUnavailable, err.Error())
			return nil, Filter{}, false
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
			httpError(w, http.StatusUnauthorized, err.Error())
			return nil, Filter{}, false
		}
		if caller.ApplicationID != "" && f.Application != "" && f.Application != caller.ApplicationID {
			filterError(w, &NotFoundError{Kind: "application", Name: f.Application})
			return nil, Filter{}, false
		}
		allowed = normAudience(allowed)
		switch {
		case f.Audience == registryv1.Audience_AUDIENCE_UNSPECIFIED:
			if allowed != registryv1.Audience_AUDIENCE_INTERNAL {
				f.Audience = allowed
			}
		case normAudience(f.Audience) < allowed:
			httpError(w, http.StatusForbidden, fmt.Sprintf("audience %s is wider than this key may see (%s)",
				audienceName(f.Audience), audienceName(allowed)))
			return nil, Filter{}, false
		}
	}
	c, err := h.load(r.Context())
	if err != nil {
		// The loader's error may name Redis and its keys: the loader logs
		// it; the client gets the generic answer.
		httpError(w, http.StatusServiceUnavailable, ErrUnavailable.Error())
		return nil, Filter{}, false
	}
	if bridges == "*" && normAudience(f.Audience) != registryv1.Audience_AUDIENCE_INTERNAL {
		// A document for a narrower audience shows what that audience
		// would see: bridges are the operator's infrastructure.
		bridges = ""
	}
	if c != nil && bridges != "*" {
		// An application sees its own bridges only, as ListBridges says.
		own := *c
		own.Bridges = nil
		for _, b := range c.Bridges {
			if bridges != "" && b.GetApplicationId() == bridges {
				own.Bridges = append(own.Bridges, b)
			}
		}
		c = &own
	}
	return c, f, true
}

func (h *handler) serveAsyncAPI(asYAML bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, f, ok := h.prepare(w, r)
		if !ok {
			return
		}
		doc, err := AsyncAPI(c, f, h.serverURL)
		if err != nil {
			filterError(w, err)
			return
		}
		var body []byte
		if asYAML {
			body, err = doc.YAML()
			w.Header().Set("Content-Type", "application/yaml; charset=utf-8")
		} else {
			body, err = doc.JSON()
			w.Header().Set("Content-Type", "application/json")
		}
		if err != nil {
			httpError(w, http.StatusInternalServerError, "internal error")
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Herald-Revision", strconv.FormatInt(doc.Info.Revision, 10))
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body)
	}
}

func (h *handler) serveCatalog(w http.ResponseWriter, r *http.Request) {
	c, f, ok := h.prepare(w, r)
	if !ok {
		return
	}
	body, err := Page(c, f)
	if err != nil {
		filterError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// The page has no scripts and loads nothing.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'")
	if c != nil {
		w.Header().Set("X-Herald-Revision", strconv.FormatInt(c.Revision, 10))
	}
	_, _ = w.Write(body)
}

func filterError(w http.ResponseWriter, err error) {
	var nf *NotFoundError
	var bf *BadFilterError
	switch {
	case errors.As(err, &nf):
		httpError(w, http.StatusNotFound, err.Error())
	case errors.As(err, &bf):
		httpError(w, http.StatusBadRequest, err.Error())
	default:
		httpError(w, http.StatusInternalServerError, err.Error())
	}
}

func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, msg)
}
