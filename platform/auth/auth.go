// Package auth authenticates callers of every Herald route with bearer keys:
// the operator's bootstrap admin key, or application keys issued by the
// registry and known to other services only by their SHA-256 hash.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
)

// Principal is an authenticated caller.
type Principal struct {
	// Admin is true for the operator's bootstrap key.
	Admin bool
	// ApplicationID and KeyID identify an application key.
	ApplicationID string
	KeyID         string
}

// Account is the name usage is counted under: the application id, or
// "admin" for the operator key.
func (p Principal) Account() string {
	if p.Admin {
		return "admin"
	}
	return p.ApplicationID
}

// ErrUnknownKey is returned by a Resolver for a hash it does not know (or a
// revoked key).
var ErrUnknownKey = errors.New("unknown or revoked key")

// Resolver finds the application key with the given hex SHA-256 hash.
type Resolver interface {
	ResolveKey(ctx context.Context, keyHash string) (Principal, error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(ctx context.Context, keyHash string) (Principal, error)

// ResolveKey calls f.
func (f ResolverFunc) ResolveKey(ctx context.Context, keyHash string) (Principal, error) {
	return f(ctx, keyHash)
}

// HashSecret returns the lower-case hex SHA-256 of a key secret. Secrets are
// 256-bit random values, so a fast hash is as strong as a slow one here.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewSecret returns a new random key secret ("hk_" + 43 base64url characters).
func NewSecret() string { return "hk_" + randomToken(32) }

// NewID returns a random identifier with the given prefix, e.g. "app_".
func NewID(prefix string) string { return prefix + randomToken(12) }

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b)
}

// Options configure an Authenticator.
type Options struct {
	// AdminKey is the operator's bootstrap key. Required.
	AdminKey string
	// Resolver resolves application keys; nil accepts only the admin key.
	Resolver Resolver
	// CacheTTL bounds how long a resolved (or unknown) key is remembered, and
	// so how long a revoked key keeps working. Default 1s.
	CacheTTL time.Duration
}

// Authenticator checks bearer keys, caching resolutions briefly so that the
// hot path does not call the registry per request.
type Authenticator struct {
	adminHash [32]byte
	resolver  Resolver
	ttl       time.Duration

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	p       Principal
	err     error
	expires time.Time
}

const maxCached = 10000

// New returns an Authenticator.
func New(o Options) (*Authenticator, error) {
	if len(o.AdminKey) < 16 {
		return nil, errors.New("auth: the admin key must be at least 16 characters")
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = time.Second
	}
	return &Authenticator{adminHash: sha256.Sum256([]byte(o.AdminKey)), resolver: o.Resolver, ttl: o.CacheTTL, cache: map[string]cached{}}, nil
}

// Authenticate resolves a secret to its principal. Errors are connect errors:
// Unauthenticated for a missing or bad key, Unavailable when the key could
// not be checked.
func (a *Authenticator) Authenticate(ctx context.Context, secret string) (Principal, error) {
	if secret == "" {
		return Principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("missing key: send Authorization: Bearer <key>"))
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], a.adminHash[:]) == 1 {
		return Principal{Admin: true}, nil
	}
	if a.resolver == nil {
		return Principal{}, connect.NewError(connect.CodeUnauthenticated, ErrUnknownKey)
	}
	h := hex.EncodeToString(sum[:])
	now := time.Now()
	a.mu.Lock()
	c, ok := a.cache[h]
	a.mu.Unlock()
	if !ok || now.After(c.expires) {
		p, err := a.resolver.ResolveKey(ctx, h)
		if err != nil && !errors.Is(err, ErrUnknownKey) {
			return Principal{}, connect.NewError(connect.CodeUnavailable, fmt.Errorf("checking key: %w", err))
		}
		c = cached{p: p, err: err, expires: now.Add(a.ttl)}
		a.mu.Lock()
		if len(a.cache) >= maxCached {
			clear(a.cache)
		}
		a.cache[h] = c
		a.mu.Unlock()
	}
	if c.err != nil {
		return Principal{}, connect.NewError(connect.CodeUnauthenticated, ErrUnknownKey)
	}
	return c.p, nil
}

// Forget drops cached resolutions, e.g. after a key was revoked.
func (a *Authenticator) Forget() {
	a.mu.Lock()
	clear(a.cache)
	a.mu.Unlock()
}

type principalKey struct{}

// WithPrincipal returns a context carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the authenticated principal of a request.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// RequireAdmin returns PermissionDenied unless the caller is the operator.
func RequireAdmin(ctx context.Context) error {
	if p, ok := FromContext(ctx); ok && p.Admin {
		return nil
	}
	return connect.NewError(connect.CodePermissionDenied, errors.New("this operation needs the admin key"))
}

// BearerToken extracts the key from an Authorization header.
func BearerToken(h http.Header) string {
	v := h.Get("Authorization")
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		return strings.TrimSpace(v[7:])
	}
	return ""
}

// Interceptor authenticates every RPC of the handlers it is installed on.
func (a *Authenticator) Interceptor() connect.Interceptor { return interceptor{a} }

type interceptor struct{ a *Authenticator }

func (i interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		p, err := i.a.Authenticate(ctx, BearerToken(req.Header()))
		if err != nil {
			return nil, err
		}
		return next(WithPrincipal(ctx, p), req)
	}
}

func (i interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		p, err := i.a.Authenticate(ctx, BearerToken(conn.RequestHeader()))
		if err != nil {
			return err
		}
		return next(WithPrincipal(ctx, p), conn)
	}
}

// Middleware authenticates plain HTTP routes. Browsers' EventSource cannot
// set headers, so when allowQuery is true an access_token query parameter is
// accepted too. Failures answer 401 (or 503) with a JSON error.
func (a *Authenticator) Middleware(allowQuery bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secret := BearerToken(r.Header)
		if secret == "" && allowQuery {
			secret = r.URL.Query().Get("access_token")
		}
		p, err := a.Authenticate(r.Context(), secret)
		if err != nil {
			WriteError(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

// WriteError writes err as a Connect-style JSON error with the HTTP status
// matching its code.
func WriteError(w http.ResponseWriter, err error) {
	code := connect.CodeOf(err)
	status := httpStatus(code)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
	}
	msg := err.Error()
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg = ce.Message()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"code":%q,"message":%q}`+"\n", code.String(), msg)
}

func httpStatus(c connect.Code) int {
	switch c {
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeInvalidArgument:
		return http.StatusBadRequest
	case connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests
	case connect.CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// ClientInterceptor adds a bearer key to every outgoing RPC, for calls
// between services.
func ClientInterceptor(key string) connect.Interceptor { return clientInterceptor{"Bearer " + key} }

type clientInterceptor struct{ header string }

func (c clientInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			req.Header().Set("Authorization", c.header)
		}
		return next(ctx, req)
	}
}

func (c clientInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", c.header)
		return conn
	}
}

func (c clientInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
