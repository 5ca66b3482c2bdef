package server

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// With a shutdown delay, a stopping server goes on serving with /readyz
// answering 503 (so that a load balancer drains it), then stops.
func TestShutdownDelayTurnsReadyzFirst(t *testing.T) {
	s := New("test", slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	s.Configure(Options{ShutdownDelay: 3 * time.Second, MaxConnections: -1})
	s.HandlePublic("GET /hello", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("hi")) }))
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, 5*time.Second) }()
	get := func(path string) (int, string) {
		res, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			return 0, err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := get("/readyz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	for {
		code, body := get("/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "shutting down") {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("stopped (%v) before /readyz said it was shutting down", err)
		default:
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Still serving while not ready.
	if code, body := get("/hello"); code != http.StatusOK || body != "hi" {
		t.Fatalf("during the delay: %d %s", code, body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("did not stop after the delay")
	}
	if code, _ := get("/hello"); code != 0 {
		t.Fatalf("served after stopping: %d", code)
	}
}
