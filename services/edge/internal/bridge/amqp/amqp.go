// Package amqp is the AMQP 0-9-1 (RabbitMQ) system of the bridges: a Sink
// that publishes events to an exchange with publisher confirms, and a
// Source that consumes a queue with manual acknowledgements, both following
// the CloudEvents AMQP binding as RabbitMQ clients use it over 0-9-1.
//
// Binary mode puts each attribute in a message header named
// cloudEvents:<attr> (read back also as cloudEvents_<attr> or ce_<attr>),
// datacontenttype in the content-type property and data in the body.
// Attribute headers are strings in the attribute's canonical form (an
// AMQP 0-9-1 timestamp has whole seconds only, which would cut time);
// typed headers are read as well. Structured mode sends the event as
// application/cloudevents+json. Either way the message is persistent and
// its message-id is the event id.
package amqp

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Header prefixes of binary mode: the binding's own, the one for clients
// whose header names cannot hold a colon (JMS), and Kafka's, which some
// RabbitMQ publishers use. The first is what the sink writes.
const (
	headerPrefix    = "cloudEvents:"
	headerPrefixJMS = "cloudEvents_"
	headerPrefixCE  = "ce_"
)

const (
	defaultExchange   = "amq.topic"
	defaultRoutingKey = "{type}"
	dialTimeout       = 5 * time.Second
	closeTimeout      = 5 * time.Second
)

// New builds the bridge's side: a Sink for direction SINK, a Source for
// direction SOURCE (the other is nil).
func New(cfg bridge.Config) (bridge.Sink, bridge.Source, error) {
	switch cfg.Bridge.GetDirection() {
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK:
		s, err := NewSink(cfg)
		if err != nil {
			return nil, nil, err
		}
		return s, nil, nil
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE:
		s, err := NewSource(cfg)
		if err != nil {
			return nil, nil, err
		}
		return nil, s, nil
	}
	return nil, nil, fmt.Errorf("amqp bridge %q: direction %v is neither sink nor source", cfg.Name, cfg.Bridge.GetDirection())
}

// brokerURL is the bridge's URL with the secret as its password.
func brokerURL(cfg bridge.Config) (string, error) {
	a := cfg.Bridge.GetAmqp()
	if a == nil {
		return "", errors.New("amqp bridge: no amqp settings")
	}
	u, err := url.Parse(a.GetUrl())
	if err != nil {
		return "", fmt.Errorf("amqp bridge: url: %w", err)
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return "", fmt.Errorf("amqp bridge: url %q: scheme must be amqp or amqps", u.Redacted())
	}
	if u.Host == "" {
		return "", fmt.Errorf("amqp bridge: url %q has no host", u.Redacted())
	}
	if cfg.Secret != "" {
		if u.User.Username() == "" {
			return "", errors.New("amqp bridge: the url needs a user name for the secret")
		}
		u.User = url.UserPassword(u.User.Username(), cfg.Secret)
	}
	s := u.String()
	if _, err := amqp.ParseURI(s); err != nil {
		return "", fmt.Errorf("amqp bridge: url %q: %w", u.Redacted(), err)
	}
	return s, nil
}

func dial(url, name, role string) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("herald-bridge-" + name + "-" + role)
	c, err := amqp.DialConfig(url, amqp.Config{
		Dial:       amqp.DefaultDial(dialTimeout),
		Heartbeat:  10 * time.Second,
		Properties: props,
	})
	if err != nil {
		return nil, fmt.Errorf("amqp: connect: %w", err)
	}
	return c, nil
}

// closeConn closes c, waiting at most closeTimeout for the broker's
// close-ok: a broker that stopped answering must not hold up Close (the
// connection is torn down either way).
func closeConn(c *amqp.Connection) {
	_ = c.CloseDeadline(time.Now().Add(closeTimeout))
}
