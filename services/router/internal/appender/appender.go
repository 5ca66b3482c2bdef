// Package appender writes events to the log: one Lua script per event
// deduplicates on (publishing account, source, id) and appends, atomically,
// and a batch is one pipelined round trip.
//
// Keys (besides eventlog's streams):
//
//	herald:log:numbers            hash, stream key -> the stream's number (1..2^24-1),
//	                               stamped into its entry ids (see appendScript)
//	herald:count:{<tag>}           hash, "<hour>|<account>" -> events the account
//	                               appended to the stream in that hour (hours since
//	                               the epoch, on the clock that stamps the ids):
//	                               published usage, counted in the append script,
//	                               so exactly once; Meter moves it to metering
//	herald:dedupe:{<tag>}:<hex>    string, the cursor of the event whose
//	                               sha256(account NUL source NUL id), cut to 16
//	                               bytes, is <hex>; expires after the dedupe
//	                               window; <tag> is the stream's hash tag (<type>
//	                               or <type>#<partition>), so the script touches
//	                               one shard. The account scopes deduplication to
//	                               the publisher: another application sending the
//	                               same (source, id) is stored as its own event.
//	                               (Keys written before the account was part of
//	                               the hash, sha256(source NUL id), no longer
//	                               match; they expire with the window.)
package appender

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/redis/go-redis/v9"
)

// appendScript: KEYS[1] stream, KEYS[2] dedupe key, KEYS[3] the stream's
// count hash; ARGV[1] dedupe window in seconds, ARGV[2] max length of the
// stream, ARGV[3] max age of its entries in milliseconds (0: no age limit),
// ARGV[4] the stream's number, ARGV[5] the publishing account, ARGV[6..]
// entry fields. Returns {1, id} for a new entry, {0, id} for a duplicate.
// A new entry is counted for its account in the same script: a duplicate
// never is, and a counted entry is always in the log.
//
// Ids are stamped here rather than by Redis ('*'), because Redis numbers the
// entries of each stream separately: two types written in the same
// millisecond would both get <ms>-0, and one cursor could not say which of
// them a reader had seen. The id is <ms>-<k * 2^24 + stream number>, with ms
// from the Redis clock (never below the stream's last id) and k counting the
// stream's entries within that millisecond, so ids are unique across streams
// and increase within each.
//
// Trimming is approximate (~): Redis removes whole macro-nodes, which is
// cheap and never trims more than asked. Ages are measured on the clock that
// stamps the ids.
var appendScript = redis.NewScript(`
local prev = redis.call('GET', KEYS[2])
if prev then return {0, prev} end
local slots = 16777216
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local lms, lseq = string.match(last[1][1], '^(%d+)-(%d+)$')
  lms = tonumber(lms)
  if lms >= ms then
    ms = lms
    k = math.floor(tonumber(lseq) / slots) + 1
  end
end
local id = string.format('%.0f-%.0f', ms, k * slots + tonumber(ARGV[4]))
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, unpack(ARGV, 6))
redis.call('HINCRBY', KEYS[3], string.format('%.0f', math.floor(ms / 3600000)) .. '|' .. ARGV[5], 1)
local maxAge = tonumber(ARGV[3])
if maxAge > 0 and ms > maxAge then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f', ms - maxAge))
end
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
`)

// numberScript gives a stream its number once: KEYS[1] the numbers hash,
// ARGV[1] the stream key. Every router gets the same answer.
var numberScript = redis.NewScript(`
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n then return tonumber(n) end
n = redis.call('HINCRBY', KEYS[1], '#next', 1)
redis.call('HSET', KEYS[1], ARGV[1], n)
return n
`)

const numbersKey = "herald:log:numbers"

// maxStreams is how many stream numbers fit beside k in an id's sequence.
const maxStreams = 1<<24 - 1

// Options configure an Appender.
type Options struct {
	// DedupeWindow is how long (account, source, id) is remembered.
	// Default 24h.
	DedupeWindow time.Duration
	// MaxLen caps each stream (approximately). Default 1,000,000.
	MaxLen int64
}

// Appender appends to the log.
type Appender struct {
	rdb     redis.Cmdable
	mu      sync.Mutex
	numbers map[string]int64
	window  string
	maxLen  string
}

// New returns an Appender.
func New(rdb redis.Cmdable, o Options) *Appender {
	if o.DedupeWindow <= 0 {
		o.DedupeWindow = 24 * time.Hour
	}
	if o.MaxLen <= 0 {
		o.MaxLen = 1_000_000
	}
	// SET EX takes whole seconds, and refuses 0 (after the script's XADD ran):
	// round a partial second up.
	secs := int64((o.DedupeWindow + time.Second - 1) / time.Second)
	return &Appender{rdb: rdb, numbers: map[string]int64{}, window: strconv.FormatInt(secs, 10), maxLen: strconv.FormatInt(o.MaxLen, 10)}
}

// Item is one event to append.
type Item struct {
	Event   *eventv1.CloudEvent
	Account string
	// Retention of its type: at most MaxLen entries (0: the appender's
	// default) and none older than MaxAge (0: no age limit).
	MaxLen int64
	MaxAge time.Duration
	// Partition of the type's log (0..n-1); events of one partition key
	// always share one.
	Partition int
}

// Result is the outcome of one append.
type Result struct {
	Cursor    string
	Duplicate bool
}

// ErrOutOfMemory means Redis refused the write because it reached maxmemory.
var ErrOutOfMemory = errors.New("redis is out of memory")

// DedupeKey is the key remembering account's (source, id) for a type
// (partition 0).
func DedupeKey(eventType, account, source, id string) string {
	return dedupeKey(eventType, account, source, id)
}

// dedupeKey shares the hash tag of the stream (tag: the type, or type#p).
// Accounts never contain NUL (nor |), so the fields cannot run together.
func dedupeKey(tag, account, source, id string) string {
	sum := sha256.Sum256([]byte(account + "\x00" + source + "\x00" + id))
	return "herald:dedupe:{" + tag + "}:" + hex.EncodeToString(sum[:16])
}

// Append appends items in order, in one round trip. Either every item is
// stored (or found to be a duplicate) and results are returned, or an error
// is: a caller retrying the whole batch cannot create copies.
func (a *Appender) Append(ctx context.Context, items []Item) ([]Result, error) {
	if len(items) == 0 {
		return nil, nil
	}
	keys := make([][]string, len(items))
	args := make([][]any, len(items))
	for i, it := range items {
		if it.Account == "" || strings.ContainsAny(it.Account, "|\x00") {
			return nil, fmt.Errorf("append: account %q: want a non-empty account without | or NUL", it.Account)
		}
		fields, err := eventlog.Encode(it.Event, it.Account)
		if err != nil {
			return nil, err
		}
		tag := eventlog.Tag(it.Event.GetType(), it.Partition)
		stream := eventlog.TagKey(tag)
		n, err := a.streamNumber(ctx, stream)
		if err != nil {
			return nil, err
		}
		keys[i] = []string{stream, dedupeKey(tag, it.Account, it.Event.GetSource(), it.Event.GetId()), CountKey(tag)}
		maxLen := a.maxLen
		if it.MaxLen > 0 {
			maxLen = strconv.FormatInt(it.MaxLen, 10)
		}
		args[i] = append([]any{a.window, maxLen, strconv.FormatInt(it.MaxAge.Milliseconds(), 10), n, it.Account}, fields...)
	}
	res := make([]Result, len(keys))
	all := make([]int, len(keys))
	for i := range all {
		all[i] = i
	}
	again, err := a.run(ctx, keys, args, all, res)
	if err == nil && len(again) > 0 {
		// Redis restarted or flushed its script cache (or another caller
		// loaded it midway through this pipeline): load it and run again
		// only the entries that were refused. Those that ran keep their
		// answer: run again, a new entry would be answered duplicate.
		if err = appendScript.Load(ctx, a.rdb).Err(); err == nil {
			if again, err = a.run(ctx, keys, args, again, res); err == nil && len(again) > 0 {
				err = errors.New("NOSCRIPT after SCRIPT LOAD")
			}
		}
	}
	if err != nil {
		if strings.Contains(err.Error(), "OOM") {
			return nil, fmt.Errorf("%w: %v", ErrOutOfMemory, err)
		}
		return nil, fmt.Errorf("append: %w", err)
	}
	return res, nil
}

// run runs the append script for the entries idx in one pipeline, filling
// their results in out. It returns the entries Redis refused with NOSCRIPT.
func (a *Appender) run(ctx context.Context, keys [][]string, args [][]any, idx []int, out []Result) (noScript []int, err error) {
	pipe := a.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(idx))
	for j, i := range idx {
		cmds[j] = appendScript.EvalSha(ctx, pipe, keys[i], args[i]...)
	}
	if _, err := pipe.Exec(ctx); err != nil && !isNoScript(err) {
		return nil, err
	}
	for j, c := range cmds {
		v, err := c.Slice()
		if isNoScript(err) {
			noScript = append(noScript, idx[j])
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(v) != 2 {
			return nil, fmt.Errorf("append script answered %v", v)
		}
		isNew, _ := v[0].(int64)
		id, _ := v[1].(string)
		out[idx[j]] = Result{Cursor: id, Duplicate: isNew == 0}
	}
	return noScript, nil
}

// streamNumber returns the stream's number, remembered after the first ask.
func (a *Appender) streamNumber(ctx context.Context, stream string) (int64, error) {
	a.mu.Lock()
	n, ok := a.numbers[stream]
	a.mu.Unlock()
	if ok {
		return n, nil
	}
	n, err := numberScript.Run(ctx, a.rdb, []string{numbersKey}, stream).Int64()
	if err != nil {
		return 0, fmt.Errorf("number stream %s: %w", stream, err)
	}
	if n > maxStreams {
		return 0, fmt.Errorf("stream %s would be number %d: at most %d streams fit in a cursor", stream, n, maxStreams)
	}
	a.mu.Lock()
	a.numbers[stream] = n
	a.mu.Unlock()
	return n, nil
}

func isNoScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }

// Load loads the script into Redis (at start, so the first batch is fast).
func (a *Appender) Load(ctx context.Context) error { return appendScript.Load(ctx, a.rdb).Err() }
