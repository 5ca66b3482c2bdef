package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// putBridge queues b under the next revision.
func (w *write) putBridge(b *registryv1.Bridge) {
	b.Revision = w.next()
	w.hset(keyBridges, b.GetId(), b)
	w.op(func(ctx context.Context, p redis.Pipeliner) { p.HSet(ctx, keyBridgeName, b.GetName(), b.GetId()) })
	w.record(&registryv1.WatchResponse{Revision: b.Revision, Change: &registryv1.WatchResponse_Bridge{Bridge: b}})
}

// bridgeByIDOrName reads a bridge by id or name.
func bridgeByIDOrName(ctx context.Context, c redis.Cmdable, idOrName string) (*registryv1.Bridge, error) {
	b := new(registryv1.Bridge)
	found, err := get(ctx, c, keyBridges, idOrName, b)
	if err != nil {
		return nil, err
	}
	if found {
		return b, nil
	}
	id, err := c.HGet(ctx, keyBridgeName, idOrName).Result()
	switch {
	case err == redis.Nil:
		return nil, &NotFoundError{Kind: "bridge", Name: idOrName}
	case err != nil:
		return nil, fmt.Errorf("read bridge name: %w", err)
	}
	if found, err = get(ctx, c, keyBridges, id, b); err != nil {
		return nil, err
	}
	if !found {
		return nil, &NotFoundError{Kind: "bridge", Name: idOrName}
	}
	return b, nil
}

// CreateBridge stores a new bridge (id set), with the key a source
// publishes with (key non-nil: stored by its hash in the same write). Its
// name must be free and its application exist; check then sees the
// application and the exact types the bridge names, and may refuse.
func (s *Store) CreateBridge(ctx context.Context, in *registryv1.Bridge, key *registryv1.Key, keyHash string, types []string, check func(*registryv1.Application, map[string]*registryv1.EventType) error) (*registryv1.Bridge, error) {
	var out *registryv1.Bridge
	err := s.update(ctx, func(w *write) error {
		taken, err := w.tx.HExists(ctx, keyBridgeName, in.GetName()).Result()
		if err != nil {
			return fmt.Errorf("read bridge names: %w", err)
		}
		if taken {
			return &ExistsError{Kind: "bridge", Name: in.GetName()}
		}
		app, err := getApp(ctx, w.tx, in.GetApplicationId())
		if err != nil {
			return err
		}
		found, err := requireTypes(ctx, w.tx, types)
		if err != nil {
			return err
		}
		if err := check(app, found); err != nil {
			return err
		}
		b := proto.Clone(in).(*registryv1.Bridge)
		b.CreateTime = w.timestamp()
		if key != nil {
			k := proto.Clone(key).(*registryv1.Key)
			k.CreateTime = b.CreateTime
			w.putKey(k, keyHash)
		}
		w.putBridge(b)
		out = b
		return nil
	})
	return out, err
}

// GetBridge returns a bridge by id or name, or a *NotFoundError.
func (s *Store) GetBridge(ctx context.Context, idOrName string) (*registryv1.Bridge, error) {
	return bridgeByIDOrName(ctx, s.rdb, idOrName)
}

// ListBridges returns every bridge, or those of one application, by name.
func (s *Store) ListBridges(ctx context.Context, appID string) ([]*registryv1.Bridge, error) {
	all, err := getAll(ctx, s.rdb, keyBridges, func() *registryv1.Bridge { return new(registryv1.Bridge) })
	if err != nil {
		return nil, err
	}
	if appID != "" {
		all = slices.DeleteFunc(all, func(b *registryv1.Bridge) bool { return b.GetApplicationId() != appID })
	}
	slices.SortFunc(all, func(a, b *registryv1.Bridge) int { return cmp.Compare(a.GetName(), b.GetName()) })
	return all, nil
}

// UpdateBridge changes a bridge: apply edits a copy, given its
// application and the exact types it names after the edit, and may refuse.
// Its id, name, application, direction and creation time are kept.
func (s *Store) UpdateBridge(ctx context.Context, idOrName string, apply func(b *registryv1.Bridge, types func([]string) (*registryv1.Application, map[string]*registryv1.EventType, error)) error) (*registryv1.Bridge, error) {
	var out *registryv1.Bridge
	err := s.update(ctx, func(w *write) error {
		cur, err := bridgeByIDOrName(ctx, w.tx, idOrName)
		if err != nil {
			return err
		}
		b := proto.Clone(cur).(*registryv1.Bridge)
		lookup := func(list []string) (*registryv1.Application, map[string]*registryv1.EventType, error) {
			app, err := getApp(ctx, w.tx, cur.GetApplicationId())
			if err != nil {
				return nil, nil, err
			}
			types, err := requireTypes(ctx, w.tx, list)
			return app, types, err
		}
		if err := apply(b, lookup); err != nil {
			return err
		}
		b.Id, b.Name, b.ApplicationId, b.Direction, b.CreateTime = cur.GetId(), cur.GetName(), cur.GetApplicationId(), cur.GetDirection(), cur.GetCreateTime()
		b.SealedKey, b.KeyId = cur.GetSealedKey(), cur.GetKeyId()
		w.putBridge(b)
		out = b
		return nil
	})
	return out, err
}

// DeleteBridge removes a bridge and revokes a source's key with it.
func (s *Store) DeleteBridge(ctx context.Context, idOrName string) (*registryv1.Bridge, error) {
	var out *registryv1.Bridge
	err := s.update(ctx, func(w *write) error {
		b, err := bridgeByIDOrName(ctx, w.tx, idOrName)
		if err != nil {
			return err
		}
		out = b
		if id := b.GetKeyId(); id != "" {
			k, hash, err := keyByID(ctx, w.tx, id)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			if err == nil && k.GetRevokeTime() == nil {
				k.RevokeTime = w.timestamp()
				w.putKey(k, hash)
			}
		}
		w.op(func(ctx context.Context, p redis.Pipeliner) {
			p.HDel(ctx, keyBridges, b.GetId())
			p.HDel(ctx, keyBridgeName, b.GetName())
		})
		w.record(&registryv1.WatchResponse{Revision: w.next(), Change: &registryv1.WatchResponse_Deleted{Deleted: &registryv1.Deletion{Kind: "bridge", Name: b.GetId()}}})
		return nil
	})
	return out, err
}
