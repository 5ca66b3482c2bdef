package catalogview

import (
	"strings"
	"testing"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

func TestPageContent(t *testing.T) {
	b, err := Page(sampleCatalog(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, want := range []string{
		"Catalog revision 42",
		// domains with owner and description
		`id="domain-billing"`, "Owner: payments-team", "Invoices &amp; payments &lt;money&gt;.",
		`id="domain-shipping"`, "Parcels.", "(not a registered domain)",
		// types with badges
		`id="type-billing.invoice.paid"`, `<span class="badge active">active</span>`,
		`<span class="badge deprecated">deprecated · sunset 2031-06-30T00:00:00Z</span>`,
		`<span class="badge retired">retired · since 2024-01-01T00:00:00Z</span>`,
		`<span class="badge public">public</span>`, `<span class="badge partner">partner</span>`, `<span class="badge internal">internal</span>`,
		// schema pretty-printed in the author's key order, version count
		"version 3 (3 versions in all), compatibility backward_transitive",
		"Latest schema (version 3)",
		"&#34;invoice_id&#34;: {\n      &#34;type&#34;: &#34;string&#34;,\n      &#34;pattern&#34;",
		// examples, of every version
		"2 examples", "<strong>card</strong>: Paid by card", "(schema version 1)",
		// retention
		"events older than 30 days are trimmed; at most 1000000 events are kept",
		// products with their types
		`id="product-payments-pro"`, `<code>billing.*</code>`, `<a href="#type-billing.invoice.paid">billing.invoice.paid</a>`,
		// links to the documents
		`href="asyncapi.json"`, `href="asyncapi.yaml"`, `href="catalog?domain=billing"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestPageEscapesHTML: descriptions and every other catalog text are
// escaped, never markup.
func TestPageEscapesHTML(t *testing.T) {
	c := sampleCatalog()
	c.Domains = append(c.Domains, &registryv1.Domain{Name: "evil", Description: `<img src=x onerror=alert(1)>`, Owner: `"><script>alert(2)</script>`})
	c.EventTypes = append(c.EventTypes, &registryv1.EventType{
		Name: "evil.thing.happened", Description: `</p><script>alert(3)</script>`, Owner: `<b>team</b>`,
		Schema:   `{"description":"</pre><script>alert(4)</script>"}`,
		Examples: []*registryv1.Example{{Name: `<i>x</i>`, Summary: `<script>alert(5)</script>`, Data: `"</pre><script>alert(6)</script>"`}},
	})
	c.Products = append(c.Products, &registryv1.Product{Name: `p"><script>alert(7)</script>`, Description: "<script>alert(8)</script>", EventTypes: []string{"evil.*"}})
	b, err := Page(c, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	if n := strings.Count(page, "<script"); n != 0 {
		t.Errorf("page has %d <script elements", n)
	}
	for _, bad := range []string{"<img", "<b>team", "<i>x"} {
		if strings.Contains(page, bad) {
			t.Errorf("page has raw %q", bad)
		}
	}
	for _, want := range []string{"&lt;/p&gt;&lt;script&gt;alert(3)&lt;/script&gt;", "&lt;img src=x onerror=alert(1)&gt;", "&lt;b&gt;team&lt;/b&gt;"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks escaped %q", want)
		}
	}
	// The deprecated type of the sample catalog has a <script> description.
	if !strings.Contains(page, "An invoice was issued. &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
		t.Errorf("deprecated type's description not escaped")
	}
}

func TestPageFiltered(t *testing.T) {
	b, err := Page(sampleCatalog(), Filter{Domain: "identity", Audience: registryv1.Audience_AUDIENCE_PUBLIC})
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	if !strings.Contains(page, "identity.user.created") || strings.Contains(page, `id="type-billing.invoice.paid"`) {
		t.Errorf("filter not applied")
	}
	if !strings.Contains(page, "showing domain identity, audience public") ||
		!strings.Contains(page, `href="asyncapi.json?audience=public&amp;domain=identity"`) {
		t.Errorf("filter not shown or not carried to the document links")
	}
	if !strings.Contains(page, `<option value="public" selected>`) || !strings.Contains(page, `<option value="identity" selected>`) {
		t.Errorf("form does not show the filter")
	}

	b, err = Page(&Catalog{Revision: 3}, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "Nothing to show") {
		t.Errorf("empty catalog page:\n%s", b)
	}
}
