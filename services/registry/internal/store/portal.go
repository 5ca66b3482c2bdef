package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// keyPortalLinkPfx + the token's hash holds a portal link until it is
// redeemed or expires (the key's TTL).
const keyPortalLinkPfx = "herald:{registry}:portal_links:"

// PortalLink is what a portal link's token stands for.
type PortalLink struct {
	ApplicationID string        `json:"app"`
	SessionTTL    time.Duration `json:"session_ttl"`
}

// PutPortalLink stores a link under the hash of its token for ttl.
func (s *Store) PutPortalLink(ctx context.Context, tokenHash string, l PortalLink, ttl time.Duration) error {
	b, _ := json.Marshal(l)
	if err := s.rdb.Set(ctx, keyPortalLinkPfx+tokenHash, b, ttl).Err(); err != nil {
		return fmt.Errorf("store portal link: %w", err)
	}
	return nil
}

// TakePortalLink removes and returns the link of a token's hash in one
// step, so that a link opens one session at most; an unknown, spent or
// expired link is a *NotFoundError.
func (s *Store) TakePortalLink(ctx context.Context, tokenHash string) (PortalLink, error) {
	var l PortalLink
	b, err := s.rdb.GetDel(ctx, keyPortalLinkPfx+tokenHash).Bytes()
	if errors.Is(err, redis.Nil) {
		return l, &NotFoundError{Kind: "portal link", Name: "with that token"}
	}
	if err != nil {
		return l, fmt.Errorf("take portal link: %w", err)
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("decode portal link: %w", err)
	}
	return l, nil
}
