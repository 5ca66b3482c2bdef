package api

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
)

// FuzzWebhookHeaders checks that every extra header webhookHeaders accepts
// travels intact: set on a request, written and parsed back by net/http, it
// reads the same, and it never smuggles a header Herald sets.
func FuzzWebhookHeaders(f *testing.F) {
	for _, seed := range [][2]string{
		{"Authorization", "Bearer abc"}, {"X-Tenant", "t 1"}, {"X-A", "a\r\nX-B: b"}, {"Webhook-Id", "x"},
		{"ce-type", "x"}, {"Host", "evil"}, {"X Bad", "v"}, {"X-Utf8", "caf\xc3\xa9"}, {"X-Tab", "a\tb"},
		{"X-Space", " lead"}, {"Transfer-Encoding", "chunked"}, {"X-Nul", "a\x00b"}, {"", "v"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		out, err := webhookHeaders(map[string]string{name: value})
		if err != nil {
			return
		}
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "webhook-") || strings.HasPrefix(lower, "ce-") || lower == "host" || lower == "content-type" || lower == "content-length" || hopByHop[lower] {
			t.Fatalf("accepted %q", name)
		}
		req, err := http.NewRequest(http.MethodPost, "http://receiver.example/hooks", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range out {
			req.Header.Set(k, v)
		}
		var wire strings.Builder
		if err := req.Write(&wire); err != nil {
			t.Fatalf("accepted %q: %q, which net/http does not write: %v", name, value, err)
		}
		back, err := http.ReadRequest(bufio.NewReader(strings.NewReader(wire.String())))
		if err != nil {
			t.Fatalf("accepted %q: %q, which does not parse back: %v", name, value, err)
		}
		if got := back.Header.Values(name); len(got) != 1 || got[0] != value {
			t.Fatalf("header %q: %q came back as %q", name, value, got)
		}
		if back.Host != "receiver.example" || back.ContentLength != 2 {
			t.Fatalf("header %q: %q changed the request: host %q, length %d", name, value, back.Host, back.ContentLength)
		}
	})
}
