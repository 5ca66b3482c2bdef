package metering_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/services/metering"
)

// dashReq is one request to a running metering, with headers.
func dashReq(t *testing.T, method, u string, body string, h map[string]string) (*http.Response, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range h {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	return res, string(b)
}

func errMessage(t *testing.T, body string) string {
	t.Helper()
	var e struct{ Code, Message string }
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("not a JSON error: %q", body)
	}
	return e.Message
}

// signIn posts key to the sign-in form as a browser on the page would.
func signIn(t *testing.T, r *running, key string, h map[string]string) (*http.Response, string) {
	t.Helper()
	if h == nil {
		h = map[string]string{"Origin": r.base, "Sec-Fetch-Site": "same-origin"}
	}
	h["Content-Type"] = "application/x-www-form-urlencoded"
	return dashReq(t, "POST", r.base+"/dashboard/session", url.Values{"key": {key}}.Encode(), h)
}

// The dashboard page needs no key and loads nothing from elsewhere; the
// sign-in refuses a missing, bad or application key, and a cross-site
// form, with a clear message and no cookie.
func TestDashboardPageAndSignInRefusals(t *testing.T) {
	svc := newEnv(t).start(t)
	res, body := dashReq(t, "GET", svc.base+"/dashboard", "", nil)
	csp := res.Header.Get("Content-Security-Policy")
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") || !strings.Contains(csp, "script-src 'sha256-") ||
		!strings.Contains(body, `data-testid="app"`) || strings.Contains(body, "<script src") || strings.Contains(body, "<link") || strings.Contains(body, "url(") || strings.Contains(body, "@import") {
		t.Fatalf("GET /dashboard: %s %v\n%.300s", res.Status, res.Header, body)
	}
	for _, c := range []struct {
		name, key string
		h         map[string]string
		status    int
		want      string
	}{
		{"no key", "", nil, http.StatusUnauthorized, "enter the operator key"},
		{"bad key", "hk_not_a_key_of_anyone_at_all", nil, http.StatusUnauthorized, "unknown or revoked key"},
		{"application key", keyA, nil, http.StatusForbidden, "the dashboard needs the operator key"},
		{"cross-site", adminKey, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, http.StatusForbidden, "cross-site request refused"},
		{"other origin", adminKey, map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden, "cross-site request refused"},
		{"no origin", adminKey, map[string]string{}, http.StatusForbidden, "cross-site request refused"},
	} {
		res, body := signIn(t, svc, c.key, c.h)
		if res.StatusCode != c.status || !strings.Contains(errMessage(t, body), c.want) {
			t.Errorf("%s: %d %s, want %d %q", c.name, res.StatusCode, body, c.status, c.want)
		}
		if len(res.Cookies()) != 0 {
			t.Errorf("%s: a refused sign-in set %v", c.name, res.Cookies())
		}
		for _, leak := range []string{"redis", "herald:", "sha", "127.0.0.1"} {
			if strings.Contains(strings.ToLower(body), leak) {
				t.Errorf("%s: the refusal says %q", c.name, body)
			}
		}
	}
	// The REST routes without a key or session: refused as before.
	res, body = dashReq(t, "GET", svc.base+"/v1/analytics/top", "", nil)
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(errMessage(t, body), "missing key") {
		t.Fatalf("no key: %d %s", res.StatusCode, body)
	}
}

// A session: the cookie holds a random id (never the key), Redis only its
// hash with a TTL; the REST routes accept it; a state-changing request with
// it passes only from the same origin; a bearer key needs no such check;
// sign-out ends it.
func TestDashboardSession(t *testing.T) {
	e := newEnv(t)
	svc := e.start(t)
	res, body := signIn(t, svc, adminKey, nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("sign-in: %d %s", res.StatusCode, body)
	}
	var c *http.Cookie
	for _, k := range res.Cookies() {
		if k.Name == "herald_dashboard" {
			c = k
		}
	}
	if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" ||
		c.MaxAge <= 0 || c.MaxAge > 30*60 || len(c.Value) < 40 || strings.Contains(c.Value, adminKey) {
		t.Fatalf("session cookie %+v (Set-Cookie %q)", c, res.Header.Values("Set-Cookie"))
	}
	ctx := context.Background()
	keys, err := e.rdb.Keys(ctx, "herald:{dashboard}:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != "herald:{dashboard}:session:"+auth.HashSecret(c.Value) || strings.Contains(keys[0], c.Value) {
		t.Fatalf("Redis keys %v", keys)
	}
	if v, _ := e.rdb.Get(ctx, keys[0]).Result(); strings.Contains(v, adminKey) || strings.Contains(v, c.Value) {
		t.Fatalf("Redis holds %q", v)
	}
	if ttl, _ := e.rdb.TTL(ctx, keys[0]).Result(); ttl <= 0 || ttl > 30*time.Minute {
		t.Fatalf("session TTL %v", ttl)
	}
	cookie := map[string]string{"Cookie": "herald_dashboard=" + c.Value}
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{"Cookie": cookie["Cookie"]}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	for _, p := range []string{"/v1/analytics/usage?granularity=GRANULARITY_MINUTE&start_time=" + time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "/v1/analytics/top?dimension=USAGE_DIMENSION_EVENT_TYPE", "/v1/analytics/deliveries", "/v1/quotas/status", "/v1/quotas", "/v1/usage"} {
		if res, body := dashReq(t, "GET", svc.base+p, "", cookie); res.StatusCode != http.StatusOK {
			t.Errorf("GET %s with the session: %d %s", p, res.StatusCode, body)
		}
	}

	// A state-changing request with the cookie: only from the same origin.
	quota := `{"quota":{"scope":"QUOTA_SCOPE_APPLICATION","subject":"app_a","metric":"USAGE_METRIC_PUBLISHED","period":"QUOTA_PERIOD_DAY","limit":"100","mode":"QUOTA_MODE_SOFT"}}`
	for name, h := range map[string]map[string]string{
		"no origin":      with(nil),
		"cross-site":     with(map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": svc.base}),
		"same-site":      with(map[string]string{"Sec-Fetch-Site": "same-site"}),
		"another origin": with(map[string]string{"Origin": "http://evil.example"}),
		"null origin":    with(map[string]string{"Origin": "null"}),
	} {
		res, body := dashReq(t, "PUT", svc.base+"/v1/quotas", quota, h)
		if res.StatusCode != http.StatusForbidden || !strings.Contains(errMessage(t, body), "cross-site request refused") {
			t.Errorf("PUT /v1/quotas with the cookie, %s: %d %s", name, res.StatusCode, body)
		}
	}
	if res, body := dashReq(t, "GET", svc.base+"/v1/quotas", "", cookie); res.StatusCode != http.StatusOK || strings.Contains(body, "app_a") {
		t.Fatalf("a refused PUT set a quota: %d %s", res.StatusCode, body)
	}
	for name, h := range map[string]map[string]string{
		"same-origin": with(map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}),
		"origin":      with(map[string]string{"Origin": svc.base, "Content-Type": "application/json"}),
		// A bearer key is no ambient credential: no origin check.
		"bearer": {"Authorization": "Bearer " + adminKey, "Content-Type": "application/json"},
	} {
		if res, body := dashReq(t, "PUT", svc.base+"/v1/quotas", quota, h); res.StatusCode != http.StatusOK {
			t.Errorf("PUT /v1/quotas, %s: %d %s", name, res.StatusCode, body)
		}
	}
	// A bearer application key still sees only its own, even beside the cookie.
	if res, body := dashReq(t, "GET", svc.base+"/v1/quotas/status", "", with(map[string]string{"Authorization": "Bearer hk_wrong_key_0123456789"})); res.StatusCode != http.StatusUnauthorized {
		t.Errorf("a bad bearer key beside a good cookie: %d %s", res.StatusCode, body)
	}

	// A forged session id.
	res, body = dashReq(t, "GET", svc.base+"/v1/quotas/status", "", map[string]string{"Cookie": "herald_dashboard=" + strings.Repeat("A", 43)})
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(errMessage(t, body), "sign in again") {
		t.Fatalf("forged session: %d %s", res.StatusCode, body)
	}

	// Sign-out: only from the same origin; then the cookie is dead.
	if res, body := dashReq(t, "DELETE", svc.base+"/dashboard/session", "", with(map[string]string{"Origin": "http://evil.example"})); res.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site sign-out: %d %s", res.StatusCode, body)
	}
	res, body = dashReq(t, "DELETE", svc.base+"/dashboard/session", "", with(map[string]string{"Sec-Fetch-Site": "same-origin"}))
	if res.StatusCode != http.StatusNoContent || len(res.Cookies()) != 1 || res.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("sign-out: %d %s %v", res.StatusCode, body, res.Header.Values("Set-Cookie"))
	}
	if n, _ := e.rdb.Exists(ctx, keys[0]).Result(); n != 0 {
		t.Fatal("the session outlived sign-out in Redis")
	}
	if res, body := dashReq(t, "GET", svc.base+"/v1/quotas/status", "", cookie); res.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after sign-out: %d %s", res.StatusCode, body)
	}
}

// A session expires with its TTL.
func TestDashboardSessionExpires(t *testing.T) {
	svc := newEnv(t).startWith(t, func(c *metering.Config) { c.DashboardSessionTTL = time.Second })
	res, body := signIn(t, svc, adminKey, nil)
	if res.StatusCode != http.StatusOK || len(res.Cookies()) != 1 || res.Cookies()[0].MaxAge != 1 {
		t.Fatalf("sign-in: %d %s %v", res.StatusCode, body, res.Header.Values("Set-Cookie"))
	}
	cookie := map[string]string{"Cookie": "herald_dashboard=" + res.Cookies()[0].Value}
	if res, body := dashReq(t, "GET", svc.base+"/v1/quotas/status", "", cookie); res.StatusCode != http.StatusOK {
		t.Fatalf("fresh session: %d %s", res.StatusCode, body)
	}
	time.Sleep(1500 * time.Millisecond)
	res, body = dashReq(t, "GET", svc.base+"/v1/quotas/status", "", cookie)
	if res.StatusCode != http.StatusUnauthorized || !strings.Contains(errMessage(t, body), "expired") {
		t.Fatalf("expired session: %d %s", res.StatusCode, body)
	}
}
