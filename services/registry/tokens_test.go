package registry_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
	"google.golang.org/protobuf/types/known/durationpb"
)

func ecJWK(t *testing.T) (string, *ecdsa.PrivateKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(jose.JSONWebKey{Key: &k.PublicKey, KeyID: "ec-1"})
	if err != nil {
		t.Fatal(err)
	}
	return string(b), k
}

func rsaPEM(t *testing.T, bits int) string {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// Token settings are checked, stored with their derived algorithms and
// ids, kept by updates that leave them out, and replaced by updates that
// give them.
func TestTokenSettings(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	ec, _ := ecJWK(t)
	rsaKey := rsaPEM(t, 2048)
	app, _ := e.createApp(t, &registryv1.Application{
		Name: "shop", Grants: []*registryv1.Grant{subscribe("billing.*")},
		TokenSettings: &registryv1.TokenSettings{
			JwksUrl:     "https://partner.example/.well-known/jwks.json",
			PublicKeys:  []*registryv1.TokenPublicKey{{Key: ec}, {Id: "rsa-1", Key: rsaKey}},
			MaxLifetime: durationpb.New(10 * time.Minute),
		},
	})
	ts := app.GetTokenSettings()
	keys := ts.GetPublicKeys()
	if len(keys) != 2 || keys[0].GetAlgorithm() != "ES256" || keys[1].GetAlgorithm() != "RS256" || keys[1].GetId() != "rsa-1" {
		t.Fatalf("stored keys: %v", keys)
	}
	if _, _, thumb, _ := auth.ParsePublicKey(ec); keys[0].GetId() != thumb {
		t.Errorf("a key without id got %q, want its thumbprint %q", keys[0].GetId(), thumb)
	}
	if ts.GetMaxLifetime().AsDuration() != 10*time.Minute || ts.GetJwksUrl() != "https://partner.example/.well-known/jwks.json" {
		t.Errorf("stored settings: %v", ts)
	}

	// An update without token settings keeps them.
	app.Name = "shop 2"
	app.TokenSettings = nil
	app = must(e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: app}))).msg(t).GetApplication()
	if len(app.GetTokenSettings().GetPublicKeys()) != 2 {
		t.Fatalf("an update without token_settings dropped them: %v", app.GetTokenSettings())
	}
	// One with them replaces them; the default lifetime is an hour.
	app.TokenSettings = &registryv1.TokenSettings{PublicKeys: []*registryv1.TokenPublicKey{{Id: "rsa-2", Key: rsaKey}}}
	app = must(e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: app}))).msg(t).GetApplication()
	ts = app.GetTokenSettings()
	if len(ts.GetPublicKeys()) != 1 || ts.GetPublicKeys()[0].GetId() != "rsa-2" || ts.GetJwksUrl() != "" || ts.GetMaxLifetime().AsDuration() != time.Hour {
		t.Fatalf("replaced settings: %v", ts)
	}

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384JWK, _ := json.Marshal(jose.JSONWebKey{Key: &p384.PublicKey})
	_, ecPriv := ecJWK(t)
	privJWK, _ := json.Marshal(jose.JSONWebKey{Key: ecPriv})
	bad := []struct {
		name string
		ts   *registryv1.TokenSettings
		want string
	}{
		{"short RSA", &registryv1.TokenSettings{PublicKeys: []*registryv1.TokenPublicKey{{Key: rsaPEM(t, 1024)}}}, "public_keys[0].key: the RSA key has 1024 bits"},
		{"P-384", &registryv1.TokenSettings{PublicKeys: []*registryv1.TokenPublicKey{{Key: string(p384JWK)}}}, "not on P-256"},
		{"private key", &registryv1.TokenSettings{PublicKeys: []*registryv1.TokenPublicKey{{Key: string(privJWK)}}}, "holds a private key"},
		{"not a key", &registryv1.TokenSettings{PublicKeys: []*registryv1.TokenPublicKey{{Key: "hello"}}}, "JWK (JSON) or in PEM"},
		{"duplicate kid", &registryv1.TokenSettings{PublicKeys: []*registryv1.TokenPublicKey{{Id: "a", Key: ec}, {Id: "a", Key: rsaKey}}}, "public_keys[1].id \"a\" is the id of another key"},
		{"too many keys", &registryv1.TokenSettings{PublicKeys: func() []*registryv1.TokenPublicKey {
			var out []*registryv1.TokenPublicKey
			for i := range 11 {
				out = append(out, &registryv1.TokenPublicKey{Id: itoa(int64(i)), Key: ec})
			}
			return out
		}()}, "11 entries, more than the 10 allowed"},
		{"lifetime too long", &registryv1.TokenSettings{MaxLifetime: durationpb.New(25 * time.Hour)}, "max_lifetime is 25h0m0s: it must be between 1m0s and 24h0m0s"},
		{"lifetime too short", &registryv1.TokenSettings{MaxLifetime: durationpb.New(time.Second)}, "max_lifetime is 1s"},
		{"http JWKS", &registryv1.TokenSettings{JwksUrl: "http://partner.example/jwks.json"}, "jwks_url"},
		{"loopback JWKS", &registryv1.TokenSettings{JwksUrl: "https://127.0.0.1/jwks.json"}, "jwks_url"},
		{"private JWKS", &registryv1.TokenSettings{JwksUrl: "https://internal.example/jwks.json"}, "jwks_url"},
	}
	for _, c := range bad {
		_, err := e.admin.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{Name: "x", TokenSettings: c.ts}}))
		wantCode(t, c.name, err, connect.CodeInvalidArgument, c.want)
		if err != nil && strings.Contains(err.Error(), "10.1.2.3") {
			t.Errorf("%s: the error shows a resolved address: %v", c.name, err)
		}
	}
}

// RotateTokenSecret: the secret is shown once and stored only sealed
// (clients never see the sealed value, Watch does); the older secrets
// expire after the overlap (default the max lifetime); overlap 0 retires
// them at once; an application rotates its own and no one else's.
func TestRotateTokenSecret(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, key := e.createApp(t, &registryv1.Application{Name: "shop", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	other, otherKey := e.createApp(t, &registryv1.Application{Name: "other"})
	self := e.as(key)
	w := e.watch(t, e.revision(t))

	first := must(self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId()}))).msg(t)
	if !strings.HasPrefix(first.GetSecret(), "hts_") || !strings.HasPrefix(first.GetSecretId(), "tks_") {
		t.Fatalf("rotation response: %v", first)
	}
	secrets := first.GetApplication().GetTokenSettings().GetSecrets()
	if len(secrets) != 1 || secrets[0].GetId() != first.GetSecretId() || secrets[0].GetSealed() != "" || secrets[0].GetExpireTime() != nil {
		t.Fatalf("secrets as the client sees them: %v", secrets)
	}
	for _, got := range []*registryv1.Application{
		must(self.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication(),
		must(e.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication(),
	} {
		if s := got.GetTokenSettings().GetSecrets(); len(s) != 1 || s[0].GetSealed() != "" {
			t.Errorf("GetApplication shows %v", s)
		}
	}
	for _, a := range must(e.admin.ListApplications(ctx, connect.NewRequest(&registryv1.ListApplicationsRequest{}))).msg(t).GetApplications() {
		for _, s := range a.GetTokenSettings().GetSecrets() {
			if s.GetSealed() != "" {
				t.Errorf("ListApplications shows a sealed secret of %s", a.GetId())
			}
		}
	}
	// Watch carries the sealed secret, which opens to the one shown.
	var watched *registryv1.Application
	for watched == nil {
		if m := w.next(t); m.GetApplication().GetId() == app.GetId() {
			watched = m.GetApplication()
		}
	}
	ws := watched.GetTokenSettings().GetSecrets()
	if len(ws) != 1 || ws[0].GetSealed() == "" || strings.Contains(ws[0].GetSealed(), first.GetSecret()) {
		t.Fatalf("watched secrets: %v", ws)
	}
	box, err := secretbox.New(testSecretKey)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := box.Open(ws[0].GetSealed(), auth.TokenSecretContext(app.GetId(), ws[0].GetId()))
	if err != nil || string(plain) != first.GetSecret() {
		t.Fatalf("the sealed secret opens to %q, %v", plain, err)
	}
	if _, err := box.Open(ws[0].GetSealed(), auth.TokenSecretContext(other.GetId(), ws[0].GetId())); err == nil {
		t.Error("the sealed secret opens under another application's context")
	}
	raw, err := e.rdb.HGet(ctx, "herald:{registry}:apps", app.GetId()).Result()
	if err != nil || strings.Contains(raw, first.GetSecret()) {
		t.Errorf("the stored application holds the secret in clear (%v)", err)
	}

	// Default overlap: the max lifetime (1h).
	before := time.Now()
	second := must(self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId()}))).msg(t)
	secrets = second.GetApplication().GetTokenSettings().GetSecrets()
	if len(secrets) != 2 || secrets[0].GetId() != second.GetSecretId() || secrets[1].GetId() != first.GetSecretId() {
		t.Fatalf("after a second rotation: %v", secrets)
	}
	if exp := secrets[1].GetExpireTime().AsTime(); exp.Before(before.Add(time.Hour)) || exp.After(time.Now().Add(time.Hour)) {
		t.Errorf("the old secret expires at %v, want an hour after the rotation", exp)
	}
	// Overlap 0: only the new one is left.
	third := must(self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId(), Overlap: durationpb.New(0)}))).msg(t)
	if s := third.GetApplication().GetTokenSettings().GetSecrets(); len(s) != 1 || s[0].GetId() != third.GetSecretId() {
		t.Fatalf("after a rotation with overlap 0: %v", s)
	}
	// The settings an update gives never drop the secrets.
	cur := third.GetApplication()
	cur.TokenSettings = &registryv1.TokenSettings{}
	cur = must(e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: cur}))).msg(t).GetApplication()
	if s := cur.GetTokenSettings().GetSecrets(); len(s) != 1 || s[0].GetId() != third.GetSecretId() {
		t.Fatalf("an update dropped the secrets: %v", s)
	}

	_, err = e.as(otherKey).RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId()}))
	wantCode(t, "another application's", err, connect.CodeNotFound)
	_, err = self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId(), Overlap: durationpb.New(25 * time.Hour)}))
	wantCode(t, "overlap too long", err, connect.CodeInvalidArgument, "overlap is 25h0m0s")
	_, err = self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{}))
	wantCode(t, "no application", err, connect.CodeInvalidArgument, "application_id is required")
	_, err = e.admin.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: "app_nope"}))
	wantCode(t, "unknown application", err, connect.CodeNotFound)
	for what, c := range map[string]string{"no key": "", "unknown key": "hk_not-a-key-at-all"} {
		_, err = e.as(c).RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId()}))
		wantCode(t, what, err, connect.CodeUnauthenticated)
	}
	// A revoked key of the application itself.
	keys := must(e.admin.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: app.GetId()}))).msg(t).GetKeys()
	must(e.admin.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keys[0].GetId()}))).msg(t)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId()}))
		return connect.CodeOf(err) == connect.CodeUnauthenticated
	}, "a revoked key is refused")
}

func TestRotateTokenSecretWithoutSecretKey(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, func(c *registry.Config) { c.SecretKey = "" })
	app, _ := e.createApp(t, &registryv1.Application{Name: "shop"})
	_, err := e.admin.RotateTokenSecret(context.Background(), connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: app.GetId()}))
	wantCode(t, "without HERALD_SECRET_KEY", err, connect.CodeFailedPrecondition, "HERALD_SECRET_KEY", "public keys")
}
