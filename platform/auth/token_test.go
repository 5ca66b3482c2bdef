package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
)

// issuers is an in-memory auth.Issuers: the registry's token settings as
// the catalog hands them to the verifier.
type issuers map[string]*auth.Issuer

func (m issuers) TokenIssuer(_ context.Context, id string) (*auth.Issuer, error) {
	if iss, ok := m[id]; ok {
		return iss, nil
	}
	return nil, auth.ErrUnknownIssuer
}

// grants is a subscribe-grant check over patterns.
func grants(patterns ...string) func(string) bool {
	return func(p string) bool {
		for _, g := range patterns {
			if access.Covers(g, p) {
				return true
			}
		}
		return false
	}
}

// tokenKeys are one key of every kind, private halves for minting.
type tokenKeys struct {
	secret  []byte
	rsa     *rsa.PrivateKey
	rsaPEM  string
	ec      *ecdsa.PrivateKey
	ed      ed25519.PrivateKey
	jwksDoc []byte
}

func newTokenKeys(t *testing.T) *tokenKeys {
	t.Helper()
	k := &tokenKeys{secret: []byte(auth.NewTokenSecret())}
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	k.rsaPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &k.ec.PublicKey, KeyID: "ec-1", Use: "sig", Algorithm: "ES256"},
		{Key: k.ed.Public(), KeyID: "ed-1", Use: "sig"},
		// Skipped: not a signing key of ours.
		{Key: []byte("an oct key never verifies"), KeyID: "oct-1"},
	}}
	if k.jwksDoc, err = json.Marshal(set); err != nil {
		t.Fatal(err)
	}
	return k
}

// fixture is a verifier over two applications: app_hs (an HS256 secret
// and a registry-held RSA key) and app_jwks (a JWKS URL served by a real
// HTTP server), each granted billing.*.
type fixture struct {
	keys    *tokenKeys
	v       *auth.TokenVerifier
	now     time.Time
	jwksURL string
	fetches *atomic.Int32
	down    *atomic.Bool
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{keys: newTokenKeys(t), now: time.Now().Truncate(time.Second), fetches: new(atomic.Int32), down: new(atomic.Bool)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.fetches.Add(1)
		if f.down.Load() {
			http.Error(w, "internal detail: db at 10.1.2.3 down", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(f.keys.jwksDoc)
	}))
	t.Cleanup(srv.Close)
	f.jwksURL = srv.URL + "/.well-known/jwks.json"
	rsaPub, alg, _, err := auth.ParsePublicKey(f.keys.rsaPEM)
	if err != nil || alg != jose.RS256 {
		t.Fatalf("ParsePublicKey(RSA PEM) = %v, %v", alg, err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	jwks := auth.NewJWKSCache(&http.Client{Transport: tr}, 10*time.Minute)
	jwks.SetClock(func() time.Time { return f.now })
	f.v = auth.NewTokenVerifier(auth.TokenOptions{
		Issuers: issuers{
			"app_hs": {
				ApplicationID: "app_hs",
				Keys: []auth.TokenKey{
					{ID: "hts_1", Source: auth.TokenSourceSecret, Algorithm: jose.HS256, Key: f.keys.secret},
					{ID: "rsa-1", Source: auth.TokenSourceKey, Algorithm: jose.RS256, Key: rsaPub},
				},
				Subscribable: grants("billing.*"),
			},
			"app_jwks": {ApplicationID: "app_jwks", JWKSURL: f.jwksURL, Subscribable: grants("billing.*"), MaxLifetime: 10 * time.Minute},
		},
		Audiences: []string{"https://edge.example/"},
		JWKS:      jwks,
		Now:       func() time.Time { return f.now },
	})
	return f
}

// claims are a valid token's claims for app, which each case changes.
func (f *fixture) claims(app string) map[string]any {
	return map[string]any{
		"iss": app, "sub": "user-42", "aud": "herald",
		"iat": f.now.Unix(), "exp": f.now.Add(5 * time.Minute).Unix(),
		"herald": map[string]any{"types": []string{"billing.invoice.*"}},
	}
}

func sign(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader(jose.HeaderKey("kid"), kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// unsigned builds a compact token by hand, for algs no library signs.
func unsigned(header, claims map[string]any, sig []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(h) + "." + enc.EncodeToString(c) + "." + enc.EncodeToString(sig)
}

func TestTokensOfEveryAlgorithmVerify(t *testing.T) {
	f := newFixture(t)
	k := f.keys
	cases := []struct {
		name, token, keyID string
	}{
		{"HS256 secret", sign(t, jose.HS256, k.secret, "hts_1", f.claims("app_hs")), "token/app_hs/secret/hts_1"},
		{"HS256 without kid", sign(t, jose.HS256, k.secret, "", f.claims("app_hs")), "token/app_hs/secret/hts_1"},
		{"RS256 registry key", sign(t, jose.RS256, k.rsa, "rsa-1", f.claims("app_hs")), "token/app_hs/key/rsa-1"},
		{"ES256 JWKS", sign(t, jose.ES256, k.ec, "ec-1", f.claims("app_jwks")), "token/app_jwks/jwks/ec-1"},
		{"EdDSA JWKS", sign(t, jose.EdDSA, k.ed, "ed-1", f.claims("app_jwks")), "token/app_jwks/jwks/ed-1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := f.v.Verify(context.Background(), c.token)
			if err != nil {
				t.Fatal(err)
			}
			if p.Admin || p.KeyID != c.keyID || p.Scope == nil {
				t.Fatalf("principal %+v, want key id %s and a scope", p, c.keyID)
			}
			s := p.Scope
			if s.Subject != "user-42" || !s.Expires.Equal(f.now.Add(5*time.Minute)) || len(s.Types) != 1 {
				t.Fatalf("scope %+v", s)
			}
			if !s.Allows("billing.invoice.paid") || !s.Allows("billing.invoice.*") || s.Allows("billing.*") || s.Allows("identity.user.created") {
				t.Fatalf("scope %v allows the wrong types", s.Types)
			}
			if err := s.Permit("identity.user.created"); connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Fatalf("Permit outside the scope: %v", err)
			}
		})
	}
	// The audience may also be the edge's public URL.
	c := f.claims("app_hs")
	c["aud"] = []string{"other", "https://edge.example"}
	if _, err := f.v.Verify(context.Background(), sign(t, jose.HS256, k.secret, "hts_1", c)); err != nil {
		t.Fatalf("aud with the public URL: %v", err)
	}
	if n := f.fetches.Load(); n != 1 {
		t.Fatalf("the JWKS was fetched %d times for two tokens, want once (cached)", n)
	}
}

func TestTokenRefusals(t *testing.T) {
	f := newFixture(t)
	k := f.keys
	with := func(app string, change func(map[string]any)) map[string]any {
		c := f.claims(app)
		change(c)
		return c
	}
	hs := func(change func(map[string]any)) string {
		return sign(t, jose.HS256, k.secret, "hts_1", with("app_hs", change))
	}
	otherRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		token string
		code  connect.Code
		want  string
	}{
		{"garbage", "eyJhbGciOi.not.a-token", connect.CodeUnauthenticated, "not a JWT"},
		{"alg none", unsigned(map[string]any{"alg": "none", "typ": "JWT"}, f.claims("app_hs"), nil), connect.CodeUnauthenticated, "not a JWT in compact form signed with HS256, RS256, ES256 or EdDSA"},
		{"alg HS512", sign(t, jose.HS512, append(k.secret, k.secret...), "hts_1", f.claims("app_hs")), connect.CodeUnauthenticated, "signed with HS256, RS256, ES256 or EdDSA"},
		{
			// The classic confusion: HS256 keyed with the RSA public key's
			// PEM. The application has an HS256 secret, but public keys
			// never serve as HMAC keys.
			"alg confusion HS256 with the RSA public key",
			sign(t, jose.HS256, []byte(k.rsaPEM), "rsa-1", f.claims("app_hs")), connect.CodeUnauthenticated, "kid is not a key of this application",
		},
		{"alg confusion without kid", sign(t, jose.HS256, []byte(k.rsaPEM), "", f.claims("app_hs")), connect.CodeUnauthenticated, "the signature does not verify"},
		{"HS256 where only public keys are set", sign(t, jose.HS256, []byte(k.rsaPEM), "", f.claims("app_jwks")), connect.CodeUnauthenticated, "alg HS256 is not configured for this application"},
		{"RS256 of another key", sign(t, jose.RS256, otherRSA, "rsa-1", f.claims("app_hs")), connect.CodeUnauthenticated, "the signature does not verify"},
		{"ES256 not configured", sign(t, jose.ES256, k.ec, "ec-1", f.claims("app_hs")), connect.CodeUnauthenticated, "alg ES256 is not configured"},
		{"wrong secret", sign(t, jose.HS256, []byte(auth.NewTokenSecret()), "hts_1", f.claims("app_hs")), connect.CodeUnauthenticated, "the signature does not verify"},
		{"unknown kid", sign(t, jose.HS256, k.secret, "hts_gone", f.claims("app_hs")), connect.CodeUnauthenticated, "kid is not a key of this application"},
		{"unknown JWKS kid", sign(t, jose.ES256, k.ec, "ec-9", f.claims("app_jwks")), connect.CodeUnauthenticated, "kid is not a key of this application"},
		{"unknown issuer", sign(t, jose.HS256, k.secret, "hts_1", f.claims("app_nope")), connect.CodeUnauthenticated, "iss is not an application that accepts tokens"},
		{"no iss", hs(func(c map[string]any) { delete(c, "iss") }), connect.CodeUnauthenticated, "iss is required"},
		{"expired", hs(func(c map[string]any) { c["exp"] = f.now.Add(-time.Second).Unix() }), connect.CodeUnauthenticated, "it has expired"},
		{"expiring now", hs(func(c map[string]any) { c["exp"] = f.now.Unix() }), connect.CodeUnauthenticated, "it has expired"},
		{"no exp", hs(func(c map[string]any) { delete(c, "exp") }), connect.CodeUnauthenticated, "exp is required"},
		{"nbf ahead", hs(func(c map[string]any) { c["nbf"] = f.now.Add(time.Minute).Unix() }), connect.CodeUnauthenticated, "not valid yet (nbf)"},
		{"iat ahead", hs(func(c map[string]any) { c["iat"] = f.now.Add(time.Minute).Unix() }), connect.CodeUnauthenticated, "issued in the future (iat)"},
		{"wrong aud", hs(func(c map[string]any) { c["aud"] = "https://evil.example" }), connect.CodeUnauthenticated, `aud must be "herald"`},
		{"no aud", hs(func(c map[string]any) { delete(c, "aud") }), connect.CodeUnauthenticated, `aud must be "herald"`},
		{"lifetime over the default hour", hs(func(c map[string]any) { delete(c, "iat"); c["exp"] = f.now.Add(2 * time.Hour).Unix() }), connect.CodeUnauthenticated, "its lifetime is over the 1h0m0s this application allows"},
		{"iat to exp over the hour", hs(func(c map[string]any) {
			c["iat"] = f.now.Add(-50 * time.Minute).Unix()
			c["exp"] = f.now.Add(20 * time.Minute).Unix()
		}), connect.CodeUnauthenticated, "its lifetime is over"},
		{"lifetime over the application's 10m", sign(t, jose.ES256, k.ec, "ec-1", with("app_jwks", func(c map[string]any) { c["exp"] = f.now.Add(20 * time.Minute).Unix() })), connect.CodeUnauthenticated, "its lifetime is over the 10m0s"},
		{"no herald claim", hs(func(c map[string]any) { delete(c, "herald") }), connect.CodeUnauthenticated, "the herald claim must name the types"},
		{"empty types", hs(func(c map[string]any) { c["herald"] = map[string]any{"types": []string{}} }), connect.CodeUnauthenticated, "the herald claim must name the types"},
		{"bad type", hs(func(c map[string]any) { c["herald"] = map[string]any{"types": []string{"Billing!"}} }), connect.CodeUnauthenticated, "herald.types"},
		{"type outside the grants", hs(func(c map[string]any) {
			c["herald"] = map[string]any{"types": []string{"billing.*", "identity.user.created"}}
		}), connect.CodePermissionDenied, "the token names identity.user.created, outside the subscribe grants of application app_hs"},
		{"wider than the grants", hs(func(c map[string]any) { c["herald"] = map[string]any{"types": []string{"*"}} }), connect.CodePermissionDenied, "the token names *, outside"},
		{"bad filter", hs(func(c map[string]any) {
			c["herald"] = map[string]any{"types": []string{"billing.*"}, "filter": "data.amount >"}
		}), connect.CodeUnauthenticated, "herald.filter"},
		{"oversize", "eyJ" + strings.Repeat("a", auth.MaxTokenBytes) + ".x.y", connect.CodeUnauthenticated, "over 8192 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.v.Verify(context.Background(), c.token)
			if connect.CodeOf(err) != c.code || err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %v containing %q", err, c.code, c.want)
			}
			assertNoInternals(t, err, f)
		})
	}
}

// assertNoInternals fails when a client-facing error shows key material,
// addresses, the JWKS URL or the library's own words.
func assertNoInternals(t *testing.T, err error, f *fixture) {
	t.Helper()
	msg := err.Error()
	for _, leak := range []string{string(f.keys.secret), "go-jose", "127.0.0.1", f.jwksURL, "10.1.2.3", "BEGIN", "square/go-jose", "crypto/"} {
		if strings.Contains(msg, leak) {
			t.Fatalf("error %q shows %q", msg, leak)
		}
	}
}

// A JWKS URL that fails: the set fetched before keeps verifying; without
// one, UNAVAILABLE without the fetch's detail; unknown kids refetch at
// most every 30s.
func TestTokenJWKSFailures(t *testing.T) {
	f := newFixture(t)
	es := sign(t, jose.ES256, f.keys.ec, "ec-1", f.claims("app_jwks"))
	f.down.Store(true)
	_, err := f.v.Verify(context.Background(), es)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "could not be loaded; retry later") {
		t.Fatalf("JWKS down: %v", err)
	}
	assertNoInternals(t, err, f)

	f.down.Store(false)
	f.now = f.now.Add(31 * time.Second) // past the retry pause
	if _, err := f.v.Verify(context.Background(), sign(t, jose.ES256, f.keys.ec, "ec-1", f.claims("app_jwks"))); err != nil {
		t.Fatalf("JWKS back: %v", err)
	}
	before := f.fetches.Load()
	for range 5 {
		_, err := f.v.Verify(context.Background(), sign(t, jose.ES256, f.keys.ec, "ec-unknown", f.claims("app_jwks")))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := f.fetches.Load() - before; n != 0 {
		t.Fatalf("unknown kids within 30s of a fetch fetched %d more times, want none", n)
	}
	f.now = f.now.Add(31 * time.Second)
	_, _ = f.v.Verify(context.Background(), sign(t, jose.ES256, f.keys.ec, "ec-unknown", f.claims("app_jwks")))
	if n := f.fetches.Load() - before; n != 1 {
		t.Fatalf("an unknown kid 30s later fetched %d times, want 1", n)
	}
	// The URL fails again: the set already held still verifies.
	f.down.Store(true)
	f.now = f.now.Add(20 * time.Minute) // past the TTL, within the hour of staleness
	if _, err := f.v.Verify(context.Background(), sign(t, jose.ES256, f.keys.ec, "ec-1", f.claims("app_jwks"))); err != nil {
		t.Fatalf("a stale set while the URL fails: %v", err)
	}
}

func TestScopeFilterAndDeadline(t *testing.T) {
	f := newFixture(t)
	c := f.claims("app_hs")
	c["herald"] = map[string]any{"types": []string{"billing.*"}, "filter": "data.amount > 100"}
	c["exp"] = time.Now().Add(50*time.Millisecond).Unix() + 1 // whole seconds
	f.now = time.Now()
	p, err := f.v.Verify(context.Background(), sign(t, jose.HS256, f.keys.secret, "hts_1", c))
	if err != nil {
		t.Fatal(err)
	}
	big := &eventv1.CloudEvent{Id: "1", Type: "billing.invoice.paid", Data: &eventv1.CloudEvent_TextData{TextData: `{"amount":500}`}}
	small := &eventv1.CloudEvent{Id: "2", Type: "billing.invoice.paid", Data: &eventv1.CloudEvent_TextData{TextData: `{"amount":5}`}}
	if !p.Scope.Matches(big) || p.Scope.Matches(small) || p.Scope.Filter != "data.amount > 100" {
		t.Fatal("the scope's filter does not apply")
	}
	var none *auth.Scope
	if !none.Matches(small) || !none.Allows("anything.at.all") || none.Permit("x.y") != nil {
		t.Fatal("a nil scope must narrow nothing")
	}
	ctx, cancel := p.Scope.Deadline(context.Background())
	defer cancel()
	<-ctx.Done()
	if !errors.Is(context.Cause(ctx), auth.ErrTokenExpired) || connect.CodeOf(context.Cause(ctx)) != connect.CodeUnauthenticated {
		t.Fatalf("cause %v, want ErrTokenExpired", context.Cause(ctx))
	}
	if same, _ := none.Deadline(context.Background()); same != context.Background() {
		t.Fatal("a nil scope must not add a deadline")
	}
}

func TestTokenKeyIDRoundTrip(t *testing.T) {
	id := auth.TokenKeyID("app_1", auth.TokenSourceJWKS, "kid/with/slashes")
	app, src, kid, ok := auth.ParseTokenKeyID(id)
	if !ok || app != "app_1" || src != auth.TokenSourceJWKS || kid != "kid/with/slashes" {
		t.Fatalf("ParseTokenKeyID(%q) = %q %q %q %v", id, app, src, kid, ok)
	}
	if _, _, _, ok := auth.ParseTokenKeyID("key_abc"); ok {
		t.Fatal("an application key's id parsed as a token key id")
	}
}

func TestParsePublicKey(t *testing.T) {
	k := newTokenKeys(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallDER, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	jwk := func(key any, alg string) string {
		b, err := json.Marshal(jose.JSONWebKey{Key: key, Algorithm: alg})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	ok := []struct {
		in  string
		alg jose.SignatureAlgorithm
	}{
		{k.rsaPEM, jose.RS256},
		{jwk(&k.ec.PublicKey, ""), jose.ES256},
		{jwk(k.ed.Public(), "EdDSA"), jose.EdDSA},
		{string(pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})), jose.RS256},
	}
	for _, c := range ok {
		_, alg, tp, err := auth.ParsePublicKey(c.in)
		if err != nil || alg != c.alg || len(tp) != 43 {
			t.Errorf("ParsePublicKey(%.40q) = %v %q %v, want %v", c.in, alg, tp, err, c.alg)
		}
	}
	bad := map[string]string{
		"private JWK":  jwk(k.ec, ""),
		"wrong alg":    jwk(&k.ec.PublicKey, "RS256"),
		"RSA 1024":     string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: smallDER})),
		"P-384":        string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: p384DER})),
		"private PEM":  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})),
		"not a key":    "hello",
		"broken JSON":  "{",
		"oct JWK":      jwk([]byte("0123456789abcdef0123456789abcdef"), ""),
		"corrupt PEM ": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
	}
	for name, in := range bad {
		if _, _, _, err := auth.ParsePublicKey(in); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "asn1") || strings.Contains(err.Error(), "go-jose") {
			t.Errorf("%s: error %q shows internals", name, err)
		}
	}
}

// The authenticator takes tokens from the header, access_token or the
// herald_token cookie on token routes only, and cookies and query
// parameters only on GET.
func TestAuthenticatorAcceptsTokensOnTokenRoutes(t *testing.T) {
	f := newFixture(t)
	a, err := auth.New(auth.Options{AdminKey: "test-admin-key-0123456789", Resolver: auth.ResolverFunc(func(_ context.Context, h string) (auth.Principal, error) {
		if h == auth.HashSecret("hk_good") {
			return auth.Principal{ApplicationID: "app_key", KeyID: "key_1"}, nil
		}
		return auth.Principal{}, auth.ErrUnknownKey
	})})
	if err != nil {
		t.Fatal(err)
	}
	a.AcceptTokens(f.v, func(r *http.Request) bool { return r.URL.Path == "/v1/stream" })
	f.now = time.Now()
	tok := sign(t, jose.HS256, f.keys.secret, "hts_1", f.claims("app_hs"))
	req := func(method, target string, set func(*http.Request)) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		if set != nil {
			set(r)
		}
		return r
	}
	cookie := func(v string) func(*http.Request) {
		return func(r *http.Request) { r.AddCookie(&http.Cookie{Name: auth.TokenCookie, Value: v}) }
	}
	good := []struct {
		name string
		r    *http.Request
		app  string
	}{
		{"header", req("GET", "/v1/stream", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }), "app_hs"},
		{"query", req("GET", "/v1/stream?types=billing.*&access_token="+tok, nil), "app_hs"},
		{"cookie", req("GET", "/v1/stream", cookie(tok)), "app_hs"},
		{"key in a cookie", req("GET", "/v1/stream", cookie("hk_good")), "app_key"},
	}
	for _, c := range good {
		p, err := a.Request(c.r, true)
		if err != nil || p.ApplicationID != c.app {
			t.Errorf("%s: %+v, %v", c.name, p, err)
		}
		if (c.app == "app_hs") != (p.Scope != nil) {
			t.Errorf("%s: scope %v", c.name, p.Scope)
		}
	}
	bad := []struct {
		name       string
		r          *http.Request
		allowQuery bool
		want       string
	}{
		{"token off the token routes", req("GET", "/v1/other", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }), true, "accepted only on the stream routes"},
		{"cookie on a POST", req("POST", "/v1/stream", cookie(tok)), true, "missing key"},
		{"query on an RPC route", req("GET", "/v1/stream?access_token="+tok, nil), false, "missing key"},
		{"forged token", req("GET", "/v1/stream?access_token="+tok+"x", nil), true, "the signature does not verify"},
	}
	for _, c := range bad {
		_, err := a.Request(c.r, c.allowQuery)
		if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want UNAUTHENTICATED with %q", c.name, err, c.want)
		}
	}
}
