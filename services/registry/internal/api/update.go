package api

import (
	"context"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/services/registry/internal/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// updatablePaths are the update_mask paths of UpdateSubscription.
var updatablePaths = []string{
	"filter", "delivery",
	"webhook.url", "webhook.ordering", "webhook.max_concurrency", "webhook.rate_limit", "webhook.headers",
	"webhook.content_mode", "webhook.json_data", "webhook.retry_schedule", "webhook.timeout", "webhook.disabled", "webhook.disable_after",
}

// UpdateSubscription implements RegistryService: the fields named by
// update_mask take the request's values (an unset value is the default, as
// on create), the others are kept. A revision, if given, must be the
// subscription's current one (else ABORTED). The owner or the operator may update; a
// changed URL, or enabling, validates the endpoint again. A disabled
// endpoint records when and why: the operator's reason (the edge gives the
// failure), else who disabled it.
func (h *Handler) UpdateSubscription(ctx context.Context, req *connect.Request[registryv1.UpdateSubscriptionRequest]) (*connect.Response[registryv1.UpdateSubscriptionResponse], error) {
	in := req.Msg.GetSubscription()
	if in == nil {
		return nil, invalid("subscription is required")
	}
	paths, err := updateMask(req.Msg.GetUpdateMask())
	if err != nil {
		return nil, err
	}
	cur, err := h.ownSubscription(ctx, in.GetId(), "update subscriptions")
	if err != nil {
		return nil, err
	}
	if in.GetRevision() != 0 && in.GetRevision() != cur.GetRevision() {
		return nil, fail(&store.ConflictError{Kind: "subscription", Name: cur.GetId(), Sent: in.GetRevision(), Current: cur.GetRevision()})
	}
	next := proto.Clone(cur).(*registryv1.Subscription)
	if paths["filter"] {
		if err := checkFilter(in.GetFilter()); err != nil {
			return nil, err
		}
		next.Filter = in.GetFilter()
	}
	if paths["delivery"] {
		if next.Delivery, err = deliveryPolicy(in.GetDelivery()); err != nil {
			return nil, err
		}
	}
	if err := h.updateEndpoint(ctx, cur, next, in.GetWebhook(), paths); err != nil {
		return nil, err
	}
	out, err := h.store.UpdateSubscription(ctx, cur.GetId(), func(sub *registryv1.Subscription, _ time.Time) error {
		// The endpoint was validated against what was read: a change
		// since then (a rotation, another update) makes this one retry.
		if sub.GetRevision() != cur.GetRevision() {
			return &store.ConflictError{Kind: "subscription", Name: cur.GetId(), Sent: cur.GetRevision(), Current: sub.GetRevision()}
		}
		sub.Filter, sub.Delivery, sub.Channel = next.GetFilter(), next.GetDelivery(), next.GetChannel()
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.UpdateSubscriptionResponse{Subscription: forClient(out)}), nil
}

// updateMask checks the paths of an update mask and returns them as a set.
func updateMask(mask []string) (map[string]bool, error) {
	if len(mask) == 0 {
		return nil, invalid("update_mask is empty: name the fields to change, among %s", strings.Join(updatablePaths, ", "))
	}
	paths := map[string]bool{}
	for _, p := range mask {
		if !slices.Contains(updatablePaths, p) {
			return nil, invalid("update_mask: %q is not a field UpdateSubscription changes; the paths are %s", cut(p, 100), strings.Join(updatablePaths, ", "))
		}
		paths[p] = true
	}
	return paths, nil
}

// updateEndpoint applies the webhook.* paths of an update to next (a copy
// of cur), validating the endpoint again when its URL changes or it is
// enabled.
func (h *Handler) updateEndpoint(ctx context.Context, cur, next *registryv1.Subscription, in *registryv1.WebhookChannel, paths map[string]bool) error {
	var named []string
	for p := range paths {
		if strings.HasPrefix(p, "webhook.") {
			named = append(named, p)
		}
	}
	if len(named) == 0 {
		return nil
	}
	old := cur.GetWebhook()
	if old == nil {
		slices.Sort(named)
		return invalid("subscription %s delivers over a stream: %s apply to webhook endpoints only", cur.GetId(), strings.Join(named, ", "))
	}
	merged := proto.Clone(old).(*registryv1.WebhookChannel)
	for _, p := range named {
		switch p {
		case "webhook.url":
			merged.Url = in.GetUrl()
		case "webhook.ordering":
			merged.Ordering = in.GetOrdering()
		case "webhook.max_concurrency":
			merged.MaxConcurrency = in.GetMaxConcurrency()
		case "webhook.rate_limit":
			merged.RateLimit = in.GetRateLimit()
		case "webhook.headers":
			merged.Headers = in.GetHeaders()
		case "webhook.content_mode":
			merged.ContentMode = in.GetContentMode()
		case "webhook.json_data":
			merged.JsonData = in.GetJsonData()
		case "webhook.retry_schedule":
			merged.RetrySchedule = in.GetRetrySchedule()
		case "webhook.timeout":
			merged.Timeout = in.GetTimeout()
		case "webhook.disabled":
			merged.Disabled = in.GetDisabled()
		case "webhook.disable_after":
			merged.DisableAfter = in.GetDisableAfter()
		}
	}
	ch, err := h.webhooks.webhookSettings(merged)
	if err != nil {
		return err
	}
	ch.Secrets, ch.JwksUrl, ch.DisableTime, ch.DisabledReason = old.GetSecrets(), old.GetJwksUrl(), old.GetDisableTime(), old.GetDisabledReason()
	now := time.Now()
	p, _ := auth.FromContext(ctx)
	switch {
	case ch.GetDisabled() && !old.GetDisabled():
		if ch.DisabledReason, err = reasonGiven(ctx, in.GetDisabledReason()); err != nil {
			return err
		}
		ch.DisableTime = timestamppb.New(now)
	case ch.GetDisabled() && paths["webhook.disabled"] && p.Admin && in.GetDisabledReason() != "":
		// The operator restates why a disabled endpoint is disabled.
		if ch.DisabledReason, err = reasonGiven(ctx, in.GetDisabledReason()); err != nil {
			return err
		}
	case !ch.GetDisabled():
		ch.DisableTime, ch.DisabledReason = nil, ""
	}
	next.Channel = &registryv1.Subscription_Webhook{Webhook: ch}
	urlChanged := ch.GetUrl() != old.GetUrl()
	enabled := old.GetDisabled() && !ch.GetDisabled()
	if urlChanged || enabled {
		if err := h.checkEndpointURL(ctx, ch.GetUrl()); err != nil {
			return err
		}
	}
	if ch.GetDisabled() || !(urlChanged || enabled) {
		return nil
	}
	keys, err := h.signingKeys(next, now)
	if err != nil {
		return err
	}
	return h.validateEndpoint(ctx, next, keys)
}

// reasonGiven is disableReason with the operator's words checked.
func reasonGiven(ctx context.Context, given string) (string, error) {
	if p, _ := auth.FromContext(ctx); p.Admin {
		if err := text("subscription.webhook.disabled_reason", given, maxShortText); err != nil {
			return "", err
		}
	}
	return disableReason(ctx, given), nil
}

// RotateWebhookSecret implements RegistryService: the endpoint gets a new
// signing secret, shown once in the response; the secrets it had keep
// signing beside it until now + overlap (default 24h, 0 to 7 days: 0
// retires them at once). Secrets already expired are dropped.
func (h *Handler) RotateWebhookSecret(ctx context.Context, req *connect.Request[registryv1.RotateWebhookSecretRequest]) (*connect.Response[registryv1.RotateWebhookSecretResponse], error) {
	cur, err := h.ownSubscription(ctx, req.Msg.GetId(), "rotate webhook secrets")
	if err != nil {
		return nil, err
	}
	if cur.GetWebhook() == nil {
		return nil, failedPrecondition("subscription %s delivers over a stream: it has no webhook signing secret", cur.GetId())
	}
	overlap := defaultRotateOverlap
	if o := req.Msg.GetOverlap(); o != nil {
		if err := o.CheckValid(); err != nil {
			return nil, invalid("overlap: %v", err)
		}
		if overlap = o.AsDuration(); overlap < 0 || overlap > maxRotateOverlap {
			return nil, invalid("overlap is %s; it must be between 0s (retire the old secrets now) and %s", overlap, maxRotateOverlap)
		}
	}
	if h.webhooks.Box == nil {
		return nil, errNoSecretKey
	}
	secret, err := h.makeSecret(cur.GetId(), cur.GetWebhook().GetSigning(), time.Now())
	if err != nil {
		return nil, err
	}
	out, err := h.store.UpdateSubscription(ctx, cur.GetId(), func(sub *registryv1.Subscription, now time.Time) error {
		wh := sub.GetWebhook()
		if wh == nil {
			return failedPrecondition("subscription %s delivers over a stream: it has no webhook signing secret", cur.GetId())
		}
		var kept []*registryv1.WebhookSecret
		if overlap > 0 {
			until := now.Add(overlap)
			for _, s := range liveSecrets(wh.GetSecrets(), now) {
				if s.GetExpireTime() == nil || s.GetExpireTime().AsTime().After(until) {
					s.ExpireTime = timestamppb.New(until)
				}
				kept = append(kept, s)
			}
		}
		if len(kept)+1 > maxLiveSecrets {
			return failedPrecondition("the endpoint already signs with %d secrets during their overlap, the most it may: wait until one expires, or rotate with an overlap of 0s", len(kept))
		}
		wh.Secrets = append(kept, secret.record)
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.RotateWebhookSecretResponse{Subscription: forClient(out), WebhookSecret: secret.shown}), nil
}
