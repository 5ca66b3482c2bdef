package catalogfile

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/schema"
	"google.golang.org/protobuf/proto"
)

// fakeRegistry is an in-memory registry with the contract's rules that
// catalog files rely on: revisions checked on update, schema versions
// checked with the real compatibility rules, examples kept as sent. The
// integration test runs the same flows against the real registry.
type fakeRegistry struct {
	registryv1connect.RegistryServiceClient // the methods not faked panic

	mu       sync.Mutex
	revision int64
	domains  map[string]*registryv1.Domain
	types    map[string]*registryv1.EventType
	versions map[string][]string
	products map[string]*registryv1.Product
	calls    []string
}

func newFake() *fakeRegistry {
	return &fakeRegistry{domains: map[string]*registryv1.Domain{}, types: map[string]*registryv1.EventType{},
		versions: map[string][]string{}, products: map[string]*registryv1.Product{}}
}

func (f *fakeRegistry) call(name string) {
	f.calls = append(f.calls, name)
}

func (f *fakeRegistry) mutations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if !strings.HasPrefix(c, "List") && !strings.HasPrefix(c, "Get") && !strings.HasPrefix(c, "Check") {
			out = append(out, c)
		}
	}
	return out
}

func conflict(kind, name string, sent, current int64) error {
	return connect.NewError(connect.CodeAborted, fmt.Errorf("%s %s is at revision %d, not %d", kind, name, current, sent))
}

func sorted[T proto.Message](m map[string]T) []T {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]T, len(keys))
	for i, k := range keys {
		out[i] = proto.Clone(m[k]).(T)
	}
	return out
}

func (f *fakeRegistry) ListDomains(context.Context, *connect.Request[registryv1.ListDomainsRequest]) (*connect.Response[registryv1.ListDomainsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("ListDomains")
	return connect.NewResponse(&registryv1.ListDomainsResponse{Domains: sorted(f.domains)}), nil
}

func (f *fakeRegistry) ListEventTypes(_ context.Context, req *connect.Request[registryv1.ListEventTypesRequest]) (*connect.Response[registryv1.ListEventTypesResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("ListEventTypes")
	// Pages of 2, to exercise paging.
	all := sorted(f.types)
	after := strings.TrimPrefix(req.Msg.GetPageToken(), "after:")
	var page []*registryv1.EventType
	next := ""
	for _, et := range all {
		if after != "" && et.GetName() <= after {
			continue
		}
		if len(page) == 2 {
			next = "after:" + page[1].GetName()
			break
		}
		page = append(page, et)
	}
	return connect.NewResponse(&registryv1.ListEventTypesResponse{EventTypes: page, NextPageToken: next}), nil
}

func (f *fakeRegistry) ListProducts(context.Context, *connect.Request[registryv1.ListProductsRequest]) (*connect.Response[registryv1.ListProductsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("ListProducts")
	return connect.NewResponse(&registryv1.ListProductsResponse{Products: sorted(f.products)}), nil
}

// The fake has no bridges nor applications: the integration test covers
// bridges against the real registry.
func (f *fakeRegistry) ListBridges(context.Context, *connect.Request[registryv1.ListBridgesRequest]) (*connect.Response[registryv1.ListBridgesResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("ListBridges")
	return connect.NewResponse(&registryv1.ListBridgesResponse{}), nil
}

func (f *fakeRegistry) ListApplications(context.Context, *connect.Request[registryv1.ListApplicationsRequest]) (*connect.Response[registryv1.ListApplicationsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("ListApplications")
	return connect.NewResponse(&registryv1.ListApplicationsResponse{}), nil
}

func (f *fakeRegistry) CreateDomain(_ context.Context, req *connect.Request[registryv1.CreateDomainRequest]) (*connect.Response[registryv1.CreateDomainResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("CreateDomain " + req.Msg.GetDomain().GetName())
	d := proto.Clone(req.Msg.GetDomain()).(*registryv1.Domain)
	if _, ok := f.domains[d.GetName()]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("domain %s exists", d.GetName()))
	}
	f.revision++
	d.Revision = f.revision
	f.domains[d.GetName()] = d
	return connect.NewResponse(&registryv1.CreateDomainResponse{Domain: proto.Clone(d).(*registryv1.Domain)}), nil
}

func (f *fakeRegistry) UpdateDomain(_ context.Context, req *connect.Request[registryv1.UpdateDomainRequest]) (*connect.Response[registryv1.UpdateDomainResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := req.Msg.GetDomain()
	f.call("UpdateDomain " + in.GetName())
	cur, ok := f.domains[in.GetName()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no domain %s", in.GetName()))
	}
	if in.GetRevision() != cur.GetRevision() {
		return nil, conflict("domain", in.GetName(), in.GetRevision(), cur.GetRevision())
	}
	f.revision++
	cur.Description, cur.Owner, cur.Revision = in.GetDescription(), in.GetOwner(), f.revision
	return connect.NewResponse(&registryv1.UpdateDomainResponse{Domain: proto.Clone(cur).(*registryv1.Domain)}), nil
}

func (f *fakeRegistry) CreateEventType(_ context.Context, req *connect.Request[registryv1.CreateEventTypeRequest]) (*connect.Response[registryv1.CreateEventTypeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := req.Msg.GetEventType()
	f.call("CreateEventType " + in.GetName())
	if _, ok := f.types[in.GetName()]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("event type %s exists", in.GetName()))
	}
	if in.GetLifecycle() == registryv1.Lifecycle_LIFECYCLE_DEPRECATED && in.GetSunsetTime() == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("sunset_time is required when DEPRECATED"))
	}
	et := proto.Clone(in).(*registryv1.EventType)
	f.revision++
	et.Revision, et.SchemaVersion = f.revision, 1
	if et.Partitions == 0 {
		et.Partitions = 1
	}
	f.types[et.GetName()] = et
	f.versions[et.GetName()] = []string{in.GetSchema()}
	return connect.NewResponse(&registryv1.CreateEventTypeResponse{EventType: proto.Clone(et).(*registryv1.EventType)}), nil
}

func (f *fakeRegistry) GetEventType(_ context.Context, req *connect.Request[registryv1.GetEventTypeRequest]) (*connect.Response[registryv1.GetEventTypeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("GetEventType " + req.Msg.GetName())
	et, ok := f.types[req.Msg.GetName()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no event type %s", req.Msg.GetName()))
	}
	return connect.NewResponse(&registryv1.GetEventTypeResponse{EventType: proto.Clone(et).(*registryv1.EventType)}), nil
}

func (f *fakeRegistry) UpdateEventType(_ context.Context, req *connect.Request[registryv1.UpdateEventTypeRequest]) (*connect.Response[registryv1.UpdateEventTypeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := req.Msg.GetEventType()
	f.call("UpdateEventType " + in.GetName())
	cur, ok := f.types[in.GetName()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no event type %s", in.GetName()))
	}
	if in.GetRevision() != cur.GetRevision() {
		return nil, conflict("event type", in.GetName(), in.GetRevision(), cur.GetRevision())
	}
	if p := in.GetPartitions(); p != 0 && p != cur.GetPartitions() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("partitions cannot change"))
	}
	for _, ex := range in.GetExamples() {
		if ex.GetSchemaVersion() > cur.GetSchemaVersion() {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("example %q names schema version %d, but %s has versions 1 to %d",
				ex.GetName(), ex.GetSchemaVersion(), cur.GetName(), cur.GetSchemaVersion()))
		}
	}
	f.revision++
	cur.Description, cur.Owner, cur.Visibility, cur.Lifecycle = in.GetDescription(), in.GetOwner(), in.GetVisibility(), in.GetLifecycle()
	cur.SunsetTime, cur.Examples, cur.Retention, cur.Compatibility = in.GetSunsetTime(), in.GetExamples(), in.GetRetention(), in.GetCompatibility()
	cur.Revision = f.revision
	return connect.NewResponse(&registryv1.UpdateEventTypeResponse{EventType: proto.Clone(cur).(*registryv1.EventType)}), nil
}

func (f *fakeRegistry) reasons(name, candidate string) ([]string, error) {
	et, ok := f.types[name]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no event type %s", name))
	}
	mode := et.GetCompatibility()
	if mode == registryv1.Compatibility_COMPATIBILITY_NONE {
		return nil, nil
	}
	return schema.CheckCompatibility(mode, candidate, f.versions[name])
}

func (f *fakeRegistry) CheckCompatibility(_ context.Context, req *connect.Request[registryv1.CheckCompatibilityRequest]) (*connect.Response[registryv1.CheckCompatibilityResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.call("CheckCompatibility " + req.Msg.GetEventType())
	reasons, err := f.reasons(req.Msg.GetEventType(), req.Msg.GetSchema())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&registryv1.CheckCompatibilityResponse{Compatible: len(reasons) == 0, Reasons: reasons}), nil
}

func (f *fakeRegistry) CreateSchemaVersion(_ context.Context, req *connect.Request[registryv1.CreateSchemaVersionRequest]) (*connect.Response[registryv1.CreateSchemaVersionResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := req.Msg.GetEventType()
	f.call("CreateSchemaVersion " + name)
	reasons, err := f.reasons(name, req.Msg.GetSchema())
	if err != nil {
		return nil, err
	}
	if len(reasons) > 0 {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("the schema breaks compatibility: %s", strings.Join(reasons, "; ")))
	}
	et := f.types[name]
	f.versions[name] = append(f.versions[name], req.Msg.GetSchema())
	f.revision++
	et.Schema, et.SchemaVersion, et.Revision = req.Msg.GetSchema(), int32(len(f.versions[name])), f.revision
	return connect.NewResponse(&registryv1.CreateSchemaVersionResponse{SchemaVersion: &registryv1.SchemaVersion{
		EventType: name, Version: et.SchemaVersion, Schema: et.Schema}}), nil
}

func (f *fakeRegistry) CreateProduct(_ context.Context, req *connect.Request[registryv1.CreateProductRequest]) (*connect.Response[registryv1.CreateProductResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := proto.Clone(req.Msg.GetProduct()).(*registryv1.Product)
	f.call("CreateProduct " + p.GetName())
	if _, ok := f.products[p.GetName()]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("product %s exists", p.GetName()))
	}
	f.revision++
	p.Revision = f.revision
	f.products[p.GetName()] = p
	return connect.NewResponse(&registryv1.CreateProductResponse{Product: proto.Clone(p).(*registryv1.Product)}), nil
}

func (f *fakeRegistry) UpdateProduct(_ context.Context, req *connect.Request[registryv1.UpdateProductRequest]) (*connect.Response[registryv1.UpdateProductResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := req.Msg.GetProduct()
	f.call("UpdateProduct " + in.GetName())
	cur, ok := f.products[in.GetName()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no product %s", in.GetName()))
	}
	if in.GetRevision() != cur.GetRevision() {
		return nil, conflict("product", in.GetName(), in.GetRevision(), cur.GetRevision())
	}
	f.revision++
	cur.Description, cur.EventTypes, cur.Revision = in.GetDescription(), in.GetEventTypes(), f.revision
	return connect.NewResponse(&registryv1.UpdateProductResponse{Product: proto.Clone(cur).(*registryv1.Product)}), nil
}
