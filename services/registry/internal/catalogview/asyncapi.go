package catalogview

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/schema"
)

// AsyncAPIVersion is the AsyncAPI specification version of the documents.
const AsyncAPIVersion = "3.0.0"

// SchemaFormat labels the embedded payload schemas. The registry's schemas
// are JSON Schema draft 2020-12; AsyncAPI parsers know JSON Schema only up
// to draft-07, whose keywords 2020-12 extends, so the schemas are declared
// as JSON Schema and keep their own "$schema" where they state one.
const SchemaFormat = "application/schema+json;version=draft-07"

// The schemaFormats of Protobuf types (the .proto source of the message's
// file) and Avro types (the Avro schema).
const (
	ProtobufSchemaFormat = "application/vnd.google.protobuf;version=3"
	AvroSchemaFormat     = "application/vnd.apache.avro+json;version=1.9.0"
)

// StreamPath is the edge's Server-Sent Events route.
const StreamPath = "/v1/stream"

// Document is an AsyncAPI 3.0 document. Marshal it with encoding/json, or
// use JSON and YAML.
type Document struct {
	AsyncAPI           string                `json:"asyncapi"`
	Info               Info                  `json:"info"`
	Servers            map[string]*Server    `json:"servers,omitempty"`
	DefaultContentType string                `json:"defaultContentType,omitempty"`
	Channels           map[string]*Channel   `json:"channels"`
	Operations         map[string]*Operation `json:"operations"`
	Components         Components            `json:"components"`
}

// Info is the document's info object.
type Info struct {
	Title       string `json:"title"`
	Version     string `json:"version"`
	Description string `json:"description,omitempty"`
	Tags        []Tag  `json:"tags,omitempty"`
	// Revision is the catalog revision the document shows.
	Revision int64 `json:"x-herald-revision"`
	// Filter tells what the document was narrowed to, if anything.
	Filter string `json:"x-herald-filter,omitempty"`
}

// Tag is a tag object.
type Tag struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// Ref is a reference object.
type Ref struct {
	Ref string `json:"$ref"`
}

// Server is a server object.
type Server struct {
	Host        string `json:"host"`
	Protocol    string `json:"protocol"`
	Pathname    string `json:"pathname,omitempty"`
	Title       string `json:"title,omitempty"`
	Summary     string `json:"summary,omitempty"`
	Description string `json:"description,omitempty"`
	// ProtocolVersion, Bindings and Bridge are set on a bridge's server.
	ProtocolVersion string `json:"protocolVersion,omitempty"`
	Security        []Ref  `json:"security,omitempty"`
	Bindings        any    `json:"bindings,omitempty"`
	Bridge          string `json:"x-herald-bridge,omitempty"`
}

// Channel is a channel object: one per event type.
type Channel struct {
	Address     string         `json:"address"`
	Title       string         `json:"title,omitempty"`
	Summary     string         `json:"summary,omitempty"`
	Description string         `json:"description,omitempty"`
	Messages    map[string]Ref `json:"messages"`
	// Servers are where the channel is: a bridge's channel is on its
	// server, the event types' channels on the edge.
	Servers    []Ref                 `json:"servers,omitempty"`
	Parameters map[string]*Parameter `json:"parameters,omitempty"`
	Tags       []Tag                 `json:"tags,omitempty"`
	Bindings   any                   `json:"bindings,omitempty"`
	Bridge     string                `json:"x-herald-bridge,omitempty"`
}

// Parameter is a parameter object: a part of a channel address that
// varies, such as a bridge's {type}.
type Parameter struct {
	Description string   `json:"description,omitempty"`
	Enum        []string `json:"enum,omitempty"`
}

// Operation is an operation object: receive (consumers) or send
// (producers) of one event type.
type Operation struct {
	Action      string `json:"action"`
	Channel     Ref    `json:"channel"`
	Title       string `json:"title,omitempty"`
	Summary     string `json:"summary,omitempty"`
	Description string `json:"description,omitempty"`
	Messages    []Ref  `json:"messages"`
	Tags        []Tag  `json:"tags,omitempty"`
	Bindings    any    `json:"bindings,omitempty"`
	Bridge      string `json:"x-herald-bridge,omitempty"`
}

// Message is a message object: the event type's data, with the CloudEvents
// context attributes described as headers.
type Message struct {
	Name          string           `json:"name"`
	Title         string           `json:"title,omitempty"`
	Summary       string           `json:"summary,omitempty"`
	Description   string           `json:"description,omitempty"`
	ContentType   string           `json:"contentType"`
	Headers       any              `json:"headers,omitempty"`
	Payload       any              `json:"payload,omitempty"`
	Tags          []Tag            `json:"tags,omitempty"`
	Examples      []MessageExample `json:"examples,omitempty"`
	SchemaVersion int32            `json:"x-herald-schema-version,omitempty"`
	Lifecycle     string           `json:"x-herald-lifecycle"`
	SunsetTime    string           `json:"x-herald-sunset-time,omitempty"`
}

// MessageExample is a message example object.
type MessageExample struct {
	Name    string `json:"name,omitempty"`
	Summary string `json:"summary,omitempty"`
	Headers any    `json:"headers,omitempty"`
	Payload any    `json:"payload,omitempty"`
}

// MultiFormatSchema is a multi format schema object.
type MultiFormatSchema struct {
	SchemaFormat string `json:"schemaFormat"`
	Schema       any    `json:"schema"`
}

// SecurityScheme is a security scheme object.
type SecurityScheme struct {
	Type        string `json:"type"`
	Description string `json:"description,omitempty"`
	Scheme      string `json:"scheme,omitempty"`
	Name        string `json:"name,omitempty"`
	In          string `json:"in,omitempty"`
	Bridge      string `json:"x-herald-bridge,omitempty"`
}

// Components holds the reusable parts: one payload schema and one message
// per event type (keyed by the type name), the CloudEvents attributes and
// the security schemes.
type Components struct {
	Schemas         map[string]any             `json:"schemas,omitempty"`
	Messages        map[string]*Message        `json:"messages,omitempty"`
	SecuritySchemes map[string]*SecurityScheme `json:"securitySchemes,omitempty"`
}

// Component keys of the shared parts.
const (
	cloudEventSchemaKey = "CloudEventContext"
	bearerSchemeKey     = "bearerKey"
	queryTokenSchemeKey = "accessTokenQuery"
	edgeServerKey       = "edge"
)

// componentKey is what AsyncAPI allows as a component name.
var componentKey = regexp.MustCompile(`^[a-zA-Z0-9\.\-_]+$`)

// AsyncAPI builds the AsyncAPI 3.0 document of what f selects of c.
// serverURL is the edge's base URL (http://host:port); empty leaves the
// edge out of the servers. Each bridge of c (c.Bridges: the caller's to
// see) adds its system as a server, with a channel and an operation. Unknown domain, product or application names
// return a *NotFoundError.
func AsyncAPI(c *Catalog, f Filter, serverURL string) (*Document, error) {
	s, err := selectTypes(c, f)
	if err != nil {
		return nil, err
	}
	var revision int64
	if c != nil {
		revision = c.Revision
	}
	doc := &Document{
		AsyncAPI: AsyncAPIVersion,
		Info: Info{
			Title:    "Herald event catalog",
			Version:  strconv.FormatInt(revision, 10),
			Revision: revision,
		},
		DefaultContentType: "application/json",
		Channels:           map[string]*Channel{},
		Operations:         map[string]*Operation{},
		Components: Components{
			Schemas:  map[string]any{cloudEventSchemaKey: cloudEventContextSchema()},
			Messages: map[string]*Message{},
		},
	}
	if !f.IsZero() {
		doc.Info.Filter = f.String()
	}
	doc.Info.Description = infoDescription(revision, f)
	for _, dv := range s.domains {
		doc.Info.Tags = append(doc.Info.Tags, domainTag(dv))
	}

	if serverURL != "" {
		srv, err := edgeServer(serverURL)
		if err != nil {
			return nil, err
		}
		doc.Servers = map[string]*Server{edgeServerKey: srv}
		doc.Components.SecuritySchemes = map[string]*SecurityScheme{
			bearerSchemeKey: {Type: "http", Scheme: "bearer",
				Description: "An application key (or the operator's key), sent as `Authorization: Bearer <key>`."},
			queryTokenSchemeKey: {Type: "httpApiKey", Name: "access_token", In: "query",
				Description: "The same key as the `access_token` query parameter, for browsers' EventSource, which cannot set headers."},
		}
	}

	domains := map[string]*domainView{}
	for _, dv := range s.domains {
		domains[dv.d.GetName()] = dv
	}
	for _, tv := range s.types {
		name := tv.et.GetName()
		if !componentKey.MatchString(name) {
			// Registered names are always valid keys; skip anything else
			// rather than emit an invalid document.
			continue
		}
		tags := typeTags(tv, domains[eventtype.DomainOf(name)])
		desc := typeDescription(tv)
		msg := &Message{
			Name:          name,
			Title:         name,
			Summary:       firstSentence(tv.et.GetDescription()),
			Description:   desc,
			ContentType:   "application/json",
			Headers:       cloudEventHeaders(name),
			Tags:          tags,
			SchemaVersion: tv.version,
			Lifecycle:     lifecycleName(tv.et.GetLifecycle()),
		}
		if ts := tv.et.GetSunsetTime(); ts != nil && tv.et.GetLifecycle() != registryv1.Lifecycle_LIFECYCLE_ACTIVE {
			msg.SunsetTime = ts.AsTime().UTC().Format(time.RFC3339)
		}
		switch schema.Normalize(tv.et.GetSchemaFormat()) {
		case registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA:
			if tv.schema != "" {
				schema, err := embedSchema(tv.schema, name, "/components/schemas/"+pointerToken(name)+"/schema")
				if err == nil {
					doc.Components.Schemas[name] = MultiFormatSchema{SchemaFormat: SchemaFormat, Schema: schema}
					msg.Payload = Ref{Ref: "#/components/schemas/" + pointerToken(name)}
				}
			}
		case registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO:
			msg.ContentType = "application/avro"
			if s, err := decodeOrdered(tv.et.GetSchema()); err == nil {
				doc.Components.Schemas[name] = MultiFormatSchema{SchemaFormat: AvroSchemaFormat, Schema: s}
				msg.Payload = Ref{Ref: "#/components/schemas/" + pointerToken(name)}
			}
		case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
			msg.ContentType = "application/protobuf"
			if src, ok := protoSource(tv.et.GetProtobufSchema()); ok {
				doc.Components.Schemas[name] = MultiFormatSchema{SchemaFormat: ProtobufSchemaFormat, Schema: src}
				msg.Payload = Ref{Ref: "#/components/schemas/" + pointerToken(name)}
			}
		case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
			msg.ContentType = tv.et.GetContentType()
		}
		msg.Examples = messageExamples(tv)
		doc.Components.Messages[name] = msg

		doc.Channels[name] = &Channel{
			Address:     name,
			Title:       name,
			Summary:     firstSentence(tv.et.GetDescription()),
			Description: desc,
			Messages:    map[string]Ref{name: {Ref: "#/components/messages/" + pointerToken(name)}},
			Tags:        tags,
		}
		channelRef := Ref{Ref: "#/channels/" + pointerToken(name)}
		messageRef := Ref{Ref: "#/channels/" + pointerToken(name) + "/messages/" + pointerToken(name)}
		if tv.receive {
			doc.Operations[name+".receive"] = &Operation{
				Action:      "receive",
				Channel:     channelRef,
				Title:       "Receive " + name,
				Summary:     "Consumers receive " + name + " events.",
				Description: receiveDescription(tv),
				Messages:    []Ref{messageRef},
				Tags:        tags,
			}
		}
		if tv.send {
			doc.Operations[name+".send"] = &Operation{
				Action:      "send",
				Channel:     channelRef,
				Title:       "Publish " + name,
				Summary:     "Producers publish " + name + " events.",
				Description: sendDescription(tv),
				Messages:    []Ref{messageRef},
				Tags:        tags,
			}
		}
	}
	addBridges(doc, c, s, f)
	return doc, nil
}

// JSON is the document as indented JSON.
func (d *Document) JSON() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// YAML is the document as YAML, with the same content and key order as JSON.
func (d *Document) YAML() ([]byte, error) {
	j, err := d.JSON()
	if err != nil {
		return nil, err
	}
	return JSONToYAML(j)
}

func infoDescription(revision int64, f Filter) string {
	var b strings.Builder
	fmt.Fprintf(&b, "The event types of Herald's catalog at revision %d", revision)
	if !f.IsZero() {
		fmt.Fprintf(&b, ", narrowed to %s", f.String())
	}
	b.WriteString(".\n\n")
	b.WriteString("Every event is a CloudEvents 1.0 event. Over HTTP (Server-Sent Events, long polling, webhooks) it travels " +
		"in the structured JSON format (`application/cloudevents+json`): the context attributes described by each message's " +
		"headers are top-level members of the JSON object, and the message payload is its `data` member. " +
		"Each channel's address is the event type name (the CloudEvents `type`).\n\n" +
		"Consumers receive events from the edge, for instance as Server-Sent Events from `" + StreamPath + "?types=<type or pattern>` " +
		"(`id:` is the event's cursor, resume with `Last-Event-ID`). Producers send events with the router's gRPC " +
		"`herald.router.v1.RouterService/Publish`; each is validated against the latest schema of its type.")
	return b.String()
}

func edgeServer(serverURL string) (*Server, error) {
	u, err := url.Parse(serverURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("server URL %q: want http(s)://host[:port]", serverURL)
	}
	return &Server{
		Host:     u.Host,
		Protocol: u.Scheme,
		Pathname: strings.TrimSuffix(u.Path, "/") + StreamPath,
		Title:    "Herald edge",
		Summary:  "Server-Sent Events stream of the subscribed event types.",
		Description: "GET " + StreamPath + "?types=<names or patterns, comma-separated> answers `text/event-stream` " +
			"(WHATWG EventSource): `id:` is the event's cursor, `event:` its type, `data:` the CloudEvent in structured JSON. " +
			"Resume with the `Last-Event-ID` header. Optional `filter=<CEL expression>` narrows the events. " +
			"The edge also serves HTTP/2 streams (Connect, gRPC, gRPC-Web), long polling, WebSub and webhooks.",
		Security: []Ref{
			{Ref: "#/components/securitySchemes/" + bearerSchemeKey},
			{Ref: "#/components/securitySchemes/" + queryTokenSchemeKey},
		},
	}, nil
}

func domainTag(dv *domainView) Tag {
	t := Tag{Name: "domain:" + dv.d.GetName()}
	var parts []string
	if d := strings.TrimSpace(dv.d.GetDescription()); d != "" {
		parts = append(parts, d)
	}
	if o := strings.TrimSpace(dv.d.GetOwner()); o != "" {
		parts = append(parts, "Owner: "+o+".")
	}
	if !dv.registered {
		parts = append(parts, "Not a registered domain.")
	}
	t.Description = strings.Join(parts, " ")
	return t
}

func typeTags(tv *typeView, dv *domainView) []Tag {
	var tags []Tag
	if dv != nil {
		tags = append(tags, domainTag(dv))
	} else {
		tags = append(tags, Tag{Name: "domain:" + eventtype.DomainOf(tv.et.GetName())})
	}
	vis := visibilityName(tv.et.GetVisibility())
	tags = append(tags, Tag{Name: "visibility:" + vis, Description: visibilityDescription(vis)})
	life := lifecycleName(tv.et.GetLifecycle())
	lt := Tag{Name: "lifecycle:" + life}
	switch tv.et.GetLifecycle() {
	case registryv1.Lifecycle_LIFECYCLE_DEPRECATED:
		lt.Description = "Deprecated: still works, but goes away at its sunset time."
	case registryv1.Lifecycle_LIFECYCLE_RETIRED:
		lt.Description = "Retired: no longer accepted for publishing or new subscriptions."
	default:
		lt.Description = "Active: published and subscribable."
	}
	tags = append(tags, lt)
	for _, p := range tv.products {
		tags = append(tags, Tag{Name: "product:" + p})
	}
	return tags
}

func visibilityDescription(v string) string {
	switch v {
	case "public":
		return "Public: anyone with a key may see and subscribe."
	case "partner":
		return "Partner: partner and internal applications may see and subscribe."
	default:
		return "Internal: only the organisation's own applications may see and subscribe."
	}
}

// lifecycleNote is the sentence that opens deprecated and retired types'
// descriptions (AsyncAPI 3 has no deprecated flag on messages or operations).
func lifecycleNote(et *registryv1.EventType) string {
	switch et.GetLifecycle() {
	case registryv1.Lifecycle_LIFECYCLE_DEPRECATED:
		if ts := et.GetSunsetTime(); ts != nil {
			return "DEPRECATED: this event type is retired at " + ts.AsTime().UTC().Format(time.RFC3339) + " (sunset)."
		}
		return "DEPRECATED: this event type will be retired."
	case registryv1.Lifecycle_LIFECYCLE_RETIRED:
		if ts := et.GetSunsetTime(); ts != nil {
			return "RETIRED at " + ts.AsTime().UTC().Format(time.RFC3339) + ": no longer accepted for publishing or new subscriptions."
		}
		return "RETIRED: no longer accepted for publishing or new subscriptions."
	}
	return ""
}

func typeDescription(tv *typeView) string {
	et := tv.et
	var parts []string
	if n := lifecycleNote(et); n != "" {
		parts = append(parts, n)
	}
	if d := strings.TrimSpace(et.GetDescription()); d != "" {
		parts = append(parts, d)
	}
	var facts []string
	if o := et.GetOwner(); o != "" {
		facts = append(facts, "Owner: "+o+".")
	}
	facts = append(facts, "Visibility: "+visibilityName(et.GetVisibility())+".")
	if tv.version > 0 {
		facts = append(facts, fmt.Sprintf("Schema version %d (%d in all), compatibility %s.", tv.version, tv.versions, compatibilityName(et.GetCompatibility())))
	}
	if r := retentionText(et.GetRetention()); r != "" {
		facts = append(facts, "Retention: "+r+".")
	}
	if p := et.GetPartitions(); p > 1 {
		facts = append(facts, fmt.Sprintf("Partitions: %d (events with the same partitionkey stay in order).", p))
	}
	parts = append(parts, strings.Join(facts, " "))
	return strings.Join(parts, "\n\n")
}

func retentionText(r *registryv1.RetentionPolicy) string {
	if r == nil {
		return ""
	}
	var parts []string
	if a := r.GetMaxAge(); a != nil && a.AsDuration() > 0 {
		parts = append(parts, "events older than "+humanDuration(a.AsDuration())+" are trimmed")
	}
	if n := r.GetMaxEvents(); n > 0 {
		parts = append(parts, fmt.Sprintf("at most %d events are kept", n))
	}
	return strings.Join(parts, "; ")
}

// humanDuration writes whole days as days (720h: "30 days"), the rest as
// Go durations without trailing zero units (90m: "1h30m").
func humanDuration(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d == day:
		return "1 day"
	case d%day == 0:
		return fmt.Sprintf("%d days", d/day)
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func receiveDescription(tv *typeView) string {
	s := "Subscribe with a stream (SSE `" + StreamPath + "?types=" + tv.et.GetName() + "`, HTTP/2 streaming, long polling) " +
		"or a durable subscription (webhook, WebSub)."
	if n := lifecycleNote(tv.et); n != "" {
		s = n + "\n\n" + s
	}
	return s
}

func sendDescription(tv *typeView) string {
	s := "Publish with the router's `herald.router.v1.RouterService/Publish`; the data must conform to the latest schema."
	if n := lifecycleNote(tv.et); n != "" {
		s = n + "\n\n" + s
	}
	return s
}

func firstSentence(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if i := strings.IndexAny(s, "\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	if i := strings.Index(s, ". "); i >= 0 {
		s = s[:i+1]
	}
	return s
}

func messageExamples(tv *typeView) []MessageExample {
	var out []MessageExample
	for i, ex := range tv.et.GetExamples() {
		if ex == nil {
			continue
		}
		// The payload schema is the latest version: examples of older
		// versions would contradict it.
		if v := ex.GetSchemaVersion(); v != 0 && tv.version != 0 && v != tv.version {
			continue
		}
		data, err := decodeOrdered(ex.GetData())
		if err != nil {
			continue
		}
		name := ex.GetName()
		if name == "" {
			name = fmt.Sprintf("example-%d", i+1)
		}
		out = append(out, MessageExample{
			Name:    name,
			Summary: ex.GetSummary(),
			Headers: obj("specversion", "1.0", "id", name, "source", "urn:herald:example", "type", tv.et.GetName()),
			Payload: data,
		})
	}
	return out
}

// cloudEventContextSchema describes the CloudEvents context attributes
// that surround every event's data.
func cloudEventContextSchema() any {
	str := func(desc string) object { return obj("type", "string", "description", desc) }
	return obj(
		"type", "object",
		"description", "CloudEvents 1.0 context attributes. In the structured JSON format they are top-level members next to `data`.",
		"required", []any{"specversion", "id", "source", "type"},
		"properties", obj(
			"specversion", obj("type", "string", "const", "1.0", "description", "CloudEvents specification version."),
			"id", str("Identifies the event; unique per source."),
			"source", obj("type", "string", "format", "uri-reference", "description", "Identifies the context in which the event happened."),
			"type", str("The event type name, e.g. billing.invoice.paid."),
			"time", obj("type", "string", "format", "date-time", "description", "When the occurrence happened."),
			"subject", str("The subject of the event in the context of the source."),
			"datacontenttype", obj("type", "string", "description", "Content type of data: application/json for JSON Schema types (and for Protobuf and Avro data rendered as JSON on request), application/protobuf, application/avro or the declared type otherwise; binary data travels base64-encoded in `data_base64`."),
			"dataschema", obj("type", "string", "format", "uri", "description", "The schema data adheres to."),
			"partitionkey", str("Events with the same partition key are delivered in order (CloudEvents partitioning extension)."),
		),
	)
}

func cloudEventHeaders(typeName string) any {
	return obj("allOf", []any{
		Ref{Ref: "#/components/schemas/" + cloudEventSchemaKey},
		obj("type", "object", "properties", obj("type", obj("const", typeName))),
	})
}

// protoSource is the .proto source of the file that defines a protobuf
// schema's message, when the schema has its sources (a schema registered as
// a FileDescriptorSet has none).
func protoSource(ps *registryv1.ProtobufSchema) (string, bool) {
	if len(ps.GetFiles()) == 0 {
		return "", false
	}
	p, err := schema.CompileProtobuf(&registryv1.ProtobufSchema{Message: ps.GetMessage(), FileDescriptorSet: ps.GetFileDescriptorSet()})
	if err != nil {
		return "", false
	}
	src, ok := ps.GetFiles()[p.Message.ParentFile().Path()]
	return src, ok
}
