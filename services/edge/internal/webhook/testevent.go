package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	edgev1 "github.com/heraldmesh/herald/api/gen/herald/edge/v1"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/filter"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestSource is the CloudEvents source of test events; they also carry
// the extension attribute TestAttribute = true.
const (
	TestSource    = "/herald/test"
	TestAttribute = "heraldtest"
	// maxTestData bounds a test event's data.
	maxTestData = 256 << 10
)

// subscriptionFor loads a subscription of any channel the caller owns (the
// operator owns every one); anything else is NOT_FOUND.
func (a *API) subscriptionFor(ctx context.Context, id string) (*registryv1.Subscription, error) {
	if id == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("subscription_id is required"))
	}
	notFound := connect.NewError(connect.CodeNotFound, fmt.Errorf("subscription %s does not exist", id))
	sub, err := a.E.o.Catalog.Subscription(ctx, id)
	if errors.Is(err, catalog.ErrUnknownSubscription) {
		return nil, notFound
	}
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the catalog is unavailable; retry"))
	}
	if p, _ := auth.FromContext(ctx); !p.Admin && p.ApplicationID != sub.GetApplicationId() {
		return nil, notFound
	}
	return sub, nil
}

// SendTestEvent implements WebhookService.
func (a *API) SendTestEvent(ctx context.Context, req *connect.Request[edgev1.SendTestEventRequest]) (*connect.Response[edgev1.SendTestEventResponse], error) {
	sub, err := a.subscriptionFor(ctx, req.Msg.GetSubscriptionId())
	if err != nil {
		return nil, err
	}
	typ := req.Msg.GetType()
	if typ == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("type is required"))
	}
	if !slices.ContainsFunc(sub.GetTypes(), func(p string) bool { return access.Covers(p, typ) }) {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("subscription %s does not cover %s; its types are %s", sub.GetId(), typ, strings.Join(sub.GetTypes(), ", ")))
	}
	app, err := a.E.o.Catalog.Application(ctx, sub.GetApplicationId())
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("the catalog is unavailable; retry"))
	}
	t, err := a.E.o.Catalog.Lookup(ctx, typ)
	if err != nil || !access.Visible(app.GetAudience(), t.GetVisibility()) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("event type %s is not registered", typ))
	}
	if !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_SUBSCRIBE, typ) {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("the application may not subscribe to %s", typ))
	}
	if f := t.GetSchemaFormat(); f != registryv1.SchemaFormat_SCHEMA_FORMAT_UNSPECIFIED && f != registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("test events are JSON, and %s has a %s schema: publish a test event of it through the router instead", typ,
			strings.ToLower(strings.TrimPrefix(f.String(), "SCHEMA_FORMAT_"))))
	}
	data := req.Msg.GetData()
	if data == "" {
		if len(t.GetExamples()) == 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s has no examples: send data", typ))
		}
		data = t.GetExamples()[0].GetData()
	}
	if len(data) > maxTestData {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("data is %d bytes; at most %d", len(data), maxTestData))
	}
	if !json.Valid([]byte(data)) {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("data is not JSON"))
	}
	if t.Validator != nil {
		violations, err := t.Validator.Validate([]byte(data))
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("data: %v", err))
		}
		if len(violations) > 0 {
			msgs := make([]string, 0, len(violations))
			for _, v := range violations {
				msgs = append(msgs, v.String())
			}
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("data does not match the schema of %s: %s", typ, strings.Join(msgs, "; ")))
		}
	}
	ev := &eventv1.CloudEvent{
		Id: auth.NewID("test_"), Source: TestSource, SpecVersion: "1.0", Type: typ,
		Attributes: map[string]*eventv1.CloudEvent_CloudEventAttributeValue{
			"datacontenttype": {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: "application/json"}},
			"time":            {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(time.Now())}},
			TestAttribute:     {Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeBoolean{CeBoolean: true}},
		},
		Data: &eventv1.CloudEvent_TextData{TextData: data},
	}
	if f, err := filter.Compile(sub.GetFilter()); err == nil {
		if ok, _ := f.Match(ev); !ok {
			return connect.NewResponse(&edgev1.SendTestEventResponse{Event: ev, FilteredOut: true}), nil
		}
	}
	p, _ := auth.FromContext(ctx)
	cursor, err := a.E.mgr.SendTest(ctx, sub, ev, p.Account())
	if err != nil {
		return nil, unavailable(err)
	}
	return connect.NewResponse(&edgev1.SendTestEventResponse{Cursor: cursor, Event: ev}), nil
}
