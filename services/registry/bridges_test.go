package registry_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/rpc"
	"github.com/heraldmesh/herald/platform/secretbox"
	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/registry"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// bridgeSink is a Kafka sink of types for appID: each test changes what it
// is about.
func bridgeSink(name, appID string, types ...string) *registryv1.Bridge {
	return &registryv1.Bridge{
		Name: name, ApplicationId: appID, Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: []string{"kafka.example:9092"}, Topic: "herald.events"}},
		Sink:   &registryv1.BridgeSink{Types: types},
	}
}

// bridgeSource is a Kafka source of eventType for appID.
func bridgeSource(name, appID, eventType string) *registryv1.Bridge {
	return &registryv1.Bridge{
		Name: name, ApplicationId: appID, Direction: registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
		System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: []string{"kafka.example:9092"}, Topic: "orders"}},
		Source: &registryv1.BridgeSource{EventType: eventType},
	}
}

func (e *env) createBridge(t *testing.T, b *registryv1.Bridge) *registryv1.Bridge {
	t.Helper()
	res, err := e.admin.CreateBridge(context.Background(), connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: b}))
	if err != nil {
		t.Fatalf("create bridge %s: %v", b.GetName(), err)
	}
	return res.Msg.GetBridge()
}

// bridgeApp registers the types bridge tests use and an application that
// may receive billing.* and publish orders.*, and returns it with its key.
// billing.legacy.logged and orders.order.returned are retired; ops.disk.full
// is internal.
func (e *env) bridgeApp(t *testing.T) (*registryv1.Application, string) {
	t.Helper()
	ctx := context.Background()
	e.createType(t, &registryv1.EventType{Name: "billing.invoice.paid", Visibility: registryv1.Visibility_VISIBILITY_PARTNER})
	e.createType(t, &registryv1.EventType{Name: "orders.order.placed", Visibility: registryv1.Visibility_VISIBILITY_PARTNER})
	e.createType(t, &registryv1.EventType{Name: "orders.order.shipped", Visibility: registryv1.Visibility_VISIBILITY_PARTNER})
	e.createType(t, &registryv1.EventType{Name: "ops.disk.full", Visibility: registryv1.Visibility_VISIBILITY_INTERNAL})
	for _, name := range []string{"billing.legacy.logged", "orders.order.returned"} {
		legacy := e.createType(t, &registryv1.EventType{Name: name})
		legacy.Lifecycle = registryv1.Lifecycle_LIFECYCLE_RETIRED
		must(e.admin.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: legacy}))).msg(t)
	}
	return e.createApp(t, &registryv1.Application{
		Name: "warehouse", Tenant: "acme", Grants: []*registryv1.Grant{subscribe("billing.*"), publish("orders.*")},
	})
}

// bridgeText is everything a client is shown of m.
func bridgeText(m proto.Message) string { return prototext.Format(m) }

// noSecrets fails if a message shown to a client carries a secret, a sealed
// value or the input-only secret field.
func noSecrets(t *testing.T, what string, m proto.Message, secrets ...string) {
	t.Helper()
	text := bridgeText(m)
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%s shows a secret: %s", what, text)
		}
	}
	for _, field := range []string{"sealed_secret", "sealed_key", "secret:"} {
		if strings.Contains(text, field) {
			t.Errorf("%s carries %s: %s", what, field, text)
		}
	}
}

// Every system is created as sink and, but for the lake, as source, with
// its defaults filled in; Get and List answer what Create did.
func TestBridgeCreateDefaults(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, _ := e.bridgeApp(t)
	id := app.GetId()
	defaultSchedule := durations(time.Second, 10*time.Second, time.Minute, 5*time.Minute, 30*time.Minute, 2*time.Hour)
	sinkDefaults := func(t *testing.T, b *registryv1.Bridge) {
		t.Helper()
		s := b.GetSink()
		if !slices.EqualFunc(s.GetRetrySchedule(), defaultSchedule, func(a, b *durationpb.Duration) bool { return proto.Equal(a, b) }) {
			t.Errorf("retry schedule %v, want the default 1s 10s 1m 5m 30m 2h", s.GetRetrySchedule())
		}
		if s.GetMaxInFlight() != 1000 {
			t.Errorf("max_in_flight %d, want 1000", s.GetMaxInFlight())
		}
		if b.GetSource() != nil || b.GetKeyId() != "" {
			t.Errorf("a sink with a source part or a key: %v", b)
		}
	}
	sourceDefaults := func(t *testing.T, b *registryv1.Bridge) {
		t.Helper()
		if b.GetSource().GetBatchSize() != 100 {
			t.Errorf("batch_size %d, want 100", b.GetSource().GetBatchSize())
		}
		if !strings.HasPrefix(b.GetKeyId(), "key_") || b.GetSink() != nil {
			t.Errorf("a source without a key, or with a sink part: %v", b)
		}
	}
	for _, c := range []struct {
		name  string
		in    *registryv1.Bridge
		check func(*testing.T, *registryv1.Bridge)
	}{
		{"kafka-sink", bridgeSink("kafka-sink", id, "billing.*", "billing.invoice.paid"), func(t *testing.T, b *registryv1.Bridge) {
			sinkDefaults(t, b)
			if k := b.GetKafka(); k.GetGroup() != "" || k.GetTopic() != "herald.events" || !slices.Equal(k.GetBrokers(), []string{"kafka.example:9092"}) {
				t.Errorf("kafka sink: %v (a sink has no consumer group)", k)
			}
		}},
		{"kafka-source", bridgeSource("kafka-source", id, "orders.order.placed"), func(t *testing.T, b *registryv1.Bridge) {
			sourceDefaults(t, b)
			if g := b.GetKafka().GetGroup(); g != "herald-kafka-source" {
				t.Errorf("consumer group %q, want herald-kafka-source", g)
			}
		}},
		{"kafka-source-own-group", func() *registryv1.Bridge {
			b := bridgeSource("kafka-source-own-group", id, "orders.order.placed")
			b.GetKafka().Group = "mine"
			b.GetKafka().SaslMechanism, b.GetKafka().Username, b.Secret = "SCRAM-SHA-512", "herald", "kafka-password"
			return b
		}(), func(t *testing.T, b *registryv1.Bridge) {
			if b.GetKafka().GetGroup() != "mine" || !b.GetSecretSet() {
				t.Errorf("kafka source with its group and SASL: %v", b)
			}
		}},
		{"amqp-sink", func() *registryv1.Bridge {
			b := bridgeSink("amqp-sink", id, "billing.*")
			b.System = &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: "amqp://herald@rabbit.example:5672/vhost"}}
			return b
		}(), func(t *testing.T, b *registryv1.Bridge) {
			sinkDefaults(t, b)
			if a := b.GetAmqp(); a.GetExchange() != "amq.topic" || a.GetRoutingKey() != "{type}" || a.GetQueue() != "" {
				t.Errorf("amqp sink defaults: %v", a)
			}
		}},
		{"amqp-source", func() *registryv1.Bridge {
			b := bridgeSource("amqp-source", id, "orders.order.placed")
			b.System = &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: "amqps://rabbit.example", Queue: "orders"}}
			return b
		}(), func(t *testing.T, b *registryv1.Bridge) {
			sourceDefaults(t, b)
			if a := b.GetAmqp(); a.GetQueue() != "orders" || a.GetExchange() != "" || a.GetRoutingKey() != "" {
				t.Errorf("amqp source: %v", a)
			}
		}},
		{"mqtt-sink", func() *registryv1.Bridge {
			b := bridgeSink("mqtt-sink", id, "billing.invoice.paid")
			b.System = &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883"}}
			return b
		}(), func(t *testing.T, b *registryv1.Bridge) {
			sinkDefaults(t, b)
			if m := b.GetMqtt(); m.GetTopic() != "herald/{type}" || m.GetQos() != 1 || m.GetProtocolVersion() != 5 {
				t.Errorf("mqtt sink defaults: %v", m)
			}
		}},
		{"mqtt-source", func() *registryv1.Bridge {
			b := bridgeSource("mqtt-source", id, "orders.order.placed")
			b.System = &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "ssl://mqtt.example:8883", Topic: "plant/+/orders/#", Qos: 2, ProtocolVersion: 4}}
			return b
		}(), func(t *testing.T, b *registryv1.Bridge) {
			sourceDefaults(t, b)
			if m := b.GetMqtt(); m.GetTopic() != "plant/+/orders/#" || m.GetQos() != 2 || m.GetProtocolVersion() != 4 {
				t.Errorf("mqtt source (a topic filter may have wildcards): %v", m)
			}
		}},
		{"lake-directory", func() *registryv1.Bridge {
			b := bridgeSink("lake-directory", id, "billing.*")
			b.System = &registryv1.Bridge_Lake{Lake: &registryv1.LakeBridge{Directory: "/var/lib/herald/lake"}}
			return b
		}(), func(t *testing.T, b *registryv1.Bridge) {
			sinkDefaults(t, b)
			if l := b.GetLake(); l.GetMaxFileBytes() != 64<<20 || l.GetMaxFileAge().AsDuration() != 5*time.Minute {
				t.Errorf("lake defaults: %v", l)
			}
		}},
		{"lake-s3", func() *registryv1.Bridge {
			b := bridgeSink("lake-s3", id, "billing.*")
			b.System = &registryv1.Bridge_Lake{Lake: &registryv1.LakeBridge{
				S3:           &registryv1.S3Location{Endpoint: "http://minio.example:9000", Bucket: "events", Prefix: "herald/", AccessKeyId: "AKIA"},
				MaxFileBytes: 2 << 20, MaxFileAge: durationpb.New(30 * time.Second),
			}}
			b.Secret = "s3-secret-access-key"
			b.Sink.RetrySchedule = durations(time.Second, 2*time.Second)
			b.Sink.MaxInFlight = 10
			b.Sink.ContentMode = registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED
			return b
		}(), func(t *testing.T, b *registryv1.Bridge) {
			l := b.GetLake()
			if l.GetS3().GetRegion() != "us-east-1" || l.GetMaxFileBytes() != 2<<20 || l.GetMaxFileAge().AsDuration() != 30*time.Second || !b.GetSecretSet() {
				t.Errorf("lake on s3: %v", b)
			}
			if s := b.GetSink(); len(s.GetRetrySchedule()) != 2 || s.GetMaxInFlight() != 10 || s.GetContentMode() != registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED {
				t.Errorf("sink settings given are kept: %v", s)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			secret := c.in.GetSecret()
			c.in.Id, c.in.Revision, c.in.KeyId, c.in.SealedKey = "brg_mine", 99, "key_mine", "forged" // output only: ignored
			created := e.createBridge(t, c.in)
			if !strings.HasPrefix(created.GetId(), "brg_") || created.GetName() != c.name || created.GetApplicationId() != id ||
				created.GetRevision() == 0 || created.GetRevision() == 99 || created.GetCreateTime() == nil || created.GetKeyId() == "key_mine" {
				t.Errorf("created: %v", created)
			}
			if created.GetSecretSet() != (secret != "") {
				t.Errorf("secret_set %v for a secret %q", created.GetSecretSet(), secret)
			}
			noSecrets(t, "create", created, secret, "forged")
			c.check(t, created)
			got := must(e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: created.GetId()}))).msg(t).GetBridge()
			byName := must(e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: c.name}))).msg(t).GetBridge()
			if !proto.Equal(got, created) || !proto.Equal(byName, created) {
				t.Errorf("get: %v\nby name: %v\nwant %v", got, byName, created)
			}
		})
	}
	list := must(e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t).GetBridges()
	var names []string
	for _, b := range list {
		names = append(names, b.GetName())
		noSecrets(t, "list", b, "kafka-password", "s3-secret-access-key")
	}
	if want := []string{"amqp-sink", "amqp-source", "kafka-sink", "kafka-source", "kafka-source-own-group", "lake-directory", "lake-s3", "mqtt-sink", "mqtt-source"}; !slices.Equal(names, want) {
		t.Errorf("list: %v, want %v (by name)", names, want)
	}
	// A source's key is its application's, for bridges only.
	keys := must(e.admin.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: id}))).msg(t).GetKeys()
	bridgeKeys := 0
	for _, k := range keys {
		if k.GetPurpose() == registryv1.KeyPurpose_KEY_PURPOSE_BRIDGE {
			bridgeKeys++
		}
	}
	if bridgeKeys != 4 {
		t.Errorf("%d bridge keys for 4 sources: %v", bridgeKeys, keys)
	}
}

// Every refusal names the field and writes nothing.
func TestBridgeValidation(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, _ := e.bridgeApp(t)
	id := app.GetId()
	partner, _ := e.createApp(t, &registryv1.Application{
		Name: "partner", Audience: registryv1.Audience_AUDIENCE_PARTNER, Grants: []*registryv1.Grant{subscribe("ops.*"), publish("ops.*")},
	})
	e.createBridge(t, bridgeSink("taken", id, "billing.*"))
	sink := func(f func(*registryv1.Bridge)) *registryv1.Bridge {
		b := bridgeSink("fresh", id, "billing.*")
		f(b)
		return b
	}
	source := func(f func(*registryv1.Bridge)) *registryv1.Bridge {
		b := bridgeSource("fresh", id, "orders.order.placed")
		f(b)
		return b
	}
	kafka := func(b *registryv1.Bridge) *registryv1.KafkaBridge { return b.GetKafka() }
	amqp := func(b *registryv1.Bridge, a *registryv1.AmqpBridge) { b.System = &registryv1.Bridge_Amqp{Amqp: a} }
	mqtt := func(b *registryv1.Bridge, m *registryv1.MqttBridge) { b.System = &registryv1.Bridge_Mqtt{Mqtt: m} }
	lake := func(b *registryv1.Bridge, l *registryv1.LakeBridge) { b.System = &registryv1.Bridge_Lake{Lake: l} }
	s3 := func() *registryv1.S3Location {
		return &registryv1.S3Location{Endpoint: "https://s3.example", Bucket: "events", AccessKeyId: "AKIA"}
	}
	const invalidArg = connect.CodeInvalidArgument
	for _, c := range []struct {
		name string
		in   *registryv1.Bridge
		code connect.Code
		want []string
	}{
		{"no bridge", nil, invalidArg, []string{"bridge is required"}},
		{"no name", sink(func(b *registryv1.Bridge) { b.Name = "" }), invalidArg, []string{"bridge.name", "lower-case"}},
		{"bad name", sink(func(b *registryv1.Bridge) { b.Name = "Orders_Out" }), invalidArg, []string{`bridge.name "Orders_Out"`}},
		{"name ending in -", sink(func(b *registryv1.Bridge) { b.Name = "out-" }), invalidArg, []string{`bridge.name "out-"`}},
		{"long name", sink(func(b *registryv1.Bridge) { b.Name = strings.Repeat("a", 64) }), invalidArg, []string{"bridge.name", "1-63"}},
		{"duplicate name", sink(func(b *registryv1.Bridge) { b.Name = "taken" }), connect.CodeAlreadyExists, []string{`bridge "taken" already exists`}},
		{"no application", sink(func(b *registryv1.Bridge) { b.ApplicationId = "" }), invalidArg, []string{"bridge.application_id is required"}},
		{"unknown application", sink(func(b *registryv1.Bridge) { b.ApplicationId = "app_nothing" }), connect.CodeNotFound, []string{`application "app_nothing" does not exist`}},
		{"no direction", sink(func(b *registryv1.Bridge) { b.Direction = 0 }), invalidArg, []string{"bridge.direction is required"}},
		{"unknown direction", sink(func(b *registryv1.Bridge) { b.Direction = 9 }), invalidArg, []string{"bridge.direction"}},
		{"long description", sink(func(b *registryv1.Bridge) { b.Description = strings.Repeat("x", 1025) }), invalidArg, []string{"bridge.description", "1024"}},
		{"long secret", sink(func(b *registryv1.Bridge) { b.Secret = strings.Repeat("s", 4097) }), invalidArg, []string{"bridge.secret", "4096"}},
		{"no system", sink(func(b *registryv1.Bridge) { b.System = nil }), invalidArg, []string{"bridge needs a system", "kafka, amqp, mqtt or lake"}},

		// Kafka.
		{"kafka without brokers", sink(func(b *registryv1.Bridge) { kafka(b).Brokers = nil }), invalidArg, []string{"bridge.kafka.brokers"}},
		{"kafka broker without port", sink(func(b *registryv1.Bridge) { kafka(b).Brokers = []string{"kafka.example:9092", "kafka.example"} }), invalidArg, []string{`bridge.kafka.brokers[1] "kafka.example" is not host:port`}},
		{"kafka topic with a space", sink(func(b *registryv1.Bridge) { kafka(b).Topic = "herald events" }), invalidArg, []string{`bridge.kafka.topic "herald events"`}},
		{"kafka topic ..", sink(func(b *registryv1.Bridge) { kafka(b).Topic = ".." }), invalidArg, []string{`bridge.kafka.topic ".."`}},
		{"kafka topic too long", sink(func(b *registryv1.Bridge) { kafka(b).Topic = strings.Repeat("t", 250) }), invalidArg, []string{"bridge.kafka.topic"}},
		{"kafka without topic", sink(func(b *registryv1.Bridge) { kafka(b).Topic = "" }), invalidArg, []string{"bridge.kafka.topic"}},
		{"kafka SASL without secret", sink(func(b *registryv1.Bridge) { kafka(b).SaslMechanism, kafka(b).Username = "PLAIN", "herald" }), invalidArg, []string{"bridge.kafka.sasl_mechanism PLAIN", "bridge.secret"}},
		{"kafka SASL without user", sink(func(b *registryv1.Bridge) { kafka(b).SaslMechanism, b.Secret = "SCRAM-SHA-256", "pw" }), invalidArg, []string{"bridge.kafka.sasl_mechanism", "username"}},
		{"kafka SASL GSSAPI", sink(func(b *registryv1.Bridge) { kafka(b).SaslMechanism = "GSSAPI" }), invalidArg, []string{`bridge.kafka.sasl_mechanism "GSSAPI"`}},
		{"kafka long group", source(func(b *registryv1.Bridge) { kafka(b).Group = strings.Repeat("g", 256) }), invalidArg, []string{"bridge.kafka.group"}},

		// AMQP.
		{"amqp URL with a password", sink(func(b *registryv1.Bridge) {
			amqp(b, &registryv1.AmqpBridge{Url: "amqp://herald:hunter2@rabbit.example/"})
		}), invalidArg, []string{"bridge.amqp.url carries a password", "bridge.secret"}},
		{"amqp URL over http", sink(func(b *registryv1.Bridge) { amqp(b, &registryv1.AmqpBridge{Url: "http://rabbit.example/"}) }), invalidArg, []string{"bridge.amqp.url must be an amqp://"}},
		{"amqp URL without host", sink(func(b *registryv1.Bridge) { amqp(b, &registryv1.AmqpBridge{Url: "amqp:///vhost"}) }), invalidArg, []string{"bridge.amqp.url"}},
		{"amqp sink with a queue", sink(func(b *registryv1.Bridge) { amqp(b, &registryv1.AmqpBridge{Url: "amqp://rabbit.example", Queue: "q"}) }), invalidArg, []string{"bridge.amqp.queue is a source's setting"}},
		{"amqp source without queue", source(func(b *registryv1.Bridge) { amqp(b, &registryv1.AmqpBridge{Url: "amqp://rabbit.example"}) }), invalidArg, []string{"bridge.amqp.queue is required"}},
		{"amqp long exchange", sink(func(b *registryv1.Bridge) {
			amqp(b, &registryv1.AmqpBridge{Url: "amqp://rabbit.example", Exchange: strings.Repeat("x", 256)})
		}), invalidArg, []string{"bridge.amqp", "255"}},

		// MQTT.
		{"mqtt wildcard sink topic +", sink(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Topic: "herald/+/x"})
		}), invalidArg, []string{`bridge.mqtt.topic "herald/+/x" has a wildcard`}},
		{"mqtt wildcard sink topic #", sink(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Topic: "herald/#"})
		}), invalidArg, []string{"bridge.mqtt.topic", "wildcard"}},
		{"mqtt QoS 3", sink(func(b *registryv1.Bridge) { mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Qos: 3}) }), invalidArg, []string{"bridge.mqtt.qos is 3", "1 or 2"}},
		{"mqtt QoS -1", sink(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Qos: -1})
		}), invalidArg, []string{"bridge.mqtt.qos is -1"}},
		{"mqtt version 3", sink(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", ProtocolVersion: 3})
		}), invalidArg, []string{"bridge.mqtt.protocol_version is 3"}},
		{"mqtt broker over ws", sink(func(b *registryv1.Bridge) { mqtt(b, &registryv1.MqttBridge{Broker: "ws://mqtt.example:80"}) }), invalidArg, []string{"bridge.mqtt.broker"}},
		{"mqtt broker without port", sink(func(b *registryv1.Bridge) { mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example"}) }), invalidArg, []string{"bridge.mqtt.broker"}},
		{"mqtt broker with a password", sink(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://herald:hunter2@mqtt.example:1883"})
		}), invalidArg, []string{"bridge.mqtt.broker carries a password", "bridge.secret"}},
		{"mqtt source without topic", source(func(b *registryv1.Bridge) { mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883"}) }), invalidArg, []string{"bridge.mqtt.topic", "required for a source"}},
		{"mqtt source filter with # inside", source(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Topic: "plant/#/orders"})
		}), invalidArg, []string{`bridge.mqtt.topic "plant/#/orders" is not a topic filter`, "last level"}},
		{"mqtt source filter with a partial +", source(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Topic: "plant/line+/orders"})
		}), invalidArg, []string{"bridge.mqtt.topic", "whole level"}},
		{"mqtt long client id", sink(func(b *registryv1.Bridge) {
			mqtt(b, &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", ClientId: strings.Repeat("c", 129)})
		}), invalidArg, []string{"bridge.mqtt", "client_id"}},

		// Lake.
		{"lake as source", source(func(b *registryv1.Bridge) { lake(b, &registryv1.LakeBridge{Directory: "/var/lake"}) }), invalidArg, []string{"bridge.lake", "sink only"}},
		{"lake without a place", sink(func(b *registryv1.Bridge) { lake(b, &registryv1.LakeBridge{}) }), invalidArg, []string{"bridge.lake needs a directory or an s3 location"}},
		{"lake in both places", sink(func(b *registryv1.Bridge) { lake(b, &registryv1.LakeBridge{Directory: "/var/lake", S3: s3()}) }), invalidArg, []string{"bridge.lake takes a directory or s3, not both"}},
		{"lake relative directory", sink(func(b *registryv1.Bridge) { lake(b, &registryv1.LakeBridge{Directory: "lake"}) }), invalidArg, []string{`bridge.lake.directory "lake"`, "absolute"}},
		{"lake unclean directory", sink(func(b *registryv1.Bridge) { lake(b, &registryv1.LakeBridge{Directory: "/var/../etc"}) }), invalidArg, []string{"bridge.lake.directory", "clean"}},
		{"S3 without bucket", sink(func(b *registryv1.Bridge) {
			l := s3()
			l.Bucket = ""
			lake(b, &registryv1.LakeBridge{S3: l})
			b.Secret = "sk"
		}), invalidArg, []string{"bridge.lake.s3 needs a bucket"}},
		{"S3 without secret", sink(func(b *registryv1.Bridge) { lake(b, &registryv1.LakeBridge{S3: s3()}) }), invalidArg, []string{"bridge.lake.s3", "bridge.secret"}},
		{"S3 endpoint not http", sink(func(b *registryv1.Bridge) {
			l := s3()
			l.Endpoint = "s3.example"
			lake(b, &registryv1.LakeBridge{S3: l})
			b.Secret = "sk"
		}), invalidArg, []string{"bridge.lake.s3.endpoint"}},
		{"S3 endpoint with a password", sink(func(b *registryv1.Bridge) {
			l := s3()
			l.Endpoint = "https://AKIA:hunter2@s3.example"
			lake(b, &registryv1.LakeBridge{S3: l})
			b.Secret = "sk"
		}), invalidArg, []string{"bridge.lake.s3.endpoint carries a password"}},
		{"lake small files", sink(func(b *registryv1.Bridge) {
			lake(b, &registryv1.LakeBridge{Directory: "/var/lake", MaxFileBytes: 1000})
		}), invalidArg, []string{"bridge.lake.max_file_bytes is 1000"}},
		{"lake old files", sink(func(b *registryv1.Bridge) {
			lake(b, &registryv1.LakeBridge{Directory: "/var/lake", MaxFileAge: durationpb.New(25 * time.Hour)})
		}), invalidArg, []string{"bridge.lake.max_file_age is 25h"}},

		// A sink's part.
		{"sink without sink", sink(func(b *registryv1.Bridge) { b.Sink = nil }), invalidArg, []string{"bridge.sink is required"}},
		{"sink with a source part", sink(func(b *registryv1.Bridge) { b.Source = &registryv1.BridgeSource{EventType: "orders.order.placed"} }), invalidArg, []string{"bridge.source is set on a sink"}},
		{"types empty", sink(func(b *registryv1.Bridge) { b.Sink.Types = nil }), invalidArg, []string{"bridge.sink.types is empty"}},
		{"type not a name", sink(func(b *registryv1.Bridge) { b.Sink.Types = []string{"billing.invoice.paid", "Billing"} }), invalidArg, []string{"bridge.sink.types[1]"}},
		{"type twice", sink(func(b *registryv1.Bridge) { b.Sink.Types = []string{"billing.*", "billing.*"} }), invalidArg, []string{"bridge.sink.types", "twice"}},
		{"bad filter", sink(func(b *registryv1.Bridge) { b.Sink.Filter = "event.type ==" }), invalidArg, []string{"bridge.sink.filter", "Syntax error"}},
		{"filter not boolean", sink(func(b *registryv1.Bridge) { b.Sink.Filter = "size(event)" }), invalidArg, []string{"bridge.sink.filter", "boolean"}},
		{"bad start cursor", sink(func(b *registryv1.Bridge) {
			b.Sink.Start = &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "yesterday"}}
		}), invalidArg, []string{`bridge.sink.start.cursor "yesterday"`}},
		{"start in the future", sink(func(b *registryv1.Bridge) {
			b.Sink.Start = &registryv1.StartPosition{Position: &registryv1.StartPosition_Time{Time: timestamppb.New(time.Now().Add(time.Hour))}}
		}), invalidArg, []string{"bridge.sink.start.time", "in the future"}},
		{"retry too soon", sink(func(b *registryv1.Bridge) { b.Sink.RetrySchedule = durations(time.Second, time.Millisecond) }), invalidArg, []string{"bridge.sink.retry_schedule[1] is 1ms"}},
		{"retry zero", sink(func(b *registryv1.Bridge) { b.Sink.RetrySchedule = durations(0) }), invalidArg, []string{"bridge.sink.retry_schedule[0] is zero"}},
		{"long schedule", sink(func(b *registryv1.Bridge) {
			b.Sink.RetrySchedule = durations(slices.Repeat([]time.Duration{time.Second}, 51)...)
		}), invalidArg, []string{"bridge.sink.retry_schedule has 51 entries"}},
		{"max_in_flight too many", sink(func(b *registryv1.Bridge) { b.Sink.MaxInFlight = 10001 }), invalidArg, []string{"bridge.sink.max_in_flight is 10001"}},
		{"max_in_flight negative", sink(func(b *registryv1.Bridge) { b.Sink.MaxInFlight = -1 }), invalidArg, []string{"bridge.sink.max_in_flight is -1"}},
		{"unknown content mode", sink(func(b *registryv1.Bridge) { b.Sink.ContentMode = 7 }), invalidArg, []string{"bridge.sink.content_mode"}},

		// A source's part.
		{"source without source", source(func(b *registryv1.Bridge) { b.Source = nil }), invalidArg, []string{"bridge.source.event_type is required"}},
		{"source with a sink part", source(func(b *registryv1.Bridge) { b.Sink = &registryv1.BridgeSink{Types: []string{"billing.*"}} }), invalidArg, []string{"bridge.sink is set on a source"}},
		{"source type a pattern", source(func(b *registryv1.Bridge) { b.Source.EventType = "orders.*" }), invalidArg, []string{"bridge.source.event_type"}},
		{"source batch too big", source(func(b *registryv1.Bridge) { b.Source.BatchSize = 501 }), invalidArg, []string{"bridge.source.batch_size is 501"}},
		{"source batch negative", source(func(b *registryv1.Bridge) { b.Source.BatchSize = -5 }), invalidArg, []string{"bridge.source.batch_size is -5"}},

		// The catalog and the application's grants.
		{"unknown sink type", sink(func(b *registryv1.Bridge) { b.Sink.Types = []string{"billing.invoice.voided"} }), connect.CodeNotFound, []string{`event type "billing.invoice.voided" does not exist`}},
		{"unknown source type", source(func(b *registryv1.Bridge) { b.Source.EventType = "orders.order.lost" }), connect.CodeNotFound, []string{`event type "orders.order.lost" does not exist`}},
		{"sink type without subscribe grant", sink(func(b *registryv1.Bridge) { b.Sink.Types = []string{"orders.order.placed"} }), connect.CodePermissionDenied, []string{"no subscribe grant covering orders.order.placed"}},
		{"sink pattern wider than the grant", sink(func(b *registryv1.Bridge) { b.Sink.Types = []string{"*"} }), connect.CodePermissionDenied, []string{"no subscribe grant covering *"}},
		{"source type without publish grant", source(func(b *registryv1.Bridge) { b.Source.EventType = "billing.invoice.paid" }), connect.CodePermissionDenied, []string{"no publish grant covering billing.invoice.paid"}},
		{"retired sink type", sink(func(b *registryv1.Bridge) { b.Sink.Types = []string{"billing.legacy.logged"} }), connect.CodeFailedPrecondition, []string{"billing.legacy.logged is retired"}},
		{"retired source type", source(func(b *registryv1.Bridge) { b.Source.EventType = "orders.order.returned" }), connect.CodeFailedPrecondition, []string{"orders.order.returned is retired"}},
		// A type the application's audience does not see does not exist
		// for it, as the router answers its publishing.
		{"sink type the audience does not see", sink(func(b *registryv1.Bridge) {
			b.ApplicationId, b.Sink.Types = partner.GetId(), []string{"ops.disk.full"}
		}), connect.CodeNotFound, []string{`event type "ops.disk.full" does not exist`}},
		{"source type the audience does not see", source(func(b *registryv1.Bridge) {
			b.ApplicationId, b.Source.EventType = partner.GetId(), "ops.disk.full"
		}), connect.CodeNotFound, []string{`event type "ops.disk.full" does not exist`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.revision(t)
			_, err := e.admin.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: c.in}))
			wantCode(t, c.name, err, c.code, c.want...)
			if err != nil {
				noInternals(t, c.name, err.Error(), e)
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("the refusal shows the password: %v", err)
				}
			}
			if e.revision(t) != before {
				t.Errorf("a refused bridge wrote something")
			}
		})
	}
	if list := must(e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t).GetBridges(); len(list) != 1 {
		t.Errorf("bridges after the refusals: %v", list)
	}
}

// Without HERALD_SECRET_KEY no bridge can be made or changed: its secret
// and key could not be stored sealed.
func TestBridgeWithoutSecretKey(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, func(c *registry.Config) { c.SecretKey = "" })
	ctx := context.Background()
	app, _ := e.bridgeApp(t)
	for _, b := range []*registryv1.Bridge{bridgeSink("out", app.GetId(), "billing.*"), bridgeSource("in", app.GetId(), "orders.order.placed")} {
		_, err := e.admin.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: b}))
		wantCode(t, "create "+b.GetName()+" without a secret key", err, connect.CodeFailedPrecondition, "HERALD_SECRET_KEY")
	}
	_, err := e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
		Bridge: &registryv1.Bridge{Id: "brg_any", Description: "x"}, UpdateMask: []string{"description"},
	}))
	wantCode(t, "update without a secret key", err, connect.CodeFailedPrecondition, "HERALD_SECRET_KEY")
	if list := must(e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t).GetBridges(); len(list) != 0 {
		t.Errorf("bridges: %v", list)
	}
}

// nextBridgeChange returns the next Watch message about a bridge (a bridge
// or its deletion), failing if none comes; the key changes before it are
// returned too.
func (w *watcher) nextBridgeChange(t *testing.T) (*registryv1.WatchResponse, []*registryv1.KeyChange) {
	t.Helper()
	var keys []*registryv1.KeyChange
	for {
		m := w.next(t)
		switch {
		case m.GetBridge() != nil:
			return m, keys
		case m.GetDeleted().GetKind() == "bridge":
			return m, keys
		case m.GetKey() != nil:
			keys = append(keys, m.GetKey())
		}
	}
}

// A bridge's secret is never shown: clients see secret_set; Watch, the
// services' stream, carries it sealed and a source's key sealed. The key
// authenticates as the application, survives the application's key
// rotation, and is revoked when the bridge is deleted.
func TestBridgeSecretsAndKey(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, appKey := e.bridgeApp(t)
	box, err := secretbox.New(testSecretKey)
	if err != nil {
		t.Fatal(err)
	}
	const sinkSecret, sourceSecret, newSecret = "kafka-sink-password-1", "amqp-source-password-2", "kafka-sink-password-3"
	w := e.watch(t, e.revision(t))

	sinkIn := bridgeSink("out", app.GetId(), "billing.*")
	sinkIn.GetKafka().SaslMechanism, sinkIn.GetKafka().Username, sinkIn.Secret = "PLAIN", "herald", sinkSecret
	sink := e.createBridge(t, sinkIn)
	sourceIn := bridgeSource("in", app.GetId(), "orders.order.placed")
	sourceIn.System = &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: "amqp://herald@rabbit.example", Queue: "orders"}}
	sourceIn.Secret = sourceSecret
	source := e.createBridge(t, sourceIn)
	if !sink.GetSecretSet() || !source.GetSecretSet() || source.GetKeyId() == "" {
		t.Fatalf("created: %v\n%v", sink, source)
	}
	asApp := e.as(appKey)
	shown := map[string]proto.Message{
		"create sink":             sink,
		"create source":           source,
		"get as operator":         must(e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: source.GetId()}))).msg(t),
		"list as operator":        must(e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t),
		"get as the application":  must(asApp.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: sink.GetId()}))).msg(t),
		"list as the application": must(asApp.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t),
	}
	for what, m := range shown {
		noSecrets(t, what, m, sinkSecret, sourceSecret)
	}

	// Watch carries both sealed: the secret opens to the one given, the
	// key to one that authenticates as the application.
	watchedSink, _ := w.nextBridgeChange(t)
	watchedSource, keys := w.nextBridgeChange(t)
	ws, wsrc := watchedSink.GetBridge(), watchedSource.GetBridge()
	if ws.GetId() != sink.GetId() || wsrc.GetId() != source.GetId() {
		t.Fatalf("watched %v then %v", ws, wsrc)
	}
	if ws.GetSecret() != "" || wsrc.GetSecret() != "" || ws.GetSealedSecret() == "" || wsrc.GetSealedSecret() == "" || ws.GetSealedKey() != "" || wsrc.GetSealedKey() == "" {
		t.Fatalf("watched sink %v\nsource %v", ws, wsrc)
	}
	if len(keys) != 1 || keys[0].GetKey().GetId() != source.GetKeyId() || keys[0].GetKey().GetSecret() != "" {
		t.Errorf("key changes before the source: %v", keys)
	}
	for _, sealed := range []string{ws.GetSealedSecret(), wsrc.GetSealedSecret(), wsrc.GetSealedKey()} {
		if strings.Contains(sealed, sinkSecret) || strings.Contains(sealed, sourceSecret) {
			t.Errorf("a sealed value holds a secret in clear")
		}
	}
	open := func(sealed, context string) string {
		t.Helper()
		plain, err := box.Open(sealed, context)
		if err != nil {
			t.Fatalf("open with %s: %v", context, err)
		}
		return string(plain)
	}
	if got := open(ws.GetSealedSecret(), "bridge/"+sink.GetId()+"/secret"); got != sinkSecret {
		t.Errorf("the sink's secret opens to %q", got)
	}
	if got := open(wsrc.GetSealedSecret(), "bridge/"+source.GetId()+"/secret"); got != sourceSecret {
		t.Errorf("the source's secret opens to %q", got)
	}
	// Sealed for one bridge, it opens for no other, nor as the key.
	if _, err := box.Open(ws.GetSealedSecret(), "bridge/"+source.GetId()+"/secret"); err == nil {
		t.Error("the sink's sealed secret opens as the source's")
	}
	if _, err := box.Open(wsrc.GetSealedSecret(), "bridge/"+source.GetId()+"/key"); err == nil {
		t.Error("the source's sealed secret opens as its key")
	}
	bridgeKey := open(wsrc.GetSealedKey(), "bridge/"+source.GetId()+"/key")
	k, err := e.authenticate(bridgeKey)
	if err != nil || k.GetApplicationId() != app.GetId() || k.GetId() != source.GetKeyId() || k.GetPurpose() != registryv1.KeyPurpose_KEY_PURPOSE_BRIDGE || k.GetSecret() != "" {
		t.Fatalf("the bridge key authenticates as %v, %v", k, err)
	}
	if keys[0].GetKeyHash() != auth.HashSecret(bridgeKey) {
		t.Errorf("the watched key change has another hash")
	}
	// Through the registry's own routes it is the application.
	asBridge := e.as(bridgeKey)
	if got := must(asBridge.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication(); got.GetId() != app.GetId() {
		t.Errorf("the bridge key reads %v", got)
	}
	if own := must(asBridge.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t).GetBridges(); len(own) != 2 {
		t.Errorf("the bridge key lists %v", own)
	}
	// Nothing in Redis holds a secret in clear.
	for _, id := range []string{sink.GetId(), source.GetId()} {
		raw, err := e.rdb.HGet(ctx, "herald:{registry}:bridges", id).Result()
		if err != nil || strings.Contains(raw, sinkSecret) || strings.Contains(raw, sourceSecret) || strings.Contains(raw, bridgeKey) {
			t.Errorf("stored bridge %s: %v (holds a secret in clear)", id, err)
		}
	}
	// A snapshot from 0 carries them sealed too.
	_, snap := e.watch(t, 0).snapshot(t)
	sealedInSnapshot := 0
	for _, m := range snap {
		if b := m.GetBridge(); b != nil && b.GetSealedSecret() != "" && (b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK || b.GetSealedKey() == wsrc.GetSealedKey()) {
			sealedInSnapshot++
		}
	}
	if sealedInSnapshot != 2 {
		t.Errorf("the snapshot has %d bridges with their sealed fields, want 2", sealedInSnapshot)
	}

	// A new secret: not shown, sealed anew; other updates keep it.
	updated := must(e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
		Bridge: &registryv1.Bridge{Id: sink.GetId(), Secret: newSecret}, UpdateMask: []string{"secret"},
	}))).msg(t)
	noSecrets(t, "update", updated, newSecret, sinkSecret)
	m, _ := w.nextBridgeChange(t)
	if got := open(m.GetBridge().GetSealedSecret(), "bridge/"+sink.GetId()+"/secret"); got != newSecret {
		t.Errorf("the new secret opens to %q", got)
	}
	must(e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
		Bridge: &registryv1.Bridge{Id: sink.GetId(), Description: "kept"}, UpdateMask: []string{"description"},
	}))).msg(t)
	m, _ = w.nextBridgeChange(t)
	if got := open(m.GetBridge().GetSealedSecret(), "bridge/"+sink.GetId()+"/secret"); got != newSecret || m.GetBridge().GetDescription() != "kept" {
		t.Errorf("after a description change the secret opens to %q: %v", got, m.GetBridge())
	}
	// An update of the source keeps its key.
	must(e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
		Bridge: &registryv1.Bridge{Id: source.GetId(), Source: &registryv1.BridgeSource{BatchSize: 5}}, UpdateMask: []string{"source.batch_size"},
	}))).msg(t)
	if m, keys := w.nextBridgeChange(t); m.GetBridge().GetSealedKey() != wsrc.GetSealedKey() || m.GetBridge().GetKeyId() != source.GetKeyId() || len(keys) != 0 {
		t.Errorf("after an update the source is %v (key changes %v)", m.GetBridge(), keys)
	}
	// Clearing a secret SASL needs is refused.
	_, err = e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
		Bridge: &registryv1.Bridge{Id: sink.GetId()}, UpdateMask: []string{"secret"},
	}))
	wantCode(t, "clear the secret SASL needs", err, connect.CodeInvalidArgument, "bridge.secret")

	// The application rotates its keys with no overlap: its API key ends
	// at once, the bridge's does not.
	must(asApp.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: app.GetId(), RotateOverlap: durationpb.New(0)}))).msg(t)
	_, err = e.authenticate(appKey)
	wantCode(t, "the rotated-out API key", err, connect.CodeNotFound)
	if k, err := e.authenticate(bridgeKey); err != nil || k.GetExpireTime() != nil || k.GetRevokeTime() != nil {
		t.Errorf("the bridge key after a rotation: %v, %v", k, err)
	}
	for _, k := range must(e.admin.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: app.GetId()}))).msg(t).GetKeys() {
		if k.GetId() == source.GetKeyId() && (k.GetExpireTime() != nil || k.GetRevokeTime() != nil) {
			t.Errorf("the bridge key is listed as %v", k)
		}
	}
	// The rotation's key changes are not about bridges: skip them.
	for {
		m := w.next(t)
		if kc := m.GetKey(); kc == nil {
			t.Fatalf("unexpected change during the rotation: %v", m)
		} else if kc.GetKey().GetId() == source.GetKeyId() {
			t.Errorf("the rotation changed the bridge key: %v", kc)
		} else if kc.GetKey().GetExpireTime() != nil {
			break // the old API key's expiry comes after the new key
		}
	}

	// Deleting the source revokes its key, in the same write, and Watch
	// says so.
	must(e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: source.GetName()}))).msg(t)
	gone, keys := w.nextBridgeChange(t)
	if gone.GetDeleted().GetName() != source.GetId() || gone.GetDeleted().GetKind() != "bridge" {
		t.Errorf("deletion: %v", gone)
	}
	if len(keys) != 1 || keys[0].GetKey().GetId() != source.GetKeyId() || keys[0].GetKey().GetRevokeTime() == nil {
		t.Errorf("key changes of the deletion: %v", keys)
	}
	_, err = e.authenticate(bridgeKey)
	wantCode(t, "the deleted bridge's key", err, connect.CodeNotFound)
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, err := asBridge.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))
		return connect.CodeOf(err) == connect.CodeUnauthenticated
	}, "the registry refuses the deleted bridge's key")
	_, err = e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: source.GetId()}))
	wantCode(t, "get a deleted bridge", err, connect.CodeNotFound, source.GetId())
	_, err = e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: "in"}))
	wantCode(t, "get a deleted bridge by name", err, connect.CodeNotFound)
	_, err = e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: source.GetId()}))
	wantCode(t, "delete it again", err, connect.CodeNotFound)
	// Its name is free again; a sink's deletion has no key to revoke.
	again := e.createBridge(t, sourceIn)
	if again.GetId() == source.GetId() || again.GetKeyId() == source.GetKeyId() {
		t.Errorf("recreated: %v", again)
	}
	m, keys = w.nextBridgeChange(t)
	if m.GetBridge().GetId() != again.GetId() || len(keys) != 1 {
		t.Errorf("recreated on watch: %v %v", m, keys)
	}
	must(e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: sink.GetId()}))).msg(t)
	if gone, keys := w.nextBridgeChange(t); gone.GetDeleted().GetName() != sink.GetId() || len(keys) != 0 {
		t.Errorf("the sink's deletion: %v %v", gone, keys)
	}
}

// Who may call what: the operator everything; an application reads its own
// bridges and writes none; others are told nothing exists.
func TestBridgeAccess(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, appKey := e.bridgeApp(t)
	rival, rivalKey := e.createApp(t, &registryv1.Application{Name: "rival", Tenant: "globex", Grants: []*registryv1.Grant{subscribe("billing.*"), publish("orders.*")}})
	sink := e.createBridge(t, bridgeSink("out", app.GetId(), "billing.*"))
	source := e.createBridge(t, bridgeSource("in", app.GetId(), "orders.order.placed"))
	rivals := e.createBridge(t, bridgeSink("rival-out", rival.GetId(), "billing.*"))
	revoked := must(e.admin.CreateKey(ctx, connect.NewRequest(&registryv1.CreateKeyRequest{ApplicationId: app.GetId()}))).msg(t).GetKey()
	must(e.admin.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: revoked.GetId()}))).msg(t)
	asRevoked := e.as(revoked.GetSecret())
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, err := asRevoked.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))
		return connect.CodeOf(err) == connect.CodeUnauthenticated
	}, "the revoked key is refused")
	noKey := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(e.addr), connect.WithGRPC())
	hashes := []string{auth.HashSecret(appKey), auth.HashSecret(rivalKey), auth.HashSecret(revoked.GetSecret())}

	type outcome struct {
		code  connect.Code // 0: succeeds
		names []string     // what List answers (when it succeeds)
	}
	calls := []struct {
		what string
		do   func(c registryv1connect.RegistryServiceClient) ([]string, error)
	}{
		{"CreateBridge", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			_, err := c.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: bridgeSink("mine", app.GetId(), "billing.*")}))
			return nil, err
		}},
		{"GetBridge", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			_, err := c.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: sink.GetId()}))
			return nil, err
		}},
		{"GetBridge by name", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			_, err := c.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: "in"}))
			return nil, err
		}},
		{"ListBridges", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			res, err := c.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))
			if err != nil {
				return nil, err
			}
			var names []string
			for _, b := range res.Msg.GetBridges() {
				names = append(names, b.GetName())
			}
			return names, nil
		}},
		{"ListBridges of the owner", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			res, err := c.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{ApplicationId: app.GetId()}))
			if err != nil {
				return nil, err
			}
			var names []string
			for _, b := range res.Msg.GetBridges() {
				names = append(names, b.GetName())
			}
			return names, nil
		}},
		{"UpdateBridge", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			_, err := c.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
				Bridge: &registryv1.Bridge{Id: source.GetId(), Disabled: true}, UpdateMask: []string{"disabled"},
			}))
			return nil, err
		}},
		{"DeleteBridge", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			_, err := c.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: sink.GetId()}))
			return nil, err
		}},
		{"Watch", func(c registryv1connect.RegistryServiceClient) ([]string, error) {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			stream, err := c.Watch(wctx, connect.NewRequest(&registryv1.WatchRequest{FromRevision: 0}))
			if err != nil {
				return nil, err
			}
			defer stream.Close()
			if stream.Receive() {
				return nil, nil // the snapshot, sealed fields and all
			}
			return nil, stream.Err()
		}},
	}
	const unauth, denied, notFound = connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeNotFound
	for _, caller := range []struct {
		name   string
		client registryv1connect.RegistryServiceClient
		want   []outcome // in the order of calls
	}{
		{"no key", noKey, []outcome{{code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}}},
		{"revoked key", asRevoked, []outcome{{code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}, {code: unauth}}},
		{"another tenant's application", e.as(rivalKey), []outcome{
			{code: denied}, {code: notFound}, {code: notFound}, {names: []string{"rival-out"}}, {code: notFound}, {code: denied}, {code: denied}, {code: denied},
		}},
		{"the owning application", e.as(appKey), []outcome{
			{code: denied}, {}, {}, {names: []string{"in", "out"}}, {names: []string{"in", "out"}}, {code: denied}, {code: denied}, {code: denied},
		}},
	} {
		t.Run(caller.name, func(t *testing.T) {
			before := e.revision(t)
			for i, c := range calls {
				names, err := c.do(caller.client)
				want := caller.want[i]
				if want.code == 0 {
					if err != nil {
						t.Errorf("%s: %v", c.what, err)
					} else if want.names != nil && !slices.Equal(names, want.names) {
						t.Errorf("%s lists %v, want %v", c.what, names, want.names)
					}
					continue
				}
				wantCode(t, c.what, err, want.code)
				if err != nil {
					noInternals(t, c.what, err.Error(), e, hashes...)
				}
			}
			if e.revision(t) != before {
				t.Errorf("%s changed the catalog", caller.name)
			}
		})
	}
	// Another application's bridge answers what an unknown one does.
	asRival := e.as(rivalKey)
	_, errOther := asRival.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: sink.GetId()}))
	_, errUnknown := asRival.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: "brg_nothing"}))
	if errOther == nil || errUnknown == nil || strings.ReplaceAll(errOther.Error(), sink.GetId(), "ID") != strings.ReplaceAll(errUnknown.Error(), "brg_nothing", "ID") {
		t.Errorf("another application's bridge answers %v, an unknown one %v", errOther, errUnknown)
	}
	_, errOther = asRival.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{ApplicationId: app.GetId()}))
	_, errUnknown = asRival.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{ApplicationId: "app_nothing"}))
	if errOther == nil || errUnknown == nil || strings.ReplaceAll(errOther.Error(), app.GetId(), "ID") != strings.ReplaceAll(errUnknown.Error(), "app_nothing", "ID") {
		t.Errorf("another application's list answers %v, an unknown one %v", errOther, errUnknown)
	}
	// The operator may do everything; nothing above changed a bridge.
	for _, b := range []*registryv1.Bridge{sink, source, rivals} {
		got := must(e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: b.GetId()}))).msg(t).GetBridge()
		if !proto.Equal(got, b) {
			t.Errorf("%s changed: %v", b.GetName(), got)
		}
	}
	if all := must(e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t).GetBridges(); len(all) != 3 {
		t.Errorf("the operator lists %v", all)
	}
	if theirs := must(e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{ApplicationId: rival.GetId()}))).msg(t).GetBridges(); len(theirs) != 1 || theirs[0].GetId() != rivals.GetId() {
		t.Errorf("the operator lists the rival's as %v", theirs)
	}
}

// Each update_mask path changes its field and nothing else; what the
// contract does not let change is refused, and so is an update the
// application's grants no longer allow.
func TestUpdateBridge(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, _ := e.bridgeApp(t)
	sinkIn := bridgeSink("out", app.GetId(), "billing.*")
	sinkIn.Sink.Start = &registryv1.StartPosition{Position: &registryv1.StartPosition_Cursor{Cursor: "0"}}
	sink := e.createBridge(t, sinkIn)
	sourceIn := bridgeSource("in", app.GetId(), "orders.order.placed")
	sourceIn.System = &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Topic: "orders/#"}}
	source := e.createBridge(t, sourceIn)
	update := func(in *registryv1.Bridge, paths ...string) (*registryv1.Bridge, error) {
		res, err := e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{Bridge: in, UpdateMask: paths}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetBridge(), nil
	}
	// Each path, from the bridge as it is, changes that and the revision.
	for _, c := range []struct {
		path  string
		of    *registryv1.Bridge
		in    *registryv1.Bridge
		check func(before, after *registryv1.Bridge) bool
	}{
		{"description", sink, &registryv1.Bridge{Description: "to the data team"}, func(_, b *registryv1.Bridge) bool { return b.GetDescription() == "to the data team" }},
		{"disabled", sink, &registryv1.Bridge{Disabled: true}, func(_, b *registryv1.Bridge) bool { return b.GetDisabled() }},
		{"secret", sink, &registryv1.Bridge{Secret: "update-secret-pw"}, func(_, b *registryv1.Bridge) bool { return b.GetSecretSet() }},
		{"kafka", sink, &registryv1.Bridge{System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{
			Brokers: []string{"k1.example:9093", "k2.example:9093"}, Topic: "moved", SaslMechanism: "PLAIN", Username: "herald", Tls: true,
		}}}, func(_, b *registryv1.Bridge) bool {
			k := b.GetKafka()
			return k.GetTopic() == "moved" && len(k.GetBrokers()) == 2 && k.GetTls() && k.GetSaslMechanism() == "PLAIN" // the secret set above
		}},
		{"sink.filter", sink, &registryv1.Bridge{Sink: &registryv1.BridgeSink{Filter: `event.type == "billing.invoice.paid"`}}, func(_, b *registryv1.Bridge) bool {
			return b.GetSink().GetFilter() == `event.type == "billing.invoice.paid"`
		}},
		{"sink.retry_schedule", sink, &registryv1.Bridge{Sink: &registryv1.BridgeSink{RetrySchedule: durations(2*time.Second, 3*time.Second)}}, func(_, b *registryv1.Bridge) bool {
			return len(b.GetSink().GetRetrySchedule()) == 2 && b.GetSink().GetRetrySchedule()[1].AsDuration() == 3*time.Second
		}},
		{"sink.max_in_flight", sink, &registryv1.Bridge{Sink: &registryv1.BridgeSink{MaxInFlight: 50}}, func(_, b *registryv1.Bridge) bool { return b.GetSink().GetMaxInFlight() == 50 }},
		{"sink.content_mode", sink, &registryv1.Bridge{Sink: &registryv1.BridgeSink{ContentMode: registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED}}, func(_, b *registryv1.Bridge) bool {
			return b.GetSink().GetContentMode() == registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED
		}},
		{"sink.json_data", sink, &registryv1.Bridge{Sink: &registryv1.BridgeSink{JsonData: true}}, func(_, b *registryv1.Bridge) bool { return b.GetSink().GetJsonData() }},
		// Unset again: the defaults come back.
		{"sink.retry_schedule", sink, &registryv1.Bridge{}, func(_, b *registryv1.Bridge) bool { return len(b.GetSink().GetRetrySchedule()) == 6 }},
		{"sink.max_in_flight", sink, &registryv1.Bridge{}, func(_, b *registryv1.Bridge) bool { return b.GetSink().GetMaxInFlight() == 1000 }},
		{"source.event_type", source, &registryv1.Bridge{Source: &registryv1.BridgeSource{EventType: "orders.order.shipped"}}, func(_, b *registryv1.Bridge) bool {
			return b.GetSource().GetEventType() == "orders.order.shipped"
		}},
		{"source.batch_size", source, &registryv1.Bridge{Source: &registryv1.BridgeSource{BatchSize: 10}}, func(_, b *registryv1.Bridge) bool { return b.GetSource().GetBatchSize() == 10 }},
		{"mqtt", source, &registryv1.Bridge{System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "ssl://mqtt.example:8883", Topic: "plant/+/orders"}}}, func(_, b *registryv1.Bridge) bool {
			m := b.GetMqtt()
			return m.GetBroker() == "ssl://mqtt.example:8883" && m.GetTopic() == "plant/+/orders" && m.GetQos() == 1 && m.GetProtocolVersion() == 5
		}},
		{"disabled", source, &registryv1.Bridge{}, func(_, b *registryv1.Bridge) bool { return !b.GetDisabled() }},
	} {
		t.Run(c.path, func(t *testing.T) {
			before := must(e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: c.of.GetId()}))).msg(t).GetBridge()
			in := proto.Clone(c.in).(*registryv1.Bridge)
			// What UpdateBridge keeps, whatever is sent.
			in.Id, in.Name, in.ApplicationId, in.Direction, in.KeyId, in.SealedKey = c.of.GetId(), "renamed", "app_other", 9, "key_other", "forged"
			got, err := update(in, c.path)
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(before, got) {
				t.Errorf("after updating %s: %v", c.path, got)
			}
			if got.GetRevision() <= before.GetRevision() || got.GetName() != c.of.GetName() || got.GetApplicationId() != app.GetId() ||
				got.GetDirection() != c.of.GetDirection() || got.GetKeyId() != c.of.GetKeyId() || !proto.Equal(got.GetCreateTime(), c.of.GetCreateTime()) {
				t.Errorf("update of %s changed what it keeps: %v", c.path, got)
			}
			noSecrets(t, "update", got, "update-secret-pw", "forged")
			// Something changed, and is stored.
			a, b := proto.Clone(before).(*registryv1.Bridge), proto.Clone(got).(*registryv1.Bridge)
			a.Revision, b.Revision = 0, 0
			if proto.Equal(a, b) && c.path != "disabled" {
				t.Errorf("update of %s changed nothing", c.path)
			}
			stored := must(e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: c.of.GetId()}))).msg(t).GetBridge()
			if !proto.Equal(stored, got) {
				t.Errorf("stored %v, answered %v", stored, got)
			}
		})
	}
	// Several paths at once.
	got, err := update(&registryv1.Bridge{Id: sink.GetId(), Description: "both", Sink: &registryv1.BridgeSink{MaxInFlight: 7}}, "description", "sink.max_in_flight")
	if err != nil || got.GetDescription() != "both" || got.GetSink().GetMaxInFlight() != 7 || got.GetSink().GetJsonData() != true {
		t.Errorf("two paths: %v, %v", got, err)
	}
	// The sink's types and start stay as created.
	if !slices.Equal(got.GetSink().GetTypes(), []string{"billing.*"}) || got.GetSink().GetStart().GetCursor() != "0" {
		t.Errorf("types or start changed: %v", got.GetSink())
	}

	// Refusals write nothing.
	for _, c := range []struct {
		name  string
		in    *registryv1.Bridge
		paths []string
		code  connect.Code
		want  []string
	}{
		{"no bridge", nil, []string{"description"}, connect.CodeInvalidArgument, []string{"bridge.id is required"}},
		{"no id", &registryv1.Bridge{Description: "x"}, []string{"description"}, connect.CodeInvalidArgument, []string{"bridge.id is required"}},
		{"empty mask", &registryv1.Bridge{Id: sink.GetId()}, nil, connect.CodeInvalidArgument, []string{"update_mask is empty"}},
		{"unknown bridge by name", &registryv1.Bridge{Id: "nothing"}, []string{"description"}, connect.CodeNotFound, []string{`bridge "nothing" does not exist`}},
		{"unknown bridge", &registryv1.Bridge{Id: "brg_nothing"}, []string{"description"}, connect.CodeNotFound, []string{`bridge "brg_nothing" does not exist`}},
		{"unknown path", &registryv1.Bridge{Id: sink.GetId()}, []string{"colour"}, connect.CodeInvalidArgument, []string{`update_mask "colour"`}},
		{"name", &registryv1.Bridge{Id: sink.GetId(), Name: "other"}, []string{"name"}, connect.CodeInvalidArgument, []string{`update_mask "name"`}},
		{"application", &registryv1.Bridge{Id: sink.GetId(), ApplicationId: "app_x"}, []string{"application_id"}, connect.CodeInvalidArgument, []string{`update_mask "application_id"`}},
		{"direction", &registryv1.Bridge{Id: sink.GetId()}, []string{"direction"}, connect.CodeInvalidArgument, []string{`update_mask "direction"`}},
		{"sink types", &registryv1.Bridge{Id: sink.GetId(), Sink: &registryv1.BridgeSink{Types: []string{"billing.invoice.paid"}}}, []string{"sink.types"}, connect.CodeInvalidArgument, []string{`update_mask "sink.types"`, "make a new bridge"}},
		{"sink start", &registryv1.Bridge{Id: sink.GetId()}, []string{"sink.start"}, connect.CodeInvalidArgument, []string{`update_mask "sink.start"`}},
		{"source path on a sink", &registryv1.Bridge{Id: sink.GetId()}, []string{"source.batch_size"}, connect.CodeInvalidArgument, []string{`update_mask "source.batch_size"`}},
		{"sink path on a source", &registryv1.Bridge{Id: source.GetId()}, []string{"sink.filter"}, connect.CodeInvalidArgument, []string{`update_mask "sink.filter"`}},
		{"change of system", &registryv1.Bridge{Id: sink.GetId(), System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: "amqp://rabbit.example"}}}, []string{"amqp"}, connect.CodeInvalidArgument, []string{"does not change system"}},
		{"other system under this one's path", &registryv1.Bridge{Id: sink.GetId(), System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: "amqp://rabbit.example"}}}, []string{"kafka"}, connect.CodeInvalidArgument, []string{"does not change system"}},
		{"system path without settings", &registryv1.Bridge{Id: sink.GetId()}, []string{"kafka"}, connect.CodeInvalidArgument, []string{"does not change system"}},
		{"lake on a source", &registryv1.Bridge{Id: source.GetId(), System: &registryv1.Bridge_Lake{Lake: &registryv1.LakeBridge{Directory: "/var/lake"}}}, []string{"lake"}, connect.CodeInvalidArgument, []string{"does not change system"}},
		{"bad filter", &registryv1.Bridge{Id: sink.GetId(), Sink: &registryv1.BridgeSink{Filter: "nope("}}, []string{"sink.filter"}, connect.CodeInvalidArgument, []string{"bridge.sink.filter"}},
		{"bad retry", &registryv1.Bridge{Id: sink.GetId(), Sink: &registryv1.BridgeSink{RetrySchedule: durations(48 * time.Hour)}}, []string{"sink.retry_schedule"}, connect.CodeInvalidArgument, []string{"bridge.sink.retry_schedule[0] is 48h"}},
		{"bad kafka", &registryv1.Bridge{Id: sink.GetId(), System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: []string{"k:1"}, Topic: "a b"}}}, []string{"kafka"}, connect.CodeInvalidArgument, []string{"bridge.kafka.topic"}},
		{"mqtt QoS 3", &registryv1.Bridge{Id: source.GetId(), System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://mqtt.example:1883", Topic: "x", Qos: 3}}}, []string{"mqtt"}, connect.CodeInvalidArgument, []string{"bridge.mqtt.qos is 3"}},
		{"long description", &registryv1.Bridge{Id: sink.GetId(), Description: strings.Repeat("d", 2000)}, []string{"description"}, connect.CodeInvalidArgument, []string{"bridge.description"}},
		{"source type without publish grant", &registryv1.Bridge{Id: source.GetId(), Source: &registryv1.BridgeSource{EventType: "billing.invoice.paid"}}, []string{"source.event_type"}, connect.CodePermissionDenied, []string{"no publish grant covering billing.invoice.paid"}},
		{"source type unknown", &registryv1.Bridge{Id: source.GetId(), Source: &registryv1.BridgeSource{EventType: "orders.order.lost"}}, []string{"source.event_type"}, connect.CodeNotFound, []string{`event type "orders.order.lost" does not exist`}},
		{"source type empty", &registryv1.Bridge{Id: source.GetId()}, []string{"source.event_type"}, connect.CodeInvalidArgument, []string{"bridge.source.event_type is required"}},
		{"source batch too big", &registryv1.Bridge{Id: source.GetId(), Source: &registryv1.BridgeSource{BatchSize: 1000}}, []string{"source.batch_size"}, connect.CodeInvalidArgument, []string{"bridge.source.batch_size is 1000"}},
		{"one bad path among good ones", &registryv1.Bridge{Id: sink.GetId(), Description: "not kept"}, []string{"description", "types"}, connect.CodeInvalidArgument, []string{`update_mask "types"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.revision(t)
			_, err := update(c.in, c.paths...)
			wantCode(t, c.name, err, c.code, c.want...)
			if err != nil {
				noInternals(t, c.name, err.Error(), e)
			}
			if e.revision(t) != before {
				t.Errorf("a refused update wrote something")
			}
		})
	}

	// The application loses its grants: no update passes any more, but the
	// operator can still delete.
	cur := must(e.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication()
	cur.Grants = []*registryv1.Grant{subscribe("identity.*")}
	must(e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: cur}))).msg(t)
	before := e.revision(t)
	_, err = update(&registryv1.Bridge{Id: sink.GetId(), Description: "after"}, "description")
	wantCode(t, "update a sink after its grant was withdrawn", err, connect.CodePermissionDenied, "no subscribe grant covering billing.*")
	_, err = update(&registryv1.Bridge{Id: source.GetId(), Source: &registryv1.BridgeSource{BatchSize: 20}}, "source.batch_size")
	wantCode(t, "update a source after its grant was withdrawn", err, connect.CodePermissionDenied, "no publish grant covering orders.order.shipped")
	if e.revision(t) != before {
		t.Errorf("a refused update wrote something")
	}
	// The type retired: refused as well.
	cur = must(e.admin.GetApplication(ctx, connect.NewRequest(&registryv1.GetApplicationRequest{Id: app.GetId()}))).msg(t).GetApplication()
	cur.Grants = []*registryv1.Grant{subscribe("billing.*"), publish("orders.*")}
	must(e.admin.UpdateApplication(ctx, connect.NewRequest(&registryv1.UpdateApplicationRequest{Application: cur}))).msg(t)
	shipped := must(e.admin.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: "orders.order.shipped"}))).msg(t).GetEventType()
	shipped.Lifecycle = registryv1.Lifecycle_LIFECYCLE_RETIRED
	must(e.admin.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: shipped}))).msg(t)
	_, err = update(&registryv1.Bridge{Id: source.GetId(), Source: &registryv1.BridgeSource{BatchSize: 20}}, "source.batch_size")
	wantCode(t, "update a source of a retired type", err, connect.CodeFailedPrecondition, "orders.order.shipped is retired")
	if got, err := update(&registryv1.Bridge{Id: source.GetId(), Source: &registryv1.BridgeSource{EventType: "orders.order.placed"}}, "source.event_type"); err != nil || got.GetSource().GetEventType() != "orders.order.placed" {
		t.Errorf("move the source off the retired type: %v, %v", got, err)
	}
	for _, b := range []*registryv1.Bridge{sink, source} {
		must(e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: b.GetId()}))).msg(t)
	}
}

// A catalog cache following Watch (as the edge's engine does) sees bridges
// appear with their sealed fields, change and disappear.
func TestBridgesInTheCatalogCache(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, _ := e.bridgeApp(t)
	before := e.createBridge(t, bridgeSink("before", app.GetId(), "billing.*")) // in the snapshot

	cache := catalog.New(e.admin, slog.New(slog.DiscardHandler))
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cache.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("cache: %v", err)
		}
	})
	has := func(id string, f func(*registryv1.Bridge) bool) func() bool {
		return func() bool {
			b, ok := cache.Bridge(id)
			return ok && f(b)
		}
	}
	testutil.Eventually(t, 10*time.Second, has(before.GetId(), func(*registryv1.Bridge) bool { return true }), "the cache has the bridge of its snapshot")

	srcIn := bridgeSource("after", app.GetId(), "orders.order.placed")
	srcIn.Secret = "cache-secret"
	after := e.createBridge(t, srcIn)
	testutil.Eventually(t, 10*time.Second, has(after.GetId(), func(b *registryv1.Bridge) bool {
		return b.GetSealedKey() != "" && b.GetSealedSecret() != "" && b.GetKeyId() == after.GetKeyId()
	}), "the cache has the new source with its sealed key and secret")
	ids := func() []string {
		var out []string
		for _, b := range cache.Bridges() {
			out = append(out, b.GetId())
		}
		return out
	}
	want := []string{before.GetId(), after.GetId()}
	slices.Sort(want)
	if got := ids(); !slices.Equal(got, want) {
		t.Errorf("cache bridges %v, want %v (by id)", got, want)
	}

	must(e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
		Bridge: &registryv1.Bridge{Id: before.GetId(), Disabled: true, Description: "paused"}, UpdateMask: []string{"disabled", "description"},
	}))).msg(t)
	testutil.Eventually(t, 10*time.Second, has(before.GetId(), func(b *registryv1.Bridge) bool {
		return b.GetDisabled() && b.GetDescription() == "paused"
	}), "the cache sees the change")

	must(e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: after.GetId()}))).msg(t)
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, ok := cache.Bridge(after.GetId())
		return !ok
	}, "the cache drops the deleted bridge")
	testutil.Eventually(t, 10*time.Second, func() bool { return cache.KeyRevoked(after.GetKeyId()) }, "the cache knows its key is revoked")
	if got := ids(); !slices.Equal(got, []string{before.GetId()}) {
		t.Errorf("cache bridges after the delete: %v", got)
	}

	// A cache that starts after the deletion never sees it.
	late := catalog.New(e.admin, slog.New(slog.DiscardHandler))
	lateCtx, lateCancel := context.WithCancel(ctx)
	lateDone := make(chan error, 1)
	go func() { lateDone <- late.Run(lateCtx) }()
	defer func() { lateCancel(); <-lateDone }()
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, ok := late.Bridge(before.GetId())
		return ok
	}, "a late cache has the remaining bridge")
	if _, ok := late.Bridge(after.GetId()); ok || len(late.Bridges()) != 1 {
		t.Errorf("a late cache has %v", late.Bridges())
	}
}

// Get and Delete want an id; an unknown one is NOT_FOUND.
func TestBridgeIDs(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	_, err := e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{}))
	wantCode(t, "get without an id", err, connect.CodeInvalidArgument, "id is required")
	_, err = e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{}))
	wantCode(t, "delete without an id", err, connect.CodeInvalidArgument, "id is required")
	_, err = e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: "brg_nothing"}))
	wantCode(t, "get an unknown bridge", err, connect.CodeNotFound, `bridge "brg_nothing" does not exist`)
	_, err = e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: "nothing"}))
	wantCode(t, "delete an unknown bridge", err, connect.CodeNotFound, `bridge "nothing" does not exist`)
}

// Writers racing for one name: exactly one bridge (and one key) is made.
func TestBridgeNameRace(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, _ := e.bridgeApp(t)
	const writers = 8
	errs := make(chan error, writers)
	for range writers {
		go func() {
			_, err := e.admin.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: bridgeSource("in", app.GetId(), "orders.order.placed")}))
			errs <- err
		}()
	}
	created := 0
	for range writers {
		switch err := <-errs; {
		case err == nil:
			created++
		case connect.CodeOf(err) != connect.CodeAlreadyExists:
			t.Errorf("a racing create: %v", err)
		}
	}
	if created != 1 {
		t.Errorf("%d of %d racing creates succeeded, want 1", created, writers)
	}
	bridgeKeys := 0
	for _, k := range must(e.admin.ListKeys(ctx, connect.NewRequest(&registryv1.ListKeysRequest{ApplicationId: app.GetId()}))).msg(t).GetKeys() {
		if k.GetPurpose() == registryv1.KeyPurpose_KEY_PURPOSE_BRIDGE {
			bridgeKeys++
		}
	}
	if list := must(e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))).msg(t).GetBridges(); len(list) != 1 || bridgeKeys != 1 {
		t.Errorf("%d bridges and %d bridge keys after the race", len(list), bridgeKeys)
	}
}

// With Redis down, every bridge RPC answers UNAVAILABLE with a generic
// message.
func TestBridgesWithRedisDown(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, _ := e.bridgeApp(t)
	b := e.createBridge(t, bridgeSource("in", app.GetId(), "orders.order.placed"))
	if err := e.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	for what, call := range map[string]func() error{
		"CreateBridge": func() error {
			_, err := e.admin.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: bridgeSink("out", app.GetId(), "billing.*")}))
			return err
		},
		"GetBridge": func() error {
			_, err := e.admin.GetBridge(ctx, connect.NewRequest(&registryv1.GetBridgeRequest{Id: b.GetId()}))
			return err
		},
		"ListBridges": func() error {
			_, err := e.admin.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))
			return err
		},
		"UpdateBridge": func() error {
			_, err := e.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{Bridge: &registryv1.Bridge{Id: b.GetId()}, UpdateMask: []string{"disabled"}}))
			return err
		},
		"DeleteBridge": func() error {
			_, err := e.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: b.GetId()}))
			return err
		},
	} {
		err := call()
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("%s: %v, want UNAVAILABLE", what, err)
		}
		if err != nil {
			noInternals(t, what, err.Error(), e, b.GetId(), b.GetKeyId())
		}
	}
}

// A cache follows one registry; while that one is down another replica on
// the same Redis changes the bridges; when the first is back the cache
// catches up, the deletion included.
func TestBridgeCacheAcrossRegistryRestart(t *testing.T) {
	t.Parallel()
	srv := testutil.Redis(t)
	addr := testutil.FreeAddr(t)
	first := startWith(t, srv, func(c *registry.Config) { c.Addr = addr })
	replica := startWith(t, srv)
	ctx := context.Background()
	app, _ := first.bridgeApp(t)
	kept := first.createBridge(t, bridgeSink("kept", app.GetId(), "billing.*"))
	doomed := first.createBridge(t, bridgeSource("doomed", app.GetId(), "orders.order.placed"))

	cache := catalog.New(first.admin, slog.New(slog.DiscardHandler))
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cache.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	testutil.Eventually(t, 10*time.Second, func() bool { return len(cache.Bridges()) == 2 }, "the cache has both bridges")

	first.stop()
	must(replica.admin.DeleteBridge(ctx, connect.NewRequest(&registryv1.DeleteBridgeRequest{Id: doomed.GetId()}))).msg(t)
	must(replica.admin.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{
		Bridge: &registryv1.Bridge{Id: kept.GetId(), Disabled: true}, UpdateMask: []string{"disabled"},
	}))).msg(t)
	born := replica.createBridge(t, bridgeSink("born", app.GetId(), "billing.invoice.paid"))
	if _, ok := cache.Bridge(doomed.GetId()); !ok {
		t.Fatal("the cache lost the bridge before it could hear of the deletion")
	}

	startWith(t, srv, func(c *registry.Config) { c.Addr = addr })
	testutil.Eventually(t, 20*time.Second, func() bool {
		k, ok := cache.Bridge(kept.GetId())
		_, stillDoomed := cache.Bridge(doomed.GetId())
		_, hasBorn := cache.Bridge(born.GetId())
		return ok && k.GetDisabled() && !stillDoomed && hasBorn
	}, "the cache catches up after the registry is back")
	if !cache.KeyRevoked(doomed.GetKeyId()) {
		t.Error("the cache does not know the deleted source's key is revoked")
	}
}

// TestBridgeKeyIsTheOperators: an application cannot revoke the key its
// source bridge publishes with (it would stop the operator's bridge
// silently); the operator can, and deleting the bridge does.
func TestBridgeKeyIsTheOperators(t *testing.T) {
	t.Parallel()
	e := start(t)
	ctx := context.Background()
	app, appKey := e.bridgeApp(t)
	src := e.createBridge(t, bridgeSource("in", app.GetId(), "orders.order.placed"))
	_, err := e.as(appKey).RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: src.GetKeyId()}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "source bridge") {
		t.Fatalf("the application revoking its bridge's key: %v", err)
	}
	k := must(e.admin.RevokeKey(ctx, connect.NewRequest(&registryv1.RevokeKeyRequest{Id: src.GetKeyId()}))).msg(t).GetKey()
	if k.GetRevokeTime() == nil {
		t.Fatalf("the operator's revoke: %v", k)
	}
}
