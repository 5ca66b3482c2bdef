// Package console serves the edge's live event console: one static page
// (GET /) that streams from the edge's own GET /v1/stream with the
// browser's EventSource and the token its user gives. The page holds no
// data and needs no key; it is built once, from embedded files, with no
// build step and nothing loaded from elsewhere.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"time"
)

//go:embed static/index.html static/console.js static/console.css
var static embed.FS

// page is the rendered page and its Content-Security-Policy: the script
// and the style are inline, allowed by their hashes, and the page may
// connect to its own origin only.
var page, policy = render()

func render() ([]byte, string) {
	read := func(name string) string {
		b, err := static.ReadFile("static/" + name)
		if err != nil {
			panic(fmt.Sprintf("console: %s not embedded: %v", name, err))
		}
		return string(b)
	}
	script, style := read("console.js"), read("console.css")
	if strings.Contains(strings.ToLower(script), "</script") || strings.Contains(strings.ToLower(style), "</style") {
		panic("console: an embedded file closes its own element")
	}
	html := strings.NewReplacer("{{SCRIPT}}", script, "{{STYLE}}", style).Replace(read("index.html"))
	hash := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	csp := "default-src 'none'; script-src " + hash(script) + "; style-src " + hash(style) +
		"; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	return []byte(html), csp
}

// modified is when the page last changed: when the binary started.
var modified = time.Now()

// Handler serves the page. Mount it as a public route ("GET /{$}"): it
// answers without a key, and every event it shows comes from the
// authenticated stream.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", policy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Type", "text/html; charset=utf-8")
		http.ServeContent(w, r, "index.html", modified, bytes.NewReader(page))
	})
}
