// Package secretbox keeps secrets at rest (webhook signing secrets, in
// Redis) encrypted under a key from the environment, HERALD_SECRET_KEY:
// AES-256-GCM with a random nonce, the record the secret belongs to bound as
// additional data, and several keys at once so that the key can be rotated
// without a flag day.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"
)

// EnvKey is the environment variable FromEnv reads: one key, or several
// separated by commas during a rotation, the newest first.
const EnvKey = "HERALD_SECRET_KEY"

// KeyBytes is the length of a key: AES-256.
const KeyBytes = 32

// createHint tells an operator how to make a key.
const createHint = "create one with `openssl rand -base64 32`"

// Format of a sealed value: "sb1.<key id>.<base64url of nonce, ciphertext
// and tag>". The key id lets Open pick the key among several; it is derived
// from the key and says nothing about it.
const (
	version   = "sb1"
	kidLength = 8 // base64url characters: 6 bytes of a SHA-256
)

// Errors of Open, for errors.Is.
var (
	// ErrMalformed: the value is not one Seal produced (or it was cut).
	ErrMalformed = errors.New("secretbox: not a sealed value")
	// ErrUnknownKey: the value was sealed under a key the Box does not
	// have; after a rotation, the old key must stay configured (after the
	// new one) until every value is re-sealed.
	ErrUnknownKey = errors.New("secretbox: sealed under a key that is not configured (after a rotation keep the old key in " + EnvKey + ", after the new one, until every secret is re-sealed)")
	// ErrOpen: the value does not authenticate under its key and context:
	// it was altered, or it was sealed for another record.
	ErrOpen = errors.New("secretbox: the sealed value does not open: it was altered, or it belongs to another record")
)

// A Box seals and opens secrets. The first key seals; every key opens, so
// that values sealed before a rotation still open after it. Make one with
// New or FromEnv; a Box is safe for concurrent use.
type Box struct {
	keys []boxKey
}

type boxKey struct {
	id   string
	aead cipher.AEAD // AES-256-GCM, random 96-bit nonce prepended
}

// NewKey returns a new random key for New or HERALD_SECRET_KEY: the
// standard base64 of 32 random bytes, as `openssl rand -base64 32` prints.
func NewKey() string {
	b := make([]byte, KeyBytes)
	_, _ = rand.Read(b) // never fails: crypto/rand crashes the program instead
	return base64.StdEncoding.EncodeToString(b)
}

// New returns a Box for keys, each the standard base64 of 32 random bytes
// (NewKey, or `openssl rand -base64 32`). The first key seals; all open.
func New(keys ...string) (*Box, error) {
	b, err := newBox(keys)
	if err != nil {
		return nil, errors.New("secretbox: " + err.Error())
	}
	return b, nil
}

// newBox is New with errors that do not name the package, so that FromEnv
// can name the variable first.
func newBox(keys []string) (*Box, error) {
	if len(keys) == 0 {
		return nil, errors.New("no key; " + createHint)
	}
	b := &Box{keys: make([]boxKey, 0, len(keys))}
	for i, k := range keys {
		raw, err := decodeKey(k)
		if err != nil {
			if len(keys) > 1 {
				return nil, fmt.Errorf("key %d of %d %s", i+1, len(keys), err)
			}
			return nil, fmt.Errorf("the key %s", err)
		}
		id := keyID(raw)
		for j, other := range b.keys {
			if other.id == id {
				return nil, fmt.Errorf("key %d repeats key %d", i+1, j+1)
			}
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCMWithRandomNonce(block)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		b.keys = append(b.keys, boxKey{id: id, aead: aead})
	}
	return b, nil
}

// decodeKey returns a key's bytes, or the reason it is not one, phrased to
// follow "the key" and never quoting it.
func decodeKey(k string) ([]byte, error) {
	k = strings.TrimSpace(k)
	if k == "" {
		return nil, errors.New("is empty; " + createHint)
	}
	raw, err := base64.StdEncoding.DecodeString(k)
	if err != nil {
		return nil, errors.New("is not standard base64; " + createHint)
	}
	if len(raw) != KeyBytes {
		hint := createHint
		if isHex(k) {
			hint = "it looks like hex (openssl rand -hex); " + createHint + " instead"
		}
		return nil, fmt.Errorf("decodes to %d bytes, want %d; %s", len(raw), KeyBytes, hint)
	}
	return raw, nil
}

func isHex(s string) bool {
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return false
		}
	}
	return len(s)%2 == 0
}

// keyID derives the id written into sealed values.
func keyID(key []byte) string {
	sum := sha256.Sum256(append([]byte("herald secretbox key id\x00"), key...))
	return base64.RawURLEncoding.EncodeToString(sum[:6])
}

// FromEnv returns a Box for the keys in HERALD_SECRET_KEY: one key, or
// several separated by commas (the newest first) during a rotation. Unset,
// it fails with an error that says how to create a key.
func FromEnv() (*Box, error) {
	v, ok := os.LookupEnv(EnvKey)
	if !ok || strings.TrimSpace(v) == "" {
		return nil, errors.New("secretbox: " + EnvKey + " is not set: it holds the key that encrypts secrets at rest; " + createHint + " (during a rotation, several comma-separated, the newest first)")
	}
	b, err := newBox(strings.Split(v, ","))
	if err != nil {
		return nil, errors.New("secretbox: " + EnvKey + ": " + err.Error())
	}
	return b, nil
}

// Seal encrypts plaintext under the first key, bound to context: the id of
// the record the secret belongs to (a subscription or endpoint id), so that
// a sealed value copied into another record does not open there. context
// must not be empty.
func (b *Box) Seal(plaintext []byte, context string) (string, error) {
	if context == "" {
		return "", errors.New("secretbox: Seal needs a context, the id of the record the secret belongs to")
	}
	k := b.keys[0]
	ct := k.aead.Seal(nil, nil, plaintext, additionalData(k.id, context))
	return version + "." + k.id + "." + base64.RawURLEncoding.EncodeToString(ct), nil
}

// Open decrypts a value Seal produced for the same context. Its errors are
// ErrMalformed, ErrUnknownKey and ErrOpen (altered, or another context).
func (b *Box) Open(sealed, context string) ([]byte, error) {
	if context == "" {
		return nil, errors.New("secretbox: Open needs the context the value was sealed with")
	}
	rest, ok := strings.CutPrefix(sealed, version+".")
	if !ok {
		return nil, ErrMalformed
	}
	kid, enc, ok := strings.Cut(rest, ".")
	// The decoder skips CR and LF even when strict: refuse them, so that a
	// value has one spelling only.
	if !ok || len(kid) != kidLength || strings.ContainsAny(enc, "\r\n") {
		return nil, ErrMalformed
	}
	ct, err := base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil {
		return nil, ErrMalformed
	}
	for _, k := range b.keys {
		if k.id != kid {
			continue
		}
		if len(ct) < k.aead.NonceSize()+k.aead.Overhead() {
			return nil, ErrMalformed
		}
		pt, err := k.aead.Open(nil, nil, ct, additionalData(kid, context))
		if err != nil {
			return nil, ErrOpen
		}
		return pt, nil
	}
	return nil, ErrUnknownKey
}

// Reseal opens sealed and seals it again under the first key, for the end
// of a rotation; a value already under the first key is returned as is.
func (b *Box) Reseal(sealed, context string) (string, error) {
	pt, err := b.Open(sealed, context)
	if err != nil {
		return "", err
	}
	if b.Current(sealed) {
		return sealed, nil
	}
	return b.Seal(pt, context)
}

// Current reports whether sealed was sealed under the first key, so that a
// rotation can tell which values still need Reseal.
func (b *Box) Current(sealed string) bool {
	return strings.HasPrefix(sealed, version+"."+b.keys[0].id+".")
}

// additionalData binds a ciphertext to its format, key id and context.
func additionalData(kid, context string) []byte {
	return []byte(version + "." + kid + "\x00" + context)
}
