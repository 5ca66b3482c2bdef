package appender_test

import (
	"context"
	"fmt"
	"testing"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/router/internal/appender"
	"github.com/redis/go-redis/v9"
)

// The two benchmarks write the same batches of 100 new events (fresh ids
// every iteration, so the dedupe check never short-cuts) to the same kind of
// Redis (AOF, appendfsync always): one through the Appender, one as a raw
// pipelined XADD. Compare them for the cost of deduplication:
//
//	go test -run '^$' -bench 'AppendBatch100|XAddRaw100' ./services/router/internal/appender

const benchBatch = 100

// benchEvents returns batch n's events, spread over three types.
func benchEvents(n int) []*eventv1.CloudEvent {
	types := []string{orderCreated, orderPaid, invoicePaid}
	evs := make([]*eventv1.CloudEvent, benchBatch)
	for j := range evs {
		evs[j] = newEvent(types[j%len(types)], "/bench", fmt.Sprintf("b%d-%d", n, j))
	}
	return evs
}

func BenchmarkAppendBatch100(b *testing.B) {
	rdb := testutil.RedisClient(b, testutil.Redis(b))
	a := appender.New(rdb, appender.Options{})
	ctx := context.Background()
	if err := a.Load(ctx); err != nil {
		b.Fatal(err)
	}
	n := 0
	for b.Loop() {
		items := itemsOf("app_bench", benchEvents(n)...)
		n++
		if _, err := a.Append(ctx, items); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchBatch*b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkXAddRaw100(b *testing.B) {
	rdb := testutil.RedisClient(b, testutil.Redis(b))
	ctx := context.Background()
	n := 0
	for b.Loop() {
		evs := benchEvents(n)
		n++
		pipe := rdb.Pipeline()
		for _, ev := range evs {
			fields, err := eventlog.Encode(ev, "app_bench")
			if err != nil {
				b.Fatal(err)
			}
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: eventlog.StreamKey(ev.GetType()), MaxLen: 1_000_000, Approx: true, Values: fields})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchBatch*b.N)/b.Elapsed().Seconds(), "events/s")
}
