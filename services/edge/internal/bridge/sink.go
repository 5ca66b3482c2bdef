package bridge

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/usage"
	"google.golang.org/protobuf/types/known/durationpb"
)

func durationOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// sinkRunner delivers one sink bridge's subscription to its Sink while
// this process holds the bridge's lease.
//
// Order: one message per key is with the far side at a time, and a
// message that failed holds the later ones of its key until it is
// delivered or dead-lettered, so per-key order holds across retries.
// Messages of different keys go in parallel, up to max_in_flight.
type sinkRunner struct {
	e    *Engine
	b    *registryv1.Bridge
	sub  *registryv1.Subscription
	sink Sink
	// unordered: the sink is Unordered, so messages queue by delivery,
	// not by key, and none waits for another.
	unordered bool
	log       *slog.Logger
	sched     []time.Duration
	sys       string
	json      bool
	slots     chan struct{} // messages held, at most max_in_flight

	mu      sync.Mutex
	settled chan *job       // delivered, to count and acknowledge
	work    context.Context // ends after the sink is closed

	held  map[string]struct{} // ack ids received and not settled
	keys  map[string][]*job   // per lane (key): the head is with the far side or waiting to retry
	ready []*job              // heads to send
	wake  chan struct{}
}

// job is one delivery.
type job struct {
	ackID, cursor, key string
	lane               string // its queue in keys: its key, or its own for an Unordered sink
	ev                 *eventv1.CloudEvent
	producer           string
	test               bool
	tries              int // failed attempts behind it
}

func (e *Engine) runSink(ctx context.Context, cfg Config, log *slog.Logger) error {
	b := cfg.Bridge
	build := e.o.Systems.Sinks[SystemOf(b)]
	if build == nil {
		return fmt.Errorf("this edge has no %s sink", SystemOf(b))
	}
	sink, err := build(cfg)
	if err != nil {
		return fmt.Errorf("open the %s sink: %w", SystemOf(b), err)
	}
	r := &sinkRunner{
		e: e, b: b, sub: subscriptionOf(b, e.o.AckTimeout), sink: sink, log: log, sys: SystemOf(b),
		json:  b.GetSink().GetJsonData(),
		slots: make(chan struct{}, max(1, int(b.GetSink().GetMaxInFlight()))),
		held:  map[string]struct{}{}, keys: map[string][]*job{}, wake: make(chan struct{}, 1),
		settled: make(chan *job, 1024),
	}
	_, r.unordered = sink.(Unordered)
	for _, d := range b.GetSink().GetRetrySchedule() {
		r.sched = append(r.sched, d.AsDuration())
	}
	var wg sync.WaitGroup
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	r.work = work
	wg.Go(func() { r.sendLoop(ctx) })
	wg.Go(func() { r.keepHeld(ctx) })
	wg.Go(func() { r.settleLoop(work) })
	defer func() {
		// What the far side has not confirmed within a few seconds stays
		// pending in Redis: the next holder delivers it again.
		cctx, cancel := context.WithTimeout(work, 5*time.Second)
		_ = sink.Close(cctx)
		cancel()
		stopWork()
		wg.Wait()
	}()
	boff := backoff.New(backoff.Options{Initial: 200 * time.Millisecond, Max: 10 * time.Second})
	for ctx.Err() == nil {
		started := time.Now()
		err := e.mgr.ServeMeta(ctx, r.sub, max(e.o.Window, cap(r.slots)), e.holder, func(d *routerv1.SubscribeResponse, meta subscription.Meta) error {
			return r.dispatch(ctx, d, meta)
		})
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("sink consumer ended; restarting", "err", err)
		boff.ResetIfLasted(started)
		backoff.Sleep(ctx, boff.Next())
	}
	return nil
}

// keyOf is a message's key: its partitionkey, else its id.
func keyOf(ev *eventv1.CloudEvent) string {
	if v, ok := ev.GetAttributes()["partitionkey"]; ok {
		if s := cloudevent.AttributeString(v); s != "" {
			return s
		}
	}
	return ev.GetId()
}

// dispatch takes one delivery from the session; it blocks while
// max_in_flight messages are held.
func (r *sinkRunner) dispatch(ctx context.Context, d *routerv1.SubscribeResponse, meta subscription.Meta) error {
	ev := d.GetEvent()
	if r.json {
		ev = r.e.o.Catalog.JSONData(ev)
	}
	j := &job{ackID: d.GetAckId(), cursor: d.GetCursor(), ev: ev, key: keyOf(d.GetEvent()), producer: meta.Producer, test: meta.Test, tries: max(int(d.GetAttempt())-1, 0)}
	j.lane = j.key
	if r.unordered {
		j.lane = "\x00" + j.ackID
	}
	r.mu.Lock()
	if _, dup := r.held[j.ackID]; dup {
		r.mu.Unlock()
		return nil // taken over again by this consumer while it waited: already here
	}
	r.mu.Unlock()
	select {
	case r.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	r.held[j.ackID] = struct{}{}
	q := r.keys[j.lane]
	r.keys[j.lane] = append(q, j)
	if len(q) == 0 {
		r.ready = append(r.ready, j)
		r.signal()
	}
	r.mu.Unlock()
	return nil
}

func (r *sinkRunner) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// sendLoop hands what is ready to the sink.
func (r *sinkRunner) sendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		r.mu.Lock()
		batch := r.ready
		r.ready = nil
		r.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		msgs := make([]Message, len(batch))
		for i, j := range batch {
			msgs[i] = Message{Cursor: j.cursor, Event: j.ev, Key: j.key}
		}
		r.sink.Send(ctx, msgs, func(i int, err error) { r.finished(ctx, batch[i], err) })
	}
}

// finished settles one message the far side took or refused. It is
// called from the sink's goroutines, so it never waits on Redis itself.
func (r *sinkRunner) finished(ctx context.Context, j *job, err error) {
	if err == nil {
		r.e.delivered.WithLabelValues(r.sys).Inc()
		select {
		case r.settled <- j:
		case <-r.work.Done():
		}
		return
	}
	r.e.failed.WithLabelValues(r.sys).Inc()
	j.tries++
	if IsPermanent(err) || j.tries > len(r.sched) {
		go r.giveUp(ctx, j, fmt.Sprintf("%s: %v", r.sys, err))
		return
	}
	delay := r.sched[j.tries-1]
	delay = delay/2 + rand.N(delay/2+1) // jittered, never less than half
	r.log.Debug("sink delivery failed; retrying", "cursor", j.cursor, "attempt", j.tries, "in", delay, "err", err)
	time.AfterFunc(delay, func() {
		r.mu.Lock()
		r.ready = append(r.ready, j)
		r.mu.Unlock()
		r.signal()
	})
}

// giveUp dead-letters a message with the reason.
func (r *sinkRunner) giveUp(ctx context.Context, j *job, reason string) {
	if err := r.e.mgr.GiveUp(context.WithoutCancel(ctx), r.sub.GetId(), j.ackID, int64(j.tries), reason); err != nil {
		r.log.Warn("sink delivery not dead-lettered; it will be delivered again", "cursor", j.cursor, "err", err)
	} else {
		r.log.Info("sink delivery dead-lettered", "cursor", j.cursor, "attempts", j.tries, "reason", reason)
	}
	r.next(j)
}

// next forgets j and makes the next message of its key ready.
func (r *sinkRunner) next(j *job) {
	r.mu.Lock()
	delete(r.held, j.ackID)
	q := r.keys[j.lane]
	if len(q) > 0 && q[0] == j {
		q = q[1:]
	}
	if len(q) == 0 {
		delete(r.keys, j.lane)
	} else {
		r.keys[j.lane] = q
		r.ready = append(r.ready, q[0])
		r.signal()
	}
	r.mu.Unlock()
	<-r.slots
}

// settleLoop counts deliveries for metering and acknowledges them, in
// batches of one round trip: a record's id counts a delivery once however
// often it is delivered, so counting is exactly once while delivery is at
// least once. A delivery acknowledged only after it is counted, and a
// crash in between delivers it again.
func (r *sinkRunner) settleLoop(ctx context.Context) {
	batch := make([]*job, 0, 512)
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-r.settled:
			batch = append(batch[:0], j)
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case j := <-r.settled:
				batch = append(batch, j)
			default:
				break fill
			}
		}
		r.settle(ctx, batch)
		for _, j := range batch {
			r.next(j)
		}
	}
}

func (r *sinkRunner) settle(ctx context.Context, batch []*job) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	tenant := ""
	if app, err := r.e.o.Catalog.Application(ctx, r.b.GetApplicationId()); err == nil {
		tenant = app.GetTenant()
	}
	now := time.Now()
	var recs []*meteringv1.UsageRecord
	for _, j := range batch {
		d := usage.EventDelivery(j.ev, j.cursor, j.producer)
		d.Tenant, d.Application, d.Subscription, d.Channel, d.Attempt, d.Test = tenant, r.b.GetApplicationId(), r.b.GetId(), r.sys, int32(j.tries+1), j.test
		recs = append(recs, d.Records(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, now)...)
	}
	// A few stream entries of many records each: one round trip.
	if err := usage.AppendBatch(ctx, r.e.o.Redis, 500, recs...); err != nil {
		r.log.Warn("sink deliveries not counted; they will be delivered again", "deliveries", len(batch), "err", err)
		return
	}
	acks := make([]string, len(batch))
	for i, j := range batch {
		acks[i] = j.ackID
	}
	if len(acks) > 0 {
		if err := r.e.mgr.AckMany(ctx, map[string][]string{r.sub.GetId(): acks}); err != nil {
			r.log.Warn("sink deliveries not acknowledged; they will be delivered again", "deliveries", len(acks), "err", err)
		}
	}
}

// keepHeld restarts the ack timeout of what the runner holds, so that no
// other consumer takes it over while this one is alive.
func (r *sinkRunner) keepHeld(ctx context.Context) {
	t := time.NewTicker(max(r.e.o.AckTimeout/3, 50*time.Millisecond))
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
				r.log.Warn("sink deliveries not extended", "err", err)
			}
			ids = ids[n:]
		}
	}
}
