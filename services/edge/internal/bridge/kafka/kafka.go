// Package kafka is the Kafka bridge: a Sink that produces Herald events to a
// topic and a Source that consumes a topic into the mesh, both per the
// CloudEvents Kafka protocol binding (binary mode: ce_* headers and the data
// as the value; structured mode: application/cloudevents+json values), on
// franz-go.
package kafka

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Binding names of the CloudEvents Kafka protocol binding.
const (
	headerPrefix      = "ce_"
	headerContentType = "content-type"
)

// Defaults.
const (
	// DeliveryTimeout bounds how long a record may wait for the brokers
	// (franz-go's own retries included) before the sink reports it failed.
	DeliveryTimeout = 30 * time.Second
	// defaultMaxInFlight is BridgeSink.max_in_flight's default.
	defaultMaxInFlight = 1000
)

// options are the knobs tests turn; New uses the defaults.
type options struct {
	deliveryTimeout time.Duration // 0: DeliveryTimeout
	rootCAs         *x509.CertPool
	minBackoff      time.Duration // a source's first wait after a failed publish; 0: 500ms
	maxBackoff      time.Duration // 0: 10s
}

// New builds the bridge's side of cfg: a Sink for a sink bridge (the
// Source is nil), a Source for a source bridge (the Sink is nil).
func New(cfg bridge.Config) (bridge.Sink, bridge.Source, error) {
	return newBridge(cfg, options{})
}

func newBridge(cfg bridge.Config, o options) (bridge.Sink, bridge.Source, error) {
	switch cfg.Bridge.GetDirection() {
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK:
		s, err := newSink(cfg, o)
		if err != nil {
			return nil, nil, err
		}
		return s, nil, nil
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE:
		s, err := newSource(cfg, o)
		if err != nil {
			return nil, nil, err
		}
		return nil, s, nil
	}
	return nil, nil, fmt.Errorf("kafka bridge %q: no direction", cfg.Name)
}

// NewSink builds the sink of a sink bridge.
func NewSink(cfg bridge.Config) (*Sink, error) { return newSink(cfg, options{}) }

// NewSource builds the source of a source bridge.
func NewSource(cfg bridge.Config) (*Source, error) { return newSource(cfg, options{}) }

// clientOpts are the options of every client of cfg: brokers, client id,
// SASL and TLS.
func clientOpts(cfg bridge.Config, o options) ([]kgo.Opt, error) {
	k := cfg.Bridge.GetKafka()
	if k == nil {
		return nil, fmt.Errorf("kafka bridge %q: not a Kafka bridge", cfg.Name)
	}
	var brokers []string
	for _, b := range k.GetBrokers() {
		if b = strings.TrimSpace(b); b != "" {
			brokers = append(brokers, b)
		}
	}
	if len(brokers) == 0 {
		return nil, fmt.Errorf("kafka bridge %q: no brokers", cfg.Name)
	}
	if err := validTopic(k.GetTopic()); err != nil {
		return nil, fmt.Errorf("kafka bridge %q: %w", cfg.Name, err)
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ClientID("herald-" + cfg.Name),
	}
	switch m := strings.ToUpper(k.GetSaslMechanism()); m {
	case "":
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: k.GetUsername(), Pass: cfg.Secret}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.GetUsername(), Pass: cfg.Secret}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.GetUsername(), Pass: cfg.Secret}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("kafka bridge %q: unknown SASL mechanism %q (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)", cfg.Name, k.GetSaslMechanism())
	}
	if k.GetTls() {
		// franz-go sets ServerName to the host of each broker it dials.
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.rootCAs}))
	}
	return opts, nil
}

// validTopic checks a topic name as Kafka does: 1 to 249 of
// [a-zA-Z0-9._-], and neither "." nor "..". A broker refuses other names
// (InvalidTopicException); some mocks only say "unknown topic".
func validTopic(t string) error {
	if t == "" {
		return errors.New("no topic")
	}
	if len(t) > 249 || t == "." || t == ".." {
		return fmt.Errorf("invalid topic name %q", t)
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("invalid topic name %q: only letters, digits, '.', '_' and '-'", t)
		}
	}
	return nil
}

var errClosed = errors.New("kafka bridge closed")
