package lake

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// These tests run the S3 path against gofakes3, an S3-compatible server
// (in memory) serving real HTTP on a loopback port, which can be stopped
// and started again on the same port with its objects kept.

const (
	testKeyID  = "AKIDLAKETEST"
	testSecret = "lake-test-secret-key"
	testBucket = "lake"
	testPrefix = "events/herald"
)

type fakeS3 struct {
	backend *s3mem.Backend
	addr    string
	mu      sync.Mutex
	srv     *http.Server
}

func startS3(t *testing.T) *fakeS3 {
	t.Helper()
	f := &fakeS3{backend: s3mem.New(), addr: testutil.FreeAddr(t)}
	if err := f.backend.CreateBucket(testBucket); err != nil {
		t.Fatal(err)
	}
	f.start(t)
	t.Cleanup(f.stop)
	return f
}

func (f *fakeS3) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatalf("listen %s: %v", f.addr, err)
	}
	srv := &http.Server{Handler: gofakes3.New(f.backend).Server(), ReadHeaderTimeout: 10 * time.Second}
	f.mu.Lock()
	f.srv = srv
	f.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (f *fakeS3) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		_ = f.srv.Close()
		f.srv = nil
	}
}

func (f *fakeS3) url() string { return "http://" + f.addr }

func s3Config(endpoint, bucket string, maxBytes int64) bridge.Config {
	lb := &registryv1.LakeBridge{MaxFileBytes: maxBytes, S3: &registryv1.S3Location{
		Endpoint: endpoint, Bucket: bucket, Prefix: testPrefix, AccessKeyId: testKeyID,
	}}
	return bridge.Config{Name: "lake-s3-test", Secret: testSecret, Bridge: &registryv1.Bridge{Name: "lake-s3-test", System: &registryv1.Bridge_Lake{Lake: lb}}}
}

// download copies every object under the prefix into a new directory,
// keys as paths, and returns it with the keys.
func (f *fakeS3) download(t *testing.T) (string, []string) {
	t.Helper()
	c, err := minio.New(f.addr, &minio.Options{Creds: credentials.NewStaticV4(testKeyID, testSecret, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	var keys []string
	for obj := range c.ListObjects(ctx, testBucket, minio.ListObjectsOptions{Prefix: testPrefix + "/", Recursive: true}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		rel := strings.TrimPrefix(obj.Key, testPrefix+"/")
		keys = append(keys, rel)
		if err := c.FGetObject(ctx, testBucket, obj.Key, filepath.Join(dir, filepath.FromSlash(rel)), minio.GetObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return dir, keys
}

// Files go to the bucket under the prefix in the same layout, read back
// by DuckDB; a new sink, after a crash mid-file, acknowledges what is in
// the bucket without writing it again (reading cursor columns from S3).
func TestS3WriteCrashAndRedelivery(t *testing.T) {
	f := startS3(t)
	cfg := s3Config(f.url(), testBucket, 8<<10)
	s := newSink(t, cfg)
	rec := newRecorder()
	sent := events(0, 300)
	rec.send(t, s, sent, 20)
	s.abandon()
	acked := rec.acked()
	if len(acked) == 0 || len(acked) == len(sent) {
		t.Fatalf("%d of %d acknowledged before the crash: want some", len(acked), len(sent))
	}
	dir, keys := f.download(t)
	for _, k := range keys {
		if keyPattern.FindString(k) == "" {
			t.Errorf("unexpected object %s", k)
		}
	}
	if rows := duck(t, dir, "").Rows; len(rows) != len(acked) {
		t.Errorf("the bucket holds %d rows after the crash, %d were acknowledged", len(rows), len(acked))
	}
	spool := filepath.Join(os.TempDir(), "herald-lake-lake-s3-test")
	if left, _ := os.ReadDir(spool); len(left) == 0 {
		t.Errorf("the crash left no spooled file: nothing was mid-file")
	}

	s2 := newSink(t, cfg)
	if left, _ := os.ReadDir(spool); len(left) != 0 {
		t.Errorf("New left the crashed spool: %v", left)
	}
	rec2 := newRecorder()
	all := append(sent, events(300, 400)...)
	rec2.send(t, s2, all, 20)
	s2.mu.Lock()
	reads := s2.idx.reads
	s2.mu.Unlock()
	if reads == 0 {
		t.Errorf("no cursor column read from the bucket")
	}
	closeSink(t, s2)
	rec2.checkOnce(t, all)
	if _, err := os.Stat(spool); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the spool directory: %v", err)
	}
	dir, _ = f.download(t)
	checkLayout(t, dir)
	checkRows(t, duck(t, dir, "").Rows, all)
}

// While the bucket is unreachable, commits fail and the messages get an
// error (not a permanent one); handed again once it is back, they are
// written, each once.
func TestS3DownThenBack(t *testing.T) {
	f := startS3(t)
	cfg := s3Config(f.url(), testBucket, 64<<20)
	cfg.Bridge.GetLake().MaxFileAge = durationProto(100 * time.Millisecond)
	s := newSink(t, cfg)
	f.stop()

	var mu sync.Mutex
	failed := map[string]error{}
	msgs := events(0, 40)
	s.Send(context.Background(), msgs, func(i int, err error) {
		mu.Lock()
		defer mu.Unlock()
		failed[msgs[i].Cursor] = err
	})
	testutil.Eventually(t, 2*time.Minute, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(failed) == len(msgs)
	}, "every message done while the bucket is down")
	for c, err := range failed {
		if err == nil || bridge.IsPermanent(err) {
			t.Fatalf("%s: %v, want a transient error", c, err)
		}
	}

	f.start(t)
	rec := newRecorder()
	rec.send(t, s, msgs, 40)
	rec.waitAcked(t, msgs)
	closeSink(t, s)
	rec.checkOnce(t, msgs)
	dir, _ := f.download(t)
	checkRows(t, duck(t, dir, "").Rows, msgs)
}

// Close gives up within its context when the bucket is unreachable: the
// messages of the files not committed get an error.
func TestS3CloseTimesOut(t *testing.T) {
	f := startS3(t)
	s := newSink(t, s3Config(f.url(), testBucket, 64<<20))
	f.stop()
	rec := newRecorder()
	msgs := events(0, 10)
	rec.send(t, s, msgs, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := s.Close(ctx); err == nil {
		t.Errorf("Close returned nil with the bucket down")
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, m := range msgs {
		if errs := rec.calls[m.Cursor]; len(errs) != 1 || errs[0] == nil {
			t.Errorf("%s: %v, want one error", m.Cursor, errs)
		}
	}
}

func durationProto(d time.Duration) *durationpb.Duration { return durationpb.New(d) }
