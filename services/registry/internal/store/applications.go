package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// putApp queues app under the next revision.
func (w *write) putApp(app *registryv1.Application) {
	app.Revision = w.next()
	w.hset(keyApps, app.GetId(), app)
	w.record(&registryv1.WatchResponse{Revision: app.Revision, Change: &registryv1.WatchResponse_Application{Application: app}})
}

// putKey queues k (without its secret) under the next revision.
func (w *write) putKey(k *registryv1.Key, hash string) {
	k = proto.Clone(k).(*registryv1.Key)
	k.Secret = ""
	rev := w.next()
	w.hset(keyKeys, hash, k)
	w.op(func(ctx context.Context, p redis.Pipeliner) {
		p.HSet(ctx, keyKeyIDs, k.GetId(), hash)
		p.SAdd(ctx, keyAppKeys(k.GetApplicationId()), hash)
	})
	w.record(&registryv1.WatchResponse{Revision: rev, Change: &registryv1.WatchResponse_Key{Key: &registryv1.KeyChange{Key: k, KeyHash: hash}}})
}

// putSub queues sub under the next revision.
func (w *write) putSub(sub *registryv1.Subscription) {
	sub.Revision = w.next()
	w.hset(keySubs, sub.GetId(), sub)
	w.op(func(ctx context.Context, p redis.Pipeliner) {
		p.SAdd(ctx, keyAppSubs(sub.GetApplicationId()), sub.GetId())
	})
	w.record(&registryv1.WatchResponse{Revision: sub.Revision, Change: &registryv1.WatchResponse_Subscription{Subscription: sub}})
}

func getApp(ctx context.Context, c redis.Cmdable, id string) (*registryv1.Application, error) {
	app := new(registryv1.Application)
	found, err := get(ctx, c, keyApps, id, app)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &NotFoundError{Kind: "application", Name: id}
	}
	return app, nil
}

// CreateApplication stores a new application (app.id set) with its first
// key, of which only the hash is kept. It returns them with their creation
// time and revision; the key keeps its secret.
func (s *Store) CreateApplication(ctx context.Context, in *registryv1.Application, key *registryv1.Key, keyHash string) (*registryv1.Application, *registryv1.Key, error) {
	var app *registryv1.Application
	var k *registryv1.Key
	err := s.update(ctx, func(w *write) error {
		found, err := get(ctx, w.tx, keyApps, in.GetId(), new(registryv1.Application))
		if err != nil {
			return err
		}
		if found {
			return &ExistsError{Kind: "application", Name: in.GetId()}
		}
		app = proto.Clone(in).(*registryv1.Application)
		app.CreateTime = w.timestamp()
		w.putApp(app)
		k = proto.Clone(key).(*registryv1.Key)
		k.ApplicationId, k.CreateTime = app.GetId(), w.timestamp()
		w.putKey(k, keyHash)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return app, k, nil
}

// GetApplication returns one application, or a *NotFoundError.
func (s *Store) GetApplication(ctx context.Context, id string) (*registryv1.Application, error) {
	return getApp(ctx, s.rdb, id)
}

// ListApplications returns every application in id order.
func (s *Store) ListApplications(ctx context.Context) ([]*registryv1.Application, error) {
	apps, err := getAll(ctx, s.rdb, keyApps, func() *registryv1.Application { return new(registryv1.Application) })
	slices.SortFunc(apps, func(a, b *registryv1.Application) int { return cmp.Compare(a.GetId(), b.GetId()) })
	return apps, err
}

// UpdateApplication changes an application: apply edits a copy of the
// current one, whose revision must be revision (else a *ConflictError). Its
// id and creation time are kept.
func (s *Store) UpdateApplication(ctx context.Context, id string, revision int64, apply func(*registryv1.Application) error) (*registryv1.Application, error) {
	var out *registryv1.Application
	err := s.update(ctx, func(w *write) error {
		app, err := getApp(ctx, w.tx, id)
		if err != nil {
			return err
		}
		if app.GetRevision() != revision {
			return &ConflictError{Kind: "application", Name: id, Sent: revision, Current: app.GetRevision()}
		}
		createTime := app.GetCreateTime()
		if err := apply(app); err != nil {
			return err
		}
		app.Id, app.CreateTime = id, createTime
		w.putApp(app)
		out = app
		return nil
	})
	return out, err
}

// CreateKey stores a new key (only its hash) for its application. With
// rotateOverlap set, every other key of the application that is neither
// revoked nor expiring sooner expires after that overlap, in the same
// write. It returns the key with its creation time, secret included.
func (s *Store) CreateKey(ctx context.Context, key *registryv1.Key, keyHash string, rotateOverlap *time.Duration) (*registryv1.Key, error) {
	var out *registryv1.Key
	err := s.update(ctx, func(w *write) error {
		if _, err := getApp(ctx, w.tx, key.GetApplicationId()); err != nil {
			return err
		}
		k := proto.Clone(key).(*registryv1.Key)
		k.CreateTime = w.timestamp()
		w.putKey(k, keyHash)
		out = k
		if rotateOverlap == nil {
			return nil
		}
		until := w.now.Add(*rotateOverlap)
		keys, hashes, err := appKeys(ctx, w.tx, key.GetApplicationId())
		if err != nil {
			return err
		}
		for i, old := range keys {
			// A portal session is not an API key: it ends with its session;
			// a bridge's key ends with its bridge.
			if old.GetPurpose() == registryv1.KeyPurpose_KEY_PURPOSE_PORTAL_SESSION || old.GetPurpose() == registryv1.KeyPurpose_KEY_PURPOSE_BRIDGE ||
				old.GetRevokeTime() != nil || (old.GetExpireTime() != nil && !old.GetExpireTime().AsTime().After(until)) {
				continue
			}
			old.ExpireTime = timestamppb.New(until)
			w.putKey(old, hashes[i])
		}
		return nil
	})
	return out, err
}

// appKeys returns an application's keys and their hashes, in creation order.
func appKeys(ctx context.Context, c redis.Cmdable, appID string) ([]*registryv1.Key, []string, error) {
	hashes, err := c.SMembers(ctx, keyAppKeys(appID)).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("read keys of %s: %w", appID, err)
	}
	if len(hashes) == 0 {
		return nil, nil, nil
	}
	values, err := c.HMGet(ctx, keyKeys, hashes...).Result()
	if err != nil {
		return nil, nil, fmt.Errorf("read keys of %s: %w", appID, err)
	}
	type entry struct {
		k    *registryv1.Key
		hash string
	}
	entries := make([]entry, 0, len(hashes))
	for i, v := range values {
		s, ok := v.(string)
		if !ok {
			continue // indexed but gone: nothing removes keys, so never in practice
		}
		k := new(registryv1.Key)
		if err := proto.Unmarshal([]byte(s), k); err != nil {
			return nil, nil, fmt.Errorf("decode key of %s: %w", appID, err)
		}
		entries = append(entries, entry{k, hashes[i]})
	}
	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(a.k.GetCreateTime().AsTime().Compare(b.k.GetCreateTime().AsTime()), cmp.Compare(a.k.GetId(), b.k.GetId()))
	})
	keys := make([]*registryv1.Key, len(entries))
	out := make([]string, len(entries))
	for i, e := range entries {
		keys[i], out[i] = e.k, e.hash
	}
	return keys, out, nil
}

// ListKeys returns an application's keys (never a secret) in creation
// order.
func (s *Store) ListKeys(ctx context.Context, appID string) ([]*registryv1.Key, error) {
	keys, _, err := appKeys(ctx, s.rdb, appID)
	return keys, err
}

// KeyByHash returns the key whose secret hashes to keyHash, revoked and
// expired ones included, or a *NotFoundError.
func (s *Store) KeyByHash(ctx context.Context, keyHash string) (*registryv1.Key, error) {
	k := new(registryv1.Key)
	found, err := get(ctx, s.rdb, keyKeys, keyHash, k)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &NotFoundError{Kind: "key", Name: "with that hash"}
	}
	return k, nil
}

func keyByID(ctx context.Context, c redis.Cmdable, id string) (*registryv1.Key, string, error) {
	hash, err := c.HGet(ctx, keyKeyIDs, id).Result()
	if errors.Is(err, redis.Nil) {
		return nil, "", &NotFoundError{Kind: "key", Name: id}
	}
	if err != nil {
		return nil, "", fmt.Errorf("read key %s: %w", id, err)
	}
	k := new(registryv1.Key)
	found, err := get(ctx, c, keyKeys, hash, k)
	if err != nil {
		return nil, "", err
	}
	if !found {
		return nil, "", &NotFoundError{Kind: "key", Name: id}
	}
	return k, hash, nil
}

// KeyByID returns a key by its id, or a *NotFoundError.
func (s *Store) KeyByID(ctx context.Context, id string) (*registryv1.Key, error) {
	k, _, err := keyByID(ctx, s.rdb, id)
	return k, err
}

// RevokeKey revokes a key now. Revoking a revoked key changes nothing.
func (s *Store) RevokeKey(ctx context.Context, id string) (*registryv1.Key, error) {
	var out *registryv1.Key
	err := s.update(ctx, func(w *write) error {
		k, hash, err := keyByID(ctx, w.tx, id)
		if err != nil {
			return err
		}
		out = k
		if k.GetRevokeTime() != nil {
			return nil
		}
		k.RevokeTime = w.timestamp()
		w.putKey(k, hash)
		return nil
	})
	return out, err
}

// CreateSubscription stores a new subscription (sub.id set). Its
// application and the exact type names it lists must exist (else a
// *NotFoundError); check then sees them and may refuse.
func (s *Store) CreateSubscription(ctx context.Context, in *registryv1.Subscription, check func(*registryv1.Application, map[string]*registryv1.EventType) error) (*registryv1.Subscription, error) {
	var out *registryv1.Subscription
	err := s.update(ctx, func(w *write) error {
		found, err := get(ctx, w.tx, keySubs, in.GetId(), new(registryv1.Subscription))
		if err != nil {
			return err
		}
		if found {
			return &ExistsError{Kind: "subscription", Name: in.GetId()}
		}
		app, err := getApp(ctx, w.tx, in.GetApplicationId())
		if err != nil {
			return err
		}
		types, err := requireTypes(ctx, w.tx, in.GetTypes())
		if err != nil {
			return err
		}
		if err := check(app, types); err != nil {
			return err
		}
		sub := proto.Clone(in).(*registryv1.Subscription)
		sub.CreateTime = w.timestamp()
		w.putSub(sub)
		out = sub
		return nil
	})
	return out, err
}

// GetSubscription returns one subscription, or a *NotFoundError.
func (s *Store) GetSubscription(ctx context.Context, id string) (*registryv1.Subscription, error) {
	sub := new(registryv1.Subscription)
	found, err := get(ctx, s.rdb, keySubs, id, sub)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &NotFoundError{Kind: "subscription", Name: id}
	}
	return sub, nil
}

// ListSubscriptions returns the subscriptions of one application, or all
// when appID is empty, in creation order.
func (s *Store) ListSubscriptions(ctx context.Context, appID string) ([]*registryv1.Subscription, error) {
	var subs []*registryv1.Subscription
	if appID == "" {
		all, err := getAll(ctx, s.rdb, keySubs, func() *registryv1.Subscription { return new(registryv1.Subscription) })
		if err != nil {
			return nil, err
		}
		subs = all
	} else {
		ids, err := s.rdb.SMembers(ctx, keyAppSubs(appID)).Result()
		if err != nil {
			return nil, fmt.Errorf("read subscriptions of %s: %w", appID, err)
		}
		if len(ids) > 0 {
			values, err := s.rdb.HMGet(ctx, keySubs, ids...).Result()
			if err != nil {
				return nil, fmt.Errorf("read subscriptions of %s: %w", appID, err)
			}
			for _, v := range values {
				str, ok := v.(string)
				if !ok {
					continue // deleted between the two reads
				}
				sub := new(registryv1.Subscription)
				if err := proto.Unmarshal([]byte(str), sub); err != nil {
					return nil, fmt.Errorf("decode subscription of %s: %w", appID, err)
				}
				subs = append(subs, sub)
			}
		}
	}
	slices.SortFunc(subs, func(a, b *registryv1.Subscription) int {
		return cmp.Or(a.GetCreateTime().AsTime().Compare(b.GetCreateTime().AsTime()), cmp.Compare(a.GetId(), b.GetId()))
	})
	return subs, nil
}

// DeleteSubscription removes a subscription, or fails with a
// *NotFoundError.
func (s *Store) DeleteSubscription(ctx context.Context, id string) error {
	return s.update(ctx, func(w *write) error {
		sub := new(registryv1.Subscription)
		found, err := get(ctx, w.tx, keySubs, id, sub)
		if err != nil {
			return err
		}
		if !found {
			return &NotFoundError{Kind: "subscription", Name: id}
		}
		w.op(func(ctx context.Context, p redis.Pipeliner) {
			p.HDel(ctx, keySubs, id)
			p.SRem(ctx, keyAppSubs(sub.GetApplicationId()), id)
		})
		w.record(&registryv1.WatchResponse{Revision: w.next(), Change: &registryv1.WatchResponse_Deleted{Deleted: &registryv1.Deletion{Kind: "subscription", Name: id}}})
		return nil
	})
}

// SubscriptionContext returns what CreateSubscription's check sees for a
// subscription of appID to list, without writing: the application (else a
// *NotFoundError) and the exact type names of list (each must exist, else
// a *NotFoundError). A caller that must do slow work before creating (such
// as validating a webhook endpoint over the network) checks first with it.
func (s *Store) SubscriptionContext(ctx context.Context, appID string, list []string) (*registryv1.Application, map[string]*registryv1.EventType, error) {
	app, err := getApp(ctx, s.rdb, appID)
	if err != nil {
		return nil, nil, err
	}
	types, err := requireTypes(ctx, s.rdb, list)
	if err != nil {
		return nil, nil, err
	}
	return app, types, nil
}

// UpdateSubscription changes a subscription: apply edits a copy of the
// current one, given the write's time, and may refuse. Its id, application
// and creation time are kept whatever apply does. The change is recorded
// in the change log like any other, so Watch streams it.
func (s *Store) UpdateSubscription(ctx context.Context, id string, apply func(sub *registryv1.Subscription, now time.Time) error) (*registryv1.Subscription, error) {
	var out *registryv1.Subscription
	err := s.update(ctx, func(w *write) error {
		cur := new(registryv1.Subscription)
		found, err := get(ctx, w.tx, keySubs, id, cur)
		if err != nil {
			return err
		}
		if !found {
			return &NotFoundError{Kind: "subscription", Name: id}
		}
		sub := proto.Clone(cur).(*registryv1.Subscription)
		if err := apply(sub, w.now); err != nil {
			return err
		}
		sub.Id, sub.ApplicationId, sub.CreateTime = cur.GetId(), cur.GetApplicationId(), cur.GetCreateTime()
		w.putSub(sub)
		out = sub
		return nil
	})
	return out, err
}
