package hub_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/heraldmesh/herald/services/edge/internal/hub"
)

// blockFirst is a gate that holds the first event until release is closed
// and tells entered when it holds it.
func blockFirst(entered chan<- struct{}, release <-chan struct{}) subOpt {
	return gated(func(n int) {
		if n == 0 {
			close(entered)
			select {
			case <-release:
			case <-time.After(waitLong):
			}
		}
	})
}

// Events that queue while a subscriber's write is blocked reach it in one
// batch (one write, one flush), however many reads of the log brought them.
func TestEventsQueuedDuringAWriteGoOutTogether(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid")
	fast := e.subscribe(t, "fast", []string{"*"})
	entered, release := make(chan struct{}), make(chan struct{})
	slow := e.subscribe(t, "slow", []string{"*"}, blockFirst(entered, release))

	pub := []published{e.publish(t, "billing.invoice.paid")}
	<-entered
	for range 5 {
		for range 40 {
			pub = append(pub, e.publish(t, "billing.invoice.paid"))
		}
		// The hub hands every event to both subscribers at once: once the
		// fast one has them, the slow one's queue holds them too.
		fast.waitN(t, len(pub), waitLong)
	}
	close(release)
	slow.expectExactly(t, pub, waitLong)
	slow.mu.Lock()
	batches := slices.Clone(slow.batches)
	slow.mu.Unlock()
	if !slices.Equal(batches, []int{1, 200}) {
		t.Fatalf("the blocked subscriber got batches of %v, want [1 200]: what queued during the write goes out at once", batches)
	}
}

// A subscriber that asks to be cut when it falls behind ends with the
// cursor of the last event it was sent; resuming there loses nothing.
func TestCutWhenBehind(t *testing.T) {
	e := newEnv(t, "billing.invoice.paid")
	fast := e.subscribe(t, "fast", []string{"*"})
	entered, release := make(chan struct{}), make(chan struct{})
	slow := e.subscribe(t, "slow", []string{"*"}, blockFirst(entered, release), func(_ *subscriber, o *hub.Options) {
		o.Buffer, o.CutWhenBehind = 4, true
	})
	pub := []published{e.publish(t, "billing.invoice.paid")}
	<-entered
	// Two reads of the log at least: the first fills the queue past its
	// bound (a subscriber that took everything may take one read more),
	// the second overflows it.
	for range 2 {
		for range 10 {
			pub = append(pub, e.publish(t, "billing.invoice.paid"))
		}
		fast.waitN(t, len(pub), waitLong)
	}
	close(release)
	var err error
	select {
	case err = <-slow.done:
		slow.done <- nil // for the cleanup
	case <-time.After(waitLong):
		t.Fatal("the slow subscriber was not cut")
	}
	var lagged *hub.LaggedError
	if !errors.As(err, &lagged) || lagged.Cursor != pub[0].Cursor {
		t.Fatalf("Stream ended with %v, want a LaggedError at %v", err, pub[0].Cursor)
	}
	if got := slow.snapshot(); len(got) != 1 {
		t.Fatalf("the slow subscriber got %d events before the cut, want 1", len(got))
	}
	resumed := e.subscribe(t, "resumed", []string{"*"}, after(lagged.Cursor))
	resumed.expectExactly(t, pub[1:], waitLong)
}
