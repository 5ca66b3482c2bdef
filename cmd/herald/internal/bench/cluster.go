package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/redis/go-redis/v9"
)

// ClusterOptions configure `herald bench publish --cluster`: the publish
// phases against local Redis Clusters of each size in Masters.
type ClusterOptions struct {
	// Masters is the cluster sizes to measure, in order (e.g. 1, 2, 3).
	Masters []int
	// Events per phase. Default 20000.
	Events int
	// Batch is the events per call of the batched phases. Default 100.
	Batch int
	// Concurrency is the number of concurrent callers. Default 16.
	Concurrency int
	// PayloadBytes is the size of each event's JSON data. Default 256.
	PayloadBytes int
	// Types is the number of event types, spread evenly over the
	// masters by their streams' slots. Default 6.
	Types int
	// Routers is the number of router processes; callers take them in
	// turn. Default 1.
	Routers int
	// RouterBin is the router executable. Required.
	RouterBin string
	// RouterEnv is added to the router's environment.
	RouterEnv []string
	// Timeout bounds the whole run. Default 10 minutes.
	Timeout time.Duration
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// ClusterReport is the outcome of `herald bench publish --cluster`.
type ClusterReport struct {
	Machine  Machine         `json:"machine"`
	Settings ClusterSettings `json:"settings"`
	Runs     []ClusterRun    `json:"runs"`
	Goals    []Goal          `json:"goals,omitempty"`
	Checks   []Check         `json:"checks"`
	Notes    []string        `json:"notes,omitempty"`
}

// ClusterSettings are the options the run used.
type ClusterSettings struct {
	Events       int    `json:"events"`
	Batch        int    `json:"batch"`
	Concurrency  int    `json:"concurrency"`
	PayloadBytes int    `json:"payload_bytes"`
	Types        int    `json:"types"`
	Routers      int    `json:"routers"`
	Redis        string `json:"redis"`
}

// ClusterRun is one cluster size's phases.
type ClusterRun struct {
	Masters int `json:"masters"`
	// TypesPerMaster is how many of the event types' streams each master
	// serves, by its address.
	TypesPerMaster map[string]int `json:"types_per_master"`
	Phases         []Phase        `json:"phases"`
}

func (o *ClusterOptions) defaults() error {
	if len(o.Masters) == 0 {
		o.Masters = []int{1, 2, 3}
	}
	for _, n := range o.Masters {
		if n <= 0 || n > 16 {
			return fmt.Errorf("cluster: %d masters (want 1 to 16)", n)
		}
	}
	if o.Events <= 0 {
		o.Events = 20000
	}
	if o.Batch <= 0 {
		o.Batch = 100
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.PayloadBytes <= 0 {
		o.PayloadBytes = 256
	}
	if o.Types <= 0 {
		o.Types = 6
	}
	if o.Routers <= 0 {
		o.Routers = 1
	}
	fsync, rewriteMin := "always", ""
	if err := runDefaults(&fsync, &rewriteMin, &o.Timeout, &o.Progress); err != nil {
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

// RunCluster measures publish throughput on a local Redis Cluster of each
// size in o.Masters (no replicas, AOF with appendfsync always, as the
// single-node bench), one after the other in one run.
func RunCluster(parent context.Context, o ClusterOptions) (*ClusterReport, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	rep := &ClusterReport{Machine: machine(), Settings: ClusterSettings{Events: o.Events, Batch: o.Batch, Concurrency: o.Concurrency,
		PayloadBytes: o.PayloadBytes, Types: o.Types, Routers: o.Routers}}
	progress := func(format string, args ...any) { fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...) }
	dir, err := os.MkdirTemp("", "herald-bench-cluster-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for _, n := range o.Masters {
		run, err := clusterRun(ctx, o, n, filepath.Join(dir, strconv.Itoa(n)), rep, progress)
		if err != nil {
			if ctx.Err() != nil && parent.Err() == nil {
				err = fmt.Errorf("the run took longer than %v: %w", o.Timeout, err)
			}
			return rep, fmt.Errorf("%d masters: %w", n, err)
		}
		rep.Runs = append(rep.Runs, *run)
	}
	rep.Machine.LoadAvgEnd = loadAvg()
	rep.Goals = rep.goals()
	for _, c := range rep.Checks {
		if !c.OK {
			return rep, ErrCheckFailed
		}
	}
	return rep, nil
}

// clusterTypes picks n event type names whose streams spread evenly over
// the cluster's masters, by slot, and returns them with the count per
// master.
func clusterTypes(ctx context.Context, rdb *redis.ClusterClient, n int) ([]string, map[string]int, error) {
	slots, err := rdb.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, nil, err
	}
	// A lone node that never met another does not know its address: it
	// answers ":port".
	addr := func(r redis.ClusterSlot) string {
		if strings.HasPrefix(r.Nodes[0].Addr, ":") {
			return "127.0.0.1" + r.Nodes[0].Addr
		}
		return r.Nodes[0].Addr
	}
	masterOf := func(key string) string {
		s := int(redisserver.Slot(key))
		for _, r := range slots {
			if s >= r.Start && s <= r.End && len(r.Nodes) > 0 {
				return addr(r)
			}
		}
		return ""
	}
	var masters []string
	for _, r := range slots {
		if len(r.Nodes) > 0 && !slices.Contains(masters, addr(r)) {
			masters = append(masters, addr(r))
		}
	}
	slices.Sort(masters)
	per := map[string]int{}
	var types []string
	// Type k goes to master k mod len(masters): take the first candidate
	// name that lands there.
	for i := 0; len(types) < n && i < 100000; i++ {
		name := fmt.Sprintf("bench.cluster.t%d", i)
		m := masterOf(eventlog.StreamKey(name))
		if m == masters[len(types)%len(masters)] {
			types = append(types, name)
			per[m]++
		}
	}
	if len(types) < n {
		return nil, nil, errors.New("could not spread the event types over the masters")
	}
	return types, per, nil
}

// startClusterMesh is what the cluster benchmarks share: the mesh's
// settings on the cluster at url, the registry in this process, the
// benchmark's catalog and principal, and the event types.
func startClusterMesh(ctx context.Context, dir, url string, types []string, progress func(string, ...any)) (config.Common, principal, func(), error) {
	common, err := benchMesh(url)
	if err != nil {
		return common, principal{}, nil, err
	}
	stop, err := startRegistryIn(ctx, dir, common, progress)
	if err != nil {
		return common, principal{}, nil, err
	}
	p, err := setupCatalog(ctx, common.RegistryAddr, common.AdminKey, false)
	if err != nil {
		stop()
		return common, principal{}, nil, err
	}
	reg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(common.AdminKey)...)
	for _, t := range types {
		if _, err := reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
			Name: t, Description: "An order was placed (benchmark payload).", Schema: Schema,
		}})); err != nil && connect.CodeOf(err) != connect.CodeAlreadyExists {
			stop()
			return common, principal{}, nil, fmt.Errorf("register event type %s: %w", t, err)
		}
	}
	return common, p, stop, nil
}

// clusterRun measures one cluster size.
func clusterRun(ctx context.Context, o ClusterOptions, masters int, dir string, rep *ClusterReport, progress func(string, ...any)) (*ClusterRun, error) {
	progress("%d masters: starting a Redis Cluster (no replicas, AOF, appendfsync always)", masters)
	c, err := redisserver.StartCluster(ctx, redisserver.ClusterOptions{Dir: filepath.Join(dir, "redis"), Masters: masters, AppendOnly: true})
	if err != nil {
		return nil, err
	}
	defer c.Stop()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), PoolSize: o.Concurrency + 4, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	defer rdb.Close()
	var nodes []*redis.Client
	for _, a := range c.Addrs() {
		nc := redis.NewClient(&redis.Options{Addr: a})
		defer nc.Close()
		nodes = append(nodes, nc)
	}
	if rep.Settings.Redis == "" {
		if info, err := nodes[0].Info(ctx, "server").Result(); err == nil {
			rep.Settings.Redis = "redis-server " + infoField(info, "redis_version")
		}
	}
	types, per, err := clusterTypes(ctx, rdb, o.Types)
	if err != nil {
		return nil, err
	}
	run := &ClusterRun{Masters: masters, TypesPerMaster: per}

	common, p, stopRegistry, err := startClusterMesh(ctx, dir, c.URL(), types, progress)
	if err != nil {
		return nil, err
	}
	defer stopRegistry()
	if p.note != "" {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d masters: %s", masters, p.note))
	}

	routers, pubs, err := startRouters(ctx, o, common, p.key, dir, progress)
	defer func() {
		for _, pb := range pubs {
			pb.Close()
		}
		for _, r := range routers {
			r.stop(15 * time.Second)
		}
	}()
	if err != nil {
		return nil, err
	}
	meter := func() func(*Phase) {
		var ms []*procMeter
		for _, r := range routers {
			ms = append(ms, startMeter(r.pid()))
		}
		redisBefore := nodesCPU(nodes)
		self := selfCPU()
		return func(ph *Phase) {
			ph.ClientCPUSeconds = (selfCPU() - self).Seconds()
			sum := &procUsage{}
			for _, m := range ms {
				if u, err := m.stop(); err == nil {
					sum.CPUSeconds += u.CPUSeconds
					sum.SystemCPUSeconds += u.SystemCPUSeconds
					sum.PeakRSSMiB = max(sum.PeakRSSMiB, u.PeakRSSMiB)
				}
			}
			ph.Router = sum
			if redisBefore >= 0 {
				if after := nodesCPU(nodes); after >= 0 {
					v := after - redisBefore
					ph.RedisCPUSeconds = &v
				}
			}
		}
	}
	// Events of type k: call i publishes type i mod len(types).
	withType := func(evs []*eventv1.CloudEvent, t string) []*eventv1.CloudEvent {
		for _, e := range evs {
			e.Type = t
		}
		return evs
	}
	acked := 0
	for k, t := range types { // warm-up: connections, scripts, catalogs
		for j, pb := range pubs {
			if _, err := pb.publish(ctx, withType(makeEvents(fmt.Sprintf("warm-%d-%d", k, j), 2*o.Batch, o.PayloadBytes), t), false); err != nil {
				return nil, withChildLogs(fmt.Errorf("warm-up publish: %w", err), routers...)
			}
			acked += 2 * o.Batch
		}
	}
	phase := func(ph Phase, calls int, fn func(ctx context.Context, i int) error) error {
		progress("%d masters: %s: %d events, %d per call, %d callers, %d router(s)", masters, ph.Name, ph.Events, ph.BatchSize, ph.Concurrency, len(routers))
		done := meter()
		elapsed, lat, err := runCalls(ctx, calls, o.Concurrency, fn)
		done(&ph)
		if err != nil {
			return withChildLogs(fmt.Errorf("%s: %w", ph.Name, err), routers...)
		}
		ph.Calls = calls
		ph.finish(elapsed, lat)
		run.Phases = append(run.Phases, ph)
		return nil
	}
	bs := batches(makeEvents("batch", o.Events, o.PayloadBytes), o.Batch)
	for i, b := range bs {
		withType(b, types[i%len(types)])
	}
	if err := phase(Phase{Name: "herald-batch", Description: fmt.Sprintf("Herald gRPC Publish, %d events per call of one type, types in turn", o.Batch),
		Events: o.Events, BatchSize: o.Batch, Concurrency: o.Concurrency, LatencyOf: "batch"}, len(bs), func(ctx context.Context, i int) error {
		_, err := pubs[i%len(pubs)].publish(ctx, bs[i], false)
		return err
	}); err != nil {
		return nil, err
	}
	acked += o.Events
	singles := makeEvents("single", o.Events, o.PayloadBytes)
	for i, e := range singles {
		e.Type = types[i%len(types)]
	}
	if err := phase(Phase{Name: "herald-single", Description: "Herald gRPC Publish, 1 event per call, types in turn",
		Events: o.Events, BatchSize: 1, Concurrency: o.Concurrency, LatencyOf: "call"}, len(singles), func(ctx context.Context, i int) error {
		_, err := pubs[i%len(pubs)].publish(ctx, singles[i:i+1], false)
		return err
	}); err != nil {
		return nil, err
	}
	acked += o.Events
	// Raw: pipelines of XADD of the same entries to a stream beside each
	// type's (same hash tag, same master): what the cluster alone takes.
	entries := make([][]any, o.Events)
	for i, ev := range makeEvents("raw", o.Events, o.PayloadBytes) {
		if entries[i], err = eventlog.Encode(ev, p.account); err != nil {
			return nil, err
		}
	}
	rawKey := func(t string) string { return "bench:raw:{" + t + "}" }
	if err := phase(Phase{Name: "xadd-batch", Description: fmt.Sprintf("raw XADD, pipelines of %d to one type's slot, types in turn", o.Batch),
		Events: o.Events, BatchSize: o.Batch, Concurrency: o.Concurrency, LatencyOf: "batch"}, len(bs), func(ctx context.Context, i int) error {
		pipe := rdb.Pipeline()
		for _, e := range entries[i*o.Batch : min(len(entries), (i+1)*o.Batch)] {
			xadd(ctx, pipe, rawKey(types[i%len(types)]), e)
		}
		_, err := pipe.Exec(ctx)
		return err
	}); err != nil {
		return nil, err
	}

	// Checks: the log holds every acknowledged event once, and the raw
	// streams every XADD.
	var logLen, rawLen int64
	for _, t := range types {
		n, err := rdb.XLen(ctx, eventlog.StreamKey(t)).Result()
		if err != nil {
			return nil, err
		}
		logLen += n
		if n, err = rdb.XLen(ctx, rawKey(t)).Result(); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		rawLen += n
	}
	rep.Checks = append(rep.Checks,
		Check{Name: fmt.Sprintf("%d masters: the log holds every acknowledged event once", masters), OK: logLen == int64(acked),
			Detail: fmt.Sprintf("%d entries in the streams of %d types, %d events acknowledged", logLen, len(types), acked)},
		Check{Name: fmt.Sprintf("%d masters: the raw streams hold every XADD", masters), OK: rawLen == int64(o.Events),
			Detail: fmt.Sprintf("%d entries, %d XADD", rawLen, o.Events)},
		Check{Name: fmt.Sprintf("%d masters: the types' streams are spread over every master", masters), OK: len(per) == masters,
			Detail: fmt.Sprint(per)})
	return run, nil
}

// startRouters starts o.Routers router processes on the cluster and a
// publisher of each; the first one checks that the principal may publish.
func startRouters(ctx context.Context, o ClusterOptions, common config.Common, key, dir string, progress func(string, ...any)) ([]*child, []*publisher, error) {
	var routers []*child
	var pubs []*publisher
	for i := range o.Routers {
		c := common
		if i > 0 {
			var err error
			if c.RouterAddr, err = freeAddr(); err != nil {
				return routers, pubs, err
			}
		}
		progress("starting router %d (%s) on %s", i+1, o.RouterBin, c.RouterAddr)
		r, err := startChild(fmt.Sprintf("router %d", i+1), o.RouterBin, nil, routerEnv(c, o.RouterEnv), filepath.Join(dir, fmt.Sprintf("router-%d.log", i+1)))
		if err != nil {
			return routers, pubs, err
		}
		routers = append(routers, r)
		if _, err := waitReady(ctx, c.RouterAddr, 30*time.Second, 5*time.Second, func() error {
			if r.exited() {
				return fmt.Errorf("the router exited at start (%v):\n%s", r.err, r.logTail())
			}
			return nil
		}); err != nil {
			return routers, pubs, fmt.Errorf("router: %w", err)
		}
		pb, err := newPublisher(c.RouterAddr, key)
		if err != nil {
			return routers, pubs, err
		}
		pubs = append(pubs, pb)
	}
	return routers, pubs, nil
}

// nodesCPU sums redis-server's CPU seconds over nodes, or -1.
func nodesCPU(nodes []*redis.Client) float64 {
	var sum float64
	for _, n := range nodes {
		v := redisCPU(n)
		if v < 0 {
			return -1
		}
		sum += v
	}
	return sum
}

// phaseOf returns the run's phase of that name.
func (r ClusterRun) phaseOf(name string) *Phase {
	for i := range r.Phases {
		if r.Phases[i].Name == name {
			return &r.Phases[i]
		}
	}
	return nil
}

// goals: issue 15's target, at least 1.6x the events/s from 1 to 3
// masters, for each Herald phase both sizes have.
func (rep *ClusterReport) goals() []Goal {
	var one, three *ClusterRun
	for i := range rep.Runs {
		switch rep.Runs[i].Masters {
		case 1:
			one = &rep.Runs[i]
		case 3:
			three = &rep.Runs[i]
		}
	}
	if one == nil || three == nil {
		return nil
	}
	var out []Goal
	for _, name := range []string{"herald-batch", "herald-single"} {
		a, b := one.phaseOf(name), three.phaseOf(name)
		if a == nil || b == nil || a.EventsPerS == 0 {
			continue
		}
		ratio := b.EventsPerS / a.EventsPerS
		out = append(out, Goal{Name: name + ": 3 masters vs 1 >= 1.6x", Met: ratio >= 1.6,
			Detail: fmt.Sprintf("%.0f vs %.0f events/s: %.2fx", b.EventsPerS, a.EventsPerS, ratio)})
	}
	return out
}

// WriteJSON writes the report as indented JSON.
func (rep *ClusterReport) WriteJSON(w io.Writer) error { return writeJSON(w, rep) }

// WriteTable writes the report for people.
func (rep *ClusterReport) WriteTable(w io.Writer) error {
	s, m := rep.Settings, rep.Machine
	fmt.Fprintf(w, "herald bench publish --cluster: %d events per phase, batch %d, %d concurrent callers, %d-byte JSON data, %d event types, %d router(s); Redis Cluster without replicas, AOF appendfsync always\n",
		s.Events, s.Batch, s.Concurrency, s.PayloadBytes, s.Types, s.Routers)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d GiB, %s, %s; %s\n", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, s.Redis)
	fmt.Fprintf(w, "load average (1, 5, 15 min): %s at the start, %s at the end\n\n", m.LoadAvgStart, m.LoadAvgEnd)
	const row = "%-8s %-14s %9s %8s %8s %9s %9s %9s %9s\n"
	fmt.Fprintf(w, row, "", "", "", "", "", "router", "redis", "client", "")
	fmt.Fprintf(w, row, "masters", "phase", "events/s", "p50 ms", "p99 ms", "CPU s", "CPU s", "CPU s", "cores")
	for _, r := range rep.Runs {
		for _, p := range r.Phases {
			router, redisCPU, cores := "-", "-", p.ClientCPUSeconds
			if p.Router != nil {
				router = fmt.Sprintf("%.2f", p.Router.CPUSeconds)
				cores += p.Router.CPUSeconds
			}
			if p.RedisCPUSeconds != nil {
				redisCPU = fmt.Sprintf("%.2f", *p.RedisCPUSeconds)
				cores += *p.RedisCPUSeconds
			}
			if p.Seconds > 0 {
				cores /= p.Seconds
			}
			fmt.Fprintf(w, row, strconv.Itoa(r.Masters), p.Name, fmt.Sprintf("%.0f", p.EventsPerS), fmt.Sprintf("%.2f", p.P50Ms), fmt.Sprintf("%.2f", p.P99Ms),
				router, redisCPU, fmt.Sprintf("%.2f", p.ClientCPUSeconds), fmt.Sprintf("%.2f", cores))
		}
	}
	fmt.Fprintln(w, "\n  cores: (router + redis + client CPU seconds) / phase seconds, the share of the machine's CPUs the phase used")
	for _, r := range rep.Runs {
		var per []string
		for a, n := range r.TypesPerMaster {
			per = append(per, fmt.Sprintf("%s %d", a, n))
		}
		slices.Sort(per)
		fmt.Fprintf(w, "  %d masters: types per master: %s\n", r.Masters, strings.Join(per, ", "))
	}
	if len(rep.Goals) > 0 {
		fmt.Fprintln(w, "\ntarget of issue 15 (ratio from this run):")
		for _, g := range rep.Goals {
			mark := "met    "
			if !g.Met {
				mark = "NOT met"
			}
			fmt.Fprintf(w, "  %s %s: %s\n", mark, g.Name, g.Detail)
		}
	}
	writeChecks(w, rep.Checks, rep.Notes)
	return nil
}
