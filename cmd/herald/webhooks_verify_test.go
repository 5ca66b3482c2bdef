package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/spf13/cobra"
)

// cli runs the listen and webhooks verbs with args, as herald would.
func cli(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out syncBuffer
	err := cliTo(ctx, &out, args...)
	return out.String(), err
}

func cliTo(ctx context.Context, out *syncBuffer, args ...string) error {
	root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(listenCommand(), webhooksCommand(), triggerCommand(), codegenCommand(), portalCommand(), bridgeCommand())
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}

const captureBody = `{"specversion":"1.0","id":"evt_123","source":"//billing.example","type":"billing.invoice.paid","data":{"invoice_id":"inv_1","amount":100}}`

// capture sends a request signed by signer (nil: unsigned) to a real
// server and returns the raw request as that server received it.
func capture(t *testing.T, signer *webhook.Signer, ts time.Time, body string, edit func(http.Header)) []byte {
	t.Helper()
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := httputil.DumpRequest(r, true)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}))
	defer srv.Close()
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/hooks", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	if signer != nil {
		signer.Headers(req.Header, "evt_123", ts, []byte(body))
	}
	if edit != nil {
		edit(req.Header)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return <-got
}

func TestWebhooksVerify(t *testing.T) {
	secret, other := webhook.NewSecret(), webhook.NewSecret()
	signingKey, publicKey := webhook.NewSigningKey()
	_, otherPublic := webhook.NewSigningKey()
	signer, _ := webhook.NewSigner(secret)
	edSigner, _ := webhook.NewSigner(signingKey)
	ts := time.Unix(1796205600, 0) // 2026-12-02T10:00:00Z
	now := fmt.Sprint(ts.Unix() + 12)

	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.http", capture(t, signer, ts, captureBody, nil))

	// A framework parsed the JSON and wrote it back indented: same
	// Content-Length as what the file holds, other bytes than were signed.
	var indented bytes.Buffer
	_ = json.Indent(&indented, []byte(captureBody), "", "  ")
	reencoded := bytes.Replace(capture(t, signer, ts, captureBody, nil), []byte(captureBody), indented.Bytes(), 1)
	reencoded = bytes.Replace(reencoded, fmt.Appendf(nil, "Content-Length: %d", len(captureBody)), fmt.Appendf(nil, "Content-Length: %d", indented.Len()), 1)
	reserialized := write("reserialized.http", reencoded)

	// The body file and the headers file of the same request.
	headers := write("headers.txt", []byte("POST /hooks HTTP/1.1\r\n"+headerLines(signer, ts, captureBody)))
	body := write("body.json", []byte(captureBody))
	// curl -v prints the request's headers with "> ", and no body.
	curl := write("curl.txt", []byte("*   Trying 127.0.0.1:3000...\n* Connected to localhost\n> POST /hooks HTTP/1.1\n> Host: localhost:3000\n"+
		prefixed(headerLines(signer, ts, captureBody), "> ")+">\n< HTTP/1.1 200 OK\n"))

	cases := []struct {
		name string
		args []string
		want string // in the output, or in the error when fail
		fail bool
	}{
		{"valid", []string{"--secret", secret, "--request", good, "--now", now}, "valid: signed by secret 1, timestamp 12s ago", false},
		{"rotation: the second secret", []string{"--secret", other, "--secret", secret, "--request", good, "--now", now}, "valid: signed by secret 2, timestamp 12s ago", false},
		{"headers and body files", []string{"--secret", secret, "--headers", headers, "--body", body, "--now", now}, "valid: signed by secret 1", false},
		{"curl -v headers with --body", []string{"--secret", secret, "--request", curl, "--body", body, "--now", now}, "valid: signed by secret 1", false},
		{"v1a public key", []string{"--public-key", otherPublic, "--public-key", publicKey, "--request",
			write("ed.http", capture(t, edSigner, ts, captureBody, nil)), "--now", now}, "valid: signed by public key 2, timestamp 12s ago", false},
		{"timestamp in the future", []string{"--secret", secret, "--request", good, "--now", fmt.Sprint(ts.Unix() - 3)}, "timestamp 3s in the future", false},

		{"wrong secret", []string{"--secret", other, "--request", good, "--now", now}, "invalid: no signature matched: wrong secret", true},
		{"stale: replayed an hour later", []string{"--secret", secret, "--request", good, "--now", fmt.Sprint(ts.Unix() + 3600)}, "invalid: the signature matched but webhook-timestamp is 1h0m0s in the past", true},
		{"sender clock ahead", []string{"--secret", secret, "--request", good, "--now", fmt.Sprint(ts.Unix() - 600)}, "10m0s in the future", true},
		{"tolerance widened", []string{"--secret", secret, "--request", good, "--now", fmt.Sprint(ts.Unix() + 3600), "--tolerance", "2h"}, "valid: signed by secret 1, timestamp 1h0m0s ago", false},
		{"re-serialized body", []string{"--secret", secret, "--request", reserialized, "--now", now}, "invalid: no signature matched: the body was re-serialized after signing", true},
		{"body edited", []string{"--secret", secret, "--request", write("edited.http", bytes.Replace(capture(t, signer, ts, captureBody, nil), []byte(`"amount":100`), []byte(`"amount":900`), 1)), "--now", now}, "wrong secret", true},
		{"missing signature", []string{"--secret", secret, "--request", write("nosig.http", capture(t, signer, ts, captureBody, func(h http.Header) { h.Del(webhook.HeaderSignature) })), "--now", now}, "invalid: missing header webhook-signature", true},
		{"unsigned", []string{"--secret", secret, "--request", write("unsigned.http", capture(t, nil, ts, captureBody, nil)), "--now", now}, "missing headers webhook-id, webhook-timestamp, webhook-signature", true},
		{"milliseconds timestamp", []string{"--secret", secret, "--request", write("ms.http", capture(t, signer, ts, captureBody, func(h http.Header) { h.Set(webhook.HeaderTimestamp, "1796205600000x") })), "--now", now}, "invalid: malformed webhook-timestamp", true},
		{"v1a request, only a secret", []string{"--secret", secret, "--request", write("ed2.http", capture(t, edSigner, ts, captureBody, nil)), "--now", now}, "no whpk_ public key was given", true},
		{"capture cut off", []string{"--secret", secret, "--request", write("cut.http", capture(t, signer, ts, captureBody, nil)[:len(capture(t, signer, ts, captureBody, nil))-10]), "--now", now}, "the body is shorter than its Content-Length", true},
		{"not a request", []string{"--secret", secret, "--request", write("junk.http", []byte("hello\n")), "--now", now}, "not an HTTP request", true},
		{"no key", []string{"--request", good}, "give the endpoint's secret with --secret", true},
		{"a signing key given to verify", []string{"--secret", signingKey, "--request", good}, "whsk_ signing key, which must stay with the sender", true},
		{"headers without body", []string{"--secret", secret, "--headers", headers}, "--headers needs --body", true},
		{"nothing to verify", []string{"--secret", secret}, "give the captured request with --request", true},
	}
	t.Setenv("HERALD_WEBHOOK_SECRET", "")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := cli(context.Background(), t, append([]string{"webhooks", "verify"}, c.args...)...)
			if c.fail {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("want an error with %q, got %v\n%s", c.want, err, out)
				}
				return
			}
			if err != nil || !strings.Contains(out, c.want) {
				t.Fatalf("want %q, got %v\n%s", c.want, err, out)
			}
			if !strings.Contains(out, "webhook-id: evt_123") {
				t.Errorf("no webhook-id in %s", out)
			}
		})
	}

	// The secret from the environment.
	t.Setenv("HERALD_WEBHOOK_SECRET", secret)
	if out, err := cli(context.Background(), t, "webhooks", "verify", "--request", good, "--now", now); err != nil || !strings.Contains(out, "valid: signed by secret 1") {
		t.Errorf("HERALD_WEBHOOK_SECRET: %v\n%s", err, out)
	}
}

// headerLines returns the signed headers of body as "Name: value" lines.
func headerLines(signer *webhook.Signer, ts time.Time, body string) string {
	h := http.Header{}
	h.Set("Content-Type", "application/cloudevents+json")
	h.Set("Content-Length", fmt.Sprint(len(body)))
	signer.Headers(h, "evt_123", ts, []byte(body))
	var b strings.Builder
	_ = h.Write(&b)
	return b.String()
}

func prefixed(lines, prefix string) string {
	var b strings.Builder
	for l := range strings.Lines(lines) {
		b.WriteString(prefix + l)
	}
	return b.String()
}

// syncBuffer is a bytes.Buffer safe for a command writing while a test
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
