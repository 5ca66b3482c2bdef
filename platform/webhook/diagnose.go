package webhook

import (
	"bytes"
	"encoding/json"
	"io"
)

// maxDiagnoseBytes bounds the bodies whose re-encodings Verify tries after a
// failed match: each costs a few passes over the body per key.
const maxDiagnoseBytes = 1 << 20

// candidate is a re-encoding of a received body that may be the signed one.
type candidate struct {
	change string // how body differs from the received one, for the error
	body   []byte
}

// reencodings returns the bodies a receiver commonly turns the signed body
// into, reversed: a trailing newline added or removed, and, for JSON, the
// received value compacted, indented, spaced like Python's json.dumps,
// re-escaped like encoding/json, or round-tripped through encoding/json
// (which sorts object keys). Each is tried with and without a trailing
// newline; none equals body.
//
// A key order the receiver changed cannot be undone in general; the round
// trip finds it when the signed body had sorted keys, as encoding/json
// writes a map.
func reencodings(body []byte) []candidate {
	seen := map[string]bool{string(body): true}
	var out []candidate
	add := func(change string, b []byte) {
		if b == nil || seen[string(b)] {
			return
		}
		seen[string(b)] = true
		out = append(out, candidate{change, b})
	}
	trimmed := bytes.TrimRight(body, " \t\r\n")
	add("with its trailing newline removed", trimmed)
	add("with a trailing newline added", append(bytes.Clone(trimmed), '\n'))
	add("with a trailing CRLF added", append(bytes.Clone(trimmed), '\r', '\n'))
	if !json.Valid(trimmed) {
		return out
	}
	var compact bytes.Buffer
	if json.Compact(&compact, trimmed) != nil {
		return out
	}
	var escaped bytes.Buffer
	json.HTMLEscape(&escaped, compact.Bytes())
	forms := []candidate{
		{"compacted", compact.Bytes()},
		{"compacted, with <, > and & escaped as encoding/json does", escaped.Bytes()},
		{`with ", " and ": " separators, as Python's json.dumps writes`, spaced(compact.Bytes())},
		{"indented with 2 spaces", indent(trimmed, "  ")},
		{"indented with 4 spaces", indent(trimmed, "    ")},
		{"indented with tabs", indent(trimmed, "\t")},
		{"re-encoded by encoding/json rules, keeping key order", retokenize(trimmed, true)},
		{"re-encoded keeping key order, without HTML escapes", retokenize(trimmed, false)},
		{"round-tripped through encoding/json (keys sorted)", roundTrip(trimmed, true, true, "")},
		{"round-tripped through encoding/json (keys sorted, no HTML escapes)", roundTrip(trimmed, true, false, "")},
		{"round-tripped through encoding/json (keys sorted, numbers as float64)", roundTrip(trimmed, false, true, "")},
		{"round-tripped through encoding/json.MarshalIndent (keys sorted, 2 spaces)", roundTrip(trimmed, true, true, "  ")},
	}
	for _, f := range forms {
		if f.body == nil {
			continue
		}
		add(f.change, f.body)
		add(f.change+", with a trailing newline", append(bytes.Clone(f.body), '\n'))
	}
	return out
}

func indent(b []byte, in string) []byte {
	var out bytes.Buffer
	if json.Indent(&out, b, "", in) != nil {
		return nil
	}
	return out.Bytes()
}

// spaced inserts a space after every ',' and ':' outside strings of
// compact JSON.
func spaced(compact []byte) []byte {
	out := make([]byte, 0, len(compact)+len(compact)/8)
	inString, escaped := false, false
	for _, c := range compact {
		out = append(out, c)
		switch {
		case escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && (c == ',' || c == ':'):
			out = append(out, ' ')
		}
	}
	return out
}

// retokenize re-encodes JSON compactly in its key order, strings escaped as
// encoding/json escapes them (so \u00e9 becomes é, and < becomes \u003c when
// escapeHTML), numbers as written.
func retokenize(b []byte, escapeHTML bool) []byte {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(escapeHTML)
	type frame struct {
		object bool
		n      int
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			out.WriteByte(byte(d))
			stack = stack[:len(stack)-1]
			continue
		}
		if len(stack) > 0 {
			f := &stack[len(stack)-1]
			switch {
			case f.object && f.n%2 == 1:
				out.WriteByte(':')
			case f.n > 0:
				out.WriteByte(',')
			}
			f.n++
		}
		switch t := tok.(type) {
		case json.Delim:
			out.WriteByte(byte(t))
			stack = append(stack, frame{object: t == '{'})
		case json.Number:
			out.WriteString(string(t))
		default:
			if enc.Encode(t) != nil {
				return nil
			}
			out.Truncate(out.Len() - 1) // Encode's newline
		}
	}
	return out.Bytes()
}

// roundTrip decodes JSON into any and encodes it again, as a receiver that
// parses the body into a map and marshals it back does.
func roundTrip(b []byte, useNumber, escapeHTML bool, indent string) []byte {
	dec := json.NewDecoder(bytes.NewReader(b))
	if useNumber {
		dec.UseNumber()
	}
	var v any
	if dec.Decode(&v) != nil {
		return nil
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(escapeHTML)
	enc.SetIndent("", indent)
	if enc.Encode(v) != nil {
		return nil
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}
