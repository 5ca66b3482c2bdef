// Package appender writes events to the log: one Lua script per stream of
// a batch deduplicates each event on (publishing account, source, id) and
// appends it, atomically, and a batch is one pipelined round trip.
//
// Keys (besides eventlog's streams):
//
//	herald:log:numbers            hash, stream key -> the stream's number (1..2^24-1),
//	                               stamped into its entry ids (see appendScript)
//	herald:count:{<tag>}           hash, "m<minute>|<account>" -> events the account
//	                               appended to the stream in that minute (minutes
//	                               since the epoch, on the clock that stamps the ids;
//	                               fields "<hour>|<account>" of older routers count
//	                               per hour):
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/redis/go-redis/v9"
)

// appendScript appends a batch of events to one stream: KEYS[1] the
// stream, KEYS[2] the stream's count hash, KEYS[3..] one dedupe key per
// event; ARGV[1] dedupe window in seconds, ARGV[2] max length of the
// stream, ARGV[3] max age of its entries in milliseconds (0: no age limit),
// ARGV[4] the stream's number, then per event: its publishing account, the
// number of its entry fields, and the fields. It returns, per event, 1 and
// the new entry's id, or 0 and the id of the entry its dedupe key already
// names. Each new entry is counted for its account in the same script: a
// duplicate never is, and a counted entry is always in the log. A dedupe
// key repeated within the batch is a duplicate of the batch's own entry.
//
// The clock, the stream's last id, the counts and the trim are read and
// written once per batch; the dedupe checks, XADDs and dedupe keys once
// per event.
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
local slots = 16777216
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = -1
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local lms, lseq = string.match(last[1][1], '^(%d+)-(%d+)$')
  lms = tonumber(lms)
  if lms >= ms then
    ms = lms
    k = math.floor(tonumber(lseq) / slots)
  end
end
local number = tonumber(ARGV[4])
local out = {}
local counts = {}
local added = 0
local a = 5
for i = 3, #KEYS do
  local account = ARGV[a]
  local nf = tonumber(ARGV[a + 1])
  local prev = redis.call('GET', KEYS[i])
  if prev then
    out[#out + 1] = 0
    out[#out + 1] = prev
  else
    k = k + 1
    local id = string.format('%.0f-%.0f', ms, k * slots + number)
    redis.call('XADD', KEYS[1], id, unpack(ARGV, a + 2, a + 1 + nf))
    redis.call('SET', KEYS[i], id, 'EX', ARGV[1])
    counts[account] = (counts[account] or 0) + 1
    added = added + 1
    out[#out + 1] = 1
    out[#out + 1] = id
  end
  a = a + 2 + nf
end
if added > 0 then
  local minute = string.format('m%.0f', math.floor(ms / 60000))
  for account, n in pairs(counts) do
    redis.call('HINCRBY', KEYS[2], minute .. '|' .. account, n)
  end
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2])
  local maxAge = tonumber(ARGV[3])
  if maxAge > 0 and ms > maxAge then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f', ms - maxAge))
  end
end
return out
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
	// MaxCombined is how many events concurrent Append calls may share in
	// one round trip. Default 1000 (a call larger than that goes alone).
	MaxCombined int
	// Timeout bounds one round trip. Default 10s.
	Timeout time.Duration
}

// Appender appends to the log.
type Appender struct {
	rdb     redis.Cmdable
	mu      sync.Mutex
	numbers map[string]int64
	window  string
	maxLen  string

	maxCombined int
	timeout     time.Duration
	qmu         sync.Mutex
	queue       []*waiter // calls waiting for a round trip
	flushing    bool      // a flushLoop runs
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
	if o.MaxCombined <= 0 {
		o.MaxCombined = 1000
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	return &Appender{
		rdb: rdb, numbers: map[string]int64{}, window: strconv.FormatInt(secs, 10), maxLen: strconv.FormatInt(o.MaxLen, 10),
		maxCombined: o.MaxCombined, timeout: o.Timeout,
	}
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

// Append appends items in order: one script call per stream (and
// retention) of the batch. Either every item is stored (or found to be a
// duplicate) and results are returned, or an error is: a caller retrying
// the whole batch cannot create copies.
//
// Concurrent calls share round trips: while one round trip is in flight,
// the calls that arrive queue, and go together in the next one as soon as
// it returns (at most MaxCombined events each). An idle Appender sends a
// call at once, so combining adds no fixed delay; under load, many callers
// wait for one fsync rather than one each.
func (a *Appender) Append(ctx context.Context, items []Item) ([]Result, error) {
	if len(items) == 0 {
		return nil, nil
	}
	preps, err := a.prepare(ctx, items)
	if err != nil {
		return nil, err
	}
	w := &waiter{preps: preps, done: make(chan struct{})}
	a.qmu.Lock()
	a.queue = append(a.queue, w)
	if !a.flushing {
		a.flushing = true
		go a.flushLoop()
	}
	a.qmu.Unlock()
	select {
	case <-w.done:
		return w.res, w.err
	case <-ctx.Done():
		// The events may still be appended: a retry is deduplicated.
		return nil, fmt.Errorf("append: %w", ctx.Err())
	}
}

// waiter is one Append call waiting for its round trip.
type waiter struct {
	preps []prepared
	res   []Result
	err   error
	done  chan struct{}
}

// flushLoop sends the queued calls, as many as fit in one round trip each
// time, until the queue is empty.
func (a *Appender) flushLoop() {
	for {
		a.qmu.Lock()
		if len(a.queue) == 0 {
			a.flushing = false
			a.qmu.Unlock()
			return
		}
		// Whole calls, at least one, up to MaxCombined events.
		n, events := 0, 0
		for n < len(a.queue) && (n == 0 || events+len(a.queue[n].preps) <= a.maxCombined) {
			events += len(a.queue[n].preps)
			n++
		}
		batch := slices.Clone(a.queue[:n])
		a.queue = slices.Delete(a.queue, 0, n)
		a.qmu.Unlock()

		all := make([]prepared, 0, events)
		for _, w := range batch {
			all = append(all, w.preps...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
		res, err := a.execute(ctx, all)
		cancel()
		off := 0
		for _, w := range batch {
			if err != nil {
				w.err = err
			} else {
				w.res = res[off : off+len(w.preps)]
			}
			off += len(w.preps)
			close(w.done)
		}
	}
}

// prepared is one item encoded for the script.
type prepared struct {
	group  groupKey
	tag    string
	number int64
	maxLen string
	maxAge string
	dedupe string
	acct   string
	fields []any
}

type groupKey struct {
	stream string
	maxLen int64
	maxAge time.Duration
}

// prepare checks and encodes items.
func (a *Appender) prepare(ctx context.Context, items []Item) ([]prepared, error) {
	out := make([]prepared, len(items))
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
		maxLen := a.maxLen
		if it.MaxLen > 0 {
			maxLen = strconv.FormatInt(it.MaxLen, 10)
		}
		out[i] = prepared{
			group: groupKey{stream, it.MaxLen, it.MaxAge}, tag: tag, number: n, maxLen: maxLen,
			maxAge: strconv.FormatInt(it.MaxAge.Milliseconds(), 10),
			dedupe: dedupeKey(tag, it.Account, it.Event.GetSource(), it.Event.GetId()), acct: it.Account, fields: fields,
		}
	}
	return out, nil
}

// execute appends prepared items in one round trip (and one more should
// Redis have lost the script).
func (a *Appender) execute(ctx context.Context, preps []prepared) ([]Result, error) {
	calls := group(a.window, preps)
	res := make([]Result, len(preps))
	all := make([]int, len(calls))
	for i := range all {
		all[i] = i
	}
	again, err := a.run(ctx, calls, all, res)
	if err == nil && len(again) > 0 {
		// Redis restarted or flushed its script cache (or another caller
		// loaded it midway through this pipeline): load it and run again
		// only the calls that were refused. Those that ran keep their
		// answer: run again, a new entry would be answered duplicate.
		if err = appendScript.Load(ctx, a.rdb).Err(); err == nil {
			if again, err = a.run(ctx, calls, again, res); err == nil && len(again) > 0 {
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

// call is one run of the append script: the items of one stream with one
// retention, in their order in the batch.
type call struct {
	keys []string
	args []any
	idx  []int // the items' positions in the batch
}

// group builds the script calls of a batch: one per stream and retention,
// in the order of each group's first item.
func group(window string, preps []prepared) []*call {
	var calls []*call
	byKey := make(map[groupKey]*call, 4)
	for i, p := range preps {
		c := byKey[p.group]
		if c == nil {
			c = &call{keys: []string{p.group.stream, CountKey(p.tag)}, args: []any{window, p.maxLen, p.maxAge, p.number}}
			byKey[p.group] = c
			calls = append(calls, c)
		}
		c.keys = append(c.keys, p.dedupe)
		c.args = append(c.args, p.acct, len(p.fields))
		c.args = append(c.args, p.fields...)
		c.idx = append(c.idx, i)
	}
	return calls
}

// run runs the script calls idx in one pipeline, filling their items'
// results in out. It returns the calls Redis refused with NOSCRIPT.
func (a *Appender) run(ctx context.Context, calls []*call, idx []int, out []Result) (noScript []int, err error) {
	pipe := a.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(idx))
	for j, i := range idx {
		cmds[j] = appendScript.EvalSha(ctx, pipe, calls[i].keys, calls[i].args...)
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
		cl := calls[idx[j]]
		if len(v) != 2*len(cl.idx) {
			return nil, fmt.Errorf("append script answered %d values for %d events", len(v), len(cl.idx))
		}
		for e, item := range cl.idx {
			isNew, _ := v[2*e].(int64)
			id, _ := v[2*e+1].(string)
			out[item] = Result{Cursor: id, Duplicate: isNew == 0}
		}
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
