// Package portal is the consumer portal: one self-contained page (GET
// /portal/, embedded, loading nothing from the network) through which a
// consumer application's people browse the catalog it may see, subscribe,
// manage webhook endpoints and keys, send test events, and read their usage
// and invoices, without asking the operator.
//
// Sign-in is by a single-use portal link the operator (or the provider's
// backend) mints for one application (RegistryService.CreatePortalLink).
// The link carries its token in the URL fragment, which browsers never
// send to a server; the page posts it to /portal/session, which redeems it
// with the registry for a portal session key of that application (purpose
// KEY_PURPOSE_PORTAL_SESSION, expiring with the session) and sets it as an
// HttpOnly, SameSite=Strict cookie scoped to /portal. Herald stores no
// password and keeps only the key's hash, like any key.
//
// Everything the page shows comes through /portal/rpc/<service>/<method>:
// an allowlist of unary RPCs of the registry, the edge's WebhookService and
// metering, called with the session's key, so that the services' own
// authorization decides (the application's rights, its tenant's invoices)
// exactly as for an API key. Every state-changing request (any but GET and
// HEAD) must come from the portal's own origin (Sec-Fetch-Site, or Origin)
// and carry the session's CSRF token in X-Herald-CSRF.
package portal

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/filter"
	"github.com/heraldmesh/herald/platform/server"
	"google.golang.org/protobuf/encoding/protojson"
)

//go:embed portal.html
var page []byte

// Names and limits.
const (
	// CookieName is the session cookie.
	CookieName = "herald_portal"
	// CSRFHeader carries the session's CSRF token on state-changing
	// requests.
	CSRFHeader = "X-Herald-CSRF"
	// MaxBody bounds a request to the portal's routes.
	MaxBody = 1 << 20
	// MaxTokenTTL bounds a browser token minted for the console (the
	// application's own max lifetime may be shorter).
	MaxTokenTTL = time.Hour
	cookiePath  = "/portal"
)

// Allowed are the RPCs the portal forwards, by service: what a consumer
// does for itself. Operator-only methods are left out even though the
// services would refuse them anyway.
var Allowed = map[string][]string{
	"herald.registry.v1.RegistryService": {
		"ListDomains", "GetDomain", "ListEventTypes", "GetEventType", "ListSchemaVersions", "ListProducts", "GetProduct",
		"GetApplication", "CreateKey", "ListKeys", "RevokeKey",
		"CreateSubscription", "GetSubscription", "ListSubscriptions", "UpdateSubscription", "DeleteSubscription",
		"RotateWebhookSecret", "RotateTokenSecret", "EvaluateFilter",
	},
	"herald.edge.v1.WebhookService":      {"ListAttempts", "ListWebhookDeadLetters", "RetryDelivery", "Replay", "SendTestEvent"},
	"herald.metering.v1.MeteringService": {"GetUsage", "QueryUsage", "TopUsage", "GetDeliveryStats"},
	"herald.metering.v1.QuotaService":    {"ListQuotas", "GetQuotaStatus"},
	"herald.metering.v1.BillingService":  {"ListInvoices", "GetInvoice", "ListPlans", "GetPlan", "ListAssignments", "PreviewInvoice"},
}

// Options configure the portal.
type Options struct {
	// Auth authenticates the session's key.
	Auth *auth.Authenticator
	// Registry is a client with the operator's key, for RedeemPortalLink
	// and for reading the session's application.
	Registry registryv1connect.RegistryServiceClient
	// RegistryURL and MeteringURL are the base URLs the portal forwards
	// to; Local serves the edge's own services (WebhookService), behind
	// the edge's authentication.
	RegistryURL, MeteringURL string
	Local                    http.Handler
	// Transport carries forwarded requests (h2c to the services).
	Transport http.RoundTripper
	// Issuers gives an application's browser-token keys (HS256 secrets),
	// to mint console tokens; nil: minting is unavailable.
	Issuers auth.Issuers
	// Audience is the aud of minted tokens.
	Audience string
	Log      *slog.Logger
}

// Handler serves the portal.
type Handler struct {
	o        Options
	registry *httputil.ReverseProxy
	metering *httputil.ReverseProxy
}

// New returns the portal.
func New(o Options) (*Handler, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	reg, err := url.Parse(o.RegistryURL)
	if err != nil {
		return nil, err
	}
	met, err := url.Parse(o.MeteringURL)
	if err != nil {
		return nil, err
	}
	h := &Handler{o: o}
	h.registry = h.proxy(reg)
	h.metering = h.proxy(met)
	return h, nil
}

// proxy forwards to target with the session's key, nothing of the
// browser's cookies, and the path the handler set.
func (h *Handler) proxy(target *url.URL) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Transport: h.o.Transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			path := pr.In.Context().Value(pathKey{}).(string)
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.Host = target.Scheme, target.Host, target.Host
			pr.Out.URL.Path, pr.Out.URL.RawPath = path, ""
			pr.Out.Header.Del("Cookie")
			pr.Out.Header.Del(CSRFHeader)
			pr.Out.Header.Set("Authorization", "Bearer "+pr.In.Context().Value(secretKey{}).(string))
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			h.o.Log.Warn("portal: forwarding failed", "path", r.URL.Path, "err", err)
			auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, errors.New("the service is unavailable; retry later")))
		},
	}
}

type (
	pathKey   struct{}
	secretKey struct{}
)

// Mount registers the portal's routes with mount(pattern, handler, public):
// public routes answer without any credential (the page, which holds no
// data); the others authenticate themselves (sign-in by its link, the rest
// by the session cookie).
func (h *Handler) Mount(mount func(pattern string, handler http.Handler, public bool)) {
	mount("GET /portal/{$}", server.Page(page), true)
	mount("GET /portal", http.RedirectHandler("/portal/", http.StatusMovedPermanently), true)
	mount("POST /portal/session", http.HandlerFunc(h.signIn), false)
	mount("GET /portal/session", h.session(h.whoami), false)
	mount("DELETE /portal/session", h.session(h.signOut), false)
	mount("POST /portal/rpc/{service}/{method}", h.session(h.rpc), false)
	mount("GET /portal/asyncapi.json", h.session(h.forward(h.registry, "/asyncapi.json")), false)
	mount("GET /portal/asyncapi.yaml", h.session(h.forward(h.registry, "/asyncapi.yaml")), false)
	mount("GET /portal/invoices/{id}/export", h.session(h.exportInvoice), false)
	mount("GET /portal/apis.json", h.session(h.local("/apis.json")), false)
	mount("POST /portal/token", h.session(h.mintToken), false)
	mount("GET /portal/codegen", h.session(h.codegenDownload), false)
}

// csrfToken is the session's CSRF token: an HMAC of a fixed label under
// the session's secret, so it needs no storage and dies with the session.
func csrfToken(secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("herald portal csrf"))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// sessionInfo is what the page learns about its session.
type sessionInfo struct {
	Application json.RawMessage `json:"application"`
	ExpireTime  string          `json:"expireTime,omitempty"`
	CSRF        string          `json:"csrf"`
}

func (h *Handler) writeSession(w http.ResponseWriter, app *registryv1.Application, expires time.Time, secret string) {
	b, _ := protojson.Marshal(app)
	info := sessionInfo{Application: b, CSRF: csrfToken(secret)}
	if !expires.IsZero() {
		info.ExpireTime = expires.UTC().Format(time.RFC3339)
	}
	writeJSON(w, http.StatusOK, info)
}

// signIn is POST /portal/session {"link": "hpl_..."}.
func (h *Handler) signIn(w http.ResponseWriter, r *http.Request) {
	if err := sameOrigin(r); err != nil {
		auth.WriteError(w, r, err)
		return
	}
	var in struct {
		Link string `json:"link"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&in); err != nil || in.Link == "" {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New(`send {"link": "<the token after #link= in the portal link>"}`)))
		return
	}
	// Guessing links is as slow as guessing keys: the same failure budget
	// per source address.
	if err := h.o.Auth.Limited(r.RemoteAddr); err != nil {
		auth.WriteError(w, r, err)
		return
	}
	res, err := h.o.Registry.RedeemPortalLink(r.Context(), connect.NewRequest(&registryv1.RedeemPortalLinkRequest{Token: in.Link}))
	if err != nil {
		if c := connect.CodeOf(err); c == connect.CodeUnauthenticated {
			h.o.Auth.CountFailure(r.RemoteAddr)
		} else {
			h.o.Log.Warn("portal: link not redeemed", "err", err)
			err = connect.NewError(connect.CodeUnavailable, errors.New("the sign-in could not be completed; retry later"))
		}
		auth.WriteError(w, r, err)
		return
	}
	key := res.Msg.GetKey()
	expires := key.GetExpireTime().AsTime()
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: key.GetSecret(), Path: cookiePath, Expires: expires, MaxAge: int(time.Until(expires) / time.Second),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	h.writeSession(w, res.Msg.GetApplication(), expires, key.GetSecret())
}

// session authenticates a request by the session cookie (and on
// state-changing requests checks origin and CSRF token) before next.
func (h *Handler) session(next func(http.ResponseWriter, *http.Request, auth.Principal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie(CookieName)
		if err != nil || c.Value == "" {
			auth.WriteError(w, r, connect.NewError(connect.CodeUnauthenticated, errors.New("no portal session: open a portal link")))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := sameOrigin(r); err != nil {
				auth.WriteError(w, r, err)
				return
			}
			if got := r.Header.Get(CSRFHeader); !hmac.Equal([]byte(got), []byte(csrfToken(c.Value))) {
				auth.WriteError(w, r, connect.NewError(connect.CodePermissionDenied, errors.New("missing or wrong "+CSRFHeader+" header: reload the portal")))
				return
			}
		}
		p, err := h.o.Auth.AuthenticateFrom(r.Context(), c.Value, r.RemoteAddr)
		if err == nil && (p.Admin || p.ApplicationID == "") {
			err = connect.NewError(connect.CodeUnauthenticated, errors.New("not a portal session"))
		}
		if err != nil {
			if connect.CodeOf(err) == connect.CodeUnauthenticated {
				err = connect.NewError(connect.CodeUnauthenticated, errors.New("the portal session has ended, was revoked or expired: open a new portal link"))
				clearCookie(w, r)
			}
			auth.WriteError(w, r, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
		ctx := context.WithValue(r.Context(), secretKey{}, c.Value)
		next(w, r.WithContext(auth.WithPrincipal(ctx, p)), p)
	})
}

func clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: cookiePath, MaxAge: -1, Expires: time.Unix(0, 0),
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
}

// whoami is GET /portal/session.
func (h *Handler) whoami(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	secret := r.Context().Value(secretKey{}).(string)
	app, err := h.o.Registry.GetApplication(r.Context(), connect.NewRequest(&registryv1.GetApplicationRequest{Id: p.ApplicationID}))
	if err != nil {
		h.o.Log.Warn("portal: application not read", "err", err)
		auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, errors.New("the catalog is unavailable; retry later")))
		return
	}
	var expires time.Time
	if keys, err := h.o.Registry.ListKeys(r.Context(), connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: p.ApplicationID})); err == nil {
		for _, k := range keys.Msg.GetKeys() {
			if k.GetId() == p.KeyID && k.GetExpireTime() != nil {
				expires = k.GetExpireTime().AsTime()
			}
		}
	}
	h.writeSession(w, app.Msg.GetApplication(), expires, secret)
}

// signOut is DELETE /portal/session: the session's key is revoked.
func (h *Handler) signOut(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	if _, err := h.o.Registry.RevokeKey(r.Context(), connect.NewRequest(&registryv1.RevokeKeyRequest{Id: p.KeyID})); err != nil {
		h.o.Log.Warn("portal: session key not revoked", "err", err)
		auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, errors.New("the session could not be ended; retry later")))
		return
	}
	clearCookie(w, r)
	w.WriteHeader(http.StatusNoContent)
}

// rpc is POST /portal/rpc/{service}/{method}: a Connect unary JSON call,
// forwarded with the session's key.
func (h *Handler) rpc(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	service, method := r.PathValue("service"), r.PathValue("method")
	if !slices.Contains(Allowed[service], method) {
		auth.WriteError(w, r, connect.NewError(connect.CodeNotFound, errors.New("the portal does not offer "+service+"/"+method)))
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New("send the request as Content-Type: application/json")))
		return
	}
	path := "/" + service + "/" + method
	r.Header.Set("Connect-Protocol-Version", "1")
	switch {
	case strings.HasPrefix(service, "herald.registry."):
		h.registry.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), pathKey{}, path)))
	case strings.HasPrefix(service, "herald.metering."):
		h.metering.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), pathKey{}, path)))
	default:
		h.local(path)(w, r, auth.Principal{})
	}
}

// local serves a request from the edge itself (Options.Local), in
// process, at path, with the session's key.
func (h *Handler) local(path string) func(http.ResponseWriter, *http.Request, auth.Principal) {
	return func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
		out := r.Clone(r.Context())
		out.URL.Path, out.URL.RawPath, out.RequestURI = path, "", path
		out.Header.Del("Cookie")
		out.Header.Del(CSRFHeader)
		out.Header.Set("Authorization", "Bearer "+r.Context().Value(secretKey{}).(string))
		h.o.Local.ServeHTTP(w, out)
	}
}

// forward serves a GET by forwarding it to path on p.
func (h *Handler) forward(p *httputil.ReverseProxy, path string) func(http.ResponseWriter, *http.Request, auth.Principal) {
	return func(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
		p.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), pathKey{}, path)))
	}
}

// exportInvoice is GET /portal/invoices/{id}/export?format=csv|json.
func (h *Handler) exportInvoice(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	id := r.PathValue("id")
	if id == "" || strings.ContainsAny(id, "/?#%") {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New("bad invoice id")))
		return
	}
	h.forward(h.metering, "/v1/invoices/"+id+"/export")(w, r, p)
}

// mintToken is POST /portal/token {"types": [...], "filter": "",
// "ttlSeconds": 600}: a browser token of the session's application, signed
// with its newest HS256 secret, for the console's SSE stream.
func (h *Handler) mintToken(w http.ResponseWriter, r *http.Request, p auth.Principal) {
	var in struct {
		Types      []string `json:"types"`
		Filter     string   `json:"filter"`
		TTLSeconds int      `json:"ttlSeconds"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New(`send {"types": ["billing.*"], "filter": "", "ttlSeconds": 600}`)))
		return
	}
	if len(in.Types) == 0 || len(in.Types) > auth.MaxTokenTypes {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New("types: give 1 to 50 types or patterns")))
		return
	}
	if _, err := eventtype.ParsePatterns(in.Types); err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, err))
		return
	}
	if _, err := filter.Check(in.Filter); err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("filter: %w", err)))
		return
	}
	ttl := time.Duration(in.TTLSeconds) * time.Second
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	if h.o.Issuers == nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeFailedPrecondition, errors.New("browser tokens cannot be minted here: the edge has no HERALD_SECRET_KEY")))
		return
	}
	iss, err := h.o.Issuers.TokenIssuer(r.Context(), p.ApplicationID)
	var secret *auth.TokenKey
	if err == nil {
		for i, k := range iss.Keys {
			if k.Algorithm == jose.HS256 && k.Source == auth.TokenSourceSecret {
				secret = &iss.Keys[i]
				break
			}
		}
	}
	if secret == nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeFailedPrecondition, errors.New("the application has no browser-token secret yet: create one (RotateTokenSecret) and try again")))
		return
	}
	maxTTL := min(MaxTokenTTL, iss.MaxLifetime)
	if iss.MaxLifetime <= 0 {
		maxTTL = min(MaxTokenTTL, auth.DefaultTokenLifetime)
	}
	ttl = min(ttl, maxTTL)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret.Key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", secret.ID))
	if err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInternal, errors.New("the token could not be signed")))
		return
	}
	now := time.Now()
	exp := now.Add(ttl)
	claims := jwt.Claims{Issuer: p.ApplicationID, Subject: "portal:" + p.KeyID, Audience: jwt.Audience{h.o.Audience},
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp)}
	herald := map[string]any{"herald": map[string]any{"types": in.Types, "filter": in.Filter}}
	tok, err := jwt.Signed(signer).Claims(claims).Claims(herald).Serialize()
	if err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInternal, errors.New("the token could not be signed")))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": tok, "expireTime": exp.UTC().Format(time.RFC3339)})
}

func sameOrigin(r *http.Request) error {
	if !server.SameOrigin(r) {
		return connect.NewError(connect.CodePermissionDenied, errors.New("cross-origin request refused: the portal changes state only from its own page"))
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
