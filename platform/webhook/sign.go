package webhook

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Header names of the specification, lower-case as it spells them (an
// http.Header stores them canonicalized, "Webhook-Id", which is the same
// header on the wire).
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// A Signer signs webhooks with one or more keys. Several keys are a
// rotation's overlap: every request carries one signature per key, so a
// receiver that knows either verifies it. A Signer is safe for concurrent
// use.
type Signer struct {
	hmacs []*sync.Pool // of hash.Hash, one pool per whsec_ secret
	keys  []ed25519.PrivateKey
	// order lists the keys in the order given: index into hmacs when
	// >= 0, else into keys as ^index.
	order []int
}

// NewSigner returns a Signer for keys, each a whsec_ secret (v1
// signatures, HMAC-SHA256) or a whsk_ signing key (v1a, Ed25519). A key with
// no prefix is taken as a secret, as the specification's libraries do.
// Signatures appear in the order of keys.
func NewSigner(keys ...string) (*Signer, error) {
	if len(keys) == 0 {
		return nil, errors.New("webhook: a signer needs at least one whsec_ secret or whsk_ key")
	}
	s := &Signer{}
	for i, k := range keys {
		switch k = strings.TrimSpace(k); {
		case strings.HasPrefix(k, PrefixPublicKey):
			return nil, fmt.Errorf("webhook: key %d is a whpk_ public key, which only verifies; sign with its whsk_ key", i+1)
		case strings.HasPrefix(k, PrefixSigningKey):
			priv, err := parseSigningKey(k)
			if err != nil {
				return nil, fmt.Errorf("key %d: %w", i+1, err)
			}
			s.order = append(s.order, ^len(s.keys))
			s.keys = append(s.keys, priv)
		default:
			secret, err := ParseSecret(k)
			if err != nil {
				return nil, fmt.Errorf("key %d: %w", i+1, err)
			}
			s.order = append(s.order, len(s.hmacs))
			s.hmacs = append(s.hmacs, &sync.Pool{New: func() any { return hmac.New(sha256.New, secret) }})
		}
	}
	return s, nil
}

// Sign returns the webhook-signature value for a message: one
// "scheme,base64" signature per key, space-separated, each over
// id + "." + the unix seconds of ts + "." + body.
//
// id must not contain a "." (the specification's advice, so that the
// signed content reads one way only); the webhook-id of the edge is the
// event's id.
func (s *Signer) Sign(id string, ts time.Time, body []byte) string {
	unix := ts.Unix()
	var msg []byte // the signed content, built only for Ed25519
	if len(s.keys) > 0 {
		msg = signedContent(id, unix, body)
	}
	var out strings.Builder
	out.Grow(len(s.hmacs)*48 + len(s.keys)*93)
	var sum [sha256.Size]byte
	for n, i := range s.order {
		if n > 0 {
			out.WriteByte(' ')
		}
		if i >= 0 {
			h := s.hmacs[i].Get().(hash.Hash)
			h.Reset()
			writeContent(h, id, unix, body)
			mac := h.Sum(sum[:0])
			s.hmacs[i].Put(h)
			out.WriteString(SchemeHMAC + ",")
			out.WriteString(b64.EncodeToString(mac))
			continue
		}
		out.WriteString(SchemeEd25519 + ",")
		out.WriteString(b64.EncodeToString(ed25519.Sign(s.keys[^i], msg)))
	}
	return out.String()
}

// Headers sets the three Standard Webhooks headers of a request carrying
// body: webhook-id, webhook-timestamp and webhook-signature.
func (s *Signer) Headers(h http.Header, id string, ts time.Time, body []byte) {
	h.Set(HeaderID, id)
	h.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	h.Set(HeaderSignature, s.Sign(id, ts, body))
}

// signedContent returns id.unix.body.
func signedContent(id string, unix int64, body []byte) []byte {
	msg := make([]byte, 0, len(id)+len(body)+22)
	msg = append(msg, id...)
	msg = append(msg, '.')
	msg = strconv.AppendInt(msg, unix, 10)
	msg = append(msg, '.')
	return append(msg, body...)
}

// writeContent writes id.unix.body to h without copying body.
func writeContent(h hash.Hash, id string, unix int64, body []byte) {
	var buf [24]byte
	h.Write([]byte(id))
	ts := strconv.AppendInt(append(buf[:0], '.'), unix, 10)
	ts = append(ts, '.')
	h.Write(ts)
	h.Write(body)
}
