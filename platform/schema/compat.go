package schema

import (
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// CheckCompatibility tells whether candidate may be added after versions
// (oldest first) under mode. It returns the reasons it may not, each naming
// the property path and the rule broken; none means compatible. An error
// means a schema could not be read.
//
// The semantics are those of Confluent Schema Registry for JSON Schema:
// BACKWARD means the candidate accepts every instance the latest version
// accepts (new readers, old data), FORWARD that the latest version accepts
// every instance the candidate accepts, FULL both; the *_TRANSITIVE modes
// compare with every version instead of only the latest. UNSPECIFIED
// behaves as BACKWARD and NONE allows any change.
//
// The comparison is structural and conservative: a change is reported as
// a break whenever it cannot be shown that every instance valid under the
// writer's schema is valid under the reader's, so a compatible verdict can
// be trusted while a reported break may occasionally be a false alarm
// (for example when anyOf/oneOf/not/if alternatives are rewritten into
// equivalent but different forms).
func CheckCompatibility(mode registryv1.Compatibility, candidate string, versions []string) ([]string, error) {
	label, backward, forward, transitive, ok := modeRules(mode)
	if !ok {
		return nil, fmt.Errorf("unknown compatibility mode %d", int32(mode))
	}
	cand, err := loadDocument("candidate", candidate)
	if err != nil {
		return nil, fmt.Errorf("candidate schema: %w", err)
	}
	olds := make([]*document, len(versions))
	for i, v := range versions {
		d, err := loadDocument(fmt.Sprintf("version-%d", i+1), v)
		if err != nil {
			return nil, fmt.Errorf("version %d: %w", i+1, err)
		}
		olds[i] = d
	}
	if !backward && !forward {
		return nil, nil
	}
	first := len(olds) - 1
	if transitive {
		first = 0
	}
	var found []finding
	budget := maxTotalSteps
	for i := len(olds) - 1; i >= first; i-- {
		if backward {
			for _, is := range compare(cand, olds[i], true, &budget) {
				found = append(found, finding{issue: is, version: i + 1, backward: true})
			}
		}
		if forward {
			for _, is := range compare(olds[i], cand, false, &budget) {
				found = append(found, finding{issue: is, version: i + 1})
			}
		}
	}
	sort.SliceStable(found, func(i, j int) bool {
		a, b := found[i], found[j]
		if a.path != b.path {
			return a.path < b.path
		}
		if a.version != b.version {
			return a.version < b.version
		}
		if a.backward != b.backward {
			return a.backward
		}
		return a.msg < b.msg
	})
	var reasons []string
	seen := map[string]bool{}
	for _, f := range found {
		path := f.path
		if path == "" {
			path = "/"
		}
		var why string
		if f.backward {
			why = fmt.Sprintf("data written with version %d may not be readable", f.version)
		} else {
			why = fmt.Sprintf("data written with the new schema may not be readable by version %d", f.version)
		}
		r := fmt.Sprintf("%s: %s: %s: %s", label, path, f.msg, why)
		if !seen[r] {
			seen[r] = true
			reasons = append(reasons, r)
		}
	}
	return reasons, nil
}

// modeRules maps a mode to its label and the directions it checks.
func modeRules(mode registryv1.Compatibility) (label string, backward, forward, transitive, ok bool) {
	switch mode {
	case registryv1.Compatibility_COMPATIBILITY_UNSPECIFIED, registryv1.Compatibility_COMPATIBILITY_BACKWARD:
		return "BACKWARD", true, false, false, true
	case registryv1.Compatibility_COMPATIBILITY_NONE:
		return "NONE", false, false, false, true
	case registryv1.Compatibility_COMPATIBILITY_BACKWARD_TRANSITIVE:
		return "BACKWARD_TRANSITIVE", true, false, true, true
	case registryv1.Compatibility_COMPATIBILITY_FORWARD:
		return "FORWARD", false, true, false, true
	case registryv1.Compatibility_COMPATIBILITY_FORWARD_TRANSITIVE:
		return "FORWARD_TRANSITIVE", false, true, true, true
	case registryv1.Compatibility_COMPATIBILITY_FULL:
		return "FULL", true, true, false, true
	case registryv1.Compatibility_COMPATIBILITY_FULL_TRANSITIVE:
		return "FULL_TRANSITIVE", true, true, true, true
	}
	return "", false, false, false, false
}

type issue struct {
	path string // JSON pointer into the schema, e.g. /properties/amount
	msg  string
}

type finding struct {
	issue
	version  int
	backward bool // true: the candidate reads data of version; false: version reads data of the candidate
}

// Limits that keep pathological (huge, deeply recursive, combinatorial)
// schemas from running long; reaching one is reported as a break.
const (
	maxSteps      = 100000  // per comparison of two versions
	maxTotalSteps = 1000000 // per call
	maxDepth      = 200
	maxRefHops    = 32
	maxFlatten    = 32
	maxParts      = 256
	maxListed     = 10
)

// document is a parsed schema with what is needed to resolve its refs.
type document struct {
	root      any
	resources map[string]any     // absolute URI (no fragment) -> schema with that $id
	bases     map[uintptr]string // schema map -> URI of its resource
	anchors   map[string]any     // resource URI#name -> schema with that $anchor/$dynamicAnchor
}

// docBase is the URI of a document without $id; refs can only reach
// inside the document (Compile refuses the others).
const docBase = "https://schemas.herald.invalid/document.json"

func loadDocument(name, text string) (*document, error) {
	if _, err := Compile(name, text); err != nil {
		return nil, err
	}
	root, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("schema is not valid JSON: %v", err)
	}
	d := &document{root: root, resources: map[string]any{}, bases: map[uintptr]string{}, anchors: map[string]any{}}
	base, _ := url.Parse(docBase)
	d.resources[docBase] = root
	d.walk(root, base, 0)
	return d, nil
}

func mapID(m map[string]any) uintptr { return reflect.ValueOf(m).Pointer() }

// subschema keywords, by the shape of their value.
var (
	schemaKeywords      = []string{"additionalProperties", "propertyNames", "unevaluatedProperties", "unevaluatedItems", "contains", "not", "if", "then", "else", "additionalItems", "contentSchema", "items"}
	schemaListKeywords  = []string{"allOf", "anyOf", "oneOf", "prefixItems", "items"}
	schemaMapKeywords   = []string{"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
	refKeywords         = map[string]bool{"$ref": true, "$dynamicRef": true, "$recursiveRef": true}
	assertionKeywordSet = map[string]bool{}
)

func init() {
	for _, k := range []string{
		"type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
		"maxLength", "minLength", "pattern", "format", "maxItems", "minItems", "uniqueItems", "maxContains",
		"minContains", "contains", "maxProperties", "minProperties", "required", "dependentRequired",
		"dependentSchemas", "properties", "patternProperties", "additionalProperties", "propertyNames",
		"unevaluatedProperties", "prefixItems", "items", "additionalItems", "unevaluatedItems", "allOf",
		"anyOf", "oneOf", "not", "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef", "dependencies",
	} {
		assertionKeywordSet[k] = true
	}
}

// assertive tells whether a keyword can make an instance invalid. Core
// keywords, annotations (title, description, default, examples, content*,
// ...) and unknown keywords cannot.
func assertive(k string) bool { return assertionKeywordSet[k] }

// walk records resources ($id) and anchors, following schema positions
// only.
func (d *document) walk(n any, base *url.URL, depth int) {
	m, ok := n.(map[string]any)
	if !ok || depth > 10000 {
		return
	}
	if id, ok := m["$id"].(string); ok {
		if u, err := url.Parse(id); err == nil {
			base = base.ResolveReference(u)
			base.Fragment, base.RawFragment = "", ""
			if _, dup := d.resources[base.String()]; !dup {
				d.resources[base.String()] = m
			}
		}
	}
	b := base.String()
	d.bases[mapID(m)] = b
	for _, k := range []string{"$anchor", "$dynamicAnchor"} {
		if a, ok := m[k].(string); ok {
			if _, dup := d.anchors[b+"#"+a]; !dup {
				d.anchors[b+"#"+a] = m
			}
		}
	}
	for _, k := range schemaKeywords {
		if x, ok := m[k]; ok {
			d.walk(x, base, depth+1)
		}
	}
	for _, k := range schemaListKeywords {
		for _, x := range arr(m[k]) {
			d.walk(x, base, depth+1)
		}
	}
	for _, k := range schemaMapKeywords {
		sub := obj(m[k])
		for _, name := range sortedKeys(sub) {
			d.walk(sub[name], base, depth+1)
		}
	}
}

// resolve follows reference keyword kw of schema holder; only references
// inside the document can be followed.
func (d *document) resolve(holder map[string]any, kw string) (any, bool) {
	s, ok := holder[kw].(string)
	if !ok {
		return nil, false
	}
	if kw == "$recursiveRef" {
		s = "#"
	}
	b, ok := d.bases[mapID(holder)]
	if !ok {
		b = docBase
	}
	base, err := url.Parse(b)
	if err != nil {
		return nil, false
	}
	ref, err := url.Parse(s)
	if err != nil {
		return nil, false
	}
	abs := base.ResolveReference(ref)
	frag := abs.Fragment
	abs.Fragment, abs.RawFragment = "", ""
	res, ok := d.resources[abs.String()]
	if !ok {
		return nil, false
	}
	if frag == "" {
		return res, true
	}
	if !strings.HasPrefix(frag, "/") {
		t, ok := d.anchors[abs.String()+"#"+frag]
		return t, ok
	}
	cur := res
	for _, tok := range strings.Split(frag[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case map[string]any:
			x, ok := c[tok]
			if !ok {
				return nil, false
			}
			cur = x
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// deref follows a node that is only a reference (plus annotations) to its
// target. A reference with sibling assertions is left as is.
func (d *document) deref(n any) (any, bool) {
	for range maxRefHops {
		m, ok := n.(map[string]any)
		if !ok {
			return n, true
		}
		ref := ""
		for k := range m {
			if refKeywords[k] {
				if ref != "" {
					return n, true
				}
				ref = k
			} else if assertive(k) {
				return n, true
			}
		}
		if ref == "" {
			return n, true
		}
		t, ok := d.resolve(m, ref)
		if !ok {
			return nil, false
		}
		n = t
	}
	return nil, false
}

// conj is a synthesized conjunction of subschemas of one document.
type conj []any

// acceptAll tells whether a node accepts every instance (true, {}, only
// annotations, or a reference to such).
func (d *document) acceptAll(n any) bool {
	n, ok := d.deref(n)
	if !ok {
		return false
	}
	switch v := n.(type) {
	case bool:
		return v
	case conj:
		for _, p := range v {
			if !d.acceptAll(p) {
				return false
			}
		}
		return true
	case map[string]any:
		for k := range v {
			if assertive(k) {
				return false
			}
		}
		return true
	}
	return false
}

// isFalse tells whether a node is (a reference to) false.
func (d *document) isFalse(n any) bool {
	n, ok := d.deref(n)
	if !ok {
		return false
	}
	switch v := n.(type) {
	case bool:
		return !v
	case conj:
		for _, p := range v {
			if d.isFalse(p) {
				return true
			}
		}
	}
	return false
}

// mergeWriter flattens $ref, allOf and single-alternative anyOf/oneOf of a
// writer node into one keyword map. The result may accept more than the
// node (when keywords cannot be combined exactly one of them is kept), which
// is safe for a writer: it only makes the check stricter. It returns false
// when the node accepts nothing.
func (d *document) mergeWriter(n any) any {
	var parts []any
	var origins []any
	d.flattenW(n, 0, &parts, &origins, map[uintptr]bool{})
	// unevaluatedProperties/unevaluatedItems of the top node see the
	// properties and items of its allOf/$ref parts, which are merged here;
	// those of a nested part would see fewer, so the merged map accepts
	// more, which is safe.
	res := map[string]any{}
	var maps []map[string]any
	for _, p := range parts {
		switch v := p.(type) {
		case bool:
			if !v {
				return false
			}
		case map[string]any:
			if x, ok := v["not"]; ok && d.acceptAll(x) {
				return false
			}
			maps = append(maps, v)
			for _, k := range sortedKeys(v) {
				mergeKey(res, k, v[k])
			}
		}
	}
	if len(maps) > 1 {
		mergeProperties(res, maps)
	}
	res[partsKey] = origins
	return res
}

// partsKey holds, in a merged writer map, the schemas merged into it, so
// that keywords kept from only one of them (not, if, oneOf, ...) can be
// matched against any of them.
const partsKey = "\x00parts"

// writerGroups returns W and the schemas merged into it that have kw.
func writerGroups(W map[string]any, kw string) []map[string]any {
	var out []map[string]any
	if _, ok := W[kw]; ok {
		out = append(out, W)
	}
	for _, p := range arr(W[partsKey]) {
		if m, ok := p.(map[string]any); ok {
			if _, has := m[kw]; has {
				out = append(out, m)
			}
		}
	}
	return out
}

// mergeProperties gives each declared property of merged parts the
// conjunction of what every part applies to it: its own declaration, else
// its matching patternProperties, else its additionalProperties.
func mergeProperties(res map[string]any, maps []map[string]any) {
	names := map[string]bool{}
	for _, m := range maps {
		for n := range obj(m["properties"]) {
			names[n] = true
		}
	}
	props := make(map[string]any, len(names))
	for _, n := range sortedKeys(names) {
		var list []any
		for _, m := range maps {
			if s, ok := obj(m["properties"])[n]; ok {
				list = append(list, s)
				continue
			}
			matched := false
			pats := obj(m["patternProperties"])
			for _, p := range sortedKeys(pats) {
				if re, err := regexp.Compile(p); err == nil && re.MatchString(n) {
					list = append(list, pats[p])
					matched = true
				}
			}
			if a, ok := m["additionalProperties"]; ok && !matched {
				list = append(list, a)
			}
		}
		if len(list) == 1 {
			props[n] = list[0]
		} else {
			props[n] = conj(list)
		}
	}
	if len(props) > 0 {
		res["properties"] = props
	}
	// Undeclared names matching a pattern of one part get the
	// additionalProperties of the parts without patterns.
	pats := obj(res["patternProperties"])
	if len(pats) == 0 {
		return
	}
	merged := make(map[string]any, len(pats))
	for _, p := range sortedKeys(pats) {
		list := []any{pats[p]}
		for _, m := range maps {
			if a, ok := m["additionalProperties"]; ok && len(obj(m["patternProperties"])) == 0 {
				list = append(list, a)
			}
		}
		if len(list) == 1 {
			merged[p] = pats[p]
		} else {
			merged[p] = conj(list)
		}
	}
	res["patternProperties"] = merged
}

// flattenW collects the conjuncts of a writer node. A schema met twice is
// taken once (A and A is A); past maxFlatten levels or maxParts schemas
// the rest is dropped, which only lets the writer accept more.
func (d *document) flattenW(n any, depth int, out, origins *[]any, seen map[uintptr]bool) {
	if depth > maxFlatten || len(seen) > maxParts {
		return
	}
	n, ok := d.deref(n)
	if !ok {
		return
	}
	switch v := n.(type) {
	case bool:
		if !v {
			*out = append(*out, false)
		}
	case conj:
		for _, p := range v {
			d.flattenW(p, depth+1, out, origins, seen)
		}
	case map[string]any:
		if seen[mapID(v)] {
			return
		}
		seen[mapID(v)] = true
		if o, ok := v[partsKey]; ok {
			*origins = append(*origins, arr(o)...)
		} else {
			*origins = append(*origins, v)
		}
		own := map[string]any{}
		var sub []any
		for _, k := range sortedKeys(v) {
			x := v[k]
			switch {
			case k == "allOf":
				sub = append(sub, arr(x)...)
			case refKeywords[k]:
				if t, ok := d.resolve(v, k); ok {
					sub = append(sub, t)
				}
			case (k == "anyOf" || k == "oneOf") && len(arr(x)) == 1:
				sub = append(sub, arr(x)[0])
			case assertive(k):
				own[k] = x
			}
		}
		*out = append(*out, normItems(own))
		for _, s := range sub {
			d.flattenW(s, depth+1, out, origins, seen)
		}
	}
}

// normItems rewrites the array form of items (drafts before 2020-12) into
// prefixItems and items.
func normItems(m map[string]any) map[string]any {
	list, ok := m["items"].([]any)
	if !ok {
		return m
	}
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	c["prefixItems"] = list
	delete(c, "items")
	if ai, ok := m["additionalItems"]; ok {
		c["items"] = ai
	}
	delete(c, "additionalItems")
	return c
}

// mergeKey adds keyword k with value x to a writer's merged map.
func mergeKey(res map[string]any, k string, x any) {
	old, had := res[k]
	if !had {
		res[k] = x
		return
	}
	switch k {
	case "type":
		res[k] = intersectTypes(old, x)
	case "required":
		set := stringSet(old)
		list := append([]any(nil), arr(old)...)
		for _, s := range arr(x) {
			if str, ok := s.(string); ok && !set[str] {
				set[str] = true
				list = append(list, s)
			}
		}
		res[k] = list
	case "enum":
		keep := map[string]bool{}
		for _, v := range arr(x) {
			keep[canon(v)] = true
		}
		var list []any
		for _, v := range arr(old) {
			if keep[canon(v)] {
				list = append(list, v)
			}
		}
		res[k] = append([]any{}, list...)
	case "const":
		if canon(old) != canon(x) {
			res["enum"] = []any{}
		}
	case "dependentRequired":
		a, b := obj(old), obj(x)
		m := make(map[string]any, len(a)+len(b))
		for n, list := range a {
			m[n] = list
		}
		for _, n := range sortedKeys(b) {
			set := stringSet(m[n])
			merged := append([]any(nil), arr(m[n])...)
			for _, s := range arr(b[n]) {
				if str, ok := s.(string); ok && !set[str] {
					set[str] = true
					merged = append(merged, s)
				}
			}
			m[n] = merged
		}
		res[k] = m
	case "properties", "patternProperties", "dependentSchemas":
		a, b := obj(old), obj(x)
		m := make(map[string]any, len(a)+len(b))
		for n, s := range a {
			m[n] = s
		}
		for n, s := range b {
			if prev, ok := m[n]; ok {
				m[n] = conj{prev, s}
			} else {
				m[n] = s
			}
		}
		res[k] = m
	case "prefixItems":
		a, b := arr(old), arr(x)
		if len(b) > len(a) {
			a, b = b, a
		}
		list := append([]any(nil), a...)
		for i, s := range b {
			list[i] = conj{list[i], s}
		}
		res[k] = list
	case "items", "additionalProperties", "propertyNames", "unevaluatedProperties", "unevaluatedItems":
		res[k] = conj{old, x}
	case "minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains":
		if a, ok := parseRat(old); ok {
			if b, ok := parseRat(x); ok && b.Cmp(a) > 0 {
				res[k] = x
			}
		}
	case "maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains":
		if a, ok := parseRat(old); ok {
			if b, ok := parseRat(x); ok && b.Cmp(a) < 0 {
				res[k] = x
			}
		}
	case "uniqueItems":
		if x == true {
			res[k] = true
		}
	}
	// Anything else keeps the first value: the writer accepts more.
}

var allTypes = []string{"null", "boolean", "object", "array", "number", "string"}

func intersectTypes(a, b any) any {
	la, _ := typeList(map[string]any{"type": a})
	lb, _ := typeList(map[string]any{"type": b})
	var out []any
	for _, t := range la {
		switch {
		case containsStr(lb, t):
			out = append(out, t)
		case t == "integer" && containsStr(lb, "number"), t == "number" && containsStr(lb, "integer"):
			out = append(out, "integer")
		}
	}
	return append([]any{}, out...)
}

// checker compares a reader schema with a writer schema.
type checker struct {
	r, w     *document
	backward bool // the reader is the new schema (candidate)
	level    int  // how deep in the instance the compared subschemas apply
	st       *state
	issues   []issue
}

type state struct {
	steps     int
	limit     int
	exhausted bool
	stack     map[string]int // reader/writer pairs being compared, with their level
}

// compare lists the ways reader may reject instances of writer, using at
// most maxSteps of budget.
func compare(reader, writer *document, backward bool, budget *int) []issue {
	st := &state{limit: min(maxSteps, *budget), stack: map[string]int{}}
	c := &checker{r: reader, w: writer, backward: backward, st: st}
	c.accepts(reader.root, writer.root, "", 0)
	*budget -= min(st.steps, st.limit)
	if c.st.exhausted {
		c.issues = append(c.issues, issue{msg: "schemas are too large, deep or recursive to compare"})
	}
	return c.issues
}

func (c *checker) add(path, format string, args ...any) {
	c.issues = append(c.issues, issue{path: path, msg: fmt.Sprintf(format, args...)})
}

// pick chooses the wording for the backward (reader is new) or forward
// (reader is old) direction.
func (c *checker) pick(backward, forward string) string {
	if c.backward {
		return backward
	}
	return forward
}

func (c *checker) rname() string { return c.pick("new", "old") }
func (c *checker) wname() string { return c.pick("old", "new") }

// oldNew orders a reader and a writer description as old, new.
func (c *checker) oldNew(r, w string) (string, string) {
	if c.backward {
		return w, r
	}
	return r, w
}

func (c *checker) swapped() *checker {
	return &checker{r: c.w, w: c.r, backward: !c.backward, level: c.level, st: c.st}
}

// try tells, without reporting, whether r accepts w.
func (c *checker) try(r, w any, depth int) bool {
	t := &checker{r: c.r, w: c.w, backward: c.backward, level: c.level, st: c.st}
	t.accepts(r, w, "", depth+1)
	return len(t.issues) == 0 && !c.st.exhausted
}

// equiv tells whether r (of the reader document) and w (of the writer
// document) are known to accept the same instances.
func (c *checker) equiv(r, w any, depth int) bool {
	return c.try(r, w, depth) && c.swapped().try(w, r, depth)
}

// descend compares subschemas that apply to a part of the instance (a
// property value, an item, a property name).
func (c *checker) descend(r, w any, path string, depth int) {
	c.level++
	c.accepts(r, w, path, depth+1)
	c.level--
}

func (c *checker) step(depth int) bool {
	if c.st.exhausted {
		return false
	}
	c.st.steps++
	if c.st.steps > c.st.limit || depth > maxDepth {
		c.st.exhausted = true
		return false
	}
	return true
}

// accepts reports the ways an instance valid under w (writer) may be
// invalid under r (reader).
func (c *checker) accepts(r, w any, path string, depth int) {
	if !c.step(depth) {
		return
	}
	r, ok := c.r.deref(r)
	if !ok {
		c.add(path, "a $ref of the %s schema cannot be resolved, or loops", c.rname())
		return
	}
	w, ok = c.w.deref(w)
	if !ok {
		w = true // unknown writer: assume it may send anything
	}
	if c.r.acceptAll(r) {
		return
	}
	wm, ok := c.w.mergeWriter(w).(map[string]any)
	if !ok || writerEmpty(wm) {
		return // the writer sends nothing
	}
	key := nodeKey(r) + "|" + nodeKey(w)
	if lv, ok := c.st.stack[key]; ok {
		if lv < c.level {
			return // recursive schema: assume the pair holds while it is checked
		}
		// The reader refers to itself without moving into the instance:
		// validation can never finish, so it fails.
		c.add(path, "the %s schema refers to itself here without validating anything", c.rname())
		return
	}
	c.st.stack[key] = c.level
	defer delete(c.st.stack, key)

	var rm map[string]any
	switch v := r.(type) {
	case bool: // false: acceptAll caught true
		c.add(path, "the %s schema forbids any value here", c.rname())
		return
	case conj:
		for _, p := range v {
			c.accepts(p, w, path, depth+1)
		}
		return
	case map[string]any:
		rm = v
	default:
		c.add(path, "the %s schema cannot be read here", c.rname())
		return
	}

	// A reader conjunction holds when each part holds.
	if split(rm) {
		own := map[string]any{}
		var parts []any
		var paths []string
		for _, k := range sortedKeys(rm) {
			x := rm[k]
			switch {
			case k == "allOf":
				for i, p := range arr(x) {
					parts = append(parts, p)
					paths = append(paths, fmt.Sprintf("%s/allOf/%d", path, i))
				}
			case refKeywords[k]:
				t, ok := c.r.resolve(rm, k)
				if !ok {
					c.add(path, "%s %s of the %s schema cannot be resolved", k, jsonText(x), c.rname())
					continue
				}
				parts = append(parts, t)
				paths = append(paths, path)
			case (k == "anyOf" || k == "oneOf") && len(arr(x)) == 1:
				parts = append(parts, arr(x)[0])
				paths = append(paths, path+"/"+k+"/0")
			default:
				own[k] = x
			}
		}
		c.accepts(c.r.absorbEvaluated(own, parts), w, path, depth+1)
		for i, p := range parts {
			c.accepts(p, w, paths[i], depth+1)
		}
		return
	}

	c.distribute(normItems(rm), wm, path, depth+1)
}

// absorbEvaluated prepares the own keywords of a reader split from its
// allOf/$ref parts: its unevaluatedProperties/unevaluatedItems do not apply
// to the properties and items those parts evaluate. Evaluations by
// anyOf/oneOf/if alternatives are ignored, which only makes the reader
// stricter.
func (d *document) absorbEvaluated(own map[string]any, parts []any) map[string]any {
	_, up := own["unevaluatedProperties"]
	_, ui := own["unevaluatedItems"]
	if (!up && !ui) || len(parts) == 0 {
		return own
	}
	m, ok := d.mergeWriter(conj(parts)).(map[string]any)
	if !ok {
		return own
	}
	if _, ok := own["additionalProperties"]; up && !ok {
		_, add := m["additionalProperties"]
		_, uneval := m["unevaluatedProperties"]
		if add || uneval {
			delete(own, "unevaluatedProperties")
		} else {
			for _, kw := range []string{"properties", "patternProperties"} {
				merged := map[string]any{}
				for n := range obj(m[kw]) {
					merged[n] = true
				}
				for n, s := range obj(own[kw]) {
					merged[n] = s
				}
				if len(merged) > 0 {
					own[kw] = merged
				}
			}
		}
	}
	if _, ok := own["items"]; ui && !ok {
		_, items := m["items"]
		_, uneval := m["unevaluatedItems"]
		if items || uneval {
			delete(own, "unevaluatedItems")
		} else if n := len(arr(m["prefixItems"])); n > len(arr(own["prefixItems"])) {
			prefix := append([]any(nil), arr(own["prefixItems"])...)
			for len(prefix) < n {
				prefix = append(prefix, true)
			}
			own["prefixItems"] = prefix
		}
	}
	return own
}

func split(m map[string]any) bool {
	for k, x := range m {
		if k == "allOf" || refKeywords[k] || ((k == "anyOf" || k == "oneOf") && len(arr(x)) == 1) {
			return true
		}
	}
	return false
}

// distribute checks each alternative of a writer's anyOf (or oneOf) on its
// own: the writer's instances are those of some alternative.
func (c *checker) distribute(R, W map[string]any, path string, depth int) {
	if !c.step(depth) {
		return
	}
	kw := ""
	if len(arr(W["anyOf"])) > 1 {
		kw = "anyOf"
	} else if len(arr(W["oneOf"])) > 1 && !c.needsOneOf(R) {
		kw = "oneOf"
	}
	if kw == "" {
		c.checkMaps(R, W, path, depth)
		return
	}
	base := make(map[string]any, len(W))
	for k, v := range W {
		if k != kw {
			base[k] = v
		}
	}
	for _, alt := range arr(W[kw]) {
		// An alternative met again below itself (a recursive schema) only
		// narrows the slice being checked: assume it holds meanwhile.
		key := ""
		if _, ok := alt.(map[string]any); ok {
			key = "alt|" + nodeKey(R) + "|" + valueKey(alt)
			if _, ok := c.st.stack[key]; ok {
				continue
			}
		}
		wi, ok := c.w.mergeWriter(conj{base, alt}).(map[string]any)
		if !ok {
			continue
		}
		if key != "" {
			c.st.stack[key] = c.level
		}
		c.distribute(R, wi, path, depth+1)
		if key != "" {
			delete(c.st.stack, key)
		}
	}
}

// needsOneOf tells whether the reader has a oneOf that cannot be read as
// an anyOf (its alternatives may overlap).
func (c *checker) needsOneOf(R map[string]any) bool {
	alts := arr(R["oneOf"])
	return len(alts) > 1 && !c.r.disjoint(alts)
}

// checkMaps compares two keyword maps without allOf/$ref on the reader
// side and with the writer merged.
func (c *checker) checkMaps(R, W map[string]any, path string, depth int) {
	wv := writerValues(W)
	if wv != nil && len(wv) == 0 {
		return // the writer accepts nothing
	}
	rTypes, rTyped := typeList(R)
	wTypes, wTyped := typeList(W)

	// The kinds of instances the writer may send.
	var kinds []string
	switch {
	case wv != nil:
		for _, v := range wv {
			if k := kindOf(v); !containsStr(kinds, k) {
				kinds = append(kinds, k)
			}
		}
	case wTyped:
		kinds = wTypes
	default:
		kinds = allTypes
	}

	// type
	var bad []any
	for _, k := range kinds {
		if !typeAllows(rTypes, rTyped, k) {
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		switch {
		case wv != nil && !wTyped:
			var vals []any
			for _, v := range wv {
				if !typeAllows(rTypes, rTyped, kindOf(v)) {
					vals = append(vals, v)
				}
			}
			c.add(path, "type changed: %s %s of the %s schema not allowed by type %s", plural(len(vals), "value", "values"), listText(vals), c.wname(), jsonText(rTypes))
		default:
			wDesc := "any"
			if wTyped {
				wDesc = jsonText(wTypes)
			}
			verb := "changed"
			if typesWithin(rTypes, kinds) {
				verb = c.pick("narrowed", "widened")
			}
			o, n := c.oldNew(jsonText(rTypes), wDesc)
			c.add(path, "type %s from %s to %s", verb, o, n)
		}
	}

	// enum / const
	if rv := valuesOf(R); rv != nil {
		kw := "enum"
		if _, ok := R["enum"]; !ok {
			kw = "const"
		}
		switch {
		case wv == nil:
			c.add(path, "%s %s %s", kw, listText(rv), c.pick("added", "removed"))
		default:
			have := map[string]bool{}
			for _, v := range rv {
				have[canon(v)] = true
			}
			var missing []any
			for _, v := range wv {
				if !have[canon(v)] {
					missing = append(missing, v)
				}
			}
			if len(missing) > 0 {
				if kw == "const" && len(rv) == 1 && len(wv) == 1 {
					o, n := c.oldNew(jsonText(rv[0]), jsonText(wv[0]))
					c.add(path, "const changed from %s to %s", o, n)
				} else {
					c.add(path, "enum %s %s", plural(len(missing), "value", "values"), c.pick("removed: ", "added: ")+listText(missing))
				}
			}
		}
	}

	may := func(k string) bool {
		for _, t := range kinds {
			if t == k || (k == "number" && t == "integer") {
				return true
			}
		}
		return false
	}
	intOnly := may("integer") && !containsStr(kinds, "number")
	if may("number") && typeAllows(rTypes, rTyped, "integer") {
		c.checkNumber(R, W, wv, path, intOnly)
	}
	if may("string") && typeAllows(rTypes, rTyped, "string") {
		c.checkString(R, W, wv, path)
	}
	if may("array") && typeAllows(rTypes, rTyped, "array") {
		c.checkArray(R, W, path, depth)
	}
	if may("object") && typeAllows(rTypes, rTyped, "object") {
		c.checkObject(R, W, path, depth)
	}
	c.checkCombinators(R, W, kinds, path, depth)
}

// ---- numbers ----

type bound struct {
	kw   string
	raw  string
	v    *big.Rat // nil: not a number that can be compared
	excl bool
}

func numBound(m map[string]any, kw string, excl bool) *bound {
	x, ok := m[kw]
	if !ok {
		return nil
	}
	r, _ := parseRat(x)
	return &bound{kw: kw, raw: jsonText(x), v: r, excl: excl}
}

// tighter returns the stronger of two bounds (an unreadable one wins).
func tighter(a, b *bound, lower bool) *bound {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	if a.v == nil {
		return a
	}
	if b.v == nil {
		return b
	}
	cmp := a.v.Cmp(b.v)
	if !lower {
		cmp = -cmp
	}
	switch {
	case cmp > 0:
		return a
	case cmp < 0:
		return b
	case b.excl:
		return b
	}
	return a
}

func lowerBound(m map[string]any) *bound {
	return tighter(numBound(m, "minimum", false), numBound(m, "exclusiveMinimum", true), true)
}

func upperBound(m map[string]any) *bound {
	return tighter(numBound(m, "maximum", false), numBound(m, "exclusiveMaximum", true), false)
}

// intBound is the inclusive integer bound equivalent to b for integers.
func intBound(b *bound, lower bool) *big.Rat {
	fl := new(big.Int).Div(b.v.Num(), b.v.Denom()) // Euclidean: floor, denominators are positive
	ce := new(big.Int).Neg(new(big.Int).Div(new(big.Int).Neg(b.v.Num()), b.v.Denom()))
	var r *big.Int
	switch {
	case lower && b.excl:
		r = fl.Add(fl, big.NewInt(1))
	case lower:
		r = ce
	case b.excl:
		r = ce.Sub(ce, big.NewInt(1))
	default:
		r = fl
	}
	return new(big.Rat).SetInt(r)
}

// checkBound reports a reader bound tighter than the writer's.
func (c *checker) checkBound(path string, rb, wb *bound, lower, intOnly bool) {
	if rb == nil {
		return
	}
	what := "upper bound"
	verb := c.pick("lowered", "raised")
	if lower {
		what = "lower bound"
		verb = c.pick("raised", "lowered")
	}
	if wb == nil {
		c.add(path, "%s %s %s", rb.kw, rb.raw, c.pick("added", "removed"))
		return
	}
	if rb.v == nil || wb.v == nil {
		if rb.kw != wb.kw || rb.raw != wb.raw {
			o, n := c.oldNew(rb.kw+" "+rb.raw, wb.kw+" "+wb.raw)
			c.add(path, "%s changed from %s to %s and cannot be compared", what, o, n)
		}
		return
	}
	rv, re, wv, we := rb.v, rb.excl, wb.v, wb.excl
	if intOnly {
		rv, wv = intBound(rb, lower), intBound(wb, lower)
		re, we = false, false
	}
	cmp := rv.Cmp(wv)
	if !lower {
		cmp = -cmp
	}
	if cmp < 0 || (cmp == 0 && (!re || we)) {
		return
	}
	if rb.kw == wb.kw {
		o, n := c.oldNew(rb.raw, wb.raw)
		c.add(path, "%s %s from %s to %s", rb.kw, verb, o, n)
		return
	}
	o, n := c.oldNew(rb.kw+" "+rb.raw, wb.kw+" "+wb.raw)
	c.add(path, "%s %s from %s to %s", what, verb, o, n)
}

func (c *checker) checkNumber(R, W map[string]any, wv []any, path string, intOnly bool) {
	if wv != nil {
		for _, v := range wv {
			k := kindOf(v)
			if k != "number" && k != "integer" {
				continue
			}
			x, ok := parseRat(v)
			if !ok {
				c.add(path, "value %s of the %s schema cannot be compared", jsonText(v), c.wname())
				continue
			}
			if rule := numberRule(R, x); rule != "" {
				c.add(path, "value %s of the %s schema is rejected by %s", jsonText(v), c.wname(), rule)
			}
		}
		return
	}
	c.checkBound(path, lowerBound(R), lowerBound(W), true, intOnly)
	c.checkBound(path, upperBound(R), upperBound(W), false, intOnly)
	if rx, ok := R["multipleOf"]; ok {
		rm, rok := parseRat(rx)
		wx, wok := W["multipleOf"]
		wm, wmok := parseRat(wx)
		switch {
		case rok && rm.Sign() != 0 && wok && wmok && new(big.Rat).Quo(wm, rm).IsInt():
		case rok && rm.Sign() != 0 && intOnly && new(big.Rat).Inv(rm).IsInt():
		case !wok:
			c.add(path, "multipleOf %s %s", jsonText(rx), c.pick("added", "removed"))
		default:
			o, n := c.oldNew(jsonText(rx), jsonText(wx))
			c.add(path, "multipleOf changed from %s to %s", o, n)
		}
	}
}

// numberRule returns the reader rule a number breaks, or "".
func numberRule(R map[string]any, x *big.Rat) string {
	for _, kw := range []string{"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf"} {
		rx, ok := R[kw]
		if !ok {
			continue
		}
		b, ok := parseRat(rx)
		if !ok {
			return kw + " " + jsonText(rx) + " (cannot be compared)"
		}
		cmp := x.Cmp(b)
		broken := false
		switch kw {
		case "minimum":
			broken = cmp < 0
		case "exclusiveMinimum":
			broken = cmp <= 0
		case "maximum":
			broken = cmp > 0
		case "exclusiveMaximum":
			broken = cmp >= 0
		case "multipleOf":
			broken = b.Sign() == 0 || !new(big.Rat).Quo(x, b).IsInt()
		}
		if broken {
			return kw + " " + jsonText(rx)
		}
	}
	return ""
}

// ---- strings ----

// sameIn tells whether one of the groups has keyword kw equal to v.
func sameIn(groups []map[string]any, kw string, v any) bool {
	for _, g := range groups {
		if canon(g[kw]) == canon(v) {
			return true
		}
	}
	return false
}

func (c *checker) checkString(R, W map[string]any, wv []any, path string) {
	if f, ok := R["format"]; ok && !sameIn(writerGroups(W, "format"), "format", f) {
		if _, had := W["format"]; had {
			o, n := c.oldNew(jsonText(f), jsonText(W["format"]))
			c.add(path, "format changed from %s to %s", o, n)
		} else {
			c.add(path, "format %s %s", jsonText(f), c.pick("added", "removed"))
		}
	}
	if wv != nil {
		var re *regexp.Regexp
		p, hasPattern := R["pattern"].(string)
		if hasPattern {
			var err error
			if re, err = regexp.Compile(p); err != nil {
				c.add(path, "pattern %s of the %s schema cannot be evaluated", jsonText(p), c.rname())
				return
			}
		}
		for _, v := range wv {
			s, ok := v.(string)
			if !ok {
				continue
			}
			n := big.NewRat(int64(utf8.RuneCountInString(s)), 1)
			rule := ""
			if b, ok := parseRat(R["minLength"]); ok && n.Cmp(b) < 0 {
				rule = "minLength " + jsonText(R["minLength"])
			} else if b, ok := parseRat(R["maxLength"]); ok && n.Cmp(b) > 0 {
				rule = "maxLength " + jsonText(R["maxLength"])
			} else if re != nil && !re.MatchString(s) {
				rule = "pattern " + jsonText(p)
			}
			if rule != "" {
				c.add(path, "value %s of the %s schema is rejected by %s", jsonText(v), c.wname(), rule)
			}
		}
		return
	}
	c.checkMinCount(path, "minLength", R, W, 0)
	c.checkMaxCount(path, "maxLength", R, W)
	if p, ok := R["pattern"]; ok && !sameIn(writerGroups(W, "pattern"), "pattern", p) {
		if _, had := W["pattern"]; had {
			o, n := c.oldNew(jsonText(p), jsonText(W["pattern"]))
			c.add(path, "pattern changed from %s to %s", o, n)
		} else {
			c.add(path, "pattern %s %s", jsonText(p), c.pick("added", "removed"))
		}
	}
}

// checkMinCount reports a reader lower count (minLength, minItems, ...)
// above the writer's; def is the writer's value when absent.
func (c *checker) checkMinCount(path, kw string, R, W map[string]any, def int64) {
	rx, ok := R[kw]
	if !ok {
		return
	}
	rv, rok := parseRat(rx)
	wx, wok := W[kw]
	wv := big.NewRat(def, 1)
	if wok {
		var ok bool
		if wv, ok = parseRat(wx); !ok {
			wv = nil
		}
	}
	if rok && wv != nil && rv.Cmp(wv) <= 0 {
		return
	}
	if !wok {
		c.add(path, "%s %s %s", kw, jsonText(rx), c.pick("added", "removed"))
		return
	}
	o, n := c.oldNew(jsonText(rx), jsonText(wx))
	c.add(path, "%s %s from %s to %s", kw, c.pick("raised", "lowered"), o, n)
}

// checkMaxCount reports a reader upper count below the writer's.
func (c *checker) checkMaxCount(path, kw string, R, W map[string]any) {
	rx, ok := R[kw]
	if !ok {
		return
	}
	wx, wok := W[kw]
	if !wok {
		c.add(path, "%s %s %s", kw, jsonText(rx), c.pick("added", "removed"))
		return
	}
	rv, rok := parseRat(rx)
	wv, wvok := parseRat(wx)
	if rok && wvok && rv.Cmp(wv) >= 0 {
		return
	}
	o, n := c.oldNew(jsonText(rx), jsonText(wx))
	c.add(path, "%s %s from %s to %s", kw, c.pick("lowered", "raised"), o, n)
}

// ---- arrays ----

// itemsOf returns the tuple schemas and the schema of the items after them.
func itemsOf(m map[string]any, tailKeys ...string) ([]any, any) {
	prefix := arr(m["prefixItems"])
	for _, k := range tailKeys {
		if t, ok := m[k]; ok {
			return prefix, t
		}
	}
	return prefix, true
}

func hasApplicators(m map[string]any) bool {
	for _, k := range []string{"anyOf", "oneOf", "allOf", "not", "if", "dependentSchemas", "dependencies", "$ref", "$dynamicRef", "$recursiveRef"} {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

func (c *checker) checkArray(R, W map[string]any, path string, depth int) {
	c.checkMinCount(path, "minItems", R, W, 0)
	c.checkMaxCount(path, "maxItems", R, W)
	if R["uniqueItems"] == true && W["uniqueItems"] != true {
		c.add(path, "uniqueItems %s", c.pick("added", "removed"))
	}
	// Reader: unevaluatedItems acts like items (stricter when applicators
	// would have evaluated items, which is safe for a reader).
	rPrefix, rTail := itemsOf(R, "items", "unevaluatedItems")
	wTailKeys := []string{"items"}
	if _, contains := W["contains"]; !contains && !hasApplicators(W) {
		wTailKeys = append(wTailKeys, "unevaluatedItems")
	}
	wPrefix, wTail := itemsOf(W, wTailKeys...)
	limit := -1
	if b, ok := parseRat(W["maxItems"]); ok && b.IsInt() && b.Num().IsInt64() {
		limit = int(min(b.Num().Int64(), 1<<30))
	}
	n := max(len(rPrefix), len(wPrefix))
	for i := 0; i < n && (limit < 0 || i < limit); i++ {
		ri, wi := rTail, wTail
		if i < len(rPrefix) {
			ri = rPrefix[i]
		}
		if i < len(wPrefix) {
			wi = wPrefix[i]
		}
		c.descend(ri, wi, fmt.Sprintf("%s/prefixItems/%d", path, i), depth)
	}
	if limit < 0 || n < limit {
		if c.r.isFalse(rTail) && !c.w.isFalse(wTail) {
			c.add(path+"/items", "items beyond the tuple are %s", c.pick("no longer allowed", "now allowed"))
		} else {
			c.descend(rTail, wTail, path+"/items", depth)
		}
	}
	if rc, ok := R["contains"]; ok {
		rmin, _ := parseRat(R["minContains"])
		if _, has := R["minContains"]; !has {
			rmin = big.NewRat(1, 1)
		}
		_, rHasMax := R["maxContains"]
		if rmin != nil && rmin.Sign() == 0 && !rHasMax {
			return
		}
		groups := writerGroups(W, "contains")
		good := false
		for _, g := range groups {
			c.level++
			ok := c.equiv(rc, g["contains"], depth)
			c.level--
			if ok {
				wmin, _ := parseRat(g["minContains"])
				if _, has := g["minContains"]; !has {
					wmin = big.NewRat(1, 1)
				}
				ok = rmin != nil && wmin != nil && wmin.Cmp(rmin) >= 0
			}
			if ok && rHasMax {
				rmax, rok := parseRat(R["maxContains"])
				wmax, wmok := parseRat(g["maxContains"])
				ok = rok && wmok && wmax.Cmp(rmax) <= 0
			}
			if ok {
				good = true
				break
			}
		}
		if !good {
			if len(groups) > 0 {
				c.add(path+"/contains", "contains changed")
			} else {
				c.add(path+"/contains", "contains %s", c.pick("added", "removed"))
			}
		}
	}
}

// ---- objects ----

func propPath(path, name string) string {
	return path + "/properties/" + escapePointer(name)
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// schemasFor returns the subschemas that apply to property name.
func schemasFor(name string, props, patterns map[string]any, additional any) (list []any, declared, viaAdditional bool) {
	if s, ok := props[name]; ok {
		list = append(list, s)
		declared = true
	}
	for _, p := range sortedKeys(patterns) {
		re, err := regexp.Compile(p)
		if err != nil || re.MatchString(name) {
			list = append(list, patterns[p])
		}
	}
	if len(list) == 0 {
		return []any{additional}, false, true
	}
	return list, declared, false
}

func (c *checker) checkObject(R, W map[string]any, path string, depth int) {
	rProps, wProps := obj(R["properties"]), obj(W["properties"])
	rPat, wPat := obj(R["patternProperties"]), obj(W["patternProperties"])
	rAdd := any(true)
	if x, ok := R["additionalProperties"]; ok {
		rAdd = x
	} else if x, ok := R["unevaluatedProperties"]; ok {
		rAdd = x // stricter than the real rule, which is safe for a reader
	}
	wAdd := any(true)
	if x, ok := W["additionalProperties"]; ok {
		wAdd = x
	} else if x, ok := W["unevaluatedProperties"]; ok && !hasApplicators(W) {
		wAdd = x
	}

	// required
	rReq, wReq := stringSet(R["required"]), stringSet(W["required"])
	for _, n := range sortedKeys(rReq) {
		if wReq[n] {
			continue
		}
		if _, declared := wProps[n]; declared {
			c.add(propPath(path, n), "property %s", c.pick("became required", "is no longer required"))
		} else {
			c.add(propPath(path, n), "required property %s", c.pick("added", "removed"))
		}
	}
	c.checkMinCount(path, "minProperties", R, W, 0)
	c.checkMaxCount(path, "maxProperties", R, W)

	// dependentRequired
	rDep, wDep := obj(R["dependentRequired"]), obj(W["dependentRequired"])
	for _, k := range sortedKeys(rDep) {
		have := stringSet(wDep[k])
		var missing []any
		for _, n := range arr(rDep[k]) {
			if s, ok := n.(string); ok && !have[s] && !wReq[s] {
				missing = append(missing, s)
			}
		}
		if len(missing) > 0 {
			c.add(path+"/dependentRequired/"+escapePointer(k), "dependent requirement %s %s", listText(missing), c.pick("added", "removed"))
		}
	}
	// dependentSchemas
	rDS, wDS := obj(R["dependentSchemas"]), obj(W["dependentSchemas"])
	for _, k := range sortedKeys(rDS) {
		p := path + "/dependentSchemas/" + escapePointer(k)
		if ws, ok := wDS[k]; ok {
			c.accepts(rDS[k], ws, p, depth+1)
		} else if !c.r.acceptAll(rDS[k]) {
			c.add(p, "dependent schema %s", c.pick("added", "removed"))
		}
	}
	if rd, ok := R["dependencies"]; ok && canon(rd) != canon(W["dependencies"]) {
		c.add(path+"/dependencies", "dependencies changed")
	}
	// propertyNames
	if rpn, ok := R["propertyNames"]; ok && !c.r.acceptAll(rpn) {
		var wpn any = true
		if x, ok := W["propertyNames"]; ok {
			wpn = x
		}
		if c.w.isFalse(wAdd) && len(wPat) == 0 {
			names := make([]any, 0, len(wProps))
			for _, n := range sortedKeys(wProps) {
				names = append(names, n)
			}
			wpn = conj{wpn, map[string]any{"enum": names}}
		}
		c.descend(rpn, wpn, path+"/propertyNames", depth)
	}

	// Declared properties and the content model.
	names := map[string]bool{}
	for n := range rProps {
		names[n] = true
	}
	for n := range wProps {
		names[n] = true
	}
	for _, n := range sortedKeys(names) {
		rs, rDecl, rViaAdd := schemasFor(n, rProps, rPat, rAdd)
		ws, wDecl, wViaAdd := schemasFor(n, wProps, wPat, wAdd)
		allFalse := true
		for _, s := range ws {
			if !c.w.isFalse(s) {
				allFalse = false
			}
		}
		if allFalse {
			continue // the writer never sends this property
		}
		p := propPath(path, n)
		if !rDecl && rViaAdd && c.r.isFalse(rAdd) {
			c.add(p, "property %s a closed content model", c.pick("removed from", "added to"))
			continue
		}
		if !wDecl && wViaAdd && c.w.acceptAll(wAdd) {
			for _, s := range rs {
				if !c.r.acceptAll(s) {
					c.add(p, "property %s an open content model", c.pick("added to", "removed from"))
					break
				}
			}
			continue
		}
		var wn any = conj(ws)
		if len(ws) == 1 {
			wn = ws[0]
		}
		for _, s := range rs {
			c.descend(s, wn, p, depth)
		}
	}

	// Other properties: patternProperties and additionalProperties.
	writerSendsOthers := !(c.w.isFalse(wAdd) && len(wPat) == 0)
	if !writerSendsOthers || (len(rPat) == 0 && c.r.acceptAll(rAdd)) {
		return
	}
	switch {
	case len(rPat) == 0:
		for _, p := range sortedKeys(wPat) {
			pp := path + "/patternProperties/" + escapePointer(p)
			if c.r.isFalse(rAdd) && !c.w.isFalse(wPat[p]) {
				c.add(pp, "properties matching the pattern are %s", c.pick("no longer allowed", "now allowed"))
				continue
			}
			c.descend(rAdd, wPat[p], pp, depth)
		}
	case sameKeys(rPat, wPat):
		for _, p := range sortedKeys(rPat) {
			c.descend(rPat[p], wPat[p], path+"/patternProperties/"+escapePointer(p), depth)
		}
	default:
		o, n := c.oldNew(keysText(rPat), keysText(wPat))
		c.add(path+"/patternProperties", "patternProperties changed from %s to %s", o, n)
		return
	}
	if c.w.isFalse(wAdd) {
		return
	}
	if c.r.isFalse(rAdd) {
		c.add(path+"/additionalProperties", "content model %s", c.pick("closed: additional properties are no longer allowed", "opened: additional properties are now allowed"))
		return
	}
	c.descend(rAdd, wAdd, path+"/additionalProperties", depth)
}

// ---- combinators ----

func (c *checker) checkCombinators(R, W map[string]any, kinds []string, path string, depth int) {
	// anyOf, and oneOf whose alternatives cannot overlap: some alternative
	// of the reader must accept each kind of the writer's instances.
	for _, kw := range []string{"anyOf", "oneOf"} {
		alts := arr(R[kw])
		if len(alts) < 2 {
			continue
		}
		if kw == "oneOf" && !c.r.disjoint(alts) {
			c.checkOneOf(R, W, path, depth)
			continue
		}
		if !c.someAlternative(alts, W, kinds, depth) {
			c.add(path+"/"+kw, "%s changed: no alternative of the %s schema accepts every value the %s schema allows", kw, c.rname(), c.wname())
		}
	}
	if rn, ok := R["not"]; ok {
		groups := writerGroups(W, "not")
		found := false
		for _, g := range groups {
			// not rn holds when rn accepts nothing that g.not rejects.
			if c.swapped().try(g["not"], rn, depth) {
				found = true
				break
			}
		}
		switch {
		case found:
		case len(groups) == 0:
			c.add(path+"/not", "not %s", c.pick("added", "removed"))
		default:
			c.add(path+"/not", "not changed")
		}
	}
	if ri, ok := R["if"]; ok {
		groups := writerGroups(W, "if")
		var match map[string]any
		for _, g := range groups {
			if c.equiv(ri, g["if"], depth) {
				match = g
				break
			}
		}
		switch {
		case match != nil:
			for _, k := range []string{"then", "else"} {
				var rs, ws any = true, true
				if x, ok := R[k]; ok {
					rs = x
				}
				if x, ok := match[k]; ok {
					ws = x
				}
				c.accepts(rs, ws, path+"/"+k, depth+1)
			}
		case len(groups) == 0:
			c.add(path+"/if", "if/then/else %s", c.pick("added", "removed"))
		default:
			c.add(path+"/if", "if/then/else changed: the if conditions differ")
		}
	}
}

// someAlternative tells whether, for each kind of instance the writer may
// send, one of the reader's alternatives accepts all of them.
func (c *checker) someAlternative(alts []any, W map[string]any, kinds []string, depth int) bool {
	parts := []map[string]any{W}
	if len(kinds) > 1 {
		parts = parts[:0]
		for _, k := range kinds {
			m := make(map[string]any, len(W)+1)
			for key, v := range W {
				m[key] = v
			}
			m["type"] = []any{k}
			parts = append(parts, m)
		}
	}
	for _, wp := range parts {
		ok := false
		for _, a := range alts {
			if c.try(a, wp, depth) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// checkOneOf accepts a oneOf whose alternatives are each equivalent to one
// of the writer's oneOf.
func (c *checker) checkOneOf(R, W map[string]any, path string, depth int) {
	ralts := arr(R["oneOf"])
	groups := writerGroups(W, "oneOf")
	if len(groups) == 0 {
		c.add(path+"/oneOf", "oneOf %s", c.pick("added", "removed"))
		return
	}
	for _, g := range groups {
		walts := arr(g["oneOf"])
		if len(ralts) != len(walts) {
			continue
		}
		used := make([]bool, len(walts))
		matched := 0
		for _, ra := range ralts {
			for j, wa := range walts {
				if !used[j] && c.equiv(ra, wa, depth) {
					used[j] = true
					matched++
					break
				}
			}
		}
		if matched == len(ralts) {
			return
		}
	}
	c.add(path+"/oneOf", "oneOf changed: the alternatives of the old and new schema differ")
}

// disjoint tells whether no instance can match two of the alternatives
// (they differ by type or by their enum/const values).
func (d *document) disjoint(alts []any) bool {
	type dom struct {
		none  bool
		kinds []string // nil: any
		vals  map[string]bool
	}
	doms := make([]dom, len(alts))
	for i, a := range alts {
		m, ok := d.mergeWriter(a).(map[string]any)
		if !ok {
			doms[i].none = true
			continue
		}
		if vs := writerValues(m); vs != nil {
			doms[i].vals = map[string]bool{}
			for _, v := range vs {
				doms[i].vals[canon(v)] = true
				if k := kindOf(v); !containsStr(doms[i].kinds, k) {
					doms[i].kinds = append(doms[i].kinds, k)
				}
			}
			if len(vs) == 0 {
				doms[i].none = true
			}
		} else if ts, ok := typeList(m); ok {
			doms[i].kinds = ts
		}
	}
	overlap := func(a, b []string) bool {
		if a == nil || b == nil {
			return true
		}
		for _, x := range a {
			for _, y := range b {
				if x == y || (x == "integer" && y == "number") || (x == "number" && y == "integer") {
					return true
				}
			}
		}
		return false
	}
	for i := range doms {
		for j := i + 1; j < len(doms); j++ {
			a, b := doms[i], doms[j]
			if a.none || b.none {
				continue
			}
			if a.vals != nil && b.vals != nil {
				common := false
				for v := range a.vals {
					if b.vals[v] {
						common = true
						break
					}
				}
				if !common {
					continue
				}
			}
			if overlap(a.kinds, b.kinds) {
				return false
			}
		}
	}
	return true
}

// ---- values and helpers ----

// valuesOf returns the values allowed by enum and const, or nil when
// they are not restricted.
func valuesOf(m map[string]any) []any {
	cv, hasConst := m["const"]
	ev, hasEnum := m["enum"].([]any)
	switch {
	case hasConst && hasEnum:
		for _, v := range ev {
			if canon(v) == canon(cv) {
				return []any{cv}
			}
		}
		return []any{}
	case hasConst:
		return []any{cv}
	case hasEnum:
		return append([]any{}, ev...)
	}
	return nil
}

// writerValues is valuesOf without the values that the schema's type and
// scalar rules reject.
func writerValues(m map[string]any) []any {
	vs := valuesOf(m)
	if vs == nil {
		return nil
	}
	ts, typed := typeList(m)
	out := []any{}
	seen := map[string]bool{}
	for _, v := range vs {
		k := canon(v)
		if typeAllows(ts, typed, kindOf(v)) && !scalarRejects(m, v) && !seen[k] {
			seen[k] = true
			out = append(out, v)
		}
	}
	return out
}

// scalarRejects tells whether the number or string rules of m surely
// reject v.
func scalarRejects(m map[string]any, v any) bool {
	switch x := v.(type) {
	case json.Number, float64:
		n, ok := parseRat(x)
		if !ok {
			return false
		}
		for _, kw := range []string{"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf"} {
			b, ok := parseRat(m[kw])
			if !ok {
				continue
			}
			cmp := n.Cmp(b)
			switch {
			case kw == "minimum" && cmp < 0, kw == "exclusiveMinimum" && cmp <= 0,
				kw == "maximum" && cmp > 0, kw == "exclusiveMaximum" && cmp >= 0,
				kw == "multipleOf" && b.Sign() != 0 && !new(big.Rat).Quo(n, b).IsInt():
				return true
			}
		}
	case string:
		l := big.NewRat(int64(utf8.RuneCountInString(x)), 1)
		if b, ok := parseRat(m["minLength"]); ok && l.Cmp(b) < 0 {
			return true
		}
		if b, ok := parseRat(m["maxLength"]); ok && l.Cmp(b) > 0 {
			return true
		}
		if p, ok := m["pattern"].(string); ok {
			if re, err := regexp.Compile(p); err == nil && !re.MatchString(x) {
				return true
			}
		}
	}
	return false
}

// writerEmpty tells whether a merged writer map surely accepts nothing.
func writerEmpty(m map[string]any) bool {
	if ts, typed := typeList(m); typed && len(ts) == 0 {
		return true
	}
	if vs := writerValues(m); vs != nil && len(vs) == 0 {
		return true
	}
	return false
}

func typeList(m map[string]any) ([]string, bool) {
	switch t := m["type"].(type) {
	case string:
		return []string{t}, true
	case []any:
		out := []string{}
		for _, x := range t {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out, true
	}
	return nil, false
}

// typeAllows tells whether a type list allows instances of kind k.
func typeAllows(ts []string, typed bool, k string) bool {
	if !typed {
		return true
	}
	return containsStr(ts, k) || (k == "integer" && containsStr(ts, "number"))
}

// typesWithin tells whether every type of ts is one of the kinds.
func typesWithin(ts, kinds []string) bool {
	for _, t := range ts {
		if !typeAllows(kinds, true, t) {
			return false
		}
	}
	return true
}

func kindOf(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case json.Number:
		if r, ok := parseRat(x); ok && r.IsInt() {
			return "integer"
		}
		return "number"
	case float64:
		if x == float64(int64(x)) {
			return "integer"
		}
		return "number"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "unknown"
}

// parseRat reads a JSON number; absurd exponents are refused.
func parseRat(v any) (*big.Rat, bool) {
	var s string
	switch x := v.(type) {
	case json.Number:
		s = string(x)
	case float64:
		return new(big.Rat).SetFloat64(x), !(x != x)
	default:
		return nil, false
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(strings.TrimPrefix(s[i+1:], "+"))
		if err != nil || e > 400 || e < -400 {
			return nil, false
		}
	}
	return new(big.Rat).SetString(s)
}

// canon is a canonical text of a JSON value: equal values (1 and 1.0
// included) have equal texts.
func canon(v any) string {
	var b strings.Builder
	writeCanon(&b, v)
	return b.String()
}

func writeCanon(b *strings.Builder, v any) {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case string:
		b.WriteString(strconv.Quote(x))
	case json.Number, float64:
		if r, ok := parseRat(x); ok {
			b.WriteString("n" + r.RatString())
		} else {
			b.WriteString("n?" + fmt.Sprint(x))
		}
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			writeCanon(b, e)
		}
		b.WriteByte(']')
	case map[string]any:
		b.WriteByte('{')
		for i, k := range sortedKeys(x) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Quote(k))
			b.WriteByte(':')
			writeCanon(b, x[k])
		}
		b.WriteByte('}')
	default:
		fmt.Fprintf(b, "?%v", x)
	}
}

// nodeKey identifies a node for cycle detection: by its keywords, with
// subschemas and large lists by identity. Equal keys mean equal schemas
// (of one document), so assuming a pair with the same key holds is safe.
func nodeKey(n any) string {
	switch v := n.(type) {
	case map[string]any:
		var b strings.Builder
		b.WriteByte('{')
		for _, k := range sortedKeys(v) {
			b.WriteString(strconv.Quote(k))
			b.WriteByte(':')
			b.WriteString(valueKey(v[k]))
			b.WriteByte(',')
		}
		b.WriteByte('}')
		return b.String()
	case conj:
		keys := make([]string, len(v))
		for i, p := range v {
			keys[i] = valueKey(p)
		}
		return "(" + strings.Join(keys, "&") + ")"
	}
	return valueKey(n)
}

func valueKey(x any) string {
	switch v := x.(type) {
	case map[string]any:
		return "m" + strconv.FormatUint(uint64(reflect.ValueOf(v).Pointer()), 16)
	case conj:
		return nodeKey(v)
	case []any:
		if len(v) > 64 {
			return "s" + strconv.FormatUint(uint64(reflect.ValueOf(v).Pointer()), 16) + ":" + strconv.Itoa(len(v))
		}
		keys := make([]string, len(v))
		for i, e := range v {
			keys[i] = valueKey(e)
		}
		return "[" + strings.Join(keys, ",") + "]"
	}
	return canon(x)
}

func jsonText(v any) string {
	if s, ok := v.([]string); ok {
		if s == nil {
			s = []string{}
		}
		b, _ := json.Marshal(s)
		return string(b)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func listText(vals []any) string {
	parts := make([]string, 0, min(len(vals), maxListed)+1)
	for i, v := range vals {
		if i == maxListed {
			parts = append(parts, fmt.Sprintf("… %d more", len(vals)-maxListed))
			break
		}
		parts = append(parts, jsonText(v))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func keysText(m map[string]any) string {
	keys := sortedKeys(m)
	vals := make([]any, len(keys))
	for i, k := range keys {
		vals[i] = k
	}
	return listText(vals)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func arr(x any) []any {
	a, _ := x.([]any)
	return a
}

func obj(x any) map[string]any {
	m, _ := x.(map[string]any)
	return m
}

func stringSet(x any) map[string]bool {
	set := map[string]bool{}
	for _, v := range arr(x) {
		if s, ok := v.(string); ok {
			set[s] = true
		}
	}
	return set
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func sameKeys(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
