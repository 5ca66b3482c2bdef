// Package fold is metering's consumer of the usage stream: it reads records
// through the "metering" consumer group, counts each exactly once into its
// hour bucket, and takes over the entries of consumers that died mid-fold.
package fold

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Options tune a Folder. The zero value is ready to use.
type Options struct {
	// Log receives warnings; nil discards them.
	Log *slog.Logger
	// Consumer names this process in the group; default host-pid-random,
	// which is unique per process.
	Consumer string
	// Block is how long one read waits for new records. Default 2s; it also
	// bounds how long Run takes to notice cancellation.
	Block time.Duration
	// Count is how many entries one read returns at most. Default 256.
	Count int64
	// ClaimIdle is how long an entry must have been pending with another
	// consumer before it is taken over. Default 30s.
	ClaimIdle time.Duration
	// ClaimEvery is how often pending entries are scanned. Default 10s.
	ClaimEvery time.Duration
	// ForgetIdle is how long a consumer with nothing pending must have been
	// silent before it is removed from the group. Default 1h.
	ForgetIdle time.Duration
	// FoldBytes bounds the entry bytes given to one fold round trip (see
	// foldBytes, the default).
	FoldBytes int
	// RollupEvery is how often the pending counts of closed minutes are
	// rolled up into the coarser buckets. Default 1s.
	RollupEvery time.Duration
	// RollupDelay is how long after its end a minute is rolled up, counted
	// from the oldest record still to fold (records of it appended later
	// are rolled up on a later pass). Default 5s.
	RollupDelay time.Duration
	// RollupDuty is the fraction of Redis' time a rollup may take while it
	// runs (see store.Rollup), four times that when more than two ended
	// minutes wait. Default 0.1: a minute of 50,000 records/s is some
	// 200,000 pending fields, 3 to 4 s of Redis to roll up.
	RollupDuty float64
	// ReadEvery is the shortest time between two reads of one worker: when
	// the fold keeps up, a read returns what arrived since the last, and the
	// more records one fold gets, the more of them share a counter (one
	// HINCRBY each per fold). It adds up to that much to the lag. Default 0
	// (read again at once).
	ReadEvery time.Duration
	// Workers is how many fold loops read the stream at once, each as a
	// consumer of its own (the first named Consumer, the others Consumer-wN):
	// one decodes while Redis runs another's fold script. Default 1.
	Workers int
	// Metrics receives the fold's counters; nil registers none.
	Metrics prometheus.Registerer
}

// Folder folds the usage stream into counters. Run drives it.
type Folder struct {
	st    *store.Store
	log   *slog.Logger
	opts  Options
	ready atomic.Bool

	counted, duplicates, skipped, rolled prometheus.Counter
}

// New returns a Folder over st.
func New(st *store.Store, o Options) *Folder {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Consumer == "" {
		host, _ := os.Hostname()
		o.Consumer = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), auth.NewID(""))
	}
	if o.Block <= 0 {
		o.Block = 2 * time.Second
	}
	if o.Count <= 0 {
		o.Count = 256
	}
	if o.ClaimIdle <= 0 {
		o.ClaimIdle = 30 * time.Second
	}
	if o.ClaimEvery <= 0 {
		o.ClaimEvery = 10 * time.Second
	}
	if o.ForgetIdle <= 0 {
		o.ForgetIdle = time.Hour
	}
	if o.FoldBytes <= 0 {
		o.FoldBytes = foldBytes
	}
	if o.RollupDuty <= 0 || o.RollupDuty > 1 {
		o.RollupDuty = 0.1
	}
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.RollupEvery <= 0 {
		o.RollupEvery = time.Second
	}
	if o.RollupDelay <= 0 {
		o.RollupDelay = 5 * time.Second
	}
	f := &Folder{st: st, log: o.Log, opts: o}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		if o.Metrics != nil {
			o.Metrics.MustRegister(c)
		}
		return c
	}
	f.counted = counter("herald_metering_records_folded_total", "Usage records counted.")
	f.duplicates = counter("herald_metering_records_duplicate_total", "Usage records dropped because their id had been counted already.")
	f.skipped = counter("herald_metering_records_invalid_total", "Usage stream entries dropped because they hold no valid record.")
	f.rolled = counter("herald_metering_rollup_fields_total", "Pending minute counters rolled up into the minute, quarter-hour, hour and day buckets.")
	return f
}

// Consumer is this Folder's name in the consumer group.
func (f *Folder) Consumer() string { return f.opts.Consumer }

// Ready reports whether the consumer group exists, i.e. whether Run is
// folding. It is a readiness check.
func (f *Folder) Ready(context.Context) error {
	if !f.ready.Load() {
		return errors.New("usage consumer group not created yet")
	}
	return nil
}

// Run folds until ctx is done. It first folds what this consumer left
// pending, then new records, and every ClaimEvery it takes over entries
// other consumers left pending for longer than ClaimIdle. Redis errors are
// logged and retried with backoff; Run returns only when ctx is done, after
// folding what it had read, and removes this consumer from the group if it
// holds nothing. Meanwhile it rolls up the pending counts of closed
// minutes every RollupEvery.
func (f *Folder) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { f.rollLoop(ctx) })
	for w := 1; w < f.opts.Workers; w++ {
		wg.Go(func() { f.loop(ctx, fmt.Sprintf("%s-w%d", f.opts.Consumer, w), false) })
	}
	f.loop(ctx, f.opts.Consumer, true)
	wg.Wait()
}

// loop is one fold worker, reading as consumer; the main one (main) also
// takes over other consumers' entries and says whether the group exists.
func (f *Folder) loop(ctx context.Context, consumer string, main bool) {
	bo := backoff.New(backoff.Options{})
	joined := false
	defer func() {
		if main {
			f.ready.Store(false)
		}
		if joined {
			f.leave(ctx, consumer)
		}
	}()
	setReady := func(v bool) {
		if main {
			f.ready.Store(v)
		}
	}
	needGroup, own := true, true
	var nextClaim, lastRead time.Time
	for ctx.Err() == nil {
		if needGroup {
			if err := f.st.EnsureGroup(ctx); err != nil {
				f.retry(ctx, bo, "create consumer group", err)
				continue
			}
			needGroup, joined = false, true
			setReady(true)
		}
		if main && !time.Now().Before(nextClaim) {
			if err := f.claim(ctx); err != nil {
				if store.IsNoGroup(err) {
					needGroup = true
					setReady(false)
				}
				f.retry(ctx, bo, "claim idle entries", err)
				continue
			}
			nextClaim = time.Now().Add(f.opts.ClaimEvery)
		}
		id, block := ">", f.opts.Block
		if own {
			id, block = "0", -1
		} else if wait := time.Until(lastRead.Add(f.opts.ReadEvery)); wait > 0 && !backoff.Sleep(ctx, wait) {
			continue
		}
		lastRead = time.Now()
		msgs, err := f.st.Read(ctx, consumer, id, f.opts.Count, block)
		if err != nil {
			if store.IsNoGroup(err) {
				needGroup = true
				setReady(false)
			}
			own = true
			f.retry(ctx, bo, "read usage stream", err)
			continue
		}
		if own && len(msgs) == 0 {
			own = false
			continue
		}
		if err := f.fold(ctx, msgs); err != nil {
			own = true // what was read stays pending with this consumer
			f.retry(ctx, bo, "fold usage", err)
			continue
		}
		bo.Reset()
	}
}

// foldBytes bounds the entry bytes one Fold call (one round trip, one
// timeout) is given. A read returns up to Count entries, and an entry of
// the Appender holds up to 500 records: 256 of them are 128,000 records,
// dozens of script calls that, under load, outlast foldTimeout. The
// scripts then still run and count, but the reply is lost: the retry finds
// the records seen, acknowledges them and reports them as duplicates, and
// Redis did the work twice. 2 MiB is some 10,000 records of 200 bytes,
// one or two script calls: about 0.1 s of Redis, far inside the timeout
// (and the Redis client's 5 s read timeout) even with the other fold
// worker's calls and the rollup between, unless the machine is starved.
const foldBytes = 2 << 20

// foldTimeout bounds one Fold call.
const foldTimeout = 10 * time.Second

// fold folds msgs even when ctx has just been cancelled: they were read,
// and folding them now saves another process the claim delay. It folds
// them in chunks of about FoldBytes, each its own round trip; on an error
// the chunks before it stay folded and acknowledged.
func (f *Folder) fold(ctx context.Context, msgs []redis.XMessage) error {
	for len(msgs) > 0 {
		n, size := 0, 0
		for n < len(msgs) && (n == 0 || size+entryBytes(msgs[n]) <= f.opts.FoldBytes) {
			size += entryBytes(msgs[n])
			n++
		}
		if err := f.foldChunk(ctx, msgs[:n]); err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

func (f *Folder) foldChunk(ctx context.Context, msgs []redis.XMessage) error {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), foldTimeout)
	defer cancel()
	res, err := f.st.Fold(fctx, msgs)
	if err != nil {
		return err
	}
	for _, s := range res.Skipped {
		f.log.Warn("dropped a usage entry that holds no valid record", "entry", s.ID, "err", s.Reason)
	}
	f.counted.Add(float64(res.Counted))
	f.duplicates.Add(float64(res.Duplicates))
	f.skipped.Add(float64(len(res.Skipped)))
	return nil
}

// entryBytes is the size of an entry's values.
func entryBytes(m redis.XMessage) int {
	n := 0
	for k, v := range m.Values {
		n += len(k)
		if s, ok := v.(string); ok {
			n += len(s)
		}
	}
	return n
}

// maxClaimPages bounds one claim pass, so that a huge backlog of pending
// entries does not starve new records; the next pass continues.
const maxClaimPages = 16

// claim takes over and folds entries that dead consumers left pending, and
// removes long-silent consumers that hold nothing.
func (f *Folder) claim(ctx context.Context) error {
	start := "0-0"
	for range maxClaimPages {
		msgs, next, err := f.st.AutoClaim(ctx, f.opts.Consumer, f.opts.ClaimIdle, start, f.opts.Count)
		if err != nil {
			return err
		}
		if len(msgs) > 0 {
			f.log.Info("took over usage entries left pending by another consumer", "entries", len(msgs))
		}
		if err := f.fold(ctx, msgs); err != nil {
			return err
		}
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	consumers, err := f.st.Consumers(ctx)
	if err != nil {
		return err
	}
	for _, c := range consumers {
		if c.Name != f.opts.Consumer && c.Pending == 0 && c.Idle > f.opts.ForgetIdle {
			if err := f.st.DeleteConsumer(ctx, c.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// rollLoop rolls up closed minutes every RollupEvery until ctx is done.
// Several processes may do so at once: each rollup step is atomic.
func (f *Folder) rollLoop(ctx context.Context) {
	t := time.NewTicker(f.opts.RollupEvery)
	defer t.Stop()
	bo := backoff.New(backoff.Options{})
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Roll up the minutes that ended RollupDelay before the oldest record
		// still to fold: with a backlog, the minutes it will still add to wait.
		horizon := time.Now()
		oldest, ok, err := f.st.Oldest(ctx)
		if err != nil {
			f.retry(ctx, bo, "roll up minutes", err)
			continue
		}
		if ok && oldest.Before(horizon) {
			horizon = oldest
		}
		before := horizon.Add(-f.opts.RollupDelay)
		// Behind by more than two minutes (the rollup had too little of
		// Redis, or metering was down): catch up at four times the duty.
		duty := f.opts.RollupDuty
		ms, err := f.st.PendingMinutes(ctx)
		if err != nil {
			f.retry(ctx, bo, "roll up minutes", err)
			continue
		}
		closed := 0
		for _, m := range ms {
			if m.Before(before.Truncate(time.Minute)) {
				closed++
			}
		}
		if closed > 2 {
			duty = min(1, 4*duty)
		}
		n, err := f.st.Rollup(ctx, before, 0, duty)
		f.rolled.Add(float64(n))
		if err != nil {
			f.retry(ctx, bo, "roll up minutes", err)
			continue
		}
		bo.Reset()
	}
}

// leave removes this consumer from the group when it holds no pending
// entries, so that restarts do not pile up consumer names.
func (f *Folder) leave(ctx context.Context, consumer string) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := f.st.DeleteConsumer(lctx, consumer); err != nil {
		f.log.Warn("could not leave the usage consumer group", "consumer", consumer, "err", err)
	}
}

// retry logs err and waits the next backoff delay, or until ctx is done.
func (f *Folder) retry(ctx context.Context, bo *backoff.Backoff, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	d := bo.Next()
	f.log.Warn("usage fold: "+what+" failed; retrying", "err", err, "retry_in", d.Round(time.Millisecond).String())
	backoff.Sleep(ctx, d)
}
