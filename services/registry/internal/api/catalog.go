package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/schema"
	"github.com/heraldmesh/herald/services/registry/internal/store"
)

const (
	maxExamples     = 20
	maxExampleData  = 64 << 10
	maxPartitions   = 256
	maxProductTypes = 1000
)

// CreateDomain implements RegistryService.
func (h *Handler) CreateDomain(ctx context.Context, req *connect.Request[registryv1.CreateDomainRequest]) (*connect.Response[registryv1.CreateDomainResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetDomain()
	if in == nil {
		return nil, invalid("domain is required")
	}
	if err := validDomain(in); err != nil {
		return nil, err
	}
	d, err := h.store.CreateDomain(ctx, &registryv1.Domain{Name: in.GetName(), Description: in.GetDescription(), Owner: in.GetOwner()})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreateDomainResponse{Domain: d}), nil
}

func validDomain(d *registryv1.Domain) error {
	if err := validDomainName("domain.name", d.GetName()); err != nil {
		return err
	}
	if err := text("domain.description", d.GetDescription(), maxDescription); err != nil {
		return err
	}
	return text("domain.owner", d.GetOwner(), maxShortText)
}

// GetDomain implements RegistryService.
func (h *Handler) GetDomain(ctx context.Context, req *connect.Request[registryv1.GetDomainRequest]) (*connect.Response[registryv1.GetDomainResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	if err := validDomainName("name", req.Msg.GetName()); err != nil {
		return nil, err
	}
	d, err := h.store.GetDomain(ctx, req.Msg.GetName())
	if err != nil {
		return nil, fail(err)
	}
	if !c.seesAll() {
		visible, err := h.visibleDomains(ctx, c)
		if err != nil {
			return nil, err
		}
		if !visible[d.GetName()] {
			return nil, fail(&store.NotFoundError{Kind: "domain", Name: d.GetName()})
		}
	}
	return connect.NewResponse(&registryv1.GetDomainResponse{Domain: d}), nil
}

// visibleDomains returns the domains an application that does not see the
// whole catalog may see: those with at least one type visible to its
// audience.
func (h *Handler) visibleDomains(ctx context.Context, c caller) (map[string]bool, error) {
	types, err := h.visibleTypes(ctx, c)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, et := range types {
		out[eventtype.DomainOf(et.GetName())] = true
	}
	return out, nil
}

// visibleTypes returns every event type the caller may see, in name order.
func (h *Handler) visibleTypes(ctx context.Context, c caller) ([]*registryv1.EventType, error) {
	all, err := h.store.ListEventTypes(ctx)
	if err != nil {
		return nil, fail(err)
	}
	out := all[:0]
	for _, et := range all {
		if c.sees(et.GetVisibility()) {
			out = append(out, et)
		}
	}
	return out, nil
}

// ListDomains implements RegistryService.
func (h *Handler) ListDomains(ctx context.Context, _ *connect.Request[registryv1.ListDomainsRequest]) (*connect.Response[registryv1.ListDomainsResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	ds, err := h.store.ListDomains(ctx)
	if err != nil {
		return nil, fail(err)
	}
	if !c.seesAll() {
		visible, err := h.visibleDomains(ctx, c)
		if err != nil {
			return nil, err
		}
		out := ds[:0]
		for _, d := range ds {
			if visible[d.GetName()] {
				out = append(out, d)
			}
		}
		ds = out
	}
	return connect.NewResponse(&registryv1.ListDomainsResponse{Domains: ds}), nil
}

// UpdateDomain implements RegistryService.
func (h *Handler) UpdateDomain(ctx context.Context, req *connect.Request[registryv1.UpdateDomainRequest]) (*connect.Response[registryv1.UpdateDomainResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetDomain()
	if in == nil {
		return nil, invalid("domain is required")
	}
	if err := validDomain(in); err != nil {
		return nil, err
	}
	d, err := h.store.UpdateDomain(ctx, in.GetName(), in.GetRevision(), func(d *registryv1.Domain) error {
		d.Description, d.Owner = in.GetDescription(), in.GetOwner()
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.UpdateDomainResponse{Domain: d}), nil
}

// validTypeMetadata checks what CreateEventType and UpdateEventType share.
func validTypeMetadata(in *registryv1.EventType) error {
	if err := eventtype.ValidateName(in.GetName()); err != nil {
		return invalid("event_type.name: %v", err)
	}
	if err := text("event_type.description", in.GetDescription(), maxDescription); err != nil {
		return err
	}
	if err := text("event_type.owner", in.GetOwner(), maxShortText); err != nil {
		return err
	}
	if err := validEnum("event_type.visibility", in.GetVisibility()); err != nil {
		return err
	}
	if err := validEnum("event_type.lifecycle", in.GetLifecycle()); err != nil {
		return err
	}
	if err := validEnum("event_type.compatibility", in.GetCompatibility()); err != nil {
		return err
	}
	if in.GetSunsetTime() != nil {
		if err := in.GetSunsetTime().CheckValid(); err != nil {
			return invalid("event_type.sunset_time: %v", err)
		}
	}
	if in.GetLifecycle() == registryv1.Lifecycle_LIFECYCLE_DEPRECATED && in.GetSunsetTime() == nil {
		return invalid("event_type.sunset_time is required when the lifecycle is DEPRECATED: say when the type will be retired")
	}
	if r := in.GetRetention(); r != nil {
		if r.GetMaxAge() != nil {
			if err := r.GetMaxAge().CheckValid(); err != nil || r.GetMaxAge().AsDuration() < 0 {
				return invalid("event_type.retention.max_age must be a positive duration")
			}
		}
		if r.GetMaxEvents() < 0 {
			return invalid("event_type.retention.max_events must not be negative")
		}
	}
	if p := in.GetPartitions(); p < 0 || p > maxPartitions {
		return invalid("event_type.partitions must be between 1 and %d (0 means 1)", maxPartitions)
	}
	if len(in.GetExamples()) > maxExamples {
		return invalid("event_type.examples has %d entries, more than the %d allowed", len(in.GetExamples()), maxExamples)
	}
	return nil
}

// checkExamples validates each example's data against the schema version
// it names (0: the latest of versions).
func checkExamples(name string, examples []*registryv1.Example, versions []*registryv1.SchemaVersion) error {
	compiled := map[int32]*schema.Compiled{}
	seen := map[string]bool{}
	for i, ex := range examples {
		field := fmt.Sprintf("event_type.examples[%d]", i)
		if strings.TrimSpace(ex.GetName()) == "" {
			return invalid("%s.name is required", field)
		}
		if err := text(field+".name", ex.GetName(), maxShortText); err != nil {
			return err
		}
		if seen[ex.GetName()] {
			return invalid("example %q is listed twice", ex.GetName())
		}
		seen[ex.GetName()] = true
		if err := text(field+".summary", ex.GetSummary(), maxDescription); err != nil {
			return err
		}
		if len(ex.GetData()) > maxExampleData {
			return invalid("example %q: data is %d bytes, more than the %d allowed", ex.GetName(), len(ex.GetData()), maxExampleData)
		}
		v := ex.GetSchemaVersion()
		if v == 0 {
			v = int32(len(versions))
		}
		if v < 0 || int(v) > len(versions) {
			return invalid("example %q names schema version %d, but %s has versions 1 to %d", ex.GetName(), ex.GetSchemaVersion(), name, len(versions))
		}
		s, ok := compiled[v]
		if !ok {
			var err error
			if s, err = schema.CompileDefinition(name, schema.VersionDefinition(versions[v-1])); err != nil {
				return fmt.Errorf("compile schema version %d of %s: %w", v, name, err)
			}
			compiled[v] = s
		}
		violations, err := s.ValidateExample([]byte(ex.GetData()))
		if err != nil {
			return invalid("example %q: %v", ex.GetName(), err)
		}
		if len(violations) > 0 {
			msgs := make([]string, len(violations))
			for i, vi := range violations {
				msgs[i] = vi.String()
			}
			return invalid("example %q does not match schema version %d: %s", ex.GetName(), v, strings.Join(msgs, "; "))
		}
	}
	return nil
}

// CreateEventType implements RegistryService.
func (h *Handler) CreateEventType(ctx context.Context, req *connect.Request[registryv1.CreateEventTypeRequest]) (*connect.Response[registryv1.CreateEventTypeResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetEventType()
	if in == nil {
		return nil, invalid("event_type is required")
	}
	if err := validTypeMetadata(in); err != nil {
		return nil, err
	}
	v1, _, err := buildVersion(in.GetName(), "event_type.", in.GetSchemaFormat(), in.GetSchema(), in.GetProtobufSchema(), in.GetContentType())
	if err != nil {
		return nil, err
	}
	v1.EventType, v1.Version = in.GetName(), 1
	if err := checkExamples(in.GetName(), in.GetExamples(), []*registryv1.SchemaVersion{v1}); err != nil {
		return nil, err
	}
	et := &registryv1.EventType{Name: in.GetName(), Schema: v1.GetSchema(), Partitions: in.GetPartitions(),
		SchemaFormat: v1.GetSchemaFormat(), ProtobufSchema: v1.GetProtobufSchema(), ContentType: v1.GetContentType()}
	setTypeMetadata(et, in)
	if et.Partitions == 0 {
		et.Partitions = 1
	}
	out, err := h.store.CreateEventType(ctx, et)
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreateEventTypeResponse{EventType: out}), nil
}

// buildVersion checks a schema of format and returns it as the version to
// store (a protobuf schema with its compiled descriptor set) and compiled.
// prefix names the request's fields in errors.
func buildVersion(name, prefix string, format registryv1.SchemaFormat, text string, ps *registryv1.ProtobufSchema, contentType string) (*registryv1.SchemaVersion, *schema.Compiled, error) {
	switch schema.Normalize(format) {
	case registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA:
		if text == "" {
			return nil, nil, invalid("%sschema is required: a JSON Schema (draft 2020-12) of the event data, as JSON text ({} accepts any JSON)", prefix)
		}
	case registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO:
		if text == "" {
			return nil, nil, invalid("%sschema is required: the Avro schema of the event data, as JSON text", prefix)
		}
	case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF, registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
		if text != "" {
			return nil, nil, invalid("%sschema must be empty for a %s type", prefix, schema.FormatName(format))
		}
	default:
		return nil, nil, invalid("%sschema_format %d is not one of JSON_SCHEMA, PROTOBUF, AVRO, NONE", prefix, int32(format))
	}
	if ps != nil && schema.Normalize(format) != registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF {
		return nil, nil, invalid("%sprotobuf_schema is only for PROTOBUF types", prefix)
	}
	if contentType != "" && schema.Normalize(format) != registryv1.SchemaFormat_SCHEMA_FORMAT_NONE {
		return nil, nil, invalid("%scontent_type is only for NONE types (the other formats have theirs)", prefix)
	}
	c, err := schema.CompileDefinition(name, schema.Definition{Format: format, Text: text, Protobuf: ps, ContentType: contentType})
	if err != nil {
		field := "schema"
		switch schema.Normalize(format) {
		case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
			field = "protobuf_schema"
		case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
			field = "content_type"
		}
		return nil, nil, invalid("%s%s: %v", prefix, field, err)
	}
	v := &registryv1.SchemaVersion{Schema: text, SchemaFormat: format, ContentType: contentType}
	if c.Protobuf != nil {
		v.ProtobufSchema = &registryv1.ProtobufSchema{Message: ps.GetMessage(), Files: ps.GetFiles(), FileDescriptorSet: c.Protobuf.FileDescriptorSet()}
	}
	return v, c, nil
}

// setTypeMetadata copies what a client may set on a type, besides its
// name, schema and partitions.
func setTypeMetadata(et, in *registryv1.EventType) {
	et.Description, et.Owner = in.GetDescription(), in.GetOwner()
	et.Visibility, et.Lifecycle, et.SunsetTime = in.GetVisibility(), in.GetLifecycle(), in.GetSunsetTime()
	et.Examples, et.Retention, et.Compatibility = in.GetExamples(), in.GetRetention(), in.GetCompatibility()
}

// GetEventType implements RegistryService. A type the caller may not see
// is NOT_FOUND, as if it did not exist.
func (h *Handler) GetEventType(ctx context.Context, req *connect.Request[registryv1.GetEventTypeRequest]) (*connect.Response[registryv1.GetEventTypeResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	et, err := h.visibleType(ctx, c, "name", req.Msg.GetName())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&registryv1.GetEventTypeResponse{EventType: et}), nil
}

func (h *Handler) visibleType(ctx context.Context, c caller, field, name string) (*registryv1.EventType, error) {
	if err := eventtype.ValidateName(name); err != nil {
		return nil, invalid("%s: %v", field, err)
	}
	et, err := h.store.GetEventType(ctx, name)
	if err == nil && !c.sees(et.GetVisibility()) {
		err = &store.NotFoundError{Kind: "event type", Name: name}
	}
	if err != nil {
		return nil, fail(err)
	}
	return et, nil
}

// ListEventTypes implements RegistryService.
func (h *Handler) ListEventTypes(ctx context.Context, req *connect.Request[registryv1.ListEventTypesRequest]) (*connect.Response[registryv1.ListEventTypesResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	size := int(req.Msg.GetPageSize())
	switch {
	case size < 0:
		return nil, invalid("page_size must not be negative")
	case size == 0:
		size = defaultPage
	case size > maxPage:
		size = maxPage
	}
	after := ""
	if tok := req.Msg.GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || !strings.HasPrefix(string(b), "after:") {
			return nil, invalid("page_token is not one this service issued")
		}
		after = strings.TrimPrefix(string(b), "after:")
	}
	domain := req.Msg.GetDomain()
	if domain != "" {
		if err := validDomainName("domain", domain); err != nil {
			return nil, err
		}
	}
	all, err := h.visibleTypes(ctx, c)
	if err != nil {
		return nil, err
	}
	var page []*registryv1.EventType
	more := false
	for _, et := range all {
		if et.GetName() <= after || (domain != "" && eventtype.DomainOf(et.GetName()) != domain) {
			continue
		}
		if len(page) == size {
			more = true
			break
		}
		page = append(page, et)
	}
	res := &registryv1.ListEventTypesResponse{EventTypes: page}
	if more {
		res.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte("after:" + page[len(page)-1].GetName()))
	}
	return connect.NewResponse(res), nil
}

// UpdateEventType implements RegistryService.
func (h *Handler) UpdateEventType(ctx context.Context, req *connect.Request[registryv1.UpdateEventTypeRequest]) (*connect.Response[registryv1.UpdateEventTypeResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	in := req.Msg.GetEventType()
	if in == nil {
		return nil, invalid("event_type is required")
	}
	if err := validTypeMetadata(in); err != nil {
		return nil, err
	}
	et, err := h.store.UpdateEventType(ctx, in.GetName(), in.GetRevision(), func(et *registryv1.EventType, versions []*registryv1.SchemaVersion) error {
		if p := in.GetPartitions(); p != 0 && p != et.GetPartitions() && !(p == 1 && et.GetPartitions() == 0) {
			return failedPrecondition("event type %s has %d partitions, and that cannot change: events of one partition key would change order", in.GetName(), max(et.GetPartitions(), 1))
		}
		if err := checkExamples(in.GetName(), in.GetExamples(), versions); err != nil {
			return err
		}
		setTypeMetadata(et, in)
		return nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.UpdateEventTypeResponse{EventType: et}), nil
}

// compatibility returns the reasons candidate may not follow versions under
// the type's compatibility mode.
func (h *Handler) compatibility(et *registryv1.EventType, candidate *registryv1.SchemaVersion, versions []*registryv1.SchemaVersion) ([]string, error) {
	mode := et.GetCompatibility()
	switch mode {
	case registryv1.Compatibility_COMPATIBILITY_NONE:
		return nil, nil
	case registryv1.Compatibility_COMPATIBILITY_UNSPECIFIED:
		mode = registryv1.Compatibility_COMPATIBILITY_BACKWARD
	}
	var reasons []string
	var err error
	if schema.Normalize(candidate.GetSchemaFormat()) == registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA && schema.Normalize(et.GetSchemaFormat()) == registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA {
		texts := make([]string, len(versions))
		for i, v := range versions {
			texts[i] = v.GetSchema()
		}
		reasons, err = h.checkCompatibility(mode, candidate.GetSchema(), texts)
	} else {
		defs := make([]schema.Definition, len(versions))
		for i, v := range versions {
			defs[i] = schema.VersionDefinition(v)
		}
		reasons, err = schema.CheckDefinitionCompatibility(mode, schema.VersionDefinition(candidate), defs)
	}
	if err != nil {
		return nil, invalid("cannot check the schema's compatibility with %s: %v", et.GetName(), err)
	}
	return reasons, nil
}

func modeName(m registryv1.Compatibility) string {
	if m == registryv1.Compatibility_COMPATIBILITY_UNSPECIFIED {
		m = registryv1.Compatibility_COMPATIBILITY_BACKWARD
	}
	return strings.TrimPrefix(m.String(), "COMPATIBILITY_")
}

func retired(et *registryv1.EventType) error {
	if et.GetLifecycle() == registryv1.Lifecycle_LIFECYCLE_RETIRED {
		return failedPrecondition("event type %s is retired: it takes no new schema versions", et.GetName())
	}
	return nil
}

// CreateSchemaVersion implements RegistryService.
func (h *Handler) CreateSchemaVersion(ctx context.Context, req *connect.Request[registryv1.CreateSchemaVersionRequest]) (*connect.Response[registryv1.CreateSchemaVersionResponse], error) {
	if err := auth.RequireAdmin(ctx); err != nil {
		return nil, err
	}
	name := req.Msg.GetEventType()
	if err := eventtype.ValidateName(name); err != nil {
		return nil, invalid("event_type: %v", err)
	}
	v, err := h.store.AddSchemaVersion(ctx, name, func(et *registryv1.EventType, versions []*registryv1.SchemaVersion) (*registryv1.SchemaVersion, error) {
		if err := retired(et); err != nil {
			return nil, err
		}
		candidate, _, err := buildVersion(name, "", et.GetSchemaFormat(), req.Msg.GetSchema(), req.Msg.GetProtobufSchema(), req.Msg.GetContentType())
		if err != nil {
			return nil, err
		}
		reasons, err := h.compatibility(et, candidate, versions)
		if err != nil {
			return nil, err
		}
		if len(reasons) > 0 {
			return nil, failedPrecondition("the schema breaks the %s compatibility of %s, whose latest version is %d: %s",
				modeName(et.GetCompatibility()), name, len(versions), strings.Join(reasons, "; "))
		}
		return candidate, nil
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(&registryv1.CreateSchemaVersionResponse{SchemaVersion: v}), nil
}

// ListSchemaVersions implements RegistryService.
func (h *Handler) ListSchemaVersions(ctx context.Context, req *connect.Request[registryv1.ListSchemaVersionsRequest]) (*connect.Response[registryv1.ListSchemaVersionsResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	_, versions, err := h.visibleVersions(ctx, c, req.Msg.GetEventType())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&registryv1.ListSchemaVersionsResponse{SchemaVersions: versions}), nil
}

func (h *Handler) visibleVersions(ctx context.Context, c caller, name string) (*registryv1.EventType, []*registryv1.SchemaVersion, error) {
	if err := eventtype.ValidateName(name); err != nil {
		return nil, nil, invalid("event_type: %v", err)
	}
	et, versions, err := h.store.SchemaVersions(ctx, name)
	if err == nil && !c.sees(et.GetVisibility()) {
		err = &store.NotFoundError{Kind: "event type", Name: name}
	}
	if err != nil {
		return nil, nil, fail(err)
	}
	return et, versions, nil
}

// CheckCompatibility implements RegistryService.
func (h *Handler) CheckCompatibility(ctx context.Context, req *connect.Request[registryv1.CheckCompatibilityRequest]) (*connect.Response[registryv1.CheckCompatibilityResponse], error) {
	c, err := h.reader(ctx)
	if err != nil {
		return nil, err
	}
	et, versions, err := h.visibleVersions(ctx, c, req.Msg.GetEventType())
	if err != nil {
		return nil, err
	}
	candidate, _, err := buildVersion(et.GetName(), "", et.GetSchemaFormat(), req.Msg.GetSchema(), req.Msg.GetProtobufSchema(), req.Msg.GetContentType())
	if err != nil {
		return nil, err
	}
	var reasons []string
	if err := retired(et); err != nil {
		var ce *connect.Error
		errors.As(err, &ce)
		reasons = append(reasons, ce.Message())
	}
	more, err := h.compatibility(et, candidate, versions)
	if err != nil {
		return nil, err
	}
	reasons = append(reasons, more...)
	return connect.NewResponse(&registryv1.CheckCompatibilityResponse{Compatible: len(reasons) == 0, Reasons: reasons}), nil
}
