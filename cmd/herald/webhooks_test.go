package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const webhooksTestKey = "hk_webhooks-cli-test-key"

// webhookService is a WebhookService that answers from fixtures and keeps
// each request it was sent, with its Authorization header.
type webhookService struct {
	edgev1connect.UnimplementedWebhookServiceHandler
	mu    sync.Mutex
	got   []proto.Message
	auths []string
	retry *edgev1.Attempt
}

func (s *webhookService) record(auth string, m proto.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, m)
	s.auths = append(s.auths, auth)
	if auth != "Bearer "+webhooksTestKey {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("unknown key"))
	}
	return nil
}

func (s *webhookService) last(t *testing.T) (proto.Message, string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.got) == 0 {
		t.Fatal("the service got no request")
	}
	return s.got[len(s.got)-1], s.auths[len(s.auths)-1]
}

var (
	attemptTime = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	failed      = &edgev1.Attempt{
		Id: "att_2", SubscriptionId: "sub_1", Cursor: "1796205600000-0", EventId: "evt_123", EventType: "billing.invoice.paid",
		Number: 2, Time: timestamppb.New(attemptTime.Add(time.Minute)), Status: 500, LatencyMs: 41,
		Error: "the endpoint answered 500\nInternal Server Error", ResponseHeaders: map[string]string{"Content-Type": "text/plain"},
		ResponseBody: []byte("boom"),
	}
	timedOut = &edgev1.Attempt{
		Id: "att_1", SubscriptionId: "sub_1", Cursor: "1796205600000-0", EventId: "evt_123", EventType: "billing.invoice.paid",
		Number: 1, Time: timestamppb.New(attemptTime), LatencyMs: 15000, Error: "timeout after 15s",
	}
)

func (s *webhookService) ListAttempts(_ context.Context, req *connect.Request[edgev1.ListAttemptsRequest]) (*connect.Response[edgev1.ListAttemptsResponse], error) {
	if err := s.record(req.Header().Get("Authorization"), req.Msg); err != nil {
		return nil, err
	}
	if req.Msg.GetSubscriptionId() == "sub_none" {
		return connect.NewResponse(&edgev1.ListAttemptsResponse{}), nil
	}
	if req.Msg.GetSubscriptionId() == "sub_other" {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("subscription sub_other not found"))
	}
	return connect.NewResponse(&edgev1.ListAttemptsResponse{Attempts: []*edgev1.Attempt{failed, timedOut}, NextPageToken: "tok_2"}), nil
}

func (s *webhookService) ListWebhookDeadLetters(_ context.Context, req *connect.Request[edgev1.ListWebhookDeadLettersRequest]) (*connect.Response[edgev1.ListWebhookDeadLettersResponse], error) {
	if err := s.record(req.Header().Get("Authorization"), req.Msg); err != nil {
		return nil, err
	}
	if req.Msg.GetSubscriptionId() == "sub_none" {
		return connect.NewResponse(&edgev1.ListWebhookDeadLettersResponse{}), nil
	}
	return connect.NewResponse(&edgev1.ListWebhookDeadLettersResponse{Total: 7, DeadLetters: []*edgev1.WebhookDeadLetter{{
		Id: "dl_1", Cursor: "1796205600000-0", Reason: "gave up after 2 attempts",
		Time:     timestamppb.New(attemptTime.Add(time.Hour)),
		Event:    &eventv1.CloudEvent{Id: "evt_123", Type: "billing.invoice.paid", Source: "//billing", SpecVersion: "1.0"},
		Attempts: []*edgev1.Attempt{timedOut, failed},
	}}}), nil
}

func (s *webhookService) RetryDelivery(_ context.Context, req *connect.Request[edgev1.RetryDeliveryRequest]) (*connect.Response[edgev1.RetryDeliveryResponse], error) {
	if err := s.record(req.Header().Get("Authorization"), req.Msg); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return connect.NewResponse(&edgev1.RetryDeliveryResponse{Attempt: s.retry}), nil
}

func (s *webhookService) Replay(_ context.Context, req *connect.Request[edgev1.ReplayRequest]) (*connect.Response[edgev1.ReplayResponse], error) {
	if err := s.record(req.Header().Get("Authorization"), req.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&edgev1.ReplayResponse{Queued: 3}), nil
}

// startWebhookService serves svc over h2c and HTTP/1.1 on a free port, as
// the edge does.
func startWebhookService(t *testing.T, svc *webhookService) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(edgev1connect.NewWebhookServiceHandler(svc))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func TestWebhooksCommands(t *testing.T) {
	svc := &webhookService{}
	addr := startWebhookService(t, svc)
	t.Setenv("HERALD_EDGE_ADDR", addr)
	t.Setenv("HERALD_KEY", webhooksTestKey)
	t.Setenv("HERALD_ADMIN_KEY", "")
	run := func(args ...string) (string, error) {
		t.Helper()
		return cli(context.Background(), t, append([]string{"webhooks"}, args...)...)
	}
	ts := func(s string) *timestamppb.Timestamp {
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return timestamppb.New(tm)
	}

	// attempts: the request's fields, the key, and a table.
	out, err := run("attempts", "sub_1", "--cursor", "1796205600000-0", "--page-size", "2", "--page-token", "tok_1")
	if err != nil {
		t.Fatalf("attempts: %v\n%s", err, out)
	}
	got, auth := svc.last(t)
	want := &edgev1.ListAttemptsRequest{SubscriptionId: "sub_1", Cursor: "1796205600000-0", PageSize: 2, PageToken: "tok_1"}
	if !proto.Equal(got, want) || auth != "Bearer "+webhooksTestKey {
		t.Errorf("attempts sent %v with %q, want %v", got, auth, want)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "TIME") ||
		!strings.Contains(lines[1], "2026-12-02T10:01:00Z") || !strings.Contains(lines[1], "500 Internal Server Error") ||
		!strings.Contains(lines[1], "the endpoint answered 500 Internal Server Error") || !strings.Contains(lines[1], "41 ms") ||
		!strings.Contains(lines[2], "no response") || !strings.Contains(lines[2], "timeout after 15s") ||
		!strings.Contains(out, "More: add --page-token tok_2") {
		t.Errorf("attempts table:\n%s", out)
	}
	if out, err := run("attempts", "sub_none"); err != nil || !strings.Contains(out, "No attempts for sub_none.") {
		t.Errorf("no attempts: %v\n%s", err, out)
	}
	if _, err := run("attempts", "sub_other"); err == nil || !strings.Contains(err.Error(), "subscription sub_other not found") {
		t.Errorf("an unknown subscription: %v", err)
	}

	// --json is protojson of the whole response.
	out, err = run("attempts", "sub_1", "--json")
	var decoded map[string]any
	if err != nil || json.Unmarshal([]byte(out), &decoded) != nil || !strings.Contains(out, `"responseBody": "Ym9vbQ=="`) || !strings.Contains(out, `"nextPageToken": "tok_2"`) {
		t.Errorf("attempts --json: %v\n%s", err, out)
	}

	// dead-letters.
	out, err = run("dead-letters", "sub_1", "--page-size", "50")
	if err != nil {
		t.Fatalf("dead-letters: %v\n%s", err, out)
	}
	if got, _ := svc.last(t); !proto.Equal(got, &edgev1.ListWebhookDeadLettersRequest{SubscriptionId: "sub_1", PageSize: 50}) {
		t.Errorf("dead-letters sent %v", got)
	}
	if !strings.Contains(out, "2026-12-02T11:00:00Z") || !strings.Contains(out, "evt_123") || !strings.Contains(out, "gave up after 2 attempts") ||
		!strings.Contains(out, "500 Internal Server Error") || !strings.Contains(out, "1 shown, 7 in all.") {
		t.Errorf("dead-letters table:\n%s", out)
	}
	if out, err := run("dead-letters", "sub_none"); err != nil || !strings.Contains(out, "No dead letters for sub_none.") {
		t.Errorf("no dead letters: %v\n%s", err, out)
	}

	// retry: a success exits 0, a failure 1, and both print the attempt.
	svc.retry = &edgev1.Attempt{Number: 3, Time: timestamppb.New(attemptTime), EventId: "evt_123", EventType: "billing.invoice.paid", Status: 200, Success: true, LatencyMs: 12, Trigger: edgev1.AttemptTrigger_ATTEMPT_TRIGGER_MANUAL}
	out, err = run("retry", "sub_1", "1796205600000-0")
	if err != nil || !strings.Contains(out, "Attempt 3 at 2026-12-02T10:00:00Z (evt_123, billing.invoice.paid): 200 OK (12 ms)") {
		t.Errorf("retry: %v\n%s", err, out)
	}
	if got, _ := svc.last(t); !proto.Equal(got, &edgev1.RetryDeliveryRequest{SubscriptionId: "sub_1", Cursor: "1796205600000-0"}) {
		t.Errorf("retry sent %v", got)
	}
	svc.mu.Lock()
	svc.retry = failed
	svc.mu.Unlock()
	out, err = run("retry", "sub_1", "1796205600000-0")
	if !errors.Is(err, errAttemptFailed) || !strings.Contains(out, "500 Internal Server Error (41 ms)") || !strings.Contains(out, "the endpoint answered 500") {
		t.Errorf("a failed retry: %v\n%s", err, out)
	}
	if _, err := run("retry", "sub_1", "evt_123"); err == nil || !strings.Contains(err.Error(), "not a stream id") {
		t.Errorf("retry of an event id: %v", err)
	}

	// replay: each selection, as sent.
	replays := []struct {
		args []string
		want *edgev1.ReplayRequest
	}{
		{[]string{"--cursor", "1796205600000-0"}, &edgev1.ReplayRequest{SubscriptionId: "sub_1", Selection: &edgev1.ReplayRequest_Cursor{Cursor: "1796205600000-0"}}},
		{[]string{"--failed-since", "2026-12-01T00:00:00Z"}, &edgev1.ReplayRequest{SubscriptionId: "sub_1", Selection: &edgev1.ReplayRequest_FailedSince{FailedSince: ts("2026-12-01T00:00:00Z")}}},
		{[]string{"--from", "0"}, &edgev1.ReplayRequest{SubscriptionId: "sub_1", Selection: &edgev1.ReplayRequest_Range{Range: &edgev1.LogRange{From: &edgev1.LogRange_AfterCursor{AfterCursor: "0"}}}}},
		{[]string{"--from", "2026-12-01T00:00:00Z", "--to", "1796205600000-5"}, &edgev1.ReplayRequest{SubscriptionId: "sub_1", Selection: &edgev1.ReplayRequest_Range{Range: &edgev1.LogRange{
			From: &edgev1.LogRange_FromTime{FromTime: ts("2026-12-01T00:00:00Z")}, To: &edgev1.LogRange_ToCursor{ToCursor: "1796205600000-5"}}}}},
		{[]string{"--from", "1796205600000-0", "--to", "2026-12-02T00:00:00Z"}, &edgev1.ReplayRequest{SubscriptionId: "sub_1", Selection: &edgev1.ReplayRequest_Range{Range: &edgev1.LogRange{
			From: &edgev1.LogRange_AfterCursor{AfterCursor: "1796205600000-0"}, To: &edgev1.LogRange_ToTime{ToTime: ts("2026-12-02T00:00:00Z")}}}}},
	}
	for _, r := range replays {
		out, err := run(append([]string{"replay", "sub_1"}, r.args...)...)
		if err != nil || !strings.Contains(out, "Queued 3 event(s) for delivery to sub_1.") {
			t.Errorf("replay %v: %v\n%s", r.args, err, out)
			continue
		}
		if got, _ := svc.last(t); !proto.Equal(got, r.want) {
			t.Errorf("replay %v sent %v, want %v", r.args, got, r.want)
		}
	}
	if out, err := run("replay", "sub_1", "--cursor", "1796205600000-0", "--json"); err != nil || strings.TrimSpace(out) != "{\n  \"queued\": 3\n}" {
		t.Errorf("replay --json: %v\n%q", err, out)
	}

	// Mistakes are refused before anything is sent.
	svc.mu.Lock()
	sent := len(svc.got)
	svc.mu.Unlock()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"replay", "sub_1"}, "exactly one of --cursor C, --failed-since TIME or --from C|TIME"},
		{[]string{"replay", "sub_1", "--cursor", "1-0", "--failed-since", "2026-12-01T00:00:00Z"}, "exactly one of"},
		{[]string{"replay", "sub_1", "--to", "1-0"}, "exactly one of"},
		{[]string{"replay", "sub_1", "--cursor", "1-0", "--to", "2-0"}, "--to ends a --from range"},
		{[]string{"replay", "sub_1", "--failed-since", "yesterday"}, "RFC 3339"},
		{[]string{"replay", "sub_1", "--from", "last week"}, "neither a cursor"},
		{[]string{"replay", "sub_1", "--from", "0", "--to", "soon"}, "neither a cursor"},
		{[]string{"replay", "sub_1", "--cursor", "evt_1"}, "not a stream id"},
	} {
		if _, err := run(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: want %q, got %v", c.args, c.want, err)
		}
	}
	svc.mu.Lock()
	if len(svc.got) != sent {
		t.Errorf("refused flags still sent %d request(s)", len(svc.got)-sent)
	}
	svc.mu.Unlock()

	// Keys: --key wins over the environment; a refused key says what to check;
	// no key at all is refused before anything is sent.
	if _, err := run("attempts", "sub_1", "--key", "hk_wrong"); err == nil || !strings.Contains(err.Error(), "refused the key") {
		t.Errorf("a wrong key: %v", err)
	}
	if _, auth := svc.last(t); auth != "Bearer hk_wrong" {
		t.Errorf("--key sent %q", auth)
	}
	t.Setenv("HERALD_KEY", "")
	t.Setenv("HERALD_ADMIN_KEY", webhooksTestKey)
	if _, err := run("attempts", "sub_1"); err != nil {
		t.Errorf("the admin key from the environment: %v", err)
	}
	t.Setenv("HERALD_ADMIN_KEY", "")
	if _, err := run("attempts", "sub_1"); err == nil || !strings.Contains(err.Error(), "HERALD_KEY") {
		t.Errorf("no key: %v", err)
	}

	// An edge that is not there.
	t.Setenv("HERALD_KEY", webhooksTestKey)
	if _, err := run("attempts", "sub_1", "--edge", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("no edge: %v", err)
	}
}
