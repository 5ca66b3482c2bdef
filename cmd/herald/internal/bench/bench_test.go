package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/metering"
	"github.com/heraldmesh/herald/services/router"
	"github.com/redis/go-redis/v9"
)

// routerChildEnv makes the test binary run as the router, so that the test
// exercises the separate-process path without building ./bin/router.
const routerChildEnv = "HERALD_BENCH_TEST_ROUTER_CHILD"

// edgeChildEnv makes the test binary run as the edge.
const edgeChildEnv = "HERALD_BENCH_TEST_EDGE_CHILD"

// meteringChildEnv makes the test binary run as metering.
const meteringChildEnv = "HERALD_BENCH_TEST_METERING_CHILD"

// loaderChildEnv makes the test binary run as a fan-out load client. Its
// HERALD_ prefix keeps it out of the router's and the edge's environment.
const loaderChildEnv = "HERALD_BENCH_TEST_LOADER_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(loaderChildEnv) == "1" {
		if err := RunLoader(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "loader:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(edgeChildEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		err := edge.RunFromEnv(ctx)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "edge:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(meteringChildEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		err := metering.RunFromEnv(ctx)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "metering:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(routerChildEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		config.WarnUnknownVars(nil, []string{"HERALD_ROUTER_"}, router.EnvVars...) // as services/router/cmd/router
		svc, err := router.New(router.Config{Common: config.FromEnv()})
		if err == nil {
			err = svc.Run(ctx)
		}
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "router:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRunSmall runs `herald bench publish` with tiny numbers: the plumbing
// (processes, phases, /proc readings), the caller-scaling rows (130
// callers: two gRPC connections), the latency phase through the edge and
// the correctness checks.
func TestRunSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Events: 200, Batch: 20, Concurrency: 4, PayloadBytes: 200,
		RouterBin: exe, RouterEnv: []string{routerChildEnv + "=1"},
		Callers: []int{1, 3, 130},
		EdgeBin: exe, EdgeEnv: []string{edgeChildEnv + "=1"}, LatencyRate: 50, LatencyDuration: time.Second,
		Timeout: 60 * time.Second,
	}
	// The JetStream phases are part of the comparison: nats-server must be
	// installed (.ci/run installs Debian's package).
	p, err := FindNATSServer()
	if err != nil {
		t.Fatalf("the JetStream phases need it: %v", err)
	}
	o.NATSServer = p
	var progress bytes.Buffer
	o.Progress = &progress
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	want := []string{"herald-single", "herald-batch", "herald-single-c1", "herald-single-c3", "herald-single-c130",
		"xadd-single", "xadd-batch", "nats-js-async", "nats-js-sync", "latency"}
	var got []string
	for _, p := range rep.Phases {
		got = append(got, p.Name)
		events := 200
		if p.Name == "latency" {
			events = 50
			// (An event may arrive before its publish call returns: the
			// delivery p50 can be below the call's, so they are not compared.)
			if p.Edge == nil || p.Edge.PeakRSSMiB <= 0 || p.AckP50Ms <= 0 || p.AckP99Ms < p.AckP50Ms {
				t.Errorf("latency phase: %+v", p)
			}
		}
		if p.Events != events || p.EventsPerS <= 0 || p.P50Ms <= 0 || p.P99Ms < p.P50Ms {
			t.Errorf("phase %s: %+v", p.Name, p)
		}
		if strings.HasPrefix(p.Name, "herald-single-c") && p.Concurrency != map[string]int{"herald-single-c1": 1, "herald-single-c3": 3, "herald-single-c130": 130}[p.Name] {
			t.Errorf("phase %s: %d callers", p.Name, p.Concurrency)
		}
		if (strings.HasPrefix(p.Name, "herald-") || p.Name == "latency") && (p.Router == nil || p.Router.PeakRSSMiB <= 0 || p.RedisCPUSeconds == nil) {
			t.Errorf("phase %s has no router or redis usage: %+v", p.Name, p)
		}
		if strings.HasPrefix(p.Name, "nats-") && p.NATS == nil {
			t.Errorf("phase %s has no nats-server usage", p.Name)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("phases %v, want %v", got, want)
	}
	if len(rep.Checks) < 5 {
		t.Errorf("only %d checks: %+v", len(rep.Checks), rep.Checks)
	}
	// The targets the run has phases for: three ratios and the latency
	// (no 512-caller row, no RSS target).
	if len(rep.Goals) != 4 || rep.Goals[3].Name != "publish to SSE p50 <= 2 ms and p99 <= 10 ms" {
		t.Errorf("goals: %+v", rep.Goals)
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s", c.Name, c.Detail)
		}
	}
	if rep.Settings.Principal == "" {
		t.Error("no principal reported")
	}
	var table, js bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	t.Logf("publishing as: %s\n%s", rep.Settings.Principal, table.String())
}

// TestRunWebhooksSmall runs `herald bench webhooks` with tiny numbers: the
// processes, the receivers, the phases and the checks (every event to every
// endpoint, signatures, usage counted once).
func TestRunWebhooksSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := WebhookOptions{
		Events: 100, FanoutEvents: 20, Endpoints: 5, SlowSleep: 500 * time.Millisecond, Rate: 200, RateDuration: time.Second,
		RouterBin: exe, EdgeBin: exe, Timeout: 2 * time.Minute,
	}
	var progress bytes.Buffer
	o.Progress = &progress
	// Both children are this binary: a variable picks the role.
	o.RouterEnvForTest = []string{routerChildEnv + "=1"}
	o.EdgeEnv = []string{edgeChildEnv + "=1"}
	rep, err := RunWebhooks(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	want := []string{"1-endpoint", "5-endpoints", "5-endpoints+slow", "5-endpoints-again", "steady-200/s"}
	var got []string
	for _, p := range rep.Phases {
		got = append(got, p.Name)
		if p.Deliveries != p.Published*min(p.Endpoints, 5) || p.DeliveriesPerS <= 0 || p.P99Ms < p.P50Ms || p.Edge == nil || p.Edge.PeakRSSMiB <= 0 {
			t.Errorf("phase %s: %+v", p.Name, p)
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("phases %v, want %v", got, want)
	}
	if len(rep.Checks) != 3*len(want) {
		t.Errorf("%d checks: %+v", len(rep.Checks), rep.Checks)
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s", c.Name, c.Detail)
		}
	}
	if rep.Compare == nil {
		t.Error("no slow-endpoint comparison")
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
}

// TestRunUsageSmall runs `herald bench usage` with tiny numbers: metering
// as a child process, the producers, the lag probes, the raw baseline and
// the checks (every unique record counted once, cell by cell, duplicates
// not counted).
func TestRunUsageSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := UsageOptions{
		Rate: 2000, Duration: 2 * time.Second, Producers: 2, BatchSize: 50, Duplicates: 0.1,
		Tenants: 5, Apps: 20, Types: 6, MeteringBin: exe, MeteringEnv: []string{meteringChildEnv + "=1"},
		Timeout: 2 * time.Minute,
	}
	var progress bytes.Buffer
	o.Progress = &progress
	rep, err := RunUsage(context.Background(), o)
	if err != nil {
		var table bytes.Buffer
		if rep != nil {
			_ = rep.WriteTable(&table)
		}
		t.Fatalf("%v\nprogress:\n%s\n%s", err, progress.String(), table.String())
	}
	m := rep.Metered
	if m.Appended < 2000 || m.Duplicates == 0 || m.Unique+m.Duplicates != m.Appended || m.AppendedPerS <= 0 {
		t.Errorf("metered: %+v", m)
	}
	if m.LagSamples < 10 || m.LagP50Ms <= 0 || m.LagP99Ms < m.LagP50Ms || m.LagMaxMs < m.LagP99Ms {
		t.Errorf("lag: %d samples, p50 %v, p99 %v, max %v", m.LagSamples, m.LagP50Ms, m.LagP99Ms, m.LagMaxMs)
	}
	if m.Metering == nil || m.Metering.PeakRSSMiB <= 0 || m.RedisCPU == nil {
		t.Errorf("no metering or redis usage: %+v", m)
	}
	if rep.Raw == nil || rep.Raw.RecordsPerS <= 0 || rep.Raw.Records < m.Appended {
		t.Errorf("raw baseline: %+v", rep.Raw)
	}
	if len(rep.Timeline) < 2 {
		t.Errorf("timeline: %+v", rep.Timeline)
	}
	// Two per bucket kind, metering's counters, the raw stream.
	if len(rep.Checks) != 10 {
		t.Errorf("%d checks: %+v", len(rep.Checks), rep.Checks)
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %s: %s", c.Name, c.Detail)
		}
	}
	var table, js bytes.Buffer
	if err := rep.WriteTable(&table); err != nil || !strings.Contains(table.String(), "raw baseline") {
		t.Errorf("table (%v):\n%s", err, table.String())
	}
	if err := rep.WriteJSON(&js); err != nil || !strings.Contains(js.String(), `"lag_p99_ms"`) {
		t.Errorf("json (%v): %s", err, js.String())
	}
	t.Log("\n" + table.String())
}

// inProcessHerald runs the registry and the router in this process against
// a private redis-server (AOF, appendfsync always) and returns a publisher.
func inProcessHerald(b *testing.B) (*publisher, *redis.Client) {
	b.Helper()
	srv := testutil.Redis(b)
	common := config.Common{RedisURL: srv.URL(), AdminKey: "bench-admin-key-0123456789",
		RegistryAddr: testutil.FreeAddr(b), RouterAddr: testutil.FreeAddr(b), EdgeAddr: "127.0.0.1:0", MeteringAddr: "127.0.0.1:0"}
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	stopRegistry, err := startRegistry(ctx, common, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stopRegistry)
	rt, err := router.New(router.Config{Common: common, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := rt.Listen(); err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Run(rctx) }()
	b.Cleanup(func() { cancel(); <-done })
	if note, err := waitReady(ctx, common.RouterAddr, 30*time.Second, 5*time.Second, nil); err != nil {
		b.Fatal(err)
	} else if note != "" {
		b.Log("router " + note)
	}
	p, err := setupCatalog(ctx, common.RegistryAddr, common.AdminKey, false)
	if err != nil {
		b.Fatal(err)
	}
	pub, err := newPublisher(common.RouterAddr, p.key)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { pub.Close() })
	if _, err := pub.publish(ctx, makeEvents("probe", 1, 256), false); err != nil {
		if p.account == "admin" {
			b.Fatal(err)
		}
		b.Logf("application key refused (%v): publishing with the admin key", err)
		pub.key = common.AdminKey
	}
	return pub, testutil.RedisClient(b, srv)
}

const benchBatch = 100

// batchSource returns a function handing out batches of benchBatch new
// events (fresh ids, so the dedupe check never short-cuts), made 100
// batches at a time with the timer stopped.
func batchSource(b *testing.B) func() []*eventv1.CloudEvent {
	var pool [][]*eventv1.CloudEvent
	made := 0
	return func() []*eventv1.CloudEvent {
		if len(pool) == 0 {
			b.StopTimer()
			pool = batches(makeEvents(fmt.Sprintf("b%d", made), 100*benchBatch, 256), benchBatch)
			made++
			b.StartTimer()
		}
		evs := pool[0]
		pool = pool[1:]
		return evs
	}
}

// BenchmarkPublishBatch100 publishes batches of 100 new events (256-byte
// JSON data, validated against Schema, deduplicated) over gRPC to an
// in-process router.
func BenchmarkPublishBatch100(b *testing.B) {
	pub, _ := inProcessHerald(b)
	ctx := context.Background()
	next := batchSource(b)
	for b.Loop() {
		evs := next()
		if _, err := pub.publish(ctx, evs, false); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchBatch*b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkXAddBatch100 writes the same log entries as raw pipelined XADD
// to the same kind of redis-server (AOF, appendfsync always).
func BenchmarkXAddBatch100(b *testing.B) {
	rdb := testutil.RedisClient(b, testutil.Redis(b))
	ctx := context.Background()
	next := batchSource(b)
	for b.Loop() {
		evs := next()
		pipe := rdb.Pipeline()
		for _, ev := range evs {
			// The entry the router writes; encoding it is part of its cost too.
			f, err := eventlog.Encode(ev, "admin")
			if err != nil {
				b.Fatal(err)
			}
			xadd(ctx, pipe, eventlog.StreamKey(EventType), f)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchBatch*b.N)/b.Elapsed().Seconds(), "events/s")
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for i := range d {
		d[i] *= time.Millisecond
	}
	if p := percentile(d, 50); p != 5 {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(d, 99); p != 10 {
		t.Errorf("p99 = %v", p)
	}
	if p := percentile(nil, 99); p != 0 {
		t.Errorf("p99 of nothing = %v", p)
	}
	if _, _, err := runCalls(context.Background(), 10, 3, func(context.Context, int) error { return errors.New("boom") }); err == nil {
		t.Error("runCalls hid an error")
	}
}

// TestRunFanoutSmall runs `herald bench fanout` on Herald with tiny
// numbers: load clients as child processes, two edges, the steady and
// saturation phases, and the checks that every client got every event
// once.
func TestRunFanoutSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(loaderChildEnv, "1") // the load clients are this binary too
	o := FanoutOptions{
		Levels: []int{5, 30}, Events: 2, TwoEdges: true, RateClients: 4, Rate: 200, RateDuration: time.Second,
		SaturationRates: []int{400}, SaturationDuration: time.Second,
		RouterBin: exe, EdgeBin: exe, RouterEnv: []string{routerChildEnv + "=1"}, EdgeEnv: []string{edgeChildEnv + "=1"},
		Loader: []string{exe}, Timeout: 3 * time.Minute,
	}
	var progress bytes.Buffer
	o.Progress = &progress
	rep, err := RunFanout(context.Background(), o)
	if err != nil {
		var table bytes.Buffer
		if rep != nil {
			_ = rep.WriteTable(&table)
		}
		t.Fatalf("%v\nprogress:\n%s\n%s", err, progress.String(), table.String())
	}
	if len(rep.Targets) != 1 {
		t.Fatalf("targets: %+v", rep.Targets)
	}
	h := rep.Targets[0]
	if len(h.Levels) != 2 || h.Levels[0].Clients != 5 || h.Levels[1].Clients != 30 {
		t.Fatalf("levels: %+v", h.Levels)
	}
	for _, l := range append(h.Levels, *h.TwoEdges) {
		if l.P50Ms <= 0 || l.P99Ms < l.P50Ms || l.MaxMs < l.P99Ms || l.ServerRSSMiB <= 0 {
			t.Errorf("level %+v", l)
		}
	}
	if h.TwoEdges.Clients != 60 {
		t.Errorf("two edges: %+v", h.TwoEdges)
	}
	if h.Steady == nil || !h.Steady.Complete || h.Steady.Published <= 0 || len(h.Saturation) != 1 {
		t.Errorf("rates: steady %+v, saturation %+v", h.Steady, h.Saturation)
	}
	// One check per level, the two edges and the steady rate.
	if len(rep.Checks) != 4 {
		t.Errorf("%d checks: %+v", len(rep.Checks), rep.Checks)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil || !strings.Contains(table.String(), "30 clients") {
		t.Errorf("table (%v):\n%s", err, table.String())
	}
	t.Log("\n" + table.String())
}

// The two-edges phase on a Redis Cluster of three masters: every client of
// both edges gets every event once.
func TestRunFanoutClusterSmall(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(loaderChildEnv, "1")
	o := FanoutOptions{
		Levels: []int{20}, Events: 2, TwoEdges: true, Cluster: 3, NoSaturation: true, RateClients: 4, Rate: 100, RateDuration: time.Second,
		RouterBin: exe, EdgeBin: exe, RouterEnv: []string{routerChildEnv + "=1"}, EdgeEnv: []string{edgeChildEnv + "=1"},
		Loader: []string{exe}, Timeout: 3 * time.Minute,
	}
	var progress bytes.Buffer
	o.Progress = &progress
	rep, err := RunFanout(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\nprogress:\n%s", err, progress.String())
	}
	h := rep.Targets[0]
	if h.TwoEdges == nil || h.TwoEdges.Clients != 40 {
		t.Fatalf("two edges: %+v", h.TwoEdges)
	}
	for _, c := range rep.Checks {
		if !c.OK {
			t.Errorf("check failed: %+v", c)
		}
	}
	if !strings.Contains(progress.String(), "Redis Cluster of 3 masters") {
		t.Errorf("progress does not say it ran on a cluster:\n%s", progress.String())
	}
}

// The settings every bench command shares are checked before anything
// starts: a bad appendfsync or rewrite size is named, not left to a
// redis-server that exits at start.
func TestRunDefaultsRefusesBadRedisSettings(t *testing.T) {
	for _, tc := range []struct{ fsync, size, want string }{
		{"always", "", ""},
		{"everysec", "64mb", ""},
		{"always", "1GB", ""},
		{"always", "1073741824", ""},
		{"sometimes", "1gb", "want always or everysec"},
		{"always", "bogus", "want a size such as 64mb"},
		{"always", "-1mb", "want a size such as 64mb"},
		{"always", "1 gb", "want a size such as 64mb"},
	} {
		fsync, size, timeout := tc.fsync, tc.size, time.Duration(0)
		var progress io.Writer
		err := runDefaults(&fsync, &size, &timeout, &progress)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("fsync %q, size %q: %v", tc.fsync, tc.size, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("fsync %q, size %q: error %v, want one with %q", tc.fsync, tc.size, err, tc.want)
		case tc.want == "" && tc.size == "" && size != "1gb":
			t.Errorf("no size given: %q, want the default 1gb", size)
		}
	}
}
