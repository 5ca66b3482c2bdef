package mesh_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge"
	"google.golang.org/protobuf/types/known/durationpb"
)

// edgeMetric reads one unlabelled (or fully labelled) sample from the
// edge's /metrics; -1 when it is absent.
func edgeMetric(t *testing.T, addr, sample string) float64 {
	t.Helper()
	res, err := http.Get(rpc.BaseURL(addr) + "/metrics")
	if err != nil {
		t.Fatal(err)
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

func waitMetric(t *testing.T, addr, sample string, want float64) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool { return edgeMetric(t, addr, sample) == want },
		fmt.Sprintf("%s never reached %v", sample, want))
}

// rpcStream opens EdgeService/StreamEvents and hands its messages (then its
// end) to the returned channels.
func rpcStream(t *testing.T, addr, key string, req *edgev1.StreamEventsRequest) (<-chan *edgev1.StreamEventsResponse, <-chan error, context.CancelFunc) {
	t.Helper()
	client := edgev1connect.NewEdgeServiceClient(rpc.HTTPClient(), rpc.BaseURL(addr), rpc.ClientOptions(key)...)
	ctx, cancel := context.WithCancel(context.Background())
	msgs, end := make(chan *edgev1.StreamEventsResponse, 100), make(chan error, 1)
	go func() {
		s, err := client.StreamEvents(ctx, connect.NewRequest(req))
		if err != nil {
			end <- err
			return
		}
		defer s.Close()
		for s.Receive() {
			msgs <- s.Msg()
		}
		end <- s.Err()
	}()
	t.Cleanup(cancel)
	return msgs, end, cancel
}

func rpcEnd(t *testing.T, end <-chan error) error {
	t.Helper()
	select {
	case err := <-end:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("StreamEvents did not end within 10s")
	}
	return nil
}

// streamEnds waits for an SSE stream to close.
func streamEnds(t *testing.T, ch <-chan sseEvent, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("%s: the SSE stream stayed open", what)
		}
	}
}

// A resume cursor on a pattern that matches no type yet neither spins nor
// outlives its client: both channels follow a type created later, leave the
// counts when the client goes, and let the mesh stop (issue 9, D1).
func TestEdgeResumeOnPatternWithoutTypes(t *testing.T) {
	e := start(t)
	addr := e.common.EdgeAddr
	ch, closeSSE := e.subscribe("types=billing.zzz.*&last_event_id=0&access_token="+e.appKey, "")
	msgs, end, cancelRPC := rpcStream(t, addr, e.appKey, &edgev1.StreamEventsRequest{Types: []string{"billing.zzz.*"}, Cursor: "0"})
	waitMetric(t, addr, "herald_edge_live_subscribers", 2)

	_, err := e.reg.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "billing.zzz.created", Schema: `{"type":"object"}`,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	ev := invoiceEvent("zzz-1", 1)
	ev.Type, ev.Data = "billing.zzz.created", &eventv1.CloudEvent_TextData{TextData: `{}`}
	cursor := e.publish(ev)[0]
	if got := next(t, ch); got.id != cursor || got.event != "billing.zzz.created" {
		t.Fatalf("SSE got %+v, want billing.zzz.created at %s", got, cursor)
	}
	select {
	case m := <-msgs:
		if m.GetCursor() != cursor {
			t.Fatalf("StreamEvents got %s, want %s", m.GetCursor(), cursor)
		}
	case err := <-end:
		t.Fatalf("StreamEvents ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("StreamEvents delivered nothing within 10s")
	}

	closeSSE()
	cancelRPC()
	waitMetric(t, addr, "herald_edge_sse_streams", 0)
	waitMetric(t, addr, "herald_edge_live_subscribers", 0)

	// Left open over a pattern that still matches nothing, they do not hold up shutdown.
	_, closeSSE = e.subscribe("types=billing.none.*&last_event_id=0&access_token="+e.appKey, "")
	defer closeSSE()
	rpcStream(t, addr, e.appKey, &edgev1.StreamEventsRequest{Types: []string{"billing.none.*"}, Cursor: "0"})
	waitMetric(t, addr, "herald_edge_live_subscribers", 2)
	e.stop()
	select {
	case err := <-e.done:
		if err != nil {
			t.Fatalf("mesh stopped with %v", err)
		}
		e.done <- nil // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("mesh did not stop with streams resumed over zero streams")
	}
}

// newReader creates an application with a subscribe grant on billing.* and
// returns its key and key id.
func (e *env) newReader(t *testing.T, name string) (app *registryv1.Application, key, keyID string) {
	t.Helper()
	res, err := e.reg.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name:   name,
		Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetApplication(), res.Msg.GetKey().GetSecret(), res.Msg.GetKey().GetId()
}

// Open streams re-check their caller when the catalog changes: a revoked key
// ends them with UNAUTHENTICATED, a withdrawn grant with PERMISSION_DENIED
// (D2).
func TestEdgeOpenStreamsEndOnRevocationAndWithdrawnGrant(t *testing.T) {
	e := start(t)
	addr := e.common.EdgeAddr
	ctx := context.Background()

	t.Run("revoked key", func(t *testing.T) {
		_, key, keyID := e.newReader(t, "revoked-reader")
		ch, closeSSE := e.subscribe("types=billing.*&access_token="+key, "")
		defer closeSSE()
		msgs, end, _ := rpcStream(t, addr, key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
		cursor := e.publish(invoiceEvent("before-revoke", 1))[0]
		if got := next(t, ch); got.id != cursor {
			t.Fatalf("SSE got %+v before revocation", got)
		}
		<-msgs
		if _, err := e.reg.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: keyID})); err != nil {
			t.Fatal(err)
		}
		streamEnds(t, ch, "revoked key")
		if err := rpcEnd(t, end); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("StreamEvents ended with %v, want UNAUTHENTICATED", err)
		}
	})

	t.Run("key expired by rotation", func(t *testing.T) {
		app, key, _ := e.newReader(t, "rotated-reader")
		ch, closeSSE := e.subscribe("types=billing.*&access_token="+key, "")
		defer closeSSE()
		_, end, _ := rpcStream(t, addr, key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
		// The old key expires a second after the new one is made: no
		// catalog change marks that moment, the stream must notice it alone.
		if _, err := e.reg.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{
			ApplicationId: app.GetId(), RotateOverlap: durationpb.New(time.Second),
		})); err != nil {
			t.Fatal(err)
		}
		streamEnds(t, ch, "expired key")
		if err := rpcEnd(t, end); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("StreamEvents ended with %v, want UNAUTHENTICATED", err)
		}
	})

	t.Run("withdrawn grant", func(t *testing.T) {
		app, key, _ := e.newReader(t, "narrowed-reader")
		ch, closeSSE := e.subscribe("types=billing.*&access_token="+key, "")
		defer closeSSE()
		_, end, _ := rpcStream(t, addr, key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
		waitMetric(t, addr, "herald_edge_live_subscribers", 2)
		got, err := e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		upd := got.Msg.GetApplication()
		upd.Grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "identity.*"}}
		if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: upd})); err != nil {
			t.Fatal(err)
		}
		streamEnds(t, ch, "withdrawn grant")
		if err := rpcEnd(t, end); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("StreamEvents ended with %v, want PERMISSION_DENIED", err)
		}
	})
	waitMetric(t, addr, "herald_edge_sse_streams", 0)
}

// One ceiling covers SSE and StreamEvents together; past it SSE answers 503
// and StreamEvents RESOURCE_EXHAUSTED, both with Retry-After (D5).
func TestEdgeStreamCeilingCoversEveryChannel(t *testing.T) {
	e := start(t)
	common := e.common
	common.EdgeAddr = "127.0.0.1:0"
	svc, err := edge.New(edge.Config{Common: common, Logger: slog.New(slog.DiscardHandler), MaxStreams: 2})
	if err != nil {
		t.Fatal(err)
	}
	addr := testutil.Serve(t, svc)
	testutil.Eventually(t, 20*time.Second, func() bool {
		res, err := http.Get(rpc.BaseURL(addr) + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "second edge never became ready")

	sseGet := func() *http.Response {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(addr)+"/v1/stream?types=billing.*&access_token="+e.appKey, nil)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { res.Body.Close() })
		return res
	}
	if res := sseGet(); res.StatusCode != http.StatusOK {
		t.Fatalf("first stream: %d", res.StatusCode)
	}
	_, end, cancelRPC := rpcStream(t, addr, e.appKey, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
	waitMetric(t, addr, "herald_edge_live_subscribers", 2)

	res := sseGet()
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" {
		t.Fatalf("SSE past the ceiling: %d Retry-After %q, want 503 with Retry-After", res.StatusCode, res.Header.Get("Retry-After"))
	}
	_, end2, _ := rpcStream(t, addr, e.appKey, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
	err = rpcEnd(t, end2)
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted || ce.Meta().Get("Retry-After") == "" {
		t.Fatalf("StreamEvents past the ceiling: %v (meta %v), want RESOURCE_EXHAUSTED with Retry-After", err, ce.Meta())
	}

	waitMetric(t, addr, `herald_edge_streams{channel="grpc"}`, 1)
	waitMetric(t, addr, `herald_edge_streams{channel="sse"}`, 1)

	// A stream that ends makes room.
	cancelRPC()
	rpcEnd(t, end)
	waitMetric(t, addr, `herald_edge_streams{channel="grpc"}`, 0)
	if res := sseGet(); res.StatusCode != http.StatusOK {
		t.Fatalf("stream after one ended: %d", res.StatusCode)
	}
}

// A cursor after the newest event and after now is refused, naming the
// newest cursor; one between the newest event and now is fine (D6).
func TestEdgeFutureCursorRefused(t *testing.T) {
	e := start(t)
	addr := e.common.EdgeAddr
	newest := e.publish(invoiceEvent("newest", 1))[0]
	const future = "99999999999999-0"

	req, _ := http.NewRequest("GET", rpc.BaseURL(addr)+"/v1/stream?types=billing.*&access_token="+e.appKey, nil)
	req.Header.Set("Last-Event-ID", future)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	res.Body.Close()
	want := "cursor " + future + " is in the future, which would skip every event until then: the newest cursor of the types this stream covers is " + newest
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), want) {
		t.Fatalf("SSE from a future cursor: %d %s, want 400 with %q", res.StatusCode, body, want)
	}

	_, end, _ := rpcStream(t, addr, e.appKey, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}, Cursor: future})
	err = rpcEnd(t, end)
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), want) {
		t.Fatalf("StreamEvents from a future cursor: %v, want INVALID_ARGUMENT with %q", err, want)
	}

	// The newest cursor itself still resumes, and delivers what follows.
	ch, closeSSE := e.subscribe("types=billing.*&access_token="+e.appKey, newest)
	defer closeSSE()
	next1 := e.publish(invoiceEvent("after-newest", 1))[0]
	if got := next(t, ch); got.id != next1 {
		t.Fatalf("resumed from the newest cursor: got %+v, want %s", got, next1)
	}
}

// A stream request carrying a body is refused: net/http would not notice
// the client leaving until the body was read.
func TestEdgeStreamRequestWithBodyRefused(t *testing.T) {
	e := start(t)
	addr := e.common.EdgeAddr
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /v1/stream?types=billing.*&access_token=%s HTTP/1.1\r\nHost: edge\r\nContent-Length: 10\r\n\r\n", e.appKey)
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "no body") {
		t.Fatalf("stream with a body: %d %s, want 400", res.StatusCode, body)
	}
	conn.Close()
	waitMetric(t, addr, "herald_edge_sse_streams", 0)
}
