package eventlog

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"weak"

	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/redis/go-redis/v9"
)

// clockScript reads the clock of the node that serves KEYS[1] as master.
// Sent in a pipeline just before the XREAD of KEYS[1]'s slot, it is routed
// with it (MOVED and ASK included) and runs before it on the same node: the
// clock of the master that stamps that slot's ids, read before its streams.
// It writes nothing, so it runs even when Redis is out of memory.
const clockScript = "#!lua flags=no-writes\nreturn redis.call('TIME')"

// layout is how a client's streams must be read.
type layout int

const (
	// oneServer: one Redis server that serves every key: one clock, one
	// XREAD over every stream.
	oneServer layout = iota
	// oneNode: one node of a Redis Cluster reached by a plain client (it
	// refused a cross-slot XREAD): one clock, one XREAD per slot.
	oneNode
	// sharded: a Redis Cluster client: per slot, the clock of that slot's
	// master and the XREAD of its streams.
	sharded
)

// slotted remembers the plain clients whose server refused a cross-slot
// XREAD (a Redis Cluster node), so that they are not asked again. Weak keys,
// dropped once their client is garbage collected.
var slotted sync.Map // weak.Pointer[redis.Client] -> struct{}

func layoutOf(rdb redis.Cmdable) layout {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		return sharded
	case *redis.Client:
		if _, ok := slotted.Load(weak.Make(c)); ok {
			return oneNode
		}
	}
	return oneServer
}

func markSlotted(rdb redis.Cmdable) {
	if c, ok := rdb.(*redis.Client); ok {
		k := weak.Make(c)
		if _, known := slotted.LoadOrStore(k, struct{}{}); !known {
			runtime.AddCleanup(c, func(k weak.Pointer[redis.Client]) { slotted.Delete(k) }, k)
		}
	}
}

func isCrossSlot(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "CROSSSLOT") }

// bySlot groups streams by hash slot, in the order of each slot's first
// stream.
func bySlot(streams []string) [][]string {
	at := make(map[uint16]int, len(streams))
	var groups [][]string
	for _, s := range streams {
		sl := redisserver.Slot(s)
		i, ok := at[sl]
		if !ok {
			i = len(groups)
			at[sl] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], s)
	}
	return groups
}

// Batch is the answer of Read.
type Batch struct {
	// Entries after the position read from, up to Complete, in id order.
	Entries []Entry
	// Complete is the position up to which the answer is complete: every
	// entry of the streams with an id up to it has been returned, and no
	// later write can get an id at or below it. Never below the position
	// read from.
	Complete ID
	// Held is the lowest id read but held back, because it is beyond the
	// clock of one of the streams' masters; Zero when nothing was.
	Held ID

	streams []string
	seen    map[string]ID   // per stream, the newest id read (held ones included)
	full    map[string]bool // streams that returned count entries: more to read
}

// ReadAfter returns entries with ids after `after` from the given streams,
// merged in id order, and the position up to which the answer is complete:
// every entry of these streams with an id up to it has been returned, and no
// later write can get an id at or below it. Entries stamped in the current
// millisecond of any of the streams' masters are held back until it has
// passed, since a write to another stream in the same millisecond, or on a
// shard whose clock is behind, could still get a lower id. Callers continue
// from the returned position. count bounds the entries read per stream.
func ReadAfter(ctx context.Context, rdb redis.Cmdable, streams []string, after ID, count int64) ([]Entry, ID, error) {
	b, err := Read(ctx, rdb, streams, after, count)
	return b.Entries, b.Complete, err
}

// Read is ReadAfter, with what a Waiter needs to wait past the answer.
//
// One round trip: on one server, its clock then one XREAD of every stream;
// on a Redis Cluster (a *redis.ClusterClient), per hash slot, the clock of
// that slot's master followed by the XREAD of its streams (go-redis sends
// each slot's pair to its master, in order). Complete is the lowest of every
// clock read, less one millisecond, and of the last id of every stream that
// returned count entries: under clock skew between masters, an entry is
// released only once every stream's own master clock has passed it. The
// reads must go to the masters: a cluster client that routes reads to
// replicas (ReadOnly, RouteByLatency, RouteRandomly) could miss entries its
// master had when it answered the clock.
func Read(ctx context.Context, rdb redis.Cmdable, streams []string, after ID, count int64) (Batch, error) {
	return read(ctx, rdb, layoutOf(rdb), streams, after, count)
}

func read(ctx context.Context, rdb redis.Cmdable, lay layout, streams []string, after ID, count int64) (Batch, error) {
	b := Batch{Complete: after, streams: streams}
	if len(streams) == 0 {
		return b, nil
	}
	groups := [][]string{streams}
	if lay != oneServer {
		groups = bySlot(streams)
	}
	pipe := rdb.Pipeline()
	var clock *redis.TimeCmd
	var clocks []*redis.Cmd
	if lay != sharded {
		clock = pipe.Time(ctx)
	}
	reads := make([]*redis.XStreamSliceCmd, len(groups))
	for i, g := range groups {
		if lay == sharded {
			clocks = append(clocks, pipe.Eval(ctx, clockScript, g[:1]))
		}
		reads[i] = pipe.XRead(ctx, readArgs(g, func(string) ID { return after }, count, -1))
	}
	_, _ = pipe.Exec(ctx) // errors per command below
	if lay == oneServer && isCrossSlot(reads[0].Err()) {
		markSlotted(rdb)
		return read(ctx, rdb, oneNode, streams, after, count)
	}
	limit := ID{Ms: math.MaxUint64, Seq: math.MaxUint64}
	lower := func(ms uint64) {
		if w := (ID{Ms: ms - 1, Seq: math.MaxUint64}); w.Less(limit) {
			limit = w
		}
	}
	if clock != nil {
		now, err := clock.Result()
		if err != nil {
			return b, fmt.Errorf("read log: redis TIME: %w", err)
		}
		lower(uint64(now.UnixMilli()))
	}
	for i, c := range clocks {
		ms, err := clockMs(c)
		if err != nil {
			return b, fmt.Errorf("read log: clock of %s's master: %w", groups[i][0], err)
		}
		lower(ms)
	}
	var res []redis.XStream
	for _, r := range reads {
		s, err := r.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return b, fmt.Errorf("read log: %w", err)
		}
		res = append(res, s...)
	}
	for _, s := range res {
		if len(s.Messages) == 0 {
			continue
		}
		last := MustParseID(s.Messages[len(s.Messages)-1].ID)
		if b.seen == nil {
			b.seen = map[string]ID{}
		}
		b.seen[s.Stream] = last
		if count > 0 && int64(len(s.Messages)) >= count {
			// This stream may hold more: the answer is complete only up to
			// its last returned entry.
			if b.full == nil {
				b.full = map[string]bool{}
			}
			b.full[s.Stream] = true
			if last.Less(limit) {
				limit = last
			}
		}
	}
	for _, s := range res {
		for _, m := range s.Messages {
			e, err := Decode(s.Stream, m)
			if err != nil {
				return b, err
			}
			if limit.Less(e.ID) {
				if b.Held == Zero || e.ID.Less(b.Held) {
					b.Held = e.ID
				}
				break
			}
			b.Entries = append(b.Entries, e)
		}
	}
	slices.SortFunc(b.Entries, func(x, y Entry) int { return x.ID.Compare(y.ID) })
	if after.Less(limit) {
		b.Complete = limit
	}
	return b, nil
}

// clockMs is the answer of clockScript in milliseconds.
func clockMs(c *redis.Cmd) (uint64, error) {
	v, err := c.Slice()
	if err != nil {
		return 0, err
	}
	if len(v) != 2 {
		return 0, fmt.Errorf("TIME answered %v", v)
	}
	sec, err1 := strconv.ParseUint(fmt.Sprint(v[0]), 10, 64)
	usec, err2 := strconv.ParseUint(fmt.Sprint(v[1]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("TIME answered %v", v)
	}
	return sec*1000 + usec/1000, nil
}

// readArgs is an XREAD of streams, each after its position.
func readArgs(streams []string, after func(string) ID, count int64, block time.Duration) *redis.XReadArgs {
	args := make([]string, 0, 2*len(streams))
	args = append(args, streams...)
	for _, s := range streams {
		args = append(args, after(s).String())
	}
	return &redis.XReadArgs{Streams: args, Count: count, Block: block}
}

// Watermark is the position below which no stream of streams can get a new
// entry: one millisecond before the lowest clock of the streams' masters
// (of every master, with no streams). A reader that starts there misses
// nothing written after it started, whichever shard the write lands on.
func Watermark(ctx context.Context, rdb redis.Cmdable, streams []string) (ID, error) {
	var ms uint64 = math.MaxUint64
	cc, isCluster := rdb.(*redis.ClusterClient)
	switch {
	case !isCluster:
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			return Zero, fmt.Errorf("redis TIME: %w", err)
		}
		ms = uint64(now.UnixMilli())
	case len(streams) == 0:
		var mu sync.Mutex
		err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			now, err := c.Time(ctx).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			ms = min(ms, uint64(now.UnixMilli()))
			mu.Unlock()
			return nil
		})
		if err != nil {
			return Zero, fmt.Errorf("redis TIME: %w", err)
		}
	default:
		pipe := cc.Pipeline()
		groups := bySlot(streams)
		clocks := make([]*redis.Cmd, len(groups))
		for i, g := range groups {
			clocks[i] = pipe.Eval(ctx, clockScript, g[:1])
		}
		_, _ = pipe.Exec(ctx)
		for i, c := range clocks {
			m, err := clockMs(c)
			if err != nil {
				return Zero, fmt.Errorf("clock of %s's master: %w", groups[i][0], err)
			}
			ms = min(ms, m)
		}
	}
	return ID{Ms: ms - 1, Seq: math.MaxUint64}, nil
}

// WaitAfter blocks until one of the streams has an entry after `after`, the
// timeout passes, or ctx ends. It reports whether there is something to read.
// It is a Waiter used once; a loop should keep one Waiter.
func WaitAfter(ctx context.Context, rdb redis.Cmdable, streams []string, after ID, timeout time.Duration) (bool, error) {
	return NewWaiter(rdb).WaitAfter(ctx, streams, after, timeout)
}

// Waiter waits for new entries on many streams. On one server that is one
// blocking XREAD; on a Redis Cluster, one per hash slot, all at once, each on
// its own connection (to that slot's master), and the wait ends at the first
// answer. The reads a wait leaves blocked are not abandoned: the next wait of
// the same Waiter on the same streams takes them over, so a Waiter holds at
// most one blocking read per slot (go-redis cannot interrupt a blocked read,
// and a reader that woke up on one shard would otherwise pile up reads on
// the others). The connections come from the client's pool: at most half
// of it (of one node's, on a cluster) blocks; the slots beyond that are
// polled every pollEvery while the wait lasts, a pipelined non-blocking
// XREAD, rather than leave the client without connections.
type Waiter struct {
	rdb        redis.Cmdable
	maxBlocked int // slot groups that block at once
	mu         sync.Mutex
	flight     map[string]*blocked // by slot group (its streams, joined)
	slotted    bool                // the server refused a cross-slot XREAD
}

// pollEvery is how often a Waiter polls the slots it does not block on.
const pollEvery = 20 * time.Millisecond

// blocked is one blocking XREAD in flight.
type blocked struct {
	done chan struct{}
	more bool
	err  error
}

// NewWaiter returns a Waiter on rdb.
func NewWaiter(rdb redis.Cmdable) *Waiter {
	pool := 0
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		pool = c.Options().PoolSize
	case *redis.Client:
		pool = c.Options().PoolSize
	}
	if pool <= 0 {
		pool = 10 * runtime.GOMAXPROCS(0) // go-redis' default
	}
	return &Waiter{rdb: rdb, maxBlocked: max(1, pool/2), flight: map[string]*blocked{}}
}

// WaitAfter blocks until one of the streams has an entry after `after`, the
// timeout passes, or ctx ends. It reports whether there is something to read.
func (w *Waiter) WaitAfter(ctx context.Context, streams []string, after ID, timeout time.Duration) (bool, error) {
	if len(streams) == 0 {
		return false, nil
	}
	return w.wait(ctx, streams, func(string) ID { return after }, timeout)
}

// WaitPast blocks until the streams of b have an entry that b did not read,
// the timeout passes, or ctx ends; when b held entries back, at most until
// the clocks should have passed them. It reports whether there is something
// new to read: after a false answer, read again anyway (a held entry may be
// due). A stream that returned the whole count is not waited on: it has more.
func (w *Waiter) WaitPast(ctx context.Context, b Batch, timeout time.Duration) (bool, error) {
	if len(b.streams) == 0 {
		return false, nil
	}
	if b.Held != Zero {
		// The lowest clock is Complete.Ms+1: Held is due when it passes Held.Ms.
		due := time.Duration(b.Held.Ms-min(b.Held.Ms, b.Complete.Ms)) * time.Millisecond
		timeout = min(timeout, max(due, time.Millisecond))
	}
	streams := make([]string, 0, len(b.streams))
	for _, s := range b.streams {
		if !b.full[s] {
			streams = append(streams, s)
		}
	}
	if len(streams) == 0 {
		// Everything waits to be read: wait only for the clocks.
		sleep(ctx, timeout)
		return false, ctx.Err()
	}
	return w.wait(ctx, streams, func(s string) ID {
		if seen, ok := b.seen[s]; ok && b.Complete.Less(seen) {
			return seen
		}
		return b.Complete
	}, timeout)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (w *Waiter) wait(ctx context.Context, streams []string, after func(string) ID, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		left := time.Until(deadline)
		if left < time.Millisecond {
			return false, nil
		}
		lay := layoutOf(w.rdb)
		w.mu.Lock()
		if lay == oneServer && w.slotted {
			lay = oneNode
		}
		w.mu.Unlock()
		groups := [][]string{streams}
		if lay != oneServer {
			groups = bySlot(streams)
		}
		var polled [][]string
		if len(groups) > w.maxBlocked {
			groups, polled = groups[:w.maxBlocked], groups[w.maxBlocked:]
		}
		var ticker *time.Ticker
		var tick <-chan time.Time
		if len(polled) > 0 {
			ticker = time.NewTicker(pollEvery)
			tick = ticker.C
		}
		first := make(chan *blocked, len(groups))
		stop := make(chan struct{})
		for _, g := range groups {
			bl := w.start(g, after, left)
			go func() {
				select {
				case <-bl.done:
					first <- bl
				case <-stop:
				}
			}()
		}
		var bl *blocked
	wait:
		for {
			select {
			case bl = <-first:
			case <-timer.C:
			case <-ctx.Done():
			case <-tick:
				more, err := w.poll(ctx, polled, after)
				if err == nil && !more {
					continue
				}
				bl = &blocked{more: more, err: err}
			}
			break wait
		}
		if ticker != nil {
			ticker.Stop()
		}
		close(stop)
		switch {
		case bl == nil:
			return false, ctx.Err()
		case bl.err != nil && lay == oneServer && isCrossSlot(bl.err):
			markSlotted(w.rdb)
			w.mu.Lock()
			w.slotted = true
			w.mu.Unlock()
		case bl.err != nil:
			return false, bl.err
		case bl.more:
			return true, nil
		}
		// One read timed out before this wait did: block on its slot again
		// (the others are taken over).
	}
}

// poll reads the slot groups once, without blocking: is there an entry?
func (w *Waiter) poll(ctx context.Context, groups [][]string, after func(string) ID) (bool, error) {
	pipe := w.rdb.Pipeline()
	reads := make([]*redis.XStreamSliceCmd, len(groups))
	for i, g := range groups {
		reads[i] = pipe.XRead(ctx, readArgs(g, after, 1, -1))
	}
	_, _ = pipe.Exec(ctx)
	for _, r := range reads {
		res, err := r.Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		}
		if len(res) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// start returns the blocking read of one slot group in flight, or starts
// one. It does not end with ctx: it blocks at most for block.
func (w *Waiter) start(streams []string, after func(string) ID, block time.Duration) *blocked {
	key := strings.Join(streams, "\x00")
	w.mu.Lock()
	defer w.mu.Unlock()
	if bl := w.flight[key]; bl != nil {
		return bl
	}
	bl := &blocked{done: make(chan struct{})}
	w.flight[key] = bl
	args := readArgs(streams, after, 1, max(block, time.Millisecond))
	go func() {
		// Its own context: a blocked read outlives the wait that started
		// it, for the next wait to take over.
		ctx, cancel := context.WithTimeout(context.Background(), block+30*time.Second)
		res, err := w.rdb.XRead(ctx, args).Result()
		cancel()
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		w.mu.Lock()
		if w.flight[key] == bl {
			delete(w.flight, key)
		}
		w.mu.Unlock()
		bl.more, bl.err = len(res) > 0, err
		close(bl.done)
	}()
	return bl
}
