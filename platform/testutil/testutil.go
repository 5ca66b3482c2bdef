// Package testutil starts the real dependencies Herald's tests talk to: a
// private redis-server (or rabbitmq-server node) on free ports in the
// test's temporary directory.
package testutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/freeport"
	"github.com/heraldmesh/herald/platform/redisserver"
	"github.com/redis/go-redis/v9"
)

// Redis starts a redis-server with AOF (appendfsync always) for the test and
// stops it when the test ends. It is a Redis Cluster of one node that owns
// every slot: clients talk to it as to a standalone server, and Redis
// refuses, as a cluster would, any multi-key command, transaction or script
// whose keys are in different slots. So every test that uses it also checks
// that its keys are cluster-safe.
//
// A cluster node refuses commands for its first 2 seconds (Redis'
// CLUSTER_WRITABLE_DELAY), so the process keeps a few nodes started ahead:
// a test takes one that is ready and a replacement starts in the
// background. Each is a fresh server, used by one test only.
func Redis(t testing.TB) *redisserver.Server {
	t.Helper()
	s, err := spares.take()
	if err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = s.Stop()
		_ = os.RemoveAll(s.Dir())
	})
	return s
}

// spares are cluster nodes started ahead for Redis.
var spares = &sparePool{size: 3}

type sparePool struct {
	size   int
	once   sync.Once
	ready  chan spare
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // starts under way
}

type spare struct {
	s   *redisserver.Server
	err error
}

func (p *sparePool) take() (*redisserver.Server, error) {
	p.once.Do(func() {
		p.ready = make(chan spare, p.size)
		removeStaleSpares()
		for range p.size {
			p.startOne()
		}
	})
	sp := <-p.ready
	p.startOne()
	return sp.s, sp.err
}

func (p *sparePool) startOne() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.start()
	}()
}

// stop stops the spares nobody took, once the starts under way are done.
func (p *sparePool) stop() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.wg.Wait()
	for {
		select {
		case sp := <-p.ready:
			if sp.s != nil {
				_ = sp.s.Stop()
				_ = os.RemoveAll(sp.s.Dir())
			}
		default:
			return
		}
	}
}

// StoppingSpares wraps a TestMain's m so that, after the tests, the Redis
// servers Redis started ahead and no test took are stopped: goleak then
// finds none of their goroutines. Use it as
// goleak.VerifyTestMain(testutil.StoppingSpares(m)).
func StoppingSpares(m interface{ Run() int }) interface{ Run() int } { return stoppingSpares{m} }

type stoppingSpares struct{ m interface{ Run() int } }

func (s stoppingSpares) Run() int {
	code := s.m.Run()
	spares.stop()
	return code
}

// spareDirPrefix names the spares' directories: <prefix><pid>-<random>.
var spareDirPrefix = filepath.Join(os.TempDir(), "herald-test-redis-")

func (p *sparePool) start() {
	dir, err := os.MkdirTemp("", fmt.Sprintf("herald-test-redis-%d-", os.Getpid()))
	if err != nil {
		p.ready <- spare{err: err}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := redisserver.Start(ctx, redisserver.Options{Dir: dir, AppendOnly: true, Cluster: true, Slots: true})
	if err != nil {
		_ = os.RemoveAll(dir)
	}
	p.ready <- spare{s: s, err: err}
}

// removeStaleSpares removes the directories of spares whose test process is
// gone (their servers ended with it).
func removeStaleSpares() {
	dirs, _ := filepath.Glob(spareDirPrefix + "*")
	for _, d := range dirs {
		pid, _, _ := strings.Cut(strings.TrimPrefix(d, spareDirPrefix), "-")
		n, err := strconv.Atoi(pid)
		if err != nil || n == os.Getpid() {
			continue
		}
		if err := syscall.Kill(n, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// RedisClient returns a client of s, closed when the test ends.
func RedisClient(t testing.TB, s *redisserver.Server) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// FreeAddr returns a free 127.0.0.1:port below Linux's ephemeral range,
// for a server the test starts later (see package freeport).
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// Eventually polls cond until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Service is what every Herald service's New returns.
type Service interface {
	Listen() (net.Addr, error)
	Run(context.Context) error
}

// Serve binds and runs svc until the test ends, then stops it (failing the
// test if it takes over 20s), and returns its bound address.
func Serve(t testing.TB, svc Service) string {
	t.Helper()
	addr, _ := Start(t, svc)
	return addr
}

// Start is Serve that also returns stop, which stops svc at once and waits
// for it (a test breaking a dependency on purpose); calling it again, or the
// cleanup after it, does nothing.
func Start(t testing.TB, svc Service) (addr string, stop func()) {
	t.Helper()
	bound, err := svc.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Error("service did not stop within 20s")
			}
		})
	}
	t.Cleanup(stop)
	return bound.String(), stop
}

// RedisCluster starts a local Redis Cluster for the test (masters shards,
// each with replicas replicas; AOF with appendfsync always; a node timeout
// of 2s, so a killed master's replica takes over within a few seconds) and
// stops it when the test ends.
func RedisCluster(t testing.TB, masters, replicas int) *redisserver.Cluster {
	t.Helper()
	return RedisClusterWith(t, redisserver.ClusterOptions{Masters: masters, Replicas: replicas})
}

// RedisClusterWith is RedisCluster with options (Dir is the test's).
func RedisClusterWith(t testing.TB, o redisserver.ClusterOptions) *redisserver.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o.Dir = t.TempDir()
	o.AppendOnly = true
	c, err := redisserver.StartCluster(ctx, o)
	if err != nil {
		t.Fatalf("start redis cluster: %v", err)
	}
	t.Cleanup(func() { c.Kill() })
	return c
}
