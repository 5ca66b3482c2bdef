package catalog

import (
	"context"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/secretbox"
)

// TokenIssuers returns the applications' token settings as the edge's
// token verifier needs them (auth.Issuers): HS256 secrets opened with box
// (nil: HS256 tokens are refused), public keys parsed, the subscribe
// grants. It reads only what Watch delivered, never asking the registry,
// so that tokens naming random issuers cost no registry call; an
// application created a moment ago accepts tokens once its change arrives.
// Opened and parsed keys are kept per application revision.
func (c *Cache) TokenIssuers(box *secretbox.Box) auth.Issuers {
	return &tokenIssuers{c: c, box: box, built: map[string]*builtIssuer{}}
}

type tokenIssuers struct {
	c   *Cache
	box *secretbox.Box

	mu    sync.Mutex
	built map[string]*builtIssuer
}

type builtIssuer struct {
	app     *registryv1.Application // the version it was built from
	keys    []auth.TokenKey
	expires []time.Time // of keys[i]; zero: never
}

const maxBuiltIssuers = 10000

func (t *tokenIssuers) TokenIssuer(_ context.Context, appID string) (*auth.Issuer, error) {
	t.c.mu.RLock()
	app, ok := t.c.apps[appID]
	t.c.mu.RUnlock()
	ts := app.GetTokenSettings()
	if !ok || ts == nil {
		return nil, auth.ErrUnknownIssuer
	}
	t.mu.Lock()
	b, ok := t.built[appID]
	if !ok || b.app != app {
		b = t.build(app)
		if len(t.built) >= maxBuiltIssuers {
			clear(t.built)
		}
		t.built[appID] = b
	}
	t.mu.Unlock()
	now := time.Now()
	iss := &auth.Issuer{
		ApplicationID: appID,
		JWKSURL:       ts.GetJwksUrl(),
		MaxLifetime:   ts.GetMaxLifetime().AsDuration(),
		Subscribable: func(p string) bool {
			return access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, p)
		},
	}
	for i, k := range b.keys {
		if e := b.expires[i]; e.IsZero() || now.Before(e) {
			iss.Keys = append(iss.Keys, k)
		}
	}
	return iss, nil
}

// build opens and parses an application's keys. A key that does not open
// or parse (sealed under a retired secret key, say) is left out: its
// tokens are refused, the others still verify.
func (t *tokenIssuers) build(app *registryv1.Application) *builtIssuer {
	b := &builtIssuer{app: app}
	ts := app.GetTokenSettings()
	if t.box != nil {
		for _, s := range ts.GetSecrets() {
			secret, err := t.box.Open(s.GetSealed(), auth.TokenSecretContext(app.GetId(), s.GetId()))
			if err != nil {
				t.c.log.Error("token secret does not open; its tokens are refused", "application", app.GetId(), "secret", s.GetId(), "err", err)
				continue
			}
			var exp time.Time
			if s.GetExpireTime() != nil {
				exp = s.GetExpireTime().AsTime()
			}
			b.keys = append(b.keys, auth.TokenKey{ID: s.GetId(), Source: auth.TokenSourceSecret, Algorithm: jose.HS256, Key: secret})
			b.expires = append(b.expires, exp)
		}
	}
	for _, k := range ts.GetPublicKeys() {
		pub, alg, _, err := auth.ParsePublicKey(k.GetKey())
		if err != nil {
			t.c.log.Error("token public key does not parse; its tokens are refused", "application", app.GetId(), "kid", k.GetId(), "err", err)
			continue
		}
		b.keys = append(b.keys, auth.TokenKey{ID: k.GetId(), Source: auth.TokenSourceKey, Algorithm: alg, Key: pub})
		b.expires = append(b.expires, time.Time{})
	}
	return b
}

// tokenKeyState reports, for the key id of a token principal, whether the
// key that verified the token is known to be gone (its secret retired or
// rotated out, its public key or JWKS URL removed, the application's token
// settings dropped) and when it expires (zero: no expiry). ok is false for
// other key ids. The caller holds the read lock.
func (c *Cache) tokenKeyState(keyID string, now time.Time) (revoked bool, expires time.Time, ok bool) {
	appID, source, kid, ok := auth.ParseTokenKeyID(keyID)
	if !ok {
		return false, time.Time{}, false
	}
	app, known := c.apps[appID]
	if !known {
		return false, time.Time{}, true // not seen yet: its change follows
	}
	ts := app.GetTokenSettings()
	switch source {
	case auth.TokenSourceSecret:
		for _, s := range ts.GetSecrets() {
			if s.GetId() == kid {
				if s.GetExpireTime() == nil {
					return false, time.Time{}, true
				}
				exp := s.GetExpireTime().AsTime()
				return !now.Before(exp), exp, true
			}
		}
	case auth.TokenSourceKey:
		for _, k := range ts.GetPublicKeys() {
			if k.GetId() == kid {
				return false, time.Time{}, true
			}
		}
	case auth.TokenSourceJWKS:
		// The set itself is the application's: only its removal is seen.
		return ts.GetJwksUrl() == "", time.Time{}, true
	}
	return true, time.Time{}, true
}
