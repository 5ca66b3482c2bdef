package router_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
)

// The router's catalog cache reconnects to the registry with a delay that
// grows while the registry is away, and starts over once it is connected
// again: after one long outage, a later registry restart is followed within
// moments, so a key revoked right after it is refused well under the 5s cap
// (D7: the delay stayed at its cap, and the revoked key published for 4.7s).
func TestCatalogReconnectsPromptlyAfterAnEarlierOutage(t *testing.T) {
	srv := testutil.Redis(t)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey, RegistryAddr: testutil.FreeAddr(t)}
	startRegistry := func() (stop func()) {
		t.Helper()
		reg, err := registry.New(registry.Config{Common: common, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reg.Listen(); err != nil {
			t.Fatal(err)
		}
		stop = run(t, reg.Run)
		waitReady(t, common.RegistryAddr)
		return stop
	}
	stopRegistry := startRegistry()
	e := &env{
		common: common, redis: srv, rdb: testutil.RedisClient(t, srv),
		registry: registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...),
	}
	e.createType(t, orderCreated, orderSchema)
	newKey := func(name string) (id, secret string) {
		t.Helper()
		res, err := e.registry.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{
			Application: &registryv1.Application{Name: name, Grants: []*registryv1.Grant{
				{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "*"},
			}},
		}))
		if err != nil {
			t.Fatalf("create application: %v", err)
		}
		return res.Msg.GetKey().GetId(), res.Msg.GetKey().GetSecret()
	}
	canaryID, canary := newKey("canary")
	keyID, key := newKey("shop")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 0)
	mustPublish(t, routerClient(addr, canary), event(orderCreated, "c-1", valid))
	mustPublish(t, routerClient(addr, key), event(orderCreated, "k-1", valid))

	revoke := func(id string) {
		t.Helper()
		if _, err := e.registry.RevokeKey(context.Background(), connect.NewRequest(&registryv1.RevokeKeyRequest{Id: id})); err != nil {
			t.Fatalf("revoke key: %v", err)
		}
	}
	refused := func(secret string) func() bool {
		return func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := publish(ctx, routerClient(addr, secret), event(orderCreated, "probe-"+time.Now().Format(time.RFC3339Nano), valid))
			return connect.CodeOf(err) == connect.CodeUnauthenticated
		}
	}

	// One outage, long enough for the reconnect delay to reach its 5s cap
	// (100ms doubling: 6.3s of failed attempts).
	stopRegistry()
	time.Sleep(9 * time.Second)
	stopRegistry = startRegistry()
	// The cache follows the registry again once a change reaches it.
	revoke(canaryID)
	testutil.Eventually(t, 20*time.Second, refused(canary), "the canary key, revoked after the first outage, is refused")

	// A second, brief restart: the cache must be back within moments.
	stopRegistry()
	startRegistry()
	revoke(keyID)
	revokedAt := time.Now()
	testutil.Eventually(t, 3*time.Second, refused(key), "a key revoked right after a registry restart is refused within moments")
	t.Logf("revoked key refused %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))
}
