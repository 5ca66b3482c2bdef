// Package dashboard is metering's operator dashboard: one self-contained
// page (GET /dashboard, embedded, loading nothing from the network) and the
// browser sessions it runs on.
//
// Sign-in (POST /dashboard/session with the operator key) sets a cookie
// holding a random session id; Redis keeps only the id's SHA-256, with a
// TTL, never the key. The cookie is HttpOnly, SameSite=Strict, Secure over
// TLS, and expires with the session. The /v1/ REST routes accept that
// cookie besides a bearer key (Middleware); a request authenticated by the
// cookie that changes state (any method but GET, HEAD, OPTIONS) must come
// from the dashboard's own origin: Sec-Fetch-Site same-origin, or, from a
// browser that sends no Sec-Fetch-Site, an Origin equal to the request's
// own. Sign-in and sign-out pass the same check.
package dashboard

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/server"
	"github.com/redis/go-redis/v9"
)

//go:embed dashboard.html
var page []byte

// CookieName is the session cookie.
const CookieName = "herald_dashboard"

// DefaultTTL is how long a session lasts by default.
const DefaultTTL = 30 * time.Minute

// keyPrefix is where sessions live in Redis: keyPrefix + hex SHA-256 of the
// session id.
const keyPrefix = "herald:{dashboard}:session:"

// Handler serves the page and its sessions.
type Handler struct {
	auth *auth.Authenticator
	rdb  redis.UniversalClient
	ttl  time.Duration
	log  *slog.Logger
}

// New returns the dashboard's handler. ttl <= 0: DefaultTTL.
func New(a *auth.Authenticator, rdb redis.UniversalClient, ttl time.Duration, log *slog.Logger) *Handler {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Handler{auth: a, rdb: rdb, ttl: ttl, log: log}
}

// SessionKey is the Redis key of a session id.
func SessionKey(id string) string { return keyPrefix + auth.HashSecret(id) }

// ServePage serves the page. It holds no data: everything it shows is
// fetched from the /v1/ routes with the session.
func (h *Handler) ServePage(w http.ResponseWriter, r *http.Request) { servePage(w, r) }

var servePage = server.Page(page)

// SignIn is POST /dashboard/session: form field key, the operator key.
func (h *Handler) SignIn(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		auth.WriteError(w, r, err)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New("send the operator key as the form field key")))
		return
	}
	key := strings.TrimSpace(r.PostForm.Get("key"))
	if key == "" {
		auth.WriteError(w, r, connect.NewError(connect.CodeUnauthenticated, errors.New("enter the operator key")))
		return
	}
	p, err := h.auth.AuthenticateFrom(r.Context(), key, r.RemoteAddr)
	if err != nil {
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			err = connect.NewError(connect.CodeUnauthenticated, errors.New("unknown or revoked key"))
		}
		auth.WriteError(w, r, err)
		return
	}
	if !p.Admin {
		auth.WriteError(w, r, connect.NewError(connect.CodePermissionDenied, errors.New("the dashboard needs the operator key; an application key cannot sign in")))
		return
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	id := base64.RawURLEncoding.EncodeToString(b)
	if err := h.rdb.Set(r.Context(), SessionKey(id), "admin", h.ttl).Err(); err != nil {
		h.log.Warn("dashboard: session not stored", "err", err)
		auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, errors.New("the session could not be stored; retry later")))
		return
	}
	expires := time.Now().Add(h.ttl)
	http.SetCookie(w, h.cookie(r, id, int(h.ttl/time.Second), expires))
	writeJSON(w, http.StatusOK, map[string]any{"expiresAt": expires.UTC().Format(time.RFC3339)})
}

// SignOut is DELETE /dashboard/session: the session ends and its cookie is
// cleared.
func (h *Handler) SignOut(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		auth.WriteError(w, r, err)
		return
	}
	if c, err := r.Cookie(CookieName); err == nil && c.Value != "" {
		if err := h.rdb.Del(r.Context(), SessionKey(c.Value)).Err(); err != nil {
			h.log.Warn("dashboard: session not deleted", "err", err)
			auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, errors.New("the session could not be ended; retry later")))
			return
		}
	}
	http.SetCookie(w, h.cookie(r, "", -1, time.Unix(0, 0)))
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) cookie(r *http.Request, value string, maxAge int, expires time.Time) *http.Cookie {
	return &http.Cookie{
		Name: CookieName, Value: value, Path: "/", MaxAge: maxAge, Expires: expires,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	}
}

// Middleware authenticates the /v1/ routes: a bearer key (or whatever
// auth.Authenticator.Request accepts) as before, or else the session
// cookie, with the same-origin check on state-changing requests. The
// principal goes into the context, where auth.Middleware and the gateway's
// interceptors find it.
func (h *Handler) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(CookieName)
		if auth.BearerToken(r.Header) != "" || r.URL.Query().Has("access_token") || err != nil || c.Value == "" {
			p, err := h.auth.Request(r, true)
			if err != nil {
				auth.WriteError(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
			return
		}
		p, err := h.session(r.Context(), c.Value)
		if err != nil {
			auth.WriteError(w, r, err)
			return
		}
		if !safeMethod(r.Method) {
			if err := sameOrigin(r); err != nil {
				auth.WriteError(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	})
}

// session resolves a session id.
func (h *Handler) session(ctx context.Context, id string) (auth.Principal, error) {
	v, err := h.rdb.Get(ctx, SessionKey(id)).Result()
	if errors.Is(err, redis.Nil) {
		return auth.Principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("the dashboard session has ended or expired; sign in again"))
	}
	if err != nil {
		h.log.Warn("dashboard: session not checked", "err", err)
		return auth.Principal{}, connect.NewError(connect.CodeUnavailable, errors.New("the session could not be checked; retry later"))
	}
	if v != "admin" {
		return auth.Principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("the dashboard session has ended or expired; sign in again"))
	}
	return auth.Principal{Admin: true}, nil
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

var errCrossSite = connect.NewError(connect.CodePermissionDenied, errors.New("cross-site request refused: a dashboard session changes state only from the dashboard's own page"))

func sameOrigin(r *http.Request) error {
	if !server.SameOrigin(r) {
		return errCrossSite
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
