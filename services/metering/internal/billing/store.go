// Package billing stores plans, assignments, invoices and credit notes in
// Redis and serves BillingService. Everything lives under one hash tag,
// herald:{billing}:, so that the transactions (WATCH/MULTI) work on a
// cluster too:
//
//	plan:<id>              Plan (without versions), proto
//	planv:<id>:<n>         PlanVersion n, proto, written once
//	plans                  set of plan ids
//	asg:<subject>          hash assignment id -> Assignment, proto (one per
//	                       application "a|<id>" or tenant "t|<tenant>")
//	asgidx                 hash assignment id -> subject
//	inv:<id>               finalized Invoice (without credit notes), proto
//	invs                   set of invoice ids
//	cn:<invoice id>        list of CreditNote, proto, oldest first
//	outbox                 hash invoice id -> herald.invoice.finalized
//	                       CloudEvent not yet published, proto
package billing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	eventv1 "github.com/heraldmesh/herald/api/gen/herald/event/v1"
	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
)

const prefix = "herald:{billing}:"

func planKey(id string) string { return prefix + "plan:" + id }
func versionKey(id string, n int32) string {
	return prefix + "planv:" + id + ":" + strconv.Itoa(int(n))
}
func assignKey(subject string) string { return prefix + "asg:" + subject }

// tenantAppsKey is the set of the subjects of a tenant's applications that
// have (or had) assignments of their own.
func tenantAppsKey(tenant string) string { return prefix + "tenantapps:" + tenant }
func invoiceKey(id string) string        { return prefix + "inv:" + id }
func creditKey(id string) string         { return prefix + "cn:" + id }

const (
	plansKey   = prefix + "plans"
	asgIdxKey  = prefix + "asgidx"
	invoicesKy = prefix + "invs"
	outboxKey  = prefix + "outbox"
)

// Errors the handler turns into codes.
var (
	ErrExists   = errors.New("already exists")
	ErrNotFound = errors.New("not found")
	ErrOverlap  = errors.New("overlaps an existing assignment")
	ErrCap      = errors.New("exceeds the remaining total")
)

// Store is the billing data in Redis.
type Store struct{ rdb redis.UniversalClient }

// NewStore returns a Store on rdb.
func NewStore(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

const maxRetries = 20

// txn runs f under WATCH keys, retrying when a watched key changed.
func (s *Store) txn(ctx context.Context, f func(tx *redis.Tx) error, keys ...string) error {
	for range maxRetries {
		err := s.rdb.Watch(ctx, f, keys...)
		if !errors.Is(err, redis.TxFailedErr) {
			return err
		}
	}
	return errors.New("billing: too much contention")
}

func get[M proto.Message](ctx context.Context, c redis.Cmdable, key string, m M) (bool, error) {
	b, err := c.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, proto.Unmarshal(b, m)
}

func marshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err) // our own messages always marshal
	}
	return b
}

// CreatePlan stores a new plan and its version 1.
func (s *Store) CreatePlan(ctx context.Context, p *meteringv1.Plan, v *meteringv1.PlanVersion) error {
	return s.txn(ctx, func(tx *redis.Tx) error {
		n, err := tx.Exists(ctx, planKey(p.GetId())).Result()
		if err != nil {
			return err
		}
		if n == 1 {
			return ErrExists
		}
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, planKey(p.GetId()), marshal(p), 0)
			pipe.Set(ctx, versionKey(p.GetId(), v.GetVersion()), marshal(v), 0)
			pipe.SAdd(ctx, plansKey, p.GetId())
			return nil
		})
		return err
	}, planKey(p.GetId()))
}

// AddVersion stores v as the plan's next version, setting v.Version.
func (s *Store) AddVersion(ctx context.Context, id string, v *meteringv1.PlanVersion) error {
	return s.txn(ctx, func(tx *redis.Tx) error {
		p := new(meteringv1.Plan)
		ok, err := get(ctx, tx, planKey(id), p)
		if err != nil {
			return err
		}
		if !ok {
			return ErrNotFound
		}
		p.LatestVersion++
		v.Version = p.LatestVersion
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, planKey(id), marshal(p), 0)
			pipe.SetNX(ctx, versionKey(id, v.GetVersion()), marshal(v), 0)
			return nil
		})
		return err
	}, planKey(id))
}

// Plan returns a plan with its versions.
func (s *Store) Plan(ctx context.Context, id string) (*meteringv1.Plan, error) {
	p := new(meteringv1.Plan)
	ok, err := get(ctx, s.rdb, planKey(id), p)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	cmds := make([]*redis.StringCmd, p.GetLatestVersion())
	_, err = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range cmds {
			cmds[i] = pipe.Get(ctx, versionKey(id, int32(i+1)))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, c := range cmds {
		v := new(meteringv1.PlanVersion)
		if err := proto.Unmarshal([]byte(c.Val()), v); err != nil {
			return nil, err
		}
		p.Versions = append(p.Versions, v)
	}
	return p, nil
}

// Plans returns every plan, by id.
func (s *Store) Plans(ctx context.Context) ([]*meteringv1.Plan, error) {
	ids, err := s.rdb.SMembers(ctx, plansKey).Result()
	if err != nil {
		return nil, err
	}
	slices.Sort(ids)
	out := make([]*meteringv1.Plan, 0, len(ids))
	for _, id := range ids {
		p, err := s.Plan(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Version returns one plan version.
func (s *Store) Version(ctx context.Context, id string, n int32) (*meteringv1.PlanVersion, error) {
	v := new(meteringv1.PlanVersion)
	ok, err := get(ctx, s.rdb, versionKey(id, n), v)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return v, nil
}

// Subject is the key of an assignment's or invoice's subject.
func Subject(app, tenant string) string {
	if app != "" {
		return "a|" + app
	}
	return "t|" + tenant
}

func endOf(a *meteringv1.Assignment) string {
	if a.GetEndMonth() == "" {
		return "9999-12"
	}
	return a.GetEndMonth()
}

// Assign stores a, refusing one overlapping another of the same subject,
// and one that would bill an application twice: an application's own
// assignment overlapping one of its tenant (tenant: the application's
// tenant, "" for none), or a tenant's overlapping one of its applications'.
func (s *Store) Assign(ctx context.Context, a *meteringv1.Assignment, tenant string) error {
	subject := Subject(a.GetApplicationId(), a.GetTenant())
	key := assignKey(subject)
	keys := []string{key}
	if tenant != "" {
		keys = append(keys, assignKey(Subject("", tenant)), tenantAppsKey(tenant))
	}
	return s.txn(ctx, func(tx *redis.Tx) error {
		if err := overlapsIn(ctx, tx, key, a, ""); err != nil {
			return err
		}
		if tenant != "" && a.GetApplicationId() != "" {
			if err := overlapsIn(ctx, tx, assignKey(Subject("", tenant)), a, "tenant "+tenant); err != nil {
				return err
			}
		}
		if tenant != "" && a.GetApplicationId() == "" {
			apps, err := tx.SMembers(ctx, tenantAppsKey(tenant)).Result()
			if err != nil {
				return err
			}
			for _, app := range apps {
				if err := overlapsIn(ctx, tx, assignKey(app), a, "application "+strings.TrimPrefix(app, "a|")); err != nil {
					return err
				}
			}
		}
		_, err := tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.HSet(ctx, key, a.GetId(), marshal(a))
			pipe.HSet(ctx, asgIdxKey, a.GetId(), subject)
			if tenant != "" && a.GetApplicationId() != "" {
				pipe.SAdd(ctx, tenantAppsKey(tenant), subject)
			}
			return nil
		})
		return err
	}, keys...)
}

// overlapsIn is ErrOverlap when an assignment under key overlaps a's months.
func overlapsIn(ctx context.Context, tx *redis.Tx, key string, a *meteringv1.Assignment, whose string) error {
	all, err := tx.HGetAll(ctx, key).Result()
	if err != nil {
		return err
	}
	for _, b := range all {
		o := new(meteringv1.Assignment)
		if err := proto.Unmarshal([]byte(b), o); err != nil {
			return err
		}
		if a.GetStartMonth() <= endOf(o) && o.GetStartMonth() <= endOf(a) {
			err := fmt.Errorf("%w %s (%s to %s)", ErrOverlap, o.GetId(), o.GetStartMonth(), cmpOr(o.GetEndMonth(), "open-ended"))
			if whose != "" {
				err = fmt.Errorf("%w, of %s: an application billed on its own and through its tenant would pay twice", err, whose)
			}
			return err
		}
	}
	return nil
}

func cmpOr(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Unassign deletes an assignment.
func (s *Store) Unassign(ctx context.Context, id string) (*meteringv1.Assignment, error) {
	subject, err := s.rdb.HGet(ctx, asgIdxKey, id).Result()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	b, err := s.rdb.HGet(ctx, assignKey(subject), id).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	a := new(meteringv1.Assignment)
	if err := proto.Unmarshal(b, a); err != nil {
		return nil, err
	}
	_, err = s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.HDel(ctx, assignKey(subject), id)
		pipe.HDel(ctx, asgIdxKey, id)
		return nil
	})
	return a, err
}

// Assignments returns the assignments of a subject ("" : all), sorted by
// subject and start month.
func (s *Store) Assignments(ctx context.Context, subject string) ([]*meteringv1.Assignment, error) {
	var subjects []string
	if subject != "" {
		subjects = []string{subject}
	} else {
		idx, err := s.rdb.HGetAll(ctx, asgIdxKey).Result()
		if err != nil {
			return nil, err
		}
		for _, sub := range idx {
			if !slices.Contains(subjects, sub) {
				subjects = append(subjects, sub)
			}
		}
	}
	slices.Sort(subjects)
	var out []*meteringv1.Assignment
	for _, sub := range subjects {
		all, err := s.rdb.HGetAll(ctx, assignKey(sub)).Result()
		if err != nil {
			return nil, err
		}
		var these []*meteringv1.Assignment
		for _, b := range all {
			a := new(meteringv1.Assignment)
			if err := proto.Unmarshal([]byte(b), a); err != nil {
				return nil, err
			}
			these = append(these, a)
		}
		slices.SortFunc(these, func(x, y *meteringv1.Assignment) int {
			if x.GetStartMonth() < y.GetStartMonth() {
				return -1
			}
			if x.GetStartMonth() > y.GetStartMonth() {
				return 1
			}
			return 0
		})
		out = append(out, these...)
	}
	return out, nil
}

// Finalize stores inv unless an invoice with its id exists, and queues
// its event in the outbox in the same transaction. It returns the stored
// invoice (inv, or the one that was there) and whether it was new.
func (s *Store) Finalize(ctx context.Context, inv *meteringv1.Invoice, ev *eventv1.CloudEvent) (*meteringv1.Invoice, bool, error) {
	var out *meteringv1.Invoice
	created := false
	err := s.txn(ctx, func(tx *redis.Tx) error {
		old := new(meteringv1.Invoice)
		ok, err := get(ctx, tx, invoiceKey(inv.GetId()), old)
		if err != nil {
			return err
		}
		if ok {
			out, created = old, false
			return nil
		}
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, invoiceKey(inv.GetId()), marshal(inv), 0)
			pipe.SAdd(ctx, invoicesKy, inv.GetId())
			pipe.HSet(ctx, outboxKey, inv.GetId(), marshal(ev))
			return nil
		})
		out, created = inv, true
		return err
	}, invoiceKey(inv.GetId()))
	if err != nil {
		return nil, false, err
	}
	out, err = s.withCredits(ctx, out)
	return out, created, err
}

func (s *Store) withCredits(ctx context.Context, inv *meteringv1.Invoice) (*meteringv1.Invoice, error) {
	notes, err := s.credits(ctx, s.rdb, inv.GetId())
	if err != nil {
		return nil, err
	}
	applyCredits(inv, notes)
	return inv, nil
}

func applyCredits(inv *meteringv1.Invoice, notes []*meteringv1.CreditNote) {
	inv.CreditNotes = notes
	inv.CreditedMinor = 0
	for _, n := range notes {
		inv.CreditedMinor += n.GetAmountMinor()
	}
	inv.TotalMinor = inv.GetSubtotalMinor() - inv.GetCreditedMinor()
}

func (s *Store) credits(ctx context.Context, c redis.Cmdable, id string) ([]*meteringv1.CreditNote, error) {
	raw, err := c.LRange(ctx, creditKey(id), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]*meteringv1.CreditNote, 0, len(raw))
	for _, b := range raw {
		n := new(meteringv1.CreditNote)
		if err := proto.Unmarshal([]byte(b), n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

// Invoice returns a finalized invoice with its credit notes.
func (s *Store) Invoice(ctx context.Context, id string) (*meteringv1.Invoice, error) {
	inv := new(meteringv1.Invoice)
	ok, err := get(ctx, s.rdb, invoiceKey(id), inv)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return s.withCredits(ctx, inv)
}

// Invoices returns every finalized invoice.
func (s *Store) Invoices(ctx context.Context) ([]*meteringv1.Invoice, error) {
	ids, err := s.rdb.SMembers(ctx, invoicesKy).Result()
	if err != nil {
		return nil, err
	}
	out := make([]*meteringv1.Invoice, 0, len(ids))
	for _, id := range ids {
		inv, err := s.Invoice(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, inv)
	}
	return out, nil
}

// Credit adds a credit note to a finalized invoice unless the credited total
// would exceed its subtotal; it returns the invoice with it.
func (s *Store) Credit(ctx context.Context, n *meteringv1.CreditNote) (*meteringv1.Invoice, error) {
	var out *meteringv1.Invoice
	err := s.txn(ctx, func(tx *redis.Tx) error {
		inv := new(meteringv1.Invoice)
		ok, err := get(ctx, tx, invoiceKey(n.GetInvoiceId()), inv)
		if err != nil {
			return err
		}
		if !ok {
			return ErrNotFound
		}
		notes, err := s.credits(ctx, tx, inv.GetId())
		if err != nil {
			return err
		}
		applyCredits(inv, notes)
		if n.GetAmountMinor() > inv.GetTotalMinor() {
			return fmt.Errorf("%w: credit of %d but %d remains", ErrCap, n.GetAmountMinor(), inv.GetTotalMinor())
		}
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.RPush(ctx, creditKey(inv.GetId()), marshal(n))
			return nil
		})
		applyCredits(inv, append(notes, n))
		out = inv
		return err
	}, invoiceKey(n.GetInvoiceId()), creditKey(n.GetInvoiceId()))
	return out, err
}

// Outbox returns the queued events by invoice id.
func (s *Store) Outbox(ctx context.Context) (map[string]*eventv1.CloudEvent, error) {
	all, err := s.rdb.HGetAll(ctx, outboxKey).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]*eventv1.CloudEvent, len(all))
	for id, b := range all {
		ev := new(eventv1.CloudEvent)
		if err := proto.Unmarshal([]byte(b), ev); err != nil {
			return nil, err
		}
		out[id] = ev
	}
	return out, nil
}

// Published removes an event from the outbox.
func (s *Store) Published(ctx context.Context, id string) error {
	return s.rdb.HDel(ctx, outboxKey, id).Err()
}
