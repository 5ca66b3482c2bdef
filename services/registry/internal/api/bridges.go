package api

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/services/registry/internal/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Bridge limits and defaults.
const (
	maxBridgeTypes       = 100
	maxBridgeBrokers     = 20
	defaultMaxInFlight   = 1000
	maxMaxInFlight       = 10000
	defaultSourceBatch   = 100
	maxSourceBatch       = 500
	defaultLakeFileBytes = 64 << 20
	minLakeFileBytes     = 1 << 20
	maxLakeFileBytes     = 1 << 30
	defaultLakeFileAge   = 5 * time.Minute
	minLakeFileAge       = time.Second
	maxLakeFileAge       = 24 * time.Hour
	maxBridgeSecret      = 4096
	maxBridgeDescription = 1024
)

// defaultBridgeRetrySchedule is a sink's retry schedule when none is given:
// shorter than a webhook's, since the far side is infrastructure of the
// operator's and back soon, and the dead letters can be replayed.
var defaultBridgeRetrySchedule = []time.Duration{time.Second, 10 * time.Second, time.Minute, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour}

var (
	bridgeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	kafkaTopicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)
)

// BridgeSecretContext and BridgeKeyContext: see catalog.BridgeSecretContext.
func BridgeSecretContext(bridgeID string) string { return catalog.BridgeSecretContext(bridgeID) }

// BridgeKeyContext: see catalog.BridgeKeyContext.
func BridgeKeyContext(bridgeID string) string { return catalog.BridgeKeyContext(bridgeID) }

// bridgeForClient strips what only the services may see.
func bridgeForClient(b *registryv1.Bridge) *registryv1.Bridge {
	out := proto.Clone(b).(*registryv1.Bridge)
	out.SecretSet = out.GetSealedSecret() != ""
	out.SealedSecret, out.SealedKey, out.Secret = "", "", ""
	return out
}

// hostPort checks a host:port.
func hostPort(field, s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return invalid("%s %q is not host:port", field, s)
	}
	return nil
}

// checkBridgeSystem checks and defaults the system settings of b.
func checkBridgeSystem(b *registryv1.Bridge) error {
	sink := b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK
	switch sys := b.GetSystem().(type) {
	case *registryv1.Bridge_Kafka:
		k := sys.Kafka
		if len(k.GetBrokers()) == 0 || len(k.GetBrokers()) > maxBridgeBrokers {
			return invalid("bridge.kafka.brokers must list 1 to %d seed brokers (host:port)", maxBridgeBrokers)
		}
		for i, br := range k.GetBrokers() {
			if err := hostPort(fmt.Sprintf("bridge.kafka.brokers[%d]", i), br); err != nil {
				return err
			}
		}
		if !kafkaTopicRE.MatchString(k.GetTopic()) || k.GetTopic() == "." || k.GetTopic() == ".." {
			return invalid("bridge.kafka.topic %q is not a Kafka topic name (1-249 letters, digits, '.', '_', '-')", k.GetTopic())
		}
		if k.GetGroup() == "" && !sink {
			k.Group = "herald-" + b.GetName()
		}
		if len(k.GetGroup()) > 255 {
			return invalid("bridge.kafka.group is longer than 255 bytes")
		}
		switch k.GetSaslMechanism() {
		case "":
		case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
			if k.GetUsername() == "" || b.GetSecret() == "" && b.GetSealedSecret() == "" {
				return invalid("bridge.kafka.sasl_mechanism %s needs a username and the password as bridge.secret", k.GetSaslMechanism())
			}
		default:
			return invalid("bridge.kafka.sasl_mechanism %q: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, or none", k.GetSaslMechanism())
		}
	case *registryv1.Bridge_Amqp:
		a := sys.Amqp
		u, err := url.Parse(a.GetUrl())
		if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" {
			return invalid("bridge.amqp.url must be an amqp:// or amqps:// URL with a host")
		}
		if _, set := u.User.Password(); set {
			return invalid("bridge.amqp.url carries a password: give it as bridge.secret, which is stored sealed")
		}
		if sink {
			if a.GetExchange() == "" {
				a.Exchange = "amq.topic"
			}
			if a.GetRoutingKey() == "" {
				a.RoutingKey = "{type}"
			}
			if a.GetQueue() != "" {
				return invalid("bridge.amqp.queue is a source's setting; a sink publishes to an exchange")
			}
		} else if a.GetQueue() == "" {
			return invalid("bridge.amqp.queue is required for a source")
		}
		if len(a.GetExchange()) > 255 || len(a.GetRoutingKey()) > 255 || len(a.GetQueue()) > 255 {
			return invalid("bridge.amqp names are at most 255 bytes")
		}
	case *registryv1.Bridge_Mqtt:
		m := sys.Mqtt
		u, err := url.Parse(m.GetBroker())
		if err != nil || !slices.Contains([]string{"tcp", "ssl", "mqtt", "mqtts"}, u.Scheme) || u.Host == "" || u.Port() == "" {
			return invalid("bridge.mqtt.broker must be tcp://host:port or ssl://host:port")
		}
		if _, set := u.User.Password(); set {
			return invalid("bridge.mqtt.broker carries a password: give it as bridge.secret, which is stored sealed")
		}
		switch m.GetProtocolVersion() {
		case 0:
			m.ProtocolVersion = 5
		case 4, 5:
		default:
			return invalid("bridge.mqtt.protocol_version is %d: use 4 (MQTT 3.1.1) or 5", m.GetProtocolVersion())
		}
		switch m.GetQos() {
		case 0:
			m.Qos = 1
		case 1, 2:
		default:
			return invalid("bridge.mqtt.qos is %d: use 1 or 2", m.GetQos())
		}
		if sink {
			if m.GetTopic() == "" {
				m.Topic = "herald/{type}"
			}
			if strings.ContainsAny(m.GetTopic(), "+#") {
				return invalid("bridge.mqtt.topic %q has a wildcard: a sink publishes to a topic name", m.GetTopic())
			}
		} else if m.GetTopic() == "" {
			return invalid("bridge.mqtt.topic (a topic filter) is required for a source")
		} else if err := mqttFilter(m.GetTopic()); err != nil {
			return invalid("bridge.mqtt.topic %q is not a topic filter: %v", m.GetTopic(), err)
		}
		if len(m.GetTopic()) > 1024 || len(m.GetClientId()) > 128 {
			return invalid("bridge.mqtt.topic or client_id is too long")
		}
	case *registryv1.Bridge_Lake:
		l := sys.Lake
		if !sink {
			return invalid("bridge.lake is a sink only: a lake bridge cannot be a source (bridge.direction)")
		}
		switch {
		case l.GetDirectory() != "" && l.GetS3() != nil:
			return invalid("bridge.lake takes a directory or s3, not both")
		case l.GetDirectory() != "":
			if !filepath.IsAbs(l.GetDirectory()) || filepath.Clean(l.GetDirectory()) != l.GetDirectory() {
				return invalid("bridge.lake.directory %q must be a clean absolute path", l.GetDirectory())
			}
		case l.GetS3() != nil:
			s3 := l.GetS3()
			u, err := url.Parse(s3.GetEndpoint())
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return invalid("bridge.lake.s3.endpoint must be an http(s) URL")
			}
			if _, set := u.User.Password(); set {
				return invalid("bridge.lake.s3.endpoint carries a password: give the secret access key as bridge.secret, which is stored sealed")
			}
			if s3.GetBucket() == "" || s3.GetAccessKeyId() == "" || b.GetSecret() == "" && b.GetSealedSecret() == "" {
				return invalid("bridge.lake.s3 needs a bucket, an access_key_id and the secret access key as bridge.secret")
			}
			if s3.GetRegion() == "" {
				s3.Region = "us-east-1"
			}
		default:
			return invalid("bridge.lake needs a directory or an s3 location")
		}
		switch n := l.GetMaxFileBytes(); {
		case n == 0:
			l.MaxFileBytes = defaultLakeFileBytes
		case n < minLakeFileBytes || n > maxLakeFileBytes:
			return invalid("bridge.lake.max_file_bytes is %d; it must be between %d and %d", n, minLakeFileBytes, maxLakeFileBytes)
		}
		d, err := bounded("bridge.lake.max_file_age", l.GetMaxFileAge(), defaultLakeFileAge, minLakeFileAge, maxLakeFileAge)
		if err != nil {
			return err
		}
		l.MaxFileAge = d
	default:
		return invalid("bridge needs a system: kafka, amqp, mqtt or lake")
	}
	if n := proto.Size(b); n > 64<<10 {
		return invalid("bridge is %d bytes encoded; at most 64 KiB", n)
	}
	return nil
}

// mqttFilter checks an MQTT topic filter (MQTT 5 section 4.7.1): '+' fills
// a whole level, '#' only the last one; a broker refuses the subscription
// otherwise, and the source would fail at every connection.
func mqttFilter(f string) error {
	levels := strings.Split(f, "/")
	for i, l := range levels {
		switch {
		case strings.ContainsRune(l, 0):
			return fmt.Errorf("it holds a NUL character")
		case l == "#" && i != len(levels)-1:
			return fmt.Errorf("'#' must be the last level")
		case l != "#" && l != "+" && strings.ContainsAny(l, "#+"):
			return fmt.Errorf("a wildcard must fill a whole level (a/+/b, a/#)")
		}
	}
	return nil
}

// checkBridgeSink checks and defaults a sink's settings.
func checkBridgeSink(s *registryv1.BridgeSink) error {
	if s == nil {
		return invalid("bridge.sink is required for a sink: the types it delivers")
	}
	if err := validPatterns("bridge.sink.types", s.GetTypes(), maxBridgeTypes); err != nil {
		return err
	}
	if err := checkFilterOf("bridge.sink.filter", s.GetFilter()); err != nil {
		return err
	}
	if err := checkStartOf("bridge.sink.start", s.GetStart()); err != nil {
		return err
	}
	if len(s.GetRetrySchedule()) > maxRetrySchedule {
		return invalid("bridge.sink.retry_schedule has %d entries, more than the %d allowed", len(s.GetRetrySchedule()), maxRetrySchedule)
	}
	var sched []*durationpb.Duration
	for i, d := range s.GetRetrySchedule() {
		v, err := bounded(fmt.Sprintf("bridge.sink.retry_schedule[%d]", i), d, 0, minRetryDelay, maxRetryDelay)
		if err != nil {
			return err
		}
		sched = append(sched, v)
	}
	if len(sched) == 0 {
		for _, d := range defaultBridgeRetrySchedule {
			sched = append(sched, durationpb.New(d))
		}
	}
	s.RetrySchedule = sched
	if err := validEnum("bridge.sink.content_mode", s.GetContentMode()); err != nil {
		return err
	}
	switch n := s.GetMaxInFlight(); {
	case n == 0:
		s.MaxInFlight = defaultMaxInFlight
	case n < 0 || n > maxMaxInFlight:
		return invalid("bridge.sink.max_in_flight is %d; it must be between 1 and %d", n, maxMaxInFlight)
	}
	return nil
}

// checkBridgeSource checks and defaults a source's settings.
func checkBridgeSource(s *registryv1.BridgeSource) error {
	if s == nil || s.GetEventType() == "" {
		return invalid("bridge.source.event_type is required for a source: the type its records become")
	}
	if err := eventtype.ValidateName(s.GetEventType()); err != nil {
		return invalid("bridge.source.event_type: %v", err)
	}
	switch n := s.GetBatchSize(); {
	case n == 0:
		s.BatchSize = defaultSourceBatch
	case n < 0 || n > maxSourceBatch:
		return invalid("bridge.source.batch_size is %d; it must be between 1 and %d", n, maxSourceBatch)
	}
	return nil
}

// mayBridge checks the application's grants for what the bridge carries.
func mayBridge(app *registryv1.Application, b *registryv1.Bridge, types map[string]*registryv1.EventType) error {
	if b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK {
		return mayReceive(app, b.GetSink().GetTypes(), types)
	}
	t := b.GetSource().GetEventType()
	// A type the application's audience may not see does not exist for it:
	// the router would refuse every record so (NOT_FOUND), as mayReceive
	// answers for a sink.
	et, ok := types[t]
	if !ok || !access.Visible(app.GetAudience(), et.GetVisibility()) {
		return &store.NotFoundError{Kind: "event type", Name: t}
	}
	if et.GetLifecycle() == registryv1.Lifecycle_LIFECYCLE_RETIRED {
		return failedPrecondition("event type %s is retired: a source cannot publish it", t)
	}
	if !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_PUBLISH, t) {
		return denied("application %s has no publish grant covering %s", app.GetId(), t)
	}
	return nil
}

// bridgeTypes are the exact types a bridge names, for the store to find.
func bridgeTypes(b *registryv1.Bridge) []string {
	if b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK {
		return b.GetSink().GetTypes()
	}
	return []string{b.GetSource().GetEventType()}
}

// sealSecret moves b's secret, if given, into sealed_secret.
func (h *Handler) sealSecret(b *registryv1.Bridge) error {
	if b.GetSecret() == "" {
		return nil
	}
	if len(b.GetSecret()) > maxBridgeSecret {
		return invalid("bridge.secret is longer than %d bytes", maxBridgeSecret)
	}
	sealed, err := h.webhooks.Box.Seal([]byte(b.GetSecret()), BridgeSecretContext(b.GetId()))
	if err != nil {
		return fmt.Errorf("seal a bridge secret: %w", err)
	}
	b.SealedSecret, b.Secret = sealed, ""
	return nil
}

var errNoBridgeKey = failedPrecondition("bridges are not available: the operator must set HERALD_SECRET_KEY (base64 of 32 random bytes, e.g. `openssl rand -base64 32`) so that their secrets are stored encrypted")

// CreateBridge implements RegistryService (operator only).
func (h *Handler) CreateBridge(ctx context.Context, req *connect.Request[registryv1.CreateBridgeRequest]) (*connect.Response[registryv1.CreateBridgeResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetBridge()
	if in == nil {
		return nil, invalid("bridge is required")
	}
	if h.webhooks.Box == nil {
		return nil, errNoBridgeKey
	}
	b := &registryv1.Bridge{
		Id: auth.NewID("brg_"), Name: in.GetName(), ApplicationId: in.GetApplicationId(), Direction: in.GetDirection(),
		System: proto.Clone(in).(*registryv1.Bridge).GetSystem(), Disabled: in.GetDisabled(), Description: in.GetDescription(), Secret: in.GetSecret(),
	}
	if !bridgeNameRE.MatchString(b.GetName()) {
		return nil, invalid("bridge.name %q must be 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", b.GetName())
	}
	if b.GetApplicationId() == "" {
		return nil, invalid("bridge.application_id is required: the application the bridge acts for")
	}
	if err := text("bridge.description", b.GetDescription(), maxBridgeDescription); err != nil {
		return nil, err
	}
	switch b.GetDirection() {
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK:
		if in.GetSource() != nil {
			return nil, invalid("bridge.source is set on a sink")
		}
		b.Sink = proto.Clone(in.GetSink()).(*registryv1.BridgeSink)
		if in.GetSink() == nil {
			b.Sink = nil
		}
		if err := checkBridgeSink(b.Sink); err != nil {
			return nil, err
		}
	case registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE:
		if in.GetSink() != nil {
			return nil, invalid("bridge.sink is set on a source")
		}
		if in.GetSource() != nil {
			b.Source = proto.Clone(in.GetSource()).(*registryv1.BridgeSource)
		}
		if err := checkBridgeSource(b.Source); err != nil {
			return nil, err
		}
	default:
		return nil, invalid("bridge.direction is required: BRIDGE_DIRECTION_SINK or BRIDGE_DIRECTION_SOURCE")
	}
	if err := checkBridgeSystem(b); err != nil {
		return nil, err
	}
	if err := h.sealSecret(b); err != nil {
		return nil, err
	}
	var key *registryv1.Key
	var keyHash string
	if b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE {
		key, keyHash = newKey(b.GetApplicationId())
		key.Purpose = registryv1.KeyPurpose_KEY_PURPOSE_BRIDGE
		sealed, err := h.webhooks.Box.Seal([]byte(key.GetSecret()), BridgeKeyContext(b.GetId()))
		if err != nil {
			return nil, fmt.Errorf("seal a bridge key: %w", err)
		}
		b.SealedKey, b.KeyId = sealed, key.GetId()
	}
	out, err := h.store.CreateBridge(ctx, b, key, keyHash, bridgeTypes(b), func(app *registryv1.Application, types map[string]*registryv1.EventType) error {
		if err := mayBridge(app, b, types); err != nil {
			return err
		}
		if b.GetSink() != nil {
			return h.startNotFutureOf(ctx, app, "bridge.sink.start", &registryv1.Subscription{Types: b.GetSink().GetTypes(), Start: b.GetSink().GetStart()})
		}
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreateBridgeResponse{Bridge: bridgeForClient(out)}), nil
}

// ownBridge returns a bridge the caller may see: the operator any, an
// application its own; others are told it does not exist.
func (h *Handler) ownBridge(ctx context.Context, id string) (*registryv1.Bridge, error) {
	if id == "" {
		return nil, invalid("id is required")
	}
	b, err := h.store.GetBridge(ctx, id)
	if err != nil {
		return nil, fail(err)
	}
	if err := owner(ctx, b.GetApplicationId(), &store.NotFoundError{Kind: "bridge", Name: id}); err != nil {
		return nil, err
	}
	return b, nil
}

// GetBridge implements RegistryService.
func (h *Handler) GetBridge(ctx context.Context, req *connect.Request[registryv1.GetBridgeRequest]) (*connect.Response[registryv1.GetBridgeResponse], error) {
	b, err := h.ownBridge(ctx, req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&registryv1.GetBridgeResponse{Bridge: bridgeForClient(b)}), nil
}

// ListBridges implements RegistryService; an application lists its own.
func (h *Handler) ListBridges(ctx context.Context, req *connect.Request[registryv1.ListBridgesRequest]) (*connect.Response[registryv1.ListBridgesResponse], error) {
	appID := req.Msg.GetApplicationId()
	p, _ := auth.FromContext(ctx)
	if appID == "" && !p.Admin {
		appID = p.ApplicationID
	}
	if appID == "" && !p.Admin {
		return nil, connect.NewError(connect.CodeUnauthenticated, auth.ErrUnknownKey)
	}
	if appID != "" {
		if err := self(ctx, appID); err != nil {
			return nil, err
		}
	}
	all, err := h.store.ListBridges(ctx, appID)
	if err != nil {
		return nil, fail(err)
	}
	for i, b := range all {
		all[i] = bridgeForClient(b)
	}
	return connect.NewResponse(&registryv1.ListBridgesResponse{Bridges: all}), nil
}

// UpdateBridge implements RegistryService (operator only).
func (h *Handler) UpdateBridge(ctx context.Context, req *connect.Request[registryv1.UpdateBridgeRequest]) (*connect.Response[registryv1.UpdateBridgeResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetBridge()
	if in.GetId() == "" {
		return nil, invalid("bridge.id is required")
	}
	if len(req.Msg.GetUpdateMask()) == 0 {
		return nil, invalid("update_mask is empty: name the fields to change")
	}
	if h.webhooks.Box == nil {
		return nil, errNoBridgeKey
	}
	out, err := h.store.UpdateBridge(ctx, in.GetId(), func(b *registryv1.Bridge, lookup func([]string) (*registryv1.Application, map[string]*registryv1.EventType, error)) error {
		sink := b.GetDirection() == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK
		for _, path := range req.Msg.GetUpdateMask() {
			switch {
			case path == "description":
				b.Description = in.GetDescription()
			case path == "disabled":
				b.Disabled = in.GetDisabled()
			case path == "secret":
				b.Secret, b.SealedSecret = in.GetSecret(), ""
			case path == "kafka" || path == "amqp" || path == "mqtt" || path == "lake":
				if systemName(in) != path || systemName(b) != path {
					return invalid("update_mask %q: the bridge is %s and the new settings must be too (a bridge does not change system)", path, systemName(b))
				}
				b.System = proto.Clone(in).(*registryv1.Bridge).GetSystem()
			case sink && strings.HasPrefix(path, "sink."):
				s, n := b.GetSink(), in.GetSink()
				switch path {
				case "sink.filter":
					s.Filter = n.GetFilter()
				case "sink.retry_schedule":
					s.RetrySchedule = n.GetRetrySchedule()
				case "sink.max_in_flight":
					s.MaxInFlight = n.GetMaxInFlight()
				case "sink.content_mode":
					s.ContentMode = n.GetContentMode()
				case "sink.json_data":
					s.JsonData = n.GetJsonData()
				default:
					return invalid("update_mask %q: a sink changes filter, retry_schedule, max_in_flight, content_mode or json_data (types and start are fixed: make a new bridge)", path)
				}
			case !sink && path == "source.event_type":
				b.Source.EventType = in.GetSource().GetEventType()
			case !sink && path == "source.batch_size":
				b.Source.BatchSize = in.GetSource().GetBatchSize()
			default:
				return invalid("update_mask %q is not a field UpdateBridge changes", path)
			}
		}
		if err := text("bridge.description", b.GetDescription(), maxBridgeDescription); err != nil {
			return err
		}
		if sink {
			if err := checkBridgeSink(b.Sink); err != nil {
				return err
			}
		} else if err := checkBridgeSource(b.Source); err != nil {
			return err
		}
		if err := checkBridgeSystem(b); err != nil {
			return err
		}
		if err := h.sealSecret(b); err != nil {
			return err
		}
		app, types, err := lookup(bridgeTypes(b))
		if err != nil {
			return err
		}
		return mayBridge(app, b, types)
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.UpdateBridgeResponse{Bridge: bridgeForClient(out)}), nil
}

func systemName(b *registryv1.Bridge) string {
	if s := catalog.BridgeSystem(b); s != "" {
		return s
	}
	return "none"
}

// DeleteBridge implements RegistryService (operator only).
func (h *Handler) DeleteBridge(ctx context.Context, req *connect.Request[registryv1.DeleteBridgeRequest]) (*connect.Response[registryv1.DeleteBridgeResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	if req.Msg.GetId() == "" {
		return nil, invalid("id is required")
	}
	if _, err := h.store.DeleteBridge(ctx, req.Msg.GetId()); err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.DeleteBridgeResponse{}), nil
}
