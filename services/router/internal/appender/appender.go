// Package appender writes events to the log: one Lua script per stream of
// a batch deduplicates each event on (publishing account, source, id) and
// appends it, atomically, and a batch is one pipelined round trip (per
// master of a Redis Cluster). With Options.ReplicaAcks, each master's
// round trip ends with WAIT, so that an acknowledged event survives the
// loss of its master once a replica that has it is promoted.
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
// ARGV[4] the stream's number, ARGV[5] "1" to write even when every event
// is a duplicate, then per event: its publishing account, the number of
// its entry fields, and the fields. It returns, per event, 1 and the new
// entry's id, or 0 and the id of the entry its dedupe key already names.
// Each new entry is counted for its account in the same script: a
// duplicate never is, and a counted entry is always in the log. A dedupe
// key repeated within the batch is a duplicate of the batch's own entry.
//
// ARGV[5] is for the WAIT that follows when replicas must acknowledge:
// WAIT counts the replicas that have every write up to its connection's
// last one, and a script that only found duplicates wrote nothing. The
// entries it names may have been written by another connection (an
// earlier try whose WAIT timed out) and not reached a replica yet; the
// script then writes its first dedupe key again, unchanged, so that the
// WAIT covers them.
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
local a = 6
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
elseif ARGV[5] == '1' then
  redis.call('SET', KEYS[3], out[2], 'KEEPTTL')
end
return out
`)

// numberScript gives a stream its number once: KEYS[1] the numbers hash,
// ARGV[1] the stream key, ARGV[2] "1" to write a number already given
// again (unchanged, for a WAIT after it, as appendScript's ARGV[5]). Every
// router gets the same answer.
var numberScript = redis.NewScript(`
local n = redis.call('HGET', KEYS[1], ARGV[1])
if n then
  if ARGV[2] == '1' then redis.call('HSET', KEYS[1], ARGV[1], n) end
  return tonumber(n)
end
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
	// ReplicaAcks is how many replicas of a stream's master must
	// acknowledge its writes (WAIT) before Append answers; fewer within
	// ReplicaTimeout fail the call with ErrNotReplicated. 0 (the default):
	// Append answers once the master wrote. With it the appender needs a
	// *redis.Client or a *redis.ClusterClient: it sends each master's
	// scripts and their WAIT in one pipeline on that master's own client.
	ReplicaAcks int
	// ReplicaTimeout bounds the wait for replicas (WAIT's timeout). It
	// must stay below the client's read timeout. Default 1s.
	ReplicaTimeout time.Duration
}

// Appender appends to the log.
type Appender struct {
	rdb     redis.Cmdable
	mu      sync.Mutex
	numbers map[string]int64
	window  string
	maxLen  string

	maxCombined    int
	timeout        time.Duration
	replicaAcks    int
	replicaTimeout time.Duration
	qmu            sync.Mutex
	queues         map[string]*queue // by master address ("" on one server)
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
	if o.ReplicaTimeout <= 0 {
		o.ReplicaTimeout = time.Second
	}
	return &Appender{
		rdb: rdb, numbers: map[string]int64{}, window: strconv.FormatInt(secs, 10), maxLen: strconv.FormatInt(o.MaxLen, 10),
		maxCombined: o.MaxCombined, timeout: o.Timeout, replicaAcks: max(0, o.ReplicaAcks), replicaTimeout: o.ReplicaTimeout,
		queues: map[string]*queue{},
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
// wait for one fsync rather than one each. On a Redis Cluster each master
// has its queue: a master that is down (until its replica takes over)
// holds up only the calls that write to it, and a call writing to several
// masters waits for each.
func (a *Appender) Append(ctx context.Context, items []Item) ([]Result, error) {
	if len(items) == 0 {
		return nil, nil
	}
	preps, err := a.prepare(ctx, items)
	if err != nil {
		return nil, err
	}
	shards, parts := a.split(ctx, preps)
	ws := make([]*waiter, len(parts))
	a.qmu.Lock()
	for i, part := range parts {
		w := &waiter{preps: part, done: make(chan struct{})}
		ws[i] = w
		q := a.queues[shards[i]]
		if q == nil {
			q = &queue{}
			a.queues[shards[i]] = q
		}
		q.waiters = append(q.waiters, w)
		if !q.flushing {
			q.flushing = true
			go a.flushLoop(shards[i], q)
		}
	}
	a.qmu.Unlock()
	for _, w := range ws {
		select {
		case <-w.done:
			if w.err != nil {
				return nil, w.err
			}
		case <-ctx.Done():
			// The events may still be appended: a retry is deduplicated.
			return nil, fmt.Errorf("append: %w", ctx.Err())
		}
	}
	if len(ws) == 1 {
		return ws[0].res, nil
	}
	res := make([]Result, len(preps))
	for _, w := range ws {
		for j, r := range w.res {
			res[w.preps[j].pos] = r
		}
	}
	return res, nil
}

// queue holds the calls waiting for a round trip to one master.
type queue struct {
	waiters  []*waiter
	flushing bool // a flushLoop runs
}

// split parts prepared items by the master of their stream (one part, ""
// but on a Redis Cluster), keeping their order within each part.
func (a *Appender) split(ctx context.Context, preps []prepared) (shards []string, parts [][]prepared) {
	cc, ok := a.rdb.(*redis.ClusterClient)
	if !ok {
		return []string{""}, [][]prepared{preps}
	}
	at := map[string]int{}
	masters := map[string]string{} // by stream: a batch is mostly of a few
	for i, p := range preps {
		shard, known := masters[p.group.stream]
		if !known {
			if m, err := cc.MasterForKey(ctx, p.group.stream); err == nil {
				shard = m.Options().Addr
			}
			masters[p.group.stream] = shard
		}
		k, ok := at[shard]
		if !ok {
			k = len(parts)
			at[shard] = k
			shards, parts = append(shards, shard), append(parts, nil)
		}
		p.pos = i
		parts[k] = append(parts[k], p)
	}
	return shards, parts
}

// waiter is one Append call waiting for its round trip.
type waiter struct {
	preps []prepared
	res   []Result
	err   error
	done  chan struct{}
}

// flushLoop sends the calls queued in q, as many as fit in one round trip
// each time, until the queue is empty; then it drops the queue.
func (a *Appender) flushLoop(shard string, q *queue) {
	for {
		a.qmu.Lock()
		if len(q.waiters) == 0 {
			q.flushing = false
			delete(a.queues, shard)
			a.qmu.Unlock()
			return
		}
		// Whole calls, at least one, up to MaxCombined events.
		n, events := 0, 0
		for n < len(q.waiters) && (n == 0 || events+len(q.waiters[n].preps) <= a.maxCombined) {
			events += len(q.waiters[n].preps)
			n++
		}
		batch := slices.Clone(q.waiters[:n])
		q.waiters = slices.Delete(q.waiters, 0, n)
		a.qmu.Unlock()

		all := make([]prepared, 0, events)
		for _, w := range batch {
			all = append(all, w.preps...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
		res, errs := a.execute(ctx, all)
		cancel()
		off := 0
		for _, w := range batch {
			n := len(w.preps)
			w.res = res[off : off+n]
			if errs != nil {
				for _, err := range errs[off : off+n] {
					if err != nil {
						w.err, w.res = err, nil
						break
					}
				}
			}
			off += n
			close(w.done)
		}
	}
}

// prepared is one item encoded for the script.
type prepared struct {
	pos    int // in its Append call
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

// execute appends prepared items: one script call per stream (and
// retention), in one round trip (one per master, in parallel, when
// replicas must acknowledge), and one more should Redis have lost the
// script. It returns the results and, per item, what kept it from being
// stored (nil: every item was), so that a shard that is down fails only
// the calls that wrote to it.
func (a *Appender) execute(ctx context.Context, preps []prepared) ([]Result, []error) {
	calls := group(a.window, a.replicaAcks > 0, preps)
	res := make([]Result, len(preps))
	if a.replicaAcks > 0 {
		a.runReplicated(ctx, calls, res)
	} else {
		a.runAll(ctx, calls, res)
	}
	var errs []error
	for _, c := range calls {
		if c.err == nil {
			continue
		}
		if errs == nil {
			errs = make([]error, len(preps))
		}
		err := c.err
		switch {
		case errors.Is(err, ErrNotReplicated):
		case strings.Contains(err.Error(), "OOM"):
			err = fmt.Errorf("%w: %v", ErrOutOfMemory, err)
		default:
			err = fmt.Errorf("append: %w", err)
		}
		for _, i := range c.idx {
			errs[i] = err
		}
	}
	return res, errs
}

// call is one run of the append script: the items of one stream with one
// retention, in their order in the batch.
type call struct {
	keys []string
	args []any
	idx  []int // the items' positions in the batch
	err  error // why its last run did not store them
}

// group builds the script calls of a batch: one per stream and retention,
// in the order of each group's first item. touch: have a call whose events
// are all duplicates write anyway (see appendScript), for a WAIT after it.
func group(window string, touch bool, preps []prepared) []*call {
	var calls []*call
	byKey := make(map[groupKey]*call, 4)
	flag := "0"
	if touch {
		flag = "1"
	}
	for i, p := range preps {
		c := byKey[p.group]
		if c == nil {
			c = &call{keys: []string{p.group.stream, CountKey(p.tag)}, args: []any{window, p.maxLen, p.maxAge, p.number, flag}}
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

// answer reads the script's answer into the results of the call's items.
// execErr is the pipeline's error, for a command it left unanswered.
func (c *call) answer(cmd *redis.Cmd, execErr error, res []Result) error {
	v, err := cmd.Slice()
	if err != nil {
		if cmd.Err() == nil && execErr != nil {
			err = execErr
		}
		return err
	}
	if len(v) != 2*len(c.idx) {
		return fmt.Errorf("append script answered %d values for %d events", len(v), len(c.idx))
	}
	for e, item := range c.idx {
		isNew, _ := v[2*e].(int64)
		id, _ := v[2*e+1].(string)
		r := Result{Cursor: id, Duplicate: isNew == 0}
		// Run again because its first WAIT was not answered, an event
		// the first run stored answers duplicate: it is still new.
		if prev := res[item]; prev.Cursor == id && !prev.Duplicate {
			r.Duplicate = false
		}
		res[item] = r
	}
	return nil
}

// runAll runs every call in one pipeline through the appender's client
// (a ClusterClient sends each master its share, in parallel).
func (a *Appender) runAll(ctx context.Context, calls []*call, res []Result) {
	all := make([]int, len(calls))
	for i := range all {
		all[i] = i
	}
	again := a.run(ctx, calls, all, res)
	if len(again) == 0 {
		return
	}
	// Redis restarted or flushed its script cache (or another caller
	// loaded it midway through this pipeline): load it and run again
	// only the calls that were refused. Those that ran keep their
	// answer: run again, a new entry would be answered duplicate.
	if err := appendScript.Load(ctx, a.rdb).Err(); err != nil {
		for _, i := range again {
			calls[i].err = err
		}
		return
	}
	for _, i := range a.run(ctx, calls, again, res) {
		calls[i].err = errors.New("NOSCRIPT after SCRIPT LOAD")
	}
}

// run runs the script calls idx in one pipeline, filling their items'
// results in out, or their errors. It returns the calls Redis refused with
// NOSCRIPT.
func (a *Appender) run(ctx context.Context, calls []*call, idx []int, out []Result) (noScript []int) {
	pipe := a.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(idx))
	for j, i := range idx {
		cmds[j] = appendScript.EvalSha(ctx, pipe, calls[i].keys, calls[i].args...)
	}
	_, execErr := pipe.Exec(ctx) // each command holds its own answer
	for j, cmd := range cmds {
		c := calls[idx[j]]
		c.err = c.answer(cmd, execErr, out)
		if isNoScript(c.err) {
			noScript = append(noScript, idx[j])
		}
	}
	return noScript
}

// ErrNotReplicated means fewer replicas than Options.ReplicaAcks
// acknowledged a write within Options.ReplicaTimeout. The write may be in
// the log (and may survive a failover, or not): a retry of the same
// events is deduplicated.
var ErrNotReplicated = errors.New("not enough replicas acknowledged the write in time")

// maxAttempts bounds the runs of one call when replicas must acknowledge:
// a moved slot, a failover in progress or a lost script each cost one.
const maxAttempts = 4

// route is where a call runs: its stream's master, asked with ASKING after
// an ASK redirection.
type route struct {
	client *redis.Client
	asking bool
}

// runReplicated runs the calls on their streams' masters, one pipeline
// per master ending with WAIT: WAIT covers only the writes of the
// connection it runs on, and a ClusterClient would send a keyless WAIT to
// any node. A call is stored once its master's WAIT counted
// Options.ReplicaAcks replicas. A call refused because its slot moved
// (MOVED, ASK), the cluster is failing over (CLUSTERDOWN, TRYAGAIN, a
// master that does not answer) or its master lost the script (NOSCRIPT), or
// whose WAIT went unanswered, runs again, on the master the topology names
// then, up to maxAttempts times. A WAIT that counted too few replicas is
// not retried: it waited its timeout.
func (a *Appender) runReplicated(ctx context.Context, calls []*call, res []Result) {
	pending := make([]int, len(calls))
	for i := range pending {
		pending[i] = i
	}
	ask := map[int]string{}          // call -> the node an ASK redirection named
	down := map[*redis.Client]bool{} // masters that did not answer
	for attempt := 0; len(pending) > 0 && attempt < maxAttempts; attempt++ {
		rounds := map[route][]int{}
		var again []int
		reload := false
		for _, i := range pending {
			addr := ask[i]
			delete(ask, i)
			r, err := a.routeOf(ctx, calls[i].keys[0], addr)
			if err != nil {
				calls[i].err = err
				again, reload = append(again, i), true
				continue
			}
			if down[r.client] {
				// The topology still names a master that did not answer:
				// no replica took over yet. Fail now (keeping the error)
				// rather than hold the batch, and the other masters'
				// calls combined with it, for more tries.
				continue
			}
			rounds[r] = append(rounds[r], i)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for r, idx := range rounds {
			wg.Go(func() {
				o := a.runOn(ctx, r, calls, idx, res)
				mu.Lock()
				defer mu.Unlock()
				again = append(again, o.again...)
				reload = reload || o.reload
				if o.down {
					down[r.client] = true
				}
				for i, addr := range o.ask {
					ask[i] = addr
				}
			})
		}
		wg.Wait()
		pending = again
		if len(pending) == 0 || attempt == maxAttempts-1 || ctx.Err() != nil {
			break
		}
		if reload {
			// The topology changed, or a master is dead and its replica
			// may be taking over: read it again before the next try, and
			// give a failover in progress a moment.
			a.reloadTopology(ctx)
			pause(ctx, time.Duration(attempt+1)*100*time.Millisecond)
		}
	}
}

// outcome is what one master's pipeline left to do.
type outcome struct {
	again  []int          // calls to run again
	reload bool           // read the topology before
	down   bool           // the master did not answer
	ask    map[int]string // calls to send to another node, with ASKING
}

// runOn runs calls idx on one master, in one pipeline ending with WAIT.
func (a *Appender) runOn(ctx context.Context, r route, calls []*call, idx []int, res []Result) outcome {
	pipe := r.client.Pipeline()
	cmds := make([]*redis.Cmd, len(idx))
	for j, i := range idx {
		if r.asking {
			pipe.Do(ctx, "asking")
		}
		cmds[j] = appendScript.EvalSha(ctx, pipe, calls[i].keys, calls[i].args...)
	}
	wait := pipe.Do(ctx, "wait", a.replicaAcks, a.replicaTimeout.Milliseconds())
	_, execErr := pipe.Exec(ctx)
	var o outcome
	var ran []int
	noScript := false
	for j, cmd := range cmds {
		i, c := idx[j], calls[idx[j]]
		err := c.answer(cmd, execErr, res)
		c.err = err
		if err == nil {
			ran = append(ran, i)
			continue
		}
		if addr, ok := redis.IsAskError(err); ok {
			if o.ask == nil {
				o.ask = map[int]string{}
			}
			o.ask[i] = addr
			o.again = append(o.again, i)
			continue
		}
		switch {
		case isNoScript(err):
			noScript = true
			o.again = append(o.again, i)
		case retryable(err):
			o.again, o.reload = append(o.again, i), true
			var re redis.Error
			o.down = o.down || !errors.As(err, &re)
		}
	}
	if len(ran) > 0 {
		n, err := wait.Int64()
		for _, i := range ran {
			switch {
			case err != nil:
				// The script ran, but whether a replica has its writes is
				// unknown: run it again (deduplicated), with a WAIT that
				// answers.
				calls[i].err = fmt.Errorf("wait for %d replicas: %w", a.replicaAcks, err)
				o.again, o.reload = append(o.again, i), o.reload || retryable(err)
			case n < int64(a.replicaAcks):
				calls[i].err = fmt.Errorf("%w: %d of %d replicas of %s acknowledged within %v",
					ErrNotReplicated, n, a.replicaAcks, r.client.Options().Addr, a.replicaTimeout)
			}
		}
	}
	if noScript {
		// This master restarted, or was promoted, without the script.
		_ = appendScript.Load(ctx, r.client).Err() // failing, the next run says why
	}
	return o
}

// routeOf is the route of a call whose first key is key, or of an ASK
// redirection to askAddr.
func (a *Appender) routeOf(ctx context.Context, key, askAddr string) (route, error) {
	switch c := a.rdb.(type) {
	case *redis.Client:
		return route{client: c}, nil
	case *redis.ClusterClient:
		if askAddr == "" {
			m, err := c.MasterForKey(ctx, key)
			return route{client: m}, err
		}
		var mu sync.Mutex
		var found *redis.Client
		err := c.ForEachMaster(ctx, func(_ context.Context, m *redis.Client) error {
			if m.Options().Addr == askAddr {
				mu.Lock()
				found = m
				mu.Unlock()
			}
			return nil
		})
		if err == nil && found == nil {
			err = fmt.Errorf("ASK names %s, which is no master of the cluster", askAddr)
		}
		return route{client: found, asking: true}, err
	}
	return route{}, fmt.Errorf("replica acknowledgements need a *redis.Client or a *redis.ClusterClient, not a %T", a.rdb)
}

// reloadTopology reads the cluster's topology now (ForEachMaster reloads
// it before it runs, where ReloadState only schedules a reload).
func (a *Appender) reloadTopology(ctx context.Context) {
	if c, ok := a.rdb.(*redis.ClusterClient); ok {
		_ = c.ForEachMaster(ctx, func(context.Context, *redis.Client) error { return nil })
	}
}

// retryable reports whether a call refused with err may succeed on another
// try once the topology is read again: a redirection, a cluster failing
// over or loading, or no answer from the node (dead, or unreachable). Any
// other answer of Redis (out of memory, a wrong type) stands.
func retryable(err error) bool {
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	if _, ok := redis.IsAskError(err); ok {
		return true
	}
	if redis.IsClusterDownError(err) || redis.IsTryAgainError(err) || redis.IsLoadingError(err) ||
		redis.IsReadOnlyError(err) || redis.IsMasterDownError(err) {
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		return false
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// streamNumber returns the stream's number, remembered after the first ask.
func (a *Appender) streamNumber(ctx context.Context, stream string) (int64, error) {
	a.mu.Lock()
	n, ok := a.numbers[stream]
	a.mu.Unlock()
	if ok {
		return n, nil
	}
	var err error
	if a.replicaAcks > 0 {
		n, err = a.numberReplicated(ctx, stream)
	} else {
		n, err = numberScript.Run(ctx, a.rdb, []string{numbersKey}, stream).Int64()
	}
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

// numberReplicated is numberScript followed by WAIT on the numbers hash's
// master: a number lost in a failover could be given to another stream.
func (a *Appender) numberReplicated(ctx context.Context, stream string) (int64, error) {
	ask := ""
	for attempt := 0; ; attempt++ {
		r, err := a.routeOf(ctx, numbersKey, ask)
		var n int64
		if err == nil {
			pipe := r.client.Pipeline()
			if r.asking {
				pipe.Do(ctx, "asking")
			}
			cmd := numberScript.Eval(ctx, pipe, []string{numbersKey}, stream, "1")
			wait := pipe.Do(ctx, "wait", a.replicaAcks, a.replicaTimeout.Milliseconds())
			_, _ = pipe.Exec(ctx)
			if n, err = cmd.Int64(); err == nil {
				acked, werr := wait.Int64()
				switch {
				case werr != nil:
					err = werr
				case acked < int64(a.replicaAcks):
					return 0, fmt.Errorf("%w: %d of %d replicas of %s acknowledged within %v",
						ErrNotReplicated, acked, a.replicaAcks, r.client.Options().Addr, a.replicaTimeout)
				default:
					return n, nil
				}
			}
		}
		if !retryable(err) || attempt == maxAttempts-1 || ctx.Err() != nil {
			return 0, err
		}
		var isAsk bool
		if ask, isAsk = redis.IsAskError(err); !isAsk {
			a.reloadTopology(ctx)
			pause(ctx, time.Duration(attempt+1)*100*time.Millisecond)
		}
	}
}

func isNoScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }

// Load loads the script into Redis (at start, so the first batch is fast).
func (a *Appender) Load(ctx context.Context) error { return appendScript.Load(ctx, a.rdb).Err() }
