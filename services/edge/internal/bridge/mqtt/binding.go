package mqtt

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

// outgoing is one event as an MQTT PUBLISH.
type outgoing struct {
	topic   string
	payload []byte
	// contentType and user are MQTT 5 properties, ignored on 3.1.1.
	contentType string
	user        paho.UserProperties
}

// topicOf fills a sink's topic template: {type} is the event type with its
// dots as slashes (billing.invoice.paid -> billing/invoice/paid).
func topicOf(template, eventType string) string {
	if !strings.Contains(template, "{type}") {
		return template
	}
	return strings.ReplaceAll(template, "{type}", strings.ReplaceAll(eventType, ".", "/"))
}

// requiredAttrs go first among the user properties, in this order.
var requiredAttrs = [...]string{"specversion", "id", "source", "type"}

// render puts ev in a PUBLISH per the bridge's content mode.
func render(st *settings, ev *eventv1.CloudEvent) (outgoing, error) {
	out := outgoing{topic: topicOf(st.topic, ev.GetType())}
	if out.topic == "" || strings.ContainsAny(out.topic, "+#\x00") {
		return out, bridge.Permanent(fmt.Errorf("mqtt: event type %q makes topic %q, which is not a valid topic name", ev.GetType(), out.topic))
	}
	if st.structured {
		b, err := cloudevent.MarshalJSON(ev)
		if err != nil {
			return out, bridge.Permanent(fmt.Errorf("mqtt: render event %s as JSON: %w", ev.GetId(), err))
		}
		out.payload = b
		if st.version == 5 {
			out.contentType = cloudevent.StructuredContentType
		}
		return out, nil
	}
	b := cloudevent.ToBinary(ev)
	out.payload = b.Body
	out.contentType = b.ContentType
	out.user = make(paho.UserProperties, 0, len(b.Attributes))
	for _, k := range requiredAttrs {
		out.user = append(out.user, paho.UserProperty{Key: k, Value: b.Attributes[k]})
	}
	if len(b.Attributes) > len(requiredAttrs) {
		rest := make([]string, 0, len(b.Attributes)-len(requiredAttrs))
		for k := range b.Attributes {
			if !slices.Contains(requiredAttrs[:], k) {
				rest = append(rest, k)
			}
		}
		slices.Sort(rest)
		for _, k := range rest {
			out.user = append(out.user, paho.UserProperty{Key: k, Value: b.Attributes[k]})
		}
	}
	return out, nil
}

// incoming is one PUBLISH a source received.
type incoming struct {
	topic    string
	payload  []byte
	packetID uint16
	qos      byte
	// contentType and user are MQTT 5 properties (empty on 3.1.1).
	contentType string
	user        paho.UserProperties
	// ack acknowledges the message to the broker (PUBACK, or PUBREC for
	// QoS 2); nothing for QoS 0.
	ack func()
}

// record turns a received message into a Record.
func record(cfg *bridge.Config, in *incoming) bridge.Record {
	rec := bridge.Record{Raw: in.payload, Position: fmt.Sprintf("topic %s, packet id %d", in.topic, in.packetID)}
	rec.Event, rec.Err = toEvent(cfg, in)
	return rec
}

// toEvent reads a message per the CloudEvents MQTT binding:
//
//   - Content Type application/cloudevents+json (MQTT 5): structured.
//   - A specversion user property (MQTT 5): binary. User properties whose
//     names cannot be CloudEvents attribute names are left out; of a name
//     given twice the first value counts.
//   - No content type (always so on 3.1.1) and a payload that is a JSON
//     object with a specversion member: structured. This also reads what an
//     MQTT 3.1.1 producer sent to a subscriber on MQTT 5.
//   - Anything else is not a CloudEvent: its payload becomes the data of an
//     event of the bridge's event_type (bridge.NewEvent), of source
//     mqtt://<topic> (see sourceOf), datacontenttype the MQTT 5 Content Type (else JSON
//     when the payload is JSON, else application/octet-stream), no time,
//     and id either the MQTT 5 user property "id" (1-256 characters) or
//     "mqtt-" + hex(SHA-256(topic + "\x00" + payload)). A message read
//     twice (redelivered after a crash) so gets the same id and the
//     router's dedupe drops the repeat; the flip side is that two
//     messages with the same payload on the same topic and no "id"
//     property count as one event within the router's dedupe window.
func toEvent(cfg *bridge.Config, in *incoming) (*eventv1.CloudEvent, error) {
	body := in.payload
	if len(body) == 0 {
		body = nil
	}
	if in.contentType != "" {
		mt, _, err := mime.ParseMediaType(in.contentType)
		if err == nil && strings.HasPrefix(mt, "application/cloudevents") {
			if mt != cloudevent.StructuredContentType {
				return nil, fmt.Errorf("content type %q: of the structured formats only application/cloudevents+json is read", in.contentType)
			}
			ev, err := cloudevent.UnmarshalJSON(in.payload)
			if err != nil {
				return nil, fmt.Errorf("structured CloudEvent: %w", err)
			}
			return ev, nil
		}
	}
	if hasProperty(in.user, "specversion") {
		attrs := make(map[string]string, len(in.user))
		for _, p := range in.user {
			if !attributeName(p.Key) {
				continue
			}
			if _, dup := attrs[p.Key]; !dup {
				attrs[p.Key] = p.Value
			}
		}
		ev, err := cloudevent.FromBinary(cloudevent.Binary{Attributes: attrs, ContentType: in.contentType, Body: body})
		if err != nil {
			return nil, fmt.Errorf("binary CloudEvent: %w", err)
		}
		return ev, nil
	}
	if in.contentType == "" && looksStructured(in.payload) {
		ev, err := cloudevent.UnmarshalJSON(in.payload)
		if err != nil {
			return nil, fmt.Errorf("structured CloudEvent: %w", err)
		}
		return ev, nil
	}
	source, err := sourceOf(in.topic)
	if err != nil {
		return nil, err
	}
	id := in.user.Get("id")
	if id == "" || len(id) > 256 {
		id = hashID(in.topic, in.payload)
	}
	return bridge.NewEvent(*cfg, id, source, in.contentType, body, time.Time{}), nil
}

// hashID is the id of a message that carries none: the same message read
// again gets the same id.
func hashID(topic string, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(topic))
	h.Write([]byte{0}) // a topic name never holds NUL, so topic and payload cannot run into each other
	h.Write(payload)
	return "mqtt-" + hex.EncodeToString(h.Sum(nil))
}

// sourceOf is mqtt://<topic>. When that is no URI reference (the first
// level is not a valid host name: "a b/c", "host:port/x"), the whole topic
// goes in the path, its levels escaped: mqtt:///a%20b/c.
func sourceOf(topic string) (string, error) {
	s := "mqtt://" + topic
	if _, err := url.Parse(s); err != nil {
		levels := strings.Split(topic, "/")
		for i, l := range levels {
			levels[i] = url.PathEscape(l)
		}
		s = "mqtt:///" + strings.Join(levels, "/")
		if _, err := url.Parse(s); err != nil {
			return "", fmt.Errorf("topic %q cannot be an event source: %v", topic, err)
		}
	}
	if len(s) > 1024 {
		return "", errors.New("topic is too long to be an event source (1024 characters at most)")
	}
	return s, nil
}

func hasProperty(u paho.UserProperties, key string) bool {
	for _, p := range u {
		if p.Key == key {
			return true
		}
	}
	return false
}

// attributeName reports whether s can name a CloudEvents attribute.
func attributeName(s string) bool {
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

// looksStructured reports whether payload is a JSON object with a
// specversion member, which only the structured format has.
func looksStructured(payload []byte) bool {
	p := bytes.TrimLeft(payload, " \t\r\n")
	if len(p) == 0 || p[0] != '{' {
		return false
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(p, &m) != nil {
		return false
	}
	_, ok := m["specversion"]
	return ok
}
