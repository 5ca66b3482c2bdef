package catalogfile

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

const bridgeSecret1 = "kafka-password-from-the-environment"

// bridgesFile has a bridge of each system, for the application "warehouse".
const bridgesFile = `version: 1
eventTypes:
  - name: billing.invoice.paid
    schema: {type: object}
  - name: identity.user.created
    schema: {type: object}
bridges:
  - name: billing-to-kafka
    application: warehouse
    direction: sink
    description: Billing events for the warehouse.
    kafka:
      brokers: [kafka-1.internal:9093, kafka-2.internal:9093]
      topic: herald.billing
      saslMechanism: SCRAM-SHA-512
      username: herald
      tls: true
    sink:
      types: [billing.*]
      filter: data.amount > 0
      retrySchedule: [1s, 30s, 5m]
      contentMode: structured
      maxInFlight: 100
    secretFromEnv: TEST_KAFKA_SECRET
  - name: signups-from-rabbit
    application: warehouse
    direction: source
    amqp:
      url: amqp://herald@rabbit.internal:5672/prod
      queue: signups
    source:
      eventType: identity.user.created
      batchSize: 50
  - name: billing-to-mqtt
    application: warehouse
    direction: sink
    mqtt:
      broker: tcp://mqtt.internal:1883
      protocolVersion: 4
      qos: 2
    sink:
      types: [billing.invoice.paid]
      jsonData: true
  - name: billing-to-lake
    application: warehouse
    direction: sink
    disabled: true
    lake:
      directory: /var/lib/herald/lake
      maxFileAge: 10m
    sink:
      types: [billing.*]
`

// TestBridgesAgainstRealRegistry applies, updates and exports bridges with
// the real registry: secrets from the environment and never in exports,
// updates with the fields that changed, and the changes a bridge cannot
// take refused before anything is applied.
func TestBridgesAgainstRealRegistry(t *testing.T) {
	s := session{t: t, client: startRegistry(t)}
	ctx := context.Background()
	app, err := s.client.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{
		Name: "warehouse", Grants: []*registryv1.Grant{
			{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"},
			{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "identity.*"},
		},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	appID := app.Msg.GetApplication().GetId()

	// Without the secret's variable: a plan problem, and nothing applied.
	t.Setenv("TEST_KAFKA_SECRET", "")
	p := s.plan(bridgesFile)
	if len(p.Problems) != 1 || !strings.Contains(p.Problems[0], "secretFromEnv TEST_KAFKA_SECRET: the environment variable is not set") {
		t.Fatalf("problems = %q", p.Problems)
	}
	var out bytes.Buffer
	var pe *ProblemsError
	if err := Apply(ctx, s.client, p, &out); !errors.As(err, &pe) {
		t.Fatalf("apply with problems: %v", err)
	}
	// (the registry registers its own herald.* types meanwhile: look at ours)
	if _, err := s.client.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "billing.invoice.paid"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("a refused plan changed the registry: %v", err)
	}

	t.Setenv("TEST_KAFKA_SECRET", bridgeSecret1)
	p = s.plan(bridgesFile)
	want := []string{"create event type billing.invoice.paid", "create event type identity.user.created", "create bridge billing-to-kafka",
		"create bridge signups-from-rabbit", "create bridge billing-to-mqtt", "create bridge billing-to-lake"}
	if got := kinds(p); !slices.Equal(got, want) {
		t.Fatalf("plan = %v\n%s", got, text(p))
	}
	if pt := text(p); strings.Contains(pt, bridgeSecret1) || !strings.Contains(pt, "secret: from $TEST_KAFKA_SECRET") {
		t.Errorf("plan text shows the secret, or not where it comes from:\n%s", pt)
	}
	if err := Apply(ctx, s.client, p, &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	get := func(name string) *registryv1.Bridge {
		t.Helper()
		res, err := s.client.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: name}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetBridge()
	}
	kafka := get("billing-to-kafka")
	if kafka.GetApplicationId() != appID || !kafka.GetSecretSet() || !kafka.GetKafka().GetTls() || kafka.GetSink().GetContentMode() != registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED ||
		len(kafka.GetSink().GetRetrySchedule()) != 3 || kafka.GetSink().GetRetrySchedule()[1].AsDuration() != 30*time.Second || kafka.GetSink().GetMaxInFlight() != 100 {
		t.Errorf("kafka bridge = %v", kafka)
	}
	if m := get("billing-to-mqtt"); m.GetMqtt().GetProtocolVersion() != 4 || m.GetMqtt().GetQos() != 2 || !m.GetSink().GetJsonData() {
		t.Errorf("mqtt bridge = %v", m)
	}
	if l := get("billing-to-lake"); !l.GetDisabled() || l.GetLake().GetMaxFileAge().AsDuration() != 10*time.Minute {
		t.Errorf("lake bridge = %v", l)
	}
	if a := get("signups-from-rabbit"); a.GetSource().GetBatchSize() != 50 || a.GetAmqp().GetQueue() != "signups" {
		t.Errorf("amqp bridge = %v", a)
	}

	// Idempotent; the secret is kept (and said so).
	p = s.plan(bridgesFile)
	if !p.Empty() || len(p.Problems) != 0 || !strings.Contains(text(p), "billing-to-kafka: its secret is kept") {
		t.Fatalf("second plan:\n%s", text(p))
	}

	// The export has the bridges and never a secret, and plans nothing.
	exported := s.export()
	for _, w := range []string{"bridges:", "name: billing-to-kafka", "application: warehouse", "secretFromEnv: HERALD_BRIDGE_SECRET_BILLING_TO_KAFKA",
		"saslMechanism: SCRAM-SHA-512", "contentMode: structured", "- 30s", "queue: signups", "protocolVersion: 4", "directory: /var/lib/herald/lake", "maxFileAge: 10m", "disabled: true"} {
		if !strings.Contains(string(exported), w) {
			t.Errorf("export lacks %q:\n%s", w, exported)
		}
	}
	if strings.Contains(string(exported), bridgeSecret1) || strings.Contains(string(exported), "secret:") {
		t.Errorf("export has a secret:\n%s", exported)
	}
	if p := s.plan(string(exported)); !p.Empty() || len(p.Problems) != 0 {
		t.Errorf("plan of the export:\n%s", text(p))
	}

	// Updates: only the fields that changed, in the update mask.
	changed := strings.NewReplacer(
		"description: Billing events for the warehouse.", "description: Billing, for the warehouse.",
		"topic: herald.billing", "topic: herald.billing.v2",
		"filter: data.amount > 0", "filter: data.amount > 10",
		"retrySchedule: [1s, 30s, 5m]", "retrySchedule: [2s]",
		"batchSize: 50", "batchSize: 20",
		"disabled: true", "disabled: false",
		"qos: 2", "qos: 1",
	).Replace(bridgesFile)
	p = s.plan(changed)
	masks := map[string]string{}
	for _, c := range p.Changes {
		if c.Kind != UpdateBridge {
			t.Errorf("unexpected change %s %s", c.Kind, c.Name)
		}
		masks[c.Name] = strings.Join(c.UpdateMask, ",")
	}
	for name, w := range map[string]string{
		"billing-to-kafka":    "description,kafka,sink.filter,sink.retry_schedule",
		"signups-from-rabbit": "source.batch_size",
		"billing-to-mqtt":     "mqtt",
		"billing-to-lake":     "disabled",
	} {
		if masks[name] != w {
			t.Errorf("%s: update mask %q, want %q\n%s", name, masks[name], w, text(p))
		}
	}
	if pt := text(p); !strings.Contains(pt, `kafka.topic: "herald.billing" -> "herald.billing.v2"`) || !strings.Contains(pt, "sink.retrySchedule: [1s, 30s, 5m] -> [2s]") {
		t.Errorf("plan text:\n%s", pt)
	}
	out.Reset()
	if err := Apply(ctx, s.client, p, &out); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	if p := s.plan(changed); !p.Empty() {
		t.Errorf("plan after the update:\n%s", text(p))
	}
	if k := get("billing-to-kafka"); k.GetKafka().GetTopic() != "herald.billing.v2" || !k.GetSecretSet() || !k.GetKafka().GetTls() || k.GetKafka().GetUsername() != "herald" {
		t.Errorf("updated kafka bridge = %v (the system's fields the file gives replace theirs, the others stay)", k)
	}

	// What a bridge cannot change: a plan problem each, saying to rename
	// or delete, and nothing applied.
	before := s.export()
	impossible := strings.NewReplacer(
		"    kafka:\n      brokers: [kafka-1.internal:9093, kafka-2.internal:9093]\n      topic: herald.billing.v2\n      saslMechanism: SCRAM-SHA-512\n      username: herald\n      tls: true\n",
		"    amqp:\n      url: amqp://rabbit.internal:5672\n",
		"types: [billing.invoice.paid]\n      jsonData", "types: [billing.*]\n      jsonData",
		"  - name: billing-to-lake\n    application: warehouse", "  - name: billing-to-lake\n    application: "+appID+"-other",
		"description: Billing, for the warehouse.", "description: changed too",
	).Replace(changed)
	p = s.plan(impossible)
	pt := text(p)
	for _, w := range []string{
		"! bridge billing-to-kafka: it is kafka in the registry and amqp in the file; a bridge keeps it once made: rename the bridge in the file (a new bridge), or delete the old one first (herald bridge delete billing-to-kafka)",
		"! bridge billing-to-mqtt: sink.types are [billing.invoice.paid] in the registry and [billing.*] in the file",
		"! bridge billing-to-lake: application \"" + appID + "-other\" is not in the registry",
		"3 problem(s) to fix in the file first",
	} {
		if !strings.Contains(pt, w) {
			t.Errorf("plan lacks %q:\n%s", w, pt)
		}
	}
	if err := Apply(ctx, s.client, p, &out); !errors.As(err, &pe) {
		t.Errorf("apply of an impossible plan: %v", err)
	}
	if after := s.export(); !bytes.Equal(after, before) {
		t.Errorf("a refused plan changed the registry")
	}
	// A direction, and an application the bridge does not act for.
	if _, err := s.client.CreateApplication(ctx, connect.NewRequest(&registryv1.CreateApplicationRequest{Application: &registryv1.Application{Name: "other"}})); err != nil {
		t.Fatal(err)
	}
	p = s.plan(strings.NewReplacer("  - name: billing-to-lake\n    application: warehouse", "  - name: billing-to-lake\n    application: other",
		"    direction: sink\n    mqtt:\n      broker: tcp://mqtt.internal:1883\n      protocolVersion: 4\n      qos: 1\n    sink:\n      types: [billing.invoice.paid]\n      jsonData: true\n",
		"    direction: source\n    mqtt:\n      broker: tcp://mqtt.internal:1883\n      topic: sensors/#\n    source:\n      eventType: identity.user.created\n").Replace(changed))
	if pt := text(p); !strings.Contains(pt, "billing-to-lake: it acts for application warehouse in the registry and other in the file") ||
		!strings.Contains(pt, "billing-to-mqtt: it is a sink in the registry and a source in the file") {
		t.Errorf("plan:\n%s", pt)
	}

	// A bridge left out of the file is left alone, as other resources are.
	p = s.plan("version: 1\n")
	if !p.Empty() || !strings.Contains(text(p), "bridge billing-to-kafka") || !strings.Contains(text(p), "left as they are") {
		t.Errorf("plan of a file without bridges:\n%s", text(p))
	}
}

func TestParseBridgeErrors(t *testing.T) {
	_, err := Parse("catalog.yaml", strings.NewReader(`version: 1
bridges:
  - name: Bad_Name
    application: a
    direction: sideways
    kafka: {topic: t}
    mqtt: {broker: "tcp://h:1"}
  - name: src
    application: a
    direction: source
    lake: {directory: /x}
    sink: {types: [a.b.c]}
  - name: snk
    direction: sink
    secret: hunter2
    secretFromEnv: "not a var"
    amqp: {url: "amqp://u:p@h:5672", queue: q}
    sink:
      types: [billing.*.paid]
      contentMode: fancy
      retrySchedule: [soon]
      maxInFlight: 20000
  - name: snk
    application: a
    direction: sink
    kafka: {brokers: [nohost], topic: t, saslMechanism: GSSAPI}
    sink: {types: [a.*]}
  - name: src2
    application: a
    direction: source
    mqtt: {broker: "tcp://h:1", protocolVersion: 3, qos: 0}
    source: {batchSize: 900}
  - name: none
    application: a
    direction: sink
    sink: {types: [a.*]}
`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, w := range []string{
		`catalog.yaml:3: bridge "Bad_Name": a bridge name is 1-63 lower-case letters`,
		`catalog.yaml:3: bridge "Bad_Name": direction "sideways": want sink or source`,
		`catalog.yaml:3: bridge "Bad_Name": give one system, not kafka and mqtt`,
		`catalog.yaml:3: bridge "Bad_Name": kafka needs brokers (host:port) and a topic`,
		`catalog.yaml:8: bridge "src": a lake bridge is a sink only`,
		`catalog.yaml:8: bridge "src": a source has source settings, not sink`,
		`catalog.yaml:13: bridge "snk": application is required`,
		`catalog.yaml:15: bridge "snk": secrets are never written in a catalog file: give secretFromEnv: VAR`,
		`catalog.yaml:13: bridge "snk": secretFromEnv "not a var" is not an environment variable name`,
		`catalog.yaml:13: bridge "snk": amqp url carries a password: take it out and give secretFromEnv: VAR`,
		`catalog.yaml:13: bridge "snk": queue is a source's setting`,
		`catalog.yaml:13: bridge "snk": sink.types: pattern "billing.*.paid"`,
		`catalog.yaml:13: bridge "snk": sink.contentMode "fancy": want binary or structured`,
		`catalog.yaml:13: bridge "snk": sink.retrySchedule "soon"`,
		`catalog.yaml:13: bridge "snk": sink.maxInFlight 20000: want 1 to 10000`,
		`catalog.yaml:23: bridge "snk" is listed twice (first at line 13)`,
		`catalog.yaml:23: bridge "snk": kafka broker "nohost" is not host:port`,
		`catalog.yaml:23: bridge "snk": kafka saslMechanism "GSSAPI"`,
		`catalog.yaml:28: bridge "src2": mqtt protocolVersion 3: want 4 (MQTT 3.1.1) or 5`,
		`catalog.yaml:28: bridge "src2": an mqtt source needs a topic`,
		`catalog.yaml:28: bridge "src2": a source needs source.eventType`,
		`catalog.yaml:28: bridge "src2": source.batchSize 900: want 1 to 500`,
		`catalog.yaml:33: bridge "none": give its system: one of kafka, amqp, mqtt or lake`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	// Unknown fields, with the file's words.
	for text, w := range map[string]string{
		"version: 1\nbridges:\n  - name: a\n    colour: blue\n":                         "catalog.yaml:4: field colour not found in a bridge",
		"version: 1\nbridges:\n  - name: a\n    kafka:\n      partitions: 3\n":          "catalog.yaml:5: field partitions not found in a bridge's kafka",
		"version: 1\nbridges:\n  - name: a\n    sink:\n      start: now\n":              "catalog.yaml:5: field start not found in a bridge's sink",
		"version: 1\nbridges:\n  - name: a\n    lake:\n      s3: {bucket: b, key: k}\n": "catalog.yaml:5: field key not found in a bridge's lake.s3",
	} {
		_, err := Parse("catalog.yaml", strings.NewReader(text))
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("%q: %v, want %q", text, err, w)
		}
	}
}
