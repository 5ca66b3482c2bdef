package catalogfile

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/schema"
	"go.yaml.in/yaml/v3"
)

// State is what a registry holds, as far as catalog files go.
type State struct {
	Domains    []*registryv1.Domain
	EventTypes []*registryv1.EventType // Schema is the latest version
	Products   []*registryv1.Product
	// Bridges and the Applications they name (to write and read
	// applications by name).
	Bridges      []*registryv1.Bridge
	Applications []*registryv1.Application

	noBridges bool // the registry does not implement bridges
}

// Revision is the highest revision of anything in the state.
func (s *State) Revision() int64 {
	var r int64
	for _, d := range s.Domains {
		r = max(r, d.GetRevision())
	}
	for _, et := range s.EventTypes {
		r = max(r, et.GetRevision())
	}
	for _, p := range s.Products {
		r = max(r, p.GetRevision())
	}
	for _, b := range s.Bridges {
		r = max(r, b.GetRevision())
	}
	return r
}

func (s *State) domain(name string) *registryv1.Domain {
	for _, d := range s.Domains {
		if d.GetName() == name {
			return d
		}
	}
	return nil
}

func (s *State) eventType(name string) *registryv1.EventType {
	for _, et := range s.EventTypes {
		if et.GetName() == name {
			return et
		}
	}
	return nil
}

func (s *State) product(name string) *registryv1.Product {
	for _, p := range s.Products {
		if p.GetName() == name {
			return p
		}
	}
	return nil
}

// Fetch reads the catalog of a registry (with the operator's key: every
// type, whatever its visibility).
func Fetch(ctx context.Context, client registryv1connect.RegistryServiceClient) (*State, error) {
	st := &State{}
	ds, err := client.ListDomains(ctx, connect.NewRequest(&registryv1.ListDomainsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list domains: %w", err)
	}
	st.Domains = ds.Msg.GetDomains()
	token := ""
	for {
		res, err := client.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{PageSize: 1000, PageToken: token}))
		if err != nil {
			return nil, fmt.Errorf("list event types: %w", err)
		}
		st.EventTypes = append(st.EventTypes, res.Msg.GetEventTypes()...)
		if token = res.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	ps, err := client.ListProducts(ctx, connect.NewRequest(&registryv1.ListProductsRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list products: %w", err)
	}
	st.Products = ps.Msg.GetProducts()
	// A registry older than bridges has none: its catalog still applies.
	bs, err := client.ListBridges(ctx, connect.NewRequest(&registryv1.ListBridgesRequest{}))
	if err != nil && connect.CodeOf(err) != connect.CodeUnimplemented {
		return nil, fmt.Errorf("list bridges: %w", err)
	}
	st.noBridges = err != nil
	if err == nil {
		st.Bridges = bs.Msg.GetBridges()
		as, err := client.ListApplications(ctx, connect.NewRequest(&registryv1.ListApplicationsRequest{}))
		if err != nil {
			return nil, fmt.Errorf("list applications: %w", err)
		}
		st.Applications = as.Msg.GetApplications()
	}
	return st, nil
}

// Export turns a registry's state into a file that says exactly that:
// applying it to the same registry changes nothing.
func Export(st *State) *File {
	f := &File{Version: Version}
	for _, d := range st.Domains {
		f.Domains = append(f.Domains, Domain{Name: d.GetName(), Description: ptr(d.GetDescription()), Owner: ptr(d.GetOwner())})
	}
	for _, et := range st.EventTypes {
		x := EventType{
			Name:          et.GetName(),
			Description:   ptr(et.GetDescription()),
			Owner:         ptr(et.GetOwner()),
			Visibility:    visibilityName(et.GetVisibility()),
			Lifecycle:     lifecycleName(et.GetLifecycle()),
			Compatibility: compatibilityName(et.GetCompatibility()),
			Partitions:    max(1, et.GetPartitions()),
		}
		switch f := schema.Normalize(et.GetSchemaFormat()); f {
		case registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA:
			x.Schema = *jsonNode(et.GetSchema())
		case registryv1.SchemaFormat_SCHEMA_FORMAT_AVRO:
			x.Format, x.Schema = formatName(f), *jsonNode(et.GetSchema())
		case registryv1.SchemaFormat_SCHEMA_FORMAT_PROTOBUF:
			x.Format = formatName(f)
			x.Protobuf = &ProtobufSchema{Message: et.GetProtobufSchema().GetMessage(), Files: et.GetProtobufSchema().GetFiles()}
		case registryv1.SchemaFormat_SCHEMA_FORMAT_NONE:
			x.Format, x.ContentType = formatName(f), et.GetContentType()
		}
		if ts := et.GetSunsetTime(); ts != nil {
			s := ts.AsTime().UTC().Format(time.RFC3339Nano)
			x.Sunset = &s
		}
		if r := et.GetRetention(); r != nil && (r.GetMaxAge().AsDuration() > 0 || r.GetMaxEvents() > 0) {
			x.Retention = &Retention{MaxEvents: r.GetMaxEvents()}
			if d := r.GetMaxAge().AsDuration(); d > 0 {
				x.Retention.MaxAge = formatDuration(d)
			}
		}
		for _, ex := range et.GetExamples() {
			x.Examples = append(x.Examples, Example{Name: ex.GetName(), Summary: ex.GetSummary(), Data: *jsonNode(ex.GetData()), SchemaVersion: ex.GetSchemaVersion()})
		}
		f.EventTypes = append(f.EventTypes, x)
	}
	for _, p := range st.Products {
		f.Products = append(f.Products, Product{Name: p.GetName(), Description: ptr(p.GetDescription()), EventTypes: p.GetEventTypes()})
	}
	slices.SortFunc(f.Domains, func(a, b Domain) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(f.EventTypes, func(a, b EventType) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(f.Products, func(a, b Product) int { return cmp.Compare(a.Name, b.Name) })
	f.Bridges = exportBridges(st)
	return f
}

// ptr returns nil for "", so that empty texts are left out of exports (and
// so left as they are when applied).
func ptr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Marshal writes the file as YAML, with a heading comment.
func (f *File) Marshal(heading string) ([]byte, error) {
	var n yaml.Node
	if err := n.Encode(f); err != nil {
		return nil, err
	}
	n.HeadComment = heading
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func visibilityName(v registryv1.Visibility) string {
	for k, x := range visibilities {
		if x == normVisibility(v) {
			return k
		}
	}
	return "internal"
}

func lifecycleName(l registryv1.Lifecycle) string {
	for k, x := range lifecycles {
		if x == normLifecycle(l) {
			return k
		}
	}
	return "active"
}

func compatibilityName(c registryv1.Compatibility) string {
	for k, x := range compatibilities {
		if x == normCompatibility(c) {
			return k
		}
	}
	return "backward"
}

func normVisibility(v registryv1.Visibility) registryv1.Visibility {
	if v == registryv1.Visibility_VISIBILITY_UNSPECIFIED {
		return registryv1.Visibility_VISIBILITY_INTERNAL
	}
	return v
}

func normLifecycle(l registryv1.Lifecycle) registryv1.Lifecycle {
	if l == registryv1.Lifecycle_LIFECYCLE_UNSPECIFIED {
		return registryv1.Lifecycle_LIFECYCLE_ACTIVE
	}
	return l
}

func normCompatibility(c registryv1.Compatibility) registryv1.Compatibility {
	if c == registryv1.Compatibility_COMPATIBILITY_UNSPECIFIED {
		return registryv1.Compatibility_COMPATIBILITY_BACKWARD
	}
	return c
}
