package subscription

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Manager holds what the sessions of one router share: Redis, the catalog,
// which groups exist, and who waits for acknowledgements.
type Manager struct {
	rdb redis.UniversalClient
	cat *catalog.Cache
	log *slog.Logger

	made sync.Map // stream NUL group: the group exists

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{} // by subscription: sessions to wake on Ack or Nack

	wmu         sync.Mutex
	watches     map[string]*watch // by log stream: see watch.go
	replays     map[string]*watch // by replay stream, woken by notices
	stopNotices context.CancelFunc
	maxWatches  int
	overWatched bool          // said so in the log
	sweep       time.Duration // how often sessions read every group anyway (sweepEvery)

	deliveries   *prometheus.CounterVec
	sessions     prometheus.Gauge
	filterErrors prometheus.Counter

	// Delivered, when set, is told of each delivery sent to a subscription
	// (first, redelivery or replay; the attempt number tells which), for
	// metering: a usage record keyed by the delivery's id counts a
	// redelivery or a replay once. The tenant is for the callee to set.
	Delivered func(ctx context.Context, d usage.Delivery)

	// External, when true, serves subscriptions kept outside the registry
	// by their owner (the edge's WebSub subscriptions, in Redis): sessions
	// do not look them up in the catalog, and the owner ends them by
	// cancelling Serve's context, then removes them with Delete.
	External bool
}

// NewManager returns a Manager. rdb should be a pool of its own: the
// Manager keeps one connection (per node, on a cluster) blocked waiting for
// events on each stream its sessions read, whatever their number, up to a
// pool size less 16 (or half of it), and sessions take others for their
// commands.
func NewManager(rdb redis.UniversalClient, cat *catalog.Cache, log *slog.Logger, reg prometheus.Registerer) *Manager {
	m := &Manager{
		rdb: rdb, cat: cat, log: log, waiters: map[string]map[chan struct{}]struct{}{},
		watches: map[string]*watch{}, replays: map[string]*watch{}, maxWatches: maxWatchesFor(rdb), sweep: sweepEvery,
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_router_subscription_deliveries_total",
			Help: "Subscription deliveries by kind: first, redelivery, replay; filtered (acknowledged without delivery), dead_lettered.",
		}, []string{"kind"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_router_subscribe_sessions",
			Help: "Open RouterService.Subscribe streams.",
		}),
		filterErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_router_filter_errors_total",
			Help: "Events whose subscription filter could not be evaluated (cost limit, runtime error): dead-lettered, not delivered.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.deliveries, m.sessions, m.filterErrors)
	}
	return m
}

// streams lists the log streams a subscription reads now: every partition
// of every known type its patterns match that its application may still
// subscribe to and see. The replay stream comes last.
func (m *Manager) streams(ctx context.Context, sub *registryv1.Subscription) ([]string, error) {
	app, err := m.cat.Application(ctx, sub.GetApplicationId())
	if err != nil {
		return nil, err
	}
	names, _ := m.cat.Names()
	var out []string
	for _, name := range names {
		if !slices.ContainsFunc(sub.GetTypes(), func(p string) bool { return access.Covers(p, name) }) {
			continue
		}
		if !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, name) {
			continue
		}
		t, ok := m.cat.Get(name)
		if !ok || !access.Visible(app.GetAudience(), t.GetVisibility()) {
			continue
		}
		out = append(out, eventlog.StreamKeys(name, t.GetPartitions())...)
	}
	return append(out, ReplayKey(sub.GetId())), nil
}

// ensure creates the subscription's group on the streams that lack it.
func (m *Manager) ensure(ctx context.Context, sub *registryv1.Subscription, streams []string) error {
	group := Group(sub.GetId())
	for _, s := range streams {
		k := s + "\x00" + group
		if _, ok := m.made.Load(k); ok {
			continue
		}
		start := startID(sub)
		if s == ReplayKey(sub.GetId()) {
			start = "0"
		}
		err := m.rdb.XGroupCreateMkStream(ctx, s, group, start).Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("create group %s on %s: %w", group, s, err)
		}
		m.made.Store(k, struct{}{})
	}
	return nil
}

// forget drops what is known about a subscription's groups, after it was
// deleted.
func (m *Manager) forget(group string) {
	m.made.Range(func(k, _ any) bool {
		if strings.HasSuffix(k.(string), "\x00"+group) {
			m.made.Delete(k)
		}
		return true
	})
}

// Run keeps groups in step with the catalog: every subscription gets its
// group on every stream it covers as soon as the router learns of it (so
// that a subscription starting "now" counts from its creation whether or
// not a consumer is connected), and a deleted subscription's groups and
// keys are removed.
func (m *Manager) Run(ctx context.Context) error {
	known := map[string][]string{} // subscription -> streams with its group
	for {
		changed := m.cat.Changed()
		if m.cat.Ready(ctx) == nil {
			current := map[string]bool{}
			for _, sub := range m.cat.Subscriptions() {
				current[sub.GetId()] = true
				streams, err := m.streams(ctx, sub)
				if err == nil {
					err = m.ensure(ctx, sub, streams)
				}
				if err != nil {
					m.log.Warn("subscription groups not ready", "subscription", sub.GetId(), "err", err)
					continue
				}
				// Remember every stream that got the group, also those a
				// withdrawn grant has since removed, to clean them all up.
				for _, st := range streams {
					if !slices.Contains(known[sub.GetId()], st) {
						known[sub.GetId()] = append(known[sub.GetId()], st)
					}
				}
			}
			for id, streams := range known {
				if current[id] {
					continue
				}
				if err := m.remove(ctx, id, streams); err != nil {
					m.log.Warn("deleted subscription not cleaned up", "subscription", id, "err", err)
					continue
				}
				delete(known, id)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(30 * time.Second):
		}
	}
}

// remove deletes a deleted subscription's groups and keys, after checking
// with the registry that it is gone.
func (m *Manager) remove(ctx context.Context, id string, streams []string) error {
	if _, err := m.cat.Subscription(ctx, id); !errors.Is(err, catalog.ErrUnknownSubscription) {
		return err // still there (or unknown): keep it
	}
	return m.drop(ctx, id, streams)
}

// drop deletes a subscription's groups on streams and its own keys.
func (m *Manager) drop(ctx context.Context, id string, streams []string) error {
	group := Group(id)
	pipe := m.rdb.Pipeline()
	destroys := make([]*redis.IntCmd, len(streams))
	for i, s := range streams {
		destroys[i] = pipe.XGroupDestroy(ctx, s, group)
	}
	del := pipe.Del(ctx, delayedKey(id), reasonsKey(id), deadKey(id), deadIdxKey(id), ReplayKey(id), TestKey(id))
	_, _ = pipe.Exec(ctx)
	for _, c := range destroys {
		// A stream or a group that is gone already is what we want.
		if err := c.Err(); err != nil && !isNoGroup(err) && !strings.Contains(err.Error(), "requires the key to exist") {
			return err
		}
	}
	if err := del.Err(); err != nil {
		return err
	}
	m.forget(group)
	m.log.Info("deleted subscription cleaned up", "subscription", id, "streams", len(streams))
	return nil
}

// wait registers a session's wake-up channel for Ack and Nack on sub.
func (m *Manager) wait(subID string, ch chan struct{}) func() {
	m.mu.Lock()
	if m.waiters[subID] == nil {
		m.waiters[subID] = map[chan struct{}]struct{}{}
	}
	m.waiters[subID][ch] = struct{}{}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.waiters[subID], ch)
		if len(m.waiters[subID]) == 0 {
			delete(m.waiters, subID)
		}
		m.mu.Unlock()
	}
}

// wake tells this router's sessions of sub that deliveries were settled.
func (m *Manager) wake(subID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for ch := range m.waiters[subID] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// delivery is one pending entry read for a subscription.
type delivery struct {
	ref     ref
	test    bool // a test event (SendTest), from the replay stream
	replay  bool // sent again by a replay (of a range, dead letters, a test event)
	cursor  string
	typ     string
	account string
	raw     string // the protobuf-encoded CloudEvent
	event   *eventv1.CloudEvent
	count   int64 // deliveries so far, this one included
	bad     error // the entry could not be decoded
}

// decode builds a delivery from a stream entry's fields.
func decode(subID, stream, id string, fields map[string]any, count int64) delivery {
	d := delivery{ref: ref{stream: stream, id: id}, count: count, cursor: id}
	d.raw, _ = fields[eventlog.FieldEvent].(string)
	d.account, _ = fields[eventlog.FieldApp].(string)
	if stream == ReplayKey(subID) {
		d.typ, _ = fields[fieldType].(string)
		d.cursor, _ = fields[fieldCursor].(string)
		d.test = fields[fieldTest] == "1"
		d.replay = fields[fieldReplay] == "1"
	} else {
		d.typ = eventlog.TypeOfStream(stream)
	}
	d.event = new(eventv1.CloudEvent)
	if err := proto.Unmarshal([]byte(d.raw), d.event); err != nil {
		d.bad = fmt.Errorf("the stored event does not decode: %v", err)
	}
	return d
}

// decodeScripted reads the {id, {k, v...}, count} triples the claim
// scripts return.
func decodeScripted(subID, stream string, v any) []delivery {
	items, _ := v.([]any)
	out := make([]delivery, 0, len(items))
	for _, it := range items {
		t, ok := it.([]any)
		if !ok || len(t) != 3 {
			continue
		}
		id, _ := t[0].(string)
		kv, _ := t[1].([]any)
		count, _ := t[2].(int64)
		fields := make(map[string]any, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			k, _ := kv[i].(string)
			fields[k] = kv[i+1]
		}
		out = append(out, decode(subID, stream, id, fields, count))
	}
	return out
}

// settle acknowledges deliveries: XACK (and XDEL for replayed ones), and
// drops their Nack state. It returns how many were still pending.
func (m *Manager) settle(ctx context.Context, subID string, refs []ref) (int64, error) {
	pipe := m.rdb.Pipeline()
	acks := settleIn(ctx, pipe, subID, refs)
	_, err := pipe.Exec(ctx)
	n, aerr := ackedOf(acks)
	if aerr != nil {
		return n, aerr
	}
	if err != nil && !isNoGroup(err) {
		return n, err
	}
	return n, nil
}

// settleIn queues the commands that settle refs of one subscription on
// pipe, and returns the XACK commands.
func settleIn(ctx context.Context, pipe redis.Pipeliner, subID string, refs []ref) []*redis.IntCmd {
	group := Group(subID)
	byStream := map[string][]string{}
	var order []string
	for _, r := range refs {
		if _, ok := byStream[r.stream]; !ok {
			order = append(order, r.stream)
		}
		byStream[r.stream] = append(byStream[r.stream], r.id)
	}
	acks := make([]*redis.IntCmd, 0, len(order))
	for _, s := range order {
		acks = append(acks, pipe.XAck(ctx, s, group, byStream[s]...))
		if s == ReplayKey(subID) {
			pipe.XDel(ctx, s, byStream[s]...)
		}
	}
	members := make([]any, 0, len(refs))
	fields := make([]string, 0, len(refs))
	for _, r := range refs {
		members = append(members, ackID(subID, r))
		fields = append(fields, ackID(subID, r))
	}
	pipe.ZRem(ctx, delayedKey(subID), members...)
	pipe.HDel(ctx, reasonsKey(subID), fields...)
	return acks
}

// ackedOf sums what XACK commands acknowledged; a missing group (a deleted
// subscription) acknowledges nothing and is no error.
func ackedOf(acks []*redis.IntCmd) (int64, error) {
	var n int64
	for _, c := range acks {
		if isNoGroup(c.Err()) {
			continue
		}
		if c.Err() != nil {
			return n, c.Err()
		}
		n += c.Val()
	}
	return n, nil
}

// deadLetter moves a delivery to the dead-letter stream, then acknowledges
// it. reason is the one given now ("" for none); fallback is used when the
// consumer never gave one.
func (m *Manager) deadLetter(ctx context.Context, subID string, d delivery, reason, fallback string) error {
	fields := []any{
		eventlog.FieldEvent, d.raw, eventlog.FieldApp, d.account, fieldType, d.typ, fieldCursor, d.cursor,
		fieldAttempts, d.count, fieldTime, time.Now().UnixMilli(),
	}
	if d.test {
		fields = append(fields, fieldTest, "1")
	}
	args := append([]any{d.cursor, ackID(subID, d.ref), reason, fallback}, fields...)
	keys := []string{deadKey(subID), deadIdxKey(subID), reasonsKey(subID), delayedKey(subID)}
	if err := deadLetterScript.Run(ctx, m.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("dead-letter %s: %w", d.cursor, err)
	}
	if _, err := m.settle(ctx, subID, []ref{d.ref}); err != nil {
		return err
	}
	m.deliveries.WithLabelValues("dead_lettered").Inc()
	return nil
}

// pendingInfo is a delivery's place in its group's pending list.
type pendingInfo struct {
	consumer string
	count    int64
}

// pending looks up deliveries in the pending lists; absent ones are not
// pending (acknowledged, or trimmed from the log).
func (m *Manager) pending(ctx context.Context, subID string, refs []ref) (map[ref]pendingInfo, error) {
	group := Group(subID)
	pipe := m.rdb.Pipeline()
	cmds := make([]*redis.XPendingExtCmd, len(refs))
	for i, r := range refs {
		cmds[i] = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: r.stream, Group: group, Start: r.id, End: r.id, Count: 1})
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNoGroup(err) && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make(map[ref]pendingInfo, len(refs))
	for i, c := range cmds {
		if v, err := c.Result(); err == nil && len(v) == 1 {
			out[refs[i]] = pendingInfo{consumer: v[0].Consumer, count: v[0].RetryCount}
		}
	}
	return out, nil
}

// fetch reads the entries of deliveries (for dead-lettering on Nack).
func (m *Manager) fetch(ctx context.Context, subID string, r ref, count int64) (delivery, bool, error) {
	msgs, err := m.rdb.XRangeN(ctx, r.stream, r.id, r.id, 1).Result()
	if err != nil || len(msgs) == 0 {
		return delivery{}, false, err
	}
	return decode(subID, r.stream, msgs[0].ID, msgs[0].Values, count), true, nil
}

// nack schedules deliveries again after delay, or dead-letters those that
// used up their attempts. It returns how many of each.
func (m *Manager) nack(ctx context.Context, sub *registryv1.Subscription, refs []ref, delay time.Duration, reason string) (retrying, dead int, err error) {
	subID := sub.GetId()
	pol := policyOf(sub)
	info, err := m.pending(ctx, subID, refs)
	if err != nil {
		return 0, 0, err
	}
	due := float64(time.Now().Add(delay).UnixMilli())
	var later []ref
	for _, r := range refs {
		pi, ok := info[r]
		if !ok {
			continue
		}
		if pi.count >= pol.maxAttempts {
			d, found, err := m.fetch(ctx, subID, r, pi.count)
			if err != nil {
				return retrying, dead, err
			}
			if !found { // trimmed from the log meanwhile
				if _, err := m.settle(ctx, subID, []ref{r}); err != nil {
					return retrying, dead, err
				}
				continue
			}
			if err := m.deadLetter(ctx, subID, d, reason, ""); err != nil {
				return retrying, dead, err
			}
			dead++
			continue
		}
		later = append(later, r)
	}
	if len(later) > 0 {
		// Due time first, then the handover: should the handover not
		// happen, the delayed set still brings the delivery back.
		pipe := m.rdb.Pipeline()
		for _, r := range later {
			pipe.ZAdd(ctx, delayedKey(subID), redis.Z{Score: due, Member: ackID(subID, r)})
			if reason != "" {
				pipe.HSet(ctx, reasonsKey(subID), ackID(subID, r), reason)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return retrying, dead, err
		}
		pipe = m.rdb.Pipeline()
		for _, r := range later {
			pipe.XClaimJustID(ctx, &redis.XClaimArgs{Stream: r.stream, Group: Group(subID), Consumer: delayedConsumer, MinIdle: 0, Messages: []string{r.id}})
		}
		if _, err := pipe.Exec(ctx); err != nil && !isNoGroup(err) {
			return retrying, dead, err
		}
		retrying = len(later)
	}
	return retrying, dead, nil
}

// seek moves the subscription's groups on its log streams to id.
func (m *Manager) seek(ctx context.Context, sub *registryv1.Subscription, streams []string, id string) error {
	pipe := m.rdb.Pipeline()
	for _, s := range streams {
		if s != ReplayKey(sub.GetId()) {
			pipe.XGroupSetID(ctx, s, Group(sub.GetId()), id)
		}
	}
	_, err := pipe.Exec(ctx)
	return err
}

// DeadLetter is one entry of a dead-letter stream.
type DeadLetter struct {
	ID       string
	Cursor   string
	Event    *eventv1.CloudEvent
	Attempts int64
	Reason   string
	Time     time.Time
}

// listDead pages through the dead-letter stream after `after` ("" for the
// start).
func (m *Manager) listDead(ctx context.Context, subID, after string, n int64) ([]DeadLetter, string, int64, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	pipe := m.rdb.Pipeline()
	rng := pipe.XRangeN(ctx, deadKey(subID), start, "+", n+1)
	total := pipe.XLen(ctx, deadKey(subID))
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, "", 0, err
	}
	msgs := rng.Val()
	next := ""
	if int64(len(msgs)) > n {
		msgs = msgs[:n]
		next = msgs[n-1].ID
	}
	out := make([]DeadLetter, 0, len(msgs))
	for _, msg := range msgs {
		d := DeadLetter{ID: msg.ID, Event: new(eventv1.CloudEvent)}
		raw, _ := msg.Values[eventlog.FieldEvent].(string)
		_ = proto.Unmarshal([]byte(raw), d.Event)
		d.Cursor, _ = msg.Values[fieldCursor].(string)
		d.Reason, _ = msg.Values[fieldReason].(string)
		if s, ok := msg.Values[fieldAttempts].(string); ok {
			d.Attempts, _ = strconv.ParseInt(s, 10, 64)
		}
		if s, ok := msg.Values[fieldTime].(string); ok {
			ms, _ := strconv.ParseInt(s, 10, 64)
			d.Time = time.UnixMilli(ms)
		}
		out = append(out, d)
	}
	return out, next, total.Val(), nil
}

// deadIDs returns the ids of every dead letter, oldest first.
func (m *Manager) deadIDs(ctx context.Context, subID string, after, end string, n int64) ([]string, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	msgs, err := m.rdb.XRangeN(ctx, deadKey(subID), start, end, n).Result()
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(msgs))
	for i, msg := range msgs {
		ids[i] = msg.ID
	}
	return ids, nil
}

// eachDead runs f over batches of dead letter ids: the given ones, or all
// that exist when it starts (a replayed event dead-lettered again during
// the call is left for the next one, rather than replayed in a loop).
func (m *Manager) eachDead(ctx context.Context, subID string, ids []string, all bool, f func([]string) (int64, error)) (int64, error) {
	if !all {
		return f(ids)
	}
	last, err := m.rdb.XRevRangeN(ctx, deadKey(subID), "+", "-", 1).Result()
	if err != nil || len(last) == 0 {
		return 0, err
	}
	end := last[0].ID
	var total int64
	after := ""
	for {
		batch, err := m.deadIDs(ctx, subID, after, end, 500)
		if err != nil || len(batch) == 0 {
			return total, err
		}
		n, err := f(batch)
		total += n
		if err != nil {
			return total, err
		}
		after = batch[len(batch)-1]
	}
}

// replay sends dead letters back for delivery.
func (m *Manager) replay(ctx context.Context, subID string, ids []string, all bool) (int64, error) {
	n, err := m.eachDead(ctx, subID, ids, all, func(batch []string) (int64, error) {
		return replayScript.Run(ctx, m.rdb, []string{deadKey(subID), deadIdxKey(subID), ReplayKey(subID)}, toAny(batch)...).Int64()
	})
	if n > 0 {
		m.replayed(ctx, subID)
	}
	return n, err
}

// deleteDead discards dead letters.
func (m *Manager) deleteDead(ctx context.Context, subID string, ids []string, all bool) (int64, error) {
	return m.eachDead(ctx, subID, ids, all, func(batch []string) (int64, error) {
		return deleteDeadScript.Run(ctx, m.rdb, []string{deadKey(subID), deadIdxKey(subID)}, toAny(batch)...).Int64()
	})
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// sortDeliveries orders deliveries by cursor, so a batch read from several
// streams goes out in log order.
func sortDeliveries(ds []delivery) {
	slices.SortStableFunc(ds, func(a, b delivery) int {
		ia, ea := eventlog.ParseID(a.cursor)
		ib, eb := eventlog.ParseID(b.cursor)
		if ea != nil || eb != nil {
			return cmp.Compare(a.cursor, b.cursor)
		}
		return ia.Compare(ib)
	})
}
