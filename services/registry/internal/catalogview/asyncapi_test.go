package catalogview

import (
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// generic marshals the document and reads it back as plain JSON values, as
// a consumer of the document would.
func generic(t *testing.T, d *Document) map[string]any {
	t.Helper()
	b, err := d.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// at follows a path of object keys and array indexes through plain JSON values.
func at(t *testing.T, v any, path ...any) any {
	t.Helper()
	for i, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("at %v: not an object", path[:i+1])
			}
			if v, ok = m[k]; !ok {
				t.Fatalf("at %v: no member %q (have %v)", path[:i+1], k, keys(m))
			}
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				t.Fatalf("at %v: not an array of more than %d", path[:i+1], k)
			}
			v = a[k]
		}
	}
	return v
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func tagNames(t *testing.T, v any) []string {
	t.Helper()
	var out []string
	for _, tag := range v.([]any) {
		out = append(out, tag.(map[string]any)["name"].(string))
	}
	return out
}

func TestAsyncAPIDocumentStructure(t *testing.T) {
	d, err := AsyncAPI(sampleCatalog(), Filter{}, "https://edge.example.com:8443/herald")
	if err != nil {
		t.Fatal(err)
	}
	doc := generic(t, d)

	if got := at(t, doc, "asyncapi"); got != "3.0.0" {
		t.Errorf("asyncapi = %v", got)
	}
	if got := at(t, doc, "info", "title"); got != "Herald event catalog" {
		t.Errorf("title = %v", got)
	}
	if got := at(t, doc, "info", "version"); got != "42" {
		t.Errorf("version = %v, want the catalog revision", got)
	}
	srv := at(t, doc, "servers", "edge").(map[string]any)
	if srv["host"] != "edge.example.com:8443" || srv["protocol"] != "https" || srv["pathname"] != "/herald/v1/stream" {
		t.Errorf("server = %v", srv)
	}
	if _, ok := srv["bindings"]; ok {
		t.Errorf("server has bindings")
	}
	if got := at(t, doc, "components", "securitySchemes", "bearerKey", "scheme"); got != "bearer" {
		t.Errorf("bearer scheme = %v", got)
	}

	// One channel, one message and one payload schema per event type.
	wantTypes := []string{"billing.invoice.created", "billing.invoice.paid", "billing.refund.issued", "identity.user.created", "orders.order.placed"}
	if got := keys(at(t, doc, "channels").(map[string]any)); !slices.Equal(got, wantTypes) {
		t.Errorf("channels = %v, want %v", got, wantTypes)
	}
	if got := keys(at(t, doc, "components", "messages").(map[string]any)); !slices.Equal(got, wantTypes) {
		t.Errorf("messages = %v", got)
	}
	for _, name := range wantTypes {
		if got := at(t, doc, "channels", name, "address"); got != name {
			t.Errorf("%s address = %v", name, got)
		}
		if got := at(t, doc, "channels", name, "messages", name, "$ref"); got != "#/components/messages/"+name {
			t.Errorf("%s channel message = %v", name, got)
		}
		if got := at(t, doc, "components", "messages", name, "payload", "$ref"); got != "#/components/schemas/"+name {
			t.Errorf("%s payload = %v", name, got)
		}
		if got := at(t, doc, "components", "schemas", name, "schemaFormat"); got != SchemaFormat {
			t.Errorf("%s schemaFormat = %v", name, got)
		}
		if got := at(t, doc, "components", "messages", name, "headers", "allOf", 1, "properties", "type", "const"); got != name {
			t.Errorf("%s headers type const = %v", name, got)
		}
		recv := at(t, doc, "operations", name+".receive").(map[string]any)
		if recv["action"] != "receive" || at(t, recv, "channel", "$ref") != "#/channels/"+name ||
			at(t, recv, "messages", 0, "$ref") != "#/channels/"+name+"/messages/"+name {
			t.Errorf("%s receive operation = %v", name, recv)
		}
	}
	// Every component, channel and operation key is a valid AsyncAPI key.
	for _, section := range []any{at(t, doc, "channels"), at(t, doc, "operations"), at(t, doc, "components", "schemas"),
		at(t, doc, "components", "messages"), at(t, doc, "components", "securitySchemes")} {
		for k := range section.(map[string]any) {
			if !componentKey.MatchString(k) {
				t.Errorf("key %q does not match %s", k, componentKey)
			}
		}
	}

	// Producers send active and deprecated types, not retired ones.
	ops := at(t, doc, "operations").(map[string]any)
	if _, ok := ops["billing.invoice.paid.send"]; !ok {
		t.Error("no send operation for an active type")
	}
	if op, ok := ops["billing.invoice.created.send"].(map[string]any); !ok || op["action"] != "send" {
		t.Error("no send operation for a deprecated type")
	}
	if _, ok := ops["billing.refund.issued.send"]; ok {
		t.Error("a retired type has a send operation")
	}
	if len(ops) != 9 {
		t.Errorf("%d operations, want 9 (5 receive, 4 send)", len(ops))
	}

	// Tags: domain, visibility, lifecycle, products.
	msg := at(t, doc, "components", "messages", "billing.invoice.created").(map[string]any)
	want := []string{"domain:billing", "visibility:partner", "lifecycle:deprecated", "product:everything", "product:payments-pro"}
	if got := tagNames(t, msg["tags"]); !slices.Equal(got, want) {
		t.Errorf("tags = %v, want %v", got, want)
	}
	if got := tagNames(t, at(t, doc, "operations", "billing.invoice.created.receive", "tags")); !slices.Equal(got, want) {
		t.Errorf("operation tags = %v, want %v", got, want)
	}
	if got := tagNames(t, at(t, doc, "components", "messages", "billing.refund.issued", "tags")); !slices.Contains(got, "visibility:internal") {
		t.Errorf("unset visibility should be tagged internal: %v", got)
	}
	// Deprecation: description notes the sunset date, extensions carry it.
	for _, desc := range []any{msg["description"], at(t, doc, "operations", "billing.invoice.created.receive", "description"),
		at(t, doc, "operations", "billing.invoice.created.send", "description"), at(t, doc, "channels", "billing.invoice.created", "description")} {
		if s, _ := desc.(string); !strings.HasPrefix(s, "DEPRECATED") || !strings.Contains(s, "2031-06-30T00:00:00Z") {
			t.Errorf("deprecated description = %q", desc)
		}
	}
	if msg["x-herald-sunset-time"] != "2031-06-30T00:00:00Z" || msg["x-herald-lifecycle"] != "deprecated" {
		t.Errorf("lifecycle extensions = %v, %v", msg["x-herald-lifecycle"], msg["x-herald-sunset-time"])
	}
	if got := at(t, doc, "info", "tags"); len(got.([]any)) != 4 {
		t.Errorf("info tags = %v, want the 4 domains", got)
	}

	// The payload is the latest schema version, with its key order and its
	// internal references turned into document references.
	paid := at(t, doc, "components", "schemas", "billing.invoice.paid", "schema")
	if got := at(t, doc, "components", "messages", "billing.invoice.paid", "x-herald-schema-version"); got != 3.0 {
		t.Errorf("schema version = %v", got)
	}
	base := "#/components/schemas/billing.invoice.paid/schema"
	for _, c := range []struct {
		path []any
		want string
	}{
		{[]any{"properties", "total", "$ref"}, base + "/$defs/money"},
		{[]any{"properties", "lines", "items", "$ref"}, base + "/$defs/line"},
		{[]any{"$defs", "line", "properties", "price", "$ref"}, base + "/$defs/money"},
		{[]any{"properties", "payer", "$ref"}, base + "/$defs/party"},
		{[]any{"properties", "weird key/with~chars", "$ref"}, base + "/$defs/odd~1name"},
		{[]any{"properties", "spaced", "$ref"}, base + "/$defs/with%20space"},
	} {
		if got := at(t, paid, c.path...); got != c.want {
			t.Errorf("%v = %v, want %v", c.path, got, c.want)
		}
	}
	if got := at(t, paid, "properties", "period", "prefixItems", 1, "format"); got != "date" {
		t.Errorf("prefixItems lost: %v", got)
	}
	user := at(t, doc, "components", "schemas", "identity.user.created", "schema").(map[string]any)
	ubase := "#/components/schemas/identity.user.created/schema"
	for _, c := range []struct {
		path []any
		want string
	}{
		{[]any{"properties", "address", "$ref"}, ubase + "/$defs/address"},
		{[]any{"properties", "referrer", "$ref"}, ubase},
		{[]any{"properties", "tags", "$ref"}, ubase + "/$defs/tags"},
		{[]any{"$defs", "address", "properties", "next", "$ref"}, ubase + "/$defs/address"},
	} {
		if got := at(t, user, c.path...); got != c.want {
			t.Errorf("%v = %v, want %v", c.path, got, c.want)
		}
	}
	if _, ok := user["$id"]; ok {
		t.Error("$id kept: it would move the base of the rewritten references")
	}
	if got := at(t, doc, "components", "schemas", "orders.order.placed", "schema"); got != true {
		t.Errorf("boolean schema = %v", got)
	}
	// Key order of the schema is the author's.
	b, _ := d.JSON()
	if i, j := strings.Index(string(b), `"invoice_id": {`), strings.Index(string(b), `"lines": {`); i < 0 || j < 0 || i > j {
		t.Errorf("schema key order not kept")
	}

	// Examples: those of the latest version, with CloudEvent headers.
	exs := at(t, doc, "components", "messages", "billing.invoice.paid", "examples").([]any)
	if len(exs) != 1 || at(t, exs, 0, "name") != "card" || at(t, exs, 0, "payload", "total", "amount") != 1250.0 {
		t.Errorf("examples = %v", exs)
	}
	if at(t, exs, 0, "headers", "type") != "billing.invoice.paid" {
		t.Errorf("example headers = %v", at(t, exs, 0, "headers"))
	}
}

func TestAsyncAPIWithoutServer(t *testing.T) {
	d, err := AsyncAPI(sampleCatalog(), Filter{}, "")
	if err != nil {
		t.Fatal(err)
	}
	doc := generic(t, d)
	if _, ok := doc["servers"]; ok {
		t.Error("servers without a server URL")
	}
	if _, err := AsyncAPI(sampleCatalog(), Filter{}, "ftp://x"); err == nil {
		t.Error("ftp server URL accepted")
	}
}

func TestAsyncAPIEmptyCatalog(t *testing.T) {
	for _, c := range []*Catalog{nil, {}} {
		d, err := AsyncAPI(c, Filter{}, "http://127.0.0.1:7700")
		if err != nil {
			t.Fatal(err)
		}
		doc := generic(t, d)
		if len(at(t, doc, "channels").(map[string]any)) != 0 || len(at(t, doc, "operations").(map[string]any)) != 0 {
			t.Errorf("empty catalog has channels or operations")
		}
	}
}

func TestAsyncAPIFallsBackToEventTypeSchema(t *testing.T) {
	c := &Catalog{Revision: 1, EventTypes: []*registryv1.EventType{
		{Name: "a.b.c", Schema: `{"type":"object","properties":{"x":{"$ref":"#/$defs/x"}},"$defs":{"x":{"type":"string"}}}`, SchemaVersion: 2},
	}}
	d, err := AsyncAPI(c, Filter{}, "")
	if err != nil {
		t.Fatal(err)
	}
	doc := generic(t, d)
	if got := at(t, doc, "components", "schemas", "a.b.c", "schema", "properties", "x", "$ref"); got != "#/components/schemas/a.b.c/schema/$defs/x" {
		t.Errorf("ref = %v", got)
	}
	if got := at(t, doc, "components", "messages", "a.b.c", "x-herald-schema-version"); got != 2.0 {
		t.Errorf("version = %v", got)
	}
}

func TestEmbedSchemaReferences(t *testing.T) {
	for _, c := range []struct {
		name, schema, want string
	}{
		{"root", `{"$ref":"#"}`, `{"$ref":"#/s"}`},
		{"pointer", `{"$ref":"#/$defs/a","$defs":{"a":{}}}`, `{"$ref":"#/s/$defs/a","$defs":{"a":{}}}`},
		{"anchor", `{"$ref":"#x","$defs":{"a":{"$anchor":"x"}}}`, `{"$ref":"#/s/$defs/a","$defs":{"a":{"$anchor":"x"}}}`},
		{"draft-07 id anchor", `{"$ref":"#x","definitions":{"a":{"$id":"#x"}}}`, `{"$ref":"#/s/definitions/a","definitions":{"a":{}}}`},
		{"nested resource", `{"$id":"https://h.test/a/root.json","items":{"$ref":"b.json#/properties/n"},"$defs":{"b":{"$id":"b.json","properties":{"n":{"$ref":"#"}}}}}`,
			`{"items":{"$ref":"#/s/$defs/b/properties/n"},"$defs":{"b":{"properties":{"n":{"$ref":"#/s/$defs/b"}}}}}`},
		{"escaped pointer", `{"$ref":"#/$defs/a~1b","$defs":{"a/b":{}}}`, `{"$ref":"#/s/$defs/a~1b","$defs":{"a/b":{}}}`},
		{"unresolvable left alone", `{"$ref":"https://elsewhere.test/x.json"}`, `{"$ref":"https://elsewhere.test/x.json"}`},
		{"const data untouched", `{"const":{"a":"<b>"}}`, `{"const":{"a":"<b>"}}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := embedSchema(c.schema, "a.b.c", "/s")
			if err != nil {
				t.Fatal(err)
			}
			got, err := marshalNoEscape(v)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
	if _, err := embedSchema(`{"a":`, "a.b.c", "/s"); err == nil {
		t.Error("truncated JSON accepted")
	}
	if _, err := embedSchema(`{} {}`, "a.b.c", "/s"); err == nil {
		t.Error("trailing data accepted")
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		720 * time.Hour: "30 days", 24 * time.Hour: "1 day", 90 * time.Minute: "1h30m", 2 * time.Hour: "2h",
		36 * time.Hour: "36h", 45 * time.Second: "45s", 10 * time.Minute: "10m",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("%v: %q, want %q", d, got, want)
		}
	}
}
