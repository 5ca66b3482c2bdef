package webhook_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/webhook"
)

// ParseSignatures never panics, bounds its output, and what it returns
// renders and parses back to the same signatures.
func FuzzParseSignatures(f *testing.F) {
	for _, seed := range []string{
		"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
		"v1,AAAA v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
		"", " ", ",", "v1,", ",AAAA", "v1,,AAAA", "v1,AAA", "v1,AA==,", "\tv1,AAAA\nv2,AAAA\r",
		"v1,AAAA\u00a0v1,AAAA", strings.Repeat("v1,AAAA ", 40), "t=1,v1=abc",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		sigs, err := webhook.ParseSignatures(value)
		if err != nil {
			if !errors.Is(err, webhook.ErrMalformedSignature) || sigs != nil {
				t.Fatalf("ParseSignatures(%q) = %v, %v", value, sigs, err)
			}
			return
		}
		if len(sigs) == 0 || len(sigs) > webhook.MaxSignatures {
			t.Fatalf("ParseSignatures(%q) returned %d signatures", value, len(sigs))
		}
		parts := make([]string, len(sigs))
		for i, s := range sigs {
			if s.Scheme == "" || strings.ContainsAny(s.Scheme, ", \t\r\n") {
				t.Fatalf("scheme %q from %q", s.Scheme, value)
			}
			parts[i] = s.String()
		}
		again, err := webhook.ParseSignatures(strings.Join(parts, " "))
		if err != nil || len(again) != len(sigs) {
			t.Fatalf("re-parse of %q: %v, %d signatures, want %d", parts, err, len(again), len(sigs))
		}
		for i := range sigs {
			if again[i].String() != parts[i] {
				t.Fatalf("re-parse changed %q to %q", parts[i], again[i])
			}
		}
	})
}

// Verify never panics on any headers and body, never accepts what it was
// not signed for, and every error it returns is one of its documented
// kinds.
func FuzzVerify(f *testing.F) {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	s, err := webhook.NewSigner(secret)
	if err != nil {
		f.Fatal(err)
	}
	v, err := webhook.NewVerifier(secret)
	if err != nil {
		f.Fatal(err)
	}
	body := `{"a":1}`
	f.Add("msg_1", "1700000000", s.Sign("msg_1", t0, []byte(body)), body)
	f.Add("msg_1", "1700000000", s.Sign("msg_1", t0, []byte(body)), "{\n  \"a\": 1\n}")
	f.Add("msg_1", "17000000000000", "v1a,AAAA", body)
	f.Add("", "", "", "")
	f.Add("m", "-1", "v1,AAAA v1,AAAA", "[1,2")
	f.Add("m", "99999999999999999", "v2,AAAA", `"\u00e9"`)
	kinds := []error{webhook.ErrMissingHeaders, webhook.ErrMalformedTimestamp, webhook.ErrMalformedSignature, webhook.ErrNoMatch, webhook.ErrClockSkew}
	f.Fuzz(func(t *testing.T, id, ts, sig, body string) {
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", ts)
		h.Set("webhook-signature", sig)
		err := v.Verify(h, []byte(body), t0)
		if err == nil {
			// Only a genuine signature passes.
			want := s.Sign(strings.TrimSpace(id), time.Unix(parseDigits(ts), 0), []byte(body))
			if !strings.Contains(sig, strings.TrimPrefix(want, "v1,")) {
				t.Fatalf("Verify accepted id=%q ts=%q sig=%q body=%q", id, ts, sig, body)
			}
			return
		}
		n := 0
		for _, k := range kinds {
			if errors.Is(err, k) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("error %v is %d of the documented kinds, want 1", err, n)
		}
		if err.Error() == "" {
			t.Fatal("empty error message")
		}
	})
}

func parseDigits(s string) int64 {
	var n int64
	for _, c := range strings.TrimSpace(s) {
		n = n*10 + int64(c-'0')
	}
	return n
}
