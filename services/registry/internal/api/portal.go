package api

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/filter"
	"github.com/heraldmesh/herald/services/registry/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Portal link and session bounds.
const (
	defaultLinkTTL    = 15 * time.Minute
	minLinkTTL        = time.Minute
	maxLinkTTL        = 24 * time.Hour
	defaultSessionTTL = time.Hour
	minSessionTTL     = 5 * time.Minute
	maxSessionTTL     = 12 * time.Hour
	// PortalLinkPrefix starts every portal link token.
	PortalLinkPrefix = "hpl_"
	// PortalPath is where the edge serves the portal.
	PortalPath = "/portal/"
	// maxFilterData bounds EvaluateFilter's data items and their size.
	maxFilterData      = 20
	maxFilterDataBytes = 64 << 10
)

func ttlWithin(field string, d interface {
	CheckValid() error
	AsDuration() time.Duration
}, set bool, def, lo, hi time.Duration) (time.Duration, error) {
	if !set {
		return def, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalid("%s: %v", field, err)
	}
	v := d.AsDuration()
	if v < lo || v > hi {
		return 0, invalid("%s is %v; it must be between %v and %v", field, v, lo, hi)
	}
	return v, nil
}

// CreatePortalLink implements RegistryService.
func (h *Handler) CreatePortalLink(ctx context.Context, req *connect.Request[registryv1.CreatePortalLinkRequest]) (*connect.Response[registryv1.CreatePortalLinkResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	appID := req.Msg.GetApplicationId()
	if appID == "" {
		return nil, invalid("application_id is required")
	}
	linkTTL, err := ttlWithin("link_ttl", req.Msg.GetLinkTtl(), req.Msg.LinkTtl != nil, defaultLinkTTL, minLinkTTL, maxLinkTTL)
	if err != nil {
		return nil, err
	}
	sessionTTL, err := ttlWithin("session_ttl", req.Msg.GetSessionTtl(), req.Msg.SessionTtl != nil, defaultSessionTTL, minSessionTTL, maxSessionTTL)
	if err != nil {
		return nil, err
	}
	if _, err := h.store.GetApplication(ctx, appID); err != nil {
		return nil, fail(err)
	}
	token := PortalLinkPrefix + strings.TrimPrefix(auth.NewSecret(), "hk_")
	if err := h.store.PutPortalLink(ctx, auth.HashSecret(token), store.PortalLink{ApplicationID: appID, SessionTTL: sessionTTL}, linkTTL); err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreatePortalLinkResponse{
		Url:        h.webhooks.PublicURL + PortalPath + "#link=" + token,
		Token:      token,
		ExpireTime: timestamppb.New(time.Now().Add(linkTTL)),
	}), nil
}

// RedeemPortalLink implements RegistryService. A link is spent as it is
// read, before the session's key is stored: should that write fail, the
// link is gone and the consumer asks for another, but no link ever opens
// two sessions.
func (h *Handler) RedeemPortalLink(ctx context.Context, req *connect.Request[registryv1.RedeemPortalLinkRequest]) (*connect.Response[registryv1.RedeemPortalLinkResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	token := req.Msg.GetToken()
	refused := connect.NewError(connect.CodeUnauthenticated, errors.New("the portal link is unknown, already used or expired; ask for a new one"))
	if !strings.HasPrefix(token, PortalLinkPrefix) || len(token) > 128 {
		return nil, refused
	}
	link, err := h.store.TakePortalLink(ctx, auth.HashSecret(token))
	if errors.Is(err, store.ErrNotFound) {
		return nil, refused
	}
	if err != nil {
		return nil, fail(err)
	}
	app, err := h.store.GetApplication(ctx, link.ApplicationID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, refused
	}
	if err != nil {
		return nil, fail(err)
	}
	key, hash := newKey(app.GetId())
	key.Purpose = registryv1.KeyPurpose_KEY_PURPOSE_PORTAL_SESSION
	key.ExpireTime = timestamppb.New(time.Now().Add(link.SessionTTL))
	if key, err = h.store.CreateKey(ctx, key, hash, nil); err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.RedeemPortalLinkResponse{Key: key, Application: appForClient(app)}), nil
}

// EvaluateFilter implements RegistryService: any caller that may see the
// type.
func (h *Handler) EvaluateFilter(ctx context.Context, req *connect.Request[registryv1.EvaluateFilterRequest]) (*connect.Response[registryv1.EvaluateFilterResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	et, err := h.visibleType(ctx, c, "type", req.Msg.GetType())
	if err != nil {
		return nil, err
	}
	f, err := filter.Check(req.Msg.GetFilter())
	if err != nil {
		return nil, invalid("filter: %v", err)
	}
	type item struct{ name, data string }
	var items []item
	if len(req.Msg.GetData()) > maxFilterData {
		return nil, invalid("data has %d items; at most %d", len(req.Msg.GetData()), maxFilterData)
	}
	for i, d := range req.Msg.GetData() {
		if len(d) > maxFilterDataBytes {
			return nil, invalid("data[%d] is %d bytes; at most %d", i, len(d), maxFilterDataBytes)
		}
		if !json.Valid([]byte(d)) {
			return nil, invalid("data[%d] is not JSON", i)
		}
		items = append(items, item{"", d})
	}
	if len(items) == 0 {
		for _, ex := range et.GetExamples() {
			items = append(items, item{ex.GetName(), ex.GetData()})
		}
	}
	out := make([]*registryv1.FilterResult, 0, len(items))
	for i, it := range items {
		ev := &eventv1.CloudEvent{
			Id: "example-" + strconv.Itoa(i+1), Source: "/herald/examples", SpecVersion: "1.0", Type: et.GetName(),
			Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
				"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
			},
			Data: &eventv1.CloudEvent_TextData{TextData: it.data},
		}
		r := &registryv1.FilterResult{Name: it.name, Data: it.data}
		r.Match, err = f.Match(ev)
		if err != nil && errors.Is(err, filter.ErrUnevaluable) {
			r.Error = err.Error()
		}
		out = append(out, r)
	}
	return connect.NewResponse(&registryv1.EvaluateFilterResponse{Results: out}), nil
}
