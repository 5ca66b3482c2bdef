package catalogview

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"go.yaml.in/yaml/v3"
)

func loadSample(context.Context) (*Catalog, error) { return sampleCatalog(), nil }

func get(t *testing.T, h http.Handler, target string, header ...string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestHandlerRoutes(t *testing.T) {
	h := Handler(loadSample, "http://127.0.0.1:7700")
	for _, c := range []struct {
		target      string
		status      int
		contentType string
		contains    string
	}{
		{"/asyncapi.json", 200, "application/json", `"asyncapi": "3.0.0"`},
		{"/asyncapi.yaml", 200, "application/yaml", "asyncapi: 3.0.0"},
		{"/catalog", 200, "text/html", "Herald event catalog"},
		{"/asyncapi.json?domain=billing&audience=public", 200, "application/json", `"billing.invoice.paid"`},
		{"/asyncapi.yaml?product=identity-basic", 200, "application/yaml", "identity.user.created"},
		{"/catalog?audience=partner", 200, "text/html", "billing.invoice.created"},
		{"/asyncapi.json?audience=everyone", 400, "text/plain", "must be public, partner or internal"},
		{"/asyncapi.yaml?domain=Not+A+Domain", 400, "text/plain", "not a domain name"},
		{"/catalog?colour=blue", 400, "text/plain", "unknown parameter"},
		{"/asyncapi.json?domain=nope", 404, "text/plain", `no domain "nope"`},
		{"/asyncapi.yaml?product=nope", 404, "text/plain", `no product "nope"`},
		{"/catalog?product=nope", 404, "text/plain", `no product "nope"`},
		{"/catalog?application=nope", 404, "text/plain", `no application "nope"`},
	} {
		res, body := get(t, h, c.target)
		if res.StatusCode != c.status || !strings.HasPrefix(res.Header.Get("Content-Type"), c.contentType) || !strings.Contains(body, c.contains) {
			t.Errorf("GET %s: %d %s, want %d %s containing %q:\n%.300s", c.target, res.StatusCode, res.Header.Get("Content-Type"),
				c.status, c.contentType, c.contains, body)
		}
	}
	req := httptest.NewRequest(http.MethodPost, "/asyncapi.json", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
	res, body := get(t, h, "/asyncapi.json?audience=public")
	if res.Header.Get("X-Herald-Revision") != "42" {
		t.Errorf("revision header = %q", res.Header.Get("X-Herald-Revision"))
	}
	if strings.Contains(body, "billing.invoice.created") || strings.Contains(body, "orders.order.placed") {
		t.Errorf("public document shows partner or internal types")
	}
}

func TestHandlerLoadError(t *testing.T) {
	h := Handler(func(context.Context) (*Catalog, error) { return nil, errors.New("redis down") }, "")
	res, body := get(t, h, "/asyncapi.json")
	// The loader's error stays in the log: the client gets the generic answer.
	if res.StatusCode != http.StatusServiceUnavailable || strings.Contains(body, "redis down") || !strings.Contains(body, "unavailable") {
		t.Errorf("%d %s", res.StatusCode, body)
	}
}

func TestHandlerAudienceBound(t *testing.T) {
	h := Handler(loadSample, "", WithAudience(func(r *http.Request) (registryv1.Audience, error) {
		switch r.Header.Get("Authorization") {
		case "Bearer admin":
			return registryv1.Audience_AUDIENCE_INTERNAL, nil
		case "Bearer partner":
			return registryv1.Audience_AUDIENCE_PARTNER, nil
		case "":
			return registryv1.Audience_AUDIENCE_PUBLIC, nil
		}
		return 0, errors.New("unknown key")
	}))
	// Anonymous callers see public types only, even when asking for more.
	_, body := get(t, h, "/asyncapi.json")
	if !strings.Contains(body, `"billing.invoice.paid"`) || strings.Contains(body, "billing.invoice.created") {
		t.Errorf("anonymous: not narrowed to public")
	}
	if res, _ := get(t, h, "/asyncapi.json?audience=internal"); res.StatusCode != http.StatusForbidden {
		t.Errorf("anonymous asking for internal: %d", res.StatusCode)
	}
	_, body = get(t, h, "/catalog", "Authorization", "Bearer partner")
	if !strings.Contains(body, "billing.invoice.created") || strings.Contains(body, "orders.order.placed") {
		t.Errorf("partner: not narrowed to partner")
	}
	if res, _ := get(t, h, "/asyncapi.yaml?audience=public", "Authorization", "Bearer partner"); res.StatusCode != 200 {
		t.Errorf("partner asking for public: %d", res.StatusCode)
	}
	_, body = get(t, h, "/asyncapi.json", "Authorization", "Bearer admin")
	if !strings.Contains(body, "orders.order.placed") {
		t.Errorf("admin: internal types missing")
	}
	if res, _ := get(t, h, "/asyncapi.json", "Authorization", "Bearer wrong"); res.StatusCode != http.StatusUnauthorized ||
		res.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("bad key: %d", res.StatusCode)
	}
}

// TestYAMLEqualsJSON: the YAML document has exactly the JSON document's
// content, for every filter.
func TestYAMLEqualsJSON(t *testing.T) {
	h := Handler(loadSample, "http://127.0.0.1:7700")
	for _, q := range []string{"", "?domain=billing", "?audience=public", "?product=payments-pro", "?application=app_partner"} {
		_, j := get(t, h, "/asyncapi.json"+q)
		_, y := get(t, h, "/asyncapi.yaml"+q)
		var fromJSON, fromYAML any
		if err := json.Unmarshal([]byte(j), &fromJSON); err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal([]byte(y), &fromYAML); err != nil {
			t.Fatalf("%s: %v\n%s", q, err, y)
		}
		// YAML decodes numbers as int or float64: compare through JSON.
		b, err := json.Marshal(fromYAML)
		if err != nil {
			t.Fatal(err)
		}
		var normalized any
		_ = json.Unmarshal(b, &normalized)
		if !reflect.DeepEqual(fromJSON, normalized) {
			t.Errorf("%s: YAML and JSON documents differ", q)
		}
	}
}

func TestJSONToYAMLKeepsTypes(t *testing.T) {
	in := `{"s":"true","n":"1.0","z":"012","b":true,"i":7,"f":1.5,"null":null,"e":"","multi":"a\nb","empty":{},"list":[],"colon":"a: b","hash":"#x","big":12345678901234567890}`
	y, err := JSONToYAML([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	_ = json.Unmarshal([]byte(in), &a)
	var fromYAML any
	if err := yaml.Unmarshal(y, &fromYAML); err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	j, _ := json.Marshal(fromYAML)
	_ = json.Unmarshal(j, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("round trip changed values:\n%s\n%v\n%v", y, a, b)
	}
}
