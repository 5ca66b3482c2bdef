// Package store is metering's Redis layout: the consumer group on the usage
// stream, the exactly-once fold of records into time buckets, and the reads
// of those buckets.
//
// Keys (all under the {usage} hash tag, so that the fold script touches one
// shard of a cluster; the script builds the bucket keys it writes from the
// record times the caller passes, all in that slot):
//
//	herald:{usage}:log                stream of usage entries (see platform/usage): field "r" one
//	                                  UsageRecord, or "rs" a UsageRecordBatch; group "metering"
//	herald:{usage}:seen:<record id>   "1", expires after SeenTTL: the record was folded
//	herald:{usage}:m:<YYYYMMDDHHmm>   hash per UTC minute (kept 3 days)
//	herald:{usage}:q:<YYYYMMDDHHmm>   hash per UTC quarter hour, mm in 00/15/30/45 (400 days)
//	herald:{usage}:h:<YYYYMMDDHH>     hash per UTC hour (400 days)
//	herald:{usage}:d:<YYYYMMDD>       hash per UTC day (800 days)
//	    c|<tenant>|<application>|<producer>|<event type>|<channel>|<metric number> -> events
//	    b|<same parts>                                                          -> bytes
//	    (hour buckets written before this layout also hold legacy fields
//	    "<application>|<event type>|<metric number>|<channel>" -> events, which reads still count)
//	herald:{usage}:t:<YYYYMMDD>       hash per UTC day, quota totals (400 days):
//	    a|<application>|<metric number> -> events, t|<tenant>|<metric number> -> events
//	herald:{usage}:lm:<YYYYMMDDHHmm>  latency histograms of DELIVERED records, per minute (3 days),
//	herald:{usage}:lh:<YYYYMMDDHH>    hour (400 days) and day (800 days):
//	herald:{usage}:ld:<YYYYMMDD>          <tenant>|<application>|<producer>|<event type>|<channel>|<le> -> events
//	                                  with <le> a bound of LatencyBounds in ms, or "inf"
//
// In a hash field, "%" and "|" inside a part are written as "%25" and "%7C".
// The time of a bucket is the record's time (when the usage happened), not
// when it was folded.
package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/metering/internal/report"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Group is the consumer group metering reads the usage stream with.
const Group = "metering"

// SeenTTL is the default of how long a folded record id is remembered: a
// copy of a record appended later than that (a replay of events older than
// that, redelivered to the same place) would be counted again. Memory: one
// key of about 90 bytes per record, so rate x TTL: 100 deliveries/s kept 8
// days is 69 million keys, about 6 GB; size it to the event log's retention
// (past which no replay can happen) and the delivery rate. Store.SeenTTL
// overrides it.
const SeenTTL = 8 * 24 * time.Hour

// Retention of the bucket kinds.
const (
	MinuteTTL  = 3 * 24 * time.Hour
	QuarterTTL = 400 * 24 * time.Hour
	HourTTL    = 400 * 24 * time.Hour
	DayTTL     = 800 * 24 * time.Hour
	TotalTTL   = 400 * 24 * time.Hour
)

// LatencyBounds are the upper bounds, in milliseconds, of the latency
// histogram buckets; above the last is the overflow bucket "inf".
var LatencyBounds = []int64{5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}

const (
	keyPrefix    = "herald:{usage}:"
	seenPrefix   = keyPrefix + "seen:"
	minuteLayout = "200601021504"
	hourLayout   = "2006010215"
	dayLayout    = "20060102"
)

// Kind is a bucket size.
type Kind string

// Bucket kinds, named by their key prefix.
const (
	Minute  Kind = "m"
	Quarter Kind = "q"
	Hour    Kind = "h"
	Day     Kind = "d"
)

// SeenKey is the key marking a record as folded.
func SeenKey(recordID string) string { return seenPrefix + recordID }

// BucketKey is the key of the bucket of kind k holding t.
func BucketKey(k Kind, t time.Time) string {
	t = t.UTC()
	switch k {
	case Minute:
		return keyPrefix + "m:" + t.Format(minuteLayout)
	case Quarter:
		return keyPrefix + "q:" + t.Truncate(15*time.Minute).Format(minuteLayout)
	case Hour:
		return keyPrefix + "h:" + t.Format(hourLayout)
	default:
		return keyPrefix + "d:" + t.Format(dayLayout)
	}
}

// LatencyKey is the key of the latency histogram of kind k (Minute, Hour or
// Day) holding t.
func LatencyKey(k Kind, t time.Time) string {
	b := BucketKey(k, t)
	return keyPrefix + "l" + strings.TrimPrefix(b, keyPrefix)
}

// TotalsKey is the key of the quota totals of t's UTC day.
func TotalsKey(t time.Time) string { return keyPrefix + "t:" + t.UTC().Format(dayLayout) }

// HourKey is the key of the hash holding the counters of t's UTC hour.
func HourKey(t time.Time) string { return BucketKey(Hour, t) }

var fieldEscaper = strings.NewReplacer("%", "%25", "|", "%7C")
var fieldUnescaper = strings.NewReplacer("%25", "%", "%7C", "|")

// Esc escapes one part of a field.
func Esc(s string) string { return fieldEscaper.Replace(s) }

// Dims are the dimensions of a stored counter.
type Dims struct {
	Tenant, Application, Producer, EventType, Channel string
	Metric                                            meteringv1.UsageMetric
}

// Tail is the part of a bucket field after "c|" or "b|".
func (d Dims) Tail() string {
	return Esc(d.Tenant) + "|" + Esc(d.Application) + "|" + Esc(d.Producer) + "|" + Esc(d.EventType) + "|" +
		Esc(d.Channel) + "|" + strconv.FormatInt(int64(d.Metric), 10)
}

// latencyTail is the part of a latency field before "|<le>".
func (d Dims) latencyTail() string {
	return Esc(d.Tenant) + "|" + Esc(d.Application) + "|" + Esc(d.Producer) + "|" + Esc(d.EventType) + "|" + Esc(d.Channel)
}

// ParseBucketField reads a bucket field: whether it counts events ('c') or
// bytes ('b'), and its dimensions. Legacy hour fields
// ("<application>|<event type>|<metric>|<channel>") read as events.
func ParseBucketField(f string) (kind byte, d Dims, ok bool) {
	parts := strings.Split(f, "|")
	switch {
	case len(parts) == 7 && (parts[0] == "c" || parts[0] == "b"):
		m, err := strconv.ParseInt(parts[6], 10, 32)
		if err != nil {
			return 0, Dims{}, false
		}
		return parts[0][0], Dims{
			Tenant: fieldUnescaper.Replace(parts[1]), Application: fieldUnescaper.Replace(parts[2]),
			Producer: fieldUnescaper.Replace(parts[3]), EventType: fieldUnescaper.Replace(parts[4]),
			Channel: fieldUnescaper.Replace(parts[5]), Metric: meteringv1.UsageMetric(m),
		}, true
	case len(parts) == 4:
		k, ok := ParseField(f)
		if !ok {
			return 0, Dims{}, false
		}
		return 'c', Dims{Application: k.ApplicationID, EventType: k.EventType, Metric: k.Metric, Channel: k.Channel}, true
	}
	return 0, Dims{}, false
}

// ParseLatencyField reads a latency field: its dimensions (metric
// DELIVERED) and bucket bound (0 for "inf").
func ParseLatencyField(f string) (Dims, int64, bool) {
	parts := strings.Split(f, "|")
	if len(parts) != 6 {
		return Dims{}, 0, false
	}
	var le int64
	if parts[5] != "inf" {
		n, err := strconv.ParseInt(parts[5], 10, 64)
		if err != nil || n <= 0 {
			return Dims{}, 0, false
		}
		le = n
	}
	return Dims{
		Tenant: fieldUnescaper.Replace(parts[0]), Application: fieldUnescaper.Replace(parts[1]),
		Producer: fieldUnescaper.Replace(parts[2]), EventType: fieldUnescaper.Replace(parts[3]),
		Channel: fieldUnescaper.Replace(parts[4]), Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED,
	}, le, true
}

// latencyBound is the histogram bound (as its field part) of ms.
func latencyBound(ms int64) string {
	for _, b := range LatencyBounds {
		if ms <= b {
			return strconv.FormatInt(b, 10)
		}
	}
	return "inf"
}

// Field is the legacy (pre-v2) hour field of a counter.
func Field(k report.Key) string {
	return fieldEscaper.Replace(k.ApplicationID) + "|" + fieldEscaper.Replace(k.EventType) + "|" +
		strconv.FormatInt(int64(k.Metric), 10) + "|" + fieldEscaper.Replace(k.Channel)
}

// ParseField is the inverse of Field.
func ParseField(f string) (report.Key, bool) {
	parts := strings.Split(f, "|")
	if len(parts) != 4 {
		return report.Key{}, false
	}
	m, err := strconv.ParseInt(parts[2], 10, 32)
	if err != nil {
		return report.Key{}, false
	}
	return report.Key{
		ApplicationID: fieldUnescaper.Replace(parts[0]),
		EventType:     fieldUnescaper.Replace(parts[1]),
		Metric:        meteringv1.UsageMetric(m),
		Channel:       fieldUnescaper.Replace(parts[3]),
	}, true
}

// foldScript folds a batch of records exactly once and removes their
// entries from the stream, atomically: for each record it sets the record's
// seen key if absent and only then adds it to its group's sums; then it
// increments each distinct field of the minute, quarter-hour, hour and day
// buckets, the quota totals and the latency histograms once, refreshes
// those keys' expiry, and acknowledges and deletes the entries. A crash at
// any point did all of it or none of it; a retry after a lost reply, or a
// takeover by another consumer, finds the ids seen and only acknowledges.
//
//	KEYS: stream, then one seen key per record
//	ARGV: group, seen TTL (s), entry count E, E entry ids,
//	      group count G, G x (bucket tail, minute stamp YYYYMMDDHHmm,
//	      escaped application, escaped tenant, metric, latency tail or ""),
//	      then per record: group index, quantity, bytes, latency bound or ""
//
// It returns the number of records counted.
var foldScript = redis.NewScript(`
local P = 'herald:{usage}:'
local i = 3
local ne = tonumber(ARGV[i]); i = i + 1
local entries = {}
for j = 1, ne do entries[j] = ARGV[i]; i = i + 1 end
local ng = tonumber(ARGV[i]); i = i + 1
local groups = {}
for g = 1, ng do
  groups[g] = {ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], 0, 0, {}}
  i = i + 6
end
local counted = 0
for r = 2, #KEYS do
  local g = groups[tonumber(ARGV[i])]
  local q, b, lat = tonumber(ARGV[i+1]), tonumber(ARGV[i+2]), ARGV[i+3]
  i = i + 4
  if redis.call('SET', KEYS[r], '1', 'NX', 'EX', ARGV[2]) then
    counted = counted + 1
    g[7] = g[7] + q
    g[8] = g[8] + b
    if lat ~= '' then g[9][lat] = (g[9][lat] or 0) + q end
  end
end
local sums, ttls = {}, {}
local function add(key, ttl, field, n)
  if n == 0 then return end
  local h = sums[key]
  if not h then h = {}; sums[key] = h; ttls[key] = ttl end
  h[field] = (h[field] or 0) + n
end
for _, g in ipairs(groups) do
  local tail, minute, app, tenant, metric, ltail = g[1], g[2], g[3], g[4], g[5], g[6]
  local c, b = g[7], g[8]
  if c > 0 or b > 0 then
    local hour, day = string.sub(minute, 1, 10), string.sub(minute, 1, 8)
    local quarter = hour .. string.format('%02d', math.floor(tonumber(string.sub(minute, 11, 12)) / 15) * 15)
    for _, k in ipairs({{'m:' .. minute, 259200}, {'q:' .. quarter, 34560000}, {'h:' .. hour, 34560000}, {'d:' .. day, 69120000}}) do
      add(P .. k[1], k[2], 'c|' .. tail, c)
      add(P .. k[1], k[2], 'b|' .. tail, b)
    end
    add(P .. 't:' .. day, 34560000, 'a|' .. app .. '|' .. metric, c)
    if tenant ~= '' then add(P .. 't:' .. day, 34560000, 't|' .. tenant .. '|' .. metric, c) end
    if ltail ~= '' then
      for le, n in pairs(g[9]) do
        add(P .. 'lm:' .. minute, 259200, ltail .. '|' .. le, n)
        add(P .. 'lh:' .. hour, 34560000, ltail .. '|' .. le, n)
        add(P .. 'ld:' .. day, 69120000, ltail .. '|' .. le, n)
      end
    end
  end
end
for key, h in pairs(sums) do
  for field, n in pairs(h) do
    redis.call('HINCRBY', key, field, string.format('%.0f', n))
  end
  redis.call('EXPIRE', key, ttls[key])
end
if ne > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
  redis.call('XDEL', KEYS[1], unpack(entries))
end
return counted
`)

// Store reads and writes metering's keys.
type Store struct {
	rdb redis.UniversalClient
	// SeenTTL is how long folded record ids are remembered; default
	// SeenTTL.
	SeenTTL time.Duration
	// MaxRecordsPerScript bounds the records one fold script call handles,
	// and so how long it holds Redis; an entry is never split, so one with
	// more records gets a call of its own. Default 4096.
	MaxRecordsPerScript int
}

// New returns a Store over rdb.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Redis is the client the store uses.
func (s *Store) Redis() redis.UniversalClient { return s.rdb }

// EnsureGroup creates the consumer group (and the stream) if missing, from
// the start of the stream so that nothing appended before metering first ran
// is lost.
func (s *Store) EnsureGroup(ctx context.Context) error {
	err := s.rdb.XGroupCreateMkStream(ctx, usage.StreamKey, Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group %s on %s: %w", Group, usage.StreamKey, err)
	}
	return nil
}

// IsNoGroup reports whether err says the group (or the stream) is gone,
// e.g. after Redis lost its data.
func IsNoGroup(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "NOGROUP")
}

// Read reads entries for consumer. id "0" re-reads the consumer's own
// pending entries (without blocking when block < 0); ">" reads new ones,
// blocking up to block. A timeout returns no entries and no error.
func (s *Store) Read(ctx context.Context, consumer, id string, count int64, block time.Duration) ([]redis.XMessage, error) {
	res, err := s.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: Group, Consumer: consumer, Streams: []string{usage.StreamKey, id}, Count: count, Block: block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s as %s: %w", usage.StreamKey, consumer, err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	return res[0].Messages, nil
}

// AutoClaim moves up to count entries pending for longer than minIdle (read
// by consumers that died before folding them) to consumer, scanning from
// start. It returns them and where the next scan starts ("0-0" when done).
func (s *Store) AutoClaim(ctx context.Context, consumer string, minIdle time.Duration, start string, count int64) ([]redis.XMessage, string, error) {
	msgs, next, err := s.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: usage.StreamKey, Group: Group, Consumer: consumer, MinIdle: minIdle, Start: start, Count: count,
	}).Result()
	if err != nil {
		return nil, "", fmt.Errorf("autoclaim %s: %w", usage.StreamKey, err)
	}
	return msgs, next, nil
}

// Consumer describes a consumer of the group.
type Consumer struct {
	Name    string
	Pending int64
	Idle    time.Duration
}

// Consumers lists the group's consumers.
func (s *Store) Consumers(ctx context.Context) ([]Consumer, error) {
	infos, err := s.rdb.XInfoConsumers(ctx, usage.StreamKey, Group).Result()
	if err != nil {
		return nil, fmt.Errorf("list consumers of %s: %w", Group, err)
	}
	out := make([]Consumer, len(infos))
	for i, c := range infos {
		out[i] = Consumer{Name: c.Name, Pending: c.Pending, Idle: c.Idle}
	}
	return out, nil
}

// DeleteConsumer removes a consumer that holds no pending entries; it
// leaves one that does, so that its entries can still be claimed.
func (s *Store) DeleteConsumer(ctx context.Context, name string) error {
	p, err := s.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: usage.StreamKey, Group: Group, Consumer: name, Start: "-", End: "+", Count: 1,
	}).Result()
	if err != nil {
		return fmt.Errorf("pending of %s: %w", name, err)
	}
	if len(p) > 0 {
		return nil
	}
	if err := s.rdb.XGroupDelConsumer(ctx, usage.StreamKey, Group, name).Err(); err != nil {
		return fmt.Errorf("delete consumer %s: %w", name, err)
	}
	return nil
}

// Skipped is an entry (or a record in it) that could not be folded and
// was dropped.
type Skipped struct {
	ID     string
	Reason error
}

// FoldResult counts what a Fold did.
type FoldResult struct {
	Counted    int       // records added to their buckets
	Duplicates int       // records whose id had been folded already
	Skipped    []Skipped // entries or records that are not valid, acknowledged and dropped
}

// Fold counts each record of msgs exactly once, then acknowledges and
// deletes the entries, in one round trip (one script call per up to
// MaxRecordsPerScript records, each atomic). Entries that hold no valid
// record are acknowledged and deleted without counting. Fold is safe to
// repeat after an error: records already counted are only acknowledged.
func (s *Store) Fold(ctx context.Context, msgs []redis.XMessage) (FoldResult, error) {
	var res FoldResult
	if len(msgs) == 0 {
		return res, nil
	}
	res, err := s.fold(ctx, msgs)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// Redis restarted (or flushed its scripts) since the last load.
		if lerr := foldScript.Load(ctx, s.rdb).Err(); lerr != nil {
			return FoldResult{}, fmt.Errorf("load fold script: %w", lerr)
		}
		res, err = s.fold(ctx, msgs)
	}
	return res, err
}

// call is the arguments of one fold script call.
type call struct {
	entries []string
	keys    []string // stream, seen keys
	groups  map[groupKey]int
	gargs   []any
	rargs   []any
}

type groupKey struct {
	tail, minute string
}

func newCall() *call {
	return &call{keys: []string{usage.StreamKey}, groups: map[groupKey]int{}}
}

func (c *call) add(seen string, rec *meteringv1.UsageRecord, at time.Time) {
	d := Dims{Tenant: rec.Tenant, Application: rec.ApplicationId, Producer: rec.ProducerApplicationId,
		EventType: rec.EventType, Channel: rec.Channel, Metric: rec.Metric}
	gk := groupKey{tail: d.Tail(), minute: at.UTC().Format(minuteLayout)}
	g, ok := c.groups[gk]
	latency := rec.Metric == meteringv1.UsageMetric_USAGE_METRIC_DELIVERED && (rec.LatencyMs > 0 || rec.EventId != "")
	if !ok {
		g = len(c.groups) + 1
		c.groups[gk] = g
		ltail := ""
		if latency {
			ltail = d.latencyTail()
		}
		c.gargs = append(c.gargs, gk.tail, gk.minute, Esc(d.Application), Esc(d.Tenant), int64(d.Metric), ltail)
	}
	lat := ""
	if latency {
		lat = latencyBound(max(rec.LatencyMs, 0))
	}
	c.keys = append(c.keys, seen)
	c.rargs = append(c.rargs, g, rec.Quantity, max(rec.Bytes, 0), lat)
}

func (c *call) args(ttl int64) []any {
	out := make([]any, 0, 4+len(c.entries)+len(c.gargs)+len(c.rargs))
	out = append(out, Group, ttl, len(c.entries))
	for _, e := range c.entries {
		out = append(out, e)
	}
	out = append(out, len(c.groups))
	out = append(out, c.gargs...)
	return append(out, c.rargs...)
}

func (s *Store) fold(ctx context.Context, msgs []redis.XMessage) (FoldResult, error) {
	var res FoldResult
	ttl := s.SeenTTL
	if ttl <= 0 {
		ttl = SeenTTL
	}
	limit := s.MaxRecordsPerScript
	if limit <= 0 {
		limit = 4096
	}
	var calls []*call
	cur := newCall()
	for _, m := range msgs {
		recs, skipped, err := decodeEntry(m)
		if err != nil {
			res.Skipped = append(res.Skipped, Skipped{ID: m.ID, Reason: err})
		}
		res.Skipped = append(res.Skipped, skipped...)
		if len(cur.keys) > 1 && len(cur.keys)-1+len(recs) > limit {
			calls = append(calls, cur)
			cur = newCall()
		}
		cur.entries = append(cur.entries, m.ID)
		for i, rec := range recs {
			if rec == nil {
				continue
			}
			seen := SeenKey(rec.Id)
			if rec.Id == "" {
				// No id breaks the producer's contract; the entry id still
				// makes redelivery of this entry idempotent.
				seen = SeenKey("#" + m.ID + "/" + strconv.Itoa(i))
			}
			cur.add(seen, rec, recordTime(rec, m.ID))
		}
	}
	calls = append(calls, cur)
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, 0, len(calls))
	records := 0
	for _, c := range calls {
		if len(c.entries) == 0 {
			continue
		}
		records += len(c.keys) - 1
		cmds = append(cmds, foldScript.EvalSha(ctx, pipe, c.keys, c.args(int64(ttl/time.Second))...))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return FoldResult{}, fmt.Errorf("fold %d usage entries: %w", len(msgs), err)
	}
	for _, c := range cmds {
		n, _ := c.Int64()
		res.Counted += int(n)
	}
	res.Duplicates = records - res.Counted
	return res, nil
}

// decodeEntry returns the records of an entry: one (field "r") or a batch
// (field "rs"). Invalid records of a batch are nil in the answer and listed
// as skipped; an entry that holds nothing decodable is an error.
func decodeEntry(m redis.XMessage) ([]*meteringv1.UsageRecord, []Skipped, error) {
	if v, ok := m.Values[usage.FieldBatch]; ok {
		s, ok := v.(string)
		if !ok {
			return nil, nil, fmt.Errorf("field %q is %T, not bytes", usage.FieldBatch, v)
		}
		batch := new(meteringv1.UsageRecordBatch)
		if err := proto.Unmarshal([]byte(s), batch); err != nil {
			return nil, nil, fmt.Errorf("decode usage record batch: %w", err)
		}
		var skipped []Skipped
		for i, rec := range batch.Records {
			if err := check(rec); err != nil {
				skipped = append(skipped, Skipped{ID: m.ID + "/" + strconv.Itoa(i), Reason: err})
				batch.Records[i] = nil
			}
		}
		return batch.Records, skipped, nil
	}
	rec, err := decode(m)
	if err != nil {
		return nil, nil, err
	}
	return []*meteringv1.UsageRecord{rec}, nil, nil
}

func decode(m redis.XMessage) (*meteringv1.UsageRecord, error) {
	v, ok := m.Values[usage.FieldRecord]
	if !ok {
		return nil, fmt.Errorf("no field %q or %q (the entry may have been deleted)", usage.FieldRecord, usage.FieldBatch)
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("field %q is %T, not bytes", usage.FieldRecord, v)
	}
	rec := new(meteringv1.UsageRecord)
	if err := proto.Unmarshal([]byte(s), rec); err != nil {
		return nil, fmt.Errorf("decode usage record: %w", err)
	}
	return rec, check(rec)
}

func check(rec *meteringv1.UsageRecord) error {
	if rec.Quantity <= 0 {
		return fmt.Errorf("record %q: quantity %d is not positive", rec.Id, rec.Quantity)
	}
	if rec.Bytes < 0 {
		return fmt.Errorf("record %q: bytes %d is negative", rec.Id, rec.Bytes)
	}
	if rec.Time != nil {
		if err := rec.Time.CheckValid(); err != nil {
			return fmt.Errorf("record %q: %w", rec.Id, err)
		}
	}
	return nil
}

// recordTime is when the record's usage happened; a record without a time
// counts at the time it was appended, which its entry id carries.
func recordTime(rec *meteringv1.UsageRecord, entryID string) time.Time {
	if rec.Time != nil {
		return rec.Time.AsTime()
	}
	ms, _, _ := strings.Cut(entryID, "-")
	n, _ := strconv.ParseInt(ms, 10, 64)
	return time.UnixMilli(n)
}

// Hours reads the hour buckets starting at the given times, in one round
// trip, as legacy counters (events per application, event type, metric and
// channel, summed over tenants and producers). Fields that do not parse are
// ignored.
func (s *Store) Hours(ctx context.Context, starts []time.Time) ([]report.Hour, error) {
	return s.Legacy(ctx, Hour, starts, nil)
}

// Legacy reads buckets of kind k as legacy counters, keeping only the cells
// keep accepts (nil: all).
func (s *Store) Legacy(ctx context.Context, k Kind, starts []time.Time, keep func(Dims) bool) ([]report.Hour, error) {
	buckets, err := s.Buckets(ctx, k, starts)
	if err != nil {
		return nil, err
	}
	hours := make([]report.Hour, len(buckets))
	for i, b := range buckets {
		counts := make(map[report.Key]int64, len(b.Cells))
		for d, v := range b.Cells {
			if keep != nil && !keep(d) {
				continue
			}
			counts[report.Key{ApplicationID: d.Application, EventType: d.EventType, Metric: d.Metric, Channel: d.Channel}] += v.Events
		}
		hours[i] = report.Hour{Start: b.Start, Counts: counts}
	}
	return hours, nil
}

// Sums are the events and bytes of one cell.
type Sums struct{ Events, Bytes int64 }

// Bucket is one bucket read back.
type Bucket struct {
	Kind  Kind
	Start time.Time
	Cells map[Dims]Sums
}

// Buckets reads the buckets of kind k starting at the given times, in one
// round trip. Fields that do not parse are ignored.
func (s *Store) Buckets(ctx context.Context, k Kind, starts []time.Time) ([]Bucket, error) {
	cmds, err := s.hgetall(ctx, starts, func(t time.Time) string { return BucketKey(k, t) })
	if err != nil {
		return nil, err
	}
	out := make([]Bucket, len(starts))
	for i, c := range cmds {
		cells := map[Dims]Sums{}
		for f, v := range c.Val() {
			kind, d, ok := ParseBucketField(f)
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				continue
			}
			sum := cells[d]
			if kind == 'c' {
				sum.Events += n
			} else {
				sum.Bytes += n
			}
			cells[d] = sum
		}
		out[i] = Bucket{Kind: k, Start: starts[i], Cells: cells}
	}
	return out, nil
}

// Histogram counts delivered events per latency bound (0: overflow).
type Histogram map[int64]int64

// Latencies reads the latency histograms of kind k (Minute, Hour or Day)
// starting at the given times, in one round trip.
func (s *Store) Latencies(ctx context.Context, k Kind, starts []time.Time) ([]map[Dims]Histogram, error) {
	cmds, err := s.hgetall(ctx, starts, func(t time.Time) string { return LatencyKey(k, t) })
	if err != nil {
		return nil, err
	}
	out := make([]map[Dims]Histogram, len(starts))
	for i, c := range cmds {
		hs := map[Dims]Histogram{}
		for f, v := range c.Val() {
			d, le, ok := ParseLatencyField(f)
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				continue
			}
			h := hs[d]
			if h == nil {
				h = Histogram{}
				hs[d] = h
			}
			h[le] += n
		}
		out[i] = hs
	}
	return out, nil
}

func (s *Store) hgetall(ctx context.Context, starts []time.Time, key func(time.Time) string) ([]*redis.MapStringStringCmd, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(starts))
	for i, t := range starts {
		cmds[i] = pipe.HGetAll(ctx, key(t))
	}
	if len(starts) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("read %d usage buckets: %w", len(starts), err)
		}
	}
	return cmds, nil
}
