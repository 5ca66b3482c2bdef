// Package quota is metering's side of quotas: the definitions (QuotaService),
// the enforcer that compares the folded per-day totals with each quota and
// writes the blocked set the router's and edge's caches read
// (platform/quota), and the herald.quota.warning events of soft quotas.
//
// Keys (hash tag {quota}; the blocked set's keys are in platform/quota):
//
//	herald:{quota}:defs                          hash quota id -> Quota protobuf
//	herald:{quota}:warned:<id>:<YYYYMMDD>:<pct>  "1" once the warning of that threshold and
//	                                             period (by its first day) was published;
//	                                             expires two days after the period
//	herald:{quota}:warning:<id>:<YYYYMMDD>:<pct> a publisher's claim on that warning (10 s)
//
// Usage is read from the fold's totals (hash tag {usage}):
//
//	herald:{usage}:t:<YYYYMMDD>   a|<application>|<metric> and t|<tenant>|<metric> -> events
package quota

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// DefsKey holds the quota definitions.
const DefsKey = "herald:{quota}:defs"

func warnedKey(id string, start time.Time, pct int) string {
	return "herald:{quota}:warned:" + id + ":" + start.Format("20060102") + ":" + strconv.Itoa(pct)
}

func claimKey(id string, start time.Time, pct int) string {
	return "herald:{quota}:warning:" + id + ":" + start.Format("20060102") + ":" + strconv.Itoa(pct)
}

// TotalsKey is the fold's totals hash of the UTC day of t.
func TotalsKey(t time.Time) string { return "herald:{usage}:t:" + t.UTC().Format("20060102") }

var escaper = strings.NewReplacer("%", "%25", "|", "%7C")

// TotalsField is the totals field of a quota's subject and metric.
func TotalsField(scope meteringv1.QuotaScope, subject string, metric meteringv1.UsageMetric) string {
	letter := "a"
	if scope == meteringv1.QuotaScope_QUOTA_SCOPE_TENANT {
		letter = "t"
	}
	return letter + "|" + escaper.Replace(subject) + "|" + strconv.Itoa(int(metric))
}

// ID is the id of the quota of a scope, subject, metric and period: one
// quota each, so SetQuota replaces rather than adds.
func ID(scope meteringv1.QuotaScope, subject string, metric meteringv1.UsageMetric, period meteringv1.QuotaPeriod) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%d|%s|%d|%d", scope, subject, metric, period)))
	return "q_" + hex.EncodeToString(h[:10])
}

// Period returns the bounds of the period of p that holds now, in UTC.
func Period(p meteringv1.QuotaPeriod, now time.Time) (start, end time.Time) {
	now = now.UTC()
	switch p {
	case meteringv1.QuotaPeriod_QUOTA_PERIOD_MONTH:
		start = time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 1, 0)
	default:
		start = time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
		return start, start.AddDate(0, 0, 1)
	}
}

// Store reads and writes quota definitions and reads usage totals.
type Store struct{ rdb redis.UniversalClient }

// NewStore returns a Store over rdb.
func NewStore(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Put stores q (whose id is set).
func (s *Store) Put(ctx context.Context, q *meteringv1.Quota) error {
	b, err := proto.Marshal(q)
	if err != nil {
		return fmt.Errorf("encode quota: %w", err)
	}
	if err := s.rdb.HSet(ctx, DefsKey, q.GetId(), b).Err(); err != nil {
		return fmt.Errorf("store quota %s: %w", q.GetId(), err)
	}
	return nil
}

// Delete removes a quota; it reports whether it existed.
func (s *Store) Delete(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.HDel(ctx, DefsKey, id).Result()
	if err != nil {
		return false, fmt.Errorf("delete quota %s: %w", id, err)
	}
	return n == 1, nil
}

// All returns every quota. A definition that does not decode is skipped.
func (s *Store) All(ctx context.Context) ([]*meteringv1.Quota, error) {
	all, err := s.rdb.HGetAll(ctx, DefsKey).Result()
	if err != nil {
		return nil, fmt.Errorf("read quotas: %w", err)
	}
	out := make([]*meteringv1.Quota, 0, len(all))
	for _, v := range all {
		q := &meteringv1.Quota{}
		if proto.Unmarshal([]byte(v), q) == nil {
			out = append(out, q)
		}
	}
	return out, nil
}

// Used returns what each quota's current period counted so far, in one
// round trip: the sum of the totals of its days up to now.
func (s *Store) Used(ctx context.Context, qs []*meteringv1.Quota, now time.Time) ([]int64, error) {
	if len(qs) == 0 {
		return nil, nil
	}
	// One HMGET per day, of every field wanted that day.
	days := map[string][]string{}
	asks := map[string][]int{} // day key -> quota index per field
	for i, q := range qs {
		start, _ := Period(q.GetPeriod(), now)
		f := TotalsField(q.GetScope(), q.GetSubject(), q.GetMetric())
		for d := start; !d.After(now); d = d.AddDate(0, 0, 1) {
			k := TotalsKey(d)
			days[k] = append(days[k], f)
			asks[k] = append(asks[k], i)
		}
	}
	pipe := s.rdb.Pipeline()
	cmds := make(map[string]*redis.SliceCmd, len(days))
	for k, fs := range days {
		cmds[k] = pipe.HMGet(ctx, k, fs...)
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, fmt.Errorf("read usage totals: %w", err)
	}
	used := make([]int64, len(qs))
	for k, c := range cmds {
		for j, v := range c.Val() {
			s, ok := v.(string)
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(s, 10, 64)
			if err == nil {
				used[asks[k][j]] += n
			}
		}
	}
	return used, nil
}
