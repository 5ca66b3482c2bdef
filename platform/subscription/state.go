// Package subscription implements durable subscriptions on Redis consumer
// groups: RouterService.Subscribe, Ack, Nack and the dead-letter RPCs.
//
// A subscription (created in the registry) owns one consumer group, named
// herald:sub:<id>, on every log stream of the types it covers, and keys of
// its own under the hash tag {<id>}:
//
//	herald:sub:{<id>}:delayed   sorted set, ack id -> when a nacked delivery is due again
//	herald:sub:{<id>}:reasons   hash, ack id -> the consumer's last Nack reason
//	herald:sub:{<id>}:dead      stream, the dead letters (fields below)
//	herald:sub:{<id>}:deadidx   hash, cursor -> dead letter id: an event is dead-lettered once
//	herald:sub:{<id>}:replay    stream, dead letters sent back for delivery, with the
//	                            subscription's group like a log stream
//
// Every delivery stays in its group's pending entries list until it is
// acknowledged, so nothing is lost when a consumer or a router dies:
//
//   - a first delivery is XREADGROUP, which sets the delivery count to 1;
//   - a delivery unacknowledged for the ack timeout is taken over with
//     XAUTOCLAIM by any session of the subscription, which adds 1;
//   - a Nack hands the entry to the consumer herald.delayed (XCLAIM JUSTID:
//     the idle time restarts, the count stays) and records when it is due in
//     the delayed set; a session claims it back when it is due;
//   - an entry whose count reached the subscription's max_attempts is copied
//     to the dead-letter stream with its reason, then acknowledged.
//
// Start positions: a group starts after the subscription's start cursor,
// before its start time, or, by default, at its creation time. Groups are
// created on demand with the same start, so a type or a partition that
// appears later is read from the same point by every router.
package subscription

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/redis/go-redis/v9"
)

// Consumer names that are not sessions.
const (
	delayedConsumer  = "herald.delayed"  // owns nacked deliveries while they wait
	releasedConsumer = "herald.released" // owns deliveries read but never sent, until claimed
)

// Dead-letter and replay entry fields, besides eventlog's ce and app.
const (
	fieldType     = "type"
	fieldCursor   = "cursor"
	fieldTest     = "test"
	fieldReplay   = "replay"
	fieldAttempts = "attempts"
	fieldReason   = "reason"
	fieldTime     = "time"
)

// Group is the consumer group of a subscription on each of its streams.
func Group(subID string) string { return "herald:sub:" + subID }

func subKey(subID, part string) string { return "herald:sub:{" + subID + "}:" + part }

func delayedKey(subID string) string { return subKey(subID, "delayed") }
func reasonsKey(subID string) string { return subKey(subID, "reasons") }
func deadKey(subID string) string    { return subKey(subID, "dead") }
func deadIdxKey(subID string) string { return subKey(subID, "deadidx") }

// DeadKey is the stream of a subscription's dead letters.
func DeadKey(subID string) string { return deadKey(subID) }

// ReplayKey is the stream of a subscription's replayed dead letters.
func ReplayKey(subID string) string { return subKey(subID, "replay") }

const replayTag = "~"

// ref names one pending delivery: the stream and the entry id.
type ref struct {
	stream string
	id     string
}

// ackID is how a delivery is named to consumers: "<tag>/<entry id>", where
// tag is the log stream's hash tag (<type> or <type>#<partition>) or ~ for
// the replay stream.
func ackID(subID string, r ref) string {
	if r.stream == ReplayKey(subID) {
		return replayTag + "/" + r.id
	}
	tag, _ := eventlog.TagOfStream(r.stream)
	return tag + "/" + r.id
}

var errAckID = errors.New("not an ack id from this subscription's deliveries")

// parseAckID is the inverse of ackID.
func parseAckID(subID, s string) (ref, error) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return ref{}, fmt.Errorf("ack id %q: %w", s, errAckID)
	}
	tag, id := s[:i], s[i+1:]
	if _, err := eventlog.ParseID(id); err != nil || !strings.Contains(id, "-") {
		return ref{}, fmt.Errorf("ack id %q: %w", s, errAckID)
	}
	if tag == replayTag {
		return ref{stream: ReplayKey(subID), id: id}, nil
	}
	name, part, partitioned := strings.Cut(tag, "#")
	if eventtype.ValidateName(name) != nil || (partitioned && !digits(part)) {
		return ref{}, fmt.Errorf("ack id %q: %w", s, errAckID)
	}
	return ref{stream: eventlog.TagKey(tag), id: id}, nil
}

func digits(s string) bool {
	if s == "" || len(s) > 4 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// policy is a subscription's delivery policy with the registry's defaults.
type policy struct {
	ackTimeout  time.Duration
	maxAttempts int64
}

func policyOf(sub *registryv1.Subscription) policy {
	p := policy{ackTimeout: 30 * time.Second, maxAttempts: 10}
	if d := sub.GetDelivery().GetAckTimeout(); d != nil && d.AsDuration() > 0 {
		p.ackTimeout = d.AsDuration()
	}
	if n := sub.GetDelivery().GetMaxAttempts(); n > 0 {
		p.maxAttempts = int64(n)
	}
	return p
}

// idBefore is the last possible id before millisecond ms: a group set to
// it delivers everything stamped at ms or later.
func idBefore(ms int64) string {
	if ms <= 0 {
		return "0"
	}
	return fmt.Sprintf("%d-%d", ms-1, uint64(math.MaxUint64))
}

// startID is where a subscription's groups start: after its start cursor,
// before its start time, or at its creation.
func startID(sub *registryv1.Subscription) string {
	switch p := sub.GetStart().GetPosition().(type) {
	case *registryv1.StartPosition_Cursor:
		return p.Cursor
	case *registryv1.StartPosition_Time:
		return idBefore(p.Time.AsTime().UnixMilli())
	}
	if t := sub.GetCreateTime(); t != nil {
		return idBefore(t.AsTime().UnixMilli())
	}
	return "$"
}

// isNoGroup reports the error of a group or stream that does not exist.
func isNoGroup(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOGROUP")
}

// claimScript takes over deliveries of one stream whose idle time passed
// the ack timeout, with their delivery counts: KEYS[1] stream; ARGV[1]
// group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] start, ARGV[5]
// count. Returns {next start, {{id, fields, count}...}}.
var claimScript = redis.NewScript(`
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, m in ipairs(r[2]) do
  if m then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], m[1], m[1], 1)
    local n = 0
    if p[1] then n = p[1][4] end
    out[#out + 1] = {m[1], m[2], n}
  end
end
return {r[1], out}
`)

// claimIDsScript claims given deliveries of one stream (due after a Nack,
// or expired in the claiming session's own hands): KEYS[1] stream; ARGV[1]
// group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4..] entry ids.
// Returns {{id, fields, count}...} for those still pending (and idle
// enough).
var claimIDsScript = redis.NewScript(`
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(ids))
local out = {}
for _, m in ipairs(r) do
  if m then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], m[1], m[1], 1)
    local n = 0
    if p[1] then n = p[1][4] end
    out[#out + 1] = {m[1], m[2], n}
  end
end
return out
`)

// releaseScript hands deliveries read but never sent to herald.released,
// idle for the ack timeout so that any session claims them at once, with
// the delivery counts they had before the read; only those the consumer
// still holds (another session may have taken them over meanwhile):
// KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] idle ms,
// ARGV[4..] pairs of entry id and count. Returns how many were handed back.
var releaseScript = redis.NewScript(`
local n = 0
for i = 4, #ARGV - 1, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], '` + releasedConsumer + `', 0, ARGV[i],
      'IDLE', ARGV[3], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    n = n + 1
  end
end
return n
`)

// popDueScript removes and returns the delayed deliveries that are due,
// and when the next one is due: KEYS[1] delayed set; ARGV[1] now (ms),
// ARGV[2] limit. Returns {{ack id...}, next due ms or -1}.
var popDueScript = redis.NewScript(`
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local at = -1
if #nxt > 0 then at = math.floor(tonumber(nxt[2])) end
return {due, at}
`)

// deadLetterScript records one dead letter, once per cursor: KEYS[1] dead,
// KEYS[2] deadidx, KEYS[3] reasons, KEYS[4] delayed; ARGV[1] cursor,
// ARGV[2] ack id, ARGV[3] reason given now ("" for none), ARGV[4] reason
// when the consumer never gave one, ARGV[5..] entry fields. The reason is
// the one given now, else the consumer's last Nack reason, else ARGV[4].
// Returns the dead letter's id.
var deadLetterScript = redis.NewScript(`
local reason = ARGV[3]
if reason == '' then reason = redis.call('HGET', KEYS[3], ARGV[2]) or ARGV[4] end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev then return prev end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'reason'
fields[#fields + 1] = reason
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
`)

// replayScript moves dead letters to the replay stream: KEYS[1] dead,
// KEYS[2] deadidx, KEYS[3] replay; ARGV dead letter ids. Returns how many
// moved.
var replayScript = redis.NewScript(`
local n = 0
for _, id in ipairs(ARGV) do
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e > 0 then
    local f = e[1][2]
    local keep = {}
    local cursor
    for i = 1, #f, 2 do
      local k = f[i]
      if k == 'cursor' then cursor = f[i + 1] end
      if k == 'ce' or k == 'app' or k == 'type' or k == 'cursor' or k == 'test' then
        keep[#keep + 1] = k
        keep[#keep + 1] = f[i + 1]
      end
    end
    keep[#keep + 1] = 'replay'
    keep[#keep + 1] = '1'
    redis.call('XADD', KEYS[3], '*', unpack(keep))
    redis.call('XDEL', KEYS[1], id)
    if cursor then redis.call('HDEL', KEYS[2], cursor) end
    n = n + 1
  end
end
return n
`)

// deleteDeadScript discards dead letters: KEYS[1] dead, KEYS[2] deadidx;
// ARGV dead letter ids. Returns how many were discarded.
var deleteDeadScript = redis.NewScript(`
local n = 0
for _, id in ipairs(ARGV) do
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e > 0 then
    local f = e[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'cursor' then redis.call('HDEL', KEYS[2], f[i + 1]) end
    end
    redis.call('XDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
`)

// pruneConsumersScript deletes a group's consumers that hold nothing and
// have been idle for longer than ARGV[2] ms (sessions that ended): KEYS[1]
// stream; ARGV[1] group.
var pruneConsumersScript = redis.NewScript(`
local ok, cs = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local n = 0
for _, c in ipairs(cs) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['pending'] == 0 and info['idle'] > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    n = n + 1
  end
end
return n
`)
