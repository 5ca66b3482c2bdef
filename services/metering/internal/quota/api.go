package quota

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/services/metering/internal/apps"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Handler serves QuotaService. It expects the authenticator's interceptor
// in front of it.
type Handler struct {
	meteringv1connect.UnimplementedQuotaServiceHandler

	st       *Store
	enforcer *Enforcer
	registry registryv1connect.RegistryServiceClient
	now      func() time.Time
}

var _ meteringv1connect.QuotaServiceHandler = (*Handler)(nil)

// NewHandler returns a Handler storing in st, asking the registry (as the
// operator) about applications and tenants.
func NewHandler(st *Store, e *Enforcer, registry registryv1connect.RegistryServiceClient) *Handler {
	return &Handler{st: st, enforcer: e, registry: registry, now: time.Now}
}

var errNoKey = connect.NewError(connect.CodeUnauthenticated, errors.New("missing key: send Authorization: Bearer <key>"))

func operator(ctx context.Context) error {
	p, ok := auth.FromContext(ctx)
	switch {
	case !ok:
		return errNoKey
	case !p.Admin:
		return connect.NewError(connect.CodePermissionDenied, errors.New("only the operator sets and deletes quotas"))
	}
	return nil
}

// SetQuota implements QuotaService.
func (h *Handler) SetQuota(ctx context.Context, req *connect.Request[meteringv1.SetQuotaRequest]) (*connect.Response[meteringv1.SetQuotaResponse], error) {
	if err := operator(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetQuota()
	if in == nil {
		return nil, invalid("quota is missing")
	}
	q := &meteringv1.Quota{
		Scope: in.GetScope(), Subject: in.GetSubject(), Metric: in.GetMetric(), Period: in.GetPeriod(),
		Limit: in.GetLimit(), Mode: in.GetMode(),
	}
	if err := validate(q); err != nil {
		return nil, err
	}
	var err error
	if q.Tenant, err = h.tenantOfSubject(ctx, q); err != nil {
		return nil, err
	}
	q.Id = ID(q.GetScope(), q.GetSubject(), q.GetMetric(), q.GetPeriod())
	q.UpdateTime = timestamppb.New(h.now())
	if err := h.st.Put(ctx, q); err != nil {
		return nil, err
	}
	h.enforcer.Kick()
	return connect.NewResponse(&meteringv1.SetQuotaResponse{Quota: q}), nil
}

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

// maxSubject bounds an application id or tenant name.
const maxSubject = 200

func validate(q *meteringv1.Quota) error {
	switch q.GetScope() {
	case meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, meteringv1.QuotaScope_QUOTA_SCOPE_TENANT:
	default:
		return invalid("scope %v is not known: QUOTA_SCOPE_APPLICATION or QUOTA_SCOPE_TENANT", q.GetScope())
	}
	if q.GetSubject() == "" {
		return invalid("subject is empty: the application id or the tenant")
	}
	if len(q.GetSubject()) > maxSubject {
		return invalid("subject is longer than %d bytes", maxSubject)
	}
	switch q.GetMetric() {
	case meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, meteringv1.UsageMetric_USAGE_METRIC_DELIVERED:
	default:
		return invalid("metric %v cannot have a quota: USAGE_METRIC_PUBLISHED or USAGE_METRIC_DELIVERED", q.GetMetric())
	}
	switch q.GetPeriod() {
	case meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY, meteringv1.QuotaPeriod_QUOTA_PERIOD_MONTH:
	default:
		return invalid("period %v is not known: QUOTA_PERIOD_DAY or QUOTA_PERIOD_MONTH (UTC)", q.GetPeriod())
	}
	switch q.GetMode() {
	case meteringv1.QuotaMode_QUOTA_MODE_HARD, meteringv1.QuotaMode_QUOTA_MODE_SOFT:
	default:
		return invalid("mode %v is not known: QUOTA_MODE_HARD or QUOTA_MODE_SOFT", q.GetMode())
	}
	if q.GetLimit() < 0 {
		return invalid("limit %d is negative", q.GetLimit())
	}
	return nil
}

// tenantOfSubject checks that the subject exists and returns the tenant
// the quota belongs to.
func (h *Handler) tenantOfSubject(ctx context.Context, q *meteringv1.Quota) (string, error) {
	if q.GetScope() == meteringv1.QuotaScope_QUOTA_SCOPE_TENANT {
		ok, err := h.apps().TenantExists(ctx, q.GetSubject())
		if err != nil {
			return "", err
		}
		if !ok {
			return "", connect.NewError(connect.CodeNotFound, fmt.Errorf("no application belongs to tenant %s", q.GetSubject()))
		}
		return q.GetSubject(), nil
	}
	tenant, known, err := h.apps().TenantOf(ctx, q.GetSubject())
	if err != nil {
		return "", err
	}
	if !known {
		return "", connect.NewError(connect.CodeNotFound, fmt.Errorf("application %s is not registered", q.GetSubject()))
	}
	return tenant, nil
}

func (h *Handler) apps() apps.Lookup { return apps.Lookup{Registry: h.registry} }

// DeleteQuota implements QuotaService.
func (h *Handler) DeleteQuota(ctx context.Context, req *connect.Request[meteringv1.DeleteQuotaRequest]) (*connect.Response[meteringv1.DeleteQuotaResponse], error) {
	if err := operator(ctx); err != nil {
		return nil, err
	}
	if req.Msg.GetId() == "" {
		return nil, invalid("id is empty")
	}
	ok, err := h.st.Delete(ctx, req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("quota %s does not exist", req.Msg.GetId()))
	}
	h.enforcer.Kick()
	return connect.NewResponse(&meteringv1.DeleteQuotaResponse{}), nil
}

// viewer is what a caller may see: everything (operator), or its tenant's
// quotas and its own application's.
type viewer struct {
	all         bool
	tenant, app string
}

func (v viewer) sees(q *meteringv1.Quota) bool {
	return v.all || (v.tenant != "" && q.GetTenant() == v.tenant) ||
		(q.GetScope() == meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION && q.GetSubject() == v.app)
}

func (h *Handler) viewer(ctx context.Context, tenant string) (viewer, error) {
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
	own, known, err := h.apps().TenantOf(ctx, p.ApplicationID)
	if err != nil {
		return viewer{}, err
	}
	if !known {
		return viewer{}, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("application %s no longer exists", p.ApplicationID))
	}
	if tenant != "" && tenant != own {
		return viewer{}, connect.NewError(connect.CodePermissionDenied, errors.New("an application key sees only its own tenant's quotas"))
	}
	return viewer{tenant: own, app: p.ApplicationID}, nil
}

type filter struct{ id, tenant, app string }

func (f filter) keeps(q *meteringv1.Quota) bool {
	return (f.id == "" || q.GetId() == f.id) && (f.tenant == "" || q.GetTenant() == f.tenant) &&
		(f.app == "" || (q.GetScope() == meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION && q.GetSubject() == f.app))
}

// ListQuotas implements QuotaService.
func (h *Handler) ListQuotas(ctx context.Context, req *connect.Request[meteringv1.ListQuotasRequest]) (*connect.Response[meteringv1.ListQuotasResponse], error) {
	v, err := h.viewer(ctx, req.Msg.GetTenant())
	if err != nil {
		return nil, err
	}
	qs, err := h.st.All(ctx)
	if err != nil {
		return nil, err
	}
	f := filter{tenant: req.Msg.GetTenant(), app: req.Msg.GetApplicationId()}
	out := []*meteringv1.Quota{}
	for _, q := range qs {
		if v.sees(q) && f.keeps(q) {
			out = append(out, q)
		}
	}
	slices.SortFunc(out, func(a, b *meteringv1.Quota) int { return cmp.Compare(a.GetId(), b.GetId()) })
	return connect.NewResponse(&meteringv1.ListQuotasResponse{Quotas: out}), nil
}

// GetQuotaStatus implements QuotaService.
func (h *Handler) GetQuotaStatus(ctx context.Context, req *connect.Request[meteringv1.GetQuotaStatusRequest]) (*connect.Response[meteringv1.GetQuotaStatusResponse], error) {
	v, err := h.viewer(ctx, req.Msg.GetTenant())
	if err != nil {
		return nil, err
	}
	all, err := h.enforcer.Statuses(ctx)
	if err != nil {
		return nil, err
	}
	f := filter{id: req.Msg.GetId(), tenant: req.Msg.GetTenant(), app: req.Msg.GetApplicationId()}
	out := []*meteringv1.QuotaStatus{}
	for _, s := range all {
		if v.sees(s.GetQuota()) && f.keeps(s.GetQuota()) {
			out = append(out, s)
		}
	}
	if f.id != "" && len(out) == 0 {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("quota %s does not exist", f.id))
	}
	slices.SortFunc(out, func(a, b *meteringv1.QuotaStatus) int { return cmp.Compare(a.GetQuota().GetId(), b.GetQuota().GetId()) })
	return connect.NewResponse(&meteringv1.GetQuotaStatusResponse{Statuses: out}), nil
}
