package lake

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/parquet-go/parquet-go"
)

// index knows which cursors of each type are in committed files: the
// range of every file from its name, and, for a cursor inside a range but
// not at one of its ends, the file's cursor column read on demand (a few
// recent ones kept). Files of one type may overlap (events of one type go
// to the hour of their own time attribute), so a range alone proves
// nothing in between its ends.
type index struct {
	types map[string]*typeIndex
	cache cursorCache
	read  func(ctx context.Context, key string) ([]cursor, error)
	reads int // files whose cursor column was read
}

type typeIndex struct {
	files []fileRange // by hi, then lo
	hi    cursor      // the highest cursor committed
}

type fileRange struct {
	lo, hi cursor
	key    string
}

func newIndex(read func(ctx context.Context, key string) ([]cursor, error)) *index {
	return &index{types: map[string]*typeIndex{}, read: read, cache: cursorCache{max: cacheCursors}}
}

// add records a committed file. cursors, when known (a file this process
// wrote), are kept so that a repeat needs no read.
func (x *index) add(typ string, lo, hi cursor, key string, cursors []cursor) {
	t := x.types[typ]
	if t == nil {
		t = &typeIndex{}
		x.types[typ] = t
	}
	f := fileRange{lo: lo, hi: hi, key: key}
	i := sort.Search(len(t.files), func(i int) bool {
		g := t.files[i]
		return hi.less(g.hi) || hi == g.hi && lo.less(g.lo)
	})
	t.files = slices.Insert(t.files, i, f)
	if t.hi.less(hi) {
		t.hi = hi
	}
	if cursors != nil {
		x.cache.put(key, cursors)
	}
}

// has reports whether c of type typ is in a committed file.
func (x *index) has(ctx context.Context, typ string, c cursor) (bool, error) {
	t := x.types[typ]
	if t == nil || t.hi.less(c) {
		return false, nil // the common case: past everything committed
	}
	for i := len(t.files) - 1; i >= 0 && !t.files[i].hi.less(c); i-- {
		f := t.files[i]
		if c.less(f.lo) {
			continue
		}
		if c == f.lo || c == f.hi {
			return true, nil
		}
		cs, ok := x.cache.get(f.key)
		if !ok {
			var err error
			if cs, err = x.read(ctx, f.key); err != nil {
				return false, fmt.Errorf("read cursors of %s: %w", f.key, err)
			}
			x.reads++
			x.cache.put(f.key, cs)
		}
		if _, found := slices.BinarySearchFunc(cs, c, compareCursor); found {
			return true, nil
		}
	}
	return false, nil
}

func compareCursor(a, b cursor) int {
	switch {
	case a.less(b):
		return -1
	case b.less(a):
		return 1
	}
	return 0
}

// cacheCursors bounds the cursors the index keeps in memory (16 bytes
// each).
const cacheCursors = 1 << 20

// cursorCache keeps the sorted cursor lists of the files used last, up to
// max cursors in all.
type cursorCache struct {
	max   int
	n     int
	order []string // oldest first
	sets  map[string][]cursor
}

func (c *cursorCache) get(key string) ([]cursor, bool) {
	cs, ok := c.sets[key]
	if ok {
		if i := slices.Index(c.order, key); i >= 0 {
			c.order = append(slices.Delete(c.order, i, i+1), key)
		}
	}
	return cs, ok
}

func (c *cursorCache) put(key string, cs []cursor) {
	if c.sets == nil {
		c.sets = map[string][]cursor{}
	}
	if old, ok := c.sets[key]; ok {
		c.n -= len(old)
		c.order = slices.DeleteFunc(c.order, func(k string) bool { return k == key })
	}
	c.sets[key] = cs
	c.order = append(c.order, key)
	c.n += len(cs)
	for c.n > c.max && len(c.order) > 1 {
		old := c.order[0]
		c.order = c.order[1:]
		c.n -= len(c.sets[old])
		delete(c.sets, old)
	}
}

// readCursors reads the cursor column of a Parquet file, sorted.
func readCursors(r io.ReaderAt, size int64) ([]cursor, error) {
	f, err := parquet.OpenFile(r, size, parquet.SkipBloomFilters(true), parquet.SkipPageIndex(true))
	if err != nil {
		return nil, err
	}
	leaf, ok := f.Schema().Lookup("cursor")
	if !ok {
		return nil, fmt.Errorf("no cursor column")
	}
	out := make([]cursor, 0, f.NumRows())
	buf := make([]parquet.Value, 1024)
	for _, rg := range f.RowGroups() {
		pages := rg.ColumnChunks()[leaf.ColumnIndex].Pages()
		for {
			p, err := pages.ReadPage()
			if err == io.EOF {
				break
			}
			if err != nil {
				pages.Close()
				return nil, err
			}
			vr := p.Values()
			for {
				n, err := vr.ReadValues(buf)
				for _, v := range buf[:n] {
					c, perr := parseCursor(string(v.ByteArray()))
					if perr != nil {
						pages.Close()
						parquet.Release(p)
						return nil, perr
					}
					out = append(out, c)
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					pages.Close()
					parquet.Release(p)
					return nil, err
				}
			}
			parquet.Release(p)
		}
		pages.Close()
	}
	slices.SortFunc(out, compareCursor)
	return out, nil
}
