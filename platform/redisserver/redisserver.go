// Package redisserver starts and stops a private redis-server process: the
// one `herald dev` runs under ./var, and the ones tests start on free ports in
// temporary directories. It never touches a shared instance.
package redisserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/heraldmesh/herald/platform/freeport"
	"github.com/redis/go-redis/v9"
)

// Options configure a server.
type Options struct {
	// Dir holds the AOF files, the log and the pid. Required.
	Dir string
	// Port to listen on (127.0.0.1). 0 picks a free port.
	Port int
	// AppendOnly turns on AOF with appendfsync always: every acknowledged
	// write is on disk before Redis answers.
	AppendOnly bool
	// AOFRewriteMinSize is auto-aof-rewrite-min-size with AppendOnly: the
	// AOF size below which Redis does not rewrite it. Default
	// DefaultAOFRewriteMinSize.
	AOFRewriteMinSize string
	// MaxMemory (e.g. "256mb"), empty for no limit.
	MaxMemory string
	// Cluster starts the server as a Redis Cluster node (nodes.conf in
	// Dir). Alone, with Slots, it is a cluster of one node that owns every
	// slot: a plain client works as with a standalone server, and Redis
	// refuses what a cluster refuses (multi-key commands, transactions and
	// scripts whose keys are in different slots).
	Cluster bool
	// Slots, with Cluster, has the node claim all 16384 slots at its first
	// start (a restart keeps them in nodes.conf). Without it the node
	// joins a cluster that something else creates (see StartCluster).
	Slots bool
	// ClusterNodeTimeout is cluster-node-timeout (how long a master may be
	// unreachable before its replica takes over). Default 2s.
	ClusterNodeTimeout time.Duration
	// ClusterPort is the cluster bus port (cluster-port). 0: a free one
	// when Port is picked too, else Redis' default, Port+10000.
	ClusterPort int
	// Env is added to the process' environment (e.g. libfaketime's
	// LD_PRELOAD and FAKETIME, to skew this server's clock in a test).
	Env []string
}

// DefaultAOFRewriteMinSize is the auto-aof-rewrite-min-size Herald runs
// Redis with (herald dev, the benchmarks, docker-compose.yml) instead of
// Redis' 64mb. A rewrite forks Redis and writes its whole dataset out
// again, and one starts whenever the AOF has doubled since the last: the
// log, the dedupe keys and the usage fold write tens of megabytes per
// second at tens of thousands of events or records per second, over a
// dataset of some hundred megabytes, so with 64mb Redis rewrote every two
// seconds, and the rewrites took a quarter of its CPU (BENCHMARKS.md,
// "Metering").
const DefaultAOFRewriteMinSize = "1gb"

// Server is a running redis-server.
type Server struct {
	opts Options
	cmd  *exec.Cmd
	done chan struct{}
}

// ErrNotInstalled is returned when no redis-server binary is on PATH.
var ErrNotInstalled = errors.New("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")

// Start launches redis-server and waits until it answers PING.
func Start(ctx context.Context, o Options) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNotInstalled
	}
	if o.Dir == "" {
		return nil, errors.New("redisserver: Dir is required")
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("redisserver: %w", err)
	}
	picked := o.Port == 0
	if o.Port == 0 {
		if o.Port, err = pick(); err != nil {
			return nil, err
		}
	}
	// A picked port's port+10000 may be taken: pick the bus port too. A
	// given port keeps Redis' default bus port (a cluster restarted on the
	// same ports finds its nodes where nodes.conf says).
	pickedBus := o.Cluster && o.ClusterPort == 0 && picked
	if pickedBus {
		if o.ClusterPort, err = pick(); err != nil {
			return nil, err
		}
	}
	s := &Server{opts: o}
	// A picked port can still be taken between the pick and the bind (by
	// another process' server or outgoing connection): pick again.
	for attempt := 1; ; attempt++ {
		err := s.start(ctx, bin)
		if err == nil {
			return s, nil
		}
		if !picked || !errors.Is(err, errPortTaken) || attempt == 5 {
			return nil, err
		}
		if s.opts.Port, err = pick(); err != nil {
			return nil, err
		}
		if pickedBus {
			if s.opts.ClusterPort, err = pick(); err != nil {
				return nil, err
			}
		}
	}
}

// errPortTaken is a start that failed because its port (or bus port) was
// bound by another process.
var errPortTaken = errors.New("port already in use")

func (s *Server) start(ctx context.Context, bin string) error {
	args := []string{
		"--port", strconv.Itoa(s.opts.Port),
		"--bind", "127.0.0.1",
		"--dir", s.opts.Dir,
		"--logfile", filepath.Join(s.opts.Dir, "redis.log"),
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "yes",
	}
	if s.opts.AppendOnly {
		minSize := s.opts.AOFRewriteMinSize
		if minSize == "" {
			minSize = DefaultAOFRewriteMinSize
		}
		args = append(args, "--appendonly", "yes", "--appendfsync", "always", "--auto-aof-rewrite-min-size", minSize)
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.opts.MaxMemory != "" {
		args = append(args, "--maxmemory", s.opts.MaxMemory)
	}
	if s.opts.Cluster {
		timeout := s.opts.ClusterNodeTimeout
		if timeout <= 0 {
			timeout = 2 * time.Second
		}
		args = append(args, "--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(s.opts.Dir, "nodes.conf"),
			"--cluster-node-timeout", strconv.FormatInt(timeout.Milliseconds(), 10),
			"--cluster-port", strconv.Itoa(s.opts.ClusterPort))
	}
	cmd := exec.Command(bin, args...)
	if len(s.opts.Env) > 0 {
		cmd.Env = append(os.Environ(), s.opts.Env...)
	}
	// Its own process group, so Ctrl-C in a terminal reaches the launcher,
	// which then stops Redis last, after the services flushed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redisserver: start: %w", err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.done) }()

	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			// The answer may come from another process' server that
			// holds the port this one failed to bind.
			if err := s.answeredByOwnProcess(ctx, c); err != nil {
				s.Kill()
				return err
			}
			if s.opts.Cluster && s.opts.Slots {
				return s.claimSlots(ctx, c)
			}
			return nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(s.opts.Dir, "redis.log"))
			if strings.Contains(string(log), "Address already in use") {
				return fmt.Errorf("redisserver: redis-server exited at start: %w:\n%s", errPortTaken, tail(log, 2000))
			}
			return fmt.Errorf("redisserver: redis-server exited at start:\n%s", tail(log, 2000))
		case <-ctx.Done():
			s.Kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redisserver: no answer on %s: %w", s.Addr(), err)
		}
	}
}

// answeredByOwnProcess checks that the server answering on s.Addr() is the
// redis-server s started; one that is not means the port was taken.
func (s *Server) answeredByOwnProcess(ctx context.Context, c *redis.Client) error {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return fmt.Errorf("redisserver: info: %w", err)
	}
	want := "process_id:" + strconv.Itoa(s.cmd.Process.Pid) + "\r"
	if !strings.Contains(info, want) {
		return fmt.Errorf("redisserver: %s is served by another process: %w", s.Addr(), errPortTaken)
	}
	return nil
}

// claimSlots has a lone cluster node take every slot (once: a restart
// finds them in nodes.conf) and waits until it serves them.
func (s *Server) claimSlots(ctx context.Context, c *redis.Client) error {
	info, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		return fmt.Errorf("redisserver: cluster info: %w", err)
	}
	if strings.Contains(info, "cluster_slots_assigned:0\r") {
		if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
			return fmt.Errorf("redisserver: cluster addslotsrange: %w", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redisserver: cluster state not ok after 10s: %v %s", err, info)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Dir is the server's directory.
func (s *Server) Dir() string { return s.opts.Dir }

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.opts.Port)) }

// URL is the redis:// URL of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Stop shuts Redis down gracefully (SIGTERM: it fsyncs the AOF and exits).
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.Kill()
	}
	return nil
}

// Running reports whether the process is up (not stopped or killed).
func (s *Server) Running() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Kill ends Redis with SIGKILL, as a crash would.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Restart kills Redis (as a crash would) and starts it again on the same
// port and directory; with AppendOnly, it reloads every acknowledged write.
func (s *Server) Restart(ctx context.Context) error {
	s.Kill()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return ErrNotInstalled
	}
	return s.start(ctx, bin)
}

// pick is freePort; tests replace it.
var pick = freePort

// freePort picks a port below the ephemeral range (package freeport).
func freePort() (int, error) {
	p, err := freeport.Pick()
	if err != nil {
		return 0, fmt.Errorf("redisserver: free port: %w", err)
	}
	return p, nil
}
