package router_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/redis/go-redis/v9"
)

// The two benchmarks consume the same log, b.N events of one type written
// beforehand (not timed), and acknowledge everything in batches of 100: one
// through RouterService.Subscribe (a Connect client over h2c, a window of
// 1000, Ack calls from a second goroutine), one as a raw XREADGROUP COUNT
// 100 + XACK loop on the same kind of Redis (AOF, appendfsync always).
// Compare them for the cost of the router's delivery path:
//
//	go test -run '^$' -bench 'SubscribeAck|XReadGroupAck' -benchtime 20000x ./services/router

const benchAckBatch = 100

// benchLog writes n events of orderCreated through the router.
func benchLog(b *testing.B, e *env, addr, key string, n int) {
	b.Helper()
	pub := routerClient(addr, key)
	for i := 0; i < n; i += 500 {
		evs := make([]*eventv1.CloudEvent, 0, 500)
		for j := i; j < min(n, i+500); j++ {
			evs = append(evs, event(orderCreated, fmt.Sprintf("b%d", j), order(fmt.Sprintf("o-%d", j), 5)))
		}
		if _, err := publish(context.Background(), pub, evs...); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSubscribeAck(b *testing.B) {
	e := newEnv(b)
	e.createType(b, orderCreated, orderSchema)
	_, pubKey := e.createApp(b, "shop")
	consumerID, consumerKey := e.consumerApp(b, "warehouse", "*")
	addr, _ := e.startRouter(b, "127.0.0.1:0", 1000)
	res, err := e.registry.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: consumerID, Types: []string{orderCreated},
		Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Start:   &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}},
	}}))
	if err != nil {
		b.Fatal(err)
	}
	subID := res.Msg.GetSubscription().GetId()
	benchLog(b, e, addr, pubKey, b.N)
	client := routerClient(addr, consumerKey)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	b.ResetTimer()
	stream, err := client.Subscribe(ctx, connect.NewRequest(&routerv1.SubscribeRequest{SubscriptionId: subID, MaxInFlight: 1000}))
	if err != nil {
		b.Fatal(err)
	}
	acks := make(chan []string, 64)
	acked := make(chan error, 1)
	go func() {
		for ids := range acks {
			if _, err := client.Ack(ctx, connect.NewRequest(&routerv1.AckRequest{SubscriptionId: subID, AckIds: ids})); err != nil {
				acked <- err
				return
			}
		}
		acked <- nil
	}()
	batch := make([]string, 0, benchAckBatch)
	for got := 0; got < b.N; got++ {
		if !stream.Receive() {
			b.Fatalf("stream ended after %d: %v", got, stream.Err())
		}
		batch = append(batch, stream.Msg().GetAckId())
		if len(batch) == benchAckBatch {
			acks <- batch
			batch = make([]string, 0, benchAckBatch)
		}
	}
	if len(batch) > 0 {
		acks <- batch
	}
	close(acks)
	if err := <-acked; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	cancel()
	stream.Close()
}

func BenchmarkXReadGroupAck(b *testing.B) {
	e := newEnv(b)
	e.createType(b, orderCreated, orderSchema)
	_, pubKey := e.createApp(b, "shop")
	addr, _ := e.startRouter(b, "127.0.0.1:0", 1000)
	benchLog(b, e, addr, pubKey, b.N)
	ctx := context.Background()
	stream := eventlog.StreamKey(orderCreated)
	if err := e.rdb.XGroupCreate(ctx, stream, "raw", "0").Err(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for got := 0; got < b.N; {
		res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "raw", Consumer: "c", Streams: []string{stream, ">"}, Count: benchAckBatch, Block: time.Second}).Result()
		if err != nil {
			b.Fatal(err)
		}
		ids := make([]string, 0, benchAckBatch)
		for _, m := range res[0].Messages {
			if _, err := eventlog.Decode(stream, m); err != nil { // the router decodes each event too
				b.Fatal(err)
			}
			ids = append(ids, m.ID)
		}
		if err := e.rdb.XAck(ctx, stream, "raw", ids...).Err(); err != nil {
			b.Fatal(err)
		}
		got += len(ids)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
