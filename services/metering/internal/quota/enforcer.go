package quota

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"strconv"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	pq "github.com/heraldmesh/herald/platform/quota"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultInterval is how often the enforcer compares usage with the quotas:
// a fifth of the second a hard quota has to take effect in.
const DefaultInterval = 200 * time.Millisecond

// WarningType is the event type of a soft quota's warnings.
const WarningType = "herald.quota.warning"

// Thresholds are the percentages of a soft quota's limit that publish a
// warning, once each per period.
var Thresholds = []int{80, 100}

// Publisher publishes one event into the mesh (through the router, as the
// operator); publishing the same event again must be harmless (the router
// deduplicates on source and id).
type Publisher interface {
	Publish(ctx context.Context, ev *eventv1.CloudEvent) error
}

// Enforcer compares usage with the quotas every interval and writes the
// blocked set; it hands the warnings of soft quotas to a warner.
type Enforcer struct {
	st       *Store
	rdb      redis.UniversalClient
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time
	pub      Publisher

	kick     chan struct{}
	warnings chan []warning
}

// Options configure an Enforcer.
type Options struct {
	// Interval between passes; default DefaultInterval.
	Interval time.Duration
	// Log; nil discards.
	Log *slog.Logger
	// Publisher of soft quotas' warnings; nil publishes none.
	Publisher Publisher
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// NewEnforcer returns an Enforcer; Run drives it.
func NewEnforcer(st *Store, rdb redis.UniversalClient, o Options) *Enforcer {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Enforcer{
		st: st, rdb: rdb, log: o.Log, interval: o.Interval, now: o.Now, pub: o.Publisher,
		kick: make(chan struct{}, 1), warnings: make(chan []warning, 1),
	}
}

// Kick asks for a pass now (after a quota changed).
func (e *Enforcer) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Run passes every interval (and on Kick) until ctx ends; the warner runs
// beside it, so that a slow router never delays blocking.
func (e *Enforcer) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() { defer close(done); e.warn(ctx) }()
	defer func() { <-done }()
	t := time.NewTicker(e.interval)
	defer t.Stop()
	failing := false
	for {
		err := e.Pass(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			e.log.Warn("quotas not enforced this pass; will retry", "err", err)
			failing = true
		case err == nil:
			failing = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-e.kick:
		}
	}
}

// Statuses returns the status of every quota now, and the quotas.
func (e *Enforcer) Statuses(ctx context.Context) ([]*meteringv1.QuotaStatus, error) {
	qs, err := e.st.All(ctx)
	if err != nil {
		return nil, err
	}
	now := e.now()
	used, err := e.st.Used(ctx, qs, now)
	if err != nil {
		return nil, err
	}
	out := make([]*meteringv1.QuotaStatus, len(qs))
	for i, q := range qs {
		out[i] = Status(q, used[i], now)
	}
	return out, nil
}

// Status is q's status with used counted in its period holding now.
func Status(q *meteringv1.Quota, used int64, now time.Time) *meteringv1.QuotaStatus {
	start, end := Period(q.GetPeriod(), now)
	s := &meteringv1.QuotaStatus{
		Quota: q, Used: used, Limit: q.GetLimit(), Percent: percent(used, q.GetLimit()),
		PeriodStart: timestamppb.New(start), ResetsAt: timestamppb.New(end),
	}
	switch {
	case used >= q.GetLimit():
		s.State = meteringv1.QuotaState_QUOTA_STATE_EXHAUSTED
	case s.Percent >= 80:
		s.State = meteringv1.QuotaState_QUOTA_STATE_WARNING
	default:
		s.State = meteringv1.QuotaState_QUOTA_STATE_OK
	}
	return s
}

// percent is used*100/limit rounded down, without overflow; 100 for a
// limit of 0 (everything is over it).
func percent(used, limit int64) int64 {
	if limit <= 0 {
		return 100
	}
	p := new(big.Int).Mul(big.NewInt(used), big.NewInt(100))
	return p.Quo(p, big.NewInt(limit)).Int64()
}

// Pass compares usage with every quota once: it rewrites the blocked set
// when it changed (and announces the change), and queues due warnings.
func (e *Enforcer) Pass(ctx context.Context) error {
	statuses, err := e.Statuses(ctx)
	if err != nil {
		return err
	}
	want := map[string]string{}
	var due []warning
	for _, s := range statuses {
		q := s.GetQuota()
		switch q.GetMode() {
		case meteringv1.QuotaMode_QUOTA_MODE_HARD:
			if s.GetState() != meteringv1.QuotaState_QUOTA_STATE_EXHAUSTED {
				continue
			}
			letter := pq.ScopeApplication
			if q.GetScope() == meteringv1.QuotaScope_QUOTA_SCOPE_TENANT {
				letter = pq.ScopeTenant
			}
			f := pq.Field(q.GetMetric(), letter, q.GetSubject())
			at := s.GetResetsAt().AsTime().UnixMilli()
			// A day and a month quota on one subject: the later reset.
			if n, _ := strconv.ParseInt(want[f], 10, 64); n < at {
				want[f] = strconv.FormatInt(at, 10)
			}
		case meteringv1.QuotaMode_QUOTA_MODE_SOFT:
			for _, pct := range Thresholds {
				if s.GetPercent() >= int64(pct) {
					due = append(due, warning{status: s, pct: pct})
				}
			}
		}
	}
	if err := e.publishBlocked(ctx, want); err != nil {
		return err
	}
	if len(due) > 0 && e.pub != nil {
		select {
		case e.warnings <- due:
		default: // the warner is busy; the next pass offers them again
		}
	}
	return nil
}

func (e *Enforcer) publishBlocked(ctx context.Context, want map[string]string) error {
	have, err := e.rdb.HGetAll(ctx, pq.BlockedKey).Result()
	if err != nil {
		return fmt.Errorf("read blocked set: %w", err)
	}
	if maps.Equal(have, want) {
		return nil
	}
	var version *redis.IntCmd
	_, err = e.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, pq.BlockedKey)
		if len(want) > 0 {
			p.HSet(ctx, pq.BlockedKey, want)
		}
		version = p.Incr(ctx, pq.VersionKey)
		return nil
	})
	if err != nil {
		return fmt.Errorf("write blocked set: %w", err)
	}
	e.log.Info("quota blocked set changed", "blocked", len(want))
	if err := e.rdb.Publish(ctx, pq.Channel, version.Val()).Err(); err != nil {
		// The caches reload within their refresh interval anyway.
		e.log.Warn("quota change not announced", "err", err)
	}
	return nil
}

// warning is a soft quota's threshold reached in its current period.
type warning struct {
	status *meteringv1.QuotaStatus
	pct    int
}

// warn publishes the warnings the passes hand over, each once per period:
// a warned marker once it is published, a claim (SET NX) while one metering
// process publishes it, and a stable event id, so that a publish retried
// after a crash is deduplicated by the router.
func (e *Enforcer) warn(ctx context.Context) {
	for {
		var due []warning
		select {
		case <-ctx.Done():
			return
		case due = <-e.warnings:
		}
		for _, w := range due {
			if err := e.warnOnce(ctx, w); err != nil && ctx.Err() == nil {
				e.log.Warn("quota warning not published; will retry", "quota", w.status.GetQuota().GetId(), "threshold", w.pct, "err", err)
			}
		}
	}
}

func (e *Enforcer) warnOnce(ctx context.Context, w warning) error {
	q := w.status.GetQuota()
	start := w.status.GetPeriodStart().AsTime()
	end := w.status.GetResetsAt().AsTime()
	done := warnedKey(q.GetId(), start, w.pct)
	n, err := e.rdb.Exists(ctx, done).Result()
	if err != nil || n == 1 {
		return err
	}
	claim := claimKey(q.GetId(), start, w.pct)
	ok, err := e.rdb.SetNX(ctx, claim, "1", 10*time.Second).Result()
	if err != nil || !ok {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.pub.Publish(pctx, warningEvent(w, e.now())); err != nil {
		e.rdb.Del(context.WithoutCancel(ctx), claim)
		return err
	}
	ttl := time.Until(end) + 48*time.Hour
	if err := e.rdb.Set(ctx, done, "1", ttl).Err(); err != nil {
		return fmt.Errorf("mark warning published: %w", err)
	}
	e.log.Info("quota warning published", "quota", q.GetId(), "threshold", w.pct, "used", w.status.GetUsed(), "limit", q.GetLimit())
	return nil
}

// warningEvent is the herald.quota.warning event of w, whose id is stable
// per quota, period and threshold.
func warningEvent(w warning, now time.Time) *eventv1.CloudEvent {
	s, q := w.status, w.status.GetQuota()
	start := s.GetPeriodStart().AsTime()
	data, _ := json.Marshal(map[string]any{
		"quota_id": q.GetId(), "scope": scopeName(q.GetScope()), "subject": q.GetSubject(), "tenant": q.GetTenant(),
		"metric": metricName(q.GetMetric()), "period": periodName(q.GetPeriod()),
		"limit": q.GetLimit(), "used": s.GetUsed(), "threshold": w.pct,
		"period_start": start.UTC().Format(time.RFC3339), "resets_at": s.GetResetsAt().AsTime().UTC().Format(time.RFC3339),
	})
	str := func(v string) *eventv1.CloudEvent_CloudEventAttributeValue {
		return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: v}}
	}
	return &eventv1.CloudEvent{
		Id:     fmt.Sprintf("%s-%s-%d", q.GetId(), start.Format("20060102"), w.pct),
		Source: "herald/metering", SpecVersion: "1.0", Type: WarningType,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": str("application/json"),
			"subject":         str(q.GetSubject()),
			"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(now)}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: string(data)},
	}
}

func scopeName(s meteringv1.QuotaScope) string {
	if s == meteringv1.QuotaScope_QUOTA_SCOPE_TENANT {
		return "tenant"
	}
	return "application"
}

func metricName(m meteringv1.UsageMetric) string {
	if m == meteringv1.UsageMetric_USAGE_METRIC_DELIVERED {
		return "delivered"
	}
	return "published"
}

func periodName(p meteringv1.QuotaPeriod) string {
	if p == meteringv1.QuotaPeriod_QUOTA_PERIOD_MONTH {
		return "month"
	}
	return "day"
}

// RouterPublisher publishes through the router's Publish.
type RouterPublisher struct {
	Router routerv1connect.RouterServiceClient
}

// Publish implements Publisher: a duplicate (already published) is success.
func (p RouterPublisher) Publish(ctx context.Context, ev *eventv1.CloudEvent) error {
	res, err := p.Router.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{ev}}))
	if err != nil {
		return fmt.Errorf("publish %s: %w", ev.GetType(), err)
	}
	if rs := res.Msg.GetResults(); len(rs) == 1 && rs[0].GetError() != nil {
		return fmt.Errorf("publish %s: %s", ev.GetType(), rs[0].GetError().GetMessage())
	}
	return nil
}
