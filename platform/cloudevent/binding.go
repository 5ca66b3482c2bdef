package cloudevent

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// This file is what the protocol bindings (HTTP, Kafka, AMQP, MQTT) share:
// an event in binary mode (attributes as string headers, data as the body)
// and the structured JSON format read back into Herald's form.

// StructuredContentType is the media type of the structured JSON format.
const StructuredContentType = "application/cloudevents+json"

// Binary is an event in a binding's binary mode.
type Binary struct {
	// Attributes by name (specversion, id, source, type and every
	// extension), in their canonical string form, without the binding's
	// prefix (ce-, ce_, cloudEvents:) and without datacontenttype, which
	// travels as the message's own content type.
	Attributes map[string]string
	// ContentType is datacontenttype; "" when the event has none.
	ContentType string
	Body        []byte
}

// ToBinary puts ev in binary mode.
func ToBinary(ev *eventv1.CloudEvent) Binary {
	b := Binary{Attributes: make(map[string]string, 4+len(ev.GetAttributes())), ContentType: ContentType(ev)}
	b.Attributes["specversion"] = ev.GetSpecVersion()
	b.Attributes["id"] = ev.GetId()
	b.Attributes["source"] = ev.GetSource()
	b.Attributes["type"] = ev.GetType()
	for k, v := range ev.GetAttributes() {
		if k != "datacontenttype" {
			b.Attributes[k] = attrString(v)
		}
	}
	switch d := ev.GetData().(type) {
	case *eventv1.CloudEvent_TextData:
		b.Body = []byte(d.TextData)
	case *eventv1.CloudEvent_BinaryData:
		b.Body = d.BinaryData
	case *eventv1.CloudEvent_ProtoData:
		b.Body = d.ProtoData.GetValue()
		if b.ContentType == "" {
			b.ContentType = "application/protobuf"
		}
	}
	return b
}

// FromBinary reads an event from binary mode. The required attributes must
// be there; time is read as an RFC 3339 timestamp and dataschema as a URI.
// JSON and text bodies become text data, anything else binary data.
func FromBinary(b Binary) (*eventv1.CloudEvent, error) {
	ev := &eventv1.CloudEvent{}
	attrs := map[string]*eventv1.CloudEvent_CloudEventAttributeValue{}
	for k, v := range b.Attributes {
		switch k {
		case "specversion":
			ev.SpecVersion = v
		case "id":
			ev.Id = v
		case "source":
			ev.Source = v
		case "type":
			ev.Type = v
		case "datacontenttype":
			if b.ContentType == "" {
				b.ContentType = v
			}
		default:
			a, err := attributeOf(k, v)
			if err != nil {
				return nil, err
			}
			attrs[k] = a
		}
	}
	if b.ContentType != "" {
		attrs["datacontenttype"] = strAttr(b.ContentType)
	}
	if len(attrs) > 0 {
		ev.Attributes = attrs
	}
	if b.Body != nil {
		setData(ev, b.ContentType, b.Body)
	}
	if err := Validate(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// setData puts body in ev as text (JSON or text/*, valid UTF-8) or binary.
func setData(ev *eventv1.CloudEvent, ct string, body []byte) {
	if (ct == "" || IsJSON(ct) || strings.HasPrefix(strings.ToLower(ct), "text/")) && utf8.Valid(body) {
		ev.Data = &eventv1.CloudEvent_TextData{TextData: string(body)}
		return
	}
	ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: bytes.Clone(body)}
}

func strAttr(s string) *eventv1.CloudEvent_CloudEventAttributeValue {
	return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: s}}
}

// attributeOf types an extension or optional attribute given as a string.
func attributeOf(name, v string) (*eventv1.CloudEvent_CloudEventAttributeValue, error) {
	switch name {
	case "time":
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return nil, fmt.Errorf("time %q is not an RFC 3339 timestamp", v)
		}
		return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(t)}}, nil
	case "dataschema":
		return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeUri{CeUri: v}}, nil
	}
	return strAttr(v), nil
}

// UnmarshalJSON reads an event in the structured JSON format: "data" as
// JSON (or a string, for a non-JSON datacontenttype), "data_base64" as
// binary. Extension values keep their JSON type (boolean, integer, string).
func UnmarshalJSON(b []byte) (*eventv1.CloudEvent, error) {
	var m map[string]json.RawMessage
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("not a CloudEvent in JSON: %v", err)
	}
	if d.More() {
		return nil, errors.New("not a CloudEvent in JSON: data after the object")
	}
	ev := &eventv1.CloudEvent{}
	attrs := map[string]*eventv1.CloudEvent_CloudEventAttributeValue{}
	var data, data64 json.RawMessage
	for k, raw := range m {
		switch k {
		case "data":
			data = raw
			continue
		case "data_base64":
			data64 = raw
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("attribute %q: %v", k, err)
		}
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case bool:
			if !required(k) {
				attrs[k] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean{CeBoolean: x}}
				continue
			}
		case float64:
			if !required(k) && x == float64(int32(x)) {
				attrs[k] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: int32(x)}}
				continue
			}
		case nil:
			continue // null: the attribute is absent
		}
		if _, ok := v.(string); !ok {
			return nil, fmt.Errorf("attribute %q must be a string, a boolean or a 32-bit integer", k)
		}
		switch k {
		case "specversion":
			ev.SpecVersion = s
		case "id":
			ev.Id = s
		case "source":
			ev.Source = s
		case "type":
			ev.Type = s
		default:
			a, err := attributeOf(k, s)
			if err != nil {
				return nil, err
			}
			attrs[k] = a
		}
	}
	if len(attrs) > 0 {
		ev.Attributes = attrs
	}
	ct := ContentType(ev)
	switch {
	case data != nil && data64 != nil:
		return nil, errors.New("data and data_base64 are both set")
	case data64 != nil:
		var s string
		if err := json.Unmarshal(data64, &s); err != nil {
			return nil, errors.New("data_base64 must be a string")
		}
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, errors.New("data_base64 is not base64")
		}
		ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: raw}
	case data != nil && !bytes.Equal(bytes.TrimSpace(data), []byte("null")):
		if ct == "" || IsJSON(ct) {
			ev.Data = &eventv1.CloudEvent_TextData{TextData: string(bytes.TrimSpace(data))}
			break
		}
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, fmt.Errorf("data of type %q must be a JSON string", ct)
		}
		ev.Data = &eventv1.CloudEvent_TextData{TextData: s}
	}
	if err := Validate(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

func required(k string) bool {
	switch k {
	case "specversion", "id", "source", "type":
		return true
	}
	return false
}
