package catalogfile

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/schema"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Kind is what a change does.
type Kind int

// The kinds of change, in the order a plan runs them for one resource.
const (
	CreateDomain Kind = iota + 1
	UpdateDomain
	CreateEventType
	UpdateEventType
	AddSchemaVersion
	CreateProduct
	UpdateProduct
)

func (k Kind) String() string {
	switch k {
	case CreateDomain:
		return "create domain"
	case UpdateDomain:
		return "update domain"
	case CreateEventType:
		return "create event type"
	case UpdateEventType:
		return "update event type"
	case AddSchemaVersion:
		return "add schema version to"
	case CreateProduct:
		return "create product"
	case UpdateProduct:
		return "update product"
	case CreateBridge:
		return "create bridge"
	case UpdateBridge:
		return "update bridge"
	}
	return "change " + strconv.Itoa(int(k))
}

// Change is one step of a plan.
type Change struct {
	Kind Kind
	// Name of the domain, event type or product.
	Name string
	// Fields are what the change sets (an update's old and new values).
	Fields []FieldChange
	// The resource as it will be sent: for updates, with the revision it
	// was read at.
	Domain    *registryv1.Domain
	EventType *registryv1.EventType
	Product   *registryv1.Product
	// Bridge is the bridge to create, or its new values with UpdateMask
	// naming what changes (its secret, if any, read from the environment:
	// never printed).
	Bridge     *registryv1.Bridge
	UpdateMask []string
	// Schema is the new schema version of an AddSchemaVersion (JSON text),
	// SchemaDiff what it changes, and Verdict whether the registry would
	// take it (set by Check).
	Schema     string
	SchemaDiff []string
	// ProtobufSchema and ContentType are the new version of a protobuf or
	// none type.
	ProtobufSchema *registryv1.ProtobufSchema
	ContentType    string
	Verdict        *Verdict
	// AfterSchema marks an event type update that has to wait for the new
	// schema version (examples of the new version).
	AfterSchema bool
}

// FieldChange is one field of a change: From is empty on create.
type FieldChange struct {
	Field, From, To string
}

// Verdict is the registry's answer on a new schema version.
type Verdict struct {
	// Checked is false when the registry could not be asked beforehand
	// (the compatibility mode changes in the same plan); Note says why.
	Checked    bool
	Compatible bool
	Reasons    []string
	Note       string
}

// Plan is the ordered list of changes that brings a registry to a file:
// domains first, then event types (each: metadata, schema version,
// examples of the new version), then products, then bridges.
type Plan struct {
	Changes []*Change
	// Notes are things worth knowing that change nothing (resources the
	// registry has and the file does not mention are left alone).
	Notes []string
	// Problems are what the file asks and the registry cannot do (a
	// bridge's system, direction, application or sink types changed, a
	// secret's environment variable unset): Apply refuses such a plan.
	Problems []string
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return len(p.Changes) == 0 }

// Incompatible returns the schema changes the registry would refuse.
func (p *Plan) Incompatible() []*Change {
	var out []*Change
	for _, c := range p.Changes {
		if c.Kind == AddSchemaVersion && c.Verdict != nil && c.Verdict.Checked && !c.Verdict.Compatible {
			out = append(out, c)
		}
	}
	return out
}

// NewPlan compares what a registry has with what a file says. It needs no
// registry: Check asks the registry about new schema versions.
func NewPlan(current *State, desired *File) *Plan {
	if current == nil {
		current = &State{}
	}
	p := &Plan{}
	for i := range desired.Domains {
		p.domain(current.domain(desired.Domains[i].Name), &desired.Domains[i])
	}
	for i := range desired.EventTypes {
		p.eventType(current.eventType(desired.EventTypes[i].Name), &desired.EventTypes[i])
	}
	for i := range desired.Products {
		p.product(current.product(desired.Products[i].Name), &desired.Products[i])
	}
	for i := range desired.Bridges {
		p.bridge(current, &desired.Bridges[i])
	}

	inFile := map[string]bool{}
	for _, d := range desired.Domains {
		inFile["domain "+d.Name] = true
	}
	for _, et := range desired.EventTypes {
		inFile["event type "+et.Name] = true
	}
	for _, pr := range desired.Products {
		inFile["product "+pr.Name] = true
	}
	for _, b := range desired.Bridges {
		inFile["bridge "+b.Name] = true
	}
	var missing []string
	for _, d := range current.Domains {
		if !inFile["domain "+d.GetName()] {
			missing = append(missing, "domain "+d.GetName())
		}
	}
	for _, et := range current.EventTypes {
		if !inFile["event type "+et.GetName()] {
			missing = append(missing, "event type "+et.GetName())
		}
	}
	for _, pr := range current.Products {
		if !inFile["product "+pr.GetName()] {
			missing = append(missing, "product "+pr.GetName())
		}
	}
	for _, b := range current.Bridges {
		if !inFile["bridge "+b.GetName()] {
			missing = append(missing, "bridge "+b.GetName())
		}
	}
	if len(missing) > 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("left as they are (in the registry, not in the file): %s", strings.Join(missing, ", ")))
	}
	return p
}

func (p *Plan) domain(cur *registryv1.Domain, d *Domain) {
	if cur == nil {
		c := &Change{Kind: CreateDomain, Name: d.Name, Domain: &registryv1.Domain{Name: d.Name, Description: deref(d.Description), Owner: deref(d.Owner)}}
		c.Fields = appendSet(c.Fields, "description", d.Description)
		c.Fields = appendSet(c.Fields, "owner", d.Owner)
		p.Changes = append(p.Changes, c)
		return
	}
	next := proto.Clone(cur).(*registryv1.Domain)
	var fields []FieldChange
	if d.Description != nil && *d.Description != cur.GetDescription() {
		fields = append(fields, FieldChange{"description", quote(cur.GetDescription()), quote(*d.Description)})
		next.Description = *d.Description
	}
	if d.Owner != nil && *d.Owner != cur.GetOwner() {
		fields = append(fields, FieldChange{"owner", quote(cur.GetOwner()), quote(*d.Owner)})
		next.Owner = *d.Owner
	}
	if len(fields) > 0 {
		next.CreateTime, next.UpdateTime = nil, nil
		p.Changes = append(p.Changes, &Change{Kind: UpdateDomain, Name: d.Name, Fields: fields, Domain: next})
	}
}

func (p *Plan) product(cur *registryv1.Product, d *Product) {
	if cur == nil {
		c := &Change{Kind: CreateProduct, Name: d.Name, Product: &registryv1.Product{Name: d.Name, Description: deref(d.Description), EventTypes: d.EventTypes}}
		c.Fields = appendSet(c.Fields, "description", d.Description)
		if d.EventTypes != nil {
			c.Fields = append(c.Fields, FieldChange{Field: "eventTypes", To: list(d.EventTypes)})
		}
		p.Changes = append(p.Changes, c)
		return
	}
	next := proto.Clone(cur).(*registryv1.Product)
	var fields []FieldChange
	if d.Description != nil && *d.Description != cur.GetDescription() {
		fields = append(fields, FieldChange{"description", quote(cur.GetDescription()), quote(*d.Description)})
		next.Description = *d.Description
	}
	if d.EventTypes != nil && !slices.Equal(d.EventTypes, cur.GetEventTypes()) {
		fields = append(fields, FieldChange{"eventTypes", list(cur.GetEventTypes()), list(d.EventTypes)})
		next.EventTypes = d.EventTypes
	}
	if len(fields) > 0 {
		next.CreateTime, next.UpdateTime = nil, nil
		p.Changes = append(p.Changes, &Change{Kind: UpdateProduct, Name: d.Name, Fields: fields, Product: next})
	}
}

func (p *Plan) eventType(cur *registryv1.EventType, d *EventType) {
	if cur == nil {
		et := &registryv1.EventType{Name: d.Name, Schema: d.schemaJSON, SchemaFormat: d.format(), ProtobufSchema: d.protobuf(), ContentType: d.ContentType}
		setManaged(et, d)
		if d.Examples != nil {
			et.Examples = examplesOf(d)
		}
		c := &Change{Kind: CreateEventType, Name: d.Name, EventType: et}
		c.Fields = appendSet(c.Fields, "description", d.Description)
		c.Fields = appendSet(c.Fields, "owner", d.Owner)
		for _, f := range []FieldChange{
			{Field: "visibility", To: d.Visibility}, {Field: "lifecycle", To: d.Lifecycle}, {Field: "sunset", To: optionalSunset(d.sunset)},
			{Field: "compatibility", To: d.Compatibility}, {Field: "retention", To: retentionText(et.GetRetention())},
			{Field: "partitions", To: partitionsText(d.Partitions)},
		} {
			if f.To != "" {
				c.Fields = append(c.Fields, f)
			}
		}
		if d.Format != "" {
			c.Fields = append(c.Fields, FieldChange{Field: "format", To: d.Format})
		}
		c.Fields = append(c.Fields, FieldChange{Field: "schema", To: "version 1"})
		if len(et.Examples) > 0 {
			c.Fields = append(c.Fields, FieldChange{Field: "examples", To: exampleNames(et.Examples)})
		}
		p.Changes = append(p.Changes, c)
		return
	}

	next := proto.Clone(cur).(*registryv1.EventType)
	next.CreateTime, next.UpdateTime = nil, nil
	setManaged(next, d)
	var fields []FieldChange
	if d.Description != nil && *d.Description != cur.GetDescription() {
		fields = append(fields, FieldChange{"description", quote(cur.GetDescription()), quote(*d.Description)})
	}
	if d.Owner != nil && *d.Owner != cur.GetOwner() {
		fields = append(fields, FieldChange{"owner", quote(cur.GetOwner()), quote(*d.Owner)})
	}
	if d.Visibility != "" && visibilities[d.Visibility] != normVisibility(cur.GetVisibility()) {
		fields = append(fields, FieldChange{"visibility", visibilityName(cur.GetVisibility()), d.Visibility})
	}
	if d.Lifecycle != "" && lifecycles[d.Lifecycle] != normLifecycle(cur.GetLifecycle()) {
		fields = append(fields, FieldChange{"lifecycle", lifecycleName(cur.GetLifecycle()), d.Lifecycle})
	}
	if d.sunsetSet && !sameTime(d.sunset, cur.GetSunsetTime()) {
		var was *time.Time
		if ts := cur.GetSunsetTime(); ts != nil {
			t := ts.AsTime()
			was = &t
		}
		fields = append(fields, FieldChange{"sunset", sunsetText(was), sunsetText(d.sunset)})
	}
	if d.Compatibility != "" && compatibilities[d.Compatibility] != normCompatibility(cur.GetCompatibility()) {
		fields = append(fields, FieldChange{"compatibility", compatibilityName(cur.GetCompatibility()), d.Compatibility})
	}
	if d.Retention != nil && (d.Retention.maxAge != cur.GetRetention().GetMaxAge().AsDuration() || d.Retention.MaxEvents != cur.GetRetention().GetMaxEvents()) {
		fields = append(fields, FieldChange{"retention", cmpOr(retentionText(cur.GetRetention()), "(none)"), cmpOr(retentionText(next.GetRetention()), "(none)")})
	}
	if d.Partitions > 0 && d.Partitions != max(1, cur.GetPartitions()) {
		fields = append(fields, FieldChange{"partitions", partitionsText(max(1, cur.GetPartitions())), partitionsText(d.Partitions) + " (the registry refuses: partitions are fixed once a type exists)"})
	}
	var exampleChange *FieldChange
	if d.Examples != nil && !sameExamples(examplesOf(d), cur.GetExamples()) {
		exampleChange = &FieldChange{"examples", cmpOr(exampleNames(cur.GetExamples()), "(none)"), cmpOr(exampleNames(examplesOf(d)), "(none)")}
		if sameNames(examplesOf(d), cur.GetExamples()) {
			exampleChange.To += " (content changed)"
		}
	}
	schemaChanged := canonicalJSON(d.schemaJSON) != canonicalJSON(cur.GetSchema())
	switch d.format() {
	case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
		schemaChanged = d.Protobuf.Message != cur.GetProtobufSchema().GetMessage() || !maps.Equal(d.Protobuf.Files, cur.GetProtobufSchema().GetFiles())
	case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
		schemaChanged = d.ContentType != cur.GetContentType()
	}
	if f := d.format(); f != schema.Normalize(cur.GetSchemaFormat()) {
		fields = append(fields, FieldChange{"format", formatName(cur.GetSchemaFormat()), cmpOr(d.Format, "jsonSchema") + " (the registry refuses: a type keeps its format)"})
	}

	if !schemaChanged {
		if exampleChange != nil {
			fields = append(fields, *exampleChange)
			next.Examples = examplesOf(d)
		}
		if len(fields) > 0 {
			p.Changes = append(p.Changes, &Change{Kind: UpdateEventType, Name: d.Name, Fields: fields, EventType: next})
		}
		return
	}
	// The schema changes: metadata first (a compatibility mode may be
	// relaxed for the new version), then the version, then examples,
	// which the registry validates against the version they name.
	if len(fields) > 0 {
		p.Changes = append(p.Changes, &Change{Kind: UpdateEventType, Name: d.Name, Fields: fields, EventType: next})
	}
	p.Changes = append(p.Changes, &Change{
		Kind: AddSchemaVersion, Name: d.Name, Schema: d.schemaJSON, ProtobufSchema: d.protobuf(), ContentType: d.ContentType,
		Fields:     []FieldChange{{Field: "schema", From: fmt.Sprintf("version %d", cur.GetSchemaVersion()), To: fmt.Sprintf("version %d", cur.GetSchemaVersion()+1)}},
		SchemaDiff: schemaDiff(cur.GetSchema(), d.schemaJSON),
	})
	if exampleChange != nil {
		after := proto.Clone(next).(*registryv1.EventType)
		after.Examples = examplesOf(d)
		p.Changes = append(p.Changes, &Change{Kind: UpdateEventType, Name: d.Name, Fields: []FieldChange{*exampleChange}, EventType: after, AfterSchema: true})
	}
}

// setManaged copies the fields the file manages onto et.
func setManaged(et *registryv1.EventType, d *EventType) {
	if d.Description != nil {
		et.Description = *d.Description
	}
	if d.Owner != nil {
		et.Owner = *d.Owner
	}
	if d.Visibility != "" {
		et.Visibility = visibilities[d.Visibility]
	}
	if d.Lifecycle != "" {
		et.Lifecycle = lifecycles[d.Lifecycle]
	}
	if d.sunsetSet {
		et.SunsetTime = nil
		if d.sunset != nil {
			et.SunsetTime = timestamppb.New(*d.sunset)
		}
	}
	if d.Compatibility != "" {
		et.Compatibility = compatibilities[d.Compatibility]
	}
	if r := d.Retention; r != nil {
		et.Retention = &registryv1.RetentionPolicy{MaxEvents: r.MaxEvents}
		if r.maxAge > 0 {
			et.Retention.MaxAge = durationpb.New(r.maxAge)
		}
		if r.maxAge == 0 && r.MaxEvents == 0 {
			et.Retention = nil
		}
	}
	if d.Partitions > 0 {
		et.Partitions = d.Partitions
	}
}

func examplesOf(d *EventType) []*registryv1.Example {
	out := make([]*registryv1.Example, 0, len(d.Examples))
	for _, ex := range d.Examples {
		out = append(out, &registryv1.Example{Name: ex.Name, Summary: ex.Summary, Data: ex.dataJSON, SchemaVersion: ex.SchemaVersion})
	}
	return out
}

func sameExamples(a, b []*registryv1.Example) bool {
	return slices.EqualFunc(a, b, func(x, y *registryv1.Example) bool {
		return x.GetName() == y.GetName() && x.GetSummary() == y.GetSummary() && x.GetSchemaVersion() == y.GetSchemaVersion() &&
			canonicalJSON(x.GetData()) == canonicalJSON(y.GetData())
	})
}

func sameNames(a, b []*registryv1.Example) bool {
	return slices.EqualFunc(a, b, func(x, y *registryv1.Example) bool { return x.GetName() == y.GetName() })
}

func sameTime(t *time.Time, ts *timestamppb.Timestamp) bool {
	if t == nil || ts == nil {
		return t == nil && ts == nil
	}
	return t.Equal(ts.AsTime())
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func appendSet(fields []FieldChange, name string, v *string) []FieldChange {
	if v == nil || *v == "" {
		return fields
	}
	return append(fields, FieldChange{Field: name, To: quote(*v)})
}

func quote(s string) string {
	if r := []rune(s); len(r) > 72 {
		s = string(r[:69]) + "..."
	}
	return strconv.Quote(s)
}

func list(items []string) string { return "[" + strings.Join(items, ", ") + "]" }

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func sunsetText(t *time.Time) string {
	if t == nil {
		return "(none)"
	}
	return t.UTC().Format(time.RFC3339)
}

func optionalSunset(t *time.Time) string {
	if t == nil {
		return ""
	}
	return sunsetText(t)
}

func partitionsText(n int32) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(int(n))
}

func retentionText(r *registryv1.RetentionPolicy) string {
	if r == nil {
		return ""
	}
	var parts []string
	if d := r.GetMaxAge().AsDuration(); d > 0 {
		parts = append(parts, "maxAge "+formatDuration(d))
	}
	if n := r.GetMaxEvents(); n > 0 {
		parts = append(parts, fmt.Sprintf("maxEvents %d", n))
	}
	return strings.Join(parts, ", ")
}

func exampleNames(exs []*registryv1.Example) string {
	if len(exs) == 0 {
		return ""
	}
	names := make([]string, len(exs))
	for i, ex := range exs {
		names[i] = ex.GetName()
	}
	return list(names)
}

// Write prints the plan for people: one line per change (+ create,
// ~ update, ! a schema version the registry would refuse), its fields
// below, then a summary.
func (p *Plan) Write(w io.Writer) {
	if p.Empty() && len(p.Problems) == 0 {
		fmt.Fprintln(w, "No changes: the registry already matches the file.")
	}
	var creates, updates, versions, incompatible int
	for _, c := range p.Changes {
		mark := "~"
		switch c.Kind {
		case CreateDomain, CreateEventType, CreateProduct, CreateBridge:
			mark = "+"
			creates++
		case AddSchemaVersion:
			versions++
		default:
			updates++
		}
		head := c.Kind.String() + " " + c.Name
		if c.AfterSchema {
			head += " (examples, after the new schema version)"
		}
		if c.Kind == AddSchemaVersion {
			head += " (" + c.Fields[0].To + ")"
			switch v := c.Verdict; {
			case v == nil:
			case !v.Checked:
				head += ": not checked: " + v.Note
			case v.Compatible:
				head += ": compatible"
			default:
				mark = "!"
				incompatible++
				head += ": INCOMPATIBLE: " + strings.Join(v.Reasons, "; ")
			}
		}
		fmt.Fprintf(w, "%s %s\n", mark, head)
		if c.Kind != AddSchemaVersion {
			for _, f := range c.Fields {
				if f.From == "" {
					fmt.Fprintf(w, "    %s: %s\n", f.Field, f.To)
				} else {
					fmt.Fprintf(w, "    %s: %s -> %s\n", f.Field, f.From, f.To)
				}
			}
		}
		for _, d := range c.SchemaDiff {
			fmt.Fprintf(w, "    %s\n", d)
		}
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, n := range p.Problems {
		fmt.Fprintf(w, "! %s\n", n)
	}
	if !p.Empty() || len(p.Problems) > 0 {
		summary := fmt.Sprintf("Plan: %d to create, %d to update, %d schema version(s) to add", creates, updates, versions)
		if incompatible > 0 {
			summary += fmt.Sprintf(" (%d INCOMPATIBLE)", incompatible)
		}
		if len(p.Problems) > 0 {
			summary += fmt.Sprintf("; %d problem(s) to fix in the file first", len(p.Problems))
		}
		fmt.Fprintln(w, summary+".")
	}
}

// protobuf is d's protobuf schema for the registry, nil for other formats.
func (d *EventType) protobuf() *registryv1.ProtobufSchema {
	if d.format() != registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF || d.Protobuf == nil {
		return nil
	}
	return &registryv1.ProtobufSchema{Message: d.Protobuf.Message, Files: d.Protobuf.Files}
}

// formatName is a registry format's name in the file.
func formatName(f registryv1.SchemaFormat) string {
	for name, v := range formats {
		if name != "" && v == schema.Normalize(f) {
			return name
		}
	}
	return "jsonSchema"
}
