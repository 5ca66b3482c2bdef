package usageapi

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/services/metering/internal/analytics"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// filter reads, validates and scopes a request's filter, and resolves its
// product. needProducts also loads the product list (for grouping).
func (h *Handler) filter(ctx context.Context, wf *meteringv1.UsageFilter, needProducts bool) (analytics.Filter, []analytics.Product, error) {
	f := analytics.FilterFrom(wf)
	if err := h.scope(ctx, &f); err != nil {
		return f, nil, err
	}
	if err := f.Validate(); err != nil {
		return f, nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	var products []analytics.Product
	if needProducts || f.Product != "" {
		var err error
		if products, err = h.dir.Products(ctx); err != nil {
			return f, nil, err
		}
	}
	if f.Product != "" {
		found := false
		for _, p := range products {
			if p.Name == f.Product {
				f.ProductPatterns, found = p.Patterns, true
			}
		}
		if !found {
			return f, nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("filter.product: no product %q in the catalog", f.Product))
		}
	}
	return f, products, nil
}

func (h *Handler) rangeOf(start, end *timestamppb.Timestamp, g meteringv1.Granularity) (analytics.Range, error) {
	s, err := timeOf("start_time", start)
	if err != nil {
		return analytics.Range{}, err
	}
	e, err := timeOf("end_time", end)
	if err != nil {
		return analytics.Range{}, err
	}
	r, err := analytics.NormalizeRange(s, e, h.now(), analytics.MaxRangeOf(g))
	if err != nil {
		return analytics.Range{}, connect.NewError(connect.CodeInvalidArgument, err)
	}
	return r, nil
}

func invalid(err error) error { return connect.NewError(connect.CodeInvalidArgument, err) }

// QueryUsage answers usage time series.
func (h *Handler) QueryUsage(ctx context.Context, req *connect.Request[meteringv1.QueryUsageRequest]) (*connect.Response[meteringv1.QueryUsageResponse], error) {
	m := req.Msg
	byProduct := false
	for _, d := range m.GetGroupBy() {
		if err := analytics.ValidateDimension(d); err != nil {
			return nil, invalid(fmt.Errorf("group_by: %w", err))
		}
		byProduct = byProduct || d == meteringv1.UsageDimension_USAGE_DIMENSION_PRODUCT
	}
	if _, ok := meteringv1.Granularity_name[int32(m.GetGranularity())]; !ok {
		return nil, invalid(fmt.Errorf("%w: unknown granularity %d", analytics.ErrInvalid, m.GetGranularity()))
	}
	f, products, err := h.filter(ctx, m.GetFilter(), byProduct)
	if err != nil {
		return nil, err
	}
	r, err := h.rangeOf(m.GetStartTime(), m.GetEndTime(), m.GetGranularity())
	if err != nil {
		return nil, err
	}
	series, err := analytics.Usage(ctx, h.st, analytics.Query{Filter: f, Range: r, Granularity: m.GetGranularity(), GroupBy: m.GetGroupBy(), Products: products}, h.now())
	if err != nil {
		return nil, err
	}
	out := &meteringv1.QueryUsageResponse{Series: make([]*meteringv1.UsageSeries, len(series))}
	for i, s := range series {
		ws := &meteringv1.UsageSeries{Dimensions: dimsOut(s.Dimensions), Points: make([]*meteringv1.UsagePoint, len(s.Points))}
		for j, p := range s.Points {
			ws.Points[j] = &meteringv1.UsagePoint{StartTime: timestamppb.New(p.Start), EndTime: timestamppb.New(p.End), Events: p.Events, Bytes: p.Bytes}
		}
		out.Series[i] = ws
	}
	return connect.NewResponse(out), nil
}

func dimsOut(d analytics.Dimensions) *meteringv1.UsageDimensions {
	return &meteringv1.UsageDimensions{Tenant: d.Tenant, ApplicationId: d.Application, ProducerApplicationId: d.Producer,
		EventType: d.EventType, Domain: d.Domain, Product: d.Product, Channel: d.Channel, Metric: d.Metric}
}

// MaxTop is the largest limit of TopUsage.
const MaxTop = 1000

// TopUsage ranks one dimension's values.
func (h *Handler) TopUsage(ctx context.Context, req *connect.Request[meteringv1.TopUsageRequest]) (*connect.Response[meteringv1.TopUsageResponse], error) {
	m := req.Msg
	if err := analytics.ValidateDimension(m.GetDimension()); err != nil {
		return nil, invalid(fmt.Errorf("dimension: %w", err))
	}
	limit := int(m.GetLimit())
	switch {
	case limit == 0:
		limit = 10
	case limit < 0 || limit > MaxTop:
		return nil, invalid(fmt.Errorf("limit %d: want 1 to %d", limit, MaxTop))
	}
	f, products, err := h.filter(ctx, m.GetFilter(), m.GetDimension() == meteringv1.UsageDimension_USAGE_DIMENSION_PRODUCT)
	if err != nil {
		return nil, err
	}
	r, err := h.rangeOf(m.GetStartTime(), m.GetEndTime(), meteringv1.Granularity_GRANULARITY_TOTAL)
	if err != nil {
		return nil, err
	}
	entries, err := analytics.Top(ctx, h.st, m.GetDimension(), f, r, limit, products, h.now())
	if err != nil {
		return nil, err
	}
	out := &meteringv1.TopUsageResponse{Entries: make([]*meteringv1.TopUsageEntry, len(entries))}
	for i, e := range entries {
		out.Entries[i] = &meteringv1.TopUsageEntry{Value: e.Value, Events: e.Events, Bytes: e.Bytes}
	}
	return connect.NewResponse(out), nil
}

// GetDeliveryStats answers delivery outcomes, rates and latency.
func (h *Handler) GetDeliveryStats(ctx context.Context, req *connect.Request[meteringv1.GetDeliveryStatsRequest]) (*connect.Response[meteringv1.GetDeliveryStatsResponse], error) {
	m := req.Msg
	f, _, err := h.filter(ctx, m.GetFilter(), false)
	if err != nil {
		return nil, err
	}
	r, err := h.rangeOf(m.GetStartTime(), m.GetEndTime(), meteringv1.Granularity_GRANULARITY_TOTAL)
	if err != nil {
		return nil, err
	}
	stats, err := analytics.Deliveries(ctx, h.st, f, r, m.GetByEventType(), h.now())
	if err != nil {
		return nil, err
	}
	out := &meteringv1.GetDeliveryStatsResponse{Stats: make([]*meteringv1.DeliveryStats, len(stats))}
	for i, s := range stats {
		ws := &meteringv1.DeliveryStats{
			Channel: s.Channel, EventType: s.EventType, Delivered: s.Delivered, Failed: s.Failed, Refused: s.Refused,
			Retried: s.Retried, ErrorRate: s.ErrorRate(), RetryRate: s.RetryRate(),
			LatencyP50Ms: s.Percentile(50), LatencyP90Ms: s.Percentile(90), LatencyP99Ms: s.Percentile(99),
		}
		for _, b := range append(append([]int64(nil), store.LatencyBounds...), 0) {
			if n := s.Histogram[b]; n > 0 {
				ws.LatencyBuckets = append(ws.LatencyBuckets, &meteringv1.LatencyBucket{LeMs: b, Count: n})
			}
		}
		out.Stats[i] = ws
	}
	return connect.NewResponse(out), nil
}
