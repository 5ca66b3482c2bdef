package subscription

import (
	"context"
	"log/slog"
	"testing"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
)

// A session that ends hands back only what it still holds: a read it never
// sent, that another session has since taken over (and delivered), stays
// with that session, with its delivery count.
func TestReleaseLeavesWhatAnotherSessionTook(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	stream := eventlog.StreamKey("shop.order.created")
	group := Group(testSub)
	if err := rdb.XGroupCreateMkStream(ctx, stream, group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	mine, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventlog.FieldEvent, "", eventlog.FieldApp, "app"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	taken, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventlog.FieldEvent, "", eventlog.FieldApp, "app"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Session a reads both and sends neither (its window is full).
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "c-a", Streams: []string{stream, ">"}}).Result()
	if err != nil || len(res[0].Messages) != 2 {
		t.Fatalf("read: %v %v", res, err)
	}
	// Session b takes one over after the ack timeout, and delivers it.
	if err := rdb.XClaim(ctx, &redis.XClaimArgs{Stream: stream, Group: group, Consumer: "c-b", Messages: []string{taken}}).Err(); err != nil {
		t.Fatal(err)
	}
	s := &session{
		m:        NewManager(rdb, nil, slog.New(slog.DiscardHandler), nil),
		sub:      &registryv1.Subscription{Id: testSub},
		pol:      policy{ackTimeout: time.Minute, maxAttempts: 5},
		consumer: "c-a",
	}
	for _, m := range res[0].Messages {
		s.buffer = append(s.buffer, decode(testSub, stream, m.ID, m.Values, 1))
	}
	s.release()

	p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: group, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 2 {
		t.Fatalf("pending: %v %v", p, err)
	}
	for _, e := range p {
		switch e.ID {
		case mine:
			if e.Consumer != releasedConsumer || e.RetryCount != 0 {
				t.Errorf("the unsent read: held by %s, count %d; want %s, 0", e.Consumer, e.RetryCount, releasedConsumer)
			}
		case taken:
			if e.Consumer != "c-b" || e.RetryCount != 2 {
				t.Errorf("the delivery session b took: held by %s, count %d; want c-b, 2", e.Consumer, e.RetryCount)
			}
		}
	}
}

// Release hands back a delivery its consumer was sent but never attempted,
// idle for the ack timeout (so the next session claims it at once) with the
// count it had before; one another consumer holds is left alone.
func TestReleaseHandsBackAnUnattemptedDelivery(t *testing.T) {
	ctx := context.Background()
	rdb := testutil.RedisClient(t, testutil.Redis(t))
	stream := eventlog.StreamKey("shop.order.created")
	group := Group(testSub)
	if err := rdb.XGroupCreateMkStream(ctx, stream, group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventlog.FieldEvent, "", eventlog.FieldApp, "app"}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "edge-1", Streams: []string{stream, ">"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XClaim(ctx, &redis.XClaimArgs{Stream: stream, Group: group, Consumer: "edge-2", Messages: ids[1:]}).Err(); err != nil {
		t.Fatal(err)
	}
	m := NewManager(rdb, nil, slog.New(slog.DiscardHandler), nil)
	sub := &registryv1.Subscription{Id: testSub}
	for _, id := range ids {
		if err := m.Release(ctx, sub, "edge-1", ackID(testSub, ref{stream: stream, id: id}), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Release(ctx, sub, "edge-1", "not-an-ack-id", 1); err == nil {
		t.Error("a malformed ack id was released")
	}
	p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: group, Start: "-", End: "+", Count: 10}).Result()
	if err != nil || len(p) != 2 {
		t.Fatalf("pending: %v %v", p, err)
	}
	ack := policyOf(sub).ackTimeout
	if e := p[0]; e.Consumer != releasedConsumer || e.RetryCount != 0 || e.Idle < ack {
		t.Errorf("released: held by %s, count %d, idle %v; want %s, 0, at least %v", e.Consumer, e.RetryCount, e.Idle, releasedConsumer, ack)
	}
	if e := p[1]; e.Consumer != "edge-2" {
		t.Errorf("another consumer's delivery moved to %s", e.Consumer)
	}
}
