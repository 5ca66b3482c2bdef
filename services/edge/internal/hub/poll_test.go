package hub_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
)

// A poll cut short by its context says how far it got, whatever it was
// doing: the edge answers the polls waiting when it stops with their Next,
// and a Next before the poll's cursor (it was 0-0) sent the client back to
// the start of the log to get everything again (issue 11). A cursor-less
// poll on a hub that follows the log gets the hub's position.
func TestPollCutShortKeepsItsCursor(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid")
	first := e.publish(t, "billing.invoice.paid")
	second := e.publish(t, "billing.invoice.paid")
	// The hub has read both once a cursor-less poll starts after them.
	deadline := time.Now().Add(waitShort)
	for {
		b, err := e.hub.Poll(context.Background(), []string{"*"}, hub.Options{}, 10, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !b.Next.Less(second.Cursor) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hub never read past %s", second.Cursor)
		}
		time.Sleep(5 * time.Millisecond)
	}

	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	// Several times: where the poll notices its context is not fixed.
	for range 20 {
		// From a cursor behind the hub (what it reads from the log first).
		after := first.Cursor
		b, err := e.hub.Poll(stopped, []string{"*"}, hub.Options{After: &after}, 10, time.Second)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("poll after %s with its context ended: %v, want context.Canceled", after, err)
		}
		if len(b.Events) != 0 || b.Next != after {
			t.Fatalf("poll after %s cut short: %d events, Next %s; want none and Next %s", after, len(b.Events), b.Next, after)
		}

		// Without a cursor: from the hub's position.
		b, err = e.hub.Poll(stopped, []string{"*"}, hub.Options{}, 10, time.Second)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cursor-less poll with its context ended: %v, want context.Canceled", err)
		}
		if len(b.Events) != 0 || b.Next.Less(second.Cursor) || b.Next == eventlog.Zero {
			t.Fatalf("cursor-less poll cut short: %d events, Next %s; want none and Next at or after %s", len(b.Events), b.Next, second.Cursor)
		}
	}
}
