package webhook_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/webhook"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The specification's Go library (v0.0.1) checks the timestamp against
// time.Now, so these tests sign at the current time.

func official(t *testing.T, secret string) *standardwebhooks.Webhook {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatalf("standardwebhooks.NewWebhook: %v", err)
	}
	return wh
}

// The official library accepts what Signer produces, for one secret and for
// each of two during a rotation, and refuses it under another secret.
func TestOfficialLibraryVerifiesSigner(t *testing.T) {
	oldS, newS := webhook.NewSecret(), webhook.NewSecret()
	body := []byte(`{"specversion":"1.0","id":"e1","type":"billing.invoice.paid","data":{"amount":100}}`)

	h := signed(mustSigner(t, newS), "msg_1", time.Now(), body)
	if err := official(t, newS).Verify(body, h); err != nil {
		t.Fatalf("official Verify, one secret: %v", err)
	}

	h = signed(mustSigner(t, newS, oldS), "msg_1", time.Now(), body)
	if n := len(strings.Fields(h.Get("webhook-signature"))); n != 2 {
		t.Fatalf("%d signatures, want 2", n)
	}
	for name, s := range map[string]string{"new": newS, "old": oldS} {
		if err := official(t, s).Verify(body, h); err != nil {
			t.Fatalf("official Verify with the %s secret of a rotation: %v", name, err)
		}
	}
	if err := official(t, webhook.NewSecret()).Verify(body, h); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Fatalf("official Verify with another secret = %v, want ErrNoMatchingSignature", err)
	}
	if err := official(t, newS).Verify(append(bytes.Clone(body), ' '), h); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Fatalf("official Verify of a changed body = %v, want ErrNoMatchingSignature", err)
	}
}

// The official Go library v0.0.1 knows only v1: it skips v1a signatures. A
// header carrying both still verifies there by its v1 signature, and the
// v1a signature is checked here with crypto/ed25519 over the specified
// content, id.timestamp.body.
func TestV1aByCryptoEd25519(t *testing.T) {
	sec := webhook.NewSecret()
	sk, pk := webhook.NewSigningKey()
	body := []byte(`{"id":"e1"}`)
	now := time.Now()
	h := signed(mustSigner(t, sk, sec), "msg_1", now, body)

	if err := official(t, sec).Verify(body, h); err != nil {
		t.Fatalf("official Verify of a v1a+v1 header: %v", err)
	}
	edOnly := signed(mustSigner(t, sk), "msg_1", now, body)
	if err := official(t, sec).Verify(body, edOnly); !errors.Is(err, standardwebhooks.ErrNoMatchingSignature) {
		t.Fatalf("official Verify of a v1a-only header = %v; if it now verifies v1a, test it here", err)
	}

	pub, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(pk, webhook.PrefixPublicKey))
	if err != nil {
		t.Fatal(err)
	}
	sigs := strings.Fields(h.Get("webhook-signature"))
	enc, ok := strings.CutPrefix(sigs[0], "v1a,")
	if !ok {
		t.Fatalf("first signature %q is not v1a", sigs[0])
	}
	sig, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		t.Fatal(err)
	}
	content := "msg_1." + strconv.FormatInt(now.Unix(), 10) + "." + string(body)
	if !ed25519.Verify(pub, []byte(content), sig) {
		t.Fatal("crypto/ed25519 does not verify the v1a signature over id.timestamp.body")
	}
	if ed25519.Verify(pub, []byte(content+" "), sig) {
		t.Fatal("crypto/ed25519 verifies the v1a signature over other content")
	}
}

// Our Verifier accepts what the official library signs, with or without
// the whsec_ prefix, and alone among other signatures.
func TestVerifierAcceptsOfficialSignatures(t *testing.T) {
	sec := webhook.NewSecret()
	body := []byte(`{"test": 2432232314}`)
	now := time.Now()
	for _, key := range []string{sec, strings.TrimPrefix(sec, "whsec_")} {
		sig, err := official(t, key).Sign("msg_p5jXN8AQM9LWM0D4loKWxJek", now, body)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
		h.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
		h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(make([]byte, 32))+" "+sig)
		if err := mustVerifier(t, key).Verify(h, body, now); err != nil {
			t.Fatalf("Verify of an official signature: %v", err)
		}
		if err := mustVerifier(t, webhook.NewSecret()).Verify(h, body, now); !errors.Is(err, webhook.ErrWrongSecret) {
			t.Fatalf("Verify under another secret = %v, want ErrWrongSecret", err)
		}
	}
}

// Over a real socket: a receiver that checks with both libraries gets a
// request signed by Signer, as the edge will send it.
func TestOverHTTP(t *testing.T) {
	oldS, newS := webhook.NewSecret(), webhook.NewSecret()
	sk, pk := webhook.NewSigningKey()
	ours := mustVerifier(t, oldS, pk)
	theirs := official(t, oldS)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := theirs.Verify(body, r.Header); err != nil {
			http.Error(w, "official: "+err.Error(), http.StatusUnauthorized)
			return
		}
		if err := ours.Verify(r.Header, body, time.Now()); err != nil {
			http.Error(w, "ours: "+err.Error(), http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()

	send := func(s *webhook.Signer, body []byte) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/cloudevents+json")
		s.Headers(req.Header, "e1", time.Now(), body)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	body := []byte(`{"specversion":"1.0","id":"e1"}`)
	resp := send(mustSigner(t, newS, oldS, sk), body)
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("receiver answered %d: %s", resp.StatusCode, msg)
	}
	resp = send(mustSigner(t, newS), body)
	msg, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(string(msg), "official:") {
		t.Fatalf("receiver answered %d %q to a request signed with only the new secret, want 401 from the official check", resp.StatusCode, msg)
	}
}
