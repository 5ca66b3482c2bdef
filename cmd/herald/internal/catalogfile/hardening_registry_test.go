package catalogfile

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

// The catalog file refuses exactly the domain and product names the
// registry refuses: the rules have one home, platform/eventtype.
func TestNamesRefusedLikeTheRegistry(t *testing.T) {
	client := startRegistry(t)
	ctx := context.Background()
	names := []string{"billing", "my_prod", "my-prod", "Billing", "b1", "1b", "a.b", "_x", "x-", "x_y", strings.Repeat("p", 101), strings.Repeat("d", 201)}
	for _, name := range names {
		_, derr := client.CreateDomain(ctx, connect.NewRequest(&registryv1.CreateDomainRequest{Domain: &registryv1.Domain{Name: name, Description: "d"}}))
		_, perr := client.CreateProduct(ctx, connect.NewRequest(&registryv1.CreateProductRequest{Product: &registryv1.Product{Name: name, Description: "p", EventTypes: []string{"billing.*"}}}))
		for _, c := range []struct {
			kind, yaml string
			regErr     error
		}{
			{"domain", fmt.Sprintf("version: 1\ndomains:\n  - name: %q\n    description: d\n", name), derr},
			{"product", fmt.Sprintf("version: 1\nproducts:\n  - name: %q\n    description: p\n    eventTypes: [billing.*]\n", name), perr},
		} {
			_, ferr := Parse("catalog.yaml", strings.NewReader(c.yaml))
			registryRefuses := connect.CodeOf(c.regErr) == connect.CodeInvalidArgument
			if c.regErr != nil && !registryRefuses {
				t.Fatalf("%s %q: the registry answers %v", c.kind, name, c.regErr)
			}
			if fileRefuses := ferr != nil; fileRefuses != registryRefuses {
				t.Errorf("%s %q: the registry refuses it: %v (%v); the catalog file refuses it: %v (%v)", c.kind, name, registryRefuses, c.regErr, fileRefuses, ferr)
			}
		}
	}
}
