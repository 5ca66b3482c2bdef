package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// JWKS cache bounds.
const (
	// DefaultJWKSTTL is how long a fetched key set is used before it is
	// fetched again.
	DefaultJWKSTTL = 5 * time.Minute
	// jwksMinRefresh is the least time between two fetches of one URL, so
	// that tokens naming unknown kids cannot make the edge hammer it.
	jwksMinRefresh = 30 * time.Second
	// jwksMaxStale is how long a set is still used while its URL fails.
	jwksMaxStale = time.Hour
	// maxJWKSBytes bounds a key set document.
	maxJWKSBytes = 256 << 10
	// maxJWKSKeys bounds the keys kept of one set.
	maxJWKSKeys = 100
	// maxJWKSURLs bounds the sets cached.
	maxJWKSURLs = 10000
)

// JWKSCache fetches applications' JSON Web Key Sets and keeps them for a
// TTL, fetching again early (at most every 30s) for a kid it does not know.
// A set whose URL fails keeps being used for an hour.
type JWKSCache struct {
	client *http.Client
	ttl    time.Duration
	now    func() time.Time

	mu      sync.Mutex
	entries map[string]*jwksEntry
	group   singleflight.Group
}

type jwksEntry struct {
	keys    []TokenKey
	fetched time.Time // last successful fetch
	tried   time.Time // last attempt
	err     error     // of the last attempt
}

// NewJWKSCache returns a cache fetching with client, which should be an
// outbound-guarded client (platform/safehttp) since applications choose
// the URLs. ttl <= 0 is DefaultJWKSTTL.
func NewJWKSCache(client *http.Client, ttl time.Duration) *JWKSCache {
	if ttl <= 0 {
		ttl = DefaultJWKSTTL
	}
	return &JWKSCache{client: client, ttl: ttl, now: time.Now, entries: map[string]*jwksEntry{}}
}

// SetClock replaces the cache's clock (tests). Call it before use.
func (c *JWKSCache) SetClock(now func() time.Time) { c.now = now }

// errJWKS is what a failed fetch reports: the detail (addresses, status)
// goes to no client.
var errJWKS = errors.New("the JWKS could not be fetched")

// Keys returns the signing keys of the set at url. refresh asks for a
// fetch even within the TTL (a kid was not found), which is honoured at
// most every 30s.
func (c *JWKSCache) Keys(ctx context.Context, url string, refresh bool) ([]TokenKey, error) {
	now := c.now()
	c.mu.Lock()
	e := c.entries[url]
	c.mu.Unlock()
	if e != nil {
		fresh := !e.fetched.IsZero() && now.Sub(e.fetched) < c.ttl
		recent := now.Sub(e.tried) < jwksMinRefresh
		switch {
		case fresh && (!refresh || recent):
			return e.keys, nil
		case recent && e.err != nil:
			// Failed a moment ago: do not try again yet.
			if !e.fetched.IsZero() && now.Sub(e.fetched) < jwksMaxStale {
				return e.keys, nil
			}
			return nil, errJWKS
		}
	}
	v, _, _ := c.group.Do(url, func() (any, error) {
		keys, err := c.fetch(ctx, url)
		c.mu.Lock()
		defer c.mu.Unlock()
		old := c.entries[url]
		n := &jwksEntry{tried: c.now(), err: err}
		if err == nil {
			n.keys, n.fetched = keys, n.tried
		} else if old != nil {
			n.keys, n.fetched = old.keys, old.fetched
		}
		if old == nil && len(c.entries) >= maxJWKSURLs {
			clear(c.entries)
		}
		c.entries[url] = n
		return n, nil
	})
	n := v.(*jwksEntry)
	if n.err != nil {
		if !n.fetched.IsZero() && c.now().Sub(n.fetched) < jwksMaxStale {
			return n.keys, nil
		}
		return nil, errJWKS
	}
	return n.keys, nil
}

// fetch GETs and parses one set.
func (c *JWKSCache) fetch(ctx context.Context, url string) ([]TokenKey, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	res, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS %s answered %s", url, res.Status)
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS %s is over %d bytes", url, maxJWKSBytes)
	}
	return ParseJWKS(body)
}

// ParseJWKS returns the token keys of a JSON Web Key Set document: its
// public signing keys of the types ParsePublicKey takes (the kid as given,
// or the thumbprint), skipping any other key. A set with none is an error.
func ParseJWKS(doc []byte) ([]TokenKey, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, errors.New("not a JSON Web Key Set")
	}
	var out []TokenKey
	for _, k := range raw.Keys {
		var head struct {
			Kid string `json:"kid"`
		}
		_ = json.Unmarshal(k, &head)
		pub, alg, tp, err := ParsePublicKey(string(k))
		if err != nil {
			continue // another kind of key: not ours to use
		}
		kid := head.Kid
		if kid == "" {
			kid = tp
		}
		out = append(out, TokenKey{ID: kid, Source: TokenSourceJWKS, Algorithm: alg, Key: pub})
		if len(out) == maxJWKSKeys {
			break
		}
	}
	if len(out) == 0 {
		return nil, errors.New("the JSON Web Key Set has no RS256, ES256 or EdDSA signing key")
	}
	return out, nil
}
