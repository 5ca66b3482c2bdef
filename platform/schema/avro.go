package schema

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/hamba/avro/v2"
	"google.golang.org/protobuf/encoding/protowire"
)

// maxAvroItems bounds the array items and map entries of one value, so
// that a block count cannot make a decoder loop on items of no bytes.
const maxAvroItems = 1 << 20

// Avro is a compiled Avro schema.
type Avro struct {
	Schema avro.Schema
}

// CompileAvro parses an Avro schema (JSON text). Each schema gets its own
// name cache: versions redefine the same named types.
func CompileAvro(text string) (*Avro, error) {
	if len(text) > MaxSize {
		return nil, fmt.Errorf("schema is %d bytes, more than the %d allowed", len(text), MaxSize)
	}
	if strings.TrimSpace(text) == "" {
		return nil, errors.New("schema is empty: an Avro schema as JSON text is required")
	}
	s, err := avro.ParseWithCache(text, "", &avro.SchemaCache{})
	if err != nil {
		return nil, fmt.Errorf("not a valid Avro schema: %v", err)
	}
	return &Avro{Schema: s}, nil
}

// Validate decodes data as one value of the schema in Avro's binary
// encoding. Malformed values, invalid UTF-8 strings, enum indexes or union
// branches out of range and bytes after the value are refused with the JSON
// pointer of the value (/items/0/sku).
func (a *Avro) Validate(data []byte) []Violation {
	d := avroDecoder{b: data}
	if err := d.value(a.Schema, "", 0); err != nil {
		var v *avroError
		if errors.As(err, &v) {
			return []Violation{{InstanceLocation: nonEmpty(v.path), KeywordLocation: v.rule, Message: v.msg}}
		}
		return []Violation{{InstanceLocation: "/", Message: err.Error()}}
	}
	if d.pos != len(data) {
		return []Violation{{InstanceLocation: "/", KeywordLocation: schemaName(a.Schema), Message: fmt.Sprintf("%d trailing bytes after the value", len(data)-d.pos)}}
	}
	return nil
}

// JSON renders data (valid for the schema) in Avro's JSON encoding: unions
// as {"branch": value} (null as null), bytes and fixed as strings of code
// points 0-255.
func (a *Avro) JSON(data []byte) ([]byte, error) {
	d := avroDecoder{b: data, out: new(bytes.Buffer)}
	if err := d.value(a.Schema, "", 0); err != nil {
		return nil, err
	}
	if d.pos != len(data) {
		return nil, fmt.Errorf("%d trailing bytes after the value", len(data)-d.pos)
	}
	return d.out.Bytes(), nil
}

func nonEmpty(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

type avroError struct{ path, rule, msg string }

func (e *avroError) Error() string { return nonEmpty(e.path) + ": " + e.msg }

type avroDecoder struct {
	b     []byte
	pos   int
	items int
	out   *bytes.Buffer // nil: validate only
}

func (d *avroDecoder) fail(path string, s avro.Schema, format string, args ...any) error {
	return &avroError{path: path, rule: schemaName(s), msg: fmt.Sprintf(format, args...)}
}

func schemaName(s avro.Schema) string {
	if n, ok := s.(avro.NamedSchema); ok {
		return n.FullName()
	}
	return string(s.Type())
}

func (d *avroDecoder) write(s string) {
	if d.out != nil {
		d.out.WriteString(s)
	}
}

func (d *avroDecoder) long(path string, s avro.Schema) (int64, error) {
	v, n := protowire.ConsumeVarint(d.b[d.pos:])
	if n < 0 {
		return 0, d.fail(path, s, "malformed %s: %v", s.Type(), protowire.ParseError(n))
	}
	d.pos += n
	return protowire.DecodeZigZag(v), nil
}

func (d *avroDecoder) take(n int64, path string, s avro.Schema) ([]byte, error) {
	if n < 0 || n > int64(len(d.b)-d.pos) {
		return nil, d.fail(path, s, "%s of %d bytes, but %d remain", s.Type(), n, len(d.b)-d.pos)
	}
	v := d.b[d.pos : d.pos+int(n)]
	d.pos += int(n)
	return v, nil
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// latin1 is Avro's JSON form of bytes: each byte a code point.
func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return jsonString(string(r))
}

func floatJSON(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return `"NaN"`
	case math.IsInf(f, 1):
		return `"Infinity"`
	case math.IsInf(f, -1):
		return `"-Infinity"`
	}
	return strconv.FormatFloat(f, 'g', -1, bits)
}

func (d *avroDecoder) value(s avro.Schema, path string, depth int) error {
	if depth > maxDataDepth {
		return d.fail(path, s, "nested more than %d levels deep", maxDataDepth)
	}
	switch s := s.(type) {
	case *avro.RefSchema:
		return d.value(s.Schema(), path, depth+1)
	case *avro.NullSchema:
		d.write("null")
		return nil
	case *avro.PrimitiveSchema:
		return d.primitive(s, path)
	case *avro.RecordSchema:
		d.write("{")
		for i, f := range s.Fields() {
			if i > 0 {
				d.write(",")
			}
			d.write(jsonString(f.Name()) + ":")
			if err := d.value(f.Type(), path+"/"+f.Name(), depth+1); err != nil {
				return err
			}
		}
		d.write("}")
		return nil
	case *avro.EnumSchema:
		i, err := d.long(path, s)
		if err != nil {
			return err
		}
		if i < 0 || i >= int64(len(s.Symbols())) {
			return d.fail(path, s, "enum index %d out of range: %s has %d symbols", i, s.FullName(), len(s.Symbols()))
		}
		d.write(jsonString(s.Symbols()[i]))
		return nil
	case *avro.FixedSchema:
		v, err := d.take(int64(s.Size()), path, s)
		if err != nil {
			return err
		}
		if d.out != nil {
			d.write(latin1(v))
		}
		return nil
	case *avro.ArraySchema:
		d.write("[")
		err := d.blocks(s, path, func(i int, p string) error {
			if i > 0 {
				d.write(",")
			}
			return d.value(s.Items(), p, depth+1)
		}, false)
		d.write("]")
		return err
	case *avro.MapSchema:
		d.write("{")
		err := d.blocks(s, path, func(i int, p string) error {
			return d.value(s.Values(), p, depth+1)
		}, true)
		d.write("}")
		return err
	case *avro.UnionSchema:
		i, err := d.long(path, s)
		if err != nil {
			return err
		}
		types := s.Types()
		if i < 0 || i >= int64(len(types)) {
			return d.fail(path, s, "union branch %d out of range: the union has %d branches", i, len(types))
		}
		b := types[i]
		if b.Type() == avro.Null {
			d.write("null")
			return nil
		}
		d.write("{" + jsonString(branchName(b)) + ":")
		if err := d.value(b, path, depth+1); err != nil {
			return err
		}
		d.write("}")
		return nil
	}
	return d.fail(path, s, "unsupported Avro type %s", s.Type())
}

func branchName(s avro.Schema) string {
	if r, ok := s.(*avro.RefSchema); ok {
		s = r.Schema()
	}
	if n, ok := s.(avro.NamedSchema); ok {
		return n.FullName()
	}
	return string(s.Type())
}

// blocks reads an array's or map's blocks: a count, (when negative) a
// byte size, then the items; a zero count ends them.
func (d *avroDecoder) blocks(s avro.Schema, path string, item func(i int, path string) error, isMap bool) error {
	i := 0
	for {
		n, err := d.long(path, s)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if n < 0 {
			if n == math.MinInt64 {
				return d.fail(path, s, "malformed block count")
			}
			n = -n
			if _, err := d.long(path, s); err != nil {
				return err
			}
		}
		if n > maxAvroItems || d.items+int(n) > maxAvroItems {
			return d.fail(path, s, "more than %d items", maxAvroItems)
		}
		d.items += int(n)
		for j := int64(0); j < n; j++ {
			p := path + "/" + strconv.Itoa(i)
			if isMap {
				size, err := d.long(p, s)
				if err != nil {
					return err
				}
				k, err := d.take(size, p, s)
				if err != nil {
					return err
				}
				if !utf8.Valid(k) {
					return d.fail(p, s, "map key is not valid UTF-8")
				}
				if i > 0 {
					d.write(",")
				}
				d.write(jsonString(string(k)) + ":")
				p = path + "/" + escapePointer(string(k))
			}
			if err := item(i, p); err != nil {
				return err
			}
			i++
		}
	}
}

func (d *avroDecoder) primitive(s *avro.PrimitiveSchema, path string) error {
	switch s.Type() {
	case avro.Null:
		d.write("null")
	case avro.Boolean:
		v, err := d.take(1, path, s)
		if err != nil {
			return err
		}
		switch v[0] {
		case 0:
			d.write("false")
		case 1:
			d.write("true")
		default:
			return d.fail(path, s, "boolean byte is %d, not 0 or 1", v[0])
		}
	case avro.Int, avro.Long:
		v, err := d.long(path, s)
		if err != nil {
			return err
		}
		if s.Type() == avro.Int && (v < math.MinInt32 || v > math.MaxInt32) {
			return d.fail(path, s, "int value %d out of 32-bit range", v)
		}
		d.write(strconv.FormatInt(v, 10))
	case avro.Float:
		v, err := d.take(4, path, s)
		if err != nil {
			return err
		}
		d.write(floatJSON(float64(math.Float32frombits(binary.LittleEndian.Uint32(v))), 32))
	case avro.Double:
		v, err := d.take(8, path, s)
		if err != nil {
			return err
		}
		d.write(floatJSON(math.Float64frombits(binary.LittleEndian.Uint64(v)), 64))
	case avro.Bytes, avro.String:
		n, err := d.long(path, s)
		if err != nil {
			return err
		}
		v, err := d.take(n, path, s)
		if err != nil {
			return err
		}
		if s.Type() == avro.String {
			if !utf8.Valid(v) {
				return d.fail(path, s, "string is not valid UTF-8")
			}
			d.write(jsonString(string(v)))
		} else if d.out != nil {
			d.write(latin1(v))
		}
	default:
		return d.fail(path, s, "unsupported Avro type %s", s.Type())
	}
	return nil
}

// avroIssues lists why data written with writer may not be read with
// reader under the Avro specification's schema resolution (the library's
// check), at the deepest record field, array items or map values where
// the break is.
func avroIssues(reader, writer avro.Schema) []issue {
	sc := avro.NewSchemaCompatibility()
	err := sc.Compatible(reader, writer)
	if err == nil {
		return nil
	}
	path := ""
	for {
		r, w, p, ok := avroDeeper(sc, reader, writer)
		if !ok {
			break
		}
		reader, writer, path = r, w, path+p
		err = sc.Compatible(reader, writer)
	}
	return []issue{{path: nonEmpty(path), msg: err.Error()}}
}

func deref(s avro.Schema) avro.Schema {
	if r, ok := s.(*avro.RefSchema); ok {
		return r.Schema()
	}
	return s
}

// avroDeeper finds a part of an incompatible pair that is itself
// incompatible.
func avroDeeper(sc *avro.SchemaCompatibility, reader, writer avro.Schema) (avro.Schema, avro.Schema, string, bool) {
	reader, writer = deref(reader), deref(writer)
	switch r := reader.(type) {
	case *avro.RecordSchema:
		w, ok := writer.(*avro.RecordSchema)
		if !ok {
			return nil, nil, "", false
		}
		for _, rf := range r.Fields() {
			for _, wf := range w.Fields() {
				if wf.Name() == rf.Name() || containsString(rf.Aliases(), wf.Name()) {
					if sc.Compatible(rf.Type(), wf.Type()) != nil {
						return rf.Type(), wf.Type(), "/" + rf.Name(), true
					}
				}
			}
		}
	case *avro.ArraySchema:
		if w, ok := writer.(*avro.ArraySchema); ok && sc.Compatible(r.Items(), w.Items()) != nil {
			return r.Items(), w.Items(), "/items", true
		}
	case *avro.MapSchema:
		if w, ok := writer.(*avro.MapSchema); ok && sc.Compatible(r.Values(), w.Values()) != nil {
			return r.Values(), w.Values(), "/values", true
		}
	}
	return nil, nil, "", false
}

func containsString(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
