// Package cloudevent validates CloudEvents in Herald's protobuf form and
// renders them in the CloudEvents structured JSON format
// (application/cloudevents+json) used on every HTTP channel.
package cloudevent

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

// DefaultMaxBytes is the default largest encoded event the router takes
// (HERALD_ROUTER_MAX_EVENT_BYTES), and the largest a filter's cost is
// estimated on.
const DefaultMaxBytes = 1 << 20

// SpecVersion is the CloudEvents version Herald speaks.
const SpecVersion = "1.0"

// Validate checks the context attributes the specification requires.
func Validate(ev *eventv1.CloudEvent) error {
	switch {
	case ev == nil:
		return errors.New("event is empty")
	case ev.GetId() == "":
		return errors.New("id is required")
	case len(ev.GetId()) > 256:
		return errors.New("id is longer than 256 characters")
	case ev.GetSource() == "":
		return errors.New("source is required")
	case len(ev.GetSource()) > 1024:
		return errors.New("source is longer than 1024 characters")
	case ev.GetSpecVersion() != SpecVersion:
		return fmt.Errorf("spec_version must be %q, got %q", SpecVersion, ev.GetSpecVersion())
	case ev.GetType() == "":
		return errors.New("type is required")
	}
	if _, err := url.Parse(ev.GetSource()); err != nil {
		return fmt.Errorf("source is not a URI-reference: %v", err)
	}
	for name := range ev.GetAttributes() {
		if !validAttributeName(name) {
			return fmt.Errorf("attribute name %q must be 1-20 lower-case letters or digits", name)
		}
		switch name {
		case "id", "source", "specversion", "type", "data", "data_base64":
			return fmt.Errorf("attribute %q is a top-level field, not an extension", name)
		}
	}
	return nil
}

func validAttributeName(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= 'a' && s[i] <= 'z' || s[i] >= '0' && s[i] <= '9') {
			return false
		}
	}
	return true
}

// ContentType is the datacontenttype attribute, or "" when absent.
func ContentType(ev *eventv1.CloudEvent) string {
	v := ev.GetAttributes()["datacontenttype"]
	if v == nil {
		return ""
	}
	return attrString(v)
}

// IsJSON reports whether a media type is JSON (application/json or +json).
func IsJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return mt == "application/json" || mt == "text/json" || strings.HasSuffix(mt, "+json")
}

// JSONData returns the event data as JSON text when it is JSON: text or
// binary data whose datacontenttype is JSON, or text data with no content
// type (JSON is the CloudEvents default). ok is false otherwise.
func JSONData(ev *eventv1.CloudEvent) (data []byte, ok bool) {
	ct := ContentType(ev)
	switch d := ev.GetData().(type) {
	case *eventv1.CloudEvent_TextData:
		if ct == "" || IsJSON(ct) {
			return []byte(d.TextData), true
		}
	case *eventv1.CloudEvent_BinaryData:
		if IsJSON(ct) {
			return d.BinaryData, true
		}
	case nil:
		return nil, false
	}
	return nil, false
}

// MarshalJSON renders ev in the structured JSON format. JSON data is
// embedded as a JSON value under "data", other text as a string, binary and
// protobuf data as base64 under "data_base64".
func MarshalJSON(ev *eventv1.CloudEvent) ([]byte, error) {
	m := make(map[string]any, 6+len(ev.GetAttributes()))
	m["specversion"] = ev.GetSpecVersion()
	m["id"] = ev.GetId()
	m["source"] = ev.GetSource()
	m["type"] = ev.GetType()
	for k, v := range ev.GetAttributes() {
		m[k] = attrJSON(v)
	}
	switch d := ev.GetData().(type) {
	case *eventv1.CloudEvent_TextData:
		if raw, ok := JSONData(ev); ok && embeddable(raw) {
			m["data"] = json.RawMessage(raw)
			if _, set := m["datacontenttype"]; !set {
				m["datacontenttype"] = "application/json"
			}
		} else {
			m["data"] = d.TextData
		}
	case *eventv1.CloudEvent_BinaryData:
		if raw, ok := JSONData(ev); ok && embeddable(raw) {
			m["data"] = json.RawMessage(raw)
		} else {
			m["data_base64"] = base64.StdEncoding.EncodeToString(d.BinaryData)
		}
	case *eventv1.CloudEvent_ProtoData:
		m["data_base64"] = base64.StdEncoding.EncodeToString(d.ProtoData.GetValue())
		if _, set := m["datacontenttype"]; !set {
			m["datacontenttype"] = "application/protobuf"
		}
		if _, set := m["dataschema"]; !set && d.ProtoData.GetTypeUrl() != "" {
			m["dataschema"] = d.ProtoData.GetTypeUrl()
		}
	}
	return json.Marshal(m)
}

// embeddable reports whether raw can be embedded as is: valid JSON and valid
// UTF-8 (json.Valid accepts invalid UTF-8 inside strings, and a raw value is
// copied through unchanged).
func embeddable(raw []byte) bool {
	return utf8.Valid(raw) && json.Valid(raw)
}

func attrJSON(v *eventv1.CloudEvent_CloudEventAttributeValue) any {
	switch a := v.GetAttr().(type) {
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean:
		return a.CeBoolean
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeInteger:
		return a.CeInteger
	default:
		return attrString(v)
	}
}

// Attributes returns every attribute of ev by name, the required ones
// (specversion, id, source, type) included: booleans as bool, integers as
// int64, everything else in its canonical string form.
func Attributes(ev *eventv1.CloudEvent) map[string]any {
	m := make(map[string]any, 4+len(ev.GetAttributes()))
	for k, v := range ev.GetAttributes() {
		if a, ok := v.GetAttr().(*eventv1.CloudEvent_CloudEventAttributeValue_CeInteger); ok {
			m[k] = int64(a.CeInteger)
			continue
		}
		m[k] = attrJSON(v)
	}
	m["specversion"] = ev.GetSpecVersion()
	m["id"] = ev.GetId()
	m["source"] = ev.GetSource()
	m["type"] = ev.GetType()
	return m
}

// AttributeString is an attribute's value in its canonical string form.
func AttributeString(v *eventv1.CloudEvent_CloudEventAttributeValue) string { return attrString(v) }

func attrString(v *eventv1.CloudEvent_CloudEventAttributeValue) string {
	switch a := v.GetAttr().(type) {
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean:
		return fmt.Sprint(a.CeBoolean)
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeInteger:
		return fmt.Sprint(a.CeInteger)
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeString:
		return a.CeString
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeBytes:
		return base64.StdEncoding.EncodeToString(a.CeBytes)
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeUri:
		return a.CeUri
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeUriRef:
		return a.CeUriRef
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp:
		return a.CeTimestamp.AsTime().UTC().Format(time.RFC3339Nano)
	}
	return ""
}

// SchemaVersionAttribute is the extension the router stamps on events of
// Avro types: the schema version their data was written with, which a
// reader needs to decode it.
const SchemaVersionAttribute = "schemaversion"
