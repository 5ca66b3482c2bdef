package catalog

import (
	"log/slog"
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Bridges come and go with their Watch changes; only a bridge deletion
// removes one (a subscription's of the same id does not), and a snapshot
// replaces them all, so that one deleted while the cache was away is gone.
// (services/registry's bridges_test.go follows a real registry.)
func TestBridgesFollowChanges(t *testing.T) {
	c := New(nil, slog.New(slog.DiscardHandler))
	put := func(c *Cache, id, description string) {
		c.apply(&registryv1.WatchResponse{Change: &registryv1.WatchResponse_Bridge{Bridge: &registryv1.Bridge{Id: id, Description: description}}})
	}
	del := func(c *Cache, kind, id string) {
		c.apply(&registryv1.WatchResponse{Change: &registryv1.WatchResponse_Deleted{Deleted: &registryv1.Deletion{Kind: kind, Name: id}}})
	}
	ids := func() (out []string) {
		for _, b := range c.Bridges() {
			out = append(out, b.GetId())
		}
		return out
	}
	put(c, "brg_b", "first")
	put(c, "brg_a", "")
	if got := ids(); len(got) != 2 || got[0] != "brg_a" || got[1] != "brg_b" {
		t.Errorf("bridges %v, want brg_a, brg_b (by id)", got)
	}
	put(c, "brg_b", "second")
	if b, ok := c.Bridge("brg_b"); !ok || b.GetDescription() != "second" {
		t.Errorf("after a change: %v, %v", b, ok)
	}
	del(c, "subscription", "brg_b")
	if _, ok := c.Bridge("brg_b"); !ok {
		t.Error("a subscription's deletion removed a bridge")
	}
	del(c, "bridge", "brg_b")
	if _, ok := c.Bridge("brg_b"); ok {
		t.Error("the deleted bridge is still there")
	}
	del(c, "bridge", "brg_unknown") // nothing to delete: no harm
	snap := New(nil, slog.New(slog.DiscardHandler))
	put(snap, "brg_c", "")
	c.install(snap, 10)
	if got := ids(); len(got) != 1 || got[0] != "brg_c" {
		t.Errorf("after a snapshot: %v, want brg_c only", got)
	}
	if _, ok := c.Bridge("brg_a"); ok {
		t.Error("a bridge the snapshot does not have survived it")
	}
}
