// Package lake is the data-lake bridge: a bridge.Sink writing events as
// Parquet files (github.com/parquet-go/parquet-go) in a Hive-partitioned
// layout, to a local directory or an S3-compatible bucket (minio-go).
//
// # Layout
//
//	<directory or s3 prefix>/type=<event type>/date=YYYY-MM-DD/hour=HH/part-<lo>-<hi>.parquet
//
// The date and hour, in UTC, are those of the event's time attribute, else
// of its cursor's millisecond timestamp (a cursor is <unix ms>-<seq>). A
// type is written as is when made of [A-Za-z0-9._-] (every catalog name
// is), any other byte as %XX. lo and hi are the lowest and highest cursors
// the file holds, in cursor order: every cursor of the file lies in
// between (others of the same type may too: an event goes to the hour of
// its own time).
//
// # Row schema (one row per event)
//
//	cursor          BYTE_ARRAY STRING, required   the event's log position
//	id              BYTE_ARRAY STRING, required
//	source          BYTE_ARRAY STRING, required   dictionary encoded
//	type            BYTE_ARRAY STRING, required   dictionary encoded (also the partition's type=)
//	subject         BYTE_ARRAY STRING, optional
//	time            INT64 TIMESTAMP(MICROS, isAdjustedToUTC=true), optional
//	                (CloudEvents times are truncated to the microsecond, which every engine reads)
//	datacontenttype BYTE_ARRAY STRING, optional   dictionary encoded
//	dataschema      BYTE_ARRAY STRING, optional   dictionary encoded
//	partitionkey    BYTE_ARRAY STRING, optional
//	extensions      BYTE_ARRAY JSON, optional     a JSON object of every other attribute
//	                (booleans and integers as JSON values, the rest in their canonical string form); null when none
//	data            BYTE_ARRAY STRING, optional   text data (JSON or text/*), else null
//	data_bytes      BYTE_ARRAY (no logical type: BLOB), optional   binary and protobuf data, else null
//
// Optional attributes are null when absent (CloudEvents requires them
// non-empty when present). Protobuf data is written like the structured
// JSON format does: its bytes, datacontenttype application/protobuf and
// dataschema the Any's type URL unless set. Columns are compressed with
// Zstandard (its fastest level); a file has row groups of about
// max_file_bytes/8.
//
// # Files and acknowledgement
//
// Each partition directory has at most one open file, written under a
// hidden temporary name (.tmp-..., without the .parquet extension) in that
// directory, or, for S3, spooled locally and uploaded with one PutObject.
// A file is committed when its estimated size (parquet-go's: bytes written
// plus the current row group before compression) reaches max_file_bytes,
// when it is max_file_age old, or on Close: its footer is written, the file
// fsynced, renamed to part-<lo>-<hi>.parquet and the directory fsynced (S3:
// uploaded), so that a partial file is never visible. done(i, nil) is
// called for a message only once the file holding it is committed; the
// engine acknowledges it then.
//
// # Each event once
//
// After a crash the engine hands again what was not acknowledged, part of
// which may already be in a committed file. New lists the committed files
// (and removes leftover temporary files); a message whose cursor is in one
// of them gets done(i, nil) without being written again. A cursor above
// every committed one of its type is new at once; one within a file's
// range but at neither end is looked up in that file's cursor column (read
// on demand, recent ones kept). A message whose cursor is already in an
// open file waits for that file. A directory or prefix belongs to one
// bridge.
package lake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"

	"github.com/heraldmesh/herald/services/edge/internal/bridge"
)

const (
	// DefaultMaxFileBytes is the roll size when the bridge sets none.
	DefaultMaxFileBytes = 64 << 20
	// DefaultMaxFileAge is the roll age when the bridge sets none.
	DefaultMaxFileAge = 5 * time.Minute
	// scanTimeout bounds New's listing of the committed files.
	scanTimeout = 5 * time.Minute
)

// ErrClosed is the error of messages sent after Close.
var ErrClosed = errors.New("lake: sink closed")

// Sink writes events to Parquet files. Send and Close may be called from
// any goroutine. Send encodes rows under the sink's lock (one Send at a
// time) and never waits for a commit, only, when files roll faster than
// they are committed, for room in the commit queue. Commits (footer,
// fsync, rename or upload) run on the sink's own goroutines, which call
// done; done may also run on Send's goroutine before Send returns, for a
// message refused or already committed.
type Sink struct {
	store         store
	maxBytes      int64
	maxAge        time.Duration
	rowGroupBytes int64
	options       []parquet.WriterOption

	mu       sync.Mutex
	closed   bool
	open     map[string]*file            // by partition directory
	live     map[*file]struct{}          // not finished: open, queued or committing
	pending  map[string]map[cursor]*file // by type: the cursors of live files
	idx      *index
	dirs     map[dirKey]string // partitionDir's results, the last hours'
	closeErr []error           // commit errors once Close began

	sending    sync.WaitGroup // Sends that may still queue files
	queue      chan *file
	commitCtx  context.Context
	cancel     context.CancelFunc
	committers sync.WaitGroup
	stopTick   chan struct{}
	ticker     sync.WaitGroup
	abandoned  atomic.Bool // tests: a crash, nothing is finished
}

type dirKey struct {
	typ  string
	hour int64 // since the epoch
}

// dir is partitionDir(typ, at), remembered. s.mu is held.
func (s *Sink) dir(typ string, at time.Time) string {
	k := dirKey{typ, at.Unix() / 3600}
	if at.Unix() < 0 {
		return partitionDir(typ, at)
	}
	d, ok := s.dirs[k]
	if !ok {
		if len(s.dirs) >= 4096 {
			clear(s.dirs)
		}
		d = partitionDir(typ, at)
		s.dirs[k] = d
	}
	return d
}

// file is one open (or committing) Parquet file of a partition.
type file struct {
	dir, typ  string
	tmp       *os.File
	w         *parquet.GenericWriter[Row]
	opened    time.Time
	lo, hi    cursor
	cursors   []cursor
	waiters   []call
	rows      []Row // rows of the current Send, written at its end
	count     int   // rows in the file, written or not
	flushedAt int64 // the size estimate after the last row group
	est       int64
	finished  bool // done was called for its waiters
}

// call is one done(i, err) to make, outside the lock.
type call struct {
	done func(int, error)
	i    int
	err  error
}

func run(calls []call) {
	for _, c := range calls {
		c.done(c.i, c.err)
	}
}

// New builds the sink of a lake bridge: cfg.Bridge.GetLake() gives the
// directory (absolute) or the S3 location, cfg.Secret the S3 secret access
// key. It lists the committed files before returning.
func New(cfg bridge.Config) (*Sink, error) {
	lb := cfg.Bridge.GetLake()
	if lb == nil {
		return nil, errors.New("lake: the bridge has no lake settings")
	}
	var st store
	switch dir, loc := lb.GetDirectory(), lb.GetS3(); {
	case dir != "" && loc != nil:
		return nil, errors.New("lake: set one of directory and s3, not both")
	case dir != "":
		if !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("lake: directory %q is not an absolute path", dir)
		}
		st = &dirStore{root: filepath.Clean(dir)}
	case loc != nil:
		s3, err := newS3Store(loc, cfg.Secret, cfg.Name)
		if err != nil {
			return nil, err
		}
		st = s3
	default:
		return nil, errors.New("lake: set a directory or an s3 location")
	}
	maxBytes := lb.GetMaxFileBytes()
	if maxBytes <= 0 {
		maxBytes = DefaultMaxFileBytes
	}
	maxAge := lb.GetMaxFileAge().AsDuration()
	if maxAge <= 0 {
		maxAge = DefaultMaxFileAge
	}
	s := &Sink{
		store:         st,
		maxBytes:      maxBytes,
		maxAge:        maxAge,
		rowGroupBytes: max(maxBytes/8, 1024),
		options: []parquet.WriterOption{
			parquet.Compression(&zstd.Codec{Level: zstd.SpeedFastest}),
			parquet.CreatedBy("herald lake bridge", "", ""),
		},
		open:     map[string]*file{},
		live:     map[*file]struct{}{},
		pending:  map[string]map[cursor]*file{},
		dirs:     map[dirKey]string{},
		queue:    make(chan *file, 64),
		stopTick: make(chan struct{}),
	}
	s.idx = newIndex(st.cursors)
	ctx, cancel := context.WithTimeout(context.Background(), scanTimeout)
	err := st.scan(ctx, func(key string) {
		if typ, lo, hi, ok := parseKey(key); ok {
			s.idx.add(typ, lo, hi, key, nil)
		}
	})
	cancel()
	if err != nil {
		s.closeStore()
		return nil, fmt.Errorf("lake: scan %s: %w", st, err)
	}
	s.commitCtx, s.cancel = context.WithCancel(context.Background())
	workers := 2
	if _, ok := st.(*s3Store); ok {
		workers = 4 // uploads wait on the network
	}
	for range workers {
		s.committers.Add(1)
		go s.commitLoop()
	}
	s.ticker.Add(1)
	go s.tickLoop()
	return s, nil
}

// Send writes msgs to their partitions' open files; see Sink.
func (s *Sink) Send(ctx context.Context, msgs []bridge.Message, done func(i int, err error)) {
	var calls []call
	var roll []*file
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		for i := range msgs {
			done(i, ErrClosed)
		}
		return
	}
	s.sending.Add(1)
	defer s.sending.Done()
	var touched []*file
	for i, m := range msgs {
		c, err := parseCursor(m.Cursor)
		if err != nil {
			calls = append(calls, call{done, i, bridge.Permanent(fmt.Errorf("lake: %w", err))})
			continue
		}
		row, at, err := rowOf(m, c)
		if err != nil {
			calls = append(calls, call{done, i, bridge.Permanent(fmt.Errorf("lake: %w", err))})
			continue
		}
		typ := escapeType(row.Type)
		if f := s.pending[typ][c]; f != nil {
			f.waiters = append(f.waiters, call{done: done, i: i})
			continue
		}
		have, err := s.idx.has(ctx, typ, c)
		if err != nil {
			calls = append(calls, call{done, i, fmt.Errorf("lake: %w", err)})
			continue
		}
		if have {
			calls = append(calls, call{done: done, i: i})
			continue
		}
		dir := s.dir(row.Type, at)
		f := s.open[dir]
		size := row.size()
		if f != nil && f.count > 0 && f.est+size > s.maxBytes {
			if err := s.write(f); err != nil {
				calls = append(calls, s.fail(f, err)...)
			} else {
				delete(s.open, dir)
				roll = append(roll, f)
			}
			f = nil
		}
		if f == nil {
			if f, err = s.newFile(dir, typ); err != nil {
				calls = append(calls, call{done, i, fmt.Errorf("lake: %w", err)})
				continue
			}
		}
		if len(f.rows) == 0 {
			touched = append(touched, f)
		}
		f.rows = append(f.rows, row)
		f.est += size
		f.count++
		if f.count == 1 || c.less(f.lo) {
			f.lo = c
		}
		if f.count == 1 || f.hi.less(c) {
			f.hi = c
		}
		f.cursors = append(f.cursors, c)
		f.waiters = append(f.waiters, call{done: done, i: i})
		if s.pending[typ] == nil {
			s.pending[typ] = map[cursor]*file{}
		}
		s.pending[typ][c] = f
	}
	for _, f := range touched {
		if f.finished || s.open[f.dir] != f {
			continue
		}
		if err := s.write(f); err != nil {
			calls = append(calls, s.fail(f, err)...)
			continue
		}
		if f.est >= s.maxBytes {
			delete(s.open, f.dir)
			roll = append(roll, f)
		}
	}
	s.mu.Unlock()
	for _, f := range roll {
		s.queue <- f
	}
	run(calls)
}

// newFile opens the temporary file of a partition. s.mu is held.
func (s *Sink) newFile(dir, typ string) (*file, error) {
	tmp, err := s.store.create(dir)
	if err != nil {
		return nil, fmt.Errorf("create a file in %s: %w", dir, err)
	}
	f := &file{dir: dir, typ: typ, tmp: tmp, opened: time.Now(), w: parquet.NewGenericWriter[Row](tmp, s.options...)}
	s.open[dir] = f
	s.live[f] = struct{}{}
	return f, nil
}

// write encodes the rows of the current Send, ending the row group when it
// is large enough. s.mu is held.
func (s *Sink) write(f *file) error {
	if len(f.rows) == 0 {
		return nil
	}
	_, err := f.w.Write(f.rows)
	clear(f.rows)
	f.rows = f.rows[:0]
	if err != nil {
		return fmt.Errorf("lake: write %s: %w", f.dir, err)
	}
	size := f.w.Size()
	if size-f.flushedAt >= s.rowGroupBytes {
		if err := f.w.Flush(); err != nil {
			return fmt.Errorf("lake: write %s: %w", f.dir, err)
		}
		size = f.w.Size()
		f.flushedAt = size
	}
	f.est = size
	return nil
}

// fail gives up an open file whose write failed. s.mu is held.
func (s *Sink) fail(f *file, err error) []call {
	if s.open[f.dir] == f {
		delete(s.open, f.dir)
	}
	s.store.discard(f.tmp)
	return s.finish(f, err)
}

// finish ends f's life and returns the dones of its waiters (none when
// they were already called). s.mu is held.
func (s *Sink) finish(f *file, err error) []call {
	delete(s.live, f)
	for _, c := range f.cursors {
		if s.pending[f.typ][c] == f {
			delete(s.pending[f.typ], c)
		}
	}
	if f.finished {
		return nil
	}
	f.finished = true
	calls := f.waiters
	for i := range calls {
		calls[i].err = err
	}
	f.waiters = nil
	return calls
}

func (s *Sink) commitLoop() {
	defer s.committers.Done()
	for f := range s.queue {
		run(s.commit(f))
	}
}

// commit writes f's footer and makes it visible.
func (s *Sink) commit(f *file) []call {
	if s.abandoned.Load() {
		_ = f.tmp.Close()
		return nil
	}
	key := f.dir + "/" + fileName(f.lo, f.hi)
	err := s.commitCtx.Err()
	if err == nil {
		err = f.w.Close()
	}
	if err == nil {
		err = s.store.commit(s.commitCtx, f.tmp, key)
	} else {
		s.store.discard(f.tmp)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("lake: commit %s: %w", key, err)
		if s.closed {
			s.closeErr = append(s.closeErr, err)
		}
	}
	if err == nil || errors.Is(err, errVisible) {
		cs := slices.Clone(f.cursors)
		slices.SortFunc(cs, compareCursor)
		s.idx.add(f.typ, f.lo, f.hi, key, cs)
	}
	return s.finish(f, err)
}

// tickLoop rolls the files that reached max_file_age.
func (s *Sink) tickLoop() {
	defer s.ticker.Done()
	t := time.NewTicker(min(max(s.maxAge/4, 10*time.Millisecond), time.Second))
	defer t.Stop()
	for {
		select {
		case <-s.stopTick:
			return
		case <-t.C:
		}
		var roll []*file
		s.mu.Lock()
		for dir, f := range s.open {
			if time.Since(f.opened) >= s.maxAge {
				delete(s.open, dir)
				roll = append(roll, f)
			}
		}
		s.mu.Unlock()
		for _, f := range roll {
			s.queue <- f
		}
	}
}

// Unordered tells the bridge runner that a lake keeps no order between
// events: each row carries its cursor and files commit independently, so
// the events of one partition key need not wait for each other's commit.
func (s *Sink) Unordered() {}

var _ bridge.Unordered = (*Sink)(nil)

// Close commits the open files and waits for every commit, up to ctx's
// end; then the messages whose file is not committed get done(i, err), and
// their commits are cancelled. It returns the commits' errors, or ctx's.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var roll []*file
	for dir, f := range s.open {
		delete(s.open, dir)
		roll = append(roll, f)
	}
	s.mu.Unlock()
	close(s.stopTick)
	s.ticker.Wait()
	s.sending.Wait()
	for _, f := range roll {
		select {
		case s.queue <- f:
		case <-ctx.Done():
			s.cancel() // the committers now fail fast, making room
			s.queue <- f
		}
	}
	close(s.queue)
	committed := make(chan struct{})
	go func() {
		s.committers.Wait()
		close(committed)
	}()
	var err error
	select {
	case <-committed:
	case <-ctx.Done():
		s.cancel()
		err = fmt.Errorf("lake: close: %w", ctx.Err())
		var calls []call
		s.mu.Lock()
		for f := range s.live {
			calls = append(calls, s.finish(f, err)...)
		}
		s.mu.Unlock()
		run(calls)
		<-committed
	}
	s.cancel()
	s.closeStore()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		return err
	}
	return errors.Join(s.closeErr...)
}

func (s *Sink) closeStore() {
	if st, ok := s.store.(*s3Store); ok {
		st.close()
	}
}

// abandon stops s as a crash would: no more commits, no done, temporary
// files left where they are. For tests.
func (s *Sink) abandon() {
	s.abandoned.Store(true)
	s.mu.Lock()
	s.closed = true
	for dir, f := range s.open {
		delete(s.open, dir)
		_ = f.tmp.Close()
	}
	s.mu.Unlock()
	close(s.stopTick)
	s.ticker.Wait()
	s.sending.Wait()
	close(s.queue)
	s.committers.Wait()
	s.cancel()
}
