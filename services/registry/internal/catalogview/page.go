package catalogview

import (
	"bytes"
	"cmp"
	_ "embed"
	"encoding/json"
	"html/template"
	"slices"
	"strings"
	"time"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
)

//go:embed catalog.html.tmpl
var pageTemplateText string

var pageTemplate = template.Must(template.New("catalog").Funcs(template.FuncMap{
	"query": func(f Filter, key, value string) string {
		q := f.Query()
		if value == "" {
			q.Del(key)
		} else {
			q.Set(key, value)
		}
		if len(q) == 0 {
			return ""
		}
		return "?" + q.Encode()
	},
}).Parse(pageTemplateText))

type pageData struct {
	Revision    int64
	Filter      Filter
	FilterText  string
	Query       string // the filter as a query string, "" or "?..."
	Domains     []pageDomain
	Products    []pageProduct
	TypeCount   int
	AllDomains  []string // for the filter form
	AllProducts []string
	Audience    string
}

type pageDomain struct {
	Name, Description, Owner string
	Registered               bool
	Types                    []pageType
}

type pageType struct {
	Name, Description, Owner   string
	Visibility, Lifecycle      string
	Sunset                     string
	SunsetPassed               bool
	Compatibility              string
	Version                    int32
	Versions                   int
	Retention                  string
	Partitions                 int32
	Schema                     string
	SchemaInvalid              bool
	Examples                   []pageExample
	Products                   []string
	Receive, Send, Application bool
}

type pageExample struct {
	Name, Summary, Data string
	SchemaVersion       int32
}

type pageProduct struct {
	Name, Description string
	Patterns          []string
	Types             []string
}

// Page renders the HTML catalog page of what f selects of c. Unknown
// domain, product or application names return a *NotFoundError.
func Page(c *Catalog, f Filter) ([]byte, error) {
	s, err := selectTypes(c, f)
	if err != nil {
		return nil, err
	}
	if c == nil {
		c = &Catalog{}
	}
	d := pageData{Revision: c.Revision, Filter: f, TypeCount: len(s.types)}
	if !f.IsZero() {
		d.FilterText = f.String()
		d.Query = "?" + f.Query().Encode()
	}
	if f.Audience != registryv1.Audience_AUDIENCE_UNSPECIFIED {
		d.Audience = audienceName(f.Audience)
	}
	// The form offers what the caller's audience may know of.
	known, err := selectTypes(c, Filter{Audience: f.Audience, Application: f.Application})
	if err != nil {
		return nil, err
	}
	for _, dv := range known.domains {
		d.AllDomains = append(d.AllDomains, dv.d.GetName())
	}
	for _, pv := range known.products {
		d.AllProducts = append(d.AllProducts, pv.p.GetName())
	}
	slices.Sort(d.AllProducts)

	now := time.Now()
	for _, dv := range s.domains {
		pd := pageDomain{Name: dv.d.GetName(), Description: dv.d.GetDescription(), Owner: dv.d.GetOwner(), Registered: dv.registered}
		for _, tv := range dv.types {
			pd.Types = append(pd.Types, pageTypeOf(tv, s.app != nil, now))
		}
		d.Domains = append(d.Domains, pd)
	}
	for _, pv := range s.products {
		pp := pageProduct{Name: pv.p.GetName(), Description: pv.p.GetDescription(), Patterns: pv.p.GetEventTypes()}
		for _, tv := range pv.types {
			pp.Types = append(pp.Types, tv.et.GetName())
		}
		d.Products = append(d.Products, pp)
	}
	slices.SortFunc(d.Products, func(a, b pageProduct) int { return cmp.Compare(a.Name, b.Name) })

	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, d); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func pageTypeOf(tv *typeView, app bool, now time.Time) pageType {
	et := tv.et
	pt := pageType{
		Name:          et.GetName(),
		Description:   et.GetDescription(),
		Owner:         et.GetOwner(),
		Visibility:    visibilityName(et.GetVisibility()),
		Lifecycle:     lifecycleName(et.GetLifecycle()),
		Compatibility: compatibilityName(et.GetCompatibility()),
		Version:       tv.version,
		Versions:      tv.versions,
		Retention:     retentionText(et.GetRetention()),
		Partitions:    max(1, et.GetPartitions()),
		Products:      tv.products,
		Receive:       tv.receive,
		Send:          tv.send,
		Application:   app,
	}
	if ts := et.GetSunsetTime(); ts != nil && et.GetLifecycle() != registryv1.Lifecycle_LIFECYCLE_ACTIVE {
		pt.Sunset = ts.AsTime().UTC().Format(time.RFC3339)
		pt.SunsetPassed = ts.AsTime().Before(now)
	}
	pt.Schema, pt.SchemaInvalid = prettyJSON(tv.schema)
	for _, ex := range et.GetExamples() {
		data, _ := prettyJSON(ex.GetData())
		pt.Examples = append(pt.Examples, pageExample{Name: ex.GetName(), Summary: ex.GetSummary(), Data: data, SchemaVersion: ex.GetSchemaVersion()})
	}
	return pt
}

// prettyJSON indents JSON text, keeping its key order; text that is not
// JSON comes back as it is, with invalid set.
func prettyJSON(text string) (string, bool) {
	if strings.TrimSpace(text) == "" {
		return "", false
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, []byte(text), "", "  "); err != nil {
		return text, true
	}
	return buf.String(), false
}
