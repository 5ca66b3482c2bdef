// Package webhook is the edge's webhook delivery engine: every subscription
// with a webhook channel is delivered by POST, signed per Standard
// Webhooks, from its durable subscription (platform/subscription: consumer
// groups, pending entries, delays and dead letters).
//
// One edge process at a time delivers to an endpoint: the one holding its
// lease. It runs one consumer of the subscription and hands each delivery
// to the endpoint's dispatcher, which keeps the endpoint's order (none, per
// endpoint, or per partition key), concurrency and rate limit. A delivery
// stays pending in Redis until its request succeeds (then it is counted
// for metering and acknowledged) or it has used up its attempts (then it is
// dead-lettered with its attempts on record). A process that dies leaves
// its deliveries pending; after the lease and the ack timeout expire,
// another process delivers them again with the same webhook-id.
package webhook

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Channel is the usage channel of webhook deliveries.
const Channel = "webhook"

// DisabledType is the event published into the mesh when an endpoint is
// disabled.
const DisabledType = "herald.endpoint.disabled"

// Options configure an Engine.
type Options struct {
	// Usage, when set, batches the usage records of failed attempts;
	// nil appends each at once.
	Usage *usage.Appender
	// Redis holds the log and the engine's state; it should be a pool of
	// its own, sized for one blocking read per endpoint this process
	// delivers to.
	Redis   redis.UniversalClient
	Catalog *catalog.Cache
	Log     *slog.Logger
	// Box opens the endpoints' signing secrets; nil delivers nothing (and
	// says so in the log).
	Box *secretbox.Box
	// Policy guards outbound requests (SSRF).
	Policy safehttp.Policy
	// Registry and Router are clients with the operator's key: to disable
	// an endpoint and to publish herald.endpoint.disabled.
	Registry registryv1connect.RegistryServiceClient
	Router   routerv1connect.RouterServiceClient
	Metrics  prometheus.Registerer
	// LeaseTTL is how long an endpoint's lease outlives its holder.
	// Default 10s.
	LeaseTTL time.Duration
	// AppConcurrency caps one application's requests in flight over all
	// its endpoints, so that one tenant cannot take every connection.
	// Default 200.
	AppConcurrency int
	// MaxEndpoints bounds the endpoints this process delivers to at once
	// (each holds a Redis connection while it waits for events); the
	// others are left to other edges, or wait for a free slot. Default
	// 1000.
	MaxEndpoints int
	// Window is how many deliveries of one endpoint may be read ahead and
	// pending at once. Default 1000.
	Window int
	// Quotas hold deliveries while a hard quota on delivered events stops
	// their application or tenant (see waitQuota); nil: no quotas.
	Quotas *quota.Cache
}

// Engine delivers webhooks. Run drives it.
type Engine struct {
	o      Options
	mgr    *subscription.Manager
	st     store
	settle *settler
	client *http.Client
	holder string

	mu      sync.Mutex
	runners map[string]*runner
	apps    map[string]chan struct{}
	leases  chan struct{} // endpoints delivered to at once
	// paused are the endpoints disabled at the last sync (under mu).
	paused map[string]bool

	attemptsTotal *prometheus.CounterVec
	latency       prometheus.Histogram
	endpoints     prometheus.GaugeFunc
}

// New returns an Engine.
func New(o Options) *Engine {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.AppConcurrency <= 0 {
		o.AppConcurrency = 200
	}
	if o.Window <= 0 {
		o.Window = 1000
	}
	if o.MaxEndpoints <= 0 {
		o.MaxEndpoints = 1000
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	e := &Engine{
		o: o, mgr: subscription.NewManager(o.Redis, o.Catalog, o.Log, nil), st: store{rdb: o.Redis},
		client: o.Policy.Client(time.Minute), holder: "wh-" + hex.EncodeToString(b[:]),
		runners: map[string]*runner{}, apps: map[string]chan struct{}{}, leases: make(chan struct{}, o.MaxEndpoints),
		attemptsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_webhook_attempts_total",
			Help: "Webhook delivery attempts by outcome: success, failure.",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_webhook_request_seconds",
			Help:    "Webhook request latency, from sending to the end of the response.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
	}
	e.settle = newSettler(o.Redis, e.mgr, o.Log)
	e.endpoints = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "herald_webhook_endpoints", Help: "Webhook endpoints this edge delivers to (holds the lease of).",
	}, func() float64 { return float64(e.Active()) })
	if o.Metrics != nil {
		o.Metrics.MustRegister(e.attemptsTotal, e.latency, e.endpoints)
	}
	return e
}

// Active counts the endpoints this process delivers to now.
func (e *Engine) Active() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, r := range e.runners {
		if r.leased.Load() {
			n++
		}
	}
	return n
}

// Run follows the catalog: a runner per enabled webhook subscription,
// stopped when it is disabled, changed (and started again) or deleted.
func (e *Engine) Run(ctx context.Context) error {
	if e.o.Box == nil {
		e.o.Log.Error("HERALD_SECRET_KEY is not set: webhook endpoints cannot be signed, so nothing is delivered to them")
	}
	// The settler outlives the runners: a runner that is stopping waits
	// for what it handed to the settler.
	settleCtx, stopSettling := context.WithCancel(context.WithoutCancel(ctx))
	e.settle.run(settleCtx)
	defer stopSettling()
	defer e.stopAll()
	for {
		changed := e.o.Catalog.Changed()
		e.sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// sync starts and stops runners to match the catalog.
func (e *Engine) sync(ctx context.Context) {
	want := map[string]*registryv1.Subscription{}
	paused := map[string]bool{}
	for _, sub := range e.o.Catalog.Subscriptions() {
		if wh := sub.GetWebhook(); wh != nil && !wh.GetDisabled() {
			want[sub.GetId()] = sub
		} else if wh != nil {
			paused[sub.GetId()] = true
		}
	}
	e.mu.Lock()
	wasPaused := e.paused
	e.paused = paused
	var stop []*runner
	for id, r := range e.runners {
		if sub, ok := want[id]; !ok || sub.GetRevision() != r.sub.GetRevision() {
			stop = append(stop, r)
			delete(e.runners, id)
		}
	}
	e.mu.Unlock()
	// The old runners stop first, all at once (each lets its requests in
	// flight finish): a changed endpoint's new runner then finds its lease
	// free instead of waiting it out.
	var wg sync.WaitGroup
	for _, r := range stop {
		wg.Go(r.stop)
	}
	wg.Wait()
	e.mu.Lock()
	for id, sub := range want {
		if _, ok := e.runners[id]; !ok {
			r := newRunner(e, sub)
			r.enabledAgain = wasPaused[id]
			e.runners[id] = r
			go r.run(ctx)
		}
	}
	e.mu.Unlock()
}

func (e *Engine) stopAll() {
	e.mu.Lock()
	rs := make([]*runner, 0, len(e.runners))
	for id, r := range e.runners {
		rs = append(rs, r)
		delete(e.runners, id)
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(r.stop)
	}
	wg.Wait()
}

// appSlots is the semaphore of an application's requests in flight.
func (e *Engine) appSlots(app string) chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	ch, ok := e.apps[app]
	if !ok {
		ch = make(chan struct{}, e.o.AppConcurrency)
		e.apps[app] = ch
	}
	return ch
}

// deliver sends an event to an endpoint once. It returns the outcome and
// the attempt's record, not kept yet.
func (e *Engine) deliver(ctx context.Context, ep *endpoint, cursor string, ev *eventv1.CloudEvent, trigger edgev1.AttemptTrigger) (outcome, *edgev1.Attempt) {
	now := time.Now()
	var o outcome
	signer, err := ep.currentSigner(now)
	if err == nil {
		var req request
		if ep.jsonData && e.o.Catalog != nil {
			ev = e.o.Catalog.JSONData(ev)
		}
		req, err = render(ev, ep.mode)
		if err == nil {
			o = send(ctx, e.client, ep, signer, ev.GetId(), req, now)
		}
	}
	if err != nil {
		o = outcome{err: err.Error()}
	}
	result := "failure"
	if o.success {
		result = "success"
	}
	e.attemptsTotal.WithLabelValues(result).Inc()
	if o.status != 0 {
		e.latency.Observe(o.latency.Seconds())
	}
	return o, attemptOf(ep, cursor, ev, 0, now, o, trigger)
}

// keep records an attempt (numbering it) and returns since when the
// endpoint has been failing.
func (e *Engine) keep(ctx context.Context, a *edgev1.Attempt) time.Time {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	since, err := e.st.record(rctx, a)
	if err != nil {
		e.o.Log.Warn("webhook attempt not recorded", "subscription", a.GetSubscriptionId(), "cursor", a.GetCursor(), "err", err)
	}
	return since
}

// attempt sends an event to an endpoint once and records the attempt. It
// returns the outcome and since when the endpoint has been failing.
func (e *Engine) attempt(ctx context.Context, ep *endpoint, cursor string, ev *eventv1.CloudEvent, trigger edgev1.AttemptTrigger) (outcome, *edgev1.Attempt, time.Time) {
	o, a := e.deliver(ctx, ep, cursor, ev, trigger)
	return o, a, e.keep(ctx, a)
}

// usageOf is the delivery (for metering) of an event to an endpoint: its
// records' ids derive from tenant, application, subscription, event and
// channel, so a success counts once as DELIVERED whatever the number of
// attempts, and each failed attempt once as FAILED.
func (e *Engine) usageOf(ctx context.Context, ep *endpoint, j job, attempt int32) usage.Delivery {
	d := usage.EventDelivery(j.ev, j.cursor, j.producer)
	d.Application, d.Subscription, d.Channel, d.Attempt = ep.app, ep.id, Channel, attempt
	d.Test = j.test
	if app, err := e.o.Catalog.Application(ctx, ep.app); err == nil {
		d.Tenant = app.GetTenant()
	}
	return d
}

// countFailure reports a failed attempt to metering (FAILED, and RETRIED
// for an attempt after the first). It is never billable, and its loss is
// only logged.
func (e *Engine) countFailure(ctx context.Context, d usage.Delivery) {
	recs := d.Records(meteringv1.UsageMetric_USAGE_METRIC_FAILED, time.Now())
	var err error
	if e.o.Usage != nil {
		err = e.o.Usage.Add(ctx, recs...)
	} else {
		err = usage.Append(ctx, e.o.Redis, recs...)
	}
	if err != nil {
		e.o.Log.Warn("failed webhook attempt not counted", "subscription", d.Subscription, "err", err)
	}
}

// disable turns an endpoint off in the registry, with the reason, and
// publishes herald.endpoint.disabled into the mesh.
func (e *Engine) disable(ctx context.Context, ep *endpoint, reason string) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if e.o.Registry == nil {
		return false
	}
	now := time.Now()
	_, err := e.o.Registry.UpdateSubscription(ctx, connect.NewRequest(&registryv1.UpdateSubscriptionRequest{
		Subscription: &registryv1.Subscription{Id: ep.id, Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{
			Disabled: true, DisabledReason: reason,
		}}},
		UpdateMask: []string{"webhook.disabled"},
	}))
	if err != nil {
		e.o.Log.Error("webhook endpoint not disabled", "subscription", ep.id, "reason", reason, "err", err)
		return false
	}
	e.o.Log.Warn("webhook endpoint disabled", "subscription", ep.id, "application", ep.app, "reason", reason)
	if e.o.Router == nil {
		return true
	}
	data, _ := json.Marshal(map[string]string{
		"subscription_id": ep.id, "application_id": ep.app, "reason": reason, "disable_time": now.UTC().Format(time.RFC3339Nano),
	})
	ev := &eventv1.CloudEvent{
		Id: fmt.Sprintf("%s-disabled-%d", ep.id, now.UnixMilli()), Source: "herald/edge", SpecVersion: "1.0", Type: DisabledType,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
			"subject":         {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: ep.id}},
			"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(now)}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: string(data)},
	}
	res, err := e.o.Router.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{ev}}))
	if err == nil && len(res.Msg.GetResults()) == 1 && res.Msg.GetResults()[0].GetError() != nil {
		err = fmt.Errorf("%s", res.Msg.GetResults()[0].GetError().GetMessage())
	}
	if err != nil {
		e.o.Log.Error("herald.endpoint.disabled not published", "subscription", ep.id, "err", err)
	}
	return true
}
