// Package analytics answers QueryUsage, TopUsage and GetDeliveryStats from
// metering's buckets: it plans which buckets cover a range, filters their
// cells, groups them by dimension (products matched against the registry's
// patterns at query time) and ranks, rates and takes percentiles. It knows
// neither the wire nor who asks: the caller narrows the filter to what the
// caller may see.
package analytics

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/services/metering/internal/store"
)

// ErrInvalid marks a query that can never be answered as asked.
var ErrInvalid = errors.New("invalid analytics query")

// Limits of one query's range, per bucket size.
const (
	MaxMinuteRange = 24 * time.Hour
	MaxHourRange   = 93 * 24 * time.Hour
	MaxRange       = 400 * 24 * time.Hour
	DefaultRange   = 24 * time.Hour
)

// Product is a registry product: a name and the type patterns it sells.
type Product struct {
	Name     string
	Patterns []string
}

// Filter selects cells; empty fields match everything.
type Filter struct {
	Tenant, Application, Producer, EventType, Domain, Channel string
	// Product restricts to types matched by this product's patterns; the
	// caller resolves it (ProductPatterns nil with Product set matches
	// nothing).
	Product         string
	ProductPatterns []string
	Metric          meteringv1.UsageMetric
	// Scope, when set, keeps only what an application key may see.
	Scope *Scope
}

// Scope is what an application key may see: its tenant's usage, and usage
// of its own application recorded without a tenant (records from before
// tenants were recorded).
type Scope struct{ Tenant, Application string }

// Allowed reports whether the scope of f lets d be seen.
func (f Filter) Allowed(d store.Dims) bool {
	if f.Scope == nil {
		return true
	}
	if f.Scope.Tenant != "" && d.Tenant == f.Scope.Tenant {
		return true
	}
	return d.Tenant == "" && d.Application == f.Scope.Application
}

// FilterFrom reads the wire filter.
func FilterFrom(f *meteringv1.UsageFilter) Filter {
	return Filter{
		Tenant: f.GetTenant(), Application: f.GetApplicationId(), Producer: f.GetProducerApplicationId(),
		EventType: f.GetEventType(), Domain: f.GetDomain(), Product: f.GetProduct(), Channel: f.GetChannel(),
		Metric: f.GetMetric(),
	}
}

// Validate checks the filter's values.
func (f Filter) Validate() error {
	if _, ok := meteringv1.UsageMetric_name[int32(f.Metric)]; !ok {
		return fmt.Errorf("%w: unknown metric %d", ErrInvalid, f.Metric)
	}
	if f.EventType != "" {
		if err := eventtype.ValidatePattern(f.EventType); err != nil {
			return fmt.Errorf("%w: filter.event_type: %v", ErrInvalid, err)
		}
	}
	return nil
}

// Domain is the part of a type's name before its first dot.
func Domain(eventType string) string {
	d, _, _ := strings.Cut(eventType, ".")
	return d
}

func (f Filter) match(d store.Dims, ignoreMetric bool) bool {
	return f.Allowed(d) && (f.Tenant == "" || d.Tenant == f.Tenant) &&
		(f.Application == "" || d.Application == f.Application) &&
		(f.Producer == "" || d.Producer == f.Producer) &&
		(f.EventType == "" || eventtype.Match(f.EventType, d.EventType)) &&
		(f.Domain == "" || Domain(d.EventType) == f.Domain) &&
		(f.Channel == "" || d.Channel == f.Channel) &&
		(f.Product == "" || eventtype.MatchAny(f.ProductPatterns, d.EventType)) &&
		(ignoreMetric || f.Metric == meteringv1.UsageMetric_USAGE_METRIC_UNSPECIFIED || d.Metric == f.Metric)
}

// Span is one bucket to read.
type Span struct {
	Kind  store.Kind
	Start time.Time
}

func (s Span) end() time.Time {
	switch s.Kind {
	case store.Minute:
		return s.Start.Add(time.Minute)
	case store.Hour:
		return s.Start.Add(time.Hour)
	default:
		return s.Start.AddDate(0, 0, 1)
	}
}

// Range is a normalized [Start, End).
type Range struct{ Start, End time.Time }

// NormalizeRange applies the defaults (end now, start DefaultRange before
// end), rounds start down to the minute (to the hour when its minutes have
// expired) and checks the length against max.
func NormalizeRange(start, end, now time.Time, max time.Duration) (Range, error) {
	if end.IsZero() {
		end = now
	}
	if start.IsZero() {
		start = end.Add(-DefaultRange)
	}
	start, end = start.UTC(), end.UTC()
	if !start.Before(end) {
		return Range{}, fmt.Errorf("%w: start_time %s is not before end_time %s", ErrInvalid, start.Format(time.RFC3339), end.Format(time.RFC3339))
	}
	start = start.Truncate(time.Minute)
	if start.Before(minuteFloor(now)) {
		start = start.Truncate(time.Hour)
	}
	if end.Sub(start) > max {
		return Range{}, fmt.Errorf("%w: the range %s .. %s is longer than %s", ErrInvalid, start.Format(time.RFC3339), end.Format(time.RFC3339), days(max))
	}
	return Range{start, end}, nil
}

func days(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%d hours", d/time.Hour)
	}
	return fmt.Sprintf("%d days", d/(24*time.Hour))
}

// minuteFloor is the oldest minute whose bucket is surely still kept.
func minuteFloor(now time.Time) time.Time {
	return now.UTC().Add(-store.MinuteTTL + time.Hour).Truncate(time.Hour)
}

// Cover returns the fewest buckets that cover r: whole days and hours
// inside it, minutes at its ends. Where minutes have expired, the partial
// hour at the end is read whole.
func Cover(r Range, now time.Time) []Span {
	var out []Span
	floor := minuteFloor(now)
	for t := r.Start; t.Before(r.End); {
		switch {
		case t.Equal(t.Truncate(24*time.Hour)) && !t.AddDate(0, 0, 1).After(r.End):
			out = append(out, Span{store.Day, t})
			t = t.AddDate(0, 0, 1)
		case t.Equal(t.Truncate(time.Hour)) && !t.Add(time.Hour).After(r.End):
			out = append(out, Span{store.Hour, t})
			t = t.Add(time.Hour)
		case !t.Before(floor):
			out = append(out, Span{store.Minute, t})
			t = t.Add(time.Minute)
		default:
			h := t.Truncate(time.Hour)
			out = append(out, Span{store.Hour, h})
			t = h.Add(time.Hour)
		}
	}
	return out
}

// Every returns the buckets of kind k from r's start (rounded down to the
// bucket) to its end.
func Every(k store.Kind, r Range) []Span {
	var out []Span
	t := r.Start
	switch k {
	case store.Hour:
		t = t.Truncate(time.Hour)
	case store.Day:
		t = t.Truncate(24 * time.Hour)
	}
	for ; t.Before(r.End); t = (Span{k, t}).end() {
		out = append(out, Span{k, t})
	}
	return out
}

// Reader reads buckets; *store.Store is one.
type Reader interface {
	Buckets(ctx context.Context, k store.Kind, starts []time.Time) ([]store.Bucket, error)
	Latencies(ctx context.Context, k store.Kind, starts []time.Time) ([]map[store.Dims]store.Histogram, error)
}

// cell is one bucket's cells with the bucket's bounds.
type cell struct {
	start, end time.Time
	cells      map[store.Dims]store.Sums
}

// read reads spans, grouped by kind, in span order.
func read(ctx context.Context, rd Reader, spans []Span) ([]cell, error) {
	byKind := map[store.Kind][]int{}
	for i, s := range spans {
		byKind[s.Kind] = append(byKind[s.Kind], i)
	}
	out := make([]cell, len(spans))
	for k, idx := range byKind {
		starts := make([]time.Time, len(idx))
		for j, i := range idx {
			starts[j] = spans[i].Start
		}
		bs, err := rd.Buckets(ctx, k, starts)
		if err != nil {
			return nil, err
		}
		for j, i := range idx {
			out[i] = cell{start: spans[i].Start, end: spans[i].end(), cells: bs[j].Cells}
		}
	}
	return out, nil
}

// Dimensions is the value of each dimension of a group.
type Dimensions struct {
	Tenant, Application, Producer, EventType, Domain, Product, Channel string
	Metric                                                             meteringv1.UsageMetric
}

// groupsOf returns the group values of d for the dimensions by: several
// when PRODUCT is grouped and the type is in several products.
func groupsOf(d store.Dims, by []meteringv1.UsageDimension, products []Product) []Dimensions {
	var g Dimensions
	wantProduct := false
	for _, dim := range by {
		switch dim {
		case meteringv1.UsageDimension_USAGE_DIMENSION_TENANT:
			g.Tenant = d.Tenant
		case meteringv1.UsageDimension_USAGE_DIMENSION_APPLICATION:
			g.Application = d.Application
		case meteringv1.UsageDimension_USAGE_DIMENSION_PRODUCER:
			g.Producer = d.Producer
		case meteringv1.UsageDimension_USAGE_DIMENSION_EVENT_TYPE:
			g.EventType = d.EventType
		case meteringv1.UsageDimension_USAGE_DIMENSION_DOMAIN:
			g.Domain = Domain(d.EventType)
		case meteringv1.UsageDimension_USAGE_DIMENSION_CHANNEL:
			g.Channel = d.Channel
		case meteringv1.UsageDimension_USAGE_DIMENSION_METRIC:
			g.Metric = d.Metric
		case meteringv1.UsageDimension_USAGE_DIMENSION_PRODUCT:
			wantProduct = true
		}
	}
	if !wantProduct {
		return []Dimensions{g}
	}
	var out []Dimensions
	for _, p := range products {
		if eventtype.MatchAny(p.Patterns, d.EventType) {
			gp := g
			gp.Product = p.Name
			out = append(out, gp)
		}
	}
	if len(out) == 0 {
		out = append(out, g) // in no product: product ""
	}
	return out
}

// ValidateDimension checks a group-by or top dimension.
func ValidateDimension(d meteringv1.UsageDimension) error {
	if _, ok := meteringv1.UsageDimension_name[int32(d)]; !ok || d == meteringv1.UsageDimension_USAGE_DIMENSION_UNSPECIFIED {
		return fmt.Errorf("%w: unknown dimension %d", ErrInvalid, d)
	}
	return nil
}

// Point is one bucket of a series.
type Point struct {
	Start, End    time.Time
	Events, Bytes int64
}

// Series is the usage of one group.
type Series struct {
	Dimensions
	Points []Point
}

// Query is a QueryUsage question.
type Query struct {
	Filter      Filter
	Range       Range
	Granularity meteringv1.Granularity
	GroupBy     []meteringv1.UsageDimension
	// Products is the catalog's products, needed to group by PRODUCT.
	Products []Product
}

// Spans is the buckets the query reads.
func (q Query) Spans(now time.Time) []Span {
	switch q.Granularity {
	case meteringv1.Granularity_GRANULARITY_MINUTE:
		return Every(store.Minute, q.Range)
	case meteringv1.Granularity_GRANULARITY_HOUR:
		return Every(store.Hour, q.Range)
	case meteringv1.Granularity_GRANULARITY_DAY:
		return Every(store.Day, q.Range)
	default:
		return Cover(q.Range, now)
	}
}

// MaxRangeOf is the longest range of a granularity.
func MaxRangeOf(g meteringv1.Granularity) time.Duration {
	switch g {
	case meteringv1.Granularity_GRANULARITY_MINUTE:
		return MaxMinuteRange
	case meteringv1.Granularity_GRANULARITY_HOUR:
		return MaxHourRange
	default:
		return MaxRange
	}
}

// Usage answers q.
func Usage(ctx context.Context, rd Reader, q Query, now time.Time) ([]Series, error) {
	cells, err := read(ctx, rd, q.Spans(now))
	if err != nil {
		return nil, err
	}
	total := q.Granularity == meteringv1.Granularity_GRANULARITY_TOTAL || q.Granularity == meteringv1.Granularity_GRANULARITY_UNSPECIFIED
	type pkey struct {
		Dimensions
		start int64
	}
	points := map[pkey]*Point{}
	for _, c := range cells {
		start, end := c.start, c.end
		if total {
			start, end = q.Range.Start, q.Range.End
		}
		for d, s := range c.cells {
			if !q.Filter.match(d, false) {
				continue
			}
			for _, g := range groupsOf(d, q.GroupBy, q.Products) {
				k := pkey{g, start.UnixNano()}
				p := points[k]
				if p == nil {
					p = &Point{Start: start, End: end}
					points[k] = p
				}
				p.Events += s.Events
				p.Bytes += s.Bytes
			}
		}
	}
	series := map[Dimensions]*Series{}
	for k, p := range points {
		if p.Events == 0 && p.Bytes == 0 {
			continue
		}
		s := series[k.Dimensions]
		if s == nil {
			s = &Series{Dimensions: k.Dimensions}
			series[k.Dimensions] = s
		}
		s.Points = append(s.Points, *p)
	}
	out := make([]Series, 0, len(series))
	for _, s := range series {
		slices.SortFunc(s.Points, func(a, b Point) int { return a.Start.Compare(b.Start) })
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Series) int { return compareDims(a.Dimensions, b.Dimensions) })
	return out, nil
}

func compareDims(a, b Dimensions) int {
	return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Application, b.Application),
		cmp.Compare(a.Producer, b.Producer), cmp.Compare(a.EventType, b.EventType), cmp.Compare(a.Domain, b.Domain),
		cmp.Compare(a.Product, b.Product), cmp.Compare(a.Channel, b.Channel), cmp.Compare(a.Metric, b.Metric))
}

// Entry is one ranked value.
type Entry struct {
	Value         string
	Events, Bytes int64
}

// Top ranks the values of dim over r by events (then bytes, then value),
// keeping at most limit. An unspecified metric in f counts DELIVERED.
func Top(ctx context.Context, rd Reader, dim meteringv1.UsageDimension, f Filter, r Range, limit int, products []Product, now time.Time) ([]Entry, error) {
	if f.Metric == meteringv1.UsageMetric_USAGE_METRIC_UNSPECIFIED {
		f.Metric = meteringv1.UsageMetric_USAGE_METRIC_DELIVERED
	}
	cells, err := read(ctx, rd, Cover(r, now))
	if err != nil {
		return nil, err
	}
	sums := map[string]*Entry{}
	for _, c := range cells {
		for d, s := range c.cells {
			if !f.match(d, false) {
				continue
			}
			for _, g := range groupsOf(d, []meteringv1.UsageDimension{dim}, products) {
				v := valueOf(dim, g)
				e := sums[v]
				if e == nil {
					e = &Entry{Value: v}
					sums[v] = e
				}
				e.Events += s.Events
				e.Bytes += s.Bytes
			}
		}
	}
	out := make([]Entry, 0, len(sums))
	for _, e := range sums {
		if e.Events != 0 || e.Bytes != 0 {
			out = append(out, *e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(cmp.Compare(b.Events, a.Events), cmp.Compare(b.Bytes, a.Bytes), cmp.Compare(a.Value, b.Value))
	})
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func valueOf(dim meteringv1.UsageDimension, g Dimensions) string {
	switch dim {
	case meteringv1.UsageDimension_USAGE_DIMENSION_TENANT:
		return g.Tenant
	case meteringv1.UsageDimension_USAGE_DIMENSION_APPLICATION:
		return g.Application
	case meteringv1.UsageDimension_USAGE_DIMENSION_PRODUCER:
		return g.Producer
	case meteringv1.UsageDimension_USAGE_DIMENSION_EVENT_TYPE:
		return g.EventType
	case meteringv1.UsageDimension_USAGE_DIMENSION_DOMAIN:
		return g.Domain
	case meteringv1.UsageDimension_USAGE_DIMENSION_PRODUCT:
		return g.Product
	case meteringv1.UsageDimension_USAGE_DIMENSION_CHANNEL:
		return g.Channel
	default:
		return g.Metric.String()
	}
}

// Stats are the delivery outcomes of one channel (and event type).
type Stats struct {
	Channel, EventType                  string
	Delivered, Failed, Refused, Retried int64
	// Histogram counts delivered events per latency bound (0: overflow).
	Histogram store.Histogram
}

// ErrorRate is failed / (delivered + failed).
func (s Stats) ErrorRate() float64 { return ratio(s.Failed, s.Delivered+s.Failed) }

// RetryRate is retried / (delivered + failed).
func (s Stats) RetryRate() float64 { return ratio(s.Retried, s.Delivered+s.Failed) }

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// Percentile is the upper bound of the histogram bucket holding the p-th
// percentile (p in 1..100) of delivered events; the largest finite bound
// when it is in the overflow bucket; 0 for an empty histogram.
func (s Stats) Percentile(p int64) int64 {
	var total int64
	for _, n := range s.Histogram {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := (total*p + 99) / 100 // ceil(total * p / 100), at least 1
	var seen int64
	for _, b := range store.LatencyBounds {
		seen += s.Histogram[b]
		if seen >= rank {
			return b
		}
	}
	return store.LatencyBounds[len(store.LatencyBounds)-1]
}

// Deliveries answers delivery statistics per channel (and type).
func Deliveries(ctx context.Context, rd Reader, f Filter, r Range, byType bool, now time.Time) ([]Stats, error) {
	spans := Cover(r, now)
	cells, err := read(ctx, rd, spans)
	if err != nil {
		return nil, err
	}
	type key struct{ channel, typ string }
	stats := map[key]*Stats{}
	get := func(d store.Dims) *Stats {
		k := key{channel: d.Channel}
		if byType {
			k.typ = d.EventType
		}
		s := stats[k]
		if s == nil {
			s = &Stats{Channel: k.channel, EventType: k.typ, Histogram: store.Histogram{}}
			stats[k] = s
		}
		return s
	}
	for _, c := range cells {
		for d, sum := range c.cells {
			if !f.match(d, true) {
				continue
			}
			switch d.Metric {
			case meteringv1.UsageMetric_USAGE_METRIC_DELIVERED:
				get(d).Delivered += sum.Events
			case meteringv1.UsageMetric_USAGE_METRIC_FAILED:
				get(d).Failed += sum.Events
			case meteringv1.UsageMetric_USAGE_METRIC_REFUSED:
				get(d).Refused += sum.Events
			case meteringv1.UsageMetric_USAGE_METRIC_RETRIED:
				get(d).Retried += sum.Events
			}
		}
	}
	byKind := map[store.Kind][]time.Time{}
	for _, s := range spans {
		byKind[s.Kind] = append(byKind[s.Kind], s.Start)
	}
	for k, starts := range byKind {
		hs, err := rd.Latencies(ctx, k, starts)
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			for d, hist := range h {
				if !f.match(d, true) {
					continue
				}
				s := get(d)
				for le, n := range hist {
					s.Histogram[le] += n
				}
			}
		}
	}
	out := make([]Stats, 0, len(stats))
	for _, s := range stats {
		if s.Delivered+s.Failed+s.Refused+s.Retried > 0 {
			out = append(out, *s)
		}
	}
	slices.SortFunc(out, func(a, b Stats) int {
		return cmp.Or(cmp.Compare(a.Channel, b.Channel), cmp.Compare(a.EventType, b.EventType))
	})
	return out, nil
}
