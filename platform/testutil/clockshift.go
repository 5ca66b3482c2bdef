package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// clockShiftC shifts a process's wall clock (CLOCK_REALTIME, gettimeofday,
// time) by CLOCKSHIFT_MS milliseconds, through LD_PRELOAD. libfaketime does
// the same but deadlocks Debian's redis-server at start: its initialization
// calls dlsym, which allocates through jemalloc, whose own initialization
// reads the clock through libfaketime (wolfcw/libfaketime#130). This shim
// reads the clock with the raw system call and allocates nothing. The
// monotonic clock is left alone, as libfaketime's DONT_FAKE_MONOTONIC does.
const clockShiftC = `#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_ns;

__attribute__((constructor)) static void clockshift_init(void) {
	const char *s = getenv("CLOCKSHIFT_MS");
	if (s) offset_ns = atoll(s) * 1000000LL;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
	long r = syscall(SYS_clock_gettime, id, ts);
	if (r == 0 && offset_ns != 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
		long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ns;
		ts->tv_sec = ns / 1000000000LL;
		ts->tv_nsec = ns % 1000000000LL;
	}
	return (int)r;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
	struct timespec ts;
	(void)tz;
	if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
	tv->tv_sec = ts.tv_sec;
	tv->tv_usec = ts.tv_nsec / 1000;
	return 0;
}

time_t time(time_t *t) {
	struct timespec ts;
	if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (time_t)-1;
	if (t) *t = ts.tv_sec;
	return ts.tv_sec;
}
`

var clockShift struct {
	once sync.Once
	so   string
	err  error
}

// ClockShift returns the environment that starts a process (e.g. one node
// of a RedisClusterWith, through ClusterOptions.Env) with its wall clock
// shifted by offset, to test clock skew between Redis servers. It builds
// a small LD_PRELOAD library with the C compiler (cc, as the race detector
// needs) once per test binary.
func ClockShift(t testing.TB, offset time.Duration) []string {
	t.Helper()
	clockShift.once.Do(func() {
		dir, err := os.MkdirTemp("", "herald-clockshift-")
		if err != nil {
			clockShift.err = err
			return
		}
		src := filepath.Join(dir, "clockshift.c")
		so := filepath.Join(dir, "clockshift.so")
		if err := os.WriteFile(src, []byte(clockShiftC), 0o600); err != nil {
			clockShift.err = err
			return
		}
		out, err := exec.Command("cc", "-shared", "-fPIC", "-O2", "-o", so, src).CombinedOutput()
		if err != nil {
			clockShift.err = &buildError{err: err, out: string(out)}
			return
		}
		clockShift.so = so
	})
	if clockShift.err != nil {
		t.Fatalf("build the clock shift library (needs cc: apt-get install gcc): %v", clockShift.err)
	}
	return []string{"LD_PRELOAD=" + clockShift.so, "CLOCKSHIFT_MS=" + strconv.FormatInt(offset.Milliseconds(), 10)}
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }
