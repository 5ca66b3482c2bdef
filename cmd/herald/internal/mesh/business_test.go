package mesh_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/metering"
)

// meteringProcessEnv, set to 1, makes this test binary a metering process
// configured from HERALD_* variables, like services/metering/cmd/metering:
// the business test kills it with SIGKILL mid-run.
const meteringProcessEnv = "HERALD_TEST_METERING_PROCESS"

// business is the mesh of the business test: metering runs as a process
// the test kills and restarts; the rest runs in process.
type business struct {
	*env
	metering *edgeProc
	apps     map[string]bizApp
}

type bizApp struct{ id, key string }

// startMetering starts (or restarts) the metering process. Records a dead
// metering left pending are taken over after a second.
func (b *business) startMetering(t *testing.T) {
	t.Helper()
	b.metering = startServiceProcess(t, "metering", meteringProcessEnv, b.common.MeteringAddr, b.common,
		"HERALD_METERING_CLAIM_IDLE=1s", "HERALD_METERING_CLAIM_EVERY=200ms")
}

func startBusiness(t *testing.T) *business {
	t.Helper()
	b := &business{apps: map[string]bizApp{}}
	b.env = startParts(t, meshParts{
		set: func(c *config.Common) {
			c.SecretKey = secretbox.NewKey()
			c.WebhookAllow = "127.0.0.0/8"
		},
		noMetering: func(c config.Common) {
			b.env = &env{common: c}
			b.startMetering(t)
		},
	})
	ctx := context.Background()
	for _, name := range []string{"shop.order.paid", "shop.order.sent", "ship.parcel.moved"} {
		if _, err := b.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
			Name: name, Description: "A business test event.",
			Schema: `{"type":"object","required":["n"],"properties":{"n":{"type":"integer"}}}`,
		}})); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	if _, err := b.reg.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: &registryv1.Product{
		Name: "orders", Description: "Order events.", EventTypes: []string{"shop.order.*"},
	}})); err != nil {
		t.Fatalf("create product: %v", err)
	}
	for _, a := range []struct {
		name, tenant, publish string
	}{
		{"maker-a", "makers", "shop.*"}, {"maker-b", "makers", "*"},
		{"buyer-1", "acme", ""}, {"buyer-2", "globex", ""},
	} {
		grants := []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"}}
		if a.publish != "" {
			grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: a.publish}}
		}
		res, err := b.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
			Name: a.name, Tenant: a.tenant, Grants: grants,
		}}))
		if err != nil {
			t.Fatalf("create %s: %v", a.name, err)
		}
		b.apps[a.name] = bizApp{id: res.Msg.GetApplication().GetId(), key: res.Msg.GetKey().GetSecret()}
	}
	return b
}

// publishAs publishes events of typ as app, numbered from first; it
// returns their cursors.
func (b *business) publishAs(t *testing.T, app, typ string, first, n int) []string {
	t.Helper()
	var evs []*eventv1.CloudEvent
	for i := first; i < first+n; i++ {
		evs = append(evs, &eventv1.CloudEvent{
			Id: fmt.Sprintf("%s-%d", typ, i), Source: "//" + app + ".example", SpecVersion: "1.0", Type: typ,
			Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"n":%d}`, i)},
		})
	}
	res, err := b.router.Publish(withKey(b.apps[app].key), &routerv1.PublishRequest{Events: evs})
	if err != nil {
		t.Fatalf("publish %s as %s: %v", typ, app, err)
	}
	var cursors []string
	for i, r := range res.GetResults() {
		if r.GetError() != nil {
			t.Fatalf("%s %d refused: %v", typ, i, r.GetError())
		}
		cursors = append(cursors, r.GetCursor())
	}
	return cursors
}

// seen is a set of event ids a consumer got on one channel.
type seen struct {
	mu  sync.Mutex
	ids map[string]int
}

func (s *seen) add(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]int{}
	}
	s.ids[id]++
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// usageCell is one (consumer, type, channel) of delivered usage.
type usageCell struct{ app, typ, channel string }

// delivered reads metering's delivered usage by application, type and
// channel, over the last hour.
func (b *business) delivered(t *testing.T) map[usageCell]int64 {
	t.Helper()
	c := meteringv1connect.NewMeteringServiceClient(rpc.HTTPClient(), rpc.BaseURL(b.common.MeteringAddr), rpc.ClientOptions(adminKey)...)
	res, err := c.QueryUsage(context.Background(), connect.NewRequest(&meteringv1.QueryUsageRequest{
		Filter:      &meteringv1.UsageFilter{Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED},
		Granularity: meteringv1.Granularity_GRANULARITY_TOTAL,
		GroupBy:     []meteringv1.UsageDimension{meteringv1.UsageDimension_USAGE_DIMENSION_APPLICATION, meteringv1.UsageDimension_USAGE_DIMENSION_EVENT_TYPE, meteringv1.UsageDimension_USAGE_DIMENSION_CHANNEL},
	}))
	if err != nil {
		return nil // metering restarting
	}
	out := map[usageCell]int64{}
	for _, s := range res.Msg.GetSeries() {
		d := s.GetDimensions()
		for _, p := range s.GetPoints() {
			out[usageCell{d.GetApplicationId(), d.GetEventType(), d.GetChannel()}] += p.GetEvents()
		}
	}
	return out
}

// The business layer end to end: a known mix of events from two producers
// reaches two consumers of two tenants on four channels (webhooks that fail
// their first attempt, SSE, long polling, StreamEvents); metering is killed
// with SIGKILL in the middle and restarted; streams are replayed and
// webhooks retried and replayed; delivered usage is exactly one per event
// per consumer per channel, and the month's invoices under two plans (an
// application's and a tenant's, two currencies, graduated and volume tiers,
// a product and a domain rule, a pinned plan version) and the producers'
// statements come to the minor unit worked out by hand.
func TestBusinessEndToEnd(t *testing.T) {
	b := startBusiness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	buyer1, buyer2 := b.apps["buyer-1"], b.apps["buyer-2"]

	// buyer-1: a webhook endpoint for the orders, failing each event's
	// first attempt; SSE for the parcels.
	var hooks seen
	var firstTry sync.Map
	r := newReceiver(t, func(_ int, h hit) int {
		if _, again := firstTry.LoadOrStore(h.header.Get("webhook-id"), true); !again {
			return http.StatusServiceUnavailable
		}
		hooks.add(h.header.Get("webhook-id"))
		return http.StatusOK
	})
	ep, _ := b.createEndpointOf(t, buyer1.id, &registryv1.WebhookChannel{Url: r.URL, RetrySchedule: short(50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond)}, "shop.order.*")
	var sse seen
	parcels, closeSSE := b.subscribe("types=ship.parcel.moved&access_token="+buyer1.key, "")
	go func() {
		for ev := range parcels {
			sse.add(ev.id)
		}
	}()
	// buyer-2: a long poll for the paid orders, StreamEvents for the rest.
	var polled, streamed seen
	go func() {
		cursor := "0"
		for ctx.Err() == nil {
			cursors, next, err := pollOnce(ctx, b.common.EdgeAddr, buyer2.key, url.Values{"types": {"shop.order.paid"}, "wait": {"1s"}, "cursor": {cursor}})
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			for _, c := range cursors {
				polled.add(c)
			}
			cursor = next
		}
	}()
	msgs, _, stopStream := rpcStream(t, b.common.EdgeAddr, buyer2.key, &edgev1.StreamEventsRequest{Types: []string{"shop.order.sent", "ship.parcel.moved"}})
	go func() {
		for m := range msgs {
			streamed.add(m.GetCursor())
		}
	}()
	time.Sleep(300 * time.Millisecond) // the streams in place

	wait := func(what string, want map[*seen]int) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, func() bool {
			for s, n := range want {
				if s.distinct() != n {
					return false
				}
			}
			return true
		}, what)
	}
	// The first half, then metering dies and the second half flows while
	// it is down; it is restarted after.
	b.publishAs(t, "maker-a", "shop.order.paid", 0, 4)
	b.publishAs(t, "maker-b", "shop.order.sent", 0, 2)
	b.publishAs(t, "maker-b", "ship.parcel.moved", 0, 3)
	wait("the first half delivered", map[*seen]int{&hooks: 6, &sse: 3, &polled: 4, &streamed: 5})
	b.metering.kill()
	b.publishAs(t, "maker-a", "shop.order.paid", 4, 3)
	b.publishAs(t, "maker-b", "shop.order.sent", 2, 2)
	b.publishAs(t, "maker-b", "ship.parcel.moved", 3, 2)
	wait("the second half delivered with metering down", map[*seen]int{&hooks: 11, &sse: 5, &polled: 7, &streamed: 9})
	b.startMetering(t)

	// Replays: the SSE stream and the poll from the start of the log,
	// every webhook delivery again (a range replay) and one manual retry.
	closeSSE()
	again, closeAgain := b.subscribe("types=ship.parcel.moved&access_token="+buyer1.key, "0")
	defer closeAgain()
	for range 5 {
		next(t, again)
	}
	if cursors, _ := pollAt(t, b.common.EdgeAddr, buyer2.key, url.Values{"types": {"shop.order.paid"}, "cursor": {"0"}}); len(cursors) != 7 {
		t.Fatalf("a poll from the start got %d events, want 7", len(cursors))
	}
	wh := b.webhooks(buyer1.key)
	before := len(r.got()) // the replay may start delivering before Replay answers
	rp, err := wh.Replay(ctx, connect.NewRequest(&edgev1.ReplayRequest{SubscriptionId: ep.GetId(), Selection: &edgev1.ReplayRequest_Range{Range: &edgev1.LogRange{
		From: &edgev1.LogRange_AfterCursor{AfterCursor: "0"},
	}}}))
	if err != nil || rp.Msg.GetQueued() != 11 {
		t.Fatalf("webhook range replay: %v %v", rp, err)
	}
	testutil.Eventually(t, 30*time.Second, func() bool { return len(r.got()) >= before+11 }, "the webhook replay delivered")
	stopStream()

	want := map[usageCell]int64{
		{buyer1.id, "shop.order.paid", "webhook"}: 7, {buyer1.id, "shop.order.sent", "webhook"}: 4, {buyer1.id, "ship.parcel.moved", "sse"}: 5,
		{buyer2.id, "shop.order.paid", "poll"}: 7, {buyer2.id, "shop.order.sent", "stream"}: 4, {buyer2.id, "ship.parcel.moved", "stream"}: 5,
	}
	var got map[usageCell]int64
	testutil.Eventually(t, 30*time.Second, func() bool {
		got = b.delivered(t)
		return fmt.Sprint(sortedCells(got)) == fmt.Sprint(sortedCells(want))
	}, "delivered usage once per event, consumer and channel")
	// Nothing late changes it (the replays were counted once, not later).
	time.Sleep(1500 * time.Millisecond)
	if got = b.delivered(t); fmt.Sprint(sortedCells(got)) != fmt.Sprint(sortedCells(want)) {
		t.Fatalf("delivered usage moved to %v, want %v", sortedCells(got), sortedCells(want))
	}
	b.invoiceTheMonth(t)
}

// invoiceTheMonth prices the test's traffic under two plans, and checks the
// invoices and producer statements against amounts worked out by hand here,
// not by the pricing code. A month is invoiced once it has ended, so this
// runs a second metering whose billing clock is a month ahead.
func (b *business) invoiceTheMonth(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	mcfg, err := metering.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	mcfg.Common, mcfg.Logger, mcfg.Addr = b.common, slog.New(slog.DiscardHandler), testutil.FreeAddr(t)
	mcfg.BillingClock = func() time.Time { return time.Now().AddDate(0, 1, 5) }
	later, err := metering.New(mcfg)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, later)
	waitReady(t, mcfg.Addr)
	bill := meteringv1connect.NewBillingServiceClient(rpc.HTTPClient(), rpc.BaseURL(mcfg.Addr), rpc.ClientOptions(adminKey)...)
	// The billing systems' subscription: every finalized invoice is an event.
	finalized, closeFinalized := b.subscribe("types=herald.invoice.finalized&access_token="+adminKey, "")
	defer closeFinalized()

	kolkata, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Fatal(err)
	}
	monthUTC, monthIST := time.Now().UTC().Format("2006-01"), time.Now().In(kolkata).Format("2006-01")
	buyer1 := b.apps["buyer-1"]
	makerA, makerB := b.apps["maker-a"].id, b.apps["maker-b"].id

	// growth, version 1 (USD): a monthly fee, shop.order.paid graduated
	// (the first 5 at 10, the rest at 4), the orders product flat at 7,
	// anything else 2; 30% to the producers. Version 2 changes every price:
	// buyer-1's assignment pins version 1.
	growth := &meteringv1.PlanVersion{
		Currency: "USD", MonthlyFeeMinor: 1000, DefaultUnitPriceMinor: 2, RevenueShareBps: 3000,
		Rules: []*meteringv1.PriceRule{
			{EventType: "shop.order.paid", Model: meteringv1.PricingModel_PRICING_MODEL_GRADUATED, Tiers: []*meteringv1.PriceTier{{UpTo: 5, UnitPriceMinor: 10}, {UnitPriceMinor: 4}}},
			{Product: "orders", Model: meteringv1.PricingModel_PRICING_MODEL_FLAT, UnitPriceMinor: 7},
		},
	}
	if _, err := bill.CreatePlan(ctx, connect.NewRequest(&meteringv1.CreatePlanRequest{PlanId: "growth", Name: "Growth", Version: growth})); err != nil {
		t.Fatalf("CreatePlan growth: %v", err)
	}
	v2 := &meteringv1.PlanVersion{Currency: "USD", MonthlyFeeMinor: 5000, DefaultUnitPriceMinor: 50}
	if _, err := bill.CreatePlanVersion(ctx, connect.NewRequest(&meteringv1.CreatePlanVersionRequest{PlanId: "growth", Version: v2})); err != nil {
		t.Fatalf("CreatePlanVersion: %v", err)
	}
	// scale (EUR, months in Kolkata): the shop domain in volume tiers (up
	// to 10 at 9 each, beyond that every unit at 6), anything else 3; 15%
	// to the producers. For the whole globex tenant.
	scale := &meteringv1.PlanVersion{
		Currency: "EUR", MonthlyFeeMinor: 500, DefaultUnitPriceMinor: 3, RevenueShareBps: 1500, TimeZone: "Asia/Kolkata",
		Rules: []*meteringv1.PriceRule{
			{Domain: "shop", Model: meteringv1.PricingModel_PRICING_MODEL_VOLUME, Tiers: []*meteringv1.PriceTier{{UpTo: 10, UnitPriceMinor: 9}, {UnitPriceMinor: 6}}},
		},
	}
	if _, err := bill.CreatePlan(ctx, connect.NewRequest(&meteringv1.CreatePlanRequest{PlanId: "scale", Name: "Scale", Version: scale})); err != nil {
		t.Fatalf("CreatePlan scale: %v", err)
	}
	if _, err := bill.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: buyer1.id, PlanId: "growth", PlanVersion: 1, StartMonth: monthUTC})); err != nil {
		t.Fatalf("AssignPlan growth: %v", err)
	}
	if _, err := bill.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{Tenant: "globex", PlanId: "scale", PlanVersion: 1, StartMonth: monthIST})); err != nil {
		t.Fatalf("AssignPlan scale: %v", err)
	}

	// buyer-1 got 7 paid orders (maker-a), 4 sent orders and 5 parcels
	// (maker-b): 5*10 + 2*4 = 58 for the paid orders, 4*7 = 28 for the
	// orders product, 5*2 = 10 for the rest: usage 96, total 1096. The
	// pool is floor(96 * 30%) = 28, split 58:38 between maker-a and
	// maker-b: 16.92 and 11.08, the one left over to the larger remainder:
	// 17 and 11.
	// globex (buyer-2) got 7 paid orders (maker-a) and 4 sent (maker-b):
	// 11 shop units, past the first tier, so all at 6: 66; 5 parcels at 3:
	// 15. Usage 81, total 581. The shop line is 42 for maker-a and 24 for
	// maker-b (7:4 of 66), so the revenues are 42 and 39; the pool
	// floor(81 * 15%) = 12 splits into 6.22 and 5.78: 6 and 6.
	invoices := map[string]*meteringv1.Invoice{}
	for _, c := range []struct {
		name         string
		req          *meteringv1.FinalizeInvoiceRequest
		currency     string
		usage, total int64
		shares       map[string]int64
	}{
		{"buyer-1", &meteringv1.FinalizeInvoiceRequest{ApplicationId: buyer1.id, Month: monthUTC}, "USD", 96, 1096, map[string]int64{makerA: 17, makerB: 11}},
		{"globex", &meteringv1.FinalizeInvoiceRequest{Tenant: "globex", Month: monthIST}, "EUR", 81, 581, map[string]int64{makerA: 6, makerB: 6}},
	} {
		res, err := bill.FinalizeInvoice(ctx, connect.NewRequest(c.req))
		if err != nil {
			t.Fatalf("finalize %s: %v", c.name, err)
		}
		inv := res.Msg.GetInvoice()
		shares := map[string]int64{}
		for _, s := range inv.GetProducerShares() {
			shares[s.GetProducerApplicationId()] = s.GetShareMinor()
		}
		if inv.GetStatus() != meteringv1.InvoiceStatus_INVOICE_STATUS_FINALIZED || inv.GetCurrency() != c.currency || inv.GetUsageMinor() != c.usage ||
			inv.GetTotalMinor() != c.total || fmt.Sprint(shares) != fmt.Sprint(c.shares) {
			t.Errorf("%s invoice: %s %s usage %d total %d shares %v; want FINALIZED %s usage %d total %d shares %v\nlines: %v",
				c.name, inv.GetStatus(), inv.GetCurrency(), inv.GetUsageMinor(), inv.GetTotalMinor(), shares, c.currency, c.usage, c.total, c.shares, inv.GetLines())
		}
		// Finalizing again answers the same invoice.
		again, err := bill.FinalizeInvoice(ctx, connect.NewRequest(c.req))
		if err != nil || again.Msg.GetInvoice().GetId() != inv.GetId() || again.Msg.GetInvoice().GetTotalMinor() != c.total {
			t.Errorf("%s finalized again: %v %v", c.name, again, err)
		}
		invoices[inv.GetId()] = inv
	}
	for _, c := range []struct {
		producer string
		want     string
	}{{makerA, "[EUR:6 USD:17]"}, {makerB, "[EUR:6 USD:11]"}} {
		var totals []string
		for _, month := range slices.Compact([]string{monthIST, monthUTC}) {
			res, err := bill.GetProducerStatement(ctx, connect.NewRequest(&meteringv1.GetProducerStatementRequest{ProducerApplicationId: c.producer, Month: month}))
			if err != nil {
				t.Fatalf("statement: %v", err)
			}
			for _, m := range res.Msg.GetStatement().GetTotals() {
				totals = append(totals, fmt.Sprintf("%s:%d", m.GetCurrency(), m.GetAmountMinor()))
			}
		}
		slices.Sort(totals)
		if fmt.Sprint(totals) != c.want {
			t.Errorf("statement of %s: %v, want %s", c.producer, totals, c.want)
		}
	}
	// One herald.invoice.finalized per invoice, whose id is the invoice's.
	for range invoices {
		ev := next(t, finalized)
		var ce struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal([]byte(ev.data), &ce); err != nil || invoices[ce.ID] == nil {
			t.Errorf("finalized event %s names no invoice of the test: %v", ev.data, err)
		}
	}
}

// pollOnce is pollAt for a goroutine: it returns its errors.
func pollOnce(ctx context.Context, addr, key string, v url.Values) (cursors []string, next string, err error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(addr)+"/v1/poll?"+v.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer res.Body.Close()
	var answer struct {
		Events []struct {
			Cursor string `json:"cursor"`
		} `json:"events"`
		Cursor string `json:"cursor"`
	}
	if res.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("poll: %s", res.Status)
	}
	if err := json.NewDecoder(res.Body).Decode(&answer); err != nil {
		return nil, "", err
	}
	for _, ev := range answer.Events {
		cursors = append(cursors, ev.Cursor)
	}
	return cursors, answer.Cursor, nil
}

// sortedCells renders a usage map in a stable order.
func sortedCells(m map[usageCell]int64) []string {
	var out []string
	for c, n := range m {
		out = append(out, fmt.Sprintf("%s/%s/%s=%d", c.app, c.typ, c.channel, n))
	}
	slices.Sort(out)
	return out
}
