package report

import (
	"errors"
	"testing"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
)

const (
	published = meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED
	delivered = meteringv1.UsageMetric_USAGE_METRIC_DELIVERED
	hourly    = meteringv1.Granularity_GRANULARITY_HOUR
	daily     = meteringv1.Granularity_GRANULARITY_DAY
	total     = meteringv1.Granularity_GRANULARITY_TOTAL
)

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestNormalize(t *testing.T) {
	now := at("2026-03-10T12:34:56Z")
	tests := []struct {
		name       string
		q          Query
		start, end time.Time
		gran       meteringv1.Granularity
		invalid    bool
	}{
		{name: "defaults", start: at("2026-03-09T12:00:00Z"), end: now, gran: total},
		{name: "start rounded down", q: Query{Start: at("2026-03-10T10:59:00Z"), End: at("2026-03-10T11:00:00Z"), Granularity: hourly},
			start: at("2026-03-10T10:00:00Z"), end: at("2026-03-10T11:00:00Z"), gran: hourly},
		{name: "only end", q: Query{End: at("2026-03-01T00:00:00Z")}, start: at("2026-02-28T00:00:00Z"), end: at("2026-03-01T00:00:00Z"), gran: total},
		{name: "exactly 93 days", q: Query{Start: at("2026-01-01T00:00:00Z"), End: at("2026-01-01T00:00:00Z").Add(MaxRange)},
			start: at("2026-01-01T00:00:00Z"), end: at("2026-01-01T00:00:00Z").Add(MaxRange), gran: total},
		{name: "start equals end", q: Query{Start: now, End: now}, invalid: true},
		{name: "start after end", q: Query{Start: now, End: now.Add(-time.Hour)}, invalid: true},
		{name: "over 93 days", q: Query{Start: at("2026-01-01T00:00:00Z"), End: at("2026-01-01T00:00:01Z").Add(MaxRange)}, invalid: true},
		{name: "unknown metric", q: Query{Metric: 42}, invalid: true},
		{name: "unknown granularity", q: Query{Granularity: 42}, invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.q
			err := q.Normalize(now)
			if tt.invalid {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !q.Start.Equal(tt.start) || !q.End.Equal(tt.end) || q.Granularity != tt.gran {
				t.Fatalf("got %s..%s %v, want %s..%s %v", q.Start, q.End, q.Granularity, tt.start, tt.end, tt.gran)
			}
		})
	}
}

func TestHours(t *testing.T) {
	q := Query{Start: at("2026-03-10T22:00:00Z"), End: at("2026-03-11T01:30:00Z")}
	got := q.Hours()
	want := []time.Time{at("2026-03-10T22:00:00Z"), at("2026-03-10T23:00:00Z"), at("2026-03-11T00:00:00Z"), at("2026-03-11T01:00:00Z")}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Fatalf("hour %d = %s, want %s", i, got[i], want[i])
		}
	}
}

func TestAggregate(t *testing.T) {
	a := Key{ApplicationID: "app_a", EventType: "shop.order.created", Metric: published, Channel: "grpc"}
	aSSE := Key{ApplicationID: "app_a", EventType: "shop.order.created", Metric: delivered, Channel: "sse"}
	b := Key{ApplicationID: "app_b", EventType: "shop.order.paid", Metric: published, Channel: "grpc"}
	hours := []Hour{
		{Start: at("2026-03-10T22:00:00Z"), Counts: map[Key]int64{a: 1, b: 2}},
		{Start: at("2026-03-10T23:00:00Z"), Counts: map[Key]int64{a: 3, aSSE: 4}},
		{Start: at("2026-03-11T00:00:00Z"), Counts: map[Key]int64{a: 5}},
	}
	base := Query{Start: at("2026-03-10T22:00:00Z"), End: at("2026-03-11T01:00:00Z")}
	tests := []struct {
		name   string
		modify func(*Query)
		want   []Row
	}{
		{name: "hour", modify: func(q *Query) { q.Granularity = hourly }, want: []Row{
			{Key: a, Start: at("2026-03-10T22:00:00Z"), End: at("2026-03-10T23:00:00Z"), Count: 1},
			{Key: b, Start: at("2026-03-10T22:00:00Z"), End: at("2026-03-10T23:00:00Z"), Count: 2},
			{Key: a, Start: at("2026-03-10T23:00:00Z"), End: at("2026-03-11T00:00:00Z"), Count: 3},
			{Key: aSSE, Start: at("2026-03-10T23:00:00Z"), End: at("2026-03-11T00:00:00Z"), Count: 4},
			{Key: a, Start: at("2026-03-11T00:00:00Z"), End: at("2026-03-11T01:00:00Z"), Count: 5},
		}},
		{name: "day", modify: func(q *Query) { q.Granularity = daily }, want: []Row{
			{Key: a, Start: at("2026-03-10T00:00:00Z"), End: at("2026-03-11T00:00:00Z"), Count: 4},
			{Key: aSSE, Start: at("2026-03-10T00:00:00Z"), End: at("2026-03-11T00:00:00Z"), Count: 4},
			{Key: b, Start: at("2026-03-10T00:00:00Z"), End: at("2026-03-11T00:00:00Z"), Count: 2},
			{Key: a, Start: at("2026-03-11T00:00:00Z"), End: at("2026-03-12T00:00:00Z"), Count: 5},
		}},
		{name: "total", modify: func(q *Query) { q.Granularity = total }, want: []Row{
			{Key: a, Start: base.Start, End: base.End, Count: 9},
			{Key: aSSE, Start: base.Start, End: base.End, Count: 4},
			{Key: b, Start: base.Start, End: base.End, Count: 2},
		}},
		{name: "application", modify: func(q *Query) { q.Granularity = total; q.ApplicationID = "app_b" }, want: []Row{
			{Key: b, Start: base.Start, End: base.End, Count: 2},
		}},
		{name: "metric", modify: func(q *Query) { q.Granularity = total; q.Metric = delivered }, want: []Row{
			{Key: aSSE, Start: base.Start, End: base.End, Count: 4},
		}},
		{name: "event type", modify: func(q *Query) { q.Granularity = total; q.EventType = "shop.order.paid" }, want: []Row{
			{Key: b, Start: base.Start, End: base.End, Count: 2},
		}},
		{name: "no match", modify: func(q *Query) { q.Granularity = total; q.ApplicationID = "app_c" }, want: []Row{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := base
			tt.modify(&q)
			got := Aggregate(q, hours)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d rows %+v, want %d %+v", len(got), got, len(tt.want), tt.want)
			}
			for i := range got {
				g, w := got[i], tt.want[i]
				if g.Key != w.Key || !g.Start.Equal(w.Start) || !g.End.Equal(w.End) || g.Count != w.Count {
					t.Errorf("row %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}
