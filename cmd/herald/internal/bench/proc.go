package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is a server process the benchmark started: the router or
// nats-server. It runs in its own process group (so a terminal's Ctrl-C
// reaches the benchmark, which then stops it) and gets SIGKILL if the
// benchmark dies without stopping it.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // of Wait, once done is closed
}

func startChild(name, bin string, args, env []string, logPath string) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, bin, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop ends the process: SIGTERM, then SIGKILL after grace.
func (c *child) stop(grace time.Duration) {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// logTail is the end of the process's output, for error messages.
func (c *child) logTail() string {
	b, _ := os.ReadFile(c.logPath)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return strings.TrimSpace(string(b))
}

// procUsage is what one phase cost a server process.
type procUsage struct {
	// CPUSeconds is user + system time; SystemCPUSeconds the system part.
	CPUSeconds       float64 `json:"cpu_seconds"`
	SystemCPUSeconds float64 `json:"system_cpu_seconds"`
	// PeakRSSMiB is the peak resident set during the phase (VmHWM, reset
	// before the phase through /proc/<pid>/clear_refs; when the reset is
	// refused, the peak since the process started).
	PeakRSSMiB float64 `json:"peak_rss_mib"`
}

type procSample struct {
	cpu, sys time.Duration
	hwm, rss int64 // bytes
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every
// Linux architecture Go supports.
const clockTick = 100

// readProc reads the CPU time (user+system) and peak RSS of a process.
func readProc(pid int) (procSample, error) {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procSample{}, err
	}
	// The command name (field 2) may hold spaces: fields count from the
	// last ')'. After it come state (field 3) ... utime (14), stime (15).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procSample{}, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return procSample{}, errors.New("unexpected /proc stat format")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return procSample{}, errors.New("unexpected /proc stat format")
	}
	s := procSample{cpu: time.Duration(utime+stime) * time.Second / clockTick, sys: time.Duration(stime) * time.Second / clockTick}
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return procSample{}, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		for _, f := range []struct {
			name string
			v    *int64
		}{{"VmHWM:", &s.hwm}, {"VmRSS:", &s.rss}} {
			if rest, ok := strings.CutPrefix(line, f.name); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				if err == nil {
					*f.v = kb << 10
				}
			}
		}
	}
	return s, nil
}

// withChildLogs adds the end of the output of every child that exited to
// err.
func withChildLogs(err error, children ...*child) error {
	for _, c := range children {
		if c != nil && c.exited() {
			err = fmt.Errorf("%w\nthe %s exited (%v):\n%s", err, c.name, c.err, c.logTail())
		}
	}
	return err
}

// waitChild waits until the child answers /readyz on addr, failing at once
// if it exits.
func waitChild(ctx context.Context, c *child, addr string) error {
	_, err := waitReady(ctx, addr, 60*time.Second, 0, func() error {
		if c.exited() {
			return fmt.Errorf("%s exited: %v", c.name, c.err)
		}
		return nil
	})
	return err
}

// resetPeak resets the process's VmHWM to its current RSS (Linux >= 4.0).
func resetPeak(pid int) error {
	return os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "clear_refs"), []byte("5"), 0)
}

// procMeter measures one process over one phase.
type procMeter struct {
	pid        int
	before     procSample
	peakReset  bool
	startError error
}

func startMeter(pid int) *procMeter {
	m := &procMeter{pid: pid}
	m.peakReset = resetPeak(pid) == nil
	m.before, m.startError = readProc(pid)
	return m
}

func (m *procMeter) stop() (*procUsage, error) {
	if m.startError != nil {
		return nil, m.startError
	}
	after, err := readProc(m.pid)
	if err != nil {
		return nil, err
	}
	return &procUsage{
		CPUSeconds:       (after.cpu - m.before.cpu).Seconds(),
		SystemCPUSeconds: (after.sys - m.before.sys).Seconds(),
		PeakRSSMiB:       float64(after.hwm) / (1 << 20),
	}, nil
}
