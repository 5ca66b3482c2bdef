package mesh_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// The edge's own retry: hint (sse.Handler's default); the eventsource
// library waits 3000 ms without one.
const sseRetryMillis = 2000

// waitAccepts waits until the edge at addr answers a stream request with
// key by 200: a new edge refuses keys until its catalog is loaded, and a
// refusal would end an EventSource for good. It retries slowly, since
// failed authentications count against the source address.
func waitAccepts(t *testing.T, addr, key string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(addr)+"/v1/stream?types=billing.*", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		status := 0
		if err == nil {
			status = res.StatusCode
			res.Body.Close()
		}
		cancel()
		if status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge at %s answers %d (%v) to the key, want 200", addr, status, err)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// esLine is one line of tests/eventsource/stream.mjs.
type esLine struct {
	Kind          string  `json:"kind"`
	N             int     `json:"n"`
	LastEventID   string  `json:"lastEventId"`
	Authorization bool    `json:"authorization"`
	Status        int     `json:"status"`
	Body          string  `json:"body"`
	ReadyState    int     `json:"readyState"`
	Type          string  `json:"type"`
	ID            string  `json:"id"`
	Data          string  `json:"data"`
	Code          *int    `json:"code"`
	Message       *string `json:"message"`
	ReconnectIn   *int    `json:"reconnectIn"`
}

// eventSource is a running stream.mjs: one EventSource of the npm
// eventsource library, and everything it reported so far.
type eventSource struct {
	t    *testing.T
	node *nodehook.Script
	seen []esLine
}

// startEventSource follows url (an edge's /v1/stream with its query) with
// key in the Authorization header, listening for the billing types and
// Herald's notices.
func startEventSource(t *testing.T, url, key string) *eventSource {
	t.Helper()
	node := nodehook.Run(t, "eventsource", "stream.mjs", "eventsource",
		"ES_URL="+url, "ES_KEY="+key,
		"ES_EVENTS=billing.invoice.paid,billing.refund.issued,herald.gap,herald.lagged")
	return &eventSource{t: t, node: node}
}

// until reads lines until one matches and returns it.
func (s *eventSource) until(what string, match func(esLine) bool) esLine {
	s.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case raw, ok := <-s.node.Lines:
			if !ok {
				s.t.Fatalf("stream.mjs exited waiting for %s; stderr:\n%s", what, s.node.Stderr())
			}
			var l esLine
			if err := json.Unmarshal([]byte(raw), &l); err != nil {
				s.t.Fatalf("stream.mjs printed %q", raw)
			}
			s.t.Logf("eventsource: %s", raw)
			s.seen = append(s.seen, l)
			if match(l) {
				return l
			}
		case <-timeout:
			s.t.Fatalf("stream.mjs: no %s within 60s; stderr:\n%s", what, s.node.Stderr())
		}
	}
}

// count is how many lines of kind it reported so far.
func (s *eventSource) count(kind string) int {
	n := 0
	for _, l := range s.seen {
		if l.Kind == kind {
			n++
		}
	}
	return n
}

// events waits until the library delivered n events in all, and returns them.
func (s *eventSource) events(n int) []esLine {
	s.t.Helper()
	if s.count("event") < n {
		s.until(fmt.Sprintf("event %d", n), func(l esLine) bool { return l.Kind == "event" && s.count("event") >= n })
	}
	var evs []esLine
	for _, l := range s.seen {
		if l.Kind == "event" {
			evs = append(evs, l)
		}
	}
	return evs
}

// checkSSEEvents asserts that the library delivered exactly the events of
// ids, with cursors as their ids, in order, each its CloudEvent.
func checkSSEEvents(t *testing.T, got []esLine, ids, cursors []string) {
	t.Helper()
	if len(got) != len(ids) {
		t.Fatalf("the library delivered %d events, want %d: %+v", len(got), len(ids), got)
	}
	for i, ev := range got {
		var ce struct{ ID, Type string }
		if err := json.Unmarshal([]byte(ev.Data), &ce); err != nil {
			t.Fatalf("event %d: data is not JSON: %v: %s", i, err, ev.Data)
		}
		if ev.ID != cursors[i] || ev.Type != "billing.invoice.paid" || ce.ID != ids[i] || ce.Type != "billing.invoice.paid" {
			t.Fatalf("event %d is id %s (CloudEvent %s, type %s), want id %s (CloudEvent %s): lost, repeated or out of order", i, ev.ID, ce.ID, ev.Type, cursors[i], ids[i])
		}
	}
}

// invoices publishes n invoice events, numbering them after ids, and
// returns ids and cursors grown by them.
func (e *env) invoices(n int, ids, cursors []string) ([]string, []string) {
	e.t.Helper()
	var evs []*eventv1.CloudEvent
	for range n {
		id := fmt.Sprintf("inv-%02d", len(ids)+1)
		ids = append(ids, id)
		evs = append(evs, invoiceEvent(id, 100+len(ids)))
	}
	return ids, append(cursors, e.publish(evs...)...)
}

// The npm eventsource library follows an edge's SSE stream with an
// application key in the Authorization header (its fetch option), through
// a relay. The edge stops, so the stream ends from the server's side, and
// no edge answers for a while; the library reconnects by itself, waiting
// the edge's retry: hint each time and sending the last id it saw as
// Last-Event-ID, until a second edge answers. Every event published before,
// during and after the outage arrives once, in order.
func TestEventSourceLibraryReconnectsWithLastEventID(t *testing.T) {
	e := start(t)
	f := startFront(t)
	first := runEdge(t, e.common, tlsFiles{})
	waitAccepts(t, first.addr, e.appKey)
	f.route(first.addr)

	es := startEventSource(t, "http://"+f.addr()+"/v1/stream?types=billing.invoice.paid", e.appKey)
	es.until("open", func(l esLine) bool { return l.Kind == "open" })
	ids, cursors := e.invoices(3, nil, nil)
	checkSSEEvents(t, es.events(3), ids, cursors)

	// The edge goes away: the relay takes no connection, then the edge's
	// streams end.
	f.route("")
	first.stop()
	l := es.until("the error of the ended stream", func(l esLine) bool { return l.Kind == "error" })
	if l.Code != nil || l.ReadyState != 0 || l.ReconnectIn == nil || *l.ReconnectIn != sseRetryMillis {
		t.Fatalf("the library took the end of the stream as %+v, want a reconnection in the edge's %d ms", l, sseRetryMillis)
	}
	ids, cursors = e.invoices(2, ids, cursors) // while no edge runs
	// The library's reconnection meets the relay with no edge, fails, and
	// the library schedules another.
	es.until("a failed reconnection", func(l esLine) bool { return l.Kind == "error" && es.count("error") == 2 })
	second := runEdge(t, e.common, tlsFiles{})
	waitAccepts(t, second.addr, e.appKey)
	f.route(second.addr)
	es.until("the second open", func(l esLine) bool { return l.Kind == "open" && es.count("open") == 2 })
	ids, cursors = e.invoices(2, ids, cursors)
	checkSSEEvents(t, es.events(7), ids, cursors)

	// What the library did: its first request with no Last-Event-ID, each
	// reconnection (failed ones too, against the relay with no edge) with
	// the id of the last event before the outage, all with the key; two
	// answers, both 200; every reconnection scheduled with the retry: hint.
	var requests, answered int
	for _, l := range es.seen {
		switch l.Kind {
		case "request":
			requests++
			want := cursors[2]
			if l.N == 1 {
				want = ""
			}
			if l.LastEventID != want || !l.Authorization {
				t.Errorf("request %d: Last-Event-ID %q (authorization %v), want %q with the key", l.N, l.LastEventID, l.Authorization, want)
			}
		case "response":
			answered++
			if l.Status != http.StatusOK {
				t.Errorf("request %d answered %d %s", l.N, l.Status, l.Body)
			}
		case "error":
			if l.Code != nil || l.ReadyState != 0 || l.ReconnectIn == nil || *l.ReconnectIn != sseRetryMillis {
				t.Errorf("error %+v, want a reconnection in %d ms", l, sseRetryMillis)
			}
		}
	}
	if requests < 3 || answered != 2 || es.count("open") != 2 {
		t.Errorf("%d requests, %d answered, %d opens: want the first and its reconnection answered, and one open each", requests, answered, es.count("open"))
	}
}

// A key revoked while the eventsource library streams with it: the edge
// ends the stream, the library reconnects with Last-Event-ID, is refused
// with 401 and gives up (readyState CLOSED, no further reconnection); the
// events published after the end never reach it.
func TestEventSourceLibraryRevokedKey(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	reader, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name:   "node-reader",
		Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	key := reader.Msg.GetKey()
	waitAccepts(t, e.common.EdgeAddr, key.GetSecret())

	es := startEventSource(t, rpc.BaseURL(e.common.EdgeAddr)+"/v1/stream?types=billing.*", key.GetSecret())
	es.until("open", func(l esLine) bool { return l.Kind == "open" })
	ids, cursors := e.invoices(2, nil, nil)
	checkSSEEvents(t, es.events(2), ids, cursors)

	if _, err := e.reg.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: key.GetId()})); err != nil {
		t.Fatal(err)
	}
	l := es.until("the end of the stream", func(l esLine) bool { return l.Kind == "error" })
	if l.Code != nil || l.ReadyState != 0 {
		t.Fatalf("the revocation reached the library as %+v, want the stream ended and a reconnection", l)
	}
	e.invoices(2, ids, cursors) // after the stream ended

	l = es.until("the refusal", func(l esLine) bool { return l.Kind == "error" && l.Code != nil })
	if *l.Code != http.StatusUnauthorized || l.ReadyState != 2 || l.ReconnectIn != nil {
		t.Fatalf("the reconnection ended as %+v, want 401, readyState 2 and no reconnection", l)
	}
	var last esLine
	for _, s := range es.seen {
		if s.Kind == "request" || s.Kind == "response" {
			last = s
		}
	}
	if last.Kind != "response" || last.N != 2 || last.Status != http.StatusUnauthorized || !strings.Contains(last.Body, "revoked") {
		t.Fatalf("the last request's answer %+v, want request 2 answered 401, the key revoked", last)
	}
	for _, s := range es.seen {
		if s.Kind == "request" && s.N == 2 && s.LastEventID != cursors[1] {
			t.Fatalf("the reconnection sent Last-Event-ID %q, want %q", s.LastEventID, cursors[1])
		}
	}
	checkSSEEvents(t, es.events(0), ids, cursors) // nothing after the revocation
}

// edgeDescriptors writes a google.protobuf.FileDescriptorSet of
// herald/edge/v1/edge.proto and its imports (imports first) and returns
// its path: what tests/connect/stream.mjs builds its client from.
func edgeDescriptors(t *testing.T) string {
	t.Helper()
	seen := map[string]bool{}
	set := &descriptorpb.FileDescriptorSet{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	add(edgev1.File_herald_edge_v1_edge_proto)
	raw, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "edge.binpb")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// rpcLine is one line of tests/connect/stream.mjs.
type rpcLine struct {
	Call        string `json:"call"`
	Kind        string `json:"kind"`
	Attempt     int    `json:"attempt"`
	Cursor      string `json:"cursor"`
	ContentType string `json:"contentType"`
	Code        string `json:"code"`
	Message     string `json:"message"`
	Delivered   int    `json:"delivered"`
	Event       *struct {
		ID, Type, Source, Text string
	} `json:"event"`
	Gap    json.RawMessage `json:"gap"`
	Lagged json.RawMessage `json:"lagged"`
}

// connectNode is a running tests/connect/stream.mjs.
type connectNode struct {
	t    *testing.T
	node *nodehook.Script
	seen []rpcLine
}

// startConnectNode runs stream.mjs against the edge at base, with key for
// the calls that send one.
func startConnectNode(t *testing.T, base, key string) *connectNode {
	t.Helper()
	node := nodehook.Run(t, "connect", "stream.mjs", "@connectrpc/connect-node",
		"EDGE_URL="+base, "EDGE_KEY="+key, "EDGE_DESCRIPTORS="+edgeDescriptors(t))
	c := &connectNode{t: t, node: node}
	c.until("ready", func(l rpcLine) bool { return l.Kind == "ready" })
	return c
}

// send gives the script one command.
func (c *connectNode) send(cmd map[string]any) {
	c.t.Helper()
	raw, _ := json.Marshal(cmd)
	if _, err := fmt.Fprintf(c.node.Stdin, "%s\n", raw); err != nil {
		c.t.Fatalf("stream.mjs: %v; stderr:\n%s", err, c.node.Stderr())
	}
}

// until reads lines until one matches and returns it.
func (c *connectNode) until(what string, match func(rpcLine) bool) rpcLine {
	c.t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case raw, ok := <-c.node.Lines:
			if !ok {
				c.t.Fatalf("stream.mjs exited waiting for %s; stderr:\n%s", what, c.node.Stderr())
			}
			var l rpcLine
			if err := json.Unmarshal([]byte(raw), &l); err != nil {
				c.t.Fatalf("stream.mjs printed %q", raw)
			}
			c.t.Logf("connect: %s", raw)
			if l.Kind == "fatal" {
				c.t.Fatalf("stream.mjs: %s", l.Message)
			}
			c.seen = append(c.seen, l)
			if match(l) {
				return l
			}
		case <-timeout:
			c.t.Fatalf("stream.mjs: no %s within 60s; stderr:\n%s", what, c.node.Stderr())
		}
	}
}

// of returns the lines of call, of kind ("" for all).
func (c *connectNode) of(call, kind string) []rpcLine {
	var out []rpcLine
	for _, l := range c.seen {
		if l.Call == call && (kind == "" || l.Kind == kind) {
			out = append(out, l)
		}
	}
	return out
}

// messages waits until call has received n messages in all, and returns them.
func (c *connectNode) messages(call string, n int) []rpcLine {
	c.t.Helper()
	if len(c.of(call, "message")) < n {
		c.until(fmt.Sprintf("message %d of %s", n, call), func(l rpcLine) bool {
			if l.Call == call && l.Kind == "stopped" {
				c.t.Fatalf("%s stopped after %d of %d messages: %+v", call, l.Delivered, n, c.of(call, "end"))
			}
			return l.Call == call && l.Kind == "message" && len(c.of(call, "message")) >= n
		})
	}
	return c.of(call, "message")
}

// stopped waits until call is over and returns its last end.
func (c *connectNode) stopped(call string) rpcLine {
	c.t.Helper()
	if len(c.of(call, "stopped")) == 0 {
		c.until(call+" stopped", func(l rpcLine) bool { return l.Call == call && l.Kind == "stopped" })
	}
	ends := c.of(call, "end")
	return ends[len(ends)-1]
}

// checkRPCEvents asserts that msgs are exactly the events of ids with
// cursors, in order.
func checkRPCEvents(t *testing.T, call string, msgs []rpcLine, ids, cursors []string) {
	t.Helper()
	if len(msgs) != len(ids) {
		t.Fatalf("%s: %d messages, want %d: %+v", call, len(msgs), len(ids), msgs)
	}
	for i, m := range msgs {
		if m.Event == nil || m.Cursor != cursors[i] || m.Event.ID != ids[i] || m.Event.Type != "billing.invoice.paid" ||
			m.Event.Source != "//billing.example/invoices" || !strings.Contains(m.Event.Text, fmt.Sprintf(`"invoice_id":%q`, ids[i])) {
			t.Fatalf("%s: message %d is %+v (event %+v), want cursor %s, event %s: lost, repeated or out of order", call, i, m, m.Event, cursors[i], ids[i])
		}
	}
}

// wantContentType is the request content type of each transport of
// stream.mjs.
var wantContentType = map[string]string{
	"connect": "application/connect+proto", "connect-http1": "application/connect+proto", "grpc": "application/grpc+proto",
}

// A Node.js client made with @connectrpc/connect-node from the edge's
// descriptors, loaded at run time with @bufbuild/protobuf, calls
// StreamEvents over the Connect protocol (HTTP/2 and HTTP/1.1) and over
// gRPC (HTTP/2), on the edge's h2c port: types and a CEL filter select
// the events, a call resuming after a cursor gets what was published
// meanwhile once, and a call without a key (HTTP/2 only, see below) or
// with a bad filter is refused with Unauthenticated or InvalidArgument.
func TestConnectNodeClientStreamEvents(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "billing.refund.issued", Schema: `{"type":"object"}`,
	}})); err != nil {
		t.Fatal(err)
	}
	waitAccepts(t, e.common.EdgeAddr, e.appKey)
	c := startConnectNode(t, rpc.BaseURL(e.common.EdgeAddr), e.appKey)
	refund := &eventv1.CloudEvent{Id: "refund", Source: "//billing.example/refunds", SpecVersion: "1.0", Type: "billing.refund.issued",
		Data: &eventv1.CloudEvent_TextData{TextData: `{"amount":900}`}}
	const filter = "data.amount >= 100 && event.type == 'billing.invoice.paid'"

	for _, tr := range []string{"connect", "grpc", "connect-http1"} {
		t.Run(tr, func(t *testing.T) {
			c.t = t
			// Everything after this cursor is this transport's.
			from := e.publish(invoiceEvent(tr+"-start", 1000))[0]
			// Of these, the filter passes 100 and up, and the types only
			// billing.invoice.*.
			var ids, cursors []string
			pub := func(amounts ...int) {
				t.Helper()
				var evs []*eventv1.CloudEvent
				for _, a := range amounts {
					evs = append(evs, invoiceEvent(fmt.Sprintf("%s-%d", tr, a), a), refund)
				}
				got := e.publish(evs...)
				for i, a := range amounts {
					if a >= 100 {
						ids, cursors = append(ids, fmt.Sprintf("%s-%d", tr, a)), append(cursors, got[2*i])
					}
				}
			}
			pub(50, 150, 99, 200)
			call := tr + "-live"
			c.send(map[string]any{"cmd": "stream", "call": call, "transport": tr, "types": []string{"billing.invoice.*"},
				"cursor": from, "filter": filter, "key": true})
			checkRPCEvents(t, call, c.messages(call, 2), ids, cursors)
			pub(300, 10) // live
			checkRPCEvents(t, call, c.messages(call, 3), ids, cursors)
			if calls := c.of(call, "call"); len(calls) != 1 || calls[0].ContentType != wantContentType[tr] || calls[0].Cursor != from {
				t.Fatalf("%s went out as %+v, want one call with %s after %s", call, calls, wantContentType[tr], from)
			}
			c.send(map[string]any{"cmd": "cancel", "call": call})
			if end := c.stopped(call); end.Code != "Canceled" {
				t.Fatalf("%s ended with %s %s, want Canceled", call, end.Code, end.Message)
			}

			// Away, then back after the last cursor received: the events
			// published meanwhile once, then the live ones.
			pub(400, 20, 500)
			call = tr + "-resume"
			c.send(map[string]any{"cmd": "stream", "call": call, "transport": tr, "types": []string{"billing.invoice.*"},
				"cursor": cursors[2], "filter": filter, "key": true})
			checkRPCEvents(t, call, c.messages(call, 2), ids[3:], cursors[3:])
			pub(600)
			checkRPCEvents(t, call, c.messages(call, 3), ids[3:], cursors[3:])
			c.send(map[string]any{"cmd": "cancel", "call": call})
			c.stopped(call)

			for _, bad := range []struct {
				name   string
				req    map[string]any
				code   string
				saying string
			}{
				{"no-key", map[string]any{"types": []string{"billing.*"}, "cursor": "0", "key": false}, "Unauthenticated", "missing key"},
				{"bad-filter", map[string]any{"types": []string{"billing.*"}, "cursor": "0", "key": true, "filter": "data.amount >"}, "InvalidArgument", "filter"},
			} {
				call := tr + "-" + bad.name
				cmd := map[string]any{"cmd": "stream", "call": call, "transport": tr}
				for k, v := range bad.req {
					cmd[k] = v
				}
				c.send(cmd)
				end := c.stopped(call)
				if end.Code != bad.code || !strings.Contains(end.Message, bad.saying) || len(c.of(call, "message")) != 0 {
					t.Errorf("%s ended with %s %q after %d messages, want %s saying %q and none", call, end.Code, end.Message, len(c.of(call, "message")), bad.code, bad.saying)
				}
			}
		})
	}
}

// Connect and gRPC clients of @connectrpc/connect-node follow the log
// through a relay, each resuming on a new call after the last cursor it
// received when its call ends. The edge stops: both calls end from the
// server's side (UNAVAILABLE); the new calls fail while no edge answers, then a second
// edge does and they resume: every event arrives once, in order, and each
// new call asks for the cursor of the last event before the outage.
func TestConnectNodeClientResumesAfterEdgeStops(t *testing.T) {
	e := start(t)
	f := startFront(t)
	first := runEdge(t, e.common, tlsFiles{})
	waitAccepts(t, first.addr, e.appKey)
	f.route(first.addr)
	c := startConnectNode(t, "http://"+f.addr(), e.appKey)

	from := e.publish(invoiceEvent("start", 1))[0]
	transports := []string{"connect", "grpc"}
	for _, tr := range transports {
		c.send(map[string]any{"cmd": "stream", "call": tr, "transport": tr, "types": []string{"billing.invoice.paid"},
			"cursor": from, "key": true, "resume": true})
	}
	ids, cursors := e.invoices(3, nil, nil)
	for _, tr := range transports {
		checkRPCEvents(t, tr, c.messages(tr, 3), ids, cursors)
	}

	f.route("")
	first.stop()
	// The edge ends its streams as it stops, UNAVAILABLE ("go elsewhere");
	// the new calls meet the relay with no edge, fail, and the clients call
	// again.
	for _, tr := range transports {
		c.until(tr+"'s failed call", func(l rpcLine) bool { return len(c.of(tr, "end")) >= 2 })
		if l := c.of(tr, "end")[0]; l.Attempt != 1 || l.Code != "Unavailable" || !strings.Contains(l.Message, "shutting down") {
			t.Fatalf("%s's call ended with %+v, want the server's UNAVAILABLE as it stops", tr, l)
		}
	}
	ids, cursors = e.invoices(2, ids, cursors) // while no edge runs
	second := runEdge(t, e.common, tlsFiles{})
	waitAccepts(t, second.addr, e.appKey)
	f.route(second.addr)
	ids, cursors = e.invoices(2, ids, cursors)
	for _, tr := range transports {
		checkRPCEvents(t, tr, c.messages(tr, 7), ids, cursors)
	}

	for _, tr := range transports {
		calls := c.of(tr, "call")
		if len(calls) < 2 || calls[0].Cursor != from || calls[0].ContentType != wantContentType[tr] {
			t.Fatalf("%s's calls %+v, want the first after %s, with %s, and more", tr, calls, from, wantContentType[tr])
		}
		for _, l := range calls[1:] {
			if l.Cursor != cursors[2] || l.ContentType != wantContentType[tr] {
				t.Errorf("%s's call %d asked for %s with %s, want %s", tr, l.Attempt, l.Cursor, l.ContentType, cursors[2])
			}
		}
		// Messages came on the first call and the last only.
		last := calls[len(calls)-1].Attempt
		for _, m := range c.of(tr, "message") {
			if m.Attempt != 1 && m.Attempt != last {
				t.Errorf("%s: a message on call %d, which should have failed: %+v", tr, m.Attempt, m)
			}
		}
		for _, l := range c.of(tr, "end")[1:] {
			if l.Code != "Unavailable" && l.Code != "Aborted" && l.Code != "Canceled" {
				t.Errorf("%s: call %d ended with %s %s, want how connect-node reports a connection closed at once (no edge behind the relay)", tr, l.Attempt, l.Code, l.Message)
			}
		}
		c.send(map[string]any{"cmd": "cancel", "call": tr})
		if end := c.stopped(tr); end.Code != "Canceled" || end.Attempt != last {
			t.Errorf("%s's last call ended with %+v, want Canceled on call %d", tr, end, last)
		}
	}
}
