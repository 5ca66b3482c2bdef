package billing

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"time"
	_ "time/tzdata" // IANA zones without the host's database

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/services/metering/internal/apps"
	"github.com/heraldmesh/herald/services/metering/internal/pricing"
	"github.com/heraldmesh/herald/services/metering/internal/store"
)

// FinalizedType is the type of the event published for a finalized invoice.
const FinalizedType = "herald.invoice.finalized"

// Publisher publishes one event into the mesh; publishing the same event
// again must be harmless (the router deduplicates on source and id).
type Publisher interface {
	Publish(ctx context.Context, ev *eventv1.CloudEvent) error
}

// Options configure a Handler.
type Options struct {
	// Log; nil discards.
	Log *slog.Logger
	// Publisher of herald.invoice.finalized; nil keeps events in the outbox.
	Publisher Publisher
	// OutboxInterval is how often the outbox is drained; default 1s.
	OutboxInterval time.Duration
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Handler serves BillingService. It expects the authenticator's
// interceptor in front of it.
type Handler struct {
	meteringv1connect.UnimplementedBillingServiceHandler

	st       *Store
	usage    *store.Store
	registry registryv1connect.RegistryServiceClient
	o        Options
	kick     chan struct{}
}

var _ meteringv1connect.BillingServiceHandler = (*Handler)(nil)

// NewHandler returns a Handler storing in st, reading usage from usage and
// asking the registry (as the operator) about applications and products.
func NewHandler(st *Store, usage *store.Store, registry registryv1connect.RegistryServiceClient, o Options) *Handler {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.OutboxInterval <= 0 {
		o.OutboxInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Handler{st: st, usage: usage, registry: registry, o: o, kick: make(chan struct{}, 1)}
}

var errNoKey = connect.NewError(connect.CodeUnauthenticated, errors.New("missing key: send Authorization: Bearer <key>"))

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

func notFound(format string, args ...any) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf(format, args...))
}

// internal logs err and answers without its text.
func (h *Handler) internal(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return connect.NewError(connect.CodeCanceled, errors.New("canceled"))
	}
	h.o.Log.Error("billing: "+what, "err", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

func operator(ctx context.Context, what string) error {
	p, ok := auth.FromContext(ctx)
	switch {
	case !ok:
		return errNoKey
	case !p.Admin:
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("only the operator %s", what))
	}
	return nil
}

// viewer is what a caller may read: everything (operator) or one tenant.
type viewer struct {
	all    bool
	tenant string
}

func (v viewer) sees(tenant string) bool { return v.all || (v.tenant != "" && tenant == v.tenant) }

func (h *Handler) viewer(ctx context.Context) (viewer, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return viewer{}, errNoKey
	}
	if p.Admin {
		return viewer{all: true}, nil
	}
	if p.ApplicationID == "" {
		return viewer{}, connect.NewError(connect.CodePermissionDenied, errors.New("this key belongs to no application"))
	}
	tenant, known, err := h.tenantOf(ctx, p.ApplicationID)
	if err != nil {
		return viewer{}, err
	}
	if !known || tenant == "" {
		return viewer{}, connect.NewError(connect.CodePermissionDenied, errors.New("this key's application belongs to no tenant"))
	}
	return viewer{tenant: tenant}, nil
}

func (h *Handler) registryDown(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return connect.NewError(connect.CodeCanceled, errors.New("canceled"))
	}
	h.o.Log.Warn("billing: registry", "err", err)
	return connect.NewError(connect.CodeUnavailable, errors.New("the registry is unavailable; try again"))
}

// tenantOf returns the tenant of an application, and whether it exists.
func (h *Handler) tenantOf(ctx context.Context, app string) (string, bool, error) {
	t, known, err := apps.Lookup{Registry: h.registry}.TenantOf(ctx, app)
	if err != nil {
		return "", false, h.registryDown(ctx, err)
	}
	return t, known, nil
}

func (h *Handler) products(ctx context.Context) (pricing.Products, error) {
	res, err := h.registry.ListProducts(ctx, connect.NewRequest(&registryv1.ListProductsRequest{}))
	if err != nil {
		return nil, h.registryDown(ctx, err)
	}
	out := pricing.Products{}
	for _, p := range res.Msg.GetProducts() {
		out[p.GetName()] = p.GetEventTypes()
	}
	return out, nil
}

// subject resolves exactly one of app and tenant: the tenant billed.
func (h *Handler) subject(ctx context.Context, app, tenant string) (string, error) {
	switch {
	case app != "" && tenant != "":
		return "", invalid("set application_id or tenant, not both")
	case app == "" && tenant == "":
		return "", invalid("set application_id or tenant")
	case len(app) > 200 || len(tenant) > 200:
		return "", invalid("application_id or tenant is longer than 200 bytes")
	case tenant != "":
		ok, err := apps.Lookup{Registry: h.registry}.TenantExists(ctx, tenant)
		if err != nil {
			return "", h.registryDown(ctx, err)
		}
		if !ok {
			return "", notFound("no application belongs to tenant %s", tenant)
		}
		return tenant, nil
	}
	t, known, err := h.tenantOf(ctx, app)
	if err != nil {
		return "", err
	}
	if !known {
		return "", notFound("application %s is not registered", app)
	}
	return t, nil
}

var planID = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// parseMonth parses "YYYY-MM".
func parseMonth(field, m string) (time.Time, error) {
	t, err := time.Parse("2006-01", m)
	if err != nil || t.Format("2006-01") != m {
		return time.Time{}, invalid("%s %q is not a month: use YYYY-MM, like 2026-11", field, m)
	}
	return t, nil
}

func loadZone(name string) (*time.Location, error) {
	if name == "" {
		return time.UTC, nil
	}
	if name == "Local" {
		return nil, fmt.Errorf("time zone %q: name an IANA zone, like Europe/Paris", name)
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("time zone %q is not a known IANA zone", name)
	}
	return loc, nil
}

// monthIn returns the bounds of a month in loc, which must fall on quarter
// hours (the finest buckets kept for a year).
func monthIn(m time.Time, loc *time.Location) (start, end time.Time, err error) {
	start = time.Date(m.Year(), m.Month(), 1, 0, 0, 0, 0, loc)
	end = start.AddDate(0, 1, 0)
	if !start.Truncate(15*time.Minute).Equal(start) || !end.Truncate(15*time.Minute).Equal(end) {
		return start, end, fmt.Errorf("time zone %s: the month does not start on a quarter hour in UTC", loc)
	}
	return start, end, nil
}

func (h *Handler) validateVersion(ctx context.Context, v *meteringv1.PlanVersion) (*meteringv1.PlanVersion, error) {
	if v == nil {
		return nil, invalid("version is missing")
	}
	products, err := h.products(ctx)
	if err != nil {
		return nil, err
	}
	if err := toPricing(v).Validate(products); err != nil {
		return nil, invalid("%v", err)
	}
	loc, err := loadZone(v.GetTimeZone())
	if err != nil {
		return nil, invalid("%v", err)
	}
	year := h.o.Now().Year()
	for _, m := range []time.Month{time.January, time.July} {
		if _, _, err := monthIn(time.Date(year, m, 1, 0, 0, 0, 0, time.UTC), loc); err != nil {
			return nil, invalid("time zone %q: its offset from UTC is not a whole number of quarter hours", v.GetTimeZone())
		}
	}
	out := &meteringv1.PlanVersion{
		Currency: v.GetCurrency(), MonthlyFeeMinor: v.GetMonthlyFeeMinor(), IncludedUnits: v.GetIncludedUnits(),
		Rules: v.GetRules(), DefaultUnitPriceMinor: v.GetDefaultUnitPriceMinor(), RevenueShareBps: v.GetRevenueShareBps(),
		TimeZone: v.GetTimeZone(), CreateTime: timestamppb.New(h.o.Now()),
	}
	if out.TimeZone == "" {
		out.TimeZone = "UTC"
	}
	return out, nil
}

func toPricing(v *meteringv1.PlanVersion) pricing.Plan {
	p := pricing.Plan{
		Currency: v.GetCurrency(), MonthlyFee: v.GetMonthlyFeeMinor(), IncludedUnits: v.GetIncludedUnits(),
		DefaultUnitPrice: v.GetDefaultUnitPriceMinor(), RevenueShareBPS: int64(v.GetRevenueShareBps()),
	}
	for _, r := range v.GetRules() {
		pr := pricing.Rule{EventType: r.GetEventType(), Domain: r.GetDomain(), Product: r.GetProduct(), UnitPrice: r.GetUnitPriceMinor(), Description: r.GetDescription()}
		switch r.GetModel() {
		case meteringv1.PricingModel_PRICING_MODEL_UNSPECIFIED, meteringv1.PricingModel_PRICING_MODEL_FLAT:
			pr.Model = pricing.Flat
		case meteringv1.PricingModel_PRICING_MODEL_GRADUATED:
			pr.Model = pricing.Graduated
		case meteringv1.PricingModel_PRICING_MODEL_VOLUME:
			pr.Model = pricing.Volume
		default:
			pr.Model = pricing.Model(-1)
		}
		for _, t := range r.GetTiers() {
			pr.Tiers = append(pr.Tiers, pricing.Tier{UpTo: t.GetUpTo(), UnitPrice: t.GetUnitPriceMinor()})
		}
		p.Rules = append(p.Rules, pr)
	}
	return p
}

// CreatePlan implements BillingService.
func (h *Handler) CreatePlan(ctx context.Context, req *connect.Request[meteringv1.CreatePlanRequest]) (*connect.Response[meteringv1.CreatePlanResponse], error) {
	if err := operator(ctx, "creates plans"); err != nil {
		return nil, err
	}
	if !planID.MatchString(req.Msg.GetPlanId()) {
		return nil, invalid("plan_id %q: use 1 to 64 lower-case letters, digits, '-' and '_'", req.Msg.GetPlanId())
	}
	if len(req.Msg.GetName()) > 200 {
		return nil, invalid("name is longer than 200 bytes")
	}
	v, err := h.validateVersion(ctx, req.Msg.GetVersion())
	if err != nil {
		return nil, err
	}
	v.Version = 1
	p := &meteringv1.Plan{Id: req.Msg.GetPlanId(), Name: req.Msg.GetName(), LatestVersion: 1, CreateTime: v.GetCreateTime()}
	switch err := h.st.CreatePlan(ctx, p, v); {
	case errors.Is(err, ErrExists):
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("plan %s exists: add a version instead", p.GetId()))
	case err != nil:
		return nil, h.internal(ctx, "create plan", err)
	}
	p.Versions = []*meteringv1.PlanVersion{v}
	return connect.NewResponse(&meteringv1.CreatePlanResponse{Plan: p}), nil
}

// CreatePlanVersion implements BillingService.
func (h *Handler) CreatePlanVersion(ctx context.Context, req *connect.Request[meteringv1.CreatePlanVersionRequest]) (*connect.Response[meteringv1.CreatePlanVersionResponse], error) {
	if err := operator(ctx, "changes plans"); err != nil {
		return nil, err
	}
	if req.Msg.GetPlanId() == "" {
		return nil, invalid("plan_id is empty")
	}
	v, err := h.validateVersion(ctx, req.Msg.GetVersion())
	if err != nil {
		return nil, err
	}
	switch err := h.st.AddVersion(ctx, req.Msg.GetPlanId(), v); {
	case errors.Is(err, ErrNotFound):
		return nil, notFound("plan %s does not exist", req.Msg.GetPlanId())
	case err != nil:
		return nil, h.internal(ctx, "add plan version", err)
	}
	p, err := h.st.Plan(ctx, req.Msg.GetPlanId())
	if err != nil {
		return nil, h.internal(ctx, "read plan", err)
	}
	return connect.NewResponse(&meteringv1.CreatePlanVersionResponse{Plan: p, Version: v}), nil
}

// ListPlans implements BillingService: any key may read the plans.
func (h *Handler) ListPlans(ctx context.Context, _ *connect.Request[meteringv1.ListPlansRequest]) (*connect.Response[meteringv1.ListPlansResponse], error) {
	if _, err := h.viewer(ctx); err != nil {
		return nil, err
	}
	ps, err := h.st.Plans(ctx)
	if err != nil {
		return nil, h.internal(ctx, "list plans", err)
	}
	return connect.NewResponse(&meteringv1.ListPlansResponse{Plans: ps}), nil
}

// GetPlan implements BillingService.
func (h *Handler) GetPlan(ctx context.Context, req *connect.Request[meteringv1.GetPlanRequest]) (*connect.Response[meteringv1.GetPlanResponse], error) {
	if _, err := h.viewer(ctx); err != nil {
		return nil, err
	}
	p, err := h.st.Plan(ctx, req.Msg.GetPlanId())
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, notFound("plan %s does not exist", req.Msg.GetPlanId())
	case err != nil:
		return nil, h.internal(ctx, "read plan", err)
	}
	return connect.NewResponse(&meteringv1.GetPlanResponse{Plan: p}), nil
}

func newID(prefix string) string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// AssignPlan implements BillingService.
func (h *Handler) AssignPlan(ctx context.Context, req *connect.Request[meteringv1.AssignPlanRequest]) (*connect.Response[meteringv1.AssignPlanResponse], error) {
	if err := operator(ctx, "assigns plans"); err != nil {
		return nil, err
	}
	m := req.Msg
	start, err := parseMonth("start_month", m.GetStartMonth())
	if err != nil {
		return nil, err
	}
	if m.GetEndMonth() != "" {
		end, err := parseMonth("end_month", m.GetEndMonth())
		if err != nil {
			return nil, err
		}
		if end.Before(start) {
			return nil, invalid("end_month %s is before start_month %s", m.GetEndMonth(), m.GetStartMonth())
		}
	}
	if m.GetPlanVersion() < 0 {
		return nil, invalid("plan_version %d is negative", m.GetPlanVersion())
	}
	tenant, err := h.subject(ctx, m.GetApplicationId(), m.GetTenant())
	if err != nil {
		return nil, err
	}
	p, err := h.st.Plan(ctx, m.GetPlanId())
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, notFound("plan %q does not exist", m.GetPlanId())
	case err != nil:
		return nil, h.internal(ctx, "read plan", err)
	}
	version := m.GetPlanVersion()
	if version == 0 {
		version = p.GetLatestVersion()
	}
	if version > p.GetLatestVersion() {
		return nil, notFound("plan %s has no version %d (latest: %d)", p.GetId(), version, p.GetLatestVersion())
	}
	a := &meteringv1.Assignment{
		Id: newID("asg_"), ApplicationId: m.GetApplicationId(), Tenant: m.GetTenant(), PlanId: p.GetId(), PlanVersion: version,
		StartMonth: m.GetStartMonth(), EndMonth: m.GetEndMonth(), CreateTime: timestamppb.New(h.o.Now()),
	}
	switch err := h.st.Assign(ctx, a, tenant); {
	case errors.Is(err, ErrOverlap):
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("the assignment %v", err))
	case err != nil:
		return nil, h.internal(ctx, "assign", err)
	}
	return connect.NewResponse(&meteringv1.AssignPlanResponse{Assignment: a}), nil
}

// ListAssignments implements BillingService: an application key sees its
// tenant's and its tenant's applications' assignments.
func (h *Handler) ListAssignments(ctx context.Context, req *connect.Request[meteringv1.ListAssignmentsRequest]) (*connect.Response[meteringv1.ListAssignmentsResponse], error) {
	v, err := h.viewer(ctx)
	if err != nil {
		return nil, err
	}
	subject := ""
	if req.Msg.GetApplicationId() != "" {
		subject = Subject(req.Msg.GetApplicationId(), "")
	}
	all, err := h.st.Assignments(ctx, subject)
	if err != nil {
		return nil, h.internal(ctx, "list assignments", err)
	}
	tenants := map[string]string{}
	var out []*meteringv1.Assignment
	for _, a := range all {
		t := a.GetTenant()
		if a.GetApplicationId() != "" {
			var ok bool
			if t, ok = tenants[a.GetApplicationId()]; !ok {
				if t, _, err = h.tenantOf(ctx, a.GetApplicationId()); err != nil {
					return nil, err
				}
				tenants[a.GetApplicationId()] = t
			}
		}
		if !v.sees(t) || (req.Msg.GetTenant() != "" && t != req.Msg.GetTenant()) {
			continue
		}
		out = append(out, a)
	}
	return connect.NewResponse(&meteringv1.ListAssignmentsResponse{Assignments: out}), nil
}

// DeleteAssignment implements BillingService.
func (h *Handler) DeleteAssignment(ctx context.Context, req *connect.Request[meteringv1.DeleteAssignmentRequest]) (*connect.Response[meteringv1.DeleteAssignmentResponse], error) {
	if err := operator(ctx, "deletes assignments"); err != nil {
		return nil, err
	}
	switch _, err := h.st.Unassign(ctx, req.Msg.GetId()); {
	case errors.Is(err, ErrNotFound):
		return nil, notFound("assignment %q does not exist", req.Msg.GetId())
	case err != nil:
		return nil, h.internal(ctx, "delete assignment", err)
	}
	return connect.NewResponse(&meteringv1.DeleteAssignmentResponse{}), nil
}

// InvoiceID is the id of the invoice of a subject and month.
func InvoiceID(app, tenant, month string) string {
	sum := sha256.Sum256([]byte(Subject(app, tenant) + "|" + month))
	return "inv_" + hex.EncodeToString(sum[:12])
}

// compute prices a month of a subject; the caller checked access.
func (h *Handler) compute(ctx context.Context, app, tenant, month string, final bool) (*meteringv1.Invoice, error) {
	m, err := parseMonth("month", month)
	if err != nil {
		return nil, err
	}
	subjectTenant, err := h.subject(ctx, app, tenant)
	if err != nil {
		return nil, err
	}
	as, err := h.st.Assignments(ctx, Subject(app, tenant))
	if err != nil {
		return nil, h.internal(ctx, "read assignments", err)
	}
	var a *meteringv1.Assignment
	for _, x := range as {
		if x.GetStartMonth() <= month && month <= endOf(x) {
			a = x
		}
	}
	who := "application " + app
	if app == "" {
		who = "tenant " + tenant
	}
	if a == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("no plan is assigned to %s for %s", who, month))
	}
	v, err := h.st.Version(ctx, a.GetPlanId(), a.GetPlanVersion())
	if err != nil {
		return nil, h.internal(ctx, "read plan version", err)
	}
	loc, err := loadZone(v.GetTimeZone())
	if err != nil {
		return nil, h.internal(ctx, "plan time zone", err)
	}
	start, end, err := monthIn(m, loc)
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	now := h.o.Now()
	if start.After(now) {
		return nil, invalid("month %s has not started (it starts at %s)", month, start.UTC().Format(time.RFC3339))
	}
	if final && end.After(now) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("month %s has not ended (it ends at %s): preview it instead", month, end.UTC().Format(time.RFC3339)))
	}
	var starts []time.Time
	for t := start.UTC(); t.Before(end); t = t.Add(15 * time.Minute) {
		starts = append(starts, t)
	}
	buckets, err := h.usage.Buckets(ctx, store.Quarter, starts)
	if err != nil {
		return nil, h.internal(ctx, "read usage", err)
	}
	var usage []pricing.Usage
	for _, b := range buckets {
		for d, s := range b.Cells {
			if d.Metric != meteringv1.UsageMetric_USAGE_METRIC_DELIVERED || s.Events <= 0 {
				continue
			}
			if (app != "" && d.Application != app) || (app == "" && d.Tenant != tenant) {
				continue
			}
			usage = append(usage, pricing.Usage{Time: b.Start, EventType: d.EventType, Producer: d.Producer, Channel: d.Channel, Units: s.Events})
		}
	}
	products, err := h.products(ctx)
	if err != nil {
		return nil, err
	}
	res, err := pricing.Price(toPricing(v), products, usage)
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("invoice of %s for %s: %w", who, month, err))
	}
	inv := &meteringv1.Invoice{
		Id: InvoiceID(app, tenant, month), ApplicationId: app, Tenant: subjectTenant, Month: month, Currency: v.GetCurrency(),
		Status: meteringv1.InvoiceStatus_INVOICE_STATUS_DRAFT, SubtotalMinor: res.Subtotal, TotalMinor: res.Subtotal,
		PlanId: a.GetPlanId(), PlanVersion: a.GetPlanVersion(), TimeZone: v.GetTimeZone(),
		PeriodStart: timestamppb.New(start), PeriodEnd: timestamppb.New(end),
		RevenueShareBps: v.GetRevenueShareBps(), UsageMinor: res.Usage,
	}
	for _, l := range res.Lines {
		pl := &meteringv1.InvoiceLine{
			Description: l.Description, EventType: l.EventType, Product: l.Product, Domain: l.Domain,
			Quantity: l.Quantity, UnitPriceMinor: l.UnitPrice, AmountMinor: l.Amount, Tier: int32(l.Tier), RuleIndex: int32(l.RuleIndex),
		}
		switch l.Kind {
		case pricing.Fee:
			pl.Kind = meteringv1.LineKind_LINE_KIND_FEE
		case pricing.Included:
			pl.Kind = meteringv1.LineKind_LINE_KIND_INCLUDED
		default:
			pl.Kind = meteringv1.LineKind_LINE_KIND_USAGE
		}
		for _, pt := range l.Producers {
			pl.Producers = append(pl.Producers, &meteringv1.LineProducer{ProducerApplicationId: pt.Producer, Quantity: pt.Quantity, AmountMinor: pt.Amount})
		}
		inv.Lines = append(inv.Lines, pl)
	}
	for _, s := range res.Shares {
		inv.ProducerShares = append(inv.ProducerShares, &meteringv1.ProducerShare{ProducerApplicationId: s.Producer, RevenueMinor: s.Revenue, ShareMinor: s.Share})
	}
	return inv, nil
}

// canSee checks that the caller may read the invoices of a subject.
func (h *Handler) canSee(ctx context.Context, app, tenant string) error {
	v, err := h.viewer(ctx)
	if err != nil || v.all {
		return err
	}
	t := tenant
	if app != "" {
		var known bool
		if t, known, err = h.tenantOf(ctx, app); err != nil {
			return err
		}
		if !known {
			return notFound("application %s is not registered", app)
		}
	}
	if !v.sees(t) {
		return connect.NewError(connect.CodePermissionDenied, errors.New("an application key reads only its own tenant's invoices"))
	}
	return nil
}

// PreviewInvoice implements BillingService.
func (h *Handler) PreviewInvoice(ctx context.Context, req *connect.Request[meteringv1.PreviewInvoiceRequest]) (*connect.Response[meteringv1.PreviewInvoiceResponse], error) {
	if err := h.canSee(ctx, req.Msg.GetApplicationId(), req.Msg.GetTenant()); err != nil {
		return nil, err
	}
	inv, err := h.compute(ctx, req.Msg.GetApplicationId(), req.Msg.GetTenant(), req.Msg.GetMonth(), false)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&meteringv1.PreviewInvoiceResponse{Invoice: inv}), nil
}

// FinalizeInvoice implements BillingService.
func (h *Handler) FinalizeInvoice(ctx context.Context, req *connect.Request[meteringv1.FinalizeInvoiceRequest]) (*connect.Response[meteringv1.FinalizeInvoiceResponse], error) {
	if err := operator(ctx, "finalizes invoices"); err != nil {
		return nil, err
	}
	m := req.Msg
	if _, err := parseMonth("month", m.GetMonth()); err != nil {
		return nil, err
	}
	// Already finalized: the stored invoice, whatever has changed since.
	if m.GetApplicationId() == "" || m.GetTenant() == "" {
		switch inv, err := h.st.Invoice(ctx, InvoiceID(m.GetApplicationId(), m.GetTenant(), m.GetMonth())); {
		case err == nil:
			return connect.NewResponse(&meteringv1.FinalizeInvoiceResponse{Invoice: inv}), nil
		case !errors.Is(err, ErrNotFound):
			return nil, h.internal(ctx, "read invoice", err)
		}
	}
	inv, err := h.compute(ctx, m.GetApplicationId(), m.GetTenant(), m.GetMonth(), true)
	if err != nil {
		return nil, err
	}
	inv.Status = meteringv1.InvoiceStatus_INVOICE_STATUS_FINALIZED
	inv.FinalizeTime = timestamppb.New(h.o.Now())
	stored, created, err := h.st.Finalize(ctx, inv, finalizedEvent(inv))
	if err != nil {
		return nil, h.internal(ctx, "finalize", err)
	}
	if created {
		h.Kick()
	}
	return connect.NewResponse(&meteringv1.FinalizeInvoiceResponse{Invoice: stored}), nil
}

// ListInvoices implements BillingService.
func (h *Handler) ListInvoices(ctx context.Context, req *connect.Request[meteringv1.ListInvoicesRequest]) (*connect.Response[meteringv1.ListInvoicesResponse], error) {
	v, err := h.viewer(ctx)
	if err != nil {
		return nil, err
	}
	if req.Msg.GetMonth() != "" {
		if _, err := parseMonth("month", req.Msg.GetMonth()); err != nil {
			return nil, err
		}
	}
	all, err := h.st.Invoices(ctx)
	if err != nil {
		return nil, h.internal(ctx, "list invoices", err)
	}
	var out []*meteringv1.Invoice
	for _, inv := range all {
		m := req.Msg
		if !v.sees(inv.GetTenant()) || (m.GetApplicationId() != "" && inv.GetApplicationId() != m.GetApplicationId()) ||
			(m.GetTenant() != "" && inv.GetTenant() != m.GetTenant()) || (m.GetMonth() != "" && inv.GetMonth() != m.GetMonth()) {
			continue
		}
		out = append(out, inv)
	}
	slices.SortFunc(out, func(a, b *meteringv1.Invoice) int {
		if a.GetMonth() != b.GetMonth() {
			return compare(a.GetMonth(), b.GetMonth())
		}
		return compare(a.GetId(), b.GetId())
	})
	return connect.NewResponse(&meteringv1.ListInvoicesResponse{Invoices: out}), nil
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// invoice returns a finalized invoice the caller may see: another tenant's
// is NotFound, as if it did not exist.
func (h *Handler) invoice(ctx context.Context, id string) (*meteringv1.Invoice, error) {
	v, err := h.viewer(ctx)
	if err != nil {
		return nil, err
	}
	if id == "" {
		return nil, invalid("invoice_id is empty")
	}
	inv, err := h.st.Invoice(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound), err == nil && !v.sees(inv.GetTenant()):
		return nil, notFound("invoice %q does not exist", id)
	case err != nil:
		return nil, h.internal(ctx, "read invoice", err)
	}
	return inv, nil
}

// GetInvoice implements BillingService.
func (h *Handler) GetInvoice(ctx context.Context, req *connect.Request[meteringv1.GetInvoiceRequest]) (*connect.Response[meteringv1.GetInvoiceResponse], error) {
	inv, err := h.invoice(ctx, req.Msg.GetInvoiceId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&meteringv1.GetInvoiceResponse{Invoice: inv}), nil
}

// CreateCreditNote implements BillingService.
func (h *Handler) CreateCreditNote(ctx context.Context, req *connect.Request[meteringv1.CreateCreditNoteRequest]) (*connect.Response[meteringv1.CreateCreditNoteResponse], error) {
	if err := operator(ctx, "credits invoices"); err != nil {
		return nil, err
	}
	m := req.Msg
	switch {
	case m.GetInvoiceId() == "":
		return nil, invalid("invoice_id is empty")
	case m.GetAmountMinor() <= 0:
		return nil, invalid("amount_minor %d must be positive", m.GetAmountMinor())
	case m.GetReason() == "":
		return nil, invalid("reason is empty: say why the invoice is credited")
	case len(m.GetReason()) > 1000:
		return nil, invalid("reason is longer than 1000 bytes")
	}
	n := &meteringv1.CreditNote{Id: newID("cn_"), InvoiceId: m.GetInvoiceId(), AmountMinor: m.GetAmountMinor(), Reason: m.GetReason(), CreateTime: timestamppb.New(h.o.Now())}
	inv, err := h.st.Credit(ctx, n)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, notFound("invoice %q does not exist (only finalized invoices are credited)", m.GetInvoiceId())
	case errors.Is(err, ErrCap):
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("the credit note %v", err))
	case err != nil:
		return nil, h.internal(ctx, "credit", err)
	}
	return connect.NewResponse(&meteringv1.CreateCreditNoteResponse{CreditNote: n, Invoice: inv}), nil
}

// GetProducerStatement implements BillingService: an application key reads
// the statements of its own tenant's producers.
func (h *Handler) GetProducerStatement(ctx context.Context, req *connect.Request[meteringv1.GetProducerStatementRequest]) (*connect.Response[meteringv1.GetProducerStatementResponse], error) {
	m := req.Msg
	if m.GetProducerApplicationId() == "" {
		return nil, invalid("producer_application_id is empty")
	}
	if _, err := parseMonth("month", m.GetMonth()); err != nil {
		return nil, err
	}
	if err := h.canSee(ctx, m.GetProducerApplicationId(), ""); err != nil {
		return nil, err
	}
	all, err := h.st.Invoices(ctx)
	if err != nil {
		return nil, h.internal(ctx, "list invoices", err)
	}
	slices.SortFunc(all, func(a, b *meteringv1.Invoice) int { return compare(a.GetId(), b.GetId()) })
	st := &meteringv1.ProducerStatement{ProducerApplicationId: m.GetProducerApplicationId(), Month: m.GetMonth()}
	totals := map[string]int64{}
	for _, inv := range all {
		if inv.GetMonth() != m.GetMonth() {
			continue
		}
		for _, s := range inv.GetProducerShares() {
			if s.GetProducerApplicationId() != m.GetProducerApplicationId() {
				continue
			}
			st.Lines = append(st.Lines, &meteringv1.StatementLine{
				InvoiceId: inv.GetId(), ApplicationId: inv.GetApplicationId(), Tenant: inv.GetTenant(), Currency: inv.GetCurrency(),
				RevenueMinor: s.GetRevenueMinor(), ShareMinor: s.GetShareMinor(),
			})
			totals[inv.GetCurrency()] += s.GetShareMinor()
		}
	}
	for c, n := range totals {
		st.Totals = append(st.Totals, &meteringv1.MoneyTotal{Currency: c, AmountMinor: n})
	}
	slices.SortFunc(st.Totals, func(a, b *meteringv1.MoneyTotal) int { return compare(a.GetCurrency(), b.GetCurrency()) })
	return connect.NewResponse(&meteringv1.GetProducerStatementResponse{Statement: st}), nil
}

func finalizedEvent(inv *meteringv1.Invoice) *eventv1.CloudEvent {
	data, _ := json.Marshal(map[string]any{
		"invoice_id": inv.GetId(), "application_id": inv.GetApplicationId(), "tenant": inv.GetTenant(), "month": inv.GetMonth(),
		"currency": inv.GetCurrency(), "plan_id": inv.GetPlanId(), "plan_version": inv.GetPlanVersion(),
		"subtotal_minor": inv.GetSubtotalMinor(), "total_minor": inv.GetTotalMinor(),
		"finalize_time": inv.GetFinalizeTime().AsTime().UTC().Format(time.RFC3339Nano),
	})
	str := func(v string) *eventv1.CloudEvent_CloudEventAttributeValue {
		return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: v}}
	}
	subject := inv.GetApplicationId()
	if subject == "" {
		subject = inv.GetTenant()
	}
	return &eventv1.CloudEvent{
		Id: inv.GetId(), Source: "herald/metering", SpecVersion: "1.0", Type: FinalizedType,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": str("application/json"),
			"subject":         str(subject),
			"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: inv.GetFinalizeTime()}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: string(data)},
	}
}

// Kick asks the outbox loop for a pass now.
func (h *Handler) Kick() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// Run drains the outbox until ctx is done: every queued
// herald.invoice.finalized is published (the router deduplicates on its
// id, the invoice id) and then removed; a failure is retried next pass.
func (h *Handler) Run(ctx context.Context) error {
	t := time.NewTicker(h.o.OutboxInterval)
	defer t.Stop()
	failing := false
	for {
		err := h.Drain(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			h.o.Log.Warn("herald.invoice.finalized not published; will retry", "err", err)
			failing = true
		case err == nil:
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-h.kick:
		}
	}
}

// Drain publishes what the outbox holds, once.
func (h *Handler) Drain(ctx context.Context) error {
	if h.o.Publisher == nil {
		return nil
	}
	evs, err := h.st.Outbox(ctx)
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(evs))
	for id := range evs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var first error
	for _, id := range ids {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := h.o.Publisher.Publish(pctx, evs[id])
		cancel()
		if err == nil {
			err = h.st.Published(ctx, id)
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}
