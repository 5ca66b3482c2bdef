// Package store is metering's Redis layout: the consumer group on the usage
// stream, the exactly-once fold of a record into its hour bucket, and the
// reads of those buckets.
//
// Keys (all under the {usage} hash tag, so that the fold script touches one
// shard of a cluster):
//
//	herald:{usage}:log                stream of UsageRecords (see platform/usage); group "metering"
//	herald:{usage}:seen:<record id>   "1", expires after SeenTTL: the record was folded
//	herald:{usage}:h:<YYYYMMDDHH>     hash, one per UTC hour of record time:
//	                                  "<application_id>|<event_type>|<metric number>|<channel>" -> count
//
// In a hash field, "%" and "|" inside a part are written as "%25" and "%7C".
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

// SeenTTL is how long a folded record id is remembered. A copy of a record
// appended later than that would be counted again; producers retry within
// seconds, and redelivery within the group within minutes.
const SeenTTL = 8 * 24 * time.Hour

const (
	keyPrefix  = "herald:{usage}:"
	seenPrefix = keyPrefix + "seen:"
	hourPrefix = keyPrefix + "h:"
	hourLayout = "2006010215"
)

// SeenKey is the key marking a record as folded.
func SeenKey(recordID string) string { return seenPrefix + recordID }

// HourKey is the key of the hash holding the counters of t's UTC hour.
func HourKey(t time.Time) string { return hourPrefix + t.UTC().Format(hourLayout) }

var fieldEscaper = strings.NewReplacer("%", "%25", "|", "%7C")
var fieldUnescaper = strings.NewReplacer("%25", "%", "%7C", "|")

// Field is the hash field of a counter.
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

// foldScript counts one record once and removes its entry from the stream.
// Counting, remembering the id, acknowledging and deleting happen together,
// so a crash at any point either did all of it or none of it; a retry after
// a lost reply finds the id seen and only acknowledges.
//
//	KEYS: stream, seen key, hour key
//	ARGV: group, entry id, field, quantity, seen TTL in seconds
//
// It returns 1 if the record was counted, 0 if it had been already.
var foldScript = redis.NewScript(`
local counted = 0
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[5]) then
  redis.call('HINCRBY', KEYS[3], ARGV[3], ARGV[4])
  counted = 1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return counted
`)

// Store reads and writes metering's keys.
type Store struct {
	rdb redis.UniversalClient
}

// New returns a Store over rdb.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

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

// Skipped is an entry that could not be folded and was dropped.
type Skipped struct {
	ID     string
	Reason error
}

// FoldResult counts what a Fold did.
type FoldResult struct {
	Counted    int       // records added to their hour bucket
	Duplicates int       // records whose id had been folded already
	Skipped    []Skipped // entries that are not valid records, acknowledged and dropped
}

// Fold counts each entry's record exactly once, then acknowledges and
// deletes the entry, in one round trip. Entries that do not hold a valid
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

func (s *Store) fold(ctx context.Context, msgs []redis.XMessage) (FoldResult, error) {
	var res FoldResult
	ttl := strconv.FormatInt(int64(SeenTTL/time.Second), 10)
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, 0, len(msgs))
	for _, m := range msgs {
		rec, err := decode(m)
		if err != nil {
			res.Skipped = append(res.Skipped, Skipped{ID: m.ID, Reason: err})
			pipe.XAck(ctx, usage.StreamKey, Group, m.ID)
			pipe.XDel(ctx, usage.StreamKey, m.ID)
			continue
		}
		k := report.Key{ApplicationID: rec.ApplicationId, EventType: rec.EventType, Metric: rec.Metric, Channel: rec.Channel}
		seen := SeenKey(rec.Id)
		if rec.Id == "" {
			// No id breaks the producer's contract; the entry id still makes
			// redelivery of this entry idempotent.
			seen = SeenKey("#" + m.ID)
		}
		keys := []string{usage.StreamKey, seen, HourKey(recordTime(rec, m.ID))}
		cmds = append(cmds, foldScript.EvalSha(ctx, pipe, keys, Group, m.ID, Field(k), rec.Quantity, ttl))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return FoldResult{}, fmt.Errorf("fold %d usage entries: %w", len(msgs), err)
	}
	for _, c := range cmds {
		if n, _ := c.Int64(); n == 1 {
			res.Counted++
		} else {
			res.Duplicates++
		}
	}
	return res, nil
}

func decode(m redis.XMessage) (*meteringv1.UsageRecord, error) {
	v, ok := m.Values[usage.FieldRecord]
	if !ok {
		return nil, fmt.Errorf("no field %q (the entry may have been deleted)", usage.FieldRecord)
	}
	s, ok := v.(string)
	if !ok {
		return nil, fmt.Errorf("field %q is %T, not bytes", usage.FieldRecord, v)
	}
	rec := new(meteringv1.UsageRecord)
	if err := proto.Unmarshal([]byte(s), rec); err != nil {
		return nil, fmt.Errorf("decode usage record: %w", err)
	}
	if rec.Quantity <= 0 {
		return nil, fmt.Errorf("record %q: quantity %d is not positive", rec.Id, rec.Quantity)
	}
	if rec.Time != nil {
		if err := rec.Time.CheckValid(); err != nil {
			return nil, fmt.Errorf("record %q: %w", rec.Id, err)
		}
	}
	return rec, nil
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
// trip. Fields that do not parse are ignored.
func (s *Store) Hours(ctx context.Context, starts []time.Time) ([]report.Hour, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(starts))
	for i, t := range starts {
		cmds[i] = pipe.HGetAll(ctx, HourKey(t))
	}
	if len(starts) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, fmt.Errorf("read %d hour buckets: %w", len(starts), err)
		}
	}
	hours := make([]report.Hour, len(starts))
	for i, c := range cmds {
		fields := c.Val()
		counts := make(map[report.Key]int64, len(fields))
		for f, v := range fields {
			k, ok := ParseField(f)
			n, err := strconv.ParseInt(v, 10, 64)
			if !ok || err != nil {
				continue
			}
			counts[k] += n
		}
		hours[i] = report.Hour{Start: starts[i], Counts: counts}
	}
	return hours, nil
}
