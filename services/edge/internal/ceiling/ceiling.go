// Package ceiling bounds the streams one edge serves at once, across every
// delivery channel (SSE, StreamEvents, and any later long-poll or WebSub
// channel): one count, one limit, one gauge per channel.
package ceiling

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Ceiling counts open streams against one limit.
type Ceiling struct {
	max        int64
	retryAfter time.Duration
	total      atomic.Int64
	open       map[string]*atomic.Int64
	gauge      *prometheus.GaugeVec
}

// New returns a ceiling of max streams over the given channels. A refused
// client is told to retry after retryAfter.
func New(max int64, retryAfter time.Duration, channels ...string) *Ceiling {
	c := &Ceiling{
		max: max, retryAfter: retryAfter, open: map[string]*atomic.Int64{},
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_edge_streams", Help: "Open delivery streams, by channel; they share one ceiling.",
		}, []string{"channel"}),
	}
	for _, ch := range channels {
		c.open[ch] = new(atomic.Int64)
		c.gauge.WithLabelValues(ch).Set(0)
	}
	return c
}

// Acquire counts one stream of channel (one of New's), or reports false
// when the ceiling is reached. release must be called once when the stream
// ends.
func (c *Ceiling) Acquire(channel string) (release func(), ok bool) {
	if c.total.Add(1) > c.max {
		c.total.Add(-1)
		return nil, false
	}
	n := c.open[channel]
	n.Add(1)
	g := c.gauge.WithLabelValues(channel)
	g.Inc()
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			g.Dec()
			n.Add(-1)
			c.total.Add(-1)
		}
	}, true
}

// Max is the ceiling.
func (c *Ceiling) Max() int64 { return c.max }

// Active is the number of open streams of channel.
func (c *Ceiling) Active(channel string) int64 { return c.open[channel].Load() }

// Total is the number of open streams of every channel.
func (c *Ceiling) Total() int64 { return c.total.Load() }

// RetryAfter is the Retry-After value for a refused client, in whole seconds.
func (c *Ceiling) RetryAfter() string {
	return strconv.Itoa(max(1, int(c.retryAfter.Round(time.Second)/time.Second)))
}

// Collector exports herald_edge_streams{channel}.
func (c *Ceiling) Collector() prometheus.Collector { return c.gauge }
