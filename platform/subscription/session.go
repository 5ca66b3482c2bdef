package subscription

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/filter"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/redis/go-redis/v9"
)

// Session cadences.
const (
	maxBlock    = 500 * time.Millisecond // longest wait for events: how soon a session notices other work
	duePoll     = time.Second            // how often the delayed set is checked without a local Nack
	fullPoll    = 100 * time.Millisecond // how often a full window is re-counted without a local Ack
	pruneEvery  = time.Minute            // how often ended sessions' consumers are removed
	pruneIdle   = 10 * time.Minute       // how long a consumer must have been idle to be removed
	releaseWait = 2 * time.Second        // how long the end of a session may take to hand back its reads
)

// session is one Subscribe stream: one consumer in the subscription's
// groups.
type session struct {
	m        *Manager
	sub      *registryv1.Subscription
	pol      policy
	flt      *filter.Filter
	consumer string
	window   int
	send     func(*routerv1.SubscribeResponse, Meta) error

	streams   []string
	allowed   map[string]bool // the types of streams: what may be delivered now
	changed   <-chan struct{} // closed at the next catalog change after the last refresh
	buffer    []delivery      // read but not sent: the window was full
	inflight  int             // sent and not settled
	claimFrom map[string]string
	nextClaim time.Time
	nextDue   time.Time
	nextPrune time.Time
	wake      chan struct{}

	// Reading without blocking in Redis (see watch.go).
	notify    chan struct{}     // a watch of one of the streams woke
	watches   map[string]*watch // by stream; nil for one polled (over the Manager's limit)
	seen      map[string]uint64 // by stream: its watch's generation before its last read
	more      map[string]bool   // by stream: its last read filled its count
	nextSweep time.Time         // when every stream is read again, woken or not
}

// serve runs a Subscribe stream until ctx ends or sending fails. open is
// called once the session is set up (groups exist, a resume is done), to
// send the response headers: the client knows it is subscribed.
func (m *Manager) serve(ctx context.Context, sub *registryv1.Subscription, window int, resume, consumer string, open func() error, send func(*routerv1.SubscribeResponse, Meta) error) error {
	flt, err := filter.Compile(sub.GetFilter())
	if err != nil {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("subscription %s has a filter that does not compile: %w", sub.GetId(), err))
	}
	if consumer == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		consumer = "c-" + hex.EncodeToString(b[:])
	}
	s := &session{
		m: m, sub: sub, pol: policyOf(sub), flt: flt, consumer: consumer,
		window: window, send: send, claimFrom: map[string]string{}, wake: make(chan struct{}, 1),
		notify: make(chan struct{}, 1), watches: map[string]*watch{}, seen: map[string]uint64{}, more: map[string]bool{},
	}
	defer s.unwatchAll()
	if err := s.refresh(ctx); err != nil {
		return err
	}
	if resume != "" {
		if err := m.notFuture(ctx, sub, s.streams, resume); err != nil {
			return err
		}
		if err := m.seek(ctx, sub, s.streams, resume); err != nil {
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("move subscription %s to %s: %w", sub.GetId(), resume, err))
		}
	}
	if err := open(); err != nil {
		return err
	}
	defer m.wait(sub.GetId(), s.wake)()
	m.sessions.Inc()
	defer m.sessions.Dec()
	defer s.release()
	return s.run(ctx)
}

// notFuture refuses a resume position after the log's clock: the group
// would skip every event until then. A position between the newest event
// and now is fine.
func (m *Manager) notFuture(ctx context.Context, sub *registryv1.Subscription, streams []string, resume string) error {
	id, err := eventlog.ParseID(resume)
	if err != nil || id == eventlog.Zero {
		return nil
	}
	logs := slices.DeleteFunc(slices.Clone(streams), func(st string) bool { return st == ReplayKey(sub.GetId()) })
	newest, now, err := eventlog.Newest(ctx, m.rdb, logs)
	if err != nil {
		m.log.Warn("resume position not checked", "subscription", sub.GetId(), "err", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("the log is unavailable; retry"))
	}
	if eventlog.InFuture(id, now) {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(
			"resume position is in the future, which would skip every event until then: the newest cursor of subscription %s is %s",
			sub.GetId(), eventlog.NewestString(newest)))
	}
	return nil
}

// refresh recomputes the streams after a catalog change and makes sure the
// groups exist.
func (s *session) refresh(ctx context.Context) error {
	s.changed = s.m.cat.Changed()
	if !s.m.External { // an External one's owner ends the session itself
		if _, err := s.m.cat.Subscription(ctx, s.sub.GetId()); errors.Is(err, catalog.ErrUnknownSubscription) {
			return connect.NewError(connect.CodeNotFound, fmt.Errorf("subscription %s was deleted", s.sub.GetId()))
		}
	}
	streams, err := s.m.streams(ctx, s.sub)
	if err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	if err := s.m.ensure(ctx, s.sub, streams); err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	s.streams = streams
	s.watchStreams()
	s.allowed = make(map[string]bool, len(streams))
	for _, st := range streams {
		if st != ReplayKey(s.sub.GetId()) {
			s.allowed[eventlog.TypeOfStream(st)] = true
		}
	}
	return nil
}

// refreshIfChanged refreshes after a catalog change (a withdrawn grant, a
// new type).
func (s *session) refreshIfChanged(ctx context.Context) error {
	select {
	case <-s.changed:
		return s.refresh(ctx)
	default:
		return nil
	}
}

func (s *session) run(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := s.refreshIfChanged(ctx); err != nil {
			return err
		}
		if s.inflight >= s.window {
			// What this session's consumer left unacknowledged past the
			// ack timeout comes back even though the window is full: no
			// other session may be there to take it over.
			if now := time.Now(); !now.Before(s.nextClaim) {
				ds, err := s.reclaimOwn(ctx)
				if err != nil {
					return err
				}
				s.nextClaim = now.Add(s.claimEvery())
				if len(ds) > 0 {
					s.inflight = max(0, s.inflight-len(ds)) // sent again below
					if err := s.deliver(ctx, ds); err != nil {
						return err
					}
					continue
				}
			}
			if err := s.waitForRoom(ctx); err != nil {
				return err
			}
			continue
		}
		if len(s.buffer) > 0 {
			buffered := s.buffer
			s.buffer = nil
			if err := s.deliver(ctx, buffered); err != nil {
				return err
			}
			continue
		}
		now := time.Now()
		if !now.Before(s.nextDue) {
			ds, err := s.due(ctx)
			if err != nil {
				return err
			}
			if len(ds) > 0 {
				if err := s.deliver(ctx, ds); err != nil {
					return err
				}
				continue
			}
		}
		if !now.Before(s.nextClaim) {
			ds, err := s.claimExpired(ctx)
			if err != nil {
				return err
			}
			s.nextClaim = now.Add(s.claimEvery())
			if len(ds) > 0 {
				if err := s.deliver(ctx, ds); err != nil {
					return err
				}
				continue
			}
		}
		if !now.Before(s.nextPrune) {
			s.prune(ctx)
			s.nextPrune = now.Add(pruneEvery)
		}
		block := min(maxBlock, time.Until(s.nextDue), time.Until(s.nextClaim))
		ds, err := s.read(ctx, max(block, time.Millisecond))
		if err != nil {
			return err
		}
		if err := s.deliver(ctx, ds); err != nil {
			return err
		}
	}
	return nil
}

// claimEvery is how often expired deliveries are looked for.
func (s *session) claimEvery() time.Duration {
	return min(max(s.pol.ackTimeout/4, 20*time.Millisecond), 5*time.Second)
}

// unavailable wraps a Redis failure for the client: the stream ends and the
// consumer reconnects; nothing is lost, pending deliveries come back.
func unavailable(what string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: %w; reconnect to resume (unacknowledged deliveries will be delivered again)", what, err))
}

// waitForRoom blocks until an Ack or Nack on this router, or a short poll,
// then re-counts what this consumer holds (acks may arrive through another
// router).
func (s *session) waitForRoom(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-s.wake:
		s.nextDue = time.Time{}
	case <-time.After(fullPoll):
	}
	held, err := s.held(ctx)
	if err != nil {
		return unavailable("count unacknowledged deliveries", err)
	}
	s.inflight = max(0, held-len(s.buffer))
	return nil
}

// held counts the deliveries this consumer holds in the pending lists.
func (s *session) held(ctx context.Context) (int, error) {
	pipe := s.m.rdb.Pipeline()
	cmds := make([]*redis.XPendingCmd, len(s.streams))
	for i, st := range s.streams {
		cmds[i] = pipe.XPending(ctx, st, Group(s.sub.GetId()))
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNoGroup(err) && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	n := 0
	for _, c := range cmds {
		if v, err := c.Result(); err == nil {
			n += int(v.Consumers[s.consumer])
		}
	}
	return n, nil
}

// read takes new entries from the groups, waiting up to block. It reads
// the streams whose watch woke since their last read (and those it cannot
// watch, those whose last read may have left more, and every one at the
// first read and every sweepEvery), without blocking, one XREADGROUP per
// hash slot in one pipeline; with nothing to take, it waits for a watch to
// wake and reads again.
func (s *session) read(ctx context.Context, block time.Duration) ([]delivery, error) {
	timer := time.NewTimer(block)
	defer timer.Stop()
	for {
		now := time.Now()
		sweep := !now.Before(s.nextSweep)
		if sweep {
			s.nextSweep = now.Add(s.m.sweep)
		}
		var pick []string
		gens := make(map[string]uint64, len(s.streams))
		for _, st := range s.streams {
			w := s.watches[st]
			if w != nil {
				gens[st] = w.gen.Load() // before the read: see watch.go
			}
			seen, read := s.seen[st]
			if sweep || w == nil || !read || s.more[st] || gens[st] != seen {
				pick = append(pick, st)
			}
		}
		if len(pick) > 0 {
			ds, err := s.readStreams(ctx, pick, gens)
			if err != nil || len(ds) > 0 || ctx.Err() != nil {
				return ds, err
			}
		}
		select {
		case <-s.notify:
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, nil
		}
	}
}

// readStreams reads new entries of streams without blocking: one
// XREADGROUP per hash slot (Redis Cluster refuses one over several), all
// in one pipeline, which a ClusterClient sends to each node at once. gens
// are the streams' watch generations from before the read.
func (s *session) readStreams(ctx context.Context, streams []string, gens map[string]uint64) ([]delivery, error) {
	free := s.window - s.inflight
	per := max(1, free/len(streams))
	bySlot := map[string][]string{}
	var order []string
	for _, st := range streams {
		tag := redisserver.HashTag(st)
		if _, ok := bySlot[tag]; !ok {
			order = append(order, tag)
		}
		bySlot[tag] = append(bySlot[tag], st)
	}
	pipe := s.m.rdb.Pipeline()
	cmds := make([]*redis.XStreamSliceCmd, len(order))
	for i, tag := range order {
		group := bySlot[tag]
		args := make([]string, 0, 2*len(group))
		args = append(args, group...)
		for range group {
			args = append(args, ">")
		}
		cmds[i] = pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: Group(s.sub.GetId()), Consumer: s.consumer, Streams: args, Count: int64(per), Block: -1,
		})
	}
	_, _ = pipe.Exec(ctx) // each command's error is read below
	var out []delivery
	var failed error
	for i, c := range cmds {
		res, err := c.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if failed == nil || isNoGroup(err) {
				failed = err
			}
			for _, st := range bySlot[order[i]] {
				delete(s.seen, st) // to read again
			}
			continue
		}
		for _, st := range bySlot[order[i]] {
			s.seen[st] = gens[st]
			s.more[st] = false
		}
		for _, st := range res {
			s.more[st.Stream] = len(st.Messages) >= per
			for _, msg := range st.Messages {
				out = append(out, decode(s.sub.GetId(), st.Stream, msg.ID, msg.Values, 1))
			}
		}
	}
	sortDeliveries(out)
	switch {
	case failed == nil || len(out) > 0:
		// What was read goes out; a failure shows again at the next read.
		return out, nil
	case isNoGroup(failed):
		// A group or a stream disappeared (deleted by hand, or the
		// subscription is going away): create what is missing again.
		s.m.forget(Group(s.sub.GetId()))
		return nil, s.refresh(ctx)
	case ctx.Err() != nil:
		return nil, nil
	}
	return nil, unavailable("read the subscription", failed)
}

// watchStreams keeps the session's watches in step with its streams.
func (s *session) watchStreams() {
	keep := make(map[string]bool, len(s.streams))
	for _, st := range s.streams {
		keep[st] = true
		if w, ok := s.watches[st]; !ok || w == nil {
			// A new stream, or one over the Manager's limit so far.
			if w = s.m.watchStream(st, s.notify); w != nil || !ok {
				s.watches[st] = w
			}
		}
	}
	for st, w := range s.watches {
		if !keep[st] {
			if w != nil {
				s.m.unwatch(w, s.notify)
			}
			delete(s.watches, st)
			delete(s.seen, st)
			delete(s.more, st)
		}
	}
}

// unwatchAll ends the session's watches.
func (s *session) unwatchAll() {
	for st, w := range s.watches {
		if w != nil {
			s.m.unwatch(w, s.notify)
		}
		delete(s.watches, st)
	}
}

// due claims the nacked deliveries whose delay has passed.
func (s *session) due(ctx context.Context) ([]delivery, error) {
	free := s.window - s.inflight
	now := time.Now()
	res, err := popDueScript.Run(ctx, s.m.rdb, []string{delayedKey(s.sub.GetId())}, now.UnixMilli(), free).Slice()
	if err != nil {
		return nil, unavailable("read delayed deliveries", err)
	}
	s.nextDue = now.Add(duePoll)
	if at, _ := res[1].(int64); at >= 0 {
		if next := time.UnixMilli(at); next.Before(s.nextDue) {
			s.nextDue = next
		}
	}
	members, _ := res[0].([]any)
	byStream := map[string][]any{}
	var order []string
	for _, mem := range members {
		id, _ := mem.(string)
		r, err := parseAckID(s.sub.GetId(), id)
		if err != nil {
			continue
		}
		if _, ok := byStream[r.stream]; !ok {
			order = append(order, r.stream)
		}
		byStream[r.stream] = append(byStream[r.stream], r.id)
	}
	var out []delivery
	for _, st := range order {
		args := append([]any{Group(s.sub.GetId()), s.consumer, 0}, byStream[st]...)
		v, err := claimIDsScript.Run(ctx, s.m.rdb, []string{st}, args...).Result()
		if isNoGroup(err) {
			continue
		}
		if err != nil {
			return nil, unavailable("claim delayed deliveries", err)
		}
		out = append(out, decodeScripted(s.sub.GetId(), st, v)...)
	}
	sortDeliveries(out)
	return out, nil
}

// claimExpired takes over deliveries left unacknowledged past the ack
// timeout, by any consumer. Nacked deliveries still waiting out a delay
// longer than the ack timeout are handed back to herald.delayed.
func (s *session) claimExpired(ctx context.Context) ([]delivery, error) {
	free := s.window - s.inflight
	var out []delivery
	for _, st := range s.streams {
		if free-len(out) <= 0 {
			break
		}
		from := s.claimFrom[st]
		if from == "" {
			from = "0-0"
		}
		v, err := claimScript.Run(ctx, s.m.rdb, []string{st}, Group(s.sub.GetId()), s.consumer, s.pol.ackTimeout.Milliseconds(), from, free-len(out)).Slice()
		if isNoGroup(err) {
			continue
		}
		if err != nil {
			return nil, unavailable("claim expired deliveries", err)
		}
		s.claimFrom[st], _ = v[0].(string)
		out = append(out, decodeScripted(s.sub.GetId(), st, v[1])...)
	}
	return s.holdBackDelayed(ctx, out)
}

// reclaimOwn takes back, for sending again, the deliveries this session's
// consumer has held past the ack timeout (not those it read and has not
// sent yet). It is how they come back while the window is full.
func (s *session) reclaimOwn(ctx context.Context) ([]delivery, error) {
	unsent := make(map[ref]bool, len(s.buffer))
	for _, d := range s.buffer {
		unsent[d.ref] = true
	}
	group := Group(s.sub.GetId())
	var out []delivery
	for _, st := range s.streams {
		p, err := s.m.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: st, Group: group, Idle: s.pol.ackTimeout, Start: "-", End: "+",
			Count: int64(s.window + len(s.buffer)), Consumer: s.consumer,
		}).Result()
		if isNoGroup(err) || errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, unavailable("look for expired deliveries", err)
		}
		args := []any{group, s.consumer, s.pol.ackTimeout.Milliseconds()}
		for _, e := range p {
			if !unsent[ref{stream: st, id: e.ID}] {
				args = append(args, e.ID)
			}
		}
		if len(args) == 3 {
			continue
		}
		v, err := claimIDsScript.Run(ctx, s.m.rdb, []string{st}, args...).Result()
		if isNoGroup(err) {
			continue
		}
		if err != nil {
			return nil, unavailable("claim expired deliveries", err)
		}
		out = append(out, decodeScripted(s.sub.GetId(), st, v)...)
	}
	return s.holdBackDelayed(ctx, out)
}

// holdBackDelayed hands the claimed deliveries that were nacked with a
// delay that has not passed back to herald.delayed, and returns the others
// in log order.
func (s *session) holdBackDelayed(ctx context.Context, out []delivery) ([]delivery, error) {
	if len(out) == 0 {
		return nil, nil
	}
	// Which of them were nacked with a delay that has not passed?
	members := make([]string, len(out))
	for i, d := range out {
		members[i] = ackID(s.sub.GetId(), d.ref)
	}
	scores, err := s.m.rdb.ZMScore(ctx, delayedKey(s.sub.GetId()), members...).Result()
	if err != nil {
		return nil, unavailable("check delayed deliveries", err)
	}
	now := float64(time.Now().UnixMilli())
	ready := out[:0]
	pipe := s.m.rdb.Pipeline()
	for i, d := range out {
		switch {
		case scores[i] > now:
			pipe.Do(ctx, "XCLAIM", d.ref.stream, Group(s.sub.GetId()), delayedConsumer, 0, d.ref.id, "RETRYCOUNT", d.count-1, "JUSTID")
		case scores[i] > 0:
			pipe.ZRem(ctx, delayedKey(s.sub.GetId()), members[i])
			ready = append(ready, d)
		default:
			ready = append(ready, d)
		}
	}
	if pipe.Len() > 0 {
		if _, err := pipe.Exec(ctx); err != nil && !isNoGroup(err) {
			return nil, unavailable("hand back delayed deliveries", err)
		}
	}
	sortDeliveries(ready)
	return ready, nil
}

// deliver sends deliveries within the window and keeps the rest for
// later; it dead-letters those past their attempts and those the filter
// cannot evaluate, acknowledges, without sending, those the filter rejects,
// and hands back those of types the subscription may no longer receive.
func (s *session) deliver(ctx context.Context, ds []delivery) error {
	if len(ds) == 0 {
		return nil
	}
	// What was read just before a grant was withdrawn (or a type hidden) is
	// not sent: it is handed back, pending, for when the grant returns.
	if err := s.refreshIfChanged(ctx); err != nil {
		return err
	}
	var filtered []ref
	var withheld []delivery
	for i, d := range ds {
		switch {
		case !s.allowed[d.typ] && d.ref.stream == ReplayKey(s.sub.GetId()):
			// A replayed dead letter has nowhere to wait: back it goes.
			if err := s.m.deadLetter(ctx, s.sub.GetId(), d, "the subscription may no longer receive "+d.typ, ""); err != nil {
				return unavailable("dead-letter", err)
			}
			continue
		case !s.allowed[d.typ]:
			withheld = append(withheld, d)
			continue
		case d.bad != nil:
			if err := s.m.deadLetter(ctx, s.sub.GetId(), d, d.bad.Error(), ""); err != nil {
				return unavailable("dead-letter", err)
			}
			continue
		case d.count > s.pol.maxAttempts:
			d.count-- // the claim counted a delivery that will not happen
			fallback := fmt.Sprintf("not acknowledged within the ack timeout of %s, %d times", s.pol.ackTimeout, d.count)
			if err := s.m.deadLetter(ctx, s.sub.GetId(), d, "", fallback); err != nil {
				return unavailable("dead-letter", err)
			}
			continue
		}
		ok, err := s.flt.Match(d.event)
		if errors.Is(err, filter.ErrUnevaluable) {
			// Neither a match nor a miss: the consumer would never see it,
			// so it goes to the dead letters, where it can be looked at and
			// replayed once the filter is changed.
			s.m.filterErrors.Inc()
			s.m.log.Warn("subscription filter cannot be evaluated; event dead-lettered", "subscription", s.sub.GetId(), "cursor", d.cursor, "err", err)
			if err := s.m.deadLetter(ctx, s.sub.GetId(), d, "filter: "+err.Error(), ""); err != nil {
				return unavailable("dead-letter", err)
			}
			continue
		}
		if !ok {
			filtered = append(filtered, d.ref)
			continue
		}
		if s.inflight >= s.window || ctx.Err() != nil {
			// Full, or the stream is ending (its key may just have been
			// revoked): send nothing more; release hands the rest back.
			s.buffer = append(s.buffer, ds[i:]...)
			break
		}
		kind := "first"
		switch {
		case d.ref.stream == ReplayKey(s.sub.GetId()):
			kind = "replay"
		case d.count > 1:
			kind = "redelivery"
		}
		if err := s.send(&routerv1.SubscribeResponse{
			AckId: ackID(s.sub.GetId(), d.ref), Cursor: d.cursor, Event: d.event, Attempt: int32(d.count),
		}, Meta{Producer: d.account, Test: d.test, Replay: d.replay}); err != nil {
			s.buffer = append(s.buffer, ds[i:]...)
			return err
		}
		s.m.deliveries.WithLabelValues(kind).Inc()
		if s.m.Delivered != nil {
			u := usage.EventDelivery(d.event, d.cursor, d.account)
			u.Test = d.test
			u.Application, u.Subscription, u.Channel, u.Attempt = s.sub.GetApplicationId(), s.sub.GetId(), Channel, int32(d.count)
			s.m.Delivered(ctx, u)
		}
		s.inflight++
	}
	if len(withheld) > 0 {
		s.handBack(withheld)
	}
	if len(filtered) > 0 {
		if _, err := s.m.settle(ctx, s.sub.GetId(), filtered); err != nil {
			return unavailable("acknowledge filtered events", err)
		}
		s.m.deliveries.WithLabelValues("filtered").Add(float64(len(filtered)))
	}
	return nil
}

// release hands back what was read but never sent, so that another
// session takes it at once, with its delivery count as it was.
func (s *session) release() {
	s.handBack(s.buffer)
}

// handBack gives deliveries this consumer read but did not send to
// herald.released, with their delivery counts as they were.
func (s *session) handBack(ds []delivery) {
	if len(ds) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseWait)
	defer cancel()
	byStream := map[string][]any{}
	var order []string
	for _, d := range ds {
		if _, ok := byStream[d.ref.stream]; !ok {
			order = append(order, d.ref.stream)
		}
		byStream[d.ref.stream] = append(byStream[d.ref.stream], d.ref.id, d.count-1)
	}
	pipe := s.m.rdb.Pipeline()
	for _, st := range order {
		args := append([]any{Group(s.sub.GetId()), s.consumer, s.pol.ackTimeout.Milliseconds()}, byStream[st]...)
		releaseScript.Eval(ctx, pipe, []string{st}, args...) // EVALSHA would fail in a pipeline until the script is loaded
	}
	if _, err := pipe.Exec(ctx); err != nil {
		s.m.log.Warn("unsent deliveries not handed back; they come back after the ack timeout", "subscription", s.sub.GetId(), "err", err)
	}
}

// prune removes the consumers of ended sessions that hold nothing.
func (s *session) prune(ctx context.Context) {
	for _, st := range s.streams {
		if err := pruneConsumersScript.Run(ctx, s.m.rdb, []string{st}, Group(s.sub.GetId()), max(pruneIdle, 2*s.pol.ackTimeout).Milliseconds()).Err(); err != nil && ctx.Err() == nil {
			s.m.log.Warn("prune consumers", "stream", st, "err", err)
		}
	}
}
