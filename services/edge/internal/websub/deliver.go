package websub

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/usage"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const userAgent = "Herald-WebSub/1.0"

// durableOf is the durable subscription a record is delivered from: its
// group starts where the subscription was first verified; a delivery not
// settled within twice the request timeout comes again; the session's own
// attempt limit only catches deliveries that crash their consumer over and
// over (the runner gives up after the retry schedule).
func durableOf(rec record, timeout time.Duration, attempts int) *registryv1.Subscription {
	return &registryv1.Subscription{
		Id: rec.ID, ApplicationId: rec.App, Types: []string{rec.Type},
		CreateTime: timestamppb.New(rec.Created),
		Delivery: &registryv1.DeliveryPolicy{
			AckTimeout: durationpb.New(2*timeout + 5*time.Second), MaxAttempts: int32(attempts + 1),
		},
	}
}

// runner delivers one subscription while its process holds the lease.
type runner struct {
	h       *Hub
	rec     record
	sub     *registryv1.Subscription
	secret  []byte // nil: unsigned
	expires atomic.Int64
	leased  atomic.Bool

	cancel context.CancelFunc
	ready  chan struct{} // cancel is set
	done   chan struct{}
	wg     sync.WaitGroup
}

func newRunner(h *Hub, rec record) (*runner, error) {
	r := &runner{h: h, rec: rec, sub: h.durable(rec), ready: make(chan struct{}), done: make(chan struct{})}
	r.expires.Store(rec.Expires.UnixMilli())
	if rec.Secret != "" {
		if h.o.Box == nil {
			return nil, errNoBox
		}
		s, err := h.o.Box.Open(rec.Secret, secretContext(rec.ID))
		if err != nil {
			return nil, fmt.Errorf("open hub.secret: %w", err)
		}
		r.secret = s
	}
	return r, nil
}

func secretContext(id string) string { return "websub:" + id }

// stop ends the runner and waits for its requests in flight.
func (r *runner) stop() {
	<-r.ready
	r.cancel()
	<-r.done
}

func (r *runner) expired(now time.Time) bool { return now.UnixMilli() >= r.expires.Load() }

// run takes the lease when it can and delivers while it holds it.
func (r *runner) run(parent context.Context) {
	defer close(r.done)
	ctx, cancel := context.WithCancel(parent)
	r.cancel = cancel
	close(r.ready)
	defer cancel()
	b := backoff.New(backoff.Options{})
	for ctx.Err() == nil {
		select {
		case r.h.active <- struct{}{}:
		case <-ctx.Done():
			return
		}
		ok, err := r.h.st.lease(ctx, r.rec.ID, r.h.holder, r.h.o.LeaseTTL)
		switch {
		case err != nil:
			<-r.h.active
			if ctx.Err() == nil {
				r.h.o.Log.Warn("websub lease", "subscription", r.rec.ID, "err", err)
			}
			backoff.Sleep(ctx, b.Next())
			continue
		case !ok:
			<-r.h.active // another edge delivers it; look again later
			backoff.Sleep(ctx, r.h.o.LeaseTTL/3)
			continue
		}
		b.Reset()
		r.deliverWhileLeased(ctx)
		<-r.h.active
	}
}

// deliverWhileLeased runs the subscription's consumer until the lease is
// lost or ctx ends. At most Concurrency deliveries are unsettled at once,
// each with its own request in flight.
func (r *runner) deliverWhileLeased(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	r.leased.Store(true)
	defer r.leased.Store(false)
	defer r.h.st.unlease(context.WithoutCancel(parent), r.rec.ID, r.h.holder)
	defer r.wg.Wait()
	r.wg.Go(func() { r.keepLease(ctx, cancel) })
	b := backoff.New(backoff.Options{Initial: 200 * time.Millisecond, Max: 10 * time.Second})
	for ctx.Err() == nil {
		started := time.Now()
		err := r.h.mgr.ServeMeta(ctx, r.sub, r.h.o.Concurrency, r.h.holder, func(d *routerv1.SubscribeResponse, meta subscription.Meta) error {
			r.wg.Go(func() { r.deliver(ctx, d, meta.Producer) })
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		r.h.o.Log.Warn("websub consumer ended; restarting", "subscription", r.rec.ID, "err", err)
		b.ResetIfLasted(started)
		backoff.Sleep(ctx, b.Next())
	}
}

// keepLease renews the lease, and cancels when it is lost.
func (r *runner) keepLease(ctx context.Context, lost context.CancelFunc) {
	t := time.NewTicker(r.h.o.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := r.h.st.lease(ctx, r.rec.ID, r.h.holder, r.h.o.LeaseTTL)
		if err == nil && !ok {
			r.h.o.Log.Warn("websub lease lost to another edge", "subscription", r.rec.ID)
			lost()
			return
		}
	}
}

// release hands back a delivery this runner was sent but did not attempt,
// because it is stopping (a renewal with a new secret, a lost lease, the
// edge shutting down): the next runner takes it at once rather than after
// the ack timeout. Should that fail, it comes back after the ack timeout.
func (r *runner) release(ctx context.Context, d *routerv1.SubscribeResponse) {
	if err := r.h.mgr.Release(ctx, r.sub, r.h.holder, d.GetAckId(), d.GetAttempt()); err != nil {
		r.h.o.Log.Warn("websub delivery not handed back; it comes back after the ack timeout", "subscription", r.rec.ID, "err", err)
	}
}

// deliver POSTs one event to the callback and settles it: acknowledged
// (and counted) on 2xx, retried after the schedule's delay otherwise, given
// up after the last attempt. An expired subscription delivers nothing (it
// is being removed); a type the application may no longer receive is
// handed back to the subscription, which keeps it pending until the grant
// returns.
func (r *runner) deliver(ctx context.Context, d *routerv1.SubscribeResponse, producer string) {
	if r.expired(time.Now()) {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	ev := d.GetEvent()
	if !r.mayReceive(ctx, ev.GetType()) {
		// The session withholds it once it has seen the same change; the
		// delay keeps a registry that cannot be reached from making a loop.
		if _, _, err := r.h.mgr.Nack(sctx, r.sub, []string{d.GetAckId()}, time.Second, "the application may no longer receive "+ev.GetType()); err != nil {
			r.h.o.Log.Warn("websub delivery not handed back; it comes back after the ack timeout", "subscription", r.rec.ID, "err", err)
		}
		return
	}
	if !r.waitQuota(ctx, d) {
		r.release(sctx, d) // stopping
		return
	}
	ok, why := r.post(ctx, d)
	if ctx.Err() != nil && !ok {
		r.release(sctx, d) // stopping
		return
	}
	// The usage of this attempt: its ids derive from tenant, application,
	// subscription, event and channel, so a success counts once as
	// DELIVERED however often it is redelivered.
	u := usage.EventDelivery(ev, d.GetCursor(), producer)
	u.Application, u.Subscription, u.Channel, u.Attempt = r.rec.App, r.rec.ID, Channel, max(d.GetAttempt(), 1)
	if app, err := r.h.o.Catalog.Application(ctx, r.rec.App); err == nil {
		u.Tenant = app.GetTenant()
	}
	if ok {
		r.h.deliveries.WithLabelValues("success").Inc()
		if err := usage.Append(sctx, r.h.o.Redis, u.Records(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, time.Now())...); err != nil {
			// Not acknowledged: it comes again, and counts once then.
			r.h.o.Log.Warn("websub delivery not counted; it will be delivered again", "subscription", r.rec.ID, "cursor", d.GetCursor(), "err", err)
			return
		}
		if _, err := r.h.mgr.Ack(sctx, r.rec.ID, d.GetAckId()); err != nil {
			r.h.o.Log.Warn("websub delivery not acknowledged; it will be delivered again", "subscription", r.rec.ID, "cursor", d.GetCursor(), "err", err)
		}
		return
	}
	r.h.deliveries.WithLabelValues("failure").Inc()
	if err := usage.Append(sctx, r.h.o.Redis, u.Records(meteringv1.UsageMetric_USAGE_METRIC_FAILED, time.Now())...); err != nil {
		r.h.o.Log.Warn("failed websub attempt not counted", "subscription", r.rec.ID, "err", err)
	}
	n := int(max(d.GetAttempt(), 1))
	if n > len(r.h.o.Retry) {
		reason := fmt.Sprintf("%d attempts failed; the last: %s", n, why)
		if err := r.h.mgr.GiveUp(sctx, r.rec.ID, d.GetAckId(), int64(n), reason); err != nil {
			r.h.o.Log.Warn("websub delivery not given up; it comes back after the ack timeout", "subscription", r.rec.ID, "err", err)
		}
		return
	}
	if _, _, err := r.h.mgr.Nack(sctx, r.sub, []string{d.GetAckId()}, r.h.o.Retry[n-1], why); err != nil {
		r.h.o.Log.Warn("websub retry not scheduled; it comes back after the ack timeout", "subscription", r.rec.ID, "err", err)
	}
}

// mayReceive checks the application's grant and the type's visibility
// now, as the catalog has them.
func (r *runner) mayReceive(ctx context.Context, typ string) bool {
	app, err := r.h.o.Catalog.Application(ctx, r.rec.App)
	if err != nil {
		return false
	}
	t, ok := r.h.o.Catalog.Get(typ)
	return ok && access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, typ) &&
		access.Visible(app.GetAudience(), t.GetVisibility())
}

// post makes one content distribution request; it reports success, or why
// not in the subscriber's terms.
func (r *runner) post(ctx context.Context, d *routerv1.SubscribeResponse) (bool, string) {
	body, err := cloudevent.MarshalJSON(d.GetEvent())
	if err != nil {
		return false, "the event cannot be rendered"
	}
	ctx, cancel := context.WithTimeout(ctx, r.h.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.rec.Callback, bytes.NewReader(body))
	if err != nil {
		return false, "the callback cannot be requested"
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	req.Header.Set("User-Agent", userAgent)
	for _, l := range links(r.h.HubURL(), r.rec.Topic) {
		req.Header.Add("Link", l)
	}
	if r.secret != nil {
		req.Header.Set("X-Hub-Signature", Signature(r.secret, body))
	}
	resp, err := r.h.client.Do(req)
	if err != nil {
		return false, describe(err, r.h.o.Timeout)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false, fmt.Sprintf("the callback answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	return true, ""
}

// Signature is the X-Hub-Signature value of a body: sha256=<hex HMAC>.
func Signature(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}
