package registry_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/rpc"
)

// The served AsyncAPI document has the bridges the caller may see: the
// operator every one, an application its own; their secrets and sealed
// values never.
func TestAsyncAPIShowsTheCallersBridges(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Description: "An invoice was paid."})
	a, aKey := e.createApp(t, &registryv1.Application{Name: "a", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	b, bKey := e.createApp(t, &registryv1.Application{Name: "b", Grants: []*registryv1.Grant{subscribe("billing.*")}})
	const secret = "the-sasl-password-of-a"
	for _, br := range []*registryv1.Bridge{
		{
			Name: "a-to-kafka", ApplicationId: a.GetId(), Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
			System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: []string{"kafka.internal:9092"}, Topic: "billing", SaslMechanism: "PLAIN", Username: "a-login"}},
			Sink:   &registryv1.BridgeSink{Types: []string{"billing.*"}}, Secret: secret,
		},
		{
			Name: "b-to-mqtt", ApplicationId: b.GetId(), Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
			System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://mqtt.internal:1883"}},
			Sink:   &registryv1.BridgeSink{Types: []string{"billing.invoice.paid"}},
		},
	} {
		if _, err := e.admin.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: br})); err != nil {
			t.Fatal(err)
		}
	}
	doc := func(key string) (map[string]any, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", rpc.BaseURL(e.addr)+"/asyncapi.json", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var m map[string]any
		if res.StatusCode != http.StatusOK || json.Unmarshal(body, &m) != nil {
			t.Fatalf("asyncapi.json: %d %s", res.StatusCode, body)
		}
		return m, string(body)
	}
	for _, c := range []struct {
		who, key string
		want     []string
	}{
		{"operator", adminKey, []string{"bridge-a-to-kafka", "bridge-b-to-mqtt"}},
		{"a", aKey, []string{"bridge-a-to-kafka"}},
		{"b", bKey, []string{"bridge-b-to-mqtt"}},
	} {
		m, body := doc(c.key)
		servers, _ := m["servers"].(map[string]any)
		var got []string
		for k := range servers {
			if strings.HasPrefix(k, "bridge-") {
				got = append(got, k)
			}
		}
		if len(got) != len(c.want) {
			t.Errorf("%s sees bridge servers %v, want %v", c.who, got, c.want)
		}
		for _, w := range c.want {
			if _, ok := servers[w]; !ok {
				t.Errorf("%s: no server %s", c.who, w)
			}
			if _, ok := m["channels"].(map[string]any)[w]; !ok {
				t.Errorf("%s: no channel %s", c.who, w)
			}
		}
		for _, s := range []string{secret, "a-login", "sealed"} {
			if strings.Contains(body, s) {
				t.Errorf("%s: the document shows %q", c.who, s)
			}
		}
	}
}
