package mesh_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/cmd/herald/internal/mesh"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

const adminKey = "test-admin-key-0123456789"

type env struct {
	t       *testing.T
	common  config.Common
	stop    context.CancelFunc
	done    chan error
	router  routerv1.RouterServiceClient
	reg     registryv1connect.RegistryServiceClient
	appKey  string
	appID   string
	invoice string
}

// start runs the whole mesh in-process against a private redis-server.
func start(t *testing.T) *env { return startWith(t, nil) }

// startWith is start with settings changed by set.
func startWith(t *testing.T, set func(*config.Common)) *env {
	t.Helper()
	redis := testutil.Redis(t)
	common := config.Common{
		RedisURL: redis.URL(), AdminKey: adminKey,
		EdgeAddr: "127.0.0.1:0", RouterAddr: "127.0.0.1:0", RegistryAddr: "127.0.0.1:0", MeteringAddr: "127.0.0.1:0",
	}
	if set != nil {
		set(&common)
	}
	m, err := mesh.New(common, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, common: m.Common, stop: cancel, done: make(chan error, 1)}
	go func() { e.done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-e.done:
		case <-time.After(20 * time.Second):
			t.Error("mesh did not stop within 20s")
		}
	})
	e.connect(t)
	return e
}

// connect waits until every service answers /readyz, then makes the
// clients and the test's event type and application.
func (e *env) connect(t *testing.T) {
	t.Helper()
	for _, addr := range []string{e.common.RegistryAddr, e.common.RouterAddr, e.common.MeteringAddr, e.common.EdgeAddr} {
		why := "no answer"
		deadline := time.Now().Add(20 * time.Second)
		for {
			res, err := http.Get(rpc.BaseURL(addr) + "/readyz")
			if err == nil {
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode == http.StatusOK {
					break
				}
				why = string(body)
			} else {
				why = err.Error()
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never became ready: %s", addr, why)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	conn, err := grpc.NewClient(e.common.RouterAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.router = routerv1.NewRouterServiceClient(conn)
	e.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.RegistryAddr), rpc.ClientOptions(adminKey)...)

	e.invoice = "billing.invoice.paid"
	_, err = e.reg.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: e.invoice, Description: "An invoice was paid.",
		Schema: `{"type":"object","required":["invoice_id","amount"],"properties":{"invoice_id":{"type":"string"},"amount":{"type":"integer","minimum":0}}}`,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	app, err := e.reg.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "shop",
		Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "billing.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	e.appKey, e.appID = app.Msg.GetKey().GetSecret(), app.Msg.GetApplication().GetId()
}

func withKey(key string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)
}

func invoiceEvent(id string, amount int) *eventv1.CloudEvent {
	return &eventv1.CloudEvent{
		Id: id, Source: "//billing.example/invoices", SpecVersion: "1.0", Type: "billing.invoice.paid",
		Data: &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"invoice_id":%q,"amount":%d}`, id, amount)},
	}
}

// publish sends events over gRPC and returns their cursors, failing on any refusal.
func (e *env) publish(events ...*eventv1.CloudEvent) []string {
	e.t.Helper()
	res, err := e.router.Publish(withKey(e.appKey), &routerv1.PublishRequest{Events: events})
	if err != nil {
		e.t.Fatal(err)
	}
	var cursors []string
	for i, r := range res.GetResults() {
		if r.GetError() != nil {
			e.t.Fatalf("event %d refused: %v", i, r.GetError())
		}
		cursors = append(cursors, r.GetCursor())
	}
	return cursors
}

type sseEvent struct{ id, event, data string }

// subscribe opens an SSE stream and returns its events; the stream is open
// (subscription in place) when subscribe returns.
func (e *env) subscribe(query, lastEventID string) (<-chan sseEvent, func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(e.common.EdgeAddr)+"/v1/stream?"+query, nil)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		body, _ := io.ReadAll(res.Body)
		cancel()
		e.t.Fatalf("stream: %d %s", res.StatusCode, body)
	}
	ch := make(chan sseEvent, 1000)
	ready := make(chan struct{})
	go func() {
		defer close(ch)
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == ": connected":
				close(ready)
			case strings.HasPrefix(line, "id: "):
				cur.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				cur.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[6:]
			case line == "" && cur.id != "":
				ch <- cur
				cur = sseEvent{}
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		e.t.Fatal("stream did not start")
	}
	return ch, cancel
}

func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("stream closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return sseEvent{}
}

func TestPublishReachesSSEAndUsage(t *testing.T) {
	e := start(t)
	ch, closeStream := e.subscribe("types=billing.*&access_token="+e.appKey, "")
	defer closeStream()

	cursors := e.publish(invoiceEvent("in_1", 100))
	got := next(t, ch)
	if got.id != cursors[0] || got.event != "billing.invoice.paid" {
		t.Fatalf("got id=%q event=%q, want id=%q", got.id, got.event, cursors[0])
	}
	var ce map[string]any
	if err := json.Unmarshal([]byte(got.data), &ce); err != nil {
		t.Fatalf("data is not JSON: %v: %s", err, got.data)
	}
	if ce["specversion"] != "1.0" || ce["id"] != "in_1" || ce["type"] != "billing.invoice.paid" || ce["source"] != "//billing.example/invoices" {
		t.Fatalf("not the CloudEvent: %s", got.data)
	}
	if data, _ := ce["data"].(map[string]any); data["amount"] != float64(100) {
		t.Fatalf("data not embedded as JSON: %s", got.data)
	}

	// Usage: one publish and one SSE delivery for the application.
	testutil.Eventually(t, 15*time.Second, func() bool {
		rows := e.usage(adminKey, "application_id="+e.appID)
		return rows[meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED.String()] == 1 && rows[meteringv1.UsageMetric_USAGE_METRIC_DELIVERED.String()] == 1
	}, "usage never showed 1 published and 1 delivered")
}

// usage queries the REST gateway and sums counts per metric.
func (e *env) usage(key, query string) map[string]int64 {
	e.t.Helper()
	req, _ := http.NewRequest("GET", rpc.BaseURL(e.common.MeteringAddr)+"/v1/usage?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(res.Body)
		e.t.Fatalf("usage: %d %s", res.StatusCode, body)
	}
	var body struct {
		Rows []struct {
			Metric string `json:"metric"`
			Count  string `json:"count"`
		} `json:"rows"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, r := range body.Rows {
		var n int64
		fmt.Sscan(r.Count, &n)
		out[r.Metric] += n
	}
	return out
}

func TestResumeWithLastEventIDHasNoGapNorDuplicate(t *testing.T) {
	e := start(t)
	ch, closeStream := e.subscribe("types=billing.invoice.paid&access_token="+e.appKey, "")
	first := e.publish(invoiceEvent("a", 1), invoiceEvent("b", 2))
	for _, c := range first {
		if got := next(t, ch); got.id != c {
			t.Fatalf("got %s, want %s", got.id, c)
		}
	}
	closeStream()

	// Published while the client is away.
	away := e.publish(invoiceEvent("c", 3), invoiceEvent("d", 4), invoiceEvent("e", 5))

	// Resume with the header, then with the query parameter.
	for _, how := range []string{"header", "query"} {
		t.Run(how, func(t *testing.T) {
			var ch <-chan sseEvent
			var closeStream func()
			if how == "header" {
				ch, closeStream = e.subscribe("types=billing.invoice.paid&access_token="+e.appKey, first[1])
			} else {
				ch, closeStream = e.subscribe("types=billing.invoice.paid&access_token="+e.appKey+"&last_event_id="+first[1], "")
			}
			defer closeStream()
			for _, c := range away {
				if got := next(t, ch); got.id != c {
					t.Fatalf("got %s, want %s (gap or duplicate)", got.id, c)
				}
			}
			select {
			case ev := <-ch:
				t.Fatalf("unexpected extra event %s", ev.id)
			case <-time.After(300 * time.Millisecond):
			}
		})
	}
}

func TestPublishRefusals(t *testing.T) {
	e := start(t)
	bad := invoiceEvent("x", -5)
	unknown := invoiceEvent("y", 1)
	unknown.Type = "billing.invoice.voided"
	res, err := e.router.Publish(withKey(e.appKey), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{bad, unknown, invoiceEvent("ok", 1)}})
	if err != nil {
		t.Fatal(err)
	}
	r := res.GetResults()
	if got := r[0].GetError(); got.GetCode() != int32(codes.InvalidArgument) || len(got.GetViolations()) == 0 ||
		got.GetViolations()[0].GetInstanceLocation() != "/amount" || !strings.HasSuffix(got.GetViolations()[0].GetKeywordLocation(), "/minimum") {
		t.Fatalf("schema failure: %v", got)
	}
	if !strings.Contains(r[0].GetError().GetMessage(), "/amount") {
		t.Fatalf("message does not name the pointer: %s", r[0].GetError().GetMessage())
	}
	if got := r[1].GetError(); got.GetCode() != int32(codes.NotFound) {
		t.Fatalf("unknown type: %v", got)
	}
	if r[2].GetCursor() == "" {
		t.Fatalf("valid event not stored: %v", r[2])
	}
	// Only the valid event reached the log: a replay from 0 shows just it.
	ch, closeStream := e.subscribe("types=*&access_token="+e.appKey, "0")
	defer closeStream()
	if got := next(t, ch); got.id != r[2].GetCursor() {
		t.Fatalf("log holds %s, want only %s", got.id, r[2].GetCursor())
	}
	select {
	case ev := <-ch:
		t.Fatalf("an invalid event reached the log: %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestKeysAreRequired(t *testing.T) {
	e := start(t)
	for name, ctx := range map[string]context.Context{
		"missing": context.Background(),
		"wrong":   withKey("hk_not-a-real-key"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.router.Publish(ctx, &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{invoiceEvent("k", 1)}})
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("publish: %v", err)
			}
		})
	}
	for _, u := range []string{
		rpc.BaseURL(e.common.EdgeAddr) + "/v1/stream?types=billing.*",
		rpc.BaseURL(e.common.EdgeAddr) + "/v1/stream?types=billing.*&access_token=wrong",
		rpc.BaseURL(e.common.MeteringAddr) + "/v1/usage",
	} {
		res, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "billing.invoice") {
			t.Fatalf("%s: %d %s", u, res.StatusCode, body)
		}
	}
	// An application key may not manage the catalog.
	appReg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.common.RegistryAddr), rpc.ClientOptions(e.appKey)...)
	_, err := appReg.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{Name: "a.b", Schema: "{}"}}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("app key created a type: %v", err)
	}
	// Health and metrics need no key.
	for _, p := range []string{"/healthz", "/metrics"} {
		res, err := http.Get(rpc.BaseURL(e.common.RouterAddr) + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", p, res.StatusCode)
		}
	}
}

func TestGrpcurlListsAndPublishes(t *testing.T) {
	grpcurl, err := exec.LookPath("grpcurl")
	if err != nil {
		t.Fatal("grpcurl is not on PATH: run the tests with `make test`, which builds it into ./bin")
	}
	e := start(t)
	want := map[string]string{
		e.common.RegistryAddr: "herald.registry.v1.RegistryService",
		e.common.RouterAddr:   "herald.router.v1.RouterService",
		e.common.MeteringAddr: "herald.metering.v1.MeteringService",
		e.common.EdgeAddr:     "herald.edge.v1.EdgeService",
	}
	for addr, svc := range want {
		out, err := exec.Command(grpcurl, "-plaintext", addr, "list").CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl list %s: %v\n%s", addr, err, out)
		}
		if !strings.Contains(string(out), svc) || !strings.Contains(string(out), "grpc.health.v1.Health") {
			t.Fatalf("grpcurl list %s:\n%s", addr, out)
		}
	}
	body := `{"events":[{"id":"g1","source":"//grpcurl","spec_version":"1.0","type":"billing.invoice.paid","text_data":"{\"invoice_id\":\"g1\",\"amount\":7}"}]}`
	out, err := exec.Command(grpcurl, "-plaintext", "-H", "authorization: Bearer "+e.appKey, "-d", body,
		e.common.RouterAddr, "herald.router.v1.RouterService/Publish").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"cursor"`) {
		t.Fatalf("grpcurl publish: %v\n%s", err, out)
	}
	out, err = exec.Command(grpcurl, "-plaintext", "-d", body, e.common.RouterAddr, "herald.router.v1.RouterService/Publish").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Unauthenticated") {
		t.Fatalf("grpcurl without key: %v\n%s", err, out)
	}
}

func TestGracefulShutdownEndsStreams(t *testing.T) {
	e := start(t)
	ch, closeStream := e.subscribe("types=billing.*&access_token="+e.appKey, "")
	defer closeStream()
	msgs, end, _ := rpcStream(t, e.common.EdgeAddr, e.appKey, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
	cursor := e.publish(invoiceEvent("before-stop", 1))[0]
	select {
	case m := <-msgs:
		if m.GetCursor() != cursor {
			t.Fatalf("StreamEvents got %s, want %s", m.GetCursor(), cursor)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("StreamEvents got nothing")
	}
	e.stop()
	// StreamEvents ends UNAVAILABLE ("go elsewhere"), naming the cursor to
	// resume from, not OK (which a gRPC client reads as "finished").
	err := rpcEnd(t, end)
	var ce *connect.Error
	if connect.CodeOf(err) != connect.CodeUnavailable || !errors.As(err, &ce) || ce.Meta().Get("Herald-Resume-Cursor") != cursor {
		t.Fatalf("StreamEvents at shutdown: %v", err)
	}
	select {
	case err := <-e.done:
		if err != nil {
			t.Fatalf("mesh stopped with %v", err)
		}
		e.done <- nil // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("mesh did not stop with an open stream")
	}
	for range ch { // the stream ends
	}
}

func TestGrantsAreEnforced(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	_, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "identity.user.created", Schema: `{"type":"object"}`,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	// shop may publish billing.* only.
	ev := invoiceEvent("u1", 1)
	ev.Type, ev.Data = "identity.user.created", &eventv1.CloudEvent_TextData{TextData: `{}`}
	res, err := e.router.Publish(withKey(e.appKey), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{ev}})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.GetResults()[0].GetError(); got.GetCode() != int32(codes.PermissionDenied) {
		t.Fatalf("publish without grant: %v", res.GetResults()[0])
	}
	// A consumer with a narrow subscribe grant cannot widen it.
	reader, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name:   "reader",
		Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.invoice.*"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	key := reader.Msg.GetKey().GetSecret()
	for query, want := range map[string]int{
		"types=billing.invoice.paid":  http.StatusOK,
		"types=billing.*":             http.StatusForbidden,
		"types=identity.user.created": http.StatusForbidden,
	} {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(e.common.EdgeAddr)+"/v1/stream?"+query, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		res.Body.Close()
		cancel()
		if res.StatusCode != want {
			t.Errorf("%s: %d, want %d", query, res.StatusCode, want)
		}
	}
}

func TestRevokedAndRotatedKeysStopWorking(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	e.publish(invoiceEvent("before", 1))
	keys, err := e.reg.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: e.appID}))
	if err != nil || len(keys.Msg.GetKeys()) != 1 {
		t.Fatalf("list keys: %v %v", keys, err)
	}
	// Rotate: the new key works at once, the old one until the overlap ends.
	rotated, err := e.reg.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: e.appID, RotateOverlap: durationpb.New(500 * time.Millisecond)}))
	if err != nil {
		t.Fatal(err)
	}
	oldKey := e.appKey
	e.appKey = rotated.Msg.GetKey().GetSecret()
	e.publish(invoiceEvent("with-new-key", 1))
	unauthenticated := func(key string) func() bool {
		return func() bool {
			_, err := e.router.Publish(withKey(key), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{invoiceEvent("probe", 1)}})
			return status.Code(err) == codes.Unauthenticated
		}
	}
	testutil.Eventually(t, 5*time.Second, unauthenticated(oldKey), "the rotated-out key still works after its overlap")

	// Revoke: the key stops working on publish as soon as the change propagates.
	revokedAt := time.Now()
	if _, err := e.reg.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: rotated.Msg.GetKey().GetId()})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, unauthenticated(e.appKey), "the revoked key still publishes")
	t.Logf("revocation took effect on publish after %v", time.Since(revokedAt))
}

func TestCatalogDocuments(t *testing.T) {
	e := start(t)
	base := rpc.BaseURL(e.common.RegistryAddr)
	get := func(path, key string) (int, string, string) {
		req, _ := http.NewRequest("GET", base+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header.Get("Content-Type"), string(body)
	}
	code, ctype, body := get("/asyncapi.json", adminKey)
	var doc map[string]any
	if code != http.StatusOK || json.Unmarshal([]byte(body), &doc) != nil || doc["asyncapi"] != "3.0.0" || !strings.Contains(body, "billing.invoice.paid") {
		t.Fatalf("asyncapi.json: %d %s %.300s", code, ctype, body)
	}
	if code, _, body := get("/asyncapi.yaml?domain=billing", adminKey); code != http.StatusOK || !strings.Contains(body, "asyncapi: 3.0.0") {
		t.Fatalf("asyncapi.yaml: %d %.300s", code, body)
	}
	if code, ctype, body := get("/catalog", e.appKey); code != http.StatusOK || !strings.HasPrefix(ctype, "text/html") || !strings.Contains(body, "billing.invoice.paid") {
		t.Fatalf("catalog page: %d %s %.300s", code, ctype, body)
	}
	for _, p := range []string{"/asyncapi.json", "/catalog"} {
		if code, _, _ := get(p, ""); code != http.StatusUnauthorized {
			t.Fatalf("%s without a key: %d", p, code)
		}
	}
	if code, _, _ := get("/asyncapi.json?domain=nope", adminKey); code != http.StatusNotFound {
		t.Fatalf("unknown domain: %d", code)
	}
}

// Catalog changes reach the publish path through Watch: a new schema
// version and a withdrawn grant apply to the next publishes.
func TestSchemaAndGrantChangesReachPublish(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	_, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "billing.refund.issued", Schema: `{"type":"object"}`, Compatibility: registryv1.Compatibility_COMPATIBILITY_NONE,
	}}))
	if err != nil {
		t.Fatal(err)
	}
	refund := func(id, data string) *eventv1.CloudEvent {
		return &eventv1.CloudEvent{Id: id, Source: "//refunds", SpecVersion: "1.0", Type: "billing.refund.issued",
			Data: &eventv1.CloudEvent_TextData{TextData: data}}
	}
	publishCode := func(ev *eventv1.CloudEvent) int32 {
		res, err := e.router.Publish(withKey(e.appKey), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{ev}})
		if err != nil {
			t.Fatal(err)
		}
		return res.GetResults()[0].GetError().GetCode()
	}
	if c := publishCode(refund("r0", `{}`)); c != 0 {
		t.Fatalf("first publish refused with %d", c)
	}
	changedAt := time.Now()
	if _, err := e.reg.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{
		EventType: "billing.refund.issued", Schema: `{"type":"object","required":["refund_id"]}`,
	})); err != nil {
		t.Fatal(err)
	}
	n := 0
	testutil.Eventually(t, 5*time.Second, func() bool {
		n++
		return publishCode(refund(fmt.Sprint("r", n), `{}`)) == int32(codes.InvalidArgument)
	}, "the new schema version never applied to publish")
	t.Logf("new schema version applied after %v", time.Since(changedAt))

	app, err := e.reg.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: e.appID}))
	if err != nil {
		t.Fatal(err)
	}
	upd := app.Msg.GetApplication()
	upd.Grants = []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"}}
	changedAt = time.Now()
	if _, err := e.reg.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: upd})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		n++
		return publishCode(refund(fmt.Sprint("r", n), `{"refund_id":"x"}`)) == int32(codes.PermissionDenied)
	}, "the withdrawn publish grant never applied")
	t.Logf("withdrawn grant applied after %v", time.Since(changedAt))
}

// A durable subscription used the way an internal consumer would: a
// grpc-go stream receives, grpcurl settles deliveries and works the
// dead-letter stream.
func TestDurableSubscriptionWithGrpcGoAndGrpcurl(t *testing.T) {
	grpcurl, err := exec.LookPath("grpcurl")
	if err != nil {
		t.Fatal("grpcurl is not on PATH: run the tests with `make test`, which builds it into ./bin")
	}
	e := start(t)
	ctx := context.Background()
	created, err := e.reg.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: e.appID, Types: []string{"billing.*"}, Filter: "data.amount >= 100",
		Channel:  &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(10 * time.Minute), MaxAttempts: 2},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	subID := created.Msg.GetSubscription().GetId()
	call := func(method, body string) map[string]any {
		t.Helper()
		out, err := exec.Command(grpcurl, "-plaintext", "-H", "authorization: Bearer "+e.appKey, "-d", body,
			e.common.RouterAddr, "herald.router.v1.RouterService/"+method).CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", method, err, out)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", method, err, out)
		}
		return m
	}

	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.appKey))
	defer cancel()
	stream, err := e.router.Subscribe(sctx, &routerv1.SubscribeRequest{SubscriptionId: subID, MaxInFlight: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil { // subscribed once the headers arrive
		t.Fatal(err)
	}
	pub, err := e.router.Publish(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.appKey), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{
		{Id: "small", Source: "//shop", SpecVersion: "1.0", Type: e.invoice, Data: &eventv1.CloudEvent_TextData{TextData: `{"invoice_id":"i1","amount":5}`}},
		{Id: "big", Source: "//shop", SpecVersion: "1.0", Type: e.invoice, Data: &eventv1.CloudEvent_TextData{TextData: `{"invoice_id":"i2","amount":500}`}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if d.GetEvent().GetId() != "big" || d.GetCursor() != pub.GetResults()[1].GetCursor() || d.GetAttempt() != 1 {
		t.Fatalf("delivery: %v", d)
	}
	// Refused twice (its max_attempts): dead-lettered with the reason.
	if got := call("Nack", fmt.Sprintf(`{"subscription_id":%q,"ack_ids":[%q],"reason":"ledger closed"}`, subID, d.GetAckId())); got["retrying"] != float64(1) {
		t.Fatalf("first nack: %v", got)
	}
	d, err = stream.Recv()
	if err != nil || d.GetAttempt() != 2 {
		t.Fatalf("redelivery: %v %v", d, err)
	}
	if got := call("Nack", fmt.Sprintf(`{"subscription_id":%q,"ack_ids":[%q],"reason":"ledger still closed"}`, subID, d.GetAckId())); got["deadLettered"] != float64(1) {
		t.Fatalf("second nack: %v", got)
	}
	dead := call("ListDeadLetters", fmt.Sprintf(`{"subscription_id":%q}`, subID))
	letters, _ := dead["deadLetters"].([]any)
	if len(letters) != 1 {
		t.Fatalf("dead letters: %v", dead)
	}
	letter := letters[0].(map[string]any)
	if letter["reason"] != "ledger still closed" || letter["cursor"] != d.GetCursor() || letter["attempts"] != float64(2) {
		t.Fatalf("dead letter: %v", letter)
	}
	if got := call("ReplayDeadLetters", fmt.Sprintf(`{"subscription_id":%q,"all":true}`, subID)); got["replayed"] != float64(1) {
		t.Fatalf("replay: %v", got)
	}
	d, err = stream.Recv()
	if err != nil || d.GetEvent().GetId() != "big" || d.GetAttempt() != 1 {
		t.Fatalf("replayed delivery: %v %v", d, err)
	}
	if got := call("Ack", fmt.Sprintf(`{"subscription_id":%q,"ack_ids":[%q]}`, subID, d.GetAckId())); got["acknowledged"] != float64(1) {
		t.Fatalf("ack: %v", got)
	}
	// Another application's key cannot touch it.
	out, err := exec.Command(grpcurl, "-plaintext", "-H", "authorization: Bearer "+adminKey+"-wrong", "-d", fmt.Sprintf(`{"subscription_id":%q}`, subID),
		e.common.RouterAddr, "herald.router.v1.RouterService/ListDeadLetters").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Unauthenticated") {
		t.Fatalf("wrong key: %v\n%s", err, out)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("after cancel: %v", err)
	}
}
