// Package store is metering's Redis layout: the consumer group on the usage
// stream, the exactly-once fold of records into time buckets, the rollup of
// minutes into coarser buckets, and the reads of those buckets.
//
// Keys (all under the {usage} hash tag, so that the fold script touches one
// shard of a cluster; the scripts build the keys they write from the
// record times the caller passes, all in that slot):
//
//	herald:{usage}:log                stream of usage entries (see platform/usage): field "r" one
//	                                  UsageRecord, or "rs" a UsageRecordBatch; group "metering"
//	herald:{usage}:s:<YYYYMMDD>:<sh>  set of the ids of the records folded on that UTC day (the
//	                                  fold's clock) whose usage.SeenShard is sh (hex, 0 to f);
//	                                  expires SeenTTL after the end of the day
//	herald:{usage}:seen-sets-since    unix time the seen sets were first used on a Redis the
//	                                  previous layout had folded into (else 0): for SeenTTL after
//	                                  it, the fold also honours that layout's per-record keys
//	herald:{usage}:seen:<record id>   (previous layout, read only) "1": the record was folded
//	herald:{usage}:p:<YYYYMMDDHHmm>   hash per UTC minute of the counts folded and not yet rolled
//	                                  up: "c|…" and "b|…" fields as in the buckets, "l|<latency
//	                                  field>" as in the latency histograms
//	herald:{usage}:pm                 set of the minutes (YYYYMMDDHHmm) with a pending hash
//	herald:{usage}:m:<YYYYMMDDHHmm>   hash per UTC minute (kept 3 days)
//	herald:{usage}:q:<YYYYMMDDHHmm>   hash per UTC quarter hour, mm in 00/15/30/45 (400 days)
//	herald:{usage}:h:<YYYYMMDDHH>     hash per UTC hour (400 days)
//	herald:{usage}:d:<YYYYMMDD>       hash per UTC day (800 days)
//	    c|<tenant>|<application>|<producer>|<event type>|<channel>|<metric number> -> events
//	    b|<same parts>                                                          -> bytes
//	    (hour buckets written before this layout also hold legacy fields
//	    "<application>|<event type>|<metric number>|<channel>" -> events, which reads still count)
//	herald:{usage}:t:<YYYYMMDD>       hash per UTC day, quota totals (400 days), written by the fold:
//	    a|<application>|<metric number> -> events, t|<tenant>|<metric number> -> events
//	herald:{usage}:lm:<YYYYMMDDHHmm>  latency histograms of DELIVERED records, per minute (3 days),
//	herald:{usage}:lh:<YYYYMMDDHH>    hour (400 days) and day (800 days):
//	herald:{usage}:ld:<YYYYMMDD>          <tenant>|<application>|<producer>|<event type>|<channel>|<le> -> events
//	                                  with <le> a bound of LatencyBounds in ms, or "inf"
//
// The fold script marks and counts a batch of records in one atomic step:
// their ids into today's seen sets, their counts into the pending hashes of
// their minutes (one HINCRBY per distinct field of the batch) and the quota
// totals. The rollup moves the pending counts of minutes that have ended
// into the minute, quarter-hour, hour and day buckets, a few hundred fields
// per atomic step, each field out of the pending hash in the step that adds
// it to the buckets. Every read of buckets adds the pending counts of the
// minutes they cover, in one snapshot (MULTI under WATCH of the pending
// minutes): a record counts in exactly one of the two places at any time,
// so the answers do not depend on how far the rollup has got.
//
// In a hash field, "%" and "|" inside a part are written as "%25" and "%7C".
// The time of a bucket is the record's time (when the usage happened), not
// when it was folded.
package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

// SeenTTL is the default of how long a folded record id is remembered
// after its last copy was folded (at least that, at most a day more: the
// seen sets are per day): a copy of a record appended later than that (a replay of events older than that,
// redelivered to the same place) would be counted again. Memory: one set
// member of about 70 bytes per record, so rate x TTL: 100 deliveries/s
// kept 8 days is 69 million members, about 5 GB; size it to the event
// log's retention (past which no replay can happen) and the delivery rate.
// Store.SeenTTL overrides it.
const SeenTTL = 8 * 24 * time.Hour

// Retention of the bucket kinds.
const (
	MinuteTTL  = 3 * 24 * time.Hour
	QuarterTTL = 400 * 24 * time.Hour
	HourTTL    = 400 * 24 * time.Hour
	DayTTL     = 800 * 24 * time.Hour
	TotalTTL   = 400 * 24 * time.Hour
	// PendingTTL only bounds a pending hash nobody rolls up: the rollup
	// empties it (and so deletes it) minutes after its minute.
	PendingTTL = 800 * 24 * time.Hour
)

// LatencyBounds are the upper bounds, in milliseconds, of the latency
// histogram buckets; above the last is the overflow bucket "inf".
var LatencyBounds = []int64{5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000}

const (
	keyPrefix  = "herald:{usage}:"
	seenPrefix = keyPrefix + "seen:"
	// pendingSetKey is the set of minutes with a pending hash.
	pendingSetKey = keyPrefix + "pm"
	minuteLayout  = "200601021504"
	hourLayout    = "2006010215"
	dayLayout     = "20060102"
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

// SeenKey is the key by which the previous layout marked a record as folded
// (the fold still honours those keys for a while, see foldScript).
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
// entries from the stream, atomically. The caller sums the records per
// field (pending minute hash or quota totals, see call) as if none had
// been counted yet; the script looks the records' ids up in the seen sets
// of the days a copy could have been folded on (and, for SeenTTL after the
// sets were first used on a Redis the previous layout had folded into, in
// that layout's per-record seen keys), adds every id to today's seen sets
// (so an id is remembered SeenTTL after its last copy), takes the records
// found out of the sums, increments each field
// once by what is left, and acknowledges and deletes the entries. A crash
// at any point did all of it or none of it; a retry after a lost reply, or
// a takeover by another consumer, finds the ids seen and only
// acknowledges. The quarter-hour, hour and day buckets and the minute
// bucket itself get the pending counts from rollupScript.
//
//	KEYS: stream
//	ARGV: group, now (unix s), seen TTL (s), entry count E, E entry ids,
//	      day count D, D day stamps YYYYMMDD (today first), expiry of today's
//	      seen sets (unix s), minute count M, M minute stamps (pending
//	      minutes written), key count K, K x (key, TTL s), field count F,
//	      F x (key index, field, sum), then for each of the SeenShards
//	      shards: record count N, N ids, N x "f1 f2 f3 f4 f5 q b" (the
//	      indexes of the fields the record adds its quantity q to, 0: none,
//	      and of the one it adds its bytes b to)
//
// It returns the number of records counted. An id appears at most once per
// call (the caller drops repeats).
var foldScript = redis.NewScript(`
local P = 'herald:{usage}:'
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
local ne = tonumber(ARGV[i]); i = i + 1
local entries = {}
for j = 1, ne do entries[j] = ARGV[i]; i = i + 1 end
local nd = tonumber(ARGV[i]); i = i + 1
local days = {}
for j = 1, nd do days[j] = ARGV[i]; i = i + 1 end
local expireat = ARGV[i]; i = i + 1
local nm = tonumber(ARGV[i]); i = i + 1
local minutes = {}
for j = 1, nm do minutes[j] = ARGV[i]; i = i + 1 end
local nk = tonumber(ARGV[i]); i = i + 1
local keys, kttl = {}, {}
for j = 1, nk do keys[j] = ARGV[i]; kttl[j] = ARGV[i+1]; i = i + 2 end
local nf = tonumber(ARGV[i]); i = i + 1
local fbase = i
i = i + 3 * nf
-- The per-record seen keys of the previous layout can exist only where it
-- folded: if its day buckets of the last TTL exist when the sets are first
-- used, they are checked too, for TTL.
local since = redis.call('GET', P .. 'seen-sets-since')
if not since then
  since = 0
  for _, day in ipairs(days) do
    if redis.call('EXISTS', P .. 'd:' .. day) == 1 then since = now end
  end
  redis.call('SET', P .. 'seen-sets-since', since)
end
local legacy = now - tonumber(since) < ttl
local CH = 1000
local total, dups = 0, {}
for s = 0, 15 do
  local n = tonumber(ARGV[i]); i = i + 1
  if n > 0 then
    total = total + n
    local a = i
    i = i + 2 * n
    -- ids are ARGV[a .. a+n-1], their records' fields ARGV[a+n .. a+2n-1]
    local isdup = {}
    local sx = string.format('%x', s)
    for _, day in ipairs(days) do
      local key = P .. 's:' .. day .. ':' .. sx
      if redis.call('EXISTS', key) == 1 then
        for c = 0, n - 1, CH do
          local found = redis.call('SMISMEMBER', key, unpack(ARGV, a + c, a + math.min(c + CH, n) - 1))
          for k = 1, #found do
            local r = c + k - 1
            if found[k] == 1 and not isdup[r] then
              isdup[r] = true
              dups[#dups + 1] = a + n + r
            end
          end
        end
      end
    end
    if legacy then
      local ks, rs = {}, {}
      for r = 0, n - 1 do
        if not isdup[r] then
          ks[#ks + 1] = P .. 'seen:' .. ARGV[a + r]
          rs[#rs + 1] = r
        end
      end
      for c = 1, #ks, CH do
        local e = math.min(c + CH - 1, #ks)
        if redis.call('EXISTS', unpack(ks, c, e)) > 0 then
          for k = c, e do
            if redis.call('EXISTS', ks[k]) == 1 then dups[#dups + 1] = a + n + rs[k] end
          end
        end
      end
    end
    -- Every id into today's set: one seen before stays seen.
    local key = P .. 's:' .. days[1] .. ':' .. sx
    for c = 0, n - 1, CH do
      redis.call('SADD', key, unpack(ARGV, a + c, a + math.min(c + CH, n) - 1))
    end
    redis.call('EXPIREAT', key, expireat)
  end
end
local adj = {}
for _, a in ipairs(dups) do
  local f1, f2, f3, f4, f5, q, b = string.match(ARGV[a], '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  q = tonumber(q)
  for _, f in ipairs({f1, f2, f3, f4}) do
    f = tonumber(f)
    if f > 0 then adj[f] = (adj[f] or 0) + q end
  end
  f5 = tonumber(f5)
  if f5 > 0 then adj[f5] = (adj[f5] or 0) + tonumber(b) end
end
local used = {}
for f = 1, nf do
  local at = fbase + 3 * (f - 1)
  local k, n = tonumber(ARGV[at]), ARGV[at + 2]
  if adj[f] then n = string.format('%.0f', tonumber(n) - adj[f]) end
  if n ~= '0' then
    redis.call('HINCRBY', keys[k], ARGV[at + 1], n)
    used[k] = true
  end
end
for k in pairs(used) do redis.call('EXPIRE', keys[k], kttl[k]) end
if #dups < total and nm > 0 then redis.call('SADD', P .. 'pm', unpack(minutes)) end
if ne > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
  redis.call('XDEL', KEYS[1], unpack(entries))
end
return total - #dups
`)

// rollupScript moves the fields of the pending hash of minute ARGV[1]
// (YYYYMMDDHHmm) that one HSCAN step from cursor ARGV[2] (COUNT ARGV[3])
// returns into the minute, quarter-hour, hour and day buckets ("c|" and
// "b|" fields) or latency histograms ("l|" fields, into the minute, hour
// and day histograms without the prefix), deleting them from the pending
// hash in the same step: a field is rolled up exactly once, whoever runs
// the script and however often, and a crash leaves what was not moved
// pending. (A scan may return a field again or miss one added meanwhile: a
// field moved is gone, one missed waits for the next pass.) When the
// pending hash is empty, the minute leaves the set of pending minutes. It
// returns the next cursor and the number of fields moved.
var rollupScript = redis.NewScript(`
local P = 'herald:{usage}:'
local m = ARGV[1]
local pk = P .. 'p:' .. m
local res = redis.call('HSCAN', pk, ARGV[2], 'COUNT', ARGV[3])
local fv = res[2]
if #fv > 0 then
  local hour, day = string.sub(m, 1, 10), string.sub(m, 1, 8)
  local quarter = hour .. string.format('%02d', math.floor(tonumber(string.sub(m, 11, 12)) / 15) * 15)
  local bk = {{P .. 'm:' .. m, 259200}, {P .. 'q:' .. quarter, 34560000}, {P .. 'h:' .. hour, 34560000}, {P .. 'd:' .. day, 69120000}}
  local lk = {{P .. 'lm:' .. m, 259200}, {P .. 'lh:' .. hour, 34560000}, {P .. 'ld:' .. day, 69120000}}
  local fields = {}
  local ub, ul = false, false
  for j = 1, #fv, 2 do
    local f, v = fv[j], fv[j+1]
    if string.byte(f, 1) == 108 then
      local lf = string.sub(f, 3)
      for _, k in ipairs(lk) do redis.call('HINCRBY', k[1], lf, v) end
      ul = true
    else
      for _, k in ipairs(bk) do redis.call('HINCRBY', k[1], f, v) end
      ub = true
    end
    fields[#fields + 1] = f
  end
  redis.call('HDEL', pk, unpack(fields))
  if ub then for _, k in ipairs(bk) do redis.call('EXPIRE', k[1], k[2]) end end
  if ul then for _, k in ipairs(lk) do redis.call('EXPIRE', k[1], k[2]) end end
end
if redis.call('EXISTS', pk) == 0 then redis.call('SREM', P .. 'pm', m) end
return {res[1], #fv / 2}
`)

// Store reads and writes metering's keys.
type Store struct {
	rdb redis.UniversalClient
	// SeenTTL is how long folded record ids are remembered; default
	// SeenTTL.
	SeenTTL time.Duration
	// MaxRecordsPerScript bounds the records one fold script call handles,
	// and so how long it holds Redis; an entry is never split, so one with
	// more records gets a call of its own. Default 10,000 (some 70 ms of
	// Redis): about as many as one round trip of the fold carries (2 MiB of
	// entries), so that it is one call, whose records share more counters.
	MaxRecordsPerScript int
	// Now is the fold's clock (which day's seen sets a record goes to);
	// default time.Now.
	Now func() time.Time
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

// call is the arguments of one fold script call: the records' sums per
// field, as if none had been counted yet, and per record the fields it
// adds to, for the script to take the duplicates out.
type call struct {
	entries []string
	records int // records passed, repeats within the call included
	ids     map[string]struct{}
	minutes []string
	keys    []string
	keyIdx  map[string]int
	fields  []field
	fieldIx map[fieldKey]int
	cells   map[cellKey]*cell
	shards  [usage.SeenShards][]any // per seen shard: id, "f1 f2 f3 f4 f5 q b"
	buf     []byte
}

type field struct {
	key  int // 1-based index into keys
	name string
	sum  int64
}

type fieldKey struct {
	key  int
	name string
}

func newCall() *call {
	return &call{ids: map[string]struct{}{}, keyIdx: map[string]int{}, fieldIx: map[fieldKey]int{}, cells: map[cellKey]*cell{}}
}

// key is the 1-based index of key k in the call.
func (c *call) key(k string, pending bool) int {
	if i, ok := c.keyIdx[k]; ok {
		return i
	}
	c.keys = append(c.keys, k)
	c.keyIdx[k] = len(c.keys)
	if pending {
		c.minutes = append(c.minutes, strings.TrimPrefix(k, keyPrefix+"p:"))
	}
	return len(c.keys)
}

// newField adds field name of key k, which no other cell of the call has
// (the pending fields of a cell), and returns its 1-based index.
func (c *call) newField(k int, name string) int {
	c.fields = append(c.fields, field{key: k, name: name})
	return len(c.fields)
}

// addTo adds n to field name of key k and returns the field's 1-based index.
func (c *call) addTo(k int, name string, n int64) int {
	fk := fieldKey{k, name}
	i, ok := c.fieldIx[fk]
	if !ok {
		c.fields = append(c.fields, field{key: k, name: name})
		i = len(c.fields)
		c.fieldIx[fk] = i
	}
	c.fields[i-1].sum += n
	return i
}

// cellKey is a counter's dimensions and minute within a call.
type cellKey struct {
	tenant, app, producer, typ, channel string
	metric                              meteringv1.UsageMetric
	minute                              int64 // unix time of the minute's start
}

// cell is what a call knows of a cellKey: its keys and field indexes.
type cell struct {
	pk, c, b, a, t int
	tail, ltail    string
	lat            [16]int // field index per latency bound (len(LatencyBounds)+1), 0: none yet
}

func (c *call) cell(rec *meteringv1.UsageRecord, at time.Time) *cell {
	minute := at.Truncate(time.Minute)
	ck := cellKey{rec.Tenant, rec.ApplicationId, rec.ProducerApplicationId, rec.EventType, rec.Channel, rec.Metric, minute.Unix()}
	if cl := c.cells[ck]; cl != nil {
		return cl
	}
	d := Dims{Tenant: rec.Tenant, Application: rec.ApplicationId, Producer: rec.ProducerApplicationId,
		EventType: rec.EventType, Channel: rec.Channel, Metric: rec.Metric}
	cl := &cell{tail: d.Tail(), ltail: d.latencyTail()}
	cl.pk = c.key(keyPrefix+"p:"+minute.UTC().Format(minuteLayout), true)
	tk := c.key(TotalsKey(minute), false)
	metric := strconv.FormatInt(int64(d.Metric), 10)
	cl.c = c.newField(cl.pk, "c|"+cl.tail)
	cl.a = c.addTo(tk, "a|"+Esc(d.Application)+"|"+metric, 0)
	if d.Tenant != "" {
		cl.t = c.addTo(tk, "t|"+Esc(d.Tenant)+"|"+metric, 0)
	}
	c.cells[ck] = cl
	return cl
}

func (c *call) add(id string, rec *meteringv1.UsageRecord, at time.Time) {
	c.records++
	n := len(c.ids)
	c.ids[id] = struct{}{}
	if len(c.ids) == n {
		return // a repeat within the call: counted at most once, as a duplicate
	}
	cl := c.cell(rec, at)
	q, b := rec.Quantity, max(rec.Bytes, 0)
	f := [5]int{cl.c, cl.a, cl.t, 0, 0}
	if rec.Metric == meteringv1.UsageMetric_USAGE_METRIC_DELIVERED && (rec.LatencyMs > 0 || rec.EventId != "") {
		ms := max(rec.LatencyMs, 0)
		bi := len(LatencyBounds)
		for i, bound := range LatencyBounds {
			if ms <= bound {
				bi = i
				break
			}
		}
		if cl.lat[bi] == 0 {
			cl.lat[bi] = c.newField(cl.pk, "l|"+cl.ltail+"|"+latencyBound(ms))
		}
		f[3] = cl.lat[bi]
	}
	if b > 0 {
		if cl.b == 0 {
			cl.b = c.newField(cl.pk, "b|"+cl.tail)
		}
		f[4] = cl.b
	}
	for _, i := range f[:4] {
		if i > 0 {
			c.fields[i-1].sum += q
		}
	}
	if f[4] > 0 {
		c.fields[f[4]-1].sum += b
	}
	buf := c.buf[:0]
	for _, i := range f {
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, ' ')
	}
	buf = strconv.AppendInt(buf, q, 10)
	buf = append(buf, ' ')
	buf = strconv.AppendInt(buf, b, 10)
	c.buf = buf
	sh := usage.SeenShard(id)
	c.shards[sh] = append(c.shards[sh], id, string(buf))
}

// seenDays are the day stamps whose seen sets a record folded at now may
// already be in, today first: the days from now-ttl to now.
func seenDays(now time.Time, ttl time.Duration) []string {
	day := now.UTC().Truncate(24 * time.Hour)
	oldest := now.Add(-ttl).UTC().Truncate(24 * time.Hour)
	var out []string
	for d := day; !d.Before(oldest); d = d.Add(-24 * time.Hour) {
		out = append(out, d.Format(dayLayout))
	}
	return out
}

func (c *call) args(now time.Time, ttl time.Duration, days []string) []any {
	n := 0
	for _, sh := range c.shards {
		n += len(sh) + 1
	}
	out := make([]any, 0, 10+len(c.entries)+len(days)+len(c.minutes)+2*len(c.keys)+3*len(c.fields)+n)
	out = append(out, Group, now.Unix(), int64(ttl/time.Second), len(c.entries))
	for _, e := range c.entries {
		out = append(out, e)
	}
	out = append(out, len(days))
	for _, d := range days {
		out = append(out, d)
	}
	// Today's sets live until the end of today plus the TTL, so that every
	// id in them is remembered at least the TTL.
	out = append(out, now.UTC().Truncate(24*time.Hour).Add(24*time.Hour+ttl).Unix())
	out = append(out, len(c.minutes))
	for _, m := range c.minutes {
		out = append(out, m)
	}
	out = append(out, len(c.keys))
	for _, k := range c.keys {
		ttl := int64(TotalTTL / time.Second)
		if strings.HasPrefix(k, keyPrefix+"p:") {
			ttl = int64(PendingTTL / time.Second)
		}
		out = append(out, k, ttl)
	}
	out = append(out, len(c.fields))
	for _, f := range c.fields {
		out = append(out, f.key, f.name, f.sum)
	}
	for _, sh := range c.shards {
		n := len(sh) / 2
		out = append(out, n)
		for i := range n {
			out = append(out, sh[2*i])
		}
		for i := range n {
			out = append(out, sh[2*i+1])
		}
	}
	return out
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Store) fold(ctx context.Context, msgs []redis.XMessage) (FoldResult, error) {
	var res FoldResult
	ttl := s.SeenTTL
	if ttl <= 0 {
		ttl = SeenTTL
	}
	limit := s.MaxRecordsPerScript
	if limit <= 0 {
		limit = 10000
	}
	var calls []*call
	cur := newCall()
	for _, m := range msgs {
		recs, skipped, err := decodeEntry(m)
		if err != nil {
			res.Skipped = append(res.Skipped, Skipped{ID: m.ID, Reason: err})
		}
		res.Skipped = append(res.Skipped, skipped...)
		if cur.records > 0 && cur.records+len(recs) > limit {
			calls = append(calls, cur)
			cur = newCall()
		}
		cur.entries = append(cur.entries, m.ID)
		for i, rec := range recs {
			if rec == nil {
				continue
			}
			id := rec.Id
			if id == "" {
				// No id breaks the producer's contract; the entry id still
				// makes redelivery of this entry idempotent.
				id = "#" + m.ID + "/" + strconv.Itoa(i)
			}
			cur.add(id, rec, recordTime(rec, m.ID))
		}
	}
	calls = append(calls, cur)
	now := s.now()
	days := seenDays(now, ttl)
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, 0, len(calls))
	records := 0
	for _, c := range calls {
		if len(c.entries) == 0 {
			continue
		}
		records += c.records
		cmds = append(cmds, foldScript.EvalSha(ctx, pipe, []string{usage.StreamKey}, c.args(now, ttl, days)...))
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

// Oldest is when the oldest entry still in the usage stream was appended
// (the fold deletes what it counted), or ok false when the stream is
// empty: records of times before that have all been folded, but for
// records appended late.
func (s *Store) Oldest(ctx context.Context) (at time.Time, ok bool, err error) {
	msgs, err := s.rdb.XRangeN(ctx, usage.StreamKey, "-", "+", 1).Result()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read the oldest usage entry: %w", err)
	}
	if len(msgs) == 0 {
		return time.Time{}, false, nil
	}
	ms, _, _ := strings.Cut(msgs[0].ID, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("usage entry id %q: %w", msgs[0].ID, err)
	}
	return time.UnixMilli(n), true, nil
}

// RollupChunk is how many pending fields one rollup step (an HSCAN COUNT) moves by
// default: about 4,000 HINCRBY, a few milliseconds of Redis.
const RollupChunk = 1000

// PendingMinutes lists the minutes that have pending counts, oldest first.
func (s *Store) PendingMinutes(ctx context.Context) ([]time.Time, error) {
	ms, err := s.rdb.SMembers(ctx, pendingSetKey).Result()
	if err != nil {
		return nil, fmt.Errorf("read pending minutes: %w", err)
	}
	out := make([]time.Time, 0, len(ms))
	for _, m := range ms {
		if t, err := time.Parse(minuteLayout, m); err == nil {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return out, nil
}

// Rollup moves the pending counts of every minute that starts before
// before into the minute, quarter-hour, hour and day buckets and latency
// histograms, chunk fields per script call (default RollupChunk). Each
// call is atomic and moves what it rolls up out of the pending hash, so
// rollups may run concurrently (two metering processes) and be cut off at
// any point: nothing is moved twice or lost. Reads add what is still
// pending, so a rollup changes no answer. With duty in (0, 1), it pauses
// after each step so as to hold Redis for about that fraction of its time:
// rolling up a busy minute is some 200,000 fields, seconds of Redis, which
// would otherwise hold up the fold for as long. It returns the fields
// moved.
func (s *Store) Rollup(ctx context.Context, before time.Time, chunk int, duty float64) (int, error) {
	if chunk <= 0 {
		chunk = RollupChunk
	}
	minutes, err := s.PendingMinutes(ctx)
	if err != nil {
		return 0, err
	}
	moved := 0
	for _, m := range minutes {
		if !m.Before(before.UTC().Truncate(time.Minute)) {
			break
		}
		// Scan the pending hash to its end, and again while fields were
		// moved (some may have been added behind the cursor meanwhile).
		for {
			cursor, pass := "0", 0
			for {
				began := time.Now()
				next, n, err := s.rollupOnce(ctx, m.Format(minuteLayout), cursor, chunk)
				if err != nil {
					return moved, err
				}
				if duty > 0 && duty < 1 {
					pause := time.NewTimer(time.Duration(float64(time.Since(began)) * (1 - duty) / duty))
					select {
					case <-ctx.Done():
						pause.Stop()
						return moved, ctx.Err()
					case <-pause.C:
					}
				}
				moved += n
				pass += n
				if cursor = next; cursor == "0" {
					break
				}
			}
			if pass == 0 {
				break
			}
		}
	}
	return moved, nil
}

func (s *Store) rollupOnce(ctx context.Context, minute, cursor string, chunk int) (next string, moved int, err error) {
	res, err := rollupScript.Run(ctx, s.rdb, []string{keyPrefix + "p:" + minute}, minute, cursor, chunk).Slice()
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("reply %v", res)
	}
	if err != nil {
		return "", 0, fmt.Errorf("roll up minute %s: %w", minute, err)
	}
	next, _ = res[0].(string)
	n, _ := res[1].(int64)
	return next, int(n), nil
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

// Buckets reads the buckets of kind k starting at the given times, the
// counts still pending for their minutes included, in one snapshot with
// respect to rollups. Fields that do not parse are ignored.
func (s *Store) Buckets(ctx context.Context, k Kind, starts []time.Time) ([]Bucket, error) {
	reads, err := s.read(ctx, k, starts, func(t time.Time) string { return BucketKey(k, t) })
	if err != nil {
		return nil, err
	}
	out := make([]Bucket, len(starts))
	for i, r := range reads {
		cells := map[Dims]Sums{}
		add := func(f, v string) {
			kind, d, ok := ParseBucketField(f)
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				return
			}
			sum := cells[d]
			if kind == 'c' {
				sum.Events += n
			} else {
				sum.Bytes += n
			}
			cells[d] = sum
		}
		for f, v := range r.bucket {
			add(f, v)
		}
		for _, p := range r.pending {
			for f, v := range p {
				if strings.HasPrefix(f, "c|") || strings.HasPrefix(f, "b|") {
					add(f, v)
				}
			}
		}
		out[i] = Bucket{Kind: k, Start: starts[i], Cells: cells}
	}
	return out, nil
}

// Histogram counts delivered events per latency bound (0: overflow).
type Histogram map[int64]int64

// Latencies reads the latency histograms of kind k (Minute, Hour or Day)
// starting at the given times, the counts still pending for their minutes
// included, in one snapshot with respect to rollups.
func (s *Store) Latencies(ctx context.Context, k Kind, starts []time.Time) ([]map[Dims]Histogram, error) {
	reads, err := s.read(ctx, k, starts, func(t time.Time) string { return LatencyKey(k, t) })
	if err != nil {
		return nil, err
	}
	out := make([]map[Dims]Histogram, len(starts))
	for i, r := range reads {
		hs := map[Dims]Histogram{}
		add := func(f, v string) {
			d, le, ok := ParseLatencyField(f)
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				return
			}
			h := hs[d]
			if h == nil {
				h = Histogram{}
				hs[d] = h
			}
			h[le] += n
		}
		for f, v := range r.bucket {
			add(f, v)
		}
		for _, p := range r.pending {
			for f, v := range p {
				if lf, ok := strings.CutPrefix(f, "l|"); ok {
					add(lf, v)
				}
			}
		}
		out[i] = hs
	}
	return out, nil
}

// span is the time a bucket of kind k holding t covers.
func span(k Kind, t time.Time) (from, to time.Time) {
	t = t.UTC()
	switch k {
	case Minute:
		from = t.Truncate(time.Minute)
		return from, from.Add(time.Minute)
	case Quarter:
		from = t.Truncate(15 * time.Minute)
		return from, from.Add(15 * time.Minute)
	case Hour:
		from = t.Truncate(time.Hour)
		return from, from.Add(time.Hour)
	default:
		from = time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
		return from, from.AddDate(0, 0, 1)
	}
}

// bucketRead is one bucket's hash and the pending hashes of the minutes
// it covers.
type bucketRead struct {
	bucket  map[string]string
	pending []map[string]string
}

// maxReadRetries bounds how often a read starts over because the set of
// pending minutes changed under it (a new minute's first fold, a minute's
// last rollup: a few times a minute).
const maxReadRetries = 20

// read reads the hash key(t) of each start and the pending hashes of the
// minutes each covers. When a pending minute falls in a span it reads them
// all in one MULTI, under WATCH of the pending-minute set: a rollup moves
// fields from a pending hash to the buckets atomically, so the snapshot
// counts each record once, in one place or the other. Without pending
// minutes in the spans it reads in a plain pipeline, as the buckets are
// then only added to.
func (s *Store) read(ctx context.Context, k Kind, starts []time.Time, key func(time.Time) string) ([]bucketRead, error) {
	out := make([]bucketRead, len(starts))
	if len(starts) == 0 {
		return out, nil
	}
	for attempt := 0; ; attempt++ {
		err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
			ms, err := tx.SMembers(ctx, pendingSetKey).Result()
			if err != nil {
				return err
			}
			var pending []time.Time
			for _, m := range ms {
				if t, err := time.Parse(minuteLayout, m); err == nil {
					pending = append(pending, t)
				}
			}
			var bcmds []*redis.MapStringStringCmd
			pcmds := make([][]*redis.MapStringStringCmd, len(starts))
			fill := func(p redis.Pipeliner) error {
				bcmds = make([]*redis.MapStringStringCmd, len(starts))
				for i, t := range starts {
					bcmds[i] = p.HGetAll(ctx, key(t))
					from, to := span(k, t)
					pcmds[i] = nil
					for _, m := range pending {
						if !m.Before(from) && m.Before(to) {
							pcmds[i] = append(pcmds[i], p.HGetAll(ctx, keyPrefix+"p:"+m.Format(minuteLayout)))
						}
					}
				}
				return nil
			}
			inSpan := false
			for _, t := range starts {
				from, to := span(k, t)
				for _, m := range pending {
					inSpan = inSpan || (!m.Before(from) && m.Before(to))
				}
			}
			if inSpan {
				_, err = tx.TxPipelined(ctx, fill)
			} else {
				_, err = tx.Pipelined(ctx, fill)
			}
			if err != nil {
				return err
			}
			for i := range starts {
				out[i] = bucketRead{bucket: bcmds[i].Val()}
				for _, c := range pcmds[i] {
					out[i].pending = append(out[i].pending, c.Val())
				}
			}
			return nil
		}, pendingSetKey)
		if errors.Is(err, redis.TxFailedErr) && attempt < maxReadRetries {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %d usage buckets: %w", len(starts), err)
		}
		return out, nil
	}
}
