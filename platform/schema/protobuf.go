package schema

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/reporter"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// maxProtoFiles bounds the number of .proto files of one schema.
const maxProtoFiles = 64

// maxDataDepth bounds the nesting of decoded data (protobuf's own default).
const maxDataDepth = 100

// Protobuf is a compiled protobuf schema: one message of a set of files.
type Protobuf struct {
	Message protoreflect.MessageDescriptor
	files   *protoregistry.Files
	types   *dynamicpb.Types
	fds     []byte // the serialized FileDescriptorSet, every import included
	// wellKnown: the message reaches a well-known type whose JSON form has
	// rules of its own (Timestamp and Duration ranges, Any's type), so
	// Validate also renders it.
	wellKnown bool
	// required: the message reaches a proto2 required field, which only a
	// full decode checks.
	required bool
}

// reachesRequired reports whether md or a message it holds has a required
// field.
func reachesRequired(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if seen[md.FullName()] {
		return false
	}
	seen[md.FullName()] = true
	if md.RequiredNumbers().Len() > 0 {
		return true
	}
	fs := md.Fields()
	for i := 0; i < fs.Len(); i++ {
		if m := fs.Get(i).Message(); m != nil && reachesRequired(m, seen) {
			return true
		}
	}
	return false
}

// reachesWellKnown reports whether md or a message it holds is a
// google.protobuf type other than the wrappers.
func reachesWellKnown(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if seen[md.FullName()] {
		return false
	}
	seen[md.FullName()] = true
	if md.ParentFile().Package() == "google.protobuf" && !strings.HasSuffix(string(md.Name()), "Value") || md.FullName() == "google.protobuf.Value" {
		return true
	}
	fs := md.Fields()
	for i := 0; i < fs.Len(); i++ {
		if m := fs.Get(i).Message(); m != nil && reachesWellKnown(m, seen) {
			return true
		}
	}
	return false
}

// FileDescriptorSet returns the serialized descriptor set (the message's
// file and everything it imports).
func (p *Protobuf) FileDescriptorSet() []byte { return p.fds }

// CompileProtobuf compiles a protobuf schema: its .proto files with
// protocompile (imports resolve among them and the well-known types, never
// from the disk), or its FileDescriptorSet when it has no files.
func CompileProtobuf(ps *registryv1.ProtobufSchema) (*Protobuf, error) {
	if ps == nil {
		return nil, errors.New("protobuf_schema is required for a PROTOBUF type")
	}
	if ps.GetMessage() == "" {
		return nil, errors.New("protobuf_schema.message is required: the fully-qualified name of the event's message")
	}
	var fds *descriptorpb.FileDescriptorSet
	switch {
	case len(ps.GetFiles()) > 0:
		size := 0
		for p, src := range ps.GetFiles() {
			size += len(p) + len(src)
		}
		if size > MaxSize {
			return nil, fmt.Errorf("protobuf_schema.files hold %d bytes, more than the %d allowed", size, MaxSize)
		}
		if len(ps.GetFiles()) > maxProtoFiles {
			return nil, fmt.Errorf("protobuf_schema.files has %d files, more than the %d allowed", len(ps.GetFiles()), maxProtoFiles)
		}
		var err error
		if fds, err = compileProtoFiles(ps.GetFiles()); err != nil {
			return nil, err
		}
	case len(ps.GetFileDescriptorSet()) > 0:
		if len(ps.GetFileDescriptorSet()) > 4*MaxSize {
			return nil, fmt.Errorf("protobuf_schema.file_descriptor_set is %d bytes, more than the %d allowed", len(ps.GetFileDescriptorSet()), 4*MaxSize)
		}
		fds = new(descriptorpb.FileDescriptorSet)
		if err := proto.Unmarshal(ps.GetFileDescriptorSet(), fds); err != nil {
			return nil, fmt.Errorf("protobuf_schema.file_descriptor_set is not a serialized google.protobuf.FileDescriptorSet: %v", err)
		}
	default:
		return nil, errors.New("protobuf_schema needs files (.proto sources by path) or a file_descriptor_set")
	}
	files, err := protodesc.NewFiles(fds)
	if err != nil {
		return nil, fmt.Errorf("protobuf descriptors do not link (a FileDescriptorSet must hold every import): %v", err)
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(strings.TrimPrefix(ps.GetMessage(), ".")))
	if err != nil {
		return nil, fmt.Errorf("protobuf_schema.message %q is not defined in the files", ps.GetMessage())
	}
	md, ok := d.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("protobuf_schema.message %q is not a message", ps.GetMessage())
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(fds)
	if err != nil {
		return nil, err
	}
	return &Protobuf{Message: md, files: files, types: dynamicpb.NewTypes(files), fds: b,
		wellKnown: reachesWellKnown(md, map[protoreflect.FullName]bool{}), required: reachesRequired(md, map[protoreflect.FullName]bool{})}, nil
}

// compileProtoFiles compiles sources into a FileDescriptorSet holding them
// and every file they import, dependencies first.
func compileProtoFiles(srcs map[string]string) (*descriptorpb.FileDescriptorSet, error) {
	paths := make([]string, 0, len(srcs))
	for p := range srcs {
		if !strings.HasSuffix(p, ".proto") || strings.HasPrefix(p, "/") || strings.Contains(p, "..") {
			return nil, fmt.Errorf("protobuf_schema.files: %q must be a relative path ending in .proto", p)
		}
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var msgs []string
	c := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{Accessor: protocompile.SourceAccessorFromMap(srcs)}),
		Reporter: reporter.NewReporter(func(err reporter.ErrorWithPos) error {
			if len(msgs) < 10 {
				msgs = append(msgs, err.Error())
			}
			return nil
		}, nil),
		MaxParallelism: 1,
	}
	out, err := c.Compile(context.Background(), paths...)
	if err != nil {
		if len(msgs) > 0 {
			return nil, fmt.Errorf(".proto files do not compile: %s", strings.Join(msgs, "; "))
		}
		return nil, fmt.Errorf(".proto files do not compile: %v", err)
	}
	fds := new(descriptorpb.FileDescriptorSet)
	seen := map[string]bool{}
	var add func(f protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		imps := f.Imports()
		for i := 0; i < imps.Len(); i++ {
			add(imps.Get(i).FileDescriptor)
		}
		fds.File = append(fds.File, protodesc.ToFileDescriptorProto(f))
	}
	for _, f := range out {
		add(f)
	}
	return fds, nil
}

// Validate decodes data as the message. Unknown fields, wrong wire types,
// malformed or trailing bytes, invalid UTF-8 in strings, values outside a
// closed enum and missing required fields are refused, each with the JSON
// pointer of its field (/items/0/sku).
func (p *Protobuf) Validate(data []byte) []Violation {
	if v := walkProto(p.Message, data, "", 0); v != nil {
		return []Violation{*v}
	}
	if !p.required && !p.wellKnown {
		return nil // the walk checked everything a decode would
	}
	m := dynamicpb.NewMessage(p.Message)
	if err := (proto.UnmarshalOptions{Resolver: p.types}).Unmarshal(data, m); err != nil {
		return []Violation{{InstanceLocation: "/", KeywordLocation: string(p.Message.FullName()), Message: cleanProtoError(err)}}
	}
	if p.wellKnown {
		if _, err := (protojson.MarshalOptions{Resolver: p.types}).Marshal(m); err != nil {
			return []Violation{{InstanceLocation: "/", KeywordLocation: string(p.Message.FullName()), Message: cleanProtoError(err)}}
		}
	}
	return nil
}

func cleanProtoError(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "proto: "), "proto:\u00a0")
}

// JSON renders data (valid for the message) as protojson.
func (p *Protobuf) JSON(data []byte) ([]byte, error) {
	m := dynamicpb.NewMessage(p.Message)
	if err := (proto.UnmarshalOptions{Resolver: p.types, DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		return nil, err
	}
	return protojson.MarshalOptions{Resolver: p.types}.Marshal(m)
}

func wireTypeOf(k protoreflect.Kind) protowire.Type {
	switch k {
	case protoreflect.BoolKind, protoreflect.EnumKind, protoreflect.Int32Kind, protoreflect.Int64Kind,
		protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Sint32Kind, protoreflect.Sint64Kind:
		return protowire.VarintType
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return protowire.Fixed32Type
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return protowire.Fixed64Type
	case protoreflect.GroupKind:
		return protowire.StartGroupType
	}
	return protowire.BytesType
}

func wireName(t protowire.Type) string {
	switch t {
	case protowire.VarintType:
		return "varint"
	case protowire.Fixed32Type:
		return "fixed32"
	case protowire.Fixed64Type:
		return "fixed64"
	case protowire.BytesType:
		return "length-delimited"
	case protowire.StartGroupType:
		return "start-group"
	case protowire.EndGroupType:
		return "end-group"
	}
	return fmt.Sprintf("wire type %d", t)
}

func violation(path, rule, format string, args ...any) *Violation {
	if path == "" {
		path = "/"
	}
	return &Violation{InstanceLocation: path, KeywordLocation: rule, Message: fmt.Sprintf(format, args...)}
}

func checksUTF8(fd protoreflect.FieldDescriptor) bool {
	return fd.Kind() == protoreflect.StringKind && fd.ParentFile().Syntax() != protoreflect.Proto2
}

// walkProto checks b as an encoded md, at path.
func walkProto(md protoreflect.MessageDescriptor, b []byte, path string, depth int) *Violation {
	if depth > maxDataDepth {
		return violation(path, string(md.FullName()), "nested more than %d levels deep", maxDataDepth)
	}
	counts := map[protowire.Number]int{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return violation(path, string(md.FullName()), "malformed field tag: %v (trailing garbage?)", protowire.ParseError(n))
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			return violation(path, string(md.FullName()), "unknown field number %d (%s) in %s", num, wireName(typ), md.FullName())
		}
		fpath := path + "/" + fd.JSONName()
		if fd.IsList() || fd.IsMap() {
			fpath = fmt.Sprintf("%s/%d", fpath, counts[num])
		}
		counts[num]++
		rule := string(fd.FullName())
		want := wireTypeOf(fd.Kind())
		if typ != want {
			if fd.IsList() && typ == protowire.BytesType && want != protowire.BytesType && want != protowire.StartGroupType {
				v, n := protowire.ConsumeBytes(b)
				if n < 0 {
					return violation(fpath, rule, "malformed packed values: %v", protowire.ParseError(n))
				}
				b = b[n:]
				for i := 0; len(v) > 0; i++ {
					n := protowire.ConsumeFieldValue(num, want, v)
					if n < 0 {
						return violation(fpath, rule, "malformed packed value %d: %v", i, protowire.ParseError(n))
					}
					if bad := checkScalar(fd, want, v[:n], fpath); bad != nil {
						return bad
					}
					v = v[n:]
				}
				continue
			}
			return violation(fpath, rule, "%s value for field %s, which is %s (%s)", wireName(typ), fd.Name(), fd.Kind(), wireName(want))
		}
		switch typ {
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return violation(fpath, rule, "malformed %s value: %v", fd.Kind(), protowire.ParseError(n))
			}
			b = b[n:]
			switch {
			case fd.Kind() == protoreflect.MessageKind:
				if bad := walkProto(fd.Message(), v, fpath, depth+1); bad != nil {
					return bad
				}
			case checksUTF8(fd) && !utf8.Valid(v):
				return violation(fpath, rule, "string field %s is not valid UTF-8", fd.Name())
			}
		case protowire.StartGroupType:
			v, n := protowire.ConsumeGroup(num, b)
			if n < 0 {
				return violation(fpath, rule, "malformed group: %v", protowire.ParseError(n))
			}
			b = b[n:]
			if bad := walkProto(fd.Message(), v, fpath, depth+1); bad != nil {
				return bad
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return violation(fpath, rule, "malformed %s value: %v", fd.Kind(), protowire.ParseError(n))
			}
			if bad := checkScalar(fd, typ, b[:n], fpath); bad != nil {
				return bad
			}
			b = b[n:]
		}
	}
	return nil
}

// checkScalar refuses a value outside a closed enum.
func checkScalar(fd protoreflect.FieldDescriptor, typ protowire.Type, v []byte, path string) *Violation {
	if fd.Kind() != protoreflect.EnumKind || !fd.Enum().IsClosed() {
		return nil
	}
	x, _ := protowire.ConsumeVarint(v)
	if fd.Enum().Values().ByNumber(protoreflect.EnumNumber(int32(x))) == nil {
		return violation(path, string(fd.FullName()), "%d is not a value of enum %s", int32(x), fd.Enum().FullName())
	}
	return nil
}
