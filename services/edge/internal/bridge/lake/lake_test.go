package lake

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"
	"github.com/parquet-go/parquet-go"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
)

var keyPattern = regexp.MustCompile(`^type=([a-z.]+)/date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})/part-(\d+-\d+)-(\d+-\d+)\.parquet$`)

// checkLayout checks every file under dir: a committed name in its
// partition, holding only rows of that partition, lo and hi its lowest and
// highest cursors. It returns the number of files per partition.
func checkLayout(t *testing.T, dir string) map[string]int {
	t.Helper()
	perPartition := map[string]int{}
	for _, f := range lakeFiles(t, dir) {
		m := keyPattern.FindStringSubmatch(f)
		if m == nil {
			t.Errorf("unexpected file %s", f)
			continue
		}
		perPartition[filepath.Dir(f)]++
		cs, err := (&dirStore{root: dir}).cursors(context.Background(), f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(cs) == 0 || cs[0].String() != m[4] || cs[len(cs)-1].String() != m[5] {
			t.Errorf("%s holds %v..%v", f, cs[0], cs[len(cs)-1])
		}
	}
	rows := duck(t, dir, "SELECT filename, type, date::VARCHAR AS date, hour FROM {files}").Rows
	for _, r := range rows {
		m := keyPattern.FindStringSubmatch(strings.TrimPrefix(r["filename"].(string), dir+"/"))
		if m == nil || m[1] != r["type"] || m[2] != r["date"] || m[3] != r["hour"] {
			t.Errorf("row %v is not in its partition", r)
		}
	}
	return perPartition
}

// N events of two types across two hours, rolled by size: the layout and
// names are right, every row reads back in DuckDB as sent (the Hive
// columns too), each message is acknowledged once, and files rolled by
// size are acknowledged before Close.
func TestWriteRollBySizeAndReadWithDuckDB(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dirConfig(dir, 16<<10, time.Hour))
	rec := newRecorder()
	sent := events(0, 600)
	rec.send(t, s, sent, 25)
	// Files are committed in the background: wait for the first.
	waitAcked(t, rec, "no message acknowledged before Close, though files reached max_file_bytes")
	if n := len(rec.acked()); n == len(sent) {
		t.Errorf("every message acknowledged before Close: nothing was left in an open file")
	}
	closeSink(t, s)
	rec.checkOnce(t, sent)

	parts := checkLayout(t, dir)
	hours := map[string]bool{}
	rolled := 0
	for p, n := range parts {
		hours[p[strings.Index(p, "/date="):]] = true
		if n > 1 {
			rolled++
		}
	}
	if len(hours) < 2 || len(parts) < 4 {
		t.Errorf("partitions %v: want two types across at least two hours", parts)
	}
	if rolled < 2 {
		t.Errorf("partitions %v: want several files in at least two of them", parts)
	}
	for _, f := range lakeFiles(t, dir) {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 2*(16<<10) {
			t.Errorf("%s is %d bytes, max_file_bytes 16 KiB", f, st.Size())
		}
	}

	res := duck(t, dir, "")
	types := map[string]string{}
	for _, c := range res.Columns {
		types[c.Name] = c.Type
	}
	for col, want := range map[string]string{
		"cursor": "VARCHAR", "id": "VARCHAR", "source": "VARCHAR", "type": "VARCHAR", "subject": "VARCHAR",
		"time": "TIMESTAMP WITH TIME ZONE", "datacontenttype": "VARCHAR", "dataschema": "VARCHAR",
		"partitionkey": "VARCHAR", "extensions": "VARCHAR", "data": "VARCHAR", "data_bytes": "BLOB",
		"date": "DATE", "hour": "BIGINT",
	} {
		if types[col] != want && !(col == "hour" && types[col] == "VARCHAR") {
			t.Errorf("column %s is %q, want %q (columns %v)", col, types[col], want, res.Columns)
		}
	}
	checkRows(t, res.Rows, sent)
}

// A file older than max_file_age is committed (and its messages
// acknowledged) without Close, and the next events start a new file.
func TestRollByAge(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dirConfig(dir, 64<<20, 150*time.Millisecond))
	rec := newRecorder()
	first := []bridge.Message{event(0), event(2), event(4)} // one type, one hour
	rec.send(t, s, first, 10)
	rec.waitAcked(t, first)
	if got := lakeFiles(t, dir); len(got) != 1 {
		t.Fatalf("files %v, want one", got)
	}
	second := []bridge.Message{event(6), event(8)}
	rec.send(t, s, second, 10)
	rec.waitAcked(t, second)
	closeSink(t, s)
	all := append(first, second...)
	rec.checkOnce(t, all)
	files := lakeFiles(t, dir)
	if len(files) != 2 {
		t.Fatalf("files %v, want two", files)
	}
	checkLayout(t, dir)
	checkRows(t, duck(t, dir, "").Rows, all)
}

// A sink abandoned mid-file (a crash: no Close) leaves no visible partial
// file; a new sink given the same events again, plus new ones, writes each
// event exactly once. The events of one type alternate between hours, so
// committed files' ranges overlap cursors of files that were never
// committed, which only the cursor column can tell apart.
func TestCrashThenRedelivery(t *testing.T) {
	dir := t.TempDir()
	cfg := dirConfig(dir, 8<<10, time.Hour)
	s := newSink(t, cfg)
	rec := newRecorder()
	sent := events(0, 300)
	rec.send(t, s, sent, 20)
	waitAcked(t, rec, "nothing acknowledged before the crash, though files reached max_file_bytes")
	acked := rec.acked()
	if len(acked) == 0 || len(acked) == len(sent) {
		t.Fatalf("%d of %d acknowledged before the crash: want some", len(acked), len(sent))
	}
	// Wait for the commits in flight, so that what is on disk is what
	// was acknowledged.
	s.abandon()
	acked = rec.acked()

	var temps int
	for _, f := range lakeFiles(t, dir) {
		if strings.HasPrefix(filepath.Base(f), tempPrefix) {
			temps++
		}
	}
	if temps == 0 {
		t.Fatalf("no temporary file left by the crash: nothing was mid-file")
	}
	rows := duck(t, dir, "").Rows
	if len(rows) != len(acked) {
		t.Errorf("DuckDB reads %d rows after the crash, %d were acknowledged", len(rows), len(acked))
	}
	for _, r := range rows {
		if !acked[r["cursor"].(string)] {
			t.Errorf("row %v visible but never acknowledged", r["cursor"])
		}
	}

	// The engine hands every unacknowledged message again, and, as a
	// redelivery may, some acknowledged ones too, then new ones.
	s2 := newSink(t, cfg)
	for _, f := range lakeFiles(t, dir) {
		if strings.HasPrefix(filepath.Base(f), tempPrefix) {
			t.Errorf("leftover %s not removed by New", f)
		}
	}
	rec2 := newRecorder()
	more := events(300, 400)
	rec2.send(t, s2, append(sent, more...), 20)
	s2.mu.Lock()
	reads := s2.idx.reads
	s2.mu.Unlock()
	if reads == 0 {
		t.Errorf("no cursor column read: no redelivered cursor fell inside a committed file's range")
	}
	closeSink(t, s2)
	rec2.checkOnce(t, append(sent, more...))

	counts := duck(t, dir, "SELECT id, count(*)::INTEGER AS n FROM {files} GROUP BY id").Rows
	if len(counts) != 400 {
		t.Errorf("%d distinct ids, want 400", len(counts))
	}
	for _, r := range counts {
		if r["n"] != float64(1) {
			t.Errorf("id %v written %v times", r["id"], r["n"])
		}
	}
	checkLayout(t, dir)
	checkRows(t, duck(t, dir, "").Rows, append(sent, more...))
}

// A message handed again while its file is still open waits for that
// file, and is written once; one already committed is acknowledged at
// once.
func TestRedeliveryInProcess(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dirConfig(dir, 64<<20, time.Hour))
	rec := newRecorder()
	msgs := events(0, 10)
	rec.send(t, s, msgs, 10)
	rec.send(t, s, msgs[3:5], 10)
	closeSink(t, s)
	rec.mu.Lock()
	for _, m := range msgs[3:5] {
		if errs := rec.calls[m.Cursor]; len(errs) != 2 || errs[0] != nil || errs[1] != nil {
			t.Errorf("%s: %v, want two nil", m.Cursor, errs)
		}
	}
	rec.mu.Unlock()
	checkRows(t, duck(t, dir, "").Rows, msgs)

	s = newSink(t, dirConfig(dir, 64<<20, time.Hour))
	rec = newRecorder()
	rec.send(t, s, msgs, 10)
	rec.checkOnce(t, msgs) // before Close: all known committed
	closeSink(t, s)
	checkRows(t, duck(t, dir, "").Rows, msgs)
}

// Binary data (not UTF-8), protobuf data and empty data round-trip byte
// for byte; JSON sent as binary with a JSON content type is text.
func TestBinaryRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dirConfig(dir, 64<<20, time.Hour))
	rec := newRecorder()
	var msgs []bridge.Message
	payloads := [][]byte{{}, {0x00}, {0xff, 0xfe, 0x00, 0x01}, make([]byte, 70_000), []byte("\x89PNG\r\n\x1a\n")}
	for j := range payloads[2] {
		payloads[2][j] = byte(j * 13)
	}
	for j, p := range payloads {
		m := event(5 + 8*j) // binary events
		m.Event.Data = &eventv1.CloudEvent_BinaryData{BinaryData: p}
		msgs = append(msgs, m)
	}
	js := event(1)
	js.Event.Data = &eventv1.CloudEvent_BinaryData{BinaryData: []byte(`{"a":[1,2]}`)}
	msgs = append(msgs, js)
	rec.send(t, s, msgs, 10)
	closeSink(t, s)
	rec.checkOnce(t, msgs)
	rows := duck(t, dir, "").Rows
	for _, r := range rows {
		if r["id"] == js.Event.GetId() {
			if r["data"] != `{"a":[1,2]}` || r["data_bytes"] != nil {
				t.Errorf("JSON binary data read as %v / %v", r["data"], r["data_bytes"])
			}
			r["data"], r["data_bytes"] = nil, "eyJhIjpbMSwyXX0=" // as checkRows expects binary data
		}
	}
	checkRows(t, rows, msgs)
}

// Records that cannot be written are refused for good; messages sent after
// Close get ErrClosed; the others go through.
func TestBadRecordsAndClosed(t *testing.T) {
	dir := t.TempDir()
	s := newSink(t, dirConfig(dir, 64<<20, time.Hour))
	good := event(0)
	noType := event(2)
	noType.Event.Type = ""
	msgs := []bridge.Message{
		{Cursor: "12-3"},
		{Cursor: "not-a-cursor", Event: event(1).Event},
		{Cursor: "17000-", Event: event(1).Event},
		noType,
		good,
	}
	errs := make([]error, len(msgs))
	calls := make([]int, len(msgs))
	doneCh := make(chan struct{}, len(msgs))
	s.Send(context.Background(), msgs, func(i int, err error) {
		errs[i] = err
		calls[i]++
		doneCh <- struct{}{}
	})
	for range 4 {
		<-doneCh
	}
	closeSink(t, s)
	for i := range 4 {
		if !bridge.IsPermanent(errs[i]) || calls[i] != 1 {
			t.Errorf("message %d: %v (%d calls), want one permanent error", i, errs[i], calls[i])
		}
	}
	if errs[4] != nil || calls[4] != 1 {
		t.Errorf("good message: %v (%d calls)", errs[4], calls[4])
	}
	var after error
	s.Send(context.Background(), []bridge.Message{event(4)}, func(_ int, err error) { after = err })
	if !errors.Is(after, ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", after)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	checkRows(t, duck(t, dir, "").Rows, []bridge.Message{good})
}

// While a partition directory cannot be created (the disk refuses), its
// messages get a transient error and nothing is visible; handed again once
// it can, they are written, each once.
func TestDirectoryFailsThenRecovers(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "type=billing.invoice.paid")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newSink(t, dirConfig(dir, 64<<20, time.Hour))
	msgs := []bridge.Message{event(0), event(2), event(4)}
	rec := newRecorder()
	rec.send(t, s, msgs, 10)
	rec.mu.Lock()
	for _, m := range msgs {
		if errs := rec.calls[m.Cursor]; len(errs) != 1 || errs[0] == nil || bridge.IsPermanent(errs[0]) {
			t.Errorf("%s: %v, want one transient error", m.Cursor, errs)
		}
	}
	rec.mu.Unlock()
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	rec = newRecorder()
	rec.send(t, s, msgs, 10)
	closeSink(t, s)
	rec.checkOnce(t, msgs)
	checkRows(t, duck(t, dir, "").Rows, msgs)
}

// New refuses settings it cannot use.
func TestNewRefuses(t *testing.T) {
	for name, cfg := range map[string]bridge.Config{
		"no lake":   {Bridge: dirConfig("", 0, 0).Bridge},
		"relative":  dirConfig("lake/dir", 0, 0),
		"no bucket": s3Config("http://127.0.0.1:1", "", 0),
		"bad url":   s3Config("127.0.0.1:9000", "b", 0),
		"no bridge": {Bridge: nil},
	} {
		if s, err := New(cfg); err == nil {
			_ = s.Close(context.Background())
			t.Errorf("%s: New accepted %v", name, cfg.Bridge)
		}
	}
}

func TestParseKey(t *testing.T) {
	for key, ok := range map[string]bool{
		"type=a.b/date=2026-12-03/hour=10/part-1-2-3-4.parquet":   true,
		"type=a.b/date=2026-12-03/hour=10/part-3-4-1-2.parquet":   false, // hi < lo
		"type=a.b/date=2026-12-03/hour=10/part-1-2-3.parquet":     false,
		"type=a.b/date=2026-12-03/hour=10/.tmp-123":               false,
		"type=a.b/date=2026-12-03/part-1-2-3-4.parquet":           false,
		"x/type=a.b/date=2026-12-03/hour=10/part-1-2-3-4.parquet": false,
	} {
		if _, _, _, got := parseKey(key); got != ok {
			t.Errorf("parseKey(%q) = %v", key, got)
		}
	}
	if got := escapeType("a/b c%"); got != "a%2Fb%20c%25" {
		t.Errorf("escapeType: %q", got)
	}
}

// Optional columns read back null exactly when absent, whatever the sizes
// of the batches written (parquet-go v0.32.1 gets this wrong for optional
// non-pointer fields, hence Row's pointers).
func TestOptionalColumnsKeepNulls(t *testing.T) {
	var want []Row
	for _, m := range events(0, 300) {
		c, _ := parseCursor(m.Cursor)
		r, _, err := rowOf(m, c)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, r)
	}
	for _, n := range []int{1, 2, 3, 5, 7, 8, 25} {
		var buf bytes.Buffer
		w := parquet.NewGenericWriter[Row](&buf)
		for i := 0; i < len(want); i += n {
			if _, err := w.Write(want[i:min(i+n, len(want))]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := parquet.Read[Row](bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("batches of %d: %d rows read, %d written", n, len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			if (g.Subject == nil) != (w.Subject == nil) || (g.DataSchema == nil) != (w.DataSchema == nil) ||
				(g.DataBytes == nil) != (w.DataBytes == nil) || (g.Data == nil) != (w.Data == nil) ||
				(g.Extensions == nil) != (w.Extensions == nil) || (g.Time == nil) != (w.Time == nil) {
				t.Fatalf("batches of %d: row %d read %+v, wrote %+v", n, i, g, w)
			}
		}
	}
}

// extensions are the JSON that encoding/json would write.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"uo\te`, "ctl\x00\x01\x1f\n\r\t", "caf\u00e9 \u2713", "bad\xff\xfeutf8", "<&>", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSONString(nil, s)
		var got, want string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q -> %s: %v", s, out, err)
		}
		std, _ := json.Marshal(s)
		if err := json.Unmarshal(std, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%q -> %q, encoding/json %q", s, got, want)
		}
	})
}

// waitAcked waits until the sink acknowledged a message (its file
// commits run in the background), or fails with msg.
func waitAcked(t *testing.T, rec *recorder, msg string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(rec.acked()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
