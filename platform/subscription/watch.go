package subscription

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Waiting for events on Redis Cluster. A blocking XREADGROUP can wait on
// the streams of one hash slot only (Redis Cluster refuses one over
// several slots, CROSSSLOT), and a subscription's streams each have a hash
// tag of their own. So a session never blocks in Redis: it reads its
// groups without blocking, in one pipeline (which a ClusterClient splits
// per node), and waits in memory for a watch of its Manager to tell it that
// one of its streams got an entry.
//
// A watch is one blocking XREAD (no group: it consumes nothing) on one
// stream, shared by every session of the Manager that reads the stream: a
// process holds one waiting connection per stream, however many sessions
// read it, instead of one per session and stream. When the XREAD returns
// an entry, the watch adds one to its generation and wakes its sessions,
// then looks up the stream's newest entry, and wakes them again when that
// is not the entry read; the next XREAD waits for entries after the newest.
// A session notes each watch's generation before it reads the stream, and
// reads the stream again once the generation has changed. An entry the
// read missed arrived after the session noted the generation: it is the
// entry a later XREAD returns, or one appended before a later look up that
// found a newer entry than the one read; either way a wake follows. Nothing
// is missed and nothing waits for a poll: a session reads a new entry one
// round trip after the watch's XREAD returns it.
//
// A subscription's replay stream (one per subscription) is written only by
// this package (replayed dead letters and ranges, test events), which then
// tells every process with a notice on a sharded Pub/Sub channel: each
// Manager holds one connection subscribed to it, instead of one per replay
// stream. A notice lost while that connection is down is made up for when
// it subscribes again (every replay watch wakes) and by the sweep.
//
// A Manager watches at most maxWatches streams (about as many connections
// as its pool holds for the blocking reads sessions used to make); a
// session polls a stream over that limit every time it would wait
// (maxBlock) and the Manager says so in its log.

const (
	watchBlock   = 5 * time.Second        // longest XREAD of a watch: how soon an unused watch ends
	watchBackoff = 200 * time.Millisecond // pause after a failed watch command
	sweepEvery   = 10 * time.Second       // how often a session reads every group anyway
)

// watch waits for new entries on one stream for the sessions reading it.
type watch struct {
	key    string
	gen    atomic.Uint64
	subs   map[chan struct{}]struct{} // sessions to wake, under Manager.wmu
	cancel context.CancelFunc
}

// maxWatchesFor is how many streams a Manager over rdb watches at most:
// the connections its pool (per node, on a cluster) kept for blocking
// reads, leaving the rest for commands.
func maxWatchesFor(rdb redis.UniversalClient) int {
	pool := 0
	switch c := rdb.(type) {
	case *redis.Client:
		pool = c.Options().PoolSize
	case *redis.ClusterClient:
		pool = c.Options().PoolSize
	}
	if pool <= 0 {
		return 1000
	}
	return max(pool/2, pool-16, 1)
}

// replayChannel is the sharded Pub/Sub channel of replay notices: the
// message is the subscription id.
const replayChannel = "herald:sub:{replayed}"

// isReplayKey reports whether key is a subscription's replay stream.
func isReplayKey(key string) bool {
	return strings.HasPrefix(key, "herald:sub:{") && strings.HasSuffix(key, "}:replay")
}

// replayed tells every session of subID, in every process, that its replay
// stream got entries.
func (m *Manager) replayed(ctx context.Context, subID string) {
	m.wake(subID)
	m.bumpReplay(ReplayKey(subID))
	if err := m.rdb.SPublish(ctx, replayChannel, subID).Err(); err != nil {
		m.log.Warn("replay notice not sent; sessions elsewhere read the replay stream at their next sweep", "subscription", subID, "err", err)
	}
}

// bumpReplay wakes the sessions of a replay stream; "" for all of them.
func (m *Manager) bumpReplay(key string) {
	m.wmu.Lock()
	var ws []*watch
	if key == "" {
		for _, w := range m.replays {
			ws = append(ws, w)
		}
	} else if w := m.replays[key]; w != nil {
		ws = append(ws, w)
	}
	m.wmu.Unlock()
	for _, w := range ws {
		m.bump(w)
	}
}

// runNotices follows the replay notices until ctx ends.
func (m *Manager) runNotices(ctx context.Context) {
	ps := m.rdb.SSubscribe(ctx, replayChannel)
	defer context.AfterFunc(ctx, func() { _ = ps.Close() })()
	defer ps.Close()
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, watchBlock)
		switch v := msg.(type) {
		case *redis.Subscription:
			// Subscribed (again): notices sent meanwhile are lost.
			m.bumpReplay("")
		case *redis.Message:
			m.bumpReplay(ReplayKey(v.Payload))
		}
		var nerr interface{ Timeout() bool }
		switch {
		case err == nil, errors.As(err, &nerr) && nerr.Timeout():
		case errors.Is(err, redis.ErrClosed), ctx.Err() != nil:
			return
		default:
			m.log.Debug("replay notices interrupted", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(watchBackoff):
			}
		}
	}
}

// watchStream makes notify receive a token whenever key gets a new entry,
// and returns the watch; nil when the Manager watches as many streams as
// it may (the caller polls key).
func (m *Manager) watchStream(key string, notify chan struct{}) *watch {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	if isReplayKey(key) {
		w := m.replays[key]
		if w == nil {
			w = &watch{key: key, subs: map[chan struct{}]struct{}{}, cancel: func() {}}
			m.replays[key] = w
			if len(m.replays) == 1 {
				ctx, cancel := context.WithCancel(context.Background())
				m.stopNotices = cancel
				go m.runNotices(ctx)
			}
		}
		w.subs[notify] = struct{}{}
		return w
	}
	w := m.watches[key]
	if w == nil {
		if len(m.watches) >= m.maxWatches {
			if !m.overWatched {
				m.overWatched = true
				m.log.Warn("too many streams to watch: sessions poll the others every "+maxBlock.String()+"; give the Manager's Redis a larger pool",
					"watched", len(m.watches), "stream", key)
			}
			return nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		w = &watch{key: key, subs: map[chan struct{}]struct{}{}, cancel: cancel}
		m.watches[key] = w
		go m.runWatch(ctx, w)
	}
	w.subs[notify] = struct{}{}
	return w
}

// unwatch stops waking notify for w; the watch ends with its last session.
func (m *Manager) unwatch(w *watch, notify chan struct{}) {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	delete(w.subs, notify)
	if len(w.subs) == 0 && isReplayKey(w.key) {
		if m.replays[w.key] == w {
			delete(m.replays, w.key)
		}
		if len(m.replays) == 0 && m.stopNotices != nil {
			m.stopNotices()
			m.stopNotices = nil
		}
		return
	}
	if len(w.subs) == 0 {
		w.cancel()
		if m.watches[w.key] == w {
			delete(m.watches, w.key)
		}
		m.overWatched = false
	}
}

// Watched is how many streams the Manager watches now with a blocking
// read of their own (replay streams are not counted: notices wake them).
func (m *Manager) Watched() int {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	return len(m.watches)
}

// bump tells w's sessions that its stream may have new entries.
func (m *Manager) bump(w *watch) {
	w.gen.Add(1)
	m.wmu.Lock()
	defer m.wmu.Unlock()
	for ch := range w.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// runWatch waits for entries on w's stream until ctx ends.
func (m *Manager) runWatch(ctx context.Context, w *watch) {
	last := "" // the newest entry when last looked up; "" to look it up
	for ctx.Err() == nil {
		if last == "" {
			msgs, err := m.rdb.XRevRangeN(ctx, w.key, "+", "-", 1).Result()
			if err != nil {
				if !m.watchFailed(ctx, w, err) {
					return
				}
				continue
			}
			last = "0-0"
			if len(msgs) > 0 {
				last = msgs[0].ID
			}
			m.bump(w)
			continue
		}
		res, err := m.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{w.key, last}, Count: 1, Block: watchBlock}).Result()
		switch {
		case errors.Is(err, redis.Nil): // nothing new: wait again
		case err == nil:
			// Wake the sessions at once, then look up the newest entry: one
			// appended since the entry read wakes them once more.
			first := ""
			if len(res) > 0 && len(res[0].Messages) > 0 {
				first = res[0].Messages[0].ID
			}
			m.bump(w)
			msgs, err := m.rdb.XRevRangeN(ctx, w.key, "+", "-", 1).Result()
			if err != nil {
				last = ""
				if !m.watchFailed(ctx, w, err) {
					return
				}
				continue
			}
			if len(msgs) == 0 || msgs[0].ID != first {
				m.bump(w)
			}
			last = "0-0"
			if len(msgs) > 0 {
				last = msgs[0].ID
			}
		default:
			last = ""
			if !m.watchFailed(ctx, w, err) {
				return
			}
		}
	}
}

// watchFailed pauses after a failed watch command, and reports whether the
// watch goes on (not when the client is closed, or the watch ended).
func (m *Manager) watchFailed(ctx context.Context, w *watch, err error) bool {
	if errors.Is(err, redis.ErrClosed) || ctx.Err() != nil {
		return false
	}
	m.log.Debug("stream watch failed; sessions read it at the next wake", "stream", w.key, "err", err)
	select {
	case <-ctx.Done():
		return false
	case <-time.After(watchBackoff):
		return true
	}
}
