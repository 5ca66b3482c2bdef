package schema

import (
	"bytes"
	"errors"
	"io"
	"math/big"
	"slices"
	"sync"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// The fast path: most event schemas are objects of typed properties with
// required names, string lengths and patterns, integer bounds and string
// enums. For those, Validate first checks the data in one streaming pass
// over its bytes, with no intermediate tree, and answers at once when the
// data conforms. Anything the fast path cannot decide, it refuses, and the
// library then decides (and explains): the fast path may only ever accept
// what the library accepts, never the other way round
// (FuzzFastPathNeverAcceptsWhatTheLibraryRefuses checks it). Schemas using
// any keyword outside the subset have no fast path at all.

// JSON types, as bits.
const (
	fNull uint8 = 1 << iota
	fBool
	fNumber // any number (integers included)
	fInteger
	fString
	fArray
	fObject
	fAll = fNull | fBool | fNumber | fInteger | fString | fArray | fObject
)

// maxFastDepth bounds the nesting the fast path compiles and walks.
const maxFastDepth = 32

type fastNode struct {
	always, never bool // boolean schemas
	types         uint8

	// object
	props      map[string]*fastNode
	required   map[string]uint // bit of each required name
	allReq     uint64
	extra      *fastNode // additionalProperties schema; nil: any
	noExtra    bool      // additionalProperties: false
	minP, maxP int       // -1: none

	// array
	items      *fastNode // nil: any
	minI, maxI int

	// string
	minL, maxL int
	pattern    jsonschema.Regexp
	enum       []string // nil: no enum; only string enums are compiled

	// integer bounds (the fast path only accepts integer literals where a
	// bound applies)
	bounded        bool
	lo, hi         int64
	hasLo, hasHi   bool
	loExcl, hiExcl bool
}

func intOf(r *big.Rat) (int64, bool) {
	if r == nil || !r.IsInt() || !r.Num().IsInt64() {
		return 0, false
	}
	return r.Num().Int64(), true
}

func optInt(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

// compileFast returns the fast path of s, or nil when s uses anything
// outside the subset.
func compileFast(s *jsonschema.Schema, depth int) *fastNode {
	if s == nil || depth > maxFastDepth {
		return nil
	}
	if s.Bool != nil {
		return &fastNode{always: *s.Bool, never: !*s.Bool}
	}
	if s.DraftVersion < 2019 || s.Ref != nil || s.RecursiveRef != nil || s.DynamicRef != nil || s.Const != nil || s.Not != nil ||
		len(s.AllOf) > 0 || len(s.AnyOf) > 0 || len(s.OneOf) > 0 || s.If != nil || s.Then != nil || s.Else != nil || s.Format != nil ||
		s.PropertyNames != nil || len(s.PatternProperties) > 0 || len(s.Dependencies) > 0 || len(s.DependentRequired) > 0 ||
		len(s.DependentSchemas) > 0 || s.UnevaluatedProperties != nil || s.UniqueItems || s.Contains != nil || s.MinContains != nil ||
		s.MaxContains != nil || s.Items != nil || s.AdditionalItems != nil || len(s.PrefixItems) > 0 || s.UnevaluatedItems != nil ||
		s.ContentEncoding != nil || s.ContentMediaType != nil || s.ContentSchema != nil || s.MultipleOf != nil || len(s.Extensions) > 0 ||
		len(s.Required) > 64 {
		return nil
	}
	n := &fastNode{types: fAll, minP: optInt(s.MinProperties), maxP: optInt(s.MaxProperties), minI: optInt(s.MinItems), maxI: optInt(s.MaxItems),
		minL: optInt(s.MinLength), maxL: optInt(s.MaxLength), pattern: s.Pattern}
	if s.Types != nil && !s.Types.IsEmpty() {
		n.types = 0
		for _, t := range s.Types.ToStrings() {
			switch t {
			case "null":
				n.types |= fNull
			case "boolean":
				n.types |= fBool
			case "number":
				n.types |= fNumber | fInteger
			case "integer":
				n.types |= fInteger
			case "string":
				n.types |= fString
			case "array":
				n.types |= fArray
			case "object":
				n.types |= fObject
			default:
				return nil
			}
		}
	}
	if s.Enum != nil {
		n.enum = []string{}
		for _, v := range s.Enum.Values {
			str, ok := v.(string)
			if !ok {
				return nil
			}
			n.enum = append(n.enum, str)
		}
	}
	for _, b := range []struct {
		r    *big.Rat
		v    *int64
		has  *bool
		excl bool
		ex   *bool
	}{{s.Minimum, &n.lo, &n.hasLo, false, &n.loExcl}, {s.ExclusiveMinimum, &n.lo, &n.hasLo, true, &n.loExcl},
		{s.Maximum, &n.hi, &n.hasHi, false, &n.hiExcl}, {s.ExclusiveMaximum, &n.hi, &n.hasHi, true, &n.hiExcl}} {
		if b.r == nil {
			continue
		}
		v, ok := intOf(b.r)
		if !ok || *b.has { // a non-integer bound, or both inclusive and exclusive: leave it to the library
			return nil
		}
		*b.v, *b.has, *b.ex = v, true, b.excl
		n.bounded = true
	}
	if len(s.Properties) > 0 {
		n.props = make(map[string]*fastNode, len(s.Properties))
		for name, ps := range s.Properties {
			c := compileFast(ps, depth+1)
			if c == nil {
				return nil
			}
			n.props[name] = c
		}
	}
	if len(s.Required) > 0 {
		n.required = make(map[string]uint, len(s.Required))
		for i, name := range s.Required {
			n.required[name] = uint(i)
			n.allReq |= 1 << uint(i)
		}
	}
	switch ap := s.AdditionalProperties.(type) {
	case nil:
	case bool:
		n.noExtra = !ap
	case *jsonschema.Schema:
		if n.extra = compileFast(ap, depth+1); n.extra == nil {
			return nil
		}
	default:
		return nil
	}
	if s.Items2020 != nil {
		if n.items = compileFast(s.Items2020, depth+1); n.items == nil {
			return nil
		}
	}
	return n
}

var errFast = errors.New("not decided by the fast path")

var decoders = sync.Pool{New: func() any { return jsontext.NewDecoder(bytes.NewReader(nil)) }}

// accepts reports whether data certainly conforms; false means "ask the
// library".
func (n *fastNode) accepts(data []byte) bool {
	d := decoders.Get().(*jsontext.Decoder)
	defer decoders.Put(d)
	d.Reset(bytes.NewReader(data))
	if n.value(d, 0) != nil {
		return false
	}
	_, err := d.ReadToken()
	return err == io.EOF
}

// value checks the next value of d.
func (n *fastNode) value(d *jsontext.Decoder, depth int) error {
	if n.never || depth > maxFastDepth {
		return errFast
	}
	if n.always {
		return d.SkipValue()
	}
	switch d.PeekKind() {
	case 'n':
		if n.types&fNull == 0 || n.enum != nil {
			return errFast
		}
		_, err := d.ReadToken()
		return err
	case 't', 'f':
		if n.types&fBool == 0 || n.enum != nil {
			return errFast
		}
		_, err := d.ReadToken()
		return err
	case '"':
		if n.types&fString == 0 {
			return errFast
		}
		tok, err := d.ReadToken()
		if err != nil {
			return err
		}
		return n.str(tok.String())
	case '0':
		if n.types&(fNumber|fInteger) == 0 || n.enum != nil {
			return errFast
		}
		tok, err := d.ReadToken()
		if err != nil {
			return err
		}
		return n.number(tok)
	case '{':
		if n.types&fObject == 0 || n.enum != nil {
			return errFast
		}
		return n.object(d, depth)
	case '[':
		if n.types&fArray == 0 || n.enum != nil {
			return errFast
		}
		return n.array(d, depth)
	}
	return errFast
}

func (n *fastNode) str(s string) error {
	if n.minL >= 0 || n.maxL >= 0 {
		l := utf8.RuneCountInString(s)
		if (n.minL >= 0 && l < n.minL) || (n.maxL >= 0 && l > n.maxL) {
			return errFast
		}
	}
	if n.pattern != nil && !n.pattern.MatchString(s) {
		return errFast
	}
	if n.enum != nil && !slices.Contains(n.enum, s) {
		return errFast
	}
	return nil
}

// number accepts integer literals (and, where the type is number and no
// bound applies, any number); the rest goes to the library.
func (n *fastNode) number(tok jsontext.Token) error {
	v, err := tok.Int()
	if err != nil {
		// Not an integer literal within int64: decided here only where no
		// bound applies, a fraction or exponent only for a number type
		// (1.0 is an integer to JSON Schema: the library says so).
		if n.bounded || (!isIntegerLiteral(tok.String()) && n.types&fNumber == 0) {
			return errFast
		}
		return nil
	}
	if (n.hasLo && (v < n.lo || (n.loExcl && v == n.lo))) || (n.hasHi && (v > n.hi || (n.hiExcl && v == n.hi))) {
		return errFast
	}
	return nil
}

// isIntegerLiteral reports a JSON number with no fraction and no exponent.
func isIntegerLiteral(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '.' || c == 'e' || c == 'E' {
			return false
		}
	}
	return true
}

func (n *fastNode) object(d *jsontext.Decoder, depth int) error {
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	var seen uint64
	count := 0
	for d.PeekKind() != '}' {
		tok, err := d.ReadToken()
		if err != nil {
			return err
		}
		name := tok.String()
		count++
		if bit, ok := n.required[name]; ok {
			seen |= 1 << bit
		}
		child, ok := n.props[name]
		switch {
		case ok:
			err = child.value(d, depth+1)
		case n.noExtra:
			return errFast
		case n.extra != nil:
			err = n.extra.value(d, depth+1)
		default:
			err = d.SkipValue()
		}
		if err != nil {
			return err
		}
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	if seen != n.allReq || (n.minP >= 0 && count < n.minP) || (n.maxP >= 0 && count > n.maxP) {
		return errFast
	}
	return nil
}

func (n *fastNode) array(d *jsontext.Decoder, depth int) error {
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	count := 0
	for d.PeekKind() != ']' {
		var err error
		if n.items != nil {
			err = n.items.value(d, depth+1)
		} else {
			err = d.SkipValue()
		}
		if err != nil {
			return err
		}
		count++
	}
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	if (n.minI >= 0 && count < n.minI) || (n.maxI >= 0 && count > n.maxI) {
		return errFast
	}
	return nil
}
