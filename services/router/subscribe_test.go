package router_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/subscription"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// consumerApp creates an application that may subscribe to pattern, and
// returns its id and key.
func (e *env) consumerApp(t testing.TB, name, pattern string) (string, string) {
	t.Helper()
	res, err := e.registry.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{
		Application: &registryv1.Application{Name: name, Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: pattern},
		}},
	}))
	if err != nil {
		t.Fatalf("create application: %v", err)
	}
	return res.Msg.GetApplication().GetId(), res.Msg.GetKey().GetSecret()
}

// subscription creates a stream subscription for app.
func (e *env) subscription(t testing.TB, sub *registryv1.Subscription) *registryv1.Subscription {
	t.Helper()
	if sub.GetChannel() == nil {
		sub.Channel = &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}}
	}
	res, err := e.registry.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: sub}))
	if err != nil {
		t.Fatalf("create subscription: %v", err)
	}
	return res.Msg.GetSubscription()
}

func policy(ackTimeout time.Duration, maxAttempts int32) *registryv1.DeliveryPolicy {
	return &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(ackTimeout), MaxAttempts: maxAttempts}
}

// consumer is an open Subscribe stream whose deliveries arrive on a channel.
type consumer struct {
	t      *testing.T
	client routerv1connect.RouterServiceClient
	subID  string
	got    chan *routerv1.SubscribeResponse
	done   chan error
	cancel context.CancelFunc
}

func subscribeTo(t *testing.T, client routerv1connect.RouterServiceClient, req *routerv1.SubscribeRequest) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.Subscribe(ctx, connect.NewRequest(req))
	if err != nil {
		cancel()
		t.Fatalf("Subscribe: %v", err)
	}
	c := &consumer{t: t, client: client, subID: req.GetSubscriptionId(), got: make(chan *routerv1.SubscribeResponse, 10000), done: make(chan error, 1), cancel: cancel}
	go func() {
		defer close(c.got)
		for stream.Receive() {
			c.got <- stream.Msg()
		}
		c.done <- stream.Err()
		stream.Close()
	}()
	t.Cleanup(c.close)
	return c
}

func (c *consumer) close() { c.cancel() }

// next waits for the next delivery.
func (c *consumer) next() *routerv1.SubscribeResponse {
	c.t.Helper()
	select {
	case d, ok := <-c.got:
		if !ok {
			c.t.Fatalf("the stream ended: %v", <-c.done)
		}
		return d
	case <-time.After(20 * time.Second):
		c.t.Fatal("no delivery within 20s")
	}
	return nil
}

// take waits for n deliveries.
func (c *consumer) take(n int) []*routerv1.SubscribeResponse {
	c.t.Helper()
	out := make([]*routerv1.SubscribeResponse, n)
	for i := range out {
		out[i] = c.next()
	}
	return out
}

// none checks that nothing is delivered for a while: the absence of a
// delivery can only be observed by waiting.
func (c *consumer) none(wait time.Duration) {
	c.t.Helper()
	select {
	case d := <-c.got:
		c.t.Fatalf("unexpected delivery: %s (attempt %d)", d.GetEvent().GetId(), d.GetAttempt())
	case <-time.After(wait):
	}
}

func (c *consumer) ack(ds ...*routerv1.SubscribeResponse) int32 {
	c.t.Helper()
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.GetAckId())
	}
	res, err := c.client.Ack(context.Background(), connect.NewRequest(&routerv1.AckRequest{SubscriptionId: c.subID, AckIds: ids}))
	if err != nil {
		c.t.Fatalf("Ack: %v", err)
	}
	return res.Msg.GetAcknowledged()
}

func (c *consumer) nack(delay time.Duration, reason string, ds ...*routerv1.SubscribeResponse) *routerv1.NackResponse {
	c.t.Helper()
	var ids []string
	for _, d := range ds {
		ids = append(ids, d.GetAckId())
	}
	res, err := c.client.Nack(context.Background(), connect.NewRequest(&routerv1.NackRequest{
		SubscriptionId: c.subID, AckIds: ids, Delay: durationpb.New(delay), Reason: reason,
	}))
	if err != nil {
		c.t.Fatalf("Nack: %v", err)
	}
	return res.Msg
}

func ids(ds []*routerv1.SubscribeResponse) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.GetEvent().GetId()
	}
	return out
}

func order(id string, amount int) string {
	return fmt.Sprintf(`{"order_id":%q,"amount":%d}`, id, amount)
}

// delivered sums the usage records of deliveries to a subscription of
// account, each record id once (as metering folds them: a redelivery
// carries the id of the first delivery).
func (e *env) delivered(t *testing.T, account string) int64 {
	t.Helper()
	return e.usage(t, account, subscription.Channel, meteringv1.UsageMetric_USAGE_METRIC_DELIVERED)
}

// published sums the usage records of account's publishes, failing the
// test if a record id repeats.
func (e *env) published(t *testing.T, account string) int64 {
	t.Helper()
	return e.usage(t, account, "grpc", meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED)
}

func (e *env) usage(t *testing.T, account, channel string, metric meteringv1.UsageMetric) int64 {
	t.Helper()
	msgs, err := e.rdb.XRange(context.Background(), usage.StreamKey, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	seen := map[string]bool{}
	for _, m := range msgs {
		recs, err := usage.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			if rec.GetApplicationId() != account || rec.GetChannel() != channel || rec.GetMetric() != metric {
				continue
			}
			if seen[rec.GetId()] {
				if metric == meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED {
					t.Fatalf("usage record %s appears twice", rec.GetId())
				}
				continue
			}
			seen[rec.GetId()] = true
			n += rec.GetQuantity()
		}
	}
	return n
}

// pendingCount is how many deliveries of the subscription are unacknowledged
// on one type's stream.
func (e *env) pendingCount(t *testing.T, typ, subID string) int64 {
	t.Helper()
	p, err := e.rdb.XPending(context.Background(), "herald:log:{"+typ+"}", subscription.Group(subID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

// A subscription receives the events published after its creation, in
// order, that pass its filter; what is not acknowledged within the ack
// timeout comes back, with the same cursor and the next attempt number.
func TestSubscribeAckAndRedelivery(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	pub := routerClient(addr, pubKey)

	before := mustPublish(t, pub, event(orderCreated, "before", order("o-0", 5)))[0]
	sub := e.subscription(t, &registryv1.Subscription{
		ApplicationId: consumerID, Types: []string{"shop.*"}, Filter: "data.amount > 1",
		Delivery: policy(300*time.Millisecond, 5),
	})
	res := mustPublish(t, pub,
		event(orderCreated, "e1", order("o-1", 5)),
		event(orderCreated, "small", order("o-2", 1)), // filtered out
		event(orderCreated, "e3", order("o-3", 7)),
	)
	c := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 10})
	first := c.take(2)
	if got := ids(first); !slices.Equal(got, []string{"e1", "e3"}) {
		t.Fatalf("first deliveries %v, want [e1 e3] (not %q from before the subscription, not the filtered one)", got, before.GetCursor())
	}
	if first[0].GetCursor() != res[0].GetCursor() || first[1].GetCursor() != res[2].GetCursor() || first[0].GetAttempt() != 1 {
		t.Fatalf("deliveries carry the publish cursors and attempt 1: %v", first)
	}
	if n := c.ack(first[0]); n != 1 {
		t.Fatalf("Ack acknowledged %d", n)
	}
	if n := c.ack(first[0]); n != 0 {
		t.Fatalf("a second Ack of the same delivery counted %d", n)
	}
	// e3 is not acknowledged: it comes back after the ack timeout.
	again := c.next()
	if again.GetEvent().GetId() != "e3" || again.GetAttempt() != 2 || again.GetCursor() != first[1].GetCursor() {
		t.Fatalf("redelivery: %s attempt %d cursor %s", again.GetEvent().GetId(), again.GetAttempt(), again.GetCursor())
	}
	c.ack(again)
	testutil.Eventually(t, 10*time.Second, func() bool { return e.pendingCount(t, orderCreated, sub.GetId()) == 0 }, "nothing pending")
	// Metering is told of each event's first delivery, not of redeliveries.
	testutil.Eventually(t, 10*time.Second, func() bool { return e.delivered(t, consumerID) == 2 }, "2 deliveries counted for the consumer")

	// Bad requests get clear errors.
	client := routerClient(addr, consumerKey)
	_, err := client.Ack(context.Background(), connect.NewRequest(&routerv1.AckRequest{SubscriptionId: sub.GetId(), AckIds: []string{"nonsense"}}))
	wantCode(t, err, connect.CodeInvalidArgument, "ack_ids[0]")
	_, err = client.Nack(context.Background(), connect.NewRequest(&routerv1.NackRequest{SubscriptionId: sub.GetId(), AckIds: []string{again.GetAckId()}, Delay: durationpb.New(30 * 24 * time.Hour)}))
	wantCode(t, err, connect.CodeInvalidArgument, "delay")
	_, err = client.Ack(context.Background(), connect.NewRequest(&routerv1.AckRequest{SubscriptionId: "sub_nope", AckIds: []string{again.GetAckId()}}))
	wantCode(t, err, connect.CodeNotFound, "sub_nope")
	err = subscribeErr(client, &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 1_000_000})
	wantCode(t, err, connect.CodeInvalidArgument, "max_in_flight")
}

func wantCode(t *testing.T, err error, code connect.Code, contains string) {
	t.Helper()
	if connect.CodeOf(err) != code || !strings.Contains(err.Error(), contains) {
		t.Fatalf("got %v, want %s mentioning %q", err, code, contains)
	}
}

// subscribeErr opens a stream that is expected to fail, and returns why.
func subscribeErr(client routerv1connect.RouterServiceClient, req *routerv1.SubscribeRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.Subscribe(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	defer stream.Close()
	for stream.Receive() {
	}
	if stream.Err() == nil {
		return errors.New("the stream ended without an error")
	}
	return stream.Err()
}

// Only the subscription's application (or the operator) may use it, and
// only a stream subscription can be streamed.
func TestSubscribeAccess(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	_, strangerKey := e.consumerApp(t, "stranger", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}})
	hook := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated},
		Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: "http://127.0.0.1:9/hook", Disabled: true}}})

	wantCode(t, subscribeErr(routerClient(addr, strangerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId()}), connect.CodeNotFound, sub.GetId())
	wantCode(t, subscribeErr(routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: hook.GetId()}), connect.CodeFailedPrecondition, "webhook")
	wantCode(t, subscribeErr(routerClient(addr, consumerKey), &routerv1.SubscribeRequest{}), connect.CodeInvalidArgument, "subscription_id")
	wantCode(t, subscribeErr(routerClient(addr, "wrong-key"), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId()}), connect.CodeUnauthenticated, "")
	_, err := routerClient(addr, strangerKey).ListDeadLetters(context.Background(), connect.NewRequest(&routerv1.ListDeadLettersRequest{SubscriptionId: sub.GetId()}))
	wantCode(t, err, connect.CodeNotFound, sub.GetId())
	// The operator may.
	_, err = routerClient(addr, adminKey).ListDeadLetters(context.Background(), connect.NewRequest(&routerv1.ListDeadLettersRequest{SubscriptionId: sub.GetId()}))
	if err != nil {
		t.Fatalf("operator ListDeadLetters: %v", err)
	}
}

// A poison event is nacked with a delay until it has used its attempts,
// then it is in the dead-letter stream with the consumer's reason; replayed,
// it is delivered again with fresh attempts. An event never acknowledged
// ends there too, with a reason that says so.
func TestNackAndDeadLetters(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	pub := routerClient(addr, pubKey)
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}, Delivery: policy(time.Minute, 3)})

	res := mustPublish(t, pub, event(orderCreated, "poison", order("o-1", 5)), event(orderCreated, "good", order("o-2", 5)))
	c := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId()})
	got := c.take(2)
	if ids(got)[0] != "poison" {
		t.Fatalf("order: %v", ids(got))
	}
	c.ack(got[1])
	d := got[0]
	for attempt := int32(1); attempt < 3; attempt++ {
		if r := c.nack(50*time.Millisecond, fmt.Sprintf("cannot parse (try %d)", attempt), d); r.GetRetrying() != 1 || r.GetDeadLettered() != 0 {
			t.Fatalf("nack %d: %v", attempt, r)
		}
		d = c.next()
		if d.GetEvent().GetId() != "poison" || d.GetAttempt() != attempt+1 || d.GetCursor() != res[0].GetCursor() {
			t.Fatalf("after nack %d: %s attempt %d", attempt, d.GetEvent().GetId(), d.GetAttempt())
		}
	}
	if r := c.nack(0, "cannot parse, giving up", d); r.GetDeadLettered() != 1 || r.GetRetrying() != 0 {
		t.Fatalf("last nack: %v", r)
	}
	client := routerClient(addr, consumerKey)
	list := func() *routerv1.ListDeadLettersResponse {
		res, err := client.ListDeadLetters(context.Background(), connect.NewRequest(&routerv1.ListDeadLettersRequest{SubscriptionId: sub.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	dead := list()
	if dead.GetTotal() != 1 || len(dead.GetDeadLetters()) != 1 {
		t.Fatalf("dead letters: %v", dead)
	}
	dl := dead.GetDeadLetters()[0]
	if dl.GetCursor() != res[0].GetCursor() || dl.GetEvent().GetId() != "poison" || dl.GetAttempts() != 3 || dl.GetReason() != "cannot parse, giving up" || dl.GetTime() == nil {
		t.Fatalf("dead letter: %v", dl)
	}
	if n := e.pendingCount(t, orderCreated, sub.GetId()); n != 0 {
		t.Fatalf("%d pending after dead-lettering", n)
	}

	// Replay: delivered again from attempt 1, then gone from the dead letters.
	rr, err := client.ReplayDeadLetters(context.Background(), connect.NewRequest(&routerv1.ReplayDeadLettersRequest{SubscriptionId: sub.GetId(), Ids: []string{dl.GetId()}}))
	if err != nil || rr.Msg.GetReplayed() != 1 {
		t.Fatalf("replay: %v %v", rr, err)
	}
	back := c.next()
	if back.GetEvent().GetId() != "poison" || back.GetAttempt() != 1 || back.GetCursor() != res[0].GetCursor() {
		t.Fatalf("replayed delivery: %s attempt %d cursor %s", back.GetEvent().GetId(), back.GetAttempt(), back.GetCursor())
	}
	if list().GetTotal() != 0 {
		t.Fatal("the replayed dead letter is still listed")
	}
	// A replayed delivery is nacked and acknowledged like any other.
	c.nack(0, "once more", back)
	back2 := c.next()
	if back2.GetAttempt() != 2 || back2.GetEvent().GetId() != "poison" {
		t.Fatalf("replayed delivery after a nack: attempt %d", back2.GetAttempt())
	}
	if c.ack(back2) != 1 {
		t.Fatal("ack of a replayed delivery")
	}
	replayLen, _ := e.rdb.XLen(context.Background(), subscription.ReplayKey(sub.GetId())).Result()
	if replayLen != 0 {
		t.Fatalf("acknowledged replay entries are removed; %d left", replayLen)
	}

	// Never acknowledged: delivered max_attempts times, then dead-lettered
	// with a reason that says so.
	quick := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}, Delivery: policy(200*time.Millisecond, 2)})
	qc := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: quick.GetId()})
	mustPublish(t, pub, event(orderCreated, "ignored", order("o-3", 5)))
	if got := qc.take(2); got[0].GetAttempt() != 1 || got[1].GetAttempt() != 2 || got[1].GetEvent().GetId() != "ignored" {
		t.Fatalf("deliveries of an ignored event: %v", got)
	}
	var ql *routerv1.ListDeadLettersResponse
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := client.ListDeadLetters(context.Background(), connect.NewRequest(&routerv1.ListDeadLettersRequest{SubscriptionId: quick.GetId()}))
		ql = r.Msg
		return err == nil && r.Msg.GetTotal() == 1
	}, "the ignored event is dead-lettered")
	if r := ql.GetDeadLetters()[0].GetReason(); !strings.Contains(r, "not acknowledged") || ql.GetDeadLetters()[0].GetAttempts() != 2 {
		t.Fatalf("dead letter of an ignored event: %v", ql.GetDeadLetters()[0])
	}
	// Delete it.
	del, err := client.DeleteDeadLetters(context.Background(), connect.NewRequest(&routerv1.DeleteDeadLettersRequest{SubscriptionId: quick.GetId(), All: true}))
	if err != nil || del.Msg.GetDeleted() != 1 {
		t.Fatalf("delete: %v %v", del, err)
	}
	_, err = client.ReplayDeadLetters(context.Background(), connect.NewRequest(&routerv1.ReplayDeadLettersRequest{SubscriptionId: quick.GetId()}))
	wantCode(t, err, connect.CodeInvalidArgument, "ids")
}

// At most max_in_flight deliveries are unacknowledged at a time; each Ack
// makes room for one more.
func TestSubscribeWindow(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}})
	for i := range 10 {
		mustPublish(t, routerClient(addr, pubKey), event(orderCreated, fmt.Sprintf("e%d", i), order("o", 5)))
	}
	c := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 3})
	first := c.take(3)
	c.none(300 * time.Millisecond)
	c.ack(first[0])
	if d := c.next(); d.GetEvent().GetId() != "e3" {
		t.Fatalf("after one ack: %s", d.GetEvent().GetId())
	}
	c.none(300 * time.Millisecond)
	// A Nack makes room too.
	c.nack(time.Hour, "later", first[1])
	if d := c.next(); d.GetEvent().GetId() != "e4" {
		t.Fatalf("after one nack: %s", d.GetEvent().GetId())
	}
}

// Streams opened on one subscription share its events: each goes to one of
// them.
func TestCompetingConsumers(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	addr2, _ := e.startRouter(t, "127.0.0.1:0", 100)
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}})
	a := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 5})
	b := subscribeTo(t, routerClient(addr2, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 5})
	const n = 60
	for i := range n / 10 {
		evs := make([]*eventv1.CloudEvent, 0, 10)
		for j := range 10 {
			evs = append(evs, event(orderCreated, fmt.Sprintf("e%02d", i*10+j), order("o", 5)))
		}
		mustPublish(t, routerClient(addr, pubKey), evs...)
	}
	seen := map[string]int{}
	perConsumer := map[*consumer]int{}
	deadline := time.After(30 * time.Second)
	for len(seen) < n {
		select {
		case d := <-a.got:
			seen[d.GetEvent().GetId()]++
			perConsumer[a]++
			a.ack(d)
		case d := <-b.got:
			seen[d.GetEvent().GetId()]++
			perConsumer[b]++
			b.ack(d)
		case <-deadline:
			t.Fatalf("only %d of %d events delivered", len(seen), n)
		}
	}
	for id, k := range seen {
		if k != 1 {
			t.Errorf("%s delivered %d times", id, k)
		}
	}
	if perConsumer[a] == 0 || perConsumer[b] == 0 {
		t.Errorf("one consumer did all the work: %v", perConsumer)
	}
}

// Start positions: after a cursor, from a time, and a resume that moves the
// subscription back to the start of the log.
func TestSubscribeStartAndResume(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	pub := routerClient(addr, pubKey)
	r1 := mustPublish(t, pub, event(orderCreated, "e1", order("o", 5)))[0]
	time.Sleep(5 * time.Millisecond) // so that e2 has a later millisecond than e1
	r2 := mustPublish(t, pub, event(orderCreated, "e2", order("o", 5)))[0]
	mustPublish(t, pub, event(orderCreated, "e3", order("o", 5)))
	ms := func(cursor string) int64 {
		var v int64
		fmt.Sscanf(cursor, "%d-", &v)
		return v
	}

	afterCursor := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated},
		Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: r1.GetCursor()}}})
	fromTime := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated},
		Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Time{Time: timestamppb.New(time.UnixMilli(ms(r2.GetCursor())))}}})
	fromStart := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated},
		Start: &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}}})
	now := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}})
	client := routerClient(addr, consumerKey)

	if got := ids(subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: fromStart.GetId()}).take(3)); !slices.Equal(got, []string{"e1", "e2", "e3"}) {
		t.Errorf("from the start of the log: %v", got)
	}

	if got := ids(subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: afterCursor.GetId()}).take(2)); !slices.Equal(got, []string{"e2", "e3"}) {
		t.Errorf("after e1's cursor: %v", got)
	}
	if got := ids(subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: fromTime.GetId()}).take(2)); !slices.Equal(got, []string{"e2", "e3"}) {
		t.Errorf("from e2's time: %v", got)
	}
	mustPublish(t, pub, event(orderCreated, "e4", order("o", 5)))
	c := subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: now.GetId()})
	if d := c.next(); d.GetEvent().GetId() != "e4" {
		t.Errorf("from its creation: %s", d.GetEvent().GetId())
	}
	c.close()
	// Resume from the start of the log, then from a cursor.
	c = subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: now.GetId(), Resume: &routerv1.ResumePosition{Position: &routerv1.ResumePosition_Cursor{Cursor: "0"}}})
	if got := ids(c.take(4)); !slices.Equal(got, []string{"e1", "e2", "e3", "e4"}) {
		t.Errorf("resumed from 0: %v", got)
	}
	c.close()
	c = subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: now.GetId(), Resume: &routerv1.ResumePosition{Position: &routerv1.ResumePosition_Cursor{Cursor: r2.GetCursor()}}})
	if got := ids(c.take(1)); got[0] != "e3" {
		t.Errorf("resumed after e2: %v", got)
	}
	wantCode(t, subscribeErr(client, &routerv1.SubscribeRequest{SubscriptionId: now.GetId(), Resume: &routerv1.ResumePosition{Position: &routerv1.ResumePosition_Cursor{Cursor: "yesterday"}}}), connect.CodeInvalidArgument, "resume.cursor")
}

// A router that dies with deliveries outstanding loses none: another
// router delivers them again once the ack timeout has passed.
func TestSubscribeRouterRestart(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, stop := e.startRouter(t, "127.0.0.1:0", 100)
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}, Delivery: policy(500*time.Millisecond, 5)})
	for i := range 5 {
		mustPublish(t, routerClient(addr, pubKey), event(orderCreated, fmt.Sprintf("e%d", i), order("o", 5)))
	}
	c := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 3})
	got := c.take(3)
	c.ack(got[0])
	if d := c.next(); d.GetEvent().GetId() != "e3" { // the room the ack made
		t.Fatalf("after the ack: %s", d.GetEvent().GetId())
	}
	stop()
	addr2, _ := e.startRouter(t, "127.0.0.1:0", 100)
	c2 := subscribeTo(t, routerClient(addr2, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 10})
	seen := map[string]int32{}
	for len(seen) < 4 {
		d := c2.next()
		seen[d.GetEvent().GetId()] = d.GetAttempt()
		c2.ack(d)
	}
	want := map[string]int32{"e1": 2, "e2": 2, "e3": 2, "e4": 1}
	for id, attempt := range want {
		if seen[id] != attempt {
			t.Errorf("%s: attempt %d, want %d (all: %v)", id, seen[id], attempt, seen)
		}
	}
	if _, ok := seen["e0"]; ok {
		t.Error("the acknowledged e0 came back")
	}
}

// Deleting a subscription removes its groups from the log.
func TestSubscriptionDeletedCleansUp(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	consumerID, _ := e.consumerApp(t, "warehouse", "shop.*")
	e.startRouter(t, "127.0.0.1:0", 100)
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}})
	groups := func() []string {
		gs, err := e.rdb.XInfoGroups(context.Background(), "herald:log:{"+orderCreated+"}").Result()
		if err != nil {
			return nil
		}
		var names []string
		for _, g := range gs {
			names = append(names, g.Name)
		}
		return names
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return slices.Contains(groups(), subscription.Group(sub.GetId())) },
		"the router creates the group without waiting for a consumer")
	if _, err := e.registry.DeleteSubscription(context.Background(), connect.NewRequest(&registryv1.DeleteSubscriptionRequest{Id: sub.GetId()})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return !slices.Contains(groups(), subscription.Group(sub.GetId())) }, "the group is removed")
}

// A consumer whose whole window is unacknowledged past the ack timeout gets
// those deliveries again, even when it is the only one: a full window must
// not keep them from coming back.
func TestRedeliveryWithAFullWindow(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}, Delivery: policy(300*time.Millisecond, 5)})
	mustPublish(t, routerClient(addr, pubKey), event(orderCreated, "e1", order("o", 5)), event(orderCreated, "e2", order("o", 5)))
	c := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), MaxInFlight: 1})
	first := c.next()
	if first.GetEvent().GetId() != "e1" || first.GetAttempt() != 1 {
		t.Fatalf("first delivery: %s attempt %d", first.GetEvent().GetId(), first.GetAttempt())
	}
	// Not acknowledged: it comes back after the ack timeout.
	again := c.next()
	if again.GetEvent().GetId() != "e1" || again.GetAttempt() != 2 {
		t.Fatalf("redelivery: %s attempt %d", again.GetEvent().GetId(), again.GetAttempt())
	}
	c.ack(again)
	if d := c.next(); d.GetEvent().GetId() != "e2" {
		t.Fatalf("after the ack: %s", d.GetEvent().GetId())
	}
}
