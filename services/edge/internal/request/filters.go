package request

import (
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/heraldmesh/herald/platform/filter"
)

// filterCacheSize bounds the distinct filters kept compiled.
const filterCacheSize = 4096

// filterCache compiles each distinct expression once and shares the
// compiled filter between every request that uses it, so that the hub can
// also share each event's result per filter. Filters are checked as
// subscription filters are (filter.Check: the same cost limit and errors).
type filterCache struct {
	lru *lru.Cache[string, *filter.Filter]
}

func newFilterCache(size int) *filterCache {
	c, err := lru.New[string, *filter.Filter](size)
	if err != nil {
		panic(err) // only for a size <= 0
	}
	return &filterCache{lru: c}
}

func (c *filterCache) get(expr string) (*filter.Filter, error) {
	if f, ok := c.lru.Get(expr); ok {
		return f, nil
	}
	f, err := filter.Check(expr)
	if err != nil {
		return nil, err
	}
	// Two requests compiling the same new expression at once keep one.
	if prev, ok, _ := c.lru.PeekOrAdd(expr, f); ok {
		return prev, nil
	}
	return f, nil
}
