package subscription

import (
	"context"
	"errors"
	"fmt"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Test events go to one subscription only: SendTest keeps each in the
// subscription's test stream, under a cursor whose stream number is 0 (no
// log stream has it, see eventlog.IsTest), and queues it on the
// subscription's replay stream, so that it is delivered like any event
// (filter, retries, attempts, dead letters) and can be found again by its
// cursor. Its replay entry is marked (field "test"), so that usage is never
// counted for it (Meta.Test, usage.Delivery.Test).

// TestKey is the stream of a subscription's test events.
func TestKey(subID string) string { return subKey(subID, "test") }

// Test stream bounds: about TestKeep events, for TestTTL after the last.
const (
	TestKeep = 1000
	TestTTL  = 7 * 24 * time.Hour
)

// testAdd stores a test event under the next id with stream number 0 and
// queues it for delivery, in one step. KEYS: test stream, replay stream.
// ARGV: keep, ttl ms, then the field names and values: event, producer,
// type, cursor (the cursor's value is the id made here), test.
var testAdd = redis.NewScript(`
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local lms, lseq = string.match(last[1][1], '^(%d+)-(%d+)$')
  lms = tonumber(lms)
  if lms >= ms then
    ms = lms
    k = math.floor(tonumber(lseq) / 16777216) + 1
  end
end
local id = string.format('%.0f-%.0f', ms, k * 16777216)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], id, ARGV[10], '1')
return id
`)

// SendTest queues a test event for sub alone and returns its cursor.
// account is who sent it (the log entry's producer field).
func (m *Manager) SendTest(ctx context.Context, sub *registryv1.Subscription, ev *eventv1.CloudEvent, account string) (string, error) {
	b, err := proto.Marshal(ev)
	if err != nil {
		return "", fmt.Errorf("encode test event: %w", err)
	}
	if err := m.ensure(ctx, sub, []string{ReplayKey(sub.GetId())}); err != nil {
		return "", err
	}
	id, err := testAdd.Run(ctx, m.rdb, []string{TestKey(sub.GetId()), ReplayKey(sub.GetId())},
		TestKeep, TestTTL.Milliseconds(), eventlog.FieldEvent, b, eventlog.FieldApp, account, fieldType, ev.GetType(), fieldCursor, fieldTest).Text()
	if err != nil {
		return "", fmt.Errorf("queue test event: %w", err)
	}
	m.replayed(ctx, sub.GetId())
	return id, nil
}

// FindTest returns the test event of a subscription at cursor, with who
// sent it; found is false when there is none (or it has expired).
func (m *Manager) FindTest(ctx context.Context, subID, cursor string) (ev *eventv1.CloudEvent, account string, found bool, err error) {
	msgs, err := m.rdb.XRangeN(ctx, TestKey(subID), cursor, cursor, 1).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", false, fmt.Errorf("read test event: %w", err)
	}
	if len(msgs) == 0 {
		return nil, "", false, nil
	}
	raw, _ := msgs[0].Values[eventlog.FieldEvent].(string)
	account, _ = msgs[0].Values[eventlog.FieldApp].(string)
	ev = new(eventv1.CloudEvent)
	if err := proto.Unmarshal([]byte(raw), ev); err != nil {
		return nil, "", false, fmt.Errorf("decode test event: %w", err)
	}
	return ev, account, true, nil
}

// ReplayTest queues the test event at cursor for delivery to sub again,
// keeping its cursor; found is false when the test stream no longer holds
// it.
func (m *Manager) ReplayTest(ctx context.Context, sub *registryv1.Subscription, cursor string) (found bool, err error) {
	msgs, err := m.rdb.XRangeN(ctx, TestKey(sub.GetId()), cursor, cursor, 1).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("read test event: %w", err)
	}
	if len(msgs) == 0 {
		return false, nil
	}
	if err := m.ensure(ctx, sub, []string{ReplayKey(sub.GetId())}); err != nil {
		return false, err
	}
	ev := new(eventv1.CloudEvent)
	raw, _ := msgs[0].Values[eventlog.FieldEvent].(string)
	if err := proto.Unmarshal([]byte(raw), ev); err != nil {
		return false, fmt.Errorf("decode test event: %w", err)
	}
	if err := m.rdb.XAdd(ctx, &redis.XAddArgs{Stream: ReplayKey(sub.GetId()), Values: []any{
		eventlog.FieldEvent, raw, eventlog.FieldApp, msgs[0].Values[eventlog.FieldApp], fieldType, ev.GetType(), fieldCursor, cursor, fieldTest, "1", fieldReplay, "1",
	}}).Err(); err != nil {
		return false, fmt.Errorf("queue test event: %w", err)
	}
	m.replayed(ctx, sub.GetId())
	return true, nil
}
