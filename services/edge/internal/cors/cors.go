// Package cors lets browser pages of configured origins read the edge's
// plain HTTP channels (SSE streams, long polls) from another origin, with
// credentials (cookies, access tokens), as the Fetch standard's CORS
// protocol has it.
package cors

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Policy is the set of allowed origins; the zero value (and nil) allows none.
type Policy struct {
	any     bool
	origins map[string]bool
}

// New checks the origins: "*" (any origin) or scheme://host[:port].
func New(origins []string) (*Policy, error) {
	p := &Policy{origins: map[string]bool{}}
	for _, o := range origins {
		if o == "*" {
			p.any = true
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("CORS origin %q: give scheme://host[:port], like https://app.example.com, or *", o)
		}
		p.origins[strings.ToLower(u.Scheme+"://"+u.Host)] = true
	}
	return p, nil
}

// allowed reports whether a request's Origin may read the answer.
func (p *Policy) allowed(origin string) bool {
	if p == nil || origin == "" {
		return false
	}
	return p.any || p.origins[strings.ToLower(origin)]
}

// Wrap adds the CORS headers for allowed origins to next's answers. With
// credentials allowed, the origin is named, never "*".
func (p *Policy) Wrap(next http.Handler) http.Handler {
	if p == nil || (!p.any && len(p.origins) == 0) {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Add("Vary", "Origin")
		if origin := r.Header.Get("Origin"); p.allowed(origin) {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Expose-Headers", "Retry-After, Herald-Resume-Cursor, WWW-Authenticate")
		}
		next.ServeHTTP(w, r)
	})
}

// Preflight answers OPTIONS requests: allowed origins may send GET with
// the headers a stream or poll uses.
func (p *Policy) Preflight() http.Handler {
	return p.preflight("GET", "Authorization, Last-Event-ID, Cache-Control")
}

// rpcHeaders are what Connect, gRPC-Web and their browser clients
// (@connectrpc/connect-web) send and read.
const (
	rpcHeaders = "Authorization, Content-Type, Connect-Protocol-Version, Connect-Timeout-Ms, Grpc-Timeout, X-Grpc-Web, X-User-Agent"
	rpcExposed = "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Retry-After, Herald-Resume-Cursor"
)

// WrapRPC is Wrap for Connect and gRPC-Web handlers.
func (p *Policy) WrapRPC(next http.Handler) http.Handler {
	if p == nil || (!p.any && len(p.origins) == 0) {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Add("Vary", "Origin")
		if origin := r.Header.Get("Origin"); p.allowed(origin) {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Expose-Headers", rpcExposed)
		}
		next.ServeHTTP(w, r)
	})
}

// PreflightRPC answers OPTIONS requests for Connect and gRPC-Web calls.
func (p *Policy) PreflightRPC() http.Handler { return p.preflight("GET, POST", rpcHeaders) }

func (p *Policy) preflight(methods, headers string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Add("Vary", "Origin")
		h.Add("Vary", "Access-Control-Request-Method")
		h.Add("Vary", "Access-Control-Request-Headers")
		if origin := r.Header.Get("Origin"); p.allowed(origin) {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Allow-Methods", methods)
			h.Set("Access-Control-Allow-Headers", headers)
			h.Set("Access-Control-Max-Age", "600")
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
