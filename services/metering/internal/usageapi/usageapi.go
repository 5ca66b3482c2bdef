// Package usageapi is the MeteringService handler: it translates GetUsage
// between the wire and a report query, applies who may see what, and maps
// errors to Connect codes.
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
	"github.com/heraldmesh/herald/services/metering/internal/report"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Handler serves MeteringService. It expects the authenticator's
// interceptor in front of it.
type Handler struct {
	meteringv1connect.UnimplementedMeteringServiceHandler

	st  *store.Store
	now func() time.Time
}

var _ meteringv1connect.MeteringServiceHandler = (*Handler)(nil)

// New returns a Handler reading st.
func New(st *store.Store) *Handler { return &Handler{st: st, now: time.Now} }

// GetUsage answers usage counters. The operator sees every application; an
// application key sees only its own usage.
func (h *Handler) GetUsage(ctx context.Context, req *connect.Request[meteringv1.GetUsageRequest]) (*connect.Response[meteringv1.GetUsageResponse], error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("missing key: send Authorization: Bearer <key>"))
	}
	m := req.Msg
	q := report.Query{
		ApplicationID: m.GetApplicationId(),
		EventType:     m.GetEventType(),
		Metric:        m.GetMetric(),
		Granularity:   m.GetGranularity(),
	}
	if !p.Admin {
		if p.ApplicationID == "" {
			return nil, connect.NewError(connect.CodePermissionDenied, errors.New("this key belongs to no application"))
		}
		if q.ApplicationID != "" && q.ApplicationID != p.ApplicationID {
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("an application key sees only its own usage (%s)", p.ApplicationID))
		}
		q.ApplicationID = p.ApplicationID
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
	hours, err := h.st.Hours(ctx, q.Hours())
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
