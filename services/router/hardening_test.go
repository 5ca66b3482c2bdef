package router_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// appWith creates an application with an audience and grants, and returns
// its id and key.
func (e *env) appWith(t testing.TB, name string, audience registryv1.Audience, grants ...*registryv1.Grant) (string, string) {
	t.Helper()
	res, err := e.registry.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{
		Application: &registryv1.Application{Name: name, Audience: audience, Grants: grants},
	}))
	if err != nil {
		t.Fatalf("create application %s: %v", name, err)
	}
	return res.Msg.GetApplication().GetId(), res.Msg.GetKey().GetSecret()
}

func grant(action registryv1.GrantAction, pattern string) *registryv1.Grant {
	return &registryv1.Grant{Action: action, Pattern: pattern}
}

// D8: deduplication is scoped to the publisher. Another application sending
// the same (source, id) neither learns the first one's cursor nor, sending
// first, drops the real event; a publisher's own retry still deduplicates.
func TestDedupeIsPerPublisher(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, ownerKey := e.createApp(t, "shop")
	_, otherKey := e.createApp(t, "impostor")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	owner, other := routerClient(addr, ownerKey), routerClient(addr, otherKey)

	// The impostor sends first.
	fake := mustPublish(t, other, event(orderCreated, "ord-1", order("fake", 1)))[0]
	real := mustPublish(t, owner, event(orderCreated, "ord-1", order("real", 5)))[0]
	if fake.GetError() != nil || real.GetError() != nil {
		t.Fatalf("publish refused: %v / %v", fake.GetError(), real.GetError())
	}
	if real.GetDuplicate() || real.GetCursor() == fake.GetCursor() {
		t.Fatalf("the owner's event was taken for the impostor's: duplicate=%v cursor %s (impostor's %s)", real.GetDuplicate(), real.GetCursor(), fake.GetCursor())
	}
	// The impostor sends again after the owner: it learns nothing of the owner's event.
	again := mustPublish(t, other, event(orderCreated, "ord-1", order("fake", 1)))[0]
	if !again.GetDuplicate() || again.GetCursor() != fake.GetCursor() {
		t.Fatalf("the impostor's retry: duplicate=%v cursor %s, want its own %s", again.GetDuplicate(), again.GetCursor(), fake.GetCursor())
	}
	// The owner's retry deduplicates to its own event.
	retry := mustPublish(t, owner, event(orderCreated, "ord-1", order("real", 5)))[0]
	if !retry.GetDuplicate() || retry.GetCursor() != real.GetCursor() {
		t.Fatalf("the owner's retry: duplicate=%v cursor %s, want %s", retry.GetDuplicate(), retry.GetCursor(), real.GetCursor())
	}
	if n := e.streamLen(t, orderCreated); n != 2 {
		t.Fatalf("%d events stored, want 2 (one per publisher)", n)
	}
	var datas []string
	for _, en := range e.entries(t, orderCreated) {
		datas = append(datas, en.Event.GetTextData())
	}
	if !strings.Contains(strings.Join(datas, " "), `"real"`) {
		t.Fatalf("the owner's data is not in the log: %v", datas)
	}
}

// D9: a type the publisher's audience may not see does not exist for it:
// publishing answers NOT_FOUND with exactly the words for an unknown type.
func TestPublishRespectsVisibility(t *testing.T) {
	e := newEnv(t)
	const internal, public = "ops.secret.rotated", "shop.order.placed"
	for name, vis := range map[string]registryv1.Visibility{internal: registryv1.Visibility_VISIBILITY_INTERNAL, public: registryv1.Visibility_VISIBILITY_PUBLIC} {
		if _, err := e.registry.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{
			EventType: &registryv1.EventType{Name: name, Schema: orderSchema, Visibility: vis},
		})); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	_, key := e.appWith(t, "outsider", registryv1.Audience_AUDIENCE_PUBLIC, grant(registryv1.GrantAction_GRANT_ACTION_PUBLISH, "*"))
	_, insiderKey := e.createApp(t, "insider") // internal audience
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	c := routerClient(addr, key)

	const unknown = "ops.secret.missing"
	res := mustPublish(t, c, event(internal, "x1", valid), event(unknown, "x2", valid), event(public, "x3", valid))
	hidden, missing := res[0].GetError(), res[1].GetError()
	if connect.Code(hidden.GetCode()) != connect.CodeNotFound {
		t.Fatalf("publishing to an internal type with a public audience: %v, want NOT_FOUND", res[0])
	}
	if want := strings.ReplaceAll(missing.GetMessage(), unknown, internal); hidden.GetMessage() != want || connect.Code(missing.GetCode()) != connect.CodeNotFound {
		t.Fatalf("hidden type answered %q, unknown type %q: the answers must be the same", hidden.GetMessage(), missing.GetMessage())
	}
	if res[2].GetCursor() == "" {
		t.Fatalf("a public type refused: %v", res[2])
	}
	if n := e.streamLen(t, internal); n != 0 {
		t.Fatalf("%d events in the internal type", n)
	}
	// An internal application still publishes there.
	if r := mustPublish(t, routerClient(addr, insiderKey), event(internal, "x4", valid))[0]; r.GetCursor() == "" {
		t.Fatalf("internal publisher refused: %v", r)
	}
}

// D2: a Subscribe stream whose key is revoked ends with UNAUTHENTICATED once
// the revocation reaches the router's catalog; a withdrawn subscribe grant
// stops delivery of the types it covered.
func TestSubscribeEndsOnRevocation(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	const other = "shop.order.shipped"
	e.createType(t, other, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	pub := routerClient(addr, pubKey)

	created, err := e.registry.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{
		Application: &registryv1.Application{Name: "warehouse", Grants: []*registryv1.Grant{
			grant(registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, orderCreated),
			grant(registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, other),
			grant(registryv1.GrantAction_GRANT_ACTION_PUBLISH, other),
		}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	app, key := created.Msg.GetApplication(), created.Msg.GetKey()
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: app.GetId(), Types: []string{orderCreated, other}})
	c := subscribeTo(t, routerClient(addr, key.GetSecret()), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId()})
	mustPublish(t, pub, event(orderCreated, "e1", order("o", 5)))
	c.ack(c.next())

	// Withdraw the grants on other; once the router's catalog has the
	// change (its publish grant is refused), its events are not delivered.
	app.Grants = app.Grants[:1] // only the subscribe grant on orderCreated
	if _, err := e.registry.UpdateApplication(context.Background(), connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: app})); err != nil {
		t.Fatalf("UpdateApplication: %v", err)
	}
	self := routerClient(addr, key.GetSecret())
	testutil.Eventually(t, 10*time.Second, func() bool {
		r := mustPublish(t, self, event(other, "mine", order("o", 5)))[0]
		return connect.Code(r.GetError().GetCode()) == connect.CodePermissionDenied
	}, "the router refuses the withdrawn publish grant")
	mustPublish(t, pub, event(other, "withdrawn", order("o", 5)), event(orderCreated, "still", order("o", 5)))
	for {
		d := c.next()
		c.ack(d)
		if d.GetEvent().GetId() == "withdrawn" {
			t.Fatal("an event of a withdrawn type was delivered")
		}
		if d.GetEvent().GetId() == "still" {
			break
		}
	}

	// Revoke the key: the open stream ends with UNAUTHENTICATED.
	if _, err := e.registry.RevokeKey(context.Background(), connect.NewRequest(&registryv1.RevokeKeyRequest{Id: key.GetId()})); err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	select {
	case err := <-c.done:
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("the stream ended with %v, want UNAUTHENTICATED", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the stream of a revoked key is still open")
	}
	for d := range c.got {
		if d.GetEvent().GetId() != "" {
			t.Fatalf("delivered after the revocation: %s", d.GetEvent().GetId())
		}
	}

	// A key that expires (rotated out) ends its stream too, though no
	// catalog change marks the moment it expires.
	old, err := e.registry.CreateKey(context.Background(), connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: app.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	c = subscribeTo(t, routerClient(addr, old.Msg.GetKey().GetSecret()), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId()})
	mustPublish(t, pub, event(orderCreated, "before-rotation", order("o", 5)))
	c.ack(c.next())
	if _, err := e.registry.CreateKey(context.Background(), connect.NewRequest(&registryv1.CreateKeyRequest{
		ApplicationId: app.GetId(), RotateOverlap: durationpb.New(time.Second),
	})); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.done:
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("the stream of an expired key ended with %v, want UNAUTHENTICATED", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the stream of an expired key is still open")
	}
}

// D11: the registry refuses a filter whose estimated cost is over the limit,
// and an event whose filter cannot be evaluated is dead-lettered with the
// reason and counted, not dropped.
func TestFilterErrorsAreDeadLettered(t *testing.T) {
	e := newEnv(t)
	const typ = "shop.cart.updated"
	e.createType(t, typ, `{"type": "object"}`)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "analytics", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)

	_, err := e.registry.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: consumerID, Types: []string{typ},
		Filter:  `data.items.all(x, data.items.all(y, data.items.all(z, x+y+z>=0)))`,
		Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
	}}))
	wantCode(t, err, connect.CodeInvalidArgument, "too expensive")

	// A filter that passes the check and fails at run time on some event
	// (the cost limit on one created before the check existed, or here a
	// division by zero): that event is dead-lettered, the others go on.
	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{typ}, Filter: `int(data.n) / int(data.d) >= 0`})
	res := mustPublish(t, routerClient(addr, pubKey), event(typ, "zero", `{"n":1,"d":0}`), event(typ, "small", `{"n":1,"d":1}`))
	if res[0].GetCursor() == "" || res[1].GetCursor() == "" {
		t.Fatalf("publish: %v", res)
	}
	c := subscribeTo(t, routerClient(addr, consumerKey), &routerv1.SubscribeRequest{SubscriptionId: sub.GetId()})
	if d := c.next(); d.GetEvent().GetId() != "small" {
		t.Fatalf("delivered %s, want small", d.GetEvent().GetId())
	}
	var letters *routerv1.ListDeadLettersResponse
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := routerClient(addr, consumerKey).ListDeadLetters(context.Background(), connect.NewRequest(&routerv1.ListDeadLettersRequest{SubscriptionId: sub.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		letters = r.Msg
		return len(letters.GetDeadLetters()) > 0
	}, "a dead letter")
	dl := letters.GetDeadLetters()[0]
	if len(letters.GetDeadLetters()) != 1 || dl.GetCursor() != res[0].GetCursor() || !strings.Contains(dl.GetReason(), "division by zero") {
		t.Fatalf("dead letters %v, want the zero event with a reason naming the division by zero", letters.GetDeadLetters())
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "herald_router_filter_errors_total 1") {
		t.Fatal("herald_router_filter_errors_total is not 1")
	}
}

// D6: a cursor (or a time) in the future is refused, naming the newest
// cursor, by CreateSubscription and by Subscribe's resume; one between the
// newest event and now is fine.
func TestFutureCursorsRefused(t *testing.T) {
	e := newEnv(t)
	e.createType(t, orderCreated, orderSchema)
	_, pubKey := e.createApp(t, "shop")
	consumerID, consumerKey := e.consumerApp(t, "warehouse", "shop.*")
	addr, _ := e.startRouter(t, "127.0.0.1:0", 100)
	newest := mustPublish(t, routerClient(addr, pubKey), event(orderCreated, "e1", order("o", 5)))[0].GetCursor()
	const future = "99999999999999-0"

	create := func(start *registryv1.StartPosition) error {
		_, err := e.registry.CreateSubscription(context.Background(), connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
			ApplicationId: consumerID, Types: []string{"shop.*"}, Start: start,
			Channel: &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		}}))
		return err
	}
	wantCode(t, create(&registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: future}}), connect.CodeInvalidArgument, "newest cursor of the types this subscription covers is "+newest)
	wantCode(t, create(&registryv1.StartPosition{Position: &registryv1.StartPosition_Time{Time: timestamppb.New(time.Now().Add(24 * time.Hour))}}), connect.CodeInvalidArgument, "in the future")
	// Between the newest event and now: accepted.
	soon := fmt.Sprintf("%d-0", time.Now().Add(-time.Second).UnixMilli())
	if err := create(&registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: soon}}); err != nil {
		t.Fatalf("a cursor between the newest event and now: %v", err)
	}

	sub := e.subscription(t, &registryv1.Subscription{ApplicationId: consumerID, Types: []string{orderCreated}})
	client := routerClient(addr, consumerKey)
	err := subscribeErr(client, &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), Resume: &routerv1.ResumePosition{Position: &routerv1.ResumePosition_Cursor{Cursor: future}}})
	wantCode(t, err, connect.CodeInvalidArgument, "newest cursor of subscription "+sub.GetId()+" is "+newest)
	err = subscribeErr(client, &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), Resume: &routerv1.ResumePosition{Position: &routerv1.ResumePosition_Time{Time: timestamppb.New(time.Now().Add(time.Hour))}}})
	wantCode(t, err, connect.CodeInvalidArgument, "in the future")
	// The group did not move: the next event is delivered.
	c := subscribeTo(t, client, &routerv1.SubscribeRequest{SubscriptionId: sub.GetId(), Resume: &routerv1.ResumePosition{Position: &routerv1.ResumePosition_Cursor{Cursor: newest}}})
	mustPublish(t, routerClient(addr, pubKey), event(orderCreated, "e2", order("o", 5)))
	if d := c.next(); d.GetEvent().GetId() != "e2" {
		t.Fatalf("delivered %s, want e2", d.GetEvent().GetId())
	}
}
