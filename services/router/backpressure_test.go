package router_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"google.golang.org/protobuf/proto"
)

// batch returns n valid events with ids prefix-0, prefix-1, ...
func batch(prefix string, n int) []*eventv1.CloudEvent {
	evs := make([]*eventv1.CloudEvent, n)
	for i := range evs {
		evs[i] = event(orderCreated, fmt.Sprintf("%s-%d", prefix, i), valid)
	}
	return evs
}

// retryAfter returns the Retry-After hint of a RESOURCE_EXHAUSTED error, in
// seconds, failing the test when there is none.
func retryAfter(t *testing.T, err error) int {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
		t.Fatalf("Publish: %v, want RESOURCE_EXHAUSTED", err)
	}
	v := ce.Meta().Get("Retry-After")
	secs, perr := strconv.Atoi(v)
	if perr != nil || secs < 1 {
		t.Fatalf("Retry-After %q, want whole seconds, at least 1 (error: %v)", v, err)
	}
	return secs
}

func wantMessage(t *testing.T, err error, fragments ...string) {
	t.Helper()
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("%q does not mention %q", err.Error(), f)
		}
	}
}

// TestPublishLimit publishes against an application's publish limit of 5
// events per second: what fits passes, what does not is refused whole with
// a hint of when to retry, a batch that can never fit says so, and the
// operator is not limited.
func TestPublishLimit(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	ctx := context.Background()
	created, err := e.registry.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{
		Application: &registryv1.Application{
			Name:         "limited",
			Grants:       []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "*"}},
			PublishLimit: &registryv1.PublishLimit{EventsPerSecond: 5, Burst: 5},
		},
	}))
	if err != nil {
		t.Fatal(err)
	}
	app, key := created.Msg.GetApplication(), created.Msg.GetKey().GetSecret()
	addr, _ := e.startRouter(t, "127.0.0.1:0", 0)
	client := routerClient(addr, key)

	for _, r := range mustPublish(t, client, batch("first", 5)...) {
		if r.GetCursor() == "" {
			t.Fatalf("a batch within the burst: %v", r)
		}
	}
	before := e.streamLen(t, orderCreated)

	_, err = publish(ctx, client, batch("second", 5)...)
	if secs := retryAfter(t, err); secs > 1 {
		t.Errorf("Retry-After %d s, want 1: 5 events at 5 per second take a second", secs)
	}
	wantMessage(t, err, app.GetId(), "5 events per second")

	_, err = publish(ctx, client, batch("big", 6)...)
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("a batch over the burst: %v, want FAILED_PRECONDITION", err)
	}
	wantMessage(t, err, "batch of 6 events", "burst 5", app.GetId(), "send smaller batches")
	if after := e.streamLen(t, orderCreated); after != before {
		t.Fatalf("stream grew from %d to %d during refused publishes", before, after)
	}

	// The operator has no limit.
	admin := routerClient(addr, adminKey)
	for i := range 4 {
		for _, r := range mustPublish(t, admin, batch(fmt.Sprintf("admin%d", i), 6)...) {
			if r.GetCursor() == "" {
				t.Fatalf("operator's publish: %v", r)
			}
		}
	}

	// Only accepted events count: 5 valid and 1 invalid fit a burst of 5,
	// once the quota has refilled.
	mixed := append(batch("mixed", 5), event(orderCreated, "mixed-bad", `{"amount":1}`))
	var last []*routerv1.PublishResult
	testutil.Eventually(t, 20*time.Second, func() bool {
		last, err = publish(ctx, client, mixed...)
		if err != nil {
			retryAfter(t, err) // refused for the quota, never for the batch's size
			return false
		}
		return true
	}, "a batch of 5 valid events and 1 invalid passes once the quota refills")
	for i, r := range last[:5] {
		if r.GetCursor() == "" {
			t.Errorf("valid event %d: %v", i, r)
		}
	}
	if connect.Code(last[5].GetError().GetCode()) != connect.CodeInvalidArgument {
		t.Errorf("invalid event: %v", last[5])
	}

	// Removing the limit reaches the router through Watch.
	in := proto.Clone(app).(*registryv1.Application)
	in.PublishLimit = nil
	if _, err := e.registry.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: in})); err != nil {
		t.Fatal(err)
	}
	n := 0
	testutil.Eventually(t, 20*time.Second, func() bool {
		n++
		_, err := publish(ctx, client, batch(fmt.Sprintf("unlimited%d", n), 6)...)
		return err == nil
	}, "a batch of 6 passes once the limit is removed")
}

// TestMemoryHighWater brings Redis above 90% of its maxmemory: every
// publish is refused with a hint to retry, then accepted again once Redis
// has room.
func TestMemoryHighWater(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, key := e.createApp(t, "shop")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 0)
	client := routerClient(addr, key)
	ctx := context.Background()
	mustPublish(t, client, batch("before", 3)...)

	info, err := e.rdb.InfoMap(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	used, err := strconv.ParseUint(info["Memory"]["used_memory"], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	// used is 95% of the new maxmemory: Redis itself still has room.
	if err := e.rdb.ConfigSet(ctx, "maxmemory", strconv.FormatUint(used*100/95, 10)).Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.rdb.ConfigSet(context.Background(), "maxmemory", "0") })

	var refusal error
	n := 0
	testutil.Eventually(t, 20*time.Second, func() bool {
		n++
		_, err := publish(ctx, client, batch(fmt.Sprintf("full%d", n), 1)...)
		if err != nil && strings.Contains(err.Error(), "high-water mark") {
			refusal = err
			return true
		}
		return false
	}, "publishes refused above the high-water mark")
	retryAfter(t, refusal)
	wantMessage(t, refusal, "% of maxmemory", "90% high-water mark", "retry later")

	if err := e.rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		n++
		_, err := publish(ctx, client, batch(fmt.Sprintf("room%d", n), 1)...)
		return err == nil
	}, "publishes accepted again once Redis has room")
}
