package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/cmd/herald/internal/mesh"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/webhook"
)

// startMeshWith is startMesh with settings changed by set.
func startMeshWith(t *testing.T, set func(*config.Common)) config.Common { return startMesh(t, set) }

// startMesh runs the four services in this process against a private
// redis-server, and returns the addresses once every one is ready.
func startMesh(t *testing.T, set ...func(*config.Common)) config.Common {
	t.Helper()
	srv := testutil.Redis(t)
	common := config.Common{
		RedisURL: srv.URL(), AdminKey: cliTestKey,
		EdgeAddr: "127.0.0.1:0", RouterAddr: "127.0.0.1:0", RegistryAddr: "127.0.0.1:0", MeteringAddr: "127.0.0.1:0",
	}
	for _, f := range set {
		f(&common)
	}
	m, err := mesh.New(common, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("mesh did not stop within 20s")
		}
	})
	c := m.Common
	for _, addr := range []string{c.RegistryAddr, c.RouterAddr, c.MeteringAddr, c.EdgeAddr} {
		testutil.Eventually(t, 20*time.Second, func() bool {
			res, err := http.Get(rpc.BaseURL(addr) + "/readyz")
			if err != nil {
				return false
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			return res.StatusCode == http.StatusOK
		}, addr+" ready")
	}
	return c
}

// TestListenAgainstTheMesh publishes through the router and checks that a
// local receiver gets each event from the edge's stream, signed with the
// secret listen printed.
func TestListenAgainstTheMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole mesh")
	}
	c := startMesh(t)
	ctx := context.Background()
	reg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(c.RegistryAddr), rpc.ClientOptions(cliTestKey)...)
	for _, name := range []string{"billing.invoice.paid", "identity.user.created"} {
		if _, err := reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
			Name: name, Description: "A test type.", Schema: `{"type":"object"}`,
		}})); err != nil {
			t.Fatal(err)
		}
	}
	app, err := reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "shop",
		Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	key := app.Msg.GetKey().GetSecret()

	secretRe := regexp.MustCompile(`Ready\. Signing secret: (whsec_\S+)`)
	rc := &receiver{statuses: []int{http.StatusNoContent}}
	hooks := httptest.NewServer(rc)
	defer hooks.Close()

	t.Setenv("HERALD_EDGE_ADDR", c.EdgeAddr)
	t.Setenv("HERALD_KEY", key)
	out, stop := runListen(t, "--forward-to", hooks.URL+"/hooks", "--types", "billing.*")
	testutil.Eventually(t, 20*time.Second, func() bool { return strings.Contains(out.String(), "Ready.") }, "listen ready")
	m := secretRe.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no secret printed:\n%s", out)
	}
	rc.setSecret(m[1])

	router := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(c.RouterAddr), rpc.ClientOptions(key)...)
	event := func(id, typ string) *eventv1.CloudEvent {
		return &eventv1.CloudEvent{Id: id, Source: "//shop", SpecVersion: "1.0", Type: typ,
			Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"n":%q}`, id)}}
	}
	res, err := router.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{
		event("evt_m1", "billing.invoice.paid"),
		event("evt_skip", "identity.user.created"), // not asked for
		event("evt_m2", "billing.invoice.paid"),
	}}))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res.Msg.GetResults() {
		if r.GetError() != nil {
			t.Fatalf("event %d refused: %v", i, r.GetError())
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(rc.deliveries()) >= 2 }, "two deliveries")
	if err := stop(); err != nil {
		t.Fatalf("listen: %v\n%s", err, out)
	}
	got := rc.deliveries()
	if len(got) != 2 {
		t.Fatalf("%d deliveries, want 2: %+v", len(got), got)
	}
	for i, want := range []string{"evt_m1", "evt_m2"} {
		d := got[i]
		var ce struct{ ID, Type string }
		if err := json.Unmarshal([]byte(d.body), &ce); err != nil || ce.ID != want || ce.Type != "billing.invoice.paid" {
			t.Errorf("delivery %d: body %s (%v)", i, d.body, err)
		}
		if d.id != want || d.err != nil {
			t.Errorf("delivery %d: webhook-id %q (want %q), verification: %v", i, d.id, want, d.err)
		}
	}
	s := out.String()
	cursor := res.Msg.GetResults()[2].GetCursor()
	for _, want := range []string{
		"billing.invoice.paid  evt_m1  -> 204 No Content (",
		"billing.invoice.paid  evt_m2  -> 200 OK (",
		"Stopped. Resume with --cursor " + cursor,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}

	// Resuming from the first event's cursor gets the second one again.
	secret := webhook.NewSecret()
	rc.setSecret(secret)
	out2, stop2 := runListen(t, "--forward-to", hooks.URL+"/hooks", "--types", "billing.*", "--cursor", res.Msg.GetResults()[0].GetCursor(), "--secret", secret)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(rc.deliveries()) == 3 }, "the replayed delivery")
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if d := rc.deliveries()[2]; d.id != "evt_m2" || d.err != nil {
		t.Errorf("resumed delivery: %q %v\n%s", d.id, d.err, out2)
	}

	// A type outside the key's grants is refused with the edge's reason.
	if _, err := cli(ctx, t, "listen", "--forward-to", hooks.URL, "--types", "identity.*"); err == nil || !strings.Contains(err.Error(), "no subscribe grant covering identity.*") {
		t.Errorf("listen beyond the grants: %v", err)
	}
}
