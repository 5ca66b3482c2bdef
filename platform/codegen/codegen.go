// Package codegen writes typed event definitions for consumers of Herald's
// events: TypeScript interfaces or Go structs from the event types' JSON
// Schemas, the CloudEvents envelope typed per event type, and a verifier of
// Standard Webhooks signatures. `herald codegen` and the consumer portal's
// download both call Generate.
//
// The output depends only on its input: types are sorted by name, properties
// by JSON name, and nothing else (no time, no host) goes in.
package codegen

import (
	"errors"
	"fmt"
	"go/token"
	"slices"
	"strings"

	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/schema"
)

// Languages Generate writes.
const (
	// Go: a package of two files, events.go (the structs, the envelope,
	// ParseEvent) and webhook.go (WebhookVerifier), standard library only.
	Go = "go"
	// TypeScript: one module, events.ts (interfaces, the envelope as a
	// discriminated union on "type", verifyWebhook), with no imports and
	// no dependency on a runtime's type declarations (it needs ES2017 for
	// async functions, and globalThis.crypto.subtle and TextEncoder at run
	// time: Node.js 18 and later, Deno, Bun, browsers, workers).
	TypeScript = "ts"
)

// Languages lists the values of lang that Generate accepts.
var Languages = []string{Go, TypeScript}

// DefaultPackage is the Go package name when Options.Package is empty.
const DefaultPackage = "events"

// ErrUnknownLanguage is returned (wrapped) by Generate for a lang it does
// not write.
var ErrUnknownLanguage = errors.New("codegen: unknown language")

// Type is one event type of the catalog.
type Type struct {
	// Name is the event type's name, domain.entity.action.
	Name string
	// Description says what the event means; it becomes the doc comment
	// of the generated types.
	Description string
	// Schema is the JSON Schema (draft 2020-12) of the event's data, as
	// JSON text. Empty means any JSON value. References must point inside
	// the schema, as the registry requires.
	Schema []byte
	// SchemaVersion is the version Schema is (1, 2...); it is named in the
	// header comment.
	SchemaVersion int
}

// Options change what Generate writes.
type Options struct {
	// Package is the Go package name (a lower-case Go identifier);
	// DefaultPackage when empty. TypeScript ignores it.
	Package string
}

// File is one generated file.
type File struct {
	// Name is the file's name, without directories: events.go,
	// webhook.go or events.ts.
	Name string
	// Content is the file's text.
	Content []byte
}

// Generate writes the typed definitions of types in lang (Go or
// TypeScript). types may come in any order and must have distinct, valid
// names and schemas that compile; an error names the type at fault. The
// files come sorted by name. With no types it still writes the envelope
// and the verifier, so Generate(lang, opts, nil) also checks lang
// (errors.Is ErrUnknownLanguage) and opts before the types are fetched.
//
// Names: each type's data is the PascalCase of its name
// (billing.invoice.paid: BillingInvoicePaid), its envelope that plus
// "Event" (BillingInvoicePaidEvent); nested objects, enums and $defs are
// named after the type and their path (BillingInvoicePaidCustomer), with a
// number added when two would collide.
func Generate(lang string, opts Options, types []Type) ([]File, error) {
	if !slices.Contains(Languages, lang) {
		return nil, fmt.Errorf("%w %q: want one of %s", ErrUnknownLanguage, lang, strings.Join(Languages, ", "))
	}
	if opts.Package == "" {
		opts.Package = DefaultPackage
	}
	if lang == Go {
		if err := validPackage(opts.Package); err != nil {
			return nil, err
		}
	}
	sorted, err := prepare(types)
	if err != nil {
		return nil, err
	}
	switch lang {
	case Go:
		return generateGo(opts, sorted)
	default:
		return generateTS(sorted)
	}
}

// parsedType is a Type with its schema compiled.
type parsedType struct {
	Type
	schema *schema.Schema // nil when Type.Schema is empty
}

// prepare sorts types by name, refusing duplicates, invalid names and
// schemas that do not compile.
func prepare(types []Type) ([]parsedType, error) {
	out := make([]parsedType, 0, len(types))
	for _, t := range types {
		if err := eventtype.ValidateName(t.Name); err != nil {
			return nil, fmt.Errorf("codegen: event type %q: %w", t.Name, err)
		}
		p := parsedType{Type: t}
		if strings.TrimSpace(string(t.Schema)) != "" {
			s, err := schema.Compile(t.Name, string(t.Schema))
			if err != nil {
				return nil, fmt.Errorf("codegen: event type %s: %w", t.Name, err)
			}
			p.schema = s
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b parsedType) int { return strings.Compare(a.Name, b.Name) })
	for i := 1; i < len(out); i++ {
		if out[i].Name == out[i-1].Name {
			return nil, fmt.Errorf("codegen: event type %s is given twice", out[i].Name)
		}
	}
	return out, nil
}

func validPackage(name string) error {
	if !token.IsIdentifier(name) || name == "_" || strings.ToLower(name) != name || token.IsKeyword(name) {
		return fmt.Errorf("codegen: package name %q: want a lower-case Go identifier such as %s", name, DefaultPackage)
	}
	return nil
}

// headerLines are the lines of the header comment, without comment markers:
// what wrote the file and which types at which versions it holds.
func headerLines(types []parsedType) []string {
	lines := []string{"Event types (schema versions):"}
	if len(types) == 0 {
		lines = append(lines, "  (none)")
	}
	for _, t := range types {
		v := "no schema"
		if t.schema != nil {
			v = fmt.Sprintf("v%d", t.SchemaVersion)
		}
		lines = append(lines, fmt.Sprintf("  %s %s", t.Name, v))
	}
	return lines
}
