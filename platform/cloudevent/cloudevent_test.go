package cloudevent

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type attrs = map[string]*eventv1.CloudEvent_CloudEventAttributeValue

func str(s string) *eventv1.CloudEvent_CloudEventAttributeValue {
	return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: s}}
}

func valid() *eventv1.CloudEvent {
	return &eventv1.CloudEvent{Id: "e1", Source: "/billing", SpecVersion: SpecVersion, Type: "billing.invoice.paid"}
}

func TestValidate(t *testing.T) {
	with := func(f func(ev *eventv1.CloudEvent)) *eventv1.CloudEvent {
		ev := valid()
		f(ev)
		return ev
	}
	withAttr := func(name string) *eventv1.CloudEvent {
		return with(func(ev *eventv1.CloudEvent) { ev.Attributes = attrs{name: str("v")} })
	}
	cases := []struct {
		name    string
		ev      *eventv1.CloudEvent
		wantErr string // substring; "" means valid
	}{
		{"minimal", valid(), ""},
		{"uri source", with(func(ev *eventv1.CloudEvent) { ev.Source = "https://example.com/billing?x=1" }), ""},
		{"urn source", with(func(ev *eventv1.CloudEvent) { ev.Source = "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66" }), ""},
		{"extensions", with(func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"subject": str("s"), "traceparent": str("t"), "datacontenttype": str("application/json"), "x1": str("")}
		}), ""},
		{"nil", nil, "empty"},
		{"missing id", with(func(ev *eventv1.CloudEvent) { ev.Id = "" }), "id is required"},
		{"long id", with(func(ev *eventv1.CloudEvent) { ev.Id = strings.Repeat("i", 257) }), "id is longer"},
		{"id of 256", with(func(ev *eventv1.CloudEvent) { ev.Id = strings.Repeat("i", 256) }), ""},
		{"missing source", with(func(ev *eventv1.CloudEvent) { ev.Source = "" }), "source is required"},
		{"long source", with(func(ev *eventv1.CloudEvent) { ev.Source = "/" + strings.Repeat("s", 1024) }), "source is longer"},
		{"bad source", with(func(ev *eventv1.CloudEvent) { ev.Source = "/billing%zz" }), "URI-reference"},
		{"missing type", with(func(ev *eventv1.CloudEvent) { ev.Type = "" }), "type is required"},
		{"missing spec version", with(func(ev *eventv1.CloudEvent) { ev.SpecVersion = "" }), "spec_version"},
		{"old spec version", with(func(ev *eventv1.CloudEvent) { ev.SpecVersion = "0.3" }), "spec_version"},
		{"spec version 1.0.0", with(func(ev *eventv1.CloudEvent) { ev.SpecVersion = "1.0.0" }), "spec_version"},
		{"empty attribute name", withAttr(""), "attribute name"},
		{"upper-case attribute", withAttr("Subject"), "attribute name"},
		{"underscore attribute", withAttr("my_ext"), "attribute name"},
		{"dash attribute", withAttr("my-ext"), "attribute name"},
		{"long attribute", withAttr(strings.Repeat("a", 21)), "attribute name"},
		{"attribute of 20", withAttr(strings.Repeat("a", 20)), ""},
		{"non-ascii attribute", withAttr("ä"), "attribute name"},
		{"reserved id", withAttr("id"), "top-level"},
		{"reserved source", withAttr("source"), "top-level"},
		{"reserved specversion", withAttr("specversion"), "top-level"},
		{"reserved type", withAttr("type"), "top-level"},
		{"reserved data", withAttr("data"), "top-level"},
		{"reserved data_base64", withAttr("data_base64"), "attribute"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Validate(c.ev)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("Validate accepted the event, want an error containing %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("Validate = %q, want it to contain %q", err, c.wantErr)
			}
		})
	}
}

func TestIsJSON(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/json":                 true,
		"application/json; charset=utf-8":  true,
		"APPLICATION/JSON":                 true,
		"text/json":                        true,
		"application/cloudevents+json":     true,
		"application/vnd.api+json":         true,
		"application/protobuf":             false,
		"text/plain":                       false,
		"application/jsonx":                false,
		"":                                 false,
		"not a media type;;":               false,
		"application/json-patch+json; v=1": true,
	} {
		if got := IsJSON(ct); got != want {
			t.Errorf("IsJSON(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestJSONDataAndContentType(t *testing.T) {
	ev := valid()
	if ct := ContentType(ev); ct != "" {
		t.Fatalf("ContentType without attribute = %q", ct)
	}
	if _, ok := JSONData(ev); ok {
		t.Fatal("JSONData of an event without data reported JSON")
	}
	ev.Data = &eventv1.CloudEvent_TextData{TextData: `{"a":1}`}
	if d, ok := JSONData(ev); !ok || string(d) != `{"a":1}` {
		t.Fatalf("JSONData(text, no content type) = %q, %v", d, ok)
	}
	ev.Attributes = attrs{"datacontenttype": str("text/plain")}
	if ct := ContentType(ev); ct != "text/plain" {
		t.Fatalf("ContentType = %q", ct)
	}
	if _, ok := JSONData(ev); ok {
		t.Fatal("JSONData(text/plain) reported JSON")
	}
	ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte(`[1]`)}
	if _, ok := JSONData(ev); ok {
		t.Fatal("JSONData(binary, text/plain) reported JSON")
	}
	ev.Attributes = nil
	if _, ok := JSONData(ev); ok {
		t.Fatal("JSONData(binary, no content type) reported JSON")
	}
	ev.Attributes = attrs{"datacontenttype": str("application/json")}
	if d, ok := JSONData(ev); !ok || string(d) != `[1]` {
		t.Fatalf("JSONData(binary, application/json) = %q, %v", d, ok)
	}
}

// render marshals ev and checks the parts every rendering must have.
func render(t *testing.T, ev *eventv1.CloudEvent) map[string]any {
	t.Helper()
	b, err := MarshalJSON(ev)
	if err != nil {
		t.Fatalf("MarshalJSON: %v", err)
	}
	if !json.Valid(b) || !utf8.Valid(b) {
		t.Fatalf("MarshalJSON produced invalid JSON: %s", b)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	for k, want := range map[string]string{"specversion": ev.GetSpecVersion(), "id": ev.GetId(), "source": ev.GetSource(), "type": ev.GetType()} {
		if got, _ := m[k].(string); got != want {
			t.Fatalf("%s = %v, want %q in %s", k, m[k], want, b)
		}
	}
	if _, both := m["data_base64"]; both && m["data"] != nil {
		t.Fatalf("both data and data_base64 in %s", b)
	}
	return m
}

func decodeJSON(t *testing.T, s string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMarshalJSON(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 3600))
	cases := []struct {
		name  string
		data  func(ev *eventv1.CloudEvent)
		check func(t *testing.T, m map[string]any)
	}{
		{"no data", func(*eventv1.CloudEvent) {}, func(t *testing.T, m map[string]any) {
			if _, ok := m["data"]; ok {
				t.Errorf("data present: %v", m)
			}
			if _, ok := m["data_base64"]; ok {
				t.Errorf("data_base64 present: %v", m)
			}
			if len(m) != 4 {
				t.Errorf("want only the four required attributes: %v", m)
			}
		}},
		{"text JSON", func(ev *eventv1.CloudEvent) {
			ev.Data = &eventv1.CloudEvent_TextData{TextData: `{"invoice_id":"in_1","amount":5,"lines":[1,2]}`}
		}, func(t *testing.T, m map[string]any) {
			if want := decodeJSON(t, `{"invoice_id":"in_1","amount":5,"lines":[1,2]}`); !reflect.DeepEqual(m["data"], want) {
				t.Errorf("data = %#v, want the JSON value %#v", m["data"], want)
			}
			if m["datacontenttype"] != "application/json" {
				t.Errorf("datacontenttype = %v, want application/json", m["datacontenttype"])
			}
		}},
		{"text JSON scalar", func(ev *eventv1.CloudEvent) {
			ev.Data = &eventv1.CloudEvent_TextData{TextData: ` "quoted" `}
		}, func(t *testing.T, m map[string]any) {
			if m["data"] != "quoted" {
				t.Errorf("data = %#v, want the JSON string", m["data"])
			}
		}},
		{"text JSON with JSON content type", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"datacontenttype": str("application/vnd.x+json; charset=utf-8")}
			ev.Data = &eventv1.CloudEvent_TextData{TextData: `[true,null]`}
		}, func(t *testing.T, m map[string]any) {
			if !reflect.DeepEqual(m["data"], []any{true, nil}) {
				t.Errorf("data = %#v", m["data"])
			}
			if m["datacontenttype"] != "application/vnd.x+json; charset=utf-8" {
				t.Errorf("datacontenttype overwritten: %v", m["datacontenttype"])
			}
		}},
		{"non-JSON text", func(ev *eventv1.CloudEvent) {
			ev.Data = &eventv1.CloudEvent_TextData{TextData: `hello {"not json`}
		}, func(t *testing.T, m map[string]any) {
			if m["data"] != `hello {"not json` {
				t.Errorf("data = %#v, want the text as a string", m["data"])
			}
			if ct, ok := m["datacontenttype"]; ok && ct == "application/json" {
				t.Errorf("non-JSON text labelled application/json")
			}
		}},
		{"JSON-looking text/plain", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"datacontenttype": str("text/plain")}
			ev.Data = &eventv1.CloudEvent_TextData{TextData: `{"a":1}`}
		}, func(t *testing.T, m map[string]any) {
			if m["data"] != `{"a":1}` {
				t.Errorf("data = %#v, want the text as a string", m["data"])
			}
			if m["datacontenttype"] != "text/plain" {
				t.Errorf("datacontenttype = %v", m["datacontenttype"])
			}
		}},
		{"empty text", func(ev *eventv1.CloudEvent) {
			ev.Data = &eventv1.CloudEvent_TextData{TextData: ""}
		}, func(t *testing.T, m map[string]any) {
			if m["data"] != "" {
				t.Errorf("data = %#v, want the empty string", m["data"])
			}
		}},
		{"binary", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"datacontenttype": str("application/octet-stream")}
			ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte{0, 1, 2, 0xff}}
		}, func(t *testing.T, m map[string]any) {
			if m["data_base64"] != base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 0xff}) {
				t.Errorf("data_base64 = %v", m["data_base64"])
			}
			if _, ok := m["data"]; ok {
				t.Errorf("data present for binary data")
			}
		}},
		{"binary without content type", func(ev *eventv1.CloudEvent) {
			ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte(`{"a":1}`)}
		}, func(t *testing.T, m map[string]any) {
			if m["data_base64"] != base64.StdEncoding.EncodeToString([]byte(`{"a":1}`)) {
				t.Errorf("data_base64 = %v", m["data_base64"])
			}
		}},
		{"binary JSON", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"datacontenttype": str("application/json")}
			ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte(`{"a":[1,"x"]}`)}
		}, func(t *testing.T, m map[string]any) {
			if want := decodeJSON(t, `{"a":[1,"x"]}`); !reflect.DeepEqual(m["data"], want) {
				t.Errorf("data = %#v, want %#v", m["data"], want)
			}
			if _, ok := m["data_base64"]; ok {
				t.Errorf("data_base64 present for JSON binary data")
			}
			if m["datacontenttype"] != "application/json" {
				t.Errorf("datacontenttype = %v", m["datacontenttype"])
			}
		}},
		{"binary JSON with invalid UTF-8", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"datacontenttype": str("application/json")}
			ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte("{\"a\":\"\xff\"}")}
		}, func(t *testing.T, m map[string]any) {
			// Embedded as is it would make the whole event invalid UTF-8.
			if m["data_base64"] != base64.StdEncoding.EncodeToString([]byte("{\"a\":\"\xff\"}")) {
				t.Errorf("data_base64 = %v, data = %v", m["data_base64"], m["data"])
			}
		}},
		{"binary invalid JSON", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"datacontenttype": str("application/json")}
			ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte(`{"a":`)}
		}, func(t *testing.T, m map[string]any) {
			if m["data_base64"] != base64.StdEncoding.EncodeToString([]byte(`{"a":`)) {
				t.Errorf("data_base64 = %v", m["data_base64"])
			}
		}},
		{"proto data", func(ev *eventv1.CloudEvent) {
			ev.Data = &eventv1.CloudEvent_ProtoData{ProtoData: &anypb.Any{TypeUrl: "type.googleapis.com/billing.v1.Invoice", Value: []byte{8, 150, 1}}}
		}, func(t *testing.T, m map[string]any) {
			if m["data_base64"] != base64.StdEncoding.EncodeToString([]byte{8, 150, 1}) {
				t.Errorf("data_base64 = %v", m["data_base64"])
			}
			if m["datacontenttype"] != "application/protobuf" {
				t.Errorf("datacontenttype = %v", m["datacontenttype"])
			}
			if m["dataschema"] != "type.googleapis.com/billing.v1.Invoice" {
				t.Errorf("dataschema = %v", m["dataschema"])
			}
		}},
		{"proto data keeps given attributes", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"datacontenttype": str("application/x-protobuf"), "dataschema": str("https://schemas/x")}
			ev.Data = &eventv1.CloudEvent_ProtoData{ProtoData: &anypb.Any{TypeUrl: "type.googleapis.com/x.Y"}}
		}, func(t *testing.T, m map[string]any) {
			if m["datacontenttype"] != "application/x-protobuf" || m["dataschema"] != "https://schemas/x" {
				t.Errorf("attributes overwritten: %v", m)
			}
			if m["data_base64"] != "" {
				t.Errorf("data_base64 = %v, want empty", m["data_base64"])
			}
		}},
		{"typed attributes", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{
				"flag":    {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean{CeBoolean: true}},
				"off":     {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean{CeBoolean: false}},
				"count":   {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: -42}},
				"time":    {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(ts)}},
				"subject": str("inv-1"),
				"blob":    {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeBytes{CeBytes: []byte("hi")}},
				"link":    {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeUri{CeUri: "https://example.com/x"}},
				"ref":     {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeUriRef{CeUriRef: "/x#y"}},
				"unset":   {},
			}
		}, func(t *testing.T, m map[string]any) {
			if m["flag"] != true || m["off"] != false {
				t.Errorf("booleans: %v %v", m["flag"], m["off"])
			}
			if m["count"] != json.Number("-42") {
				t.Errorf("count = %#v, want the JSON number -42", m["count"])
			}
			s, _ := m["time"].(string)
			parsed, err := time.Parse(time.RFC3339, s)
			if err != nil || !parsed.Equal(ts) || !strings.HasSuffix(s, "Z") {
				t.Errorf("time = %q (%v), want %v in RFC 3339 UTC", s, err, ts)
			}
			if m["subject"] != "inv-1" || m["link"] != "https://example.com/x" || m["ref"] != "/x#y" {
				t.Errorf("strings: %v", m)
			}
			if m["blob"] != base64.StdEncoding.EncodeToString([]byte("hi")) {
				t.Errorf("blob = %v", m["blob"])
			}
			if m["unset"] != "" {
				t.Errorf("unset = %#v", m["unset"])
			}
		}},
		{"sub-second timestamp", func(ev *eventv1.CloudEvent) {
			ev.Attributes = attrs{"time": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(ts.Add(123 * time.Millisecond))}}}
		}, func(t *testing.T, m map[string]any) {
			s, _ := m["time"].(string)
			parsed, err := time.Parse(time.RFC3339Nano, s)
			if err != nil || !parsed.Equal(ts.Add(123*time.Millisecond)) {
				t.Errorf("time = %q (%v)", s, err)
			}
		}},
		{"escaping", func(ev *eventv1.CloudEvent) {
			ev.Id = "id \"with\" quotes\n<&>"
			ev.Source = "/a\\b"
			ev.Attributes = attrs{"subject": str("line\u2028sep\x00")}
			ev.Data = &eventv1.CloudEvent_TextData{TextData: "tab\there \"q\""}
		}, func(t *testing.T, m map[string]any) {
			if m["subject"] != "line\u2028sep\x00" || m["data"] != "tab\there \"q\"" {
				t.Errorf("escaped values do not round-trip: %q %q", m["subject"], m["data"])
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := valid()
			c.data(ev)
			c.check(t, render(t, ev))
		})
	}
}

func FuzzMarshalJSON(f *testing.F) {
	for _, s := range [][2]string{
		{`{"a":1}`, "x"}, {"hello", ""}, {"{\"a\":\"\xff\"}", "application/json"}, {"", "application/json"}, {`[1,2`, "text/plain"},
		{`"\ud800"`, "application/json"}, {" 1e999 ", "\u2028"}, {`{"a":"<b>&"}`, "a\x00b"},
		{strings.Repeat("[", 100) + strings.Repeat("]", 100), "application/cloudevents+json"},
	} {
		f.Add(s[0], s[1], false)
		f.Add(s[0], s[1], true)
	}
	f.Fuzz(func(t *testing.T, data, attr string, asContentType bool) {
		ev := valid()
		ev.Attributes = attrs{"subject": str(attr)}
		if asContentType {
			ev.Attributes["datacontenttype"] = str(attr)
		}

		// Binary data may hold any bytes; it always renders as valid JSON.
		ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte(data)}
		m := render(t, ev)
		if _, ok := m["data"]; !ok && m["data_base64"] != base64.StdEncoding.EncodeToString([]byte(data)) {
			t.Fatalf("binary data lost: %v", m)
		}

		if !utf8.ValidString(data) || !utf8.ValidString(attr) {
			// Protobuf strings are UTF-8: the log holds no other text.
			return
		}
		ev.Data = &eventv1.CloudEvent_TextData{TextData: data}
		m = render(t, ev)
		if m["subject"] != attr {
			t.Fatalf("subject = %q, want %q", m["subject"], attr)
		}
		ct := ""
		if asContentType {
			ct = attr
		}
		if (ct == "" || IsJSON(ct)) && json.Valid([]byte(data)) {
			if want := decodeJSON(t, data); !reflect.DeepEqual(m["data"], want) {
				t.Fatalf("data = %#v, want the JSON value %#v", m["data"], want)
			}
		} else if m["data"] != data {
			t.Fatalf("data = %#v, want the text %q", m["data"], data)
		}
	})
}
