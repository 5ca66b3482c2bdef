package api

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/filter"
	"github.com/heraldmesh/herald/services/registry/internal/store"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	maxSubscriptionTypes = 100
	maxURL               = 2048
)

// checkFilter compiles and type-checks a filter: it must be a boolean CEL
// expression over event and data, whose estimated cost is within the limit
// (see platform/filter).
func checkFilter(expr string) error { return checkFilterOf("subscription.filter", expr) }

// checkFilterOf is checkFilter for a filter at another field (a bridge's).
func checkFilterOf(field, expr string) error {
	if _, err := filter.Check(expr); err != nil {
		return invalid("%s: %v", field, err)
	}
	return nil
}

// Delivery policy bounds and defaults.
const (
	defaultAckTimeout  = 30 * time.Second
	minAckTimeout      = 100 * time.Millisecond
	maxAckTimeout      = 12 * time.Hour
	defaultMaxAttempts = 10
	maxMaxAttempts     = 1000
)

// deliveryPolicy checks the policy asked for and fills in the defaults.
func deliveryPolicy(in *registryv1.DeliveryPolicy) (*registryv1.DeliveryPolicy, error) {
	out := &registryv1.DeliveryPolicy{AckTimeout: durationpb.New(defaultAckTimeout), MaxAttempts: defaultMaxAttempts}
	if d := in.GetAckTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, invalid("subscription.delivery.ack_timeout: %v", err)
		}
		if t := d.AsDuration(); t < minAckTimeout || t > maxAckTimeout {
			return nil, invalid("subscription.delivery.ack_timeout is %s; it must be between %s and %s", t, minAckTimeout, maxAckTimeout)
		}
		out.AckTimeout = d
	}
	switch n := in.GetMaxAttempts(); {
	case n < 0 || n > maxMaxAttempts:
		return nil, invalid("subscription.delivery.max_attempts is %d; it must be between 1 and %d", n, maxMaxAttempts)
	case n > 0:
		out.MaxAttempts = n
	}
	return out, nil
}

// checkChannel checks that the subscription names a channel; a webhook
// endpoint's settings are checked by webhookSettings.
func checkChannel(sub *registryv1.Subscription) error {
	switch sub.GetChannel().(type) {
	case *registryv1.Subscription_Stream:
		return nil
	case *registryv1.Subscription_Webhook:
		if sub.GetWebhook() == nil {
			return invalid("subscription.webhook needs a url")
		}
		return nil
	default:
		return invalid("subscription needs a channel: webhook {url} or stream {}")
	}
}

func checkStart(sub *registryv1.Subscription) error {
	return checkStartOf("subscription.start", sub.GetStart())
}

// checkStartOf checks a start position at field (subscription.start, or a
// bridge's bridge.sink.start).
func checkStartOf(field string, start *registryv1.StartPosition) error {
	switch p := start.GetPosition().(type) {
	case *registryv1.StartPosition_Cursor:
		if p.Cursor == "0" {
			return nil // the start of the retained log
		}
		ms, seq, ok := strings.Cut(p.Cursor, "-")
		if !ok || !digits(ms) || !digits(seq) {
			return invalid("%s.cursor %q is not a cursor: cursors look like 1718000000000-0, and 0 is the start of the log", field, p.Cursor)
		}
	case *registryv1.StartPosition_Time:
		if err := p.Time.CheckValid(); err != nil {
			return invalid("%s.time: %v", field, err)
		}
	}
	return nil
}

func digits(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// mayReceive tells why an application may not subscribe to the types it
// names: every exact name must be registered and visible to its audience
// (else NOT_FOUND, the same for both), not retired, and covered by a
// subscribe grant; every pattern covered by a subscribe
// grant (types it will match are checked for visibility on delivery).
func mayReceive(app *registryv1.Application, patterns []string, types map[string]*registryv1.EventType) error {
	for _, p := range patterns {
		if !strings.Contains(p, "*") {
			// A type the audience may not see does not exist for it: the
			// same answer as for an unregistered one, on every channel.
			et, ok := types[p]
			if !ok || !access.Visible(app.GetAudience(), et.GetVisibility()) {
				return &store.NotFoundError{Kind: "event type", Name: p}
			}
			if et.GetLifecycle() == registryv1.Lifecycle_LIFECYCLE_RETIRED {
				return failedPrecondition("event type %s is retired: it takes no new subscriptions", p)
			}
		}
		if !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, p) {
			return denied("application %s has no subscribe grant covering %s", app.GetId(), p)
		}
	}
	return nil
}

// startNotFuture refuses a start cursor or time after the log's clock (Redis
// TIME, which stamps the ids): the groups would skip every event until then.
// The newest cursor named is that of the types the subscription covers and
// its application may see, so that nothing about others leaks.
func (h *Handler) startNotFuture(ctx context.Context, app *registryv1.Application, sub *registryv1.Subscription) error {
	return h.startNotFutureOf(ctx, app, "subscription.start", sub)
}

// startNotFutureOf is startNotFuture for the start at field (a bridge's
// bridge.sink.start, in sub).
func (h *Handler) startNotFutureOf(ctx context.Context, app *registryv1.Application, field string, sub *registryv1.Subscription) error {
	var id eventlog.ID
	var what string
	switch p := sub.GetStart().GetPosition().(type) {
	case *registryv1.StartPosition_Cursor:
		var err error
		if id, err = eventlog.ParseID(p.Cursor); err != nil {
			return invalid("%s.cursor %q is not a cursor", field, p.Cursor)
		}
		what = field + ".cursor " + p.Cursor
	case *registryv1.StartPosition_Time:
		id = eventlog.ID{Ms: uint64(max(0, p.Time.AsTime().UnixMilli()))}
		what = field + ".time " + p.Time.AsTime().UTC().Format(time.RFC3339Nano)
	default:
		return nil
	}
	if id == eventlog.Zero {
		return nil
	}
	all, err := h.store.ListEventTypes(ctx)
	if err != nil {
		return err
	}
	var streams []string
	for _, et := range all {
		if slices.ContainsFunc(sub.GetTypes(), func(p string) bool { return access.Covers(p, et.GetName()) }) &&
			access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, et.GetName()) &&
			access.Visible(app.GetAudience(), et.GetVisibility()) {
			streams = append(streams, eventlog.StreamKeys(et.GetName(), et.GetPartitions())...)
		}
	}
	newest, now, err := eventlog.Newest(ctx, h.store.Log(), streams)
	if err != nil {
		slog.Warn("subscription start not checked", "err", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("the event log is unavailable; retry"))
	}
	if eventlog.InFuture(id, now) {
		return invalid("%s is in the future, which would skip every event until then: the newest cursor of the types this subscription covers is %s",
			what, eventlog.NewestString(newest))
	}
	return nil
}

// CreateSubscription implements RegistryService. An application key may
// subscribe only itself.
func (h *Handler) CreateSubscription(ctx context.Context, req *connect.Request[registryv1.CreateSubscriptionRequest]) (*connect.Response[registryv1.CreateSubscriptionResponse], error) {
	in := req.Msg.GetSubscription()
	if in == nil {
		return nil, invalid("subscription is required")
	}
	appID := in.GetApplicationId()
	if p, _ := auth.FromContext(ctx); appID == "" && !p.Admin {
		appID = p.ApplicationID
	}
	if appID == "" {
		return nil, invalid("subscription.application_id is required")
	}
	if err := self(ctx, appID); err != nil {
		return nil, err
	}
	if err := validPatterns("subscription.types", in.GetTypes(), maxSubscriptionTypes); err != nil {
		return nil, err
	}
	if err := checkFilter(in.GetFilter()); err != nil {
		return nil, err
	}
	if err := checkChannel(in); err != nil {
		return nil, err
	}
	if err := checkStart(in); err != nil {
		return nil, err
	}
	policy, err := deliveryPolicy(in.GetDelivery())
	if err != nil {
		return nil, err
	}
	sub := &registryv1.Subscription{
		Id: auth.NewID("sub_"), ApplicationId: appID, Types: in.GetTypes(), Filter: in.GetFilter(),
		Channel: in.GetChannel(), Start: in.GetStart(), Delivery: policy,
	}
	var secret *newSecret
	if in.GetWebhook() != nil {
		if secret, err = h.prepareEndpoint(ctx, sub, in.GetWebhook()); err != nil {
			return nil, err
		}
	}
	sub, err = h.store.CreateSubscription(ctx, sub, func(app *registryv1.Application, types map[string]*registryv1.EventType) error {
		if err := mayReceive(app, sub.GetTypes(), types); err != nil {
			return err
		}
		return h.startNotFuture(ctx, app, sub)
	})
	if err != nil {
		return nil, fail(err)
	}
	out := &registryv1.CreateSubscriptionResponse{Subscription: forClient(sub)}
	if secret != nil {
		out.WebhookSecret = secret.shown
	}
	return connect.NewResponse(out), nil
}

// prepareEndpoint makes the webhook endpoint of a subscription being
// created: its settings checked and defaulted, its URL checked against the
// outbound policy, its first secret, and (unless it is created disabled) its
// consent, asked over the network once the application is known to be
// allowed the subscription. It sets sub's channel and returns the secret.
func (h *Handler) prepareEndpoint(ctx context.Context, sub *registryv1.Subscription, in *registryv1.WebhookChannel) (*newSecret, error) {
	if len(in.GetSecrets()) > 0 {
		return nil, invalid("subscription.webhook.secrets is output only: Herald makes the signing secret and shows it once, in the response that creates the endpoint")
	}
	ch, err := h.webhooks.webhookSettings(in)
	if err != nil {
		return nil, err
	}
	if h.webhooks.Box == nil {
		return nil, errNoSecretKey
	}
	if err := h.checkEndpointURL(ctx, ch.GetUrl()); err != nil {
		return nil, err
	}
	now := time.Now()
	if ch.GetDisabled() {
		if ch.DisabledReason, err = reasonGiven(ctx, in.GetDisabledReason()); err != nil {
			return nil, err
		}
		ch.DisableTime = timestamppb.New(now)
	}
	secret, err := h.makeSecret(sub.GetId(), ch.GetSigning(), now)
	if err != nil {
		return nil, err
	}
	ch.Secrets = []*registryv1.WebhookSecret{secret.record}
	if ch.GetSigning() == registryv1.WebhookSigning_WEBHOOK_SIGNING_ED25519 {
		ch.JwksUrl = h.jwksURL(sub.GetId())
	}
	sub.Channel = &registryv1.Subscription_Webhook{Webhook: ch}
	if ch.GetDisabled() {
		return secret, nil
	}
	// Refuse what the store would refuse before calling anyone: an
	// application without the grants does not get to make Herald knock on
	// a server's door.
	app, types, err := h.store.SubscriptionContext(ctx, sub.GetApplicationId(), sub.GetTypes())
	if err != nil {
		return nil, fail(err)
	}
	if err := mayReceive(app, sub.GetTypes(), types); err != nil {
		return nil, fail(err)
	}
	if err := h.startNotFuture(ctx, app, sub); err != nil {
		return nil, fail(err)
	}
	if err := h.validateEndpoint(ctx, sub, []string{secret.signKey}); err != nil {
		return nil, err
	}
	return secret, nil
}

// disableReason is the disabled_reason of an endpoint the caller disables:
// the operator's own words (the edge gives the failure), else who did it.
// An application's words are not taken: the reason is output only for it.
func disableReason(ctx context.Context, given string) string {
	p, _ := auth.FromContext(ctx)
	switch {
	case p.Admin && strings.TrimSpace(given) != "":
		return strings.TrimSpace(given)
	case p.Admin:
		return "disabled by the operator"
	default:
		return "disabled by the application"
	}
}

// GetSubscription implements RegistryService.
func (h *Handler) GetSubscription(ctx context.Context, req *connect.Request[registryv1.GetSubscriptionRequest]) (*connect.Response[registryv1.GetSubscriptionResponse], error) {
	sub, err := h.ownSubscription(ctx, req.Msg.GetId(), "read subscriptions")
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&registryv1.GetSubscriptionResponse{Subscription: forClient(sub)}), nil
}

func (h *Handler) ownSubscription(ctx context.Context, id, what string) (*registryv1.Subscription, error) {
	if id == "" {
		return nil, invalid("id is required")
	}
	sub, err := h.store.GetSubscription(ctx, id)
	if err != nil {
		return nil, fail(err)
	}
	if err := owner(ctx, sub.GetApplicationId(), &store.NotFoundError{Kind: "subscription", Name: id}); err != nil {
		return nil, err
	}
	return sub, nil
}

// ListSubscriptions implements RegistryService. An application key lists
// its own.
func (h *Handler) ListSubscriptions(ctx context.Context, req *connect.Request[registryv1.ListSubscriptionsRequest]) (*connect.Response[registryv1.ListSubscriptionsResponse], error) {
	appID := req.Msg.GetApplicationId()
	if p, _ := auth.FromContext(ctx); appID == "" && !p.Admin {
		appID = p.ApplicationID
	}
	if err := self(ctx, appID); err != nil {
		return nil, err
	}
	subs, err := h.store.ListSubscriptions(ctx, appID)
	if err != nil {
		return nil, fail(err)
	}
	for i, sub := range subs {
		subs[i] = forClient(sub)
	}
	return connect.NewResponse(&registryv1.ListSubscriptionsResponse{Subscriptions: subs}), nil
}

// DeleteSubscription implements RegistryService.
func (h *Handler) DeleteSubscription(ctx context.Context, req *connect.Request[registryv1.DeleteSubscriptionRequest]) (*connect.Response[registryv1.DeleteSubscriptionResponse], error) {
	if _, err := h.ownSubscription(ctx, req.Msg.GetId(), "delete subscriptions"); err != nil {
		return nil, err
	}
	if err := h.store.DeleteSubscription(ctx, req.Msg.GetId()); err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.DeleteSubscriptionResponse{}), nil
}
