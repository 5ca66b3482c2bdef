package edge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge"
	"golang.org/x/sys/unix"
)

const (
	paid    = "billing.invoice.paid"
	created = "billing.invoice.created"
)

// metric reads one sample of the edge's /metrics; -1 when absent.
func (e *rt) metric(sample string) float64 {
	e.t.Helper()
	res, err := http.Get(e.base + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

func (e *rt) waitMetric(sample string, want float64) {
	e.t.Helper()
	testutil.Eventually(e.t, 20*time.Second, func() bool { return e.metric(sample) == want }, fmt.Sprintf("%s never reached %v", sample, want))
}

const openPolls = `herald_edge_streams{channel="poll"}`

// A poll answers at once with what is there after its cursor (at most
// max), else after its wait with nothing, always with the cursor to poll
// after next; a waiting poll answers as soon as an event comes; each event
// answered counts as delivered on channel "poll".
func TestPoll(t *testing.T) {
	e := startRT(t, nil)
	_, key, _ := e.app("poller", "billing.*")
	ctx := context.Background()
	c := e.publishN(paid, 5)
	// A read holds back entries of Redis' current millisecond (a write to
	// another stream could still come under them): once the last one's has
	// passed, the poll sees all five.
	last := eventlog.MustParseID(c[4])
	testutil.Eventually(t, 5*time.Second, func() bool {
		now, err := e.rdb.Time(ctx).Result()
		return err == nil && uint64(now.UnixMilli()) > last.Ms
	}, "Redis' clock passes the last event's millisecond")

	code, p, body := e.poll(ctx, "types=billing.*&cursor=0&max=3", key)
	if code != 200 || !slices.Equal(p.cursors(), c[:3]) || p.Cursor != c[2] || p.Gap != nil {
		t.Fatalf("first poll: %d %s; want %v then cursor %s", code, body, c[:3], c[2])
	}
	var ce map[string]any
	if err := json.Unmarshal(p.Events[0].Event, &ce); err != nil || ce["type"] != paid || ce["specversion"] != "1.0" {
		t.Fatalf("not a CloudEvent: %s", p.Events[0].Event)
	}
	code, p, body = e.poll(ctx, "types=billing.*&cursor="+p.Cursor, key)
	if code != 200 || !slices.Equal(p.cursors(), c[3:]) || eventlog.MustParseID(p.Cursor).Less(eventlog.MustParseID(c[4])) {
		t.Fatalf("second poll: %d %s; want %v", code, body, c[3:])
	}
	// Nothing more: after the wait, none, and a cursor not before the last.
	code, p, body = e.poll(ctx, "types=billing.*&wait=100ms&cursor="+p.Cursor, key)
	if code != 200 || len(p.Events) != 0 || eventlog.MustParseID(p.Cursor).Less(eventlog.MustParseID(c[4])) {
		t.Fatalf("empty poll: %d %s", code, body)
	}
	// Events of other types move the cursor on without being answered.
	e.publishN("identity.user.created", 3)
	code, p2, body := e.poll(ctx, "types=billing.*&wait=300ms&cursor="+p.Cursor, key)
	if code != 200 || len(p2.Events) != 0 {
		t.Fatalf("poll over other types: %d %s", code, body)
	}

	// A waiting poll answers with the first event published.
	type answer struct {
		code int
		p    pollRes
		body string
	}
	done := make(chan answer, 1)
	go func() {
		code, p, body := e.poll(ctx, "types=billing.*&wait=2m&cursor="+p2.Cursor, key)
		done <- answer{code, p, body}
	}()
	e.waitMetric(openPolls, 1)
	live := e.publish(created, `{"live":true}`)
	select {
	case a := <-done:
		if a.code != 200 || !slices.Equal(a.p.cursors(), live) || eventlog.MustParseID(a.p.Cursor).Less(eventlog.MustParseID(live[0])) {
			t.Fatalf("waiting poll: %d %s; want %v", a.code, a.body, live)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a waiting poll did not answer an event within 30s")
	}
	// Without a cursor: from now on.
	code, p, body = e.poll(ctx, "types=billing.*&wait=0s", key)
	if code != 200 || len(p.Events) != 0 || p.Cursor == "" {
		t.Fatalf("poll without cursor: %d %s", code, body)
	}
	for _, bad := range []string{"wait=forever", "wait=10m", "wait=-1s", "max=0", "max=1001", "max=x", "cursor=nope", "filter=data.n%20%3E"} {
		code, _, body := e.poll(ctx, "types=billing.*&"+bad, key)
		if code != http.StatusBadRequest {
			t.Errorf("poll with %s: %d %s, want 400", bad, code, body)
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return e.delivered()["poll"] == 6 }, "6 events delivered on channel poll")
}

// A poll is authenticated and authorized like a stream, and a waiting poll
// ends as soon as its key is revoked or its grant withdrawn. Errors carry no
// internals.
func TestPollAccess(t *testing.T) {
	e := startRT(t, nil)
	ctx := context.Background()
	_, other, _ := e.app("other-tenant", "identity.*")
	check := func(what string, code, want int, body string) {
		t.Helper()
		if code != want {
			t.Fatalf("%s: %d %s, want %d", what, code, body, want)
		}
		for _, internal := range []string{"127.0.0.1", "redis", "dial", ".go:"} {
			if strings.Contains(body, internal) {
				t.Errorf("%s: the answer %q names %q", what, body, internal)
			}
		}
	}
	code, _, body := e.poll(ctx, "types=billing.*&wait=0s", "")
	check("no key", code, 401, body)
	code, _, body = e.poll(ctx, "types=billing.*&wait=0s", "hk_not-a-key")
	check("unknown key", code, 401, body)
	code, _, body = e.poll(ctx, "types=billing.*&wait=0s", other)
	check("another tenant's key", code, 403, body)
	code, _, body = e.poll(ctx, "types="+paid+"&wait=0s", other)
	check("another tenant's key, exact type", code, 403, body)

	_, revoked, revokedID := e.app("revoked", "billing.*")
	e.revoke(revokedID)
	testutil.Eventually(t, 20*time.Second, func() bool {
		code, _, _ := e.poll(ctx, "types=billing.*&wait=0s", revoked)
		return code == 401
	}, "a revoked key is refused")

	waiting := func(key string) <-chan [2]any {
		done := make(chan [2]any, 1)
		go func() {
			code, _, body := e.poll(ctx, "types=billing.*&wait=2m", key)
			done <- [2]any{code, body}
		}()
		return done
	}
	ended := func(what string, done <-chan [2]any, want int) {
		t.Helper()
		select {
		case a := <-done:
			check(what, a[0].(int), want, a[1].(string))
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the waiting poll did not end within 30s", what)
		}
	}

	_, key, keyID := e.app("revoked-while-waiting", "billing.*")
	done := waiting(key)
	e.waitMetric(openPolls, 1)
	e.revoke(keyID)
	ended("key revoked during the wait", done, 401)

	app, key, _ := e.app("narrowed-while-waiting", "billing.*")
	done = waiting(key)
	e.waitMetric(openPolls, 1)
	e.setGrants(app.GetId(), "identity.*")
	ended("grant withdrawn during the wait", done, 403)
}

// A CEL filter limits every channel to the events it matches; a bad one is
// refused with the subscription filters' errors.
func TestFilterOnEveryChannel(t *testing.T) {
	e := startRT(t, nil)
	_, key, _ := e.app("filtered", "billing.*")
	c := e.publishN(paid, 10)
	want := c[7:]
	const filter = "data.n >= 7"
	q := "types=billing.*&filter=" + url.QueryEscape(filter)

	s := e.stream(q+"&last_event_id=0", key, nil)
	if s.retry != "2000" {
		t.Errorf("retry hint %q, want 2000", s.retry)
	}
	for i, w := range want {
		if m := s.next(t); m.id != w || m.event != paid {
			t.Fatalf("SSE event %d: %+v, want %s", i, m, w)
		}
	}
	live := e.publish(paid, `{"n":1}`, `{"n":70}`, `{"m":1}`)
	if m := s.next(t); m.id != live[1] {
		t.Fatalf("SSE live: %+v, want %s (n=70)", m, live[1])
	}

	code, p, body := e.poll(context.Background(), q+"&cursor=0", key)
	if code != 200 || !slices.Equal(p.cursors(), append(slices.Clone(want), live[1])) {
		t.Fatalf("poll: %d %s", code, body)
	}

	// Binary (each event encoded once for every client) and JSON clients.
	for _, opts := range [][]connect.ClientOption{nil, {connect.WithProtoJSON()}, {connect.WithGRPC()}} {
		r := e.rpc(key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}, Cursor: "0", Filter: filter}, opts...)
		got := r.waitN(t, 4)
		for i, w := range append(slices.Clone(want), live[1]) {
			if got[i].GetCursor() != w || got[i].GetEvent().GetType() != paid || got[i].GetEvent().GetTextData() == "" || len(got[i].ProtoReflect().GetUnknown()) != 0 {
				t.Fatalf("StreamEvents (%d options) message %d: %v, want %s", len(opts), i, got[i], w)
			}
		}
	}

	for _, bad := range []struct{ filter, says string }{
		{"data.n >", "filter: "},
		{"data.n + 1", "filter: filter must be a boolean expression"},
		{"data.items.all(x, data.items.all(y, data.items.all(z, x == y && y == z)))", "filter: filter is too expensive"},
	} {
		res, err := e.get(context.Background(), "/v1/stream?types=billing.*&filter="+url.QueryEscape(bad.filter), key, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 400 || !strings.Contains(string(b), bad.says) {
			t.Errorf("SSE filter %q: %d %s, want 400 saying %q", bad.filter, res.StatusCode, b, bad.says)
		}
		code, _, body := e.poll(context.Background(), "types=billing.*&filter="+url.QueryEscape(bad.filter), key)
		if code != 400 || !strings.Contains(body, bad.says) {
			t.Errorf("poll filter %q: %d %s", bad.filter, code, body)
		}
		err = e.rpc(key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}, Filter: bad.filter}).ended(t)
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), bad.says) {
			t.Errorf("StreamEvents filter %q: %v", bad.filter, err)
		}
	}
}

// A cursor older than what retention kept gets a gap notice on every
// channel, naming what was trimmed and where delivery resumes, then the
// retained events; a cursor within retention, or 0, gets none.
func TestGapNotice(t *testing.T) {
	e := startRT(t, nil)
	_, key, _ := e.app("late", "billing.*")
	c := e.publishN(paid, 10)
	// This test's raw XADD stamps each stream's ids on its own (the
	// router's never collide across streams): a later millisecond keeps the
	// other type's events after these in the merged order.
	time.Sleep(2 * time.Millisecond)
	e.publishN(created, 2) // untouched by the trim
	if err := e.rdb.XTrimMaxLen(context.Background(), eventlog.StreamKey(paid), 5).Err(); err != nil {
		t.Fatal(err)
	}
	to := eventlog.MustParseID(c[5])
	to = eventlog.ID{Ms: to.Ms, Seq: to.Seq - 1}
	if eventlog.MustParseID(c[5]).Seq == 0 {
		to = eventlog.ID{Ms: eventlog.MustParseID(c[5]).Ms - 1, Seq: ^uint64(0)}
	}
	wantGap := map[string]any{"from": c[2], "to": to.String(), "resume": c[5], "types": []any{paid}}

	s := e.stream("types="+paid, key, http.Header{"Last-Event-Id": {c[2]}})
	m := s.next(t)
	var g map[string]any
	if m.event != "herald.gap" || json.Unmarshal([]byte(m.data), &g) != nil || fmt.Sprint(g) != fmt.Sprint(wantGap) {
		t.Fatalf("SSE: first message %+v, want a herald.gap %v", m, wantGap)
	}
	for _, w := range c[5:] {
		if m := s.next(t); m.id != w {
			t.Fatalf("SSE after the gap: %+v, want %s", m, w)
		}
	}

	code, p, body := e.poll(context.Background(), "types="+paid+"&cursor="+c[2], key)
	if code != 200 || p.Gap == nil || p.Gap.From != c[2] || p.Gap.To != to.String() || p.Gap.Resume != c[5] || !slices.Equal(p.cursors(), c[5:]) {
		t.Fatalf("poll: %d %s", code, body)
	}

	r := e.rpc(key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}, Cursor: c[2]})
	got := r.waitN(t, 6)
	if gp := got[0].GetGap(); gp == nil || got[0].GetEvent() != nil || gp.GetFromCursor() != c[2] || gp.GetToCursor() != to.String() || gp.GetResumeCursor() != c[5] || !slices.Equal(gp.GetTypes(), []string{paid}) {
		t.Fatalf("StreamEvents: first message %v, want the gap", got[0])
	}
	if got[1].GetCursor() != c[5] {
		t.Fatalf("StreamEvents after the gap: %v", got[1])
	}

	// Within retention, or everything retained: no notice.
	for _, cursor := range []string{c[6], "0"} {
		code, p, body := e.poll(context.Background(), "types="+paid+"&cursor="+cursor, key)
		if code != 200 || p.Gap != nil || len(p.Events) == 0 {
			t.Fatalf("poll from %s: %d %s", cursor, code, body)
		}
		s := e.stream("types="+paid, key, http.Header{"Last-Event-Id": {cursor}})
		if m := s.next(t); m.event != paid {
			t.Fatalf("SSE from %s: %+v, want an event first", cursor, m)
		}
	}
}

// A client that stops reading while events keep coming is ended with a
// final herald.lagged naming the cursor to resume from; resuming there
// loses nothing and repeats nothing. Through the real HTTP server, with a
// client socket that really stops reading.
func TestLaggedClientIsCutWithItsCursor(t *testing.T) {
	e := startRT(t, func(c *edge.Config) { c.StreamBuffer = 8; c.WriteTimeout = 2 * time.Minute })
	_, key, _ := e.app("slow", "billing.*")

	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req, _ := http.NewRequest("GET", e.base+"/v1/stream?types=billing.*", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("stream: %v %v", res, err)
	}
	body := bufio.NewReader(res.Body)
	for {
		line, err := body.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == ": connected\n" {
			break
		}
	}
	// Stop reading; publish until the edge lets the client go.
	payload := `{"pad":"` + strings.Repeat("x", 8<<10) + `"}`
	var published []string
	for round := 0; e.metric("herald_edge_live_subscribers") != 0; round++ {
		if round == 200 {
			t.Fatalf("the stalled client was not cut after %d events", len(published))
		}
		batch := make([]string, 100)
		for i := range batch {
			batch[i] = payload
		}
		published = append(published, e.publish(paid, batch...)...)
	}
	msgs := make(chan sseMsg, len(published)+10)
	go func() { defer close(msgs); readSSE(body, func(string) {}, msgs) }()
	var got []string
	var lagged sseMsg
	for m := range msgs {
		if m.event == "herald.lagged" {
			lagged = m
			continue
		}
		if lagged.event != "" {
			t.Fatalf("%+v after herald.lagged", m)
		}
		got = append(got, m.id)
	}
	var data struct{ Cursor string }
	if lagged.event == "" || json.Unmarshal([]byte(lagged.data), &data) != nil || data.Cursor != lagged.id {
		t.Fatalf("the stream ended without a herald.lagged naming its cursor as id and in data: %+v", lagged)
	}
	if len(got) == 0 || !slices.Equal(got, published[:len(got)]) || got[len(got)-1] != lagged.id {
		t.Fatalf("before the cut: %d events, last %v, lagged at %s; want a prefix of what was published ending at the cursor", len(got), got[len(got)-1:], lagged.id)
	}
	t.Logf("cut after %d of %d events", len(got), len(published))

	// Resume from the cursor: the rest, exactly.
	s := e.stream("types=billing.*", key, http.Header{"Last-Event-Id": {lagged.id}})
	for _, w := range published[len(got):] {
		if m := s.next(t); m.id != w {
			t.Fatalf("resumed: %s, want %s", m.id, w)
		}
	}
	select {
	case m := <-s.msgs:
		t.Fatalf("resumed: an extra message %+v", m)
	case <-time.After(200 * time.Millisecond):
	}
}

// Browser pages of configured origins may read streams and polls, with
// credentials; other origins get no CORS grant. Preflights need no key.
func TestCORS(t *testing.T) {
	if _, err := edge.New(edge.Config{Common: configFor(), Addr: "127.0.0.1:0", CORSOrigins: []string{"app.example.com"}}); err == nil || !strings.Contains(err.Error(), "HERALD_EDGE_CORS_ORIGINS") {
		t.Fatalf("a malformed origin: %v", err)
	}
	const origin = "https://app.example.com"
	e := startRT(t, func(c *edge.Config) { c.CORSOrigins = []string{origin, "http://localhost:3000"} })
	_, key, _ := e.app("browser", "billing.*")

	s := e.stream("types=billing.*", key, http.Header{"Origin": {origin}})
	if h := s.res.Header; h.Get("Access-Control-Allow-Origin") != origin || h.Get("Access-Control-Allow-Credentials") != "true" {
		t.Fatalf("stream from %s: headers %v", origin, h)
	}
	s.cancel()
	for _, o := range []string{"https://evil.example.com", ""} {
		res, err := e.get(context.Background(), "/v1/poll?types=billing.*&wait=0s", key, http.Header{"Origin": {o}})
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 || res.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("poll from %q: %d %v", o, res.StatusCode, res.Header)
		}
	}
	res, err := e.get(context.Background(), "/v1/poll?types=billing.*&wait=0s", key, http.Header{"Origin": {"http://localhost:3000"}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.Header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" {
		t.Fatalf("poll from the second origin: %v", res.Header)
	}
	// Connect and gRPC-Web calls from a browser (@connectrpc/connect-web).
	const rpcPath = "/herald.edge.v1.EdgeService/StreamEvents"
	preq, _ := http.NewRequest("OPTIONS", e.base+rpcPath, nil)
	preq.Header.Set("Origin", origin)
	preq.Header.Set("Access-Control-Request-Method", "POST")
	preq.Header.Set("Access-Control-Request-Headers", "content-type, connect-protocol-version, authorization")
	pres, err := http.DefaultClient.Do(preq)
	if err != nil {
		t.Fatal(err)
	}
	pres.Body.Close()
	if h := pres.Header; pres.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != origin || !strings.Contains(h.Get("Access-Control-Allow-Methods"), "POST") ||
		!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Connect-Protocol-Version") {
		t.Fatalf("RPC preflight: %d %v", pres.StatusCode, h)
	}
	rreq, _ := http.NewRequest("POST", e.base+rpcPath, strings.NewReader(""))
	rreq.Header.Set("Origin", origin)
	rreq.Header.Set("Content-Type", "application/connect+json")
	rreq.Header.Set("Authorization", "Bearer "+key)
	rres, err := http.DefaultClient.Do(rreq)
	if err != nil {
		t.Fatal(err)
	}
	rres.Body.Close()
	if h := rres.Header; h.Get("Access-Control-Allow-Origin") != origin || !strings.Contains(h.Get("Access-Control-Expose-Headers"), "Grpc-Status") {
		t.Fatalf("RPC answer to %s: %v", origin, h)
	}
	for _, path := range []string{"/v1/stream", "/v1/poll"} {
		req, _ := http.NewRequest("OPTIONS", e.base+path, nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		req.Header.Set("Access-Control-Request-Headers", "authorization, last-event-id")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		h := res.Header
		if res.StatusCode != 204 || h.Get("Access-Control-Allow-Origin") != origin || h.Get("Access-Control-Allow-Credentials") != "true" ||
			!strings.Contains(h.Get("Access-Control-Allow-Headers"), "Authorization") || !strings.Contains(h.Get("Access-Control-Allow-Headers"), "Last-Event-ID") {
			t.Fatalf("preflight %s: %d %v", path, res.StatusCode, h)
		}
	}
}

// configFor is enough of a configuration for New to get to the edge's own
// settings (it contacts nothing).
func configFor() config.Common {
	return config.Common{AdminKey: adminKey, RedisURL: "redis://127.0.0.1:1"}
}
