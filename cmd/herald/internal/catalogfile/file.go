// Package catalogfile is Herald's catalog as code: a YAML file of domains,
// event types (with their schemas and examples), products and bridges, the plan
// that brings a registry to what the file says, and the export that writes
// a registry's catalog back in the same format.
//
// A field left out of the file is left as the registry has it (or its
// default, on create); a field that is present is managed. Event types
// need a schema. Nothing the file does not mention is ever deleted.
package catalogfile

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventtype"
	"go.yaml.in/yaml/v3"
)

// Version is the file format version this package reads and writes.
const Version = 1

// File is a catalog file.
type File struct {
	// Version is the format version: 1.
	Version int `yaml:"version"`
	// Domains, EventTypes and Products: each name at most once.
	Domains    []Domain    `yaml:"domains,omitempty"`
	EventTypes []EventType `yaml:"eventTypes,omitempty"`
	Products   []Product   `yaml:"products,omitempty"`
	// Bridges to Kafka, AMQP, MQTT and data lakes.
	Bridges []Bridge `yaml:"bridges,omitempty"`
}

// Domain is a business domain.
type Domain struct {
	Name        string  `yaml:"name"`
	Description *string `yaml:"description,omitempty"`
	Owner       *string `yaml:"owner,omitempty"`

	line int
}

// EventType is an event type with its latest schema.
type EventType struct {
	Name        string  `yaml:"name"`
	Description *string `yaml:"description,omitempty"`
	Owner       *string `yaml:"owner,omitempty"`
	// Visibility: public, partner or internal.
	Visibility string `yaml:"visibility,omitempty"`
	// Lifecycle: active, deprecated (needs sunset) or retired.
	Lifecycle string `yaml:"lifecycle,omitempty"`
	// Sunset is when a deprecated type is retired: RFC 3339 or a date
	// (2031-06-30, midnight UTC). "" clears it.
	Sunset *string `yaml:"sunset,omitempty"`
	// Compatibility: none, backward, backward_transitive, forward,
	// forward_transitive, full or full_transitive.
	Compatibility string     `yaml:"compatibility,omitempty"`
	Retention     *Retention `yaml:"retention,omitempty"`
	// Partitions is fixed once the type exists.
	Partitions int32 `yaml:"partitions,omitempty"`
	// Schema is the JSON Schema (draft 2020-12) of the event data: a YAML
	// mapping (JSON is YAML too), true/false, or a string of JSON text.
	// When it differs from the registry's latest version, a new version
	// is added.
	Schema yaml.Node `yaml:"schema,omitempty"`
	// Format of the schema: jsonSchema (default), protobuf, avro (schema
	// is then the Avro schema) or none. Fixed once the type exists.
	Format string `yaml:"format,omitempty"`
	// Protobuf is the schema of a protobuf type: the message and its
	// .proto files (path: source).
	Protobuf *ProtobufSchema `yaml:"protobuf,omitempty"`
	// ContentType is the media type of a none type's data.
	ContentType string `yaml:"contentType,omitempty"`
	// Examples, each validated by the registry against its schema version
	// (0 or absent: the latest). An empty list removes them all.
	Examples []Example `yaml:"examples,omitempty"`

	line       int
	schemaJSON string
	sunset     *time.Time
	sunsetSet  bool
}

// ProtobufSchema is a protobuf type's message and .proto files.
type ProtobufSchema struct {
	Message string            `yaml:"message"`
	Files   map[string]string `yaml:"files"`
}

// formats maps the file's format names to the registry's.
var formats = map[string]registryv1.SchemaFormat{
	"":           registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA,
	"jsonSchema": registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA,
	"protobuf":   registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF,
	"avro":       registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO,
	"none":       registryv1.SchemaFormat_SCHEMA_FORMAT_NONE,
}

// format is the registry's format of d.
func (d *EventType) format() registryv1.SchemaFormat { return formats[d.Format] }

// Retention bounds an event type's log: either or both.
type Retention struct {
	// MaxAge is a duration: 720h, 90m, or 30d for whole days.
	MaxAge string `yaml:"maxAge,omitempty"`
	// MaxEvents is how many events are kept at most.
	MaxEvents int64 `yaml:"maxEvents,omitempty"`

	maxAge time.Duration
}

// Example is a sample payload.
type Example struct {
	Name    string `yaml:"name"`
	Summary string `yaml:"summary,omitempty"`
	// Data is the event data as a YAML value (a JSON object is YAML too).
	Data          yaml.Node `yaml:"data"`
	SchemaVersion int32     `yaml:"schemaVersion,omitempty"`

	dataJSON string
}

// Product bundles event types.
type Product struct {
	Name        string  `yaml:"name"`
	Description *string `yaml:"description,omitempty"`
	// EventTypes are names or patterns (billing.*, *).
	EventTypes []string `yaml:"eventTypes,omitempty"`

	line int
}

// Error is one problem of a catalog file, at a line when known.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	case e.File != "":
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return e.Msg
}

// Errors are all the problems found in a file, in line order.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Visibility, lifecycle and compatibility names in files.
var (
	visibilities = map[string]registryv1.Visibility{
		"public": registryv1.Visibility_VISIBILITY_PUBLIC, "partner": registryv1.Visibility_VISIBILITY_PARTNER,
		"internal": registryv1.Visibility_VISIBILITY_INTERNAL,
	}
	lifecycles = map[string]registryv1.Lifecycle{
		"active": registryv1.Lifecycle_LIFECYCLE_ACTIVE, "deprecated": registryv1.Lifecycle_LIFECYCLE_DEPRECATED,
		"retired": registryv1.Lifecycle_LIFECYCLE_RETIRED,
	}
	compatibilities = map[string]registryv1.Compatibility{
		"none": registryv1.Compatibility_COMPATIBILITY_NONE, "backward": registryv1.Compatibility_COMPATIBILITY_BACKWARD,
		"backward_transitive": registryv1.Compatibility_COMPATIBILITY_BACKWARD_TRANSITIVE,
		"forward":             registryv1.Compatibility_COMPATIBILITY_FORWARD,
		"forward_transitive":  registryv1.Compatibility_COMPATIBILITY_FORWARD_TRANSITIVE,
		"full":                registryv1.Compatibility_COMPATIBILITY_FULL,
		"full_transitive":     registryv1.Compatibility_COMPATIBILITY_FULL_TRANSITIVE,
	}
)

func names[V any](m map[string]V) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return strings.Join(ks, ", ")
}

// goTypeNames turns the YAML library's Go type names into the file's words.
var goTypeNames = strings.NewReplacer(
	"in type catalogfile.File", "at the top level",
	"in type catalogfile.Domain", "in a domain",
	"in type catalogfile.EventType", "in an event type",
	"in type catalogfile.Retention", "in a retention",
	"in type catalogfile.Example", "in an example",
	"in type catalogfile.Product", "in a product",
	"in type catalogfile.BridgeSink", "in a bridge's sink",
	"in type catalogfile.BridgeSource", "in a bridge's source",
	"in type catalogfile.Bridge", "in a bridge",
	"in type catalogfile.KafkaBridge", "in a bridge's kafka",
	"in type catalogfile.AmqpBridge", "in a bridge's amqp",
	"in type catalogfile.MqttBridge", "in a bridge's mqtt",
	"in type catalogfile.LakeBridge", "in a bridge's lake",
	"in type catalogfile.S3Location", "in a bridge's lake.s3",
	"catalogfile.", "",
)

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// Parse reads a catalog file. name labels errors (the file's path). Unknown
// fields are refused; every problem found is reported, with its line, as
// Errors.
func Parse(name string, r io.Reader) (*File, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlErrors(name, err)
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, Errors{{File: name, Msg: "the file is empty: want version: 1 and domains, eventTypes, products or bridges"}}
	}
	if doc := root.Content[0]; doc.Kind != yaml.MappingNode {
		return nil, Errors{{File: name, Line: doc.Line, Msg: "the file must be a mapping (version: 1, domains: ..., eventTypes: ..., products: ...)"}}
	}
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, yamlErrors(name, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); err == nil {
		return nil, Errors{{File: name, Line: more.Line, Msg: "the file has more than one YAML document"}}
	}
	f.setLines(root.Content[0])
	if errs := f.validate(); len(errs) > 0 {
		for _, e := range errs {
			e.File = name
		}
		return nil, errs
	}
	return &f, nil
}

func yamlErrors(name string, err error) error {
	var te *yaml.TypeError
	var lines []string
	if errors.As(err, &te) {
		lines = te.Errors
	} else {
		lines = []string{err.Error()}
	}
	var out Errors
	for _, l := range lines {
		l = goTypeNames.Replace(strings.TrimSpace(l))
		e := &Error{File: name, Msg: l}
		if m := yamlLine.FindStringSubmatch(l); m != nil {
			e.Line, _ = strconv.Atoi(m[1])
			e.Msg = m[2]
		}
		e.Msg = strings.TrimPrefix(e.Msg, "yaml: ")
		out = append(out, e)
	}
	return out
}

// setLines records where each entry starts, for later messages.
func (f *File) setLines(doc *yaml.Node) {
	items := func(key string) []*yaml.Node {
		for i := 0; i+1 < len(doc.Content); i += 2 {
			if doc.Content[i].Value == key && doc.Content[i+1].Kind == yaml.SequenceNode {
				return doc.Content[i+1].Content
			}
		}
		return nil
	}
	for i, n := range items("domains") {
		if i < len(f.Domains) {
			f.Domains[i].line = n.Line
		}
	}
	for i, n := range items("eventTypes") {
		if i < len(f.EventTypes) {
			f.EventTypes[i].line = n.Line
		}
	}
	for i, n := range items("products") {
		if i < len(f.Products) {
			f.Products[i].line = n.Line
		}
	}
	for i, n := range items("bridges") {
		if i < len(f.Bridges) {
			f.Bridges[i].line = n.Line
		}
	}
}

// validate checks the file and computes the derived fields.
func (f *File) validate() Errors {
	var errs Errors
	add := func(line int, format string, args ...any) {
		errs = append(errs, &Error{Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	if f.Version != Version {
		if f.Version == 0 {
			add(1, "version is missing: the first line should be \"version: %d\"", Version)
		} else {
			add(1, "version %d is not supported: this herald reads version %d", f.Version, Version)
		}
	}

	seen := map[string]int{}
	for i := range f.Domains {
		d := &f.Domains[i]
		what := fmt.Sprintf("domain %q", d.Name)
		switch {
		case d.Name == "":
			add(d.line, "domains[%d]: name is required", i)
		case validDomain(d.Name) != nil:
			add(d.line, "%s: %v", what, validDomain(d.Name))
		}
		if prev, dup := seen[d.Name]; dup && d.Name != "" {
			add(d.line, "%s is listed twice (first at line %d)", what, prev)
		}
		seen[d.Name] = d.line
	}

	seen = map[string]int{}
	for i := range f.EventTypes {
		et := &f.EventTypes[i]
		what := fmt.Sprintf("event type %q", et.Name)
		if et.Name == "" {
			add(et.line, "eventTypes[%d]: name is required", i)
			what = fmt.Sprintf("eventTypes[%d]", i)
		} else if err := eventtype.ValidateName(et.Name); err != nil {
			add(et.line, "%v", err)
		}
		if prev, dup := seen[et.Name]; dup && et.Name != "" {
			add(et.line, "%s is listed twice (first at line %d)", what, prev)
		}
		seen[et.Name] = et.line
		if _, ok := visibilities[et.Visibility]; et.Visibility != "" && !ok {
			add(et.line, "%s: visibility %q: want one of %s", what, et.Visibility, names(visibilities))
		}
		if _, ok := lifecycles[et.Lifecycle]; et.Lifecycle != "" && !ok {
			add(et.line, "%s: lifecycle %q: want one of %s", what, et.Lifecycle, names(lifecycles))
		}
		if _, ok := compatibilities[et.Compatibility]; et.Compatibility != "" && !ok {
			add(et.line, "%s: compatibility %q: want one of %s", what, et.Compatibility, names(compatibilities))
		}
		if et.Sunset != nil {
			et.sunsetSet = true
			if *et.Sunset != "" {
				t, err := parseTime(*et.Sunset)
				if err != nil {
					add(et.line, "%s: sunset %q: want an RFC 3339 time (2031-06-30T00:00:00Z) or a date (2031-06-30)", what, *et.Sunset)
				} else {
					et.sunset = &t
				}
			}
		}
		if et.Lifecycle == "deprecated" && et.sunset == nil {
			add(et.line, "%s: a deprecated type needs a sunset: say when it will be retired", what)
		}
		if r := et.Retention; r != nil {
			if r.MaxAge != "" {
				d, err := parseDuration(r.MaxAge)
				if err != nil || d <= 0 {
					add(et.line, "%s: retention.maxAge %q: want a positive duration (720h, 90m, 30d)", what, r.MaxAge)
				}
				r.maxAge = d
			}
			if r.MaxEvents < 0 {
				add(et.line, "%s: retention.maxEvents must not be negative", what)
			}
		}
		if et.Partitions < 0 {
			add(et.line, "%s: partitions must be at least 1", what)
		}
		f, knownFormat := formats[et.Format]
		hasSchema := et.Schema.Kind != 0 && !(et.Schema.Kind == yaml.ScalarNode && et.Schema.Tag == "!!null")
		switch {
		case !knownFormat:
			add(et.line, "%s: format %q: want jsonSchema, protobuf, avro or none", what, et.Format)
		case f == registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF || f == registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
			if hasSchema {
				add(et.Schema.Line, "%s: schema is for jsonSchema and avro types; a %s type has %s", what, et.Format, map[bool]string{true: "protobuf (message and files)", false: "contentType"}[f == registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF])
			}
			if f == registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF && (et.Protobuf == nil || et.Protobuf.Message == "" || len(et.Protobuf.Files) == 0) {
				add(et.line, "%s: a protobuf type needs protobuf.message and protobuf.files", what)
			}
			if f == registryv1.SchemaFormat_SCHEMA_FORMAT_NONE && et.ContentType == "" {
				add(et.line, "%s: a none type needs contentType (e.g. application/octet-stream)", what)
			}
		case !hasSchema:
			add(et.line, "%s: schema is required (a JSON Schema of the event data; {} accepts any JSON)", what)
		default:
			s, err := schemaJSON(&et.Schema)
			if err != nil {
				add(et.Schema.Line, "%s: schema: %v", what, err)
			}
			et.schemaJSON = s
		}
		exSeen := map[string]bool{}
		for j := range et.Examples {
			ex := &et.Examples[j]
			line := cmp.Or(ex.Data.Line, et.line)
			if ex.Name == "" {
				add(line, "%s: examples[%d]: name is required", what, j)
			} else if exSeen[ex.Name] {
				add(line, "%s: example %q is listed twice", what, ex.Name)
			}
			exSeen[ex.Name] = true
			if ex.SchemaVersion < 0 {
				add(line, "%s: example %q: schemaVersion must not be negative", what, ex.Name)
			}
			if ex.Data.Kind == 0 {
				add(line, "%s: example %q: data is required", what, ex.Name)
				continue
			}
			d, err := nodeJSON(&ex.Data)
			if err != nil {
				add(ex.Data.Line, "%s: example %q: data: %v", what, ex.Name, err)
			}
			ex.dataJSON = d
		}
	}

	seen = map[string]int{}
	for i := range f.Products {
		p := &f.Products[i]
		what := fmt.Sprintf("product %q", p.Name)
		switch {
		case p.Name == "":
			add(p.line, "products[%d]: name is required", i)
		case validProductName(p.Name) != nil:
			add(p.line, "%s: %v", what, validProductName(p.Name))
		}
		if prev, dup := seen[p.Name]; dup && p.Name != "" {
			add(p.line, "%s is listed twice (first at line %d)", what, prev)
		}
		seen[p.Name] = p.line
		for _, pat := range p.EventTypes {
			if err := eventtype.ValidatePattern(pat); err != nil {
				add(p.line, "%s: eventTypes: %v", what, err)
			}
		}
	}
	f.validateBridges(add)
	slices.SortStableFunc(errs, func(a, b *Error) int { return cmp.Compare(a.Line, b.Line) })
	return errs
}

// The name rules are the registry's own (platform/eventtype).
func validDomain(name string) error { return eventtype.ValidateDomain(name) }

func validProductName(name string) error { return eventtype.ValidateProduct(name) }

func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	return time.Parse(time.DateOnly, s)
}

func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 32)
		if err != nil {
			return 0, err
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// formatDuration writes a duration as the file does: 720h, 90m, 1h30m, 45s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// schemaJSON turns a schema node into JSON text: a string holds JSON text;
// anything else is the schema itself.
func schemaJSON(n *yaml.Node) (string, error) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		v, err := decodeJSON(n.Value)
		if err != nil {
			return "", fmt.Errorf("a string schema must be JSON text: %v", err)
		}
		if !isSchemaValue(v) {
			return "", fmt.Errorf("must be a JSON object (or true/false)")
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, []byte(n.Value)); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	if n.Kind != yaml.MappingNode && !(n.Kind == yaml.ScalarNode && n.ShortTag() == "!!bool") {
		return "", fmt.Errorf("must be a mapping (or true/false, or a string of JSON text)")
	}
	return nodeJSON(n)
}

func isSchemaValue(v any) bool {
	switch v.(type) {
	case map[string]any, bool:
		return true
	}
	return false
}

// nodeJSON writes a YAML value as compact JSON, keeping mapping order.
func nodeJSON(n *yaml.Node) (string, error) {
	var buf bytes.Buffer
	if err := writeJSON(&buf, n, 0); err != nil {
		return "", err
	}
	return buf.String(), nil
}

var jsonNumber = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

func writeJSON(buf *bytes.Buffer, n *yaml.Node, depth int) error {
	if depth > 200 {
		return fmt.Errorf("nested too deeply")
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			buf.WriteString("null")
			return nil
		}
		return writeJSON(buf, n.Content[0], depth+1)
	case yaml.AliasNode:
		return writeJSON(buf, n.Alias, depth+1)
	case yaml.MappingNode:
		buf.WriteByte('{')
		keys := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.ShortTag() == "!!merge" {
				return fmt.Errorf("line %d: merge keys (<<) are not supported here", k.Line)
			}
			if k.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: mapping keys must be strings", k.Line)
			}
			if keys[k.Value] {
				return fmt.Errorf("line %d: key %q is repeated", k.Line, k.Value)
			}
			keys[k.Value] = true
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k.Value)
			buf.WriteByte(':')
			if err := writeJSON(buf, v, depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJSON(buf, c, depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str", "!!timestamp":
			writeString(buf, n.Value)
		case "!!null":
			buf.WriteString("null")
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				return err
			}
			buf.WriteString(strconv.FormatBool(b))
		case "!!int", "!!float":
			if jsonNumber.MatchString(n.Value) {
				buf.WriteString(n.Value)
				return nil
			}
			var f float64
			if err := n.Decode(&f); err != nil {
				return fmt.Errorf("line %d: number %q: %v", n.Line, n.Value, err)
			}
			if math.IsInf(f, 0) || math.IsNaN(f) {
				return fmt.Errorf("line %d: %s is not a JSON number", n.Line, n.Value)
			}
			buf.WriteString(strconv.FormatFloat(f, 'g', -1, 64))
		default:
			return fmt.Errorf("line %d: values tagged %s have no JSON form", n.Line, n.ShortTag())
		}
	default:
		return fmt.Errorf("line %d: unexpected YAML node", n.Line)
	}
	return nil
}

func writeString(buf *bytes.Buffer, s string) {
	b, _ := marshalNoEscape(s)
	buf.Write(b)
}

func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func decodeJSON(text string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("unexpected data after the JSON value")
	}
	return v, nil
}

// canonicalJSON is JSON text with its formatting and key order erased, for
// comparing; text that is not JSON comes back unchanged.
func canonicalJSON(text string) string {
	v, err := decodeJSON(text)
	if err != nil {
		return text
	}
	b, err := marshalNoEscape(v)
	if err != nil {
		return text
	}
	return string(b)
}

// jsonNode turns JSON text into a YAML node in block style, keeping key
// order; text that is not JSON becomes a string.
func jsonNode(text string) *yaml.Node {
	var doc yaml.Node
	if _, err := decodeJSON(text); err != nil || yaml.Unmarshal([]byte(text), &doc) != nil || len(doc.Content) == 0 {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: text}
	}
	n := doc.Content[0]
	blockStyle(n)
	return n
}

func blockStyle(n *yaml.Node) {
	switch n.Kind {
	case yaml.MappingNode, yaml.SequenceNode:
		if len(n.Content) > 0 {
			n.Style = 0
		}
	case yaml.ScalarNode:
		n.Style = 0
		if n.Tag == "!!str" && yaml11Bool[n.Value] {
			// YAML 1.1 readers (yq, PyYAML) would take these for booleans.
			n.Style = yaml.DoubleQuotedStyle
		}
	}
	for _, c := range n.Content {
		blockStyle(c)
	}
}

var yaml11Bool = map[string]bool{}

func init() {
	for _, s := range strings.Fields("y yes on n no off") {
		yaml11Bool[s] = true
		yaml11Bool[strings.ToUpper(s)] = true
		yaml11Bool[strings.ToUpper(s[:1])+s[1:]] = true
	}
}
