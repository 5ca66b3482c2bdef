package webhook

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Keys of the webhook engine, under the subscription's hash tag beside the
// durable subscription's own (platform/subscription):
//
//	herald:sub:{<id>}:attempts      stream, every attempt (field a: edgev1.Attempt), capped
//	herald:sub:{<id>}:att:<cursor>  list, the attempts at one event, oldest first; expires
//	herald:sub:{<id>}:health        hash: failing_since (ms of the first failure since the last success)
//	herald:sub:{<id>}:lease         string, the process that delivers to the endpoint; expires
func subKey(subID, part string) string     { return "herald:sub:{" + subID + "}:" + part }
func attemptsKey(subID string) string      { return subKey(subID, "attempts") }
func eventKey(subID, cursor string) string { return subKey(subID, "att:"+cursor) }
func healthKey(subID string) string        { return subKey(subID, "health") }
func leaseKey(subID string) string         { return subKey(subID, "lease") }

const (
	fieldAttempt    = "a"
	fieldNumber     = "n"
	maxAttemptsKept = 10_000              // per endpoint, newest
	attemptsTTL     = 30 * 24 * time.Hour // per event, after its last attempt
)

// store keeps attempts, endpoint health and leases in Redis.
type store struct {
	rdb redis.Cmdable
}

// healthy forgets since when an endpoint has been failing.
func (s store) healthy(ctx context.Context, subID string) error {
	return s.rdb.HDel(ctx, healthKey(subID), "failing_since").Err()
}

// count is how many attempts an event had.
func (s store) count(ctx context.Context, subID, cursor string) (int64, error) {
	return s.rdb.LLen(ctx, eventKey(subID, cursor)).Result()
}

// recordScript keeps an attempt: KEYS[1] the endpoint's attempts stream,
// KEYS[2] the event's attempt list, KEYS[3] the endpoint's health (one
// hash tag: one slot); ARGV[1] the attempt, ARGV[2] 1 for a success,
// ARGV[3] its time (ms), ARGV[4] the stream's cap, ARGV[5] the list's TTL
// (s). The attempt's number is its place in the event's list, kept beside
// it in the stream (field n). Returns {number, failing since (ms) or 0}.
var recordScript = redis.NewScript(`
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'a', ARGV[1], 'n', n)
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[3], 'failing_since')
  return {n, 0}
end
redis.call('HSETNX', KEYS[3], 'failing_since', ARGV[3])
return {n, tonumber(redis.call('HGET', KEYS[3], 'failing_since'))}
`)

// recordArgs are the keys and arguments of recordScript for a.
func recordArgs(a *edgev1.Attempt) ([]string, []any, error) {
	n := a.Number
	a.Number = 0 // the list's order numbers it
	b, err := proto.Marshal(a)
	a.Number = n
	if err != nil {
		return nil, nil, err
	}
	ok := 0
	if a.GetSuccess() {
		ok = 1
	}
	id := a.GetSubscriptionId()
	return []string{attemptsKey(id), eventKey(id, a.GetCursor()), healthKey(id)},
		[]any{b, ok, a.GetTime().AsTime().UnixMilli(), maxAttemptsKept, int64(attemptsTTL / time.Second)}, nil
}

// recordResult reads recordScript's answer into a.Number and returns since
// when the endpoint has been failing (zero after a success).
func recordResult(a *edgev1.Attempt, v any) time.Time {
	r, _ := v.([]any)
	if len(r) != 2 {
		return time.Time{}
	}
	if n, ok := r[0].(int64); ok {
		a.Number = int32(n)
	}
	if ms, ok := r[1].(int64); ok && ms > 0 {
		return time.UnixMilli(ms)
	}
	return time.Time{}
}

// record keeps an attempt, in the endpoint's stream and the event's list,
// numbers it (a.Number) and updates the endpoint's health. It returns since
// when the endpoint has been failing (zero after a success).
func (s store) record(ctx context.Context, a *edgev1.Attempt) (time.Time, error) {
	keys, args, err := recordArgs(a)
	if err != nil {
		return time.Time{}, err
	}
	v, err := recordScript.Run(ctx, s.rdb, keys, args...).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("record the attempt: %w", err)
	}
	return recordResult(a, v), nil
}

// forEvent lists the attempts at one event, oldest first.
func (s store) forEvent(ctx context.Context, subID, cursor string) ([]*edgev1.Attempt, error) {
	raw, err := s.rdb.LRange(ctx, eventKey(subID, cursor), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]*edgev1.Attempt, 0, len(raw))
	for i, r := range raw {
		a := new(edgev1.Attempt)
		if proto.Unmarshal([]byte(r), a) == nil {
			if a.Number == 0 {
				a.Number = int32(i + 1)
			}
			out = append(out, a)
		}
	}
	return out, nil
}

// page lists an endpoint's attempts newest first, before the attempt id
// `before` ("" for the newest).
func (s store) page(ctx context.Context, subID, before string, n int64) ([]*edgev1.Attempt, string, error) {
	end := "+"
	if before != "" {
		end = "(" + before
	}
	msgs, err := s.rdb.XRevRangeN(ctx, attemptsKey(subID), end, "-", n+1).Result()
	if err != nil {
		return nil, "", err
	}
	next := ""
	if int64(len(msgs)) > n {
		msgs = msgs[:n]
		next = msgs[n-1].ID
	}
	out := make([]*edgev1.Attempt, 0, len(msgs))
	for _, m := range msgs {
		raw, _ := m.Values[fieldAttempt].(string)
		a := new(edgev1.Attempt)
		if proto.Unmarshal([]byte(raw), a) == nil {
			a.Id = m.ID
			if n, _ := m.Values[fieldNumber].(string); a.Number == 0 && n != "" {
				v, _ := strconv.ParseInt(n, 10, 32)
				a.Number = int32(v)
			}
			out = append(out, a)
		}
	}
	return out, next, nil
}

// leaseScript takes or renews a lease: KEYS[1] lease; ARGV[1] holder,
// ARGV[2] ttl ms. Returns 1 when the holder has it.
var leaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

// releaseLeaseScript gives a lease up if the holder still has it.
var releaseLeaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// lease takes or renews the endpoint's lease for holder.
func (s store) lease(ctx context.Context, subID, holder string, ttl time.Duration) (bool, error) {
	n, err := leaseScript.Run(ctx, s.rdb, []string{leaseKey(subID)}, holder, ttl.Milliseconds()).Int()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	return n == 1, nil
}

// unlease gives the lease up.
func (s store) unlease(ctx context.Context, subID, holder string) {
	_ = releaseLeaseScript.Run(ctx, s.rdb, []string{leaseKey(subID)}, holder).Err()
}
