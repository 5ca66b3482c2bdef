// Package usage is how router and edge report usage to metering: records
// appended to one Redis stream, which metering folds into its counters
// exactly once (keyed by record id).
//
// Keys (one hash tag, so metering's fold is one atomic script on one shard):
//
//	herald:{usage}:log   stream of records; field "r" = UsageRecord protobuf
package usage

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// StreamKey is the usage stream.
const StreamKey = "herald:{usage}:log"

// FieldRecord is the entry field holding the record.
const FieldRecord = "r"

// MaxLen caps the stream: metering trims what it has folded, this only bounds
// a stream nobody consumes.
const MaxLen = 1_000_000

// Append adds records to the usage stream in one round trip.
func Append(ctx context.Context, rdb redis.Cmdable, recs ...*meteringv1.UsageRecord) error {
	if len(recs) == 0 {
		return nil
	}
	pipe := rdb.Pipeline()
	if _, err := AppendIn(ctx, pipe, recs...); err != nil {
		return err
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("append usage: %w", err)
	}
	return nil
}

// AppendIn queues the XADDs of recs on pipe, for a caller that sends them
// with other commands in one round trip, and returns them (in the order of
// recs) for the caller to check once pipe has run. Nothing is queued when
// a record does not encode.
func AppendIn(ctx context.Context, pipe redis.Pipeliner, recs ...*meteringv1.UsageRecord) ([]*redis.StringCmd, error) {
	bs := make([][]byte, len(recs))
	for i, r := range recs {
		b, err := proto.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encode usage record: %w", err)
		}
		bs[i] = b
	}
	cmds := make([]*redis.StringCmd, len(bs))
	for i, b := range bs {
		cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{Stream: StreamKey, MaxLen: MaxLen, Approx: true, Values: []any{FieldRecord, b}})
	}
	return cmds, nil
}

// Key identifies one counter.
type Key struct {
	Account, EventType, Channel string
	Metric                      meteringv1.UsageMetric
}

// Batcher sums usage in memory and appends it every interval, so that a busy
// fan-out writes one record per counter per interval instead of one per
// event. A crash loses at most one interval of these counts.
type Batcher struct {
	rdb      redis.Cmdable
	log      *slog.Logger
	interval time.Duration

	mu     sync.Mutex
	counts map[Key]int64
}

// NewBatcher returns a Batcher; run it with Run.
func NewBatcher(rdb redis.Cmdable, log *slog.Logger, interval time.Duration) *Batcher {
	return &Batcher{rdb: rdb, log: log, interval: interval, counts: map[Key]int64{}}
}

// Add counts n events.
func (b *Batcher) Add(k Key, n int64) {
	b.mu.Lock()
	b.counts[k] += n
	b.mu.Unlock()
}

// Run flushes every interval until ctx ends, then flushes once more.
func (b *Batcher) Run(ctx context.Context) {
	t := time.NewTicker(b.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			b.Flush(fctx)
			cancel()
			return
		case <-t.C:
			b.Flush(ctx)
		}
	}
}

// Flush appends what was counted since the last flush. On failure the counts
// are kept for the next try.
func (b *Batcher) Flush(ctx context.Context) {
	b.mu.Lock()
	counts := b.counts
	b.counts = make(map[Key]int64, len(counts))
	b.mu.Unlock()
	if len(counts) == 0 {
		return
	}
	now := timestamppb.Now()
	recs := make([]*meteringv1.UsageRecord, 0, len(counts))
	for k, n := range counts {
		recs = append(recs, &meteringv1.UsageRecord{
			Id: auth.NewID("u_"), ApplicationId: k.Account, EventType: k.EventType,
			Metric: k.Metric, Channel: k.Channel, Quantity: n, Time: now,
		})
	}
	if err := Append(ctx, b.rdb, recs...); err != nil {
		b.log.Warn("usage flush failed; will retry", "err", err)
		b.mu.Lock()
		for k, n := range counts {
			b.counts[k] += n
		}
		b.mu.Unlock()
	}
}
