package hub_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
)

// A resume cursor on a pattern that matches no stream yet has nothing to
// catch up on: the stream follows live events, picks up a matching type
// created later, and ends as soon as its context does (issue 9, D1).
func TestResumeOnPatternWithoutStreams(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid")
	e.publish(t, "billing.invoice.paid")

	idle := e.subscribe(t, "idle", []string{"a.zzz.*"}, after(eventlog.Zero))
	done := make(chan struct{})
	go func() { idle.stop(t); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("a stream resumed over zero streams did not end within 5s of its context")
	}

	s := e.subscribe(t, "follower", []string{"a.zzz.*"}, after(eventlog.Zero))
	e.reg.add("a.zzz.created")
	p := e.publish(t, "a.zzz.created")
	got := s.waitN(t, 1, 10*time.Second)
	if got[0].ID != p.ID {
		t.Fatalf("got %+v, want %s", got, p.ID)
	}
	q := e.publish(t, "a.zzz.created")
	got = s.waitN(t, 2, 10*time.Second)
	if got[1].ID != q.ID || got[1].Late {
		t.Fatalf("got %+v, want %s live second", got, q.ID)
	}
	if n := e.hub.Subscribers(); n != 1 {
		t.Fatalf("%d live subscribers, want 1 (the idle stream left)", n)
	}
}

// A cursor after both the newest event and the current time can never be
// followed by an event: it is refused, naming the newest cursor (D6). A
// cursor between the newest event and now is accepted.
func TestCursorInTheFuture(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid", "identity.user.created")
	p := e.publish(t, "billing.invoice.paid")

	stream := func(patterns []string, cursor eventlog.ID) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		started := false
		err := e.hub.Stream(ctx, patterns, hub.Options{After: &cursor, Started: func() error { started = true; return nil }}, func([]*hub.Event) error { return nil })
		if started && err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%v from %v: error after starting: %v", patterns, cursor, err)
		}
		return err
	}
	future := eventlog.ID{Ms: 99999999999999}
	err := stream([]string{"billing.*"}, future)
	var ahead *hub.CursorAheadError
	if !errors.As(err, &ahead) {
		t.Fatalf("future cursor: got %v, want CursorAheadError", err)
	}
	if want := "cursor 99999999999999-0 is in the future, which would skip every event until then: the newest cursor of the types this stream covers is " + p.Cursor.String(); !strings.Contains(err.Error(), want) {
		t.Fatalf("got %q, want it to contain %q", err, want)
	}
	// No event in the streams asked for: the newest cursor is 0.
	err = stream([]string{"identity.*"}, future)
	if !errors.As(err, &ahead) || !strings.Contains(err.Error(), "covers is 0;") {
		t.Fatalf("future cursor over empty streams: got %v", err)
	}
	// Between the newest event and now: fine.
	waitRedisPast(t, e.rdb, p.Cursor.Ms+5)
	if err := stream([]string{"billing.*"}, eventlog.ID{Ms: p.Cursor.Ms + 5}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cursor between the newest event and now: got %v, want the stream to run", err)
	}
}
