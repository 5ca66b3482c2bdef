// Package bench measures Herald's write path: events per second and latency
// of gRPC Publish (single events and batches, with schema validation and
// deduplication on), against raw XADD of the same payloads to the same Redis
// and against NATS JetStream publishing the same payloads, in one run. It is
// what `herald bench publish` runs.
//
// The router runs as its own process, so that its CPU time and peak RSS can
// be read from /proc; Redis, the registry (in this process) and nats-server
// are private to the run, bound to 127.0.0.1, and stopped at the end.
// Benchmarks report; they never assert timings.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Options configure a run.
type Options struct {
	// Events per phase. Default 20000.
	Events int
	// Batch is the events per call of the batched phases. Default 100.
	Batch int
	// Concurrency is the number of concurrent callers. Default 8.
	Concurrency int
	// PayloadBytes is the size of each event's JSON data. Default 256.
	PayloadBytes int
	// RedisFsync is Redis' appendfsync: "always" (Herald's default: an
	// acknowledged write is on disk) or "everysec". Default "always".
	RedisFsync string
	// RedisAOFRewriteMinSize is Redis' auto-aof-rewrite-min-size. Default
	// redisserver.DefaultAOFRewriteMinSize, as herald dev runs Redis.
	RedisAOFRewriteMinSize string
	// RouterBin is the router executable. Required.
	RouterBin string
	// RouterEnv is added to the router's environment.
	RouterEnv []string
	// NATSServer is the nats-server executable; empty skips the JetStream
	// phases.
	NATSServer string
	// Callers adds a herald-single-cN phase per entry: single-event calls
	// by N concurrent callers (sharing one gRPC connection per
	// callersPerConn callers).
	Callers []int
	// EdgeBin is the edge executable of the latency phase; empty skips it.
	EdgeBin string
	// EdgeEnv is added to the edge's environment.
	EdgeEnv []string
	// LatencyRate is the events/s of the latency phase, one per call.
	// Default 100.
	LatencyRate int
	// LatencyDuration is how long the latency phase publishes. Default 10s.
	LatencyDuration time.Duration
	// AsAdmin publishes with the admin key instead of an application key.
	AsAdmin bool
	// Timeout bounds the whole run. Default 10 minutes.
	Timeout time.Duration
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

func (o *Options) defaults() error {
	if o.Events <= 0 {
		o.Events = 20000
	}
	if o.Batch <= 0 {
		o.Batch = 100
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.PayloadBytes <= 0 {
		o.PayloadBytes = 256
	}
	if o.LatencyRate <= 0 {
		o.LatencyRate = 100
	}
	if o.LatencyDuration <= 0 {
		o.LatencyDuration = 10 * time.Second
	}
	for _, n := range o.Callers {
		if n <= 0 {
			return fmt.Errorf("callers: %d is not a number of callers", n)
		}
	}
	if err := runDefaults(&o.RedisFsync, &o.RedisAOFRewriteMinSize, &o.Timeout, &o.Progress); err != nil {
		return err
	}
	switch {
	case o.Batch > 1000:
		return errors.New("batch: the router accepts at most 1000 events per Publish")
	case o.RouterBin == "":
		return errors.New("no router executable given")
	}
	return nil
}

// redisSize is a Redis memory size: bytes, or a number with a unit.
var redisSize = regexp.MustCompile(`^(?i)[0-9]+([kmg]b?)?$`)

// runDefaults fills and checks the settings every bench command has.
func runDefaults(fsync, rewriteMin *string, timeout *time.Duration, progress *io.Writer) error {
	if *fsync == "" {
		*fsync = "always"
	}
	if *rewriteMin == "" {
		*rewriteMin = redisserver.DefaultAOFRewriteMinSize
	}
	if *timeout <= 0 {
		*timeout = 10 * time.Minute
	}
	if *progress == nil {
		*progress = io.Discard
	}
	if *fsync != "always" && *fsync != "everysec" {
		return fmt.Errorf("redis fsync %q: want always or everysec", *fsync)
	}
	if !redisSize.MatchString(*rewriteMin) {
		return fmt.Errorf("redis auto-aof-rewrite-min-size %q: want a size such as 64mb or 1gb (bytes, or k, kb, m, mb, g, gb)", *rewriteMin)
	}
	return nil
}

// startRedis starts the run's private redis-server in dir (AOF on, with
// the given appendfsync and auto-aof-rewrite-min-size, "" for Herald's
// default) and returns it, a client of it and its version.
func startRedis(ctx context.Context, dir, fsync, rewriteMin string, pool int, readTimeout time.Duration) (*redisserver.Server, *redis.Client, string, error) {
	srv, err := redisserver.Start(ctx, redisserver.Options{Dir: filepath.Join(dir, "redis"), AppendOnly: true, AOFRewriteMinSize: rewriteMin})
	if err != nil {
		return nil, nil, "", fmt.Errorf("start redis-server: %w", err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: pool, ReadTimeout: readTimeout, WriteTimeout: 10 * time.Second})
	fail := func(err error) (*redisserver.Server, *redis.Client, string, error) {
		rdb.Close()
		srv.Stop()
		return nil, nil, "", err
	}
	if fsync != "always" {
		if err := rdb.ConfigSet(ctx, "appendfsync", fsync).Err(); err != nil {
			return fail(fmt.Errorf("redis CONFIG SET appendfsync: %w", err))
		}
	}
	if got, err := rdb.ConfigGet(ctx, "appendfsync").Result(); err != nil || got["appendfsync"] != fsync {
		return fail(fmt.Errorf("redis appendfsync is %v (%v), want %s", got, err, fsync))
	}
	version := ""
	if info, err := rdb.Info(ctx, "server").Result(); err == nil {
		version = "redis-server " + infoField(info, "redis_version")
	}
	return srv, rdb, version, nil
}

// Report is the outcome of a run.
type Report struct {
	Machine  Machine  `json:"machine"`
	Settings Settings `json:"settings"`
	Phases   []Phase  `json:"phases"`
	Checks   []Check  `json:"checks"`
	Goals    []Goal   `json:"goals,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs       int    `json:"cpus"`
	CPUModel   string `json:"cpu_model,omitempty"`
	MemoryGiB  int    `json:"memory_gib,omitempty"`
	Kernel     string `json:"kernel,omitempty"`
	Go         string `json:"go"`
	Redis      string `json:"redis"`
	NATSServer string `json:"nats_server,omitempty"`
	// LoadAvg is /proc/loadavg's 1, 5 and 15-minute load averages at the
	// start and at the end of the run: other work on the machine skews
	// the numbers.
	LoadAvgStart string `json:"loadavg_start,omitempty"`
	LoadAvgEnd   string `json:"loadavg_end,omitempty"`
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// Settings are the options the run used.
type Settings struct {
	Events                 int    `json:"events"`
	Batch                  int    `json:"batch"`
	Concurrency            int    `json:"concurrency"`
	PayloadBytes           int    `json:"payload_bytes"`
	EntryBytes             int    `json:"entry_bytes"`
	RedisFsync             string `json:"redis_appendfsync"`
	RedisAOFRewriteMinSize string `json:"redis_aof_rewrite_min_size"`
	Principal              string `json:"principal"`
	Router                 string `json:"router"`
	NATSWindow             int    `json:"nats_async_window,omitempty"`
	Callers                []int  `json:"callers,omitempty"`
	Edge                   string `json:"edge,omitempty"`
	LatencyRate            int    `json:"latency_rate,omitempty"`
	LatencyFor             string `json:"latency_duration,omitempty"`
}

// Check is one correctness check made at the end of the run.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// ErrCheckFailed is returned (with the report) when a correctness check failed.
var ErrCheckFailed = errors.New("a correctness check failed")

// run holds what the phases share.
type run struct {
	o        Options
	rep      *Report
	rdb      *redis.Client
	common   config.Common
	router   *child
	edge     *child
	nats     *natsServer
	natsC    *natsClient
	pub      *publisher
	acct     string
	progress func(format string, args ...any)

	heraldAcked int      // new events acknowledged by the router
	firstBatch  []string // cursors of the first batch of the batched phase
	batch0      []*eventv1.CloudEvent
	natsAcked   uint64
}

// Run runs every phase and returns the report. With a failed correctness
// check it returns the report and ErrCheckFailed.
func Run(parent context.Context, o Options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	r := &run{o: o, rep: &Report{}}
	r.progress = func(format string, args ...any) { fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...) }
	r.rep.Settings = Settings{Events: o.Events, Batch: o.Batch, Concurrency: o.Concurrency, PayloadBytes: o.PayloadBytes,
		RedisFsync: o.RedisFsync, RedisAOFRewriteMinSize: o.RedisAOFRewriteMinSize, Router: o.RouterBin, Callers: o.Callers}
	if o.EdgeBin != "" {
		r.rep.Settings.Edge, r.rep.Settings.LatencyRate, r.rep.Settings.LatencyFor = o.EdgeBin, o.LatencyRate, o.LatencyDuration.String()
	}
	r.rep.Machine = machine()

	dir, err := os.MkdirTemp("", "herald-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	err = r.all(ctx, dir)
	r.rep.Machine.LoadAvgEnd = loadAvg()
	r.rep.Goals = r.rep.goals()
	if err != nil && ctx.Err() != nil && parent.Err() == nil {
		err = fmt.Errorf("the run took longer than %v: %w", o.Timeout, err)
	}
	if err != nil {
		return r.rep, err
	}
	for _, c := range r.rep.Checks {
		if !c.OK {
			return r.rep, ErrCheckFailed
		}
	}
	return r.rep, nil
}

func (r *run) all(ctx context.Context, dir string) error {
	o := r.o
	// Redis: private, AOF on, with the chosen appendfsync.
	r.progress("starting redis-server (AOF, appendfsync %s)", o.RedisFsync)
	srv, rdb, version, err := startRedis(ctx, dir, o.RedisFsync, o.RedisAOFRewriteMinSize, o.Concurrency+4, 10*time.Second)
	if err != nil {
		return err
	}
	defer srv.Stop()
	r.rdb = rdb
	defer r.rdb.Close()
	r.rep.Machine.Redis = version

	// Registry in this process, router as its own process.
	common, err := benchMesh(srv.URL())
	if err != nil {
		return err
	}
	adminKey := common.AdminKey
	r.common = common
	stopRegistry, err := startRegistryIn(ctx, dir, common, r.progress)
	if err != nil {
		return err
	}
	defer stopRegistry()
	p, err := setupCatalog(ctx, common.RegistryAddr, adminKey, o.AsAdmin)
	if err != nil {
		return err
	}

	r.progress("starting the router (%s) on %s", o.RouterBin, common.RouterAddr)
	env := routerEnv(common, o.RouterEnv)
	r.router, err = startChild("router", o.RouterBin, nil, env, filepath.Join(dir, "router.log"))
	if err != nil {
		return err
	}
	defer r.router.stop(15 * time.Second)
	// The router is ready once its catalog is loaded from the registry's
	// Watch stream. A router that is up but not ready can still publish
	// (the catalog asks the registry for what it has not seen): go on, and
	// say so.
	note, err := waitReady(ctx, common.RouterAddr, 30*time.Second, 5*time.Second, func() error {
		if r.router.exited() {
			return fmt.Errorf("the router exited at start (%v):\n%s", r.router.err, r.router.logTail())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("router: %w\n%s", err, r.router.logTail())
	}
	if note != "" {
		r.rep.Notes = append(r.rep.Notes, "router "+note)
		r.progress("router %s", note)
	}

	if err := r.connect(ctx, common, p); err != nil {
		return err
	}
	defer r.pub.Close()

	if err := r.heraldPhases(ctx); err != nil {
		return r.withRouterLog(err)
	}
	if err := r.callerPhases(ctx); err != nil {
		return r.withRouterLog(err)
	}
	if err := r.rawPhases(ctx); err != nil {
		return err
	}
	if o.NATSServer != "" {
		defer func() {
			if r.natsC != nil {
				r.natsC.Close()
			}
			if r.nats != nil {
				r.nats.stop(10 * time.Second)
			}
		}()
		if err := r.natsPhases(ctx, dir, env); err != nil {
			return err
		}
	} else {
		r.rep.Notes = append(r.rep.Notes, "NATS JetStream phases skipped: no nats-server")
	}
	// Last, so that the edge (started for it, stopped after it) costs the
	// other phases nothing.
	if o.EdgeBin != "" {
		if err := r.latencyPhase(ctx, dir); err != nil {
			return r.withRouterLog(err)
		}
	} else {
		r.rep.Notes = append(r.rep.Notes, "latency phase skipped: no edge")
	}
	r.progress("checking the log")
	if err := r.checks(ctx); err != nil {
		return r.withRouterLog(err)
	}
	return nil
}

func (r *run) withRouterLog(err error) error { return withChildLogs(err, r.router, r.edge) }

// routerEnv is this process's environment without HERALD_* settings, plus
// the router's.
func routerEnv(c config.Common, extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HERALD_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"HERALD_REDIS_URL="+c.RedisURL, "HERALD_ADMIN_KEY="+c.AdminKey,
		"HERALD_ROUTER_ADDR="+c.RouterAddr, "HERALD_REGISTRY_ADDR="+c.RegistryAddr,
		"HERALD_EDGE_ADDR="+c.EdgeAddr, "HERALD_METERING_ADDR="+c.MeteringAddr,
	)
	return append(env, extra...)
}

// connect opens the gRPC client and checks that the principal may publish,
// falling back to the admin key when an application key is refused.
func (r *run) connect(ctx context.Context, common config.Common, p principal) error {
	var err error
	if r.pub, err = newPublisher(common.RouterAddr, p.key); err != nil {
		return err
	}
	probe := makeEvents("probe", 1, r.o.PayloadBytes)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = r.pub.publish(pctx, probe, false)
	if err != nil && p.account != "admin" {
		p.note = fmt.Sprintf("the application key was refused (%v): publishing with the admin key", err)
		p.key, p.account = common.AdminKey, "admin"
		r.pub.key = p.key
		probe = makeEvents("probe-admin", 1, r.o.PayloadBytes)
		_, err = r.pub.publish(pctx, probe, false)
	}
	if err != nil {
		return fmt.Errorf("first publish: %w", err)
	}
	r.heraldAcked++
	r.acct = p.account
	if p.account == "admin" {
		r.rep.Settings.Principal = "admin key"
		r.rep.Notes = append(r.rep.Notes, p.note)
		r.progress("%s", p.note)
	} else {
		r.rep.Settings.Principal = "application key with a publish grant on * (" + p.account + ")"
	}
	entry, err := eventlog.Encode(probe[0], r.acct)
	if err == nil {
		r.rep.Settings.EntryBytes = len(entry[1].([]byte))
	}
	return nil
}

// meter starts measuring a phase: this process's CPU always, and the
// router's, Redis' and nats-server's when asked. The returned function ends
// the measurement and fills ph.
func (r *run) meter(router, redis, nats bool) func(ph *Phase) {
	var rm, nm *procMeter
	if router {
		rm = startMeter(r.router.pid())
	}
	if nats {
		nm = startMeter(r.nats.pid())
	}
	redisBefore := -1.0
	if redis {
		redisBefore = r.redisCPU()
	}
	self := selfCPU()
	return func(ph *Phase) {
		ph.ClientCPUSeconds = (selfCPU() - self).Seconds()
		if rm != nil {
			ph.Router, _ = rm.stop()
		}
		if nm != nil {
			ph.NATS, _ = nm.stop()
		}
		if redisBefore >= 0 {
			if after := r.redisCPU(); after >= 0 {
				v := after - redisBefore
				ph.RedisCPUSeconds = &v
			}
		}
	}
}

// redisCPU is redis-server's user+system CPU seconds, or -1.
func (r *run) redisCPU() float64 { return redisCPU(r.rdb) }

// redisCPU is the user+system CPU seconds of the redis-server behind rdb,
// or -1.
func redisCPU(rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		return -1
	}
	sys, err1 := strconv.ParseFloat(infoField(info, "used_cpu_sys"), 64)
	user, err2 := strconv.ParseFloat(infoField(info, "used_cpu_user"), 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return sys + user
}

func infoField(info, name string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

func (r *run) heraldPhases(ctx context.Context) error {
	o := r.o
	// Warm up: connections, the Lua script, the router's catalog.
	warm := makeEvents("warm", min(o.Events, 10*o.Batch), o.PayloadBytes)
	for _, b := range batches(warm, o.Batch) {
		if _, err := r.pub.publish(ctx, b, false); err != nil {
			return fmt.Errorf("warm-up publish: %w", err)
		}
		r.heraldAcked += len(b)
	}
	for _, ev := range warm[:min(len(warm), 2*o.Concurrency)] {
		e := proto.Clone(ev).(*eventv1.CloudEvent)
		e.Id += "-single"
		if _, err := r.pub.publish(ctx, []*eventv1.CloudEvent{e}, false); err != nil {
			return fmt.Errorf("warm-up publish: %w", err)
		}
		r.heraldAcked++
	}

	// (a) one event per call.
	if err := r.singlePhase(ctx, "herald-single", "Herald gRPC Publish, 1 event per call (validate + dedupe + XADD)",
		o.Concurrency, []*publisher{r.pub}); err != nil {
		return err
	}

	// (b) batches.
	bs := batches(makeEvents("batch", o.Events, o.PayloadBytes), o.Batch)
	r.batch0 = bs[0]
	r.progress("herald-batch: %d events, %d per Publish, %d callers", o.Events, o.Batch, o.Concurrency)
	ph := Phase{Name: "herald-batch", Description: fmt.Sprintf("Herald gRPC Publish, %d events per call", o.Batch),
		Events: o.Events, Calls: len(bs), BatchSize: o.Batch, Concurrency: o.Concurrency, LatencyOf: "batch"}
	done := r.meter(true, true, false)
	elapsed, lat, err := runCalls(ctx, len(bs), o.Concurrency, func(ctx context.Context, i int) error {
		cursors, err := r.pub.publish(ctx, bs[i], false)
		if i == 0 {
			r.firstBatch = cursors // read after runCalls returns
		}
		return err
	})
	done(&ph)
	if err != nil {
		return fmt.Errorf("herald-batch: %w", err)
	}
	r.heraldAcked += o.Events
	ph.finish(elapsed, lat)
	r.rep.Phases = append(r.rep.Phases, ph)
	return nil
}

// Raw streams: the same entries the router writes, to keys of their own.
const (
	rawSingleKey = "bench:raw:{single}"
	rawBatchKey  = "bench:raw:{batch}"
	rawWarmKey   = "bench:raw:{warm}"
)

// entries returns the stream entry fields the router writes for events.
func (r *run) entries(prefix string) ([][]any, error) {
	evs := makeEvents(prefix, r.o.Events, r.o.PayloadBytes)
	out := make([][]any, len(evs))
	for i, ev := range evs {
		f, err := eventlog.Encode(ev, r.acct)
		if err != nil {
			return nil, err
		}
		out[i] = f
	}
	return out, nil
}

func xadd(ctx context.Context, c redis.Cmdable, key string, fields []any) *redis.StringCmd {
	// As the router: MAXLEN ~ 1,000,000.
	return c.XAdd(ctx, &redis.XAddArgs{Stream: key, MaxLen: 1_000_000, Approx: true, Values: fields})
}

func (r *run) rawPhases(ctx context.Context) error {
	o := r.o
	entries, err := r.entries("raw")
	if err != nil {
		return err
	}
	for _, e := range entries[:min(len(entries), 4*o.Concurrency)] {
		if err := xadd(ctx, r.rdb, rawWarmKey, e).Err(); err != nil {
			return fmt.Errorf("warm-up XADD: %w", err)
		}
	}

	r.progress("xadd-single: %d XADD, %d clients", o.Events, o.Concurrency)
	ph := Phase{Name: "xadd-single", Description: "raw XADD of the same entries, 1 per call",
		Events: o.Events, Calls: o.Events, BatchSize: 1, Concurrency: o.Concurrency, LatencyOf: "call"}
	done := r.meter(false, true, false)
	elapsed, lat, err := runCalls(ctx, len(entries), o.Concurrency, func(ctx context.Context, i int) error {
		return xadd(ctx, r.rdb, rawSingleKey, entries[i]).Err()
	})
	done(&ph)
	if err != nil {
		return fmt.Errorf("xadd-single: %w", err)
	}
	ph.finish(elapsed, lat)
	r.rep.Phases = append(r.rep.Phases, ph)

	calls := (len(entries) + o.Batch - 1) / o.Batch
	r.progress("xadd-batch: %d XADD in pipelines of %d, %d clients", o.Events, o.Batch, o.Concurrency)
	ph = Phase{Name: "xadd-batch", Description: fmt.Sprintf("raw XADD, pipelines of %d", o.Batch),
		Events: o.Events, Calls: calls, BatchSize: o.Batch, Concurrency: o.Concurrency, LatencyOf: "batch"}
	done = r.meter(false, true, false)
	elapsed, lat, err = runCalls(ctx, calls, o.Concurrency, func(ctx context.Context, i int) error {
		pipe := r.rdb.Pipeline()
		for _, e := range entries[i*o.Batch : min(len(entries), (i+1)*o.Batch)] {
			xadd(ctx, pipe, rawBatchKey, e)
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	done(&ph)
	if err != nil {
		return fmt.Errorf("xadd-batch: %w", err)
	}
	ph.finish(elapsed, lat)
	r.rep.Phases = append(r.rep.Phases, ph)
	return nil
}

func (r *run) natsPhases(ctx context.Context, dir string, env []string) error {
	o := r.o
	r.progress("starting nats-server (%s) with JetStream", o.NATSServer)
	var err error
	if r.nats, err = startNATS(ctx, o.NATSServer, filepath.Join(dir, "nats"), env); err != nil {
		return err
	}
	r.rep.Machine.NATSServer = r.nats.version
	window := o.Batch * o.Concurrency
	r.rep.Settings.NATSWindow = window
	if r.natsC, err = newNATSClient(ctx, r.nats.url, window+1); err != nil {
		return err
	}
	msgsOf := func(prefix string) ([]string, [][]byte, error) {
		evs := makeEvents(prefix, o.Events, o.PayloadBytes)
		ids := make([]string, len(evs))
		msgs := make([][]byte, len(evs))
		for i, ev := range evs {
			b, err := proto.Marshal(ev)
			if err != nil {
				return nil, nil, err
			}
			ids[i], msgs[i] = ev.GetSource()+" "+ev.GetId(), b
		}
		return ids, msgs, nil
	}
	// Warm up.
	ids, msgs, err := msgsOf("nats-warm")
	if err != nil {
		return err
	}
	nwarm := min(len(msgs), 10*o.Batch)
	if _, _, err := r.natsC.publishAsync(ctx, "bench.warm", ids[:nwarm], msgs[:nwarm], window); err != nil {
		return fmt.Errorf("nats warm-up: %w", err)
	}
	r.natsAcked += uint64(nwarm)

	ids, msgs, err = msgsOf("nats-async")
	if err != nil {
		return err
	}
	r.progress("nats-js-async: %d messages, PublishAsync with %d in flight", o.Events, window)
	ph := Phase{Name: "nats-js-async", Description: fmt.Sprintf("JetStream PublishAsync (file storage, Nats-Msg-Id dedupe), %d in flight", window),
		Events: o.Events, Calls: o.Events, BatchSize: 1, Concurrency: 1, LatencyOf: "message (send to ack)"}
	done := r.meter(false, false, true)
	elapsed, lat, err := r.natsC.publishAsync(ctx, "bench.async", ids, msgs, window)
	done(&ph)
	if err != nil {
		return fmt.Errorf("nats-js-async: %w", err)
	}
	r.natsAcked += uint64(len(msgs))
	ph.finish(elapsed, lat)
	r.rep.Phases = append(r.rep.Phases, ph)

	ids, msgs, err = msgsOf("nats-sync")
	if err != nil {
		return err
	}
	r.progress("nats-js-sync: %d messages, one Publish per call, %d callers", o.Events, o.Concurrency)
	ph = Phase{Name: "nats-js-sync", Description: "JetStream Publish (waits for the ack), 1 per call",
		Events: o.Events, Calls: o.Events, BatchSize: 1, Concurrency: o.Concurrency, LatencyOf: "call"}
	done = r.meter(false, false, true)
	elapsed, lat, err = runCalls(ctx, len(msgs), o.Concurrency, func(ctx context.Context, i int) error {
		return r.natsC.publishSync(ctx, "bench.sync", ids[i], msgs[i])
	})
	done(&ph)
	if err != nil {
		return fmt.Errorf("nats-js-sync: %w", err)
	}
	r.natsAcked += uint64(len(msgs))
	ph.finish(elapsed, lat)
	r.rep.Phases = append(r.rep.Phases, ph)
	return nil
}

// heraldLogLen sums the length of every stream of Herald's log.
func (r *run) heraldLogLen(ctx context.Context) (int64, []string, error) {
	var total int64
	var keys []string
	iter := r.rdb.ScanType(ctx, 0, "herald:log:*", 1000, "stream").Iterator()
	for iter.Next(ctx) {
		n, err := r.rdb.XLen(ctx, iter.Val()).Result()
		if err != nil {
			return 0, nil, err
		}
		total += n
		keys = append(keys, iter.Val())
	}
	return total, keys, iter.Err()
}

func (r *run) check(name string, ok bool, format string, args ...any) {
	r.rep.Checks = append(r.rep.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

func (r *run) checks(ctx context.Context) error {
	n, keys, err := r.heraldLogLen(ctx)
	if err != nil {
		return err
	}
	r.check("herald log holds every acknowledged event once", n == int64(r.heraldAcked),
		"%d entries in %s, %d events acknowledged", n, strings.Join(keys, ", "), r.heraldAcked)

	// Re-publish the first batch: every event is a duplicate, with its
	// original cursor, and the log does not grow.
	cursors, err := r.pub.publish(ctx, r.batch0, true)
	switch {
	case err != nil:
		r.check("re-published batch is deduplicated", false, "%v", err)
	case strings.Join(cursors, ",") != strings.Join(r.firstBatch, ","):
		r.check("re-published batch is deduplicated", false, "duplicates answered other cursors than the first publish")
	default:
		after, _, err := r.heraldLogLen(ctx)
		if err != nil {
			return err
		}
		r.check("re-published batch is deduplicated", after == n,
			"%d events answered duplicate=true with their original cursors; log %d -> %d entries", len(cursors), n, after)
	}

	for _, key := range []string{rawSingleKey, rawBatchKey} {
		got, err := r.rdb.XLen(ctx, key).Result()
		if err != nil {
			return err
		}
		r.check("raw stream "+key+" holds every XADD", got == int64(r.o.Events), "%d entries, %d XADD", got, r.o.Events)
	}
	if r.natsC != nil {
		got, err := r.natsC.msgCount(ctx)
		if err != nil {
			return err
		}
		r.check("JetStream stream holds every acknowledged message once", got == r.natsAcked,
			"%d messages, %d acknowledged", got, r.natsAcked)
	}
	return nil
}

func randomToken() string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel = infoFieldSpaced(string(b), "model name")
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if kb, err := strconv.ParseInt(strings.TrimSuffix(infoFieldSpaced(string(b), "MemTotal"), " kB"), 10, 64); err == nil {
			m.MemoryGiB = int((kb + 1<<19) >> 20)
		}
	}
	m.LoadAvgStart = loadAvg()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	return m
}

// infoFieldSpaced reads "name<spaces>: value" lines (/proc/cpuinfo, meminfo).
func infoFieldSpaced(text, name string) string {
	for line := range strings.SplitSeq(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
