// Package report turns hourly usage counters into the rows a usage query
// answers: it validates the query's range, lists the hours it covers, and
// filters and sums the counters into hour, day or total buckets. It knows
// neither Redis nor the wire.
package report

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
)

// MaxRange is the longest range one query may cover: about a quarter, so
// that one answer reads at most a few thousand hour buckets.
const MaxRange = 93 * 24 * time.Hour

// MaxMinuteRange is the longest range of a query by minute.
const MaxMinuteRange = 24 * time.Hour

// DefaultRange is the range of a query that sets no start.
const DefaultRange = 24 * time.Hour

// ErrInvalid marks a query that can never be answered as asked.
var ErrInvalid = errors.New("invalid usage query")

// Key identifies one counter within an hour.
type Key struct {
	ApplicationID string
	EventType     string
	Metric        meteringv1.UsageMetric
	Channel       string
}

// Hour holds the counters of one UTC hour.
type Hour struct {
	Start  time.Time
	Counts map[Key]int64
}

// Query selects counters. Empty strings and the unspecified metric match
// everything.
type Query struct {
	ApplicationID string
	EventType     string
	Metric        meteringv1.UsageMetric
	// Start is inclusive and End exclusive. Normalize fills and rounds them.
	Start, End  time.Time
	Granularity meteringv1.Granularity
}

// Row is one bucket of one counter.
type Row struct {
	Key
	Start, End time.Time
	Count      int64
}

// Normalize applies the defaults (end now, start a day before end, TOTAL
// granularity), rounds start down to the hour and checks the range. Its
// errors wrap ErrInvalid.
func (q *Query) Normalize(now time.Time) error {
	if _, ok := meteringv1.UsageMetric_name[int32(q.Metric)]; !ok {
		return fmt.Errorf("%w: unknown metric %d", ErrInvalid, q.Metric)
	}
	if _, ok := meteringv1.Granularity_name[int32(q.Granularity)]; !ok {
		return fmt.Errorf("%w: unknown granularity %d", ErrInvalid, q.Granularity)
	}
	if q.Granularity == meteringv1.Granularity_GRANULARITY_UNSPECIFIED {
		q.Granularity = meteringv1.Granularity_GRANULARITY_TOTAL
	}
	if q.End.IsZero() {
		q.End = now
	}
	if q.Start.IsZero() {
		q.Start = q.End.Add(-DefaultRange)
	}
	q.Start, q.End = q.Start.UTC(), q.End.UTC()
	if !q.Start.Before(q.End) {
		return fmt.Errorf("%w: start_time %s is not before end_time %s", ErrInvalid, q.Start.Format(time.RFC3339), q.End.Format(time.RFC3339))
	}
	q.Start = q.Start.Truncate(time.Hour)
	if q.Granularity == meteringv1.Granularity_GRANULARITY_MINUTE && q.End.Sub(q.Start) > MaxMinuteRange {
		return fmt.Errorf("%w: minute buckets cover at most %d hours per query", ErrInvalid, MaxMinuteRange/time.Hour)
	}
	if q.End.Sub(q.Start) > MaxRange {
		return fmt.Errorf("%w: the range %s .. %s is longer than %d days", ErrInvalid, q.Start.Format(time.RFC3339), q.End.Format(time.RFC3339), MaxRange/(24*time.Hour))
	}
	return nil
}

// Hours lists the start of every hour bucket a normalized query covers.
func (q Query) Hours() []time.Time {
	hours := make([]time.Time, 0, q.End.Sub(q.Start)/time.Hour+1)
	for h := q.Start; h.Before(q.End); h = h.Add(time.Hour) {
		hours = append(hours, h)
	}
	return hours
}

// Minutes lists the start of every minute bucket a normalized query covers.
func (q Query) Minutes() []time.Time {
	out := make([]time.Time, 0, q.End.Sub(q.Start)/time.Minute+1)
	for m := q.Start.Truncate(time.Minute); m.Before(q.End); m = m.Add(time.Minute) {
		out = append(out, m)
	}
	return out
}

func (q Query) matches(k Key) bool {
	return (q.ApplicationID == "" || k.ApplicationID == q.ApplicationID) &&
		(q.EventType == "" || k.EventType == q.EventType) &&
		(q.Metric == meteringv1.UsageMetric_USAGE_METRIC_UNSPECIFIED || k.Metric == q.Metric)
}

// bucket returns the bounds of the bucket an hour falls in.
func (q Query) bucket(hour time.Time) (start, end time.Time) {
	switch q.Granularity {
	case meteringv1.Granularity_GRANULARITY_MINUTE:
		return hour, hour.Add(time.Minute)
	case meteringv1.Granularity_GRANULARITY_HOUR:
		return hour, hour.Add(time.Hour)
	case meteringv1.Granularity_GRANULARITY_DAY:
		y, m, d := hour.UTC().Date()
		start = time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1)
	default:
		return q.Start, q.End
	}
}

// Aggregate filters the counters of hours by q and sums them into q's
// buckets. Rows come sorted by start, application, event type, metric and
// channel; counters that sum to zero are left out.
func Aggregate(q Query, hours []Hour) []Row {
	type bucketKey struct {
		start int64
		Key
	}
	sums := map[bucketKey]*Row{}
	for _, h := range hours {
		start, end := q.bucket(h.Start)
		for k, n := range h.Counts {
			if !q.matches(k) {
				continue
			}
			bk := bucketKey{start.UnixNano(), k}
			r, ok := sums[bk]
			if !ok {
				r = &Row{Key: k, Start: start, End: end}
				sums[bk] = r
			}
			r.Count += n
		}
	}
	rows := make([]Row, 0, len(sums))
	for _, r := range sums {
		if r.Count != 0 {
			rows = append(rows, *r)
		}
	}
	slices.SortFunc(rows, compareRows)
	return rows
}

func compareRows(a, b Row) int {
	return cmp.Or(
		a.Start.Compare(b.Start),
		cmp.Compare(a.ApplicationID, b.ApplicationID),
		cmp.Compare(a.EventType, b.EventType),
		cmp.Compare(a.Metric, b.Metric),
		cmp.Compare(a.Channel, b.Channel),
	)
}
