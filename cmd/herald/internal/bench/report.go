package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
)

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error { return writeJSON(w, rep) }

func writeJSON(w io.Writer, rep any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// writeChecks writes a report's checks and notes.
func writeChecks(w io.Writer, checks []Check, notes []string) {
	fmt.Fprintln(w, "\nchecks:")
	for _, c := range checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s: %s\n", mark, c.Name, c.Detail)
	}
	for _, n := range notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// WriteTable writes the report for people.
func (rep *Report) WriteTable(w io.Writer) error {
	s, m := rep.Settings, rep.Machine
	fmt.Fprintf(w, "herald bench publish: %d events per phase, batch %d, %d concurrent callers, %d-byte JSON data (%d-byte log entry), Redis appendfsync %s, auto-aof-rewrite-min-size %s\n",
		s.Events, s.Batch, s.Concurrency, s.PayloadBytes, s.EntryBytes, s.RedisFsync, s.RedisAOFRewriteMinSize)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d GiB, %s, %s; %s", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.Redis)
	if m.NATSServer != "" {
		fmt.Fprintf(w, "; %s", m.NATSServer)
	}
	fmt.Fprintf(w, "\nload average (1, 5, 15 min): %s at the start, %s at the end\n", m.LoadAvgStart, m.LoadAvgEnd)
	fmt.Fprintf(w, "publishing to Herald as: %s\n\n", s.Principal)

	const row = "%-18s %9s %8s %8s  %-21s %7s %9s %9s %7s %7s %9s %7s\n"
	fmt.Fprintf(w, row, "", "", "", "", "", "router", "router", "router", "redis", "nats", "nats", "client")
	fmt.Fprintf(w, row, "phase", "events/s", "p50 ms", "p99 ms", "latency of", "CPU s", "CPU µs/ev", "peak RSS", "CPU s", "CPU s", "peak RSS", "CPU s")
	for _, p := range rep.Phases {
		router, perEvent, rss, redisCPU, natsCPU, natsRSS := "-", "-", "-", "-", "-", "-"
		if p.Router != nil {
			router = fmt.Sprintf("%.2f", p.Router.CPUSeconds)
			perEvent = fmt.Sprintf("%.0f", p.Router.CPUSeconds*1e6/float64(p.Events))
			rss = fmt.Sprintf("%.0f MiB", p.Router.PeakRSSMiB)
		}
		if p.RedisCPUSeconds != nil {
			redisCPU = fmt.Sprintf("%.2f", *p.RedisCPUSeconds)
		}
		if p.NATS != nil {
			natsCPU = fmt.Sprintf("%.2f", p.NATS.CPUSeconds)
			natsRSS = fmt.Sprintf("%.0f MiB", p.NATS.PeakRSSMiB)
		}
		fmt.Fprintf(w, row, p.Name, fmt.Sprintf("%.0f", p.EventsPerS), fmt.Sprintf("%.2f", p.P50Ms), fmt.Sprintf("%.2f", p.P99Ms),
			p.LatencyOf, router, perEvent, rss, redisCPU, natsCPU, natsRSS, fmt.Sprintf("%.2f", p.ClientCPUSeconds))
	}
	fmt.Fprintln(w)
	for _, p := range rep.Phases {
		fmt.Fprintf(w, "  %-18s %s; %d calls in %.2fs", p.Name, p.Description, p.Calls, p.Seconds)
		if p.AckP99Ms > 0 {
			fmt.Fprintf(w, "; the publish call itself p50 %.2f ms, p99 %.2f ms", p.AckP50Ms, p.AckP99Ms)
		}
		for _, u := range []struct {
			name string
			u    *procUsage
		}{{"router", p.Router}, {"nats-server", p.NATS}, {"edge", p.Edge}} {
			if u.u != nil && u.u.CPUSeconds > 0 {
				fmt.Fprintf(w, "; %s CPU %.0f%% system", u.name, 100*u.u.SystemCPUSeconds/u.u.CPUSeconds)
			}
		}
		if p.Edge != nil {
			fmt.Fprintf(w, "; edge CPU %.2f s, peak RSS %.0f MiB", p.Edge.CPUSeconds, p.Edge.PeakRSSMiB)
		}
		fmt.Fprintln(w)
	}
	if t := rep.goals(); len(t) > 0 {
		fmt.Fprintln(w, "\ntargets of issue 13 (ratios from this run):")
		for _, t := range t {
			mark := "met    "
			if !t.Met {
				mark = "NOT met"
			}
			fmt.Fprintf(w, "  %s %s: %s\n", mark, t.Name, t.Detail)
		}
	}
	fmt.Fprintln(w, "\nchecks:")
	for _, c := range rep.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s: %s\n", mark, c.Name, c.Detail)
	}
	if len(rep.Notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range rep.Notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	return nil
}

// Goal is one of issue 13's targets, as this run measured it.
type Goal struct {
	Name   string `json:"name"`
	Met    bool   `json:"met"`
	Detail string `json:"detail"`
}

// goals compares the run with issue 13's targets, for the phases it has.
// Benchmarks report: a target not met is not an error.
func (rep *Report) goals() []Goal {
	by := map[string]Phase{}
	for _, p := range rep.Phases {
		by[p.Name] = p
	}
	var out []Goal
	ratio := func(name, of string, want float64) {
		a, ok1 := by[name]
		b, ok2 := by[of]
		if !ok1 || !ok2 || b.EventsPerS <= 0 {
			return
		}
		x := a.EventsPerS / b.EventsPerS
		out = append(out, Goal{Name: fmt.Sprintf("%s >= %.1fx %s", name, want, of), Met: x >= want,
			Detail: fmt.Sprintf("%.2fx (%.0f / %.0f events/s)", x, a.EventsPerS, b.EventsPerS)})
	}
	ratio("herald-single", "xadd-single", 0.8)
	ratio("herald-batch", "xadd-batch", 0.5)
	ratio("herald-batch", "nats-js-async", 1.0)
	if p, ok := by["latency"]; ok {
		out = append(out, Goal{Name: "publish to SSE p50 <= 2 ms and p99 <= 10 ms", Met: p.P50Ms <= 2 && p.P99Ms <= 10,
			Detail: fmt.Sprintf("p50 %.2f ms, p99 %.2f ms at %.0f events/s", p.P50Ms, p.P99Ms, p.EventsPerS)})
	}
	if p, ok := by["herald-single-c512"]; ok && p.Router != nil {
		out = append(out, Goal{Name: "router peak RSS < 200 MiB at 512 callers", Met: p.Router.PeakRSSMiB < 200,
			Detail: fmt.Sprintf("%.0f MiB", p.Router.PeakRSSMiB)})
	}
	return out
}

// WriteJSON writes the report as indented JSON.
func (rep *WebhookReport) WriteJSON(w io.Writer) error { return writeJSON(w, rep) }

// WriteTable writes the report for people.
func (rep *WebhookReport) WriteTable(w io.Writer) error {
	s, m := rep.Settings, rep.Machine
	fmt.Fprintf(w, "herald bench webhooks: %d events to 1 endpoint, %d events to each of %d endpoints, max %d requests in flight per endpoint, slow endpoint %s, steady %d events/s for %s, %d-byte JSON data, Redis appendfsync %s, auto-aof-rewrite-min-size %s\n",
		s.Events, s.FanoutEvents, s.Endpoints, s.MaxConcurrency, s.SlowSleep, s.Rate, s.RateDuration, s.PayloadBytes, s.RedisFsync, s.RedisAOFRewriteMinSize)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d GiB, %s, %s; %s\n", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.Redis)
	fmt.Fprintf(w, "load average (1, 5, 15 min): %s at the start, %s at the end\n\n", m.LoadAvgStart, m.LoadAvgEnd)
	const row = "%-20s %9s %10s %12s %8s %8s %6s %7s %9s %9s %7s %7s %7s\n"
	fmt.Fprintf(w, row, "", "", "", "", "publish→", "receipt", "", "edge", "edge", "edge", "router", "redis", "client")
	fmt.Fprintf(w, row, "phase", "endpoints", "deliveries", "deliveries/s", "p50 ms", "p99 ms", "dups", "CPU s", "CPU µs/d", "peak RSS", "CPU s", "CPU s", "CPU s")
	for _, p := range rep.Phases {
		edge, per, rss, router, redisCPU := "-", "-", "-", "-", "-"
		if p.Edge != nil {
			edge = fmt.Sprintf("%.2f", p.Edge.CPUSeconds)
			if p.Deliveries > 0 {
				per = fmt.Sprintf("%.0f", p.Edge.CPUSeconds*1e6/float64(p.Deliveries))
			}
			rss = fmt.Sprintf("%.0f MiB", p.Edge.PeakRSSMiB)
		}
		if p.Router != nil {
			router = fmt.Sprintf("%.2f", p.Router.CPUSeconds)
		}
		if p.RedisCPU != nil {
			redisCPU = fmt.Sprintf("%.2f", *p.RedisCPU)
		}
		fmt.Fprintf(w, row, p.Name, strconv.Itoa(p.Endpoints), strconv.Itoa(p.Deliveries), fmt.Sprintf("%.0f", p.DeliveriesPerS),
			fmt.Sprintf("%.1f", p.P50Ms), fmt.Sprintf("%.1f", p.P99Ms), strconv.Itoa(p.Duplicates), edge, per, rss, router, redisCPU, fmt.Sprintf("%.2f", p.ClientCPU))
	}
	if c := rep.Compare; c != nil {
		fmt.Fprintf(w, "\nslow endpoint: the healthy endpoints got %.0f deliveries/s with it and %.0f without (the mean of the runs before and after): it cost them %.1f%%\n", c.WithSlow, c.Healthy, 100*c.CostRatio)
	}
	for _, p := range rep.Phases {
		if p.SlowReceived > 0 {
			fmt.Fprintf(w, "%s: the slow endpoint received %d requests meanwhile\n", p.Name, p.SlowReceived)
		}
	}
	writeChecks(w, rep.Checks, rep.Notes)
	return nil
}

// WriteJSON writes the report as indented JSON.
func (rep *UsageReport) WriteJSON(w io.Writer) error { return writeJSON(w, rep) }

// WriteTable writes the report for people.
func (rep *UsageReport) WriteTable(w io.Writer) error {
	s, m, x := rep.Settings, rep.Machine, rep.Metered
	fmt.Fprintf(w, "herald bench usage: %d records/s offered for %s by %d producers (platform/usage Appender: %d records per entry, flush every %s), %.0f%% duplicates; %d tenants, %d applications, %d event types, %d channels; %.0f-byte records; Redis appendfsync %s, auto-aof-rewrite-min-size %s\n",
		s.Rate, s.Duration, s.Producers, s.BatchSize, s.FlushEvery, 100*s.Duplicates, s.Tenants, s.Apps, s.Types, s.Channels, s.RecordBytes, s.RedisFsync, s.RedisAOFRewriteMinSize)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d GiB, %s, %s; %s\n", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.Redis)
	fmt.Fprintf(w, "load average (1, 5, 15 min): %s at the start, %s at the end\n\n", m.LoadAvgStart, m.LoadAvgEnd)

	fmt.Fprintf(w, "metered: producers -> usage stream -> metering's fold\n")
	fmt.Fprintf(w, "  appended   %d records (%d unique, %d duplicates) in %.2f s: %.0f records/s (offered %d)\n",
		x.Appended, x.Unique, x.Duplicates, x.Seconds, x.AppendedPerS, s.Rate)
	fmt.Fprintf(w, "  folded     the stream was empty %.2f s after the last append: %.0f records/s over the whole phase\n", x.DrainSeconds, x.FoldedPerS)
	verdict := "met"
	switch {
	case s.Rate < s.TargetRate:
		verdict = "not measured: offered below the target rate"
	case x.LagP99Ms >= s.TargetLagMs || x.AppendedPerS < 0.95*float64(s.TargetRate):
		verdict = "NOT met"
	}
	fmt.Fprintf(w, "  lag        append to counted, %d probes (one every %s): p50 %.1f ms, p99 %.1f ms, max %.1f ms  (target: < %.0f ms at %d records/s: %s)\n",
		x.LagSamples, s.ProbeEvery, x.LagP50Ms, x.LagP99Ms, x.LagMaxMs, s.TargetLagMs, s.TargetRate, verdict)
	fmt.Fprintf(w, "  backlog    at most %d entries in the usage stream\n", x.MaxBacklogEntries)
	fmt.Fprintf(w, "  pending    %d counter fields folded, not yet rolled up into the quarter-hour, hour and day buckets, when checked\n", x.PendingFields)
	if u := x.Metering; u != nil {
		fmt.Fprintf(w, "  metering   CPU %.2f s (%.0f%% system), %.2f µs per record; peak RSS %.0f MiB\n", u.CPUSeconds, pct(u.SystemCPUSeconds, u.CPUSeconds), x.MeteringUsPerRec, u.PeakRSSMiB)
	}
	if x.RedisCPU != nil {
		fmt.Fprintf(w, "  redis      CPU %.2f s, %.2f µs per record\n", *x.RedisCPU, x.RedisUsPerRec)
	}
	if len(x.RedisCommands) > 0 {
		fmt.Fprintf(w, "  redis time by command (INFO commandstats; the fold script's calls are inside evalsha):")
		for _, c := range x.RedisCommands[:min(len(x.RedisCommands), 6)] {
			fmt.Fprintf(w, " %s %d calls %.1f µs/call %.2f s;", c.Name, c.Calls, c.PerUs, float64(c.Usec)/1e6)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  producers  CPU %.2f s (this process: records, Appenders, probes)\n", x.ClientCPU)
	if r := rep.Raw; r != nil {
		fmt.Fprintf(w, "\nraw baseline: XADD of %d-record entries (the same encoding), %d clients, nothing folding\n", s.BatchSize, r.Concurrency)
		fmt.Fprintf(w, "  %d records (%d entries) in %.2f s: %.0f records/s; XADD p50 %.2f ms, p99 %.2f ms", r.Records, r.Entries, r.Seconds, r.RecordsPerS, r.P50Ms, r.P99Ms)
		if r.RedisCPU != nil {
			fmt.Fprintf(w, "; redis CPU %.2f s, %.2f µs per record", *r.RedisCPU, r.RedisUsPerRec)
		}
		fmt.Fprintln(w)
		if r.RecordsPerS > 0 {
			fmt.Fprintf(w, "  metered append rate is %.0f%% of the raw rate; metering folded at %.0f%% of it\n", 100*x.AppendedPerS/r.RecordsPerS, 100*x.FoldedPerS/r.RecordsPerS)
		}
	}
	fmt.Fprintf(w, "\n%6s %10s %16s %12s %7s\n", "second", "appended", "backlog entries", "max lag ms", "probes")
	for _, t := range rep.Timeline {
		fmt.Fprintf(w, "%6d %10d %16d %12.1f %7d\n", t.Second, t.Appended, t.BacklogEntries, t.LagMaxMs, t.Probes)
	}
	writeChecks(w, rep.Checks, rep.Notes)
	return nil
}

func pct(part, whole float64) float64 {
	if whole <= 0 {
		return 0
	}
	return 100 * part / whole
}
