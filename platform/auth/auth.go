// Package auth authenticates callers of every Herald route with bearer keys:
// the operator's bootstrap admin key, or application keys issued by the
// registry and known to other services only by their SHA-256 hash; and, on
// the stream routes of the edge, browser tokens (short-lived JWTs an
// application mints for its users; see token.go) whose principal carries a
// Scope.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/time/rate"
)

// Principal is an authenticated caller.
type Principal struct {
	// Admin is true for the operator's bootstrap key.
	Admin bool
	// ApplicationID and KeyID identify an application key.
	ApplicationID string
	KeyID         string
	// Scope narrows a browser token's principal to the types, filter and
	// lifetime of its token; nil for keys.
	Scope *Scope
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
	// FailedPerSecond and FailedBurst limit failed authentications per
	// source address (an IPv4 address or an IPv6 /64). Past the limit a
	// source gets RESOURCE_EXHAUSTED with Retry-After, and its keys are not
	// looked up at all, until the limit refills. Defaults 1/s, burst 20.
	FailedPerSecond float64
	FailedBurst     int
}

// Authenticator checks bearer keys, caching resolutions briefly so that the
// hot path does not call the registry per request.
//
// Known keys and unknown keys are cached apart, each in a bounded LRU, so
// that a flood of distinct random keys evicts only other unknown keys and
// never a good one; and failed attempts are rate-limited per source
// address, so such a flood costs at most a burst of resolver calls.
type Authenticator struct {
	adminHash [32]byte
	resolver  Resolver

	good    *expirable.LRU[string, Principal]
	unknown *expirable.LRU[string, struct{}]

	failRate  rate.Limit
	failBurst int
	sources   *expirable.LRU[string, *rate.Limiter]
	sourcesMu sync.Mutex // makes get-or-create of a source's limiter atomic

	tokens     *TokenVerifier
	tokenRoute func(*http.Request) bool
}

const (
	maxCached  = 10000
	maxSources = 10000
	// sourceTTL is how long a source's failure record is kept after its
	// last failure; longer than a full refill at the default rate.
	sourceTTL = 10 * time.Minute
)

// New returns an Authenticator.
func New(o Options) (*Authenticator, error) {
	if len(o.AdminKey) < 16 {
		return nil, errors.New("auth: the admin key must be at least 16 characters")
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = time.Second
	}
	if o.FailedPerSecond <= 0 {
		o.FailedPerSecond = 1
	}
	if o.FailedBurst <= 0 {
		o.FailedBurst = 20
	}
	return &Authenticator{
		adminHash: sha256.Sum256([]byte(o.AdminKey)),
		resolver:  o.Resolver,
		good:      expirable.NewLRU[string, Principal](maxCached, nil, o.CacheTTL),
		unknown:   expirable.NewLRU[string, struct{}](maxCached, nil, o.CacheTTL),
		failRate:  rate.Limit(o.FailedPerSecond),
		failBurst: o.FailedBurst,
		sources:   expirable.NewLRU[string, *rate.Limiter](maxSources, nil, sourceTTL),
	}, nil
}

// Authenticate resolves a secret to its principal. Errors are connect errors:
// Unauthenticated for a missing or bad key, Unavailable when the key could
// not be checked. It applies no per-source limit: see AuthenticateFrom.
func (a *Authenticator) Authenticate(ctx context.Context, secret string) (Principal, error) {
	return a.AuthenticateFrom(ctx, secret, "")
}

// AuthenticateFrom is Authenticate for a caller at the given source address
// ("host:port" or a bare host; "" for none). A source whose failed attempts
// are over the limit gets ResourceExhausted, with a Retry-After in the
// error's metadata, without its key being looked up.
func (a *Authenticator) AuthenticateFrom(ctx context.Context, secret, source string) (Principal, error) {
	if secret == "" {
		return Principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("missing key: send Authorization: Bearer <key>"))
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare(sum[:], a.adminHash[:]) == 1 {
		return Principal{Admin: true}, nil
	}
	if a.resolver == nil {
		return Principal{}, a.failed(source)
	}
	h := hex.EncodeToString(sum[:])
	if p, ok := a.good.Get(h); ok {
		return p, nil
	}
	if err := a.limited(source); err != nil {
		return Principal{}, err
	}
	if _, ok := a.unknown.Get(h); ok {
		return Principal{}, a.failed(source)
	}
	p, err := a.resolver.ResolveKey(ctx, h)
	if errors.Is(err, ErrUnknownKey) {
		a.unknown.Add(h, struct{}{})
		return Principal{}, a.failed(source)
	}
	if err != nil {
		return Principal{}, connect.NewError(connect.CodeUnavailable, errors.New("the key could not be checked; retry later"))
	}
	a.good.Add(h, p)
	return p, nil
}

// sourceKey is the unit failures are counted per: the IPv4 address, or the
// /64 of an IPv6 address (one host usually holds a whole /64).
func sourceKey(source string) string {
	if source == "" {
		return ""
	}
	host := source
	if h, _, err := net.SplitHostPort(source); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		if pfx, err := ip.Prefix(64); err == nil {
			return pfx.String()
		}
	}
	return ip.String()
}

// Limited is ResourceExhausted (with Retry-After) when the source address
// ("host:port" or a host) has used up its failed authentications, as for
// keys: for routes with credentials of their own (portal links).
func (a *Authenticator) Limited(source string) error { return a.limited(source) }

// CountFailure counts a failed authentication by other credentials (a
// portal link) against the source address, as a wrong key counts.
func (a *Authenticator) CountFailure(source string) { a.countFailure(source) }

// limited answers ResourceExhausted when the source has no failure left.
func (a *Authenticator) limited(source string) error {
	k := sourceKey(source)
	if k == "" {
		return nil
	}
	lim, ok := a.sources.Peek(k)
	if !ok || lim.Tokens() >= 1 {
		return nil
	}
	wait := time.Duration((1 - lim.Tokens()) / float64(a.failRate) * float64(time.Second))
	secs := int(math.Ceil(wait.Seconds()))
	if secs < 1 {
		secs = 1
	}
	err := connect.NewError(connect.CodeResourceExhausted, errors.New("too many failed authentications from this address; retry later"))
	err.Meta().Set("Retry-After", strconv.Itoa(secs))
	return err
}

// failed counts a failed authentication against the source and returns
// the Unauthenticated error.
func (a *Authenticator) failed(source string) error {
	a.countFailure(source)
	return connect.NewError(connect.CodeUnauthenticated, ErrUnknownKey)
}

// countFailure counts a failed authentication against the source.
func (a *Authenticator) countFailure(source string) {
	if k := sourceKey(source); k != "" {
		a.sourcesMu.Lock()
		lim, ok := a.sources.Get(k)
		if !ok {
			lim = rate.NewLimiter(a.failRate, a.failBurst)
		}
		a.sources.Add(k, lim) // refreshes the record's expiry
		a.sourcesMu.Unlock()
		lim.Allow()
	}
}

// Forget drops cached resolutions, e.g. after a key was revoked.
func (a *Authenticator) Forget() {
	a.good.Purge()
	a.unknown.Purge()
}

// AcceptTokens makes a accept browser tokens, verified by v, on the
// requests for which route reports true (the edge's stream routes); a token
// anywhere else is refused, so that its scope is enforced wherever it is
// accepted. Call it before serving.
func (a *Authenticator) AcceptTokens(v *TokenVerifier, route func(*http.Request) bool) {
	a.tokens, a.tokenRoute = v, route
}

// Request authenticates an HTTP request from its headers alone: the bearer
// credential of its Authorization header or, when allowQuery is true and
// the request is a GET (browsers' EventSource cannot set headers), an
// access_token query parameter or else the herald_token cookie. The
// credential is a key, or on the routes given to AcceptTokens a browser
// token. Failures are counted against the request's remote address.
func (a *Authenticator) Request(r *http.Request, allowQuery bool) (Principal, error) {
	secret := BearerToken(r.Header)
	if secret == "" && allowQuery && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		secret = r.URL.Query().Get("access_token")
		if secret == "" {
			if c, err := r.Cookie(TokenCookie); err == nil {
				secret = c.Value
			}
		}
	}
	if a.tokens != nil && LooksLikeToken(secret) {
		return a.token(r, secret)
	}
	return a.AuthenticateFrom(r.Context(), secret, r.RemoteAddr)
}

// token authenticates a browser token.
func (a *Authenticator) token(r *http.Request, raw string) (Principal, error) {
	if !a.tokenRoute(r) {
		return Principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("a browser token is accepted only on the stream routes (GET /v1/stream); use an application key here"))
	}
	if err := a.limited(r.RemoteAddr); err != nil {
		return Principal{}, err
	}
	p, err := a.tokens.Verify(r.Context(), raw)
	if c := connect.CodeOf(err); c == connect.CodeUnauthenticated || c == connect.CodePermissionDenied {
		a.countFailure(r.RemoteAddr)
	}
	return p, err
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
// A request whose principal is already in its context (authenticated at
// the HTTP layer, before its body was read) is not authenticated again.
func (a *Authenticator) Interceptor() connect.Interceptor { return interceptor{a} }

type interceptor struct{ a *Authenticator }

func (i interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		if _, ok := FromContext(ctx); ok {
			return next(ctx, req)
		}
		p, err := i.a.AuthenticateFrom(ctx, BearerToken(req.Header()), req.Peer().Addr)
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
		if _, ok := FromContext(ctx); ok {
			return next(ctx, conn)
		}
		p, err := i.a.AuthenticateFrom(ctx, BearerToken(conn.RequestHeader()), conn.Peer().Addr)
		if err != nil {
			return err
		}
		return next(WithPrincipal(ctx, p), conn)
	}
}

// Middleware authenticates plain HTTP routes (see Request; allowQuery
// accepts an access_token query parameter). A request already carrying a
// principal passes through. Failures are written by WriteError.
func (a *Authenticator) Middleware(allowQuery bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := FromContext(r.Context()); ok {
			next.ServeHTTP(w, r)
			return
		}
		p, err := a.Request(r, allowQuery)
		if err != nil {
			WriteError(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

var errorWriter = connect.NewErrorWriter()

// WriteError writes err in the protocol of the request r: a gRPC or
// gRPC-Web status, a Connect end-of-stream message, or (for Connect unary
// requests and plain HTTP routes) Connect's JSON error with the HTTP status
// of its code. An error's metadata (e.g. Retry-After) is sent as headers.
// A 401 carries a Bearer challenge. An error that is not a connect error is
// sent as a bare "internal error": its text may hold internals. WriteError
// does not read the request body.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		err = connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
	}
	_ = errorWriter.Write(w, r, err)
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
