package webhook

import (
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// JWKS renders an RFC 7517 JSON Web Key Set of Ed25519 public keys, so that
// receivers can discover the keys of v1a signatures: one key per entry of
// keys, keyed by its kid, each {"kty":"OKP","crv":"Ed25519","x":...,
// "kid":...,"use":"sig","alg":"EdDSA"}, in kid order. A value is a whpk_
// public key, or a whsk_ signing key whose public key is published (the
// private half never is).
func JWKS(keys map[string]string) ([]byte, error) {
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	slices.Sort(kids)
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(kids))}
	for _, kid := range kids {
		if kid == "" {
			return nil, errors.New("webhook: a JWKS key needs a non-empty kid")
		}
		pub, err := publicOf(keys[kid])
		if err != nil {
			return nil, fmt.Errorf("kid %q: %w", kid, err)
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key:       pub,
			KeyID:     kid,
			Use:       "sig",
			Algorithm: string(jose.EdDSA),
		})
	}
	return json.Marshal(set)
}

// ParseJWKS is the receiving side of JWKS: it returns the whpk_ keys of the
// Ed25519 signing keys of a JSON Web Key Set, by kid, ready for NewVerifier.
// Keys of other types or uses are skipped.
func ParseJWKS(doc []byte) (map[string]string, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(doc, &set); err != nil {
		return nil, fmt.Errorf("webhook: not a JSON Web Key Set: %w", err)
	}
	out := make(map[string]string, len(set.Keys))
	for _, k := range set.Keys {
		pub, ok := k.Key.(ed25519.PublicKey)
		if !ok || (k.Use != "" && k.Use != "sig") {
			continue
		}
		out[k.KeyID] = PrefixPublicKey + b64.EncodeToString(pub)
	}
	if len(out) == 0 {
		return nil, errors.New("webhook: the JSON Web Key Set has no Ed25519 signing key")
	}
	return out, nil
}

// KeyID returns a stable kid for a whpk_ public key (or a whsk_ signing
// key's public key): its RFC 7638 JWK thumbprint (SHA-256, base64url), the
// same for every process that publishes the key.
func KeyID(key string) (string, error) {
	pub, err := publicOf(key)
	if err != nil {
		return "", err
	}
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("webhook: thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// publicOf returns the public key of a whpk_ or whsk_ key.
func publicOf(key string) (ed25519.PublicKey, error) {
	key = strings.TrimSpace(key)
	if strings.HasPrefix(key, PrefixSigningKey) {
		priv, err := parseSigningKey(key)
		if err != nil {
			return nil, err
		}
		return priv.Public().(ed25519.PublicKey), nil
	}
	if !strings.HasPrefix(key, PrefixPublicKey) {
		return nil, errors.New("webhook: want a whpk_ public key (or a whsk_ signing key)")
	}
	return parsePublicKey(key)
}
