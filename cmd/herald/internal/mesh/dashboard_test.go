package mesh_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
)

// dashboardPage is one answer of tests/dashboard/dashboard.mjs.
type dashboardPage struct {
	Seq           int    `json:"seq"`
	Kind          string `json:"kind"`
	Error         string `json:"error"`
	Text          string `json:"text"`
	State         string `json:"state"`
	Message       string `json:"message"`
	SigninVisible bool   `json:"signinVisible"`
	Refreshes     int    `json:"refreshes"`
	Start         string `json:"start"`
	Granularity   string `json:"granularity"`
	Live          struct {
		Count int64  `json:"count"`
		Polls int    `json:"polls"`
		Since string `json:"since"`
	} `json:"live"`
	Series map[string]int64 `json:"series"`
	Points map[string][]struct {
		Start  string `json:"start"`
		Events int64  `json:"events"`
	} `json:"points"`
	Top        map[string][]topEntry `json:"top"`
	Deliveries []dashDelivery        `json:"deliveries"`
	Quotas     []struct {
		ID    string `json:"id"`
		Used  int64  `json:"used"`
		Limit int64  `json:"limit"`
		State string `json:"state"`
	} `json:"quotas"`
	Invoices struct {
		State string `json:"state"`
		Count int    `json:"count"`
		Rows  []struct {
			ID         string `json:"id"`
			TotalMinor string `json:"totalMinor"`
			Currency   string `json:"currency"`
			Status     string `json:"status"`
			Total      string `json:"total"`
		} `json:"rows"`
	} `json:"invoices"`
	DocumentCookie string   `json:"documentCookie"`
	Foreign        []string `json:"foreign"`
}

type topEntry struct {
	Value  string `json:"value"`
	Events int64  `json:"events"`
}

type dashDelivery struct {
	Channel   string  `json:"channel"`
	Delivered int64   `json:"delivered"`
	Failed    int64   `json:"failed"`
	Retried   int64   `json:"retried"`
	Refused   int64   `json:"refused"`
	ErrorRate float64 `json:"errorRate"`
	RetryRate float64 `json:"retryRate"`
	P50       int64   `json:"p50"`
	P90       int64   `json:"p90"`
	P99       int64   `json:"p99"`
}

// dashBrowser is a running dashboard.mjs.
type dashBrowser struct {
	t    *testing.T
	node *nodehook.Script
	seq  int
}

func (b *dashBrowser) do(cmd map[string]any) dashboardPage {
	b.t.Helper()
	b.seq++
	cmd["seq"] = b.seq
	raw, _ := json.Marshal(cmd)
	if _, err := fmt.Fprintf(b.node.Stdin, "%s\n", raw); err != nil {
		b.t.Fatalf("dashboard.mjs: %v; stderr:\n%s", err, b.node.Stderr())
	}
	shown := strings.ReplaceAll(string(raw), adminKey, "<admin key>")
	for {
		p := b.line("the answer to " + shown)
		if p.Kind == "console" {
			b.t.Logf("page: %s", p.Text)
			continue
		}
		if p.Seq != b.seq {
			b.t.Fatalf("dashboard.mjs answered %d, want %d", p.Seq, b.seq)
		}
		if p.Kind == "error" {
			b.t.Fatalf("dashboard.mjs: %s: %s (page: state %s, message %q)", shown, p.Error, p.State, p.Message)
		}
		return p
	}
}

func (b *dashBrowser) line(what string) dashboardPage {
	b.t.Helper()
	select {
	case s, ok := <-b.node.Lines:
		if !ok {
			b.t.Fatalf("dashboard.mjs exited waiting for %s; stderr:\n%s", what, b.node.Stderr())
		}
		var p dashboardPage
		if err := json.Unmarshal([]byte(s), &p); err != nil {
			b.t.Fatalf("dashboard.mjs printed %q", s)
		}
		return p
	case <-time.After(60 * time.Second):
		b.t.Fatalf("dashboard.mjs printed nothing for 60s waiting for %s; stderr:\n%s", what, b.node.Stderr())
		return dashboardPage{}
	}
}

// meteringJSON GETs a metering REST route with the admin key.
func (e *env) meteringJSON(t *testing.T, path string, q url.Values, into any) {
	t.Helper()
	req, _ := http.NewRequest("GET", rpc.BaseURL(e.common.MeteringAddr)+path+"?"+q.Encode(), nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s?%s: %d %s", path, q.Encode(), res.StatusCode, body)
	}
	if err := json.Unmarshal(body, into); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, body)
	}
}

// meteringPost POSTs body to a metering REST route with the admin key.
func (e *env) meteringPost(t *testing.T, path, body string) {
	t.Helper()
	e.meteringSend(t, "POST", path, body)
}

func (e *env) meteringSend(t *testing.T, method, path, body string) {
	t.Helper()
	req, _ := http.NewRequest(method, rpc.BaseURL(e.common.MeteringAddr)+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
}

// mine keeps the entries of the given values, in order.
func mine(entries []topEntry, values ...string) []topEntry {
	out := []topEntry{}
	for _, e := range entries {
		if slices.Contains(values, e.Value) {
			out = append(out, e)
		}
	}
	return out
}

type apiTop struct {
	Entries []struct {
		Value  string `json:"value"`
		Events string `json:"events"`
	} `json:"entries"`
}

func (a apiTop) entries() []topEntry {
	out := []topEntry{}
	for _, e := range a.Entries {
		n, _ := strconv.ParseInt(e.Events, 10, 64)
		out = append(out, topEntry{e.Value, n})
	}
	return out
}

// top is TopUsage as the page asks it.
func (e *env) top(t *testing.T, start, dimension, metric string) []topEntry {
	t.Helper()
	var r apiTop
	e.meteringJSON(t, "/v1/analytics/top", url.Values{"dimension": {dimension}, "filter.metric": {metric}, "start_time": {start}, "limit": {"10"}}, &r)
	return r.entries()
}

// publishedSince is the PUBLISHED total from start (as the live counter asks).
func (e *env) publishedSince(t *testing.T, start string) int64 {
	t.Helper()
	var r struct {
		Series []struct {
			Points []struct {
				Events string `json:"events"`
			} `json:"points"`
		} `json:"series"`
	}
	e.meteringJSON(t, "/v1/analytics/usage", url.Values{"granularity": {"GRANULARITY_TOTAL"}, "start_time": {start}, "filter.metric": {"USAGE_METRIC_PUBLISHED"}}, &r)
	var n int64
	for _, s := range r.Series {
		for _, p := range s.Points {
			v, _ := strconv.ParseInt(p.Events, 10, 64)
			n += v
		}
	}
	return n
}

// metering's operator dashboard in Debian's headless Chromium: a known mix
// of traffic (two producers, two types, two consumers over SSE, a soft
// quota); the sign-in form refuses an application key and a bad key with a
// clear message and signs in with the operator key; the chart, the top
// lists, the delivery stats and the quotas show what the REST API answers
// (and what the test published); one more event moves the live counter;
// sign-out goes back to the form.
func TestDashboardInChromium(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if _, err := e.reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{
		Name: "billing.refund.issued", Description: "A refund was issued.", Schema: `{"type":"object"}`,
	}})); err != nil {
		t.Fatal(err)
	}
	ledger, err := e.reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "ledger",
		Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "billing.refund.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.refund.*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	ledgerKey, ledgerID := ledger.Msg.GetKey().GetSecret(), ledger.Msg.GetApplication().GetId()
	e.waitStatus(t, "types=billing.refund.issued&access_token="+ledgerKey, http.StatusOK, "", "the edge knows the ledger's key")

	// An invoice: a plan with a monthly fee, assigned to shop from last
	// month, and last month's invoice finalized (its herald.invoice.finalized
	// event is published too: an operator's publish of its own type).
	lastMonth := time.Now().UTC().AddDate(0, 0, -time.Now().UTC().Day()).Format("2006-01")
	for _, c := range []struct{ path, body string }{
		{"/v1/plans", `{"planId":"dash","name":"Dashboard","version":{"currency":"EUR","monthlyFeeMinor":"1999"}}`},
		{"/v1/assignments", `{"applicationId":"` + e.appID + `","planId":"dash","planVersion":1,"startMonth":"` + lastMonth + `"}`},
		{"/v1/invoices", `{"applicationId":"` + e.appID + `","month":"` + lastMonth + `"}`},
	} {
		e.meteringPost(t, c.path, c.body)
	}

	shopStream, closeShop := e.subscribe("types=billing.*&access_token="+e.appKey, "")
	defer closeShop()
	ledgerStream, closeLedger := e.subscribe("types=billing.refund.issued&access_token="+ledgerKey, "")
	defer closeLedger()

	refund := func(id string) *eventv1.CloudEvent {
		return &eventv1.CloudEvent{Id: id, Source: "//billing.example/refunds", SpecVersion: "1.0", Type: "billing.refund.issued",
			Data: &eventv1.CloudEvent_TextData{TextData: `{"refund_id":"` + id + `"}`}}
	}
	// shop publishes 5 invoices and 2 refunds, ledger 3 refunds: shop
	// receives all 10, ledger the 5 refunds.
	for i := range 5 {
		e.publish(invoiceEvent(fmt.Sprintf("dash-inv-%d", i), 100+i))
	}
	e.publish(refund("dash-ref-s1"), refund("dash-ref-s2"))
	if _, err := e.router.Publish(withKey(ledgerKey), &routerv1.PublishRequest{Events: []*eventv1.CloudEvent{refund("dash-ref-l1"), refund("dash-ref-l2"), refund("dash-ref-l3")}}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		next(t, shopStream)
	}
	for range 5 {
		next(t, ledgerStream)
	}
	// A soft quota, for the quota table.
	e.meteringSend(t, "PUT", "/v1/quotas", `{"quota":{"scope":"QUOTA_SCOPE_APPLICATION","subject":"`+e.appID+`","metric":"USAGE_METRIC_PUBLISHED","period":"QUOTA_PERIOD_DAY","limit":"1000","mode":"QUOTA_MODE_SOFT"}}`)

	// Wait until metering has counted it all (over the last hour).
	hourAgo := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	wantConsumers := []topEntry{{e.appID, 10}, {ledgerID, 5}}
	wantProducers := []topEntry{{e.appID, 7}, {ledgerID, 3}}
	testutil.Eventually(t, 20*time.Second, func() bool {
		return slices.Equal(mine(e.top(t, hourAgo, "USAGE_DIMENSION_APPLICATION", "USAGE_METRIC_DELIVERED"), e.appID, ledgerID), wantConsumers) &&
			slices.Equal(mine(e.top(t, hourAgo, "USAGE_DIMENSION_PRODUCER", "USAGE_METRIC_PUBLISHED"), e.appID, ledgerID), wantProducers) &&
			slices.Equal(mine(e.top(t, hourAgo, "USAGE_DIMENSION_EVENT_TYPE", "USAGE_METRIC_PUBLISHED"), "herald.invoice.finalized"), []topEntry{{"herald.invoice.finalized", 1}})
	}, "metering never counted the mix")
	var qs struct {
		Statuses []struct {
			Used string `json:"used"`
		} `json:"statuses"`
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		e.meteringJSON(t, "/v1/quotas/status", nil, &qs)
		return len(qs.Statuses) == 1 && qs.Statuses[0].Used == "7"
	}, "the quota never counted shop's 7 publishes")

	node := nodehook.Run(t, "dashboard", "dashboard.mjs", "playwright-core",
		"DASHBOARD_URL="+rpc.BaseURL(e.common.MeteringAddr)+"/dashboard")
	b := &dashBrowser{t: t, node: node}
	if p := b.line("ready"); p.Kind != "ready" {
		t.Fatalf("dashboard.mjs: first line %+v; stderr:\n%s", p, node.Stderr())
	}
	b.do(map[string]any{"cmd": "open"})
	p := b.do(map[string]any{"cmd": "wait", "probed": true})
	if !p.SigninVisible || p.State != "signed-out" {
		t.Fatalf("without a session the page shows %+v, want the sign-in form", p)
	}
	// Refusals: the page says why, and stays on the form.
	for _, c := range []struct{ key, want string }{
		{e.appKey, "the dashboard needs the operator key"},
		{"hk_no_such_key_0123456789abcdef", "unknown or revoked key"},
	} {
		b.do(map[string]any{"cmd": "signin", "key": c.key})
		p = b.do(map[string]any{"cmd": "wait", "state": "signed-out", "messageHas": c.want})
		if !p.SigninVisible {
			t.Fatalf("after a refused sign-in the form is gone: %+v", p)
		}
	}
	b.do(map[string]any{"cmd": "signin", "key": adminKey})
	p = b.do(map[string]any{"cmd": "wait", "state": "ready", "polls": 1})
	if p.SigninVisible || p.Message != "" || p.Granularity != "GRANULARITY_MINUTE" || p.Start == "" {
		t.Fatalf("signed in: %+v", p)
	}
	if p.DocumentCookie != "" {
		t.Fatalf("the page's script sees the cookie %q: it must be HttpOnly", p.DocumentCookie)
	}

	// The chart: per metric, what QueryUsage answers for the page's window.
	var usage struct {
		Series []struct {
			Dimensions struct {
				Metric string `json:"metric"`
			} `json:"dimensions"`
			Points []struct {
				StartTime string `json:"startTime"`
				Events    string `json:"events"`
			} `json:"points"`
		} `json:"series"`
	}
	e.meteringJSON(t, "/v1/analytics/usage", url.Values{"granularity": {p.Granularity}, "start_time": {p.Start}, "group_by": {"USAGE_DIMENSION_METRIC"}}, &usage)
	for _, metric := range []string{"PUBLISHED", "DELIVERED"} {
		var total int64
		want := map[string]int64{}
		for _, s := range usage.Series {
			if s.Dimensions.Metric != "USAGE_METRIC_"+metric {
				continue
			}
			for _, pt := range s.Points {
				n, _ := strconv.ParseInt(pt.Events, 10, 64)
				at, _ := time.Parse(time.RFC3339, pt.StartTime)
				want[at.UTC().Format("2006-01-02T15:04")] += n
				total += n
			}
		}
		got := map[string]int64{}
		for _, pt := range p.Points[metric] {
			at, _ := time.Parse(time.RFC3339, pt.Start)
			got[at.UTC().Format("2006-01-02T15:04")] += pt.Events
		}
		if p.Series[metric] != total || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("chart %s: total %d, buckets %v; the API answers %d, %v", metric, p.Series[metric], got, total, want)
		}
	}
	// 10 published by shop and ledger and the operator's herald.invoice.finalized.
	if p.Series["PUBLISHED"] != 11 || p.Series["DELIVERED"] != 15 {
		t.Errorf("chart shows %d published and %d delivered, want 11 and 15", p.Series["PUBLISHED"], p.Series["DELIVERED"])
	}

	// The top lists: what TopUsage answers, and what was sent.
	for _, c := range []struct {
		list, dimension, metric string
		want                    []topEntry
		of                      []string
	}{
		{"consumers", "USAGE_DIMENSION_APPLICATION", "USAGE_METRIC_DELIVERED", wantConsumers, []string{e.appID, ledgerID}},
		{"producers", "USAGE_DIMENSION_PRODUCER", "USAGE_METRIC_PUBLISHED", wantProducers, []string{e.appID, ledgerID}},
		{"types", "USAGE_DIMENSION_EVENT_TYPE", "USAGE_METRIC_PUBLISHED", []topEntry{{"billing.invoice.paid", 5}, {"billing.refund.issued", 5}, {"herald.invoice.finalized", 1}},
			[]string{"billing.invoice.paid", "billing.refund.issued", "herald.invoice.finalized"}},
	} {
		api := e.top(t, p.Start, c.dimension, c.metric)
		if !slices.Equal(p.Top[c.list], api) || !slices.Equal(mine(api, c.of...), c.want) {
			t.Errorf("top %s: page %v, API %v, want %v", c.list, p.Top[c.list], api, c.want)
		}
	}

	// Delivery stats: what GetDeliveryStats answers.
	var ds struct {
		Stats []struct {
			Channel      string  `json:"channel"`
			Delivered    string  `json:"delivered"`
			Failed       string  `json:"failed"`
			Refused      string  `json:"refused"`
			Retried      string  `json:"retried"`
			ErrorRate    float64 `json:"errorRate"`
			RetryRate    float64 `json:"retryRate"`
			LatencyP50Ms string  `json:"latencyP50Ms"`
			LatencyP90Ms string  `json:"latencyP90Ms"`
			LatencyP99Ms string  `json:"latencyP99Ms"`
		} `json:"stats"`
	}
	e.meteringJSON(t, "/v1/analytics/deliveries", url.Values{"start_time": {p.Start}}, &ds)
	var wantDS []dashDelivery
	for _, s := range ds.Stats {
		n := func(v string) int64 { x, _ := strconv.ParseInt(v, 10, 64); return x }
		wantDS = append(wantDS, dashDelivery{s.Channel, n(s.Delivered), n(s.Failed), n(s.Retried), n(s.Refused), s.ErrorRate, s.RetryRate, n(s.LatencyP50Ms), n(s.LatencyP90Ms), n(s.LatencyP99Ms)})
	}
	if fmt.Sprint(p.Deliveries) != fmt.Sprint(wantDS) {
		t.Errorf("delivery stats: page %+v, API %+v", p.Deliveries, wantDS)
	}
	if len(p.Deliveries) != 1 || p.Deliveries[0].Channel != "sse" || p.Deliveries[0].Delivered != 15 || p.Deliveries[0].P99 <= 0 {
		t.Errorf("delivery stats: page %+v, want 15 delivered over sse with a latency", p.Deliveries)
	}

	// Quotas and invoices.
	if len(p.Quotas) != 1 || p.Quotas[0].Used != 7 || p.Quotas[0].Limit != 1000 || p.Quotas[0].State != "OK" {
		t.Errorf("quotas: page %+v, want shop's 7 of 1000, OK", p.Quotas)
	}
	var inv struct {
		Invoices []struct {
			ID         string `json:"id"`
			TotalMinor string `json:"totalMinor"`
			Currency   string `json:"currency"`
			Status     string `json:"status"`
		} `json:"invoices"`
	}
	e.meteringJSON(t, "/v1/invoices", nil, &inv)
	if p.Invoices.State != "ok" || p.Invoices.Count != 1 || len(inv.Invoices) != 1 || len(p.Invoices.Rows) != 1 {
		t.Fatalf("invoices: page %+v, API %+v", p.Invoices, inv)
	}
	if r, a := p.Invoices.Rows[0], inv.Invoices[0]; r.ID != a.ID || r.TotalMinor != a.TotalMinor || r.Currency != a.Currency || r.Status != a.Status ||
		a.TotalMinor != "1999" || a.Currency != "EUR" || r.Total != "19.99 EUR" {
		t.Errorf("invoice: page %+v, API %+v, want 1999 EUR shown as 19.99 EUR", r, a)
	}
	if len(p.Foreign) != 0 {
		t.Errorf("the page loaded from elsewhere: %v", p.Foreign)
	}

	// The live counter: events published today (UTC), as the API answers
	// them; one more event moves it.
	since := p.Live.Since
	if day := time.Now().UTC().Truncate(24 * time.Hour).Format("2006-01-02T15:04:05.000Z"); since != day {
		t.Fatalf("live counter counts since %s, want %s", since, day)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		p = b.do(map[string]any{"cmd": "snapshot"})
		return p.Live.Count == e.publishedSince(t, since)
	}, "the live counter never matched the API")
	before := p.Live.Count
	e.publish(invoiceEvent("dash-live-1", 1))
	p = b.do(map[string]any{"cmd": "wait", "live": before + 1})
	if p.Live.Count != before+1 || e.publishedSince(t, since) != before+1 {
		t.Fatalf("live counter %d after one more event, want %d (API %d)", p.Live.Count, before+1, e.publishedSince(t, since))
	}

	// Sign-out: back to the form, and a reload stays there.
	b.do(map[string]any{"cmd": "signout"})
	p = b.do(map[string]any{"cmd": "wait", "state": "signed-out", "messageHas": "signed out"})
	b.do(map[string]any{"cmd": "open"})
	p = b.do(map[string]any{"cmd": "wait", "probed": true})
	if !p.SigninVisible {
		t.Fatalf("after sign-out a reload shows %+v", p)
	}
}
