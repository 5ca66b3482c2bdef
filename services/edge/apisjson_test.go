package edge_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge"
	"github.com/heraldmesh/herald/services/edge/internal/discovery"
	"github.com/heraldmesh/herald/services/registry"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

// apisJSONSchema compiles the vendored APIs.json JSON Schema (see
// testdata/apisjson/README.md), formats asserted.
func apisJSONSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	raw, err := os.ReadFile("testdata/apisjson/schema_0.23.yml")
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	const loc = "https://github.com/apis-json/api-json/blob/develop/spec/schema_0.23.yml"
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	if err := c.AddResource(loc, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(loc)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// validateAPIsJSON validates a document's JSON against the schema.
func validateAPIsJSON(s *jsonschema.Schema, body []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return err
	}
	return s.Validate(inst)
}

// property finds a property of an API by type and name ("" matches any name).
func property(api discovery.API, typ, name string) (discovery.Property, bool) {
	for _, p := range api.Properties {
		if p.Type == typ && (name == "" || p.Name == name) {
			return p, true
		}
	}
	return discovery.Property{}, false
}

func apiNamed(d discovery.Document, name string) (discovery.API, bool) {
	for _, a := range d.APIs {
		if a.Name == name {
			return a, true
		}
	}
	return discovery.API{}, false
}

// GET /apis.json answers a key with an APIs.json document that validates
// against the specification's schema and links the services' public URLs:
// the caller's AsyncAPI document (which answers with the same key), the
// metering OpenAPI document, every gRPC service with reflection, the SSE,
// poll and WebSub endpoints, and the portal. An application without
// publish grants gets no publishing API; the operator gets everything.
// Without a key, or with a revoked one, it is 401 with no internals.
func TestAPIsJSON(t *testing.T) {
	// The edge and the registry keep their defaults (their real
	// addresses), so that the links can be followed.
	e := startDiscovery(t, func(c *edge.Config) {
		c.RouterPublicURL = "https://publish.example.com"
		c.MeteringPublicURL = "https://usage.example.com/herald/"
	})
	schema := apisJSONSchema(t)
	ctx := context.Background()
	_, key, keyID := e.app("discoverer", "billing.*")

	fetch := func(key string) (*http.Response, []byte) {
		t.Helper()
		res, err := e.get(ctx, "/apis.json", key, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res, body
	}
	res, body := fetch(key)
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("apis.json: %d %q %s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	if cc := res.Header.Get("Cache-Control"); !strings.Contains(cc, "private") {
		t.Errorf("Cache-Control %q: the document is the caller's", cc)
	}
	if err := validateAPIsJSON(schema, body); err != nil {
		t.Fatalf("the document does not validate against APIs.json 0.23: %v\n%s", err, body)
	}
	var d discovery.Document
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	today := time.Now().UTC().Format(time.DateOnly)
	if d.URL != e.base+"/apis.json" || d.SpecificationVersion != "0.23" || d.AID != "127.0.0.1:herald" || d.Modified != today || d.Created > d.Modified || d.Visibility != "Private" {
		t.Errorf("root: url %q version %q aid %q created %q modified %q visibility %q", d.URL, d.SpecificationVersion, d.AID, d.Created, d.Modified, d.Visibility)
	}
	var names []string
	for _, a := range d.APIs {
		names = append(names, a.Name)
	}
	if !slices.Equal(names, []string{"Herald catalog", "Herald event delivery", "Herald usage and billing"}) {
		t.Fatalf("APIs for a subscriber %v: the catalog, delivery and metering, no publishing", names)
	}

	// The catalog: the registry's real address, its AsyncAPI document
	// answering the same key, its gRPC service and reflection.
	cat, _ := apiNamed(d, "Herald catalog")
	asyncAPI, ok := property(cat, "AsyncAPI", "AsyncAPI 3.0 (JSON)")
	if !ok || asyncAPI.URL != cat.BaseURL+"/asyncapi.json" || cat.HumanURL != cat.BaseURL+"/catalog" {
		t.Fatalf("catalog: %+v", cat)
	}
	doc := get(t, asyncAPI.URL, key)
	var aa map[string]any
	if err := json.Unmarshal(doc, &aa); err != nil || aa["asyncapi"] != "3.0.0" {
		t.Fatalf("the AsyncAPI link %s answered %s", asyncAPI.URL, doc)
	}
	if !strings.Contains(string(doc), paid) || !strings.Contains(string(doc), e.addr) {
		t.Errorf("the caller's AsyncAPI document lacks its type or the edge as its server: %s", doc)
	}
	if p, ok := property(cat, discovery.TypeGRPC, "herald.registry.v1.RegistryService"); !ok || p.URL != cat.BaseURL+"/herald.registry.v1.RegistryService/" {
		t.Errorf("RegistryService: %+v", p)
	}
	if p, ok := property(cat, discovery.TypeGRPCReflection, ""); !ok || p.URL != cat.BaseURL+"/grpc.reflection.v1.ServerReflection/" {
		t.Errorf("registry reflection: %+v", p)
	}
	if _, err := e.reg.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{})); err != nil || !strings.HasPrefix(cat.BaseURL, "http://127.0.0.1:") {
		t.Errorf("registry base URL %q (default: its address): %v", cat.BaseURL, err)
	}

	// Delivery: the edge's endpoints, followed with the key.
	del, _ := apiNamed(d, "Herald event delivery")
	if del.BaseURL != e.base || del.HumanURL != e.base+"/portal/" {
		t.Errorf("delivery base %q human %q", del.BaseURL, del.HumanURL)
	}
	for typ, want := range map[string]string{
		discovery.TypeSSE: e.base + "/v1/stream", discovery.TypePoll: e.base + "/v1/poll",
		discovery.TypeWebSubHub: e.base + "/websub", discovery.TypeWebSubTopics: e.base + "/v1/topics/",
		"Portal": e.base + "/portal/", "Console": e.base + "/", discovery.TypeGRPCReflection: e.base + "/grpc.reflection.v1.ServerReflection/",
	} {
		if p, ok := property(del, typ, ""); !ok || p.URL != want {
			t.Errorf("delivery %s: %+v, want %s", typ, p, want)
		}
	}
	for _, svc := range []string{"herald.edge.v1.EdgeService", "herald.edge.v1.WebhookService"} {
		if p, ok := property(del, discovery.TypeGRPC, svc); !ok || p.URL != e.base+"/"+svc+"/" {
			t.Errorf("%s: %+v", svc, p)
		}
	}
	poll, _ := property(del, discovery.TypePoll, "")
	if b := get(t, poll.URL+"?types=billing.*&wait=0s", key); !strings.Contains(string(b), `"cursor"`) {
		t.Errorf("the poll link answered %s", b)
	}

	// Metering: its public URL as set (trailing slash dropped).
	met, _ := apiNamed(d, "Herald usage and billing")
	if p, ok := property(met, "OpenAPI", ""); !ok || met.BaseURL != "https://usage.example.com/herald" || p.URL != "https://usage.example.com/herald/openapi.json" {
		t.Errorf("metering: %+v", met)
	}
	for _, svc := range []string{"herald.metering.v1.MeteringService", "herald.metering.v1.QuotaService", "herald.metering.v1.BillingService"} {
		if p, ok := property(met, discovery.TypeGRPC, svc); !ok || p.URL != "https://usage.example.com/herald/"+svc+"/" {
			t.Errorf("%s: %+v", svc, p)
		}
	}
	if _, ok := property(met, "Console", ""); ok || met.HumanURL != e.base+"/portal/" {
		t.Errorf("an application is shown the operators' dashboard: %+v", met)
	}
	if len(d.Common) == 0 || d.Common[0].Type != "Portal" || d.Common[0].URL != e.base+"/portal/" {
		t.Errorf("common: %+v", d.Common)
	}

	// The operator: every API, the router at its public URL, the dashboard.
	res, body = fetch(adminKey)
	if res.StatusCode != 200 {
		t.Fatalf("operator: %d %s", res.StatusCode, body)
	}
	if err := validateAPIsJSON(schema, body); err != nil {
		t.Fatalf("the operator's document does not validate: %v\n%s", err, body)
	}
	var all discovery.Document
	if err := json.Unmarshal(body, &all); err != nil {
		t.Fatal(err)
	}
	pub, ok := apiNamed(all, "Herald publishing")
	if p, found := property(pub, discovery.TypeGRPC, "herald.router.v1.RouterService"); !ok || !found || pub.BaseURL != "https://publish.example.com" ||
		p.URL != "https://publish.example.com/herald.router.v1.RouterService/" || len(all.APIs) != 4 {
		t.Errorf("operator's APIs: %+v", all.APIs)
	}
	if m, _ := apiNamed(all, "Herald usage and billing"); m.HumanURL != "https://usage.example.com/herald/dashboard" {
		t.Errorf("operator's metering: %+v", m)
	}

	// Refusals: no key, an unknown key, a revoked key.
	e.revoke(keyID)
	for what, k := range map[string]string{"no key": "", "unknown key": "hk_" + strings.Repeat("x", 43), "revoked key": key} {
		res, body := fetch(k)
		if res.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: %d %s", what, res.StatusCode, body)
		}
		for _, internal := range []string{"127.0.0.1", "redis", "dial", ".go:", "hash", "apis"} {
			if strings.Contains(strings.ToLower(string(body)), internal) {
				t.Errorf("%s: the error carries %q: %s", what, internal, body)
			}
		}
	}
}

// startDiscovery is startRT with the edge on an address known in advance,
// which the registry puts in its AsyncAPI documents' servers.
func startDiscovery(t *testing.T, set func(*edge.Config)) *rt {
	t.Helper()
	srv := testutil.Redis(t)
	common := config.Common{RedisURL: srv.URL(), AdminKey: adminKey, EdgeAddr: testutil.FreeAddr(t)}
	reg, err := registry.New(registry.Config{Common: common, Addr: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	common.RegistryAddr = testutil.Serve(t, reg)
	e := &rt{t: t, rdb: testutil.RedisClient(t, srv)}
	e.reg = registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(common.RegistryAddr), rpc.ClientOptions(adminKey)...)
	testutil.Eventually(t, 20*time.Second, func() bool {
		_, err := e.reg.CreateEventType(context.Background(), connect.NewRequest(&registryv1.CreateEventTypeRequest{
			EventType: &registryv1.EventType{Name: paid, Schema: `{"type":"object"}`},
		}))
		return err == nil
	}, "the registry takes an event type")
	cfg := edge.Config{Common: common, Addr: common.EdgeAddr, Logger: slog.New(slog.DiscardHandler)}
	set(&cfg)
	svc, err := edge.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.addr = testutil.Serve(t, svc)
	e.base = rpc.BaseURL(e.addr)
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

// get fetches url with a key and returns the body of a 200.
func get(t *testing.T, url, key string) []byte {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, res.StatusCode, b)
	}
	return b
}

// The schema check can fail: documents broken in ways the specification
// forbids are refused, and every caller's document passes.
func TestAPIsJSONSchemaRefusesBrokenDocuments(t *testing.T) {
	schema := apisJSONSchema(t)
	links := discovery.Links{Edge: "https://events.example.com", Registry: "https://catalog.example.com", Router: rpc.BaseURL("127.0.0.1:7701"), Metering: "https://usage.example.com"}
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	for _, c := range []discovery.Caller{
		{Admin: true}, {Subscribe: true, Audience: registryv1.Audience_AUDIENCE_PUBLIC},
		{Publish: true, Audience: registryv1.Audience_AUDIENCE_PARTNER}, {},
	} {
		b, err := json.Marshal(discovery.Build(links, c, now, now))
		if err != nil {
			t.Fatal(err)
		}
		if err := validateAPIsJSON(schema, b); err != nil {
			t.Errorf("%+v: %v\n%s", c, err, b)
		}
	}
	// What each caller is shown: publishing with a publish grant, delivery
	// with a subscribe grant, the catalog and metering to everyone.
	for _, tc := range []struct {
		c    discovery.Caller
		apis []string
		vis  string
	}{
		{discovery.Caller{Admin: true}, []string{"Herald catalog", "Herald publishing", "Herald event delivery", "Herald usage and billing"}, "Private"},
		{discovery.Caller{Publish: true, Audience: registryv1.Audience_AUDIENCE_PARTNER}, []string{"Herald catalog", "Herald publishing", "Herald usage and billing"}, "Partner"},
		{discovery.Caller{Subscribe: true, Audience: registryv1.Audience_AUDIENCE_PUBLIC}, []string{"Herald catalog", "Herald event delivery", "Herald usage and billing"}, "Public"},
		{discovery.Caller{}, []string{"Herald catalog", "Herald usage and billing"}, "Private"},
	} {
		d := discovery.Build(links, tc.c, now, now)
		var names []string
		for _, a := range d.APIs {
			names = append(names, a.Name)
		}
		if !slices.Equal(names, tc.apis) || d.Visibility != tc.vis || d.Created != "2026-12-03" || d.AID != "events.example.com:herald" {
			t.Errorf("%+v: %v %q %q %q", tc.c, names, d.Visibility, d.Created, d.AID)
		}
	}
	good, _ := json.Marshal(discovery.Build(links, discovery.Caller{Admin: true}, now, now))
	for name, breakIt := range map[string]func(d map[string]any){
		"no maintainers":            func(d map[string]any) { delete(d, "maintainers") },
		"no apis":                   func(d map[string]any) { delete(d, "apis") },
		"an unknown root member":    func(d map[string]any) { d["owner"] = "me" },
		"a date not in ISO form":    func(d map[string]any) { d["created"] = "03/12/2026" },
		"a name too long":           func(d map[string]any) { d["name"] = strings.Repeat("Herald ", 10) },
		"a visibility not in enum":  func(d map[string]any) { d["visibility"] = "Tenant" },
		"an API without a baseURL":  func(d map[string]any) { delete(api0(d), "baseURL") },
		"an API without an image":   func(d map[string]any) { delete(api0(d), "image") },
		"a property type unknown":   func(d map[string]any) { prop0(d)["type"] = "grpc" },
		"a property with url+data":  func(d map[string]any) { prop0(d)["data"] = map[string]any{"a": "b"} },
		"a property without a link": func(d map[string]any) { delete(prop0(d), "url") },
		"a maintainer without FN":   func(d map[string]any) { d["maintainers"] = []any{map[string]any{"url": "https://x.example"}} },
	} {
		var d map[string]any
		if err := json.Unmarshal(good, &d); err != nil {
			t.Fatal(err)
		}
		breakIt(d)
		b, _ := json.Marshal(d)
		if err := validateAPIsJSON(schema, b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func api0(d map[string]any) map[string]any { return d["apis"].([]any)[0].(map[string]any) }
func prop0(d map[string]any) map[string]any {
	return api0(d)["properties"].([]any)[0].(map[string]any)
}

// A malformed public URL is refused at start, naming its setting.
func TestAPIsJSONPublicURLs(t *testing.T) {
	for name, set := range map[string]func(*edge.Config){
		"HERALD_PUBLIC_URL":          func(c *edge.Config) { c.PublicURL = "events.example.com" },
		"HERALD_REGISTRY_PUBLIC_URL": func(c *edge.Config) { c.RegistryPublicURL = "ftp://catalog.example.com" },
		"HERALD_ROUTER_PUBLIC_URL":   func(c *edge.Config) { c.RouterPublicURL = "https://publish.example.com/?x=1" },
		"HERALD_METERING_PUBLIC_URL": func(c *edge.Config) { c.MeteringPublicURL = "https://" },
	} {
		cfg := edge.Config{Addr: "127.0.0.1:0"}
		cfg.RedisURL, cfg.AdminKey = "redis://127.0.0.1:1/0", adminKey
		set(&cfg)
		if _, err := edge.New(cfg); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
