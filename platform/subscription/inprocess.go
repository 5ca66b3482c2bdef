package subscription

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/redis/go-redis/v9"
)

// This file is the in-process face of the Manager, for consumers that live
// inside a Herald service (the edge's webhook engine) rather than behind
// RouterService.Subscribe. The guarantees are the same: every delivery
// stays pending until it is acknowledged or dead-lettered.

// Serve runs one consumer of sub, named consumer, until ctx ends: it passes
// each delivery to send, at most window unacknowledged at a time. The
// caller settles each one with Ack, Nack or GiveUp by its AckId, and keeps
// those it holds for long with Extend.
func (m *Manager) Serve(ctx context.Context, sub *registryv1.Subscription, window int, consumer string, send func(*routerv1.SubscribeResponse) error) error {
	return m.ServeMeta(ctx, sub, window, consumer, func(d *routerv1.SubscribeResponse, _ Meta) error { return send(d) })
}

// Channel is the usage channel of RouterService.Subscribe deliveries.
const Channel = "subscribe"

// Meta is what an in-process consumer learns of a delivery besides what
// RouterService.Subscribe sends: who published the event (for metering).
type Meta struct {
	// Producer is the application that published the event.
	Producer string
	// Test marks a test event (SendTest): never counted as usage.
	Test bool
	// Replay marks a delivery a replay asked for (ReplayRange,
	// ReplayDeadSince, ReplayTest).
	Replay bool
}

// ServeMeta is Serve passing each delivery's Meta as well.
func (m *Manager) ServeMeta(ctx context.Context, sub *registryv1.Subscription, window int, consumer string, send func(*routerv1.SubscribeResponse, Meta) error) error {
	return m.serve(ctx, sub, window, "", consumer, func() error { return nil }, send)
}

// refsOf parses ack ids of one subscription.
func refsOf(subID string, ackIDs []string) ([]ref, error) {
	out := make([]ref, len(ackIDs))
	for i, s := range ackIDs {
		r, err := parseAckID(subID, s)
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// Ack acknowledges deliveries: they are never delivered again. It returns
// how many were still pending.
func (m *Manager) Ack(ctx context.Context, subID string, ackIDs ...string) (int64, error) {
	refs, err := refsOf(subID, ackIDs)
	if err != nil || len(refs) == 0 {
		return 0, err
	}
	n, err := m.settle(ctx, subID, refs)
	m.wake(subID)
	return n, err
}

// AckMany acknowledges deliveries of several subscriptions (by
// subscription id) in one round trip to Redis, for a consumer that settles
// many deliveries at once. An ack id that does not parse fails the whole
// call before anything is sent.
func (m *Manager) AckMany(ctx context.Context, acks map[string][]string) error {
	pipe := m.rdb.Pipeline()
	var cmds []*redis.IntCmd
	for subID, ids := range acks {
		refs, err := refsOf(subID, ids)
		if err != nil {
			return err
		}
		if len(refs) > 0 {
			cmds = append(cmds, settleIn(ctx, pipe, subID, refs)...)
		}
	}
	if len(cmds) == 0 {
		return nil
	}
	_, err := pipe.Exec(ctx)
	for subID := range acks {
		m.wake(subID)
	}
	if _, aerr := ackedOf(cmds); aerr != nil {
		return aerr
	}
	if err != nil && !isNoGroup(err) {
		return err
	}
	return nil
}

// Nack hands deliveries back to be delivered again after delay, or
// dead-letters those that used up the subscription's attempts.
func (m *Manager) Nack(ctx context.Context, sub *registryv1.Subscription, ackIDs []string, delay time.Duration, reason string) (retrying, dead int, err error) {
	refs, err := refsOf(sub.GetId(), ackIDs)
	if err != nil || len(refs) == 0 {
		return 0, 0, err
	}
	retrying, dead, err = m.nack(ctx, sub, refs, delay, reason)
	m.wake(sub.GetId())
	return retrying, dead, err
}

// Release hands a delivery that consumer was sent but never attempted
// (its process is stopping) back to the subscription at once, with the
// delivery count it had before (attempt is the delivery's Attempt): the
// next session takes it without waiting for the ack timeout, and no
// attempt is used up. A delivery consumer no longer holds is left alone.
func (m *Manager) Release(ctx context.Context, sub *registryv1.Subscription, consumer, ackID string, attempt int32) error {
	r, err := parseAckID(sub.GetId(), ackID)
	if err != nil {
		return err
	}
	pol := policyOf(sub)
	err = releaseScript.Run(ctx, m.rdb, []string{r.stream}, Group(sub.GetId()), consumer, pol.ackTimeout.Milliseconds(), r.id, max(attempt-1, 0)).Err()
	if err != nil && !isNoGroup(err) {
		return err
	}
	m.wake(sub.GetId())
	return nil
}

// GiveUp moves a pending delivery to the subscription's dead letters at
// once, with the reason. A delivery no longer pending (settled meanwhile)
// is left alone; one trimmed from the log is only acknowledged.
func (m *Manager) GiveUp(ctx context.Context, subID, ackID string, attempts int64, reason string) error {
	r, err := parseAckID(subID, ackID)
	if err != nil {
		return err
	}
	info, err := m.pending(ctx, subID, []ref{r})
	if err != nil {
		return err
	}
	if _, ok := info[r]; !ok {
		return nil
	}
	d, found, err := m.fetch(ctx, subID, r, attempts)
	if err != nil {
		return err
	}
	if !found {
		_, err := m.settle(ctx, subID, []ref{r})
		return err
	}
	err = m.deadLetter(ctx, subID, d, reason, "")
	m.wake(subID)
	return err
}

// extendScript restarts the idle time of deliveries a consumer still
// holds, keeping their delivery counts, so that no session takes them over
// while the consumer works on them: KEYS[1] stream; ARGV[1] group, ARGV[2]
// consumer, ARGV[3..] entry ids. Returns how many it still held.
var extendScript = redis.NewScript(`
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
`)

// Extend tells that consumer is still working on deliveries (a webhook
// waiting for its retry, or a later event of an ordered key waiting for an
// earlier one): their ack timeout starts again. Deliveries another
// consumer took over meanwhile are left alone. It returns how many the
// consumer still holds.
func (m *Manager) Extend(ctx context.Context, subID, consumer string, ackIDs []string) (int64, error) {
	refs, err := refsOf(subID, ackIDs)
	if err != nil || len(refs) == 0 {
		return 0, err
	}
	byStream := map[string][]any{}
	for _, r := range refs {
		byStream[r.stream] = append(byStream[r.stream], r.id)
	}
	pipe := m.rdb.Pipeline()
	var cmds []*redis.Cmd
	for st, ids := range byStream {
		cmds = append(cmds, extendScript.Eval(ctx, pipe, []string{st}, append([]any{Group(subID), consumer}, ids...)...))
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNoGroup(err) {
		return 0, err
	}
	var n int64
	for _, c := range cmds {
		v, _ := c.Int64()
		n += v
	}
	return n, nil
}

// Held lists the ack ids of the deliveries consumer holds on the
// subscription's streams (to pick up what a consumer of the same name left
// pending before a restart is the sessions' job; this is for checks).
func (m *Manager) Held(ctx context.Context, sub *registryv1.Subscription, consumer string) ([]string, error) {
	streams, err := m.streams(ctx, sub)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, st := range streams {
		p, err := m.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: st, Group: Group(sub.GetId()), Start: "-", End: "+", Count: 10000, Consumer: consumer}).Result()
		if err != nil && !isNoGroup(err) {
			return nil, err
		}
		for _, e := range p {
			out = append(out, ackID(sub.GetId(), ref{stream: st, id: e.ID}))
		}
	}
	return out, nil
}

// ListDead pages through the subscription's dead letters after the dead
// letter id `after` ("" for the start), at most n.
func (m *Manager) ListDead(ctx context.Context, subID, after string, n int64) ([]DeadLetter, string, int64, error) {
	return m.listDead(ctx, subID, after, n)
}

// ReplayDeadSince sends every dead letter made at or after t back for
// delivery, and returns how many.
func (m *Manager) ReplayDeadSince(ctx context.Context, subID string, t time.Time) (int64, error) {
	var total int64
	start := fmt.Sprintf("%d-0", t.UnixMilli())
	for {
		msgs, err := m.rdb.XRangeN(ctx, deadKey(subID), start, "+", 500).Result()
		if err != nil || len(msgs) == 0 {
			return total, err
		}
		ids := make([]string, len(msgs))
		for i, msg := range msgs {
			ids[i] = msg.ID
		}
		n, err := m.replay(ctx, subID, ids, false)
		total += n
		if err != nil || len(msgs) < 500 {
			return total, err
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

// ErrTooMany is returned when a replay range holds more events than allowed.
var ErrTooMany = errors.New("too many events")

// ReplayRange sends again every event of the subscription's streams with
// a cursor after `after` and up to `to` (inclusive; "+" for the newest),
// through its replay stream: they keep their cursors, and the
// subscription's filter applies again. At most limit events; more is
// ErrTooMany, and nothing is queued.
func (m *Manager) ReplayRange(ctx context.Context, sub *registryv1.Subscription, after, to string, limit int) (int, error) {
	streams, err := m.streams(ctx, sub)
	if err != nil {
		return 0, err
	}
	type entry struct {
		id, typ string
		values  map[string]any
	}
	var all []entry
	for _, st := range streams {
		if st == ReplayKey(sub.GetId()) {
			continue
		}
		msgs, err := m.rdb.XRangeN(ctx, st, "("+after, to, int64(limit+1)).Result()
		if err != nil {
			return 0, err
		}
		for _, msg := range msgs {
			all = append(all, entry{id: msg.ID, typ: eventlog.TypeOfStream(st), values: msg.Values})
		}
		if len(all) > limit {
			return 0, fmt.Errorf("the range holds more than %d events: %w; replay a shorter range", limit, ErrTooMany)
		}
	}
	sort.Slice(all, func(i, j int) bool {
		return eventlog.MustParseID(all[i].id).Less(eventlog.MustParseID(all[j].id))
	})
	pipe := m.rdb.Pipeline()
	for _, e := range all {
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: ReplayKey(sub.GetId()), Values: []any{
			eventlog.FieldEvent, e.values[eventlog.FieldEvent], eventlog.FieldApp, e.values[eventlog.FieldApp],
			fieldType, e.typ, fieldCursor, e.id, fieldReplay, "1",
		}})
	}
	if len(all) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, err
		}
		if err := m.ensure(ctx, sub, streams); err != nil {
			return 0, err
		}
		m.replayed(ctx, sub.GetId())
	}
	return len(all), nil
}

// Delete removes an External subscription once its owner has ended it:
// its consumer group on each of the given log streams (every stream it may
// have read, also those of a grant withdrawn since), its replay stream,
// and its delayed, reason and dead-letter keys.
func (m *Manager) Delete(ctx context.Context, subID string, streams []string) error {
	return m.drop(ctx, subID, append(slices.Clone(streams), ReplayKey(subID)))
}

// Streams lists the log streams the subscription reads now, its replay
// stream last.
func (m *Manager) Streams(ctx context.Context, sub *registryv1.Subscription) ([]string, error) {
	return m.streams(ctx, sub)
}
