// Package websub is the edge's WebSub hub (W3C Recommendation): a
// subscriber asks POST /websub to subscribe a callback to a topic URL
// (/v1/topics/<type>), the hub verifies the intent with a GET to the
// callback (hub.challenge), then POSTs every event of the type to the
// callback until the lease ends, signed with X-Hub-Signature when the
// subscriber gave a hub.secret.
//
// Subscriptions live in Redis (see store.go), not in the registry; each one
// is delivered from a durable subscription of platform/subscription (a
// consumer group on the type's log streams), so that every event stays
// pending until its callback answered 2xx: delivery is at least once, with
// retries, whichever edge process delivers. One process at a time delivers
// to a subscription: the one holding its lease.
package websub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/safehttp"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Channel is the usage channel of WebSub deliveries.
const Channel = "websub"

// Path is where the hub takes subscription requests; TopicsPath prefixes
// the topic URLs.
const (
	Path       = "/websub"
	TopicsPath = "/v1/topics/"
)

// The hub's defaults.
const (
	DefaultLease        = 10 * 24 * time.Hour
	DefaultMaxLease     = 30 * 24 * time.Hour
	DefaultMaxActive    = 1000
	DefaultMaxPerApp    = 1000
	DefaultTimeout      = 15 * time.Second
	DefaultConcurrency  = 10
	DefaultLeaseTTL     = 10 * time.Second
	DefaultSyncInterval = time.Second
	DefaultRemoveGrace  = 5 * time.Second
	// MaxSecret is one more than the longest hub.secret: the Recommendation
	// asks for fewer than 200 bytes.
	MaxSecret       = 200
	maxCallback     = 2048
	verifyTimeout   = 10 * time.Second
	verifyWorkers   = 8
	verifyQueue     = 256
	maxChallengeAns = 1 << 10
)

// DefaultRetry is the default schedule: the delays between attempts at one
// event (nine attempts over about eight hours).
var DefaultRetry = []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute,
	30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour}

// Options configure a Hub.
type Options struct {
	// Redis holds the subscriptions and reads the log; a pool of its own,
	// sized for one blocking read per subscription delivered at once.
	Redis   redis.UniversalClient
	Catalog *catalog.Cache
	Log     *slog.Logger
	// Quotas hold deliveries while a hard quota on delivered events stops
	// their application or tenant; nil: no quotas.
	Quotas *quota.Cache
	// Box seals hub.secret at rest; nil refuses subscriptions with a
	// secret (and delivers those without one).
	Box *secretbox.Box
	// Policy guards every request to a callback (verification, denial,
	// content distribution), as it guards webhooks.
	Policy safehttp.Policy
	// PublicURL is the edge as subscribers reach it: the hub is
	// PublicURL/websub, topics PublicURL/v1/topics/<type>.
	PublicURL string
	Metrics   prometheus.Registerer
	// Lease is the lease of a subscription that asks for none; MaxLease
	// bounds what one may ask for. Defaults 10 and 30 days.
	Lease, MaxLease time.Duration
	// Retry is the delays between attempts at one event; after the last
	// the event is given up (dead-lettered). Default DefaultRetry.
	Retry []time.Duration
	// Timeout bounds one request to a callback. Default 15s.
	Timeout time.Duration
	// Concurrency is the requests in flight to one callback. Default 10.
	Concurrency int
	// MaxActive bounds the subscriptions this process delivers to at once
	// (each holds a Redis connection while it waits for events); the
	// others are left to other edges, or wait. Default 1000.
	MaxActive int
	// MaxPerApp bounds one application's subscriptions. Default 1000.
	MaxPerApp int
	// LeaseTTL is how long a delivery lease outlives its holder. Default 10s.
	LeaseTTL time.Duration
	// SyncInterval is how often the process looks for subscriptions made,
	// renewed or ended elsewhere. Default 1s.
	SyncInterval time.Duration
	// RemoveGrace is how long an ended subscription stays on record, with
	// its consumer group, so that every edge has stopped reading it before
	// the group goes (a session still reading would make it again).
	// Subscribing again meanwhile picks it up where it was. Default 5s.
	RemoveGrace time.Duration
}

// Hub is the WebSub hub. Run drives delivery and verification; Handler
// serves the HTTP side.
type Hub struct {
	o      Options
	mgr    *subscription.Manager
	st     store
	client *http.Client
	holder string

	intents chan intent
	wake    chan struct{}

	mu      sync.Mutex
	runners map[string]*runner
	broken  map[string]bool // subscriptions this process cannot deliver (said once in the log)
	active  chan struct{}   // subscriptions delivered to at once

	deliveries    *prometheus.CounterVec
	verifications *prometheus.CounterVec
}

// New returns a Hub.
func New(o Options) (*Hub, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.MaxLease <= 0 {
		o.MaxLease = DefaultMaxLease
	}
	if o.Lease > o.MaxLease {
		return nil, fmt.Errorf("websub: the default lease (%s) is longer than the longest (%s)", o.Lease, o.MaxLease)
	}
	if o.Lease < time.Second {
		return nil, fmt.Errorf("websub: the default lease (%s) is shorter than a second", o.Lease)
	}
	if len(o.Retry) == 0 {
		o.Retry = DefaultRetry
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.MaxActive <= 0 {
		o.MaxActive = DefaultMaxActive
	}
	if o.MaxPerApp <= 0 {
		o.MaxPerApp = DefaultMaxPerApp
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.RemoveGrace <= 0 {
		o.RemoveGrace = max(DefaultRemoveGrace, 3*o.SyncInterval)
	}
	o.PublicURL = strings.TrimSuffix(o.PublicURL, "/")
	var b [6]byte
	_, _ = rand.Read(b[:])
	mgr := subscription.NewManager(o.Redis, o.Catalog, o.Log, nil)
	mgr.External = true
	h := &Hub{
		o: o, mgr: mgr, st: store{rdb: o.Redis}, client: o.Policy.Client(o.Timeout), holder: "ws-" + hex.EncodeToString(b[:]),
		intents: make(chan intent, verifyQueue), wake: make(chan struct{}, 1),
		runners: map[string]*runner{}, broken: map[string]bool{}, active: make(chan struct{}, o.MaxActive),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_websub_deliveries_total",
			Help: "WebSub content distribution attempts by outcome: success, failure.",
		}, []string{"outcome"}),
		verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_websub_verifications_total",
			Help: "WebSub verifications of intent by mode (subscribe, unsubscribe) and outcome (confirmed, refused, denied).",
		}, []string{"mode", "outcome"}),
	}
	if o.Metrics != nil {
		o.Metrics.MustRegister(h.deliveries, h.verifications, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "herald_websub_subscriptions", Help: "WebSub subscriptions this edge delivers to (holds the lease of).",
		}, func() float64 { return float64(h.Active()) }))
	}
	return h, nil
}

// HubURL is the hub's URL, TopicURL a type's topic URL.
func (h *Hub) HubURL() string             { return h.o.PublicURL + Path }
func (h *Hub) TopicURL(typ string) string { return h.o.PublicURL + TopicsPath + typ }
func (h *Hub) links(typ string) [2]string { return links(h.HubURL(), h.TopicURL(typ)) }

func links(hub, topic string) [2]string {
	return [2]string{"<" + hub + `>; rel="hub"`, "<" + topic + `>; rel="self"`}
}

// Active counts the subscriptions this process delivers to now.
func (h *Hub) Active() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.runners {
		if r.leased.Load() {
			n++
		}
	}
	return n
}

// Run verifies intents and delivers until ctx ends.
func (h *Hub) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for range verifyWorkers {
		wg.Go(func() { h.verifyLoop(ctx) })
	}
	defer h.stopAll()
	b := backoff.New(backoff.Options{Initial: h.o.SyncInterval, Max: 30 * time.Second})
	for {
		next := h.o.SyncInterval
		if err := h.sync(ctx); err != nil && ctx.Err() == nil {
			h.o.Log.Warn("websub subscriptions not synced", "err", err)
			next = b.Next()
		} else {
			b.Reset()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-h.wake:
		case <-time.After(next):
		}
	}
}

// poke makes Run sync at once.
func (h *Hub) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// sync starts and stops runners to match Redis, and ends the subscriptions
// whose lease is over.
func (h *Hub) sync(ctx context.Context) error {
	subs, err := h.st.all(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	for id, exp := range subs {
		if now.Before(exp) {
			continue
		}
		// Ended: no edge delivers it any more (each stops its runner at
		// its next sync); after the grace, when none can still be reading
		// its group, it goes with its group.
		delete(subs, id)
		if now.Sub(exp) >= h.o.RemoveGrace {
			if err := h.end(ctx, id, now.Add(-h.o.RemoveGrace)); err != nil {
				h.o.Log.Warn("ended websub subscription not removed", "subscription", id, "err", err)
			}
		}
	}
	h.mu.Lock()
	var stop []*runner
	renewed := map[string]*runner{}
	for id, r := range h.runners {
		if exp, ok := subs[id]; ok {
			if r.expires.Load() != exp.UnixMilli() {
				renewed[id] = r
			}
			continue
		}
		stop = append(stop, r)
		delete(h.runners, id)
	}
	var start []string
	for id := range subs {
		if _, ok := h.runners[id]; !ok && !h.broken[id] {
			start = append(start, id)
		}
	}
	for id := range h.broken {
		if _, ok := subs[id]; !ok {
			delete(h.broken, id)
		}
	}
	h.mu.Unlock()
	for _, r := range stop {
		r.stop()
	}
	// A renewal may bring a new hub.secret: then the runner starts again
	// with it; otherwise it only learns the new end of its lease.
	for id, r := range renewed {
		rec, ok, err := h.st.get(ctx, id)
		if err != nil {
			return err
		}
		if ok && rec.Secret == r.rec.Secret {
			r.expires.Store(rec.Expires.UnixMilli())
			continue
		}
		h.mu.Lock()
		if h.runners[id] == r {
			delete(h.runners, id)
		}
		h.mu.Unlock()
		r.stop()
		start = append(start, id)
	}
	for _, id := range start {
		rec, ok, err := h.st.get(ctx, id)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		r, err := newRunner(h, rec)
		if err != nil {
			// Another edge, with the key, may deliver it.
			h.o.Log.Error("websub subscription cannot be delivered by this edge", "subscription", id, "err", err)
			h.mu.Lock()
			h.broken[id] = true
			h.mu.Unlock()
			continue
		}
		h.mu.Lock()
		if _, dup := h.runners[id]; dup {
			h.mu.Unlock()
			continue
		}
		h.runners[id] = r
		h.mu.Unlock()
		go r.run(ctx)
	}
	return nil
}

// end removes a subscription that ended by endedBy (one renewed since is
// kept), stops its runner here and drops its consumer groups.
func (h *Hub) end(ctx context.Context, id string, endedBy time.Time) error {
	typ, ok, err := h.st.remove(ctx, id, endedBy)
	if err != nil || !ok {
		return err
	}
	h.mu.Lock()
	r := h.runners[id]
	delete(h.runners, id)
	h.mu.Unlock()
	if r != nil {
		r.stop()
	}
	var partitions int32 = 1
	if t, ok := h.o.Catalog.Get(typ); ok {
		partitions = t.GetPartitions()
	}
	if typ == "" {
		return nil
	}
	return h.mgr.Delete(ctx, id, eventlog.StreamKeys(typ, partitions))
}

func (h *Hub) stopAll() {
	h.mu.Lock()
	rs := make([]*runner, 0, len(h.runners))
	for id, r := range h.runners {
		rs = append(rs, r)
		delete(h.runners, id)
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(r.stop)
	}
	wg.Wait()
}

// durable is the subscription a record is delivered from.
func (h *Hub) durable(rec record) *registryv1.Subscription {
	return durableOf(rec, h.o.Timeout, len(h.o.Retry)+1)
}

var errNoBox = errors.New("the subscription has a secret and HERALD_SECRET_KEY is not set")
