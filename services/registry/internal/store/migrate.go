package store

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// oldPrefix is the key prefix of registries before the catalog moved under
// one hash tag ({registry}), which Redis Cluster needs: every write is one
// transaction over several of these keys.
const oldPrefix = "herald:registry:"

// migrateScript renames every key of the old layout to the new one, once
// and atomically: it does nothing when the new layout already has a
// revision or the old one has none. RENAME keeps each key's TTL (portal
// links). It runs only on a standalone Redis: the old layout never worked
// on a cluster, whose nodes refuse its cross-slot transactions.
var migrateScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', ARGV[1] .. 'revision') == 0 then return 0 end
local keys = redis.call('KEYS', ARGV[1] .. '*')
for _, k in ipairs(keys) do
  redis.call('RENAME', k, ARGV[2] .. string.sub(k, #ARGV[1] + 1))
end
return #keys
`)

// MigrateLayout moves a catalog written by an older registry
// (herald:registry:*) under the {registry} hash tag (herald:{registry}:*),
// if there is one and the new layout is empty. It returns how many keys
// moved. On a Redis Cluster there is nothing to move.
func (s *Store) MigrateLayout(ctx context.Context) (int, error) {
	if _, ok := s.rdb.(*redis.ClusterClient); ok {
		return 0, nil
	}
	n, err := migrateScript.Run(ctx, s.rdb, []string{keyRevision}, oldPrefix, keyPrefix).Int()
	if err != nil {
		return 0, fmt.Errorf("move the catalog to its hash-tagged keys: %w", err)
	}
	return n, nil
}
