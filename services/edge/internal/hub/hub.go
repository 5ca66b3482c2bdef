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

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/filter"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Event is one event as delivered; it is shared by every subscriber, so it
// must not be modified. What each wire format makes of it is rendered once
// and shared too.
type Event struct {
	eventlog.Entry
	// Late marks an event of a type this subscriber learned about after it
	// was published: it arrives after events with higher cursors.
	Late bool

	jsonOnce sync.Once
	json     []byte
	jsonErr  error

	sseOnce sync.Once
	sse     []byte

	protoOnce sync.Once
	proto     []byte
	protoErr  error

	mu      sync.Mutex
	matches []matched // filter results, one per distinct filter

	asJSONOnce sync.Once
	asJSON     *Event
}

// WithJSONData returns the event as rendered by conv (Protobuf or Avro data
// as JSON, see catalog.Cache.JSONData), made once and shared by every
// subscriber that asked for JSON data; e itself when conv leaves the event
// as it is. Every call must pass the same conv.
func (e *Event) WithJSONData(conv func(*eventv1.CloudEvent) *eventv1.CloudEvent) *Event {
	e.asJSONOnce.Do(func() {
		e.asJSON = e
		if ev := conv(e.Event); ev != e.Event {
			e.asJSON = &Event{Entry: e.Entry, Late: e.Late}
			e.asJSON.Event = ev
		}
	})
	return e.asJSON
}

type matched struct {
	f  *filter.Filter
	ok bool
}

// JSON is the event in CloudEvents structured JSON, rendered once.
func (e *Event) JSON() ([]byte, error) {
	e.jsonOnce.Do(func() { e.json, e.jsonErr = cloudevent.MarshalJSON(e.Event) })
	return e.json, e.jsonErr
}

// SSE is the event as one Server-Sent Events message (id: the cursor,
// event: the type, data: the CloudEvent JSON), rendered once.
func (e *Event) SSE() ([]byte, error) {
	data, err := e.JSON()
	if err != nil {
		return nil, err
	}
	e.sseOnce.Do(func() {
		id := e.ID.String()
		b := make([]byte, 0, len(id)+len(e.Type)+len(data)+24)
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, "\nevent: "...)
		b = append(b, e.Type...)
		b = append(b, "\ndata: "...)
		b = append(b, data...)
		b = append(b, "\n\n"...)
		e.sse = b
	})
	return e.sse, nil
}

// ProtoField is the event encoded as protobuf field number n of an
// enclosing message (tag, length, CloudEvent), rendered once, for a
// channel that sends it inside a message of its own (StreamEvents).
// Every call must pass the same n.
func (e *Event) ProtoField(n protowire.Number) ([]byte, error) {
	e.protoOnce.Do(func() {
		raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(e.Event)
		if err != nil {
			e.protoErr = err
			return
		}
		b := protowire.AppendTag(make([]byte, 0, len(raw)+8), n, protowire.BytesType)
		e.proto = protowire.AppendBytes(b, raw)
	})
	return e.proto, e.protoErr
}

// Match runs f on the event once per distinct filter: subscribers sharing
// a filter (the request package compiles each expression once) share the
// result. A filter that cannot be evaluated on the event does not match.
func (e *Event) Match(f *filter.Filter) bool {
	if f == nil {
		return true
	}
	e.mu.Lock()
	for _, m := range e.matches {
		if m.f == f {
			e.mu.Unlock()
			return m.ok
		}
	}
	e.mu.Unlock()
	ok, _ := f.Match(e.Event)
	e.mu.Lock()
	e.matches = append(e.matches, matched{f, ok})
	e.mu.Unlock()
	return ok
}

const (
	readCount = 512
	// DefaultBuffer bounds the events queued for one subscriber.
	DefaultBuffer = 1024
	// blockFor bounds a blocking read. go-redis does not interrupt a read
	// in progress when its context ends, so this is also how long a new
	// type or a shutdown may wait.
	blockFor = time.Second
)

// Hub is the per-process reader and fan-out.
type Hub struct {
	rdb     redis.UniversalClient
	waiter  *eventlog.Waiter // the reader's blocking reads, one per slot
	catalog *catalog.Cache
	log     *slog.Logger

	mu      sync.Mutex
	pos     eventlog.ID // every event up to pos has been handed out
	streams []string
	known   map[string]bool
	subs    map[*sub]struct{}
	ready   chan struct{}
}

// sub is one subscriber of the live feed. The hub appends to its queue;
// the subscriber takes the whole queue at once, so that events that queued
// while it was writing go out together. The queue is allocated only while
// events wait, so an idle subscriber holds no buffer.
type sub struct {
	patterns []string
	allow    func(eventType string) bool // nil: every matching type
	keys     map[string]bool             // streams whose history this subscriber reads itself
	max      int                         // queue bound

	mu       sync.Mutex
	q        []*Event
	overflow bool          // the queue hit max: it was dropped, and s left the hub
	wake     chan struct{} // signalled when q turns non-empty or on overflow
}

// push queues evs (the caller holds the hub's lock); a subscriber whose
// queue would pass its bound is cut off from the live feed.
func (h *Hub) push(s *sub, evs ...*Event) {
	s.mu.Lock()
	if s.overflow {
		s.mu.Unlock()
		return
	}
	was := len(s.q)
	// A subscriber that took everything is keeping up: one read of the
	// hub may exceed its bound. One with events still waiting may not.
	if was > 0 && was+len(evs) > s.max {
		s.overflow, s.q = true, nil
		delete(h.subs, s)
	} else {
		s.q = append(s.q, evs...)
	}
	s.mu.Unlock()
	if was == 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// take returns every queued event, handing spare to the queue for reuse,
// and whether the subscriber overflowed.
func (s *sub) take(spare []*Event) ([]*Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.q
	s.q = spare[:0]
	return q, s.overflow
}

// New returns a hub; start it with Run.
func New(rdb redis.UniversalClient, cat *catalog.Cache, log *slog.Logger) *Hub {
	return &Hub{rdb: rdb, waiter: eventlog.NewWaiter(rdb), catalog: cat, log: log, known: map[string]bool{}, subs: map[*sub]struct{}{}, ready: make(chan struct{})}
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
		for h.catalog.Ready(ctx) != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
		// The start is the lowest clock of the streams' masters (on a
		// cluster, each shard stamps with its own): nothing written from
		// now on, on any shard, gets an id at or below it.
		keys := h.streamKeys()
		pos, err := eventlog.Watermark(ctx, h.rdb, keys)
		if err != nil {
			return err
		}
		h.mu.Lock()
		h.pos = pos
		for _, k := range keys {
			h.known[k] = true
			h.streams = append(h.streams, k)
		}
		h.mu.Unlock()
		close(h.ready)
	}
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
		b, err := eventlog.Read(ctx, h.rdb, streams, pos, readCount)
		if err != nil {
			return err
		}
		h.broadcast(b.Entries, b.Complete)
		if len(b.Entries) > 0 {
			continue
		}
		// Wait for new events, for the clocks to pass events held back
		// (stamped in the current millisecond, or by a shard whose clock is
		// ahead of another's), or for a catalog change (a new stream to
		// follow).
		waitCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-changed:
				cancel()
			case <-waitCtx.Done():
			}
		}()
		_, err = h.waiter.WaitPast(waitCtx, b, blockFor)
		cancel()
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			return err
		}
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
		var evs []*Event
		for _, m := range msgs {
			e, err := eventlog.Decode(k, m)
			if err != nil {
				h.log.Error("undecodable event skipped", "err", err)
				continue
			}
			evs = append(evs, &Event{Entry: e, Late: true})
		}
		h.mu.Lock()
		h.known[k] = true
		h.streams = append(h.streams, k)
		for s := range h.subs {
			if s.wants(n) && !s.keys[k] {
				s.keys[k] = true
				if len(evs) > 0 {
					h.push(s, evs...)
				}
			}
		}
		h.mu.Unlock()
	}
	return changed, nil
}

func (h *Hub) broadcast(entries []eventlog.Entry, complete eventlog.ID) {
	evs := make([]*Event, len(entries))
	for i, e := range entries {
		evs[i] = &Event{Entry: e}
	}
	var mine []*Event
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		// One push per subscriber per read: one wake-up, one write.
		mine = mine[:0]
		for _, ev := range evs {
			if s.wants(ev.Type) {
				mine = append(mine, ev)
			}
		}
		if len(mine) > 0 {
			h.push(s, mine...)
		}
	}
	if h.pos.Less(complete) {
		h.pos = complete
	}
}

// wants reports whether s receives events of the type.
func (s *sub) wants(eventType string) bool {
	return eventtype.MatchAny(s.patterns, eventType) && (s.allow == nil || s.allow(eventType))
}

func (h *Hub) subscribe(ctx context.Context, patterns []string, allow func(string) bool, max int) (*sub, eventlog.ID, error) {
	// A hub that follows the log subscribes even an ended context, so
	// that a poll cut short still has the hub's position to answer with.
	select {
	case <-h.ready:
	default:
		select {
		case <-h.ready:
		case <-ctx.Done():
			return nil, eventlog.ID{}, ctx.Err()
		}
	}
	if max <= 0 {
		max = DefaultBuffer
	}
	s := &sub{patterns: patterns, allow: allow, keys: map[string]bool{}, max: max, wake: make(chan struct{}, 1)}
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
	delete(h.subs, s)
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
	// Filter, when set, limits delivery to the events it matches; each
	// event is evaluated once per distinct filter, however many
	// subscribers share it.
	Filter *filter.Filter
	// After is the cursor to resume after; nil starts with events published
	// from now on, eventlog.Zero replays the retained log.
	After *eventlog.ID
	// Heartbeat, when set, is called after Interval without events.
	Heartbeat func() error
	Interval  time.Duration
	// Started, when set, is called once the subscription is in place, before
	// any event: from then on nothing published is missed.
	Started func() error
	// StartsAfter, when set, is told once, before Started, the cursor the
	// stream starts after (for a live stream, the head of the log when it
	// subscribed): where a client that received nothing resumes.
	StartsAfter func(eventlog.ID)
	// Gap, when set, is told when events after the resume cursor are no
	// longer in the log (trimmed by retention), before the events that
	// follow them. Without it the stream goes on silently.
	Gap func(Gap) error
	// Buffer bounds the live events queued for this subscriber while it
	// writes (0: DefaultBuffer).
	Buffer int
	// CutWhenBehind ends the stream with a *LaggedError when the subscriber
	// falls Buffer events behind the live feed; without it the subscriber
	// catches up from the log on its own and rejoins the feed.
	CutWhenBehind bool
}

// LaggedError ends a stream whose client fell behind the live feed (see
// Options.CutWhenBehind). Resuming after Cursor loses nothing.
type LaggedError struct {
	Cursor eventlog.ID
}

func (e *LaggedError) Error() string {
	return fmt.Sprintf("this stream fell more than its buffer behind the log and was ended; resume after cursor %s", e.Cursor)
}

// Stream calls send for every event matching patterns after the cursor, in
// cursor order (late events excepted), until ctx ends or send fails. Events
// that queue while send runs are handed to the next call together, so that
// a channel writes and flushes them at once.
//
// Entry ids are unique per stream only: events of different types can share
// a cursor. A cursor passed in Options.After counts every event at it as
// delivered.
func (h *Hub) Stream(ctx context.Context, patterns []string, o Options, send func([]*Event) error) error {
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
		s, head, err := h.subscribe(ctx, patterns, o.Allow, o.Buffer)
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
		if !started && o.StartsAfter != nil {
			o.StartsAfter(c.id)
		}
		if !started && o.Started != nil {
			if err := o.Started(); err != nil {
				h.unsubscribe(s)
				return err
			}
		}
		started = true
		if c.before(head) {
			streams := s.streams(h)
			if o.Gap != nil && (!first || c.id != eventlog.Zero) {
				if err := h.reportGap(ctx, streams, c.id, o.Gap); err != nil {
					h.unsubscribe(s)
					return err
				}
			}
			if err := h.catchUp(ctx, streams, &c, head, o.Filter, send); err != nil {
				h.unsubscribe(s)
				return err
			}
		}
		first = false
		err = h.follow(ctx, s, &c, beat, o, send)
		h.unsubscribe(s)
		if err != nil {
			return err
		}
		// Overflowed: catch up from Redis and rejoin, or end. The cursor
		// is the last event sent, as a client's Last-Event-ID would be.
		if o.CutWhenBehind {
			return &LaggedError{Cursor: c.id}
		}
	}
}

// streams lists the streams whose history s reads itself.
func (s *sub) streams(h *Hub) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	streams := make([]string, 0, len(s.keys))
	for k := range s.keys {
		streams = append(streams, k)
	}
	return streams
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

// catchUp sends the events of streams in (c, head] from Redis, one send
// per read.
// With no streams there is nothing to read: the subscriber is at head at
// once, and events of streams created later reach it live (or late).
func (h *Hub) catchUp(ctx context.Context, streams []string, c *position, head eventlog.ID, f *filter.Filter, send func([]*Event) error) error {
	if len(streams) == 0 {
		c.reached(head)
		return nil
	}
	var batch []*Event
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
		batch = batch[:0]
		for _, e := range entries {
			if head.Less(e.ID) {
				break
			}
			if c.skip(e) {
				continue
			}
			ev := &Event{Entry: e}
			// Every event read counts as sent for the position, matched or
			// not: the filter only decides what the client sees.
			c.sent(ev)
			if ev.Match(f) {
				batch = append(batch, ev)
			}
		}
		if len(batch) > 0 {
			if err := send(batch); err != nil {
				return err
			}
		}
		if head.Less(complete) {
			complete = head
		}
		c.reached(complete)
	}
	return nil
}

// maxSpare is the largest queue kept for reuse between wake-ups: a burst
// does not leave an idle subscriber holding its peak.
const maxSpare = 64

// follow sends live events until the subscriber overflows (nil) or fails.
// Live events come after the hub position the subscriber joined at; those
// up to a resume cursor beyond it were delivered before.
func (h *Hub) follow(ctx context.Context, s *sub, c *position, beat <-chan time.Time, o Options, send func([]*Event) error) error {
	floor := c.id
	var spare, out []*Event
	for {
		select {
		case <-s.wake:
			q, overflow := s.take(spare)
			out = out[:0]
			for _, ev := range q {
				if !ev.Late && !floor.Less(ev.ID) {
					continue // at or before the resume cursor
				}
				c.sent(ev)
				if ev.Match(o.Filter) {
					out = append(out, ev)
				}
			}
			clear(q)
			if spare = q; cap(spare) > maxSpare {
				spare = nil
			}
			if len(out) > 0 {
				if err := send(out); err != nil {
					return err
				}
				clear(out)
				if cap(out) > maxSpare {
					out = nil
				}
			}
			if overflow {
				return nil
			}
		case <-beat:
			if err := o.Heartbeat(); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// CheckCursor refuses, with a *CursorAheadError, a resume cursor that
// Stream would refuse: one after the newest event of the matching types
// and after the current time. Channels call it to answer such a request
// before committing to a stream.
func (h *Hub) CheckCursor(ctx context.Context, patterns []string, o Options) error {
	if o.After == nil {
		return nil
	}
	select {
	case <-h.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	h.mu.Lock()
	head := h.pos
	h.mu.Unlock()
	if !head.Less(*o.After) {
		return nil
	}
	return h.checkCursor(ctx, &sub{patterns: patterns, allow: o.Allow}, *o.After)
}
