package mesh_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
	"google.golang.org/protobuf/types/known/durationpb"
)

// tokenApp is an application that mints browser tokens: an HS256 secret
// and a registry-held ES256 key, granted billing.*.
type tokenApp struct {
	app      *registryv1.Application
	secret   string // HS256
	secretID string
	ec       *ecdsa.PrivateKey
}

// startTokens runs the mesh with a secret key and an application with
// token settings, and waits until the edge verifies its tokens.
func startTokens(t *testing.T) (*env, *tokenApp) {
	t.Helper()
	e := startWith(t, func(c *config.Common) { c.SecretKey = secretbox.NewKey() })
	ctx := context.Background()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := json.Marshal(jose.JSONWebKey{Key: &ec.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name:   "browser-shop",
		Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
		TokenSettings: &registryv1.TokenSettings{
			PublicKeys: []*registryv1.TokenPublicKey{{Id: "ec-1", Key: string(pub)}},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	appKey := res.Msg.GetKey().GetSecret()
	// The application rotates its own secret, with its own key.
	self := registryClient(e, appKey)
	rot, err := self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: res.Msg.GetApplication().GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	ta := &tokenApp{app: rot.Msg.GetApplication(), secret: rot.Msg.GetSecret(), secretID: rot.Msg.GetSecretId(), ec: ec}
	tok := ta.hs256(t, ta.secretID, "billing.*", time.Minute)
	e.waitStatus(t, "types=billing.*&access_token="+tok, http.StatusOK, "", "the edge verifies the application's tokens")
	return e, ta
}

// registryClient calls the registry with key.
func registryClient(e *env, key string) registryv1connect.RegistryServiceClient {
	return registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.RegistryAddr), rpc.ClientOptions(key)...)
}

// waitStatus retries a stream request until it is answered with want (and
// a body containing fragment), slowly: failed authentications count
// against the source address's limit.
func (e *env) waitStatus(t *testing.T, query string, want int, fragment, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body := e.streamStatus(t, query)
		if status == want && strings.Contains(body, fragment) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %d %s", what, status, body)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// mint signs claims with go-jose.
func mint(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func (ta *tokenApp) claims(types string, life time.Duration) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": ta.app.GetId(), "sub": "user-1", "aud": "herald", "iat": now.Unix(), "exp": now.Add(life).Unix(),
		"herald": map[string]any{"types": strings.Split(types, ",")},
	}
}

func (ta *tokenApp) hs256(t *testing.T, kid, types string, life time.Duration) string {
	return mint(t, jose.HS256, []byte(ta.secret), kid, ta.claims(types, life))
}

func (ta *tokenApp) es256(t *testing.T, types string, life time.Duration) string {
	return mint(t, jose.ES256, ta.ec, "ec-1", ta.claims(types, life))
}

// streamStatus opens a stream, reads its status (and the body of a
// refusal), and closes it.
func (e *env) streamStatus(t *testing.T, query string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(e.common.EdgeAddr)+"/v1/stream?"+query, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusOK {
		return res.StatusCode, ""
	}
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// line is one line of tests/tokens/stream.mjs.
type line struct {
	Case    string `json:"case"`
	Kind    string `json:"kind"`
	Status  int    `json:"status"`
	Body    string `json:"body"`
	ID      string `json:"id"`
	Type    string `json:"type"`
	Data    string `json:"data"`
	Text    string `json:"text"`
	Message string `json:"message"`
}

// Tokens minted in Node with the npm jose library (HS256 with the secret
// RotateTokenSecret showed, ES256 with a key held in the registry) stream
// from a real edge over SSE with ?access_token= and the herald_token
// cookie; the filter of a token applies; a token expiring on an open
// stream ends it; a token naming a type outside the grants, or a stream
// asking for more than its token names, is refused.
func TestBrowserTokensMintedInNode(t *testing.T) {
	e, ta := startTokens(t)
	ecJWK, err := json.Marshal(jose.JSONWebKey{Key: ta.ec, KeyID: "ec-1"})
	if err != nil {
		t.Fatal(err)
	}
	hs := func(name, types, req string) map[string]any {
		return map[string]any{
			"name": name, "alg": "HS256", "secret": ta.secret, "kid": ta.secretID, "iss": ta.app.GetId(), "sub": "user-1",
			"herald": map[string]any{"types": strings.Split(types, ",")}, "types": req,
		}
	}
	es := hs("es256", "billing.*", "billing.*")
	delete(es, "secret")
	es["alg"], es["jwk"], es["kid"] = "ES256", json.RawMessage(ecJWK), "ec-1"
	es["herald"] = map[string]any{"types": []string{"billing.*"}, "filter": "data.amount > 100"}
	cookie := hs("cookie", "billing.invoice.paid", "billing.invoice.paid")
	cookie["via"] = "cookie"
	expiring := hs("expiring", "billing.*", "billing.*")
	expiring["exp"] = "4s"
	cases := []map[string]any{
		hs("hs256", "billing.invoice.*", "billing.invoice.paid"),
		es, cookie, expiring,
		hs("outside-grants", "billing.*,identity.*", "billing.*"),
		hs("outside-token", "billing.invoice.created", "billing.invoice.paid"),
	}
	spec, err := json.Marshal(map[string]any{"edge": rpc.BaseURL(e.common.EdgeAddr), "cases": cases})
	if err != nil {
		t.Fatal(err)
	}
	node := nodehook.Run(t, "tokens", "stream.mjs", "jose", "TOKEN_CASES="+string(spec))

	read := func(what string) line {
		t.Helper()
		select {
		case s, ok := <-node.Lines:
			if !ok {
				t.Fatalf("stream.mjs exited waiting for %s; stderr:\n%s", what, node.Stderr())
			}
			var l line
			if err := json.Unmarshal([]byte(s), &l); err != nil {
				t.Fatalf("stream.mjs printed %q", s)
			}
			if l.Kind == "error" {
				t.Fatalf("stream.mjs: %s: %s", l.Case, l.Message)
			}
			return l
		case <-time.After(30 * time.Second):
			t.Fatalf("stream.mjs printed nothing for 30s waiting for %s; stderr:\n%s", what, node.Stderr())
			return line{}
		}
	}
	events := map[string][]line{}
	comments := map[string][]string{}
	ended := map[string]bool{}
	status := map[string]line{}
	handle := func(l line) {
		switch l.Kind {
		case "status":
			status[l.Case] = l
		case "event":
			events[l.Case] = append(events[l.Case], l)
		case "comment":
			comments[l.Case] = append(comments[l.Case], l.Text)
		case "end":
			ended[l.Case] = true
		}
	}
	for len(status) < len(cases) {
		handle(read("every stream's status"))
	}
	for _, name := range []string{"hs256", "es256", "cookie", "expiring"} {
		if status[name].Status != http.StatusOK {
			t.Fatalf("%s: status %d %s", name, status[name].Status, status[name].Body)
		}
	}
	for name, want := range map[string]string{
		"outside-grants": "the token names identity.*, outside the subscribe grants",
		"outside-token":  "the token does not allow billing.invoice.paid",
	} {
		if l := status[name]; l.Status != http.StatusForbidden || !strings.Contains(l.Body, want) {
			t.Errorf("%s: %d %s, want 403 saying %q", name, l.Status, l.Body, want)
		}
	}

	// Events reach every open stream; es256's filter keeps the big one only.
	cursors := e.publish(invoiceEvent("small", 5), invoiceEvent("big", 500))
	for len(events["hs256"]) < 2 || len(events["cookie"]) < 2 || len(events["es256"]) < 1 || !ended["expiring"] {
		handle(read("the events and the expiry"))
	}
	for _, name := range []string{"hs256", "cookie"} {
		if got := events[name]; got[0].ID != cursors[0] || got[1].ID != cursors[1] || got[0].Type != "billing.invoice.paid" {
			t.Errorf("%s got %+v, want %v", name, got, cursors)
		}
	}
	if got := events["es256"]; got[0].ID != cursors[1] || !strings.Contains(got[0].Data, `"big"`) {
		t.Errorf("es256 (filter data.amount > 100) got %+v first, want only the big invoice %s", got[0], cursors[1])
	}
	if c := comments["expiring"]; len(c) == 0 || c[len(c)-1] != "stream ended: the token of this stream has expired" {
		t.Errorf("the expiring token's stream ended with comments %q", c)
	}
	for _, name := range []string{"hs256", "es256", "cookie"} {
		if ended[name] {
			t.Errorf("%s: the stream of a live token ended", name)
		}
	}
}

// Open streams of a token end when the key that verified it is withdrawn
// (the HS256 secret rotated out with overlap 0, the public key removed) or
// the grants no longer cover it; a token is refused off the stream routes
// and by the other services; refusals carry no internals.
func TestBrowserTokenStreamsEndWhenWithdrawn(t *testing.T) {
	e, ta := startTokens(t)
	ctx := context.Background()
	self := registryClient(e, adminKey)

	hsCh, closeHS := e.subscribe("types=billing.*&access_token="+ta.hs256(t, ta.secretID, "billing.*", 10*time.Minute), "")
	defer closeHS()
	esCh, closeES := e.subscribe("types=billing.*&access_token="+ta.es256(t, "billing.*", 10*time.Minute), "")
	defer closeES()
	cursor := e.publish(invoiceEvent("before", 1))[0]
	if next(t, hsCh).id != cursor || next(t, esCh).id != cursor {
		t.Fatal("the token streams did not get the event")
	}

	// Rotating the secret with overlap 0 ends the HS256 stream, not the
	// ES256 one; the old secret's tokens are refused from then on.
	old := ta.hs256(t, ta.secretID, "billing.*", 10*time.Minute)
	if _, err := self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: ta.app.GetId(), Overlap: durationpb.New(0)})); err != nil {
		t.Fatal(err)
	}
	streamEnds(t, hsCh, "rotated-out secret")
	cursor = e.publish(invoiceEvent("after-rotation", 2))[0]
	if next(t, esCh).id != cursor {
		t.Fatal("the ES256 stream stopped at the HS256 rotation")
	}
	e.waitStatus(t, "types=billing.*&access_token="+old, http.StatusUnauthorized, "kid is not a key of this application", "a rotated-out secret's token is refused")

	// Removing the public key ends the ES256 stream.
	app, err := e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: ta.app.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	upd := app.Msg.GetApplication()
	upd.TokenSettings = &registryv1.TokenSettings{}
	if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: upd})); err != nil {
		t.Fatal(err)
	}
	streamEnds(t, esCh, "removed public key")

	// A withdrawn grant ends a token's stream too.
	rot, err := self.RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: ta.app.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	ta.secret, ta.secretID = rot.Msg.GetSecret(), rot.Msg.GetSecretId()
	fresh := ta.hs256(t, ta.secretID, "billing.*", 10*time.Minute)
	e.waitStatus(t, "types=billing.*&access_token="+fresh, http.StatusOK, "", "the new secret's tokens verify")
	grantCh, closeGrant := e.subscribe("types=billing.*&access_token="+fresh, "")
	defer closeGrant()
	app, err = e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: ta.app.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	upd = app.Msg.GetApplication()
	upd.Grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "identity.*"}}
	if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: upd})); err != nil {
		t.Fatal(err)
	}
	streamEnds(t, grantCh, "withdrawn grant")

	// StreamEvents and long polling apply a token's scope like SSE: a
	// token for identity.* streams identity.* and nothing else.
	ident := ta.hs256(t, ta.secretID, "identity.*", 10*time.Minute)
	e.waitStatus(t, "types=identity.*&access_token="+ident, http.StatusOK, "", "the narrowed grant reaches the edge")
	_, end, cancelRPC := rpcStream(t, e.common.EdgeAddr, ident, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
	if err := rpcEnd(t, end); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("StreamEvents with a token asking for types outside it: %v", err)
	}
	cancelRPC()
	if res := pollWith(t, e, "types=billing.*&wait=0s&access_token="+ident); res != http.StatusForbidden {
		t.Errorf("poll with a token asking for types outside it: %d", res)
	}
	if res := pollWith(t, e, "types=identity.*&wait=0s&access_token="+ident); res != http.StatusOK {
		t.Errorf("poll with a token inside its scope: %d", res)
	}
	// Off the edge's stream routes a token is no credential: the registry
	// refuses it.
	_, err = registryClient(e, fresh).RotateTokenSecret(ctx, connect.NewRequest(&registryv1.RotateTokenSecretRequest{ApplicationId: ta.app.GetId()}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("the registry with a token: %v", err)
	}

	// Refusals say what is wrong with the token, and nothing else.
	expired := mint(t, jose.HS256, []byte(ta.secret), ta.secretID, func() map[string]any {
		c := ta.claims("identity.*", time.Minute)
		c["exp"] = time.Now().Add(-time.Minute).Unix()
		return c
	}())
	status, body := e.streamStatus(t, "types=identity.*&access_token="+expired)
	if status != http.StatusUnauthorized || !strings.Contains(body, "invalid token: it has expired") {
		t.Errorf("expired token: %d %s", status, body)
	}
	for _, leak := range []string{ta.secret, "go-jose", "redis", "127.0.0.1"} {
		if strings.Contains(body, leak) {
			t.Errorf("the refusal %q shows %q", body, leak)
		}
	}
}

// An application whose keys are at a JWKS URL: the edge fetches the set
// through the outbound guard (the receiver's loopback address is
// allowlisted here) and verifies EdDSA and ES256 tokens with it; a kid the
// set does not have is refused.
func TestBrowserTokenFromJWKS(t *testing.T) {
	e := startWith(t, func(c *config.Common) { c.WebhookAllow = "127.0.0.0/8" })
	ctx := context.Background()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: ed.Public(), KeyID: "ed-1", Use: "sig"},
		{Key: &ec.PublicKey, KeyID: "ec-1", Use: "sig", Algorithm: "ES256"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(doc)
	}))
	defer jwks.Close()
	res, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name:          "jwks-shop",
		Grants:        []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
		TokenSettings: &registryv1.TokenSettings{JwksUrl: jwks.URL + "/.well-known/jwks.json"},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	ta := &tokenApp{app: res.Msg.GetApplication()}
	edTok := mint(t, jose.EdDSA, ed, "ed-1", ta.claims("billing.*", 5*time.Minute))
	e.waitStatus(t, "types=billing.*&access_token="+edTok, http.StatusOK, "", "the edge verifies tokens of the JWKS")
	edCh, closeED := e.subscribe("types=billing.*&access_token="+edTok, "")
	defer closeED()
	esCh, closeES := e.subscribe("types=billing.invoice.paid&access_token="+mint(t, jose.ES256, ec, "ec-1", ta.claims("billing.*", 5*time.Minute)), "")
	defer closeES()
	cursor := e.publish(invoiceEvent("via-jwks", 7))[0]
	if next(t, edCh).id != cursor || next(t, esCh).id != cursor {
		t.Fatal("the JWKS token streams did not get the event")
	}
	status, body := e.streamStatus(t, "types=billing.*&access_token="+mint(t, jose.EdDSA, ed, "ed-2", ta.claims("billing.*", 5*time.Minute)))
	if status != http.StatusUnauthorized || !strings.Contains(body, "kid is not a key of this application") || strings.Contains(body, "127.0.0.1") {
		t.Errorf("unknown kid: %d %s", status, body)
	}
	if n := fetches.Load(); n < 1 || n > 3 {
		t.Errorf("the JWKS was fetched %d times for four tokens, want it cached", n)
	}
}

// pollWith is the status of one long poll.
func pollWith(t *testing.T, e *env, query string) int {
	t.Helper()
	res, err := http.Get(rpc.BaseURL(e.common.EdgeAddr) + "/v1/poll?" + query)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}
