// Package hub fans the log out to this edge process's subscribers: one
// reader follows every event type's stream in cursor order and hands each
// event to the local subscribers whose patterns match. A subscriber that
// resumes from a cursor, or falls too far behind, catches up from Redis on
// its own and then rejoins the live feed, so nothing is lost or repeated and
// no subscriber can make the hub buffer without bound.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/redis/go-redis/v9"
)

// Event is one event as delivered; it is shared by every subscriber, so it
// must not be modified.
type Event struct {
	eventlog.Entry
	// Late marks an event of a type this subscriber learned about after it
	// was published: it arrives after events with higher cursors.
	Late bool

	jsonOnce sync.Once
	json     []byte
	jsonErr  error
}

// JSON is the event in CloudEvents structured JSON, rendered once.
func (e *Event) JSON() ([]byte, error) {
	e.jsonOnce.Do(func() { e.json, e.jsonErr = cloudevent.MarshalJSON(e.Event) })
	return e.json, e.jsonErr
}

const (
	readCount = 512
	subBuffer = 1024
	// blockFor bounds a blocking read. go-redis does not interrupt a read
	// in progress when its context ends, so this is also how long a new
	// type or a shutdown may wait.
	blockFor = time.Second
)

// Hub is the per-process reader and fan-out.
type Hub struct {
	rdb     redis.UniversalClient
	catalog *catalog.Cache
	log     *slog.Logger

	mu      sync.Mutex
	pos     eventlog.ID // every event up to pos has been handed out
	streams []string
	known   map[string]bool
	subs    map[*sub]struct{}
	ready   chan struct{}
}

type sub struct {
	patterns []string
	allow    func(eventType string) bool // nil: every matching type
	keys     map[string]bool             // streams whose history this subscriber reads itself
	ch       chan *Event
	overflow bool // set by the hub when ch was full; ch is then closed
}

// New returns a hub; start it with Run.
func New(rdb redis.UniversalClient, cat *catalog.Cache, log *slog.Logger) *Hub {
	return &Hub{rdb: rdb, catalog: cat, log: log, known: map[string]bool{}, subs: map[*sub]struct{}{}, ready: make(chan struct{})}
}

// Ready reports whether the hub follows the log.
func (h *Hub) Ready(context.Context) error {
	select {
	case <-h.ready:
		return nil
	default:
		return errors.New("hub is not following the log yet")
	}
}

// Run follows the log until ctx ends.
func (h *Hub) Run(ctx context.Context) error {
	bo := backoff.New(backoff.Options{})
	for {
		start := time.Now()
		err := h.run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		bo.ResetIfLasted(start)
		d := bo.Next()
		h.log.Warn("log reader failed; retrying", "err", err, "in", d.Round(time.Millisecond).String())
		if !backoff.Sleep(ctx, d) {
			return nil
		}
	}
}

func (h *Hub) run(ctx context.Context) error {
	select {
	case <-h.ready:
	default:
		now, err := h.rdb.Time(ctx).Result()
		if err != nil {
			return fmt.Errorf("redis TIME: %w", err)
		}
		for h.catalog.Ready(ctx) != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		h.mu.Lock()
		h.pos = eventlog.ID{Ms: uint64(now.UnixMilli()) - 1, Seq: math.MaxUint64}
		for _, k := range h.streamKeys() {
			h.known[k] = true
			h.streams = append(h.streams, k)
		}
		h.mu.Unlock()
		close(h.ready)
	}
	waitedIdle := false
	for {
		changed, err := h.addNewTypes(ctx)
		if err != nil {
			return err
		}
		h.mu.Lock()
		streams, pos := h.streams, h.pos
		h.mu.Unlock()
		if len(streams) == 0 {
			// Nothing to follow until the catalog has a type.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-changed:
			}
			continue
		}
		entries, complete, err := eventlog.ReadAfter(ctx, h.rdb, streams, pos, readCount)
		if err != nil {
			return err
		}
		h.broadcast(entries, complete)
		if len(entries) > 0 {
			waitedIdle = false
			continue
		}
		if waitedIdle {
			// Something is there but stamped in the current millisecond.
			time.Sleep(time.Millisecond)
		}
		// Wait for new events, or for a catalog change (a new stream to follow).
		waitCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-changed:
				cancel()
			case <-waitCtx.Done():
			}
		}()
		more, err := eventlog.WaitAfter(waitCtx, h.rdb, streams, complete, blockFor)
		cancel()
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			return err
		}
		waitedIdle = more
	}
}

// streamKeys lists the streams of every type in the catalog, partitions
// included.
func (h *Hub) streamKeys() []string {
	names, _ := h.catalog.Names()
	var keys []string
	for _, n := range names {
		var partitions int32
		if t, ok := h.catalog.Get(n); ok {
			partitions = t.GetPartitions()
		}
		keys = append(keys, eventlog.StreamKeys(n, partitions)...)
	}
	return keys
}

// addNewTypes starts following streams that appeared since the last look:
// new types, or new partitions of a type. Their events up to the hub
// position were published before the hub knew them: they go to current
// subscribers as late events.
func (h *Hub) addNewTypes(ctx context.Context) (<-chan struct{}, error) {
	_, changed := h.catalog.Names()
	var fresh []string
	h.mu.Lock()
	for _, k := range h.streamKeys() {
		if !h.known[k] {
			fresh = append(fresh, k)
		}
	}
	pos := h.pos
	h.mu.Unlock()
	for _, k := range fresh {
		msgs, err := h.rdb.XRangeN(ctx, k, "-", pos.String(), 100_000).Result()
		if err != nil {
			return nil, fmt.Errorf("read new stream %s: %w", k, err)
		}
		n := eventlog.TypeOfStream(k)
		h.mu.Lock()
		h.known[k] = true
		h.streams = append(h.streams, k)
		var late []*sub
		for s := range h.subs {
			if s.wants(n) && !s.keys[k] {
				s.keys[k] = true
				late = append(late, s)
			}
		}
		for _, m := range msgs {
			e, err := eventlog.Decode(k, m)
			if err != nil {
				h.log.Error("undecodable event skipped", "err", err)
				continue
			}
			ev := &Event{Entry: e, Late: true}
			for _, s := range late {
				h.send(s, ev)
			}
		}
		h.mu.Unlock()
	}
	return changed, nil
}

func (h *Hub) broadcast(entries []eventlog.Entry, complete eventlog.ID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range entries {
		ev := &Event{Entry: e}
		for s := range h.subs {
			if s.wants(e.Type) {
				h.send(s, ev)
			}
		}
	}
	if h.pos.Less(complete) {
		h.pos = complete
	}
}

// send hands ev to s without blocking; a full subscriber is cut off and
// catches up from Redis. Called with h.mu held.
func (h *Hub) send(s *sub, ev *Event) {
	if s.overflow {
		return
	}
	select {
	case s.ch <- ev:
	default:
		s.overflow = true
		close(s.ch)
		delete(h.subs, s)
	}
}

// wants reports whether s receives events of the type.
func (s *sub) wants(eventType string) bool {
	return eventtype.MatchAny(s.patterns, eventType) && (s.allow == nil || s.allow(eventType))
}

func (h *Hub) subscribe(ctx context.Context, patterns []string, allow func(string) bool) (*sub, eventlog.ID, error) {
	select {
	case <-h.ready:
	case <-ctx.Done():
		return nil, eventlog.ID{}, ctx.Err()
	}
	s := &sub{patterns: patterns, allow: allow, keys: map[string]bool{}, ch: make(chan *Event, subBuffer)}
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.known {
		if s.wants(eventlog.TypeOfStream(k)) {
			s.keys[k] = true
		}
	}
	h.subs[s] = struct{}{}
	return s, h.pos, nil
}

func (h *Hub) unsubscribe(s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !s.overflow {
		delete(h.subs, s)
	}
}

// Subscribers is the number of live subscribers.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Options tune one Stream.
type Options struct {
	// Allow, when set, further limits the matching types (e.g. to those
	// visible to the subscriber). It is called with the hub's lock held and
	// must not block.
	Allow func(eventType string) bool
	// After is the cursor to resume after; nil starts with events published
	// from now on, eventlog.Zero replays the retained log.
	After *eventlog.ID
	// Heartbeat, when set, is called after Interval without events.
	Heartbeat func() error
	Interval  time.Duration
	// Started, when set, is called once the subscription is in place, before
	// any event: from then on nothing published is missed.
	Started func() error
}

// Stream calls send for every event matching patterns after the cursor, in
// cursor order (late events excepted), until ctx ends or send fails.
//
// Entry ids are unique per stream only: events of different types can share
// a cursor. A cursor passed in Options.After counts every event at it as
// delivered.
func (h *Hub) Stream(ctx context.Context, patterns []string, o Options, send func(*Event) error) error {
	var c position
	live := o.After == nil
	if !live {
		c.id = *o.After
	}
	started := false
	var beat <-chan time.Time
	if o.Heartbeat != nil && o.Interval > 0 {
		t := time.NewTicker(o.Interval)
		defer t.Stop()
		beat = t.C
	}
	first := true
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		s, head, err := h.subscribe(ctx, patterns, o.Allow)
		if err != nil {
			return err
		}
		if live {
			c.id, live = head, false
		}
		if first && head.Less(c.id) {
			if err := h.checkCursor(ctx, s, c.id); err != nil {
				h.unsubscribe(s)
				return err
			}
		}
		first = false
		if !started && o.Started != nil {
			if err := o.Started(); err != nil {
				h.unsubscribe(s)
				return err
			}
		}
		started = true
		if c.before(head) {
			streams := make([]string, 0, len(s.keys))
			h.mu.Lock()
			for k := range s.keys {
				streams = append(streams, k)
			}
			h.mu.Unlock()
			if err := h.catchUp(ctx, streams, &c, head, send); err != nil {
				h.unsubscribe(s)
				return err
			}
		}
		if err := h.follow(ctx, s, &c, beat, o.Heartbeat, send); err != nil {
			h.unsubscribe(s)
			return err
		}
		// Overflowed: catch up from Redis and rejoin.
	}
}

// CursorAheadError refuses a resume cursor after the newest event and after
// the current time: no event can ever come after it.
type CursorAheadError struct {
	Cursor eventlog.ID
	// Newest is the newest event of the streams asked for; Zero when there
	// is none.
	Newest eventlog.ID
}

func (e *CursorAheadError) Error() string {
	return fmt.Sprintf("cursor %s is in the future, which would skip every event until then: the newest cursor of the types this stream covers is %s; resume from it or omit the cursor", e.Cursor, eventlog.NewestString(e.Newest))
}

// checkCursor refuses a cursor after the hub position (head < cursor) when
// it is also after the current Redis time and the newest event of the
// subscriber's streams. Called only for such cursors, so it costs nothing
// on ordinary resumes.
func (h *Hub) checkCursor(ctx context.Context, s *sub, cursor eventlog.ID) error {
	// From the catalog, not s.keys: a type created a moment ago may not be
	// followed by the hub yet, and its events are still the newest.
	var streams []string
	for _, k := range h.streamKeys() {
		if s.wants(eventlog.TypeOfStream(k)) {
			streams = append(streams, k)
		}
	}
	newest, now, err := eventlog.Newest(ctx, h.rdb, streams)
	if err != nil {
		return fmt.Errorf("check cursor: %w", err)
	}
	if !eventlog.InFuture(cursor, now) || !newest.Less(cursor) {
		return nil // the present, or an event exists there
	}
	return &CursorAheadError{Cursor: cursor, Newest: newest}
}

// position is how far a subscriber got. Several streams can stamp the same
// id, so a subscriber cut off between two events with one id has sent only
// some of the events at id: partial is then set and sentAt lists their types.
type position struct {
	id      eventlog.ID
	partial bool
	sentAt  []string
}

// sent records that ev was sent.
func (c *position) sent(ev *Event) {
	switch c.id.Compare(ev.ID) {
	case -1:
		c.id, c.partial, c.sentAt = ev.ID, true, append(c.sentAt[:0], ev.Type)
	case 0:
		if c.partial {
			c.sentAt = append(c.sentAt, ev.Type)
		}
	}
}

// reached records that every event up to id was sent.
func (c *position) reached(id eventlog.ID) {
	if !id.Less(c.id) {
		c.id, c.partial, c.sentAt = id, false, c.sentAt[:0]
	}
}

// before reports whether events up to head may still be unsent.
func (c *position) before(head eventlog.ID) bool {
	return c.id.Less(head) || c.partial && c.id == head
}

// skip reports whether the event e at or before the position was sent.
func (c *position) skip(e eventlog.Entry) bool {
	if c.id.Less(e.ID) {
		return false
	}
	return e.ID.Less(c.id) || !c.partial || slices.Contains(c.sentAt, e.Type)
}

// readFrom is the id to read after so that no unsent event is missed.
func (c *position) readFrom() eventlog.ID {
	switch {
	case !c.partial:
		return c.id
	case c.id.Seq > 0:
		return eventlog.ID{Ms: c.id.Ms, Seq: c.id.Seq - 1}
	case c.id.Ms > 0:
		return eventlog.ID{Ms: c.id.Ms - 1, Seq: math.MaxUint64}
	}
	return eventlog.Zero
}

// catchUp sends the events of streams in (c, head] from Redis.
// With no streams there is nothing to read: the subscriber is at head at
// once, and events of streams created later reach it live (or late).
func (h *Hub) catchUp(ctx context.Context, streams []string, c *position, head eventlog.ID, send func(*Event) error) error {
	if len(streams) == 0 {
		c.reached(head)
		return nil
	}
	for c.before(head) {
		if err := ctx.Err(); err != nil {
			return err
		}
		from := c.readFrom()
		entries, complete, err := eventlog.ReadAfter(ctx, h.rdb, streams, from, readCount)
		if err != nil {
			return fmt.Errorf("catch up: %w", err)
		}
		if len(entries) == 0 && !from.Less(complete) {
			// No progress (Redis's clock behind the hub's position):
			// wait a little rather than spin.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
		for _, e := range entries {
			if head.Less(e.ID) {
				break
			}
			if c.skip(e) {
				continue
			}
			ev := &Event{Entry: e}
			if err := send(ev); err != nil {
				return err
			}
			c.sent(ev)
		}
		if head.Less(complete) {
			complete = head
		}
		c.reached(complete)
	}
	return nil
}

// follow sends live events until the subscriber overflows (nil) or fails.
// Live events come after the hub position the subscriber joined at; those
// up to a resume cursor beyond it were delivered before.
func (h *Hub) follow(ctx context.Context, s *sub, c *position, beat <-chan time.Time, heartbeat func() error, send func(*Event) error) error {
	floor := c.id
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				return nil
			}
			if !ev.Late && !floor.Less(ev.ID) {
				continue // at or before the resume cursor
			}
			if err := send(ev); err != nil {
				return err
			}
			c.sent(ev)
		case <-beat:
			if err := heartbeat(); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
