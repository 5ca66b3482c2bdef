package mesh_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/redis/go-redis/v9"
)

// balancer is a TCP load balancer in front of edge replicas: each new
// connection goes to the next replica that is up, round robin, and to the
// one after it when that one refuses the connection (a dead process), as
// a load balancer's connect retry would. It knows which replica each
// client connection went to.
type balancer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu    sync.Mutex
	order []string          // replica slots, in round-robin order
	slots map[string]*slot  // by name
	next  int               // round-robin position
	via   map[string]string // client address -> replica label
	live  map[*relay]string // open relays -> slot name
}

type slot struct {
	addr  string
	up    bool
	label string // the name and a generation: A1, then A2 once replaced
	gen   int
}

type relay struct{ client, server net.Conn }

func (r *relay) close() { r.client.Close(); r.server.Close() }

func startBalancer(t *testing.T) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, slots: map[string]*slot{}, via: map[string]string{}, live: map[*relay]string{}}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for r := range b.live {
			r.close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *balancer) url() string { return "http://" + b.ln.Addr().String() }

// set puts a replica at addr in slot name, up; a new replica in a slot gets
// a new label.
func (b *balancer) set(name, addr string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.slots[name]
	if !ok {
		s = &slot{}
		b.slots[name] = s
		b.order = append(b.order, name)
	}
	s.gen++
	s.addr, s.up, s.label = addr, true, fmt.Sprintf("%s%d", name, s.gen)
}

// down sends no new connection to slot name (a failed health check, or a
// replica drained before it stops); open ones stay.
func (b *balancer) down(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.slots[name].up = false
}

// cut closes every n-th open connection to slot name, as a network fault
// between the balancer and the replica would.
func (b *balancer) cut(name string, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := 0
	for r, s := range b.live {
		if s != name {
			continue
		}
		if i%n == 0 {
			r.close()
		}
		i++
	}
}

// labelOf is the replica that the client connection from addr went to.
func (b *balancer) labelOf(addr string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.via[addr]
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		var tries []string
		for i := range b.order {
			name := b.order[(b.next+i)%len(b.order)]
			if b.slots[name].up {
				tries = append(tries, name)
			}
		}
		b.next++
		b.mu.Unlock()
		b.wg.Add(1)
		go b.relay(c, tries)
	}
}

func (b *balancer) relay(c net.Conn, tries []string) {
	defer b.wg.Done()
	var r *relay
	for _, name := range tries {
		b.mu.Lock()
		s := *b.slots[name]
		b.mu.Unlock()
		server, err := net.DialTimeout("tcp", s.addr, 2*time.Second)
		if err != nil {
			continue
		}
		r = &relay{client: c, server: server}
		b.mu.Lock()
		b.via[c.RemoteAddr().String()] = s.label
		b.live[r] = name
		b.mu.Unlock()
		break
	}
	if r == nil {
		c.Close() // no replica answers
		return
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(r.server, r.client)
		r.close()
		close(done)
	}()
	_, _ = io.Copy(r.client, r.server)
	r.close()
	<-done
	b.mu.Lock()
	delete(b.live, r)
	b.mu.Unlock()
}

// inProcessEdge runs an edge replica in the test process; stop shuts it
// down gracefully and waits for it.
func inProcessEdge(t *testing.T, common config.Common) (addr string, stop func()) {
	t.Helper()
	cfg, err := edge.ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Common, cfg.Addr, cfg.Logger = common, "127.0.0.1:0", slog.New(slog.DiscardHandler)
	ed, err := edge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr, stop = testutil.Start(t, ed)
	waitReady(t, addr)
	return addr, stop
}

func waitReady(t *testing.T, addr string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := http.Get(rpc.BaseURL(addr) + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "edge "+addr+" never became ready")
}

// haEvent is one event the publishers stored.
type haEvent struct {
	cursor eventlog.ID
	typ    string
	amount int
	key    string // partition key, "" for none
}

// haQuery is what a client asks for, and which events it must get.
type haQuery struct {
	types, filter string
	match         func(haEvent) bool
}

func (q haQuery) String() string {
	if q.filter == "" {
		return q.types
	}
	return q.types + " if " + q.filter
}

// haClient is one consumer behind the balancer. It keeps every event it
// received, in order, and resumes after the last one whenever its
// connection ends, wherever the balancer sends it.
type haClient struct {
	name string
	q    haQuery

	mu       sync.Mutex
	got      []string // cursors, in the order received
	types    []string // the type of each
	cursor   string   // where to resume after
	from     []string // client-side address of each answered request
	problems []string
}

func (c *haClient) resumeCursor() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cursor
}

func (c *haClient) event(cursor, typ string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got, c.types, c.cursor = append(c.got, cursor), append(c.types, typ), cursor
}

func (c *haClient) moveTo(cursor string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cursor = cursor
}

func (c *haClient) answered(local string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.from = append(c.from, local)
}

func (c *haClient) problem(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.problems) < 5 {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	}
}

func (c *haClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

// traced notes the client-side address of the connection a request goes
// out on, for the balancer to say which replica served it.
func traced(ctx context.Context) (context.Context, func() string) {
	var mu sync.Mutex
	var local string
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			mu.Lock()
			local = info.Conn.LocalAddr().String()
			mu.Unlock()
		}}), func() string {
			mu.Lock()
			defer mu.Unlock()
			return local
		}
}

// reconnectDelay is how long a client waits before it connects again, as
// EventSource's retry: would have it.
const reconnectDelay = 20 * time.Millisecond

func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// runSSE streams GET /v1/stream through the balancer, resuming with
// Last-Event-ID.
func (c *haClient) runSSE(ctx context.Context, base, key string) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	v := url.Values{"types": {c.q.types}}
	if c.q.filter != "" {
		v.Set("filter", c.q.filter)
	}
	for ctx.Err() == nil {
		tctx, local := traced(ctx)
		req, _ := http.NewRequestWithContext(tctx, "GET", base+"/v1/stream?"+v.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+key)
		cursor := c.resumeCursor()
		req.Header.Set("Last-Event-ID", cursor)
		res, err := client.Do(req)
		if err != nil {
			pause(ctx, reconnectDelay) // no replica answered
			continue
		}
		if res.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(io.LimitReader(res.Body, 1024))
			res.Body.Close()
			c.problem("stream resumed after %s answered %d: %s", cursor, res.StatusCode, body)
			pause(ctx, reconnectDelay)
			continue
		}
		c.answered(local())
		c.readSSE(res.Body)
		res.Body.Close()
		pause(ctx, reconnectDelay)
	}
}

// readSSE takes events until the stream ends. An event counts once its
// blank line arrived, as EventSource has it: a frame cut in the middle is
// not an event.
func (c *haClient) readSSE(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var id, event string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "event: "):
			event = line[7:]
		case line == "":
			switch {
			case event == "herald.lagged":
				c.moveTo(id)
			case event == "herald.gap":
				c.problem("gap notice on a log nothing was trimmed from")
			case id != "":
				c.event(id, event)
			}
			id, event = "", ""
		}
	}
}

// runRPC streams EdgeService/StreamEvents through the balancer (gRPC, a
// connection of its own for each attempt), resuming with the cursor field.
func (c *haClient) runRPC(ctx context.Context, base, key string) {
	for ctx.Err() == nil {
		hc := rpc.HTTPClient()
		client := edgev1connect.NewEdgeServiceClient(hc, base, rpc.ClientOptions(key)...)
		tctx, local := traced(ctx)
		cursor := c.resumeCursor()
		s, err := client.StreamEvents(tctx, connect.NewRequest(&edgev1.StreamEventsRequest{
			Types: strings.Split(c.q.types, ","), Filter: c.q.filter, Cursor: cursor,
		}))
		if err == nil {
			first := true
			for s.Receive() {
				if first {
					c.answered(local())
					first = false
				}
				m := s.Msg()
				switch {
				case m.GetEvent() != nil:
					c.event(m.GetCursor(), m.GetEvent().GetType())
				case m.GetLagged() != nil:
					c.moveTo(m.GetLagged().GetCursor())
				case m.GetGap() != nil:
					c.problem("gap notice on a log nothing was trimmed from")
				}
			}
			err = s.Err()
			s.Close()
		}
		switch connect.CodeOf(err) {
		case connect.CodeInvalidArgument, connect.CodePermissionDenied, connect.CodeUnauthenticated,
			connect.CodeNotFound, connect.CodeFailedPrecondition, connect.CodeResourceExhausted, connect.CodeOutOfRange:
			c.problem("stream resumed after %s refused: %v", cursor, err)
		}
		hc.CloseIdleConnections()
		pause(ctx, reconnectDelay)
	}
}

// runPoll long-polls GET /v1/poll through the balancer on a keep-alive
// connection, with the cursor each answer gives.
func (c *haClient) runPoll(ctx context.Context, base, key string) {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	v := url.Values{"types": {c.q.types}, "wait": {"1s"}, "max": {"100"}}
	if c.q.filter != "" {
		v.Set("filter", c.q.filter)
	}
	for ctx.Err() == nil {
		cursor := c.resumeCursor()
		v.Set("cursor", cursor)
		tctx, local := traced(ctx)
		req, _ := http.NewRequestWithContext(tctx, "GET", base+"/v1/poll?"+v.Encode(), nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := client.Do(req)
		if err != nil {
			pause(ctx, reconnectDelay)
			continue
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			pause(ctx, reconnectDelay) // cut in the middle of the answer: ask again
			continue
		}
		if res.StatusCode != http.StatusOK {
			c.problem("poll after %s answered %d: %s", cursor, res.StatusCode, body)
			pause(ctx, reconnectDelay)
			continue
		}
		var answer struct {
			Events []struct {
				Cursor string `json:"cursor"`
				Event  struct {
					Type string `json:"type"`
				} `json:"event"`
			} `json:"events"`
			Cursor string          `json:"cursor"`
			Gap    json.RawMessage `json:"gap"`
		}
		if err := json.Unmarshal(body, &answer); err != nil {
			c.problem("poll answer is not JSON: %v: %.200s", err, body)
			continue
		}
		if answer.Gap != nil {
			c.problem("gap notice on a log nothing was trimmed from: %s", answer.Gap)
		}
		c.answered(local())
		for _, ev := range answer.Events {
			c.event(ev.Cursor, ev.Event.Type)
		}
		// And polls again at once, as long pollers do: so some polls reach
		// an edge as it stops.
		c.moveTo(answer.Cursor)
	}
}

// haLog is what the publishers stored, in the order their answers came.
type haLog struct {
	mu     sync.Mutex
	events []haEvent
	failed []string
}

func (l *haLog) add(evs ...haEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, evs...)
}

// matching is, in cursor order, what q must receive of the stored events.
func (l *haLog) matching(q haQuery) []haEvent {
	l.mu.Lock()
	all := slices.Clone(l.events)
	l.mu.Unlock()
	slices.SortFunc(all, func(a, b haEvent) int { return a.cursor.Compare(b.cursor) })
	var out []haEvent
	for _, ev := range all {
		if q.match(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// publishLoop publishes a batch of two events, then pauses, until ctx ends.
// build makes the i-th event.
func (e *env) publishLoop(ctx context.Context, l *haLog, build func(i int) (*eventv1.CloudEvent, haEvent)) {
	for i := 0; ctx.Err() == nil; i += 2 {
		var evs []*eventv1.CloudEvent
		var rec []haEvent
		for j := range 2 {
			ev, h := build(i + j)
			evs, rec = append(evs, ev), append(rec, h)
		}
		res, err := e.router.Publish(withKey(e.appKey), &routerv1.PublishRequest{Events: evs})
		if err != nil {
			if ctx.Err() == nil {
				l.mu.Lock()
				l.failed = append(l.failed, err.Error())
				l.mu.Unlock()
			}
			return
		}
		for j, r := range res.GetResults() {
			if r.GetError() != nil {
				l.mu.Lock()
				l.failed = append(l.failed, r.GetError().String())
				l.mu.Unlock()
				return
			}
			rec[j].cursor = eventlog.MustParseID(r.GetCursor())
		}
		l.add(rec...)
		pause(ctx, 15*time.Millisecond)
	}
}

// blockedLogReads counts the Redis connections blocked in XREAD: the
// edges' hubs waiting on the log and the registry waiting on its change
// log for each Watch stream. The count is sampled (a reader is briefly
// unblocked between two waits): the largest of several samples.
func blockedLogReads(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	most := 0
	for range 30 {
		list, err := rdb.ClientList(context.Background()).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, line := range strings.Split(list, "\n") {
			f := strings.Fields(line)
			if slices.Contains(f, "cmd=xread") && slices.ContainsFunc(f, func(s string) bool {
				return strings.HasPrefix(s, "flags=") && strings.Contains(s, "b")
			}) {
				n++
			}
		}
		most = max(most, n)
		time.Sleep(5 * time.Millisecond) // spread the samples over a while
	}
	return most
}

// Edge replicas behind a load balancer, each following the log itself,
// lose nothing when one goes away (issue 11). Two edges (one a separate
// process) serve 50 SSE streams, 10 StreamEvents streams and 10 long
// pollers through a TCP balancer while two publishers publish all along: invoices without a partition key, orders over 4 partitions with
// and without one. The first edge is killed (SIGKILL): its clients land on
// the second and resume there. A new first edge takes its address, and the
// second is stopped gracefully: everyone lands on the first. A new second
// edge joins and the network drops half the first's connections: those
// spread over both. Every client resumes each time with the last cursor
// one edge gave it, and the other edge accepts it: every client ends with
// exactly the stored events of its types and filter, in cursor order (so
// in order per partition key), none missing, none twice.
func TestEdgeReplicasLoseNothingWhenClientsMove(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	_, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "billing.order.placed", Partitions: 4,
		Schema: `{"type":"object","required":["order_id","amount"],"properties":{"order_id":{"type":"string"},"amount":{"type":"integer"}}}`,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	opt, err := redis.ParseURL(e.common.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()

	// Every client starts after the same cursor, so that each one's due
	// events are known exactly.
	base := e.publish(invoiceEvent("base", 1))[0]
	baseID := eventlog.MustParseID(base)

	meshOnly := blockedLogReads(t, rdb)

	// Edge A is a process of its own, so that it can die as a crash would.
	aCommon := e.common
	aCommon.EdgeAddr = testutil.FreeAddr(t)
	a := startEdgeProcess(t, aCommon)
	bAddr, stopB := inProcessEdge(t, e.common)
	lb := startBalancer(t)
	lb.set("A", aCommon.EdgeAddr)
	lb.set("B", bAddr)
	// What the count sees: each replica adds its hub's blocking reads of
	// the log (one per hash slot of the catalog's streams, as Redis Cluster
	// needs, up to half its pool) and one read of the registry's change log
	// (its catalog's Watch): the same number for both, and at least two.
	readersBefore := blockedLogReads(t, rdb)
	if d := readersBefore - meshOnly; d < 4 || d%2 != 0 {
		t.Errorf("Redis connections blocked in XREAD: %d with the mesh, %d with two more edges; want the same number more for each, at least a hub read and a Watch", meshOnly, readersBefore)
	}

	after := func(match func(haEvent) bool) func(haEvent) bool {
		return func(ev haEvent) bool { return baseID.Less(ev.cursor) && match(ev) }
	}
	queries := []haQuery{
		{types: "billing.*", match: after(func(haEvent) bool { return true })},
		{types: "billing.invoice.paid", match: after(func(ev haEvent) bool { return ev.typ == "billing.invoice.paid" })},
		{types: "billing.order.placed", match: after(func(ev haEvent) bool { return ev.typ == "billing.order.placed" })},
		{types: "billing.*", filter: "data.amount >= 500", match: after(func(ev haEvent) bool { return ev.amount >= 500 })},
	}
	var clients []*haClient
	streamClients := map[*haClient]bool{}
	clientCtx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopClients(); wg.Wait() }()
	launch := func(kind string, n int, run func(*haClient, context.Context, string, string)) {
		for i := range n {
			c := &haClient{name: fmt.Sprintf("%s-%d", kind, i), q: queries[i%len(queries)], cursor: base}
			clients = append(clients, c)
			streamClients[c] = kind != "poll"
			wg.Go(func() { run(c, clientCtx, lb.url(), e.appKey) })
		}
	}
	launch("sse", 50, (*haClient).runSSE)
	launch("rpc", 10, (*haClient).runRPC)
	launch("poll", 10, (*haClient).runPoll)

	streams := func(addrs ...string) (sse, grpc float64) {
		for _, addr := range addrs {
			sse += edgeMetric(t, addr, `herald_edge_streams{channel="sse"}`)
			grpc += edgeMetric(t, addr, `herald_edge_streams{channel="grpc"}`)
		}
		return sse, grpc
	}
	waitStreams := func(what string, addrs ...string) {
		t.Helper()
		testutil.Eventually(t, 15*time.Second, func() bool {
			sse, grpc := streams(addrs...)
			return sse == 50 && grpc == 10
		}, what)
	}
	waitStreams("the 70 clients never all connected", aCommon.EdgeAddr, bAddr)
	for _, addr := range []string{aCommon.EdgeAddr, bAddr} {
		if sse, grpc := streams(addr); sse+grpc == 0 {
			t.Fatalf("the balancer sent no stream to %s", addr)
		}
	}

	// Each edge reads the log once (one blocking XREAD per slot of its
	// streams, partitions included), however many clients it serves: the
	// Redis connections blocked reading stay as many as before the clients.
	if n := blockedLogReads(t, rdb); n > readersBefore {
		t.Errorf("%d Redis connections blocked in XREAD with 70 clients, %d without: the edges read the log per client", n, readersBefore)
	} else {
		t.Logf("Redis connections blocked in XREAD: %d without clients, %d with 70", readersBefore, n)
	}

	var stored haLog
	pubCtx, stopPublishing := context.WithCancel(ctx)
	var pubs sync.WaitGroup
	pubs.Go(func() {
		e.publishLoop(pubCtx, &stored, func(i int) (*eventv1.CloudEvent, haEvent) {
			amount := i * 37 % 1000
			return invoiceEvent(fmt.Sprintf("inv-%d", i), amount), haEvent{typ: "billing.invoice.paid", amount: amount}
		})
	})
	pubs.Go(func() {
		e.publishLoop(pubCtx, &stored, func(i int) (*eventv1.CloudEvent, haEvent) {
			amount := i * 53 % 1000
			ev := &eventv1.CloudEvent{
				Id: fmt.Sprintf("ord-%d", i), Source: "//shop/orders", SpecVersion: "1.0", Type: "billing.order.placed",
				Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"order_id":"o%d","amount":%d}`, i, amount)},
			}
			h := haEvent{typ: "billing.order.placed", amount: amount}
			if i%5 != 0 { // every fifth order has no key (partition 0)
				h.key = fmt.Sprintf("customer-%d", i%7)
				ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
					"partitionkey": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: h.key}},
				}
			}
			return ev, h
		})
	})
	stoppedPublishing := false
	stopPublishers := func() {
		if !stoppedPublishing {
			stoppedPublishing = true
			stopPublishing()
			pubs.Wait()
		}
	}
	defer stopPublishers()

	// caughtUp waits until every client has as many events as were stored
	// for it when called (more may have come since).
	caughtUp := func(stage string) {
		t.Helper()
		due := map[*haClient]int{}
		for _, c := range clients {
			due[c] = len(stored.matching(c.q))
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			var behind []string
			for _, c := range clients {
				if n := c.received(); n < due[c] {
					behind = append(behind, fmt.Sprintf("%s (%s) has %d of %d", c.name, c.q, n, due[c]))
				}
			}
			if len(behind) == 0 {
				return
			}
			if time.Now().After(deadline) {
				stopPublishers()
				report(t, clients, &stored)
				t.Fatalf("%s: %d clients never caught up: %s", stage, len(behind), strings.Join(behind[:min(5, len(behind))], "; "))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	caughtUp("both edges up")

	// A dies. The balancer's health check takes it out; its clients land on B.
	a.kill()
	lb.down("A")
	waitStreams("A's clients never all landed on B", bAddr)
	caughtUp("after A died")

	// A new A on A's address; B is drained and stopped gracefully: every
	// client lands on the new A.
	startEdgeProcess(t, aCommon)
	lb.set("A", aCommon.EdgeAddr)
	lb.down("B")
	stopB()
	waitStreams("B's clients never all landed on the new A", aCommon.EdgeAddr)
	caughtUp("after B stopped")

	// A new B joins; the network drops half of A's connections: those
	// clients spread over both.
	b2Addr, _ := inProcessEdge(t, e.common)
	lb.set("B", b2Addr)
	lb.cut("A", 2)
	testutil.Eventually(t, 15*time.Second, func() bool {
		sse, grpc := streams(aCommon.EdgeAddr, b2Addr)
		onB, _ := streams(b2Addr)
		return sse == 50 && grpc == 10 && onB > 0
	}, "the clients cut from A never spread over both edges")
	caughtUp("after half of A's connections were cut")

	stopPublishers()
	stored.mu.Lock()
	failed, n := stored.failed, len(stored.events)
	stored.mu.Unlock()
	if len(failed) > 0 {
		t.Fatalf("publishing failed: %v", failed)
	}
	caughtUp("after publishing stopped")
	report(t, clients, &stored)
	if t.Failed() {
		return
	}
	t.Logf("%d events stored; each of the %d clients got exactly its own", n, len(clients))

	// Every stream client was served by at least two replicas (all were on
	// B, then on the new A), and some by more.
	most := 0
	for _, c := range clients {
		if !streamClients[c] {
			continue
		}
		c.mu.Lock()
		var replicas []string
		for _, local := range c.from {
			if l := lb.labelOf(local); l != "" && !slices.Contains(replicas, l) {
				replicas = append(replicas, l)
			}
		}
		c.mu.Unlock()
		if len(replicas) < 2 {
			t.Errorf("%s was served by %v only, want at least two replicas", c.name, replicas)
		}
		most = max(most, len(replicas))
	}
	if most < 3 {
		t.Errorf("no client was served by more than %d replicas", most)
	}
}

// report fails the test for every client whose events differ from its
// due events, saying how.
func report(t *testing.T, clients []*haClient, stored *haLog) {
	t.Helper()
	for _, c := range clients {
		want := stored.matching(c.q)
		c.mu.Lock()
		got, types, problems := slices.Clone(c.got), slices.Clone(c.types), slices.Clone(c.problems)
		c.mu.Unlock()
		for _, p := range problems {
			t.Errorf("%s (%s): %s", c.name, c.q, p)
		}
		for i := range max(len(got), len(want)) {
			if i < len(got) && i < len(want) && got[i] == want[i].cursor.String() && types[i] == want[i].typ {
				continue
			}
			var w, g string
			if i < len(want) {
				w = want[i].cursor.String() + " " + want[i].typ
			}
			if i < len(got) {
				g = got[i] + " " + types[i]
				if slices.Contains(got[:i], got[i]) {
					g += " (a duplicate)"
				}
			}
			t.Errorf("%s (%s): event %d of %d is %q, want %q (%d received)", c.name, c.q, i, len(want), g, w, len(got))
			break
		}
	}
}

// pollAt answers one poll at the edge at addr: the events' cursors and the
// next cursor.
func pollAt(t *testing.T, addr, key string, v url.Values) (cursors []string, next string) {
	t.Helper()
	req, _ := http.NewRequest("GET", rpc.BaseURL(addr)+"/v1/poll?"+v.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("poll %s at %s: %d %s", v.Encode(), addr, res.StatusCode, body)
	}
	var answer struct {
		Events []struct {
			Cursor string `json:"cursor"`
		} `json:"events"`
		Cursor string `json:"cursor"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		t.Fatalf("poll answer: %v: %s", err, body)
	}
	for _, ev := range answer.Events {
		cursors = append(cursors, ev.Cursor)
	}
	return cursors, answer.Cursor
}

// One cursor for every channel and every replica: a cursor one edge gave
// on SSE, on StreamEvents or in a poll answer (an event's, or a position
// past events a filter left out, which is no event's) resumes on another
// edge, on every channel, with exactly the events after it.
func TestEdgeCursorsCrossReplicasAndChannels(t *testing.T) {
	e := start(t)
	a := e.common.EdgeAddr
	b, _ := inProcessEdge(t, e.common)
	const types = "billing.invoice.paid"
	var cursors []string
	for i, amount := range []int{10, 600, 20, 700, 30, 800} {
		cursors = append(cursors, e.publish(invoiceEvent(fmt.Sprintf("x-%d", i), amount))...)
	}

	// Cursors given by edge A, one per channel.
	given := map[string]string{}
	ch, closeSSE := e.subscribe("types="+types+"&access_token="+e.appKey, "0")
	next(t, ch)
	given["SSE id"] = next(t, ch).id
	closeSSE()
	msgs, _, cancelRPC := rpcStream(t, a, e.appKey, &edgev1.StreamEventsRequest{Types: []string{types}, Cursor: "0"})
	for range 3 {
		select {
		case m := <-msgs:
			given["StreamEvents cursor"] = m.GetCursor()
		case <-time.After(10 * time.Second):
			t.Fatal("StreamEvents delivered nothing within 10s")
		}
	}
	cancelRPC()
	if evs, nextCursor := pollAt(t, a, e.appKey, url.Values{"types": {types}, "cursor": {cursors[2]}, "max": {"1"}, "wait": {"0s"}}); len(evs) != 1 || nextCursor != cursors[3] {
		t.Fatalf("poll after %s at A: %v next %s, want %s", cursors[2], evs, nextCursor, cursors[3])
	}
	given["poll cursor (an event's)"] = cursors[3]
	evs, past := pollAt(t, a, e.appKey, url.Values{"types": {types}, "cursor": {"0"}, "filter": {"data.amount > 5000"}, "wait": {"0s"}})
	if len(evs) != 0 || eventlog.MustParseID(past).Less(eventlog.MustParseID(cursors[5])) || slices.Contains(cursors, past) {
		t.Fatalf("poll matching nothing at A: %v next %s, want none and a position after %s that is no event's", evs, past, cursors[5])
	}
	given["poll cursor (past what the filter left out)"] = past
	for i, want := range []string{cursors[1], cursors[2]} {
		if got := []string{given["SSE id"], given["StreamEvents cursor"]}[i]; got != want {
			t.Fatalf("cursor %d from A is %s, want %s", i, got, want)
		}
	}

	// Published after every cursor was given: what each resume must end with.
	cursors = append(cursors, e.publish(invoiceEvent("x-6", 40), invoiceEvent("x-7", 900), invoiceEvent("x-8", 50))...)
	after := func(cursor string) []string {
		c := eventlog.MustParseID(cursor)
		var out []string
		for _, x := range cursors {
			if c.Less(eventlog.MustParseID(x)) {
				out = append(out, x)
			}
		}
		return out
	}
	resume := func(t *testing.T, addr, cursor string) map[string][]string {
		t.Helper()
		want := len(after(cursor))
		got := map[string][]string{}
		on := *e
		on.t, on.common.EdgeAddr = t, addr
		ch, closeSSE := on.subscribe("types="+types+"&access_token="+e.appKey, cursor)
		for range want {
			got["SSE"] = append(got["SSE"], next(t, ch).id)
		}
		closeSSE()
		msgs, end, cancelRPC := rpcStream(t, addr, e.appKey, &edgev1.StreamEventsRequest{Types: []string{types}, Cursor: cursor})
		for range want {
			select {
			case m := <-msgs:
				got["StreamEvents"] = append(got["StreamEvents"], m.GetCursor())
			case err := <-end:
				t.Fatalf("StreamEvents after %s ended: %v", cursor, err)
			case <-time.After(10 * time.Second):
				t.Fatalf("StreamEvents after %s: nothing within 10s", cursor)
			}
		}
		cancelRPC()
		got["poll"], _ = pollAt(t, addr, e.appKey, url.Values{"types": {types}, "cursor": {cursor}, "wait": {"0s"}})
		return got
	}
	for what, cursor := range given {
		t.Run(what+" from A, on B", func(t *testing.T) {
			want := after(cursor)
			for channel, got := range resume(t, b, cursor) {
				if !slices.Equal(got, want) {
					t.Errorf("%s on B after %s: %v, want %v", channel, cursor, got, want)
				}
			}
		})
	}

	// And back: a position B's poll gave resumes on A.
	_, pastOnB := pollAt(t, b, e.appKey, url.Values{"types": {types}, "cursor": {cursors[0]}, "filter": {"data.amount > 5000"}, "wait": {"0s"}})
	cursors = append(cursors, e.publish(invoiceEvent("x-9", 60))...)
	for channel, got := range resume(t, a, pastOnB) {
		if want := after(pastOnB); !slices.Equal(got, want) || len(want) != 1 {
			t.Errorf("%s on A after B's %s: %v, want %v", channel, pastOnB, got, want)
		}
	}
}
