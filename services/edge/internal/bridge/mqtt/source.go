package mqtt

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Source tuning.
const (
	// defaultBatch is Run's batch when it is given none.
	defaultBatch = 100
	// linger is how long a batch waits for more messages after its first.
	linger = 5 * time.Millisecond
	// maxPublishBackoff bounds the wait between two attempts to publish a
	// batch the router did not take.
	maxPublishBackoff = 5 * time.Second
)

// Source subscribes to an MQTT topic filter in a persistent session (MQTT
// 5: clean start false and a 7-day session expiry; 3.1.1: clean session
// false) under its client id, and acknowledges each message (PUBACK, or
// PUBREC for QoS 2) only after publish returned nil for the batch holding
// it. A message whose batch was not published stays unacknowledged: the
// broker keeps it in the session and sends it again on the next
// connection, and its event gets the same id (see toEvent), so the
// router's dedupe absorbs what was published twice.
//
// Messages the broker delivered at QoS 0 (published at QoS 0, whatever
// the subscription's QoS) have no acknowledgement and are lost if the
// source stops before publishing them.
//
// Run is called by one goroutine at a time; Close and Lag from any.
type Source struct {
	cfg bridge.Config
	st  settings

	mu      sync.Mutex
	running chan struct{}      // closed when the running Run returns; nil when none runs
	cancel  context.CancelFunc // ends the running Run
	closed  bool

	// subscribed, when set (tests), is called once Run subscribed.
	subscribed func()
}

var _ bridge.Source = (*Source)(nil)

// NewSource builds the source of an MQTT bridge. It connects when Run is
// called.
func NewSource(cfg bridge.Config) (*Source, error) {
	st, err := parse(cfg, registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE)
	if err != nil {
		return nil, err
	}
	return &Source{cfg: cfg, st: st}, nil
}

// Run connects, subscribes and hands what arrives to publish in batches
// of at most batch records (default 100), or what arrived within 5ms of a
// batch's first record; the broker sends at most 2×batch messages before
// they are acknowledged (the MQTT 5 Receive Maximum; on 3.1.1 the broker's
// own in-flight limit applies). When publish fails, Run offers the same
// batch again with backoff (100ms to 5s) for as long as the connection
// holds. Run returns nil when ctx ends, and an error when the connection
// fails or cannot be made, or the source is closed; calling Run again
// reconnects, and the broker resends what was not acknowledged.
func (s *Source) Run(ctx context.Context, batch int, publish bridge.PublishFunc) error {
	if batch <= 0 {
		batch = defaultBatch
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return errClosed
	case s.running != nil:
		s.mu.Unlock()
		return errors.New("mqtt: Run is already running")
	}
	running := make(chan struct{})
	ctx, cancelRun := context.WithCancel(ctx)
	s.running, s.cancel = running, cancelRun
	s.mu.Unlock()
	defer func() {
		cancelRun()
		s.mu.Lock()
		s.running, s.cancel = nil, nil
		s.mu.Unlock()
		close(running)
	}()

	window := min(2*batch, math.MaxUint16)
	inbox := make(chan *incoming, window)
	// stop releases the client's goroutine if it waits on a full inbox,
	// which it must not do while the connection closes.
	stop := make(chan struct{})
	onMessage := func(in *incoming) {
		select {
		case inbox <- in:
		case <-stop:
		}
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	c, _, err := connect(dctx, &s.st, connOpts{clientID: s.st.clientID, persistent: true, receiveMax: uint16(window), onMessage: onMessage})
	cancel()
	if err != nil {
		return s.why(ctx, err)
	}
	defer func() {
		close(stop)
		c.close()
	}()

	// Subscribing again on every connection is harmless (the broker
	// replaces an identical subscription, and on MQTT 5 sends retained
	// messages only to a new one) and takes a changed filter. It runs
	// beside the loop below: a persistent session's messages may come
	// before the SUBACK, and must be taken meanwhile, or the client's
	// reader, stuck on a full inbox, never reads the SUBACK.
	rctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	go func() {
		sctx, cancel := context.WithTimeout(rctx, dialTimeout)
		defer cancel()
		if err := c.subscribe(sctx, s.st.topic, s.st.qos); err != nil {
			fail(err)
			return
		}
		if s.subscribed != nil {
			s.subscribed()
		}
	}()
	ended := func(err error) error {
		if cause := context.Cause(rctx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		return s.why(ctx, err)
	}

	msgs := make([]*incoming, 0, batch)
	recs := make([]bridge.Record, 0, batch)
	for {
		msgs = msgs[:0]
		if err := collect(rctx, c, inbox, batch, &msgs); err != nil {
			return ended(err)
		}
		recs = recs[:0]
		for _, m := range msgs {
			recs = append(recs, record(&s.cfg, m))
		}
		if err := publishAll(rctx, c, recs, publish); err != nil {
			return ended(err)
		}
		for _, m := range msgs {
			if m.ack != nil {
				m.ack()
			}
		}
	}
}

// why is Run's result for err: nil once ctx ended, errClosed after Close.
func (s *Source) why(ctx context.Context, err error) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	switch {
	case closed:
		return errClosed
	case ctx.Err() != nil:
		return nil
	}
	return err
}

// collect waits for a first message, then takes more until batch or
// linger; it fails when the connection ends (what it took is then left
// unacknowledged, for the broker to send again).
func collect(ctx context.Context, c conn, inbox <-chan *incoming, batch int, out *[]*incoming) error {
	select {
	case m := <-inbox:
		*out = append(*out, m)
	case <-c.done():
		return c.err()
	case <-ctx.Done():
		return ctx.Err()
	}
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(*out) < batch {
		select {
		case m := <-inbox:
			*out = append(*out, m)
		case <-t.C:
			return nil
		case <-c.done():
			return c.err()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// publishAll calls publish until it returns nil, with backoff.
func publishAll(ctx context.Context, c conn, recs []bridge.Record, publish bridge.PublishFunc) error {
	bo := backoff{max: maxPublishBackoff}
	for {
		err := publish(ctx, recs)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		t := time.NewTimer(bo.next())
		select {
		case <-t.C:
		case <-c.done():
			t.Stop()
			return fmt.Errorf("%w (while publish failed: %v)", c.err(), err)
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// Lag is -1: MQTT cannot tell how much a session has waiting.
func (s *Source) Lag(context.Context) (int64, error) { return -1, nil }

// Close ends a running Run (cancelling the publish it waits for) and
// waits until it returned and disconnected; what it had not published
// stays unacknowledged in the broker's session. Run after Close fails.
func (s *Source) Close() error {
	s.mu.Lock()
	s.closed = true
	running, cancel := s.running, s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-running
	}
	return nil
}
