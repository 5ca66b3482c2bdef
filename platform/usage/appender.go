package usage

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// FieldBatch is the entry field holding a UsageRecordBatch: many records
// in one entry, each folded once by its own id.
const FieldBatch = "rs"

// DeliveryID is the id of the usage record of one delivery: a hash of
// tenant, application, subscription (or stream name), the event's source
// and id, and the channel. The same event delivered again to the same place
// (a redelivered webhook, a replayed stream, a retried record) has the same
// id, so metering counts it once. It is stable across processes and
// versions: parts are length-prefixed, so no two different tuples collide
// by concatenation.
func DeliveryID(tenant, application, subscription, eventSource, eventID, channel string) string {
	h := sha256.New()
	var n [8]byte
	for _, p := range []string{tenant, application, subscription, eventSource, eventID, channel} {
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	// 144 bits: collisions are out of reach at any rate Herald meters.
	return "d_" + base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

// AttemptID is the id of a non-billable record about one attempt of a
// delivery (FAILED, REFUSED, RETRIED): the delivery's id, the metric and the
// attempt number, so that each attempt counts once however often its
// record is appended. DELIVERED records use the delivery id itself.
func AttemptID(deliveryID string, metric meteringv1.UsageMetric, attempt int32) string {
	return deliveryID + "." + strconv.Itoa(int(metric)) + "." + strconv.Itoa(int(attempt))
}

// Delivery describes one delivery of one event to one consumer; Record
// turns it into usage records.
type Delivery struct {
	// Tenant and Application are the consumer's.
	Tenant, Application string
	// Producer is the application that published the event (the log
	// entry's "app" field).
	Producer string
	// Subscription is the subscription id, or an ad-hoc stream's name.
	Subscription string
	// EventSource, EventID and EventType are the CloudEvent's.
	EventSource, EventID, EventType string
	// Channel is how it was delivered: stream, subscribe, sse, poll,
	// websub, webhook, bridge.
	Channel string
	// Bytes of event data carried.
	Bytes int64
	// Published is when the event was published (its CloudEvent time, or
	// its log entry id's milliseconds); zero when unknown.
	Published time.Time
	// Attempt is the attempt number, 1 for the first; 0 counts as 1.
	Attempt int32
	// Test marks a test event (subscription.Manager.SendTest): it has no
	// records, so it is never counted.
	Test bool
}

// ID is the delivery's id (see DeliveryID).
func (d Delivery) ID() string {
	return DeliveryID(d.Tenant, d.Application, d.Subscription, d.EventSource, d.EventID, d.Channel)
}

// Record returns the record of the delivery's outcome at now: DELIVERED
// (billable, keyed by the delivery id), FAILED or REFUSED (keyed by the
// attempt). Latency (publish to now) is set for DELIVERED records.
func (d Delivery) Record(metric meteringv1.UsageMetric, now time.Time) *meteringv1.UsageRecord {
	attempt := max(d.Attempt, 1)
	id := d.ID()
	if metric != meteringv1.UsageMetric_USAGE_METRIC_DELIVERED {
		id = AttemptID(id, metric, attempt)
	}
	r := &meteringv1.UsageRecord{
		Id: id, ApplicationId: d.Application, EventType: d.EventType, Metric: metric, Channel: d.Channel,
		Quantity: 1, Time: timestamppb.New(now), Tenant: d.Tenant, ProducerApplicationId: d.Producer,
		Subscription: d.Subscription, EventSource: d.EventSource, EventId: d.EventID, Bytes: d.Bytes, Attempt: attempt,
	}
	if metric == meteringv1.UsageMetric_USAGE_METRIC_DELIVERED && !d.Published.IsZero() {
		r.LatencyMs = max(now.Sub(d.Published).Milliseconds(), 0)
	}
	return r
}

// Records returns the records of one attempt's outcome: the outcome's
// record, and a RETRIED record as well when the attempt is not the first.
func (d Delivery) Records(metric meteringv1.UsageMetric, now time.Time) []*meteringv1.UsageRecord {
	if d.Test {
		return nil
	}
	recs := []*meteringv1.UsageRecord{d.Record(metric, now)}
	if d.Attempt > 1 {
		recs = append(recs, d.Record(meteringv1.UsageMetric_USAGE_METRIC_RETRIED, now))
	}
	return recs
}

// AppendBatch adds recs to the usage stream as entries of up to per records
// each (field "rs"), in one round trip.
func AppendBatch(ctx context.Context, rdb redis.Cmdable, per int, recs ...*meteringv1.UsageRecord) error {
	if len(recs) == 0 {
		return nil
	}
	per = max(per, 1)
	pipe := rdb.Pipeline()
	for i := 0; i < len(recs); i += per {
		b, err := proto.Marshal(&meteringv1.UsageRecordBatch{Records: recs[i:min(i+per, len(recs))]})
		if err != nil {
			return fmt.Errorf("encode usage records: %w", err)
		}
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: StreamKey, MaxLen: MaxLen, Approx: true, Values: []any{FieldBatch, b}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("append usage: %w", err)
	}
	return nil
}

// AppenderOptions tune an Appender. The zero value takes the defaults.
type AppenderOptions struct {
	// FlushEvery is the longest a record waits in memory. Default 100ms.
	FlushEvery time.Duration
	// BatchSize is how many records one stream entry holds at most; a
	// flush starts as soon as this many wait. Default 500.
	BatchSize int
	// MaxPending bounds the records held in memory (waiting, or failing to
	// be appended while Redis is away); Add waits for room beyond it.
	// Default 100,000.
	MaxPending int
	// Log receives failed flushes; nil discards them.
	Log *slog.Logger
	// Metrics receives the appender's counters; nil registers none.
	Metrics prometheus.Registerer
}

// Appender appends usage records in batches: one stream entry (field "rs")
// per BatchSize records, every FlushEvery at the latest. Records whose
// append failed are kept and retried with backoff, in order, so none is
// lost while the process lives; a record appended twice (a lost reply) is
// counted once by metering, by its id. Memory is bounded by MaxPending:
// Add waits for room, slowing the delivery that produces records rather
// than dropping billable usage. Records still in memory when the process
// dies are lost; a redelivery of the same event carries the same id and is
// counted then.
type Appender struct {
	rdb  redis.Cmdable
	opts AppenderOptions

	mu      sync.Mutex
	pending []*meteringv1.UsageRecord
	room    chan struct{} // closed and replaced when pending shrinks
	kick    chan struct{} // a batch is full

	appended, failed, dropped prometheus.Counter
}

// NewAppender returns an Appender over rdb; Run drives its flushes.
func NewAppender(rdb redis.Cmdable, o AppenderOptions) *Appender {
	if o.FlushEvery <= 0 {
		o.FlushEvery = 100 * time.Millisecond
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 100_000
	}
	o.MaxPending = max(o.MaxPending, o.BatchSize)
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	a := &Appender{rdb: rdb, opts: o, room: make(chan struct{}), kick: make(chan struct{}, 1)}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		if o.Metrics != nil {
			o.Metrics.MustRegister(c)
		}
		return c
	}
	a.appended = counter("herald_usage_records_appended_total", "Usage records appended to the usage stream.")
	a.failed = counter("herald_usage_flush_failures_total", "Usage flushes that failed and will be retried.")
	a.dropped = counter("herald_usage_records_dropped_total", "Usage records dropped because their caller gave up waiting for room.")
	return a
}

// Add queues records for the next flush. It waits while MaxPending records
// are held, until ctx is done: then it drops recs and returns ctx's error.
func (a *Appender) Add(ctx context.Context, recs ...*meteringv1.UsageRecord) error {
	for {
		a.mu.Lock()
		if len(a.pending) < a.opts.MaxPending {
			a.pending = append(a.pending, recs...)
			full := len(a.pending) >= a.opts.BatchSize
			a.mu.Unlock()
			if full {
				select {
				case a.kick <- struct{}{}:
				default:
				}
			}
			return nil
		}
		room := a.room
		a.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			a.dropped.Add(float64(len(recs)))
			return ctx.Err()
		}
	}
}

// Pending is how many records wait to be appended.
func (a *Appender) Pending() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending)
}

// Run flushes every FlushEvery, or as soon as a batch is full, until ctx
// ends; then it flushes what is left (trying for up to 5 seconds).
func (a *Appender) Run(ctx context.Context) error {
	t := time.NewTicker(a.opts.FlushEvery)
	defer t.Stop()
	bo := backoff.New(backoff.Options{Initial: a.opts.FlushEvery})
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for a.Pending() > 0 && fctx.Err() == nil {
				if err := a.Flush(fctx); err != nil {
					a.opts.Log.Warn("usage not appended at shutdown", "records", a.Pending(), "err", err)
					backoff.Sleep(fctx, bo.Next())
				}
			}
			return nil
		case <-t.C:
		case <-a.kick:
		}
		if err := a.Flush(ctx); err != nil {
			if ctx.Err() != nil {
				continue
			}
			d := bo.Next()
			a.opts.Log.Warn("usage flush failed; will retry", "records", a.Pending(), "err", err, "retry_in", d.Round(time.Millisecond).String())
			backoff.Sleep(ctx, d)
			continue
		}
		bo.Reset()
	}
}

// Flush appends every pending record, a batch per entry, in one round
// trip. On failure the records stay pending, ahead of newer ones.
func (a *Appender) Flush(ctx context.Context) error {
	a.mu.Lock()
	recs := a.pending
	a.pending = nil
	a.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	err := AppendBatch(ctx, a.rdb, a.opts.BatchSize, recs...)
	a.mu.Lock()
	if err != nil {
		a.pending = append(recs, a.pending...)
	} else {
		close(a.room)
		a.room = make(chan struct{})
	}
	a.mu.Unlock()
	if err != nil {
		a.failed.Inc()
		return err
	}
	a.appended.Add(float64(len(recs)))
	return nil
}

// EventDelivery starts the Delivery of an event read from the log: its
// source, id, type, data size, and publish time (the entry id's
// milliseconds, stamped by Redis when the router appended it). producer is
// the entry's "app" field. The caller sets tenant, application,
// subscription, channel and attempt.
func EventDelivery(ev *eventv1.CloudEvent, cursor, producer string) Delivery {
	d := Delivery{Producer: producer, EventSource: ev.GetSource(), EventID: ev.GetId(), EventType: ev.GetType(), Bytes: DataBytes(ev)}
	if ms, _, _ := strings.Cut(cursor, "-"); ms != "" {
		if n, err := strconv.ParseInt(ms, 10, 64); err == nil && n > 0 {
			d.Published = time.UnixMilli(n)
		}
	}
	return d
}

// DataBytes is the size of an event's data, as metered.
func DataBytes(ev *eventv1.CloudEvent) int64 {
	switch d := ev.GetData().(type) {
	case *eventv1.CloudEvent_BinaryData:
		return int64(len(d.BinaryData))
	case *eventv1.CloudEvent_TextData:
		return int64(len(d.TextData))
	case *eventv1.CloudEvent_ProtoData:
		return int64(len(d.ProtoData.GetValue()))
	}
	return 0
}

// Decode returns the records of a usage stream entry: one (field "r") or a
// batch (field "rs").
func Decode(m redis.XMessage) ([]*meteringv1.UsageRecord, error) {
	if v, ok := m.Values[FieldBatch]; ok {
		s, _ := v.(string)
		b := new(meteringv1.UsageRecordBatch)
		if err := proto.Unmarshal([]byte(s), b); err != nil {
			return nil, fmt.Errorf("decode usage record batch %s: %w", m.ID, err)
		}
		return b.Records, nil
	}
	s, _ := m.Values[FieldRecord].(string)
	r := new(meteringv1.UsageRecord)
	if err := proto.Unmarshal([]byte(s), r); err != nil {
		return nil, fmt.Errorf("decode usage record %s: %w", m.ID, err)
	}
	return []*meteringv1.UsageRecord{r}, nil
}
