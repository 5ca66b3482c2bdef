package webhook

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is how far a webhook-timestamp may be from the
// receiver's clock, either way, before Verify refuses it as a replay or a
// clock problem: the specification libraries' five minutes.
const DefaultTolerance = 5 * time.Minute

// MaxSignatures is the most signatures a webhook-signature header may carry.
// A rotation needs two; the bound keeps a hostile header from costing one
// Ed25519 verification per entry without limit.
const MaxSignatures = 32

// Errors of Verify, for errors.Is. Each is carried by a typed error with the
// details (MissingHeadersError, TimestampError, ClockSkewError,
// SignatureError), for errors.As.
var (
	// ErrMissingHeaders: one or more of the three headers are absent or
	// empty. See MissingHeadersError.
	ErrMissingHeaders = errors.New("webhook: missing header")
	// ErrMalformedTimestamp: webhook-timestamp is not unix seconds. See
	// TimestampError.
	ErrMalformedTimestamp = errors.New("webhook: malformed webhook-timestamp")
	// ErrMalformedSignature: webhook-signature holds no "scheme,base64"
	// entry, or too many.
	ErrMalformedSignature = errors.New("webhook: malformed webhook-signature")
	// ErrClockSkew: the signature matched, but the timestamp is further
	// from now than the tolerance. See ClockSkewError.
	ErrClockSkew = errors.New("webhook: timestamp outside the tolerance")
	// ErrNoMatch: no signature matched. Every SignatureError is one, and
	// also one of ErrReserialized, ErrNoKeyForScheme and ErrWrongSecret.
	ErrNoMatch = errors.New("webhook: no signature matched")
	// ErrReserialized: the body was changed after signing (re-encoded JSON,
	// a trailing newline): a re-encoding of it verifies. The receiver must
	// verify the raw request bytes, before any parsing.
	ErrReserialized = errors.New("webhook: the body was re-serialized after signing")
	// ErrNoKeyForScheme: the request carries signatures only of schemes the
	// verifier has no key for (v1a signatures and only whsec_ secrets, or
	// the reverse).
	ErrNoKeyForScheme = errors.New("webhook: no key for the request's signature scheme")
	// ErrWrongSecret: the signatures of the schemes the verifier has keys
	// for were made with other keys (or over another id, timestamp or body).
	ErrWrongSecret = errors.New("webhook: wrong secret")
)

// MissingHeadersError reports the Standard Webhooks headers a request lacks.
type MissingHeadersError struct {
	// Names are the missing headers, among HeaderID, HeaderTimestamp and
	// HeaderSignature, in that order.
	Names []string
}

func (e *MissingHeadersError) Error() string {
	s := "s"
	if len(e.Names) == 1 {
		s = ""
	}
	return fmt.Sprintf("webhook: missing header%s %s (is the request from a Standard Webhooks sender, and does a proxy keep these headers?)", s, strings.Join(e.Names, ", "))
}

// Is makes errors.Is(err, ErrMissingHeaders) true.
func (e *MissingHeadersError) Is(target error) bool { return target == ErrMissingHeaders }

// TimestampError reports a webhook-timestamp that is not a unix time in
// seconds.
type TimestampError struct {
	// Value is the header's value, cut to 40 bytes.
	Value string
}

func (e *TimestampError) Error() string {
	return fmt.Sprintf("webhook: malformed webhook-timestamp %q: want unix seconds, digits only", e.Value)
}

// Is makes errors.Is(err, ErrMalformedTimestamp) true.
func (e *TimestampError) Is(target error) bool { return target == ErrMalformedTimestamp }

// ClockSkewError reports a request whose signature matched but whose
// timestamp is further from the receiver's clock than the tolerance: a
// replayed or long-delayed request, or a clock that is wrong on one side.
type ClockSkewError struct {
	// Timestamp is the request's webhook-timestamp, Now the receiver's
	// time given to Verify.
	Timestamp, Now time.Time
	// Tolerance is the verifier's tolerance.
	Tolerance time.Duration
}

// Skew is how far the timestamp is from now: positive when it is in the
// future, negative when in the past.
func (e *ClockSkewError) Skew() time.Duration { return e.Timestamp.Sub(e.Now) }

// Future reports whether the timestamp is ahead of the receiver's clock.
func (e *ClockSkewError) Future() bool { return e.Timestamp.After(e.Now) }

func (e *ClockSkewError) Error() string {
	skew := e.Skew()
	var s string
	if skew > 0 {
		s = fmt.Sprintf("webhook: the signature matched but webhook-timestamp is %v in the future, more than the %v tolerance: the sender's clock is ahead or the receiver's behind", skew, e.Tolerance)
	} else {
		s = fmt.Sprintf("webhook: the signature matched but webhook-timestamp is %v in the past, more than the %v tolerance: a replayed or long-delayed request, or the receiver's clock is ahead", -skew, e.Tolerance)
	}
	if e.Timestamp.Unix() > 1e11 { // past the year 5138: almost surely milliseconds
		s += " (the timestamp looks like milliseconds; Standard Webhooks uses seconds)"
	}
	return s
}

// Is makes errors.Is(err, ErrClockSkew) true.
func (e *ClockSkewError) Is(target error) bool { return target == ErrClockSkew }

// SignatureError reports that no signature matched, and why.
type SignatureError struct {
	// Reason is ErrReserialized, ErrNoKeyForScheme or ErrWrongSecret.
	Reason error
	// Change says, with ErrReserialized, which re-encoding of the received
	// body verifies, e.g. "compacted".
	Change string
	// Schemes are the schemes of the request's signatures, in header order
	// and without repeats.
	Schemes []string
	// Unkeyed are those of Schemes the verifier has no key for.
	Unkeyed []string
}

func (e *SignatureError) Error() string {
	const prefix = "webhook: no signature matched: "
	switch e.Reason {
	case ErrReserialized:
		return prefix + "the body was re-serialized after signing (the signature verifies for the received body " + e.Change + "); verify the raw request bytes, before any JSON parsing or reformatting"
	case ErrNoKeyForScheme:
		return prefix + "the request is signed with " + describeSchemes(e.Schemes) + " only, and " + missingKeys(e.Unkeyed)
	}
	s := prefix + "wrong secret: the signatures were made with another key than the ones given, or over another webhook-id, webhook-timestamp or body"
	if len(e.Unkeyed) > 0 {
		s += "; the request also carries " + describeSchemes(e.Unkeyed) + " signatures, and " + missingKeys(e.Unkeyed)
	}
	return s
}

// Unwrap makes errors.Is true for ErrNoMatch and for Reason.
func (e *SignatureError) Unwrap() []error { return []error{ErrNoMatch, e.Reason} }

func describeSchemes(schemes []string) string {
	d := make([]string, len(schemes))
	for i, s := range schemes {
		switch s {
		case SchemeHMAC:
			d[i] = "v1 (HMAC-SHA256)"
		case SchemeEd25519:
			d[i] = "v1a (Ed25519)"
		default:
			d[i] = strconv.Quote(s)
		}
	}
	return strings.Join(d, " and ")
}

func missingKeys(schemes []string) string {
	var d []string
	unknown := false
	for _, s := range schemes {
		switch s {
		case SchemeHMAC:
			d = append(d, "no whsec_ secret was given")
		case SchemeEd25519:
			d = append(d, "no whpk_ public key was given")
		default:
			unknown = true
		}
	}
	if unknown {
		d = append(d, "this verifier knows only v1 and v1a")
	}
	return strings.Join(d, ", ")
}

// A Verifier checks webhook requests against the keys a receiver holds. It
// is safe for concurrent use.
type Verifier struct {
	secrets   [][]byte
	public    []ed25519.PublicKey
	tolerance time.Duration
}

// NewVerifier returns a Verifier for keys, each a whsec_ secret (for v1
// signatures; the prefix is optional) or a whpk_ public key (for v1a). A
// request verifies when any signature matches any key, so a receiver
// passes both secrets during a rotation. A whsk_ signing key is refused: a
// receiver should hold only the public key (PublicKeyOf).
func NewVerifier(keys ...string) (*Verifier, error) {
	if len(keys) == 0 {
		return nil, errors.New("webhook: a verifier needs at least one whsec_ secret or whpk_ public key")
	}
	v := &Verifier{tolerance: DefaultTolerance}
	for i, k := range keys {
		switch k = strings.TrimSpace(k); {
		case strings.HasPrefix(k, PrefixSigningKey):
			return nil, fmt.Errorf("webhook: key %d is a whsk_ signing key, which must stay with the sender; verify with its whpk_ public key", i+1)
		case strings.HasPrefix(k, PrefixPublicKey):
			pub, err := parsePublicKey(k)
			if err != nil {
				return nil, fmt.Errorf("key %d: %w", i+1, err)
			}
			v.public = append(v.public, pub)
		default:
			secret, err := ParseSecret(k)
			if err != nil {
				return nil, fmt.Errorf("key %d: %w", i+1, err)
			}
			v.secrets = append(v.secrets, secret)
		}
	}
	return v, nil
}

// WithTolerance returns a copy of v that accepts timestamps up to d away
// from now, either way; d <= 0 restores DefaultTolerance. v itself is
// unchanged, so a shared Verifier stays safe to use concurrently.
func (v *Verifier) WithTolerance(d time.Duration) *Verifier {
	if d <= 0 {
		d = DefaultTolerance
	}
	c := *v
	c.tolerance = d
	return &c
}

// Tolerance returns how far a timestamp may be from now.
func (v *Verifier) Tolerance() time.Duration { return v.tolerance }

// Verify checks a request's headers and raw body at time now, and returns
// nil if a signature matches one of v's keys and the timestamp is within
// the tolerance. Otherwise the error says why, in this order of checks:
//
//   - MissingHeadersError (ErrMissingHeaders): which headers are absent;
//   - TimestampError (ErrMalformedTimestamp);
//   - ErrMalformedSignature: no well-formed signature, or more than
//     MaxSignatures;
//   - SignatureError (ErrNoMatch), with its Reason: ErrReserialized when a
//     re-encoding of a JSON body (compacted, indented, a trailing newline
//     added or removed, a round trip through encoding/json...) verifies,
//     ErrNoKeyForScheme when v has no key of any scheme the request is
//     signed with, else ErrWrongSecret;
//   - ClockSkewError (ErrClockSkew): the signature matched, so the request
//     is authentic, but the timestamp is too far from now.
//
// The signature is checked before the timestamp so that a captured request
// can be told apart: authentic but stale, or not authentic.
func (v *Verifier) Verify(h http.Header, body []byte, now time.Time) error {
	id, tsValue, sigValue := header(h, HeaderID), header(h, HeaderTimestamp), signatureHeader(h)
	var missing []string
	for _, hv := range [...]struct{ name, value string }{{HeaderID, id}, {HeaderTimestamp, tsValue}, {HeaderSignature, sigValue}} {
		if hv.value == "" {
			missing = append(missing, hv.name)
		}
	}
	if missing != nil {
		return &MissingHeadersError{Names: missing}
	}
	unix, err := parseTimestamp(tsValue)
	if err != nil {
		return err
	}
	sigs, err := ParseSignatures(sigValue)
	if err != nil {
		return err
	}
	if !v.match(id, unix, body, sigs) {
		return v.diagnose(id, unix, body, sigs)
	}
	ts := time.Unix(unix, 0)
	if d := ts.Sub(now); d > v.tolerance || d < -v.tolerance {
		return &ClockSkewError{Timestamp: ts, Now: now, Tolerance: v.tolerance}
	}
	return nil
}

// header returns the first value of a header, also when h was filled with
// lower-case keys directly rather than by Set or a server.
func header(h http.Header, name string) string {
	if v := h.Get(name); v != "" {
		return strings.TrimSpace(v)
	}
	if vs := h[name]; len(vs) > 0 {
		return strings.TrimSpace(vs[0])
	}
	return ""
}

// signatureHeader returns every webhook-signature value joined by spaces:
// a proxy may have split one header into several lines.
func signatureHeader(h http.Header) string {
	vs := h.Values(HeaderSignature)
	if len(vs) == 0 {
		vs = h[HeaderSignature]
	}
	return strings.TrimSpace(strings.Join(vs, " "))
}

// parseTimestamp accepts unix seconds in decimal digits.
func parseTimestamp(s string) (int64, error) {
	bad := func() error {
		if len(s) > 40 {
			s = s[:40]
		}
		return &TimestampError{Value: s}
	}
	if len(s) == 0 || len(s) > 18 {
		return 0, bad()
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad()
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, bad()
	}
	return n, nil
}

// Signature is one entry of a webhook-signature header.
type Signature struct {
	// Scheme is the identifier before the comma: SchemeHMAC, SchemeEd25519
	// or one this package does not know.
	Scheme string
	// Value is the decoded signature.
	Value []byte
}

// String renders s the way the header carries it: "scheme,base64".
func (s Signature) String() string { return s.Scheme + "," + b64.EncodeToString(s.Value) }

// ParseSignatures parses a webhook-signature header value: signatures
// separated by spaces, each a scheme, a comma and standard base64. Entries
// that are not of that form are skipped, as the specification's libraries
// do; a value with none, or with more than MaxSignatures, is an
// ErrMalformedSignature.
func ParseSignatures(value string) ([]Signature, error) {
	fields := strings.Fields(value)
	if len(fields) > MaxSignatures {
		return nil, fmt.Errorf("%w: %d signatures, more than %d", ErrMalformedSignature, len(fields), MaxSignatures)
	}
	sigs := make([]Signature, 0, len(fields))
	for _, f := range fields {
		scheme, enc, ok := strings.Cut(f, ",")
		if !ok || scheme == "" || enc == "" {
			continue
		}
		val, err := b64.DecodeString(enc)
		if err != nil {
			continue
		}
		sigs = append(sigs, Signature{Scheme: scheme, Value: val})
	}
	if len(sigs) == 0 {
		return nil, fmt.Errorf("%w: no signature of the form v1,<base64>", ErrMalformedSignature)
	}
	return sigs, nil
}

// match reports whether any signature verifies under any key.
func (v *Verifier) match(id string, unix int64, body []byte, sigs []Signature) bool {
	var hasHMAC, hasEd bool
	for _, s := range sigs {
		hasHMAC = hasHMAC || s.Scheme == SchemeHMAC
		hasEd = hasEd || s.Scheme == SchemeEd25519
	}
	if hasHMAC {
		var sum [sha256.Size]byte
		for _, secret := range v.secrets {
			h := hmac.New(sha256.New, secret)
			writeContent(h, id, unix, body)
			mac := h.Sum(sum[:0])
			for _, s := range sigs {
				if s.Scheme == SchemeHMAC && hmac.Equal(mac, s.Value) {
					return true
				}
			}
		}
	}
	if hasEd && len(v.public) > 0 {
		msg := signedContent(id, unix, body)
		for _, pub := range v.public {
			for _, s := range sigs {
				if s.Scheme == SchemeEd25519 && ed25519.Verify(pub, msg, s.Value) {
					return true
				}
			}
		}
	}
	return false
}

// diagnose explains why no signature matched.
func (v *Verifier) diagnose(id string, unix int64, body []byte, sigs []Signature) error {
	e := &SignatureError{Reason: ErrWrongSecret}
	keyed := false
	for _, s := range sigs {
		if contains(e.Schemes, s.Scheme) {
			continue
		}
		e.Schemes = append(e.Schemes, s.Scheme)
		switch {
		case s.Scheme == SchemeHMAC && len(v.secrets) > 0, s.Scheme == SchemeEd25519 && len(v.public) > 0:
			keyed = true
		default:
			e.Unkeyed = append(e.Unkeyed, s.Scheme)
		}
	}
	if !keyed {
		e.Reason = ErrNoKeyForScheme
		return e
	}
	if len(body) <= maxDiagnoseBytes {
		for _, c := range reencodings(body) {
			if v.match(id, unix, c.body, sigs) {
				e.Reason, e.Change = ErrReserialized, c.change
				return e
			}
		}
	}
	return e
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
