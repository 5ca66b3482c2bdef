package catalogview

import (
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/schema"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// paidV1..3 are the schema versions of billing.invoice.paid; v3 uses
	// 2020-12 features: $defs, $anchor, prefixItems, dependentRequired,
	// unevaluatedProperties.
	paidV1 = `{"type":"object","required":["invoice_id"],"properties":{"invoice_id":{"type":"string"}}}`
	paidV2 = `{"type":"object","required":["invoice_id"],"properties":{"invoice_id":{"type":"string"},"amount":{"type":"integer"}}}`
	paidV3 = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "Invoice paid",
  "type": "object",
  "required": ["invoice_id", "total"],
  "properties": {
    "invoice_id": {"type": "string", "pattern": "^inv_[a-z0-9]+$"},
    "total": {"$ref": "#/$defs/money"},
    "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
    "payer": {"$ref": "#party"},
    "period": {"type": "array", "prefixItems": [{"type": "string", "format": "date"}, {"type": "string", "format": "date"}], "items": false},
    "card": {"type": "object", "properties": {"last4": {"type": "string"}, "brand": {"enum": ["visa", "mastercard"]}}, "dependentRequired": {"last4": ["brand"]}},
    "weird key/with~chars": {"$ref": "#/$defs/odd~1name"},
    "spaced": {"$ref": "#/$defs/with%20space"}
  },
  "unevaluatedProperties": false,
  "$defs": {
    "money": {"type": "object", "required": ["amount", "currency"], "properties": {"amount": {"type": "integer", "minimum": 0}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}},
    "line": {"type": "object", "properties": {"sku": {"type": "string"}, "price": {"$ref": "#/$defs/money"}, "note": {"type": ["string", "null"]}}},
    "party": {"$anchor": "party", "type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}}},
    "odd/name": {"type": "string"},
    "with space": {"type": "boolean"}
  }
}`
	// userSchema has an $id, a relative reference to a nested resource and
	// a recursive reference to its root.
	userSchema = `{
  "$id": "https://schemas.example.com/identity/user.json",
  "type": "object",
  "required": ["user_id", "email"],
  "properties": {
    "user_id": {"type": "string"},
    "email": {"type": "string", "format": "email"},
    "address": {"$ref": "address.json"},
    "referrer": {"$ref": "#"},
    "tags": {"$ref": "user.json#/$defs/tags"}
  },
  "$defs": {
    "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
    "address": {"$id": "address.json", "type": "object", "properties": {"city": {"type": "string"}, "next": {"$ref": "#"}}}
  }
}`
	createdSchema = `{"type":"object","required":["invoice_id"],"properties":{"invoice_id":{"type":"string"},"amount":{"type":"integer"}}}`
)

var sunset = time.Date(2031, 6, 30, 0, 0, 0, 0, time.UTC)

// sampleCatalog is a representative catalog: registered and unregistered
// domains, every visibility and lifecycle, several schema versions,
// examples, products and an application.
func sampleCatalog() *Catalog {
	return &Catalog{
		Revision: 42,
		Domains: []*registryv1.Domain{
			{Name: "identity", Description: "Users and their sign-ins.", Owner: "identity-team"},
			{Name: "billing", Description: "Invoices & payments <money>.", Owner: "payments-team"},
			{Name: "shipping", Description: "Parcels.", Owner: "logistics"},
		},
		EventTypes: []*registryv1.EventType{
			{
				Name: "billing.invoice.paid", Description: "An invoice was paid in full. The amount is in minor units.",
				Schema: paidV3, SchemaVersion: 3, Owner: "payments-team",
				Visibility: registryv1.Visibility_VISIBILITY_PUBLIC, Lifecycle: registryv1.Lifecycle_LIFECYCLE_ACTIVE,
				Compatibility: registryv1.Compatibility_COMPATIBILITY_BACKWARD_TRANSITIVE,
				Retention:     &registryv1.RetentionPolicy{MaxAge: durationpb.New(720 * time.Hour), MaxEvents: 1000000},
				Partitions:    4,
				Examples: []*registryv1.Example{
					{Name: "card", Summary: "Paid by card", Data: `{"invoice_id":"inv_1","total":{"amount":1250,"currency":"EUR"},"card":{"last4":"4242","brand":"visa"}}`},
					{Name: "old", Summary: "Version 1 payload", Data: `{"invoice_id":"inv_0"}`, SchemaVersion: 1},
				},
			},
			{
				Name: "billing.invoice.created", Description: `An invoice was issued. <script>alert("x")</script>`,
				Schema: createdSchema, SchemaVersion: 1, Owner: "payments-team",
				Visibility: registryv1.Visibility_VISIBILITY_PARTNER, Lifecycle: registryv1.Lifecycle_LIFECYCLE_DEPRECATED,
				SunsetTime: timestamppb.New(sunset),
				Examples:   []*registryv1.Example{{Name: "plain", Data: `{"invoice_id":"inv_2","amount":10}`}},
			},
			{
				Name: "billing.refund.issued", Description: "A refund was issued.",
				Schema: `{"type":"object"}`, SchemaVersion: 1,
				Lifecycle: registryv1.Lifecycle_LIFECYCLE_RETIRED, SunsetTime: timestamppb.New(time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)),
			},
			{
				Name: "identity.user.created", Description: "A user signed up.",
				Schema: userSchema, SchemaVersion: 1, Owner: "identity-team",
				Visibility: registryv1.Visibility_VISIBILITY_PUBLIC,
				Examples:   []*registryv1.Example{{Name: "signup", Summary: "A sign-up", Data: `{"user_id":"u1","email":"a@example.com","tags":["new"]}`}},
			},
			{
				Name: "orders.order.placed", Description: "An order was placed.",
				Schema: `true`, SchemaVersion: 1, Visibility: registryv1.Visibility_VISIBILITY_INTERNAL,
			},
		},
		Products: []*registryv1.Product{
			{Name: "payments-pro", Description: "Every billing event.", EventTypes: []string{"billing.*"}},
			{Name: "identity-basic", Description: "Sign-ups.", EventTypes: []string{"identity.user.created"}},
			{Name: "everything", Description: "All of it.", EventTypes: []string{"*"}},
		},
		SchemaVersions: map[string][]*registryv1.SchemaVersion{
			"billing.invoice.paid": {
				{EventType: "billing.invoice.paid", Version: 1, Schema: paidV1},
				{EventType: "billing.invoice.paid", Version: 2, Schema: paidV2},
				{EventType: "billing.invoice.paid", Version: 3, Schema: paidV3},
			},
			"billing.invoice.created": {{EventType: "billing.invoice.created", Version: 1, Schema: createdSchema}},
			"billing.refund.issued":   {{EventType: "billing.refund.issued", Version: 1, Schema: `{"type":"object"}`}},
			"identity.user.created":   {{EventType: "identity.user.created", Version: 1, Schema: userSchema}},
			"orders.order.placed":     {{EventType: "orders.order.placed", Version: 1, Schema: `true`}},
		},
		Applications: []*registryv1.Application{
			{
				Id: "app_partner", Name: "Partner app", Audience: registryv1.Audience_AUDIENCE_PARTNER,
				Grants: []*registryv1.Grant{
					{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "billing.*"},
					{Action: registryv1.GrantAction_GRANT_ACTION_PUBLISH, Pattern: "identity.*"},
					{Action: registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, Pattern: "orders.*"},
				},
			},
		},
	}
}

// bridgeCatalog is sampleCatalog with a bridge of each system and
// direction, of two applications.
func bridgeCatalog() *Catalog {
	c := sampleCatalog()
	c.Bridges = sampleBridges()
	return c
}

// The sealed values of the sample bridges: no view may show them.
const (
	sampleSealedSecret = "sealed-secret-never-shown"
	sampleSealedKey    = "sealed-key-never-shown"
)

// sampleBridges has a bridge of each system and direction, as the
// registry stores them (defaults filled, secrets sealed).
func sampleBridges() []*registryv1.Bridge {
	sink := registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK
	source := registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE
	return []*registryv1.Bridge{
		{
			Id: "brg_kafka_sink", Name: "billing-to-kafka", ApplicationId: "app_partner", Direction: sink,
			Description: "Billing events for the warehouse.",
			System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{
				Brokers: []string{"kafka-1.internal:9093", "kafka-2.internal:9093"}, Topic: "herald.billing",
				SaslMechanism: "SCRAM-SHA-512", Username: "kafka-login", Tls: true,
			}},
			Sink:         &registryv1.BridgeSink{Types: []string{"billing.*"}, Filter: "data.total.amount > 0", MaxInFlight: 1000},
			SealedSecret: sampleSealedSecret,
		},
		{
			Id: "brg_kafka_source", Name: "users-from-kafka", ApplicationId: "app_partner", Direction: source,
			System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{
				Brokers: []string{"kafka-1.internal:9092"}, Topic: "users", Group: "herald-users-from-kafka",
			}},
			Source:    &registryv1.BridgeSource{EventType: "identity.user.created", BatchSize: 100},
			SealedKey: sampleSealedKey, KeyId: "key_1",
		},
		{
			Id: "brg_amqp_sink", Name: "orders-to-rabbit", ApplicationId: "app_ops", Direction: sink,
			System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{
				Url: "amqps://herald@rabbit.internal:5671/prod", Exchange: "amq.topic", RoutingKey: "herald.{type}",
			}},
			Sink:         &registryv1.BridgeSink{Types: []string{"orders.*"}, ContentMode: registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED},
			SealedSecret: sampleSealedSecret, Disabled: true,
		},
		{
			Id: "brg_amqp_source", Name: "signups-from-rabbit", ApplicationId: "app_ops", Direction: source,
			System: &registryv1.Bridge_Amqp{Amqp: &registryv1.AmqpBridge{Url: "amqp://rabbit.internal:5672", Queue: "signups"}},
			Source: &registryv1.BridgeSource{EventType: "identity.user.created", BatchSize: 50},
		},
		{
			Id: "brg_mqtt_sink", Name: "billing-to-mqtt", ApplicationId: "app_ops", Direction: sink,
			System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{
				Broker: "ssl://mqtt.internal:8883", ProtocolVersion: 5, Topic: "herald/{type}", Qos: 1, Username: "herald", ClientId: "herald-billing-to-mqtt",
			}},
			Sink:         &registryv1.BridgeSink{Types: []string{"billing.invoice.paid", "billing.invoice.created"}},
			SealedSecret: sampleSealedSecret,
		},
		{
			Id: "brg_mqtt_source", Name: "sensors-from-mqtt", ApplicationId: "app_ops", Direction: source,
			System: &registryv1.Bridge_Mqtt{Mqtt: &registryv1.MqttBridge{Broker: "tcp://mqtt.internal:1883", ProtocolVersion: 4, Topic: "sensors/+/signup", Qos: 2}},
			Source: &registryv1.BridgeSource{EventType: "identity.user.created"},
		},
		{
			// Its types are not in the catalog (yet): a channel without messages.
			Id: "brg_kafka_future", Name: "future-to-kafka", ApplicationId: "app_ops", Direction: sink,
			System: &registryv1.Bridge_Kafka{Kafka: &registryv1.KafkaBridge{Brokers: []string{"kafka-1.internal:9092"}, Topic: "future"}},
			Sink:   &registryv1.BridgeSink{Types: []string{"future.*"}},
		},
		{
			Id: "brg_lake", Name: "everything-to-lake", ApplicationId: "app_ops", Direction: sink,
			System: &registryv1.Bridge_Lake{Lake: &registryv1.LakeBridge{S3: &registryv1.S3Location{
				Endpoint: "http://minio.internal:9000", Bucket: "events", AccessKeyId: "AKIA-never-shown",
			}}},
			Sink:         &registryv1.BridgeSink{Types: []string{"*"}},
			SealedSecret: sampleSealedSecret,
		},
	}
}

// sampleProto is a protobuf schema with its descriptor set, as the registry
// stores it.
func sampleProto() *registryv1.ProtobufSchema {
	ps := &registryv1.ProtobufSchema{Message: "orders.v1.OrderShipped", Files: map[string]string{"orders/v1/shipped.proto": `syntax = "proto3";
package orders.v1;

message OrderShipped {
  string order_id = 1;
  int64 weight_grams = 2;
  repeated string parcels = 3;
}
`}}
	p, err := schema.CompileProtobuf(ps)
	if err != nil {
		panic(err)
	}
	ps.FileDescriptorSet = p.FileDescriptorSet()
	return ps
}

// formatsCatalog has one type of each binary format.
func formatsCatalog() *Catalog {
	return &Catalog{Revision: 1, EventTypes: []*registryv1.EventType{
		{
			Name: "orders.order.shipped", Description: "An order was shipped (Protobuf).",
			SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, SchemaVersion: 1, Visibility: registryv1.Visibility_VISIBILITY_PUBLIC,
			ProtobufSchema: sampleProto(),
		},
		{
			Name: "orders.refund.issued", Description: "A refund was issued (Avro).",
			SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO, SchemaVersion: 1, Visibility: registryv1.Visibility_VISIBILITY_PUBLIC,
			Schema: `{"type":"record","name":"Refund","namespace":"orders","fields":[{"name":"id","type":"string"},{"name":"cents","type":"long"},{"name":"note","type":["null","string"],"default":null}]}`,
		},
		{
			Name: "orders.scan.stored", Description: "A scan was stored (opaque bytes).",
			SchemaFormat: registryv1.SchemaFormat_SCHEMA_FORMAT_NONE, ContentType: "image/png", SchemaVersion: 1, Visibility: registryv1.Visibility_VISIBILITY_PUBLIC,
		},
	}}
}
