package mqtt

import (
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestParse(t *testing.T) {
	sink := func(f func(*registryv1.MqttBridge)) bridge.Config {
		c := sinkConfig("broker:1883", 0, 0, 0)
		f(c.Bridge.GetMqtt())
		return c
	}
	source := func(f func(*registryv1.MqttBridge)) bridge.Config {
		c := sourceConfig("broker:1883", 0, "a/#")
		f(c.Bridge.GetMqtt())
		return c
	}
	st, err := parse(sink(func(*registryv1.MqttBridge) {}), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK)
	if err != nil {
		t.Fatal(err)
	}
	if st.version != 5 || st.qos != 1 || st.topic != DefaultSinkTopic || st.clientID != "herald-orders-out" || st.structured || st.broker != "broker:1883" || st.maxInFlight != 1000 {
		t.Errorf("sink defaults: %+v", st)
	}
	st, err = parse(source(func(*registryv1.MqttBridge) {}), registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE)
	if err != nil {
		t.Fatal(err)
	}
	if st.clientID != "herald-sensors-in-src" || st.eventType != "sensors.reading.taken" {
		t.Errorf("source defaults: %+v", st)
	}
	st, err = parse(sink(func(m *registryv1.MqttBridge) {
		m.Broker = "ssl://mq.example"
		m.ProtocolVersion = 4
		m.ClientId = "me"
	}), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK)
	if err != nil || !st.tls || st.broker != "mq.example:8883" || !st.structured || st.clientID != "me" {
		t.Errorf("ssl, 3.1.1: %+v %v", st, err)
	}

	bad := []struct {
		name string
		cfg  bridge.Config
		dir  registryv1.BridgeDirection
		want string
	}{
		{"qos 3", sink(func(m *registryv1.MqttBridge) { m.Qos = 3 }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "qos"},
		{"version 3", sink(func(m *registryv1.MqttBridge) { m.ProtocolVersion = 3 }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "protocol_version"},
		{"no broker", sink(func(m *registryv1.MqttBridge) { m.Broker = "" }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "broker"},
		{"http broker", sink(func(m *registryv1.MqttBridge) { m.Broker = "http://x:1" }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "scheme"},
		{"password in url", sink(func(m *registryv1.MqttBridge) { m.Broker = "tcp://u:p@x:1" }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "secret"},
		{"wildcard sink topic", sink(func(m *registryv1.MqttBridge) { m.Topic = "a/+/{type}" }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "wildcards"},
		{"no filter", source(func(m *registryv1.MqttBridge) { m.Topic = "" }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE, "filter"},
		{"# not last", source(func(m *registryv1.MqttBridge) { m.Topic = "a/#/b" }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE, "#"},
		{"+ in a level", source(func(m *registryv1.MqttBridge) { m.Topic = "a/b+" }), registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE, "+"},
		{"wrong direction", source(func(*registryv1.MqttBridge) {}), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "not a"},
		{"3.1.1 password without user", func() bridge.Config {
			c := sink(func(m *registryv1.MqttBridge) { m.ProtocolVersion = 4 })
			c.Secret = "pw"
			return c
		}(), registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK, "user name"},
	}
	for _, tc := range bad {
		if _, err := parse(tc.cfg, tc.dir); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.want)
		}
	}
	c := sink(func(*registryv1.MqttBridge) {})
	c.Bridge.System = &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{}}
	if _, _, err := New(c); err == nil {
		t.Error("New of a Kafka bridge")
	}
}

func TestSourceOfAndHashID(t *testing.T) {
	for topic, want := range map[string]string{
		"sensors/a/temp": "mqtt://sensors/a/temp",
		"a b/c":          "mqtt:///a%20b/c",
		"host:port/x":    "mqtt:///host:port/x",
		"a/100%":         "mqtt:///a/100%25",
		"/lead/x":        "mqtt:///lead/x",
		"$SYS/broker":    "mqtt://$SYS/broker",
	} {
		got, err := sourceOf(topic)
		if err != nil || got != want {
			t.Errorf("sourceOf(%q) = %q, %v; want %q", topic, got, err, want)
		}
	}
	if _, err := sourceOf(strings.Repeat("x", 2000)); err == nil {
		t.Error("a 2000-character topic made a source")
	}
	if hashID("a/b", []byte("c")) == hashID("a/bc", nil) {
		t.Error("topic and payload run into each other")
	}
	if hashID("a", []byte("x")) != hashID("a", []byte("x")) || len(hashID("a", nil)) != len("mqtt-")+64 {
		t.Error("hashID is not stable")
	}
}

// FuzzToEvent: whatever a broker hands over, reading it never panics, and
// an event it yields is a valid CloudEvent.
func FuzzToEvent(f *testing.F) {
	f.Add("sensors/a", []byte(`{"celsius":1}`), "", "", "")
	f.Add("a b/c", []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t"}`), "", "", "")
	f.Add("x", []byte("data"), "application/cloudevents+json", "specversion", "1.0")
	f.Add("x", []byte("data"), "text/plain", "id", "my-id")
	f.Add("host:1/x", []byte{0xff}, "application/cloudevents-batch+json", "time", "nope")
	cfg := sourceConfig("broker:1883", 5, "#")
	f.Fuzz(func(t *testing.T, topic string, payload []byte, ct, key, value string) {
		in := &incoming{topic: topic, payload: payload, contentType: ct}
		if key != "" {
			in.user = paho.UserProperties{{Key: key, Value: value}}
			if key != "specversion" {
				in.user = append(in.user, paho.UserProperty{Key: "specversion", Value: "1.0"}, paho.UserProperty{Key: "id", Value: value}, paho.UserProperty{Key: "source", Value: "/s"}, paho.UserProperty{Key: "type", Value: "t"})
			}
		}
		for _, user := range []paho.UserProperties{in.user, nil} {
			in.user = user
			rec := record(&cfg, in)
			if (rec.Event == nil) == (rec.Err == nil) {
				t.Fatalf("event %v and error %v", rec.Event, rec.Err)
			}
			if rec.Event != nil {
				if err := cloudevent.Validate(rec.Event); err != nil {
					t.Fatalf("invalid event %v: %v", rec.Event, err)
				}
			}
		}
	})
}
