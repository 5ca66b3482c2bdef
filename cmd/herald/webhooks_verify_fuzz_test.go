package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
)

// FuzzParseCapture feeds arbitrary files to the parsers of captured
// requests and header files: they never panic, and a request they accept
// with a Content-Length has a body of exactly that length.
func FuzzParseCapture(f *testing.F) {
	body := `{"id":"evt_1"}`
	f.Add([]byte(fmt.Sprintf("POST /hooks HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nwebhook-id: evt_1\r\n\r\n%s", len(body), body)))
	f.Add([]byte("POST /hooks HTTP/1.1\nHost: localhost\nwebhook-id: evt_1\n\n" + body + "\n"))
	f.Add([]byte("POST /hooks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("*   Trying 127.0.0.1:3000...\n> POST /hooks HTTP/1.1\n> Host: localhost:3000\n> webhook-id: evt_1\n>\n< HTTP/1.1 200 OK\n"))
	f.Add([]byte("webhook-id: evt_1\nwebhook-timestamp: 1796205600\nwebhook-signature: v1,AAAA\n"))
	f.Add([]byte("POST /hooks HTTP/1.1\r\nContent-Length: 99\r\n\r\nshort"))
	f.Add([]byte(">\n> \n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, got, err := parseCapturedRequest(io.Discard, b, false)
		if err == nil {
			if cl := h.Get("Content-Length"); cl != "" && len(h["Transfer-Encoding"]) == 0 && !strings.Contains(cl, ",") {
				if fmt.Sprint(len(got)) != strings.TrimSpace(cl) && !bytes.HasPrefix(bytes.TrimSpace(b), []byte(">")) && !bytes.HasPrefix(bytes.TrimSpace(b), []byte("*")) {
					t.Errorf("Content-Length %s but a body of %d bytes", cl, len(got))
				}
			}
		}
		_, _, _ = parseCapturedRequest(io.Discard, b, true)
		_, _ = parseHeaderLines(b)
		_, _ = fromCurlVerbose(b)
	})
}
