package registry_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/rpc"
)

// noInternals fails if msg names Redis's address, a herald: key or the hash
// of a key.
func noInternals(t *testing.T, what, msg string, e *env, hashes ...string) {
	t.Helper()
	for _, bad := range append([]string{e.redis.Addr(), "herald:", "dial tcp", "connection refused"}, hashes...) {
		if strings.Contains(msg, bad) {
			t.Errorf("%s: the answer %q names %q", what, msg, bad)
		}
	}
}

// With Redis down, every answer is UNAVAILABLE (503 over HTTP) with a
// generic message: no Redis address, key name or key hash.
func TestRedisDownAnswersUnavailableWithoutInternals(t *testing.T) {
	e := start(t)
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Description: "An invoice was paid."})
	app, secret := e.createApp(t, &registryv1.Application{Name: "shop", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	hash := auth.HashSecret(secret)
	if err := e.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	appClient := e.as(secret)
	calls := map[string]func() error{
		"admin ListEventTypes": func() error {
			_, err := e.admin.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))
			return err
		},
		"admin GetApplication": func() error {
			_, err := e.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))
			return err
		},
		"admin AuthenticateKey": func() error {
			_, err := e.admin.AuthenticateKey(ctx, connect.NewRequest(&registryv1.AuthenticateKeyRequest{KeyHash: hash}))
			return err
		},
		"application ListEventTypes": func() error {
			_, err := appClient.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{}))
			return err
		},
	}
	for what, call := range calls {
		err := call()
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("%s: %v, want UNAVAILABLE", what, err)
		}
		if err != nil {
			noInternals(t, what, err.Error(), e, hash)
		}
	}
	for _, key := range []string{adminKey, secret} {
		req, _ := http.NewRequest("GET", rpc.BaseURL(e.addr)+"/asyncapi.json", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("asyncapi.json: %d %s, want 503", res.StatusCode, body)
		}
		noInternals(t, "asyncapi.json", string(body), e, hash)
	}
}
