package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/spf13/cobra"
)

// verifyOptions are the flags of webhooks verify.
type verifyOptions struct {
	secrets, publicKeys    []string
	request, headers, body string
	now                    int64
	tolerance              time.Duration
}

func webhooksVerifyCommand() *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify (--secret whsec_... | --public-key whpk_...) (--request file.http | --headers file --body file) [--now unix]",
		Short: "Check a captured webhook request against your secret, and say exactly why it fails",
		Long: `Verifies a captured Standard Webhooks request offline, as your receiver should: the
webhook-id, webhook-timestamp and webhook-signature headers against the raw body, with
your whsec_ secret (v1, HMAC-SHA256) or the endpoint's whpk_ public key (v1a, Ed25519).
Give --secret or --public-key more than once during a rotation; $HERALD_WEBHOOK_SECRET
is used when neither is given.

The request comes from one of:
  --request file.http   the raw HTTP/1.1 request as a proxy, a tcpdump or your receiver's
                        log captured it: request line, headers, blank line, body. The
                        ">"-prefixed header lines of curl -v are accepted too (curl -v does
                        not print the body: add --body).
  --headers file --body file
                        "Name: value" header lines, and the exact body bytes.

It prints "valid: signed by secret N, timestamp 12s ago", or exits 1 with the reason:
missing headers, a malformed timestamp or signature, the wrong secret, a body that was
re-serialized after signing (and which re-encoding verifies: your framework parsed and
re-encoded the JSON before you verified it), or a timestamp outside the tolerance (a
replayed request, or a clock off on one side). --now sets the receiver's clock (unix
seconds) to check a capture as of when it arrived.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVerify(cmd.OutOrStdout(), cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.secrets, "secret", nil, "a whsec_ signing secret (repeatable)")
	f.StringArrayVar(&o.publicKeys, "public-key", nil, "a whpk_ public key, for v1a (Ed25519) signatures (repeatable)")
	f.StringVar(&o.request, "request", "", "file with the raw HTTP request (- for standard input)")
	f.StringVar(&o.headers, "headers", "", "file with the request's header lines")
	f.StringVar(&o.body, "body", "", "file with the request's exact body bytes")
	f.Int64Var(&o.now, "now", 0, "the receiver's time in unix seconds (default: now)")
	f.DurationVar(&o.tolerance, "tolerance", webhook.DefaultTolerance, "how far the timestamp may be from now, either way")
	return cmd
}

func runVerify(out, errOut io.Writer, o *verifyOptions) error {
	secrets := o.secrets
	if len(secrets) == 0 && len(o.publicKeys) == 0 {
		if s := os.Getenv("HERALD_WEBHOOK_SECRET"); s != "" {
			secrets = []string{s}
		} else {
			return errors.New("give the endpoint's secret with --secret whsec_... (or its public key with --public-key whpk_...)")
		}
	}
	keys := append(append([]string(nil), secrets...), o.publicKeys...)
	v, err := webhook.NewVerifier(keys...)
	if err != nil {
		return errors.New(reason(err))
	}
	v = v.WithTolerance(o.tolerance)

	h, body, err := readCapture(errOut, o)
	if err != nil {
		return err
	}
	now := time.Now()
	if o.now != 0 {
		now = time.Unix(o.now, 0)
	}
	if err := v.Verify(h, body, now); err != nil {
		return fmt.Errorf("invalid: %s", reason(err))
	}
	// Which key: the one whose own verifier takes the request.
	by := "a given key"
	for i, k := range keys {
		one, err := webhook.NewVerifier(k)
		if err != nil || one.WithTolerance(o.tolerance).Verify(h, body, now) != nil {
			continue
		}
		if i < len(secrets) {
			by = fmt.Sprintf("secret %d", i+1)
		} else {
			by = fmt.Sprintf("public key %d", i-len(secrets)+1)
		}
		break
	}
	ts, _ := strconv.ParseInt(strings.TrimSpace(h.Get(webhook.HeaderTimestamp)), 10, 64)
	fmt.Fprintf(out, "valid: signed by %s, timestamp %s\n", by, ago(now.Sub(time.Unix(ts, 0))))
	fmt.Fprintf(out, "webhook-id: %s\n", h.Get(webhook.HeaderID))
	return nil
}

// reason is a webhook error without the package's prefix.
func reason(err error) string {
	return strings.ReplaceAll(err.Error(), "webhook: ", "")
}

// ago says how long before now (d > 0) or after it a timestamp is.
func ago(d time.Duration) string {
	d = d.Round(time.Second)
	if d < 0 {
		return (-d).String() + " in the future"
	}
	return d.String() + " ago"
}

// readCapture reads the headers and body of the captured request.
func readCapture(errOut io.Writer, o *verifyOptions) (http.Header, []byte, error) {
	switch {
	case o.request != "" && o.headers != "":
		return nil, nil, errors.New("give the request either whole (--request) or as --headers and --body, not both")
	case o.request != "":
		b, err := readInput(o.request)
		if err != nil {
			return nil, nil, err
		}
		h, body, err := parseCapturedRequest(errOut, b, o.body != "")
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.request, err)
		}
		if o.body != "" {
			if body, err = os.ReadFile(o.body); err != nil {
				return nil, nil, err
			}
		}
		return h, body, nil
	case o.headers != "":
		if o.body == "" {
			return nil, nil, errors.New("--headers needs --body: the signature covers the exact body bytes")
		}
		b, err := os.ReadFile(o.headers)
		if err != nil {
			return nil, nil, err
		}
		h, err := parseHeaderLines(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.headers, err)
		}
		body, err := os.ReadFile(o.body)
		if err != nil {
			return nil, nil, err
		}
		return h, body, nil
	}
	return nil, nil, errors.New("give the captured request with --request file.http, or --headers file --body file")
}

func readInput(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(os.Stdin)
	}
	return os.ReadFile(name)
}

// parseCapturedRequest reads a raw HTTP/1.1 request: with net/http's
// ReadRequest, after taking off curl -v's "> " prefixes. Without a
// Content-Length (or chunked encoding), the rest of the file is the body.
// bodyElsewhere says the body is given apart, so none is expected here.
func parseCapturedRequest(errOut io.Writer, b []byte, bodyElsewhere bool) (http.Header, []byte, error) {
	if curl, ok := fromCurlVerbose(b); ok {
		if !bodyElsewhere {
			fmt.Fprintln(errOut, "note: this looks like curl -v output, which has no body; verifying an empty body (give the body with --body)")
		}
		b = curl
	}
	br := bufio.NewReader(bytes.NewReader(b))
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, nil, fmt.Errorf("not an HTTP request (want a request line such as \"POST /hooks HTTP/1.1\", header lines, a blank line, the body): %w", err)
	}
	defer req.Body.Close()
	if req.Host != "" && req.Header.Get("Host") == "" {
		req.Header.Set("Host", req.Host)
	}
	if bodyElsewhere {
		return req.Header, nil, nil
	}
	_, hasLength := req.Header["Content-Length"]
	if !hasLength && len(req.TransferEncoding) == 0 {
		rest, _ := io.ReadAll(br)
		return req.Header, rest, nil
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, nil, fmt.Errorf("the body is shorter than its Content-Length %d: the capture is cut off", req.ContentLength)
		}
		return nil, nil, fmt.Errorf("read the body: %w", err)
	}
	if rest, _ := io.ReadAll(br); len(rest) > 0 {
		fmt.Fprintf(errOut, "note: %d byte(s) after the body's Content-Length were ignored\n", len(rest))
	}
	return req.Header, body, nil
}

// fromCurlVerbose returns the request lines of curl -v output (those that
// start with "> "), without the prefix, ended by a blank line.
func fromCurlVerbose(b []byte) ([]byte, bool) {
	lines := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	var req []string
	for _, l := range lines {
		if l == ">" || l == "> " {
			break
		}
		if rest, ok := strings.CutPrefix(l, "> "); ok {
			req = append(req, rest)
		}
	}
	first := strings.TrimSpace(string(b))
	if len(req) == 0 || !strings.HasPrefix(first, ">") && !strings.HasPrefix(first, "*") {
		return nil, false // a request line never starts so
	}
	return []byte(strings.Join(req, "\r\n") + "\r\n\r\n"), true
}

// parseHeaderLines reads "Name: value" lines, skipping a request line and
// curl -v's "> " prefixes.
func parseHeaderLines(b []byte) (http.Header, error) {
	var lines []string
	for i, l := range strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n") {
		l = strings.TrimPrefix(l, "> ")
		if strings.TrimSpace(l) == "" || (i == 0 && strings.Contains(l, " HTTP/")) {
			continue
		}
		if !strings.Contains(l, ":") {
			return nil, fmt.Errorf("line %d is not a header (Name: value): %q", i+1, cut(l, 60))
		}
		lines = append(lines, l)
	}
	mh, err := textproto.NewReader(bufio.NewReader(strings.NewReader(strings.Join(lines, "\r\n") + "\r\n\r\n"))).ReadMIMEHeader()
	if err != nil {
		return nil, err
	}
	return http.Header(mh), nil
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
