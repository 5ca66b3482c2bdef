package catalogfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
)

// Check asks the registry (CheckCompatibility) whether each new schema
// version of the plan would be taken, and records the verdicts. A version
// whose type also changes compatibility mode in the plan cannot be asked
// about beforehand: the registry checks it when it is added.
func (p *Plan) Check(ctx context.Context, client registryv1connect.RegistryServiceClient) error {
	modeChanges := map[string]string{}
	for _, c := range p.Changes {
		if c.Kind != UpdateEventType {
			continue
		}
		for _, f := range c.Fields {
			if f.Field == "compatibility" {
				modeChanges[c.Name] = f.To
			}
		}
	}
	for _, c := range p.Changes {
		if c.Kind != AddSchemaVersion {
			continue
		}
		if mode, ok := modeChanges[c.Name]; ok {
			if mode == "none" {
				c.Verdict = &Verdict{Checked: true, Compatible: true, Note: "compatibility becomes none"}
			} else {
				c.Verdict = &Verdict{Note: "the compatibility mode changes to " + mode + " first; the registry checks the schema when it is added"}
			}
			continue
		}
		res, err := client.CheckCompatibility(ctx, connect.NewRequest(&registryv1.CheckCompatibilityRequest{EventType: c.Name, Schema: c.Schema, ProtobufSchema: c.ProtobufSchema, ContentType: c.ContentType}))
		if err != nil {
			return fmt.Errorf("check the new schema of %s: %w", c.Name, err)
		}
		c.Verdict = &Verdict{Checked: true, Compatible: res.Msg.GetCompatible(), Reasons: res.Msg.GetReasons()}
	}
	return nil
}

// IncompatibleError is an apply refused before any change because new
// schema versions break their types' compatibility.
type IncompatibleError struct {
	Changes []*Change
}

func (e *IncompatibleError) Error() string {
	var b strings.Builder
	b.WriteString("nothing applied: ")
	for i, c := range e.Changes {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "the new schema of %s is INCOMPATIBLE: %s", c.Name, strings.Join(c.Verdict.Reasons, "; "))
	}
	return b.String()
}

// ProblemsError is an apply refused before any change because the file
// asks what the registry cannot do (Plan.Problems).
type ProblemsError struct {
	Problems []string
}

func (e *ProblemsError) Error() string {
	return "nothing applied: " + strings.Join(e.Problems, "; ")
}

// Apply runs a checked plan, in order, printing each step to out. It
// refuses to start when a new schema version is known to be incompatible
// (an *IncompatibleError, nothing changed). Updates send the revision the
// plan read: a registry changed meanwhile answers a conflict, and the
// plan should be made again. A failure stops the run; the steps before it
// stay applied, and applying the file again finishes the work. A plan with
// Problems is refused (a *ProblemsError, nothing changed).
func Apply(ctx context.Context, client registryv1connect.RegistryServiceClient, p *Plan, out io.Writer) error {
	if bad := p.Incompatible(); len(bad) > 0 {
		return &IncompatibleError{Changes: bad}
	}
	if len(p.Problems) > 0 {
		return &ProblemsError{Problems: p.Problems}
	}
	// revisions follow each type through the plan's successive updates.
	revisions := map[string]int64{}
	for i, c := range p.Changes {
		if err := applyOne(ctx, client, c, revisions); err != nil {
			msg := fmt.Sprintf("%s %s", c.Kind, c.Name)
			if i > 0 {
				msg = fmt.Sprintf("%s (after %d of %d changes were applied)", msg, i, len(p.Changes))
			}
			return fmt.Errorf("%s: %w", msg, explain(err))
		}
		fmt.Fprintf(out, "done: %s %s\n", c.Kind, c.Name)
	}
	return nil
}

func applyOne(ctx context.Context, client registryv1connect.RegistryServiceClient, c *Change, revisions map[string]int64) error {
	switch c.Kind {
	case CreateDomain:
		_, err := client.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: c.Domain}))
		return err
	case UpdateDomain:
		_, err := client.UpdateDomain(ctx, connect.NewRequest(&registryv1.UpdateDomainRequest{Domain: c.Domain}))
		return err
	case CreateEventType:
		res, err := client.CreateEventType(ctx, connect.NewRequest(&registryv1.CreateEventTypeRequest{EventType: c.EventType}))
		if err == nil {
			revisions[c.Name] = res.Msg.GetEventType().GetRevision()
		}
		return err
	case UpdateEventType:
		if rev, ok := revisions[c.Name]; ok {
			c.EventType.Revision = rev
		}
		res, err := client.UpdateEventType(ctx, connect.NewRequest(&registryv1.UpdateEventTypeRequest{EventType: c.EventType}))
		if err == nil {
			revisions[c.Name] = res.Msg.GetEventType().GetRevision()
		}
		return err
	case AddSchemaVersion:
		if _, err := client.CreateSchemaVersion(ctx, connect.NewRequest(&registryv1.CreateSchemaVersionRequest{EventType: c.Name, Schema: c.Schema, ProtobufSchema: c.ProtobufSchema, ContentType: c.ContentType})); err != nil {
			return err
		}
		// Adding a version is a change of the type: later updates need
		// its new revision.
		res, err := client.GetEventType(ctx, connect.NewRequest(&registryv1.GetEventTypeRequest{Name: c.Name}))
		if err != nil {
			return err
		}
		revisions[c.Name] = res.Msg.GetEventType().GetRevision()
		return nil
	case CreateProduct:
		_, err := client.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: c.Product}))
		return err
	case UpdateProduct:
		_, err := client.UpdateProduct(ctx, connect.NewRequest(&registryv1.UpdateProductRequest{Product: c.Product}))
		return err
	case CreateBridge:
		_, err := client.CreateBridge(ctx, connect.NewRequest(&registryv1.CreateBridgeRequest{Bridge: c.Bridge}))
		return err
	case UpdateBridge:
		_, err := client.UpdateBridge(ctx, connect.NewRequest(&registryv1.UpdateBridgeRequest{Bridge: c.Bridge, UpdateMask: c.UpdateMask}))
		return err
	}
	return fmt.Errorf("unknown change kind %d", c.Kind)
}

// explain turns registry errors into advice where there is some.
func explain(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err
	}
	switch ce.Code() {
	case connect.CodeAborted:
		return fmt.Errorf("%s (the registry changed since the plan was made: run apply again)", ce.Message())
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return fmt.Errorf("%s (catalog changes need the operator's key: --key or HERALD_ADMIN_KEY)", ce.Message())
	case connect.CodeUnimplemented:
		return fmt.Errorf("%s (this registry does not implement it)", ce.Message())
	}
	return fmt.Errorf("%s: %s", ce.Code(), ce.Message())
}

// schemaDiff lists what changes between two schemas, by JSON pointer: +
// added, - removed, ~ changed. Key order and formatting do not count.
func schemaDiff(from, to string) []string {
	a, errA := decodeJSON(from)
	b, errB := decodeJSON(to)
	if errA != nil || errB != nil {
		return []string{"~ (schema replaced)"}
	}
	var out []string
	diffValues(a, b, "", &out)
	const limit = 30
	if len(out) > limit {
		out = append(out[:limit], fmt.Sprintf("... and %d more", len(out)-limit))
	}
	return out
}

func diffValues(a, b any, path string, out *[]string) {
	am, aObj := a.(map[string]any)
	bm, bObj := b.(map[string]any)
	if aObj && bObj {
		keys := map[string]bool{}
		for k := range am {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, k)
		}
		slices.Sort(sorted)
		for _, k := range sorted {
			p := path + "/" + strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
			av, inA := am[k]
			bv, inB := bm[k]
			switch {
			case !inA:
				*out = append(*out, "+ "+p+": "+short(bv))
			case !inB:
				*out = append(*out, "- "+p+": "+short(av))
			default:
				diffValues(av, bv, p, out)
			}
		}
		return
	}
	aa, aArr := a.([]any)
	ba, bArr := b.([]any)
	if aArr && bArr {
		for i := 0; i < max(len(aa), len(ba)); i++ {
			p := path + "/" + strconv.Itoa(i)
			switch {
			case i >= len(aa):
				*out = append(*out, "+ "+p+": "+short(ba[i]))
			case i >= len(ba):
				*out = append(*out, "- "+p+": "+short(aa[i]))
			default:
				diffValues(aa[i], ba[i], p, out)
			}
		}
		return
	}
	if short(a) != short(b) || canonical(a) != canonical(b) {
		*out = append(*out, "~ "+cmpOr(path, "/")+": "+short(a)+" -> "+short(b))
	}
}

func canonical(v any) string {
	b, _ := marshalNoEscape(v)
	return string(b)
}

func short(v any) string {
	s := canonical(v)
	if r := []rune(s); len(r) > 60 {
		s = string(r[:57]) + "..."
	}
	return s
}
