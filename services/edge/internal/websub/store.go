package websub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys of the hub. The set and the records share a hash tag, so that a
// subscription is made, renewed and ended by one script on one shard:
//
//	herald:websub:{subs}         sorted set, subscription id -> when its lease ends (unix ms)
//	herald:websub:{subs}:<id>    hash, one subscription: app, type, topic, callback, secret
//	                             (sealed with HERALD_SECRET_KEY), lease (seconds), expires and
//	                             created (unix ms)
//	herald:websub:lease:<id>     string, the edge process delivering to the subscription; expires
//
// Each subscription is also a durable subscription of platform/subscription
// with the same id (its consumer group herald:sub:<id> on the type's log
// streams, and its keys herald:sub:{<id>}:*), kept outside the registry.
const (
	subsKey = "herald:websub:{subs}"
)

func recordKey(id string) string { return subsKey + ":" + id }
func leaseKey(id string) string  { return "herald:websub:lease:" + id }

// idPrefix starts every WebSub subscription id, so that none is ever taken
// for a registry subscription.
const idPrefix = "websub-"

// subscriptionID names the subscription of an application to a type at a
// callback: WebSub knows a subscription by its topic and callback, and the
// application is part of it so that tenants never see or touch each
// other's.
func subscriptionID(app, typ, callback string) string {
	sum := sha256.Sum256([]byte(app + "\x00" + typ + "\x00" + callback))
	return idPrefix + hex.EncodeToString(sum[:16])
}

// record is one subscription as stored.
type record struct {
	ID       string
	App      string
	Type     string
	Topic    string
	Callback string
	Secret   string // sealed; "" for none
	Lease    time.Duration
	Expires  time.Time
	Created  time.Time
}

// store keeps subscriptions and leases in Redis.
type store struct {
	rdb redis.Cmdable
}

// activateScript makes or renews a subscription: KEYS[1] the set, KEYS[2]
// the record; ARGV[1] id, ARGV[2] now (ms), ARGV[3] expires (ms), then
// field, value pairs. A subscription still on record (live, or ended and
// not yet removed with its consumer group) keeps its creation time, where
// its group started; an unknown one starts now. Returns 1 for a renewal of
// a live one.
var activateScript = redis.NewScript(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local renewed = 0
if redis.call('EXISTS', KEYS[2]) == 1 and score then
  if tonumber(score) > tonumber(ARGV[2]) then renewed = 1 end
else
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'created', ARGV[2])
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[2], 'expires', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return renewed
`)

// activate stores a verified subscription; it reports whether it renewed a
// live one.
func (s store) activate(ctx context.Context, r record, now time.Time) (bool, error) {
	n, err := activateScript.Run(ctx, s.rdb, []string{subsKey, recordKey(r.ID)},
		r.ID, now.UnixMilli(), r.Expires.UnixMilli(),
		"app", r.App, "type", r.Type, "topic", r.Topic, "callback", r.Callback, "secret", r.Secret,
		"lease", int64(r.Lease/time.Second),
	).Int()
	if err != nil {
		return false, fmt.Errorf("store websub subscription: %w", err)
	}
	return n == 1, nil
}

// finishScript ends a live subscription now: KEYS[1] the set, KEYS[2] the
// record; ARGV[1] id, ARGV[2] now (ms). Returns 1 when it was live.
var finishScript = redis.NewScript(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) <= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], 'expires', ARGV[2])
return 1
`)

// finish ends a subscription now (an unsubscription): every edge stops
// delivering it at its next sync, and it is removed after the grace.
func (s store) finish(ctx context.Context, id string, now time.Time) error {
	if err := finishScript.Run(ctx, s.rdb, []string{subsKey, recordKey(id)}, id, now.UnixMilli()).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("end websub subscription: %w", err)
	}
	return nil
}

// removeScript removes a subscription that ended by a given time: KEYS[1]
// the set, KEYS[2] the record; ARGV[1] id, ARGV[2] that time (ms): one
// renewed since is kept. Returns its type when this call removed it, false
// otherwise.
var removeScript = redis.NewScript(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return false end
if tonumber(score) > tonumber(ARGV[2]) then return false end
local typ = redis.call('HGET', KEYS[2], 'type')
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return typ or ''
`)

// remove removes a subscription that ended by endedBy and returns its
// type, or ok false when it was not there (or was renewed).
func (s store) remove(ctx context.Context, id string, endedBy time.Time) (typ string, ok bool, err error) {
	typ, err = removeScript.Run(ctx, s.rdb, []string{subsKey, recordKey(id)}, id, endedBy.UnixMilli()).Text()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("remove websub subscription: %w", err)
	}
	return typ, true, nil
}

// get loads a subscription; ok is false when there is none.
func (s store) get(ctx context.Context, id string) (record, bool, error) {
	m, err := s.rdb.HGetAll(ctx, recordKey(id)).Result()
	if err != nil {
		return record{}, false, fmt.Errorf("load websub subscription: %w", err)
	}
	if len(m) == 0 || m["type"] == "" {
		return record{}, false, nil
	}
	lease, _ := strconv.ParseInt(m["lease"], 10, 64)
	expires, _ := strconv.ParseInt(m["expires"], 10, 64)
	created, _ := strconv.ParseInt(m["created"], 10, 64)
	return record{
		ID: id, App: m["app"], Type: m["type"], Topic: m["topic"], Callback: m["callback"], Secret: m["secret"],
		Lease: time.Duration(lease) * time.Second, Expires: time.UnixMilli(expires), Created: time.UnixMilli(created),
	}, true, nil
}

// all lists every subscription id with the end of its lease.
func (s store) all(ctx context.Context) (map[string]time.Time, error) {
	zs, err := s.rdb.ZRangeWithScores(ctx, subsKey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("list websub subscriptions: %w", err)
	}
	out := make(map[string]time.Time, len(zs))
	for _, z := range zs {
		id, _ := z.Member.(string)
		out[id] = time.UnixMilli(int64(z.Score))
	}
	return out, nil
}

// countOf counts the subscriptions of an application (for its cap).
func (s store) countOf(ctx context.Context, app string, ids map[string]time.Time) (int, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, 0, len(ids))
	for id := range ids {
		cmds = append(cmds, pipe.HGet(ctx, recordKey(id), "app"))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, err
	}
	n := 0
	for _, c := range cmds {
		if c.Val() == app {
			n++
		}
	}
	return n, nil
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

// lease takes or renews the lease of a subscription for holder.
func (s store) lease(ctx context.Context, id, holder string, ttl time.Duration) (bool, error) {
	n, err := leaseScript.Run(ctx, s.rdb, []string{leaseKey(id)}, holder, ttl.Milliseconds()).Int()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, err
	}
	return n == 1, nil
}

// unlease gives the lease up.
func (s store) unlease(ctx context.Context, id, holder string) {
	_ = releaseLeaseScript.Run(ctx, s.rdb, []string{leaseKey(id)}, holder).Err()
}
