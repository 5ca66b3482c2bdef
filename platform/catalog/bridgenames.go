package catalog

import registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"

// BridgeSystem names a bridge's system: kafka, amqp, mqtt or lake ("" when
// it has none). It is also the usage channel of a sink's deliveries.
func BridgeSystem(b *registryv1.Bridge) string {
	switch b.GetSystem().(type) {
	case *registryv1.Bridge_Kafka:
		return "kafka"
	case *registryv1.Bridge_Amqp:
		return "amqp"
	case *registryv1.Bridge_Mqtt:
		return "mqtt"
	case *registryv1.Bridge_Lake:
		return "lake"
	}
	return ""
}

// BridgeSecretContext and BridgeKeyContext are the secretbox contexts of a
// bridge's sealed secret and of a source's sealed key: the registry seals
// with them, the edge opens with them.
func BridgeSecretContext(bridgeID string) string { return "bridge/" + bridgeID + "/secret" }

// BridgeKeyContext: see BridgeSecretContext.
func BridgeKeyContext(bridgeID string) string { return "bridge/" + bridgeID + "/key" }
