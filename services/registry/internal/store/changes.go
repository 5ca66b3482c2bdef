package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Snapshot is the catalog at one revision: what a catalog page or an
// AsyncAPI document shows. Its fields are plain so that other packages can
// mirror it (catalogview.Catalog converts from it directly): keep them so.
type Snapshot struct {
	// Revision is the catalog revision the snapshot was read at.
	Revision int64
	// Domains in name order.
	Domains []*registryv1.Domain
	// EventTypes in name order; each carries its latest schema.
	EventTypes []*registryv1.EventType
	// Products in name order.
	Products []*registryv1.Product
	// SchemaVersions holds each event type's versions, oldest first, by
	// type name.
	SchemaVersions map[string][]*registryv1.SchemaVersion
	// Applications in id order.
	Applications []*registryv1.Application
	// Bridges in id order, as stored (sealed fields included: views
	// must leave them out).
	Bridges []*registryv1.Bridge
}

// State is everything the registry holds at one revision: what Watch sends
// first.
type State struct {
	// Snapshot without SchemaVersions (types carry their latest schema).
	Snapshot
	// Keys of every application, revoked and expired ones included, with
	// the hash of their secret (never the secret), in key id order.
	Keys []*registryv1.KeyChange
	// Subscriptions in id order.
	Subscriptions []*registryv1.Subscription
}

// Snapshot reads the catalog consistently: everything in it is as of
// Revision.
func (s *Store) Snapshot(ctx context.Context) (*Snapshot, error) {
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		st, err := s.read(ctx, false)
		if err != nil {
			return nil, err
		}
		snap := &st.Snapshot
		// Versions live in one list per type: read them with the revision
		// and start over if a write came in between.
		var revCmd *redis.StringCmd
		lists := make([]*redis.StringSliceCmd, len(snap.EventTypes))
		_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			revCmd = p.Get(ctx, keyRevision)
			for i, et := range snap.EventTypes {
				lists[i] = p.LRange(ctx, keySchemas(et.GetName()), 0, -1)
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read schema versions: %w", err)
		}
		if rev, _ := revCmd.Int64(); rev != snap.Revision {
			continue
		}
		snap.SchemaVersions = make(map[string][]*registryv1.SchemaVersion, len(snap.EventTypes))
		for i, et := range snap.EventTypes {
			vs, err := decodeVersions(et, lists[i].Val())
			if err != nil {
				return nil, err
			}
			snap.SchemaVersions[et.GetName()] = vs
		}
		return snap, nil
	}
	return nil, ErrBusy
}

// State reads every resource in one MULTI, so at one revision.
func (s *Store) State(ctx context.Context) (*State, error) { return s.read(ctx, true) }

// read reads the catalog in one MULTI; keys and subscriptions only with
// withAccess.
func (s *Store) read(ctx context.Context, withAccess bool) (*State, error) {
	var rev *redis.StringCmd
	var domains, types, products, apps, keys, subs, bridges *redis.MapStringStringCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		rev = p.Get(ctx, keyRevision)
		domains = p.HGetAll(ctx, keyDomains)
		types = p.HGetAll(ctx, keyTypes)
		products = p.HGetAll(ctx, keyProducts)
		apps = p.HGetAll(ctx, keyApps)
		bridges = p.HGetAll(ctx, keyBridges)
		if withAccess {
			keys = p.HGetAll(ctx, keyKeys)
			subs = p.HGetAll(ctx, keySubs)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read catalog: %w", err)
	}
	st := &State{}
	snap := &st.Snapshot
	if rev.Err() == nil {
		if snap.Revision, err = rev.Int64(); err != nil {
			return nil, fmt.Errorf("read revision: %w", err)
		}
	}
	if snap.Domains, err = decodeAll(keyDomains, domains.Val(), func() *registryv1.Domain { return new(registryv1.Domain) }); err != nil {
		return nil, err
	}
	sortDomains(snap.Domains)
	if snap.EventTypes, err = decodeAll(keyTypes, types.Val(), func() *registryv1.EventType { return new(registryv1.EventType) }); err != nil {
		return nil, err
	}
	for _, et := range snap.EventTypes {
		fixType(et)
	}
	sortTypes(snap.EventTypes)
	if snap.Products, err = decodeAll(keyProducts, products.Val(), func() *registryv1.Product { return new(registryv1.Product) }); err != nil {
		return nil, err
	}
	sortProducts(snap.Products)
	if snap.Applications, err = decodeAll(keyApps, apps.Val(), func() *registryv1.Application { return new(registryv1.Application) }); err != nil {
		return nil, err
	}
	sortBy(snap.Applications, (*registryv1.Application).GetId)
	if snap.Bridges, err = decodeAll(keyBridges, bridges.Val(), func() *registryv1.Bridge { return new(registryv1.Bridge) }); err != nil {
		return nil, err
	}
	sortBy(snap.Bridges, (*registryv1.Bridge).GetId)
	if !withAccess {
		return st, nil
	}
	for hash, v := range keys.Val() {
		k := new(registryv1.Key)
		if err := proto.Unmarshal([]byte(v), k); err != nil {
			return nil, fmt.Errorf("decode key: %w", err)
		}
		st.Keys = append(st.Keys, &registryv1.KeyChange{Key: k, KeyHash: hash})
	}
	sortBy(st.Keys, func(k *registryv1.KeyChange) string { return k.GetKey().GetId() })
	if st.Subscriptions, err = decodeAll(keySubs, subs.Val(), func() *registryv1.Subscription { return new(registryv1.Subscription) }); err != nil {
		return nil, err
	}
	sortBy(st.Subscriptions, (*registryv1.Subscription).GetId)
	return st, nil
}

func sortBy[T any](s []T, key func(T) string) {
	slices.SortFunc(s, func(a, b T) int { return strings.Compare(key(a), key(b)) })
}

// ErrLogTrimmed means the change log no longer holds every change after a
// revision: the reader has to start again from a snapshot.
var ErrLogTrimmed = errors.New("the change log no longer goes back that far")

// RevisionAheadError means a reader claims a revision the catalog has not
// reached (its Redis was replaced, say).
type RevisionAheadError struct{ Sent, Current int64 }

func (e *RevisionAheadError) Error() string {
	return fmt.Sprintf("revision %d is ahead of the catalog, which is at revision %d", e.Sent, e.Current)
}

// CheckResume tells whether the change log holds every change after rev:
// nil, an error matching ErrLogTrimmed, or a *RevisionAheadError.
func (s *Store) CheckResume(ctx context.Context, rev int64) error {
	var revCmd *redis.StringCmd
	var firstCmd *redis.XMessageSliceCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		revCmd = p.Get(ctx, keyRevision)
		firstCmd = p.XRangeN(ctx, keyChanges, "-", "+", 1)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("read change log: %w", err)
	}
	var cur int64
	if revCmd.Err() == nil {
		if cur, err = revCmd.Int64(); err != nil {
			return fmt.Errorf("read revision: %w", err)
		}
	}
	switch {
	case rev > cur:
		return &RevisionAheadError{Sent: rev, Current: cur}
	case rev == cur:
		return nil
	}
	first := firstCmd.Val()
	if len(first) == 0 {
		return fmt.Errorf("%w: it is empty, and the catalog is at revision %d", ErrLogTrimmed, cur)
	}
	firstRev, err := entryRevision(first[0])
	if err != nil {
		return err
	}
	if firstRev > rev+1 {
		return fmt.Errorf("%w: it starts at revision %d", ErrLogTrimmed, firstRev)
	}
	return nil
}

// ChangesAfter returns at most count change records with revisions above
// rev, oldest first. When there is none yet it waits up to block for one
// (go-redis cannot interrupt that wait when ctx ends: keep it short). A gap
// in the revisions, which only trimming can cause, is an error matching
// ErrLogTrimmed.
func (s *Store) ChangesAfter(ctx context.Context, rev int64, count int, block time.Duration) ([]*registryv1.WatchResponse, error) {
	res, err := s.rdb.XRead(ctx, &redis.XReadArgs{
		Streams: []string{keyChanges, strconv.FormatInt(rev, 10) + "-0"},
		Count:   int64(count),
		Block:   block,
	}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read change log: %w", err)
	}
	var out []*registryv1.WatchResponse
	for _, stream := range res {
		for _, m := range stream.Messages {
			r, err := entryRevision(m)
			if err != nil {
				return nil, err
			}
			if r != rev+1 {
				return nil, fmt.Errorf("%w: revision %d follows %d", ErrLogTrimmed, r, rev)
			}
			data, _ := m.Values["change"].(string)
			c := new(registryv1.WatchResponse)
			if err := proto.Unmarshal([]byte(data), c); err != nil {
				return nil, fmt.Errorf("decode change %d: %w", r, err)
			}
			out = append(out, c)
			rev = r
		}
	}
	return out, nil
}

func entryRevision(m redis.XMessage) (int64, error) {
	s, _ := m.Values["rev"].(string)
	r, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("change log entry %s has no revision", m.ID)
	}
	return r, nil
}
