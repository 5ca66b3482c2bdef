package appender

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// CountKey is the hash that counts what each account published to a stream
// per minute (tag: the stream's hash tag, <type> or <type>#<partition>). The
// append script increments it with the append, so it shares the stream's
// hash tag.
func CountKey(tag string) string { return "herald:count:{" + tag + "}" }

// MovedKey remembers how much of each count is already in the usage stream:
// field "<tag>|<period>|<account>" -> the count moved, the period being
// "m<minute>" (or "<hour>", written by older routers). It shares the usage
// stream's hash tag, so a move is one script on one shard.
const MovedKey = "herald:{usage}:published"

// moveScript appends one usage record and records the count it brings the
// field to, unless another mover got there first: KEYS[1] usage stream,
// KEYS[2] MovedKey; ARGV[1] field, ARGV[2] the count moved as the caller
// read it, ARGV[3] the new count moved, ARGV[4] the record, ARGV[5] the
// record's entry field, ARGV[6] the stream's max length. Returns 1 when it
// moved.
var moveScript = redis.NewScript(`
local moved = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
if moved ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', ARGV[5], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
`)

// forgetScript removes a count field whose count is all moved: KEYS[1] the
// count hash; ARGV[1] field, ARGV[2] the count moved. Returns 1 if removed.
var forgetScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
`)

// MeterOptions configure a Meter. The zero value is ready to use.
type MeterOptions struct {
	// Interval between moves. Default DefaultMeterInterval: how late
	// published usage may reach metering.
	Interval time.Duration
	// Log receives failed moves; nil discards them.
	Log *slog.Logger
	// Now is the clock that decides which periods are over; default
	// time.Now.
	Now func() time.Time
	// Tenant returns the tenant of an application, for the records; nil
	// or "" leaves it unset.
	Tenant func(ctx context.Context, application string) string
}

// DefaultMeterInterval is MeterOptions.Interval when unset: a quarter of
// the second in which a hard quota on published events must take effect
// (publish -> count moved -> folded -> enforcer -> router's quota cache).
const DefaultMeterInterval = 250 * time.Millisecond

// Meter moves the published counts of the append script into the usage
// stream that metering folds: one record per stream, minute and account with
// what was counted since the last move. A count is moved exactly once, by
// whichever router gets there first, and nothing counted is lost when a
// router dies: the counts are in Redis, written with the events.
type Meter struct {
	rdb  redis.Cmdable
	opts MeterOptions
}

// NewMeter returns a Meter; Run drives it.
func NewMeter(rdb redis.Cmdable, o MeterOptions) *Meter {
	if o.Interval <= 0 {
		o.Interval = DefaultMeterInterval
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Meter{rdb: rdb, opts: o}
}

// Run moves counts every interval until ctx ends, then once more.
func (m *Meter) Run(ctx context.Context) error {
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := m.Move(fctx); err != nil {
				m.opts.Log.Warn("published usage not moved at shutdown; another router or the next start moves it", "err", err)
			}
			return nil
		case <-t.C:
			if err := m.Move(ctx); err != nil && ctx.Err() == nil {
				m.opts.Log.Warn("published usage not moved; will retry", "err", err)
			}
		}
	}
}

// count is one field of a count hash.
type count struct {
	tag, field string // field: "<period>|<account>"
	period     string // "m<minute>", or "<hour>" from older routers
	start      int64  // the period's start, unix ms
	account    string
	n          int64
}

func (c count) movedField() string { return c.tag + "|" + c.field }

// Move moves what was counted since the last move into the usage stream.
// Counts of periods that started more than two hours ago are removed once
// moved.
func (m *Meter) Move(ctx context.Context) error {
	keys, err := m.rdb.HKeys(ctx, numbersKey).Result()
	if err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	var tags []string
	for _, k := range keys {
		if tag, ok := eventlog.TagOfStream(k); ok {
			tags = append(tags, tag)
		}
	}
	counts, err := m.read(ctx, tags)
	if err != nil {
		return err
	}
	moved, err := m.rdb.HGetAll(ctx, MovedKey).Result()
	if err != nil {
		return fmt.Errorf("read moved counts: %w", err)
	}
	now := m.opts.Now().UnixMilli()
	old := now - 2*time.Hour.Milliseconds()
	var errs []error
	live := make(map[string]bool, len(counts))
	for _, c := range counts {
		live[c.movedField()] = true
		before := moved[c.movedField()]
		done, _ := strconv.ParseInt(before, 10, 64)
		if before == "" {
			before = "0"
		}
		if c.n > done {
			ok, err := m.move(ctx, c, before, done)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !ok {
				continue // another router moved it; the next pass sees its count
			}
			done = c.n
		}
		if c.start < old && done == c.n {
			if err := m.forget(ctx, c); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Moved counts whose count is gone (forgotten by a router that died
	// before it could remove this side too).
	for f := range moved {
		if live[f] {
			continue
		}
		if start, ok := startOfMoved(f); ok && start < old-time.Hour.Milliseconds() {
			if err := m.rdb.HDel(ctx, MovedKey, f).Err(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// read returns every count of the given streams, in one round trip.
func (m *Meter) read(ctx context.Context, tags []string) ([]count, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	pipe := m.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(tags))
	for i, tag := range tags {
		cmds[i] = pipe.HGetAll(ctx, CountKey(tag))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read published counts: %w", err)
	}
	var out []count
	for i, c := range cmds {
		for field, v := range c.Val() {
			period, account, ok := strings.Cut(field, "|")
			start, ok1 := periodStart(period)
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || !ok1 || err != nil {
				continue
			}
			out = append(out, count{tag: tags[i], field: field, period: period, start: start, account: account, n: n})
		}
	}
	return out, nil
}

// move appends the record of what c counted beyond done.
func (m *Meter) move(ctx context.Context, c count, before string, done int64) (bool, error) {
	typ := eventlog.TypeOfStream(eventlog.TagKey(c.tag))
	rec := &meteringv1.UsageRecord{
		// Unique per move: the count only grows.
		Id:            fmt.Sprintf("pub:%s:%s:%s:%d", c.tag, c.period, c.account, c.n),
		ApplicationId: c.account, ProducerApplicationId: c.account, EventType: typ,
		Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, Channel: "grpc",
		Quantity: c.n - done, Time: timestamppb.New(time.UnixMilli(c.start)),
	}
	if m.opts.Tenant != nil {
		rec.Tenant = m.opts.Tenant(ctx, c.account)
	}
	b, err := proto.Marshal(rec)
	if err != nil {
		return false, err
	}
	n, err := moveScript.Run(ctx, m.rdb, []string{usage.StreamKey, MovedKey},
		c.movedField(), before, c.n, b, usage.FieldRecord, usage.MaxLen).Int64()
	if err != nil {
		return false, fmt.Errorf("move published usage of %s: %w", c.tag, err)
	}
	return n == 1, nil
}

// forget removes a count that is all moved, then its moved count.
func (m *Meter) forget(ctx context.Context, c count) error {
	n, err := forgetScript.Run(ctx, m.rdb, []string{CountKey(c.tag)}, c.field, c.n).Int64()
	if err != nil {
		return fmt.Errorf("forget published count of %s: %w", c.tag, err)
	}
	if n == 1 {
		return m.rdb.HDel(ctx, MovedKey, c.movedField()).Err()
	}
	return nil
}

// periodStart reads a count field's period, "m<minute>" or "<hour>"
// (minutes or hours since the epoch), as its start in unix ms.
func periodStart(p string) (int64, bool) {
	unit := time.Hour.Milliseconds()
	if rest, ok := strings.CutPrefix(p, "m"); ok {
		p, unit = rest, time.Minute.Milliseconds()
	}
	n, err := strconv.ParseInt(p, 10, 64)
	return n * unit, err == nil
}

// startOfMoved reads the period's start of a MovedKey field,
// "<tag>|<period>|<account>".
func startOfMoved(f string) (int64, bool) {
	_, rest, ok := strings.Cut(f, "|")
	if !ok {
		return 0, false
	}
	period, _, ok := strings.Cut(rest, "|")
	if !ok {
		return 0, false
	}
	return periodStart(period)
}
