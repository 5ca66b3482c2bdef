package store

import "github.com/redis/go-redis/v9"

// Log is the Redis the event log shares with the registry, for checks of
// positions in it (such as a subscription's start cursor).
func (s *Store) Log() redis.Cmdable { return s.rdb }
