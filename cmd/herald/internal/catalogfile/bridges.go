package catalogfile

import (
	"cmp"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Bridge connects the mesh to Kafka, AMQP, MQTT or a data lake: exactly one
// of Kafka, Amqp, Mqtt and Lake. Name, application, direction, the system
// and a sink's types are fixed once the bridge exists: to change them,
// rename the bridge (a new one) or delete the old one. A system's fields
// left out are left as the registry has them.
type Bridge struct {
	Name string `yaml:"name"`
	// Application is the application the bridge acts for: its name
	// (when no other application has it) or its id.
	Application string `yaml:"application"`
	// Direction: sink (mesh to system) or source (system to mesh).
	Direction   string  `yaml:"direction"`
	Description *string `yaml:"description,omitempty"`
	Disabled    *bool   `yaml:"disabled,omitempty"`

	Kafka *KafkaBridge `yaml:"kafka,omitempty"`
	Amqp  *AmqpBridge  `yaml:"amqp,omitempty"`
	Mqtt  *MqttBridge  `yaml:"mqtt,omitempty"`
	Lake  *LakeBridge  `yaml:"lake,omitempty"`

	Sink   *BridgeSink   `yaml:"sink,omitempty"`
	Source *BridgeSource `yaml:"source,omitempty"`

	// SecretFromEnv names the environment variable that holds the
	// connection's secret (SASL, AMQP or MQTT password, S3 secret key).
	// The secret itself is never in the file. Apply sets it on create, and
	// when the registry has none; a secret cannot be read back to compare,
	// so rotating one is `herald bridge secret`.
	SecretFromEnv string `yaml:"secretFromEnv,omitempty"`
	// Secret is refused: it is here to say so clearly.
	Secret yaml.Node `yaml:"secret,omitempty"`

	line     int
	schedule []time.Duration
	fileAge  time.Duration
}

// KafkaBridge is a Kafka topic.
type KafkaBridge struct {
	Brokers       []string `yaml:"brokers,omitempty"`
	Topic         string   `yaml:"topic,omitempty"`
	Group         string   `yaml:"group,omitempty"`
	SaslMechanism string   `yaml:"saslMechanism,omitempty"`
	Username      string   `yaml:"username,omitempty"`
	TLS           *bool    `yaml:"tls,omitempty"`
}

// AmqpBridge is an AMQP 0-9-1 exchange (sink) or queue (source).
type AmqpBridge struct {
	URL        string `yaml:"url,omitempty"`
	Exchange   string `yaml:"exchange,omitempty"`
	RoutingKey string `yaml:"routingKey,omitempty"`
	Queue      string `yaml:"queue,omitempty"`
}

// MqttBridge is an MQTT broker's topic (sink) or topic filter (source).
type MqttBridge struct {
	Broker          string `yaml:"broker,omitempty"`
	ProtocolVersion int32  `yaml:"protocolVersion,omitempty"`
	Topic           string `yaml:"topic,omitempty"`
	Qos             int32  `yaml:"qos,omitempty"`
	Username        string `yaml:"username,omitempty"`
	ClientID        string `yaml:"clientId,omitempty"`
}

// LakeBridge is a directory or an S3-compatible bucket of Parquet files.
type LakeBridge struct {
	Directory    string      `yaml:"directory,omitempty"`
	S3           *S3Location `yaml:"s3,omitempty"`
	MaxFileBytes int64       `yaml:"maxFileBytes,omitempty"`
	// MaxFileAge is a duration: 5m, 1h.
	MaxFileAge string `yaml:"maxFileAge,omitempty"`
}

// S3Location is a bucket and prefix of an S3-compatible store.
type S3Location struct {
	Endpoint    string `yaml:"endpoint,omitempty"`
	Region      string `yaml:"region,omitempty"`
	Bucket      string `yaml:"bucket,omitempty"`
	Prefix      string `yaml:"prefix,omitempty"`
	AccessKeyID string `yaml:"accessKeyId,omitempty"`
}

// BridgeSink is what a sink delivers.
type BridgeSink struct {
	// Types are names or patterns (billing.*); fixed once the bridge exists.
	Types  []string `yaml:"types,omitempty"`
	Filter *string  `yaml:"filter,omitempty"`
	// RetrySchedule are durations (1s, 10s, 1m); its length plus one is
	// the number of attempts.
	RetrySchedule []string `yaml:"retrySchedule,omitempty"`
	// ContentMode: binary (default) or structured.
	ContentMode string `yaml:"contentMode,omitempty"`
	JSONData    *bool  `yaml:"jsonData,omitempty"`
	MaxInFlight int32  `yaml:"maxInFlight,omitempty"`
}

// BridgeSource is what a source publishes.
type BridgeSource struct {
	EventType string `yaml:"eventType,omitempty"`
	BatchSize int32  `yaml:"batchSize,omitempty"`
}

var (
	bridgeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	envNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	contentModes = map[string]registryv1.BridgeContentMode{
		"binary":     registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_UNSPECIFIED,
		"structured": registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED,
	}
	directions = map[string]registryv1.BridgeDirection{
		"sink":   registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK,
		"source": registryv1.BridgeDirection_BRIDGE_DIRECTION_SOURCE,
	}
)

// system is the file's system of b: kafka, amqp, mqtt, lake, or "".
func (b *Bridge) system() string {
	var s []string
	if b.Kafka != nil {
		s = append(s, "kafka")
	}
	if b.Amqp != nil {
		s = append(s, "amqp")
	}
	if b.Mqtt != nil {
		s = append(s, "mqtt")
	}
	if b.Lake != nil {
		s = append(s, "lake")
	}
	return strings.Join(s, ",")
}

// validateBridges checks the bridges section.
func (f *File) validateBridges(add func(line int, format string, args ...any)) {
	seen := map[string]int{}
	for i := range f.Bridges {
		b := &f.Bridges[i]
		what := fmt.Sprintf("bridge %q", b.Name)
		switch {
		case b.Name == "":
			add(b.line, "bridges[%d]: name is required", i)
			what = fmt.Sprintf("bridges[%d]", i)
		case !bridgeNameRE.MatchString(b.Name):
			add(b.line, "%s: a bridge name is 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", what)
		}
		if prev, dup := seen[b.Name]; dup && b.Name != "" {
			add(b.line, "%s is listed twice (first at line %d)", what, prev)
		}
		seen[b.Name] = b.line
		if b.Application == "" {
			add(b.line, "%s: application is required (the name or id of the application it acts for)", what)
		}
		dir, ok := directions[b.Direction]
		if !ok {
			add(b.line, "%s: direction %q: want sink or source", what, b.Direction)
		}
		if b.Secret.Kind != 0 {
			add(cmp.Or(b.Secret.Line, b.line), "%s: secrets are never written in a catalog file: give secretFromEnv: VAR, the environment variable that holds it", what)
		}
		if b.SecretFromEnv != "" && !envNameRE.MatchString(b.SecretFromEnv) {
			add(b.line, "%s: secretFromEnv %q is not an environment variable name", what, b.SecretFromEnv)
		}
		switch sys := b.system(); {
		case sys == "":
			add(b.line, "%s: give its system: one of kafka, amqp, mqtt or lake", what)
		case strings.Contains(sys, ","):
			add(b.line, "%s: give one system, not %s", what, strings.ReplaceAll(sys, ",", " and "))
		}
		sink := dir == registryv1.BridgeDirection_BRIDGE_DIRECTION_SINK
		if k := b.Kafka; k != nil {
			if len(k.Brokers) == 0 || k.Topic == "" {
				add(b.line, "%s: kafka needs brokers (host:port) and a topic", what)
			}
			for _, br := range k.Brokers {
				if i := strings.LastIndexByte(br, ':'); i <= 0 || i == len(br)-1 {
					add(b.line, "%s: kafka broker %q is not host:port", what, br)
				}
			}
			switch k.SaslMechanism {
			case "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
			default:
				add(b.line, "%s: kafka saslMechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", what, k.SaslMechanism)
			}
		}
		if a := b.Amqp; a != nil {
			u, err := url.Parse(a.URL)
			switch {
			case err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "":
				add(b.line, "%s: amqp url must be an amqp:// or amqps:// URL with a host", what)
			default:
				if _, set := u.User.Password(); set {
					add(b.line, "%s: amqp url carries a password: take it out and give secretFromEnv: VAR", what)
				}
			}
			if ok && !sink && a.Queue == "" {
				add(b.line, "%s: an amqp source needs a queue", what)
			}
			if ok && sink && a.Queue != "" {
				add(b.line, "%s: queue is a source's setting; an amqp sink publishes to an exchange", what)
			}
		}
		if m := b.Mqtt; m != nil {
			if m.Broker == "" {
				add(b.line, "%s: mqtt needs a broker (tcp://host:port or ssl://host:port)", what)
			}
			if v := m.ProtocolVersion; v != 0 && v != 4 && v != 5 {
				add(b.line, "%s: mqtt protocolVersion %d: want 4 (MQTT 3.1.1) or 5", what, v)
			}
			if q := m.Qos; q != 0 && q != 1 && q != 2 {
				add(b.line, "%s: mqtt qos %d: want 1 or 2", what, q)
			}
			if ok && !sink && m.Topic == "" {
				add(b.line, "%s: an mqtt source needs a topic (a topic filter)", what)
			}
		}
		if l := b.Lake; l != nil {
			if ok && !sink {
				add(b.line, "%s: a lake bridge is a sink only", what)
			}
			if (l.Directory == "") == (l.S3 == nil) {
				add(b.line, "%s: lake needs a directory or s3, exactly one", what)
			}
			if l.MaxFileAge != "" {
				d, err := parseDuration(l.MaxFileAge)
				if err != nil || d <= 0 {
					add(b.line, "%s: lake maxFileAge %q: want a positive duration (5m, 1h)", what, l.MaxFileAge)
				}
				b.fileAge = d
			}
		}
		switch {
		case !ok:
		case sink && b.Source != nil:
			add(b.line, "%s: a sink has sink settings, not source", what)
		case !sink && b.Sink != nil:
			add(b.line, "%s: a source has source settings, not sink", what)
		case sink && (b.Sink == nil || len(b.Sink.Types) == 0):
			add(b.line, "%s: a sink needs sink.types (the event types or patterns it delivers)", what)
		case !sink && (b.Source == nil || b.Source.EventType == ""):
			add(b.line, "%s: a source needs source.eventType (the type its records become)", what)
		}
		if s := b.Sink; s != nil {
			for _, p := range s.Types {
				if err := eventtype.ValidatePattern(p); err != nil {
					add(b.line, "%s: sink.types: %v", what, err)
				}
			}
			if _, known := contentModes[s.ContentMode]; s.ContentMode != "" && !known {
				add(b.line, "%s: sink.contentMode %q: want binary or structured", what, s.ContentMode)
			}
			if n := s.MaxInFlight; n < 0 || n > 10000 {
				add(b.line, "%s: sink.maxInFlight %d: want 1 to 10000", what, n)
			}
			b.schedule = nil
			for _, d := range s.RetrySchedule {
				v, err := parseDuration(d)
				if err != nil || v <= 0 {
					add(b.line, "%s: sink.retrySchedule %q: want positive durations (1s, 10s, 1m)", what, d)
				}
				b.schedule = append(b.schedule, v)
			}
		}
		if s := b.Source; s != nil {
			if s.EventType != "" {
				if err := eventtype.ValidateName(s.EventType); err != nil {
					add(b.line, "%s: source.eventType: %v", what, err)
				}
			}
			if n := s.BatchSize; n < 0 || n > 500 {
				add(b.line, "%s: source.batchSize %d: want 1 to 500", what, n)
			}
		}
	}
}

// Plan kinds of bridges come after every other resource: a bridge names
// event types and an application.
const (
	CreateBridge Kind = iota + 100
	UpdateBridge
)

// appID resolves a file's application (a name or an id) against the
// registry's applications; ok is false with the reason when it cannot.
func (s *State) appID(ref string) (string, string) {
	var byName []string
	for _, a := range s.Applications {
		if a.GetId() == ref {
			return ref, ""
		}
		if a.GetName() == ref {
			byName = append(byName, a.GetId())
		}
	}
	switch len(byName) {
	case 1:
		return byName[0], ""
	case 0:
		return "", fmt.Sprintf("application %q is not in the registry (give an application's name or id)", ref)
	}
	return "", fmt.Sprintf("%d applications are named %q: give the id (%s)", len(byName), ref, strings.Join(byName, ", "))
}

// appRef is how the file names an application: its name when no other
// application has it, else its id.
func (s *State) appRef(id string) string {
	var name string
	n := 0
	for _, a := range s.Applications {
		if a.GetId() == id {
			name = a.GetName()
		}
	}
	for _, a := range s.Applications {
		if name != "" && a.GetName() == name {
			n++
		}
	}
	if n == 1 {
		return name
	}
	return id
}

func (s *State) bridge(name string) *registryv1.Bridge {
	for _, b := range s.Bridges {
		if b.GetName() == name {
			return b
		}
	}
	return nil
}

func systemOf(b *registryv1.Bridge) string { return catalog.BridgeSystem(b) }

func directionName(d registryv1.BridgeDirection) string {
	for k, v := range directions {
		if v == d {
			return k
		}
	}
	return "unspecified"
}

func contentModeName(m registryv1.BridgeContentMode) string {
	if m == registryv1.BridgeContentMode_BRIDGE_CONTENT_MODE_STRUCTURED {
		return "structured"
	}
	return "binary"
}

// overlay writes the system settings the file gives over cur's (nil:
// none) into into.System, and returns what changed.
func (b *Bridge) overlay(cur, into *registryv1.Bridge) []FieldChange {
	var fields []FieldChange
	str := func(field string, dst *string, v string) {
		if v != "" && v != *dst {
			fields = append(fields, FieldChange{field, quoteIf(cur != nil, *dst), strconv.Quote(v)})
			*dst = v
		}
	}
	num := func(field string, dst *int32, v int32) {
		if v != 0 && v != *dst {
			fields = append(fields, FieldChange{field, numIf(cur != nil, int64(*dst)), strconv.Itoa(int(v))})
			*dst = v
		}
	}
	switch {
	case b.Kafka != nil:
		k := proto.Clone(cur.GetKafka()).(*registryv1.KafkaBridge)
		if k == nil || cur.GetKafka() == nil {
			k = &registryv1.KafkaBridge{}
		}
		if len(b.Kafka.Brokers) > 0 && !slices.Equal(b.Kafka.Brokers, k.Brokers) {
			fields = append(fields, FieldChange{"kafka.brokers", listIf(cur != nil, k.Brokers), list(b.Kafka.Brokers)})
			k.Brokers = b.Kafka.Brokers
		}
		str("kafka.topic", &k.Topic, b.Kafka.Topic)
		str("kafka.group", &k.Group, b.Kafka.Group)
		str("kafka.saslMechanism", &k.SaslMechanism, b.Kafka.SaslMechanism)
		str("kafka.username", &k.Username, b.Kafka.Username)
		if t := b.Kafka.TLS; t != nil && *t != k.Tls {
			fields = append(fields, FieldChange{"kafka.tls", boolIf(cur != nil, k.Tls), strconv.FormatBool(*t)})
			k.Tls = *t
		}
		into.System = &registryv1.Bridge_Kafka{Kafka: k}
		return fields
	case b.Amqp != nil:
		a := proto.Clone(cur.GetAmqp()).(*registryv1.AmqpBridge)
		if a == nil || cur.GetAmqp() == nil {
			a = &registryv1.AmqpBridge{}
		}
		str("amqp.url", &a.Url, b.Amqp.URL)
		str("amqp.exchange", &a.Exchange, b.Amqp.Exchange)
		str("amqp.routingKey", &a.RoutingKey, b.Amqp.RoutingKey)
		str("amqp.queue", &a.Queue, b.Amqp.Queue)
		into.System = &registryv1.Bridge_Amqp{Amqp: a}
		return fields
	case b.Mqtt != nil:
		m := proto.Clone(cur.GetMqtt()).(*registryv1.MqttBridge)
		if m == nil || cur.GetMqtt() == nil {
			m = &registryv1.MqttBridge{}
		}
		str("mqtt.broker", &m.Broker, b.Mqtt.Broker)
		num("mqtt.protocolVersion", &m.ProtocolVersion, b.Mqtt.ProtocolVersion)
		str("mqtt.topic", &m.Topic, b.Mqtt.Topic)
		num("mqtt.qos", &m.Qos, b.Mqtt.Qos)
		str("mqtt.username", &m.Username, b.Mqtt.Username)
		str("mqtt.clientId", &m.ClientId, b.Mqtt.ClientID)
		into.System = &registryv1.Bridge_Mqtt{Mqtt: m}
		return fields
	case b.Lake != nil:
		l := proto.Clone(cur.GetLake()).(*registryv1.LakeBridge)
		if l == nil || cur.GetLake() == nil {
			l = &registryv1.LakeBridge{}
		}
		if b.Lake.Directory != "" && l.GetS3() != nil {
			fields = append(fields, FieldChange{"lake.s3", "(set)", "(none)"})
			l.S3 = nil
		}
		str("lake.directory", &l.Directory, b.Lake.Directory)
		if s := b.Lake.S3; s != nil {
			if l.Directory != "" {
				fields = append(fields, FieldChange{"lake.directory", strconv.Quote(l.Directory), "(none)"})
				l.Directory = ""
			}
			s3 := proto.Clone(l.GetS3()).(*registryv1.S3Location)
			if s3 == nil || l.GetS3() == nil {
				s3 = &registryv1.S3Location{}
			}
			str("lake.s3.endpoint", &s3.Endpoint, s.Endpoint)
			str("lake.s3.region", &s3.Region, s.Region)
			str("lake.s3.bucket", &s3.Bucket, s.Bucket)
			str("lake.s3.prefix", &s3.Prefix, s.Prefix)
			str("lake.s3.accessKeyId", &s3.AccessKeyId, s.AccessKeyID)
			l.S3 = s3
		}
		if n := b.Lake.MaxFileBytes; n != 0 && n != l.MaxFileBytes {
			fields = append(fields, FieldChange{"lake.maxFileBytes", numIf(cur != nil, l.MaxFileBytes), strconv.FormatInt(n, 10)})
			l.MaxFileBytes = n
		}
		if d := b.fileAge; d > 0 && d != l.GetMaxFileAge().AsDuration() {
			was := ""
			if cur != nil {
				was = cmpOr(durationText(l.GetMaxFileAge()), "(default)")
			}
			fields = append(fields, FieldChange{"lake.maxFileAge", was, formatDuration(d)})
			l.MaxFileAge = durationpb.New(d)
		}
		into.System = &registryv1.Bridge_Lake{Lake: l}
		return fields
	}
	return nil
}

func quoteIf(update bool, s string) string {
	if !update {
		return ""
	}
	return cmpOr(quoteEmpty(s), "(none)")
}

func quoteEmpty(s string) string {
	if s == "" {
		return ""
	}
	return strconv.Quote(s)
}

func numIf(update bool, n int64) string {
	if !update {
		return ""
	}
	if n == 0 {
		return "(default)"
	}
	return strconv.FormatInt(n, 10)
}

func boolIf(update bool, v bool) string {
	if !update {
		return ""
	}
	return strconv.FormatBool(v)
}

func listIf(update bool, items []string) string {
	if !update {
		return ""
	}
	return list(items)
}

func durationText(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return formatDuration(d.AsDuration())
}

func scheduleText(ds []*durationpb.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = formatDuration(d.AsDuration())
	}
	return list(s)
}

// bridgeSecret reads the secret a file names; problem says why not.
func bridgeSecret(d *Bridge) (secret, problem string) {
	v, ok := os.LookupEnv(d.SecretFromEnv)
	if !ok || v == "" {
		return "", fmt.Sprintf("bridge %s: secretFromEnv %s: the environment variable is not set (or empty); set it to the bridge's secret", d.Name, d.SecretFromEnv)
	}
	return v, ""
}

// bridge plans one bridge of the file.
func (p *Plan) bridge(st *State, d *Bridge) {
	problems := 0
	problem := func(format string, args ...any) {
		problems++
		p.Problems = append(p.Problems, fmt.Sprintf("bridge %s: ", d.Name)+fmt.Sprintf(format, args...))
	}
	if st.noBridges {
		problem("this registry does not implement bridges (is it older than this herald?)")
		return
	}
	appID, why := st.appID(d.Application)
	cur := st.bridge(d.Name)
	if cur == nil {
		if why != "" {
			problem("%s", why)
			return
		}
		b := &registryv1.Bridge{Name: d.Name, ApplicationId: appID, Direction: directions[d.Direction], Description: deref(d.Description)}
		if d.Disabled != nil {
			b.Disabled = *d.Disabled
		}
		c := &Change{Kind: CreateBridge, Name: d.Name, Bridge: b}
		c.Fields = append(c.Fields, FieldChange{Field: "application", To: d.Application}, FieldChange{Field: "direction", To: d.Direction})
		c.Fields = appendSet(c.Fields, "description", d.Description)
		if b.Disabled {
			c.Fields = append(c.Fields, FieldChange{Field: "disabled", To: "true"})
		}
		c.Fields = append(c.Fields, d.overlay(nil, b)...)
		if s := d.Sink; s != nil {
			b.Sink = &registryv1.BridgeSink{Types: s.Types, Filter: deref(s.Filter), ContentMode: contentModes[s.ContentMode], MaxInFlight: s.MaxInFlight}
			for _, v := range d.schedule {
				b.Sink.RetrySchedule = append(b.Sink.RetrySchedule, durationpb.New(v))
			}
			if s.JSONData != nil {
				b.Sink.JsonData = *s.JSONData
			}
			c.Fields = append(c.Fields, FieldChange{Field: "sink.types", To: list(s.Types)})
			c.Fields = appendSet(c.Fields, "sink.filter", s.Filter)
			if len(s.RetrySchedule) > 0 {
				c.Fields = append(c.Fields, FieldChange{Field: "sink.retrySchedule", To: scheduleText(b.Sink.RetrySchedule)})
			}
			if s.ContentMode != "" {
				c.Fields = append(c.Fields, FieldChange{Field: "sink.contentMode", To: s.ContentMode})
			}
			if b.Sink.JsonData {
				c.Fields = append(c.Fields, FieldChange{Field: "sink.jsonData", To: "true"})
			}
			if s.MaxInFlight > 0 {
				c.Fields = append(c.Fields, FieldChange{Field: "sink.maxInFlight", To: strconv.Itoa(int(s.MaxInFlight))})
			}
		}
		if s := d.Source; s != nil {
			b.Source = &registryv1.BridgeSource{EventType: s.EventType, BatchSize: s.BatchSize}
			c.Fields = append(c.Fields, FieldChange{Field: "source.eventType", To: s.EventType})
			if s.BatchSize > 0 {
				c.Fields = append(c.Fields, FieldChange{Field: "source.batchSize", To: strconv.Itoa(int(s.BatchSize))})
			}
		}
		if d.SecretFromEnv != "" {
			secret, why := bridgeSecret(d)
			if why != "" {
				p.Problems = append(p.Problems, why)
				return
			}
			b.Secret = secret
			c.Fields = append(c.Fields, FieldChange{Field: "secret", To: "from $" + d.SecretFromEnv})
		}
		p.Changes = append(p.Changes, c)
		return
	}

	// What a bridge cannot change.
	const fixed = "; a bridge keeps it once made: rename the bridge in the file (a new bridge), or delete the old one first (herald bridge delete %s)"
	if sys := d.system(); sys != systemOf(cur) {
		problem("it is %s in the registry and %s in the file"+fixed, systemOf(cur), sys, d.Name)
	}
	if dir := directions[d.Direction]; dir != cur.GetDirection() {
		problem("it is a %s in the registry and a %s in the file"+fixed, directionName(cur.GetDirection()), d.Direction, d.Name)
	}
	switch {
	case why != "":
		problem("%s", why)
	case appID != cur.GetApplicationId():
		problem("it acts for application %s in the registry and %s in the file"+fixed, st.appRef(cur.GetApplicationId()), d.Application, d.Name)
	}
	if s := d.Sink; s != nil && cur.GetSink() != nil && !sameSet(s.Types, cur.GetSink().GetTypes()) {
		problem("sink.types are %s in the registry and %s in the file"+fixed, list(cur.GetSink().GetTypes()), list(s.Types), d.Name)
	}
	if problems > 0 {
		return
	}

	next := proto.Clone(cur).(*registryv1.Bridge)
	next.CreateTime, next.SealedKey, next.SealedSecret = nil, "", ""
	var fields []FieldChange
	var mask []string
	if d.Description != nil && *d.Description != cur.GetDescription() {
		fields = append(fields, FieldChange{"description", quote(cur.GetDescription()), quote(*d.Description)})
		next.Description = *d.Description
		mask = append(mask, "description")
	}
	if d.Disabled != nil && *d.Disabled != cur.GetDisabled() {
		fields = append(fields, FieldChange{"disabled", strconv.FormatBool(cur.GetDisabled()), strconv.FormatBool(*d.Disabled)})
		next.Disabled = *d.Disabled
		mask = append(mask, "disabled")
	}
	if sysFields := d.overlay(cur, next); len(sysFields) > 0 {
		fields = append(fields, sysFields...)
		mask = append(mask, systemOf(cur))
	}
	if s := d.Sink; s != nil {
		ns := next.GetSink()
		if s.Filter != nil && *s.Filter != ns.GetFilter() {
			fields = append(fields, FieldChange{"sink.filter", cmpOr(quoteEmpty(ns.GetFilter()), "(none)"), cmpOr(quoteEmpty(*s.Filter), "(none)")})
			ns.Filter = *s.Filter
			mask = append(mask, "sink.filter")
		}
		if s.RetrySchedule != nil && !slices.EqualFunc(d.schedule, ns.GetRetrySchedule(), func(a time.Duration, b *durationpb.Duration) bool { return a == b.AsDuration() }) {
			var sched []*durationpb.Duration
			for _, v := range d.schedule {
				sched = append(sched, durationpb.New(v))
			}
			fields = append(fields, FieldChange{"sink.retrySchedule", scheduleText(ns.GetRetrySchedule()), scheduleText(sched)})
			ns.RetrySchedule = sched
			mask = append(mask, "sink.retry_schedule")
		}
		if s.ContentMode != "" && contentModes[s.ContentMode] != ns.GetContentMode() {
			fields = append(fields, FieldChange{"sink.contentMode", contentModeName(ns.GetContentMode()), s.ContentMode})
			ns.ContentMode = contentModes[s.ContentMode]
			mask = append(mask, "sink.content_mode")
		}
		if s.JSONData != nil && *s.JSONData != ns.GetJsonData() {
			fields = append(fields, FieldChange{"sink.jsonData", strconv.FormatBool(ns.GetJsonData()), strconv.FormatBool(*s.JSONData)})
			ns.JsonData = *s.JSONData
			mask = append(mask, "sink.json_data")
		}
		if s.MaxInFlight > 0 && s.MaxInFlight != ns.GetMaxInFlight() {
			fields = append(fields, FieldChange{"sink.maxInFlight", strconv.Itoa(int(ns.GetMaxInFlight())), strconv.Itoa(int(s.MaxInFlight))})
			ns.MaxInFlight = s.MaxInFlight
			mask = append(mask, "sink.max_in_flight")
		}
	}
	if s := d.Source; s != nil && next.GetSource() != nil {
		ns := next.GetSource()
		if s.EventType != "" && s.EventType != ns.GetEventType() {
			fields = append(fields, FieldChange{"source.eventType", ns.GetEventType(), s.EventType})
			ns.EventType = s.EventType
			mask = append(mask, "source.event_type")
		}
		if s.BatchSize > 0 && s.BatchSize != ns.GetBatchSize() {
			fields = append(fields, FieldChange{"source.batchSize", strconv.Itoa(int(ns.GetBatchSize())), strconv.Itoa(int(s.BatchSize))})
			ns.BatchSize = s.BatchSize
			mask = append(mask, "source.batch_size")
		}
	}
	if d.SecretFromEnv != "" {
		if !cur.GetSecretSet() {
			secret, why := bridgeSecret(d)
			if why != "" {
				p.Problems = append(p.Problems, why)
				return
			}
			next.Secret = secret
			fields = append(fields, FieldChange{"secret", "(none)", "from $" + d.SecretFromEnv})
			mask = append(mask, "secret")
		} else {
			p.Notes = append(p.Notes, fmt.Sprintf("bridge %s: its secret is kept (a secret cannot be read back to compare); rotate it with: herald bridge secret %s --from-env %s", d.Name, d.Name, d.SecretFromEnv))
		}
	}
	if len(fields) > 0 {
		p.Changes = append(p.Changes, &Change{Kind: UpdateBridge, Name: d.Name, Fields: fields, Bridge: next, UpdateMask: mask})
	}
}

func sameSet(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// exportBridges writes the registry's bridges as the file does. Secrets
// are never written: a bridge that has one names the environment variable
// apply will read it from (HERALD_BRIDGE_SECRET_<NAME>).
func exportBridges(st *State) []Bridge {
	var out []Bridge
	for _, b := range st.Bridges {
		x := Bridge{
			Name: b.GetName(), Application: st.appRef(b.GetApplicationId()), Direction: directionName(b.GetDirection()),
			Description: ptr(b.GetDescription()),
		}
		if b.GetDisabled() {
			x.Disabled = boolPtr(true)
		}
		if b.GetSecretSet() {
			x.SecretFromEnv = SecretEnvName(b.GetName())
		}
		switch sys := b.GetSystem().(type) {
		case *registryv1.Bridge_Kafka:
			k := sys.Kafka
			x.Kafka = &KafkaBridge{Brokers: k.GetBrokers(), Topic: k.GetTopic(), Group: k.GetGroup(), SaslMechanism: k.GetSaslMechanism(), Username: k.GetUsername()}
			if k.GetTls() {
				x.Kafka.TLS = boolPtr(true)
			}
		case *registryv1.Bridge_Amqp:
			a := sys.Amqp
			x.Amqp = &AmqpBridge{URL: a.GetUrl(), Exchange: a.GetExchange(), RoutingKey: a.GetRoutingKey(), Queue: a.GetQueue()}
		case *registryv1.Bridge_Mqtt:
			m := sys.Mqtt
			x.Mqtt = &MqttBridge{Broker: m.GetBroker(), ProtocolVersion: m.GetProtocolVersion(), Topic: m.GetTopic(), Qos: m.GetQos(), Username: m.GetUsername(), ClientID: m.GetClientId()}
		case *registryv1.Bridge_Lake:
			l := sys.Lake
			x.Lake = &LakeBridge{Directory: l.GetDirectory(), MaxFileBytes: l.GetMaxFileBytes(), MaxFileAge: durationText(l.GetMaxFileAge())}
			if s := l.GetS3(); s != nil {
				x.Lake.S3 = &S3Location{Endpoint: s.GetEndpoint(), Region: s.GetRegion(), Bucket: s.GetBucket(), Prefix: s.GetPrefix(), AccessKeyID: s.GetAccessKeyId()}
			}
		}
		if s := b.GetSink(); s != nil {
			x.Sink = &BridgeSink{Types: s.GetTypes(), Filter: ptr(s.GetFilter()), ContentMode: contentModeName(s.GetContentMode()), MaxInFlight: s.GetMaxInFlight()}
			for _, d := range s.GetRetrySchedule() {
				x.Sink.RetrySchedule = append(x.Sink.RetrySchedule, formatDuration(d.AsDuration()))
			}
			if s.GetJsonData() {
				x.Sink.JSONData = boolPtr(true)
			}
		}
		if s := b.GetSource(); s != nil {
			x.Source = &BridgeSource{EventType: s.GetEventType(), BatchSize: s.GetBatchSize()}
		}
		out = append(out, x)
	}
	slices.SortFunc(out, func(a, b Bridge) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// SecretEnvName is the environment variable an export names for a bridge's
// secret: HERALD_BRIDGE_SECRET_ and the name in upper case, '-' as '_'.
func SecretEnvName(bridge string) string {
	return "HERALD_BRIDGE_SECRET_" + strings.ToUpper(strings.ReplaceAll(bridge, "-", "_"))
}

func boolPtr(v bool) *bool { return &v }
