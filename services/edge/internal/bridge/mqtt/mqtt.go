// Package mqtt is the bridge adapter for MQTT brokers: a Sink that
// publishes events and a Source that subscribes to a topic filter, both per
// the CloudEvents MQTT protocol binding, over MQTT 5 (Eclipse Paho's
// paho.golang) or MQTT 3.1.1 (paho.mqtt.golang), chosen by the bridge's
// protocol_version.
//
// The binding, as this package applies it:
//
//   - MQTT 5, binary mode (the default): every context attribute but
//     datacontenttype travels as a user property named after the attribute
//     (specversion, id, source, type, time, extensions...), without a
//     prefix; datacontenttype is the PUBLISH Content Type; the data is the
//     payload.
//   - Structured mode, and always on MQTT 3.1.1 (which has no properties):
//     the payload is the event in the CloudEvents JSON format; on MQTT 5 the
//     Content Type is application/cloudevents+json.
//
// Delivery is at least once: QoS 1 (default) or 2, a sink's message
// confirmed at PUBACK / PUBCOMP, a source's message acknowledged only after
// Herald stored it.
package mqtt

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Tuning shared by the sink and the source.
const (
	// DefaultSinkTopic is a sink's topic template when none is set.
	DefaultSinkTopic = "herald/{type}"
	// keepAlive is the MQTT keep alive: a silent broker is given up on
	// after about 1.5 times this.
	keepAlive = 30 * time.Second
	// dialTimeout bounds a TCP (and TLS) dial plus CONNECT / CONNACK.
	dialTimeout = 10 * time.Second
	// publishTimeout bounds the wait for one PUBACK / PUBCOMP.
	publishTimeout = 30 * time.Second
	// sessionExpiry is how long the broker keeps an MQTT 5 source's
	// session (its subscription and the messages it has not acknowledged)
	// while the source is disconnected. MQTT 3.1.1 sessions last until
	// the broker's own limit (mosquitto: persistent_client_expiration).
	sessionExpiry = 7 * 24 * time.Hour
	// minBackoff and maxBackoff bound the delay between reconnects.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
)

var errClosed = errors.New("mqtt: bridge closed")

// settings is a bridge's MqttBridge, validated, with defaults applied.
type settings struct {
	name       string
	broker     string // host:port
	tls        bool
	version    int // 4 (3.1.1) or 5
	topic      string
	qos        byte
	username   string
	password   string
	clientID   string
	structured bool
	// maxInFlight is the sink's max_in_flight.
	maxInFlight int
	// eventType is the source's event type for records that are not
	// CloudEvents.
	eventType string
}

func parse(cfg bridge.Config, direction registryv1.BridgeDirection) (settings, error) {
	b := cfg.Bridge
	m := b.GetMqtt()
	if m == nil {
		return settings{}, errors.New("mqtt: not an MQTT bridge")
	}
	if b.GetDirection() != direction {
		return settings{}, fmt.Errorf("mqtt: bridge %q is a %s, not a %s", cfg.Name, b.GetDirection(), direction)
	}
	st := settings{
		name:     cfg.Name,
		version:  int(m.GetProtocolVersion()),
		topic:    m.GetTopic(),
		username: m.GetUsername(),
		password: cfg.Secret,
		clientID: m.GetClientId(),
	}
	var err error
	if st.broker, st.tls, err = parseBroker(m.GetBroker()); err != nil {
		return settings{}, err
	}
	switch st.version {
	case 0:
		st.version = 5
	case 4, 5:
	default:
		return settings{}, fmt.Errorf("mqtt: protocol_version must be 4 (MQTT 3.1.1) or 5, not %d", st.version)
	}
	switch q := m.GetQos(); q {
	case 0, 1:
		// The registry refuses 0 (it loses messages); should one get
		// through, 1 is what it gets.
		st.qos = 1
	case 2:
		st.qos = 2
	default:
		return settings{}, fmt.Errorf("mqtt: qos must be 1 or 2, not %d", q)
	}
	if st.version == 4 && st.password != "" && st.username == "" {
		return settings{}, errors.New("mqtt: MQTT 3.1.1 sends a password only with a user name")
	}
	if direction == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK {
		if st.topic == "" {
			st.topic = DefaultSinkTopic
		}
		if strings.ContainsAny(st.topic, "+#\x00") {
			return settings{}, fmt.Errorf("mqtt: sink topic %q must not hold the wildcards + or #", st.topic)
		}
		if st.clientID == "" {
			st.clientID = "herald-" + cfg.Name
		}
		st.structured = st.version == 4 || b.GetSink().GetContentMode() == registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED
		st.maxInFlight = int(b.GetSink().GetMaxInFlight())
		if st.maxInFlight <= 0 {
			st.maxInFlight = 1000
		}
	} else {
		if err := validFilter(st.topic); err != nil {
			return settings{}, err
		}
		if st.clientID == "" {
			st.clientID = "herald-" + cfg.Name + "-src"
		}
		st.eventType = b.GetSource().GetEventType()
		if st.eventType == "" {
			return settings{}, errors.New("mqtt: a source needs an event_type")
		}
	}
	return st, nil
}

// parseBroker reads tcp://host:port or ssl://host:port (mqtt:// and
// mqtts://, tls:// are taken too); the port defaults to 1883, or 8883 with
// TLS.
func parseBroker(s string) (hostport string, useTLS bool, err error) {
	if s == "" {
		return "", false, errors.New("mqtt: broker is required (tcp://host:port or ssl://host:port)")
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", false, fmt.Errorf("mqtt: broker %q is not tcp://host:port or ssl://host:port", s)
	}
	switch u.Scheme {
	case "tcp", "mqtt":
	case "ssl", "tls", "mqtts":
		useTLS = true
	default:
		return "", false, fmt.Errorf("mqtt: broker %q: scheme must be tcp or ssl", s)
	}
	if u.User != nil {
		return "", false, fmt.Errorf("mqtt: broker %q: put the user name in username and the password in the secret", s)
	}
	port := u.Port()
	if port == "" {
		port = "1883"
		if useTLS {
			port = "8883"
		}
	}
	return net.JoinHostPort(u.Hostname(), port), useTLS, nil
}

// validFilter checks an MQTT topic filter: '#' alone as the last level,
// '+' alone in its level.
func validFilter(f string) error {
	if f == "" {
		return errors.New("mqtt: a source needs a topic filter")
	}
	if strings.ContainsRune(f, 0) {
		return errors.New("mqtt: topic filter holds a NUL character")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1, l != "#" && strings.Contains(l, "#"):
			return fmt.Errorf("mqtt: topic filter %q: # must be the whole last level", f)
		case l != "+" && strings.Contains(l, "+"):
			return fmt.Errorf("mqtt: topic filter %q: + must be a whole level", f)
		}
	}
	return nil
}

// New builds the Sink or the Source of an MQTT bridge, per its direction
// (the other is nil). Neither connects here: a Sink connects (and
// reconnects) in the background at once, a Source when Run is called.
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
	return nil, nil, fmt.Errorf("mqtt: bridge %q has no direction", cfg.Name)
}

// backoff is exponential with full jitter between minBackoff and max.
type backoff struct {
	n   int
	max time.Duration
}

func (b *backoff) next() time.Duration {
	d := minBackoff << min(b.n, 16)
	if d > b.max || d <= 0 {
		d = b.max
	}
	b.n++
	return time.Duration(rand.Int64N(int64(d))) + minBackoff/2
}

func (b *backoff) reset() { b.n = 0 }
