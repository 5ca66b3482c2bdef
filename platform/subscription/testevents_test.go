package subscription

import (
	"context"
	"log/slog"
	"testing"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
)

// Test events get cursors with stream number 0, strictly increasing even
// within one millisecond, are queued on the replay stream with that cursor,
// and are found (and replayed) by it; a log cursor is never a test cursor.
func TestSendTestCursors(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	m := NewManager(rdb, nil, slog.New(slog.DiscardHandler), nil)
	sub := &registryv1.Subscription{Id: testSub, Types: []string{"billing.invoice.paid"}}
	var last eventlog.ID
	var cursors []string
	for i := range 50 {
		ev := &eventv1.CloudEvent{Id: "t" + string(rune('a'+i%26)), Source: "/herald/test", SpecVersion: "1.0", Type: "billing.invoice.paid"}
		c, err := m.SendTest(ctx, sub, ev, "app_1")
		if err != nil {
			t.Fatal(err)
		}
		id := eventlog.MustParseID(c)
		if !eventlog.IsTest(c) || id.StreamNumber() != 0 {
			t.Fatalf("cursor %s has stream number %d", c, id.StreamNumber())
		}
		if i > 0 && !last.Less(id) {
			t.Fatalf("cursor %s does not follow %s", c, last)
		}
		last = id
		cursors = append(cursors, c)
	}
	replay, err := rdb.XRange(ctx, ReplayKey(testSub), "-", "+").Result()
	if err != nil || len(replay) != 50 {
		t.Fatalf("replay stream: %d entries, %v", len(replay), err)
	}
	for i, msg := range replay {
		if msg.Values[fieldCursor] != cursors[i] || msg.Values[eventlog.FieldApp] != "app_1" || msg.Values[fieldTest] != "1" {
			t.Fatalf("replay entry %d: %v", i, msg.Values)
		}
	}
	ev, producer, found, err := m.FindTest(ctx, testSub, cursors[7])
	if err != nil || !found || producer != "app_1" || ev.GetType() != "billing.invoice.paid" {
		t.Fatalf("FindTest: %v %v %q %v", ev, found, producer, err)
	}
	if _, _, found, err := m.FindTest(ctx, testSub, "1-0"); err != nil || found {
		t.Fatalf("FindTest of an unknown cursor: %v %v", found, err)
	}
	if found, err := m.ReplayTest(ctx, sub, cursors[3]); err != nil || !found {
		t.Fatalf("ReplayTest: %v %v", found, err)
	}
	if n, _ := rdb.XLen(ctx, ReplayKey(testSub)).Result(); n != 51 {
		t.Fatalf("replay stream after ReplayTest: %d", n)
	}
	if found, err := m.ReplayTest(ctx, sub, "1-0"); err != nil || found {
		t.Fatalf("ReplayTest of an unknown cursor: %v %v", found, err)
	}
	for _, c := range []string{"1700000000000-1", "1700000000000-16777217", "0-0", "bad"} {
		if eventlog.IsTest(c) {
			t.Fatalf("%s counted as a test cursor", c)
		}
	}
}
