package mesh_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/testutil"
)

// TestWebhookBacklogOfOneApplicationDoesNotStarveAnother: one
// application's endpoint has a deep backlog at a slow receiver; another
// application's endpoint, whose few events are published after that
// backlog, gets all of them while the backlog is still mostly undelivered.
func TestWebhookBacklogOfOneApplicationDoesNotStarveAnother(t *testing.T) {
	e := startWebhooks(t)
	ctx := context.Background()
	const backlog, few = 600, 10

	// Application A: the shop's own endpoint, one request at a time, 5 ms each.
	slowA := newReceiver(t, func(int, hit) int { time.Sleep(5 * time.Millisecond); return http.StatusNoContent })
	e.createEndpoint(t, &registryv1.WebhookChannel{Url: slowA.URL, MaxConcurrency: 1})

	// Application B: another tenant, another type.
	refund := "billing.refund.issued"
	if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: refund, Description: "A refund was issued.", Schema: `{"type":"object"}`,
	}})); err != nil {
		t.Fatal(err)
	}
	appB, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "partner-b", Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: refund}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	fastB := newReceiver(t, nil)
	if _, err := e.reg.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: appB.Msg.GetApplication().GetId(), Types: []string{refund},
		Channel: &registryv1.Subscription_Webhook{Webhook: &registryv1.WebhookChannel{Url: fastB.URL}},
	}})); err != nil {
		t.Fatal(err)
	}

	// A's backlog first, in batches, then B's few events.
	for b := 0; b < backlog; b += 100 {
		evs := make([]*eventv1.CloudEvent, 100)
		for i := range evs {
			evs[i] = invoiceEvent(fmt.Sprintf("bulk-%d", b+i), b+i)
		}
		e.publish(evs...)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(slowA.got()) > 0 }, "A's first delivery")
	evs := make([]*eventv1.CloudEvent, few)
	for i := range evs {
		evs[i] = &eventv1.CloudEvent{
			Id: fmt.Sprintf("refund-%d", i), Source: "//billing.example/refunds", SpecVersion: "1.0", Type: refund,
			Data: &eventv1.CloudEvent_TextData{TextData: `{}`},
		}
	}
	e.publish(evs...)
	testutil.Eventually(t, 20*time.Second, func() bool { return len(fastB.got()) >= few }, "B's events")
	if a := len(slowA.got()); a >= backlog/2 {
		t.Fatalf("B's %d events arrived only after A's endpoint had %d of its %d: A's backlog delayed B", few, a, backlog)
	}
	if got := fastB.ids(); len(got) != few {
		t.Fatalf("B got %v", got)
	}
}
