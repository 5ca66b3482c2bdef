package lake

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

// Row is one event in a Parquet file; nil is null. Optional columns are
// pointers, parquet-go's documented way to say null: how it writes the
// zero value of an optional non-pointer field has changed between releases
// (parquet-go PRs 480 and 523), and v0.32.1 writes some of them as "" and
// others as null in one file, depending on how rows are batched (as in
// its issue 154; TestOptionalColumnsKeepNulls).
type Row struct {
	Cursor          string     `parquet:"cursor"`
	ID              string     `parquet:"id"`
	Source          string     `parquet:"source,dict"`
	Type            string     `parquet:"type,dict"`
	Subject         *string    `parquet:"subject,optional"`
	Time            *time.Time `parquet:"time,optional,timestamp(microsecond:utc)"`
	DataContentType *string    `parquet:"datacontenttype,optional,dict"`
	DataSchema      *string    `parquet:"dataschema,optional,dict"`
	PartitionKey    *string    `parquet:"partitionkey,optional"`
	Extensions      *string    `parquet:"extensions,optional,json"`
	Data            *string    `parquet:"data,optional"`
	DataBytes       *[]byte    `parquet:"data_bytes,optional"`
}

// values backs a Row's optional columns: one allocation per row.
type values struct {
	subject, contentType, schema, partitionKey, extensions, data string
	time                                                         time.Time
	bytes                                                        []byte
}

// size is a rough count of the bytes r adds to a file before compression.
func (r *Row) size() int64 {
	n := len(r.Cursor) + len(r.ID) + len(r.Source) + len(r.Type) + 12*4 + 8
	for _, s := range []*string{r.Subject, r.DataContentType, r.DataSchema, r.PartitionKey, r.Extensions, r.Data} {
		if s != nil {
			n += len(*s)
		}
	}
	if r.DataBytes != nil {
		n += len(*r.DataBytes)
	}
	return int64(n)
}

// columnAttributes are the attributes with a column of their own; the
// others go to extensions.
var columnAttributes = map[string]bool{
	"subject": true, "time": true, "datacontenttype": true, "dataschema": true, "partitionkey": true,
}

// rowOf turns a message into its row. at is when the event happened: its
// time attribute, else the cursor's timestamp; it picks the partition.
func rowOf(m bridge.Message, c cursor) (Row, time.Time, error) {
	ev := m.Event
	if ev == nil {
		return Row{}, time.Time{}, errors.New("message has no event")
	}
	if ev.GetType() == "" || ev.GetId() == "" {
		return Row{}, time.Time{}, errors.New("event has no type or no id")
	}
	r := Row{Cursor: m.Cursor, ID: ev.GetId(), Source: ev.GetSource(), Type: ev.GetType()}
	vals := &values{}
	set := func(dst **string, v *string, s string) {
		if s != "" {
			*v = s
			*dst = v
		}
	}
	var ext []string // names of the attributes that go to extensions
	for k, v := range ev.GetAttributes() {
		switch k {
		case "subject":
			set(&r.Subject, &vals.subject, cloudevent.AttributeString(v))
		case "datacontenttype":
			set(&r.DataContentType, &vals.contentType, cloudevent.AttributeString(v))
		case "dataschema":
			set(&r.DataSchema, &vals.schema, cloudevent.AttributeString(v))
		case "partitionkey":
			set(&r.PartitionKey, &vals.partitionKey, cloudevent.AttributeString(v))
		case "time":
			if t, ok := timeOf(v); ok {
				vals.time = t
				r.Time = &vals.time
				continue
			}
			fallthrough // unreadable: kept as text among the extensions
		default:
			ext = append(ext, k)
		}
	}
	switch d := ev.GetData().(type) {
	case *eventv1.CloudEvent_TextData:
		vals.data = d.TextData
		r.Data = &vals.data
	case *eventv1.CloudEvent_BinaryData:
		ct := strings.ToLower(vals.contentType)
		if (cloudevent.IsJSON(ct) || strings.HasPrefix(ct, "text/")) && utf8.Valid(d.BinaryData) {
			vals.data = string(d.BinaryData)
			r.Data = &vals.data
		} else {
			vals.bytes = d.BinaryData
			r.DataBytes = &vals.bytes
		}
	case *eventv1.CloudEvent_ProtoData:
		vals.bytes = d.ProtoData.GetValue()
		r.DataBytes = &vals.bytes
		if r.DataContentType == nil {
			set(&r.DataContentType, &vals.contentType, "application/protobuf")
		}
		if r.DataSchema == nil {
			set(&r.DataSchema, &vals.schema, d.ProtoData.GetTypeUrl())
		}
	}
	if len(ext) > 0 {
		set(&r.Extensions, &vals.extensions, extensionsJSON(ev, ext))
	}
	at := time.UnixMilli(int64(c.ms)).UTC()
	if r.Time != nil {
		at = r.Time.UTC()
	}
	return r, at, nil
}

func timeOf(v *eventv1.CloudEvent_CloudEventAttributeValue) (time.Time, bool) {
	switch a := v.GetAttr().(type) {
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp:
		return a.CeTimestamp.AsTime().UTC(), true
	case *eventv1.CloudEvent_CloudEventAttributeValue_CeString:
		t, err := time.Parse(time.RFC3339Nano, a.CeString)
		return t.UTC(), err == nil
	}
	return time.Time{}, false
}

// extensionsJSON renders the named attributes of ev as a JSON object,
// keys sorted: booleans and integers as JSON values, the rest in their
// canonical string form (the structured JSON format's rendering).
// Attribute names are [a-z0-9]{1,20}, which need no escaping.
func extensionsJSON(ev *eventv1.CloudEvent, names []string) string {
	slices.Sort(names)
	b := make([]byte, 0, 64*len(names))
	b = append(b, '{')
	for i, k := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, k...)
		b = append(b, '"', ':')
		v := ev.GetAttributes()[k]
		switch a := v.GetAttr().(type) {
		case *eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean:
			b = strconv.AppendBool(b, a.CeBoolean)
		case *eventv1.CloudEvent_CloudEventAttributeValue_CeInteger:
			b = strconv.AppendInt(b, int64(a.CeInteger), 10)
		default:
			b = appendJSONString(b, cloudevent.AttributeString(v))
		}
	}
	return string(append(b, '}'))
}

// appendJSONString appends s as a JSON string, invalid UTF-8 replaced by
// U+FFFD as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, "\\ufffd"...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// cursor is a log position, <unix ms>-<seq>, compared as two numbers.
type cursor struct{ ms, seq uint64 }

func parseCursor(s string) (cursor, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok || a == "" || b == "" || a[0] == '+' || b[0] == '+' {
		return cursor{}, fmt.Errorf("cursor %q is not <ms>-<seq>", s)
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return cursor{}, fmt.Errorf("cursor %q is not <ms>-<seq>", s)
	}
	return cursor{ms, seq}, nil
}

func (c cursor) less(d cursor) bool { return c.ms < d.ms || c.ms == d.ms && c.seq < d.seq }

func (c cursor) String() string {
	return strconv.FormatUint(c.ms, 10) + "-" + strconv.FormatUint(c.seq, 10)
}

// partitionDir is the Hive-style directory of an event: type=<type>/
// date=YYYY-MM-DD/hour=HH, at in UTC.
func partitionDir(typ string, at time.Time) string {
	at = at.UTC()
	return "type=" + escapeType(typ) + "/date=" + at.Format("2006-01-02") + "/hour=" + at.Format("15")
}

// escapeType keeps [A-Za-z0-9._-] and writes any other byte as %XX, as
// Hive escapes partition values, so a type never leaves its directory.
func escapeType(s string) string {
	safe := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
	}
	clean := true
	for i := 0; i < len(s); i++ {
		if !safe(s[i]) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if safe(s[i]) {
			b.WriteByte(s[i])
		} else {
			fmt.Fprintf(&b, "%%%02X", s[i])
		}
	}
	return b.String()
}

// fileName is the committed name of a file holding cursors lo..hi.
func fileName(lo, hi cursor) string { return "part-" + lo.String() + "-" + hi.String() + ".parquet" }

// parseKey reads a committed file's key, type=<t>/date=<d>/hour=<h>/
// part-<lo>-<hi>.parquet: its escaped type and cursor range.
func parseKey(key string) (typ string, lo, hi cursor, ok bool) {
	parts := strings.Split(key, "/")
	if len(parts) != 4 || !strings.HasPrefix(parts[0], "type=") || !strings.HasPrefix(parts[1], "date=") ||
		!strings.HasPrefix(parts[2], "hour=") {
		return "", cursor{}, cursor{}, false
	}
	name, found := strings.CutPrefix(parts[3], "part-")
	if !found {
		return "", cursor{}, cursor{}, false
	}
	name, found = strings.CutSuffix(name, ".parquet")
	if !found {
		return "", cursor{}, cursor{}, false
	}
	n := strings.Split(name, "-")
	if len(n) != 4 {
		return "", cursor{}, cursor{}, false
	}
	var err error
	if lo, err = parseCursor(n[0] + "-" + n[1]); err != nil {
		return "", cursor{}, cursor{}, false
	}
	if hi, err = parseCursor(n[2] + "-" + n[3]); err != nil || hi.less(lo) {
		return "", cursor{}, cursor{}, false
	}
	return strings.TrimPrefix(parts[0], "type="), lo, hi, true
}
