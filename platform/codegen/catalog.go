package codegen

import (
	"context"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/schema"
)

// maxListed bounds the event types ListEventTypes reads.
const maxListed = 100_000

// ListEventTypes reads every event type the client's key may see, page by
// page.
func ListEventTypes(ctx context.Context, reg registryv1connect.RegistryServiceClient) ([]*registryv1.EventType, error) {
	var all []*registryv1.EventType
	token := ""
	for {
		res, err := reg.ListEventTypes(ctx, connect.NewRequest(&registryv1.ListEventTypesRequest{PageSize: 1000, PageToken: token}))
		if err != nil {
			return nil, err
		}
		all = append(all, res.Msg.GetEventTypes()...)
		if token = res.Msg.GetNextPageToken(); token == "" || len(all) >= maxListed {
			return all, nil
		}
	}
}

// FromCatalog is the Types to generate of the catalog's event types that
// match patterns. A Protobuf, Avro or NONE type has no JSON Schema: its
// data is untyped there.
func FromCatalog(all []*registryv1.EventType, patterns []string) []Type {
	var types []Type
	for _, et := range all {
		if !eventtype.MatchAny(patterns, et.GetName()) {
			continue
		}
		var s []byte
		if schema.Normalize(et.GetSchemaFormat()) == registryv1.SchemaFormat_SCHEMA_FORMAT_JSON_SCHEMA {
			s = []byte(et.GetSchema())
		}
		types = append(types, Type{Name: et.GetName(), Description: et.GetDescription(), Schema: s, SchemaVersion: int(et.GetSchemaVersion())})
	}
	return types
}
