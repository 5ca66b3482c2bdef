package lake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/platform/testutil/nodehook"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(testutil.StoppingSpares(m),
		// minio-go's HTTP transport keeps idle connections to the fake S3
		// server; they end with the process.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// dirConfig is a lake bridge writing under dir.
func dirConfig(dir string, maxBytes int64, maxAge time.Duration) bridge.Config {
	lb := &registryv1.LakeBridge{Directory: dir, MaxFileBytes: maxBytes}
	if maxAge > 0 {
		lb.MaxFileAge = durationpb.New(maxAge)
	}
	return bridge.Config{Name: "lake-test", Bridge: &registryv1.Bridge{Name: "lake-test", System: &registryv1.Bridge_Lake{Lake: lb}}}
}

// base is the first cursor's millisecond: 2026-12-03T10:00:00Z.
var base = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

// cursorOf is the cursor of the i-th event of the test log: three per
// millisecond, spread so that the log spans two hours.
func cursorOf(i int) string {
	ms := base.UnixMilli() + int64(i/3)*20_000
	return fmt.Sprintf("%d-%d", ms, i%3)
}

func str(s string) *eventv1.CloudEvent_CloudEventAttributeValue {
	return &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: s}}
}

// event is the i-th event of the test log: two types; every fifth one has
// no time attribute (its partition comes from the cursor), the others a
// time in the hour of the cursor or the next; data of every kind.
func event(i int) bridge.Message {
	typ := "billing.invoice.paid"
	if i%2 == 1 {
		typ = "shipping.parcel.sent"
	}
	ev := &eventv1.CloudEvent{
		Id: fmt.Sprintf("evt_%05d", i), Source: "/test/" + fmt.Sprint(i%3), SpecVersion: "1.0", Type: typ,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{},
	}
	c := cursorOf(i)
	ms, _ := parseCursor(c)
	if i%5 != 0 {
		at := time.UnixMilli(int64(ms.ms)).UTC().Add(time.Duration(i%7)*9*time.Minute + time.Duration(i)*time.Microsecond)
		ev.Attributes["time"] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(at)}}
	}
	if i%3 == 0 {
		ev.Attributes["subject"] = str(fmt.Sprintf("inv-%d", i))
	}
	if i%4 == 0 {
		ev.Attributes["partitionkey"] = str(fmt.Sprintf("acct-%d", i%10))
	}
	ev.Attributes["traceparent"] = str("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	if i%6 == 0 {
		ev.Attributes["sampled"] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean{CeBoolean: true}}
		ev.Attributes["retries"] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: int32(i)}}
	}
	switch i % 8 {
	case 0, 1, 2, 3: // JSON text
		ev.Attributes["datacontenttype"] = str("application/json")
		ev.Attributes["dataschema"] = str("https://schemas.example/" + typ + "/v1")
		token := sha256.Sum256([]byte(ev.Id)) // what compresses as little as real ids and hashes do
		ev.Data = &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf(`{"n":%d,"token":"%x","note":"caf\u00e9 \u2713 %s"}`, i, token[:12], strings.Repeat("x", i%40))}
	case 4: // plain text
		ev.Attributes["datacontenttype"] = str("text/plain")
		ev.Data = &eventv1.CloudEvent_TextData{TextData: fmt.Sprintf("line %d\nwith ünïcode", i)}
	case 5: // binary, not UTF-8
		b := make([]byte, 16+i%32)
		for j := range b {
			b[j] = byte(i*31 + j*7)
		}
		b[0] = 0xff
		ev.Attributes["datacontenttype"] = str("application/octet-stream")
		ev.Data = &eventv1.CloudEvent_BinaryData{BinaryData: b}
	case 6: // protobuf
		ev.Data = &eventv1.CloudEvent_ProtoData{ProtoData: &anypb.Any{TypeUrl: "type.googleapis.com/test.Ping", Value: []byte{0x08, byte(i), 0x00, 0xfe}}}
	case 7: // no data
	}
	return bridge.Message{Cursor: c, Event: ev, Key: ev.GetId()}
}

func events(from, to int) []bridge.Message {
	out := make([]bridge.Message, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, event(i))
	}
	return out
}

// expected is what DuckDB must read back for m: every column, the Hive
// partition columns included, in read.mjs's JSON form.
func expected(t *testing.T, m bridge.Message) map[string]any {
	t.Helper()
	ev := m.Event
	attr := func(k string) any {
		if v := ev.GetAttributes()[k]; v != nil {
			return v.GetCeString()
		}
		return nil
	}
	row := map[string]any{
		"cursor": m.Cursor, "id": ev.GetId(), "source": ev.GetSource(), "type": ev.GetType(),
		"subject": attr("subject"), "datacontenttype": attr("datacontenttype"), "dataschema": attr("dataschema"),
		"partitionkey": attr("partitionkey"), "time": nil, "data": nil, "data_bytes": nil,
	}
	c, _ := parseCursor(m.Cursor)
	at := time.UnixMilli(int64(c.ms)).UTC()
	if ts := ev.GetAttributes()["time"].GetCeTimestamp(); ts != nil {
		at = ts.AsTime().UTC()
		row["time"] = fmt.Sprint(at.UnixMicro())
	}
	row["date"] = at.Format("2006-01-02")
	row["hour"] = fmt.Sprint(at.Hour()) // DuckDB reads hour=HH as a number or a string
	ext := map[string]any{}
	for k, v := range ev.GetAttributes() {
		if columnAttributes[k] {
			continue
		}
		switch a := v.GetAttr().(type) {
		case *eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean:
			ext[k] = a.CeBoolean
		case *eventv1.CloudEvent_CloudEventAttributeValue_CeInteger:
			ext[k] = float64(a.CeInteger)
		default:
			ext[k] = v.GetCeString()
		}
	}
	row["extensions"] = ext
	switch d := ev.GetData().(type) {
	case *eventv1.CloudEvent_TextData:
		row["data"] = d.TextData
	case *eventv1.CloudEvent_BinaryData:
		row["data_bytes"] = base64.StdEncoding.EncodeToString(d.BinaryData)
	case *eventv1.CloudEvent_ProtoData:
		row["data_bytes"] = base64.StdEncoding.EncodeToString(d.ProtoData.GetValue())
		if row["datacontenttype"] == nil {
			row["datacontenttype"] = "application/protobuf"
		}
		if row["dataschema"] == nil {
			row["dataschema"] = d.ProtoData.GetTypeUrl()
		}
	}
	return row
}

// checkRows compares DuckDB's rows with the events sent, by id, each
// exactly once.
func checkRows(t *testing.T, got []map[string]any, sent []bridge.Message) {
	t.Helper()
	want := map[string]bridge.Message{}
	for _, m := range sent {
		want[m.Event.GetId()] = m
	}
	seen := map[string]bool{}
	for _, r := range got {
		id, _ := r["id"].(string)
		if seen[id] {
			t.Errorf("id %s read twice", id)
			continue
		}
		seen[id] = true
		m, ok := want[id]
		if !ok {
			t.Errorf("unexpected row %v", r)
			continue
		}
		exp := expected(t, m)
		if h, err := strconv.Atoi(fmt.Sprint(r["hour"])); err == nil {
			r["hour"] = fmt.Sprint(h)
		}
		if e, _ := r["extensions"].(string); e != "" {
			var ext map[string]any
			if err := json.Unmarshal([]byte(e), &ext); err != nil {
				t.Errorf("%s: extensions %q: %v", id, e, err)
			}
			r["extensions"] = ext
		} else {
			r["extensions"] = map[string]any{}
		}
		for k, v := range exp {
			if fmt.Sprint(r[k]) != fmt.Sprint(v) {
				t.Errorf("%s: column %s = %#v, want %#v", id, k, r[k], v)
			}
		}
		if len(r) != len(exp) {
			t.Errorf("%s: %d columns %v, want %d", id, len(r), slices.Sorted(mapsKeys(r)), len(exp))
		}
	}
	if len(seen) != len(want) {
		t.Errorf("read %d distinct events, sent %d", len(seen), len(want))
	}
}

func mapsKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// duckResult is what tests/lake/read.mjs prints.
type duckResult struct {
	Columns []struct{ Name, Type string }
	Rows    []map[string]any
}

// duck reads dir with DuckDB (tests/lake/read.mjs): every Parquet file
// under it with hive_partitioning, or sql with {files} for that.
func duck(t *testing.T, dir, sql string) duckResult {
	t.Helper()
	area := nodehook.Install(t, "lake", "@duckdb/node-api")
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found on PATH (install Node.js >= 20; `make test-node` needs it too): %v", err)
	}
	args := []string{"read.mjs", dir}
	if sql != "" {
		args = append(args, sql)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = area
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("read.mjs %s: %v\n%s", dir, err, stderr.String())
	}
	var res duckResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("read.mjs printed %q: %v", out, err)
	}
	return res
}

// recorder collects done calls by cursor.
type recorder struct {
	mu    sync.Mutex
	calls map[string][]error
}

func newRecorder() *recorder { return &recorder{calls: map[string][]error{}} }

// send sends msgs in batches of n through s.
func (r *recorder) send(t *testing.T, s *Sink, msgs []bridge.Message, n int) {
	t.Helper()
	for len(msgs) > 0 {
		b := msgs[:min(n, len(msgs))]
		msgs = msgs[len(b):]
		s.Send(context.Background(), b, func(i int, err error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.calls[b[i].Cursor] = append(r.calls[b[i].Cursor], err)
		})
	}
}

// acked is the cursors done with nil.
func (r *recorder) acked() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]bool{}
	for c, errs := range r.calls {
		if len(errs) > 0 && errs[len(errs)-1] == nil {
			out[c] = true
		}
	}
	return out
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// checkOnce checks that every message of msgs got exactly one done(nil).
func (r *recorder) checkOnce(t *testing.T, msgs []bridge.Message) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		errs := r.calls[m.Cursor]
		if len(errs) != 1 || errs[0] != nil {
			t.Errorf("%s: done %v, want one nil", m.Cursor, errs)
		}
	}
}

// waitAcked waits until every message of msgs is done(nil).
func (r *recorder) waitAcked(t *testing.T, msgs []bridge.Message) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() bool {
		a := r.acked()
		for _, m := range msgs {
			if !a[m.Cursor] {
				return false
			}
		}
		return true
	}, "every message acknowledged")
}

// lakeFiles lists dir's files by relative path, temporary ones included.
func lakeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newSink(t *testing.T, cfg bridge.Config) *Sink {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func closeSink(t *testing.T, s *Sink) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
