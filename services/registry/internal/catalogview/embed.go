package catalogview

import (
	"fmt"
	"net/url"
	"strings"
)

// embedSchema parses a schema (JSON text) for embedding at the JSON pointer
// at inside the AsyncAPI document. AsyncAPI tools resolve every "$ref"
// against the whole document, not against the schema it sits in, so the
// schema's internal references ("#", "#/$defs/x", "#anchor", or URIs
// relative to its "$id"s) are rewritten into document pointers
// ("#/components/schemas/<type>/schema/$defs/x"), and the "$id"s, which
// would move those references' base, are dropped. References the schema
// cannot resolve itself are left as they are (the registry refuses them).
func embedSchema(text, typeName, at string) (any, error) {
	v, err := decodeOrdered(text)
	if err != nil {
		return nil, fmt.Errorf("schema of %s: %w", typeName, err)
	}
	root, _ := url.Parse("https://schemas.herald.invalid/" + url.PathEscape(typeName) + ".json")
	r := &refIndex{resources: map[string]string{}, anchors: map[string]string{}}
	r.resources[root.String()] = ""
	r.collect(v, root, "")
	return r.rewrite(v, root, at), nil
}

type refIndex struct {
	// resources maps a schema resource's URI (no fragment) to its JSON
	// pointer inside the schema.
	resources map[string]string
	// anchors maps "resource#anchor" to a JSON pointer inside the schema.
	anchors map[string]string
}

func (r *refIndex) collect(v any, base *url.URL, ptr string) {
	switch n := v.(type) {
	case object:
		if id, ok := stringMember(n, "$id"); ok {
			if u, err := base.Parse(id); err == nil {
				if strings.HasPrefix(id, "#") {
					// draft-07 style plain-name fragment: an anchor.
					r.anchors[withoutFragment(base)+"#"+u.Fragment] = ptr
				} else {
					u.Fragment, u.RawFragment = "", ""
					base = u
					r.resources[u.String()] = ptr
				}
			}
		}
		for _, key := range []string{"$anchor", "$dynamicAnchor"} {
			if a, ok := stringMember(n, key); ok && a != "" {
				if _, seen := r.anchors[withoutFragment(base)+"#"+a]; !seen {
					r.anchors[withoutFragment(base)+"#"+a] = ptr
				}
			}
		}
		for _, m := range n {
			r.collect(m.Value, base, ptr+"/"+pointerToken(m.Key))
		}
	case []any:
		for i, child := range n {
			r.collect(child, base, fmt.Sprintf("%s/%d", ptr, i))
		}
	}
}

func (r *refIndex) rewrite(v any, base *url.URL, at string) any {
	switch n := v.(type) {
	case object:
		if id, ok := stringMember(n, "$id"); ok {
			if u, err := base.Parse(id); err == nil && !strings.HasPrefix(id, "#") {
				u.Fragment, u.RawFragment = "", ""
				base = u
			}
		}
		out := make(object, 0, len(n))
		for _, m := range n {
			switch s, isString := m.Value.(string); {
			case m.Key == "$id" && isString:
				continue
			case m.Key == "$ref" && isString:
				if target, ok := r.resolve(base, s); ok {
					m.Value = "#" + fragmentEscape(at+target)
				}
			default:
				m.Value = r.rewrite(m.Value, base, at)
			}
			out = append(out, m)
		}
		return out
	case []any:
		for i, child := range n {
			n[i] = r.rewrite(child, base, at)
		}
	}
	return v
}

func stringMember(o object, key string) (string, bool) {
	v, _ := o.get(key)
	s, ok := v.(string)
	return s, ok
}

// resolve finds the JSON pointer (inside the schema) a reference points to.
func (r *refIndex) resolve(base *url.URL, ref string) (string, bool) {
	u, err := base.Parse(ref)
	if err != nil {
		return "", false
	}
	frag := u.Fragment
	res := withoutFragment(u)
	ptr, ok := r.resources[res]
	if !ok {
		return "", false
	}
	switch {
	case frag == "":
		return ptr, true
	case strings.HasPrefix(frag, "/"):
		return ptr + frag, true
	default:
		p, ok := r.anchors[res+"#"+frag]
		return p, ok
	}
}

func withoutFragment(u *url.URL) string {
	c := *u
	c.Fragment, c.RawFragment = "", ""
	return c.String()
}

// pointerToken escapes one JSON pointer reference token (RFC 6901).
func pointerToken(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// fragmentEscape percent-encodes a JSON pointer for a URI fragment
// (RFC 6901 section 6).
func fragmentEscape(ptr string) string {
	var b strings.Builder
	for i := 0; i < len(ptr); i++ {
		c := ptr[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
