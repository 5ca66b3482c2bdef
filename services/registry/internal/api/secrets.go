package api

import (
	"fmt"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/webhook"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Rotation bounds.
const (
	defaultRotateOverlap = 24 * time.Hour
	maxRotateOverlap     = 7 * 24 * time.Hour
	// maxLiveSecrets bounds the secrets an endpoint signs with at once:
	// every one is a signature on every request.
	maxLiveSecrets = 10
)

// newSecret is a fresh signing secret of an endpoint: its record (sealed),
// the signing key in clear for the validation ping, and what the client
// is shown once (the whsec_ secret, or the whpk_ public key).
type newSecret struct {
	record  *registryv1.WebhookSecret
	signKey string
	shown   string
}

// secretContext is the secretbox context of a secret: the record it
// belongs to, so that a sealed value copied elsewhere does not open.
func secretContext(subID, secretID string) string { return subID + "/" + secretID }

// makeSecret creates and seals a new signing secret for the endpoint of
// subscription subID. The caller has checked that h.webhooks.Box is set.
func (h *Handler) makeSecret(subID string, signing registryv1.WebhookSigning, now time.Time) (*newSecret, error) {
	var s newSecret
	var id string
	rec := &registryv1.WebhookSecret{CreateTime: timestamppb.New(now)}
	switch signing {
	case registryv1.WebhookSigning_WEBHOOK_SIGNING_ED25519:
		private, public := webhook.NewSigningKey()
		kid, err := webhook.KeyID(public)
		if err != nil {
			return nil, fmt.Errorf("key id of a new signing key: %w", err)
		}
		id, s.signKey, s.shown, rec.PublicKey = kid, private, public, public
	default:
		secret := webhook.NewSecret()
		id, s.signKey, s.shown = auth.NewID("whs_"), secret, secret
	}
	rec.Id = id
	sealed, err := h.webhooks.Box.Seal([]byte(s.signKey), secretContext(subID, id))
	if err != nil {
		return nil, fmt.Errorf("seal a signing secret: %w", err)
	}
	rec.Sealed = sealed
	s.record = rec
	return &s, nil
}

// liveSecrets returns the secrets of an endpoint that still sign at now.
func liveSecrets(list []*registryv1.WebhookSecret, now time.Time) []*registryv1.WebhookSecret {
	var out []*registryv1.WebhookSecret
	for _, s := range list {
		if s.GetExpireTime() == nil || s.GetExpireTime().AsTime().After(now) {
			out = append(out, s)
		}
	}
	return out
}

// signingKeys opens the live secrets of an endpoint, for a validation
// ping signed the way the edge will sign deliveries.
func (h *Handler) signingKeys(sub *registryv1.Subscription, now time.Time) ([]string, error) {
	if h.webhooks.Box == nil {
		return nil, errNoSecretKey
	}
	var keys []string
	for _, s := range liveSecrets(sub.GetWebhook().GetSecrets(), now) {
		b, err := h.webhooks.Box.Open(s.GetSealed(), secretContext(sub.GetId(), s.GetId()))
		if err != nil {
			// The detail (which key, which record) is for the log.
			return nil, fmt.Errorf("open signing secret %s of %s: %w", s.GetId(), sub.GetId(), err)
		}
		keys = append(keys, string(b))
	}
	if len(keys) == 0 {
		return nil, failedPrecondition("subscription %s has no live signing secret: rotate its secret (RotateWebhookSecret) first", sub.GetId())
	}
	return keys, nil
}

// jwksURL is where the edge publishes an Ed25519 endpoint's public keys.
func (h *Handler) jwksURL(subID string) string {
	return h.webhooks.PublicURL + "/v1/webhooks/" + subID + "/jwks.json"
}
