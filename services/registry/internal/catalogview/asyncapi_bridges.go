package catalogview

import (
	"cmp"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventtype"
)

// Binding versions of the AsyncAPI protocol bindings the bridges use.
const (
	kafkaBindingVersion = "0.5.0"
	amqpBindingVersion  = "0.3.0"
	mqttBindingVersion  = "0.2.0"
)

// bridgeKey is the key of a bridge's server, channel and security scheme
// (bridge names are lower-case letters, digits and '-').
func bridgeKey(name string) string { return "bridge-" + name }

// addressParam finds the {name} parts of a channel address.
var addressParam = regexp.MustCompile(`\{([^{}]*)\}`)

// validParamName is what AsyncAPI allows as a parameter name.
var validParamName = regexp.MustCompile(`^[A-Za-z0-9_\-]+$`)

// addBridges adds a server, a channel and an operation for each bridge of
// c (an application filter keeps that application's). A sink's operation
// is "send" (Herald sends the events to the system), a source's "receive"
// (Herald receives the system's records). Lake bridges have no AsyncAPI
// protocol and are left out. Only connection settings that say where the
// events go are shown: never a secret, a sealed value or a user name.
func addBridges(doc *Document, c *Catalog, s *selection, f Filter) {
	if c == nil || len(c.Bridges) == 0 {
		return
	}
	bridges := slices.Clone(c.Bridges)
	slices.SortFunc(bridges, func(a, b *registryv1.Bridge) int { return cmp.Compare(a.GetName(), b.GetName()) })
	added := false
	for _, b := range bridges {
		if f.Application != "" && b.GetApplicationId() != f.Application {
			continue
		}
		if !bridgeNameOK(b.GetName()) {
			continue
		}
		types := bridgeMessages(doc, s, b)
		if len(types) == 0 && !f.IsZero() {
			// Narrowed to other types: the bridge is not part of this view.
			continue
		}
		if addBridge(doc, b, types) {
			added = true
		}
	}
	if added {
		if _, ok := doc.Servers[edgeServerKey]; ok {
			// Channels without servers are on every server: keep the event
			// types' channels on the edge.
			for name, ch := range doc.Channels {
				if ch.Bridge == "" && ch.Servers == nil {
					doc.Channels[name].Servers = []Ref{{Ref: "#/servers/" + edgeServerKey}}
				}
			}
		}
	}
}

func bridgeNameOK(name string) bool {
	return name != "" && len(name) <= 63 && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") == ""
}

// bridgeMessages are the types of the document a bridge carries, by name.
func bridgeMessages(doc *Document, s *selection, b *registryv1.Bridge) []string {
	var out []string
	for _, tv := range s.types {
		name := tv.et.GetName()
		if _, ok := doc.Components.Messages[name]; !ok {
			continue
		}
		switch b.GetDirection() {
		case registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK:
			if eventtype.MatchAny(b.GetSink().GetTypes(), name) {
				out = append(out, name)
			}
		case registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE:
			if b.GetSource().GetEventType() == name {
				out = append(out, name)
			}
		}
	}
	return out
}

// addBridge adds one bridge; it reports false for what it leaves out.
func addBridge(doc *Document, b *registryv1.Bridge, types []string) bool {
	sink := b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK
	if !sink && b.GetDirection() != registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE {
		return false
	}
	key := bridgeKey(b.GetName())
	srv := &Server{Bridge: b.GetName()}
	ch := &Channel{Bridge: b.GetName(), Servers: []Ref{{Ref: "#/servers/" + key}}, Messages: map[string]Ref{}}
	op := &Operation{Bridge: b.GetName(), Channel: Ref{Ref: "#/channels/" + key}, Messages: []Ref{}}
	var scheme *SecurityScheme
	// typeParam is how {type} reads in the address: the type name, or
	// for MQTT the name with dots as slashes.
	typeParam := func(name string) string { return name }
	var system string
	switch sys := b.GetSystem().(type) {
	case *registryv1.Bridge_Kafka:
		k := sys.Kafka
		if len(k.GetBrokers()) == 0 {
			return false
		}
		system = "Kafka"
		srv.Host, srv.Protocol = k.GetBrokers()[0], "kafka"
		if k.GetTls() {
			srv.Protocol = "kafka-secure"
		}
		srv.Description = "Seed brokers: " + strings.Join(k.GetBrokers(), ", ") + "."
		if k.GetSaslMechanism() != "" {
			t := map[string]string{"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}[k.GetSaslMechanism()]
			if t != "" {
				scheme = &SecurityScheme{Type: t, Description: "SASL " + k.GetSaslMechanism() + "; Herald holds the credentials."}
			}
		}
		ch.Address = k.GetTopic()
		ch.Bindings = obj("kafka", obj("topic", k.GetTopic(), "bindingVersion", kafkaBindingVersion))
		if !sink && k.GetGroup() != "" {
			op.Bindings = obj("kafka", obj("groupId", obj("type", "string", "enum", []any{k.GetGroup()}), "bindingVersion", kafkaBindingVersion))
		}
	case *registryv1.Bridge_Amqp:
		a := sys.Amqp
		u, err := url.Parse(a.GetUrl())
		if err != nil || u.Host == "" {
			return false
		}
		system = "AMQP"
		// u.Host never holds the user info: the credentials stay out.
		srv.Host, srv.Protocol, srv.ProtocolVersion = u.Host, "amqp", "0-9-1"
		if u.Scheme == "amqps" {
			srv.Protocol = "amqps"
		}
		vhost := "/"
		if p := strings.TrimPrefix(u.Path, "/"); p != "" {
			if v, err := url.PathUnescape(p); err == nil {
				vhost = v
			}
		}
		srv.Description = "Virtual host " + vhost + "."
		if u.User != nil {
			scheme = &SecurityScheme{Type: "userPassword", Description: "A user name and password; Herald holds them."}
		}
		if sink {
			ch.Address = a.GetRoutingKey()
			ch.Bindings = obj("amqp", obj("is", "routingKey", "exchange", obj("name", a.GetExchange(), "vhost", vhost), "bindingVersion", amqpBindingVersion))
			ch.Description = "Routing key " + a.GetRoutingKey() + " on exchange " + a.GetExchange() + "."
		} else {
			ch.Address = a.GetQueue()
			ch.Bindings = obj("amqp", obj("is", "queue", "queue", obj("name", a.GetQueue(), "vhost", vhost), "bindingVersion", amqpBindingVersion))
			ch.Description = "Queue " + a.GetQueue() + "."
		}
	case *registryv1.Bridge_Mqtt:
		m := sys.Mqtt
		u, err := url.Parse(m.GetBroker())
		if err != nil || u.Host == "" {
			return false
		}
		system = "MQTT"
		srv.Host, srv.Protocol = u.Host, "mqtt"
		if u.Scheme == "ssl" || u.Scheme == "mqtts" {
			srv.Protocol = "secure-mqtt"
		}
		srv.ProtocolVersion = "5"
		if m.GetProtocolVersion() == 4 {
			srv.ProtocolVersion = "3.1.1"
		}
		if m.GetClientId() != "" {
			srv.Bindings = obj("mqtt", obj("clientId", m.GetClientId(), "bindingVersion", mqttBindingVersion))
		}
		if m.GetUsername() != "" {
			scheme = &SecurityScheme{Type: "userPassword", Description: "A user name and password; Herald holds them."}
		}
		ch.Address = m.GetTopic()
		if !sink {
			ch.Description = "Topic filter " + m.GetTopic() + "."
		}
		if q := m.GetQos(); q == 1 || q == 2 {
			op.Bindings = obj("mqtt", obj("qos", q, "bindingVersion", mqttBindingVersion))
		}
		typeParam = func(name string) string { return strings.ReplaceAll(name, ".", "/") }
	default:
		// A lake writes files: AsyncAPI has no protocol for it.
		return false
	}

	// {type} in a sink's address is the event type; any other {name} is
	// declared too, since AsyncAPI reads every one as a parameter.
	for _, m := range addressParam.FindAllStringSubmatch(ch.Address, -1) {
		name := m[1]
		if !validParamName.MatchString(name) {
			return false
		}
		if ch.Parameters == nil {
			ch.Parameters = map[string]*Parameter{}
		}
		if _, done := ch.Parameters[name]; done {
			continue
		}
		p := &Parameter{Description: "Literal text of the address."}
		if name == "type" && sink {
			p.Description = "The event type"
			if system == "MQTT" {
				p.Description += ", with dots as slashes"
			}
			p.Description += "."
			for _, t := range types {
				p.Enum = append(p.Enum, typeParam(t))
			}
		}
		ch.Parameters[name] = p
	}

	direction, action := "source", "receive"
	if sink {
		direction, action = "sink", "send"
	}
	srv.Title = system + " of bridge " + b.GetName()
	srv.Summary = fmt.Sprintf("The %s system of the %s bridge %s.", system, direction, b.GetName())
	if scheme != nil {
		scheme.Bridge = b.GetName()
		if doc.Components.SecuritySchemes == nil {
			doc.Components.SecuritySchemes = map[string]*SecurityScheme{}
		}
		doc.Components.SecuritySchemes[key] = scheme
		srv.Security = []Ref{{Ref: "#/components/securitySchemes/" + key}}
	}
	ch.Title = "Bridge " + b.GetName()
	var what string
	if sink {
		what = "Herald delivers the events of " + strings.Join(b.GetSink().GetTypes(), ", ") + " here"
		if b.GetSink().GetFilter() != "" {
			what += " that pass the filter `" + b.GetSink().GetFilter() + "`"
		}
		mode := "binary"
		if b.GetSink().GetContentMode() == registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED ||
			(system == "MQTT" && srv.ProtocolVersion == "3.1.1") {
			mode = "structured"
		}
		what += ", in the CloudEvents " + system + " binding's " + mode + " content mode."
	} else {
		what = "Herald reads each record here and publishes it, through the router like any producer, as an event of type " +
			b.GetSource().GetEventType() + " (records that are CloudEvents keep their own type)."
	}
	ch.Summary = what
	if b.GetDisabled() {
		ch.Summary = "Disabled. " + what
	}
	if d := strings.TrimSpace(b.GetDescription()); d != "" {
		ch.Description = strings.TrimSpace(d + "\n\n" + ch.Description)
	}
	for _, t := range types {
		ch.Messages[t] = Ref{Ref: "#/components/messages/" + pointerToken(t)}
		op.Messages = append(op.Messages, Ref{Ref: "#/channels/" + key + "/messages/" + pointerToken(t)})
	}
	op.Action = action
	op.Title = strings.ToUpper(action[:1]) + action[1:] + " on bridge " + b.GetName()
	op.Summary = ch.Summary

	if doc.Servers == nil {
		doc.Servers = map[string]*Server{}
	}
	doc.Servers[key] = srv
	doc.Channels[key] = ch
	doc.Operations[key+"-"+action] = op
	return true
}
