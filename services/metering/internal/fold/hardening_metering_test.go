package fold

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/metering/internal/store"
)

// lockedBuffer is a log sink safe for the fold's goroutine and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The retry delay is logged as a duration people read ("100ms"), not as
// nanoseconds.
func TestRetryDelayIsLoggedAsADuration(t *testing.T) {
	srv := testutil.Redis(t)
	rdb := newClient(t, srv.Addr())
	srv.Kill()
	var logs lockedBuffer
	f := New(store.New(rdb), Options{Block: 100 * time.Millisecond, Log: slog.New(slog.NewJSONHandler(&logs, nil))})
	stop := start(f)
	testutil.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "retry_in") }, "a retry is logged")
	stop()
	line, _, _ := strings.Cut(logs.String()[strings.LastIndex(logs.String()[:strings.Index(logs.String(), "retry_in")], "\n")+1:], "\n")
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	s, ok := rec["retry_in"].(string)
	if !ok {
		t.Fatalf("retry_in = %#v, want a duration string: %s", rec["retry_in"], line)
	}
	if _, err := time.ParseDuration(s); err != nil {
		t.Fatalf("retry_in = %q: %v", s, err)
	}
}
