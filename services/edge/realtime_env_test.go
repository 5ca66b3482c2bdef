package edge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// rt is a registry and an edge over a private redis-server; events are
// appended to the log the way the router does.
type rt struct {
	t    *testing.T
	rdb  *redis.Client
	reg  registryv1connect.RegistryServiceClient
	addr string // the edge
	base string // http://addr
	seq  int
}

var rtTypes = []string{"billing.invoice.paid", "billing.invoice.created", "identity.user.created"}

func startRT(t *testing.T, set func(*edge.Config)) *rt {
	t.Helper()
	srv := testutil.Redis(t)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	common.RegistryAddr = testutil.Serve(t, reg)
	e := &rt{t: t, rdb: testutil.RedisClient(t, srv)}
	e.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...)
	testutil.Eventually(t, 20*time.Second, func() bool {
		_, err := e.reg.ListEventTypes(context.Background(), connect.NewRequest(&registryv1.ListEventTypesRequest{}))
		return err == nil
	}, "the registry answers")
	for _, n := range rtTypes {
		if _, err := e.reg.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{
			EventType: &registryv1.EventType{Name: n, Schema: `{"type":"object"}`},
		})); err != nil {
			t.Fatal(err)
		}
	}
	cfg := edge.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler), UsageFlush: 50 * time.Millisecond}
	if set != nil {
		set(&cfg)
	}
	svc, err := edge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.addr = testutil.Serve(t, svc)
	e.base = rpc.BaseURL(e.addr)
	if cfg.TLSCert != "" {
		e.base = "https://" + e.addr
		return e
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := http.Get(e.base + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "the edge is ready")
	return e
}

// app creates an application with subscribe grants on patterns.
func (e *rt) app(name string, patterns ...string) (app *registryv1.Application, key, keyID string) {
	e.t.Helper()
	var grants []*registryv1.Grant
	for _, p := range patterns {
		grants = append(grants, &registryv1.Grant{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: p})
	}
	res, err := e.reg.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{Name: name, Grants: grants}}))
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Msg.GetApplication(), res.Msg.GetKey().GetSecret(), res.Msg.GetKey().GetId()
}

// setGrants replaces an application's subscribe grants.
func (e *rt) setGrants(id string, patterns ...string) {
	e.t.Helper()
	got, err := e.reg.GetApplication(context.Background(), connect.NewRequest(&registryv1.GetApplicationRequest{Id: id}))
	if err != nil {
		e.t.Fatal(err)
	}
	app := got.Msg.GetApplication()
	app.Grants = nil
	for _, p := range patterns {
		app.Grants = append(app.Grants, &registryv1.Grant{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: p})
	}
	if _, err := e.reg.UpdateApplication(context.Background(), connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: app})); err != nil {
		e.t.Fatal(err)
	}
}

func (e *rt) revoke(keyID string) {
	e.t.Helper()
	if _, err := e.reg.RevokeKey(context.Background(), connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keyID})); err != nil {
		e.t.Fatal(err)
	}
}

// publish appends events of typ with the given JSON data and returns their
// cursors.
func (e *rt) publish(typ string, data ...string) []string {
	e.t.Helper()
	pipe := e.rdb.Pipeline()
	var cmds []*redis.StringCmd
	for _, d := range data {
		e.seq++
		fields, err := eventlog.Encode(&eventv1.CloudEvent{
			Id: fmt.Sprintf("ev-%d", e.seq), Source: "/test", SpecVersion: "1.0", Type: typ,
			Data: &eventv1.CloudEvent_TextData{TextData: d},
		}, "app")
		if err != nil {
			e.t.Fatal(err)
		}
		cmds = append(cmds, pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.StreamKey(typ), Values: fields}))
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, c := range cmds {
		out = append(out, c.Val())
	}
	return out
}

// publishN appends n events of typ, data {"n": i}.
func (e *rt) publishN(typ string, n int) []string {
	e.t.Helper()
	var data []string
	for i := range n {
		data = append(data, fmt.Sprintf(`{"n":%d}`, i))
	}
	return e.publish(typ, data...)
}

// delivered sums the delivered usage the edge reported, per channel.
func (e *rt) delivered() map[string]int64 {
	e.t.Helper()
	msgs, err := e.rdb.XRange(context.Background(), usage.StreamKey, "-", "+").Result()
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int64{}
	seen := map[string]bool{}
	for _, m := range msgs {
		recs, err := usage.Decode(m)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, r := range recs {
			// Each id once, as metering counts: a replay repeats the id.
			if r.GetMetric() == meteringv1.UsageMetric_USAGE_METRIC_DELIVERED && !seen[r.GetId()] {
				seen[r.GetId()] = true
				out[r.GetChannel()] += r.GetQuantity()
			}
		}
	}
	return out
}

// get sends a GET with a key (none when empty) and returns the answer.
func (e *rt) get(ctx context.Context, path, key string, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", e.base+path, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return http.DefaultClient.Do(req)
}

// sseMsg is one SSE message.
type sseMsg struct{ id, event, data string }

// sse is an open SSE stream read in the background.
type sse struct {
	msgs   chan sseMsg
	retry  string
	cancel context.CancelFunc
	res    *http.Response
}

// stream opens GET /v1/stream?query and waits until it is connected.
func (e *rt) stream(query, key string, hdr http.Header) *sse {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	res, err := e.get(ctx, "/v1/stream?"+query, key, hdr)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		e.t.Fatalf("stream %s: %d %s", query, res.StatusCode, body)
	}
	s := &sse{msgs: make(chan sseMsg, 10000), cancel: cancel, res: res}
	ready := make(chan struct{})
	go func() {
		defer close(s.msgs)
		defer res.Body.Close()
		readSSE(res.Body, func(line string) {
			switch {
			case strings.HasPrefix(line, "retry: "):
				s.retry = line[7:]
			case line == ": connected":
				close(ready)
			}
		}, s.msgs)
	}()
	e.t.Cleanup(cancel)
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		e.t.Fatal("the stream did not connect within 20s")
	}
	return s
}

// readSSE parses messages from r into out; comment and retry lines go to
// other.
func readSSE(r io.Reader, other func(string), out chan<- sseMsg) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	var cur sseMsg
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		case line == "":
			if cur.event != "" || cur.id != "" {
				out <- cur
			}
			cur = sseMsg{}
		default:
			other(line)
		}
	}
}

// next waits for the next message.
func (s *sse) next(t *testing.T) sseMsg {
	t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			t.Fatal("the stream ended")
		}
		return m
	case <-time.After(20 * time.Second):
		t.Fatal("no message within 20s")
	}
	return sseMsg{}
}

// ends waits for the stream to end and returns what came before.
func (s *sse) ends(t *testing.T) []sseMsg {
	t.Helper()
	var got []sseMsg
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				return got
			}
			got = append(got, m)
		case <-deadline:
			t.Fatal("the stream stayed open")
		}
	}
}

// pollRes is the body of a poll's answer.
type pollRes struct {
	Events []struct {
		Cursor string          `json:"cursor"`
		Event  json.RawMessage `json:"event"`
	} `json:"events"`
	Cursor string `json:"cursor"`
	Gap    *struct {
		From   string   `json:"from"`
		To     string   `json:"to"`
		Resume string   `json:"resume"`
		Types  []string `json:"types"`
	} `json:"gap"`
}

func (p pollRes) cursors() []string {
	var out []string
	for _, ev := range p.Events {
		out = append(out, ev.Cursor)
	}
	return out
}

// poll sends GET /v1/poll?query and returns the status, the decoded body
// (for 200) and the raw body.
func (e *rt) poll(ctx context.Context, query, key string) (int, pollRes, string) {
	e.t.Helper()
	res, err := e.get(ctx, "/v1/poll?"+query, key, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	var p pollRes
	if res.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &p); err != nil {
			e.t.Fatalf("poll body: %v: %s", err, body)
		}
	}
	return res.StatusCode, p, string(body)
}

// rpc opens StreamEvents and collects its messages.
type rpcStream struct {
	mu   sync.Mutex
	msgs []*edgev1.StreamEventsResponse
	more chan struct{}
	end  chan error
}

func (e *rt) rpc(key string, req *edgev1.StreamEventsRequest, opts ...connect.ClientOption) *rpcStream {
	e.t.Helper()
	client := edgev1connect.NewEdgeServiceClient(rpc.HTTPClient(), e.base, append(rpc.ClientOptions(key), opts...)...)
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(cancel)
	s := &rpcStream{more: make(chan struct{}, 1), end: make(chan error, 1)}
	go func() {
		st, err := client.StreamEvents(ctx, connect.NewRequest(req))
		if err != nil {
			s.end <- err
			return
		}
		defer st.Close()
		for st.Receive() {
			s.mu.Lock()
			s.msgs = append(s.msgs, proto.Clone(st.Msg()).(*edgev1.StreamEventsResponse))
			s.mu.Unlock()
			select {
			case s.more <- struct{}{}:
			default:
			}
		}
		s.end <- st.Err()
	}()
	return s
}

// waitN waits for n messages.
func (s *rpcStream) waitN(t *testing.T, n int) []*edgev1.StreamEventsResponse {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		s.mu.Lock()
		got := append([]*edgev1.StreamEventsResponse(nil), s.msgs...)
		s.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-s.more:
		case err := <-s.end:
			s.end <- err
			s.mu.Lock()
			k := len(s.msgs)
			s.mu.Unlock()
			if k < n {
				t.Fatalf("StreamEvents ended with %v after %d of %d messages", err, len(got), n)
			}
		case <-deadline:
			t.Fatalf("StreamEvents: %d of %d messages within 20s", len(got), n)
		}
	}
}

func (s *rpcStream) ended(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.end:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("StreamEvents did not end within 20s")
	}
	return nil
}
