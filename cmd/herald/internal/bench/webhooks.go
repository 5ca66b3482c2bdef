package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/redis/go-redis/v9"
)

// WebhookOptions configure `herald bench webhooks`.
type WebhookOptions struct {
	// Events published in the one-endpoint phase. Default 20000.
	Events int
	// FanoutEvents published in each many-endpoint phase; each goes to
	// every endpoint. Default 500 (50,000 deliveries to 100 endpoints).
	FanoutEvents int
	// Endpoints of the many-endpoint phases. Default 100.
	Endpoints int
	// MaxConcurrency of every endpoint (requests in flight). Default 10,
	// the registry's default.
	MaxConcurrency int
	// SlowSleep is how long the slow endpoint takes to answer. Default 10s.
	SlowSleep time.Duration
	// Rate is the steady phase's published events per second, to one
	// endpoint. Default 1000.
	Rate int
	// RateDuration is how long the steady phase publishes. Default 10s.
	RateDuration time.Duration
	// PayloadBytes is the size of each event's JSON data. Default 256.
	PayloadBytes int
	// RedisFsync is Redis' appendfsync. Default "always".
	RedisFsync string
	// RedisAOFRewriteMinSize is Redis' auto-aof-rewrite-min-size. Default
	// redisserver.DefaultAOFRewriteMinSize, as herald dev runs Redis.
	RedisAOFRewriteMinSize string
	// RouterBin and EdgeBin are the executables. Required.
	RouterBin, EdgeBin string
	// EdgeEnv is added to the edge's environment (HERALD_PPROF_ADDR to
	// profile it, for one).
	EdgeEnv []string
	// RouterEnvForTest is added to the router's environment.
	RouterEnvForTest []string
	// Timeout bounds the whole run. Default 10 minutes.
	Timeout time.Duration
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

func (o *WebhookOptions) defaults() error {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Events, 20000)
	def(&o.FanoutEvents, 500)
	def(&o.Endpoints, 100)
	def(&o.MaxConcurrency, 10)
	def(&o.Rate, 1000)
	def(&o.PayloadBytes, 256)
	if o.SlowSleep <= 0 {
		o.SlowSleep = 10 * time.Second
	}
	if o.RateDuration <= 0 {
		o.RateDuration = 10 * time.Second
	}
	if err := runDefaults(&o.RedisFsync, &o.RedisAOFRewriteMinSize, &o.Timeout, &o.Progress); err != nil {
		return err
	}
	switch {
	case o.MaxConcurrency > 100:
		return errors.New("max concurrency: the registry accepts 1 to 100")
	case o.SlowSleep >= 15*time.Second:
		return errors.New("slow sleep: keep it under the endpoints' 15s request timeout")
	case o.Rate < 100:
		return errors.New("rate: at least 100 events/s (published in calls of rate/100 events every 10 ms)")
	case o.RouterBin == "" || o.EdgeBin == "":
		return errors.New("no router or edge executable given")
	}
	return nil
}

// WebhookReport is the outcome of `herald bench webhooks`.
type WebhookReport struct {
	Machine  Machine          `json:"machine"`
	Settings WebhookSettings  `json:"settings"`
	Phases   []WebhookPhase   `json:"phases"`
	Checks   []Check          `json:"checks"`
	Notes    []string         `json:"notes,omitempty"`
	Compare  *WebhookCompared `json:"slow_endpoint_cost,omitempty"`
}

// WebhookSettings are the options the run used.
type WebhookSettings struct {
	Events                 int    `json:"events"`
	FanoutEvents           int    `json:"fanout_events"`
	Endpoints              int    `json:"endpoints"`
	MaxConcurrency         int    `json:"max_concurrency"`
	SlowSleep              string `json:"slow_sleep"`
	Rate                   int    `json:"rate"`
	RateDuration           string `json:"rate_duration"`
	PayloadBytes           int    `json:"payload_bytes"`
	RedisFsync             string `json:"redis_appendfsync"`
	RedisAOFRewriteMinSize string `json:"redis_aof_rewrite_min_size"`
}

// WebhookPhase is one measured phase.
type WebhookPhase struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Endpoints   int    `json:"endpoints"`
	Published   int    `json:"published"`
	// Deliveries are the distinct (endpoint, webhook-id) pairs the healthy
	// endpoints received, each with a verified signature.
	Deliveries int `json:"deliveries"`
	// Duplicates are deliveries received more than once (at-least-once
	// delivery allows them; there should be none without failures).
	Duplicates int `json:"duplicates"`
	// Seconds runs from the first publish call to the last delivery.
	Seconds        float64 `json:"seconds"`
	DeliveriesPerS float64 `json:"deliveries_per_second"`
	// P50Ms and P99Ms time each delivery from the start of the publish
	// call of its event to its receipt.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// SlowReceived is what the slow endpoint received by the end.
	SlowReceived int        `json:"slow_received,omitempty"`
	Edge         *procUsage `json:"edge,omitempty"`
	Router       *procUsage `json:"router,omitempty"`
	RedisCPU     *float64   `json:"redis_cpu_seconds,omitempty"`
	ClientCPU    float64    `json:"client_cpu_seconds"`
}

// WebhookCompared is what the slow endpoint cost the healthy ones.
type WebhookCompared struct {
	// Healthy is the mean of the phases before and after, without it.
	Healthy   float64 `json:"healthy_deliveries_per_second"`
	WithSlow  float64 `json:"with_slow_deliveries_per_second"`
	CostRatio float64 `json:"cost"`
}

// whRun holds what the webhook phases share.
type whRun struct {
	o        WebhookOptions
	rep      *WebhookReport
	rdb      *redis.Client
	reg      registryv1connect.RegistryServiceClient
	router   *child
	edge     *child
	pub      *publisher
	progress func(format string, args ...any)
	phaseN   int
}

// RunWebhooks runs `herald bench webhooks` and returns the report. With a
// failed correctness check it returns the report and ErrCheckFailed.
func RunWebhooks(parent context.Context, o WebhookOptions) (*WebhookReport, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	r := &whRun{o: o, rep: &WebhookReport{Machine: machine(), Settings: WebhookSettings{
		Events: o.Events, FanoutEvents: o.FanoutEvents, Endpoints: o.Endpoints, MaxConcurrency: o.MaxConcurrency,
		SlowSleep: o.SlowSleep.String(), Rate: o.Rate, RateDuration: o.RateDuration.String(), PayloadBytes: o.PayloadBytes, RedisFsync: o.RedisFsync, RedisAOFRewriteMinSize: o.RedisAOFRewriteMinSize,
	}}}
	r.progress = func(format string, args ...any) { fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...) }
	dir, err := os.MkdirTemp("", "herald-bench-webhooks-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	err = r.all(ctx, dir)
	r.rep.Machine.LoadAvgEnd = loadAvg()
	if err != nil && ctx.Err() != nil && parent.Err() == nil {
		err = fmt.Errorf("the run took longer than %v: %w", o.Timeout, err)
	}
	if err != nil {
		return r.rep, r.withLogs(err)
	}
	for _, c := range r.rep.Checks {
		if !c.OK {
			return r.rep, ErrCheckFailed
		}
	}
	return r.rep, nil
}

func (r *whRun) withLogs(err error) error { return withChildLogs(err, r.router, r.edge) }

func (r *whRun) all(ctx context.Context, dir string) error {
	o := r.o
	r.progress("starting redis-server (AOF, appendfsync %s)", o.RedisFsync)
	srv, rdb, version, err := startRedis(ctx, dir, o.RedisFsync, o.RedisAOFRewriteMinSize, 8, 30*time.Second)
	if err != nil {
		return err
	}
	defer srv.Stop()
	r.rdb = rdb
	defer r.rdb.Close()
	r.rep.Machine.Redis = version

	common, err := benchMesh(srv.URL())
	if err != nil {
		return err
	}
	adminKey := common.AdminKey
	// Receivers are on 127.0.0.1: allowlisted, over http, as `herald dev` does.
	common.WebhookAllow = "127.0.0.0/8"
	common.SecretKey = secretbox.NewKey()
	stopRegistry, err := startRegistryIn(ctx, dir, common, r.progress)
	if err != nil {
		return err
	}
	defer stopRegistry()
	r.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...)
	pubKey, err := r.setupCatalog(ctx)
	if err != nil {
		return err
	}

	env := append(routerEnv(common, nil), "HERALD_SECRET_KEY="+common.SecretKey, "HERALD_WEBHOOK_ALLOW="+common.WebhookAllow)
	r.progress("starting the router (%s) on %s", o.RouterBin, common.RouterAddr)
	if r.router, err = startChild("router", o.RouterBin, nil, append(slices.Clip(env), o.RouterEnvForTest...), filepath.Join(dir, "router.log")); err != nil {
		return err
	}
	defer r.router.stop(10 * time.Second)
	r.progress("starting the edge (%s) on %s", o.EdgeBin, common.EdgeAddr)
	if r.edge, err = startChild("edge", o.EdgeBin, nil, append(slices.Clip(env), o.EdgeEnv...), filepath.Join(dir, "edge.log")); err != nil {
		return err
	}
	defer r.edge.stop(20 * time.Second)
	if err := waitChild(ctx, r.router, common.RouterAddr); err != nil {
		return err
	}
	if err := waitChild(ctx, r.edge, common.EdgeAddr); err != nil {
		return err
	}
	if r.pub, err = newPublisher(common.RouterAddr, pubKey); err != nil {
		return err
	}
	defer r.pub.Close()

	// Warm-up: a connection to every part, the scripts, the edge's catalog.
	r.progress("warming up")
	if _, err := r.phase(ctx, "warm-up", "", 1, 0, 200, 0); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	r.rep.Phases = r.rep.Phases[:0]

	one, err := r.phase(ctx, "1-endpoint", "one endpoint; events published in batches of 100 by 8 callers", 1, 0, o.Events, 0)
	if err != nil {
		return err
	}
	_ = one
	healthy, err := r.phase(ctx, fmt.Sprintf("%d-endpoints", o.Endpoints),
		fmt.Sprintf("%d endpoints of %d applications; every event goes to each", o.Endpoints, o.Endpoints), o.Endpoints, 0, o.FanoutEvents, 0)
	if err != nil {
		return err
	}
	slow, err := r.phase(ctx, fmt.Sprintf("%d-endpoints+slow", o.Endpoints),
		fmt.Sprintf("the same with one more endpoint (its own application) answering after %v", o.SlowSleep), o.Endpoints, 1, o.FanoutEvents, 0)
	if err != nil {
		return err
	}
	// Once more without the slow endpoint, so that the comparison is with
	// the mean of a run before and a run after (a machine warming up or
	// getting busier skews one alone).
	again, err := r.phase(ctx, fmt.Sprintf("%d-endpoints-again", o.Endpoints), "the first many-endpoint phase again", o.Endpoints, 0, o.FanoutEvents, 0)
	if err != nil {
		return err
	}
	if mean := (healthy.DeliveriesPerS + again.DeliveriesPerS) / 2; mean > 0 {
		r.rep.Compare = &WebhookCompared{Healthy: mean, WithSlow: slow.DeliveriesPerS, CostRatio: 1 - slow.DeliveriesPerS/mean}
	}
	if _, err := r.phase(ctx, fmt.Sprintf("steady-%d/s", o.Rate),
		fmt.Sprintf("one endpoint; %d events/s published for %v in calls of %d every 10 ms", o.Rate, o.RateDuration, o.Rate/100),
		1, 0, int(o.RateDuration.Seconds()*float64(o.Rate)), o.Rate); err != nil {
		return err
	}
	return nil
}

// setupCatalog registers the publisher's application and returns its key.
func (r *whRun) setupCatalog(ctx context.Context) (string, error) {
	res, err := r.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "bench-publisher", Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "bench.*"}},
	}}))
	if err != nil {
		return "", fmt.Errorf("create the publishing application: %w", err)
	}
	return res.Msg.GetKey().GetSecret(), nil
}

// phase runs one phase: it registers a type of its own, creates the
// endpoints (each of its own application), publishes events (all at once,
// or at rate per second when rate > 0), waits until every healthy endpoint
// has every event, then deletes the endpoints.
func (r *whRun) phase(ctx context.Context, name, desc string, endpoints, slow, events, rate int) (WebhookPhase, error) {
	r.phaseN++
	typ := fmt.Sprintf("bench.webhook.p%d", r.phaseN)
	if _, err := r.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: typ, Description: "Benchmark webhook payload.", Schema: Schema,
	}})); err != nil {
		return WebhookPhase{}, fmt.Errorf("register %s: %w", typ, err)
	}
	f := newFarm(events, endpoints)
	defer f.close()
	var subs []string
	defer func() {
		for _, id := range subs {
			_, _ = r.reg.DeleteSubscription(context.WithoutCancel(ctx), connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: id}))
		}
	}()
	for i := range endpoints + slow {
		rc, err := f.add(i >= endpoints, r.o.SlowSleep)
		if err != nil {
			return WebhookPhase{}, err
		}
		app, err := r.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
			Name: fmt.Sprintf("bench-consumer-%d-%d", r.phaseN, i), Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "bench.*"}},
		}}))
		if err != nil {
			return WebhookPhase{}, fmt.Errorf("create a consumer application: %w", err)
		}
		res, err := r.reg.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
			ApplicationId: app.Msg.GetApplication().GetId(), Types: []string{typ},
			Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: rc.url, MaxConcurrency: int32(r.o.MaxConcurrency)}},
		}}))
		if err != nil {
			return WebhookPhase{}, fmt.Errorf("create endpoint %d: %w", i, err)
		}
		subs = append(subs, res.Msg.GetSubscription().GetId())
		if rc.verifier, err = webhook.NewVerifier(res.Msg.GetWebhookSecret()); err != nil {
			return WebhookPhase{}, fmt.Errorf("endpoint %d secret: %w", i, err)
		}
	}
	if err := r.waitDelivering(ctx, subs); err != nil {
		return WebhookPhase{}, err
	}
	r.progress("phase %s: %d endpoints (+%d slow), %d events", name, endpoints, slow, events)

	evs := makeEvents(fmt.Sprintf("wh%d", r.phaseN), events, r.o.PayloadBytes)
	for _, ev := range evs {
		ev.Type = typ
	}
	f.start = time.Now()
	end := r.meter()
	var err error
	if rate > 0 {
		err = r.publishAtRate(ctx, f, evs, rate)
	} else {
		err = r.publishAll(ctx, f, evs)
	}
	if err != nil {
		return WebhookPhase{}, err
	}
	deadline := time.NewTimer(max(2*time.Minute, time.Duration(events*endpoints/500)*time.Millisecond))
	defer deadline.Stop()
	select {
	case <-f.done:
	case <-deadline.C:
		return WebhookPhase{}, fmt.Errorf("phase %s: %d of %d deliveries after the deadline", name, f.delivered.Load(), events*endpoints)
	case <-ctx.Done():
		return WebhookPhase{}, ctx.Err()
	}
	ph := WebhookPhase{Name: name, Description: desc, Endpoints: endpoints + slow, Published: events}
	end(&ph)
	ph.Deliveries = int(f.delivered.Load())
	ph.Duplicates = int(f.dups.Load())
	elapsed := f.last.Sub(f.start)
	ph.Seconds = elapsed.Seconds()
	ph.DeliveriesPerS = float64(ph.Deliveries) / ph.Seconds
	lat := f.latencies()
	ph.P50Ms, ph.P99Ms = percentile(lat, 0.50), percentile(lat, 0.99)
	if slow > 0 {
		ph.SlowReceived = int(f.slowHits.Load())
	}
	r.rep.Phases = append(r.rep.Phases, ph)
	if name != "warm-up" {
		r.checkPhase(ctx, ph, f, subs[:endpoints])
	}
	return ph, nil
}

// waitDelivering waits until the edge holds the lease of every endpoint
// (it follows the catalog asynchronously).
func (r *whRun) waitDelivering(ctx context.Context, subs []string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		keys := make([]string, len(subs))
		for i, s := range subs {
			keys[i] = "herald:sub:{" + s + "}:lease"
		}
		n, err := r.rdb.Exists(ctx, keys...).Result()
		if err != nil {
			return err
		}
		if int(n) == len(subs) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the edge delivers to %d of %d endpoints after 60s", n, len(subs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// meter measures the edge, the router, Redis and this process over a phase.
func (r *whRun) meter() func(ph *WebhookPhase) {
	em, rm := startMeter(r.edge.pid()), startMeter(r.router.pid())
	redisBefore := r.redisCPU()
	self := selfCPU()
	return func(ph *WebhookPhase) {
		ph.ClientCPU = (selfCPU() - self).Seconds()
		ph.Edge, _ = em.stop()
		ph.Router, _ = rm.stop()
		if after := r.redisCPU(); redisBefore >= 0 && after >= 0 {
			v := after - redisBefore
			ph.RedisCPU = &v
		}
	}
}

func (r *whRun) redisCPU() float64 { return redisCPU(r.rdb) }

// publishAll publishes events in batches of 100 from 8 callers.
func (r *whRun) publishAll(ctx context.Context, f *farm, evs []*eventv1.CloudEvent) error {
	bs := batches(evs, 100)
	_, _, err := runCalls(ctx, len(bs), 8, func(ctx context.Context, i int) error {
		f.sent(i*100, len(bs[i]))
		_, err := r.pub.publish(ctx, bs[i], false)
		return err
	})
	return err
}

// publishAtRate publishes rate events per second: rate/100 every 10 ms,
// each call on its own goroutine so that a slow call does not delay the
// schedule.
func (r *whRun) publishAtRate(ctx context.Context, f *farm, evs []*eventv1.CloudEvent, rate int) error {
	per := rate / 100
	bs := batches(evs, per)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	start := time.Now()
	for i, b := range bs {
		if d := time.Until(start.Add(time.Duration(i) * 10 * time.Millisecond)); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			f.sent(i*per, len(b))
			if _, err := r.pub.publish(ctx, b, false); err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// checkPhase checks what the phase delivered: every event to every healthy
// endpoint with a verified signature, and one usage record per delivery.
func (r *whRun) checkPhase(ctx context.Context, ph WebhookPhase, f *farm, subs []string) {
	want := ph.Published * (len(subs))
	r.check(ph.Name+": every event reached every endpoint", ph.Deliveries == want, "%d distinct deliveries of %d", ph.Deliveries, want)
	r.check(ph.Name+": every signature verified", f.badSig.Load() == 0, "%d requests with a bad signature", f.badSig.Load())
	// Usage: one record per successful delivery, counted once.
	deadline := time.Now().Add(30 * time.Second)
	for {
		counted, err := r.usageOf(ctx, subs)
		if err != nil {
			r.check(ph.Name+": delivered usage counted once per delivery", false, "reading the usage log: %v", err)
			return
		}
		if counted == want || time.Now().After(deadline) {
			r.check(ph.Name+": delivered usage counted once per delivery", counted == want, "%d distinct webhook usage records for %d deliveries", counted, want)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// usageOf counts the distinct webhook usage records of subs in the log.
func (r *whRun) usageOf(ctx context.Context, subs []string) (int, error) {
	ours := make(map[string]bool, len(subs))
	for _, s := range subs {
		ours[s] = true
	}
	seen := map[string]struct{}{}
	start := "-"
	for {
		msgs, err := r.rdb.XRangeN(ctx, usage.StreamKey, start, "+", 10000).Result()
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			recs, err := usage.Decode(m)
			if err != nil {
				return 0, err
			}
			for _, rec := range recs {
				if rec.GetChannel() == "webhook" && rec.GetMetric() == meteringv1.UsageMetric_USAGE_METRIC_DELIVERED && ours[rec.GetSubscription()] {
					seen[rec.GetId()] = struct{}{}
				}
			}
		}
		if len(msgs) < 10000 {
			return len(seen), nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}

func (r *whRun) check(name string, ok bool, format string, args ...any) {
	r.rep.Checks = append(r.rep.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// farm is a phase's receivers: local HTTP servers, one per endpoint.
type farm struct {
	events, healthy int
	sentAt          []atomic.Int64 // per event index: unix ns of its publish call
	start, last     time.Time
	done            chan struct{}
	delivered       atomic.Int64
	dups            atomic.Int64
	badSig          atomic.Int64
	slowHits        atomic.Int64

	mu   sync.Mutex
	lat  []time.Duration
	recv []*hookReceiver
}

type hookReceiver struct {
	f        *farm
	url      string
	slow     bool
	sleep    time.Duration
	verifier *webhook.Verifier
	srv      *http.Server
	mu       sync.Mutex
	seen     map[string]struct{}
}

func newFarm(events, healthy int) *farm {
	return &farm{events: events, healthy: healthy, sentAt: make([]atomic.Int64, events), done: make(chan struct{})}
}

func (f *farm) sent(from, n int) {
	now := time.Now().UnixNano()
	for i := from; i < from+n; i++ {
		f.sentAt[i].Store(now)
	}
}

func (f *farm) add(slow bool, sleep time.Duration) (*hookReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rc := &hookReceiver{f: f, url: "http://" + ln.Addr().String() + "/hook", slow: slow, sleep: sleep, seen: map[string]struct{}{}}
	rc.srv = &http.Server{Handler: rc, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = rc.srv.Serve(ln) }()
	f.mu.Lock()
	f.recv = append(f.recv, rc)
	f.mu.Unlock()
	return rc, nil
}

func (f *farm) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, rc := range f.recv {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = rc.srv.Shutdown(ctx)
		cancel()
		_ = rc.srv.Close()
	}
}

func (f *farm) latencies() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := slices.Clone(f.lat)
	slices.Sort(out)
	return out
}

func (rc *hookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.WriteHeader(http.StatusMethodNotAllowed) // no handshake: the registry pings
		return
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	now := time.Now()
	var ev struct {
		ID   string `json:"id"`
		Type string `json:"type"`
	}
	if json.Unmarshal(body, &ev) != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if ev.Type == "herald.endpoint.ping" || rc.verifier == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if rc.slow {
		rc.f.slowHits.Add(1)
		time.Sleep(rc.sleep)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err := rc.verifier.Verify(req.Header, body, now); err != nil {
		rc.f.badSig.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	id := req.Header.Get("webhook-id")
	rc.mu.Lock()
	_, dup := rc.seen[id]
	rc.seen[id] = struct{}{}
	rc.mu.Unlock()
	if dup {
		rc.f.dups.Add(1)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	var lat time.Duration
	if i := strings.LastIndexByte(id, '-'); i >= 0 {
		if n, err := strconv.Atoi(id[i+1:]); err == nil && n < len(rc.f.sentAt) {
			lat = now.Sub(time.Unix(0, rc.f.sentAt[n].Load()))
		}
	}
	rc.f.mu.Lock()
	rc.f.lat = append(rc.f.lat, lat)
	if now.After(rc.f.last) {
		rc.f.last = now
	}
	rc.f.mu.Unlock()
	if rc.f.delivered.Add(1) == int64(rc.f.events*rc.f.healthy) {
		close(rc.f.done)
	}
	w.WriteHeader(http.StatusNoContent)
}
