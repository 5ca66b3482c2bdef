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
	"sync"
	"time"
)

// FanoutOptions configure `herald bench fanout`.
type FanoutOptions struct {
	// Targets are what is measured, in order: "herald" and the peers
	// "centrifugo" and "mercure" (their executables in CentrifugoBin and
	// MercureBin). Default: herald.
	Targets []string
	// Levels are the client counts of the one-event phases, in
	// increasing order; at most 19,900 (one load process). Default
	// 1000, 10000, 19900.
	Levels []int
	// Events published (one at a time) at each level. Default 5.
	Events int
	// TwoEdges runs a second Herald edge with the largest level of
	// clients on each (Herald only).
	TwoEdges bool
	// RateClients receive the steady and saturation phases. Default 100.
	RateClients int
	// Rate is the steady phase's events/s; RateDuration its length.
	// Default 1000 for 10s.
	Rate         int
	RateDuration time.Duration
	// SaturationRates are the offered rates tried in turn until one is not
	// held (p99 >= 50 ms, or not published or not delivered in time);
	// each for SaturationDuration. Default 2000, 4000, 6000, 8000, 10000,
	// 12000, 16000, 20000 for 5s. Empty after defaults (NoSaturation):
	// none.
	SaturationRates    []int
	SaturationDuration time.Duration
	NoSaturation       bool
	// PayloadBytes is the size of each event's JSON data. Default 256.
	PayloadBytes int
	// RedisFsync is Redis' appendfsync. Default "always".
	RedisFsync string
	// RedisAOFRewriteMinSize is Redis' auto-aof-rewrite-min-size. Default
	// redisserver.DefaultAOFRewriteMinSize, as herald dev runs Redis.
	RedisAOFRewriteMinSize string
	// Cluster, above 0, runs Herald on a local Redis Cluster of that many
	// masters (no replicas, AOF appendfsync always) instead of one
	// redis-server.
	Cluster int
	// RouterBin and EdgeBin are Herald's executables; CentrifugoBin and
	// MercureBin the peers'.
	RouterBin, EdgeBin, CentrifugoBin, MercureBin string
	// EdgeEnv is added to the edge's environment, RouterEnv to the
	// router's.
	EdgeEnv, RouterEnv []string
	// Loader is the command line of a load client process (the hidden
	// `herald bench fanout-loader`); empty runs the clients in this
	// process (small runs only: they share its file limit).
	Loader []string
	// Timeout bounds the whole run. Default 30 minutes.
	Timeout time.Duration
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// MaxClientsPerLoader is what one load process holds under a 20,000-file
// limit, leaving it a few descriptors of its own.
const MaxClientsPerLoader = 19900

func (o *FanoutOptions) defaults() error {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if len(o.Targets) == 0 {
		o.Targets = []string{"herald"}
	}
	if len(o.Levels) == 0 {
		o.Levels = []int{1000, 10000, 19900}
	}
	def(&o.Events, 5)
	def(&o.RateClients, 100)
	def(&o.Rate, 1000)
	def(&o.PayloadBytes, 256)
	if o.RateDuration <= 0 {
		o.RateDuration = 10 * time.Second
	}
	if len(o.SaturationRates) == 0 && !o.NoSaturation {
		o.SaturationRates = []int{2000, 4000, 6000, 8000, 10000, 12000, 16000, 20000}
	}
	if o.NoSaturation {
		o.SaturationRates = nil
	}
	if o.SaturationDuration <= 0 {
		o.SaturationDuration = 5 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Minute
	}
	if err := runDefaults(&o.RedisFsync, &o.RedisAOFRewriteMinSize, &o.Timeout, &o.Progress); err != nil {
		return err
	}
	if !slices.IsSorted(o.Levels) || o.Levels[0] <= 0 || o.Levels[len(o.Levels)-1] > MaxClientsPerLoader {
		return fmt.Errorf("levels %v: increasing, from 1 to %d", o.Levels, MaxClientsPerLoader)
	}
	if o.RateClients > MaxClientsPerLoader {
		return fmt.Errorf("rate clients: at most %d", MaxClientsPerLoader)
	}
	if o.PayloadBytes < 64 {
		return errors.New("payload bytes: at least 64")
	}
	for _, t := range o.Targets {
		switch t {
		case "herald":
			if o.RouterBin == "" || o.EdgeBin == "" {
				return errors.New("no router or edge executable given")
			}
		case "centrifugo":
			if o.CentrifugoBin == "" {
				return errors.New("centrifugo: no executable given (--centrifugo)")
			}
		case "mercure":
			if o.MercureBin == "" {
				return errors.New("mercure: no executable given (--mercure)")
			}
		default:
			return fmt.Errorf("target %q: want herald, centrifugo or mercure", t)
		}
	}
	return nil
}

// FanoutReport is the outcome of `herald bench fanout`.
type FanoutReport struct {
	Machine  Machine        `json:"machine"`
	Settings FanoutSettings `json:"settings"`
	Targets  []FanoutTarget `json:"targets"`
	Checks   []Check        `json:"checks"`
	Notes    []string       `json:"notes,omitempty"`
}

// FanoutSettings are the options the run used.
type FanoutSettings struct {
	Levels                 []int  `json:"levels"`
	Events                 int    `json:"events_per_level"`
	RateClients            int    `json:"rate_clients"`
	Rate                   int    `json:"rate"`
	RateDuration           string `json:"rate_duration"`
	SaturationRates        []int  `json:"saturation_rates,omitempty"`
	SaturationDuration     string `json:"saturation_duration"`
	PayloadBytes           int    `json:"payload_bytes"`
	RedisFsync             string `json:"redis_appendfsync"`
	RedisAOFRewriteMinSize string `json:"redis_aof_rewrite_min_size"`
}

// FanoutTarget is what one system measured.
type FanoutTarget struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	// Path is what stands between the publisher and the clients.
	Path   string        `json:"path"`
	Levels []FanoutLevel `json:"levels"`
	// TwoEdges is the largest level on each of two edges.
	TwoEdges *FanoutLevel `json:"two_edges,omitempty"`
	Steady   *FanoutRate  `json:"steady,omitempty"`
	// Saturation are the rates tried; SaturationRate the highest held.
	Saturation     []FanoutRate `json:"saturation,omitempty"`
	SaturationRate int          `json:"saturation_rate,omitempty"`
	Error          string       `json:"error,omitempty"`
}

// FanoutLevel is one event at a time to N idle clients.
type FanoutLevel struct {
	Clients int `json:"clients"`
	Events  int `json:"events"`
	// P50Ms, P99Ms and MaxMs time each client's receipt of each event
	// from the moment its publish call started.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// RSSPerConnKiB is the server's resident memory with the clients
	// connected and idle, less its resident memory with none, per client.
	RSSPerConnKiB float64 `json:"rss_per_conn_kib"`
	ServerRSSMiB  float64 `json:"server_rss_mib"`
	// ServerCPUms is the server's CPU time for the level's events.
	ServerCPUms float64 `json:"server_cpu_ms"`
}

// FanoutRate is a steady rate of events to the rate clients.
type FanoutRate struct {
	Offered int `json:"offered_per_second"`
	// Published is the rate the publisher achieved.
	Published float64 `json:"published_per_second"`
	Clients   int     `json:"clients"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	// AckP50Ms and AckP99Ms time the publish calls (to their answer):
	// what of the latency is the write path's.
	AckP50Ms float64 `json:"ack_p50_ms"`
	AckP99Ms float64 `json:"ack_p99_ms"`
	// Complete says every client had every event within 10s of the end.
	Complete  bool    `json:"complete"`
	Held      bool    `json:"held"`
	ServerCPU float64 `json:"server_cpu_seconds"`
}

// fanTarget is a system under test.
type fanTarget interface {
	// stream is the URL and headers of an SSE client of edge i.
	stream(i int) (string, map[string]string)
	// publish sends events with these JSON data, in order.
	publish(ctx context.Context, data [][]byte) error
	// maxBatch is the most events one publish call takes.
	maxBatch() int
	// pids are the server processes of edge i (RSS and CPU are theirs).
	pids(i int) []int
	// addEdge starts edge i (Herald only).
	addEdge(ctx context.Context, i int) error
	version() string
	path() string
	close()
}

// fanRun holds what the phases share.
type fanRun struct {
	o        FanoutOptions
	rep      *FanoutReport
	progress func(format string, args ...any)
	seq      int64 // last event number published
	mu       sync.Mutex
	cur      string // the target being measured
}

// RunFanout runs `herald bench fanout`.
func RunFanout(parent context.Context, o FanoutOptions) (*FanoutReport, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(parent, o.Timeout)
	defer cancel()
	r := &fanRun{o: o, rep: &FanoutReport{Machine: machine(), Settings: FanoutSettings{
		Levels: o.Levels, Events: o.Events, RateClients: o.RateClients, Rate: o.Rate, RateDuration: o.RateDuration.String(),
		SaturationRates: o.SaturationRates, SaturationDuration: o.SaturationDuration.String(), PayloadBytes: o.PayloadBytes, RedisFsync: o.RedisFsync, RedisAOFRewriteMinSize: o.RedisAOFRewriteMinSize,
	}}}
	r.progress = func(format string, args ...any) { fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...) }
	dir, err := os.MkdirTemp("", "herald-bench-fanout-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	for _, name := range o.Targets {
		res := FanoutTarget{Name: name}
		err := r.target(ctx, filepath.Join(dir, name), name, &res)
		if err != nil {
			res.Error = err.Error()
			r.check(name+": the run completed", false, "%v", err)
		}
		r.rep.Targets = append(r.rep.Targets, res)
		if ctx.Err() != nil {
			break
		}
	}
	r.rep.Machine.LoadAvgEnd = loadAvg()
	if ctx.Err() != nil && parent.Err() == nil {
		return r.rep, fmt.Errorf("the run took longer than %v", o.Timeout)
	}
	for _, c := range r.rep.Checks {
		if !c.OK {
			return r.rep, ErrCheckFailed
		}
	}
	return r.rep, nil
}

func (r *fanRun) check(name string, ok bool, format string, args ...any) {
	r.rep.Checks = append(r.rep.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// srcAddrs are the loopback source addresses clients of load process k
// connect from: 50 per process, so that no address needs more than a few
// hundred ephemeral ports.
func srcAddrs(k int) []string {
	out := make([]string, 50)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.%d.%d", 1+k, 2+i)
	}
	return out
}

func (r *fanRun) target(ctx context.Context, dir, name string, res *FanoutTarget) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r.cur = name
	var t fanTarget
	var err error
	switch name {
	case "herald":
		t, err = startHeraldFan(ctx, dir, r.o, r.progress)
	case "centrifugo":
		t, err = startCentrifugo(ctx, dir, r.o.CentrifugoBin, r.progress)
	case "mercure":
		t, err = startMercure(ctx, dir, r.o.MercureBin, r.progress)
	}
	if err != nil {
		return err
	}
	defer t.close()
	res.Version, res.Path = t.version(), t.path()
	if h, ok := t.(*heraldFan); ok {
		r.rep.Machine.Redis = h.redisVer
	}
	ld, err := startLoader(name+"-0", r.o.Loader)
	if err != nil {
		return err
	}
	defer ld.stop()

	// Warm-up: one client, a few events through every part.
	if err := r.connect(ctx, ld, t, 0, 1); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	for range 3 {
		if _, err := r.one(ctx, t, []*loaderProc{ld}); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	if _, err := ld.call(ctx, loaderCmd{Op: "drop"}); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	base := rssOf(t.pids(0))

	open := 0
	for _, n := range r.o.Levels {
		r.progress("%s: %d clients", name, n)
		if err := r.connect(ctx, ld, t, 0, n-open); err != nil {
			return fmt.Errorf("%d clients: %w", n, err)
		}
		open = n
		lv, err := r.level(ctx, t, []*loaderProc{ld}, n, base, 0)
		if err != nil {
			return fmt.Errorf("%d clients: %w", n, err)
		}
		res.Levels = append(res.Levels, lv)
	}
	if r.o.TwoEdges && name == "herald" {
		n := r.o.Levels[len(r.o.Levels)-1]
		r.progress("%s: a second edge, %d clients on each", name, n)
		if err := t.addEdge(ctx, 1); err != nil {
			return err
		}
		ld2, err := startLoader(name+"-1", r.o.Loader)
		if err != nil {
			return err
		}
		defer ld2.stop()
		time.Sleep(time.Second)
		base2 := rssOf(t.pids(1))
		if err := r.connect(ctx, ld2, t, 1, n); err != nil {
			return fmt.Errorf("second edge, %d clients: %w", n, err)
		}
		lv, err := r.level(ctx, t, []*loaderProc{ld, ld2}, 2*n, base, base2)
		if err != nil {
			return fmt.Errorf("two edges: %w", err)
		}
		res.TwoEdges = &lv
		if _, err := ld2.call(ctx, loaderCmd{Op: "drop"}); err != nil {
			return err
		}
	}
	if _, err := ld.call(ctx, loaderCmd{Op: "drop"}); err != nil {
		return err
	}

	if err := r.connect(ctx, ld, t, 0, r.o.RateClients); err != nil {
		return fmt.Errorf("%d rate clients: %w", r.o.RateClients, err)
	}
	for range 3 {
		if _, err := r.one(ctx, t, []*loaderProc{ld}); err != nil {
			return fmt.Errorf("rate warm-up: %w", err)
		}
	}
	if _, err := ld.call(ctx, loaderCmd{Op: "collect"}); err != nil {
		return err
	}
	r.progress("%s: %d events/s to %d clients for %v", name, r.o.Rate, r.o.RateClients, r.o.RateDuration)
	st, err := r.atRate(ctx, t, ld, r.o.Rate, r.o.RateDuration)
	if err != nil {
		return err
	}
	res.Steady = &st
	r.check(name+": steady rate: every client got every event once", st.Complete, "%d clients, %d events/s for %v", st.Clients, st.Offered, r.o.RateDuration)
	for _, rate := range r.o.SaturationRates {
		r.progress("%s: saturation: %d events/s", name, rate)
		s, err := r.atRate(ctx, t, ld, rate, r.o.SaturationDuration)
		if err != nil {
			return err
		}
		res.Saturation = append(res.Saturation, s)
		if !s.Held {
			break
		}
		res.SaturationRate = rate
	}
	return nil
}

// connect adds n clients of edge i to ld.
func (r *fanRun) connect(ctx context.Context, ld *loaderProc, t fanTarget, i, n int) error {
	if n <= 0 {
		return nil
	}
	u, h := t.stream(i)
	a, err := ld.call(ctx, loaderCmd{Op: "connect", N: n, URL: u, Headers: h, Src: srcAddrs(i), DialConcurrency: 64})
	if err != nil {
		return err
	}
	if a.Closed > 0 {
		return fmt.Errorf("%d streams ended meanwhile (%s)", a.Closed, a.Ended)
	}
	return nil
}

// nextData returns the JSON data of the next n events, stamped now.
func (r *fanRun) nextData(n int) ([][]byte, int64) {
	r.mu.Lock()
	first := r.seq + 1
	r.seq += int64(n)
	r.mu.Unlock()
	ts := time.Now().UnixNano()
	out := make([][]byte, n)
	for i := range out {
		out[i] = stampedData(first+int64(i), ts, r.o.PayloadBytes)
	}
	return out, first
}

// stampedData is the JSON data of event seq stamped ts (unix ns), padded
// to about size bytes: what the load clients time (see fanload.go).
func stampedData(seq, ts int64, size int) []byte {
	head := `{"hseq":` + strconv.FormatInt(seq, 10) + `,"hts":` + strconv.FormatInt(ts, 10) + `,"pad":"`
	return []byte(head + strings.Repeat("x", max(0, size-len(head)-2)) + `"}`)
}

// one publishes one event and waits until every client of lds has it.
func (r *fanRun) one(ctx context.Context, t fanTarget, lds []*loaderProc) (int64, error) {
	data, seq := r.nextData(1)
	if err := t.publish(ctx, data); err != nil {
		return 0, fmt.Errorf("publish: %w", err)
	}
	return seq, r.waitAll(ctx, lds, seq, seq, 60*time.Second)
}

func (r *fanRun) waitAll(ctx context.Context, lds []*loaderProc, from, to int64, timeout time.Duration) error {
	var wg sync.WaitGroup
	errs := make([]error, len(lds))
	for i, ld := range lds {
		wg.Go(func() {
			a, err := ld.call(ctx, loaderCmd{Op: "wait", From: from, To: to, TimeoutMs: timeout.Milliseconds()})
			switch {
			case err != nil:
				errs[i] = err
			case a.Complete < a.Open || a.Closed > 0:
				errs[i] = fmt.Errorf("events %d..%d: %d of %d clients had them all after %v; %d streams ended (%s)", from, to, a.Complete, a.Open, timeout, a.Closed, a.Ended)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// collect gathers the latencies of every loader since the last collect.
func (r *fanRun) collect(ctx context.Context, lds []*loaderProc) ([]time.Duration, int, error) {
	var lat []time.Duration
	dups := 0
	for _, ld := range lds {
		a, err := ld.call(ctx, loaderCmd{Op: "collect"})
		if err != nil {
			return nil, 0, err
		}
		for _, us := range a.SamplesUs {
			lat = append(lat, time.Duration(us)*time.Microsecond)
		}
		dups += a.Duplicates
	}
	slices.Sort(lat)
	return lat, dups, nil
}

// level measures r.o.Events events, one at a time, to the open clients.
func (r *fanRun) level(ctx context.Context, t fanTarget, lds []*loaderProc, clients int, base, base2 int64) (FanoutLevel, error) {
	lv := FanoutLevel{Clients: clients, Events: r.o.Events}
	time.Sleep(2 * time.Second) // idle: let the server settle
	rss := rssOf(t.pids(0)) - base
	if len(lds) > 1 {
		rss += rssOf(t.pids(1)) - base2
	}
	lv.RSSPerConnKiB = float64(rss) / 1024 / float64(clients)
	lv.ServerRSSMiB = float64(rssOf(t.pids(0))) / (1 << 20)
	// A first event makes sure every client is live (subscribed), then the
	// measured ones.
	if _, err := r.one(ctx, t, lds); err != nil {
		return lv, err
	}
	if _, _, err := r.collect(ctx, lds); err != nil {
		return lv, err
	}
	cpu0 := cpuOf(t.pids(0))
	for range r.o.Events {
		if _, err := r.one(ctx, t, lds); err != nil {
			return lv, err
		}
		time.Sleep(200 * time.Millisecond)
	}
	lv.ServerCPUms = float64(cpuOf(t.pids(0))-cpu0) / float64(time.Millisecond)
	lat, dups, err := r.collect(ctx, lds)
	if err != nil {
		return lv, err
	}
	want := clients * r.o.Events
	r.check(fmt.Sprintf("%s: %d clients: every client got every event once", r.cur, clients), len(lat) == want && dups == 0,
		"%d receipts of %d, %d duplicates", len(lat), want, dups)
	lv.P50Ms, lv.P99Ms = percentile(lat, 50), percentile(lat, 99)
	if len(lat) > 0 {
		lv.MaxMs = float64(lat[len(lat)-1]) / float64(time.Millisecond)
	}
	return lv, nil
}

// atRate publishes rate events/s for d to the rate clients: every
// millisecond the events due, in calls of at most maxBatch, up to 32 calls
// in flight (a call that takes long does not hold back the schedule).
func (r *fanRun) atRate(ctx context.Context, t fanTarget, ld *loaderProc, rate int, d time.Duration) (FanoutRate, error) {
	fr := FanoutRate{Offered: rate, Clients: r.o.RateClients}
	cpu0 := cpuOf(t.pids(0))
	total := int(int64(rate) * int64(d) / int64(time.Second))
	var first int64 = -1
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var pubErr error
	var acks latencies
	start := time.Now()
	sent := 0
	tick := time.NewTicker(time.Millisecond)
	for sent < total && ctx.Err() == nil {
		<-tick.C
		due := min(total, int(int64(rate)*int64(time.Since(start))/int64(time.Second)))
		for sent < due {
			n := min(due-sent, t.maxBatch())
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
			}
			data, seq := r.nextData(n)
			if first < 0 {
				first = seq
			}
			sent += n
			wg.Go(func() {
				defer func() { <-sem }()
				t0 := time.Now()
				err := t.publish(ctx, data)
				acks.add([]time.Duration{time.Since(t0)})
				if err != nil {
					errMu.Lock()
					pubErr = errors.Join(pubErr, err)
					errMu.Unlock()
				}
			})
		}
	}
	tick.Stop()
	wg.Wait()
	elapsed := time.Since(start)
	if pubErr != nil {
		return fr, fmt.Errorf("publish at %d/s: %w", rate, pubErr)
	}
	fr.Published = float64(sent) / elapsed.Seconds()
	slices.Sort(acks.d)
	fr.AckP50Ms, fr.AckP99Ms = percentile(acks.d, 50), percentile(acks.d, 99)
	last := first + int64(sent) - 1
	fr.Complete = r.waitAll(ctx, []*loaderProc{ld}, first, last, 10*time.Second) == nil
	fr.ServerCPU = float64(cpuOf(t.pids(0))-cpu0) / float64(time.Second)
	lat, dups, err := r.collect(ctx, []*loaderProc{ld})
	if err != nil {
		return fr, err
	}
	fr.Complete = fr.Complete && dups == 0 && len(lat) == sent*r.o.RateClients
	fr.P50Ms, fr.P99Ms = percentile(lat, 50), percentile(lat, 99)
	if len(lat) > 0 {
		fr.MaxMs = float64(lat[len(lat)-1]) / float64(time.Millisecond)
	}
	fr.Held = fr.Complete && fr.P99Ms < 50 && fr.Published >= 0.95*float64(rate)
	if !fr.Complete {
		// The clients that fell behind are cut or still catching up:
		// start the next phase (if any) from fresh ones.
		_, _ = ld.call(ctx, loaderCmd{Op: "drop"})
		if err := r.connect(ctx, ld, t, 0, r.o.RateClients); err != nil {
			return fr, err
		}
	}
	return fr, nil
}

// rssOf is the resident memory of processes, in bytes.
func rssOf(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		if s, err := readProc(pid); err == nil {
			total += s.rss
		}
	}
	return total
}

// cpuOf is the CPU time of processes.
func cpuOf(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		if s, err := readProc(pid); err == nil {
			total += s.cpu
		}
	}
	return total
}

// WriteJSON writes the report as indented JSON.
func (rep *FanoutReport) WriteJSON(w io.Writer) error { return writeJSON(w, rep) }

// WriteTable writes the report for people.
func (rep *FanoutReport) WriteTable(w io.Writer) error {
	s, m := rep.Settings, rep.Machine
	fmt.Fprintf(w, "herald bench fanout: one event at a time (%d per level) to %v idle SSE clients; %d events/s for %s to %d clients; saturation from %v (%s each); %d-byte JSON data; Redis appendfsync %s, auto-aof-rewrite-min-size %s\n",
		s.Events, s.Levels, s.Rate, s.RateDuration, s.RateClients, s.SaturationRates, s.SaturationDuration, s.PayloadBytes, s.RedisFsync, s.RedisAOFRewriteMinSize)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d GiB, %s, %s; %s\n", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.Redis)
	fmt.Fprintf(w, "load average (1, 5, 15 min): %s at the start, %s at the end\n", m.LoadAvgStart, m.LoadAvgEnd)
	for _, t := range rep.Targets {
		fmt.Fprintf(w, "\n%s %s: %s\n", t.Name, t.Version, t.Path)
		if t.Error != "" {
			fmt.Fprintf(w, "  error: %s\n", t.Error)
		}
		const row = "  %-22s %9s %9s %9s %12s %10s %10s\n"
		fmt.Fprintf(w, row, "one event to", "p50 ms", "p99 ms", "max ms", "RSS/conn KiB", "RSS MiB", "CPU ms")
		levels := t.Levels
		if t.TwoEdges != nil {
			levels = append(slices.Clip(levels), *t.TwoEdges)
		}
		for i, l := range levels {
			name := fmt.Sprintf("%d clients", l.Clients)
			if t.TwoEdges != nil && i == len(levels)-1 {
				name += " (2 edges)"
			}
			fmt.Fprintf(w, row, name, fmt.Sprintf("%.1f", l.P50Ms), fmt.Sprintf("%.1f", l.P99Ms), fmt.Sprintf("%.1f", l.MaxMs),
				fmt.Sprintf("%.1f", l.RSSPerConnKiB), fmt.Sprintf("%.0f", l.ServerRSSMiB), fmt.Sprintf("%.0f", l.ServerCPUms))
		}
		const rrow = "  %-22s %9s %9s %9s %12s %10s %10s %12s\n"
		rates := t.Saturation
		if t.Steady != nil {
			rates = append([]FanoutRate{*t.Steady}, rates...)
		}
		if len(rates) > 0 {
			fmt.Fprintf(w, rrow, "events/s to clients", "p50 ms", "p99 ms", "max ms", "published/s", "complete", "CPU s", "ack p50/p99")
		}
		for _, x := range rates {
			fmt.Fprintf(w, rrow, fmt.Sprintf("%d/s to %d", x.Offered, x.Clients), fmt.Sprintf("%.1f", x.P50Ms), fmt.Sprintf("%.1f", x.P99Ms),
				fmt.Sprintf("%.1f", x.MaxMs), fmt.Sprintf("%.0f", x.Published), strconv.FormatBool(x.Complete), fmt.Sprintf("%.2f", x.ServerCPU),
				fmt.Sprintf("%.1f/%.1f", x.AckP50Ms, x.AckP99Ms))
		}
		if len(t.Saturation) > 0 {
			fmt.Fprintf(w, "  saturation: %d events/s held (p99 < 50 ms, every event to every client, published at >= 95%% of the rate)\n", t.SaturationRate)
		}
	}
	writeChecks(w, rep.Checks, rep.Notes)
	return nil
}
