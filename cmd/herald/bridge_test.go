package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/config"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
)

// herald bridge against the whole mesh: the list joins the registry's
// bridges with the edge's status; get, dead, replay, disable, enable,
// secret and delete call the real services; bad names, a missing key and
// an application's key get clear answers.
func TestBridgeAgainstTheMesh(t *testing.T) {
	c := startMesh(t, func(c *config.Common) { c.SecretKey = secretbox.NewKey() })
	ctx := context.Background()
	reg := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(c.RegistryAddr), rpc.ClientOptions(cliTestKey)...)
	for _, name := range []string{"billing.invoice.paid", "identity.user.created"} {
		if _, err := reg.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: &registryv1.EventType{Name: name, Schema: `{"type":"object"}`}})); err != nil {
			t.Fatal(err)
		}
	}
	app, err := reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "warehouse", Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	appID, appKey := app.Msg.GetApplication().GetId(), app.Msg.GetKey().GetSecret()
	other, err := reg.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "other", Grants: []*registryv1.Grant{{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "*"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	const secret = "the-kafka-password"
	create := func(b *registryv1.Bridge) {
		t.Helper()
		if _, err := reg.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: b})); err != nil {
			t.Fatal(err)
		}
	}
	create(&registryv1.Bridge{
		Name: "billing-to-kafka", ApplicationId: appID, Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: []string{"127.0.0.1:1"}, Topic: "billing", SaslMechanism: "PLAIN", Username: "herald"}},
		Sink:   &registryv1.BridgeSink{Types: []string{"billing.*"}}, Secret: secret,
	})
	create(&registryv1.Bridge{
		Name: "signups-from-mqtt", ApplicationId: appID, Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
		System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://127.0.0.1:1", Topic: "signups/#"}},
		Source: &registryv1.BridgeSource{EventType: "identity.user.created"},
	})
	create(&registryv1.Bridge{
		Name: "other-to-amqp", ApplicationId: other.Msg.GetApplication().GetId(), Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: "amqp://127.0.0.1:1"}},
		Sink:   &registryv1.BridgeSink{Types: []string{"*"}}, Disabled: true,
	})

	t.Setenv("HERALD_REGISTRY_ADDR", c.RegistryAddr)
	t.Setenv("HERALD_EDGE_ADDR", c.EdgeAddr)
	t.Setenv("HERALD_ADMIN_KEY", cliTestKey)
	t.Setenv("HERALD_KEY", "")
	run := func(args ...string) (string, error) {
		t.Helper()
		return cli(ctx, t, append([]string{"bridge"}, args...)...)
	}
	row := func(out, name string) []string {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == name {
				return f
			}
		}
		return nil
	}

	// The list: every bridge of the registry, with the edge's status once
	// the edge has heard of it (within a Watch round trip).
	var out string
	testutil.Eventually(t, 20*time.Second, func() bool {
		out, err = run()
		r := row(out, "billing-to-kafka")
		return err == nil && len(r) >= 6 && r[3] != "-"
	}, "the edge's status of the bridges")
	t.Logf("herald bridge:\n%s", out)
	if !strings.HasPrefix(out, "NAME") || !strings.Contains(strings.Fields(strings.SplitN(out, "\n", 2)[0])[6], "ERROR") {
		t.Errorf("header:\n%s", out)
	}
	if r := row(out, "billing-to-kafka"); r[1] != "kafka" || r[2] != "sink" || (r[3] != "yes" && r[3] != "no") || r[5] != "0" {
		t.Errorf("kafka row %v:\n%s", r, out)
	}
	if r := row(out, "signups-from-mqtt"); len(r) < 6 || r[1] != "mqtt" || r[2] != "source" {
		t.Errorf("mqtt row %v:\n%s", r, out)
	}
	if r := row(out, "other-to-amqp"); len(r) < 4 || r[1] != "amqp" || r[3] != "disabled" {
		t.Errorf("amqp row %v:\n%s", r, out)
	}
	if listed, err := run("list"); err != nil || row(listed, "billing-to-kafka") == nil {
		t.Errorf("list: %v\n%s", err, listed)
	}
	if js, err := run("list", "--json"); err != nil || !strings.Contains(js, `"name": "billing-to-kafka"`) {
		t.Errorf("list --json: %v\n%s", err, js)
	}

	// get: JSON, without the secret.
	out, err = run("get", "billing-to-kafka")
	var got map[string]any
	if err != nil || json.Unmarshal([]byte(out), &got) != nil || got["name"] != "billing-to-kafka" || got["secretSet"] != true {
		t.Errorf("get: %v\n%s", err, out)
	}
	if strings.Contains(out, secret) || strings.Contains(out, "sealed") {
		t.Errorf("get shows the secret:\n%s", out)
	}

	// dead letters: none yet.
	if out, err := run("dead", "billing-to-kafka"); err != nil || !strings.Contains(out, "No dead letters for billing-to-kafka.") {
		t.Errorf("dead: %v\n%s", err, out)
	}
	if out, err := run("dead", "signups-from-mqtt"); err != nil || !strings.Contains(out, "No dead letters") {
		t.Errorf("dead of a source: %v\n%s", err, out)
	}

	// replay: a range of the log with one event of the sink's types.
	router := routerv1connect.NewRouterServiceClient(rpc.HTTPClient(), rpc.BaseURL(c.RouterAddr), rpc.ClientOptions(appKey)...)
	pub, err := router.Publish(ctx, connect.NewRequest(&routerv1.PublishRequest{Events: []*eventv1.CloudEvent{{
		Id: "evt_1", Source: "//billing", SpecVersion: "1.0", Type: "billing.invoice.paid",
		Data: &eventv1.CloudEvent_TextData{TextData: `{"amount":1}`},
	}}}))
	if err != nil {
		t.Fatal(err)
	}
	if e := pub.Msg.GetResults()[0].GetError(); e != nil {
		t.Fatalf("publish refused: %v", e)
	}
	if out, err := run("replay", "billing-to-kafka", "--after", "0"); err != nil || !strings.Contains(out, "Queued 1 event(s) for delivery to billing-to-kafka.") {
		t.Errorf("replay --after 0: %v\n%s", err, out)
	}
	if out, err := run("replay", "billing-to-kafka", "--failed-since", "2026-01-01T00:00:00Z"); err != nil || !strings.Contains(out, "Queued 0 event(s)") {
		t.Errorf("replay --failed-since: %v\n%s", err, out)
	}
	for args, want := range map[string]string{
		"replay billing-to-kafka":                                  "exactly one of --failed-since TIME or --after CURSOR",
		"replay billing-to-kafka --after 0 --failed-since x":       "exactly one of",
		"replay billing-to-kafka --to 5-0":                         "exactly one of",
		"replay billing-to-kafka --after soon":                     `--after: cursor "soon" is not a stream id`,
		"replay billing-to-kafka --failed-since yesterday":         `--failed-since "yesterday": give a time in RFC 3339`,
		"replay signups-from-mqtt --after 0":                       "a source has nothing to replay",
		"get Bad_Name":                                             `"Bad_Name" is not a bridge name`,
		"dead ../etc":                                              `"../etc" is not a bridge name`,
		"get no-such-bridge":                                       `get bridge no-such-bridge: no bridge "no-such-bridge" (see herald bridge list)`,
		"disable no-such-bridge":                                   `no bridge "no-such-bridge"`,
		"dead no-such-bridge":                                      `the edge knows no bridge "no-such-bridge"`,
		"replay no-such-bridge --after 0":                          `the edge knows no bridge "no-such-bridge"`,
		"delete no-such-bridge":                                    `delete bridge no-such-bridge: no bridge "no-such-bridge"`,
		"secret billing-to-kafka":                                  "give the environment variable that holds the secret with --from-env VAR",
		"secret billing-to-kafka --from-env HERALD_TEST_UNSET_VAR": "--from-env HERALD_TEST_UNSET_VAR: the environment variable is not set",
		"get": "accepts 1 arg(s), received 0",
	} {
		if out, err := run(strings.Fields(args)...); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q\n%s", args, err, want, out)
		}
	}

	// disable, enable, and the registry says so.
	disabled := func() bool {
		res, err := reg.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: "billing-to-kafka"}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetBridge().GetDisabled()
	}
	if out, err := run("disable", "billing-to-kafka"); err != nil || !strings.Contains(out, "Bridge billing-to-kafka is disabled.") || !disabled() {
		t.Errorf("disable: %v\n%s", err, out)
	}
	if out, _ := run(); row(out, "billing-to-kafka")[3] != "disabled" {
		t.Errorf("list after disable:\n%s", out)
	}
	if out, err := run("disable", "billing-to-kafka"); err != nil || !strings.Contains(out, "already disabled") {
		t.Errorf("disable again: %v\n%s", err, out)
	}
	if out, err := run("enable", "billing-to-kafka"); err != nil || !strings.Contains(out, "is enabled") || disabled() {
		t.Errorf("enable: %v\n%s", err, out)
	}

	// secret: from the environment, never printed.
	t.Setenv("HERALD_TEST_BRIDGE_SECRET", "rotated-password")
	if out, err := run("secret", "billing-to-kafka", "--from-env", "HERALD_TEST_BRIDGE_SECRET"); err != nil || strings.Contains(out, "rotated-password") {
		t.Errorf("secret: %v\n%s", err, out)
	}

	// An application's key: its own bridges, and no changes.
	t.Setenv("HERALD_ADMIN_KEY", "")
	t.Setenv("HERALD_KEY", appKey)
	out, err = run()
	if err != nil || row(out, "billing-to-kafka") == nil || row(out, "other-to-amqp") != nil {
		t.Errorf("list with an application's key: %v\n%s", err, out)
	}
	if _, err := run("get", "other-to-amqp"); err == nil || !strings.Contains(err.Error(), `no bridge "other-to-amqp"`) {
		t.Errorf("get of another application's bridge: %v", err)
	}
	if _, err := run("delete", "billing-to-kafka"); err == nil || !strings.Contains(err.Error(), "needs the operator's key") {
		t.Errorf("delete with an application's key: %v", err)
	}
	if _, err := run("replay", "billing-to-kafka", "--after", "0"); err == nil || !strings.Contains(err.Error(), "needs the operator's key") {
		t.Errorf("replay with an application's key: %v", err)
	}

	// No key at all.
	t.Setenv("HERALD_KEY", "")
	for _, args := range [][]string{{}, {"get", "billing-to-kafka"}, {"dead", "billing-to-kafka"}, {"delete", "billing-to-kafka"}} {
		if _, err := run(args...); err == nil || !strings.Contains(err.Error(), "no key: give the operator's key with --key or HERALD_ADMIN_KEY") {
			t.Errorf("%v without a key: %v", args, err)
		}
	}
	// A wrong key, given as a flag.
	if _, err := run("--key", "hk_wrong", "get", "billing-to-kafka"); err == nil || !strings.Contains(err.Error(), "refused the key") {
		t.Errorf("a wrong key: %v", err)
	}

	// delete: gone from the registry, then from the list.
	t.Setenv("HERALD_ADMIN_KEY", cliTestKey)
	if out, err := run("delete", "signups-from-mqtt"); err != nil || !strings.Contains(out, "Deleted bridge signups-from-mqtt.") {
		t.Errorf("delete: %v\n%s", err, out)
	}
	if _, err := run("get", "signups-from-mqtt"); err == nil || !strings.Contains(err.Error(), `no bridge "signups-from-mqtt"`) {
		t.Errorf("get after delete: %v", err)
	}
	if out, _ := run(); row(out, "signups-from-mqtt") != nil {
		t.Errorf("list after delete:\n%s", out)
	}

	// herald catalog apply: a new bridge, its secret from the environment;
	// a bridge that would change system is refused with what to do.
	file := `version: 1
bridges:
  - name: paid-to-rabbit
    application: warehouse
    direction: sink
    amqp: {url: "amqp://herald@127.0.0.1:1/"}
    sink: {types: [billing.invoice.paid]}
    secretFromEnv: HERALD_TEST_RABBIT_SECRET
`
	t.Setenv("HERALD_TEST_RABBIT_SECRET", "rabbit-password")
	out, err = herald(t, file, "apply", "-f", "-", "--registry", c.RegistryAddr, "--key", cliTestKey)
	if err != nil || !strings.Contains(out, "+ create bridge paid-to-rabbit") || !strings.Contains(out, "secret: from $HERALD_TEST_RABBIT_SECRET") || strings.Contains(out, "rabbit-password") {
		t.Errorf("catalog apply: %v\n%s", err, out)
	}
	if out, _ := run(); row(out, "paid-to-rabbit") == nil {
		t.Errorf("the applied bridge is not listed:\n%s", out)
	}
	out, err = herald(t, strings.Replace(file, `amqp: {url: "amqp://herald@127.0.0.1:1/"}`, "mqtt: {broker: tcp://127.0.0.1:1}", 1), "apply", "-f", "-", "--registry", c.RegistryAddr, "--key", cliTestKey)
	if err == nil || !strings.Contains(out, "! bridge paid-to-rabbit: it is amqp in the registry and mqtt in the file") || !strings.Contains(err.Error(), "nothing applied") {
		t.Errorf("catalog apply of another system: %v\n%s", err, out)
	}

	// The edge down: the registry's table, and an error that says so.
	t.Setenv("HERALD_EDGE_ADDR", testutil.FreeAddr(t))
	out, err = run()
	if err == nil || !strings.Contains(err.Error(), "the edge is unreachable") || row(out, "billing-to-kafka") == nil {
		t.Errorf("list with the edge down: %v\n%s", err, out)
	}
}
