package webhook_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/webhook"
)

var t0 = time.Unix(1_700_000_000, 0)

func mustSigner(t testing.TB, keys ...string) *webhook.Signer {
	t.Helper()
	s, err := webhook.NewSigner(keys...)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return s
}

func mustVerifier(t testing.TB, keys ...string) *webhook.Verifier {
	t.Helper()
	v, err := webhook.NewVerifier(keys...)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

func signed(s *webhook.Signer, id string, ts time.Time, body []byte) http.Header {
	h := http.Header{}
	s.Headers(h, id, ts, body)
	return h
}

func TestNewSecret(t *testing.T) {
	a, b := webhook.NewSecret(), webhook.NewSecret()
	if a == b {
		t.Fatal("two secrets are equal")
	}
	if !strings.HasPrefix(a, webhook.PrefixSecret) {
		t.Fatalf("secret %q lacks the whsec_ prefix", a)
	}
	raw, err := webhook.ParseSecret(a)
	if err != nil {
		t.Fatalf("ParseSecret(NewSecret()): %v", err)
	}
	if len(raw) != 32 {
		t.Fatalf("secret is %d bytes, want 32", len(raw))
	}
}

func TestParseSecret(t *testing.T) {
	b24 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 24))
	b23 := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 23))
	sk, pk := webhook.NewSigningKey()
	for _, tc := range []struct {
		name, in string
		n        int    // bytes on success
		err      string // part of the error, "" for success
	}{
		{"prefixed", "whsec_" + b24, 24, ""},
		{"no prefix, as the spec libraries allow", b24, 24, ""},
		{"white space around", "  whsec_" + b24 + "\n", 24, ""},
		{"empty", "", 0, "empty secret"},
		{"prefix only", "whsec_", 0, "0 bytes"},
		{"too short", "whsec_" + b23, 0, "23 bytes; Standard Webhooks requires at least 24"},
		{"not base64", "whsec_not*base64", 0, "not valid standard base64"},
		{"url-safe base64 is not standard", "whsec_" + strings.Repeat("_-", 16), 0, "not valid standard base64"},
		{"a signing key", sk, 0, "whsk_ key is an Ed25519 signing key"},
		{"a public key", pk, 0, "whpk_ key is an Ed25519 public key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := webhook.ParseSecret(tc.in)
			if tc.err == "" {
				if err != nil || len(b) != tc.n {
					t.Fatalf("ParseSecret = %d bytes, %v; want %d bytes", len(b), err, tc.n)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("ParseSecret error = %v, want it to contain %q", err, tc.err)
			}
			if strings.Contains(err.Error(), b23) || strings.Contains(err.Error(), "not*base64") {
				t.Fatalf("error %q repeats the secret", err)
			}
		})
	}
}

func TestSigningKeys(t *testing.T) {
	sk, pk := webhook.NewSigningKey()
	if !strings.HasPrefix(sk, "whsk_") || !strings.HasPrefix(pk, "whpk_") {
		t.Fatalf("prefixes: %q %q", sk, pk)
	}
	priv, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(sk, "whsk_"))
	pub, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(pk, "whpk_"))
	if len(priv) != ed25519.PrivateKeySize || len(pub) != ed25519.PublicKeySize {
		t.Fatalf("key sizes %d and %d, want 64 and 32", len(priv), len(pub))
	}
	if got, err := webhook.PublicKeyOf(sk); err != nil || got != pk {
		t.Fatalf("PublicKeyOf = %q, %v; want %q", got, err, pk)
	}
	// The seed alone is accepted too, and is the same key.
	seedOnly := "whsk_" + base64.StdEncoding.EncodeToString(priv[:32])
	if got, err := webhook.PublicKeyOf(seedOnly); err != nil || got != pk {
		t.Fatalf("PublicKeyOf(seed) = %q, %v; want %q", got, err, pk)
	}
	damaged := bytes.Clone(priv)
	damaged[40] ^= 1
	for _, tc := range []struct{ name, in, err string }{
		{"damaged public half", "whsk_" + base64.StdEncoding.EncodeToString(damaged), "public half does not belong"},
		{"wrong length", "whsk_" + base64.StdEncoding.EncodeToString(priv[:40]), "40 bytes"},
		{"not base64", "whsk_@@", "not valid standard base64"},
		{"no prefix", webhook.NewSecret(), "starts with whsk_"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := webhook.PublicKeyOf(tc.in); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("PublicKeyOf error = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestNewSignerAndVerifierRefuseBadKeys(t *testing.T) {
	sk, pk := webhook.NewSigningKey()
	good := webhook.NewSecret()
	for _, tc := range []struct {
		name string
		new  func() error
		err  string
	}{
		{"signer without keys", func() error { _, err := webhook.NewSigner(); return err }, "at least one"},
		{"signer with a public key", func() error { _, err := webhook.NewSigner(good, pk); return err }, "key 2 is a whpk_ public key"},
		{"signer with a short secret", func() error { _, err := webhook.NewSigner("whsec_c2hvcnQ="); return err }, "key 1: webhook: the secret is 5 bytes"},
		{"signer with a bad signing key", func() error { _, err := webhook.NewSigner("whsk_AAAA"); return err }, "key 1: webhook: the whsk_ key is 3 bytes"},
		{"verifier without keys", func() error { _, err := webhook.NewVerifier(); return err }, "at least one"},
		{"verifier with a signing key", func() error { _, err := webhook.NewVerifier(good, sk); return err }, "key 2 is a whsk_ signing key, which must stay with the sender"},
		{"verifier with a bad public key", func() error { _, err := webhook.NewVerifier("whpk_AAAA"); return err }, "whpk_ key is 3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.new(); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error = %v, want %q", err, tc.err)
			}
		})
	}
}

// Every combination of keys signs and verifies, with one signature per key
// in key order, and a receiver holding any one key verifies.
func TestSignVerifyRoundTrip(t *testing.T) {
	sec1, sec2 := webhook.NewSecret(), webhook.NewSecret()
	sk1, pk1 := webhook.NewSigningKey()
	sk2, pk2 := webhook.NewSigningKey()
	body := []byte(`{"specversion":"1.0","id":"e1","type":"billing.invoice.paid"}`)
	for _, tc := range []struct {
		name     string
		sign     []string
		verify   [][]string // each must verify alone
		prefixes []string
	}{
		{"one secret", []string{sec1}, [][]string{{sec1}}, []string{"v1,"}},
		{"two secrets", []string{sec1, sec2}, [][]string{{sec1}, {sec2}, {sec2, sec1}}, []string{"v1,", "v1,"}},
		{"one signing key", []string{sk1}, [][]string{{pk1}}, []string{"v1a,"}},
		{"two signing keys", []string{sk1, sk2}, [][]string{{pk1}, {pk2}}, []string{"v1a,", "v1a,"}},
		{"mixed", []string{sk1, sec1}, [][]string{{pk1}, {sec1}, {sec2, pk1}}, []string{"v1a,", "v1,"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := mustSigner(t, tc.sign...)
			h := signed(s, "msg_1", t0, body)
			if h.Get("webhook-id") != "msg_1" || h.Get("webhook-timestamp") != "1700000000" {
				t.Fatalf("headers %v", h)
			}
			sigs := strings.Split(h.Get("webhook-signature"), " ")
			if len(sigs) != len(tc.prefixes) {
				t.Fatalf("signature %q, want %d entries", h.Get("webhook-signature"), len(tc.prefixes))
			}
			for i, p := range tc.prefixes {
				if !strings.HasPrefix(sigs[i], p) {
					t.Fatalf("signature %d is %q, want prefix %q", i, sigs[i], p)
				}
			}
			for _, keys := range tc.verify {
				if err := mustVerifier(t, keys...).Verify(h, body, t0.Add(time.Minute)); err != nil {
					t.Fatalf("Verify with %d key(s): %v", len(keys), err)
				}
			}
		})
	}
}

// The v1 signature is the specification's example: the HMAC of
// "msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}".
func TestSignSpecificationVector(t *testing.T) {
	s := mustSigner(t, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	got := s.Sign("msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	const want = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	if got != want {
		t.Fatalf("Sign = %q, want %q", got, want)
	}
}

// A header map filled directly with lower-case keys verifies too.
func TestVerifyLowerCaseHeaderMap(t *testing.T) {
	sec := webhook.NewSecret()
	body := []byte("hello")
	h := http.Header{
		"webhook-id":        {"m"},
		"webhook-timestamp": {"1700000000"},
		"webhook-signature": {mustSigner(t, sec).Sign("m", t0, body)},
	}
	if err := mustVerifier(t, sec).Verify(h, body, t0); err != nil {
		t.Fatal(err)
	}
}

// Signatures split over several webhook-signature lines are all read.
func TestVerifySignatureOnSeveralLines(t *testing.T) {
	oldS, newS := webhook.NewSecret(), webhook.NewSecret()
	body := []byte("hello")
	h := signed(mustSigner(t, newS, oldS), "m", t0, body)
	sigs := strings.Fields(h.Get("webhook-signature"))
	h["Webhook-Signature"] = sigs
	if err := mustVerifier(t, oldS).Verify(h, body, t0); err != nil {
		t.Fatalf("Verify with the second line's secret: %v", err)
	}
}

func TestWithTolerance(t *testing.T) {
	sec := webhook.NewSecret()
	body := []byte("x")
	h := signed(mustSigner(t, sec), "m", t0, body)
	v := mustVerifier(t, sec)
	if v.Tolerance() != webhook.DefaultTolerance {
		t.Fatalf("default tolerance %v", v.Tolerance())
	}
	late := t0.Add(10 * time.Minute)
	if err := v.Verify(h, body, late); !errors.Is(err, webhook.ErrClockSkew) {
		t.Fatalf("10 minutes late with the default tolerance: %v", err)
	}
	wide := v.WithTolerance(time.Hour)
	if err := wide.Verify(h, body, late); err != nil {
		t.Fatalf("10 minutes late with an hour's tolerance: %v", err)
	}
	if err := v.Verify(h, body, late); !errors.Is(err, webhook.ErrClockSkew) {
		t.Fatal("WithTolerance changed the original verifier")
	}
	if got := v.WithTolerance(0).Tolerance(); got != webhook.DefaultTolerance {
		t.Fatalf("WithTolerance(0) = %v, want the default", got)
	}
}

// Every reason Verify gives, by errors.Is and by errors.As.
func TestVerifyFailures(t *testing.T) {
	sec, other := webhook.NewSecret(), webhook.NewSecret()
	sk, pk := webhook.NewSigningKey()
	_, otherPK := webhook.NewSigningKey()
	body := []byte(`{"type":"billing.invoice.paid","data":{"amount":100,"note":"<b>&</b>"}}`)
	hmacOnly := mustSigner(t, sec)
	edOnly := mustSigner(t, sk)
	both := mustSigner(t, sec, sk)
	with := func(h http.Header, k, v string) http.Header {
		h = h.Clone()
		if v == "" {
			h.Del(k)
		} else {
			h.Set(k, v)
		}
		return h
	}
	good := signed(hmacOnly, "msg_1", t0, body)

	for _, tc := range []struct {
		name   string
		keys   []string
		h      http.Header
		body   []byte
		now    time.Time
		is     []error // errors.Is must hold for each
		not    []error // and must not for these
		msg    string  // part of Error()
		detail func(t *testing.T, err error)
	}{
		{
			name: "no headers", keys: []string{sec}, h: http.Header{}, body: body, now: t0,
			is: []error{webhook.ErrMissingHeaders}, msg: "missing headers webhook-id, webhook-timestamp, webhook-signature",
			detail: func(t *testing.T, err error) {
				var e *webhook.MissingHeadersError
				if !errors.As(err, &e) || len(e.Names) != 3 {
					t.Fatalf("As MissingHeadersError: %#v", err)
				}
			},
		},
		{
			name: "no signature header", keys: []string{sec}, h: with(good, "webhook-signature", ""), body: body, now: t0,
			is: []error{webhook.ErrMissingHeaders}, msg: "missing header webhook-signature (",
		},
		{
			name: "empty id", keys: []string{sec}, h: with(good, "webhook-id", " "), body: body, now: t0,
			is: []error{webhook.ErrMissingHeaders}, msg: "missing header webhook-id (",
		},
		{
			name: "timestamp in milliseconds with a sign", keys: []string{sec}, h: with(good, "webhook-timestamp", "+1700000000"), body: body, now: t0,
			is: []error{webhook.ErrMalformedTimestamp}, not: []error{webhook.ErrNoMatch}, msg: `malformed webhook-timestamp "+1700000000"`,
		},
		{
			name: "timestamp as a date", keys: []string{sec}, h: with(good, "webhook-timestamp", "2023-11-14T22:13:20Z"), body: body, now: t0,
			is: []error{webhook.ErrMalformedTimestamp}, msg: "want unix seconds",
			detail: func(t *testing.T, err error) {
				var e *webhook.TimestampError
				if !errors.As(err, &e) || e.Value != "2023-11-14T22:13:20Z" {
					t.Fatalf("As TimestampError: %#v", err)
				}
			},
		},
		{
			name: "timestamp too long", keys: []string{sec}, h: with(good, "webhook-timestamp", strings.Repeat("9", 60)), body: body, now: t0,
			is: []error{webhook.ErrMalformedTimestamp},
			detail: func(t *testing.T, err error) {
				var e *webhook.TimestampError
				if !errors.As(err, &e) || len(e.Value) != 40 {
					t.Fatalf("As TimestampError: %#v", err)
				}
			},
		},
		{
			name: "signature not scheme,base64", keys: []string{sec}, h: with(good, "webhook-signature", "sha256=abcdef"), body: body, now: t0,
			is: []error{webhook.ErrMalformedSignature}, not: []error{webhook.ErrNoMatch}, msg: "no signature of the form v1,<base64>",
		},
		{
			name: "too many signatures", keys: []string{sec}, h: with(good, "webhook-signature", strings.Repeat("v1,AAAA ", 33)), body: body, now: t0,
			is: []error{webhook.ErrMalformedSignature}, msg: "33 signatures, more than 32",
		},
		{
			name: "timestamp in the past", keys: []string{sec}, h: good, body: body, now: t0.Add(7*time.Minute + 30*time.Second),
			is: []error{webhook.ErrClockSkew}, not: []error{webhook.ErrNoMatch}, msg: "7m30s in the past, more than the 5m0s tolerance",
			detail: func(t *testing.T, err error) {
				var e *webhook.ClockSkewError
				if !errors.As(err, &e) || e.Future() || e.Skew() != -450*time.Second || e.Tolerance != 5*time.Minute {
					t.Fatalf("As ClockSkewError: %#v", err)
				}
			},
		},
		{
			name: "timestamp in the future", keys: []string{sec}, h: good, body: body, now: t0.Add(-time.Hour),
			is: []error{webhook.ErrClockSkew}, msg: "1h0m0s in the future",
			detail: func(t *testing.T, err error) {
				var e *webhook.ClockSkewError
				if !errors.As(err, &e) || !e.Future() || e.Skew() != time.Hour {
					t.Fatalf("As ClockSkewError: %#v", err)
				}
			},
		},
		{
			name: "timestamp in milliseconds", keys: []string{sec},
			h: signed(hmacOnly, "msg_1", time.Unix(1_700_000_000_000, 0), body), body: body, now: t0,
			is: []error{webhook.ErrClockSkew}, msg: "looks like milliseconds",
		},
		{
			name: "wrong secret", keys: []string{other}, h: good, body: body, now: t0,
			is: []error{webhook.ErrNoMatch, webhook.ErrWrongSecret}, not: []error{webhook.ErrReserialized, webhook.ErrNoKeyForScheme},
			msg: "no signature matched: wrong secret",
			detail: func(t *testing.T, err error) {
				var e *webhook.SignatureError
				if !errors.As(err, &e) || e.Reason != webhook.ErrWrongSecret || len(e.Schemes) != 1 || e.Schemes[0] != "v1" || len(e.Unkeyed) != 0 {
					t.Fatalf("As SignatureError: %#v", err)
				}
			},
		},
		{
			name: "wrong public key", keys: []string{otherPK}, h: signed(edOnly, "msg_1", t0, body), body: body, now: t0,
			is: []error{webhook.ErrWrongSecret},
		},
		{
			name: "wrong secret while v1a is also there", keys: []string{other}, h: signed(both, "msg_1", t0, body), body: body, now: t0,
			is: []error{webhook.ErrWrongSecret}, msg: "also carries v1a (Ed25519) signatures, and no whpk_ public key was given",
		},
		{
			name: "other id", keys: []string{sec}, h: with(good, "webhook-id", "msg_2"), body: body, now: t0,
			is: []error{webhook.ErrWrongSecret},
		},
		{
			name: "other timestamp", keys: []string{sec}, h: with(good, "webhook-timestamp", "1700000001"), body: body, now: t0,
			is: []error{webhook.ErrWrongSecret},
		},
		{
			name: "tampered body", keys: []string{sec}, h: good, body: bytes.Replace(body, []byte("100"), []byte("900"), 1), now: t0,
			is: []error{webhook.ErrWrongSecret}, not: []error{webhook.ErrReserialized},
		},
		{
			name: "v1a only, secret given", keys: []string{sec}, h: signed(edOnly, "msg_1", t0, body), body: body, now: t0,
			is: []error{webhook.ErrNoMatch, webhook.ErrNoKeyForScheme}, not: []error{webhook.ErrWrongSecret},
			msg: "signed with v1a (Ed25519) only, and no whpk_ public key was given",
		},
		{
			name: "v1 only, public key given", keys: []string{pk}, h: good, body: body, now: t0,
			is: []error{webhook.ErrNoKeyForScheme}, msg: "signed with v1 (HMAC-SHA256) only, and no whsec_ secret was given",
			detail: func(t *testing.T, err error) {
				var e *webhook.SignatureError
				if !errors.As(err, &e) || len(e.Unkeyed) != 1 || e.Unkeyed[0] != "v1" {
					t.Fatalf("As SignatureError: %#v", err)
				}
			},
		},
		{
			name: "unknown scheme only", keys: []string{sec}, h: with(good, "webhook-signature", "v2,AAAA"), body: body, now: t0,
			is: []error{webhook.ErrNoKeyForScheme}, msg: `signed with "v2" only, and this verifier knows only v1 and v1a`,
		},
		{
			name: "re-serialized: indented", keys: []string{sec}, h: good, body: indent(t, body), now: t0,
			is: []error{webhook.ErrNoMatch, webhook.ErrReserialized}, not: []error{webhook.ErrWrongSecret},
			msg: "re-serialized after signing (the signature verifies for the received body compacted); verify the raw request bytes",
			detail: func(t *testing.T, err error) {
				var e *webhook.SignatureError
				if !errors.As(err, &e) || e.Change != "compacted" {
					t.Fatalf("As SignatureError: %#v", err)
				}
			},
		},
		{
			name: "re-serialized, and the clock is off too", keys: []string{sec}, h: good, body: indent(t, body), now: t0.Add(time.Hour),
			is: []error{webhook.ErrReserialized}, not: []error{webhook.ErrClockSkew},
		},
		{
			name: "re-serialized Ed25519", keys: []string{pk}, h: signed(edOnly, "msg_1", t0, body), body: append(bytes.Clone(body), '\n'), now: t0,
			is: []error{webhook.ErrReserialized}, msg: "with its trailing newline removed",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := mustVerifier(t, tc.keys...).Verify(tc.h, tc.body, tc.now)
			if err == nil {
				t.Fatal("Verify = nil")
			}
			for _, want := range tc.is {
				if !errors.Is(err, want) {
					t.Errorf("errors.Is(%v, %v) = false", err, want)
				}
			}
			for _, not := range tc.not {
				if errors.Is(err, not) {
					t.Errorf("errors.Is(%v, %v) = true", err, not)
				}
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not contain %q", err, tc.msg)
			}
			if tc.detail != nil {
				tc.detail(t, err)
			}
			for _, k := range append(tc.keys, sec, sk) {
				if strings.Contains(err.Error(), strings.SplitN(k, "_", 2)[1][:8]) {
					t.Errorf("error %q shows key material", err)
				}
			}
		})
	}
}

func indent(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// Each way a receiver commonly changes a body is recognized as a
// re-serialization, with the change that undoes it. The signed body is
// what Herald sends (encoding/json, compact, keys sorted at the top).
func TestVerifyRecognizesReserialization(t *testing.T) {
	sec := webhook.NewSecret()
	signedBody, err := json.Marshal(map[string]any{ // as cloudevent.MarshalJSON renders an event
		"specversion": "1.0",
		"id":          "e1",
		"data":        json.RawMessage(`{"a":1,"html":"<i>&</i>","z":"é"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	var generic any
	if err := json.Unmarshal(signedBody, &generic); err != nil {
		t.Fatal(err)
	}
	jsMarshal := func(v any) []byte { // like JSON.stringify: no HTML escapes
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatal(err)
		}
		return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	}
	goIndent, _ := json.MarshalIndent(generic, "", "    ")
	// A Go receiver that decodes into its own struct and marshals it back
	// writes the struct's field order.
	var ev struct {
		SpecVersion string         `json:"specversion"`
		ID          string         `json:"id"`
		Data        map[string]any `json:"data"`
	}
	if err := json.Unmarshal(signedBody, &ev); err != nil {
		t.Fatal(err)
	}
	structOrder, _ := json.Marshal(ev)
	for _, tc := range []struct {
		name     string
		received []byte
		change   string
	}{
		{"trailing newline added", append(bytes.Clone(signedBody), '\n'), "with its trailing newline removed"},
		{"indented with 2 spaces", indent(t, signedBody), "compacted"},
		{"indented by MarshalIndent after a round trip", goIndent, "compacted"},
		{"re-encoded without HTML escapes, like JSON.stringify", jsMarshal(generic), "compacted, with <, > and & escaped as encoding/json does"},
		{"python json.dumps spacing and ASCII escapes", []byte(`{"data": {"a": 1, "html": "\u003ci\u003e\u0026\u003c/i\u003e", "z": "\u00e9"}, "id": "e1", "specversion": "1.0"}`), "re-encoded by encoding/json rules, keeping key order"},
		{"key order changed by a struct round trip", structOrder, "round-tripped through encoding/json (keys sorted)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if bytes.Equal(tc.received, signedBody) {
				t.Fatal("the received body is the signed one")
			}
			h := signed(mustSigner(t, sec), "msg_1", t0, signedBody)
			err := mustVerifier(t, sec).Verify(h, tc.received, t0)
			var e *webhook.SignatureError
			if !errors.As(err, &e) || e.Reason != webhook.ErrReserialized {
				t.Fatalf("Verify = %v, want ErrReserialized", err)
			}
			if e.Change != tc.change {
				t.Fatalf("Change = %q, want %q", e.Change, tc.change)
			}
		})
	}

	// A re-encoding that lost information cannot be undone: a float64
	// round trip rounds a large integer. That is a wrong secret as far as
	// Verify can tell.
	bigSigned := []byte(`{"n":12345678901234567890}`)
	bigReceived, _ := json.Marshal(map[string]any{"n": 12345678901234567890.0})
	h := signed(mustSigner(t, sec), "msg_1", t0, bigSigned)
	if err := mustVerifier(t, sec).Verify(h, bigReceived, t0); !errors.Is(err, webhook.ErrWrongSecret) {
		t.Fatalf("Verify = %v, want ErrWrongSecret", err)
	}

	// A body with its trailing newline removed.
	withNewline := append(bytes.Clone(signedBody), '\n')
	h = signed(mustSigner(t, sec), "msg_1", t0, withNewline)
	err = mustVerifier(t, sec).Verify(h, signedBody, t0)
	var e *webhook.SignatureError
	if !errors.As(err, &e) || e.Change != "with a trailing newline added" {
		t.Fatalf("Verify = %v, want a newline added", err)
	}
}

// Each signature is checked against each key: a verifier with two secrets
// accepts a request signed by either.
func TestVerifyRotationOnReceiver(t *testing.T) {
	oldS, newS := webhook.NewSecret(), webhook.NewSecret()
	body := []byte(`{}`)
	v := mustVerifier(t, newS, oldS)
	for _, s := range []string{oldS, newS} {
		if err := v.Verify(signed(mustSigner(t, s), "m", t0, body), body, t0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestParseSignatures(t *testing.T) {
	sigs, err := webhook.ParseSignatures("  v1,AAAA  junk v1a,AAE= ,BBBB v2, v3,*** x,AA==  ")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range sigs {
		got = append(got, s.String())
	}
	if strings.Join(got, " ") != "v1,AAAA v1a,AAE= x,AA==" {
		t.Fatalf("ParseSignatures = %q", got)
	}
}

func BenchmarkSignHMAC(b *testing.B) {
	s := mustSigner(b, webhook.NewSecret())
	body := bytes.Repeat([]byte("x"), 1024)
	b.ReportAllocs()
	for b.Loop() {
		s.Sign("msg_1", t0, body)
	}
}

func BenchmarkVerifyHMAC(b *testing.B) {
	sec := webhook.NewSecret()
	body := bytes.Repeat([]byte("x"), 1024)
	h := signed(mustSigner(b, sec), "msg_1", t0, body)
	v := mustVerifier(b, sec)
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Verify(h, body, t0); err != nil {
			b.Fatal(err)
		}
	}
}
