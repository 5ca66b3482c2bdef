package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/rpc"
)

// singlePhase publishes Options.Events events, one per call, from callers
// concurrent callers spread over pubs (call i on pubs[i%len(pubs)]).
func (r *run) singlePhase(ctx context.Context, name, desc string, callers int, pubs []*publisher) error {
	evs := makeEvents(name, r.o.Events, r.o.PayloadBytes)
	r.progress("%s: %d events, one per Publish, %s on %s", name, len(evs), plural(callers, "caller"), plural(len(pubs), "gRPC connection"))
	ph := Phase{Name: name, Description: desc, Events: len(evs), Calls: len(evs), BatchSize: 1, Concurrency: callers, LatencyOf: "call"}
	done := r.meter(true, true, false)
	elapsed, lat, err := runCalls(ctx, len(evs), callers, func(ctx context.Context, i int) error {
		_, err := pubs[i%len(pubs)].publish(ctx, evs[i:i+1], false)
		return err
	})
	done(&ph)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.heraldAcked += len(evs)
	ph.finish(elapsed, lat)
	r.rep.Phases = append(r.rep.Phases, ph)
	return nil
}

// callersPerConn is how many callers of a herald-single-cN phase share one
// gRPC connection: below the 250 concurrent streams Go's HTTP/2 server
// allows per connection (more would queue in the client), and few
// connections for hundreds of callers (the 20,000-file limit).
const callersPerConn = 128

// callerPhases runs a herald-single-cN phase for each Options.Callers.
func (r *run) callerPhases(ctx context.Context) error {
	for _, n := range r.o.Callers {
		if err := r.callerPhase(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) callerPhase(ctx context.Context, n int) error {
	name := "herald-single-c" + strconv.Itoa(n)
	pubs := []*publisher{r.pub}
	defer func() {
		for _, p := range pubs[1:] {
			p.Close()
		}
	}()
	for len(pubs) < (n+callersPerConn-1)/callersPerConn {
		p, err := newPublisher(r.common.RouterAddr, r.pub.key)
		if err != nil {
			return err
		}
		pubs = append(pubs, p)
		// Warm the new connection up.
		if _, err := p.publish(ctx, makeEvents(fmt.Sprintf("%s-warm-%d", name, len(pubs)), 1, r.o.PayloadBytes), false); err != nil {
			return fmt.Errorf("%s: warm-up publish: %w", name, err)
		}
		r.heraldAcked++
	}
	return r.singlePhase(ctx, name, fmt.Sprintf("as herald-single, %s on %s", plural(n, "caller"), plural(len(pubs), "gRPC connection")), n, pubs)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// latencyWarmUp is the number of events the latency phase publishes, and
// waits for, before it measures.
const latencyWarmUp = 20

// latencyPhase starts the edge and one SSE client of it (in this process,
// the fan-out benchmark's client), publishes one event at a time at
// Options.LatencyRate for Options.LatencyDuration, and times each event
// from the start of its publish call to its arrival at the client. The
// edge is stopped at the end.
func (r *run) latencyPhase(ctx context.Context, dir string) error {
	o := r.o
	reg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(r.common.RegistryAddr), rpc.ClientOptions(r.common.AdminKey)...)
	if err := registerFanType(ctx, reg); err != nil {
		return err
	}
	readKey, err := benchApp(ctx, reg, "herald-bench-reader", registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE)
	if err != nil {
		return err
	}
	r.progress("starting the edge (%s) on %s", o.EdgeBin, r.common.EdgeAddr)
	r.edge, err = startEdge(ctx, "edge", o.EdgeBin, r.common, o.EdgeEnv, filepath.Join(dir, "edge.log"))
	if r.edge != nil {
		defer r.edge.stop(20 * time.Second)
	}
	if err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	client := &loader{}
	defer client.closeAll()
	if err := client.connect(loaderCmd{N: 1, URL: "http://" + r.common.EdgeAddr + "/v1/stream?types=" + fanType,
		Headers: map[string]string{"Authorization": "Bearer " + readKey}}); err != nil {
		return fmt.Errorf("latency: SSE client: %w", err)
	}

	var seq int64
	send := func() (time.Duration, error) {
		seq++
		t0 := time.Now()
		ev := fanEvent("latency-"+strconv.FormatInt(seq, 10), stampedData(seq, t0.UnixNano(), o.PayloadBytes))
		_, err := r.pub.publish(ctx, []*eventv1.CloudEvent{ev}, false)
		return time.Since(t0), err
	}
	// Warm up: the edge's catalog and tail, the client's stream.
	for range latencyWarmUp {
		if _, err := send(); err != nil {
			return fmt.Errorf("latency warm-up publish: %w", err)
		}
	}
	r.heraldAcked += latencyWarmUp
	if client.wait(1, seq, 30*time.Second) != 1 {
		return fmt.Errorf("latency: the SSE client did not receive the %d warm-up events in 30s", latencyWarmUp)
	}
	client.collect()

	total := max(1, int(o.LatencyDuration.Seconds()*float64(o.LatencyRate)))
	interval := time.Second / time.Duration(o.LatencyRate)
	r.progress("latency: %d events, one at a time at %d/s, to 1 SSE client of the edge", total, o.LatencyRate)
	ph := Phase{Name: "latency", Description: fmt.Sprintf("publish (1 event per call, %d/s) to arrival at 1 SSE client of the edge", o.LatencyRate),
		Events: total, Calls: total, BatchSize: 1, Concurrency: 1, LatencyOf: "publish to SSE"}
	done, edge := r.meter(true, true, false), startMeter(r.edge.pid())
	first := seq + 1
	acks := make([]time.Duration, 0, total)
	start := time.Now()
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ack, err := send()
		if err != nil {
			return fmt.Errorf("latency: publish: %w", err)
		}
		r.heraldAcked++
		acks = append(acks, ack)
	}
	elapsed := time.Since(start)
	complete := client.wait(first, seq, 10*time.Second) == 1
	done(&ph)
	ph.Edge, _ = edge.stop()
	samples, dups := client.collect()
	lat := make([]time.Duration, len(samples))
	for i, us := range samples {
		lat[i] = time.Duration(us) * time.Microsecond
	}
	ph.finish(elapsed, lat)
	slices.Sort(acks)
	ph.AckP50Ms, ph.AckP99Ms = percentile(acks, 50), percentile(acks, 99)
	r.rep.Phases = append(r.rep.Phases, ph)
	r.check("the SSE client received every event of the latency phase once", complete && dups == 0 && len(samples) == total,
		"%d of %d events received, %d duplicates", len(samples), total, dups)
	return nil
}
