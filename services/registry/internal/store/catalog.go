package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// putDomain queues d under the next revision.
func (w *write) putDomain(d *registryv1.Domain) {
	d.Revision = w.next()
	w.hset(keyDomains, d.GetName(), d)
	w.record(&registryv1.WatchResponse{Revision: d.Revision, Change: &registryv1.WatchResponse_Domain{Domain: d}})
}

// putType queues et under the next revision.
func (w *write) putType(et *registryv1.EventType) {
	et.Revision = w.next()
	w.hset(keyTypes, et.GetName(), et)
	w.record(&registryv1.WatchResponse{Revision: et.Revision, Change: &registryv1.WatchResponse_EventType{EventType: et}})
}

// putProduct queues p under the next revision.
func (w *write) putProduct(p *registryv1.Product) {
	p.Revision = w.next()
	w.hset(keyProducts, p.GetName(), p)
	w.record(&registryv1.WatchResponse{Revision: p.Revision, Change: &registryv1.WatchResponse_Product{Product: p}})
}

// CreateDomain stores a new domain, or fails with *ExistsError.
func (s *Store) CreateDomain(ctx context.Context, in *registryv1.Domain) (*registryv1.Domain, error) {
	var out *registryv1.Domain
	err := s.update(ctx, func(w *write) error {
		found, err := get(ctx, w.tx, keyDomains, in.GetName(), new(registryv1.Domain))
		if err != nil {
			return err
		}
		if found {
			return &ExistsError{Kind: "domain", Name: in.GetName()}
		}
		d := proto.Clone(in).(*registryv1.Domain)
		d.CreateTime, d.UpdateTime = w.timestamp(), w.timestamp()
		w.putDomain(d)
		out = d
		return nil
	})
	return out, err
}

// GetDomain returns one domain, or a *NotFoundError.
func (s *Store) GetDomain(ctx context.Context, name string) (*registryv1.Domain, error) {
	d := new(registryv1.Domain)
	found, err := get(ctx, s.rdb, keyDomains, name, d)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &NotFoundError{Kind: "domain", Name: name}
	}
	return d, nil
}

// ListDomains returns every domain in name order.
func (s *Store) ListDomains(ctx context.Context) ([]*registryv1.Domain, error) {
	ds, err := getAll(ctx, s.rdb, keyDomains, func() *registryv1.Domain { return new(registryv1.Domain) })
	sortDomains(ds)
	return ds, err
}

// UpdateDomain changes a domain: apply edits a copy of the current one,
// whose revision must be revision (else a *ConflictError).
func (s *Store) UpdateDomain(ctx context.Context, name string, revision int64, apply func(*registryv1.Domain) error) (*registryv1.Domain, error) {
	var out *registryv1.Domain
	err := s.update(ctx, func(w *write) error {
		d := new(registryv1.Domain)
		found, err := get(ctx, w.tx, keyDomains, name, d)
		if err != nil {
			return err
		}
		if !found {
			return &NotFoundError{Kind: "domain", Name: name}
		}
		if d.GetRevision() != revision {
			return &ConflictError{Kind: "domain", Name: name, Sent: revision, Current: d.GetRevision()}
		}
		createTime := d.GetCreateTime()
		if err := apply(d); err != nil {
			return err
		}
		d.Name, d.CreateTime, d.UpdateTime = name, createTime, w.timestamp()
		w.putDomain(d)
		out = d
		return nil
	})
	return out, err
}

// CreateEventType stores a new event type with et.schema as its version 1,
// or fails with *ExistsError. A domain that does not exist yet is created
// (empty description and owner) in the same write, so that types can be
// registered without declaring their domain first.
func (s *Store) CreateEventType(ctx context.Context, in *registryv1.EventType) (*registryv1.EventType, error) {
	var out *registryv1.EventType
	err := s.update(ctx, func(w *write) error {
		found, err := get(ctx, w.tx, keyTypes, in.GetName(), new(registryv1.EventType))
		if err != nil {
			return err
		}
		if found {
			return &ExistsError{Kind: "event type", Name: in.GetName()}
		}
		domain := eventtype.DomainOf(in.GetName())
		found, err = get(ctx, w.tx, keyDomains, domain, new(registryv1.Domain))
		if err != nil {
			return err
		}
		if !found {
			w.putDomain(&registryv1.Domain{Name: domain, CreateTime: w.timestamp(), UpdateTime: w.timestamp()})
		}
		et := proto.Clone(in).(*registryv1.EventType)
		et.CreateTime, et.UpdateTime, et.SchemaVersion = w.timestamp(), w.timestamp(), 1
		v1 := &registryv1.SchemaVersion{EventType: et.GetName(), Version: 1, Schema: et.GetSchema(), CreateTime: w.timestamp(),
			SchemaFormat: et.GetSchemaFormat(), ProtobufSchema: et.GetProtobufSchema(), ContentType: et.GetContentType()}
		b, err := proto.Marshal(v1)
		if err != nil {
			return err
		}
		w.op(func(ctx context.Context, p redis.Pipeliner) {
			p.Del(ctx, keySchemas(et.GetName()))
			p.RPush(ctx, keySchemas(et.GetName()), b)
		})
		w.putType(et)
		out = et
		return nil
	})
	return out, err
}

// GetEventType returns one event type, or a *NotFoundError.
func (s *Store) GetEventType(ctx context.Context, name string) (*registryv1.EventType, error) {
	return getType(ctx, s.rdb, name)
}

func getType(ctx context.Context, c redis.Cmdable, name string) (*registryv1.EventType, error) {
	et := new(registryv1.EventType)
	found, err := get(ctx, c, keyTypes, name, et)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &NotFoundError{Kind: "event type", Name: name}
	}
	fixType(et)
	return et, nil
}

// fixType fills in what types stored before schema versions existed lack.
func fixType(et *registryv1.EventType) {
	if et.GetSchemaVersion() == 0 {
		et.SchemaVersion = 1
	}
}

// ListEventTypes returns every event type in name order.
func (s *Store) ListEventTypes(ctx context.Context) ([]*registryv1.EventType, error) {
	ts, err := getAll(ctx, s.rdb, keyTypes, func() *registryv1.EventType { return new(registryv1.EventType) })
	for _, et := range ts {
		fixType(et)
	}
	sortTypes(ts)
	return ts, err
}

// versions reads the schema versions of et, oldest first. stored is how
// many of them are stored: a type written before versions were kept has
// none, and its schema is taken as version 1.
func versions(ctx context.Context, c redis.Cmdable, et *registryv1.EventType) (vs []*registryv1.SchemaVersion, stored int, err error) {
	raw, err := c.LRange(ctx, keySchemas(et.GetName()), 0, -1).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("read schema versions of %s: %w", et.GetName(), err)
	}
	vs, err = decodeVersions(et, raw)
	return vs, len(raw), err
}

func decodeVersions(et *registryv1.EventType, raw []string) ([]*registryv1.SchemaVersion, error) {
	if len(raw) == 0 {
		return []*registryv1.SchemaVersion{{EventType: et.GetName(), Version: 1, Schema: et.GetSchema(), CreateTime: et.GetCreateTime(),
			SchemaFormat: et.GetSchemaFormat(), ProtobufSchema: et.GetProtobufSchema(), ContentType: et.GetContentType()}}, nil
	}
	vs := make([]*registryv1.SchemaVersion, 0, len(raw))
	for _, r := range raw {
		v := new(registryv1.SchemaVersion)
		if err := proto.Unmarshal([]byte(r), v); err != nil {
			return nil, fmt.Errorf("decode schema version of %s: %w", et.GetName(), err)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// SchemaVersions returns an event type and its schema versions, oldest
// first, or a *NotFoundError.
func (s *Store) SchemaVersions(ctx context.Context, name string) (*registryv1.EventType, []*registryv1.SchemaVersion, error) {
	var typeCmd *redis.StringCmd
	var listCmd *redis.StringSliceCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		typeCmd = p.HGet(ctx, keyTypes, name)
		listCmd = p.LRange(ctx, keySchemas(name), 0, -1)
		return nil
	})
	if errors.Is(err, redis.Nil) {
		return nil, nil, &NotFoundError{Kind: "event type", Name: name}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read event type %s: %w", name, err)
	}
	et := new(registryv1.EventType)
	if err := proto.Unmarshal([]byte(typeCmd.Val()), et); err != nil {
		return nil, nil, fmt.Errorf("decode event type %s: %w", name, err)
	}
	fixType(et)
	vs, err := decodeVersions(et, listCmd.Val())
	return et, vs, err
}

// UpdateEventType changes an event type's metadata: apply edits a copy of
// the current type, given its schema versions; the current revision must be
// revision (else a *ConflictError). The name, schema, schema version and
// creation time are kept whatever apply does.
func (s *Store) UpdateEventType(ctx context.Context, name string, revision int64, apply func(*registryv1.EventType, []*registryv1.SchemaVersion) error) (*registryv1.EventType, error) {
	var out *registryv1.EventType
	err := s.update(ctx, func(w *write) error {
		cur, err := getType(ctx, w.tx, name)
		if err != nil {
			return err
		}
		if cur.GetRevision() != revision {
			return &ConflictError{Kind: "event type", Name: name, Sent: revision, Current: cur.GetRevision()}
		}
		vs, _, err := versions(ctx, w.tx, cur)
		if err != nil {
			return err
		}
		et := proto.Clone(cur).(*registryv1.EventType)
		if err := apply(et, vs); err != nil {
			return err
		}
		et.Name, et.Schema, et.SchemaVersion, et.CreateTime = cur.GetName(), cur.GetSchema(), cur.GetSchemaVersion(), cur.GetCreateTime()
		et.SchemaFormat, et.ProtobufSchema, et.ContentType = cur.GetSchemaFormat(), cur.GetProtobufSchema(), cur.GetContentType()
		et.UpdateTime = w.timestamp()
		w.putType(et)
		out = et
		return nil
	})
	return out, err
}

// CreateSchemaVersion adds a JSON schema text as the next version of an
// event type, which becomes its latest. check sees the type and its
// versions, oldest first, and may refuse.
func (s *Store) CreateSchemaVersion(ctx context.Context, name, schema string, check func(*registryv1.EventType, []*registryv1.SchemaVersion) error) (*registryv1.SchemaVersion, error) {
	return s.AddSchemaVersion(ctx, name, func(et *registryv1.EventType, vs []*registryv1.SchemaVersion) (*registryv1.SchemaVersion, error) {
		if err := check(et, vs); err != nil {
			return nil, err
		}
		return &registryv1.SchemaVersion{Schema: schema, SchemaFormat: et.GetSchemaFormat()}, nil
	})
}

// AddSchemaVersion adds the next version of an event type, which becomes
// its latest: build sees the type and its versions, oldest first, and
// returns the schema (text, format, protobuf schema, content type) or
// refuses.
func (s *Store) AddSchemaVersion(ctx context.Context, name string, build func(*registryv1.EventType, []*registryv1.SchemaVersion) (*registryv1.SchemaVersion, error)) (*registryv1.SchemaVersion, error) {
	var out *registryv1.SchemaVersion
	err := s.update(ctx, func(w *write) error {
		et, err := getType(ctx, w.tx, name)
		if err != nil {
			return err
		}
		vs, stored, err := versions(ctx, w.tx, et)
		if err != nil {
			return err
		}
		v, err := build(et, vs)
		if err != nil {
			return err
		}
		v = proto.Clone(v).(*registryv1.SchemaVersion)
		v.EventType, v.Version, v.CreateTime = name, vs[len(vs)-1].GetVersion()+1, w.timestamp()
		var push []any
		if stored == 0 {
			push = append(push, mustMarshal(w, vs[0]))
		}
		push = append(push, mustMarshal(w, v))
		w.op(func(ctx context.Context, p redis.Pipeliner) { p.RPush(ctx, keySchemas(name), push...) })
		et.Schema, et.SchemaVersion, et.UpdateTime = v.GetSchema(), v.GetVersion(), w.timestamp()
		et.SchemaFormat, et.ProtobufSchema, et.ContentType = v.GetSchemaFormat(), v.GetProtobufSchema(), v.GetContentType()
		w.putType(et)
		out = v
		return nil
	})
	return out, err
}

func mustMarshal(w *write, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		w.fail(fmt.Errorf("encode %T: %w", m, err))
	}
	return b
}

// isPattern tells a pattern (billing.*, *) from an exact type name.
func isPattern(s string) bool { return strings.HasSuffix(s, "*") }

// requireTypes fails with a *NotFoundError for the first exact name (not
// a pattern) of list that is not a registered event type. It returns the
// types it found, by name.
func requireTypes(ctx context.Context, c redis.Cmdable, list []string) (map[string]*registryv1.EventType, error) {
	found := map[string]*registryv1.EventType{}
	for _, name := range list {
		if isPattern(name) {
			continue
		}
		et, err := getType(ctx, c, name)
		if err != nil {
			return nil, err
		}
		found[name] = et
	}
	return found, nil
}

// CreateProduct stores a new product, or fails with *ExistsError, or a
// *NotFoundError when it lists an exact type name that is not registered
// (patterns may match nothing yet).
func (s *Store) CreateProduct(ctx context.Context, in *registryv1.Product) (*registryv1.Product, error) {
	var out *registryv1.Product
	err := s.update(ctx, func(w *write) error {
		found, err := get(ctx, w.tx, keyProducts, in.GetName(), new(registryv1.Product))
		if err != nil {
			return err
		}
		if found {
			return &ExistsError{Kind: "product", Name: in.GetName()}
		}
		if _, err := requireTypes(ctx, w.tx, in.GetEventTypes()); err != nil {
			return err
		}
		p := proto.Clone(in).(*registryv1.Product)
		p.CreateTime, p.UpdateTime = w.timestamp(), w.timestamp()
		w.putProduct(p)
		out = p
		return nil
	})
	return out, err
}

// GetProduct returns one product, or a *NotFoundError.
func (s *Store) GetProduct(ctx context.Context, name string) (*registryv1.Product, error) {
	p := new(registryv1.Product)
	found, err := get(ctx, s.rdb, keyProducts, name, p)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &NotFoundError{Kind: "product", Name: name}
	}
	return p, nil
}

// ListProducts returns every product in name order.
func (s *Store) ListProducts(ctx context.Context) ([]*registryv1.Product, error) {
	ps, err := getAll(ctx, s.rdb, keyProducts, func() *registryv1.Product { return new(registryv1.Product) })
	sortProducts(ps)
	return ps, err
}

// UpdateProduct changes a product: apply edits a copy of the current one,
// whose revision must be revision (else a *ConflictError). Exact type
// names must be registered, as on create.
func (s *Store) UpdateProduct(ctx context.Context, name string, revision int64, apply func(*registryv1.Product) error) (*registryv1.Product, error) {
	var out *registryv1.Product
	err := s.update(ctx, func(w *write) error {
		p := new(registryv1.Product)
		found, err := get(ctx, w.tx, keyProducts, name, p)
		if err != nil {
			return err
		}
		if !found {
			return &NotFoundError{Kind: "product", Name: name}
		}
		if p.GetRevision() != revision {
			return &ConflictError{Kind: "product", Name: name, Sent: revision, Current: p.GetRevision()}
		}
		createTime := p.GetCreateTime()
		if err := apply(p); err != nil {
			return err
		}
		if _, err := requireTypes(ctx, w.tx, p.GetEventTypes()); err != nil {
			return err
		}
		p.Name, p.CreateTime, p.UpdateTime = name, createTime, w.timestamp()
		w.putProduct(p)
		out = p
		return nil
	})
	return out, err
}

func sortDomains(ds []*registryv1.Domain) {
	slices.SortFunc(ds, func(a, b *registryv1.Domain) int { return strings.Compare(a.GetName(), b.GetName()) })
}

func sortTypes(ts []*registryv1.EventType) {
	slices.SortFunc(ts, func(a, b *registryv1.EventType) int { return strings.Compare(a.GetName(), b.GetName()) })
}

func sortProducts(ps []*registryv1.Product) {
	slices.SortFunc(ps, func(a, b *registryv1.Product) int { return strings.Compare(a.GetName(), b.GetName()) })
}
