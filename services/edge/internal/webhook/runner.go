package webhook

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/subscription"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// runner delivers to one endpoint while its process holds the lease.
type runner struct {
	e   *Engine
	sub *registryv1.Subscription // as the session reads it
	ep  *endpoint

	cancel  context.CancelFunc // set by run, under mu
	stopped bool               // stop was called (perhaps before run set cancel), under mu
	done    chan struct{}
	leased  atomic.Bool
	// disabling: one delivery is disabling (or has disabled) the endpoint.
	disabling atomic.Bool
	// enabledAgain: the endpoint was disabled; its failures before that
	// no longer count toward disable_after.
	enabledAgain bool

	slots chan struct{} // the endpoint's requests in flight
	wg    sync.WaitGroup

	mu      sync.Mutex
	held    map[string]struct{} // ack ids received and not settled
	queues  map[string][]job    // ordered modes: per key, waiting behind the head
	active  map[string]bool     // ordered modes: keys with a worker
	workers int                 // unordered: workers taking the queue

	permMu sync.Mutex
	permAt <-chan struct{} // closed at the catalog change that outdates perm
	perm   map[string]bool // event type -> the application may receive it
}

// job is one delivery handed over by the session.
type job struct {
	ackID, cursor string
	ev            *eventv1.CloudEvent
	producer      string // the application that published it
	test          bool   // a test event: never counted
	replay        bool   // sent again by a replay
	tries         int    // failed attempts already behind it (of this delivery's schedule)
	key           string
}

func newRunner(e *Engine, sub *registryv1.Subscription) *runner {
	ep := endpointOf(sub, e.o.Box)
	// The engine decides when to give up (the endpoint's schedule); the
	// session's own attempt limit only catches deliveries that crash
	// their consumer over and over.
	s := proto.Clone(sub).(*registryv1.Subscription)
	if s.Delivery == nil {
		s.Delivery = &registryv1.DeliveryPolicy{}
	}
	s.Delivery.MaxAttempts = int32(max(1000, ep.attempts()+1))
	if t := s.Delivery.GetAckTimeout().AsDuration(); t < 2*ep.timeout+5*time.Second {
		s.Delivery.AckTimeout = durationpb.New(2*ep.timeout + 5*time.Second)
	}
	return &runner{
		e: e, sub: s, ep: ep, done: make(chan struct{}), slots: make(chan struct{}, ep.concurrency),
		held: map[string]struct{}{}, queues: map[string][]job{}, active: map[string]bool{},
	}
}

func (r *runner) ackTimeout() time.Duration { return r.sub.GetDelivery().GetAckTimeout().AsDuration() }

// stop ends the runner and waits for its requests in flight.
func (r *runner) stop() {
	r.mu.Lock()
	r.stopped = true
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	<-r.done
}

// run takes the lease when it can and delivers while it holds it.
func (r *runner) run(parent context.Context) {
	defer close(r.done)
	ctx, cancel := context.WithCancel(parent)
	r.mu.Lock()
	r.cancel = cancel
	if r.stopped {
		cancel()
	}
	r.mu.Unlock()
	defer cancel()
	if r.enabledAgain {
		if err := r.e.st.healthy(ctx, r.ep.id); err != nil {
			r.e.o.Log.Warn("webhook endpoint enabled again, but its failures before are still counted", "subscription", r.ep.id, "err", err)
		}
	}
	b := backoff.New(backoff.Options{})
	for ctx.Err() == nil {
		select {
		case r.e.leases <- struct{}{}:
		case <-ctx.Done():
			return
		}
		ok, err := r.e.st.lease(ctx, r.ep.id, r.e.holder, r.e.o.LeaseTTL)
		switch {
		case err != nil:
			<-r.e.leases
			r.e.o.Log.Warn("webhook lease", "subscription", r.ep.id, "err", err)
			backoff.Sleep(ctx, b.Next())
			continue
		case !ok:
			// Another edge delivers to it; look again in a while, in case
			// that one dies.
			<-r.e.leases
			backoff.Sleep(ctx, r.e.o.LeaseTTL/3)
			continue
		}
		b.Reset()
		r.deliverWhileLeased(ctx)
		<-r.e.leases
	}
}

// deliverWhileLeased runs the subscription's consumer until the lease is
// lost or ctx ends.
func (r *runner) deliverWhileLeased(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	r.leased.Store(true)
	defer r.leased.Store(false)
	defer r.e.st.unlease(context.WithoutCancel(parent), r.ep.id, r.e.holder)
	go r.keepLease(ctx, cancel)
	go r.keepHeld(ctx)
	// Requests in flight finish (each is bounded by its timeout) before
	// the lease goes; what was received and not started is handed back.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	defer r.wg.Wait()
	context.AfterFunc(ctx, func() {
		// In flight requests keep their own deadline; waiting retries stop.
		time.AfterFunc(r.ep.timeout, stopWork)
	})
	b := backoff.New(backoff.Options{Initial: 200 * time.Millisecond, Max: 10 * time.Second})
	for ctx.Err() == nil {
		started := time.Now()
		err := r.e.mgr.ServeMeta(ctx, r.sub, r.e.o.Window, r.e.holder, func(d *routerv1.SubscribeResponse, meta subscription.Meta) error {
			r.dispatch(ctx, work, d, meta)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		r.e.o.Log.Warn("webhook consumer ended; restarting", "subscription", r.ep.id, "err", err)
		b.ResetIfLasted(started)
		backoff.Sleep(ctx, b.Next())
	}
}

// keepLease renews the lease, and cancels when it is lost.
func (r *runner) keepLease(ctx context.Context, lost context.CancelFunc) {
	t := time.NewTicker(r.e.o.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := r.e.st.lease(ctx, r.ep.id, r.e.holder, r.e.o.LeaseTTL)
		if err == nil && !ok {
			r.e.o.Log.Warn("webhook lease lost to another edge", "subscription", r.ep.id)
			lost()
			return
		}
	}
}

// keepHeld restarts the ack timeout of what the runner holds (waiting for
// a retry, a slot or an earlier event of its key), so that no other
// consumer takes it over while this one is alive.
func (r *runner) keepHeld(ctx context.Context) {
	t := time.NewTicker(max(r.ackTimeout()/3, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		ids := make([]string, 0, len(r.held))
		for id := range r.held {
			ids = append(ids, id)
		}
		r.mu.Unlock()
		for len(ids) > 0 {
			n := min(len(ids), 500)
			if _, err := r.e.mgr.Extend(ctx, r.sub.GetId(), r.e.holder, ids[:n]); err != nil && ctx.Err() == nil {
				r.e.o.Log.Warn("webhook deliveries not extended", "subscription", r.ep.id, "err", err)
			}
			ids = ids[n:]
		}
	}
}

// dispatch takes one delivery from the session.
func (r *runner) dispatch(ctx, work context.Context, d *routerv1.SubscribeResponse, meta subscription.Meta) {
	j := job{ackID: d.GetAckId(), cursor: d.GetCursor(), ev: d.GetEvent(), producer: meta.Producer, test: meta.Test, replay: meta.Replay, tries: max(int(d.GetAttempt())-1, 0)}
	r.mu.Lock()
	if _, dup := r.held[j.ackID]; dup {
		// Taken over again by this consumer (its ack timeout passed while
		// it waited): it is already here.
		r.mu.Unlock()
		return
	}
	r.held[j.ackID] = struct{}{}
	switch r.ep.ordering {
	case registryv1.WebhookOrdering_WEBHOOK_ORDERING_ORDERED:
		j.key = ""
	case registryv1.WebhookOrdering_WEBHOOK_ORDERING_PARTITION_KEY:
		if v, ok := j.ev.GetAttributes()["partitionkey"]; ok {
			j.key = "k:" + cloudevent.AttributeString(v)
		}
	default:
		// A few workers per endpoint take the queue: not a goroutine per
		// delivery, which a deep backlog of many endpoints would make
		// into a hundred thousand.
		r.queues[unorderedKey] = append(r.queues[unorderedKey], j)
		if r.workers < cap(r.slots)*workersPerSlot {
			r.workers++
			r.wg.Go(func() { r.unorderedWorker(ctx, work) })
		}
		r.mu.Unlock()
		return
	}
	r.queues[j.key] = append(r.queues[j.key], j)
	if !r.active[j.key] {
		r.active[j.key] = true
		r.wg.Go(func() { r.ordered(ctx, work, j.key) })
	}
	r.mu.Unlock()
}

// settled forgets a delivery.
func (r *runner) settled(ackID string) {
	r.mu.Lock()
	delete(r.held, ackID)
	r.mu.Unlock()
}

// acquire takes a slot of the endpoint and of its application, and waits
// for the rate limit. It returns the release, or false when ctx ended.
func (r *runner) acquire(ctx context.Context) (func(), bool) {
	app := r.e.appSlots(r.ep.app)
	select {
	case r.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, false
	}
	select {
	case app <- struct{}{}:
	case <-ctx.Done():
		<-r.slots
		return nil, false
	}
	release := func() { <-app; <-r.slots }
	if r.ep.limiter != nil {
		if err := r.ep.limiter.Wait(ctx); err != nil {
			release()
			return nil, false
		}
	}
	return release, true
}

// unorderedKey is the queue of an unordered endpoint (ordered keys are ""
// or start with "k:").
const unorderedKey = "u"

// workersPerSlot: the workers of an unordered endpoint per request in
// flight; the others settle what they sent meanwhile.
const workersPerSlot = 4

// unorderedWorker delivers from the endpoint's queue until it is empty, or
// hands the queue back when ctx ends.
func (r *runner) unorderedWorker(ctx, work context.Context) {
	for {
		r.mu.Lock()
		q := r.queues[unorderedKey]
		if len(q) == 0 || ctx.Err() != nil {
			if ctx.Err() != nil {
				for _, j := range q {
					delete(r.held, j.ackID)
				}
			} else {
				q = nil
			}
			delete(r.queues, unorderedKey)
			r.workers--
			r.mu.Unlock()
			if len(q) > 0 {
				r.handBackAll(q)
			}
			return
		}
		j := q[0]
		r.queues[unorderedKey] = q[1:]
		r.mu.Unlock()
		r.unordered(ctx, work, j)
	}
}

// unordered delivers one event; a failure is handed back to the
// subscription to come again after its delay, so that the endpoint goes on
// with other events meanwhile.
func (r *runner) unordered(ctx, work context.Context, j job) {
	defer r.settled(j.ackID)
	if !r.waitQuota(ctx, j) {
		r.handBack(j)
		return
	}
	release, ok := r.acquire(ctx)
	if !ok {
		r.handBack(j)
		return
	}
	// The endpoint's slot is free once its answer is in: the bookkeeping
	// that follows is not a request in flight.
	o, done := r.try(work, j, release)
	if done {
		return
	}
	j.tries++
	delay := r.ep.delay(j.tries, o.retryAfter)
	nctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, _, err := r.e.mgr.Nack(nctx, r.sub, []string{j.ackID}, delay, o.err); err != nil {
		r.e.o.Log.Warn("webhook retry not scheduled; it comes back after the ack timeout", "subscription", r.ep.id, "cursor", j.cursor, "err", err)
	}
}

// ordered delivers the events of one key in order: each is retried in
// place, holding the ones behind it, until it succeeds or is given up.
func (r *runner) ordered(ctx, work context.Context, key string) {
	for {
		r.mu.Lock()
		q := r.queues[key]
		if len(q) == 0 || ctx.Err() != nil {
			for _, j := range q {
				delete(r.held, j.ackID)
			}
			delete(r.queues, key)
			delete(r.active, key)
			r.mu.Unlock()
			if len(q) > 0 {
				r.handBackAll(q)
			}
			return
		}
		j := q[0]
		r.mu.Unlock()
		for {
			if !r.waitQuota(ctx, j) {
				break
			}
			release, ok := r.acquire(ctx)
			if !ok {
				break
			}
			o, done := r.try(work, j, nil)
			release()
			if done {
				break
			}
			j.tries++
			if !backoff.Sleep(ctx, r.ep.delay(j.tries, o.retryAfter)) {
				break
			}
		}
		if ctx.Err() != nil {
			continue // hands back the rest above, the head included
		}
		r.mu.Lock()
		r.queues[key] = r.queues[key][1:]
		delete(r.held, j.ackID)
		r.mu.Unlock()
	}
}

// try makes one attempt and settles the delivery when it is over: success
// (counted, acknowledged), the last attempt failed (dead-lettered), or the
// endpoint is gone (disabled; the delivery stays pending for when it is
// enabled again). It reports the outcome and whether the delivery is done
// with.
func (r *runner) try(ctx context.Context, j job, answered func()) (outcome, bool) {
	if !r.mayDeliver(ctx, j.ev.GetType()) {
		// Its grant was withdrawn while the runner held it (waiting for a
		// slot, or retried in place): no request. Handed back, the session
		// withholds it, pending, for when the grant returns.
		if answered != nil {
			answered()
		}
		r.handBack(j)
		return outcome{err: "the application may no longer receive " + j.ev.GetType()}, true
	}
	trigger := edgev1.AttemptTrigger_ATTEMPT_TRIGGER_UNSPECIFIED
	switch {
	case j.replay:
		trigger = edgev1.AttemptTrigger_ATTEMPT_TRIGGER_REPLAY
	case j.test:
		trigger = edgev1.AttemptTrigger_ATTEMPT_TRIGGER_TEST
	}
	o, a := r.e.deliver(ctx, r.ep, j.cursor, j.ev, trigger)
	if answered != nil {
		answered()
	}
	number := a.GetNumber()
	if number == 0 { // not recorded: the attempts this session knows of
		number = int32(j.tries + 1)
	}
	if o.success {
		recs := r.e.usageOf(ctx, r.ep, j, number).Records(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, time.Now())
		err := r.e.settle.settle(ctx, &settlement{subID: r.sub.GetId(), ackID: j.ackID, attempt: a, usage: recs})
		if err != nil {
			// Not acknowledged: it comes again, and counts once then.
			r.e.o.Log.Warn("webhook delivery not counted; it will be delivered again", "subscription", r.ep.id, "cursor", j.cursor, "err", err)
			return o, false
		}
		return o, true
	}
	since := r.e.keep(ctx, a)
	n := number
	r.e.countFailure(ctx, r.e.usageOf(ctx, r.ep, j, n))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	switch {
	case o.gone:
		r.disable(sctx, j, "the endpoint answered 410 Gone")
		return o, true
	}
	if !since.IsZero() && time.Since(since) >= r.ep.disableAfter {
		r.disable(sctx, j, fmt.Sprintf("every attempt failed for %s (since %s); the last: %s", r.ep.disableAfter, since.UTC().Format(time.RFC3339), o.err))
		return o, true
	}
	if j.tries+1 >= r.ep.attempts() {
		reason := fmt.Sprintf("%d attempts failed; the last: %s", j.tries+1, o.err)
		if err := r.e.mgr.GiveUp(sctx, r.sub.GetId(), j.ackID, int64(n), reason); err != nil {
			r.e.o.Log.Warn("webhook delivery not dead-lettered; it comes back after the ack timeout", "subscription", r.ep.id, "cursor", j.cursor, "err", err)
		}
		return o, true
	}
	return o, false
}

// mayDeliver reports whether the endpoint's application may still receive
// events of typ: its subscribe grants and audience as the catalog cache
// has them, the check the session makes when it reads (which does not see
// what the runner already holds). The answers are kept until the next
// catalog change, so an attempt costs a map lookup. An application the
// catalog cannot load now keeps what it had, as SSE streams do; one that no
// longer exists receives nothing.
func (r *runner) mayDeliver(ctx context.Context, typ string) bool {
	cat := r.e.o.Catalog
	if cat == nil {
		return true
	}
	r.permMu.Lock()
	if r.permAt != nil {
		select {
		case <-r.permAt:
			r.permAt = nil
		default:
			if ok, known := r.perm[typ]; known {
				r.permMu.Unlock()
				return ok
			}
		}
	}
	if r.permAt == nil {
		r.permAt, r.perm = cat.Changed(), map[string]bool{}
	}
	perm := r.perm
	r.permMu.Unlock()
	app, err := cat.Application(ctx, r.ep.app)
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound, connect.CodePermissionDenied:
		default:
			return true
		}
	}
	ok := err == nil && access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, typ)
	if ok {
		t, known := cat.Get(typ)
		ok = known && access.Visible(app.GetAudience(), t.GetVisibility())
	}
	r.permMu.Lock()
	perm[typ] = ok
	r.permMu.Unlock()
	return ok
}

// disable turns the endpoint off and stops delivering to it; the delivery
// stays pending, for when it is enabled again.
func (r *runner) disable(ctx context.Context, j job, reason string) {
	r.handBack(j)
	// Several failing deliveries may come to it at once: one disables the
	// endpoint and announces it, once.
	if !r.disabling.CompareAndSwap(false, true) {
		return
	}
	if r.e.disable(ctx, r.ep, reason) {
		r.cancel()
		return
	}
	r.disabling.Store(false)
}

// handBack returns a delivery to the subscription at once, for whoever
// delivers next.
func (r *runner) handBack(j job) { r.handBackAll([]job{j}) }

func (r *runner) handBackAll(js []job) {
	ids := make([]string, len(js))
	for i, j := range js {
		ids[i] = j.ackID
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := r.e.mgr.Nack(ctx, r.sub, ids, 0, ""); err != nil {
		r.e.o.Log.Warn("webhook deliveries not handed back; they come back after the ack timeout", "subscription", r.ep.id, "err", err)
	}
}
