package bridge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Systems build the Sink or Source of a bridge, by system name (kafka,
// amqp, mqtt, lake). A nil entry (or a missing one) means this edge
// cannot run that system or direction.
type Systems struct {
	Sinks   map[string]func(Config) (Sink, error)
	Sources map[string]func(Config) (Source, error)
}

// Options configure an Engine.
type Options struct {
	// Redis holds the log and the bridges' state: a pool of its own, with
	// a blocking read per sink this process runs.
	Redis   redis.UniversalClient
	Catalog *catalog.Cache
	Log     *slog.Logger
	// Box opens the bridges' secrets and source keys; nil runs nothing.
	Box *secretbox.Box
	// Router returns a router client that calls as the given API key: a
	// source publishes as its bridge's application.
	Router func(key string) routerv1connect.RouterServiceClient
	// Systems are the adapters this edge has.
	Systems Systems
	Metrics prometheus.Registerer
	// LeaseTTL is how long a bridge's lease outlives its holder. Default
	// 10s.
	LeaseTTL time.Duration
	// Window is the least number of deliveries of one sink read ahead and
	// pending at once; a sink with a larger max_in_flight reads that many.
	// Default 1000.

	Window int
	// MaxBridges bounds the bridges this process runs at once; the others
	// are left to other edges, or wait for a free slot. Default 100.
	MaxBridges int
	// AckTimeout is how long a sink's delivery may stay unacknowledged
	// before another process takes it over (it is extended while this one
	// holds it). Default 60s.
	AckTimeout time.Duration
}

// Engine runs the catalog's bridges: each enabled bridge in one edge at a
// time, the one holding its lease.
type Engine struct {
	o      Options
	mgr    *subscription.Manager
	holder string

	mu      sync.Mutex
	running map[string]*running
	slots   chan struct{} // bridges run at once

	delivered *prometheus.CounterVec
	failed    *prometheus.CounterVec
	published *prometheus.CounterVec
}

// running is one bridge's goroutine.
type running struct {
	b      *registryv1.Bridge
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns an Engine.
func New(o Options) *Engine {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.Window <= 0 {
		o.Window = 1000
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = time.Minute
	}
	if o.MaxBridges <= 0 {
		o.MaxBridges = 100
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	mgr := subscription.NewManager(o.Redis, o.Catalog, o.Log, nil)
	mgr.External = true // bridges are not subscriptions of the registry's: the engine ends their sessions
	e := &Engine{
		o: o, mgr: mgr, holder: "br-" + hex.EncodeToString(b[:]), running: map[string]*running{}, slots: make(chan struct{}, o.MaxBridges),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bridge_delivered_total", Help: "Events a sink bridge delivered (confirmed by the far side), by system.",
		}, []string{"system"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bridge_failures_total", Help: "Sink sends that failed (retried or dead-lettered) and source records dead-lettered, by system.",
		}, []string{"system"}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_bridge_published_total", Help: "Records a source bridge published into the mesh, by system.",
		}, []string{"system"}),
	}
	if o.Metrics != nil {
		o.Metrics.MustRegister(e.delivered, e.failed, e.published)
	}
	return e
}

// Manager is the durable subscription manager of the sinks (for the API:
// dead letters and replay).
func (e *Engine) Manager() *subscription.Manager { return e.mgr }

// Run follows the catalog until ctx ends: a goroutine per enabled bridge,
// stopped when it is disabled, changed (and started again) or deleted.
func (e *Engine) Run(ctx context.Context) error {
	if e.o.Box == nil {
		e.o.Log.Error("HERALD_SECRET_KEY is not set: bridges cannot open their secrets, so none runs")
	}
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

func (e *Engine) sync(ctx context.Context) {
	want := map[string]*registryv1.Bridge{}
	if e.o.Box != nil {
		for _, b := range e.o.Catalog.Bridges() {
			if !b.GetDisabled() {
				want[b.GetId()] = b
			}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, r := range e.running {
		if w, ok := want[id]; ok && w.GetRevision() == r.b.GetRevision() {
			continue
		}
		r.cancel()
		<-r.done
		delete(e.running, id)
		if _, still := e.o.Catalog.Bridge(id); !still {
			e.forget(ctx, r.b)
		}
	}
	for id, b := range want {
		if _, ok := e.running[id]; ok {
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &running{b: b, cancel: cancel, done: make(chan struct{})}
		e.running[id] = r
		go func() {
			defer close(r.done)
			e.run(rctx, b)
		}()
	}
}

// forget removes what a deleted bridge left in Redis.
func (e *Engine) forget(ctx context.Context, b *registryv1.Bridge) {
	if b.GetDirection() != registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK {
		return
	}
	streams, err := e.mgr.Streams(ctx, subscriptionOf(b, e.o.AckTimeout))
	if err == nil {
		err = e.mgr.Delete(ctx, b.GetId(), streams)
	}
	if err != nil {
		e.o.Log.Warn("deleted bridge's consumer groups not removed", "bridge", b.GetName(), "err", err)
	}
}

func (e *Engine) stopAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, r := range e.running {
		r.cancel()
		<-r.done
		delete(e.running, id)
	}
}

// Running reports whether this process runs the bridge now (holds its
// lease).
func (e *Engine) Running(id string) bool {
	ok, err := e.lease(context.Background(), id, false)
	return err == nil && ok
}

// run takes the bridge's lease when it can and runs it while it holds it.
func (e *Engine) run(ctx context.Context, b *registryv1.Bridge) {
	log := e.o.Log.With("bridge", b.GetName(), "system", SystemOf(b))
	boff := backoff.New(backoff.Options{Initial: 200 * time.Millisecond, Max: 30 * time.Second})
	for ctx.Err() == nil {
		select {
		case e.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		ok, err := e.lease(ctx, b.GetId(), true)
		switch {
		case err != nil:
			<-e.slots
			log.Warn("bridge lease", "err", err)
			backoff.Sleep(ctx, boff.Next())
			continue
		case !ok:
			// Another edge runs it; look again in a while, in case that
			// one dies.
			<-e.slots
			backoff.Sleep(ctx, e.o.LeaseTTL/3)
			continue
		}
		started := time.Now()
		err = e.whileLeased(ctx, b, log)
		<-e.slots
		if ctx.Err() != nil {
			return
		}
		e.status(context.WithoutCancel(ctx), b.GetId(), "error", errText(err))
		log.Warn("bridge stopped; starting again", "err", err)
		boff.ResetIfLasted(started)
		backoff.Sleep(ctx, boff.Next())
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// whileLeased runs the bridge until the lease is lost, ctx ends or the
// bridge fails.
func (e *Engine) whileLeased(parent context.Context, b *registryv1.Bridge, log *slog.Logger) error {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	defer e.unlease(context.WithoutCancel(parent), b.GetId())
	go func() {
		t := time.NewTicker(e.o.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if ok, err := e.lease(ctx, b.GetId(), true); err == nil && !ok {
				cancel(errors.New("lease lost to another edge"))
				return
			}
		}
	}()
	cfg, err := e.config(b)
	if err != nil {
		return err
	}
	e.status(ctx, b.GetId(), "holder", e.holder, "error", "")
	var runErr error
	if b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK {
		runErr = e.runSink(ctx, cfg, log)
	} else {
		runErr = e.runSource(ctx, cfg, log)
	}
	if c := context.Cause(ctx); c != nil && parent.Err() == nil {
		return c
	}
	return runErr
}

// config opens the bridge's secret.
func (e *Engine) config(b *registryv1.Bridge) (Config, error) {
	cfg := Config{Bridge: b, Name: b.GetName()}
	if s := b.GetSealedSecret(); s != "" {
		plain, err := e.o.Box.Open(s, SecretContext(b.GetId()))
		if err != nil {
			return cfg, fmt.Errorf("open the bridge's secret: %w", err)
		}
		cfg.Secret = string(plain)
	}
	return cfg, nil
}

// SecretContext and KeyContext are the secretbox contexts the registry
// seals a bridge's secret and key with.
func SecretContext(id string) string { return catalog.BridgeSecretContext(id) }

// KeyContext: see SecretContext.
func KeyContext(id string) string { return catalog.BridgeKeyContext(id) }

// SystemOf names a bridge's system (catalog.BridgeSystem): kafka, amqp,
// mqtt or lake, also the usage channel of a sink's deliveries.
func SystemOf(b *registryv1.Bridge) string { return catalog.BridgeSystem(b) }

// Keys of a bridge's state; the hash tag keeps them in one slot.
func stateKey(id, part string) string { return "herald:bridge:{" + id + "}:" + part }

// StatusKey is the hash where the runner of a bridge says how it goes:
// holder, error, lag (a source's, records), updated (unix ms).
func StatusKey(id string) string { return stateKey(id, "status") }

// DeadKey is a source's dead-letter stream: records it could not publish.
func DeadKey(id string) string { return stateKey(id, "dead") }

func (e *Engine) status(ctx context.Context, id string, kv ...any) {
	kv = append(kv, "updated", time.Now().UnixMilli())
	pipe := e.o.Redis.TxPipeline()
	pipe.HSet(ctx, StatusKey(id), kv...)
	pipe.Expire(ctx, StatusKey(id), 7*24*time.Hour)
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() == nil {
		e.o.Log.Debug("bridge status not written", "bridge", id, "err", err)
	}
}

var leaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] or (cur == false and ARGV[3] == '1') then
  if ARGV[3] == '1' then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
  return 1
end
return 0
`)

var unleaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// lease takes or renews (take) the bridge's lease, or only reports whether
// this process holds it.
func (e *Engine) lease(ctx context.Context, id string, take bool) (bool, error) {
	t := "0"
	if take {
		t = "1"
	}
	n, err := leaseScript.Run(ctx, e.o.Redis, []string{stateKey(id, "lease")}, e.holder, e.o.LeaseTTL.Milliseconds(), t).Int()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	return n == 1, nil
}

func (e *Engine) unlease(ctx context.Context, id string) {
	_ = unleaseScript.Run(ctx, e.o.Redis, []string{stateKey(id, "lease")}, e.holder).Err()
}

// subscriptionOf is the durable subscription a sink reads: the bridge's id,
// application, types, filter and start.
func subscriptionOf(b *registryv1.Bridge, ack time.Duration) *registryv1.Subscription {
	s := b.GetSink()
	sub := &registryv1.Subscription{
		Id: b.GetId(), ApplicationId: b.GetApplicationId(), Types: s.GetTypes(), Filter: s.GetFilter(),
		Start: s.GetStart(), Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Delivery: &registryv1.DeliveryPolicy{MaxAttempts: 1000},
	}
	if s.GetStart() != nil {
		sub.Start = proto.Clone(s.GetStart()).(*registryv1.StartPosition)
	}
	sub.Delivery.AckTimeout = durationOf(ack)
	return sub
}
