package server

import (
	"container/list"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Headroom is how many connections past the ceiling are still accepted,
// to answer health checks and metrics while the server is full.
const Headroom = 16

// connTracker enforces the connection ceiling: it counts the listener's
// open connections, keeps the idle ones in the order they went idle, and
// marks connections accepted past the ceiling.
type connTracker struct {
	log     *slog.Logger
	ceiling int // <= 0: none
	hard    int // ceiling + Headroom

	mu      sync.Mutex
	open    int
	idle    *list.List // of *trackedConn, oldest idle first
	refused prometheus.Counter
	evicted prometheus.Counter
	lastLog time.Time
}

// fileReserve is what the ceiling leaves of the open-file limit for
// everything but client connections: Redis and registry connections, log
// files, the poller. An idle edge holds about 30 of them (a Redis pool, one
// blocked reader per stream it fans out, the registry watch): 84 leaves
// room for more and admits 19,900 streams under a 20,000-file limit. Small
// limits keep a larger share (64 + 10%, at most 84).
func fileReserve(limit int) int { return 64 + min(limit/10, 20) }

// openFileLimit is RLIMIT_NOFILE's soft limit, 0 when it is unlimited or
// unreadable.
func openFileLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur != unix.RLIM_INFINITY && rl.Cur < 1<<30 {
		return int(rl.Cur)
	}
	return 0
}

// derivedCeiling is the connection ceiling a limit of that many open files
// leaves (10,000 with no limit).
func derivedCeiling(limit int) int {
	if limit <= 0 {
		return 10000
	}
	return max(limit-fileReserve(limit)-Headroom, Headroom)
}

// Ceiling is the connection ceiling a listener configured with maxConns
// (Options.MaxConnections) has: maxConns itself when positive, none (0)
// when negative, else the one derived from the open-file limit. Stream
// ceilings default to it.
func Ceiling(maxConns int) int {
	switch {
	case maxConns > 0:
		return maxConns
	case maxConns < 0:
		return 0
	}
	return derivedCeiling(openFileLimit())
}

var (
	processOnce    sync.Once
	processTracker *connTracker
)

// trackerFor returns the tracker of a listener. A ceiling derived from the
// open-file limit is the process's: servers sharing a process (herald dev
// runs all four) share one count, so that together they stay below the
// limit. An explicit ceiling is the listener's own.
func trackerFor(log *slog.Logger, maxConns int) *connTracker {
	if maxConns != 0 {
		return newConnTracker(log, maxConns)
	}
	processOnce.Do(func() { processTracker = newConnTracker(log, 0) })
	return processTracker
}

func newConnTracker(log *slog.Logger, maxConns int) *connTracker {
	t := &connTracker{log: log, idle: list.New(),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_server_connections_refused_total", Help: "Connections closed at accept because the server was past its connection ceiling and headroom."}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "herald_server_idle_connections_closed_total", Help: "Idle keep-alive connections closed to make room under the connection ceiling."}),
	}
	limit := openFileLimit()
	if maxConns < 0 {
		return t
	}
	t.ceiling = Ceiling(maxConns)
	if maxConns > 0 && limit > 0 && maxConns+Headroom > limit-fileReserve(limit) {
		log.Warn("the connection ceiling is above what the open-file limit leaves for connections", "max_connections", maxConns, "nofile", limit)
	}
	t.hard = t.ceiling + Headroom
	log.Info("connection ceiling", "max_connections", t.ceiling, "headroom", Headroom, "nofile", limit)
	return t
}

func (t *connTracker) register(reg *prometheus.Registry) {
	for _, c := range []prometheus.Collector{t.refused, t.evicted,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "herald_server_connections", Help: "Open client connections."}, func() float64 {
			t.mu.Lock()
			defer t.mu.Unlock()
			return float64(t.open)
		}),
	} {
		_ = reg.Register(c) // a second server on the same registry keeps the first's
	}
}

type trackedConn struct {
	net.Conn
	t        *connTracker
	overflow bool          // accepted past the ceiling: health and metrics only
	idleAt   *list.Element // in t.idle while idle
	counted  bool          // still counted in t.open
}

type limitListener struct {
	net.Listener
	t *connTracker
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.t.ceiling <= 0 {
			return c, err
		}
		if tc := l.t.admit(c); tc != nil {
			return tc, nil
		}
		_ = c.Close()
	}
}

// admit counts a new connection, closing the oldest idle one when the
// ceiling is reached. It returns nil when even the headroom is full.
func (t *connTracker) admit(c net.Conn) *trackedConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open >= t.ceiling {
		t.evictIdleLocked()
	}
	if t.open >= t.hard {
		t.refused.Inc()
		if now := time.Now(); now.Sub(t.lastLog) > 10*time.Second {
			t.lastLog = now
			t.log.Warn("connection ceiling and headroom full: closing new connections", "max_connections", t.ceiling, "headroom", Headroom)
		}
		return nil
	}
	tc := &trackedConn{Conn: c, t: t, overflow: t.open >= t.ceiling, counted: true}
	t.open++
	return tc
}

func (t *connTracker) evictIdleLocked() bool {
	e := t.idle.Front()
	if e == nil {
		return false
	}
	tc := e.Value.(*trackedConn)
	t.forgetLocked(tc)
	t.evicted.Inc()
	go tc.Conn.Close() // the server sees the close and ends the connection
	return true
}

func (t *connTracker) forgetLocked(tc *trackedConn) {
	if tc.idleAt != nil {
		t.idle.Remove(tc.idleAt)
		tc.idleAt = nil
	}
	if tc.counted {
		tc.counted = false
		t.open--
	}
}

// state is the http.Server ConnState hook.
func (t *connTracker) state(c net.Conn, st http.ConnState) {
	tc, ok := tracked(c)
	if !ok {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch st {
	case http.StateActive:
		if tc.idleAt != nil {
			t.idle.Remove(tc.idleAt)
			tc.idleAt = nil
		}
	case http.StateIdle:
		if !tc.counted {
			return
		}
		if tc.overflow || t.open > t.ceiling {
			// Past the ceiling an idle connection is the first to go.
			t.forgetLocked(tc)
			go tc.Conn.Close()
			return
		}
		if tc.idleAt == nil {
			tc.idleAt = t.idle.PushBack(tc)
		}
	case http.StateHijacked:
		// Its handler owns it now, and it still holds a file: it counts
		// until it is closed (see trackedConn.Close), but is never idle.
		if tc.idleAt != nil {
			t.idle.Remove(tc.idleAt)
			tc.idleAt = nil
		}
	case http.StateClosed:
		t.forgetLocked(tc)
	}
}

// Close closes the connection and stops counting it (a hijacked
// connection is counted until then).
func (tc *trackedConn) Close() error {
	tc.t.mu.Lock()
	tc.t.forgetLocked(tc)
	tc.t.mu.Unlock()
	return tc.Conn.Close()
}

type connKey struct{}

// tracked is the tracked connection under c (a TLS connection wraps it).
func tracked(c net.Conn) (*trackedConn, bool) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	tc, ok := c.(*trackedConn)
	return tc, ok
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := tracked(c); ok {
		return context.WithValue(ctx, connKey{}, tc)
	}
	return ctx
}

// overflow reports whether the request came on a connection accepted past
// the ceiling, which serves only health and metrics; one that finds room
// below the ceiling again is promoted to an ordinary connection.
func (t *connTracker) overflow(ctx context.Context) bool {
	tc, ok := ctx.Value(connKey{}).(*trackedConn)
	if t == nil || !ok {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if tc.overflow && t.open <= t.ceiling {
		tc.overflow = false
	}
	return tc.overflow
}
