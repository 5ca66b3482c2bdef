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

// record keeps an attempt, in the endpoint's list and the event's, and
// updates the endpoint's health. It returns since when the endpoint has been
// failing (zero after a success).
func (s store) record(ctx context.Context, a *edgev1.Attempt) (time.Time, error) {
	b, err := proto.Marshal(a)
	if err != nil {
		return time.Time{}, err
	}
	pipe := s.rdb.TxPipeline()
	pipe.XAdd(ctx, &redis.XAddArgs{Stream: attemptsKey(a.GetSubscriptionId()), MaxLen: maxAttemptsKept, Approx: true, Values: []any{fieldAttempt, b}})
	pipe.RPush(ctx, eventKey(a.GetSubscriptionId(), a.GetCursor()), b)
	pipe.Expire(ctx, eventKey(a.GetSubscriptionId(), a.GetCursor()), attemptsTTL)
	var since *redis.StringCmd
	if a.GetSuccess() {
		pipe.HDel(ctx, healthKey(a.GetSubscriptionId()), "failing_since")
	} else {
		pipe.HSetNX(ctx, healthKey(a.GetSubscriptionId()), "failing_since", a.GetTime().AsTime().UnixMilli())
		since = pipe.HGet(ctx, healthKey(a.GetSubscriptionId()), "failing_since")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return time.Time{}, fmt.Errorf("record the attempt: %w", err)
	}
	if since == nil {
		return time.Time{}, nil
	}
	ms, _ := strconv.ParseInt(since.Val(), 10, 64)
	return time.UnixMilli(ms), nil
}

// forEvent lists the attempts at one event, oldest first.
func (s store) forEvent(ctx context.Context, subID, cursor string) ([]*edgev1.Attempt, error) {
	raw, err := s.rdb.LRange(ctx, eventKey(subID, cursor), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]*edgev1.Attempt, 0, len(raw))
	for _, r := range raw {
		a := new(edgev1.Attempt)
		if proto.Unmarshal([]byte(r), a) == nil {
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
