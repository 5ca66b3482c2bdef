package codegen

import (
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The model is what both languages are written from: the schemas of the
// event types turned into named declarations (objects, enums, aliases) and
// type expressions.

// kind is the shape of a JSON value a type expression allows.
type kind int

const (
	kindAny    kind = iota // any JSON value
	kindNever              // no value at all (the schema false)
	kindNull               // only null
	kindBool               // true or false
	kindInt                // a number without a fractional part
	kindNumber             // any number
	kindString             // a string
	kindArray              // elem is the items' type
	kindMap                // an object whose properties all have type elem
	kindNamed              // decl
	kindUnion              // one of variants (oneOf, anyOf, a list of types)
)

// typeExpr is a type as written where it is used: a field's type, an
// array's items.
type typeExpr struct {
	kind     kind
	nullable bool        // null is allowed too
	elem     *typeExpr   // kindArray, kindMap
	decl     *decl       // kindNamed
	variants []*typeExpr // kindUnion, none nullable (nullable says it)
	format   string      // kindString: the schema's format (date-time...)
}

type declKind int

const (
	declObject declKind = iota // an object with known properties
	declEnum                   // one of a list of values (enum, const)
	declAlias                  // a name for another type expression
)

// decl is a named type.
type decl struct {
	kind       declKind
	name       string
	doc        string
	deprecated bool
	origin     string // where in which schema: billing.invoice.paid#/$defs/money
	dataOf     string // the event type whose data this is, for the root

	// declObject
	fields []*field
	// extra is the type of properties beyond fields (additionalProperties
	// as a schema); nil with open true means any value, with open false
	// none.
	extra *typeExpr
	open  bool

	// declEnum: values in the schema's order, each a string, a
	// json.Number, a bool or nil (null makes uses nullable instead).
	values []any
	base   kind // kindString, kindInt, kindNumber, kindBool, or kindAny for a mix

	// declAlias
	alias *typeExpr
}

// field is one property of an object.
type field struct {
	json       string // the property's name in JSON
	doc        string
	required   bool
	deprecated bool
	t          *typeExpr
	// cyclic: the field's type is an object that contains this field
	// (directly or further down), so Go must point to it.
	cyclic bool
}

// eventModel is one event type's part of the model.
type eventModel struct {
	t     parsedType
	data  *decl  // the data's type, named after the event type
	event string // the envelope's name
}

// builder turns compiled schemas into declarations, in a deterministic
// order (types by name, properties by name), with names from one namer.
type builder struct {
	goStyle    bool
	names      *namer
	decls      []*decl // in the order they were made: what reads best top-down
	bySchema   map[*jsonschema.Schema]*decl
	building   map[*decl]bool // objects whose fields are being made
	root       string         // the current event type's data name, prefix of nested names
	rootSchema *jsonschema.Schema
	rootDoc    any // the current schema's JSON, for what the compiled form leaves out
	eventType  string
}

// format is s's "format". The compiled schema keeps it only when formats
// are asserted, which draft 2020-12 does not do, so it is read from the
// JSON at s's location.
func (b *builder) format(s *jsonschema.Schema) string {
	if s.Format != nil {
		return s.Format.Name
	}
	base, frag, _ := strings.Cut(s.Location, "#")
	rootBase, _, _ := strings.Cut(b.rootSchema.Location, "#")
	if base != rootBase {
		return ""
	}
	node := b.rootDoc
	if frag != "" {
		for _, tok := range strings.Split(strings.TrimPrefix(frag, "/"), "/") {
			tok, err := url.PathUnescape(tok)
			if err != nil {
				return ""
			}
			tok = unescapePointer(tok)
			switch n := node.(type) {
			case map[string]any:
				node = n[tok]
			case []any:
				i, err := strconv.Atoi(tok)
				if err != nil || i < 0 || i >= len(n) {
					return ""
				}
				node = n[i]
			default:
				return ""
			}
		}
	}
	if m, ok := node.(map[string]any); ok {
		if f, ok := m["format"].(string); ok {
			return f
		}
	}
	return ""
}

func newBuilder(goStyle bool, reserved []string) *builder {
	return &builder{goStyle: goStyle, names: newNamer(reserved...), bySchema: map[*jsonschema.Schema]*decl{}, building: map[*decl]bool{}}
}

// build makes the model of every type. The names of each type's data and
// envelope are taken first, in name order, so that nested types never take
// them.
func (b *builder) build(types []parsedType) []*eventModel {
	out := make([]*eventModel, len(types))
	for i, t := range types {
		base := identifier(t.Name, "Event", b.goStyle)
		data := b.names.take(base)
		out[i] = &eventModel{t: t, data: &decl{name: data, dataOf: t.Name}, event: b.names.take(data + "Event")}
	}
	for _, m := range out {
		b.root, b.eventType = m.data.name, m.t.Name
		doc := m.t.Description
		if m.t.schema == nil {
			m.data.kind, m.data.alias, m.data.doc, m.data.origin = declAlias, &typeExpr{kind: kindAny}, doc, m.t.Name
			b.decls = append(b.decls, m.data)
			continue
		}
		root := m.t.schema.Parsed()
		b.rootSchema = root
		b.rootDoc = nil
		_ = json.Unmarshal(m.t.Schema, &b.rootDoc) // it compiled, so it is JSON
		if root.Description != "" && root.Description != doc {
			doc = strings.TrimSpace(doc + "\n\n" + root.Description)
		}
		b.fill(m.data, root, doc)
	}
	return out
}

// named returns the declaration of s, making it (named want, or want
// numbered) the first time.
func (b *builder) named(s *jsonschema.Schema, want string) *decl {
	if d, ok := b.bySchema[s]; ok {
		return d
	}
	d := &decl{name: b.names.take(want)}
	b.fill(d, s, s.Description)
	return d
}

// fill makes d the declaration of s: an object, an enum or an alias.
func (b *builder) fill(d *decl, s *jsonschema.Schema, doc string) {
	b.bySchema[s] = d
	b.decls = append(b.decls, d)
	d.doc, d.deprecated = doc, s.Deprecated
	d.origin = b.eventType
	if _, frag, _ := strings.Cut(s.Location, "#"); frag != "" {
		d.origin += "#" + frag
	}
	if values, ok := enumValues(s); ok {
		d.kind = declEnum
		for _, v := range values {
			if v != nil {
				d.values = append(d.values, v)
			}
		}
		d.base = enumBase(d.values)
		if d.base == kindAny {
			// Objects or arrays among the values, or a mix: no enum to
			// write, only the JSON.
			d.kind, d.values = declAlias, nil
			d.alias = &typeExpr{kind: kindAny}
		}
		return
	}
	if isObject(s) {
		if props, required, extra, open := collectObject(s); len(props) > 0 {
			d.kind = declObject
			if n := len(s.OneOf) + len(s.AnyOf); n > 0 {
				d.doc = strings.TrimSpace(d.doc + fmt.Sprintf("\n\nThe schema also has %d alternatives (oneOf/anyOf) that these fields do not express.", n))
			}
			b.building[d] = true
			b.objectFields(d, props, required)
			delete(b.building, d)
			d.extra, d.open = b.extraType(extra, d.name+"Value"), open
			return
		}
	}
	d.kind = declAlias
	d.alias = b.typeOf(s, d.name)
	d.alias.nullable = false // a use says whether null is allowed
	if d.alias.kind == kindNamed && d.alias.decl == d {
		d.alias = &typeExpr{kind: kindAny} // {"$ref": "#"} and the like: validation refuses them anyway
	}
}

func (b *builder) objectFields(d *decl, props map[string]*jsonschema.Schema, required map[string]bool) {
	fieldNames := make([]string, 0, len(props))
	for name := range props {
		fieldNames = append(fieldNames, name)
	}
	slices.Sort(fieldNames)
	for _, name := range fieldNames {
		p := props[name]
		f := &field{json: name, required: required[name]}
		if p == nil { // required, not described
			f.t = &typeExpr{kind: kindAny}
		} else {
			f.t = b.typeOf(p, d.name+identifier(name, "Field", b.goStyle))
			f.doc, f.deprecated = describe(p), p.Deprecated
			if f.t.kind == kindString && f.t.format != "" {
				f.doc = strings.TrimSpace(f.doc + "\n\nFormat: " + f.t.format + formatNote(f.t.format) + ".")
			}
			f.cyclic = f.t.kind == kindNamed && b.building[f.t.decl]
		}
		d.fields = append(d.fields, f)
	}
}

func (b *builder) extraType(extra *jsonschema.Schema, want string) *typeExpr {
	if extra == nil {
		return nil
	}
	return b.typeOf(extra, want)
}

// describe is a property's doc: its description, or its title.
func describe(s *jsonschema.Schema) string {
	if s.Description != "" {
		return s.Description
	}
	return s.Title
}

func formatNote(f string) string {
	switch f {
	case "date-time":
		return " (RFC 3339)"
	case "date":
		return " (RFC 3339 full-date)"
	case "duration":
		return " (ISO 8601)"
	}
	return ""
}

// typeOf is the type expression of a value described by s; objects, enums
// and unions of objects get declarations named want.
func (b *builder) typeOf(s *jsonschema.Schema, want string) *typeExpr {
	if s == nil {
		return &typeExpr{kind: kindAny}
	}
	if s.Bool != nil {
		if *s.Bool {
			return &typeExpr{kind: kindAny}
		}
		return &typeExpr{kind: kindNever}
	}
	if target := onlyRef(s); target != nil {
		return &typeExpr{kind: kindNamed, decl: b.named(target, b.refName(target, want))}
	}
	if values, ok := enumValues(s); ok {
		nullable := slices.Contains(values, nil)
		if len(values) == 1 && nullable {
			return &typeExpr{kind: kindNull}
		}
		return &typeExpr{kind: kindNamed, decl: b.named(s, want), nullable: nullable}
	}
	// Properties beside oneOf/anyOf (the variants often only add required
	// properties): the object is what the data has; the variants stay a
	// constraint, said in its comment.
	if variants := s.OneOf; (len(variants) > 0 || len(s.AnyOf) > 0) && len(s.Properties) == 0 {
		if len(variants) == 0 {
			variants = s.AnyOf
		}
		return b.union(variants, want)
	}
	if len(s.AllOf) == 1 && s.Types == nil && len(s.Properties) == 0 && s.Ref == nil {
		return b.typeOf(s.AllOf[0], want) // a wrapper, often to add a description to a $ref
	}
	types, nullable := jsonTypes(s)
	if len(types) == 0 {
		return &typeExpr{kind: kindAny, nullable: false}
	}
	var exprs []*typeExpr
	for _, t := range types {
		exprs = append(exprs, b.typeOfType(s, t, want))
	}
	if len(exprs) == 1 {
		exprs[0].nullable = exprs[0].nullable || nullable
		return exprs[0]
	}
	return &typeExpr{kind: kindUnion, variants: exprs, nullable: nullable}
}

// typeOfType is the type of s's values of JSON type t.
func (b *builder) typeOfType(s *jsonschema.Schema, t, want string) *typeExpr {
	switch t {
	case "boolean":
		return &typeExpr{kind: kindBool}
	case "integer":
		return &typeExpr{kind: kindInt}
	case "number":
		return &typeExpr{kind: kindNumber}
	case "string":
		return &typeExpr{kind: kindString, format: b.format(s)}
	case "array":
		items := s.Items2020
		if items == nil {
			if one, ok := s.Items.(*jsonschema.Schema); ok {
				items = one
			}
		}
		if items == nil {
			return &typeExpr{kind: kindArray, elem: &typeExpr{kind: kindAny}}
		}
		return &typeExpr{kind: kindArray, elem: b.typeOf(items, want+"Item")}
	case "object":
		props, _, extra, open := collectObject(s)
		if len(props) > 0 {
			return &typeExpr{kind: kindNamed, decl: b.named(s, want)}
		}
		switch {
		case extra != nil:
			return &typeExpr{kind: kindMap, elem: b.typeOf(extra, want+"Value")}
		case open:
			return &typeExpr{kind: kindMap, elem: &typeExpr{kind: kindAny}}
		default:
			return &typeExpr{kind: kindMap, elem: &typeExpr{kind: kindNever}} // {} and nothing else
		}
	}
	return &typeExpr{kind: kindNull}
}

// union is the type of oneOf or anyOf variants: null among them makes the
// rest nullable; one left is that one.
func (b *builder) union(variants []*jsonschema.Schema, want string) *typeExpr {
	var rest []*jsonschema.Schema
	nullable := false
	for _, v := range variants {
		if isNull(v) {
			nullable = true
			continue
		}
		rest = append(rest, v)
	}
	if len(rest) == 0 {
		return &typeExpr{kind: kindNull}
	}
	if len(rest) == 1 {
		e := b.typeOf(rest[0], want)
		e.nullable = e.nullable || nullable
		return e
	}
	u := &typeExpr{kind: kindUnion, nullable: nullable}
	for i, v := range rest {
		name := want + "Variant" + fmt.Sprint(i+1)
		if v.Title != "" {
			name = want + identifier(v.Title, "Variant", b.goStyle)
		}
		e := b.typeOf(v, name)
		if e.nullable {
			u.nullable, e.nullable = true, false
		}
		if e.kind == kindUnion { // flatten
			u.variants = append(u.variants, e.variants...)
			continue
		}
		u.variants = append(u.variants, e)
	}
	return u
}

// refName names the target of a reference: the root is the event type's
// data; $defs/money is BillingInvoicePaidMoney; otherwise want.
func (b *builder) refName(target *jsonschema.Schema, want string) string {
	_, frag, _ := strings.Cut(target.Location, "#")
	if frag == "" {
		if target == b.rootSchema {
			return b.root
		}
		return want // a subschema with its own $id
	}
	parts := strings.Split(frag, "/")
	last := parts[len(parts)-1]
	if len(parts) >= 2 && (parts[len(parts)-2] == "$defs" || parts[len(parts)-2] == "definitions") {
		return b.root + identifier(unescapePointer(last), "Def", b.goStyle)
	}
	if target.Title != "" {
		return b.root + identifier(target.Title, "Def", b.goStyle)
	}
	return want
}

func unescapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
}

// onlyRef returns the target of s's $ref when s is that reference and
// nothing that changes the shape (annotations and constraints aside),
// following chains of such references.
func onlyRef(s *jsonschema.Schema) *jsonschema.Schema {
	var target *jsonschema.Schema
	for hops := 0; hops < 64 && s.Ref != nil && s.Types == nil && s.Enum == nil && s.Const == nil && len(s.Properties) == 0 &&
		len(s.OneOf) == 0 && len(s.AnyOf) == 0 && len(s.AllOf) == 0 && s.Items2020 == nil && s.Items == nil && s.AdditionalProperties == nil; hops++ {
		if s.Ref == target {
			break
		}
		target, s = s.Ref, s.Ref
		if s.Bool != nil {
			break
		}
	}
	return target
}

func isNull(s *jsonschema.Schema) bool {
	if s.Types != nil {
		ts := s.Types.ToStrings()
		return len(ts) == 1 && ts[0] == "null"
	}
	if values, ok := enumValues(s); ok {
		return len(values) == 1 && values[0] == nil
	}
	return false
}

// jsonTypes are the JSON types s allows, null apart: from "type", else
// from the keywords present.
func jsonTypes(s *jsonschema.Schema) (types []string, nullable bool) {
	if s.Types != nil {
		for _, t := range s.Types.ToStrings() {
			if t == "null" {
				nullable = true
				continue
			}
			types = append(types, t)
		}
		slices.SortFunc(types, func(a, b string) int { return typeOrder(a) - typeOrder(b) })
		// "integer" with "number" is "number".
		if slices.Contains(types, "number") {
			types = slices.DeleteFunc(types, func(t string) bool { return t == "integer" })
		}
		return types, nullable
	}
	switch {
	case isObject(s):
		return []string{"object"}, false
	case s.Items2020 != nil || s.Items != nil || len(s.PrefixItems) > 0:
		return []string{"array"}, false
	case s.Format != nil || s.Pattern != nil || s.MinLength != nil || s.MaxLength != nil:
		return []string{"string"}, false
	}
	return nil, false
}

func typeOrder(t string) int {
	return slices.Index([]string{"object", "array", "string", "integer", "number", "boolean"}, t)
}

// isObject tells whether s describes objects: by its type, or by object
// keywords when it has none.
func isObject(s *jsonschema.Schema) bool {
	if s.Types != nil {
		return slices.Contains(s.Types.ToStrings(), "object")
	}
	if len(s.Properties) > 0 || len(s.Required) > 0 || s.AdditionalProperties != nil || len(s.PatternProperties) > 0 {
		return true
	}
	for _, a := range s.AllOf {
		if a != nil && (isObject(a) || (onlyRef(a) != nil && isObject(onlyRef(a)))) {
			return true
		}
	}
	return s.Ref != nil && isObject(s.Ref)
}

// collectObject gathers an object schema's properties: its own, then those
// of its allOf members and of its $ref (an object built by composition).
// extra is additionalProperties as a schema; open says whether other
// properties may have any value.
func collectObject(s *jsonschema.Schema) (props map[string]*jsonschema.Schema, required map[string]bool, extra *jsonschema.Schema, open bool) {
	props, required = map[string]*jsonschema.Schema{}, map[string]bool{}
	seen := map[*jsonschema.Schema]bool{}
	var walk func(s *jsonschema.Schema)
	walk = func(s *jsonschema.Schema) {
		if s == nil || seen[s] {
			return
		}
		seen[s] = true
		for name, p := range s.Properties {
			if _, ok := props[name]; !ok {
				props[name] = p
			}
		}
		for _, r := range s.Required {
			required[r] = true
			if _, ok := props[r]; !ok {
				props[r] = nil // filled by a later member, or any value
			}
		}
		for _, a := range s.AllOf {
			walk(a)
		}
		walk(s.Ref)
	}
	walk(s)
	// A required property that a later member describes has its schema now.
	for name, p := range props {
		if p == nil {
			props[name] = findProperty(s, name, map[*jsonschema.Schema]bool{})
		}
	}
	open = true
	switch a := s.AdditionalProperties.(type) {
	case bool:
		open = a
	case *jsonschema.Schema:
		if a.Bool != nil {
			open = *a.Bool
		} else {
			extra, open = a, false
		}
	}
	if u := s.UnevaluatedProperties; u != nil && u.Bool != nil && !*u.Bool && s.AdditionalProperties == nil {
		open = false
	}
	if len(s.PatternProperties) > 0 && !open {
		// Properties matching patterns are allowed: any value, as far as
		// the types say.
		extra, open = nil, true
	}
	return props, required, extra, open
}

func findProperty(s *jsonschema.Schema, name string, seen map[*jsonschema.Schema]bool) *jsonschema.Schema {
	if s == nil || seen[s] {
		return nil
	}
	seen[s] = true
	if p, ok := s.Properties[name]; ok {
		return p
	}
	for _, a := range append(slices.Clone(s.AllOf), s.Ref) {
		if p := findProperty(a, name, seen); p != nil {
			return p
		}
	}
	return nil
}

// enumValues are the values s allows by enum or const.
func enumValues(s *jsonschema.Schema) ([]any, bool) {
	if s.Const != nil {
		return []any{*s.Const}, true
	}
	if s.Enum != nil {
		return s.Enum.Values, true
	}
	return nil, false
}

// enumBase is the one JSON type of values, or kindAny.
func enumBase(values []any) kind {
	base := kindNever
	for _, v := range values {
		var k kind
		switch v := v.(type) {
		case string:
			k = kindString
		case bool:
			k = kindBool
		case json.Number:
			k = kindNumber
			if isInteger(v) {
				k = kindInt
			}
		default:
			return kindAny
		}
		switch {
		case base == kindNever || base == k:
			base = k
		case (base == kindInt && k == kindNumber) || (base == kindNumber && k == kindInt):
			base = kindNumber
		default:
			return kindAny
		}
	}
	if base == kindNever {
		return kindAny
	}
	return base
}

func isInteger(n json.Number) bool {
	r, ok := new(big.Rat).SetString(string(n))
	return ok && r.IsInt()
}
