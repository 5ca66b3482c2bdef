package lake

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// s3Store writes to an S3-compatible bucket. A file is spooled to a local
// temporary file and uploaded at commit with one PutObject, which makes it
// visible whole or not at all (minio-go turns a large one into a
// multipart upload, which also appears only when completed). Nothing half
// written ever reaches the bucket, so a crash leaves only the local spool,
// which the next New clears.
type s3Store struct {
	client *minio.Client
	bucket string
	prefix string // "" or ending in "/"
	spool  string
}

func newS3Store(loc *registryv1.S3Location, secret, name string) (*s3Store, error) {
	if loc.GetBucket() == "" {
		return nil, errors.New("lake: s3.bucket is required")
	}
	u, err := url.Parse(loc.GetEndpoint())
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("lake: s3.endpoint %q is not an http(s) URL", loc.GetEndpoint())
	}
	region := loc.GetRegion()
	if region == "" {
		region = "us-east-1"
	}
	var creds *credentials.Credentials
	if loc.GetAccessKeyId() != "" {
		creds = credentials.NewStaticV4(loc.GetAccessKeyId(), secret, "")
	} else {
		creds = credentials.NewStatic("", "", "", credentials.SignatureAnonymous)
	}
	client, err := minio.New(u.Host, &minio.Options{Creds: creds, Secure: u.Scheme == "https", Region: region})
	if err != nil {
		return nil, fmt.Errorf("lake: s3 client: %w", err)
	}
	prefix := strings.Trim(loc.GetPrefix(), "/")
	if prefix != "" {
		prefix += "/"
	}
	// One spool directory per bridge: what a crashed process left there is
	// removed (a bridge runs in one process at a time).
	spool := filepath.Join(os.TempDir(), "herald-lake-"+escapeType(name))
	if err := os.RemoveAll(spool); err != nil {
		return nil, fmt.Errorf("lake: clear spool %s: %w", spool, err)
	}
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("lake: spool: %w", err)
	}
	return &s3Store{client: client, bucket: loc.GetBucket(), prefix: prefix, spool: spool}, nil
}

func (s *s3Store) String() string { return "s3://" + s.bucket + "/" + s.prefix }

func (s *s3Store) create(string) (*os.File, error) { return os.CreateTemp(s.spool, tempPrefix+"*") }

func (s *s3Store) commit(ctx context.Context, tmp *os.File, key string) error {
	defer s.discard(tmp)
	st, err := tmp.Stat()
	if err != nil {
		return err
	}
	if _, err := tmp.Seek(0, 0); err != nil {
		return err
	}
	_, err = s.client.PutObject(ctx, s.bucket, s.prefix+key, tmp, st.Size(),
		minio.PutObjectOptions{ContentType: "application/vnd.apache.parquet"})
	if err != nil {
		return fmt.Errorf("put %s: %w", s.prefix+key, err)
	}
	return nil
}

func (s *s3Store) discard(tmp *os.File) {
	_ = tmp.Close()
	_ = os.Remove(tmp.Name())
}

func (s *s3Store) scan(ctx context.Context, fn func(key string)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("list %s: %w", s, obj.Err)
		}
		fn(strings.TrimPrefix(obj.Key, s.prefix))
	}
	return nil
}

func (s *s3Store) cursors(ctx context.Context, key string) ([]cursor, error) {
	obj, err := s.client.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	st, err := obj.Stat()
	if err != nil {
		return nil, err
	}
	return readCursors(obj, st.Size)
}

// close removes the spool directory.
func (s *s3Store) close() { _ = os.RemoveAll(s.spool) }
