package webhook_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/heraldmesh/herald/platform/webhook"
)

// JWKS renders RFC 7517 members exactly, never the private half, and a
// receiver that reads the set back verifies v1a signatures with it.
func TestJWKS(t *testing.T) {
	sk1, pk1 := webhook.NewSigningKey()
	sk2, pk2 := webhook.NewSigningKey()
	doc, err := webhook.JWKS(map[string]string{"k2": sk2, "k1": pk1})
	if err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	var raw struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(doc, &raw); err != nil {
		t.Fatalf("JWKS is not JSON: %v\n%s", err, doc)
	}
	if len(raw.Keys) != 2 {
		t.Fatalf("%d keys, want 2: %s", len(raw.Keys), doc)
	}
	for i, want := range []struct{ kid, pk string }{{"k1", pk1}, {"k2", pk2}} {
		k := raw.Keys[i]
		x, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(want.pk, "whpk_"))
		wantMembers := map[string]string{
			"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": want.kid,
			"x": base64.RawURLEncoding.EncodeToString(x),
		}
		if len(k) != len(wantMembers) {
			t.Fatalf("key %d has members %v, want %v", i, k, wantMembers)
		}
		for m, v := range wantMembers {
			if k[m] != v {
				t.Fatalf("key %d %s = %q, want %q", i, m, k[m], v)
			}
		}
	}
	if strings.Contains(string(doc), `"d"`) {
		t.Fatalf("JWKS carries a private key: %s", doc)
	}

	var set jose.JSONWebKeySet
	if err := json.Unmarshal(doc, &set); err != nil {
		t.Fatalf("go-jose cannot read the set: %v", err)
	}
	if got := set.Key("k2"); len(got) != 1 || !got[0].IsPublic() || !got[0].Valid() {
		t.Fatalf("k2 in the set: %+v", got)
	}

	keys, err := webhook.ParseJWKS(doc)
	if err != nil || keys["k1"] != pk1 || keys["k2"] != pk2 {
		t.Fatalf("ParseJWKS = %v, %v", keys, err)
	}
	body := []byte(`{"id":"e1"}`)
	h := signed(mustSigner(t, sk1), "m", t0, body)
	if err := mustVerifier(t, keys["k1"]).Verify(h, body, t0); err != nil {
		t.Fatalf("Verify with the key from the JWKS: %v", err)
	}
	pub := set.Key("k1")[0].Key.(ed25519.PublicKey)
	sig, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(h.Get("webhook-signature"), "v1a,"))
	if !ed25519.Verify(pub, []byte("m.1700000000."+string(body)), sig) {
		t.Fatal("the go-jose key does not verify the signature")
	}
}

func TestJWKSErrors(t *testing.T) {
	_, pk := webhook.NewSigningKey()
	for _, tc := range []struct {
		name string
		keys map[string]string
		err  string
	}{
		{"empty kid", map[string]string{"": pk}, "non-empty kid"},
		{"a secret", map[string]string{"k": webhook.NewSecret()}, `kid "k": webhook: want a whpk_ public key`},
		{"a short key", map[string]string{"k": "whpk_AAAA"}, "3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := webhook.JWKS(tc.keys); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("JWKS error = %v, want %q", err, tc.err)
			}
		})
	}
	if doc, err := webhook.JWKS(nil); err != nil || string(doc) != `{"keys":[]}` {
		t.Fatalf("JWKS(nil) = %s, %v", doc, err)
	}
	for _, doc := range []string{`{`, `{"keys":[]}`, `{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`} {
		if _, err := webhook.ParseJWKS([]byte(doc)); err == nil {
			t.Fatalf("ParseJWKS(%s) = nil error", doc)
		}
	}
}

// KeyID is the RFC 7638 thumbprint, the same for a signing key and its
// public key, and different between keys.
func TestKeyID(t *testing.T) {
	sk, pk := webhook.NewSigningKey()
	a, err := webhook.KeyID(sk)
	if err != nil {
		t.Fatal(err)
	}
	b, err := webhook.KeyID(pk)
	if err != nil || a != b {
		t.Fatalf("KeyID(whsk) = %q, KeyID(whpk) = %q, %v", a, b, err)
	}
	_, other := webhook.NewSigningKey()
	if c, _ := webhook.KeyID(other); c == a {
		t.Fatal("two keys have one id")
	}
	// RFC 8037 appendix A.3: the thumbprint of its example key.
	x, _ := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	got, err := webhook.KeyID("whpk_" + base64.StdEncoding.EncodeToString(x))
	if err != nil || got != "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k" {
		t.Fatalf("KeyID of the RFC 8037 key = %q, %v", got, err)
	}
	if _, err := webhook.KeyID(webhook.NewSecret()); err == nil {
		t.Fatal("KeyID of a secret = nil error")
	}
}
