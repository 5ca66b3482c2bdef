// Package webhook signs and verifies webhooks the Standard Webhooks way
// (https://www.standardwebhooks.com): the webhook-id, webhook-timestamp and
// webhook-signature headers, symmetric v1 (HMAC-SHA256, whsec_ secrets) and
// asymmetric v1a (Ed25519, whsk_/whpk_ keys) signatures, several at once
// during a rotation. The edge signs with a Signer; receivers, tests and
// `herald webhooks verify` check with a Verifier, whose errors say exactly why
// a request does not verify.
package webhook

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Key prefixes of the specification: they tell a key's kind at a glance and
// let Signer and Verifier pick the scheme without configuration.
const (
	// PrefixSecret starts a symmetric secret, shared by sender and receiver
	// (v1 signatures, HMAC-SHA256).
	PrefixSecret = "whsec_"
	// PrefixSigningKey starts an Ed25519 private key, held by the sender
	// only (v1a signatures).
	PrefixSigningKey = "whsk_"
	// PrefixPublicKey starts an Ed25519 public key, given to receivers.
	PrefixPublicKey = "whpk_"
)

// MinSecretBytes is the shortest secret the specification allows (192 bits).
// NewSecret makes 32-byte secrets.
const MinSecretBytes = 24

// Signature schemes, the identifier before the comma of each signature in
// the webhook-signature header.
const (
	// SchemeHMAC is the symmetric scheme: HMAC-SHA256 under a whsec_ secret.
	SchemeHMAC = "v1"
	// SchemeEd25519 is the asymmetric scheme: Ed25519 under a whsk_ key,
	// verified with its whpk_ public key.
	SchemeEd25519 = "v1a"
)

// secretBytes is the length of the secrets NewSecret makes.
const secretBytes = 32

var b64 = base64.StdEncoding

// NewSecret returns a new random symmetric secret: "whsec_" and the
// standard base64 of 32 random bytes.
func NewSecret() string {
	b := make([]byte, secretBytes)
	_, _ = rand.Read(b) // never fails: crypto/rand crashes the program instead
	return PrefixSecret + b64.EncodeToString(b)
}

// ParseSecret returns the bytes of a symmetric secret. The whsec_ prefix is
// optional, as in the specification's libraries; surrounding white space
// (from a copy and paste) is ignored. A secret must be standard base64 and
// decode to at least MinSecretBytes bytes. An Ed25519 key is refused with an
// error that says so.
func ParseSecret(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return nil, errors.New("webhook: empty secret: want whsec_ followed by base64 (webhook.NewSecret makes one)")
	case strings.HasPrefix(s, PrefixSigningKey):
		return nil, errors.New("webhook: a whsk_ key is an Ed25519 signing key, not a whsec_ secret")
	case strings.HasPrefix(s, PrefixPublicKey):
		return nil, errors.New("webhook: a whpk_ key is an Ed25519 public key, not a whsec_ secret")
	}
	raw := strings.TrimPrefix(s, PrefixSecret)
	b, err := b64.DecodeString(raw)
	if err != nil {
		return nil, errors.New("webhook: the secret after whsec_ is not valid standard base64")
	}
	if len(b) < MinSecretBytes {
		return nil, fmt.Errorf("webhook: the secret is %d bytes; Standard Webhooks requires at least %d (webhook.NewSecret makes %d)", len(b), MinSecretBytes, secretBytes)
	}
	return b, nil
}

// NewSigningKey returns a new Ed25519 key pair for v1a signatures: secret is
// "whsk_" and the standard base64 of the 64-byte private key (seed followed
// by public key, the layout of crypto/ed25519 and of the specification's
// reference server), public is "whpk_" and the base64 of the 32-byte public
// key.
func NewSigningKey() (secret, public string) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic("webhook: ed25519 key generation: " + err.Error()) // unreachable: crypto/rand does not fail
	}
	return PrefixSigningKey + b64.EncodeToString(priv), PrefixPublicKey + b64.EncodeToString(pub)
}

// PublicKeyOf returns the whpk_ public key of a whsk_ signing key, the one to
// give receivers (or to publish with JWKS).
func PublicKeyOf(whsk string) (whpk string, err error) {
	priv, err := parseSigningKey(whsk)
	if err != nil {
		return "", err
	}
	return PrefixPublicKey + b64.EncodeToString(priv.Public().(ed25519.PublicKey)), nil
}

// parseSigningKey decodes a whsk_ key: the 64-byte private key (seed and
// public key) or the 32-byte seed alone.
func parseSigningKey(s string) (ed25519.PrivateKey, error) {
	s = strings.TrimSpace(s)
	raw, ok := strings.CutPrefix(s, PrefixSigningKey)
	if !ok {
		return nil, errors.New("webhook: a signing key starts with whsk_")
	}
	b, err := b64.DecodeString(raw)
	if err != nil {
		return nil, errors.New("webhook: the key after whsk_ is not valid standard base64")
	}
	switch len(b) {
	case ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(b), nil
	case ed25519.PrivateKeySize:
		priv := ed25519.NewKeyFromSeed(b[:ed25519.SeedSize])
		if !bytes.Equal(priv[ed25519.SeedSize:], b[ed25519.SeedSize:]) {
			return nil, errors.New("webhook: the whsk_ key is damaged: its public half does not belong to its seed")
		}
		return priv, nil
	default:
		return nil, fmt.Errorf("webhook: the whsk_ key is %d bytes; want %d (private key) or %d (seed)", len(b), ed25519.PrivateKeySize, ed25519.SeedSize)
	}
}

// parsePublicKey decodes a whpk_ key.
func parsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	raw, ok := strings.CutPrefix(s, PrefixPublicKey)
	if !ok {
		return nil, errors.New("webhook: a public key starts with whpk_")
	}
	b, err := b64.DecodeString(raw)
	if err != nil {
		return nil, errors.New("webhook: the key after whpk_ is not valid standard base64")
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("webhook: the whpk_ key is %d bytes; want %d", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}
