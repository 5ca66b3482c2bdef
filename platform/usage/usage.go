// Package usage is how router and edge report usage to metering: records
// appended to one Redis stream, which metering folds into its counters
// exactly once (keyed by record id). A delivery's record id derives from
// the delivery (DeliveryID), so a redelivery or a replay counts once; the
// Appender batches records, many per stream entry.
//
// Keys (one hash tag, so metering's fold is one atomic script on one shard):
//
//	herald:{usage}:log   stream of entries; field "r" = one UsageRecord protobuf,
//	                     or field "rs" = a UsageRecordBatch protobuf
package usage

import (
	"context"
	"fmt"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
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

// SeenShards is how many seen sets metering keeps per day.
const SeenShards = 16

// SeenShard is the seen set (0 to SeenShards-1) of a record id: FNV-1a of
// the id. Metering's fold and whoever checks its markers must agree on it,
// so it never changes.
func SeenShard(id string) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return int(h % SeenShards)
}

// SeenSetKey is the set in which metering marks the record id as folded
// when it folds the record on t's UTC day (its own clock): the record's
// counters and this marker are written by one atomic script, so a record
// is counted exactly when its id is in one of these sets.
func SeenSetKey(t time.Time, id string) string {
	return fmt.Sprintf("herald:{usage}:s:%s:%x", t.UTC().Format("20060102"), SeenShard(id))
}
