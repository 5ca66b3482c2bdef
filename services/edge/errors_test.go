package edge_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/registry"
)

// An SSE request the edge cannot answer because the registry is down (an
// exact type it has not seen) gets 503 with a generic message: the
// registry's address and the client error chain stay in the log.
func TestSSEServerFaultCarriesNoInternals(t *testing.T) {
	srv := testutil.Redis(t)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey, EdgeAddr: "127.0.0.1:0"}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var stopRegistry func()
	common.RegistryAddr, stopRegistry = testutil.Start(t, reg)

	regClient := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...)
	var key string
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := regClient.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
			Name:   "reader",
			Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
		}}))
		if err == nil {
			key = res.Msg.GetKey().GetSecret()
		}
		return err == nil
	}, "registry never answered")

	svc, err := edge.New(edge.Config{Common: common, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	base := rpc.BaseURL(testutil.Serve(t, svc))
	get := func(query string) (int, string) {
		req, _ := http.NewRequest("GET", base+"/v1/stream?"+query, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := http.DefaultClient.Do(req.WithContext(ctx))
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
	// The edge knows the key and the application from the Watch stream.
	testutil.Eventually(t, 20*time.Second, func() bool { code, _ := get("types=billing.*"); return code == http.StatusOK }, "edge never served the key")

	stopRegistry()
	code, body := get("types=billing.invoice.unseen")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("stream of an unseen type with the registry down: %d %s, want 503", code, body)
	}
	_, port, _ := net.SplitHostPort(common.RegistryAddr)
	for _, internal := range []string{port, "dial", "127.0.0.1", "get event type"} {
		if strings.Contains(body, internal) {
			t.Errorf("answer %q names %q", body, internal)
		}
	}
}
