package schema

import (
	"fmt"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// protoIssues lists the wire-compatibility breaks between an old and a new
// version of a message, each with the JSON pointer of the field (by the
// old version's names) and the rule broken. The rules are symmetric: data
// of either version read with the other.
//
//   - a field number of the old version must, in the new one, be the same
//     kind (scalar type, enum or message), cardinality and oneof, or be
//     reserved: removing it without reserving its number lets a later
//     version reuse it with another meaning;
//   - a field of the new version must not take a number the old one
//     reserved;
//   - a new required field, or a field made required, breaks old data;
//   - enum values: a number of the old enum must stay, or be reserved; an
//     enum must not switch between open and closed; a closed enum gains no
//     values (old readers would drop them).
func protoIssues(old, new protoreflect.MessageDescriptor) []issue {
	c := &protoChecker{seen: map[[2]protoreflect.FullName]bool{}}
	c.message(old, new, "")
	return c.out
}

type protoChecker struct {
	seen map[[2]protoreflect.FullName]bool
	out  []issue
}

func (c *protoChecker) add(path, format string, args ...any) {
	if path == "" {
		path = "/"
	}
	c.out = append(c.out, issue{path: path, msg: fmt.Sprintf(format, args...)})
}

func cardinality(fd protoreflect.FieldDescriptor) string {
	switch {
	case fd.IsMap():
		return "map"
	case fd.IsList():
		return "repeated"
	case fd.Cardinality() == protoreflect.Required:
		return "required"
	}
	return "singular"
}

func kindName(fd protoreflect.FieldDescriptor) string {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return fmt.Sprintf("%s %s", fd.Kind(), fd.Message().FullName())
	case protoreflect.EnumKind:
		return fmt.Sprintf("enum %s", fd.Enum().FullName())
	}
	return fd.Kind().String()
}

func oneofName(fd protoreflect.FieldDescriptor) string {
	if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() {
		return string(o.Name())
	}
	return ""
}

func (c *protoChecker) message(old, new protoreflect.MessageDescriptor, path string) {
	key := [2]protoreflect.FullName{old.FullName(), new.FullName()}
	if c.seen[key] {
		return
	}
	c.seen[key] = true
	ofs, nfs := old.Fields(), new.Fields()
	for i := 0; i < ofs.Len(); i++ {
		of := ofs.Get(i)
		fpath := path + "/" + of.JSONName()
		nf := nfs.ByNumber(of.Number())
		if nf == nil {
			if !new.ReservedRanges().Has(of.Number()) {
				c.add(fpath, "field %d (%s) was removed without reserving its number (reserved %d;)", of.Number(), of.Name(), of.Number())
			}
			continue
		}
		if of.Kind() != nf.Kind() {
			c.add(fpath, "field %d (%s) changed type from %s to %s", of.Number(), of.Name(), kindName(of), kindName(nf))
			continue
		}
		if oc, nc := cardinality(of), cardinality(nf); oc != nc {
			c.add(fpath, "field %d (%s) changed from %s to %s", of.Number(), of.Name(), oc, nc)
			continue
		}
		if oo, no := oneofName(of), oneofName(nf); oo != no {
			switch {
			case oo == "":
				c.add(fpath, "field %d (%s) moved into oneof %s", of.Number(), of.Name(), no)
			case no == "":
				c.add(fpath, "field %d (%s) moved out of oneof %s", of.Number(), of.Name(), oo)
			default:
				c.add(fpath, "field %d (%s) moved from oneof %s to oneof %s", of.Number(), of.Name(), oo, no)
			}
		}
		switch of.Kind() {
		case protoreflect.MessageKind, protoreflect.GroupKind:
			c.message(of.Message(), nf.Message(), fpath)
		case protoreflect.EnumKind:
			c.enum(of.Enum(), nf.Enum(), fpath)
		}
	}
	for i := 0; i < nfs.Len(); i++ {
		nf := nfs.Get(i)
		fpath := path + "/" + nf.JSONName()
		if ofs.ByNumber(nf.Number()) != nil {
			continue
		}
		if old.ReservedRanges().Has(nf.Number()) {
			c.add(fpath, "field %d (%s) reuses a number the old version reserved", nf.Number(), nf.Name())
		}
		if nf.Cardinality() == protoreflect.Required {
			c.add(fpath, "field %d (%s) is a new required field: data without it does not decode", nf.Number(), nf.Name())
		}
	}
}

func (c *protoChecker) enum(old, new protoreflect.EnumDescriptor, path string) {
	key := [2]protoreflect.FullName{old.FullName(), new.FullName()}
	if c.seen[key] {
		return
	}
	c.seen[key] = true
	if old.IsClosed() != new.IsClosed() {
		c.add(path, "enum %s changed from %s to %s", old.FullName(), openness(old), openness(new))
		return
	}
	ovs, nvs := old.Values(), new.Values()
	for i := 0; i < ovs.Len(); i++ {
		ov := ovs.Get(i)
		if nvs.ByNumber(ov.Number()) == nil && !new.ReservedRanges().Has(ov.Number()) {
			c.add(path, "enum %s value %d (%s) was removed without reserving its number", old.FullName(), ov.Number(), ov.Name())
		}
	}
	for i := 0; i < nvs.Len(); i++ {
		nv := nvs.Get(i)
		if ovs.ByNumber(nv.Number()) != nil {
			continue
		}
		if old.ReservedRanges().Has(nv.Number()) {
			c.add(path, "enum %s value %d (%s) reuses a number the old version reserved", new.FullName(), nv.Number(), nv.Name())
		} else if old.IsClosed() {
			c.add(path, "closed enum %s gained value %d (%s): readers of the old version drop it", new.FullName(), nv.Number(), nv.Name())
		}
	}
}

func openness(e protoreflect.EnumDescriptor) string {
	if e.IsClosed() {
		return "closed (proto2)"
	}
	return "open"
}
