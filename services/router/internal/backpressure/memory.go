// Package backpressure decides when the router refuses publishes rather than
// queue them: while Redis is above a memory high-water mark, and while a
// producer is over its publish limit, counted in Redis across every router.
//
// Keys (the quota library prefixes its keys with "rate:"):
//
//	rate:herald:quota:{<application id>}:publish   string   GCRA theoretical arrival time
package backpressure

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// MemoryOptions configure a Memory guard.
type MemoryOptions struct {
	// HighWater is the share of Redis's maxmemory above which publishes are
	// refused: 0 < HighWater <= 1. Default 0.9.
	HighWater float64
	// Interval between two reads of INFO memory. Default 1s.
	Interval time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
}

// Memory refuses publishes while Redis's used_memory is at or above
// HighWater of its maxmemory, so that producers hear "retry later" before
// Redis starts failing writes. It reads INFO memory in the background (Run);
// a publish only loads the last reading. A Redis without maxmemory is never
// refused. The zero value is not usable; a nil *Memory never refuses.
type Memory struct {
	rdb      redis.Cmdable
	high     float64
	interval time.Duration
	log      *slog.Logger

	state atomic.Pointer[MemoryState]
	probe chan struct{} // asks Run for a reading now; capacity 1
}

// MemoryState is one reading of INFO memory.
type MemoryState struct {
	Used, Max uint64 // bytes; Max 0: no maxmemory
	// Refuse is set when Max > 0 and Used >= HighWater * Max.
	Refuse bool
	// Reason says why publishes are refused, for the caller.
	Reason string
}

// NewMemory returns a guard over rdb, not refusing until its first reading.
func NewMemory(rdb redis.Cmdable, o MemoryOptions) (*Memory, error) {
	if o.HighWater == 0 {
		o.HighWater = 0.9
	}
	if !(o.HighWater > 0 && o.HighWater <= 1) { // also refuses NaN
		return nil, fmt.Errorf("memory high-water mark %v is out of range: it is a share of Redis's maxmemory, above 0 and at most 1 (default 0.9)", o.HighWater)
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Memory{rdb: rdb, high: o.HighWater, interval: o.Interval, log: o.Logger, probe: make(chan struct{}, 1)}
	m.state.Store(&MemoryState{})
	return m, nil
}

// Refusing reports whether publishes are to be refused now, and why. It
// costs one atomic load.
func (m *Memory) Refusing() (reason string, refuse bool) {
	if m == nil {
		return "", false
	}
	s := m.state.Load()
	return s.Reason, s.Refuse
}

// State returns the last reading (the zero state for a nil guard).
func (m *Memory) State() MemoryState {
	if m == nil {
		return MemoryState{}
	}
	return *m.state.Load()
}

// Probe asks Run to read INFO memory now rather than at the next tick, as
// when Redis has just refused a write for lack of memory. It never blocks.
func (m *Memory) Probe() {
	if m == nil {
		return
	}
	select {
	case m.probe <- struct{}{}:
	default: // a reading is already asked for
	}
}

// Run reads INFO memory every Interval, and when Probe asks, until ctx
// ends. A failed reading keeps the last state: a probe that cannot reach
// Redis says nothing about its memory. Run returns nil when ctx ends.
func (m *Memory) Run(ctx context.Context) error {
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	failing := false
	for {
		err := m.read(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil && !failing:
			m.log.Warn("cannot read Redis memory; keeping the last reading", "err", err)
		case err == nil && failing:
			m.log.Info("reading Redis memory again")
		}
		failing = err != nil
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-m.probe:
		}
	}
}

// read takes one reading and installs it.
func (m *Memory) read(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(m.interval, time.Second))
	defer cancel()
	info, err := m.rdb.InfoMap(ctx, "memory").Result()
	if err != nil {
		return fmt.Errorf("INFO memory: %w", err)
	}
	sec := info["Memory"]
	used, err := strconv.ParseUint(sec["used_memory"], 10, 64)
	if err != nil {
		return fmt.Errorf("INFO memory: used_memory %q: %w", sec["used_memory"], err)
	}
	maxmem, err := strconv.ParseUint(sec["maxmemory"], 10, 64)
	if err != nil {
		return fmt.Errorf("INFO memory: maxmemory %q: %w", sec["maxmemory"], err)
	}
	next := m.judge(used, maxmem)
	prev := m.state.Swap(next)
	switch {
	case next.Refuse && !prev.Refuse:
		m.log.Warn("refusing publishes: Redis is above the memory high-water mark", "used_memory", used, "maxmemory", maxmem, "high_water", m.high)
	case !next.Refuse && prev.Refuse:
		m.log.Info("accepting publishes again: Redis is below the memory high-water mark", "used_memory", used, "maxmemory", maxmem, "high_water", m.high)
	}
	return nil
}

// judge turns a reading into a state, with the refusal's message written
// once here rather than on every refused publish.
func (m *Memory) judge(used, maxmem uint64) *MemoryState {
	s := &MemoryState{Used: used, Max: maxmem}
	if maxmem == 0 || float64(used) < m.high*float64(maxmem) {
		return s
	}
	s.Refuse = true
	s.Reason = fmt.Sprintf("Redis is at %d%% of maxmemory (%d of %d bytes), above the %s%% high-water mark; retry later, once consumers or retention have freed memory",
		used*100/maxmem, used, maxmem, strconv.FormatFloat(m.high*100, 'f', -1, 64))
	return s
}
