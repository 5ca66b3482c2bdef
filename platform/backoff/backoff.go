// Package backoff is the one delay policy of Herald's retry loops (the
// catalog's Watch, the edge's log reader, metering's fold): exponential from Initial to Max, with jitter so that
// replicas do not retry in step, and reset by the loop as soon as an attempt
// succeeds, so that one long outage does not slow the recovery from the next.
// It is github.com/cenkalti/backoff/v5's exponential policy with Herald's
// defaults.
package backoff

import (
	"context"
	"time"

	cenkalti "github.com/cenkalti/backoff/v5"
)

// Defaults of Options.
const (
	DefaultInitial = 100 * time.Millisecond
	DefaultMax     = 5 * time.Second
)

// jitter is the randomization factor: each delay is drawn from ±50% of the
// current interval.
const jitter = 0.5

// Options tune a Backoff. The zero value takes the defaults.
type Options struct {
	// Initial is the interval after the first failure. Default 100ms.
	Initial time.Duration
	// Max caps the interval, which doubles after each failure. Each delay is
	// drawn from half to one and a half times the interval. Default 5s.
	Max time.Duration
}

// Backoff is the delay policy of one retry loop. It is not safe for
// concurrent use: each loop has its own.
type Backoff struct{ b cenkalti.ExponentialBackOff }

// New returns a Backoff at its initial interval.
func New(o Options) *Backoff {
	if o.Initial <= 0 {
		o.Initial = DefaultInitial
	}
	if o.Max <= 0 {
		o.Max = DefaultMax
	}
	o.Max = max(o.Max, o.Initial)
	b := &Backoff{b: cenkalti.ExponentialBackOff{
		InitialInterval: o.Initial, RandomizationFactor: jitter, Multiplier: 2, MaxInterval: o.Max,
	}}
	b.b.Reset()
	return b
}

// Next returns the delay before the next attempt and lengthens the one
// after it.
func (b *Backoff) Next() time.Duration { return b.b.NextBackOff() }

// Reset returns to the initial interval: call it when an attempt succeeded
// (for a stream, once it delivered its first message).
func (b *Backoff) Reset() { b.b.Reset() }

// Healthy is how long an attempt of a long-running loop (a stream, a log
// reader) must have lasted to count as a success even when it reported none:
// a connection that was refused, or a stream that was refused at once, ends
// sooner.
const Healthy = time.Second

// ResetIfLasted resets b when the attempt that began at start lasted at
// least Healthy. Loops whose attempts run until they fail call it after each
// one.
func (b *Backoff) ResetIfLasted(start time.Time) {
	if time.Since(start) >= Healthy {
		b.Reset()
	}
}

// Sleep waits d, or until ctx ends; it reports whether the whole delay
// passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
