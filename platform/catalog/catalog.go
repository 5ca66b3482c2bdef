// Package catalog is the local copy of the registry's event types that the
// router and the edge keep, so the publish and delivery paths never call the
// registry per event. It syncs the whole catalog periodically, compiles each
// schema once per revision, and fetches a type it has not seen yet on first
// use (a type created a moment ago is usable at once).
package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/schema"
	"golang.org/x/sync/singleflight"
)

// ErrUnknownType is returned for a type the registry does not have.
var ErrUnknownType = errors.New("event type is not registered")

// Type is one event type with its compiled schema.
type Type struct {
	Name     string
	Revision int64
	Schema   *schema.Schema
}

// Cache holds the catalog. Its zero value is not usable: call New.
type Cache struct {
	client registryv1connect.RegistryServiceClient
	log    *slog.Logger

	mu      sync.RWMutex
	types   map[string]*Type
	missing map[string]time.Time // recently confirmed unknown, to spare the registry
	synced  bool
	changed chan struct{} // closed and replaced on every change

	fetch singleflight.Group
}

// New returns a cache over a registry client (which must carry a key that
// may read the catalog).
func New(client registryv1connect.RegistryServiceClient, log *slog.Logger) *Cache {
	return &Cache{client: client, log: log, types: map[string]*Type{}, missing: map[string]time.Time{}, changed: make(chan struct{})}
}

// Run syncs every interval until ctx ends. Registry outages are logged and
// retried; the last good copy keeps serving.
func (c *Cache) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := c.Sync(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("catalog sync failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sync reads the whole catalog once.
func (c *Cache) Sync(ctx context.Context) error {
	var all []*registryv1.EventType
	token := ""
	for {
		res, err := c.client.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{PageSize: 1000, PageToken: token}))
		if err != nil {
			return fmt.Errorf("list event types: %w", err)
		}
		all = append(all, res.Msg.GetEventTypes()...)
		if token = res.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	next := make(map[string]*Type, len(all))
	c.mu.RLock()
	for _, et := range all {
		if old, ok := c.types[et.GetName()]; ok && old.Revision == et.GetRevision() {
			next[et.GetName()] = old
			continue
		}
		t, err := compile(et)
		if err != nil {
			c.log.Error("event type schema does not compile; the type is skipped", "type", et.GetName(), "err", err)
			continue
		}
		next[et.GetName()] = t
	}
	c.mu.RUnlock()
	c.replace(next)
	return nil
}

func compile(et *registryv1.EventType) (*Type, error) {
	s, err := schema.Compile(et.GetName(), et.GetSchema())
	if err != nil {
		return nil, err
	}
	return &Type{Name: et.GetName(), Revision: et.GetRevision(), Schema: s}, nil
}

func (c *Cache) replace(next map[string]*Type) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := !c.synced || len(next) != len(c.types)
	if !changed {
		for name, t := range next {
			if old, ok := c.types[name]; !ok || old != t {
				changed = true
				break
			}
		}
	}
	c.types = next
	c.synced = true
	if changed {
		close(c.changed)
		c.changed = make(chan struct{})
	}
}

// Lookup returns a type, asking the registry on a miss.
func (c *Cache) Lookup(ctx context.Context, name string) (*Type, error) {
	c.mu.RLock()
	t, ok := c.types[name]
	missAt, missing := c.missing[name]
	c.mu.RUnlock()
	if ok {
		return t, nil
	}
	if missing && time.Since(missAt) < time.Second {
		return nil, ErrUnknownType
	}
	v, err, _ := c.fetch.Do(name, func() (any, error) {
		res, err := c.client.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: name}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			c.mu.Lock()
			if len(c.missing) > 10000 {
				clear(c.missing)
			}
			c.missing[name] = time.Now()
			c.mu.Unlock()
			return nil, ErrUnknownType
		}
		if err != nil {
			return nil, fmt.Errorf("get event type %s: %w", name, err)
		}
		t, err := compile(res.Msg.GetEventType())
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.types[name] = t
		delete(c.missing, name)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		return t, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Type), nil
}

// Names returns every known type name, sorted, and a channel closed at the
// next change.
func (c *Cache) Names() ([]string, <-chan struct{}) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	names := make([]string, 0, len(c.types))
	for name := range c.types {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, c.changed
}

// Ready reports whether the catalog was synced at least once.
func (c *Cache) Ready(context.Context) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.synced {
		return errors.New("catalog not loaded from the registry yet")
	}
	return nil
}
