package testutil

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/freeport"
	amqp "github.com/rabbitmq/amqp091-go"
)

// rabbitmqScript is the broker's own start script. Debian's
// /usr/sbin/rabbitmq-server is a wrapper that switches to the rabbitmq user
// and cds to /var/lib/rabbitmq, which a private node must not do.
var rabbitmqScripts = []string{
	"/usr/lib/rabbitmq/bin/rabbitmq-server",
	"/usr/sbin/rabbitmq-server",
}

// RabbitMQServer is a private rabbitmq-server node: its own Erlang node
// name, ports, epmd, Mnesia directory, logs and cookie, all in one
// directory. Stop and Start take it down and bring it back with the same
// ports and data, for outage tests.
type RabbitMQServer struct {
	dir                      string
	port, distPort, epmdPort int
	script                   string

	mu    sync.Mutex
	node  *exec.Cmd
	stdin io.Closer
	done  chan struct{}
	epmd  *exec.Cmd
	epmdD chan struct{}
}

// ErrRabbitMQNotInstalled is returned when no rabbitmq-server is found.
var ErrRabbitMQNotInstalled = errors.New("rabbitmq-server is not installed (Debian/Ubuntu: apt-get install rabbitmq-server)")

// StartRabbitMQ starts a node whose files live in dir and waits until it
// accepts an AMQP connection as guest. Close ends it. The node also dies
// with the process that started it (its Erlang shell reads a pipe from this
// process and halts at end of file; Pdeathsig backs that up), so a test
// binary that crashes leaves no broker behind.
func StartRabbitMQ(dir string) (*RabbitMQServer, error) {
	script := ""
	for _, p := range rabbitmqScripts {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			script = p
			break
		}
	}
	if script == "" {
		if p, err := exec.LookPath("rabbitmq-server"); err == nil {
			script = p
		} else {
			return nil, ErrRabbitMQNotInstalled
		}
	}
	if _, err := exec.LookPath("epmd"); err != nil {
		return nil, fmt.Errorf("epmd (Erlang) is not on PATH: %w", ErrRabbitMQNotInstalled)
	}
	var lastErr error
	// A free port found now may be taken by the time the node binds it:
	// try again with new ports when the node dies at start.
	for attempt := 0; attempt < 3; attempt++ {
		s := &RabbitMQServer{dir: dir, script: script}
		var err error
		if s.port, s.distPort, s.epmdPort, err = freePorts(); err != nil {
			return nil, err
		}
		if err = s.setup(); err != nil {
			return nil, err
		}
		if err = s.startEPMD(); err != nil {
			lastErr = err
			continue
		}
		if err = s.Start(); err != nil {
			lastErr = err
			s.Close()
			continue
		}
		return s, nil
	}
	return nil, lastErr
}

// freePorts picks three distinct ports below the ephemeral range (package
// freeport).
func freePorts() (a, b, c int, err error) {
	var ps []int
	for len(ps) < 3 {
		p, err := freeport.Pick()
		if err != nil {
			return 0, 0, 0, err
		}
		if !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	return ps[0], ps[1], ps[2], nil
}

func (s *RabbitMQServer) setup() error {
	for _, d := range []string{"mnesia", "log"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return err
		}
	}
	files := map[string]string{
		// The broker sources this instead of /etc/rabbitmq/rabbitmq-env.conf,
		// which names the machine's own node.
		"rabbitmq-env.conf": "",
		"enabled_plugins":   "[].\n",
		"rabbitmq.conf": strings.Join([]string{
			"listeners.tcp.1 = 127.0.0.1:" + strconv.Itoa(s.port),
			// A nearly full temporary disk must not block publishers.
			"disk_free_limit.absolute = 1MB",
			"log.console = false",
			"log.file.level = warning",
			"",
		}, "\n"),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(s.dir, name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// env is the node's environment: the process' own less every RabbitMQ and
// Erlang setting, plus the private node's.
func (s *RabbitMQServer) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "RABBITMQ_") || strings.HasPrefix(kv, "ERL_") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+s.dir, // the Erlang cookie
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(s.dir, "rabbitmq-env.conf"),
		"RABBITMQ_NODENAME=herald"+strconv.Itoa(s.port)+"@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(s.port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(s.distPort),
		"ERL_EPMD_PORT="+strconv.Itoa(s.epmdPort),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_MNESIA_BASE="+filepath.Join(s.dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(s.dir, "log"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(s.dir, "rabbitmq.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(s.dir, "enabled_plugins"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		// The script then execs the VM itself (its pid is the node's) with
		// an Erlang shell on stdin: see StartRabbitMQ.
		"RABBITMQ_ALLOW_INPUT=true",
	)
}

func (s *RabbitMQServer) startEPMD() error {
	cmd := exec.Command("epmd", "-address", "127.0.0.1", "-port", strconv.Itoa(s.epmdPort))
	cmd.Env = s.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start epmd: %w", err)
	}
	s.epmd, s.epmdD = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.epmdD) }()
	deadline := time.Now().Add(5 * time.Second)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.epmdPort))
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-s.epmdD:
			return fmt.Errorf("epmd exited at start (port %d)", s.epmdPort)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("epmd does not listen on %s: %w", addr, err)
		}
	}
}

// Start starts the node (again, after Stop or Kill) on the same ports and
// data, and waits until guest can connect. It does nothing when the node
// runs.
func (s *RabbitMQServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node != nil {
		select {
		case <-s.done:
		default:
			return nil
		}
	}
	out, err := os.OpenFile(filepath.Join(s.dir, "rabbitmq.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command(s.script)
	cmd.Dir = s.dir
	cmd.Env = s.env()
	cmd.Stdout, cmd.Stderr = out, out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start rabbitmq-server: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.node, s.stdin, s.done = cmd, stdin, done

	deadline := time.Now().Add(90 * time.Second)
	for {
		c, err := amqp.DialConfig(s.URL(), amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("rabbitmq-server exited at start:\n%s", s.logTail())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.killLocked()
			return fmt.Errorf("rabbitmq-server does not accept guest on %s: %v\n%s", s.Addr(), err, s.logTail())
		}
	}
}

func (s *RabbitMQServer) logTail() string {
	var b []byte
	for _, f := range []string{"rabbitmq.out", filepath.Join("log", "herald"+strconv.Itoa(s.port)+"@localhost.log")} {
		x, _ := os.ReadFile(filepath.Join(s.dir, f))
		b = append(b, x...)
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Stop shuts the node down gracefully (SIGTERM) and waits for it; its data
// stays for Start.
func (s *RabbitMQServer) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.node == nil {
		return nil
	}
	_ = s.node.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		s.stdin.Close()
		return nil
	case <-time.After(30 * time.Second):
		s.killLocked()
		return errors.New("rabbitmq-server did not stop within 30s: killed")
	}
}

// Kill ends the node with SIGKILL, as a crash would; its data stays.
func (s *RabbitMQServer) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *RabbitMQServer) killLocked() {
	if s.node == nil {
		return
	}
	// The group: the VM and its port programs (erl_child_setup, inet_gethost).
	_ = syscall.Kill(-s.node.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.stdin.Close()
}

// Close kills the node and its epmd.
func (s *RabbitMQServer) Close() {
	s.Kill()
	if s.epmd != nil {
		_ = syscall.Kill(-s.epmd.Process.Pid, syscall.SIGKILL)
		<-s.epmdD
	}
}

// Addr is the AMQP listener, 127.0.0.1:port.
func (s *RabbitMQServer) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// URL is amqp://guest:guest@127.0.0.1:port/ (guest may log in from
// loopback only, which is where the node listens).
func (s *RabbitMQServer) URL() string { return "amqp://guest:guest@" + s.Addr() + "/" }

// Dir is the node's directory (logs under log/).
func (s *RabbitMQServer) Dir() string { return s.dir }

// RabbitMQ starts a private rabbitmq-server node for the test in a
// temporary directory and kills it (and its epmd) when the test ends. A
// node takes seconds to boot (the Erlang VM loads about a thousand
// modules); tests that do not stop the broker should share one with
// SharedRabbitMQ.
func RabbitMQ(t testing.TB) (url string, ctl *RabbitMQServer) {
	t.Helper()
	start := time.Now()
	s, err := StartRabbitMQ(t.TempDir())
	if err != nil {
		t.Fatalf("start rabbitmq-server: %v", err)
	}
	t.Cleanup(s.Close)
	t.Logf("rabbitmq-server %s ready in %v", s.Addr(), time.Since(start).Round(time.Millisecond))
	return s.URL(), s
}

var shared struct {
	once sync.Once
	s    *RabbitMQServer
	dir  string
	err  error
}

// SharedRabbitMQ returns the URL of a node shared by every test of the test
// binary, started by the first caller. Tests must not stop it and should
// keep to queues and exchanges of their own (named after t.Name()). It
// dies with the test binary; a TestMain may end it earlier, and remove its
// directory, with StopSharedRabbitMQ.
func SharedRabbitMQ(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		start := time.Now()
		shared.dir, shared.err = os.MkdirTemp("", "herald-rabbitmq-")
		if shared.err != nil {
			return
		}
		shared.s, shared.err = StartRabbitMQ(shared.dir)
		if shared.err == nil {
			t.Logf("shared rabbitmq-server %s ready in %v", shared.s.Addr(), time.Since(start).Round(time.Millisecond))
		}
	})
	if shared.err != nil {
		t.Fatalf("start rabbitmq-server: %v", shared.err)
	}
	return shared.s.URL()
}

// StopSharedRabbitMQ ends the node SharedRabbitMQ started, if any, and
// removes its directory. For TestMain, after m.Run.
func StopSharedRabbitMQ() {
	if shared.s != nil {
		shared.s.Close()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
}
