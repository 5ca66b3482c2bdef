package testutil

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// MosquittoServer is a private mosquitto broker started by Mosquitto. Its
// Stop and Start break and mend it on purpose (an outage) and must be
// called from the test's goroutine.
type MosquittoServer struct {
	t    testing.TB
	bin  string
	dir  string
	addr string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Mosquitto starts Debian's mosquitto (MQTT 3.1.1 and 5) for the test on a
// free 127.0.0.1 port, with anonymous access and persistence in the test's
// temporary directory, so that persistent sessions and their unacknowledged
// QoS 1 and 2 messages survive Stop and Start. It returns host:port once the
// broker accepts connections, and kills the broker when the test ends.
func Mosquitto(t testing.TB) (addr string, ctl *MosquittoServer) {
	t.Helper()
	return MosquittoWith(t)
}

// MosquittoWith is Mosquitto with more lines of mosquitto.conf (a
// max_packet_size, say), which come after the helper's own.
func MosquittoWith(t testing.TB, conf ...string) (addr string, ctl *MosquittoServer) {
	t.Helper()
	extra := conf
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr != nil {
			t.Fatalf("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto): %v", err)
		}
		bin = "/usr/sbin/mosquitto"
	}
	m := &MosquittoServer{t: t, bin: bin, dir: t.TempDir(), addr: FreeAddr(t)}
	_, port, _ := net.SplitHostPort(m.addr)
	conf = []string{
		"listener " + port + " 127.0.0.1",
		"allow_anonymous true",
		"persistence true",
		"persistence_location " + m.dir + "/",
		"log_dest file " + filepath.Join(m.dir, "mosquitto.log"),
		"log_type error",
		"log_type warning",
		"log_type notice",
		"log_type information",
		// Keep what a stopped persistent session accumulates, however much a
		// test sends meanwhile (the default drops past 1000).
		"max_queued_messages 0",
	}
	if os.Geteuid() == 0 {
		// As root mosquitto would switch to the mosquitto user, which
		// cannot write the test's directory.
		conf = append(conf, "user root")
	}
	conf = append(conf, extra...)
	if err := os.WriteFile(m.conf(), []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.kill)
	m.Start()
	return m.addr, m
}

func (m *MosquittoServer) conf() string { return filepath.Join(m.dir, "mosquitto.conf") }

// Addr is the broker's host:port.
func (m *MosquittoServer) Addr() string { return m.addr }

// Start starts the broker again after Stop, on the same port and with the
// same data, and waits until it accepts connections. It does nothing while
// the broker runs.
func (m *MosquittoServer) Start() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return
	}
	cmd := exec.Command(m.bin, "-c", m.conf())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("start mosquitto: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	m.cmd, m.done = cmd, done

	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", m.addr, time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-done:
			m.cmd = nil
			m.t.Fatalf("mosquitto exited at start:\n%s", m.log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto does not accept connections on %s: %v\n%s", m.addr, err, m.log())
		}
	}
}

// Stop shuts the broker down gracefully (SIGTERM: it saves its sessions and
// queued messages to disk, then exits) and waits for it. It does nothing
// while the broker is stopped.
func (m *MosquittoServer) Stop() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(15 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
		m.t.Errorf("mosquitto did not stop within 15s of SIGTERM; killed")
	}
	m.cmd = nil
}

// Log is the broker's log so far, for a failing test's message.
func (m *MosquittoServer) Log() string { return m.log() }

func (m *MosquittoServer) log() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "mosquitto.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (m *MosquittoServer) kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}
