package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/webhook"
)

// delivery is one request a test receiver got.
type delivery struct {
	id, body string
	err      error // of the Verifier
}

// receiver is a local webhook endpoint that verifies what it gets.
type receiver struct {
	mu       sync.Mutex
	secret   string
	got      []delivery
	statuses []int // answered in turn; 200 once used up
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	d := delivery{id: r.Header.Get(webhook.HeaderID), body: string(body)}
	v, err := webhook.NewVerifier(rc.secret)
	if err == nil {
		err = v.Verify(r.Header, body, time.Now())
	}
	d.err = err
	if r.Header.Get("Content-Type") != "application/cloudevents+json" {
		d.err = fmt.Errorf("content type %q", r.Header.Get("Content-Type"))
	}
	rc.got = append(rc.got, d)
	status := http.StatusOK
	if len(rc.statuses) > 0 {
		status, rc.statuses = rc.statuses[0], rc.statuses[1:]
	}
	w.WriteHeader(status)
}

func (rc *receiver) setSecret(s string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.secret = s
}

func (rc *receiver) deliveries() []delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]delivery(nil), rc.got...)
}

func ceJSON(id string) string {
	return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"//billing","type":"billing.invoice.paid","data":{"invoice_id":"inv_1"}}`, id)
}

// sseEdge is a stand-in for the edge's GET /v1/stream: each connection is
// answered by the next of conns, which writes SSE and returns to drop the
// connection (or blocks until the client leaves).
type sseEdge struct {
	mu      sync.Mutex
	conns   []func(w http.ResponseWriter, r *http.Request)
	resumes []string // the Last-Event-ID of each connection
	auths   []string
	types   []string
}

func (e *sseEdge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.resumes = append(e.resumes, r.Header.Get("Last-Event-ID"))
	e.auths = append(e.auths, r.Header.Get("Authorization"))
	e.types = append(e.types, r.URL.Query().Get("types"))
	var next func(http.ResponseWriter, *http.Request)
	if n := len(e.resumes); n <= len(e.conns) && r.URL.Path == "/v1/stream" {
		next = e.conns[n-1]
	}
	e.mu.Unlock()
	if next == nil {
		http.Error(w, `{"code":"internal","message":"no more connections in this test"}`, http.StatusInternalServerError)
		return
	}
	next(w, r)
}

func (e *sseEdge) connections() (resumes, auths, types []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.resumes...), append([]string(nil), e.auths...), append([]string(nil), e.types...)
}

// events writes SSE events with the edge's framing.
func events(w http.ResponseWriter, cursors ...string) {
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	fmt.Fprint(w, "retry: 2000\n: connected\n\n")
	for _, c := range cursors {
		fmt.Fprintf(w, "id: %s\nevent: billing.invoice.paid\ndata: %s\n\n: heartbeat\n\n", c, ceJSON("evt_"+c))
	}
	w.(http.Flusher).Flush()
}

func runListen(t *testing.T, args ...string) (out *syncBuffer, stop func() error) {
	t.Helper()
	out = &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cliTo(ctx, out, append([]string{"listen"}, args...)...) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				err = fmt.Errorf("listen did not stop within 20s")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return out, stop
}

func TestListenReconnectsAndResumes(t *testing.T) {
	secret := webhook.NewSecret()
	rc := &receiver{secret: secret, statuses: []int{http.StatusInternalServerError}}
	hooks := httptest.NewServer(rc)
	defer hooks.Close()

	edge := &sseEdge{conns: []func(http.ResponseWriter, *http.Request){
		// Two events, then the connection drops.
		func(w http.ResponseWriter, r *http.Request) { events(w, "1-0", "2-0") },
		// The edge is overloaded for a moment.
		func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"code":"unavailable","message":"this edge already serves 10 streams; retry later or on another replica"}`)
		},
		// Resumed: one more event, then it stays open.
		func(w http.ResponseWriter, r *http.Request) { events(w, "3-0"); <-r.Context().Done() },
	}}
	srv := httptest.NewServer(edge)
	defer srv.Close()

	out, stop := runListen(t, "--forward-to", hooks.URL+"/hooks", "--types", "billing.*,identity.user.created",
		"--edge", srv.URL, "--key", "hk_listen-test-key", "--secret", secret)
	testutil.Eventually(t, 30*time.Second, func() bool { return len(rc.deliveries()) == 3 }, "three deliveries")
	if err := stop(); err != nil {
		t.Fatalf("listen: %v\n%s", err, out)
	}
	got := rc.deliveries()
	for i, d := range got {
		want := fmt.Sprintf("evt_%d-0", i+1)
		if d.id != want || d.body != ceJSON(want) || d.err != nil {
			t.Errorf("delivery %d: id %q (want %q), verify: %v, body %s", i, d.id, want, d.err, d.body)
		}
	}
	resumes, auths, types := edge.connections()
	if len(resumes) != 3 || resumes[0] != "" || resumes[1] != "2-0" || resumes[2] != "2-0" {
		t.Errorf("Last-Event-ID of each connection: %q", resumes)
	}
	for i := range auths {
		if auths[i] != "Bearer hk_listen-test-key" || types[i] != "billing.*" {
			t.Errorf("connection %d: Authorization %q, types %q", i, auths[i], types[i])
		}
	}
	s := out.String()
	for _, want := range []string{
		"Ready. Signing secret: " + secret,
		"billing.invoice.paid  evt_1-0  -> 500 Internal Server Error (",
		"billing.invoice.paid  evt_2-0  -> 200 OK (",
		"Connection lost: the edge ended the stream; reconnecting in ",
		"the edge answered 503 Service Unavailable: this edge already serves 10 streams",
		"after cursor 2-0",
		"Reconnected.",
		"billing.invoice.paid  evt_3-0  -> 200 OK (",
		"Stopped. Resume with --cursor 3-0",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "Ready.") != 1 {
		t.Errorf("Ready printed more than once:\n%s", s)
	}
	if !regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  billing\.invoice\.paid  evt_1-0  -> 500 Internal Server Error \(\d+ ms\)$`).MatchString(s) {
		t.Errorf("status line not in the documented form:\n%s", s)
	}
}

func TestListenForwardFailuresGoOn(t *testing.T) {
	// A port with nothing behind it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String() + "/hooks"
	ln.Close()
	edge := &sseEdge{conns: []func(http.ResponseWriter, *http.Request){
		func(w http.ResponseWriter, r *http.Request) { events(w, "1-0", "2-0"); <-r.Context().Done() },
	}}
	srv := httptest.NewServer(edge)
	defer srv.Close()
	out, stop := runListen(t, "--forward-to", dead, "--edge", srv.URL, "--key", "hk_listen-test-key", "--cursor", "0")
	testutil.Eventually(t, 30*time.Second, func() bool { return strings.Contains(out.String(), "evt_2-0  -> error: ") }, "both events tried")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !strings.Contains(s, "evt_1-0  -> error: dial tcp") || !strings.Contains(s, "connection refused") {
		t.Errorf("forward failure not shown:\n%s", s)
	}
	if resumes, _, types := edge.connections(); resumes[0] != "0" || types[0] != "*" {
		t.Errorf("--cursor 0 sent Last-Event-ID %q, default types %q", resumes[0], types[0])
	}
	if !regexp.MustCompile(`Ready\. Signing secret: whsec_[A-Za-z0-9+/=]{40,}`).MatchString(s) {
		t.Errorf("no generated secret:\n%s", s)
	}
}

func TestListenRefusals(t *testing.T) {
	refuse := func(status int, body string) *sseEdge {
		return &sseEdge{conns: []func(http.ResponseWriter, *http.Request){func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}}}
	}
	for _, c := range []struct {
		name string
		edge *sseEdge
		want string
	}{
		{"key", refuse(http.StatusUnauthorized, `{"code":"unauthenticated","message":"unknown or revoked key"}`), "the edge answered 401 Unauthorized: unknown or revoked key (check --key or HERALD_KEY)"},
		{"grant", refuse(http.StatusForbidden, `{"code":"permission_denied","message":"application app_1 has no subscribe grant covering *"}`), "403 Forbidden: application app_1 has no subscribe grant covering *"},
		{"type", refuse(http.StatusNotFound, `{"code":"not_found","message":"event type billing.nope is not registered"}`), "event type billing.nope is not registered"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(c.edge)
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := cli(ctx, t, "listen", "--forward-to", "http://127.0.0.1:9/hooks", "--edge", srv.URL, "--key", "hk_x")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want %q, got %v\n%s", c.want, err, out)
			}
			if resumes, _, _ := c.edge.connections(); len(resumes) != 1 {
				t.Errorf("a refusal was retried: %d connections", len(resumes))
			}
		})
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "--forward-to"},
		{[]string{"--forward-to", "localhost:3000"}, "give an http:// or https:// URL"},
		{[]string{"--forward-to", "http://localhost:3000", "--types", "Billing"}, "--types"},
		{[]string{"--forward-to", "http://localhost:3000", "--cursor", "evt_1"}, "--cursor"},
		{[]string{"--forward-to", "http://localhost:3000", "--secret", "whsec_short"}, "--secret"},
	} {
		t.Setenv("HERALD_KEY", "hk_x")
		if _, err := cli(context.Background(), t, append([]string{"listen"}, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want %q, got %v", c.args, c.want, err)
		}
	}
}

func TestListenIdleStreamReconnects(t *testing.T) {
	rc := &receiver{}
	hooks := httptest.NewServer(rc)
	defer hooks.Close()
	edge := &sseEdge{conns: []func(http.ResponseWriter, *http.Request){
		// Connected, then silent: no heartbeat.
		func(w http.ResponseWriter, r *http.Request) { events(w, "1-0"); <-r.Context().Done() },
		func(w http.ResponseWriter, r *http.Request) { events(w, "2-0"); <-r.Context().Done() },
	}}
	srv := httptest.NewServer(edge)
	defer srv.Close()
	out, stop := runListen(t, "--forward-to", hooks.URL, "--edge", srv.URL, "--key", "hk_x", "--idle-timeout", "300ms")
	testutil.Eventually(t, 30*time.Second, func() bool { return len(rc.deliveries()) == 2 }, "the event after the reconnect")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Connection lost: the edge sent nothing, not even a heartbeat") {
		t.Errorf("idle stream not reported:\n%s", out)
	}
	if resumes, _, _ := edge.connections(); len(resumes) < 2 || resumes[1] != "1-0" {
		t.Errorf("resumed from %q", resumes)
	}
}
