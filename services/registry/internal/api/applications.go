package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/services/registry/internal/store"
)

const (
	maxGrants      = 100
	maxOverlap     = 30 * 24 * time.Hour
	keyPrefixChars = 10

	// Bounds of a publish limit: far above what one Redis holds, low enough
	// that the router's rate arithmetic stays exact.
	maxEventsPerSecond = 1_000_000
	maxBurst           = 10_000_000
)

// validApplication checks what a client may set on an application and
// returns its trimmed name.
func validApplication(in *registryv1.Application) (string, error) {
	name := strings.TrimSpace(in.GetName())
	if name == "" {
		return "", invalid("application.name is required")
	}
	if err := text("application.name", name, maxShortText); err != nil {
		return "", err
	}
	if err := text("application.tenant", in.GetTenant(), maxShortText); err != nil {
		return "", err
	}
	if err := validEnum("application.audience", in.GetAudience()); err != nil {
		return "", err
	}
	if len(in.GetGrants()) > maxGrants {
		return "", invalid("application.grants has %d entries, more than the %d allowed", len(in.GetGrants()), maxGrants)
	}
	for i, g := range in.GetGrants() {
		if g.GetAction() == registryv1.GrantAction_GRANT_ACTION_UNSPECIFIED {
			return "", invalid("application.grants[%d].action is required: GRANT_ACTION_PUBLISH or GRANT_ACTION_SUBSCRIBE", i)
		}
		if err := validEnum(fmt.Sprintf("application.grants[%d].action", i), g.GetAction()); err != nil {
			return "", err
		}
		if err := eventtype.ValidatePattern(g.GetPattern()); err != nil {
			return "", invalid("application.grants[%d].pattern: %v", i, err)
		}
	}
	if err := validPublishLimit(in.GetPublishLimit()); err != nil {
		return "", err
	}
	return name, nil
}

// validPublishLimit checks a publish limit; nil is no limit.
func validPublishLimit(l *registryv1.PublishLimit) error {
	if l == nil {
		return nil
	}
	if eps := l.GetEventsPerSecond(); eps < 1 || eps > maxEventsPerSecond {
		return invalid("application.publish_limit.events_per_second is %d: it must be between 1 and %d (leave publish_limit unset for no limit)", eps, maxEventsPerSecond)
	}
	if b := l.GetBurst(); b < 0 || b > maxBurst {
		return invalid("application.publish_limit.burst is %d: it must be between 0 (one second's worth of events) and %d", b, maxBurst)
	}
	return nil
}

// newKey returns a key for an application with a fresh secret, and the
// hash of that secret.
func newKey(appID string) (*registryv1.Key, string) {
	secret := auth.NewSecret()
	return &registryv1.Key{Id: auth.NewID("key_"), Secret: secret, ApplicationId: appID, Prefix: secret[:keyPrefixChars]}, auth.HashSecret(secret)
}

// usable reports whether a key authenticates at now: neither revoked nor
// expired.
func usable(k *registryv1.Key, now time.Time) bool {
	return k.GetRevokeTime() == nil && (k.GetExpireTime() == nil || now.Before(k.GetExpireTime().AsTime()))
}

// CreateApplication implements RegistryService.
func (h *Handler) CreateApplication(ctx context.Context, req *connect.Request[registryv1.CreateApplicationRequest]) (*connect.Response[registryv1.CreateApplicationResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetApplication()
	if in == nil {
		return nil, invalid("application is required")
	}
	name, err := validApplication(in)
	if err != nil {
		return nil, err
	}
	tokens, err := h.tokenSettings(ctx, in.GetTokenSettings())
	if err != nil {
		return nil, err
	}
	app := &registryv1.Application{
		Id: auth.NewID("app_"), Name: name, Tenant: in.GetTenant(), Audience: in.GetAudience(), Grants: in.GetGrants(),
		PublishLimit: in.GetPublishLimit(), TokenSettings: tokens,
	}
	key, hash := newKey(app.GetId())
	app, key, err = h.store.CreateApplication(ctx, app, key, hash)
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreateApplicationResponse{Application: appForClient(app), Key: key}), nil
}

// GetApplication implements RegistryService. Applications see themselves;
// the operator sees every one.
func (h *Handler) GetApplication(ctx context.Context, req *connect.Request[registryv1.GetApplicationRequest]) (*connect.Response[registryv1.GetApplicationResponse], error) {
	if err := self(ctx, req.Msg.GetId()); err != nil {
		return nil, err
	}
	app, err := h.store.GetApplication(ctx, req.Msg.GetId())
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.GetApplicationResponse{Application: appForClient(app)}), nil
}

// ListApplications implements RegistryService.
func (h *Handler) ListApplications(ctx context.Context, req *connect.Request[registryv1.ListApplicationsRequest]) (*connect.Response[registryv1.ListApplicationsResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	apps, err := h.store.ListApplications(ctx)
	if err != nil {
		return nil, fail(err)
	}
	if tenant := req.Msg.GetTenant(); tenant != "" {
		out := apps[:0]
		for _, a := range apps {
			if a.GetTenant() == tenant {
				out = append(out, a)
			}
		}
		apps = out
	}
	for i, a := range apps {
		apps[i] = appForClient(a)
	}
	return connect.NewResponse(&registryv1.ListApplicationsResponse{Applications: apps}), nil
}

// UpdateApplication implements RegistryService.
func (h *Handler) UpdateApplication(ctx context.Context, req *connect.Request[registryv1.UpdateApplicationRequest]) (*connect.Response[registryv1.UpdateApplicationResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetApplication()
	if in == nil {
		return nil, invalid("application is required")
	}
	if in.GetId() == "" {
		return nil, invalid("application.id is required")
	}
	name, err := validApplication(in)
	if err != nil {
		return nil, err
	}
	tokens, err := h.tokenSettings(ctx, in.GetTokenSettings())
	if err != nil {
		return nil, err
	}
	app, err := h.store.UpdateApplication(ctx, in.GetId(), in.GetRevision(), func(app *registryv1.Application) error {
		app.Name, app.Tenant, app.Audience, app.Grants = name, in.GetTenant(), in.GetAudience(), in.GetGrants()
		app.PublishLimit = in.GetPublishLimit() // unset in the update: no limit any more
		app.TokenSettings = withSecrets(tokens, app.GetTokenSettings())
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.UpdateApplicationResponse{Application: appForClient(app)}), nil
}

// CreateKey implements RegistryService. An application may rotate its own
// keys.
func (h *Handler) CreateKey(ctx context.Context, req *connect.Request[registryv1.CreateKeyRequest]) (*connect.Response[registryv1.CreateKeyResponse], error) {
	appID := req.Msg.GetApplicationId()
	if appID == "" {
		return nil, invalid("application_id is required")
	}
	if err := self(ctx, appID); err != nil {
		return nil, err
	}
	var overlap *time.Duration
	if o := req.Msg.GetRotateOverlap(); o != nil {
		if err := o.CheckValid(); err != nil {
			return nil, invalid("rotate_overlap: %v", err)
		}
		d := o.AsDuration()
		if d < 0 || d > maxOverlap {
			return nil, invalid("rotate_overlap must be between 0 and %v", maxOverlap)
		}
		overlap = &d
	}
	key, hash := newKey(appID)
	key, err := h.store.CreateKey(ctx, key, hash, overlap)
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreateKeyResponse{Key: key}), nil
}

// ListKeys implements RegistryService.
func (h *Handler) ListKeys(ctx context.Context, req *connect.Request[registryv1.ListKeysRequest]) (*connect.Response[registryv1.ListKeysResponse], error) {
	appID := req.Msg.GetApplicationId()
	if appID == "" {
		return nil, invalid("application_id is required")
	}
	if err := self(ctx, appID); err != nil {
		return nil, err
	}
	if _, err := h.store.GetApplication(ctx, appID); err != nil {
		return nil, fail(err)
	}
	keys, err := h.store.ListKeys(ctx, appID)
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.ListKeysResponse{Keys: keys}), nil
}

// RevokeKey implements RegistryService. An application may revoke its own
// keys.
func (h *Handler) RevokeKey(ctx context.Context, req *connect.Request[registryv1.RevokeKeyRequest]) (*connect.Response[registryv1.RevokeKeyResponse], error) {
	id := req.Msg.GetId()
	if id == "" {
		return nil, invalid("id is required")
	}
	k, err := h.store.KeyByID(ctx, id)
	if err != nil {
		return nil, fail(err)
	}
	if err := owner(ctx, k.GetApplicationId(), &store.NotFoundError{Kind: "key", Name: id}); err != nil {
		return nil, err
	}
	if p, _ := auth.FromContext(ctx); k.GetPurpose() == registryv1.KeyPurpose_KEY_PURPOSE_BRIDGE && !p.Admin {
		// Revoking it would silently stop the operator's source bridge.
		return nil, failedPrecondition("key %s is the key of a source bridge: it is revoked with the bridge, by the operator (DeleteBridge)", id)
	}
	if k, err = h.store.RevokeKey(ctx, id); err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.RevokeKeyResponse{Key: k}), nil
}

// AuthenticateKey implements RegistryService. Revoked and expired keys are
// NOT_FOUND, like unknown ones.
func (h *Handler) AuthenticateKey(ctx context.Context, req *connect.Request[registryv1.AuthenticateKeyRequest]) (*connect.Response[registryv1.AuthenticateKeyResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	if !isHexSHA256(req.Msg.GetKeyHash()) {
		return nil, invalid("key_hash must be the lower-case hex SHA-256 of the secret")
	}
	k, err := h.usableKey(ctx, req.Msg.GetKeyHash())
	if err != nil {
		if errors.Is(err, auth.ErrUnknownKey) {
			return nil, connect.NewError(connect.CodeNotFound, err)
		}
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.AuthenticateKeyResponse{Key: k}), nil
}

func (h *Handler) usableKey(ctx context.Context, hash string) (*registryv1.Key, error) {
	k, err := h.store.KeyByHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !usable(k, time.Now())) {
		return nil, auth.ErrUnknownKey
	}
	return k, err
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Resolver checks keys against the local store, for the registry's own
// routes: revoked and expired keys are unknown.
func (h *Handler) Resolver() auth.Resolver {
	return auth.ResolverFunc(func(ctx context.Context, keyHash string) (auth.Principal, error) {
		k, err := h.usableKey(ctx, keyHash)
		if err != nil {
			return auth.Principal{}, err
		}
		return auth.Principal{ApplicationID: k.GetApplicationId(), KeyID: k.GetId()}, nil
	})
}
