package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/redisserver"
)

// A catalog written by a registry of the layout before the {registry} hash
// tag (herald:registry:*) is moved at start, TTLs kept, and served as before.
func TestOldKeyLayoutIsMoved(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A standalone Redis, as the old layout needed.
	srv, err := redisserver.Start(ctx, redisserver.Options{Dir: t.TempDir(), AppendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	e := startWith(t, srv)
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid"})
	app, secret := e.createApp(t, &registryv1.Application{Name: "shop"})
	rev := e.revision(t)
	e.stop()

	// Turn it into the old layout, as an older registry wrote it.
	keys, err := e.rdb.Keys(ctx, "herald:{registry}:*").Result()
	if err != nil || len(keys) < 5 {
		t.Fatalf("keys of the new layout: %v %v", keys, err)
	}
	for _, k := range keys {
		if err := e.rdb.Rename(ctx, k, strings.Replace(k, "{registry}", "registry", 1)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	const link = "herald:registry:portal_links:0011"
	if err := e.rdb.Set(ctx, link, "x", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}

	e2 := startWith(t, srv)
	if got := e2.revision(t); got < rev {
		t.Fatalf("revision after the move: %d, want at least %d", got, rev)
	}
	if old, _ := e2.rdb.Keys(ctx, "herald:registry:*").Result(); len(old) > 0 {
		t.Fatalf("keys left in the old layout: %v", old)
	}
	if ttl := e2.rdb.TTL(ctx, "herald:{registry}:portal_links:0011").Val(); ttl < 59*time.Minute {
		t.Fatalf("the portal link's TTL after the move: %v", ttl)
	}
	if _, err := e2.admin.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "billing.invoice.paid"})); err != nil {
		t.Fatalf("the event type after the move: %v", err)
	}
	k, err := e2.authenticate(secret)
	if err != nil || k.GetApplicationId() != app.GetId() {
		t.Fatalf("the application's key after the move: %v %v", k, err)
	}
	// A second start moves nothing and changes nothing.
	e2.stop()
	e3 := startWith(t, srv)
	if _, err := e3.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()})); err != nil {
		t.Fatalf("the application after a second start: %v", err)
	}
}
