package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
)

// herald trigger sends a test event to the caller's own subscriptions
// that cover the type, from the type's example or a data file, and says
// which ones a filter dropped; bad data and foreign subscriptions are
// refused with the reason.
func TestTriggerAgainstTheMesh(t *testing.T) {
	c := startMesh(t, func(c *config.Common) {
		c.SecretKey = secretbox.NewKey()
		c.WebhookAllow = "127.0.0.0/8"
	})
	ctx := context.Background()
	reg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(c.RegistryAddr), rpc.ClientOptions(cliTestKey)...)
	if _, err := reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "billing.invoice.paid", Description: "An invoice was paid.",
		Schema:   `{"type":"object","required":["amount"],"properties":{"amount":{"type":"integer"}}}`,
		Examples: []*registryv1.Example{{Name: "small", Data: `{"amount":5}`}},
	}})); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []map[string]any
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev map[string]any
		if json.Unmarshal(body, &ev) == nil && ev["type"] == "billing.invoice.paid" {
			mu.Lock()
			got = append(got, ev)
			mu.Unlock()
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer recv.Close()
	app := func(name string) (string, string) {
		res, err := reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
			Name: name, Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
		}}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetApplication().GetId(), res.Msg.GetKey().GetSecret()
	}
	endpoint := func(appID, filter string) string {
		res, err := reg.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
			ApplicationId: appID, Types: []string{"billing.*"}, Filter: filter,
			Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: recv.URL}},
		}}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetSubscription().GetId()
	}
	mine, key := app("consumer")
	open := endpoint(mine, "")
	picky := endpoint(mine, "data.amount > 100")
	other, _ := app("stranger")
	theirs := endpoint(other, "")

	t.Setenv("HERALD_EDGE_ADDR", c.EdgeAddr)
	t.Setenv("HERALD_REGISTRY_ADDR", c.RegistryAddr)
	t.Setenv("HERALD_KEY", key)
	t.Setenv("HERALD_ADMIN_KEY", "")

	out, err := cli(ctx, t, "trigger", "billing.invoice.paid")
	if err != nil {
		t.Fatalf("trigger: %v\n%s", err, out)
	}
	if !strings.Contains(out, open+": sent test event") || !strings.Contains(out, picky+": filtered out") {
		t.Fatalf("trigger output:\n%s", out)
	}
	testutil.Eventually(t, 15*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 }, "the example arrives")
	mu.Lock()
	if got[0]["heraldtest"] != true || got[0]["data"].(map[string]any)["amount"] != float64(5) {
		t.Fatalf("test event: %v", got[0])
	}
	mu.Unlock()

	dir := t.TempDir()
	big := filepath.Join(dir, "big.json")
	_ = os.WriteFile(big, []byte(`{"amount":500}`), 0o600)
	if out, err := cli(ctx, t, "trigger", "billing.invoice.paid", "--data", big, "--to", picky); err != nil || !strings.Contains(out, picky+": sent test event") {
		t.Fatalf("trigger --data --to: %v\n%s", err, out)
	}
	testutil.Eventually(t, 15*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 }, "the data file's event arrives")

	bad := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(bad, []byte(`{"amount":"lots"}`), 0o600)
	if out, err := cli(ctx, t, "trigger", "billing.invoice.paid", "--data", bad, "--to", open); err == nil || !strings.Contains(out, "schema") {
		t.Fatalf("data against the schema: %v\n%s", err, out)
	}
	if out, err := cli(ctx, t, "trigger", "billing.invoice.paid", "--to", theirs); err == nil || !strings.Contains(out, "does not exist") {
		t.Fatalf("another application's subscription: %v\n%s", err, out)
	}
	if out, err := cli(ctx, t, "trigger", "Not A Type"); err == nil {
		t.Fatalf("a bad type name: %s", out)
	}
	if out, err := cli(ctx, t, "trigger", "identity.user.created"); err == nil || !strings.Contains(err.Error(), "none of your subscriptions") {
		t.Fatalf("no subscription covers the type: %v\n%s", err, out)
	}

	// herald portal link: the operator mints a sign-in link.
	if out, err := cli(ctx, t, "portal", "link", mine); err == nil || !strings.Contains(err.Error(), "HERALD_ADMIN_KEY") {
		t.Fatalf("portal link without the operator's key: %v\n%s", err, out)
	}
	t.Setenv("HERALD_ADMIN_KEY", cliTestKey)
	out, err = cli(ctx, t, "portal", "link", mine, "--session-ttl", "10m")
	if err != nil || !strings.Contains(out, "/portal/#link=hpl_") {
		t.Fatalf("portal link: %v\n%s", err, out)
	}
	if out, err := cli(ctx, t, "portal", "link", "app_unknown"); err == nil {
		t.Fatalf("a link for an unknown application: %s", out)
	}
}
