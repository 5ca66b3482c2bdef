package server

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
)

// Page serves one self-contained HTML page (the dashboard, the portal):
// its one inline script (from the first <script> to the last </script>)
// allowed by its hash and nothing loaded from elsewhere, no caching, no
// framing, no referrer.
func Page(page []byte) http.HandlerFunc {
	csp := PageCSP(page)
	return func(w http.ResponseWriter, _ *http.Request) {
		hd := w.Header()
		hd.Set("Content-Type", "text/html; charset=utf-8")
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		_, _ = w.Write(page)
	}
}

// PageCSP is the Content-Security-Policy of such a page: its inline script
// by hash, inline styles, images from itself or data: URLs, requests to
// its own origin only.
func PageCSP(page []byte) string {
	s := string(page)
	i := strings.Index(s, "<script>")
	j := strings.LastIndex(s, "</script>")
	script := "'none'"
	if i >= 0 && j > i {
		sum := sha256.Sum256([]byte(s[i+len("<script>") : j]))
		script = "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; script-src " + script + "; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
}

// SameOrigin reports whether a browser says the request comes from the
// page's own origin: Sec-Fetch-Site same-origin, or, from a browser that
// sends no Sec-Fetch-Site, an Origin equal to the request's own scheme and
// host. Pages with cookie sessions refuse state changes otherwise.
func SameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin"
	}
	o := r.Header.Get("Origin")
	if o == "" || o == "null" {
		return false
	}
	u, err := url.Parse(o)
	if err != nil {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return u.Scheme == scheme && strings.EqualFold(u.Host, r.Host)
}
