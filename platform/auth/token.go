package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/filter"
)

// Browser tokens are short-lived JWTs an application mints for its users,
// so that a browser never holds an application key. The claims:
//
//	header  alg  HS256 (a secret of the application), RS256, ES256 or EdDSA
//	             (a public key held in the registry or in its JWKS); no other
//	        kid  which of the application's keys signed it (optional when
//	             only one key of that algorithm could have)
//	iss     the application id (required)
//	sub     the end user (optional; kept for logs)
//	aud     "herald" or the edge's public URL (required)
//	exp     required; at most the application's max lifetime ahead (1h by
//	        default), and an open stream ends when it passes
//	nbf iat honoured, with TokenOptions.Leeway for clock skew
//	herald  {"types": ["billing.*"], "filter": "<CEL>"}: what the bearer
//	        may stream (required, within the application's subscribe
//	        grants), and an optional filter applied to every event
//
// A token only narrows its application's rights: grants, audience and
// visibility still apply, and are re-checked on open streams as for keys.

// Token algorithms Herald accepts; "none" and every other alg are refused.
var tokenAlgorithms = []jose.SignatureAlgorithm{jose.HS256, jose.RS256, jose.ES256, jose.EdDSA}

// Token limits.
const (
	// MaxTokenBytes bounds a token's size.
	MaxTokenBytes = 8 << 10
	// MaxTokenTypes bounds the types of a token's herald claim.
	MaxTokenTypes = 50
	// DefaultTokenLifetime is an application's max token lifetime unless
	// its settings give one.
	DefaultTokenLifetime = time.Hour
	// DefaultTokenLeeway is the clock skew allowed on nbf and iat.
	DefaultTokenLeeway = 30 * time.Second
	// TokenCookie is the cookie the stream routes read a token (or a key)
	// from when neither the Authorization header nor access_token has one.
	TokenCookie = "herald_token"
	// TokenAudience is the aud every edge accepts.
	TokenAudience = "herald"
)

// Sources of a token key, in the key id of a token's principal.
const (
	TokenSourceSecret = "secret" // an HS256 secret of the application
	TokenSourceKey    = "key"    // a public key held in the registry
	TokenSourceJWKS   = "jwks"   // a public key of the application's JWKS URL
)

// Scope is what the bearer of a browser token may stream; nil (a key's
// principal) narrows nothing.
type Scope struct {
	// Types are the names and patterns of the token's herald.types.
	Types []string
	// Filter is the token's herald.filter ("" for none): a CEL filter
	// every delivered event must match.
	Filter string
	// Expires is the token's exp: an open stream ends then.
	Expires time.Time
	// Subject is the token's sub, the application's end user ("" if none).
	Subject string

	compiled *filter.Filter
}

// Allows reports whether the scope covers a requested type or pattern
// (billing.* covers billing.invoice.paid and billing.invoice.*). A nil
// scope allows everything.
func (s *Scope) Allows(pattern string) bool {
	if s == nil {
		return true
	}
	for _, t := range s.Types {
		if access.Covers(t, pattern) {
			return true
		}
	}
	return false
}

// Permit is Allows as the error a stream request is refused with:
// PERMISSION_DENIED naming the pattern, or nil.
func (s *Scope) Permit(pattern string) error {
	if s.Allows(pattern) {
		return nil
	}
	return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("the token does not cover %s: its herald.types are %s", pattern, strings.Join(s.Types, ", ")))
}

// Matches reports whether an event passes the scope's filter. A nil scope,
// or one without a filter, matches every event; an event the filter cannot
// be evaluated on does not match.
func (s *Scope) Matches(ev *eventv1.CloudEvent) bool {
	if s == nil || s.compiled == nil {
		return true
	}
	ok, err := s.compiled.Match(ev)
	return err == nil && ok
}

// ErrTokenExpired is wrapped by the cause of a stream context that
// Deadline ended.
var ErrTokenExpired = errors.New("the token of this stream has expired")

// Deadline returns ctx ending when the scope's token expires, with an
// UNAUTHENTICATED connect error wrapping ErrTokenExpired as its cause
// (context.Cause); for a nil scope, ctx itself. Call the cancel function
// when the stream ends.
func (s *Scope) Deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if s == nil || s.Expires.IsZero() {
		return ctx, func() {}
	}
	return context.WithDeadlineCause(ctx, s.Expires, connect.NewError(connect.CodeUnauthenticated, ErrTokenExpired))
}

// TokenKeyID is the key id of a token principal: which key of which
// application verified the token, so that open streams can be ended when
// that key is withdrawn (see ParseTokenKeyID).
func TokenKeyID(applicationID, source, kid string) string {
	return "token/" + applicationID + "/" + source + "/" + kid
}

// ParseTokenKeyID splits a TokenKeyID; ok is false for an application
// key's id.
func ParseTokenKeyID(id string) (applicationID, source, kid string, ok bool) {
	rest, ok := strings.CutPrefix(id, "token/")
	if !ok {
		return "", "", "", false
	}
	applicationID, rest, ok1 := strings.Cut(rest, "/")
	source, kid, ok2 := strings.Cut(rest, "/")
	if !ok1 || !ok2 {
		return "", "", "", false
	}
	return applicationID, source, kid, true
}

// TokenKey is one key that may verify an application's tokens.
type TokenKey struct {
	// ID is its kid.
	ID string
	// Source is TokenSourceSecret, TokenSourceKey or TokenSourceJWKS.
	Source string
	// Algorithm is the only alg it verifies.
	Algorithm jose.SignatureAlgorithm
	// Key is the HMAC key ([]byte) or the public key (*rsa.PublicKey,
	// *ecdsa.PublicKey, ed25519.PublicKey).
	Key any
}

// Issuer is an application as a token issuer: its keys and its limits.
type Issuer struct {
	ApplicationID string
	// Keys are the registry's: HS256 secrets and public keys.
	Keys []TokenKey
	// JWKSURL is where more public keys are fetched from ("" for none).
	JWKSURL string
	// MaxLifetime bounds exp; 0 means DefaultTokenLifetime.
	MaxLifetime time.Duration
	// Subscribable reports whether the application's subscribe grants
	// cover a type or pattern.
	Subscribable func(pattern string) bool
}

// ErrUnknownIssuer is returned by Issuers for an application that does not
// exist or accepts no tokens.
var ErrUnknownIssuer = errors.New("unknown issuer")

// Issuers finds the token settings of an application.
type Issuers interface {
	TokenIssuer(ctx context.Context, applicationID string) (*Issuer, error)
}

// TokenOptions configure a TokenVerifier.
type TokenOptions struct {
	// Issuers finds applications' keys. Required.
	Issuers Issuers
	// Audiences are the aud values accepted; TokenAudience is always one.
	Audiences []string
	// Leeway is the clock skew allowed on nbf and iat (never on exp).
	// Default DefaultTokenLeeway.
	Leeway time.Duration
	// JWKS fetches JWKS URLs; nil refuses the tokens of applications that
	// have only a JWKS URL.
	JWKS *JWKSCache
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// TokenVerifier verifies browser tokens (see the claims above).
type TokenVerifier struct {
	o         TokenOptions
	audiences []string
}

// NewTokenVerifier returns a verifier.
func NewTokenVerifier(o TokenOptions) *TokenVerifier {
	if o.Leeway <= 0 {
		o.Leeway = DefaultTokenLeeway
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	auds := []string{TokenAudience}
	for _, a := range o.Audiences {
		if a = strings.TrimSuffix(a, "/"); a != "" && a != TokenAudience {
			auds = append(auds, a)
		}
	}
	return &TokenVerifier{o: o, audiences: auds}
}

// tokenClaims are the claims Herald reads.
type tokenClaims struct {
	jwt.Claims
	Herald *struct {
		Types  []string `json:"types"`
		Filter string   `json:"filter"`
	} `json:"herald"`
}

func invalidToken(format string, args ...any) error {
	return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("invalid token: "+format, args...))
}

// LooksLikeToken reports whether a bearer credential is a JWT (three
// base64url parts, a JSON header) rather than a key.
func LooksLikeToken(s string) bool {
	return strings.HasPrefix(s, "eyJ") && strings.Count(s, ".") == 2
}

// Verify checks a token and returns its principal: the application as
// issuer, KeyID from TokenKeyID, and the token's Scope. Errors are connect
// errors: UNAUTHENTICATED saying what is wrong with the token (never which
// keys exist or why a fetch failed), PERMISSION_DENIED for types outside
// the application's subscribe grants, UNAVAILABLE when the keys could not
// be loaded.
func (v *TokenVerifier) Verify(ctx context.Context, raw string) (Principal, error) {
	if len(raw) > MaxTokenBytes {
		return Principal{}, invalidToken("it is over %d bytes", MaxTokenBytes)
	}
	tok, err := jwt.ParseSigned(raw, tokenAlgorithms)
	if err != nil {
		return Principal{}, invalidToken("not a JWT in compact form signed with HS256, RS256, ES256 or EdDSA")
	}
	if len(tok.Headers) != 1 {
		return Principal{}, invalidToken("it must have exactly one signature")
	}
	hdr := tok.Headers[0]
	alg := jose.SignatureAlgorithm(hdr.Algorithm)
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return Principal{}, invalidToken("its claims are not a JSON object of registered claims")
	}
	if unverified.Issuer == "" {
		return Principal{}, invalidToken("iss is required: the id of the application that minted it")
	}
	iss, err := v.o.Issuers.TokenIssuer(ctx, unverified.Issuer)
	if errors.Is(err, ErrUnknownIssuer) {
		return Principal{}, invalidToken("iss is not an application that accepts tokens")
	}
	if err != nil {
		return Principal{}, connect.NewError(connect.CodeUnavailable, errors.New("the token could not be checked; retry later"))
	}
	key, claims, err := v.verifySignature(ctx, tok, iss, alg, hdr.KeyID)
	if err != nil {
		return Principal{}, err
	}
	scope, err := v.checkClaims(iss, claims)
	if err != nil {
		return Principal{}, err
	}
	return Principal{ApplicationID: iss.ApplicationID, KeyID: TokenKeyID(iss.ApplicationID, key.Source, key.ID), Scope: scope}, nil
}

// verifySignature finds the keys of iss that could have signed the token
// (its alg, its kid) and returns the one that verifies, with the claims.
func (v *TokenVerifier) verifySignature(ctx context.Context, tok *jwt.JSONWebToken, iss *Issuer, alg jose.SignatureAlgorithm, kid string) (TokenKey, *tokenClaims, error) {
	candidates, algKnown := matchKeys(iss.Keys, alg, kid)
	if len(candidates) == 0 && alg != jose.HS256 && iss.JWKSURL != "" && v.o.JWKS != nil {
		keys, err := v.o.JWKS.Keys(ctx, iss.JWKSURL, false)
		if err == nil {
			var known bool
			candidates, known = matchKeys(keys, alg, kid)
			if len(candidates) == 0 && kid != "" {
				// A key added to the set since it was fetched.
				if keys, err = v.o.JWKS.Keys(ctx, iss.JWKSURL, true); err == nil {
					candidates, known = matchKeys(keys, alg, kid)
				}
			}
			algKnown = algKnown || known
		}
		if err != nil && len(candidates) == 0 {
			return TokenKey{}, nil, connect.NewError(connect.CodeUnavailable, errors.New("the application's token keys could not be loaded; retry later"))
		}
	}
	if len(candidates) == 0 {
		if !algKnown {
			return TokenKey{}, nil, invalidToken("alg %s is not configured for this application", alg)
		}
		return TokenKey{}, nil, invalidToken("kid is not a key of this application")
	}
	for _, k := range candidates {
		var c tokenClaims
		if err := tok.Claims(k.Key, &c); err == nil {
			return k, &c, nil
		}
	}
	return TokenKey{}, nil, invalidToken("the signature does not verify")
}

// matchKeys returns the keys of alg with that kid (any kid when it is
// empty), and whether any key of alg exists at all.
func matchKeys(keys []TokenKey, alg jose.SignatureAlgorithm, kid string) (out []TokenKey, algKnown bool) {
	for _, k := range keys {
		if k.Algorithm != alg {
			continue
		}
		algKnown = true
		if kid == "" || k.ID == kid {
			out = append(out, k)
		}
	}
	return out, algKnown
}

// checkClaims validates the verified claims and returns the scope.
func (v *TokenVerifier) checkClaims(iss *Issuer, c *tokenClaims) (*Scope, error) {
	now := v.o.Now()
	if c.Expiry == nil {
		return nil, invalidToken("exp is required")
	}
	exp := c.Expiry.Time()
	if !now.Before(exp) {
		return nil, invalidToken("it has expired")
	}
	if c.NotBefore != nil && now.Add(v.o.Leeway).Before(c.NotBefore.Time()) {
		return nil, invalidToken("it is not valid yet (nbf)")
	}
	if c.IssuedAt != nil && now.Add(v.o.Leeway).Before(c.IssuedAt.Time()) {
		return nil, invalidToken("it was issued in the future (iat)")
	}
	maxLife := iss.MaxLifetime
	if maxLife <= 0 {
		maxLife = DefaultTokenLifetime
	}
	if exp.Sub(now) > maxLife+v.o.Leeway || (c.IssuedAt != nil && exp.Sub(c.IssuedAt.Time()) > maxLife) {
		return nil, invalidToken("its lifetime is over the %v this application allows", maxLife)
	}
	audOK := false
	for _, a := range v.audiences {
		if c.Audience.Contains(a) {
			audOK = true
			break
		}
	}
	if !audOK {
		return nil, invalidToken("aud must be %q", TokenAudience)
	}
	if c.Herald == nil || len(c.Herald.Types) == 0 {
		return nil, invalidToken(`the herald claim must name the types the bearer may stream: {"herald":{"types":["billing.*"]}}`)
	}
	if len(c.Herald.Types) > MaxTokenTypes {
		return nil, invalidToken("herald.types has %d entries, more than the %d allowed", len(c.Herald.Types), MaxTokenTypes)
	}
	for _, t := range c.Herald.Types {
		if err := eventtype.ValidatePattern(t); err != nil {
			return nil, invalidToken("herald.types: %v", err)
		}
		if iss.Subscribable != nil && !iss.Subscribable(t) {
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("the token names %s, outside the subscribe grants of application %s", t, iss.ApplicationID))
		}
	}
	s := &Scope{Types: c.Herald.Types, Filter: c.Herald.Filter, Expires: exp, Subject: c.Subject}
	if s.Filter != "" {
		f, err := filter.Check(s.Filter)
		if err != nil {
			return nil, invalidToken("herald.filter: %v", err)
		}
		s.compiled = f
	}
	return s, nil
}

// NewTokenSecret returns a new HS256 secret for an application's tokens
// ("hts_" + 43 base64url characters: 256 random bits). Its UTF-8 bytes are
// the HMAC key.
func NewTokenSecret() string { return "hts_" + randomToken(32) }

// TokenSecretContext is the secretbox context an application's HS256
// secret is sealed under, so that a sealed value copied to another
// application or secret does not open.
func TokenSecretContext(applicationID, secretID string) string {
	return "token/" + applicationID + "/" + secretID
}

// ParsePublicKey reads a public key for tokens, given as a JWK (a JSON
// object) or PEM (PUBLIC KEY, or RSA PUBLIC KEY), and returns it with the
// algorithm it verifies and its RFC 7638 thumbprint (SHA-256, base64url):
// RS256 for RSA of at least 2048 bits, ES256 for EC P-256, EdDSA for
// Ed25519. A JWK naming another alg, or holding a private key, is refused.
func ParsePublicKey(s string) (key any, alg jose.SignatureAlgorithm, thumbprint string, err error) {
	s = strings.TrimSpace(s)
	var pub any
	switch {
	case strings.HasPrefix(s, "{"):
		var jwk jose.JSONWebKey
		if err := json.Unmarshal([]byte(s), &jwk); err != nil {
			return nil, "", "", errors.New("not a valid JWK")
		}
		if !jwk.IsPublic() {
			return nil, "", "", errors.New("the JWK holds a private key: give only the public key")
		}
		if jwk.Use != "" && jwk.Use != "sig" {
			return nil, "", "", fmt.Errorf("the JWK's use is %q, not sig", jwk.Use)
		}
		pub = jwk.Key
		if jwk.Algorithm != "" {
			alg = jose.SignatureAlgorithm(jwk.Algorithm)
		}
	case strings.HasPrefix(s, "-----BEGIN"):
		block, _ := pem.Decode([]byte(s))
		if block == nil {
			return nil, "", "", errors.New("not a valid PEM block")
		}
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		default:
			return nil, "", "", fmt.Errorf("a PEM %q block is not a public key: give a PUBLIC KEY block", block.Type)
		}
		if err != nil {
			return nil, "", "", errors.New("the PEM block does not hold a valid public key")
		}
	default:
		return nil, "", "", errors.New("give the public key as a JWK (JSON) or in PEM")
	}
	want, err := algorithmOf(pub)
	if err != nil {
		return nil, "", "", err
	}
	if alg != "" && alg != want {
		return nil, "", "", fmt.Errorf("the JWK's alg %s does not fit its key (%s)", alg, want)
	}
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, "", "", errors.New("cannot compute the key's thumbprint")
	}
	return pub, want, base64.RawURLEncoding.EncodeToString(tp), nil
}

// algorithmOf is the one alg a public key verifies.
func algorithmOf(pub any) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return "", fmt.Errorf("the RSA key has %d bits: at least 2048 are needed", k.N.BitLen())
		}
		return jose.RS256, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", errors.New("the EC key is not on P-256: ES256 needs a P-256 key")
		}
		return jose.ES256, nil
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	default:
		return "", errors.New("unsupported key type: give an RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA) public key")
	}
}
