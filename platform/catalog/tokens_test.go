package catalog

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/secretbox"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The catalog hands the verifier an application's live keys (secrets
// opened, public keys parsed, rotated-out secrets left out), tells open
// streams when the key of their token is withdrawn, and wakes them when a
// secret's overlap ends.
func TestTokenIssuersAndTokenKeyRevocation(t *testing.T) {
	box, err := secretbox.New(secretbox.NewKey())
	if err != nil {
		t.Fatal(err)
	}
	c := New(nil, slog.New(slog.DiscardHandler))
	seal := func(id, secret string) string {
		s, err := box.Seal([]byte(secret), auth.TokenSecretContext("app_1", id))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := json.Marshal(jose.JSONWebKey{Key: &ec.PublicKey})
	now := time.Now()
	soon := now.Add(300 * time.Millisecond)
	app := &registryv1.Application{
		Id: "app_1", Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
		TokenSettings: &registryv1.TokenSettings{
			Secrets: []*registryv1.TokenSecret{
				{Id: "tks_new", Sealed: seal("tks_new", "hts_new")},
				{Id: "tks_old", Sealed: seal("tks_old", "hts_old"), ExpireTime: timestamppb.New(soon)},
				{Id: "tks_gone", Sealed: seal("tks_gone", "hts_gone"), ExpireTime: timestamppb.New(now.Add(-time.Second))},
				{Id: "tks_moved", Sealed: seal("tks_new", "hts_new")}, // sealed for another record: does not open
			},
			PublicKeys: []*registryv1.TokenPublicKey{{Id: "ec-1", Key: string(pub)}},
			JwksUrl:    "https://keys.example/jwks.json",
		},
	}
	c.apply(&registryv1.WatchResponse{Change: &registryv1.WatchResponse_Application{Application: app}})
	issuers := c.TokenIssuers(box)
	iss, err := issuers.TokenIssuer(context.Background(), "app_1")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range iss.Keys {
		ids = append(ids, k.Source+"/"+k.ID)
	}
	if len(ids) != 3 || ids[0] != "secret/tks_new" || ids[1] != "secret/tks_old" || ids[2] != "key/ec-1" {
		t.Fatalf("keys %v, want the two live secrets and the public key", ids)
	}
	if string(iss.Keys[0].Key.([]byte)) != "hts_new" || iss.JWKSURL != "https://keys.example/jwks.json" {
		t.Fatalf("issuer %+v", iss)
	}
	if !iss.Subscribable("billing.invoice.paid") || iss.Subscribable("identity.*") {
		t.Fatal("Subscribable does not follow the grants")
	}
	if _, err := issuers.TokenIssuer(context.Background(), "app_unknown"); !errors.Is(err, auth.ErrUnknownIssuer) {
		t.Fatalf("unknown application: %v", err)
	}
	if _, err := c.TokenIssuers(nil).TokenIssuer(context.Background(), "app_1"); err != nil {
		t.Fatalf("without a secret box: %v", err)
	}

	revoked := func(source, kid string) bool { return c.KeyRevoked(auth.TokenKeyID("app_1", source, kid)) }
	if revoked(auth.TokenSourceSecret, "tks_new") || revoked(auth.TokenSourceSecret, "tks_old") || revoked(auth.TokenSourceKey, "ec-1") || revoked(auth.TokenSourceJWKS, "any") {
		t.Fatal("a live token key reads as revoked")
	}
	if !revoked(auth.TokenSourceSecret, "tks_gone") || !revoked(auth.TokenSourceSecret, "tks_unknown") || !revoked(auth.TokenSourceKey, "ec-2") {
		t.Fatal("a withdrawn token key reads as live")
	}
	if c.KeyRevoked(auth.TokenKeyID("app_unseen", auth.TokenSourceSecret, "x")) {
		t.Fatal("a key of an application not seen yet reads as revoked")
	}

	// The old secret's overlap ends with no catalog change: WaitKey wakes
	// for it, and it then reads as revoked.
	if !c.WaitKey(context.Background(), c.Updated(), auth.TokenKeyID("app_1", auth.TokenSourceSecret, "tks_old")) {
		t.Fatal("WaitKey reported its context ended")
	}
	if !revoked(auth.TokenSourceSecret, "tks_old") {
		t.Fatal("the old secret still reads as live after its overlap")
	}
	iss, _ = issuers.TokenIssuer(context.Background(), "app_1")
	if len(iss.Keys) != 2 {
		t.Fatalf("after the overlap the issuer has %d keys, want 2", len(iss.Keys))
	}

	// Settings removed: every token key of the application is withdrawn.
	app2 := &registryv1.Application{Id: "app_1", Grants: app.GetGrants()}
	c.apply(&registryv1.WatchResponse{Change: &registryv1.WatchResponse_Application{Application: app2}})
	if !revoked(auth.TokenSourceSecret, "tks_new") || !revoked(auth.TokenSourceKey, "ec-1") || !revoked(auth.TokenSourceJWKS, "any") {
		t.Fatal("token keys live after the settings were removed")
	}
	if _, err := issuers.TokenIssuer(context.Background(), "app_1"); !errors.Is(err, auth.ErrUnknownIssuer) {
		t.Fatalf("an application without settings: %v", err)
	}
}
