// Package publish implements RouterService.Publish: per-event validation
// against the cached catalog, then one deduplicating append for the batch.
package publish

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"mime"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	routerv1 "github.com/heraldmesh/herald/api/gen/herald/router/v1"
	"github.com/heraldmesh/herald/api/gen/herald/router/v1/routerv1connect"
	"github.com/heraldmesh/herald/platform/access"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/cloudevent"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/quota"
	"github.com/heraldmesh/herald/platform/schema"
	"github.com/heraldmesh/herald/services/router/internal/appender"
	"github.com/heraldmesh/herald/services/router/internal/backpressure"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// Limits bound one Publish call.
type Limits struct {
	MaxEvents     int // events per batch (default 1000)
	MaxEventBytes int // encoded size of one event (default 1 MiB)
}

// DefaultMaxEventBytes is Limits.MaxEventBytes when unset: 1 MiB.
const DefaultMaxEventBytes = cloudevent.DefaultMaxBytes

// Guards refuse publishes to protect Redis, rather than queue them.
type Guards struct {
	// Memory refuses every publish while Redis is above its memory
	// high-water mark; its Run must be running. Nil: no such check (Redis's
	// own refusal at maxmemory still answers RESOURCE_EXHAUSTED).
	Memory *backpressure.Memory
	// Quotas refuse the publishes of applications and tenants over a hard
	// quota; its Run must be running. Nil: no quotas.
	Quotas *quota.Cache
}

// retryFull is the Retry-After hint while Redis is (nearly) full: long
// enough for the memory reading to change, short enough not to stall.
const retryFull = 5 * time.Second

// Handler serves RouterService.
type Handler struct {
	routerv1connect.UnimplementedRouterServiceHandler
	catalog  *catalog.Cache
	appender *appender.Appender
	log      *slog.Logger
	limits   Limits
	memory   *backpressure.Memory
	quota    *backpressure.Quota
	quotas   *quota.Cache
}

// New returns a Handler. Applications' publish limits are always enforced,
// counted in rdb.
func New(c *catalog.Cache, a *appender.Appender, rdb redis.Cmdable, log *slog.Logger, l Limits, g Guards) *Handler {
	if l.MaxEvents <= 0 {
		l.MaxEvents = 1000
	}
	if l.MaxEventBytes <= 0 {
		l.MaxEventBytes = DefaultMaxEventBytes
	}
	return &Handler{catalog: c, appender: a, log: log, limits: l, memory: g.Memory, quota: backpressure.NewQuota(rdb), quotas: g.Quotas}
}

// exhausted is a RESOURCE_EXHAUSTED error with a Retry-After hint, in
// whole seconds (at least 1).
func exhausted(retry time.Duration, msg error) *connect.Error {
	err := connect.NewError(connect.CodeResourceExhausted, msg)
	err.Meta().Set("Retry-After", strconv.FormatInt(max(1, int64(math.Ceil(retry.Seconds()))), 10))
	return err
}

func refuse(code connect.Code, format string, args ...any) *routerv1.PublishResult {
	return &routerv1.PublishResult{Result: &routerv1.PublishResult_Error{Error: &routerv1.PublishError{
		Code: int32(code), Message: fmt.Sprintf(format, args...),
	}}}
}

// Publish implements RouterService.
func (h *Handler) Publish(ctx context.Context, req *connect.Request[routerv1.PublishRequest]) (*connect.Response[routerv1.PublishResponse], error) {
	p, _ := auth.FromContext(ctx)
	events := req.Msg.GetEvents()
	switch {
	case len(events) == 0:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("events is empty: send at least one CloudEvent"))
	case len(events) > h.limits.MaxEvents:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%d events in one batch, more than the %d allowed", len(events), h.limits.MaxEvents))
	}
	if reason, full := h.memory.Refusing(); full {
		return nil, exhausted(retryFull, errors.New(reason))
	}
	var app *registryv1.Application
	if !p.Admin {
		var err error
		if app, err = h.catalog.Application(ctx, p.ApplicationID); err != nil {
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("cannot load the grants of %s: %w", p.ApplicationID, err))
		}
		if err := h.refuseOverQuota(app); err != nil {
			return nil, err
		}
	}
	results := make([]*routerv1.PublishResult, len(events))
	var items []appender.Item
	var slots []int
	for i, ev := range events {
		t, r := h.check(ctx, app, ev)
		if r != nil {
			results[i] = r
			continue
		}
		items = append(items, appender.Item{
			Event: ev, Account: p.Account(),
			MaxLen: t.GetRetention().GetMaxEvents(), MaxAge: t.GetRetention().GetMaxAge().AsDuration(),
			Partition: partitionOf(ev, t.GetPartitions()),
		})
		slots = append(slots, i)
	}
	if len(items) > 0 {
		if err := h.takeQuota(ctx, app, len(items)); err != nil {
			return nil, err
		}
		appended, err := h.appender.Append(ctx, items)
		if errors.Is(err, appender.ErrOutOfMemory) {
			h.memory.Probe() // refuse the next publishes before they reach Redis
			return nil, exhausted(retryFull, errors.New("the log is full (Redis reached maxmemory); retry later"))
		}
		if errors.Is(err, appender.ErrNotReplicated) {
			h.log.Warn("append not acknowledged by enough replicas", "err", err, "events", len(items))
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("the log did not confirm this batch on enough replicas in time; it may be stored: retry it with the same ids (retries are deduplicated)"))
		}
		if err != nil {
			h.log.Error("append failed", "err", err, "events", len(items))
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("the log is unavailable; nothing from this batch may be assumed stored: retry it (retries are deduplicated)"))
		}
		for j, r := range appended {
			results[slots[j]] = &routerv1.PublishResult{Result: &routerv1.PublishResult_Cursor{Cursor: r.Cursor}, Duplicate: r.Duplicate}
		}
	}
	return connect.NewResponse(&routerv1.PublishResponse{Results: results}), nil
}

// takeQuota draws n events from app's publish limit, if it has one (the
// operator has none), or returns the whole call's refusal. Should Redis not
// answer, the batch goes on: the append will tell.
func (h *Handler) takeQuota(ctx context.Context, app *registryv1.Application, n int) error {
	pl := app.GetPublishLimit()
	if pl == nil {
		return nil
	}
	l := backpressure.Limit{EventsPerSecond: int(pl.GetEventsPerSecond()), Burst: int(pl.GetBurst())}
	wait, err := h.quota.Take(ctx, app.GetId(), l, n)
	var over *backpressure.OverBurstError
	switch {
	case errors.As(err, &over):
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
			"batch of %d events exceeds the burst %d of application %s's publish limit (%d events per second): send smaller batches",
			n, l.EffectiveBurst(), app.GetId(), l.EventsPerSecond))
	case err != nil:
		h.log.Warn("publish quota not checked; letting the batch through", "err", err, "application", app.GetId(), "events", n)
		return nil
	case wait > 0:
		return exhausted(wait, fmt.Errorf(
			"application %s is over its publish limit of %d events per second (burst %d): %d events refused; retry in %v",
			app.GetId(), l.EventsPerSecond, l.EffectiveBurst(), n, wait.Round(time.Millisecond)))
	}
	return nil
}

// check validates one event for app (nil for the operator): it returns the
// event's type when the event may be appended, or the refusal.
func (h *Handler) check(ctx context.Context, app *registryv1.Application, ev *eventv1.CloudEvent) (*catalog.Type, *routerv1.PublishResult) {
	if err := cloudevent.Validate(ev); err != nil {
		return nil, refuse(connect.CodeInvalidArgument, "invalid CloudEvent: %v", err)
	}
	if size := proto.Size(ev); size > h.limits.MaxEventBytes {
		return nil, refuse(connect.CodeInvalidArgument, "event is %d bytes, more than the %d allowed", size, h.limits.MaxEventBytes)
	}
	if err := eventtype.ValidateName(ev.GetType()); err != nil {
		return nil, refuse(connect.CodeInvalidArgument, "type: %v", err)
	}
	t, err := h.catalog.Lookup(ctx, ev.GetType())
	// A type the application's audience may not see does not exist for it,
	// as when it reads the catalog: the same answer as for an unknown type,
	// so that publishing cannot probe for names.
	if errors.Is(err, catalog.ErrUnknownType) || (err == nil && app != nil && !access.Visible(app.GetAudience(), t.GetVisibility())) {
		return nil, refuse(connect.CodeNotFound, "event type %s is not registered", ev.GetType())
	}
	if err != nil {
		h.log.Warn("event type not checked", "type", ev.GetType(), "err", err)
		return nil, refuse(connect.CodeUnavailable, "cannot check event type %s now; retry", ev.GetType())
	}
	if app != nil && !access.Allowed(app.GetGrants(), registryv1.GrantAction_GRANT_ACTION_PUBLISH, t.GetName()) {
		return nil, refuse(connect.CodePermissionDenied, "application %s has no publish grant for %s", app.GetId(), t.GetName())
	}
	if t.GetLifecycle() == registryv1.Lifecycle_LIFECYCLE_RETIRED {
		return nil, refuse(connect.CodeFailedPrecondition, "event type %s is retired", t.GetName())
	}
	if f := schema.Normalize(t.GetSchemaFormat()); f != registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA {
		if r := checkBinary(t, f, ev); r != nil {
			return nil, r
		}
		return t, nil
	}
	data, ok := cloudevent.JSONData(ev)
	if !ok {
		if ev.GetData() != nil {
			return nil, refuse(connect.CodeInvalidArgument, "data must be JSON (text_data, or binary_data with a JSON datacontenttype) to be checked against the schema of %s", t.GetName())
		}
		data = []byte("null")
	}
	violations, err := t.Validator.Validate(data)
	if err != nil {
		return nil, refuse(connect.CodeInvalidArgument, "%v", err)
	}
	if len(violations) > 0 {
		r := refuse(connect.CodeInvalidArgument, "data does not match the schema of %s: %s", t.GetName(), describe(violations))
		for _, v := range violations {
			r.GetError().Violations = append(r.GetError().Violations, &routerv1.SchemaViolation{
				InstanceLocation: v.InstanceLocation, KeywordLocation: v.KeywordLocation, Message: v.Message,
			})
		}
		return nil, r
	}
	return t, nil
}

// protobufTypes are the datacontenttypes binary_data of a PROTOBUF type may
// declare; avroTypes those of an AVRO type.
var (
	protobufTypes = []string{"application/protobuf", "application/x-protobuf", "application/vnd.google.protobuf", "application/octet-stream"}
	avroTypes     = []string{"application/avro", "avro/binary", "application/vnd.apache.avro+binary", "application/octet-stream"}
)

// checkBinary validates the data of a PROTOBUF, AVRO or NONE type: the
// message in proto_data or binary_data, the Avro binary encoding in
// binary_data, opaque bytes of the declared content type (which an event
// without datacontenttype is given).
func checkBinary(t *catalog.Type, f registryv1.SchemaFormat, ev *eventv1.CloudEvent) *routerv1.PublishResult {
	ct := cloudevent.ContentType(ev)
	mt := ""
	if ct != "" {
		var err error
		if mt, _, err = mime.ParseMediaType(ct); err != nil {
			return refuse(connect.CodeInvalidArgument, "datacontenttype %q is not a media type", ct)
		}
	}
	var data []byte
	switch f {
	case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
		if _, ok := ev.GetData().(*eventv1.CloudEvent_ProtoData); ok {
			return refuse(connect.CodeInvalidArgument, "%s carries %s data: send it as binary_data (or text_data), not proto_data", t.GetName(), t.GetContentType())
		}
		if ct == "" {
			if ev.Attributes == nil {
				ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{}
			}
			ev.Attributes["datacontenttype"] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeString{CeString: t.GetContentType()}}
		} else if !schema.SameMediaType(ct, t.GetContentType()) {
			return refuse(connect.CodeInvalidArgument, "datacontenttype %s is not the content type of %s, %s", ct, t.GetName(), t.GetContentType())
		}
		return nil
	case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
		msg := string(t.Schema.Protobuf.Message.FullName())
		switch d := ev.GetData().(type) {
		case *eventv1.CloudEvent_ProtoData:
			u := d.ProtoData.GetTypeUrl()
			if name := u[strings.LastIndexByte(u, '/')+1:]; name != msg {
				return refuse(connect.CodeInvalidArgument, "proto_data holds %q, but %s carries %s (type_url type.googleapis.com/%s)", u, t.GetName(), msg, msg)
			}
			data = d.ProtoData.GetValue()
		case *eventv1.CloudEvent_BinaryData:
			if mt != "" && !slices.Contains(protobufTypes, mt) {
				return refuse(connect.CodeInvalidArgument, "datacontenttype %s is not protobuf: %s carries the protobuf message %s (application/protobuf)", ct, t.GetName(), msg)
			}
			data = d.BinaryData
		case nil:
		default:
			return refuse(connect.CodeInvalidArgument, "data must be the protobuf encoding of %s (proto_data, or binary_data) for %s", msg, t.GetName())
		}
	case registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO:
		switch d := ev.GetData().(type) {
		case *eventv1.CloudEvent_BinaryData:
			if mt != "" && !slices.Contains(avroTypes, mt) {
				return refuse(connect.CodeInvalidArgument, "datacontenttype %s is not Avro: %s carries Avro binary data (application/avro)", ct, t.GetName())
			}
			data = d.BinaryData
		case nil:
		default:
			return refuse(connect.CodeInvalidArgument, "data must be the Avro binary encoding (binary_data) for %s", t.GetName())
		}
		// Readers need the writer's schema: the version is stamped.
		if ev.Attributes == nil {
			ev.Attributes = map[string]*eventv1.CloudEvent_CloudEventAttributeValue{}
		}
		ev.Attributes[cloudevent.SchemaVersionAttribute] = &eventv1.CloudEvent_CloudEventAttributeValue{Attr: &eventv1.CloudEvent_CloudEventAttributeValue_CeInteger{CeInteger: t.GetSchemaVersion()}}
	}
	if vs := t.Schema.ValidateBinary(data); len(vs) > 0 {
		r := refuse(connect.CodeInvalidArgument, "data does not match the %s schema of %s: %s", schema.FormatName(f), t.GetName(), describe(vs))
		for _, v := range vs {
			r.GetError().Violations = append(r.GetError().Violations, &routerv1.SchemaViolation{
				InstanceLocation: v.InstanceLocation, KeywordLocation: v.KeywordLocation, Message: v.Message,
			})
		}
		return r
	}
	return nil
}

// partitionOf places an event among its type's n partitions by its
// partitionkey extension; events without one go to partition 0, in order.
func partitionOf(ev *eventv1.CloudEvent, n int32) int {
	if n <= 1 {
		return 0
	}
	key, ok := ev.GetAttributes()["partitionkey"]
	if !ok {
		return 0
	}
	return eventlog.Partition(cloudevent.AttributeString(key), n)
}

func describe[V fmt.Stringer](vs []V) string {
	parts := make([]string, 0, len(vs))
	for _, v := range vs {
		parts = append(parts, v.String())
	}
	return strings.Join(parts, "; ")
}
