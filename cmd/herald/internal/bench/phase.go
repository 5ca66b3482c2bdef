package bench

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Phase is the outcome of one measured phase.
type Phase struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Events      int    `json:"events"`
	// Calls is the number of timed operations: publish calls, XADD calls or
	// pipelines, or JetStream messages.
	Calls       int     `json:"calls"`
	BatchSize   int     `json:"batch_size"`
	Concurrency int     `json:"concurrency"`
	Seconds     float64 `json:"seconds"`
	EventsPerS  float64 `json:"events_per_second"`
	// LatencyOf says what P50Ms and P99Ms time: "call", "batch" or
	// "message (send to ack)".
	LatencyOf string  `json:"latency_of"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	// Router is the router process's usage during the phase (Herald phases).
	Router *procUsage `json:"router,omitempty"`
	// RedisCPUSeconds is redis-server's CPU time during the phase (Herald
	// and raw XADD phases), from INFO cpu.
	RedisCPUSeconds *float64 `json:"redis_cpu_seconds,omitempty"`
	// NATS is the nats-server process's usage during the phase.
	NATS *procUsage `json:"nats_server,omitempty"`
	// Edge is the edge process's usage during the phase (latency).
	Edge *procUsage `json:"edge,omitempty"`
	// AckP50Ms and AckP99Ms time the publish call itself when P50Ms and
	// P99Ms time something longer (latency: publish to SSE delivery).
	AckP50Ms float64 `json:"ack_p50_ms,omitempty"`
	AckP99Ms float64 `json:"ack_p99_ms,omitempty"`
	// ClientCPUSeconds is the CPU time of the benchmark's own process
	// during the phase: the callers (gRPC, Redis or NATS clients), and the
	// registry, which runs in it and is idle while phases run.
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// latencies collects per-call durations from concurrent workers.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100), in ms.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return float64(sorted[rank]) / float64(time.Millisecond)
}

// runCalls runs fn(i) for i in [0, calls) on `concurrency` workers, timing
// each call. It stops at the first error.
func runCalls(ctx context.Context, calls, concurrency int, fn func(ctx context.Context, i int) error) (time.Duration, []time.Duration, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var lat latencies
	var wg sync.WaitGroup
	start := time.Now()
	for range max(1, min(concurrency, calls)) {
		wg.Go(func() {
			mine := make([]time.Duration, 0, calls/concurrency+1)
			defer func() { lat.add(mine) }()
			for {
				i := int(next.Add(1) - 1)
				if i >= calls || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if err := fn(ctx, i); err != nil {
					cancel(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := context.Cause(ctx); err != nil {
		return elapsed, nil, err
	}
	return elapsed, lat.d, nil
}

// finish fills the throughput and latency fields of p.
func (p *Phase) finish(elapsed time.Duration, lat []time.Duration) {
	slices.Sort(lat)
	p.Seconds = elapsed.Seconds()
	if p.Seconds > 0 {
		p.EventsPerS = float64(p.Events) / p.Seconds
	}
	p.P50Ms = percentile(lat, 50)
	p.P99Ms = percentile(lat, 99)
}
