package auth_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/heraldmesh/herald/platform/auth"
)

// Verify takes tokens from anyone: whatever it is given, it answers a
// connect error of a client's code (or a principal), never panics, and
// shows no key material.
func FuzzVerify(f *testing.F) {
	secret := []byte(auth.NewTokenSecret())
	v := auth.NewTokenVerifier(auth.TokenOptions{Issuers: issuers{
		"app_hs": {ApplicationID: "app_hs", Keys: []auth.TokenKey{{ID: "k1", Source: auth.TokenSourceSecret, Algorithm: jose.HS256, Key: secret}}, Subscribable: grants("billing.*")},
	}})
	t := &testing.T{}
	now := time.Now()
	f.Add(sign(t, jose.HS256, secret, "k1", map[string]any{"iss": "app_hs", "aud": "herald", "exp": now.Add(time.Minute).Unix(), "herald": map[string]any{"types": []string{"billing.*"}}}))
	f.Add(sign(t, jose.HS256, secret, "k1", map[string]any{"iss": "app_hs", "aud": []string{"herald"}, "exp": "soon", "herald": "x"}))
	f.Add(unsigned(map[string]any{"alg": "none"}, map[string]any{"iss": "app_hs"}, nil))
	f.Add(unsigned(map[string]any{"alg": "HS256", "crit": []string{"b64"}, "b64": false}, map[string]any{"iss": "app_hs"}, []byte("x")))
	f.Add("eyJ.eyJ.")
	f.Add("eyJhbGciOiJIUzI1NiJ9..")
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := v.Verify(context.Background(), raw)
		if err == nil {
			if p.ApplicationID != "app_hs" || p.Scope == nil {
				t.Fatalf("accepted %q as %+v", raw, p)
			}
			return
		}
		switch connect.CodeOf(err) {
		case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		default:
			t.Fatalf("Verify(%q): %v", raw, err)
		}
		if strings.Contains(err.Error(), string(secret)) || strings.Contains(err.Error(), "go-jose") {
			t.Fatalf("Verify(%q): %q shows internals", raw, err)
		}
	})
}

// ParsePublicKey reads keys applications upload: it never panics.
func FuzzParsePublicKey(f *testing.F) {
	f.Add(`{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`)
	f.Add(`{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}`)
	f.Add("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n")
	f.Add(`{"kty":"RSA","n":"AQAB","e":"AQAB"}`)
	f.Fuzz(func(t *testing.T, s string) {
		key, alg, tp, err := auth.ParsePublicKey(s)
		if err == nil && (key == nil || alg == "" || tp == "") {
			t.Fatalf("ParsePublicKey(%q) = %v %q %q without error", s, key, alg, tp)
		}
	})
}
