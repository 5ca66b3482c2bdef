package bench

import (
	"encoding/json"
	"fmt"
	"io"
)

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteTable writes the report for people.
func (rep *Report) WriteTable(w io.Writer) error {
	s, m := rep.Settings, rep.Machine
	fmt.Fprintf(w, "herald bench publish: %d events per phase, batch %d, %d concurrent callers, %d-byte JSON data (%d-byte log entry), Redis appendfsync %s\n",
		s.Events, s.Batch, s.Concurrency, s.PayloadBytes, s.EntryBytes, s.RedisFsync)
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d GiB, %s, %s; %s", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.Redis)
	if m.NATSServer != "" {
		fmt.Fprintf(w, "; %s", m.NATSServer)
	}
	fmt.Fprintf(w, "\nload average (1, 5, 15 min): %s at the start, %s at the end\n", m.LoadAvgStart, m.LoadAvgEnd)
	fmt.Fprintf(w, "publishing to Herald as: %s\n\n", s.Principal)

	const row = "%-14s %9s %8s %8s  %-21s %7s %9s %9s %7s %7s %9s %7s\n"
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
		fmt.Fprintf(w, "  %-14s %s; %d calls in %.2fs", p.Name, p.Description, p.Calls, p.Seconds)
		for _, u := range []struct {
			name string
			u    *procUsage
		}{{"router", p.Router}, {"nats-server", p.NATS}} {
			if u.u != nil && u.u.CPUSeconds > 0 {
				fmt.Fprintf(w, "; %s CPU %.0f%% system", u.name, 100*u.u.SystemCPUSeconds/u.u.CPUSeconds)
			}
		}
		fmt.Fprintln(w)
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
