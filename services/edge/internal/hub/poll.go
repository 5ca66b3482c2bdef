package hub

import (
	"context"
	"errors"
	"time"

	"github.com/heraldmesh/herald/platform/eventlog"
)

// Batch is the answer to one Poll.
type Batch struct {
	// Events, in cursor order (late events excepted), at most the max asked.
	Events []*Event
	// Next is the cursor to poll after next time: the last event's, or how
	// far the log was looked at when no event matched.
	Next eventlog.ID
	// Gap is set when events after the cursor were trimmed from the log.
	Gap *Gap
}

var errFull = errors.New("batch full")

// Poll answers a long poll: the events matching patterns after o.After
// (nil: from now on), at once when there are some, else the first ones
// published within wait, else none after wait; at most max of them.
// Heartbeat, Started and CutWhenBehind are ignored. When ctx ends, it
// returns ctx's error with the batch so far and its Next, wherever it was
// (reading the log or waiting): the edge answers the polls it cuts short
// when it stops, and their clients resume at Next on another replica.
func (h *Hub) Poll(ctx context.Context, patterns []string, o Options, max int, wait time.Duration) (Batch, error) {
	var b Batch
	var c position
	collect := func(evs []*Event) error {
		for _, ev := range evs {
			if len(b.Events) == max {
				return errFull
			}
			b.Events = append(b.Events, ev)
			c.sent(ev)
		}
		if len(b.Events) == max {
			return errFull
		}
		return nil
	}
	// A full batch ends at its last event (what followed it was read but
	// not answered); otherwise everything up to the position was looked at.
	next := func() eventlog.ID {
		if len(b.Events) == max {
			return b.Events[max-1].ID
		}
		return c.id
	}
	// answer ends the poll with its batch and how far it got. Every return
	// once the poll has a position goes through it: a Next left at Zero
	// would send the client back to the start of the log.
	answer := func(err error) (Batch, error) {
		b.Next = next()
		return b, err
	}
	if o.After != nil {
		c.id = *o.After
	}
	s, head, err := h.subscribe(ctx, patterns, o.Allow, o.Buffer)
	if err != nil {
		if o.After == nil {
			// No position to answer with: the hub never followed the log.
			return b, errNotFollowing
		}
		return answer(err)
	}
	defer func() { h.unsubscribe(s) }()
	if o.After == nil {
		c.id = head
	} else if head.Less(c.id) {
		if err := h.checkCursor(ctx, s, c.id); err != nil {
			return answer(err)
		}
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	first := true
	for {
		if c.before(head) {
			streams := s.streams(h)
			if first && c.id != eventlog.Zero {
				if b.Gap, err = FindGap(ctx, h.rdb, streams, c.id); err != nil {
					return answer(err)
				}
			}
			// Up to head only: what comes later is in s's queue.
			err := h.catchUp(ctx, streams, &c, head, o.Filter, collect)
			if errors.Is(err, errFull) || err == nil && len(b.Events) > 0 {
				return answer(nil)
			}
			if err != nil {
				return answer(err)
			}
		}
		first = false
		overflowed, err := h.pollLive(ctx, s, &c, timer.C, o, collect)
		if err != nil && !errors.Is(err, errFull) {
			return answer(err) // how far it got, for a poll cut short
		}
		if !overflowed || len(b.Events) > 0 {
			return answer(nil)
		}
		// Cut off from the live feed: read the rest from the log.
		h.unsubscribe(s)
		if s, head, err = h.subscribe(ctx, patterns, o.Allow, o.Buffer); err != nil {
			return answer(err)
		}
	}
}

// errNotFollowing ends a cursor-less poll whose context ended before the
// hub followed the log: there is no position to answer it with.
var errNotFollowing = errors.New("the edge stopped before it followed the log")

// pollLive waits for live events, or for the timer. Once some came, or
// the wait is over, it claims the hub position when nothing more is
// queued, so that the next poll starts past events that did not match.
func (h *Hub) pollLive(ctx context.Context, s *sub, c *position, timeout <-chan time.Time, o Options, collect func([]*Event) error) (overflowed bool, err error) {
	floor := c.id
	deliver := func(q []*Event) (int, error) {
		var out []*Event
		for _, ev := range q {
			if !ev.Late && !floor.Less(ev.ID) {
				continue
			}
			if ev.Match(o.Filter) {
				out = append(out, ev)
			} else {
				c.sent(ev)
			}
		}
		if len(out) == 0 {
			return 0, nil
		}
		return len(out), collect(out)
	}
	for waiting := true; waiting; {
		select {
		case <-s.wake:
			q, overflow := s.take(nil)
			n, err := deliver(q)
			if err != nil {
				return false, err
			}
			if overflow {
				return true, nil
			}
			waiting = n == 0
		case <-timeout:
			waiting = false
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	// Take what the hub queued up to its position, then claim it.
	h.mu.Lock()
	pos := h.pos
	q, overflow := s.take(nil)
	h.mu.Unlock()
	if _, err := deliver(q); err != nil {
		return false, err
	}
	if overflow {
		return true, nil
	}
	c.reached(pos)
	return false, nil
}
