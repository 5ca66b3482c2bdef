package metering_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/usage"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	failed  = meteringv1.UsageMetric_USAGE_METRIC_FAILED
	refused = meteringv1.UsageMetric_USAGE_METRIC_REFUSED
	retried = meteringv1.UsageMetric_USAGE_METRIC_RETRIED
)

// get calls a REST route and decodes a 200 answer into out; it returns the
// status and the body.
func (r *running) get(t *testing.T, key, path string, q url.Values, out proto.Message) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, r.base+path+"?"+q.Encode(), nil)
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
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode == http.StatusOK && out != nil {
		if err := protojson.Unmarshal(body, out); err != nil {
			t.Fatalf("decode %s: %v", body, err)
		}
	}
	return res.StatusCode, string(body)
}

// seriesOf renders a QueryUsage answer as "dims=events/bytes" lines for
// TOTAL queries (one point per series).
func seriesOf(res *meteringv1.QueryUsageResponse) string {
	var b strings.Builder
	for _, s := range res.GetSeries() {
		d := s.GetDimensions()
		var parts []string
		for _, v := range []string{d.GetTenant(), d.GetApplicationId(), d.GetProducerApplicationId(), d.GetEventType(), d.GetDomain(), d.GetProduct(), d.GetChannel()} {
			if v != "" {
				parts = append(parts, v)
			}
		}
		if d.GetMetric() != 0 {
			parts = append(parts, strings.TrimPrefix(d.GetMetric().String(), "USAGE_METRIC_"))
		}
		var ev, by int64
		for _, p := range s.GetPoints() {
			ev += p.GetEvents()
			by += p.GetBytes()
		}
		fmt.Fprintf(&b, "%s=%d/%d;", strings.Join(parts, ","), ev, by)
	}
	return b.String()
}

// TestAnalytics folds a known mix of publishes and deliveries and checks
// QueryUsage, TopUsage and GetDeliveryStats against it, and who may see
// what.
func TestAnalytics(t *testing.T) {
	e := newEnv(t)
	svc := e.start(t)
	ctx := context.Background()

	at := time.Now().UTC().Truncate(time.Hour).Add(-2*time.Hour + 10*time.Minute)
	pub := func(app, tenant, typ string, n int) []*meteringv1.UsageRecord {
		var out []*meteringv1.UsageRecord
		for i := range n {
			out = append(out, &meteringv1.UsageRecord{Id: fmt.Sprintf("p-%s-%s-%d", app, typ, i), Tenant: tenant, ApplicationId: app,
				ProducerApplicationId: app, EventType: typ, Metric: published, Channel: "grpc", Quantity: 1, Bytes: 100, Time: timestamppb.New(at)})
		}
		return out
	}
	var recs []*meteringv1.UsageRecord
	recs = append(recs, pub("app_p", "acme", "shop.order.created", 3)...)
	recs = append(recs, pub("app_p", "acme", "shop.order.paid", 1)...)
	recs = append(recs, pub("app_b", "globex", "billing.invoice.sent", 2)...)
	deliver := func(app, tenant, typ, channel, id string, latency time.Duration, m meteringv1.UsageMetric, attempt int32) []*meteringv1.UsageRecord {
		d := usage.Delivery{Tenant: tenant, Application: app, Producer: "app_p", Subscription: "sub_" + app, EventSource: "/shop",
			EventID: id, EventType: typ, Channel: channel, Bytes: 10, Published: at.Add(-latency), Attempt: attempt}
		return d.Records(m, at)
	}
	recs = append(recs, deliver("app_c", "acme", "shop.order.created", "sse", "e1", 3*time.Millisecond, delivered, 1)...)
	recs = append(recs, deliver("app_c", "acme", "shop.order.created", "sse", "e2", 40*time.Millisecond, delivered, 1)...)
	recs = append(recs, deliver("app_c", "acme", "shop.order.created", "sse", "e3", 700*time.Millisecond, delivered, 1)...)
	recs = append(recs, deliver("app_c", "acme", "shop.order.created", "sse", "e4", 0, refused, 1)...)
	// A webhook that failed twice and succeeded on its third attempt.
	recs = append(recs, deliver("app_b", "globex", "shop.order.paid", "webhook", "e5", 0, failed, 1)...)
	recs = append(recs, deliver("app_b", "globex", "shop.order.paid", "webhook", "e5", 0, failed, 2)...)
	recs = append(recs, deliver("app_b", "globex", "shop.order.paid", "webhook", "e5", 20*time.Millisecond, delivered, 3)...)
	// Replays: the same deliveries again count nothing.
	recs = append(recs, deliver("app_c", "acme", "shop.order.created", "sse", "e1", time.Second, delivered, 1)...)
	recs = append(recs, deliver("app_b", "globex", "shop.order.paid", "webhook", "e5", 20*time.Millisecond, delivered, 3)...)
	if err := usage.AppendBatch(ctx, e.rdb, 4, recs...); err != nil {
		t.Fatal(err)
	}
	rng := func(kv ...string) url.Values {
		q := url.Values{"startTime": {at.Add(-5 * time.Minute).Format(time.RFC3339)}, "endTime": {at.Add(5 * time.Minute).Format(time.RFC3339)}}
		for i := 0; i+1 < len(kv); i += 2 {
			q.Add(kv[i], kv[i+1])
		}
		return q
	}
	query := func(t *testing.T, key string, q url.Values) string {
		t.Helper()
		res := new(meteringv1.QueryUsageResponse)
		if status, body := svc.get(t, key, "/v1/analytics/usage", q, res); status != http.StatusOK {
			t.Fatalf("%v: status %d: %s", q, status, body)
		}
		return seriesOf(res)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return query(t, adminKey, rng("groupBy", "USAGE_DIMENSION_METRIC")) == "PUBLISHED=6/600;DELIVERED=4/40;FAILED=2/20;REFUSED=1/10;RETRIED=2/20;"
	}, "the mix folded")

	t.Run("query", func(t *testing.T) {
		for _, tt := range []struct {
			q    url.Values
			want string
		}{
			{rng("groupBy", "USAGE_DIMENSION_PRODUCT", "filter.metric", "USAGE_METRIC_DELIVERED"), "everything-paid=1/10;orders=4/40;"},
			{rng("groupBy", "USAGE_DIMENSION_PRODUCT", "filter.metric", "USAGE_METRIC_PUBLISHED"), "everything-paid=3/300;orders=4/400;"},
			{rng("groupBy", "USAGE_DIMENSION_DOMAIN", "filter.metric", "USAGE_METRIC_PUBLISHED"), "billing=2/200;shop=4/400;"},
			{rng("groupBy", "USAGE_DIMENSION_TENANT", "groupBy", "USAGE_DIMENSION_CHANNEL", "filter.metric", "USAGE_METRIC_DELIVERED"), "acme,sse=3/30;globex,webhook=1/10;"},
			{rng("filter.eventType", "shop.*", "filter.metric", "USAGE_METRIC_PUBLISHED"), "=4/400;"},
			{rng("filter.domain", "billing"), "=2/200;"},
			{rng("filter.product", "orders", "filter.metric", "USAGE_METRIC_DELIVERED", "groupBy", "USAGE_DIMENSION_EVENT_TYPE"), "shop.order.created=3/30;shop.order.paid=1/10;"},
			{rng("filter.producerApplicationId", "app_p", "filter.metric", "USAGE_METRIC_DELIVERED", "groupBy", "USAGE_DIMENSION_APPLICATION"), "app_b=1/10;app_c=3/30;"},
			{rng("filter.channel", "webhook", "groupBy", "USAGE_DIMENSION_METRIC"), "DELIVERED=1/10;FAILED=2/20;RETRIED=2/20;"},
			{rng("filter.tenant", "nobody"), ""},
		} {
			if got := query(t, adminKey, tt.q); got != tt.want {
				t.Errorf("%v:\n got %s\nwant %s", tt.q, got, tt.want)
			}
		}
		// By minute and by hour: the points' bounds.
		for _, g := range []struct {
			name       string
			start, end time.Time
		}{
			{"GRANULARITY_MINUTE", at.Truncate(time.Minute), at.Truncate(time.Minute).Add(time.Minute)},
			{"GRANULARITY_HOUR", at.Truncate(time.Hour), at.Truncate(time.Hour).Add(time.Hour)},
			{"GRANULARITY_DAY", at.Truncate(24 * time.Hour), at.Truncate(24*time.Hour).AddDate(0, 0, 1)},
		} {
			res := new(meteringv1.QueryUsageResponse)
			svc.get(t, adminKey, "/v1/analytics/usage", rng("granularity", g.name, "filter.metric", "USAGE_METRIC_PUBLISHED"), res)
			if len(res.GetSeries()) != 1 || len(res.GetSeries()[0].GetPoints()) != 1 {
				t.Fatalf("%s: %v", g.name, res)
			}
			p := res.GetSeries()[0].GetPoints()[0]
			if !p.GetStartTime().AsTime().Equal(g.start) || !p.GetEndTime().AsTime().Equal(g.end) || p.GetEvents() != 6 || p.GetBytes() != 600 {
				t.Errorf("%s: point %v, want %v..%v 6/600", g.name, p, g.start, g.end)
			}
		}
	})

	t.Run("top", func(t *testing.T) {
		for _, tt := range []struct {
			q    url.Values
			want string
		}{
			{rng("dimension", "USAGE_DIMENSION_APPLICATION"), "app_c=3/30;app_b=1/10;"},
			{rng("dimension", "USAGE_DIMENSION_PRODUCER", "filter.metric", "USAGE_METRIC_PUBLISHED"), "app_p=4/400;app_b=2/200;"},
			{rng("dimension", "USAGE_DIMENSION_EVENT_TYPE", "filter.metric", "USAGE_METRIC_PUBLISHED", "limit", "1"), "shop.order.created=3/300;"},
			{rng("dimension", "USAGE_DIMENSION_PRODUCT"), "orders=4/40;everything-paid=1/10;"},
		} {
			res := new(meteringv1.TopUsageResponse)
			if status, body := svc.get(t, adminKey, "/v1/analytics/top", tt.q, res); status != http.StatusOK {
				t.Fatalf("%v: status %d: %s", tt.q, status, body)
			}
			var b strings.Builder
			for _, e := range res.GetEntries() {
				fmt.Fprintf(&b, "%s=%d/%d;", e.GetValue(), e.GetEvents(), e.GetBytes())
			}
			if b.String() != tt.want {
				t.Errorf("%v:\n got %s\nwant %s", tt.q, b.String(), tt.want)
			}
		}
	})

	t.Run("deliveries", func(t *testing.T) {
		res := new(meteringv1.GetDeliveryStatsResponse)
		if status, body := svc.get(t, adminKey, "/v1/analytics/deliveries", rng(), res); status != http.StatusOK {
			t.Fatalf("status %d: %s", status, body)
		}
		var b strings.Builder
		for _, s := range res.GetStats() {
			fmt.Fprintf(&b, "%s: d%d f%d r%d x%d err %.3f retry %.3f p50 %d p90 %d p99 %d |", s.GetChannel(), s.GetDelivered(), s.GetFailed(),
				s.GetRefused(), s.GetRetried(), s.GetErrorRate(), s.GetRetryRate(), s.GetLatencyP50Ms(), s.GetLatencyP90Ms(), s.GetLatencyP99Ms())
			for _, l := range s.GetLatencyBuckets() {
				fmt.Fprintf(&b, " %d:%d", l.GetLeMs(), l.GetCount())
			}
			b.WriteString("; ")
		}
		want := "sse: d3 f0 r1 x0 err 0.000 retry 0.000 p50 50 p90 1000 p99 1000 | 5:1 50:1 1000:1; " +
			"webhook: d1 f2 r0 x2 err 0.667 retry 0.667 p50 25 p90 25 p99 25 | 25:1; "
		if b.String() != want {
			t.Errorf("stats:\n got %s\nwant %s", b.String(), want)
		}
		res = new(meteringv1.GetDeliveryStatsResponse)
		svc.get(t, adminKey, "/v1/analytics/deliveries", rng("byEventType", "true", "filter.channel", "webhook"), res)
		if len(res.GetStats()) != 1 || res.GetStats()[0].GetEventType() != "shop.order.paid" {
			t.Errorf("by type: %v", res)
		}
	})

	t.Run("access", func(t *testing.T) {
		// An application key of tenant acme sees acme's usage only.
		if got := query(t, keyA, rng("groupBy", "USAGE_DIMENSION_METRIC")); got != "PUBLISHED=4/400;DELIVERED=3/30;REFUSED=1/10;" {
			t.Errorf("acme sees %s", got)
		}
		if got := query(t, keyB, rng("groupBy", "USAGE_DIMENSION_METRIC")); got != "PUBLISHED=2/200;DELIVERED=1/10;FAILED=2/20;RETRIED=2/20;" {
			t.Errorf("globex sees %s", got)
		}
		// Its own tenant's other application, by filter: allowed.
		if got := query(t, keyA, rng("filter.applicationId", "app_c", "filter.metric", "USAGE_METRIC_DELIVERED")); got != "=3/30;" {
			t.Errorf("acme's app_c: %s", got)
		}
		// An application in no tenant sees only its own (nothing here).
		if got := query(t, keyD, rng()); got != "" {
			t.Errorf("app_d sees %s", got)
		}
		for _, path := range []string{"/v1/analytics/usage", "/v1/analytics/top", "/v1/analytics/deliveries", "/v1/usage"} {
			q := rng("dimension", "USAGE_DIMENSION_APPLICATION")
			for _, tt := range []struct {
				key  string
				q    url.Values
				want int
			}{
				{"", q, http.StatusUnauthorized},
				{"hk_not_a_key_anyone_issued", q, http.StatusUnauthorized},
				{keyA, rng("dimension", "USAGE_DIMENSION_APPLICATION", "filter.tenant", "globex"), http.StatusForbidden},
				{keyA, rng("dimension", "USAGE_DIMENSION_APPLICATION", "filter.applicationId", "app_b", "applicationId", "app_b"), http.StatusForbidden},
				{keyD, rng("dimension", "USAGE_DIMENSION_APPLICATION", "filter.applicationId", "app_a", "applicationId", "app_a"), http.StatusForbidden},
			} {
				if path == "/v1/usage" && tt.q.Get("filter.tenant") != "" {
					continue // GetUsage has no tenant filter
				}
				status, body := svc.get(t, tt.key, path, tt.q, nil)
				if status != tt.want {
					t.Errorf("%s key %q %v: status %d, want %d", path, tt.key, tt.q, status, tt.want)
				}
				for _, leak := range []string{"redis", "127.0.0.1", "herald:{usage}"} {
					if bytes.Contains([]byte(body), []byte(leak)) {
						t.Errorf("%s: the error carries %q: %s", path, leak, body)
					}
				}
			}
		}
		// A revoked key stops working.
		if got := query(t, keyR, rng("filter.metric", "USAGE_METRIC_DELIVERED")); got != "=3/30;" {
			t.Errorf("keyR sees %s", got)
		}
		revokedKeys.Store(auth.HashSecret(keyR), true)
		testutil.Eventually(t, 10*time.Second, func() bool {
			status, _ := svc.get(t, keyR, "/v1/analytics/usage", rng(), nil)
			return status == http.StatusUnauthorized
		}, "the revoked key refused")
	})

	t.Run("bad input", func(t *testing.T) {
		for _, tt := range []struct {
			path string
			q    url.Values
		}{
			{"/v1/analytics/usage", rng("groupBy", "USAGE_DIMENSION_UNSPECIFIED")},
			{"/v1/analytics/usage", rng("filter.product", "no-such-product")},
			{"/v1/analytics/usage", rng("filter.eventType", "shop.*.created")},
			{"/v1/analytics/usage", url.Values{"granularity": {"GRANULARITY_MINUTE"}, "startTime": {at.AddDate(0, 0, -2).Format(time.RFC3339)}}},
			{"/v1/analytics/usage", url.Values{"startTime": {at.Format(time.RFC3339)}, "endTime": {at.Add(-time.Hour).Format(time.RFC3339)}}},
			{"/v1/analytics/top", rng()},
			{"/v1/analytics/top", rng("dimension", "USAGE_DIMENSION_APPLICATION", "limit", "1001")},
		} {
			if status, body := svc.get(t, adminKey, tt.path, tt.q, nil); status != http.StatusBadRequest {
				t.Errorf("%s %v: status %d, want 400: %s", tt.path, tt.q, status, body)
			}
		}
	})
}
