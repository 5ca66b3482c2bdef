// Package store keeps the registry's catalog in Redis. Every write is one
// optimistic transaction that, together with the resources it changes, takes
// the next catalog revisions and appends what changed to a change log: the
// source of Watch streams.
//
// Keys (every value is a protobuf-encoded herald.registry.v1 message), all
// under the hash tag {registry}, so that every transaction touches one slot
// of a Redis Cluster (a catalog written by an older registry under
// herald:registry:* is moved at start, see MigrateLayout):
//
//	herald:{registry}:revision           string  the catalog revision: the last one a change record took
//	herald:{registry}:changes            stream  the change log, one entry per change record: id "<rev>-0",
//	                                           fields rev (decimal) and change (WatchResponse); trimmed to
//	                                           about 100000 entries (WithChangeLogLimit)
//	herald:{registry}:domains            hash    domain name -> Domain
//	herald:{registry}:types              hash    event type name -> EventType, whose schema and schema_version
//	                                           are its latest version's
//	herald:{registry}:schemas:<type>     list    the type's SchemaVersions, version 1 first
//	herald:{registry}:products           hash    product name -> Product
//	herald:{registry}:apps               hash    application id -> Application
//	herald:{registry}:keys               hash    hex SHA-256 of a key secret -> Key (never the secret)
//	herald:{registry}:key_ids            hash    key id -> hex SHA-256 of its secret
//	herald:{registry}:app_keys:<app id>  set     hex SHA-256 of each of the application's keys
//	herald:{registry}:subs               hash    subscription id -> Subscription (a webhook endpoint's
//	                                           secrets only sealed, see platform/secretbox)
//	herald:{registry}:app_subs:<app id>  set     ids of the application's subscriptions
//	herald:{registry}:bridges            hash    bridge id -> Bridge (its secret and a source's key only
//	                                           sealed)
//	herald:{registry}:bridge_names       hash    bridge name -> bridge id
//
// A write that changes several resources (an event type and the domain
// created for it, a new key and the keys it rotates out) writes one change
// record per resource, each with its own revision, and the resource's
// revision field is the revision of its record. Revisions are therefore
// contiguous in the change log, which lets a reader detect a gap.
//
// Every write WATCHes the revision key: it is changed by every write, so a
// write commits only if no other write committed since it read what it
// checked. Losers retry a bounded number of times.
package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// keyPrefix: every key of the catalog shares the hash tag {registry},
	// so that a write's transaction touches one Redis Cluster slot.
	keyPrefix     = "herald:{registry}:"
	keyRevision   = "herald:{registry}:revision"
	keyChanges    = "herald:{registry}:changes"
	keyDomains    = "herald:{registry}:domains"
	keyTypes      = "herald:{registry}:types"
	keySchemasPfx = "herald:{registry}:schemas:"
	keyProducts   = "herald:{registry}:products"
	keyApps       = "herald:{registry}:apps"
	keyKeys       = "herald:{registry}:keys"
	keyKeyIDs     = "herald:{registry}:key_ids"
	keyAppKeysPfx = "herald:{registry}:app_keys:"
	keySubs       = "herald:{registry}:subs"
	keyAppSubsPfx = "herald:{registry}:app_subs:"
	keyBridges    = "herald:{registry}:bridges"
	keyBridgeName = "herald:{registry}:bridge_names"
	maxAttempts   = 100
)

func keySchemas(eventType string) string { return keySchemasPfx + eventType }
func keyAppKeys(appID string) string     { return keyAppKeysPfx + appID }
func keyAppSubs(appID string) string     { return keyAppSubsPfx + appID }

// ErrNotFound is matched (errors.Is) by every *NotFoundError.
var ErrNotFound = errors.New("not found")

// ErrExists is matched (errors.Is) by every *ExistsError.
var ErrExists = errors.New("already exists")

// ErrBusy means a write lost the race for the catalog revision too many
// times in a row; the caller may retry.
var ErrBusy = errors.New("the catalog is busy with concurrent writes; retry")

// NotFoundError tells that a resource, or one a write refers to, does not
// exist.
type NotFoundError struct{ Kind, Name string }

func (e *NotFoundError) Error() string        { return fmt.Sprintf("%s %q does not exist", e.Kind, e.Name) }
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// ExistsError tells that a resource to create already exists.
type ExistsError struct{ Kind, Name string }

func (e *ExistsError) Error() string        { return fmt.Sprintf("%s %q already exists", e.Kind, e.Name) }
func (e *ExistsError) Is(target error) bool { return target == ErrExists }

// ConflictError tells that an update was based on a revision that is no
// longer the resource's current one.
type ConflictError struct {
	Kind, Name    string
	Sent, Current int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %q was changed since it was read: the request has revision %d, but the %s is at revision %d; read it again and retry",
		e.Kind, e.Name, e.Sent, e.Kind, e.Current)
}

// DefaultChangeLogLimit is about how many change records the change log
// keeps: a watcher further behind starts over from a snapshot.
const DefaultChangeLogLimit = 100_000

// Store reads and writes the catalog.
type Store struct {
	rdb            redis.UniversalClient
	changeLogLimit int64
}

// New returns a Store whose change log keeps about DefaultChangeLogLimit
// records.
func New(rdb redis.UniversalClient) *Store {
	return &Store{rdb: rdb, changeLogLimit: DefaultChangeLogLimit}
}

// WithChangeLogLimit sets about how many change records the change log
// keeps (n > 0), and returns s.
func (s *Store) WithChangeLogLimit(n int64) *Store {
	if n > 0 {
		s.changeLogLimit = n
	}
	return s
}

// write is one transaction being prepared. Reads go through tx, after the
// WATCH of the revision; writes are queued and run in MULTI/EXEC with the
// revision update and the change records.
type write struct {
	ctx     context.Context
	tx      *redis.Tx
	now     time.Time
	rev     int64 // the last revision taken
	ops     []func(redis.Pipeliner)
	changes []change
	err     error
}

type change struct {
	rev  int64
	data []byte
}

func (w *write) timestamp() *timestamppb.Timestamp { return timestamppb.New(w.now) }

// next takes the next catalog revision, for one change record.
func (w *write) next() int64 {
	w.rev++
	return w.rev
}

// hset queues HSET key field m.
func (w *write) hset(key, field string, m proto.Message) {
	b, err := proto.Marshal(m)
	if err != nil {
		w.fail(fmt.Errorf("encode %s %s: %w", key, field, err))
		return
	}
	w.ops = append(w.ops, func(p redis.Pipeliner) { p.HSet(w.ctx, key, field, b) })
}

// op queues any other command.
func (w *write) op(f func(ctx context.Context, p redis.Pipeliner)) {
	w.ops = append(w.ops, func(p redis.Pipeliner) { f(w.ctx, p) })
}

// record queues a change record; c.Revision must be a revision taken with
// next, in order.
func (w *write) record(c *registryv1.WatchResponse) {
	b, err := proto.Marshal(c)
	if err != nil {
		w.fail(fmt.Errorf("encode change: %w", err))
		return
	}
	w.changes = append(w.changes, change{rev: c.GetRevision(), data: b})
}

func (w *write) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// update runs fn as an optimistic transaction and commits what it queued.
// fn may run several times (after losing a race) and must have no other
// effect than queuing writes; an error from fn aborts the write and is
// returned as it is.
func (s *Store) update(ctx context.Context, fn func(w *write) error) error {
	for attempt := 1; ; attempt++ {
		err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
			rev, err := tx.Get(ctx, keyRevision).Int64()
			if err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("read revision: %w", err)
			}
			w := &write{ctx: ctx, tx: tx, now: time.Now(), rev: rev}
			if err := fn(w); err != nil {
				return err
			}
			if w.err != nil {
				return w.err
			}
			if len(w.changes) == 0 {
				return nil
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				for _, op := range w.ops {
					op(p)
				}
				p.Set(ctx, keyRevision, w.rev, 0)
				for _, c := range w.changes {
					p.XAdd(ctx, &redis.XAddArgs{
						Stream: keyChanges, ID: strconv.FormatInt(c.rev, 10) + "-0",
						MaxLen: s.changeLogLimit, Approx: true,
						Values: []any{"rev", c.rev, "change", c.data},
					})
				}
				return nil
			})
			return err
		}, keyRevision)
		if !errors.Is(err, redis.TxFailedErr) {
			return err
		}
		if attempt >= maxAttempts {
			return ErrBusy
		}
		// Another write committed first: back off a little, with jitter so
		// that the losers do not collide again.
		backoff := time.Duration(rand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond)))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
	}
}

// get reads one protobuf value of a hash into m; found is false when the
// field does not exist.
func get(ctx context.Context, c redis.Cmdable, key, field string, m proto.Message) (found bool, err error) {
	b, err := c.HGet(ctx, key, field).Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s %s: %w", key, field, err)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return false, fmt.Errorf("decode %s %s: %w", key, field, err)
	}
	return true, nil
}

// decodeAll decodes the values of a hash read with HGETALL, in no order.
func decodeAll[T proto.Message](key string, values map[string]string, newT func() T) ([]T, error) {
	out := make([]T, 0, len(values))
	for field, v := range values {
		m := newT()
		if err := proto.Unmarshal([]byte(v), m); err != nil {
			return nil, fmt.Errorf("decode %s %s: %w", key, field, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// getAll reads and decodes a whole hash, in no order.
func getAll[T proto.Message](ctx context.Context, c redis.Cmdable, key string, newT func() T) ([]T, error) {
	values, err := c.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return decodeAll(key, values, newT)
}

// Revision returns the current catalog revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	rev, err := s.rdb.Get(ctx, keyRevision).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read revision: %w", err)
	}
	return rev, nil
}
