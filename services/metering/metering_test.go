package metering_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"github.com/heraldmesh/herald/services/metering"
	"github.com/heraldmesh/herald/services/metering/internal/store"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	adminKey = "test-admin-key-0123456789"
	keyA     = "hk_test_key_of_application_a"
	keyB     = "hk_test_key_of_application_b"
	keyD     = "hk_test_key_of_application_d"
	keyR     = "hk_test_key_of_application_c_revoked_later"
)

// revokedKeys holds the hashes of keys revoked during a test.
var revokedKeys sync.Map

// registry is a real RegistryService that knows two application keys.
type registry struct {
	registryv1connect.UnimplementedRegistryServiceHandler
	keys map[string]*registryv1.Key // by hash
}

func (r *registry) AuthenticateKey(_ context.Context, req *connect.Request[registryv1.AuthenticateKeyRequest]) (*connect.Response[registryv1.AuthenticateKeyResponse], error) {
	if auth.BearerToken(req.Header()) != adminKey {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("the registry wants the admin key"))
	}
	k, ok := r.keys[req.Msg.GetKeyHash()]
	if _, gone := revokedKeys.Load(req.Msg.GetKeyHash()); !ok || gone {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such key"))
	}
	return connect.NewResponse(&registryv1.AuthenticateKeyResponse{Key: k}), nil
}

// applications are the registry's applications and their tenants: app_a
// and app_c share tenant acme, app_b is tenant globex's, app_d in none.
var applications = map[string]string{"app_a": "acme", "app_b": "globex", "app_c": "acme", "app_d": "", "app_p": "acme"}

func (r *registry) GetApplication(_ context.Context, req *connect.Request[registryv1.GetApplicationRequest]) (*connect.Response[registryv1.GetApplicationResponse], error) {
	if auth.BearerToken(req.Header()) != adminKey {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("the registry wants the admin key"))
	}
	tenant, ok := applications[req.Msg.GetId()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such application"))
	}
	return connect.NewResponse(&registryv1.GetApplicationResponse{Application: &registryv1.Application{Id: req.Msg.GetId(), Tenant: tenant}}), nil
}

// products are the catalog's products.
var products = []*registryv1.Product{
	{Name: "orders", EventTypes: []string{"shop.order.*"}},
	{Name: "everything-paid", EventTypes: []string{"shop.order.paid", "billing.*"}},
}

func (r *registry) ListProducts(_ context.Context, req *connect.Request[registryv1.ListProductsRequest]) (*connect.Response[registryv1.ListProductsResponse], error) {
	if auth.BearerToken(req.Header()) != adminKey {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("the registry wants the admin key"))
	}
	return connect.NewResponse(&registryv1.ListProductsResponse{Products: products}), nil
}

// startRegistry serves the registry over h2c, as Herald services talk.
func startRegistry(t *testing.T) string {
	t.Helper()
	reg := &registry{keys: map[string]*registryv1.Key{
		auth.HashSecret(keyA): {Id: "key_a", ApplicationId: "app_a"},
		auth.HashSecret(keyB): {Id: "key_b", ApplicationId: "app_b"},
		auth.HashSecret(keyD): {Id: "key_d", ApplicationId: "app_d"},
		auth.HashSecret(keyR): {Id: "key_r", ApplicationId: "app_c"},
	}}
	mux := http.NewServeMux()
	mux.Handle(registryv1connect.NewRegistryServiceHandler(reg))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

type env struct {
	redisURL, registryAddr string
	rdb                    *redis.Client
}

func newEnv(t *testing.T) *env {
	rs := testutil.Redis(t)
	return &env{redisURL: rs.URL(), registryAddr: startRegistry(t), rdb: testutil.RedisClient(t, rs)}
}

type running struct {
	base string
	stop func() error
}

// start runs a metering service in-process on a free port until stop.
func (e *env) start(t *testing.T) *running { t.Helper(); return e.startWith(t, nil) }

// startWith is start with the configuration changed by set.
func (e *env) startWith(t *testing.T, set func(*metering.Config)) *running {
	t.Helper()
	cfg := metering.Config{
		Common: config.Common{RedisURL: e.redisURL, AdminKey: adminKey, RegistryAddr: e.registryAddr},
		Addr:   "127.0.0.1:0",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if set != nil {
		set(&cfg)
	}
	svc, err := metering.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := svc.Listen()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := svc.Listen(); err != nil || again.String() != addr.String() {
		t.Fatalf("second Listen = %v, %v; want %v", again, err, addr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx) }()
	r := &running{base: "http://" + addr.String()}
	var stopped bool
	var runErr error
	r.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = <-errc
		}
		return runErr
	}
	t.Cleanup(func() { _ = r.stop() })
	testutil.Eventually(t, 10*time.Second, func() bool {
		res, err := http.Get(r.base + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	}, "metering ready")
	return r
}

// getUsage calls GET /v1/usage with the given key and query, returning the
// status and the decoded answer (nil unless 200).
func (r *running) getUsage(t *testing.T, key string, q url.Values) (int, *meteringv1.GetUsageResponse) {
	t.Helper()
	status, res, _ := r.getUsageHeader(t, key, q)
	return status, res
}

func (r *running) getUsageHeader(t *testing.T, key string, q url.Values) (int, *meteringv1.GetUsageResponse, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.base+"/v1/usage?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, nil, res.Header
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	out := new(meteringv1.GetUsageResponse)
	if err := protojson.Unmarshal(body, out); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return res.StatusCode, out, res.Header
}

// total is the sum of the counts of a TOTAL query (admin key).
func (r *running) total(t *testing.T, q url.Values) int64 {
	t.Helper()
	status, res := r.getUsage(t, adminKey, q)
	if status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	var n int64
	for _, row := range res.GetRows() {
		n += row.GetCount()
	}
	return n
}

func rec(id, app, typ string, m meteringv1.UsageMetric, channel string, n int64, at time.Time) *meteringv1.UsageRecord {
	return &meteringv1.UsageRecord{Id: id, ApplicationId: app, EventType: typ, Metric: m, Channel: channel, Quantity: n, Time: timestamppb.New(at)}
}

const (
	published = meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED
	delivered = meteringv1.UsageMetric_USAGE_METRIC_DELIVERED
)

type row struct {
	app, typ   string
	metric     meteringv1.UsageMetric
	channel    string
	start, end time.Time
	count      int64
}

func rowsOf(res *meteringv1.GetUsageResponse) []row {
	var out []row
	for _, r := range res.GetRows() {
		out = append(out, row{r.GetApplicationId(), r.GetEventType(), r.GetMetric(), r.GetChannel(), r.GetStartTime().AsTime(), r.GetEndTime().AsTime(), r.GetCount()})
	}
	return out
}

func sameRows(t *testing.T, got, want []row) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d rows:\n%v\nwant %d:\n%v", len(got), got, len(want), want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.app != w.app || g.typ != w.typ || g.metric != w.metric || g.channel != w.channel ||
			!g.start.Equal(w.start) || !g.end.Equal(w.end) || g.count != w.count {
			t.Errorf("row %d = %v, want %v", i, g, w)
		}
	}
}

func TestUsage(t *testing.T) {
	e := newEnv(t)
	svc := e.start(t)
	ctx := context.Background()

	// Two UTC days in the past, so that the default range misses them.
	day1 := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -3)
	day2 := day1.AddDate(0, 0, 1)
	h := func(d time.Time, hour, minute int) time.Time {
		return d.Add(time.Duration(hour)*time.Hour + time.Duration(minute)*time.Minute)
	}
	err := usage.Append(ctx, e.rdb,
		rec("r1", "app_a", "shop.order.created", published, "grpc", 2, h(day1, 10, 15)),
		rec("r2", "app_a", "shop.order.created", published, "grpc", 3, h(day1, 10, 45)),
		rec("r3", "app_a", "shop.order.created", delivered, "sse", 4, h(day1, 11, 5)),
		rec("r4", "app_b", "shop.order.paid", published, "grpc", 5, h(day1, 10, 30)),
		rec("r5", "app_a", "shop.order.created", published, "grpc", 7, h(day2, 3, 0)),
		rec("r2", "app_a", "shop.order.created", published, "grpc", 3, h(day1, 10, 45)), // a retried append
	)
	if err != nil {
		t.Fatal(err)
	}
	// And two records of now, for the default range.
	if err := usage.Append(ctx, e.rdb,
		rec("n1", "app_a", "shop.order.created", published, "grpc", 1, time.Now()),
		rec("n2", "app_b", "shop.order.created", published, "grpc", 10, time.Now()),
	); err != nil {
		t.Fatal(err)
	}
	rangeQ := func(kv ...string) url.Values {
		q := url.Values{"startTime": {day1.Format(time.RFC3339)}, "endTime": {day2.AddDate(0, 0, 1).Format(time.RFC3339)}}
		for i := 0; i+1 < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return q
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return svc.total(t, rangeQ()) == 21 && svc.total(t, nil) == 11 }, "usage folded")

	t.Run("hour", func(t *testing.T) {
		_, res := svc.getUsage(t, adminKey, rangeQ("granularity", "GRANULARITY_HOUR"))
		sameRows(t, rowsOf(res), []row{
			{"app_a", "shop.order.created", published, "grpc", h(day1, 10, 0), h(day1, 11, 0), 5},
			{"app_b", "shop.order.paid", published, "grpc", h(day1, 10, 0), h(day1, 11, 0), 5},
			{"app_a", "shop.order.created", delivered, "sse", h(day1, 11, 0), h(day1, 12, 0), 4},
			{"app_a", "shop.order.created", published, "grpc", h(day2, 3, 0), h(day2, 4, 0), 7},
		})
	})
	t.Run("day", func(t *testing.T) {
		_, res := svc.getUsage(t, adminKey, rangeQ("granularity", "GRANULARITY_DAY"))
		sameRows(t, rowsOf(res), []row{
			{"app_a", "shop.order.created", published, "grpc", day1, day2, 5},
			{"app_a", "shop.order.created", delivered, "sse", day1, day2, 4},
			{"app_b", "shop.order.paid", published, "grpc", day1, day2, 5},
			{"app_a", "shop.order.created", published, "grpc", day2, day2.AddDate(0, 0, 1), 7},
		})
	})
	t.Run("total", func(t *testing.T) {
		// The start is rounded down to the hour; the end is kept.
		q := rangeQ("startTime", h(day1, 10, 40).Format(time.RFC3339), "endTime", h(day1, 23, 59).Format(time.RFC3339))
		for _, g := range []string{"", "GRANULARITY_TOTAL"} {
			if g != "" {
				q.Set("granularity", g)
			}
			_, res := svc.getUsage(t, adminKey, q)
			sameRows(t, rowsOf(res), []row{
				{"app_a", "shop.order.created", published, "grpc", h(day1, 10, 0), h(day1, 23, 59), 5},
				{"app_a", "shop.order.created", delivered, "sse", h(day1, 10, 0), h(day1, 23, 59), 4},
				{"app_b", "shop.order.paid", published, "grpc", h(day1, 10, 0), h(day1, 23, 59), 5},
			})
		}
	})
	t.Run("filters", func(t *testing.T) {
		for _, tt := range []struct {
			q    url.Values
			want int64
		}{
			{rangeQ("applicationId", "app_a"), 16},
			{rangeQ("applicationId", "app_b"), 5},
			{rangeQ("applicationId", "app_c"), 0},
			{rangeQ("eventType", "shop.order.paid"), 5},
			{rangeQ("metric", "USAGE_METRIC_DELIVERED"), 4},
			{rangeQ("metric", "USAGE_METRIC_PUBLISHED", "applicationId", "app_a"), 12},
			{rangeQ("eventType", "shop.order.created", "metric", "USAGE_METRIC_PUBLISHED"), 12},
			{url.Values{"applicationId": {"app_b"}}, 10}, // default range: the last day
		} {
			if got := svc.total(t, tt.q); got != tt.want {
				t.Errorf("%v: total %d, want %d", tt.q, got, tt.want)
			}
		}
	})
	t.Run("application key", func(t *testing.T) {
		status, res := svc.getUsage(t, keyA, rangeQ())
		if status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
		var n int64
		for _, r := range res.GetRows() {
			if r.GetApplicationId() != "app_a" {
				t.Errorf("app_a sees a row of %s", r.GetApplicationId())
			}
			n += r.GetCount()
		}
		if n != 16 {
			t.Errorf("app_a sees %d, want 16", n)
		}
		if status, _ := svc.getUsage(t, keyA, rangeQ("applicationId", "app_a")); status != http.StatusOK {
			t.Errorf("own application_id: status %d", status)
		}
		if status, _ := svc.getUsage(t, keyA, rangeQ("applicationId", "app_b")); status != http.StatusForbidden {
			t.Errorf("another application_id: status %d, want 403", status)
		}
	})
	t.Run("unauthenticated", func(t *testing.T) {
		for _, key := range []string{"", "hk_not_a_key_anyone_issued"} {
			status, _, h := svc.getUsageHeader(t, key, nil)
			if status != http.StatusUnauthorized {
				t.Errorf("key %q: status %d, want 401", key, status)
			}
			if c := h.Get("WWW-Authenticate"); c != `Bearer realm="herald"` {
				t.Errorf("key %q: WWW-Authenticate %q", key, c)
			}
		}
	})
	t.Run("bad range", func(t *testing.T) {
		now := time.Now().UTC()
		for _, q := range []url.Values{
			{"startTime": {now.Format(time.RFC3339)}, "endTime": {now.Add(-time.Hour).Format(time.RFC3339)}},
			{"startTime": {now.Format(time.RFC3339)}, "endTime": {now.Format(time.RFC3339)}},
			{"startTime": {now.AddDate(0, 0, -94).Format(time.RFC3339)}},
			{"granularity": {"GRANULARITY_WEEK"}},
		} {
			if status, _ := svc.getUsage(t, adminKey, q); status != http.StatusBadRequest {
				t.Errorf("%v: status %d, want 400", q, status)
			}
		}
	})
	t.Run("connect", func(t *testing.T) {
		// Connect, gRPC and gRPC-Web on the same port, with an application key.
		for _, protocol := range []connect.ClientOption{connect.WithProtoJSON(), connect.WithGRPC(), connect.WithGRPCWeb()} {
			client := meteringv1connect.NewMeteringServiceClient(rpc.HTTPClient(), svc.base, protocol, connect.WithInterceptors(auth.ClientInterceptor(keyB)))
			res, err := client.GetUsage(ctx, connect.NewRequest(&meteringv1.GetUsageRequest{
				StartTime: timestamppb.New(day1), EndTime: timestamppb.New(day2),
			}))
			if err != nil {
				t.Fatal(err)
			}
			sameRows(t, rowsOf(res.Msg), []row{{"app_b", "shop.order.paid", published, "grpc", day1, day2, 5}})
		}
	})
	t.Run("openapi", func(t *testing.T) {
		res, err := http.Get(svc.base + "/openapi.json")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("status %d, Content-Type %q", res.StatusCode, res.Header.Get("Content-Type"))
		}
		var doc struct {
			Swagger string                     `json:"swagger"`
			Paths   map[string]json.RawMessage `json:"paths"`
		}
		if err := json.NewDecoder(res.Body).Decode(&doc); err != nil {
			t.Fatal(err)
		}
		if doc.Swagger != "2.0" || doc.Paths["/v1/usage"] == nil {
			t.Fatalf("swagger %q, paths %v", doc.Swagger, doc.Paths)
		}
	})

	if err := svc.stop(); err != nil {
		t.Fatalf("Run after shutdown = %v, want nil", err)
	}
	if _, err := http.Get(svc.base + "/healthz"); err == nil {
		t.Error("still serving after shutdown")
	}
}

// TestInterruptedFoldRecovered stops metering, lets another process read
// records and die without folding them, and checks that the next metering
// takes them over, counting each record once.
func TestInterruptedFoldRecovered(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	at := time.Now().Add(-time.Hour)
	q := url.Values{"applicationId": {"app_a"}}

	first := e.start(t)
	if err := usage.Append(ctx, e.rdb, rec("a1", "app_a", "t.x.y", published, "grpc", 1, at), rec("a2", "app_a", "t.x.y", published, "grpc", 1, at)); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return first.total(t, q) == 2 }, "first fold")
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}

	// A metering process read these and crashed before folding them; one of
	// them is a copy of a record already counted.
	if err := usage.Append(ctx, e.rdb,
		rec("b1", "app_a", "t.x.y", published, "grpc", 10, at),
		rec("b2", "app_a", "t.x.y", published, "grpc", 10, at),
		rec("a1", "app_a", "t.x.y", published, "grpc", 1, at),
	); err != nil {
		t.Fatal(err)
	}
	res, err := e.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: store.Group, Consumer: "crashed", Streams: []string{usage.StreamKey, ">"}, Count: 100, Block: -1}).Result()
	if err != nil || len(res) != 1 || len(res[0].Messages) != 3 {
		t.Fatalf("dead consumer read %v, %v", res, err)
	}
	// Its entries have been pending for a minute: long enough to be claimed.
	args := []any{"XCLAIM", usage.StreamKey, store.Group, "crashed", 0}
	for _, m := range res[0].Messages {
		args = append(args, m.ID)
	}
	if err := e.rdb.Do(ctx, append(args, "IDLE", 60_000)...).Err(); err != nil {
		t.Fatal(err)
	}

	second := e.start(t)
	testutil.Eventually(t, 10*time.Second, func() bool { return second.total(t, q) == 22 }, "pending records folded after restart")
	time.Sleep(100 * time.Millisecond)
	if n := second.total(t, q); n != 22 {
		t.Fatalf("total %d, want 22", n)
	}
	if p := e.rdb.XPending(ctx, usage.StreamKey, store.Group).Val(); p.Count != 0 {
		t.Errorf("%d entries still pending", p.Count)
	}
	if err := second.stop(); err != nil {
		t.Fatalf("Run after shutdown = %v, want nil", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []metering.Config{
		{},
		{Common: config.Common{RedisURL: "redis://127.0.0.1:1/0", AdminKey: "short"}},
		{Common: config.Common{RedisURL: "", AdminKey: adminKey}},
		{Common: config.Common{RedisURL: "ftp://nowhere", AdminKey: adminKey}},
	} {
		if _, err := metering.New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg.Common)
		}
	}
}
