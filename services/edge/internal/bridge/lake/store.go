package lake

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tempPrefix starts the name of a file being written: hidden (a leading
// dot, which Hive, Spark and Trino skip) and without the .parquet
// extension (which `**/*.parquet` globs match).
const tempPrefix = ".tmp-"

// store is where committed files go: a directory or a bucket. Files are
// written to a local temporary file first (create), then made visible at
// once under their key (commit).
type store interface {
	// create opens a new temporary file for the partition dir.
	create(dir string) (*os.File, error)
	// commit makes tmp, complete and closed by nobody yet, visible as key
	// and closes it; the temporary file is gone afterwards either way.
	commit(ctx context.Context, tmp *os.File, key string) error
	// discard removes tmp.
	discard(tmp *os.File)
	// scan removes what a crash left half done and calls fn with the key
	// of every committed file.
	scan(ctx context.Context, fn func(key string)) error
	// cursors reads the cursor column of a committed file.
	cursors(ctx context.Context, key string) ([]cursor, error)
	// String names the store in errors.
	String() string
}

// dirStore writes under a local directory. A temporary file lives in its
// partition directory, so that committing it is a rename on the same file
// system, made durable by fsyncing the file, then the directory.
type dirStore struct{ root string }

func (d *dirStore) String() string { return d.root }

func (d *dirStore) create(dir string) (*os.File, error) {
	full := filepath.Join(d.root, filepath.FromSlash(dir))
	if err := os.MkdirAll(full, 0o755); err != nil {
		return nil, err
	}
	return os.CreateTemp(full, tempPrefix+"*")
}

func (d *dirStore) commit(_ context.Context, tmp *os.File, key string) error {
	final := filepath.Join(d.root, filepath.FromSlash(key))
	if err := tmp.Sync(); err != nil {
		d.discard(tmp)
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return fmt.Errorf("%w: %w", errVisible, err)
	}
	return nil
}

// errVisible marks a commit error after the file became visible (its
// directory's fsync failed): the file is known committed, so that its
// messages handed again are not written twice, but not acknowledged.
var errVisible = errors.New("committed but not durable")

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func (d *dirStore) discard(tmp *os.File) {
	_ = tmp.Close()
	_ = os.Remove(tmp.Name())
}

func (d *dirStore) scan(_ context.Context, fn func(key string)) error {
	if err := os.MkdirAll(d.root, 0o755); err != nil {
		return err
	}
	return filepath.WalkDir(d.root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		if strings.HasPrefix(e.Name(), tempPrefix) {
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove leftover %s: %w", path, err)
			}
			return nil
		}
		rel, err := filepath.Rel(d.root, path)
		if err != nil {
			return err
		}
		fn(filepath.ToSlash(rel))
		return nil
	})
}

func (d *dirStore) cursors(_ context.Context, key string) ([]cursor, error) {
	f, err := os.Open(filepath.Join(d.root, filepath.FromSlash(key)))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return readCursors(f, st.Size())
}
