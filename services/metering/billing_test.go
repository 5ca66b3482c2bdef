package metering_test

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/metering"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ListApplications lists the stub registry's applications of a tenant.
func (r *registry) ListApplications(_ context.Context, req *connect.Request[registryv1.ListApplicationsRequest]) (*connect.Response[registryv1.ListApplicationsResponse], error) {
	if auth.BearerToken(req.Header()) != adminKey {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("the registry wants the admin key"))
	}
	var out []*registryv1.Application
	for id, tenant := range applications {
		if req.Msg.GetTenant() == "" || tenant == req.Msg.GetTenant() {
			out = append(out, &registryv1.Application{Id: id, Tenant: tenant})
		}
	}
	return connect.NewResponse(&registryv1.ListApplicationsResponse{Applications: out}), nil
}

// router is a RouterService that records what is published, refusing the
// first fail calls as a router that is briefly down.
type router struct {
	routerv1connect.UnimplementedRouterServiceHandler
	mu     sync.Mutex
	fail   int
	calls  int
	events map[string]*eventv1.CloudEvent // by id: the real router dedupes on source and id
}

func (r *router) Publish(_ context.Context, req *connect.Request[routerv1.PublishRequest]) (*connect.Response[routerv1.PublishResponse], error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.calls <= r.fail {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("router starting"))
	}
	res := &routerv1.PublishResponse{}
	for _, ev := range req.Msg.GetEvents() {
		_, dup := r.events[ev.GetId()]
		r.events[ev.GetId()] = ev
		res.Results = append(res.Results, &routerv1.PublishResult{Result: &routerv1.PublishResult_Cursor{Cursor: "1-0"}, Duplicate: dup})
	}
	return connect.NewResponse(res), nil
}

func (r *router) published() map[string]*eventv1.CloudEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps(r.events)
}

func maps[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func startRouter(t *testing.T, r *router) string {
	mux := http.NewServeMux()
	mux.Handle(routerv1connect.NewRouterServiceHandler(r))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// startBilling runs metering with a router for herald.invoice.finalized.
func (e *env) startBilling(t *testing.T, routerAddr string) *running {
	t.Helper()
	svc, err := metering.New(metering.Config{
		Common:                config.Common{RedisURL: e.redisURL, AdminKey: adminKey, RegistryAddr: e.registryAddr, RouterAddr: routerAddr},
		Addr:                  "127.0.0.1:0",
		Logger:                slog.New(slog.NewTextHandler(io.Discard, nil)),
		BillingOutboxInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := svc.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx) }()
	r := &running{base: "http://" + addr.String()}
	var once sync.Once
	var runErr error
	r.stop = func() error { once.Do(func() { cancel(); runErr = <-errc }); return runErr }
	t.Cleanup(func() { _ = r.stop() })
	testutil.Eventually(t, 10*time.Second, func() bool {
		res, err := http.Get(r.base + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "metering ready")
	return r
}

func billingClient(r *running, key string) meteringv1connect.BillingServiceClient {
	return meteringv1connect.NewBillingServiceClient(rpc.HTTPClient(), r.base, rpc.ClientOptions(key)...)
}

func wantCode(t *testing.T, what string, err error, code connect.Code, msg string) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Errorf("%s: %v, want %v", what, err, code)
		return
	}
	if msg != "" && !strings.Contains(err.Error(), msg) {
		t.Errorf("%s: %q does not say %q", what, err, msg)
	}
	if strings.Contains(err.Error(), "redis") || strings.Contains(err.Error(), "herald:{") {
		t.Errorf("%s: error shows internals: %v", what, err)
	}
}

// do sends a REST request and returns the status and body.
func (r *running) do(t *testing.T, method, key, path, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, r.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

func urec(id, tenant, app, producer, typ string, m meteringv1.UsageMetric, n int64, at time.Time) *meteringv1.UsageRecord {
	return &meteringv1.UsageRecord{Id: id, Tenant: tenant, ApplicationId: app, ProducerApplicationId: producer, EventType: typ,
		Metric: m, Channel: "webhook", Quantity: n, Time: timestamppb.New(at)}
}

func TestBilling(t *testing.T) {
	e := newEnv(t)
	rt := &router{fail: 2, events: map[string]*eventv1.CloudEvent{}}
	svc := e.startBilling(t, startRouter(t, rt))
	ctx := context.Background()
	admin, appA, appB := billingClient(svc, adminKey), billingClient(svc, keyA), billingClient(svc, keyB)

	now := time.Now().UTC()
	thisMonth := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	last := thisMonth.AddDate(0, -1, 0) // an ended month, in UTC and in Kolkata
	M, running := last.Format("2006-01"), thisMonth.Format("2006-01")
	failed := meteringv1.UsageMetric_USAGE_METRIC_FAILED

	// Usage of app_a (tenant acme) in M: producers app_p and app_c.
	h := func(n int) time.Time { return last.Add(time.Duration(n) * time.Hour) }
	recs := []*meteringv1.UsageRecord{
		urec("r1", "acme", "app_a", "app_p", "shop.order.created", delivered, 3, h(1)), // 3 included
		urec("r2", "acme", "app_a", "app_p", "shop.order.paid", delivered, 12, h(2)),   // 2 included, 10 paid
		urec("r3", "acme", "app_a", "app_c", "shop.order.paid", delivered, 15, h(3)),
		urec("r4", "acme", "app_a", "app_c", "shop.order.created", delivered, 4, h(3)),
		urec("r5", "acme", "app_a", "app_p", "ops.disk.full", delivered, 7, h(4)),
		urec("r5", "acme", "app_a", "app_p", "ops.disk.full", delivered, 7, h(4)), // the same record again: once
		// Not billable, or not app_a's, or not in M.
		urec("f1", "acme", "app_a", "app_p", "ops.disk.full", failed, 50, h(5)),
		urec("f2", "acme", "app_a", "app_p", "ops.disk.full", refused, 60, h(5)),
		urec("f3", "acme", "app_a", "app_p", "ops.disk.full", published, 70, h(5)),
		urec("f4", "acme", "app_c", "app_p", "ops.disk.full", delivered, 80, h(5)),
		urec("f5", "acme", "app_a", "app_p", "ops.disk.full", delivered, 90, thisMonth.Add(time.Minute)),
		urec("f6", "acme", "app_a", "app_p", "ops.disk.full", delivered, 100, last.Add(-time.Minute)),
		// Tenant globex, billed in Asia/Kolkata (UTC+05:30): M runs from
		// last-5h30 to thisMonth-5h30 in UTC.
		urec("k1", "globex", "app_b", "app_p", "shop.order.paid", delivered, 1000, last.Add(-5*time.Hour-35*time.Minute)),     // previous month in IST
		urec("k2", "globex", "app_b", "app_p", "shop.order.paid", delivered, 2, last.Add(-5*time.Hour-25*time.Minute)),        // first quarter of M in IST
		urec("k3", "globex", "app_b", "app_p", "shop.order.paid", delivered, 1, thisMonth.Add(-5*time.Hour-35*time.Minute)),   // last quarter of M in IST
		urec("k4", "globex", "app_b", "app_p", "shop.order.paid", delivered, 500, thisMonth.Add(-5*time.Hour-25*time.Minute)), // next month in IST
	}
	if err := usage.AppendBatch(ctx, e.rdb, 3, recs...); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return svc.total(t, url.Values{"startTime": {last.Add(-24 * time.Hour).Format(time.RFC3339)}, "endTime": {thisMonth.Add(time.Hour).Format(time.RFC3339)},
			"metric": {"USAGE_METRIC_DELIVERED"}}) == 3+12+15+4+7+80+90+100+1000+2+1+500
	}, "the usage folded")

	std := &meteringv1.PlanVersion{
		Currency: "EUR", MonthlyFeeMinor: 1000, IncludedUnits: 5, DefaultUnitPriceMinor: 2, RevenueShareBps: 3000,
		Rules: []*meteringv1.PriceRule{
			{EventType: "shop.order.paid", Model: meteringv1.PricingModel_PRICING_MODEL_GRADUATED, Tiers: []*meteringv1.PriceTier{
				{UpTo: 10, UnitPriceMinor: 10}, {UpTo: 20, UnitPriceMinor: 5}, {UnitPriceMinor: 1}}},
			{Product: "orders", UnitPriceMinor: 3},
		},
	}

	t.Run("bad input", func(t *testing.T) {
		bad := func(mod func(v *meteringv1.PlanVersion)) *meteringv1.CreatePlanRequest {
			v := &meteringv1.PlanVersion{Currency: "EUR", Rules: []*meteringv1.PriceRule{{EventType: "shop.*", Model: meteringv1.PricingModel_PRICING_MODEL_GRADUATED,
				Tiers: []*meteringv1.PriceTier{{UpTo: 10, UnitPriceMinor: 1}, {UnitPriceMinor: 1}}}}}
			mod(v)
			return &meteringv1.CreatePlanRequest{PlanId: "bad", Version: v}
		}
		for _, c := range []struct {
			req  *meteringv1.CreatePlanRequest
			want string
		}{
			{bad(func(v *meteringv1.PlanVersion) { v.Currency = "XYZ" }), `currency "XYZ" is not a known ISO 4217 code`},
			{bad(func(v *meteringv1.PlanVersion) { v.DefaultUnitPriceMinor = -5 }), "default unit price -5 is negative"},
			{bad(func(v *meteringv1.PlanVersion) { v.Rules[0].Tiers[0].UnitPriceMinor = -1 }), "rule 0: tier 1: unit price -1 is negative"},
			{bad(func(v *meteringv1.PlanVersion) {
				v.Rules[0].Tiers = []*meteringv1.PriceTier{{UpTo: 10}, {UpTo: 5}, {}}
			}), "rule 0: tier 2: up_to 5 must be greater than the previous tier's 10"},
			{bad(func(v *meteringv1.PlanVersion) { v.Rules[0] = &meteringv1.PriceRule{Product: "gold"} }), `product "gold" is not in the registry`},
			{bad(func(v *meteringv1.PlanVersion) { v.TimeZone = "Mars/Olympus" }), `time zone "Mars/Olympus" is not a known IANA zone`},
			{bad(func(v *meteringv1.PlanVersion) { v.TimeZone = "Local" }), `time zone "Local": name an IANA zone`},
			{&meteringv1.CreatePlanRequest{PlanId: "Bad Id", Version: std}, `plan_id "Bad Id"`},
		} {
			_, err := admin.CreatePlan(ctx, connect.NewRequest(c.req))
			wantCode(t, c.want, err, connect.CodeInvalidArgument, c.want)
		}
		_, err := admin.PreviewInvoice(ctx, connect.NewRequest(&meteringv1.PreviewInvoiceRequest{ApplicationId: "app_a", Month: "2026-13"}))
		wantCode(t, "bad month", err, connect.CodeInvalidArgument, `month "2026-13" is not a month: use YYYY-MM`)
		_, err = admin.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: "app_a", PlanId: "std", StartMonth: "11-2026"}))
		wantCode(t, "bad start month", err, connect.CodeInvalidArgument, `start_month "11-2026"`)
		_, err = admin.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{ApplicationId: "app_a", Tenant: "acme", Month: M}))
		wantCode(t, "both subjects", err, connect.CodeInvalidArgument, "not both")
		_, err = admin.PreviewInvoice(ctx, connect.NewRequest(&meteringv1.PreviewInvoiceRequest{ApplicationId: "app_a", Month: thisMonth.AddDate(0, 2, 0).Format("2006-01")}))
		wantCode(t, "future month", err, connect.CodeFailedPrecondition, "no plan is assigned") // nothing assigned yet
	})

	// Plans: std version 1, then version 2 after app_a is pinned to 1.
	if _, err := admin.CreatePlan(ctx, connect.NewRequest(&meteringv1.CreatePlanRequest{PlanId: "std", Name: "Standard", Version: std})); err != nil {
		t.Fatal(err)
	}
	asg, err := admin.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: "app_a", PlanId: "std", StartMonth: M}))
	if err != nil || asg.Msg.GetAssignment().GetPlanVersion() != 1 {
		t.Fatalf("assign: %v %v", asg, err)
	}
	v2 := &meteringv1.PlanVersion{Currency: "EUR", MonthlyFeeMinor: 5000, DefaultUnitPriceMinor: 100}
	if res, err := admin.CreatePlanVersion(ctx, connect.NewRequest(&meteringv1.CreatePlanVersionRequest{PlanId: "std", Version: v2})); err != nil ||
		res.Msg.GetVersion().GetVersion() != 2 || res.Msg.GetPlan().GetLatestVersion() != 2 || len(res.Msg.GetPlan().GetVersions()) != 2 ||
		res.Msg.GetPlan().GetVersions()[0].GetMonthlyFeeMinor() != 1000 {
		t.Fatalf("version 2: %v %v", res, err)
	}
	// Overlap: app_a already has std from M on (open-ended).
	_, err = admin.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: "app_a", PlanId: "std", PlanVersion: 2, StartMonth: running}))
	wantCode(t, "overlap", err, connect.CodeFailedPrecondition, "overlaps an existing assignment "+asg.Msg.GetAssignment().GetId())
	_, err = admin.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: "app_a", PlanId: "nope", StartMonth: M}))
	wantCode(t, "unknown plan", err, connect.CodeNotFound, `plan "nope" does not exist`)
	_, err = admin.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: "app_zz", PlanId: "std", StartMonth: M}))
	wantCode(t, "unknown application", err, connect.CodeNotFound, "application app_zz is not registered")

	// Kolkata plan for tenant globex: volume tiers over everything.
	kol := &meteringv1.PlanVersion{Currency: "INR", TimeZone: "Asia/Kolkata", Rules: []*meteringv1.PriceRule{
		{EventType: "*", Model: meteringv1.PricingModel_PRICING_MODEL_VOLUME, Tiers: []*meteringv1.PriceTier{{UpTo: 2, UnitPriceMinor: 100}, {UnitPriceMinor: 70}}}}}
	if _, err := admin.CreatePlan(ctx, connect.NewRequest(&meteringv1.CreatePlanRequest{PlanId: "kol", Version: kol})); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{Tenant: "globex", PlanId: "kol", StartMonth: M, EndMonth: M})); err != nil {
		t.Fatal(err)
	}

	// By hand: shop.order.paid 25 billable units, graduated: 10*10 + 10*5 + 5*1 = 155;
	// the orders product (shop.order.created) 4 units * 3 = 12; ops.disk.full at the
	// default price 7 * 2 = 14. Usage 181, fee 1000: 1181.
	wantLines := []string{
		"FEE Monthly fee 1x1000=1000 tier 0",
		"INCLUDED Included units 5x0=0 tier 0",
		"USAGE Events shop.order.paid 10x10=100 tier 1 [app_c 6 60, app_p 4 40]",
		"USAGE Events shop.order.paid 10x5=50 tier 2 [app_c 6 30, app_p 4 20]",
		"USAGE Events shop.order.paid 5x1=5 tier 3 [app_c 3 3, app_p 2 2]",
		"USAGE Product orders 4x3=12 tier 0 [app_c 4 12]",
		"USAGE Other events 7x2=14 tier 0 [app_p 7 14]",
	}
	linesOf := func(inv *meteringv1.Invoice) []string {
		var out []string
		for _, l := range inv.GetLines() {
			s := fmt.Sprintf("%s %s %dx%d=%d tier %d", strings.TrimPrefix(l.GetKind().String(), "LINE_KIND_"), l.GetDescription(), l.GetQuantity(), l.GetUnitPriceMinor(), l.GetAmountMinor(), l.GetTier())
			if len(l.GetProducers()) > 0 {
				var ps []string
				for _, p := range l.GetProducers() {
					ps = append(ps, fmt.Sprintf("%s %d %d", p.GetProducerApplicationId(), p.GetQuantity(), p.GetAmountMinor()))
				}
				s += " [" + strings.Join(ps, ", ") + "]"
			}
			out = append(out, s)
		}
		return out
	}
	check := func(t *testing.T, inv *meteringv1.Invoice, status meteringv1.InvoiceStatus) {
		t.Helper()
		if got := linesOf(inv); !slices.Equal(got, wantLines) {
			t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantLines, "\n"))
		}
		if inv.GetSubtotalMinor() != 1181 || inv.GetUsageMinor() != 181 || inv.GetCurrency() != "EUR" || inv.GetStatus() != status ||
			inv.GetPlanVersion() != 1 || inv.GetTenant() != "acme" || inv.GetMonth() != M {
			t.Errorf("invoice %v", inv)
		}
		// Revenue app_c 60+30+3+12 = 105, app_p 40+20+2+14 = 76; pool floor(181 * 30%) = 54,
		// by 105:76 = 31.33 and 22.67: 31 and 22, the unit left to app_p (.67): 31 and 23.
		var shares []string
		for _, s := range inv.GetProducerShares() {
			shares = append(shares, fmt.Sprintf("%s %d %d", s.GetProducerApplicationId(), s.GetRevenueMinor(), s.GetShareMinor()))
		}
		if strings.Join(shares, ", ") != "app_c 105 31, app_p 76 23" {
			t.Errorf("shares %v", shares)
		}
	}

	t.Run("preview", func(t *testing.T) {
		res, err := appA.PreviewInvoice(ctx, connect.NewRequest(&meteringv1.PreviewInvoiceRequest{ApplicationId: "app_a", Month: M}))
		if err != nil {
			t.Fatal(err)
		}
		check(t, res.Msg.GetInvoice(), meteringv1.InvoiceStatus_INVOICE_STATUS_DRAFT)
		// The running month: 90 units at the default price, none included left? 5 included first.
		res, err = admin.PreviewInvoice(ctx, connect.NewRequest(&meteringv1.PreviewInvoiceRequest{ApplicationId: "app_a", Month: running}))
		if err != nil || res.Msg.GetInvoice().GetSubtotalMinor() != 1000+85*2 {
			t.Errorf("running month preview: %v %v", res, err)
		}
	})

	t.Run("finalize running month", func(t *testing.T) {
		_, err := admin.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{ApplicationId: "app_a", Month: running}))
		wantCode(t, "running month", err, connect.CodeFailedPrecondition, "has not ended")
	})

	var inv *meteringv1.Invoice
	t.Run("concurrent finalize", func(t *testing.T) {
		var wg sync.WaitGroup
		ids := make([]string, 8)
		errs := make([]error, 8)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := admin.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{ApplicationId: "app_a", Month: M}))
				if errs[i] = err; err == nil {
					ids[i] = res.Msg.GetInvoice().GetId() + res.Msg.GetInvoice().GetFinalizeTime().AsTime().String()
					if i == 0 {
						inv = res.Msg.GetInvoice()
					}
				}
			}()
		}
		wg.Wait()
		for i := range ids {
			if errs[i] != nil || ids[i] != ids[0] {
				t.Fatalf("finalize %d: %q %v; first %q", i, ids[i], errs[i], ids[0])
			}
		}
		check(t, inv, meteringv1.InvoiceStatus_INVOICE_STATUS_FINALIZED)
		list, err := admin.ListInvoices(ctx, connect.NewRequest(&meteringv1.ListInvoicesRequest{ApplicationId: "app_a"}))
		if err != nil || len(list.Msg.GetInvoices()) != 1 || list.Msg.GetInvoices()[0].GetId() != inv.GetId() {
			t.Fatalf("list: %v %v", list, err)
		}
		// The event, once, with the invoice id, after the router came back.
		testutil.Eventually(t, 10*time.Second, func() bool { return rt.published()[inv.GetId()] != nil }, "herald.invoice.finalized published")
		evs := rt.published()
		rt.mu.Lock()
		calls := rt.calls
		rt.mu.Unlock()
		if calls < 3 {
			t.Errorf("%d publish calls: the two refused ones were not retried", calls)
		}
		ev := evs[inv.GetId()]
		if len(evs) != 1 || ev.GetType() != "herald.invoice.finalized" || ev.GetSource() != "herald/metering" ||
			!strings.Contains(ev.GetTextData(), `"total_minor":1181`) || !strings.Contains(ev.GetTextData(), `"invoice_id":"`+inv.GetId()+`"`) {
			t.Errorf("events %v", evs)
		}
		// Finalizing again returns the same invoice and publishes nothing new.
		again, err := admin.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{ApplicationId: "app_a", Month: M}))
		if err != nil || again.Msg.GetInvoice().GetId() != inv.GetId() || !again.Msg.GetInvoice().GetFinalizeTime().AsTime().Equal(inv.GetFinalizeTime().AsTime()) {
			t.Errorf("again: %v %v", again, err)
		}
		// The outbox entry goes once the router has answered the publish.
		testutil.Eventually(t, 10*time.Second, func() bool {
			n, err := e.rdb.HLen(ctx, "herald:{billing}:outbox").Result()
			return err == nil && n == 0
		}, "the outbox emptied after the publish")
	})
	if inv == nil {
		t.FailNow()
	}

	t.Run("kolkata month", func(t *testing.T) {
		res, err := admin.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{Tenant: "globex", Month: M}))
		if err != nil {
			t.Fatal(err)
		}
		k := res.Msg.GetInvoice()
		// k2 + k3 = 3 units in M in IST: volume tier 2, 3 * 70 = 210.
		if k.GetSubtotalMinor() != 210 || k.GetCurrency() != "INR" || k.GetTimeZone() != "Asia/Kolkata" || k.GetApplicationId() != "" || k.GetTenant() != "globex" ||
			!k.GetPeriodStart().AsTime().Equal(last.Add(-5*time.Hour-30*time.Minute)) {
			t.Errorf("kolkata invoice %v", k)
		}
		if got := linesOf(k); !slices.Equal(got, []string{"USAGE Events * 3x70=210 tier 2 [app_p 3 210]"}) {
			t.Errorf("kolkata lines %v", got)
		}
	})

	t.Run("credit notes", func(t *testing.T) {
		res, err := admin.CreateCreditNote(ctx, connect.NewRequest(&meteringv1.CreateCreditNoteRequest{InvoiceId: inv.GetId(), AmountMinor: 200, Reason: "outage"}))
		if err != nil || res.Msg.GetInvoice().GetTotalMinor() != 981 || res.Msg.GetInvoice().GetCreditedMinor() != 200 {
			t.Fatalf("credit: %v %v", res, err)
		}
		_, err = admin.CreateCreditNote(ctx, connect.NewRequest(&meteringv1.CreateCreditNoteRequest{InvoiceId: inv.GetId(), AmountMinor: 982, Reason: "too much"}))
		wantCode(t, "over the cap", err, connect.CodeFailedPrecondition, "credit of 982 but 981 remains")
		_, err = admin.CreateCreditNote(ctx, connect.NewRequest(&meteringv1.CreateCreditNoteRequest{InvoiceId: inv.GetId(), AmountMinor: -1, Reason: "x"}))
		wantCode(t, "negative credit", err, connect.CodeInvalidArgument, "must be positive")
		_, err = appA.CreateCreditNote(ctx, connect.NewRequest(&meteringv1.CreateCreditNoteRequest{InvoiceId: inv.GetId(), AmountMinor: 1, Reason: "x"}))
		wantCode(t, "app key credits", err, connect.CodePermissionDenied, "only the operator")
		got, err := appA.GetInvoice(ctx, connect.NewRequest(&meteringv1.GetInvoiceRequest{InvoiceId: inv.GetId()}))
		if err != nil || got.Msg.GetInvoice().GetTotalMinor() != 981 || len(got.Msg.GetInvoice().GetCreditNotes()) != 1 || got.Msg.GetInvoice().GetSubtotalMinor() != 1181 {
			t.Errorf("get: %v %v", got, err)
		}
	})

	t.Run("statements", func(t *testing.T) {
		res, err := appA.GetProducerStatement(ctx, connect.NewRequest(&meteringv1.GetProducerStatementRequest{ProducerApplicationId: "app_p", Month: M}))
		if err != nil {
			t.Fatal(err)
		}
		st := res.Msg.GetStatement()
		// 23 EUR cents from app_a's invoice; the Kolkata plan shares nothing (0 bps).
		var totals []string
		for _, m := range st.GetTotals() {
			totals = append(totals, fmt.Sprintf("%s %d", m.GetCurrency(), m.GetAmountMinor()))
		}
		if strings.Join(totals, ",") != "EUR 23,INR 0" || len(st.GetLines()) != 2 {
			t.Errorf("statement of app_p: %v", st)
		}
		res, err = admin.GetProducerStatement(ctx, connect.NewRequest(&meteringv1.GetProducerStatementRequest{ProducerApplicationId: "app_c", Month: M}))
		if err != nil || len(res.Msg.GetStatement().GetTotals()) != 1 || res.Msg.GetStatement().GetTotals()[0].GetAmountMinor() != 31 {
			t.Errorf("statement of app_c: %v %v", res, err)
		}
		_, err = appB.GetProducerStatement(ctx, connect.NewRequest(&meteringv1.GetProducerStatementRequest{ProducerApplicationId: "app_p", Month: M}))
		wantCode(t, "other tenant's statement", err, connect.CodePermissionDenied, "own tenant")
	})

	t.Run("export", func(t *testing.T) {
		status, body, hdr := svc.do(t, http.MethodGet, keyA, "/v1/invoices/"+inv.GetId()+"/export?format=csv", "")
		if status != http.StatusOK || hdr.Get("Content-Type") != "text/csv; charset=utf-8" ||
			hdr.Get("Content-Disposition") != `attachment; filename="`+inv.GetId()+`.csv"` {
			t.Fatalf("csv: %d %v %s", status, hdr, body)
		}
		rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		// header, 7 lines, 1 credit note, subtotal, credited, total.
		if len(rows) != 12 || strings.Join(rows[3], ",") != inv.GetId()+","+M+",EUR,usage,Events shop.order.paid,shop.order.paid,,,1,10,10,100" ||
			strings.Join(rows[8][3:], ",") != "credit_note,outage,,,,,,,-200" || strings.Join(rows[11][3:], ",") != "total,,,,,,,,981" {
			t.Errorf("csv rows: %q", rows)
		}
		status, body, hdr = svc.do(t, http.MethodGet, adminKey, "/v1/invoices/"+inv.GetId()+"/export?format=json", "")
		got := new(meteringv1.Invoice)
		if status != http.StatusOK || hdr.Get("Content-Disposition") != `attachment; filename="`+inv.GetId()+`.json"` || protojson.Unmarshal([]byte(body), got) != nil {
			t.Fatalf("json: %d %s", status, body)
		}
		if got.GetTotalMinor() != 981 || len(got.GetLines()) != 7 || !strings.Contains(body, `"subtotalMinor":"1181"`) {
			t.Errorf("json: %s", body)
		}
		if status, _, _ := svc.do(t, http.MethodGet, keyB, "/v1/invoices/"+inv.GetId()+"/export?format=csv", ""); status != http.StatusNotFound {
			t.Errorf("other tenant's export: %d", status)
		}
		if status, _, _ := svc.do(t, http.MethodGet, "", "/v1/invoices/"+inv.GetId()+"/export", ""); status != http.StatusUnauthorized {
			t.Errorf("export without a key: %d", status)
		}
		if status, body, _ := svc.do(t, http.MethodGet, adminKey, "/v1/invoices/"+inv.GetId()+"/export?format=pdf", ""); status != http.StatusBadRequest || !strings.Contains(body, "csv or json") {
			t.Errorf("pdf: %d %s", status, body)
		}
	})

	t.Run("rest", func(t *testing.T) {
		status, body, _ := svc.do(t, http.MethodPost, adminKey, "/v1/plans", `{"planId":"rest","name":"REST","version":{"currency":"JPY","monthlyFeeMinor":"500"}}`)
		if status != http.StatusOK || !strings.Contains(body, `"latestVersion":1`) {
			t.Errorf("POST /v1/plans: %d %s", status, body)
		}
		status, body, _ = svc.do(t, http.MethodPost, adminKey, "/v1/plans/rest/versions", `{"version":{"currency":"JPY","monthlyFeeMinor":"600"}}`)
		if status != http.StatusOK || !strings.Contains(body, `"latestVersion":2`) {
			t.Errorf("POST versions: %d %s", status, body)
		}
		if status, body, _ = svc.do(t, http.MethodGet, keyA, "/v1/plans/rest", ""); status != http.StatusOK || !strings.Contains(body, `"monthlyFeeMinor":"600"`) {
			t.Errorf("GET plan: %d %s", status, body)
		}
		status, body, _ = svc.do(t, http.MethodPost, adminKey, "/v1/assignments", `{"applicationId":"app_c","planId":"rest","planVersion":1,"startMonth":"`+M+`","endMonth":"`+M+`"}`)
		if status != http.StatusOK || !strings.Contains(body, `"planVersion":1`) {
			t.Errorf("POST assignment: %d %s", status, body)
		}
		asgs := new(meteringv1.ListAssignmentsResponse)
		if status, body := svc.get(t, keyA, "/v1/assignments", nil, asgs); status != http.StatusOK || len(asgs.GetAssignments()) != 2 {
			t.Errorf("GET assignments (acme): %d %s", status, body)
		}
		if status, body := svc.get(t, keyB, "/v1/assignments", nil, asgs); status != http.StatusOK || len(asgs.GetAssignments()) != 1 || asgs.GetAssignments()[0].GetTenant() != "globex" {
			t.Errorf("GET assignments (globex): %d %s", status, body)
		}
		prev := new(meteringv1.PreviewInvoiceResponse)
		if status, body := svc.get(t, keyA, "/v1/invoices/preview", url.Values{"application_id": {"app_c"}, "month": {M}}, prev); status != http.StatusOK ||
			prev.GetInvoice().GetSubtotalMinor() != 500 || prev.GetInvoice().GetCurrency() != "JPY" {
			t.Errorf("GET preview: %d %s", status, body)
		}
		status, body, _ = svc.do(t, http.MethodPost, adminKey, "/v1/invoices", `{"applicationId":"app_c","month":"`+M+`"}`)
		if status != http.StatusOK || !strings.Contains(body, `"status":"INVOICE_STATUS_FINALIZED"`) {
			t.Errorf("POST invoice: %d %s", status, body)
		}
		got := new(meteringv1.GetInvoiceResponse)
		if status, body := svc.get(t, keyA, "/v1/invoices/"+inv.GetId(), nil, got); status != http.StatusOK || got.GetInvoice().GetTotalMinor() != 981 {
			t.Errorf("GET invoice: %d %s", status, body)
		}
		list := new(meteringv1.ListInvoicesResponse)
		if status, body := svc.get(t, keyA, "/v1/invoices", url.Values{"month": {M}}, list); status != http.StatusOK || len(list.GetInvoices()) != 2 {
			t.Errorf("GET invoices (acme): %d %s", status, body)
		}
		if status, body := svc.get(t, keyB, "/v1/invoices", nil, list); status != http.StatusOK || len(list.GetInvoices()) != 1 || list.GetInvoices()[0].GetTenant() != "globex" {
			t.Errorf("GET invoices (globex): %d %s", status, body)
		}
		status, body, _ = svc.do(t, http.MethodPost, adminKey, "/v1/invoices/"+inv.GetId()+"/credit-notes", `{"amountMinor":"1","reason":"rounding"}`)
		if status != http.StatusOK || !strings.Contains(body, `"totalMinor":"980"`) {
			t.Errorf("POST credit note: %d %s", status, body)
		}
		stmt := new(meteringv1.GetProducerStatementResponse)
		if status, body := svc.get(t, keyA, "/v1/statements", url.Values{"producer_application_id": {"app_p"}, "month": {M}}, stmt); status != http.StatusOK || len(stmt.GetStatement().GetLines()) != 3 {
			t.Errorf("GET statements: %d %s", status, body)
		}
		if status, body, _ := svc.do(t, http.MethodDelete, adminKey, "/v1/assignments/"+asg.Msg.GetAssignment().GetId(), ""); status != http.StatusOK {
			t.Errorf("DELETE assignment: %d %s", status, body)
		}
		if status, body, _ := svc.do(t, http.MethodPost, adminKey, "/v1/plans", `{"planId":"x","version":{"currency":"EUR","defaultUnitPriceMinor":"-1"}}`); status != http.StatusBadRequest || !strings.Contains(body, "default unit price -1 is negative") {
			t.Errorf("bad plan over REST: %d %s", status, body)
		}
	})

	t.Run("access", func(t *testing.T) {
		// No key, over REST and Connect.
		if status, _, hdr := svc.do(t, http.MethodGet, "", "/v1/invoices", ""); status != http.StatusUnauthorized || hdr.Get("WWW-Authenticate") == "" {
			t.Errorf("no key: %d", status)
		}
		noKey := meteringv1connect.NewBillingServiceClient(rpc.HTTPClient(), svc.base)
		_, err := noKey.ListInvoices(ctx, connect.NewRequest(&meteringv1.ListInvoicesRequest{}))
		wantCode(t, "no key", err, connect.CodeUnauthenticated, "")
		// A revoked key.
		revokedKeys.Store(auth.HashSecret(keyR), true)
		_, err = billingClient(svc, keyR).ListInvoices(ctx, connect.NewRequest(&meteringv1.ListInvoicesRequest{}))
		wantCode(t, "revoked key", err, connect.CodeUnauthenticated, "")
		if status, _, _ := svc.do(t, http.MethodGet, keyR, "/v1/invoices/"+inv.GetId(), ""); status != http.StatusUnauthorized {
			t.Errorf("revoked key over REST: %d", status)
		}
		// Another tenant's key.
		_, err = appB.GetInvoice(ctx, connect.NewRequest(&meteringv1.GetInvoiceRequest{InvoiceId: inv.GetId()}))
		wantCode(t, "other tenant's invoice", err, connect.CodeNotFound, "does not exist")
		_, err = appB.PreviewInvoice(ctx, connect.NewRequest(&meteringv1.PreviewInvoiceRequest{ApplicationId: "app_a", Month: M}))
		wantCode(t, "other tenant's preview", err, connect.CodePermissionDenied, "own tenant")
		_, err = appB.PreviewInvoice(ctx, connect.NewRequest(&meteringv1.PreviewInvoiceRequest{Tenant: "acme", Month: M}))
		wantCode(t, "other tenant's tenant preview", err, connect.CodePermissionDenied, "own tenant")
		list, err := appB.ListInvoices(ctx, connect.NewRequest(&meteringv1.ListInvoicesRequest{ApplicationId: "app_a"}))
		if err != nil || len(list.Msg.GetInvoices()) != 0 {
			t.Errorf("other tenant's list: %v %v", list, err)
		}
		// An application key trying writes.
		_, err = appA.CreatePlan(ctx, connect.NewRequest(&meteringv1.CreatePlanRequest{PlanId: "mine", Version: std}))
		wantCode(t, "app creates a plan", err, connect.CodePermissionDenied, "only the operator")
		_, err = appA.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{ApplicationId: "app_a", PlanId: "std", StartMonth: "2030-01"}))
		wantCode(t, "app assigns", err, connect.CodePermissionDenied, "only the operator")
		_, err = appA.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{ApplicationId: "app_a", Month: M}))
		wantCode(t, "app finalizes", err, connect.CodePermissionDenied, "only the operator")
		if status, _, _ := svc.do(t, http.MethodPost, keyA, "/v1/plans/std/versions", `{"version":{"currency":"EUR"}}`); status != http.StatusForbidden {
			t.Errorf("app adds a version over REST: %d", status)
		}
		// Plan version 1 is unchanged by everything above.
		p, err := admin.GetPlan(ctx, connect.NewRequest(&meteringv1.GetPlanRequest{PlanId: "std"}))
		if err != nil || len(p.Msg.GetPlan().GetVersions()) != 2 || p.Msg.GetPlan().GetVersions()[0].GetMonthlyFeeMinor() != 1000 {
			t.Errorf("plan std: %v %v", p, err)
		}
	})
}

// A herald.invoice.finalized the router never took before metering stopped
// is published by the next metering process, from the outbox.
func TestBillingOutboxSurvivesRestart(t *testing.T) {
	e := newEnv(t)
	rt := &router{fail: 1 << 30, events: map[string]*eventv1.CloudEvent{}}
	routerAddr := startRouter(t, rt)
	svc := e.startBilling(t, routerAddr)
	ctx := context.Background()
	admin := billingClient(svc, adminKey)
	now := time.Now().UTC()
	M := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, -1, 0).Format("2006-01")
	if _, err := admin.CreatePlan(ctx, connect.NewRequest(&meteringv1.CreatePlanRequest{PlanId: "fee", Version: &meteringv1.PlanVersion{Currency: "USD", MonthlyFeeMinor: 4900}})); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AssignPlan(ctx, connect.NewRequest(&meteringv1.AssignPlanRequest{Tenant: "acme", PlanId: "fee", StartMonth: M})); err != nil {
		t.Fatal(err)
	}
	res, err := admin.FinalizeInvoice(ctx, connect.NewRequest(&meteringv1.FinalizeInvoiceRequest{Tenant: "acme", Month: M}))
	if err != nil || res.Msg.GetInvoice().GetTotalMinor() != 4900 {
		t.Fatalf("finalize: %v %v", res, err)
	}
	id := res.Msg.GetInvoice().GetId()
	testutil.Eventually(t, 5*time.Second, func() bool {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return rt.calls >= 2
	}, "publish attempted and retried")
	if err := svc.stop(); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.rdb.HLen(ctx, "herald:{billing}:outbox").Result(); n != 1 {
		t.Fatalf("outbox holds %d after the stop", n)
	}
	rt.mu.Lock()
	rt.fail = 0
	rt.mu.Unlock()
	e.startBilling(t, routerAddr)
	testutil.Eventually(t, 10*time.Second, func() bool { return rt.published()[id] != nil }, "published by the next process")
	if evs := rt.published(); len(evs) != 1 {
		t.Errorf("events %v", evs)
	}
}
