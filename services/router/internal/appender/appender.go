// Package appender writes events to the log: one Lua script per event
// deduplicates on (source, id) and appends, atomically, and a batch is one
// pipelined round trip.
//
// Keys (besides eventlog's streams):
//
//	herald:dedupe:{<type>}:<hex>   string, the cursor of the event whose
//	                               sha256(source NUL id) is <hex>; expires after
//	                               the dedupe window. It shares the stream's hash
//	                               tag, so the script touches one shard.
package appender

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/redis/go-redis/v9"
)

// appendScript: KEYS[1] stream, KEYS[2] dedupe key; ARGV[1] dedupe window in
// seconds, ARGV[2] max length of the stream, ARGV[3] max age of its entries
// in milliseconds (0: no age limit), ARGV[4..] entry fields. Trimming is
// approximate (~), as Redis does it whole macro-nodes at a time: cheap, and
// never trims more than asked. Ages are measured on the Redis clock, the one
// that stamps entry ids.
// Returns {1, id} for a new entry, {0, id} for a duplicate.
var appendScript = redis.NewScript(`
local prev = redis.call('GET', KEYS[2])
if prev then return {0, prev} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 4))
local maxAge = tonumber(ARGV[3])
if maxAge > 0 then
  local ms = tonumber(string.match(id, '^(%d+)-'))
  if ms > maxAge then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', tostring(ms - maxAge))
  end
end
redis.call('SET', KEYS[2], id, 'EX', ARGV[1])
return {1, id}
`)

// Options configure an Appender.
type Options struct {
	// DedupeWindow is how long (source, id) is remembered. Default 24h.
	DedupeWindow time.Duration
	// MaxLen caps each stream (approximately). Default 1,000,000.
	MaxLen int64
}

// Appender appends to the log.
type Appender struct {
	rdb    redis.Cmdable
	window string
	maxLen string
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
	return &Appender{rdb: rdb, window: strconv.FormatInt(secs, 10), maxLen: strconv.FormatInt(o.MaxLen, 10)}
}

// Item is one event to append.
type Item struct {
	Event   *eventv1.CloudEvent
	Account string
	// Retention of its type: at most MaxLen entries (0: the appender's
	// default) and none older than MaxAge (0: no age limit).
	MaxLen int64
	MaxAge time.Duration
}

// Result is the outcome of one append.
type Result struct {
	Cursor    string
	Duplicate bool
}

// ErrOutOfMemory means Redis refused the write because it reached maxmemory.
var ErrOutOfMemory = errors.New("redis is out of memory")

// DedupeKey is the key remembering (source, id) for a type.
func DedupeKey(eventType, source, id string) string {
	sum := sha256.Sum256([]byte(source + "\x00" + id))
	return "herald:dedupe:{" + eventType + "}:" + hex.EncodeToString(sum[:16])
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
		fields, err := eventlog.Encode(it.Event, it.Account)
		if err != nil {
			return nil, err
		}
		keys[i] = []string{eventlog.StreamKey(it.Event.GetType()), DedupeKey(it.Event.GetType(), it.Event.GetSource(), it.Event.GetId())}
		maxLen := a.maxLen
		if it.MaxLen > 0 {
			maxLen = strconv.FormatInt(it.MaxLen, 10)
		}
		args[i] = append([]any{a.window, maxLen, strconv.FormatInt(it.MaxAge.Milliseconds(), 10)}, fields...)
	}
	res, err := a.run(ctx, keys, args)
	if err != nil && isNoScript(err) {
		// Redis restarted or flushed its script cache: load and retry. The
		// script is idempotent, so retrying entries that did run is safe.
		if err = appendScript.Load(ctx, a.rdb).Err(); err == nil {
			res, err = a.run(ctx, keys, args)
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

func (a *Appender) run(ctx context.Context, keys [][]string, args [][]any) ([]Result, error) {
	pipe := a.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(keys))
	for i := range keys {
		cmds[i] = appendScript.EvalSha(ctx, pipe, keys[i], args[i]...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	out := make([]Result, len(cmds))
	for i, c := range cmds {
		v, err := c.Slice()
		if err != nil {
			return nil, err
		}
		if len(v) != 2 {
			return nil, fmt.Errorf("append script answered %v", v)
		}
		isNew, _ := v[0].(int64)
		id, _ := v[1].(string)
		out[i] = Result{Cursor: id, Duplicate: isNew == 0}
	}
	return out, nil
}

func isNoScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }

// Load loads the script into Redis (at start, so the first batch is fast).
func (a *Appender) Load(ctx context.Context) error { return appendScript.Load(ctx, a.rdb).Err() }
