package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
)

// UsageOptions configure `herald bench usage`: producers append usage
// records through platform/usage's Appender at a target rate while the
// metering service folds them, and the run measures how long a record
// waits between its append and its counting.
type UsageOptions struct {
	// Rate is the offered records per second, duplicates included, summed
	// over the producers. Default 50,000.
	Rate int
	// Duration is how long the producers append. Default 20s.
	Duration time.Duration
	// Producers is the number of producers, each with an Appender of its
	// own (as each router and edge process has). Default 4.
	Producers int
	// BatchSize is the Appender's records per stream entry. Default 500,
	// the Appender's default.
	BatchSize int
	// FlushEvery is the Appender's longest wait. Default 100ms, the
	// Appender's default.
	FlushEvery time.Duration
	// Duplicates is the fraction of appended records that repeat a record
	// appended shortly before (a redelivery, a replay). Default 0.05; a
	// negative value means none.
	Duplicates float64
	// Tenants, Apps (consumer applications, spread over the tenants) and
	// Types (event types, each published by one of Types/2 producer
	// applications) set the dimensions. Defaults 50, 500, 40.
	Tenants, Apps, Types int
	// ProbeEvery is how often a record is picked to have its lag measured.
	// Default 10ms.
	ProbeEvery time.Duration
	// RedisFsync is Redis' appendfsync. Default "always".
	RedisFsync string
	// RedisAOFRewriteMinSize is Redis' auto-aof-rewrite-min-size. Default
	// redisserver.DefaultAOFRewriteMinSize, as herald dev runs Redis.
	RedisAOFRewriteMinSize string
	// MeteringBin is the metering executable. Required.
	MeteringBin string
	// MeteringEnv is added to metering's environment (HERALD_PPROF_ADDR to
	// profile it, for one).
	MeteringEnv []string
	// NoRaw skips the raw XADD baseline.
	NoRaw bool
	// Timeout bounds the whole run. Default 10 minutes.
	Timeout time.Duration
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

func (o *UsageOptions) defaults() error {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Rate, 50000)
	def(&o.Producers, 4)
	def(&o.BatchSize, 500)
	def(&o.Tenants, 50)
	def(&o.Apps, 500)
	def(&o.Types, 40)
	if o.Duration <= 0 {
		o.Duration = 20 * time.Second
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = 100 * time.Millisecond
	}
	if o.ProbeEvery <= 0 {
		o.ProbeEvery = 10 * time.Millisecond
	}
	switch {
	case o.Duplicates == 0:
		o.Duplicates = 0.05
	case o.Duplicates < 0:
		o.Duplicates = 0
	case o.Duplicates >= 1:
		return errors.New("duplicates: a fraction below 1")
	}
	if err := runDefaults(&o.RedisFsync, &o.RedisAOFRewriteMinSize, &o.Timeout, &o.Progress); err != nil {
		return err
	}
	switch {
	case o.Apps < o.Tenants:
		return errors.New("apps: at least one application per tenant")
	case o.Types < 2:
		return errors.New("types: at least 2")
	case o.MeteringBin == "":
		return errors.New("no metering executable given")
	}
	return nil
}

// UsageReport is the outcome of `herald bench usage`.
type UsageReport struct {
	Machine  Machine       `json:"machine"`
	Settings UsageSettings `json:"settings"`
	Metered  UsageMetered  `json:"metered"`
	Raw      *UsageRaw     `json:"raw_baseline,omitempty"`
	// Timeline has one row per second of the metered phase and its drain.
	Timeline []UsageSecond `json:"timeline"`
	Checks   []Check       `json:"checks"`
	Notes    []string      `json:"notes,omitempty"`
}

// UsageSettings are the options the run used.
type UsageSettings struct {
	Rate                   int     `json:"rate"`
	Duration               string  `json:"duration"`
	Producers              int     `json:"producers"`
	BatchSize              int     `json:"batch_size"`
	FlushEvery             string  `json:"flush_every"`
	Duplicates             float64 `json:"duplicates"`
	Tenants                int     `json:"tenants"`
	Apps                   int     `json:"applications"`
	Types                  int     `json:"event_types"`
	Channels               int     `json:"channels"`
	ProbeEvery             string  `json:"probe_every"`
	RedisFsync             string  `json:"redis_appendfsync"`
	RedisAOFRewriteMinSize string  `json:"redis_aof_rewrite_min_size"`
	RecordBytes            float64 `json:"mean_record_bytes"`
	TargetLagMs            float64 `json:"target_lag_ms"`
	TargetRate             int     `json:"target_rate"`
	MeteringFold           string  `json:"metering_fold"`
}

// UsageMetered is the phase with metering folding.
type UsageMetered struct {
	// Appended counts the records handed to the Appenders (Add), the
	// duplicates included; Unique and Duplicates split them.
	Appended   int `json:"appended"`
	Unique     int `json:"unique"`
	Duplicates int `json:"duplicates"`
	// Seconds is how long the producers appended; AppendedPerS the rate
	// they achieved (the offered rate is Settings.Rate).
	Seconds      float64 `json:"seconds"`
	AppendedPerS float64 `json:"appended_per_second"`
	// DrainSeconds runs from the end of the appends to the moment the usage
	// stream was empty (every entry folded and deleted).
	DrainSeconds float64 `json:"drain_seconds"`
	// FoldedPerS is Appended over Seconds + DrainSeconds.
	FoldedPerS float64 `json:"folded_per_second"`
	// Lag is from a record's Add to the moment its seen marker (set in the
	// same script as its counters) is visible, over the probes.
	LagSamples int     `json:"lag_samples"`
	LagP50Ms   float64 `json:"lag_p50_ms"`
	LagP99Ms   float64 `json:"lag_p99_ms"`
	LagMaxMs   float64 `json:"lag_max_ms"`
	// PendingFields are the counter fields metering had folded but not yet
	// rolled up into the quarter-hour, hour and day buckets when the checks
	// ran (they count in the checks, as metering's reads add them).
	PendingFields int `json:"pending_fields"`
	// MaxBacklogEntries is the most entries the usage stream held (appended,
	// not yet folded; the fold deletes what it counted).
	MaxBacklogEntries int64 `json:"max_backlog_entries"`
	// RedisCommands is Redis' INFO commandstats over the phase, the
	// commands the fold script calls included, most time first.
	RedisCommands []RedisCommand `json:"redis_commands,omitempty"`
	// Metering is the metering process's usage over the phase and drain.
	Metering         *procUsage `json:"metering,omitempty"`
	MeteringUsPerRec float64    `json:"metering_cpu_us_per_record"`
	RedisCPU         *float64   `json:"redis_cpu_seconds,omitempty"`
	RedisUsPerRec    float64    `json:"redis_cpu_us_per_record"`
	ClientCPU        float64    `json:"client_cpu_seconds"`
}

// RedisCommand is one command's INFO commandstats over a phase.
type RedisCommand struct {
	Name  string  `json:"name"`
	Calls int64   `json:"calls"`
	Usec  int64   `json:"usec"`
	PerUs float64 `json:"usec_per_call"`
}

// commandStats reads INFO commandstats: calls and usec per command.
func commandStats(ctx context.Context, rdb *redis.Client) map[string][2]int64 {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil
	}
	out := map[string][2]int64{}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		var v [2]int64
		for kv := range strings.SplitSeq(rest, ",") {
			k, val, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseInt(val, 10, 64)
			switch k {
			case "calls":
				v[0] = n
			case "usec":
				v[1] = n
			}
		}
		out[name] = v
	}
	return out
}

// commandDelta is what ran between two commandStats, most time first.
func commandDelta(before, after map[string][2]int64) []RedisCommand {
	var out []RedisCommand
	for name, a := range after {
		b := before[name]
		if calls := a[0] - b[0]; calls > 0 {
			c := RedisCommand{Name: name, Calls: calls, Usec: a[1] - b[1]}
			c.PerUs = float64(c.Usec) / float64(calls)
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(x, y RedisCommand) int { return int(y.Usec - x.Usec) })
	return out
}

// UsageRaw is the baseline: the same entries XADDed with no consumer.
type UsageRaw struct {
	Records       int      `json:"records"`
	Entries       int      `json:"entries"`
	Concurrency   int      `json:"concurrency"`
	Seconds       float64  `json:"seconds"`
	RecordsPerS   float64  `json:"records_per_second"`
	P50Ms         float64  `json:"xadd_p50_ms"`
	P99Ms         float64  `json:"xadd_p99_ms"`
	RedisCPU      *float64 `json:"redis_cpu_seconds,omitempty"`
	RedisUsPerRec float64  `json:"redis_cpu_us_per_record"`
	ClientCPU     float64  `json:"client_cpu_seconds"`
}

// UsageSecond is one second of the metered phase.
type UsageSecond struct {
	Second int `json:"second"`
	// Appended are the records added in that second.
	Appended int `json:"appended"`
	// BacklogEntries is the most stream entries waiting in that second.
	BacklogEntries int64 `json:"backlog_entries"`
	// LagMaxMs is the largest lag of the probes taken in that second.
	LagMaxMs float64 `json:"lag_max_ms"`
	Probes   int     `json:"probes"`
}

// usageChannels are the delivery channels records are spread over.
var usageChannels = []string{"stream", "subscribe", "sse", "poll", "websub", "webhook", "bridge"}

// usageDims are the dimensions records draw from.
type usageDims struct {
	apps  []usageApp
	types []usageType
}

type usageApp struct {
	id, tenant string
	subs       []usageSub
}

type usageSub struct{ id, channel string }

type usageType struct{ name, producer, source string }

func newUsageDims(o UsageOptions) *usageDims {
	r := rand.New(rand.NewPCG(1, 2))
	d := &usageDims{}
	for i := range o.Apps {
		a := usageApp{id: fmt.Sprintf("app_bench%04d", i), tenant: fmt.Sprintf("tenant-%03d", i%o.Tenants)}
		// One to three subscriptions, each on a channel of its own kind.
		for j := range 1 + r.IntN(3) {
			a.subs = append(a.subs, usageSub{id: fmt.Sprintf("sub_bench%04d_%d", i, j), channel: usageChannels[r.IntN(len(usageChannels))]})
		}
		d.apps = append(d.apps, a)
	}
	producers := max(1, o.Types/2)
	for i := range o.Types {
		p := i % producers
		d.types = append(d.types, usageType{
			name: fmt.Sprintf("bench.domain%d.thing%d.happened", p, i), producer: fmt.Sprintf("app_producer%03d", p),
			source: fmt.Sprintf("https://producer%d.example/events", p),
		})
	}
	return d
}

// usageCell is one counter's dimensions.
type usageCell struct{ tenant, app, producer, typ, channel string }

// usageGen makes one producer's records: consumers and types drawn with a
// Zipf law (a few large consumers and types, a long tail), unique ids
// (usage.DeliveryID of a fresh event id), and duplicates of recent records.
type usageGen struct {
	d          *usageDims
	r          *rand.Rand
	apps, typs *rand.Zipf
	prefix     string
	n          int
	dupFrac    float64
	recent     []*meteringv1.UsageRecord // ring of recent unique records
	next       int
	cells      map[usageCell][2]int64 // unique events and bytes per cell
	unique     int
	dups       int
}

func newUsageGen(d *usageDims, seed uint64, prefix string, dupFrac float64) *usageGen {
	r := rand.New(rand.NewPCG(seed, seed*7+3))
	return &usageGen{
		d: d, r: r, prefix: prefix, dupFrac: dupFrac,
		apps:  rand.NewZipf(r, 1.1, 2, uint64(len(d.apps)-1)),
		typs:  rand.NewZipf(r, 1.1, 2, uint64(len(d.types)-1)),
		cells: map[usageCell][2]int64{},
	}
}

// record returns the next record and whether it is a duplicate.
func (g *usageGen) record(now time.Time) (*meteringv1.UsageRecord, bool) {
	if len(g.recent) > 0 && g.r.Float64() < g.dupFrac {
		g.dups++
		return g.recent[g.r.IntN(len(g.recent))], true
	}
	a := g.d.apps[g.apps.Uint64()]
	s := a.subs[g.r.IntN(len(a.subs))]
	t := g.d.types[g.typs.Uint64()]
	g.n++
	dl := usage.Delivery{
		Tenant: a.tenant, Application: a.id, Producer: t.producer, Subscription: s.id,
		EventSource: t.source, EventID: g.prefix + strconv.Itoa(g.n), EventType: t.name, Channel: s.channel,
		// Data sizes from 100 bytes to about 4 KiB, most under 1 KiB;
		// publish-to-delivery latency from 1 ms, most under 100 ms.
		Bytes:     100 + int64(g.r.ExpFloat64()*600)%4000,
		Published: now.Add(-time.Duration(1+g.r.ExpFloat64()*30) * time.Millisecond),
		Attempt:   1,
	}
	rec := dl.Record(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, now)
	c := usageCell{a.tenant, a.id, t.producer, t.name, s.channel}
	v := g.cells[c]
	v[0]++
	v[1] += rec.Bytes
	g.cells[c] = v
	g.unique++
	const ring = 4096
	if len(g.recent) < ring {
		g.recent = append(g.recent, rec)
	} else {
		g.recent[g.next] = rec
		g.next = (g.next + 1) % ring
	}
	return rec, false
}

// lagProbe is a record whose lag is measured.
type lagProbe struct {
	id    string // the record's id: counted once in a seen set of metering's (usage.SeenSetKey)
	added time.Time
}

// usageRun holds what the phases share.
type usageRun struct {
	o        UsageOptions
	rep      *UsageReport
	rdb      *redis.Client
	metering *child
	metrics  string // metering's /metrics URL
	dims     *usageDims
	progress func(format string, args ...any)

	gens  []*usageGen // every generator used for the stream, warm-up included
	began time.Time   // before the first record was made
}

// RunUsage runs `herald bench usage` and returns the report. With a failed
// correctness check it returns the report and ErrCheckFailed.
func RunUsage(parent context.Context, o UsageOptions) (*UsageReport, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	r := &usageRun{o: o, dims: newUsageDims(o), rep: &UsageReport{Machine: machine(), Settings: UsageSettings{
		Rate: o.Rate, Duration: o.Duration.String(), Producers: o.Producers, BatchSize: o.BatchSize, FlushEvery: o.FlushEvery.String(),
		Duplicates: o.Duplicates, Tenants: o.Tenants, Apps: o.Apps, Types: o.Types, Channels: len(usageChannels),
		ProbeEvery: o.ProbeEvery.String(), RedisFsync: o.RedisFsync, RedisAOFRewriteMinSize: o.RedisAOFRewriteMinSize, TargetLagMs: 1000, TargetRate: 50000,
		MeteringFold: "metering's fold: XREADGROUP of up to 256 entries, one Lua script per up to 4,096 records (seen-set SMISMEMBER/SADD per shard, one HINCRBY per distinct pending-minute field and quota total, XACK, XDEL); a rollup of closed minutes into the buckets",
	}}}
	r.progress = func(format string, args ...any) { fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...) }
	r.began = time.Now()
	dir, err := os.MkdirTemp("", "herald-bench-usage-")
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
		return r.rep, withChildLogs(err, r.metering)
	}
	for _, c := range r.rep.Checks {
		if !c.OK {
			return r.rep, ErrCheckFailed
		}
	}
	return r.rep, nil
}

func (r *usageRun) all(ctx context.Context, dir string) error {
	o := r.o
	r.progress("starting redis-server (AOF, appendfsync %s)", o.RedisFsync)
	srv, rdb, version, err := startRedis(ctx, dir, o.RedisFsync, o.RedisAOFRewriteMinSize, 2*o.Producers+8, 30*time.Second)
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
	stopRegistry, err := startRegistryIn(ctx, dir, common, r.progress)
	if err != nil {
		return err
	}
	defer stopRegistry()
	r.progress("starting metering (%s) on %s", o.MeteringBin, common.MeteringAddr)
	env := append(routerEnv(common, nil), o.MeteringEnv...)
	if r.metering, err = startChild("metering", o.MeteringBin, nil, env, filepath.Join(dir, "metering.log")); err != nil {
		return err
	}
	defer r.metering.stop(20 * time.Second)
	if err := waitChild(ctx, r.metering, common.MeteringAddr); err != nil {
		return err
	}
	r.metrics = rpc.BaseURL(common.MeteringAddr) + "/metrics"

	// Warm-up: the fold script, the connections, metering's first reads.
	r.progress("warming up")
	if err := r.warmUp(ctx); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	r.progress("metered: %d records/s for %v from %d producers (%.0f%% duplicates)", o.Rate, o.Duration, o.Producers, 100*o.Duplicates)
	if err := r.metered(ctx); err != nil {
		return err
	}
	r.progress("checking the counters")
	if err := r.checks(ctx); err != nil {
		return err
	}
	if !o.NoRaw {
		r.progress("raw baseline: %d records as XADD of %d-record entries, no metering", r.rep.Metered.Appended, o.BatchSize)
		if err := r.raw(ctx); err != nil {
			return err
		}
	}
	return nil
}

// warmUp appends a few batches and waits until they are folded.
func (r *usageRun) warmUp(ctx context.Context) error {
	g := newUsageGen(r.dims, 999, "warm-", 0)
	r.gens = append(r.gens, g)
	now := time.Now()
	recs := make([]*meteringv1.UsageRecord, 4*r.o.BatchSize)
	for i := range recs {
		recs[i], _ = g.record(now)
	}
	if err := usage.AppendBatch(ctx, r.rdb, r.o.BatchSize, recs...); err != nil {
		return err
	}
	_, err := r.waitEmpty(ctx, time.Minute)
	return err
}

// waitEmpty waits until the usage stream is empty: everything appended was
// folded (the fold deletes the entries it counted). It returns when.
func (r *usageRun) waitEmpty(ctx context.Context, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for {
		n, err := r.rdb.XLen(ctx, usage.StreamKey).Result()
		if err != nil {
			return time.Time{}, err
		}
		if n == 0 {
			return time.Now(), nil
		}
		if r.metering.exited() {
			return time.Time{}, errors.New("metering exited")
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%d usage entries still unfolded after %v", n, limit)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// metered runs the producers at the offered rate while sampling the lag,
// then waits for the drain.
func (r *usageRun) metered(ctx context.Context) error {
	o := r.o
	m := &r.rep.Metered
	mm := startMeter(r.metering.pid())
	redisBefore := redisCPU(r.rdb)
	statsBefore := commandStats(ctx, r.rdb)
	self := selfCPU()

	sampler := newLagSampler(r.rdb)
	sctx, stopSampler := context.WithCancel(ctx)
	samplerDone := make(chan struct{})
	go func() { sampler.run(sctx); close(samplerDone) }()
	defer func() { stopSampler(); <-samplerDone }()

	// Producers: each an Appender (run as router and edge run theirs) fed
	// on an absolute schedule, rate/producers records per second.
	var wantProbe atomic.Bool
	start := time.Now()
	perSecond := make([]atomic.Int64, int(o.Duration/time.Second)+2)
	actx, stopAppenders := context.WithCancel(context.WithoutCancel(ctx))
	var appenders errgroup.Group
	var producers errgroup.Group
	gens := make([]*usageGen, o.Producers)
	per := float64(o.Rate) / float64(o.Producers)
	for p := range o.Producers {
		gens[p] = newUsageGen(r.dims, uint64(p+1), fmt.Sprintf("p%d-", p), o.Duplicates)
		app := usage.NewAppender(r.rdb, usage.AppenderOptions{FlushEvery: o.FlushEvery, BatchSize: o.BatchSize})
		appenders.Go(func() error { return app.Run(actx) })
		g := gens[p]
		producers.Go(func() error {
			sent := 0
			buf := make([]*meteringv1.UsageRecord, 0, 256)
			for {
				el := time.Since(start)
				if el >= o.Duration {
					return nil
				}
				due := int(el.Seconds() * per)
				for sent < due {
					now := time.Now()
					buf = buf[:0]
					var pr *lagProbe
					for len(buf) < cap(buf) && sent < due {
						rec, dup := g.record(now)
						if !dup && pr == nil && wantProbe.CompareAndSwap(true, false) {
							pr = &lagProbe{id: rec.Id}
						}
						buf = append(buf, rec)
						sent++
					}
					if pr != nil {
						pr.added = time.Now()
					}
					if err := app.Add(ctx, buf...); err != nil {
						return err
					}
					if pr != nil {
						sampler.add(*pr)
					}
					perSecond[min(int(time.Since(start)/time.Second), len(perSecond)-1)].Add(int64(len(buf)))
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	// Ask for a probe every ProbeEvery.
	pctx, stopProbes := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(o.ProbeEvery)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
				wantProbe.Store(true)
			}
		}
	}()
	perr := producers.Wait()
	end := time.Now()
	stopProbes()
	stopAppenders() // each flushes what it holds before returning
	_ = appenders.Wait()
	if perr != nil {
		return fmt.Errorf("producers: %w", perr)
	}
	r.gens = append(r.gens, gens...)
	r.progress("appended for %v; waiting for metering to fold the rest", end.Sub(start).Round(time.Millisecond))
	emptyAt, err := r.waitEmpty(ctx, 5*time.Minute)
	if err != nil {
		return err
	}
	if err := sampler.waitAll(ctx, time.Minute); err != nil {
		return err
	}
	stopSampler()
	<-samplerDone

	m.Metering, _ = mm.stop()
	if after := redisCPU(r.rdb); redisBefore >= 0 && after >= 0 {
		v := after - redisBefore
		m.RedisCPU = &v
	}
	m.ClientCPU = (selfCPU() - self).Seconds()
	m.RedisCommands = commandDelta(statsBefore, commandStats(ctx, r.rdb))
	for _, g := range gens {
		m.Unique += g.unique
		m.Duplicates += g.dups
	}
	m.Appended = m.Unique + m.Duplicates
	m.Seconds = end.Sub(start).Seconds()
	m.AppendedPerS = float64(m.Appended) / m.Seconds
	m.DrainSeconds = max(0, emptyAt.Sub(end).Seconds())
	m.FoldedPerS = float64(m.Appended) / (m.Seconds + m.DrainSeconds)
	if m.Metering != nil {
		m.MeteringUsPerRec = m.Metering.CPUSeconds * 1e6 / float64(m.Appended)
	}
	if m.RedisCPU != nil {
		m.RedisUsPerRec = *m.RedisCPU * 1e6 / float64(m.Appended)
	}
	lags := sampler.lags()
	all := make([]time.Duration, 0, len(lags))
	for _, l := range lags {
		all = append(all, l.lag)
	}
	slices.Sort(all)
	m.LagSamples = len(all)
	m.LagP50Ms, m.LagP99Ms = percentile(all, 50), percentile(all, 99)
	if len(all) > 0 {
		m.LagMaxMs = float64(all[len(all)-1]) / float64(time.Millisecond)
	}
	m.MaxBacklogEntries = sampler.maxBacklog()
	// The timeline, one row per second.
	seconds := int(emptyAt.Sub(start)/time.Second) + 1
	r.rep.Timeline = make([]UsageSecond, seconds)
	for i := range r.rep.Timeline {
		r.rep.Timeline[i].Second = i
		if i < len(perSecond) {
			r.rep.Timeline[i].Appended = int(perSecond[i].Load())
		}
	}
	for _, l := range lags {
		if i := int(l.at.Sub(start) / time.Second); i >= 0 && i < seconds {
			row := &r.rep.Timeline[i]
			row.Probes++
			row.LagMaxMs = max(row.LagMaxMs, float64(l.lag)/float64(time.Millisecond))
		}
	}
	for _, b := range sampler.backlogs() {
		if i := int(b.at.Sub(start) / time.Second); i >= 0 && i < seconds {
			r.rep.Timeline[i].BacklogEntries = max(r.rep.Timeline[i].BacklogEntries, b.entries)
		}
	}
	// The mean encoded record, from one generator's batch.
	if b, err := proto.Marshal(&meteringv1.UsageRecordBatch{Records: gens[0].recent}); err == nil && len(gens[0].recent) > 0 {
		r.rep.Settings.RecordBytes = float64(len(b)) / float64(len(gens[0].recent))
	}
	return nil
}

// lagSampler polls the seen markers of probes and the usage stream's
// length.
type lagSampler struct {
	rdb *redis.Client

	mu      sync.Mutex
	waiting []lagProbe
	done    []lagSample
	backlog []backlogSample
}

type lagSample struct {
	at  time.Time // when the probe was added
	lag time.Duration
}

type backlogSample struct {
	at      time.Time
	entries int64
}

func newLagSampler(rdb *redis.Client) *lagSampler { return &lagSampler{rdb: rdb} }

func (s *lagSampler) add(p lagProbe) {
	s.mu.Lock()
	s.waiting = append(s.waiting, p)
	s.mu.Unlock()
}

// pollBatch bounds the markers looked up per poll, oldest first, so that a
// large backlog of probes does not load Redis: the fold goes in stream
// order, so the oldest are the next to be counted.
const pollBatch = 256

// run polls every 5 ms (each probe's marker) and every 100 ms (the stream's
// length) until ctx ends.
func (s *lagSampler) run(ctx context.Context) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	var lastLen time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(lastLen) >= 100*time.Millisecond {
			lastLen = time.Now()
			if n, err := s.rdb.XLen(ctx, usage.StreamKey).Result(); err == nil {
				s.mu.Lock()
				s.backlog = append(s.backlog, backlogSample{at: lastLen, entries: n})
				s.mu.Unlock()
			}
		}
		_ = s.poll(ctx)
	}
}

func (s *lagSampler) poll(ctx context.Context) error {
	s.mu.Lock()
	batch := slices.Clone(s.waiting[:min(len(s.waiting), pollBatch)])
	s.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	// The fold marks a record in its fold day's seen set: today's, or
	// yesterday's just after midnight. One SMISMEMBER per set.
	at := time.Now()
	byKey := map[string][]string{}
	for _, p := range batch {
		for _, day := range []time.Time{at, at.Add(-24 * time.Hour)} {
			k := usage.SeenSetKey(day, p.id)
			byKey[k] = append(byKey[k], p.id)
		}
	}
	pipe := s.rdb.Pipeline()
	cmds := map[string]*redis.BoolSliceCmd{}
	for k, ids := range byKey {
		args := make([]any, len(ids))
		for i, id := range ids {
			args[i] = id
		}
		cmds[k] = pipe.SMIsMember(ctx, k, args...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	now := time.Now()
	counted := map[string]bool{}
	for k, c := range cmds {
		for i, ok := range c.Val() {
			if ok {
				counted[byKey[k][i]] = true
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waiting = slices.DeleteFunc(s.waiting, func(p lagProbe) bool {
		if counted[p.id] {
			s.done = append(s.done, lagSample{at: p.added, lag: now.Sub(p.added)})
			return true
		}
		return false
	})
	return nil
}

// waitAll waits until every probe was seen counted.
func (s *lagSampler) waitAll(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		s.mu.Lock()
		n := len(s.waiting)
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d lag probes never counted", n)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *lagSampler) lags() []lagSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.done)
}

func (s *lagSampler) backlogs() []backlogSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.backlog)
}

func (s *lagSampler) maxBacklog() int64 {
	var m int64
	for _, b := range s.backlogs() {
		m = max(m, b.entries)
	}
	return m
}

// rawUsageKey is the baseline's stream: nobody consumes it.
const rawUsageKey = "bench:raw:{usage}"

// raw XADDs as many records as the metered phase appended, in entries of
// BatchSize records encoded as the Appender encodes them, from Producers
// clients, with nothing folding: the rate Redis alone sustains.
func (r *usageRun) raw(ctx context.Context) error {
	o := r.o
	total := r.rep.Metered.Appended
	// A pool of entries (at most 200, cycled) from a generator of the
	// same spread.
	g := newUsageGen(r.dims, 4242, "raw-", o.Duplicates)
	now := time.Now()
	var pool [][]byte
	for range min(200, (total+o.BatchSize-1)/o.BatchSize) {
		recs := make([]*meteringv1.UsageRecord, o.BatchSize)
		for i := range recs {
			recs[i], _ = g.record(now)
		}
		b, err := proto.Marshal(&meteringv1.UsageRecordBatch{Records: recs})
		if err != nil {
			return err
		}
		pool = append(pool, b)
	}
	entries := (total + o.BatchSize - 1) / o.BatchSize
	rw := &UsageRaw{Records: entries * o.BatchSize, Entries: entries, Concurrency: o.Producers}
	redisBefore := redisCPU(r.rdb)
	self := selfCPU()
	elapsed, lat, err := runCalls(ctx, entries, o.Producers, func(ctx context.Context, i int) error {
		return r.rdb.XAdd(ctx, &redis.XAddArgs{Stream: rawUsageKey, MaxLen: usage.MaxLen, Approx: true,
			Values: []any{usage.FieldBatch, pool[i%len(pool)]}}).Err()
	})
	if err != nil {
		return fmt.Errorf("raw XADD: %w", err)
	}
	rw.ClientCPU = (selfCPU() - self).Seconds()
	if after := redisCPU(r.rdb); redisBefore >= 0 && after >= 0 {
		v := after - redisBefore
		rw.RedisCPU = &v
		rw.RedisUsPerRec = v * 1e6 / float64(rw.Records)
	}
	slices.Sort(lat)
	rw.Seconds = elapsed.Seconds()
	rw.RecordsPerS = float64(rw.Records) / rw.Seconds
	rw.P50Ms, rw.P99Ms = percentile(lat, 50), percentile(lat, 99)
	r.rep.Raw = rw
	n, err := r.rdb.XLen(ctx, rawUsageKey).Result()
	if err != nil {
		return err
	}
	r.check("raw stream holds every XADD", n == int64(entries), "%d entries in %s, %d XADD", n, rawUsageKey, entries)
	return r.rdb.Del(ctx, rawUsageKey).Err()
}

func (r *usageRun) check(name string, ok bool, format string, args ...any) {
	r.rep.Checks = append(r.rep.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// checks compares metering's buckets with what the generators appended:
// every unique record counted once in each bucket kind (minute,
// quarter-hour, hour, day), in its own cell, with its bytes; duplicates
// counted as duplicates by metering and nowhere in the buckets.
func (r *usageRun) checks(ctx context.Context) error {
	want := map[usageCell][2]int64{}
	var unique, dups int64
	for _, g := range r.gens {
		for c, v := range g.cells {
			w := want[c]
			w[0] += v[0]
			w[1] += v[1]
			want[c] = w
		}
		unique += int64(g.unique)
		dups += int64(g.dups)
	}
	delivered := strconv.Itoa(int(meteringv1.UsageMetric_USAGE_METRIC_DELIVERED))
	// Every bucket the records' times can fall in, and the minutes' pending
	// hashes (counts metering folded but has not rolled up into the buckets
	// yet, which its reads add), read in one MULTI: a rollup moves counts
	// from a pending hash to the buckets atomically.
	const p = "herald:{usage}:"
	kinds := []struct{ prefix, name, layout string }{
		{"m", "minute", "200601021504"}, {"q", "quarter-hour", "200601021504"}, {"h", "hour", "2006010215"}, {"d", "day", "20060102"}}
	keys := map[string][]string{}
	for t := r.began.UTC().Truncate(time.Minute).Add(-time.Minute); t.Before(time.Now().Add(time.Minute)); t = t.Add(time.Minute) {
		for _, k := range kinds {
			b := t
			if k.prefix == "q" {
				b = t.Truncate(15 * time.Minute)
			}
			key := p + k.prefix + ":" + b.Format(k.layout)
			if !slices.Contains(keys[k.prefix], key) {
				keys[k.prefix] = append(keys[k.prefix], key)
			}
		}
		keys["p"] = append(keys["p"], p+"p:"+t.Format("200601021504"))
	}
	hashes := map[string][]*redis.MapStringStringCmd{}
	if _, err := r.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		for prefix, ks := range keys {
			for _, k := range ks {
				hashes[prefix] = append(hashes[prefix], pipe.HGetAll(ctx, k))
			}
		}
		return nil
	}); err != nil {
		return err
	}
	pendingFields := 0
	for _, c := range hashes["p"] {
		pendingFields += len(c.Val())
	}
	r.rep.Metered.PendingFields = pendingFields
	for _, kind := range kinds {
		got := map[usageCell][2]int64{}
		var events, other int64
		for _, c := range append(slices.Clone(hashes[kind.prefix]), hashes["p"]...) {
			for f, v := range c.Val() {
				if strings.HasPrefix(f, "l|") {
					continue // a pending latency count
				}
				parts := strings.Split(f, "|")
				n, err := strconv.ParseInt(v, 10, 64)
				if len(parts) != 7 || err != nil {
					other++
					continue
				}
				if parts[6] != delivered {
					other += n
					continue
				}
				c := usageCell{parts[1], parts[2], parts[3], parts[4], parts[5]}
				s := got[c]
				if parts[0] == "c" {
					s[0] += n
					events += n
				} else {
					s[1] += n
				}
				got[c] = s
			}
		}
		bad := 0
		var example string
		for c, w := range want {
			if got[c] != w {
				bad++
				example = fmt.Sprintf("; e.g. %v: counted %v, appended %v", c, got[c], w)
			}
		}
		for c := range got {
			if _, ok := want[c]; !ok {
				bad++
				example = fmt.Sprintf("; e.g. %v counted but never appended", c)
			}
		}
		r.check(kind.name+" buckets count every unique record once", events == unique && other == 0,
			"%d DELIVERED events counted, %d unique records appended, warm-up included (%d duplicates); %d other counts", events, unique, dups, other)
		r.check(kind.name+" buckets match cell by cell (events and bytes)", bad == 0, "%d of %d cells differ%s", bad, len(want), example)
	}
	// Metering's own counters: every record folded once or dropped as a
	// duplicate.
	folded, dupSeen, err := r.meteringCounters(ctx)
	if err != nil {
		r.check("metering counted duplicates as duplicates", false, "reading %s: %v", r.metrics, err)
		return nil
	}
	r.check("metering counted duplicates as duplicates", folded == unique && dupSeen == dups,
		"herald_metering_records_folded_total %d (unique %d), herald_metering_records_duplicate_total %d (duplicates appended %d)", folded, unique, dupSeen, dups)
	return nil
}

// meteringCounters reads metering's folded and duplicate record counters.
func (r *usageRun) meteringCounters(ctx context.Context) (folded, dups int64, err error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.metrics, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		f, perr := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if perr != nil {
			continue
		}
		switch name {
		case "herald_metering_records_folded_total":
			folded = int64(f)
		case "herald_metering_records_duplicate_total":
			dups = int64(f)
		}
	}
	return folded, dups, sc.Err()
}
