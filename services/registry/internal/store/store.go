// Package store keeps the registry's catalog in Redis.
//
// Keys:
//
//	herald:registry:types      hash   event type name -> EventType (protobuf)
//	herald:registry:apps       hash   application id  -> Application (protobuf)
//	herald:registry:keys       hash   hex SHA-256 of a key secret -> Key (protobuf, never the secret)
//	herald:registry:key_ids    hash   key id -> hex SHA-256 of its secret
//	herald:registry:revision   string the catalog revision, incremented by every write
package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

const (
	keyTypes    = "herald:registry:types"
	keyApps     = "herald:registry:apps"
	keyKeys     = "herald:registry:keys"
	keyKeyIDs   = "herald:registry:key_ids"
	keyRevision = "herald:registry:revision"
)

// Errors the handlers map to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
)

// Store reads and writes the catalog.
type Store struct{ rdb redis.Cmdable }

// New returns a Store.
func New(rdb redis.Cmdable) *Store { return &Store{rdb: rdb} }

// NextRevision reserves the next catalog revision.
func (s *Store) NextRevision(ctx context.Context) (int64, error) {
	rev, err := s.rdb.Incr(ctx, keyRevision).Result()
	if err != nil {
		return 0, fmt.Errorf("next revision: %w", err)
	}
	return rev, nil
}

// CreateEventType stores et unless the name is taken.
func (s *Store) CreateEventType(ctx context.Context, et *registryv1.EventType) error {
	b, err := proto.Marshal(et)
	if err != nil {
		return err
	}
	ok, err := s.rdb.HSetNX(ctx, keyTypes, et.GetName(), b).Result()
	if err != nil {
		return fmt.Errorf("create event type %s: %w", et.GetName(), err)
	}
	if !ok {
		return ErrExists
	}
	return nil
}

// GetEventType returns one event type.
func (s *Store) GetEventType(ctx context.Context, name string) (*registryv1.EventType, error) {
	b, err := s.rdb.HGet(ctx, keyTypes, name).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get event type %s: %w", name, err)
	}
	et := new(registryv1.EventType)
	if err := proto.Unmarshal(b, et); err != nil {
		return nil, fmt.Errorf("decode event type %s: %w", name, err)
	}
	return et, nil
}

// ListEventTypes returns up to limit event types whose names sort after
// `after`, in name order, and whether more follow.
func (s *Store) ListEventTypes(ctx context.Context, after string, limit int) ([]*registryv1.EventType, bool, error) {
	all, err := s.rdb.HGetAll(ctx, keyTypes).Result()
	if err != nil {
		return nil, false, fmt.Errorf("list event types: %w", err)
	}
	names := make([]string, 0, len(all))
	for name := range all {
		if name > after {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	more := len(names) > limit
	if more {
		names = names[:limit]
	}
	out := make([]*registryv1.EventType, 0, len(names))
	for _, name := range names {
		et := new(registryv1.EventType)
		if err := proto.Unmarshal([]byte(all[name]), et); err != nil {
			return nil, false, fmt.Errorf("decode event type %s: %w", name, err)
		}
		out = append(out, et)
	}
	return out, more, nil
}

// CreateApplication stores an application with its first key, atomically.
func (s *Store) CreateApplication(ctx context.Context, app *registryv1.Application, key *registryv1.Key, keyHash string) error {
	ab, err := proto.Marshal(app)
	if err != nil {
		return err
	}
	stored := proto.Clone(key).(*registryv1.Key)
	stored.Secret = ""
	kb, err := proto.Marshal(stored)
	if err != nil {
		return err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, keyApps, app.GetId(), ab)
		p.HSet(ctx, keyKeys, keyHash, kb)
		p.HSet(ctx, keyKeyIDs, key.GetId(), keyHash)
		return nil
	})
	if err != nil {
		return fmt.Errorf("create application: %w", err)
	}
	return nil
}

// GetApplication returns one application.
func (s *Store) GetApplication(ctx context.Context, id string) (*registryv1.Application, error) {
	b, err := s.rdb.HGet(ctx, keyApps, id).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get application %s: %w", id, err)
	}
	app := new(registryv1.Application)
	if err := proto.Unmarshal(b, app); err != nil {
		return nil, fmt.Errorf("decode application %s: %w", id, err)
	}
	return app, nil
}

// KeyByHash returns the key whose secret hashes to keyHash.
func (s *Store) KeyByHash(ctx context.Context, keyHash string) (*registryv1.Key, error) {
	b, err := s.rdb.HGet(ctx, keyKeys, keyHash).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get key: %w", err)
	}
	k := new(registryv1.Key)
	if err := proto.Unmarshal(b, k); err != nil {
		return nil, fmt.Errorf("decode key: %w", err)
	}
	return k, nil
}
