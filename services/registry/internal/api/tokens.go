package api

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Bounds of an application's token settings (see TokenSettings in
// registry.proto).
const (
	minTokenLifetime      = time.Minute
	maxTokenLifetime      = 24 * time.Hour
	maxTokenPublicKeys    = 10
	maxTokenKeyBytes      = 16 << 10
	maxTokenKeyID         = 200
	maxTokenSecretsLive   = 10
	maxTokenRotateOverlap = 24 * time.Hour
)

// errNoSecretKeyTokens is why HS256 secrets cannot be created without a
// secret key.
var errNoSecretKeyTokens = failedPrecondition("HS256 token secrets are not available: the operator must set HERALD_SECRET_KEY (base64 of 32 random bytes) so that they are stored encrypted; public keys (public_keys, jwks_url) work without it")

// tokenSettings checks the token settings a client gives an application
// and returns them as stored, without secrets (which only
// RotateTokenSecret makes; see withSecrets): public keys with their
// algorithm and id filled in, the max lifetime made explicit. nil stays
// nil.
func (h *Handler) tokenSettings(ctx context.Context, in *registryv1.TokenSettings) (*registryv1.TokenSettings, error) {
	if in == nil {
		return nil, nil
	}
	out := &registryv1.TokenSettings{MaxLifetime: durationpb.New(auth.DefaultTokenLifetime)}
	if d := in.GetMaxLifetime(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, invalid("application.token_settings.max_lifetime: %v", err)
		}
		if v := d.AsDuration(); v < minTokenLifetime || v > maxTokenLifetime {
			return nil, invalid("application.token_settings.max_lifetime is %v: it must be between %v and %v (unset: %v)", v, minTokenLifetime, maxTokenLifetime, auth.DefaultTokenLifetime)
		}
		out.MaxLifetime = d
	}
	if u := strings.TrimSpace(in.GetJwksUrl()); u != "" {
		if err := h.checkJWKSURL(ctx, u); err != nil {
			return nil, err
		}
		out.JwksUrl = u
	}
	if n := len(in.GetPublicKeys()); n > maxTokenPublicKeys {
		return nil, invalid("application.token_settings.public_keys has %d entries, more than the %d allowed", n, maxTokenPublicKeys)
	}
	seen := map[string]bool{}
	for i, k := range in.GetPublicKeys() {
		field := fmt.Sprintf("application.token_settings.public_keys[%d]", i)
		if len(k.GetKey()) > maxTokenKeyBytes {
			return nil, invalid("%s.key is over %d bytes", field, maxTokenKeyBytes)
		}
		_, alg, thumb, err := auth.ParsePublicKey(k.GetKey())
		if err != nil {
			return nil, invalid("%s.key: %v", field, err)
		}
		id := strings.TrimSpace(k.GetId())
		if id == "" {
			id = thumb
		}
		if err := text(field+".id", id, maxTokenKeyID); err != nil {
			return nil, err
		}
		if seen[id] {
			return nil, invalid("%s.id %q is the id of another key: kids must be unique", field, id)
		}
		seen[id] = true
		out.PublicKeys = append(out.PublicKeys, &registryv1.TokenPublicKey{Id: id, Key: strings.TrimSpace(k.GetKey()), Algorithm: string(alg)})
	}
	return out, nil
}

// withSecrets returns the token settings an update stores: the stored
// ones when the update gives none, else the given ones with the stored
// HS256 secrets (a client never sets secrets).
func withSecrets(given, stored *registryv1.TokenSettings) *registryv1.TokenSettings {
	if given == nil {
		return stored
	}
	given.Secrets = stored.GetSecrets()
	return given
}

// checkJWKSURL applies the outbound policy to a JWKS URL, as to webhook
// URLs: the error never shows a resolved address.
func (h *Handler) checkJWKSURL(ctx context.Context, raw string) error {
	if err := h.checkEndpointURL(ctx, raw); err != nil {
		if ce, ok := err.(*connect.Error); ok && ce.Code() == connect.CodeInvalidArgument {
			return invalid("application.token_settings.jwks_url: %s", strings.TrimPrefix(ce.Message(), "subscription.webhook.url: "))
		}
		return err
	}
	return nil
}

// appForClient returns app as clients see it: its HS256 secrets' sealed
// values removed (only the services that verify tokens see them, on
// Watch). app itself is not changed.
func appForClient(app *registryv1.Application) *registryv1.Application {
	if len(app.GetTokenSettings().GetSecrets()) == 0 {
		return app
	}
	out := proto.Clone(app).(*registryv1.Application)
	for _, s := range out.GetTokenSettings().GetSecrets() {
		s.Sealed = ""
	}
	return out
}

// RotateTokenSecret implements RegistryService. An application may rotate
// its own.
func (h *Handler) RotateTokenSecret(ctx context.Context, req *connect.Request[registryv1.RotateTokenSecretRequest]) (*connect.Response[registryv1.RotateTokenSecretResponse], error) {
	appID := req.Msg.GetApplicationId()
	if appID == "" {
		return nil, invalid("application_id is required")
	}
	if err := self(ctx, appID); err != nil {
		return nil, err
	}
	var overlap *time.Duration
	if o := req.Msg.GetOverlap(); o != nil {
		if err := o.CheckValid(); err != nil {
			return nil, invalid("overlap: %v", err)
		}
		d := o.AsDuration()
		if d < 0 || d > maxTokenRotateOverlap {
			return nil, invalid("overlap is %v: it must be between 0 and %v", d, maxTokenRotateOverlap)
		}
		overlap = &d
	}
	if h.webhooks.Box == nil {
		return nil, errNoSecretKeyTokens
	}
	current, err := h.store.GetApplication(ctx, appID)
	if err != nil {
		return nil, fail(err)
	}
	secret, id := auth.NewTokenSecret(), auth.NewID("tks_")
	sealed, err := h.webhooks.Box.Seal([]byte(secret), auth.TokenSecretContext(appID, id))
	if err != nil {
		return nil, fmt.Errorf("seal a token secret: %w", err)
	}
	app, err := h.store.UpdateApplication(ctx, appID, current.GetRevision(), func(app *registryv1.Application) error {
		now := time.Now()
		ts := app.GetTokenSettings()
		if ts == nil {
			ts = &registryv1.TokenSettings{MaxLifetime: durationpb.New(auth.DefaultTokenLifetime)}
			app.TokenSettings = ts
		}
		o := ts.GetMaxLifetime().AsDuration()
		if ts.GetMaxLifetime() == nil {
			o = auth.DefaultTokenLifetime
		}
		if overlap != nil {
			o = *overlap
		}
		retire := timestamppb.New(now.Add(o))
		var keep []*registryv1.TokenSecret
		for _, s := range ts.GetSecrets() {
			if s.GetExpireTime() != nil && !s.GetExpireTime().AsTime().After(now) {
				continue // already retired: forget it
			}
			if s.GetExpireTime() == nil || s.GetExpireTime().AsTime().After(retire.AsTime()) {
				s.ExpireTime = retire
			}
			if o > 0 {
				keep = append(keep, s)
			}
		}
		if len(keep) >= maxTokenSecretsLive {
			return failedPrecondition("application %s already has %d HS256 secrets in their overlap: rotate with overlap 0, or wait for them to expire", appID, len(keep))
		}
		rec := &registryv1.TokenSecret{Id: id, CreateTime: timestamppb.New(now), Sealed: sealed}
		ts.Secrets = append([]*registryv1.TokenSecret{rec}, keep...)
		slices.SortStableFunc(ts.Secrets, func(a, b *registryv1.TokenSecret) int {
			return b.GetCreateTime().AsTime().Compare(a.GetCreateTime().AsTime())
		})
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.RotateTokenSecretResponse{Application: appForClient(app), Secret: secret, SecretId: id}), nil
}
