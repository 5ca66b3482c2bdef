package edge_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/edge"
)

// records lists the DELIVERED usage records the edge appended.
func (e *rt) records() []*meteringv1.UsageRecord {
	e.t.Helper()
	msgs, err := e.rdb.XRange(context.Background(), usage.StreamKey, "-", "+").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*meteringv1.UsageRecord
	for _, m := range msgs {
		recs, err := usage.Decode(m)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range recs {
			if r.GetMetric() == meteringv1.UsageMetric_USAGE_METRIC_DELIVERED {
				out = append(out, r)
			}
		}
	}
	return out
}

// TestUsageRecordPerDelivery: SSE, long poll and StreamEvents each append
// one record per delivery, with the consumer's tenant, the producer, bytes,
// latency and an id derived from the delivery; a replayed SSE stream
// repeats the ids, so metering counts it once.
func TestUsageRecordPerDelivery(t *testing.T) {
	e := startRT(t, nil)
	res, err := e.reg.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "consumer", Tenant: "acme", Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	app, key := res.Msg.GetApplication(), res.Msg.GetKey().GetSecret()
	cursors := e.publish(paid, `{"n":1}`, `{"n":22}`, `{"n":333}`)

	for range 2 { // the second stream replays the first
		s := e.stream("types=billing.*&last_event_id=0", key, nil)
		for _, c := range cursors {
			if m := s.next(t); m.id != c {
				t.Fatalf("SSE: %+v, want %s", m, c)
			}
		}
		s.cancel()
	}
	if code, p, body := e.poll(context.Background(), "types=billing.*&cursor=0", key); code != 200 || len(p.Events) != 3 {
		t.Fatalf("poll: %d %s", code, body)
	}
	e.rpc(key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}, Cursor: "0"}).waitN(t, 3)

	want := map[string]int{"sse": 6, "poll": 3, edge.StreamUsageChannel: 3}
	testutil.Eventually(t, 20*time.Second, func() bool {
		got := map[string]int{}
		for _, r := range e.records() {
			got[r.GetChannel()]++
		}
		return got["sse"] == want["sse"] && got["poll"] == want["poll"] && got[edge.StreamUsageChannel] == want[edge.StreamUsageChannel]
	}, "a record per delivery on every channel")
	ids := map[string]map[string]bool{}
	for _, r := range e.records() {
		wantID := usage.DeliveryID("acme", app.GetId(), "", "/test", r.GetEventId(), r.GetChannel())
		if r.GetId() != wantID || r.GetTenant() != "acme" || r.GetApplicationId() != app.GetId() || r.GetProducerApplicationId() != "app" ||
			r.GetEventType() != paid || r.GetQuantity() != 1 || r.GetBytes() < 7 || r.GetBytes() > 9 || r.GetLatencyMs() < 0 || r.GetAttempt() != 1 {
			t.Errorf("record %v (want id %s)", r, wantID)
		}
		if ids[r.GetChannel()] == nil {
			ids[r.GetChannel()] = map[string]bool{}
		}
		ids[r.GetChannel()][r.GetId()] = true
	}
	for ch, set := range ids {
		if len(set) != 3 {
			t.Errorf("channel %s: %d distinct ids, want 3 (one per event)", ch, len(set))
		}
	}
}
