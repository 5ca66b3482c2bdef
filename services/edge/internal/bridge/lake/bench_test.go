package lake

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"
)

// benchMessages is n messages of the test log (two types, every kind of
// data, each its own id and data), without time attributes and 100 per
// millisecond, so that they fall in one hour: two partitions, as a steady
// stream would.
func benchMessages(n int) []bridge.Message {
	out := make([]bridge.Message, n)
	for i := range out {
		m := event(i)
		delete(m.Event.Attributes, "time")
		m.Cursor = fmt.Sprintf("%d-%d", base.UnixMilli()+int64(i/100), i%100)
		out[i] = m
	}
	return out
}

func dirBytes(b *testing.B, dir string) int64 {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		info, err := e.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkLakeSink sends b.N events through the sink in batches of 100
// (default roll size; Close commits), acknowledgements included.
func BenchmarkLakeSink(b *testing.B) {
	msgs := benchMessages(b.N)
	dir := b.TempDir()
	s, err := New(dirConfig(dir, 0, time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	done := func(int, error) {}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < len(msgs); i += 100 {
		s.Send(context.Background(), msgs[i:min(i+100, len(msgs))], done)
	}

	if err := s.Close(context.Background()); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(dirBytes(b, dir))/float64(b.N), "bytes/event")
}

// BenchmarkParquetDirect is the baseline: the same rows (built beforehand)
// written straight to one parquet-go writer per type with the sink's
// options, in batches of 100, then closed and fsynced.
func BenchmarkParquetDirect(b *testing.B) {
	msgs := benchMessages(b.N)
	rows := map[string][]Row{}
	for _, m := range msgs {
		c, _ := parseCursor(m.Cursor)
		r, _, err := rowOf(m, c)
		if err != nil {
			b.Fatal(err)
		}
		rows[r.Type] = append(rows[r.Type], r)
	}
	dir := b.TempDir()
	opts := (func() []parquet.WriterOption {
		sk, err := New(dirConfig(b.TempDir(), 0, time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		defer sk.Close(context.Background())
		return sk.options
	})()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for typ, rs := range rows {
		f, err := os.Create(filepath.Join(dir, typ+".parquet"))
		if err != nil {
			b.Fatal(err)
		}
		w := parquet.NewGenericWriter[Row](f, opts...)
		for i := 0; i < len(rs); i += 100 {
			if _, err := w.Write(rs[i:min(i+100, len(rs))]); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(dirBytes(b, dir))/float64(b.N), "bytes/event")
}
