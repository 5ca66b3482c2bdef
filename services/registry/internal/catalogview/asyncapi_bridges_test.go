package catalogview

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Each bridge is a server of its system, a channel for its topic, exchange,
// queue or topic filter with the messages of its types, and an operation:
// send for a sink (Herald sends there), receive for a source.
func TestAsyncAPIBridges(t *testing.T) {
	d, err := AsyncAPI(bridgeCatalog(), Filter{}, "http://127.0.0.1:7700")
	if err != nil {
		t.Fatal(err)
	}
	m := generic(t, d)
	type want struct {
		protocol, host, version, address, action string
		messages                                 []string
	}
	for name, w := range map[string]want{
		"billing-to-kafka":    {"kafka-secure", "kafka-1.internal:9093", "", "herald.billing", "send", []string{"billing.invoice.created", "billing.invoice.paid", "billing.refund.issued"}},
		"users-from-kafka":    {"kafka", "kafka-1.internal:9092", "", "users", "receive", []string{"identity.user.created"}},
		"orders-to-rabbit":    {"amqps", "rabbit.internal:5671", "0-9-1", "herald.{type}", "send", []string{"orders.order.placed"}},
		"signups-from-rabbit": {"amqp", "rabbit.internal:5672", "0-9-1", "signups", "receive", []string{"identity.user.created"}},
		"billing-to-mqtt":     {"secure-mqtt", "mqtt.internal:8883", "5", "herald/{type}", "send", []string{"billing.invoice.created", "billing.invoice.paid"}},
		"sensors-from-mqtt":   {"mqtt", "mqtt.internal:1883", "3.1.1", "sensors/+/signup", "receive", []string{"identity.user.created"}},
	} {
		key := "bridge-" + name
		srv := at(t, m, "servers", key).(map[string]any)
		if srv["protocol"] != w.protocol || srv["host"] != w.host || srv["x-herald-bridge"] != name {
			t.Errorf("%s: server %v", name, srv)
		}
		if w.version != "" && srv["protocolVersion"] != w.version {
			t.Errorf("%s: protocolVersion %v, want %s", name, srv["protocolVersion"], w.version)
		}
		ch := at(t, m, "channels", key).(map[string]any)
		if ch["address"] != w.address || ch["x-herald-bridge"] != name {
			t.Errorf("%s: channel %v", name, ch)
		}
		if got := at(t, ch, "servers", 0, "$ref"); got != "#/servers/"+key {
			t.Errorf("%s: channel servers %v", name, got)
		}
		var msgs []string
		for k := range ch["messages"].(map[string]any) {
			msgs = append(msgs, k)
		}
		slices.Sort(msgs)
		if !slices.Equal(msgs, w.messages) {
			t.Errorf("%s: messages %v, want %v", name, msgs, w.messages)
		}
		op := at(t, m, "operations", key+"-"+w.action).(map[string]any)
		if op["action"] != w.action || at(t, op, "channel", "$ref") != "#/channels/"+key || op["x-herald-bridge"] != name {
			t.Errorf("%s: operation %v", name, op)
		}
		if n := len(op["messages"].([]any)); n != len(w.messages) {
			t.Errorf("%s: operation has %d messages, want %d", name, n, len(w.messages))
		}
	}
	// The bindings say what the protocol needs.
	if at(t, m, "channels", "bridge-billing-to-kafka", "bindings", "kafka", "topic") != "herald.billing" ||
		at(t, m, "operations", "bridge-users-from-kafka-receive", "bindings", "kafka", "groupId", "enum", 0) != "herald-users-from-kafka" ||
		at(t, m, "channels", "bridge-orders-to-rabbit", "bindings", "amqp", "exchange", "name") != "amq.topic" ||
		at(t, m, "channels", "bridge-orders-to-rabbit", "bindings", "amqp", "exchange", "vhost") != "prod" ||
		at(t, m, "channels", "bridge-signups-from-rabbit", "bindings", "amqp", "queue", "name") != "signups" ||
		at(t, m, "operations", "bridge-sensors-from-mqtt-receive", "bindings", "mqtt", "qos") != float64(2) ||
		at(t, m, "channels", "bridge-billing-to-mqtt", "parameters", "type", "enum", 0) != "billing/invoice/created" ||
		at(t, m, "components", "securitySchemes", "bridge-billing-to-kafka", "type") != "scramSha512" {
		t.Error("bindings, parameters or security schemes are not as expected")
	}
	// The event types' channels stay on the edge.
	if at(t, m, "channels", "billing.invoice.paid", "servers", 0, "$ref") != "#/servers/edge" {
		t.Error("an event type's channel is not on the edge")
	}
	// A lake has no AsyncAPI protocol.
	if _, ok := at(t, m, "servers").(map[string]any)["bridge-everything-to-lake"]; ok {
		t.Error("the lake bridge is a server")
	}
	// Nothing secret, sealed or personal.
	b, _ := d.JSON()
	for _, s := range []string{sampleSealedSecret, sampleSealedKey, "kafka-login", "herald@", "AKIA", "key_1", "minio"} {
		if strings.Contains(string(b), s) {
			t.Errorf("the document shows %q", s)
		}
	}
}

// A narrowed document shows the bridges of its types (and of its
// application) only.
func TestAsyncAPIBridgesFollowTheFilter(t *testing.T) {
	bridges := func(f Filter) []string {
		d, err := AsyncAPI(bridgeCatalog(), f, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for k, ch := range d.Channels {
			if ch.Bridge != "" {
				out = append(out, k)
			}
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		f    Filter
		want []string
	}{
		{Filter{Domain: "orders"}, []string{"bridge-orders-to-rabbit"}},
		{Filter{Application: "app_partner"}, []string{"bridge-billing-to-kafka", "bridge-users-from-kafka"}},
		{Filter{Product: "identity-basic"}, []string{"bridge-sensors-from-mqtt", "bridge-signups-from-rabbit", "bridge-users-from-kafka"}},
	} {
		if got := bridges(c.f); !slices.Equal(got, c.want) {
			t.Errorf("%s: bridges %v, want %v", c.f.String(), got, c.want)
		}
	}
}

// Served, the operator sees every bridge, an application its own, and a
// document for a narrower audience none.
func TestHandlerBridgesPerCaller(t *testing.T) {
	h := Handler(func(context.Context) (*Catalog, error) { return bridgeCatalog(), nil }, "http://127.0.0.1:7700",
		WithCaller(func(r *http.Request) (Caller, error) {
			switch r.Header.Get("Authorization") {
			case "Bearer admin":
				return Caller{Audience: registryv1.Audience_AUDIENCE_INTERNAL}, nil
			case "Bearer ops":
				return Caller{Audience: registryv1.Audience_AUDIENCE_INTERNAL, ApplicationID: "app_ops"}, nil
			case "Bearer partner":
				return Caller{Audience: registryv1.Audience_AUDIENCE_PARTNER, ApplicationID: "app_partner"}, nil
			case "Bearer anonymous":
				return Caller{Audience: registryv1.Audience_AUDIENCE_PUBLIC}, nil
			}
			return Caller{}, errors.New("unknown key")
		}))
	for _, c := range []struct {
		key, query string
		want, not  []string
	}{
		{"admin", "", []string{"bridge-billing-to-kafka", "bridge-orders-to-rabbit", "bridge-sensors-from-mqtt"}, nil},
		{"admin", "?audience=public", nil, []string{"x-herald-bridge"}},
		{"ops", "", []string{"bridge-orders-to-rabbit", "bridge-billing-to-mqtt"}, []string{"bridge-billing-to-kafka", "bridge-users-from-kafka"}},
		{"partner", "", []string{"bridge-billing-to-kafka", "bridge-users-from-kafka"}, []string{"bridge-orders-to-rabbit", "bridge-billing-to-mqtt"}},
		{"anonymous", "", nil, []string{"x-herald-bridge"}},
	} {
		res, body := get(t, h, "/asyncapi.json"+c.query, "Authorization", "Bearer "+c.key)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s%s: %d %s", c.key, c.query, res.StatusCode, body)
		}
		for _, s := range c.want {
			if !strings.Contains(body, `"`+s+`"`) {
				t.Errorf("%s%s: %s missing", c.key, c.query, s)
			}
		}
		for _, s := range c.not {
			if strings.Contains(body, `"`+s+`"`) {
				t.Errorf("%s%s: shows %s", c.key, c.query, s)
			}
		}
	}
}
