package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/heraldmesh/herald/platform/backoff"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/webhook"
	"github.com/spf13/cobra"
	sse "github.com/tmaxmax/go-sse"
)

// listenOptions are the flags of listen.
type listenOptions struct {
	forwardTo      string
	types          []string
	cursor         string
	secret         string
	forwardTimeout time.Duration
	idleTimeout    time.Duration
}

func listenCommand() *cobra.Command {
	flags := &edgeFlags{}
	o := &listenOptions{}
	cmd := &cobra.Command{
		Use:   "listen --forward-to http://localhost:3000/hooks [--types billing.*] [--cursor C]",
		Short: "Forward the events of a live stream to a local URL as signed webhooks, for developing a receiver",
		Long: `Opens an event stream from the edge (SSE, GET /v1/stream) with your key and POSTs each event
to --forward-to as a Standard Webhooks request, the way the webhook engine would deliver it:
the CloudEvent in structured JSON (application/cloudevents+json), webhook-id the event's id,
webhook-timestamp now, webhook-signature with a signing secret made for this session and
printed at the start ("Ready. Signing secret: whsec_..."; --secret keeps one across sessions).
Each event prints one line:

  2026-12-02T10:00:00Z  billing.invoice.paid  evt_123  -> 200 OK (12 ms)

This is a development tool, not a delivery engine: events are forwarded one at a time, in
order; a failed forward (connection refused, timeout, any status) is printed and the next
event follows, with no retry. Use "herald webhooks replay" against a real endpoint for that.
When the stream breaks it reconnects with backoff and resumes after the last event it
received (Last-Event-ID), so nothing is skipped; --cursor starts after a given cursor
(a stream id such as 1764669600000-0; "0" for the start of the retained log). A refused
key, grant or type ends it with the edge's reason. Ctrl-C stops it and prints the cursor
to resume from.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := flags.context(cmd.Context())
			defer cancel()
			l, err := newListener(flags, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return l.run(ctx)
		},
	}
	flags.register(cmd, 0)
	f := cmd.Flags()
	f.StringVar(&o.forwardTo, "forward-to", "", "the local URL to POST each event to (required)")
	f.StringSliceVar(&o.types, "types", []string{"*"}, "event types or patterns to stream (billing.*, comma-separated or repeated)")
	f.StringVar(&o.cursor, "cursor", "", "start after this cursor instead of at new events")
	f.StringVar(&o.secret, "secret", "", "sign with this whsec_ secret instead of a new one")
	f.DurationVar(&o.forwardTimeout, "forward-timeout", 15*time.Second, "give up on a forward after this long")
	f.DurationVar(&o.idleTimeout, "idle-timeout", 45*time.Second, "reconnect when the edge sends nothing, not even a heartbeat, for this long")
	return cmd
}

// listener forwards one stream.
type listener struct {
	out, errOut io.Writer
	streamURL   string
	key         string
	stream      *http.Client
	forward     *http.Client
	forwardTo   string
	types       string
	secret      string
	signer      *webhook.Signer
	idle        time.Duration
	cursor      string // the last event received: where a reconnect resumes
	backoff     backoff.Options
	connected   bool
}

func newListener(flags *edgeFlags, o *listenOptions, out, errOut io.Writer) (*listener, error) {
	if o.forwardTo == "" {
		return nil, errors.New("give the local URL to forward to with --forward-to, such as http://localhost:3000/hooks")
	}
	u, err := url.Parse(o.forwardTo)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--forward-to %q: give an http:// or https:// URL, such as http://localhost:3000/hooks", o.forwardTo)
	}
	patterns, err := eventtype.ParsePatterns(o.types)
	if err != nil {
		return nil, fmt.Errorf("--types: %w", err)
	}
	if o.cursor != "" {
		if _, err := eventlog.ParseID(o.cursor); err != nil {
			return nil, fmt.Errorf("--cursor: %w", err)
		}
	}
	secret := o.secret
	if secret == "" {
		secret = webhook.NewSecret()
	}
	signer, err := webhook.NewSigner(secret)
	if err != nil {
		return nil, fmt.Errorf("--secret: %s", reason(err))
	}
	base, _, key, err := flags.resolve()
	if err != nil {
		return nil, err
	}
	q := url.Values{"types": patterns}
	return &listener{
		out: out, errOut: errOut,
		streamURL: base + "/v1/stream?" + q.Encode(),
		key:       key,
		// HTTP/1.1 (or HTTP/2 over TLS), as a browser's EventSource: not
		// the h2c of service-to-service calls, which a proxy in front of
		// the edge may not speak.
		stream: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		forward: &http.Client{
			Timeout: o.forwardTimeout,
			// A 3xx is shown, never followed, as the webhook engine does.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		forwardTo: o.forwardTo,
		types:     strings.Join(patterns, ","),
		secret:    secret,
		signer:    signer,
		idle:      o.idleTimeout,
		cursor:    o.cursor,
		backoff:   backoff.Options{Initial: 500 * time.Millisecond, Max: 30 * time.Second},
	}, nil
}

// refusedError is a refusal of the edge that a retry would not change: a
// bad key, a missing grant, an unknown type, a bad cursor.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

// errIdle ends a stream that went silent.
var errIdle = errors.New("the edge sent nothing, not even a heartbeat")

// run streams until ctx ends or the edge refuses the stream.
func (l *listener) run(ctx context.Context) error {
	b := backoff.New(l.backoff)
	for {
		start := time.Now()
		err := l.streamOnce(ctx, b)
		if ctx.Err() != nil {
			l.stopped()
			return nil
		}
		var refused *refusedError
		if errors.As(err, &refused) {
			return err
		}
		b.ResetIfLasted(start)
		d := b.Next()
		from := ""
		if l.cursor != "" {
			from = ", after cursor " + l.cursor
		}
		fmt.Fprintf(l.errOut, "Connection lost: %v; reconnecting in %v%s\n", err, d.Round(time.Millisecond), from)
		if !backoff.Sleep(ctx, d) {
			l.stopped()
			return nil
		}
	}
}

func (l *listener) stopped() {
	if l.cursor != "" {
		fmt.Fprintf(l.out, "Stopped. Resume with --cursor %s\n", l.cursor)
	} else {
		fmt.Fprintln(l.out, "Stopped.")
	}
}

// streamOnce opens the stream and forwards its events until it breaks.
func (l *listener) streamOnce(ctx context.Context, b *backoff.Backoff) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, l.streamURL, nil)
	if err != nil {
		return &refusedError{err.Error()}
	}
	req.Header.Set("Authorization", "Bearer "+l.key)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if l.cursor != "" {
		req.Header.Set("Last-Event-ID", l.cursor)
	}
	res, err := l.stream.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			return fmt.Errorf("cannot reach the edge: %w", unwrapURL(err))
		}
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return streamRefusal(res)
	}
	if !l.connected {
		l.connected = true
		fmt.Fprintf(l.out, "Ready. Signing secret: %s\n", l.secret)
		fmt.Fprintf(l.out, "Forwarding %s to %s. Ctrl-C to stop.\n", l.types, l.forwardTo)
	} else {
		fmt.Fprintln(l.errOut, "Reconnected.")
	}

	// The timer runs only while a read waits for the edge, not while an
	// event is being forwarded.
	idle := time.AfterFunc(time.Hour, func() { cancel(errIdle) })
	idle.Stop()
	defer idle.Stop()
	body := &idleReader{r: res.Body, timer: idle, d: l.idle}
	for ev, err := range sse.Read(body, &sse.ReadConfig{MaxEventSize: 16 << 20}) {
		if err != nil {
			if cause := context.Cause(sctx); cause != nil && ctx.Err() == nil {
				return cause
			}
			return err
		}
		if ev.LastEventID != "" {
			l.cursor = ev.LastEventID
		}
		if ev.Data == "" {
			continue
		}
		b.Reset()
		l.forwardEvent(ctx, ev)
	}
	if cause := context.Cause(sctx); cause != nil && ctx.Err() == nil {
		return cause
	}
	return errors.New("the edge ended the stream")
}

// idleReader arms timer for d during each Read.
type idleReader struct {
	r     io.Reader
	timer *time.Timer
	d     time.Duration
}

func (i *idleReader) Read(p []byte) (int, error) {
	if i.d > 0 {
		i.timer.Reset(i.d)
		defer i.timer.Stop()
	}
	return i.r.Read(p)
}

// streamRefusal turns a non-200 answer into an error: a refusal for 4xx
// (but 429), a retryable error otherwise.
func streamRefusal(res *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	var ce struct{ Code, Message string }
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &ce) == nil && ce.Message != "" {
		msg = ce.Message
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	what := fmt.Sprintf("the edge answered %s", statusText(res.StatusCode))
	if msg != "" {
		what += ": " + msg
	}
	switch {
	case res.StatusCode == http.StatusUnauthorized:
		return &refusedError{what + " (check --key or HERALD_KEY)"}
	case res.StatusCode >= 400 && res.StatusCode < 500 && res.StatusCode != http.StatusTooManyRequests && res.StatusCode != http.StatusRequestTimeout:
		return &refusedError{what}
	}
	return errors.New(what)
}

// unwrapURL drops the method and URL net/http puts before a transport error.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// forwardEvent POSTs one event to the local URL and prints its line.
func (l *listener) forwardEvent(ctx context.Context, ev sse.Event) {
	body := []byte(ev.Data)
	var meta struct{ ID, Type string }
	_ = json.Unmarshal(body, &meta)
	id, typ := meta.ID, ev.Type
	if id == "" {
		id = ev.LastEventID
	}
	if typ == "" {
		typ = meta.Type
	}
	now := time.Now()
	line := fmt.Sprintf("%s  %s  %s  -> ", now.UTC().Format(time.RFC3339), typ, id)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.forwardTo, bytes.NewReader(body))
	if err != nil {
		fmt.Fprintf(l.out, "%serror: %v\n", line, err)
		return
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	req.Header.Set("User-Agent", "herald-listen")
	l.signer.Headers(req.Header, id, now, body)
	res, err := l.forward.Do(req)
	ms := time.Since(now).Milliseconds()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		fmt.Fprintf(l.out, "%serror: %v (%d ms)\n", line, unwrapURL(err), ms)
		return
	}
	// Read some of the answer so that the connection is reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	fmt.Fprintf(l.out, "%s%s (%d ms)\n", line, statusText(res.StatusCode), ms)
}
