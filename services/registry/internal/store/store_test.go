package store

import (
	"context"
	"fmt"
	"sync"
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"google.golang.org/protobuf/proto"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	return New(testutil.RedisClient(t, testutil.Redis(t)))
}

func accept(*registryv1.EventType, []*registryv1.SchemaVersion) error { return nil }

func TestSnapshot(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if _, err := s.CreateEventType(ctx, &registryv1.EventType{Name: "billing.invoice.paid", Schema: `{"title":"v1"}`}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSchemaVersion(ctx, "billing.invoice.paid", `{"title":"v2"}`, accept); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateProduct(ctx, &registryv1.Product{Name: "pro", EventTypes: []string{"billing.*"}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateApplication(ctx, &registryv1.Application{Id: "app_1", Name: "shop"}, &registryv1.Key{Id: "key_1", Secret: "hk_secret"}, "hash1"); err != nil {
		t.Fatal(err)
	}
	// A type stored before schema versions were kept: its schema is
	// version 1.
	legacy, _ := proto.Marshal(&registryv1.EventType{Name: "identity.user.created", Schema: `{"title":"old"}`, Revision: 1})
	if err := s.rdb.HSet(ctx, keyTypes, "identity.user.created", legacy).Err(); err != nil {
		t.Fatal(err)
	}

	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rev, _ := s.Revision(ctx)
	if snap.Revision != rev || len(snap.Domains) != 1 || len(snap.EventTypes) != 2 || len(snap.Products) != 1 || len(snap.Applications) != 1 {
		t.Fatalf("snapshot at %d (catalog at %d): %d domains, %d types, %d products, %d applications",
			snap.Revision, rev, len(snap.Domains), len(snap.EventTypes), len(snap.Products), len(snap.Applications))
	}
	paid := snap.SchemaVersions["billing.invoice.paid"]
	if len(paid) != 2 || paid[0].GetSchema() != `{"title":"v1"}` || paid[1].GetVersion() != 2 || snap.EventTypes[0].GetSchema() != `{"title":"v2"}` {
		t.Errorf("versions of billing.invoice.paid: %v; type %v", paid, snap.EventTypes[0])
	}
	old := snap.SchemaVersions["identity.user.created"]
	if len(old) != 1 || old[0].GetVersion() != 1 || old[0].GetSchema() != `{"title":"old"}` || snap.EventTypes[1].GetSchemaVersion() != 1 {
		t.Errorf("versions of a legacy type: %v", old)
	}
	// Its next version stores both.
	if v, err := s.CreateSchemaVersion(ctx, "identity.user.created", `{"title":"new"}`, accept); err != nil || v.GetVersion() != 2 {
		t.Fatalf("new version of a legacy type: %v, %v", v, err)
	}
	_, vs, err := s.SchemaVersions(ctx, "identity.user.created")
	if err != nil || len(vs) != 2 || vs[0].GetSchema() != `{"title":"old"}` {
		t.Errorf("versions: %v, %v", vs, err)
	}
	// The stored key has no secret.
	st, err := s.State(ctx)
	if err != nil || len(st.Keys) != 1 || st.Keys[0].GetKey().GetSecret() != "" || st.Keys[0].GetKeyHash() != "hash1" {
		t.Errorf("state keys: %v, %v", st.Keys, err)
	}
}

// TestSnapshotIsConsistent reads snapshots while versions are being added:
// each type's latest schema is always its last version's.
func TestSnapshotIsConsistent(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	for i := range 3 {
		if _, err := s.CreateEventType(ctx, &registryv1.EventType{Name: fmt.Sprintf("billing.t%d.done", i), Schema: `{"title":"1"}`}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for v := 2; v <= 30; v++ {
			for i := range 3 {
				if _, err := s.CreateSchemaVersion(ctx, fmt.Sprintf("billing.t%d.done", i), fmt.Sprintf(`{"title":"%d"}`, v), accept); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	for range 30 {
		snap, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, et := range snap.EventTypes {
			vs := snap.SchemaVersions[et.GetName()]
			if last := vs[len(vs)-1]; last.GetSchema() != et.GetSchema() || int(et.GetSchemaVersion()) != len(vs) {
				t.Fatalf("%s at revision %d: schema %s (version %d), last of %d versions %s", et.GetName(), snap.Revision, et.GetSchema(), et.GetSchemaVersion(), len(vs), last.GetSchema())
			}
		}
	}
	wg.Wait()
}
