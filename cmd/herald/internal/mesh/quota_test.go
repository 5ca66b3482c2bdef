package mesh_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
	"github.com/heraldmesh/herald/api/gen/herald/metering/v1/meteringv1connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"
)

// quotaEnv is the mesh with helpers for quotas.
type quotaEnv struct {
	*env
	rdb *redis.Client
}

func startQuotas(t *testing.T) *quotaEnv {
	e := startWebhooks(t)
	opt, err := redis.ParseURL(e.common.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return &quotaEnv{env: e, rdb: rdb}
}

func (q *quotaEnv) quotas(key string) meteringv1connect.QuotaServiceClient {
	opts := []connect.ClientOption{}
	if key != "" {
		opts = append(opts, connect.WithInterceptors(bearer(key)))
	}
	return meteringv1connect.NewQuotaServiceClient(http.DefaultClient, rpc.BaseURL(q.common.MeteringAddr), opts...)
}

// tenantApp creates an application of a tenant that may publish billing.*
// and subscribe to everything.
func (q *quotaEnv) tenantApp(t *testing.T, name, tenant string) (app *registryv1.Application, key, keyID string) {
	t.Helper()
	res, err := q.reg.CreateApplication(context.Background(), connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: name, Tenant: tenant,
		Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "billing.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetApplication(), res.Msg.GetKey().GetSecret(), res.Msg.GetKey().GetId()
}

func (q *quotaEnv) setQuota(t *testing.T, in *meteringv1.Quota) *meteringv1.Quota {
	t.Helper()
	res, err := q.quotas(adminKey).SetQuota(context.Background(), connect.NewRequest(&meteringv1.SetQuotaRequest{Quota: in}))
	if err != nil {
		t.Fatalf("SetQuota: %v", err)
	}
	return res.Msg.GetQuota()
}

// seedUsage adds n events to today's quota totals of a subject, as
// metering's fold does when it folds usage records (the one place to
// switch to real records once the fold writes the totals).
func (q *quotaEnv) seedUsage(t *testing.T, scope meteringv1.QuotaScope, subject string, metric meteringv1.UsageMetric, n int64) {
	t.Helper()
	letter := "a"
	if scope == meteringv1.QuotaScope_QUOTA_SCOPE_TENANT {
		letter = "t"
	}
	field := letter + "|" + strings.NewReplacer("%", "%25", "|", "%7C").Replace(subject) + "|" + strconv.Itoa(int(metric))
	key := "herald:{usage}:t:" + time.Now().UTC().Format("20060102")
	if err := q.rdb.HIncrBy(context.Background(), key, field, n).Err(); err != nil {
		t.Fatal(err)
	}
}

// connectRouter is a Connect client of the router, with a key.
func (q *quotaEnv) connectRouter(key string) routerv1connect.RouterServiceClient {
	return routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(q.common.RouterAddr), rpc.ClientOptions(key)...)
}

func paid(id string) *eventv1.CloudEvent { return invoiceEvent(id, 1) }

// get is a GET with a bearer key.
func (q *quotaEnv) get(t *testing.T, addr, path, key string) (int, http.Header, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", rpc.BaseURL(addr)+path, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(body)
}

func retryAfterOK(t *testing.T, what, v string) {
	t.Helper()
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 86400 {
		t.Fatalf("%s: Retry-After %q, want whole seconds until the day resets", what, v)
	}
}

// TestHardQuotaStopsPublishAndEveryDelivery: a hard quota on published
// events refuses Publish (RESOURCE_EXHAUSTED, Retry-After, nothing
// appended); a hard quota on delivered events of a tenant ends an open SSE
// stream with herald.quota.exhausted naming the cursor to resume after,
// refuses new SSE streams, polls (429) and StreamEvents, and holds webhook
// deliveries, which go out, none lost, once the quota is deleted.
func TestHardQuotaStopsPublishAndEveryDelivery(t *testing.T) {
	q := startQuotas(t)
	ctx := context.Background()
	producer, producerKey, _ := q.tenantApp(t, "producer", "acme")
	consumer, consumerKey, _ := q.tenantApp(t, "consumer", "globex")
	_, neighbourKey, _ := q.tenantApp(t, "neighbour", "globex")

	// Published: the producer may publish 3 events a day.
	q.setQuota(t, &meteringv1.Quota{
		Scope: meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, Subject: producer.GetId(),
		Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY,
		Limit: 3, Mode: meteringv1.QuotaMode_QUOTA_MODE_HARD,
	})
	pub := q.connectRouter(producerKey)
	if _, err := pub.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{paid("p-1")}})); err != nil {
		t.Fatalf("publish under the quota: %v", err)
	}
	q.seedUsage(t, meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, producer.GetId(), meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, 3)
	reached := time.Now()
	stream := eventlog.StreamKey(q.invoice)
	var refusal *connect.Error
	n := 0
	testutil.Eventually(t, 10*time.Second, func() bool {
		n++
		_, err := pub.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{paid(fmt.Sprintf("p-over-%d", n))}}))
		return errors.As(err, &refusal)
	}, "publish never refused over the hard quota")
	t.Logf("published quota took effect %v after it was reached", time.Since(reached).Round(time.Millisecond))
	if refusal.Code() != connect.CodeResourceExhausted || !strings.Contains(refusal.Message(), "quota") {
		t.Fatalf("publish over the quota: %v", refusal)
	}
	retryAfterOK(t, "publish", refusal.Meta().Get("Retry-After"))
	before, _ := q.rdb.XLen(ctx, stream).Result()
	if _, err := pub.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{paid("p-never")}})); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("publish over the quota again: %v", err)
	}
	if after, _ := q.rdb.XLen(ctx, stream).Result(); after != before {
		t.Fatalf("a refused publish appended: %d entries before, %d after", before, after)
	}
	// Another application publishes freely.
	q.publish(paid("shop-1"))

	// Delivered: the consumer's tenant may receive 2 events a day.
	r := newReceiver(t, nil)
	q.createEndpointOf(t, consumer.GetId(), &registryv1.WebhookChannel{Url: r.URL})
	ch, closeStream := q.subscribe("types=billing.*&access_token="+consumerKey, "")
	defer closeStream()
	rpcMsgs, rpcEnded, _ := rpcStream(t, q.common.EdgeAddr, consumerKey, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
	time.Sleep(300 * time.Millisecond) // the StreamEvents subscription in place
	first := q.publish(paid("d-1"))[0]
	// (Events published just before the stream opened may come first.)
	for got := next(t, ch); got.id != first; got = next(t, ch) {
		if !eventlog.MustParseID(got.id).Less(eventlog.MustParseID(first)) {
			t.Fatalf("SSE got %q, want %q", got.id, first)
		}
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 1 }, "webhook got the first event")
	dq := q.setQuota(t, &meteringv1.Quota{
		Scope: meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, Subject: "globex",
		Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY,
		Limit: 2, Mode: meteringv1.QuotaMode_QUOTA_MODE_HARD,
	})
	q.seedUsage(t, meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "globex", meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, 2)
	reached = time.Now()
	// The open stream ends with the typed event naming its cursor.
	var last sseEvent
	for ev := range ch {
		last = ev
	}
	t.Logf("delivered quota ended the open SSE stream %v after it was reached", time.Since(reached).Round(time.Millisecond))
	if last.event != "herald.quota.exhausted" || last.id != first {
		t.Fatalf("the stream's last message: %+v, want herald.quota.exhausted with id %s", last, first)
	}
	var notice struct {
		Cursor     string `json:"cursor"`
		Reason     string `json:"reason"`
		RetryAfter int    `json:"retry_after"`
	}
	if err := json.Unmarshal([]byte(last.data), &notice); err != nil || notice.Cursor != first || notice.RetryAfter < 1 || !strings.Contains(notice.Reason, "quota") {
		t.Fatalf("herald.quota.exhausted data %s (%v)", last.data, err)
	}
	// The open StreamEvents ends too, naming where to resume.
	for got := ""; got != first; {
		select {
		case m := <-rpcMsgs:
			got = m.GetCursor()
		case <-time.After(10 * time.Second):
			t.Fatalf("StreamEvents never got %s", first)
		}
	}
	err := rpcEnd(t, rpcEnded)
	var rpcErr *connect.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code() != connect.CodeResourceExhausted || rpcErr.Meta().Get("Herald-Resume-Cursor") != first {
		t.Fatalf("open StreamEvents at the quota: %v (meta %v)", err, rpcErr)
	}
	// Every channel refuses, for every application of the tenant.
	for _, key := range []string{consumerKey, neighbourKey} {
		for _, path := range []string{"/v1/stream?types=billing.*", "/v1/poll?types=billing.*&wait=0s"} {
			code, hdr, body := q.get(t, q.common.EdgeAddr, path, key)
			if code != http.StatusTooManyRequests || !strings.Contains(body, "quota") {
				t.Fatalf("GET %s over the quota: %d %s", path, code, body)
			}
			retryAfterOK(t, path, hdr.Get("Retry-After"))
		}
		_, end, _ := rpcStream(t, q.common.EdgeAddr, key, &edgev1.StreamEventsRequest{Types: []string{"billing.*"}})
		err := rpcEnd(t, end)
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
			t.Fatalf("StreamEvents over the quota: %v", err)
		}
		retryAfterOK(t, "StreamEvents", ce.Meta().Get("Retry-After"))
	}
	// Another tenant's stream is not affected.
	other, cancelOther := q.subscribe("types=billing.*&access_token="+q.appKey, "")
	defer cancelOther()
	// A webhook delivery waits: nothing is sent while the quota holds.
	held := q.publish(paid("d-held"))[0]
	for got := next(t, other); got.id != held; got = next(t, other) {
		if !eventlog.MustParseID(got.id).Less(eventlog.MustParseID(held)) {
			t.Fatalf("the other tenant's stream got %q, want %q", got.id, held)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	if n := len(r.got()); n != 1 {
		t.Fatalf("the webhook got %d requests while the quota held, want the first one only", n)
	}
	// Counted as a refused attempt, never as delivered.
	testutil.Eventually(t, 10*time.Second, func() bool {
		return q.usage(adminKey, "application_id="+consumer.GetId()+"&metric=USAGE_METRIC_REFUSED")[meteringv1.UsageMetric_USAGE_METRIC_REFUSED.String()] >= 1
	}, "the held webhook delivery was not counted REFUSED")
	// Lifting the quota delivers what waited, once.
	if _, err := q.quotas(adminKey).DeleteQuota(ctx, connect.NewRequest(&meteringv1.DeleteQuotaRequest{Id: dq.GetId()})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() bool { return len(r.got()) == 2 }, "the held webhook delivery went out after the quota was lifted")
	if ids := r.ids(); ids[1] != "d-held" {
		t.Fatalf("webhook ids %v", ids)
	}
	// And the stream resumes from the cursor it was given, losing nothing.
	resumed, closeResumed := q.subscribe("types=billing.*&access_token="+consumerKey, notice.Cursor)
	defer closeResumed()
	if got := next(t, resumed); got.id != held {
		t.Fatalf("resumed stream got %q, want %q", got.id, held)
	}
}

// TestSoftQuotaWarnsOnceAtEachThreshold: a soft quota publishes
// herald.quota.warning into the mesh at 80% and at 100%, once each, and
// stops nothing.
func TestSoftQuotaWarnsOnceAtEachThreshold(t *testing.T) {
	q := startQuotas(t)
	ctx := context.Background()
	producer, producerKey, _ := q.tenantApp(t, "producer", "acme")
	warnings, closeStream := q.subscribe("types=herald.quota.warning&access_token="+adminKey, "")
	defer closeStream()
	sq := q.setQuota(t, &meteringv1.Quota{
		Scope: meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, Subject: producer.GetId(),
		Metric: meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_MONTH,
		Limit: 10, Mode: meteringv1.QuotaMode_QUOTA_MODE_SOFT,
	})
	q.seedUsage(t, meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, producer.GetId(), meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, 7)
	time.Sleep(time.Second) // 70%: nothing
	q.seedUsage(t, meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, producer.GetId(), meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, 1)
	w80 := next(t, warnings)
	q.seedUsage(t, meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, producer.GetId(), meteringv1.UsageMetric_USAGE_METRIC_PUBLISHED, 5)
	w100 := next(t, warnings)
	type data struct {
		QuotaID   string `json:"quota_id"`
		Threshold int    `json:"threshold"`
		Limit     int64  `json:"limit"`
		Used      int64  `json:"used"`
		Subject   string `json:"subject"`
	}
	var got []data
	for _, w := range []sseEvent{w80, w100} {
		var ce struct {
			Type string `json:"type"`
			Data data   `json:"data"`
		}
		if err := json.Unmarshal([]byte(w.data), &ce); err != nil || w.event != "herald.quota.warning" || ce.Type != "herald.quota.warning" {
			t.Fatalf("warning %+v (%v)", w, err)
		}
		got = append(got, ce.Data)
	}
	if got[0].Threshold != 80 || got[1].Threshold != 100 || got[0].QuotaID != sq.GetId() || got[1].Used < 10 || got[0].Subject != producer.GetId() || got[0].Limit != 10 {
		t.Fatalf("warnings %+v", got)
	}
	// Soft: publishing goes on; and no warning comes twice.
	if _, err := q.connectRouter(producerKey).Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{paid("soft-1")}})); err != nil {
		t.Fatalf("publish over a soft quota: %v", err)
	}
	select {
	case w := <-warnings:
		t.Fatalf("a third warning: %+v", w)
	case <-time.After(1500 * time.Millisecond):
	}
	st, err := q.quotas(adminKey).GetQuotaStatus(ctx, connect.NewRequest(&meteringv1.GetQuotaStatusRequest{Id: sq.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	s := st.Msg.GetStatuses()
	if len(s) != 1 || s[0].GetUsed() < 13 || s[0].GetPercent() < 130 || s[0].GetState() != meteringv1.QuotaState_QUOTA_STATE_EXHAUSTED || s[0].GetLimit() != 10 {
		t.Fatalf("status %v", s)
	}
	start, end := s[0].GetPeriodStart().AsTime(), s[0].GetResetsAt().AsTime()
	if start.Day() != 1 || end.Sub(start) < 28*24*time.Hour || !end.After(time.Now()) {
		t.Fatalf("month period %v .. %v", start, end)
	}
}

// TestQuotaServiceAccessAndBadInput: only the operator sets and deletes
// quotas; an application key reads only its own tenant's; no key and a
// revoked key are refused; bad quotas are refused with what is wrong, and
// nothing is stored.
func TestQuotaServiceAccessAndBadInput(t *testing.T) {
	q := startQuotas(t)
	ctx := context.Background()
	acme, acmeKey, acmeKeyID := q.tenantApp(t, "acme-app", "acme")
	_, globexKey, _ := q.tenantApp(t, "globex-app", "globex")
	_, loneKey, _ := q.tenantApp(t, "lone", "")
	hard := func(scope meteringv1.QuotaScope, subject string) *meteringv1.Quota {
		return &meteringv1.Quota{Scope: scope, Subject: subject, Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED,
			Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY, Limit: 100, Mode: meteringv1.QuotaMode_QUOTA_MODE_HARD}
	}
	appQ := q.setQuota(t, hard(meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, acme.GetId()))
	tenantQ := q.setQuota(t, hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme"))
	if appQ.GetTenant() != "acme" || tenantQ.GetTenant() != "acme" || appQ.GetId() == tenantQ.GetId() {
		t.Fatalf("stored %v and %v", appQ, tenantQ)
	}
	// Setting again replaces.
	again := hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme")
	again.Limit = 50
	if got := q.setQuota(t, again); got.GetId() != tenantQ.GetId() || got.GetLimit() != 50 {
		t.Fatalf("set again: %v", got)
	}

	list := func(key string, r *meteringv1.ListQuotasRequest) ([]*meteringv1.Quota, error) {
		res, err := q.quotas(key).ListQuotas(ctx, connect.NewRequest(r))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetQuotas(), nil
	}
	if got, err := list(adminKey, &meteringv1.ListQuotasRequest{}); err != nil || len(got) != 2 {
		t.Fatalf("operator lists %v (%v)", got, err)
	}
	if got, err := list(acmeKey, &meteringv1.ListQuotasRequest{}); err != nil || len(got) != 2 {
		t.Fatalf("acme's key lists %v (%v)", got, err)
	}
	for name, key := range map[string]string{"globex": globexKey, "no tenant": loneKey} {
		if got, err := list(key, &meteringv1.ListQuotasRequest{}); err != nil || len(got) != 0 {
			t.Fatalf("%s's key lists %v (%v)", name, got, err)
		}
		if _, err := list(key, &meteringv1.ListQuotasRequest{Tenant: "acme"}); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("%s's key asking for acme's quotas: %v", name, err)
		}
		st, err := q.quotas(key).GetQuotaStatus(ctx, connect.NewRequest(&meteringv1.GetQuotaStatusRequest{}))
		if err != nil || len(st.Msg.GetStatuses()) != 0 {
			t.Fatalf("%s's key reads statuses %v (%v)", name, st, err)
		}
		if _, err := q.quotas(key).GetQuotaStatus(ctx, connect.NewRequest(&meteringv1.GetQuotaStatusRequest{Id: appQ.GetId()})); connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("%s's key reading acme's quota by id: %v", name, err)
		}
	}
	st, err := q.quotas(acmeKey).GetQuotaStatus(ctx, connect.NewRequest(&meteringv1.GetQuotaStatusRequest{}))
	if err != nil || len(st.Msg.GetStatuses()) != 2 || st.Msg.GetStatuses()[0].GetState() != meteringv1.QuotaState_QUOTA_STATE_OK {
		t.Fatalf("acme's statuses %v (%v)", st, err)
	}
	// Only the operator writes.
	for name, key := range map[string]string{"acme": acmeKey, "globex": globexKey} {
		if _, err := q.quotas(key).SetQuota(ctx, connect.NewRequest(&meteringv1.SetQuotaRequest{Quota: hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme")})); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("%s's key sets a quota: %v", name, err)
		}
		if _, err := q.quotas(key).DeleteQuota(ctx, connect.NewRequest(&meteringv1.DeleteQuotaRequest{Id: appQ.GetId()})); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("%s's key deletes a quota: %v", name, err)
		}
	}
	// No key, a revoked key.
	if _, err := list("", &meteringv1.ListQuotasRequest{}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("no key: %v", err)
	}
	if _, err := q.reg.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: acmeKeyID})); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, err := list(acmeKey, &meteringv1.ListQuotasRequest{})
		return connect.CodeOf(err) == connect.CodeUnauthenticated
	}, "a revoked key still reads quotas")
	// REST: the same, through the gateway.
	metering := q.common.MeteringAddr
	if code, _, body := q.get(t, metering, "/v1/quotas", adminKey); code != http.StatusOK || !strings.Contains(body, tenantQ.GetId()) {
		t.Fatalf("GET /v1/quotas: %d %s", code, body)
	}
	if code, _, body := q.get(t, metering, "/v1/quotas/status?tenant=acme", globexKey); code != http.StatusForbidden {
		t.Fatalf("GET /v1/quotas/status as another tenant: %d %s", code, body)
	}
	if code, _, _ := q.get(t, metering, "/v1/quotas", ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /v1/quotas without a key: %d", code)
	}
	put := func(key, body string) (int, string) {
		req, _ := http.NewRequest("PUT", rpc.BaseURL(metering)+"/v1/quotas", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	restQuota := `{"quota":{"scope":"QUOTA_SCOPE_TENANT","subject":"globex","metric":"USAGE_METRIC_PUBLISHED","period":"QUOTA_PERIOD_MONTH","limit":"5","mode":"QUOTA_MODE_SOFT"}}`
	if code, body := put(globexKey, restQuota); code != http.StatusForbidden {
		t.Fatalf("PUT /v1/quotas as an application: %d %s", code, body)
	}
	if code, body := put(adminKey, restQuota); code != http.StatusOK || !strings.Contains(body, `"tenant":"globex"`) {
		t.Fatalf("PUT /v1/quotas: %d %s", code, body)
	}
	if code, body := put(adminKey, `{"quota":{"scope":"QUOTA_SCOPE_TENANT","subject":"globex","metric":"USAGE_METRIC_PUBLISHED","period":"QUOTA_PERIOD_MONTH","limit":"-1","mode":"QUOTA_MODE_SOFT"}}`); code != http.StatusBadRequest || !strings.Contains(body, "negative") {
		t.Fatalf("PUT /v1/quotas with a negative limit: %d %s", code, body)
	}

	// Bad input: each refused, with what is wrong; nothing stored.
	bad := []struct {
		name string
		q    *meteringv1.Quota
		code connect.Code
		says string
	}{
		{"negative limit", func() *meteringv1.Quota {
			x := hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme")
			x.Limit = -1
			return x
		}(), connect.CodeInvalidArgument, "negative"},
		{"unknown application", hard(meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, "app_nope"), connect.CodeNotFound, "app_nope"},
		{"unknown tenant", hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "initech"), connect.CodeNotFound, "initech"},
		{"unknown metric", func() *meteringv1.Quota {
			x := hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme")
			x.Metric = meteringv1.UsageMetric_USAGE_METRIC_FAILED
			return x
		}(), connect.CodeInvalidArgument, "metric"},
		{"no metric", func() *meteringv1.Quota {
			x := hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme")
			x.Metric = 0
			return x
		}(), connect.CodeInvalidArgument, "metric"},
		{"unknown period", func() *meteringv1.Quota {
			x := hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme")
			x.Period = 9
			return x
		}(), connect.CodeInvalidArgument, "period"},
		{"no mode", func() *meteringv1.Quota {
			x := hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, "acme")
			x.Mode = 0
			return x
		}(), connect.CodeInvalidArgument, "mode"},
		{"no scope", hard(0, "acme"), connect.CodeInvalidArgument, "scope"},
		{"no subject", hard(meteringv1.QuotaScope_QUOTA_SCOPE_TENANT, ""), connect.CodeInvalidArgument, "subject"},
		{"no quota", nil, connect.CodeInvalidArgument, "quota"},
	}
	for _, c := range bad {
		_, err := q.quotas(adminKey).SetQuota(ctx, connect.NewRequest(&meteringv1.SetQuotaRequest{Quota: c.q}))
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != c.code || !strings.Contains(ce.Message(), c.says) {
			t.Fatalf("%s: %v, want %v naming %q", c.name, err, c.code, c.says)
		}
	}
	if got, _ := list(adminKey, &meteringv1.ListQuotasRequest{}); len(got) != 3 {
		t.Fatalf("after bad input, %d quotas stored, want 3", len(got))
	}
	if _, err := q.quotas(adminKey).DeleteQuota(ctx, connect.NewRequest(&meteringv1.DeleteQuotaRequest{Id: "q_nope"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("delete an unknown quota: %v", err)
	}
}

// TestHardQuotaKeepsDurableSubscriptionPending: a hard quota on delivered
// events ends an open Subscribe stream and refuses new ones
// (RESOURCE_EXHAUSTED, Retry-After); what was not acknowledged, and what
// was published meanwhile, stays pending and is delivered once the quota
// is lifted.
func TestHardQuotaKeepsDurableSubscriptionPending(t *testing.T) {
	q := startQuotas(t)
	ctx := context.Background()
	consumer, consumerKey, _ := q.tenantApp(t, "consumer", "globex")
	created, err := q.reg.CreateSubscription(ctx, connect.NewRequest(&registryv1.CreateSubscriptionRequest{Subscription: &registryv1.Subscription{
		ApplicationId: consumer.GetId(), Types: []string{"billing.*"},
		Channel:  &registryv1.Subscription_Stream{Stream: &registryv1.StreamChannel{}},
		Delivery: &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(time.Second)},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	subID := created.Msg.GetSubscription().GetId()
	client := q.connectRouter(consumerKey)
	open := func() (*connect.ServerStreamForClient[routerv1.SubscribeResponse], context.CancelFunc) {
		sctx, cancel := context.WithCancel(ctx)
		s, err := client.Subscribe(sctx, connect.NewRequest(&routerv1.SubscribeRequest{SubscriptionId: subID, MaxInFlight: 10}))
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		return s, cancel
	}
	s, cancel := open()
	defer cancel()
	time.Sleep(300 * time.Millisecond) // the stream's group in place
	first := q.publish(paid("s-1"))[0]
	if !s.Receive() || s.Msg().GetCursor() != first {
		t.Fatalf("first delivery: %v %v", s.Msg(), s.Err())
	}
	dq := q.setQuota(t, &meteringv1.Quota{
		Scope: meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, Subject: consumer.GetId(),
		Metric: meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, Period: meteringv1.QuotaPeriod_QUOTA_PERIOD_DAY,
		Limit: 1, Mode: meteringv1.QuotaMode_QUOTA_MODE_HARD,
	})
	q.seedUsage(t, meteringv1.QuotaScope_QUOTA_SCOPE_APPLICATION, consumer.GetId(), meteringv1.UsageMetric_USAGE_METRIC_DELIVERED, 1)
	for s.Receive() {
	}
	if connect.CodeOf(s.Err()) != connect.CodeResourceExhausted {
		t.Fatalf("open Subscribe at the quota ended with %v", s.Err())
	}
	cancel()
	second := q.publish(paid("s-2"))[0]
	s, cancel = open()
	for s.Receive() {
		t.Fatalf("delivered over the quota: %v", s.Msg())
	}
	var ce *connect.Error
	if !errors.As(s.Err(), &ce) || ce.Code() != connect.CodeResourceExhausted {
		t.Fatalf("Subscribe over the quota: %v", s.Err())
	}
	retryAfterOK(t, "Subscribe", ce.Meta().Get("Retry-After"))
	cancel()
	if _, err := q.quotas(adminKey).DeleteQuota(ctx, connect.NewRequest(&meteringv1.DeleteQuotaRequest{Id: dq.GetId()})); err != nil {
		t.Fatal(err)
	}
	var s2 *connect.ServerStreamForClient[routerv1.SubscribeResponse]
	testutil.Eventually(t, 10*time.Second, func() bool {
		st, c := open()
		if st.Receive() {
			s2, cancel = st, c
			return true
		}
		c()
		return false
	}, "Subscribe still refused after the quota was lifted")
	defer cancel()
	got := map[string]bool{s2.Msg().GetCursor(): true}
	for len(got) < 2 && s2.Receive() {
		got[s2.Msg().GetCursor()] = true
	}
	if !got[first] || !got[second] {
		t.Fatalf("after the quota was lifted got %v, want %s (unacknowledged) and %s (published meanwhile)", got, first, second)
	}
}
