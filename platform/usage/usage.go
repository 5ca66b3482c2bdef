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
