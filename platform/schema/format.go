package schema

import (
	"encoding/json"

	"errors"
	"fmt"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/dynamicpb"
	"mime"
	"sort"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// Definition is one schema version in any format, as the registry holds it.
type Definition struct {
	Format      registryv1.SchemaFormat
	Text        string                     // JSON Schema or Avro schema
	Protobuf    *registryv1.ProtobufSchema // PROTOBUF
	ContentType string                     // NONE
}

// Normalize maps UNSPECIFIED to JSON_SCHEMA.
func Normalize(f registryv1.SchemaFormat) registryv1.SchemaFormat {
	if f == registryv1.SchemaFormat_SCHEMA_FORMAT_UNSPECIFIED {
		return registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA
	}
	return f
}

// FormatName is the format without its enum prefix (JSON_SCHEMA, ...).
func FormatName(f registryv1.SchemaFormat) string {
	switch Normalize(f) {
	case registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA:
		return "JSON_SCHEMA"
	case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
		return "PROTOBUF"
	case registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO:
		return "AVRO"
	case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
		return "NONE"
	}
	return fmt.Sprintf("format %d", int32(f))
}

// TypeDefinition is the latest schema of an event type.
func TypeDefinition(et *registryv1.EventType) Definition {
	return Definition{Format: Normalize(et.GetSchemaFormat()), Text: et.GetSchema(), Protobuf: et.GetProtobufSchema(), ContentType: et.GetContentType()}
}

// VersionDefinition is the schema of one version.
func VersionDefinition(v *registryv1.SchemaVersion) Definition {
	return Definition{Format: Normalize(v.GetSchemaFormat()), Text: v.GetSchema(), Protobuf: v.GetProtobufSchema(), ContentType: v.GetContentType()}
}

// Compiled is a compiled schema of any format, safe for concurrent use:
// exactly one of JSON, Protobuf and Avro is set, or none for NONE.
type Compiled struct {
	Format      registryv1.SchemaFormat
	JSON        *Schema
	Protobuf    *Protobuf
	Avro        *Avro
	ContentType string // NONE: the declared media type
}

// CompileDefinition compiles a schema of any format. name only labels
// errors.
func CompileDefinition(name string, d Definition) (*Compiled, error) {
	c := &Compiled{Format: Normalize(d.Format)}
	var err error
	switch c.Format {
	case registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA:
		c.JSON, err = Compile(name, d.Text)
	case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
		c.Protobuf, err = CompileProtobuf(d.Protobuf)
	case registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO:
		c.Avro, err = CompileAvro(d.Text)
	case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
		if d.ContentType == "" {
			return nil, errors.New("content_type is required for a NONE type: the media type of its data, e.g. application/octet-stream")
		}
		if _, _, err := mime.ParseMediaType(d.ContentType); err != nil {
			return nil, fmt.Errorf("content_type %q is not a media type: %v", d.ContentType, err)
		}
		c.ContentType = d.ContentType
	default:
		return nil, fmt.Errorf("unknown schema_format %d", int32(d.Format))
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// ValidateBinary checks binary data of a PROTOBUF or AVRO schema.
func (c *Compiled) ValidateBinary(data []byte) []Violation {
	switch {
	case c.Protobuf != nil:
		return c.Protobuf.Validate(data)
	case c.Avro != nil:
		return c.Avro.Validate(data)
	}
	return nil
}

// RenderJSON renders binary data of a PROTOBUF (protojson) or AVRO (Avro
// JSON encoding) schema as JSON; ok is false for other formats.
func (c *Compiled) RenderJSON(data []byte) (out []byte, ok bool, err error) {
	switch {
	case c.Protobuf != nil:
		out, err = c.Protobuf.JSON(data)
	case c.Avro != nil:
		out, err = c.Avro.JSON(data)
	default:
		return nil, false, nil
	}
	return out, err == nil, err
}

// CheckDefinitionCompatibility is CheckCompatibility for every format: a
// candidate must keep the format of the versions; JSON Schema goes to
// CheckCompatibility; Avro follows the Avro specification's resolution
// rules (BACKWARD: the candidate reads data written with a version,
// FORWARD: a version reads data written with the candidate); Protobuf
// follows wire-compatibility rules (see protoIssues), and NONE keeps its
// content type. Reasons read like CheckCompatibility's.
func CheckDefinitionCompatibility(mode registryv1.Compatibility, candidate Definition, versions []Definition) ([]string, error) {
	label, backward, forward, transitive, ok := modeRules(mode)
	if !ok {
		return nil, fmt.Errorf("unknown compatibility mode %d", int32(mode))
	}
	cf := Normalize(candidate.Format)
	for i, v := range versions {
		if Normalize(v.Format) != cf {
			return []string{fmt.Sprintf("%s: /: schema_format changed from %s to %s: a type keeps its format (version %d)", label, FormatName(v.Format), FormatName(cf), i+1)}, nil
		}
	}
	if cf == registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA {
		texts := make([]string, len(versions))
		for i, v := range versions {
			texts[i] = v.Text
		}
		return CheckCompatibility(mode, candidate.Text, texts)
	}
	cand, err := CompileDefinition("candidate", candidate)
	if err != nil {
		return nil, fmt.Errorf("candidate schema: %w", err)
	}
	olds := make([]*Compiled, len(versions))
	for i, v := range versions {
		if olds[i], err = CompileDefinition(fmt.Sprintf("version-%d", i+1), v); err != nil {
			return nil, fmt.Errorf("version %d: %w", i+1, err)
		}
	}
	if !backward && !forward {
		return nil, nil
	}
	first := len(olds) - 1
	if transitive {
		first = 0
	}
	var found []finding
	for i := len(olds) - 1; i >= first; i-- {
		old := olds[i]
		switch cf {
		case registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO:
			if backward {
				for _, is := range avroIssues(cand.Avro.Schema, old.Avro.Schema) {
					found = append(found, finding{issue: is, version: i + 1, backward: true})
				}
			}
			if forward {
				for _, is := range avroIssues(old.Avro.Schema, cand.Avro.Schema) {
					found = append(found, finding{issue: is, version: i + 1})
				}
			}
		case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
			// The rules are symmetric: report them once, in the first
			// direction the mode checks.
			for _, is := range protoIssues(old.Protobuf.Message, cand.Protobuf.Message) {
				found = append(found, finding{issue: is, version: i + 1, backward: backward})
			}
		case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
			if !SameMediaType(old.ContentType, cand.ContentType) {
				found = append(found, finding{issue: issue{path: "/", msg: fmt.Sprintf("content_type changed from %s to %s", old.ContentType, cand.ContentType)}, version: i + 1, backward: backward})
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
		return a.backward && !b.backward
	})
	var reasons []string
	seen := map[string]bool{}
	for _, f := range found {
		var why string
		if f.backward {
			why = fmt.Sprintf("data written with version %d may not be readable", f.version)
		} else {
			why = fmt.Sprintf("data written with the new schema may not be readable by version %d", f.version)
		}
		r := fmt.Sprintf("%s: %s: %s: %s", label, nonEmpty(f.path), f.msg, why)
		if !seen[r] {
			seen[r] = true
			reasons = append(reasons, r)
		}
	}
	return reasons, nil
}

func SameMediaType(a, b string) bool {
	ma, pa, errA := mime.ParseMediaType(a)
	mb, pb, errB := mime.ParseMediaType(b)
	if errA != nil || errB != nil {
		return a == b
	}
	if ma != mb || len(pa) != len(pb) {
		return false
	}
	for k, v := range pa {
		if pb[k] != v {
			return false
		}
	}
	return true
}

// ValidateExample checks a catalog example's data, JSON text: against the
// JSON Schema; as the protobuf message's protojson; for Avro and NONE only
// that it is JSON (Avro's JSON encoding is not decoded).
func (c *Compiled) ValidateExample(data []byte) ([]Violation, error) {
	switch {
	case c.JSON != nil:
		return c.JSON.Validate(data)
	case c.Protobuf != nil:
		m := dynamicpb.NewMessage(c.Protobuf.Message)
		if err := (protojson.UnmarshalOptions{Resolver: c.Protobuf.types}).Unmarshal(data, m); err != nil {
			return []Violation{{InstanceLocation: "/", KeywordLocation: string(c.Protobuf.Message.FullName()), Message: "not the message's protojson: " + cleanProtoError(err)}}, nil
		}
		return nil, nil
	}
	if !json.Valid(data) {
		return nil, errors.New("data is not valid JSON")
	}
	return nil, nil
}
