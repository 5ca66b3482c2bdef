package mesh_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	cryptotls "crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
	"github.com/heraldmesh/herald/services/edge"
)

// consoleEdge is an edge of its own, beside the mesh's, that a test stops
// and starts again.
type consoleEdge struct {
	addr string
	stop func()
}

// runEdge starts an edge on a free port with the mesh's settings and waits
// until it answers /readyz. It serves HTTPS with tls's certificate, or h2c
// and HTTP/1.1 when tls is the zero value.
func runEdge(t *testing.T, common config.Common, tls tlsFiles) *consoleEdge {
	t.Helper()
	cfg, err := edge.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Common, cfg.Addr, cfg.Logger = common, "127.0.0.1:0", slog.New(slog.DiscardHandler)
	cfg.TLSCert, cfg.TLSKey = tls.cert, tls.key
	ed, err := edge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := ed.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ed.Run(ctx) }()
	stop := sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("edge stopped with %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("edge did not stop within 20s")
		}
	})
	t.Cleanup(stop)
	ce := &consoleEdge{addr: addr.String(), stop: stop}
	scheme, client := "https://", tls.client
	if tls.cert == "" {
		scheme, client = "http://", http.DefaultClient
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := client.Get(scheme + ce.addr + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return ce
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge %s never became ready", ce.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// front is the address the browser knows: a TCP relay to the edge of the
// moment. Between two edges it answers no connection (it accepts and closes
// it), so the browser retries until the next edge is in place.
type front struct {
	ln    net.Listener
	mu    sync.Mutex
	to    string
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startFront(t *testing.T) *front {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &front{ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *front) addr() string { return f.ln.Addr().String() }

// route sends new connections to addr ("": to none).
func (f *front) route(addr string) {
	f.mu.Lock()
	f.to = addr
	f.mu.Unlock()
}

func (f *front) track(c net.Conn, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if on {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
}

func (f *front) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		to := f.to
		f.mu.Unlock()
		if to == "" {
			c.Close()
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			b, err := net.Dial("tcp", to)
			if err != nil {
				return
			}
			defer b.Close()
			f.track(c, true)
			f.track(b, true)
			defer f.track(c, false)
			defer f.track(b, false)
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(b, c)
				b.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			_, _ = io.Copy(c, b)
			c.(*net.TCPConn).CloseWrite()
			c.Close()
			<-done
		}()
	}
}

// consolePage is one answer of tests/console/console.mjs.
type consolePage struct {
	Seq     int    `json:"seq"`
	Kind    string `json:"kind"`
	Message string `json:"message"`
	Error   string `json:"error"`
	State   string `json:"state"`
	Count   int    `json:"count"`
	Notices int    `json:"notices"`
	Opens   int    `json:"opens"`
	Cursor  string `json:"cursor"`
	Text    string `json:"text"`
	Events  []struct {
		Kind, Cursor, Type, ID string
	} `json:"events"`
	Requests []struct {
		LastEventID string            `json:"lastEventId"`
		Query       map[string]string `json:"query"`
		Status      int               `json:"status"`
	} `json:"requests"`
	Protocols []string `json:"protocols"`
}

// browser is a running console.mjs.
type browser struct {
	t    *testing.T
	node *nodehook.Script
	seq  int
}

// do sends one command and returns the page as it stands after it.
func (b *browser) do(cmd map[string]any) consolePage {
	b.t.Helper()
	b.seq++
	cmd["seq"] = b.seq
	raw, _ := json.Marshal(cmd)
	if _, err := fmt.Fprintf(b.node.Stdin, "%s\n", raw); err != nil {
		b.t.Fatalf("console.mjs: %v; stderr:\n%s", err, b.node.Stderr())
	}
	for {
		p := b.line(fmt.Sprintf("the answer to %s", raw))
		if p.Kind == "console" {
			b.t.Logf("page: %s", p.Text)
			continue
		}
		if p.Seq != b.seq {
			b.t.Fatalf("console.mjs answered %d, want %d", p.Seq, b.seq)
		}
		if p.Kind == "error" {
			b.t.Fatalf("console.mjs: %s: %s (page: state %s, message %q, %d events)", raw, p.Error, p.State, p.Message, p.Count)
		}
		return p
	}
}

func (b *browser) line(what string) consolePage {
	b.t.Helper()
	select {
	case s, ok := <-b.node.Lines:
		if !ok {
			b.t.Fatalf("console.mjs exited waiting for %s; stderr:\n%s", what, b.node.Stderr())
		}
		var p consolePage
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			b.t.Fatalf("console.mjs printed %q", s)
		}
		return p
	case <-time.After(60 * time.Second):
		b.t.Fatalf("console.mjs printed nothing for 60s waiting for %s; stderr:\n%s", what, b.node.Stderr())
		return consolePage{}
	}
}

// checkEvents asserts that the page shows exactly the events of ids, with
// cursors, in order.
func checkEvents(t *testing.T, p consolePage, ids, cursors []string) {
	t.Helper()
	if p.Count != len(ids) || len(p.Events) != len(ids) {
		t.Fatalf("page shows %d events (counter %d), want %d: %+v", len(p.Events), p.Count, len(ids), p.Events)
	}
	for i, ev := range p.Events {
		if ev.Kind != "event" || ev.ID != ids[i] || ev.Cursor != cursors[i] || ev.Type != "billing.invoice.paid" {
			t.Fatalf("event %d on the page is %+v, want id %s cursor %s", i, ev, ids[i], cursors[i])
		}
	}
	if p.Cursor != cursors[len(cursors)-1] {
		t.Fatalf("page's cursor %s, want %s", p.Cursor, cursors[len(cursors)-1])
	}
}

// The edge's console page (GET /), in Debian's headless Chromium driven by
// playwright-core, over TLS (a throwaway certificate): with a browser token
// given in the link's fragment, the page's own EventSource streams from the
// edge over HTTP/2; the edge stops (its streams end) and another takes its
// address; the EventSource reconnects by itself with Last-Event-ID, and the
// page shows every event published before, during and after the outage
// once, in order. Pause then Resume (with last_event_id) shows what was
// published meanwhile, once. The filter applies. A token that does not
// verify and one naming types outside the grants are refused, a token
// expiring on an open stream ends it, and the page says why.
func TestConsoleInChromium(t *testing.T) {
	e, ta := startTokens(t)
	f := startFront(t)
	tls := throwawayTLS(t)
	first := runEdge(t, e.common, tls)
	f.route(first.addr)
	tok := ta.hs256(t, ta.secretID, "billing.invoice.paid", 10*time.Minute)
	// The new edge verifies the application's tokens once its catalog is loaded.
	tls.waitStatusAt(t, first.addr, "types=billing.invoice.paid&access_token="+tok, http.StatusOK)

	// The page itself needs no key, and tells the browser to load nothing
	// from elsewhere.
	res, err := tls.client.Get("https://" + f.addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(res.Header.Get("Content-Security-Policy"), "connect-src 'self'") || !strings.Contains(string(body), `data-testid="events"`) {
		t.Fatalf("GET /: %s %v\n%.300s", res.Status, res.Header, body)
	}

	node := nodehook.Run(t, "console", "console.mjs", "playwright-core",
		"CONSOLE_URL=https://"+f.addr()+"/#token="+tok)
	b := &browser{t: t, node: node}
	if p := b.line("ready"); p.Kind != "ready" {
		t.Fatalf("console.mjs: first line %+v; stderr:\n%s", p, node.Stderr())
	}
	b.do(map[string]any{"cmd": "open"})
	b.do(map[string]any{"cmd": "fill", "field": "types", "value": "billing.invoice.paid"})
	b.do(map[string]any{"cmd": "click", "button": "connect"})
	b.do(map[string]any{"cmd": "wait", "state": "open", "opens": 1})

	var ids, cursors []string
	publish := func(n int) {
		t.Helper()
		var evs []*eventv1.CloudEvent
		for range n {
			id := fmt.Sprintf("inv-%02d", len(ids)+1)
			ids = append(ids, id)
			evs = append(evs, invoiceEvent(id, 100+len(ids)))
		}
		cursors = append(cursors, e.publish(evs...)...)
	}
	publish(5)
	p := b.do(map[string]any{"cmd": "wait", "count": 5})
	checkEvents(t, p, ids, cursors)

	// The edge goes away: its streams end from the server's side, and no
	// edge answers for a while.
	f.route("")
	first.stop()
	b.do(map[string]any{"cmd": "wait", "state": "reconnecting"})
	publish(2) // while no edge runs
	second := runEdge(t, e.common, tls)
	tls.waitStatusAt(t, second.addr, "types=billing.invoice.paid&access_token="+tok, http.StatusOK)
	f.route(second.addr)
	b.do(map[string]any{"cmd": "wait", "state": "open", "opens": 2})
	publish(3)
	p = b.do(map[string]any{"cmd": "wait", "count": 10})
	checkEvents(t, p, ids, cursors)
	if len(p.Requests) < 2 {
		t.Fatalf("the browser made %d stream requests, want the first and its reconnection: %+v", len(p.Requests), p.Requests)
	}
	// Every request is the first EventSource's: the same URL, and its own
	// reconnections resend the last id (Chromium shows a request that got
	// no answer, to the front between the edges, without its headers).
	answered := 0
	for i, r := range p.Requests {
		if r.Query["types"] != "billing.invoice.paid" || r.Query["last_event_id"] != "" || r.Query["filter"] != "" {
			t.Errorf("stream request %d has query %v", i, r.Query)
		}
		if r.Status == 0 {
			continue
		}
		answered++
		want := cursors[4]
		if i == 0 {
			want = ""
		}
		if r.Status != http.StatusOK || r.LastEventID != want {
			t.Errorf("stream request %d: %d with Last-Event-ID %q, want 200 with %q: %+v", i, r.Status, r.LastEventID, want, p.Requests)
		}
	}
	if answered != 2 {
		t.Errorf("%d stream requests answered, want the first and one reconnection: %+v", answered, p.Requests)
	}
	// Over TLS the browser's EventSource speaks HTTP/2.
	if len(p.Protocols) != 2 || p.Protocols[0] != "h2" || p.Protocols[1] != "h2" {
		t.Errorf("stream responses came over %v, want h2 twice", p.Protocols)
	}
	requests := len(p.Requests)

	// Pause, publish, Resume: what was published meanwhile appears once.
	b.do(map[string]any{"cmd": "click", "button": "pause"})
	b.do(map[string]any{"cmd": "wait", "state": "paused"})
	publish(3)
	p = b.do(map[string]any{"cmd": "snapshot"})
	checkEvents(t, p, ids[:10], cursors[:10])
	b.do(map[string]any{"cmd": "click", "button": "resume"})
	b.do(map[string]any{"cmd": "wait", "state": "open", "opens": 3})
	publish(2)
	p = b.do(map[string]any{"cmd": "wait", "count": 15})
	checkEvents(t, p, ids, cursors)
	if len(p.Requests) != requests+1 {
		t.Fatalf("Resume made %d stream requests, want 1: %+v", len(p.Requests)-requests, p.Requests[requests:])
	}
	if r := p.Requests[requests]; r.Query["last_event_id"] != cursors[9] || r.LastEventID != "" {
		t.Fatalf("Resume asked for %v with Last-Event-ID %q, want last_event_id=%s", r.Query, r.LastEventID, cursors[9])
	}

	// Connect starts afresh; a filter travels as filter= (only when given).
	const filter = "data.amount > 116"
	b.do(map[string]any{"cmd": "fill", "field": "filter", "value": filter})
	b.do(map[string]any{"cmd": "click", "button": "connect"})
	p = b.do(map[string]any{"cmd": "wait", "state": "open", "opens": 1})
	if r := p.Requests[len(p.Requests)-1]; r.Query["filter"] != filter || r.Query["last_event_id"] != "" || r.LastEventID != "" {
		t.Fatalf("Connect with a filter asked for %v (Last-Event-ID %q)", r.Query, r.LastEventID)
	}
	if p.Count != 0 || len(p.Events) != 0 || p.Cursor != "" {
		t.Fatalf("Connect kept %d events and cursor %q", p.Count, p.Cursor)
	}
	// The edge applies it: of amounts 116 and then 117 only the second
	// arrives (the first, earlier in the log, would be there before it).
	publish(2)
	p = b.do(map[string]any{"cmd": "wait", "count": 1})
	checkEvents(t, p, ids[len(ids)-1:], cursors[len(cursors)-1:])
	b.do(map[string]any{"cmd": "fill", "field": "filter", "value": ""})

	// Refusals (a token that does not verify, a token naming types outside
	// the application's grants): the page shows the edge's reason.
	for _, c := range []struct{ token, types, want string }{
		{tok[:len(tok)-4] + "AAAA", "billing.invoice.paid", "401"},
		{ta.hs256(t, ta.secretID, "billing.invoice.paid,identity.*", time.Minute), "billing.invoice.paid", "403: the token names identity.*, outside the subscribe grants"},
	} {
		b.do(map[string]any{"cmd": "fill", "field": "token", "value": c.token})
		b.do(map[string]any{"cmd": "fill", "field": "types", "value": c.types})
		b.do(map[string]any{"cmd": "click", "button": "connect"})
		p = b.do(map[string]any{"cmd": "wait", "state": "closed", "messageHas": c.want})
		if !strings.Contains(p.Message, c.want) {
			t.Errorf("types %s: page says %q, want %q", c.types, p.Message, c.want)
		}
	}

	// A token that expires on an open stream: the edge ends the stream,
	// EventSource's reconnection is refused, and the page says why.
	short := ta.hs256(t, ta.secretID, "billing.invoice.paid", 3*time.Second)
	b.do(map[string]any{"cmd": "fill", "field": "token", "value": short})
	b.do(map[string]any{"cmd": "fill", "field": "types", "value": "billing.invoice.paid"})
	b.do(map[string]any{"cmd": "click", "button": "connect"})
	b.do(map[string]any{"cmd": "wait", "state": "open"})
	p = b.do(map[string]any{"cmd": "wait", "state": "closed", "messageHas": "401"})
	if !strings.Contains(p.Message, "expired") {
		t.Errorf("expired token: page says %q", p.Message)
	}
}

// tlsFiles is a throwaway certificate for 127.0.0.1 (PEM files) and a
// client that trusts it.
type tlsFiles struct {
	cert, key string
	client    *http.Client
}

func throwawayTLS(t *testing.T) tlsFiles {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := tlsFiles{cert: filepath.Join(dir, "cert.pem"), key: filepath.Join(dir, "key.pem")}
	if err := os.WriteFile(f.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	cert, _ := x509.ParseCertificate(der)
	pool.AddCert(cert)
	tr := &http.Transport{TLSClientConfig: &cryptotls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	f.client = &http.Client{Transport: tr}
	return f
}

// waitStatusAt waits until a stream request to the edge at addr is
// answered with want.
func (f tlsFiles) waitStatusAt(t *testing.T, addr, query string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/v1/stream?"+query, nil)
		res, err := f.client.Do(req)
		status := 0
		if err == nil {
			status = res.StatusCode
			res.Body.Close()
		}
		cancel()
		if status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge at %s answers %d (%v), want %d", addr, status, err, want)
		}
		time.Sleep(150 * time.Millisecond)
	}
}
