// Package usageapi is the MeteringService handler: it translates GetUsage
// and the analytics RPCs between the wire and report and analytics
// queries, applies who may see what (the operator everything, an
// application key its own tenant's usage), and maps errors to Connect
// codes.
package usageapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/services/metering/internal/analytics"
	"github.com/heraldmesh/herald/services/metering/internal/report"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Handler serves MeteringService. It expects the authenticator's
// interceptor in front of it.
type Handler struct {
	meteringv1connect.UnimplementedMeteringServiceHandler

	st  *store.Store
	dir *Directory
	now func() time.Time
}

var _ meteringv1connect.MeteringServiceHandler = (*Handler)(nil)

// New returns a Handler reading st, resolving tenants and products in dir.
func New(st *store.Store, dir *Directory) *Handler { return &Handler{st: st, dir: dir, now: time.Now} }

// scope narrows f to what the caller may see: everything for the operator;
// for an application key, its tenant's usage (or, for an application in no
// tenant, its own). Asking for another tenant, or for an application of
// another tenant, is refused.
func (h *Handler) scope(ctx context.Context, f *analytics.Filter) error {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("missing key: send Authorization: Bearer <key>"))
	}
	if p.Admin {
		return nil
	}
	if p.ApplicationID == "" {
		return connect.NewError(connect.CodePermissionDenied, errors.New("this key belongs to no application"))
	}
	tenant, err := h.dir.TenantOf(ctx, p.ApplicationID)
	if err != nil {
		return err // a server fault: answered UNAVAILABLE without detail
	}
	denied := connect.NewError(connect.CodePermissionDenied, errors.New("an application key sees only its own tenant's usage"))
	if tenant == "" {
		denied = connect.NewError(connect.CodePermissionDenied, fmt.Errorf("an application key sees only its own usage (%s)", p.ApplicationID))
	}
	if f.Tenant != "" && f.Tenant != tenant {
		return denied
	}
	if f.Application != "" && f.Application != p.ApplicationID {
		other, err := h.dir.TenantOf(ctx, f.Application)
		if err != nil {
			return err
		}
		if tenant == "" || other != tenant {
			return denied
		}
	}
	f.Scope = &analytics.Scope{Tenant: tenant, Application: p.ApplicationID}
	return nil
}

// GetUsage answers usage counters. The operator sees every application; an
// application key sees its tenant's applications (see scope).
func (h *Handler) GetUsage(ctx context.Context, req *connect.Request[meteringv1.GetUsageRequest]) (*connect.Response[meteringv1.GetUsageResponse], error) {
	m := req.Msg
	q := report.Query{
		ApplicationID: m.GetApplicationId(),
		EventType:     m.GetEventType(),
		Metric:        m.GetMetric(),
		Granularity:   m.GetGranularity(),
	}
	f := analytics.Filter{Application: q.ApplicationID}
	if err := h.scope(ctx, &f); err != nil {
		return nil, err
	}
	var err error
	if q.Start, err = timeOf("start_time", m.GetStartTime()); err != nil {
		return nil, err
	}
	if q.End, err = timeOf("end_time", m.GetEndTime()); err != nil {
		return nil, err
	}
	if err := q.Normalize(h.now()); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	kind, starts := store.Hour, q.Hours()
	if q.Granularity == meteringv1.Granularity_GRANULARITY_MINUTE {
		kind, starts = store.Minute, q.Minutes()
	}
	hours, err := h.st.Legacy(ctx, kind, starts, f.Allowed)
	if err != nil {
		// A server fault: the service's error rule answers UNAVAILABLE with
		// a generic message and logs the detail (Redis address, keys).
		return nil, err
	}
	rows := report.Aggregate(q, hours)
	out := make([]*meteringv1.UsageRow, len(rows))
	for i, r := range rows {
		out[i] = &meteringv1.UsageRow{
			ApplicationId: r.ApplicationID,
			EventType:     r.EventType,
			Metric:        r.Metric,
			Channel:       r.Channel,
			StartTime:     timestamppb.New(r.Start),
			EndTime:       timestamppb.New(r.End),
			Count:         r.Count,
		}
	}
	return connect.NewResponse(&meteringv1.GetUsageResponse{Rows: out}), nil
}

// timeOf converts an optional timestamp; unset is the zero time.
func timeOf(name string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, nil
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %w", name, err))
	}
	return ts.AsTime(), nil
}
