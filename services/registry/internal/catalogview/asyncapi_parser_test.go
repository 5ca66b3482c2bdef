package catalogview

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The documents are checked by the official AsyncAPI parser
// (@asyncapi/parser, pinned in tests/asyncapi/package-lock.json), run by
// tests/asyncapi/validate.mjs under Node. `make test-node` installs it; when
// node_modules is missing this test runs `npm ci` itself, once.

var (
	validatorOnce sync.Once
	validatorDir  string
	validatorErr  error
)

// validatorScript returns the path of validate.mjs, its dependencies
// installed.
func validatorScript(t *testing.T) string {
	t.Helper()
	validatorOnce.Do(func() {
		validatorDir, validatorErr = findValidatorDir()
		if validatorErr != nil {
			return
		}
		installed := true
		for _, pkg := range []string{"parser", "avro-schema-parser", "protobuf-schema-parser"} {
			if _, err := os.Stat(filepath.Join(validatorDir, "node_modules", "@asyncapi", pkg, "package.json")); err != nil {
				installed = false
			}
		}
		if installed {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts")
		cmd.Dir = validatorDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			validatorErr = fmt.Errorf("npm ci in %s: %v\n%s", validatorDir, err, out)
		}
	})
	if validatorErr != nil {
		t.Fatal(validatorErr)
	}
	return filepath.Join(validatorDir, "validate.mjs")
}

// findValidatorDir walks up from the working directory (the package's
// directory under go test) to the repository's tests/asyncapi.
func findValidatorDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		candidate := filepath.Join(dir, "tests", "asyncapi")
		if _, err := os.Stat(filepath.Join(candidate, "validate.mjs")); err == nil {
			return candidate, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("tests/asyncapi/validate.mjs not found above the working directory")
		}
		dir = parent
	}
}

// validate runs the parser on files and returns its combined output and
// whether it accepted every one (errors and warnings count).
func validate(t *testing.T, files ...string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := append([]string{validatorScript(t), "--strict"}, files...)
	cmd := exec.CommandContext(ctx, "node", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), false
	}
	return string(out), true
}

// TestAsyncAPIParserAcceptsDocuments checks every view of a representative
// catalog (domains, nested schemas with $defs, anchors, $id-relative and
// recursive references, 2020-12 keywords, boolean schemas, examples,
// deprecated and retired types, products, an application, a bridge of
// each system and direction) with the
// official parser, in JSON and in YAML, as the HTTP handler serves them.
func TestAsyncAPIParserAcceptsDocuments(t *testing.T) {
	srv := httptest.NewServer(Handler(func(context.Context) (*Catalog, error) { return bridgeCatalog(), nil }, "http://127.0.0.1:7700"))
	defer srv.Close()
	dir := t.TempDir()
	var files []string
	for i, q := range []string{"", "?audience=public", "?audience=partner", "?domain=billing", "?domain=shipping",
		"?product=payments-pro", "?application=app_partner"} {
		exts := []string{"json"}
		if q == "" || q == "?audience=public" {
			// YAML equals JSON (TestYAMLEqualsJSON); two are enough here.
			exts = append(exts, "yaml")
		}
		for _, ext := range exts {
			res, err := http.Get(srv.URL + "/asyncapi." + ext + q)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				t.Fatalf("GET asyncapi.%s%s: %d %s", ext, q, res.StatusCode, body)
			}
			f := filepath.Join(dir, fmt.Sprintf("doc%d.%s", i, ext))
			if err := os.WriteFile(f, body, 0o644); err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
	}
	// Without servers, and of an empty catalog.
	for name, c := range map[string]*Catalog{"noserver": bridgeCatalog(), "empty": {Revision: 1}, "formats": formatsCatalog()} {
		d, err := AsyncAPI(c, Filter{}, "")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := d.JSON()
		f := filepath.Join(dir, name+".json")
		_ = os.WriteFile(f, b, 0o644)
		files = append(files, f)
	}
	out, ok := validate(t, files...)
	if !ok {
		t.Fatalf("the AsyncAPI parser refused the documents:\n%s", out)
	}
	if n := strings.Count(out, ": valid AsyncAPI 3.0.0"); n != len(files) {
		t.Errorf("%d of %d documents reported valid:\n%s", n, len(files), out)
	}
}

// TestAsyncAPIParserRefusesBrokenDocuments shows the check is not
// vacuous: the mistakes this package guards against are reported.
func TestAsyncAPIParserRefusesBrokenDocuments(t *testing.T) {
	d, err := AsyncAPI(sampleCatalog(), Filter{}, "http://127.0.0.1:7700")
	if err != nil {
		t.Fatal(err)
	}
	good, _ := d.JSON()
	dir := t.TempDir()
	write := func(name string, mutate func(m map[string]any)) string {
		var m map[string]any
		_ = json.Unmarshal(good, &m)
		mutate(m)
		b, _ := json.Marshal(m)
		f := filepath.Join(dir, name)
		_ = os.WriteFile(f, b, 0o644)
		return f
	}
	cases := map[string]struct {
		mutate func(m map[string]any)
		want   string
	}{
		// A schema's own "#/$defs/..." reference, not rewritten, does not
		// resolve inside the AsyncAPI document.
		"unrewritten-ref.json": {func(m map[string]any) {
			s := m["components"].(map[string]any)["schemas"].(map[string]any)["billing.invoice.paid"].(map[string]any)["schema"].(map[string]any)
			s["properties"].(map[string]any)["total"] = map[string]any{"$ref": "#/$defs/money"}
		}, "invalid-ref"},
		"bad-action.json": {func(m map[string]any) {
			m["operations"].(map[string]any)["billing.invoice.paid.send"].(map[string]any)["action"] = "publish"
		}, "operations/billing.invoice.paid.send/action"},
		"no-title.json": {func(m map[string]any) {
			delete(m["info"].(map[string]any), "title")
		}, "title"},
	}
	var files []string
	for name, c := range cases {
		files = append(files, write(name, c.mutate))
	}
	out, ok := validate(t, files...)
	if ok {
		t.Fatalf("broken documents accepted:\n%s", out)
	}
	for name, c := range cases {
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, filepath.Join(dir, name)+":") {
				lines = append(lines, l)
			}
		}
		report := strings.Join(lines, "\n")
		if !strings.Contains(report, "INVALID") || !strings.Contains(report, c.want) {
			t.Errorf("%s: want refused with %q:\n%s", name, c.want, report)
		}
	}
}
