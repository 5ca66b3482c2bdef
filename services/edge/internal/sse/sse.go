// Package sse serves the log as Server-Sent Events (GET /v1/stream), in the
// WHATWG EventSource model: id is the cursor, event the CloudEvents type,
// data the CloudEvent in structured JSON; Last-Event-ID (or the
// last_event_id query parameter) resumes. Besides events it sends two
// notices: herald.gap when retention trimmed events after the resume
// cursor, and herald.lagged, last, when the client fell behind and must
// reconnect (its id is the cursor to resume after, so EventSource resumes
// there by itself).
package sse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/eventlog"
	"github.com/heraldmesh/herald/platform/service"
	"github.com/heraldmesh/herald/services/edge/internal/ceiling"
	"github.com/heraldmesh/herald/services/edge/internal/hub"
	"github.com/heraldmesh/herald/services/edge/internal/request"
)

// Handler serves SSE streams.
type Handler struct {
	Hub       *hub.Hub
	Requests  *request.Parser
	Log       *slog.Logger
	Delivered request.Delivered
	// Shutdown ends every stream when the server stops.
	Shutdown context.Context
	// Heartbeat is the idle interval between comment lines.
	Heartbeat time.Duration
	// Retry is the reconnection delay suggested to EventSource (retry:).
	// Default 2s.
	Retry time.Duration
	// Ceiling bounds the streams of every channel of the edge.
	Ceiling *ceiling.Ceiling
	// WriteTimeout drops a client that cannot take a write for this long.
	WriteTimeout time.Duration
	// Detach serves HTTP/1 streams from connections taken over from the
	// server (see detach), for a much smaller idle stream.
	Detach bool

	streams sync.WaitGroup // detached streams

	// Buffer bounds the events queued for one client while it writes; a
	// client further behind is ended with herald.lagged (0: the hub's
	// default).
	Buffer int
}

// Channel is this channel's name in the ceiling and in usage.
const Channel = "sse"

// Notice event names.
const (
	GapEvent    = "herald.gap"
	LaggedEvent = "herald.lagged"
	// QuotaExhaustedEvent ends an open stream whose application or tenant
	// reached a hard quota on delivered events: its id (and data.cursor)
	// is the cursor to resume after, data.retry_after the seconds until
	// the period resets.
	QuotaExhaustedEvent = "herald.quota.exhausted"
)

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength != 0 {
		// net/http notices a client leaving only once the body is read: a
		// stream with an unread body would outlive its client. Nor is the
		// body read here: the connection closes after this answer.
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New("a stream request has no body: give types and last_event_id in the query string")))
		return
	}
	q := r.URL.Query()
	cursor := r.Header.Get("Last-Event-ID")
	if cursor == "" {
		cursor = q.Get("last_event_id")
	}
	jsonData, err := request.DataMode(q.Get("data"))
	if err != nil {
		auth.WriteError(w, r, err)
		return
	}
	sr, err := h.Requests.Parse(r.Context(), request.Params{Types: q["types"], Filter: q.Get("filter"), Cursor: cursor, JSONData: jsonData})
	if err != nil {
		// The rule every RPC gets from service.ErrorInterceptor: a server
		// fault (the registry unreachable) is answered without its detail.
		auth.WriteError(w, r, service.ClientError(h.Log, "GET /v1/stream", err))
		return
	}
	release, ok := h.Ceiling.Acquire(Channel)
	if !ok {
		w.Header().Set("Retry-After", h.Ceiling.RetryAfter())
		auth.WriteError(w, r, connect.NewError(connect.CodeUnavailable, fmt.Errorf("this edge already serves %d streams; retry later or on another replica", h.Ceiling.Max())))
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream; charset=utf-8")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	if h.Detach && r.ProtoMajor == 1 && h.detach(w, r, sr, release) {
		return
	}
	defer release()
	ctx, stopGuard := h.Requests.Guard(r.Context(), sr)
	defer stopGuard()
	stop := context.AfterFunc(h.Shutdown, stopGuard)
	defer stop()
	h.serve(ctx, sr, &responseOut{w: w, r: r, rc: http.NewResponseController(w), timeout: h.WriteTimeout})
}

// detach answers an HTTP/1 stream from a connection taken over from the
// server, served by a goroutine of its own: the server's goroutine, its
// grown stack and its buffers (about 25 KiB) are let go, which is most of
// what an idle stream cost. A second small goroutine notices the client
// leaving. It reports false, having written nothing, when the connection
// cannot be taken over.
func (h *Handler) detach(w http.ResponseWriter, r *http.Request, sr *request.Request, release func()) bool {
	caller, _ := auth.FromContext(r.Context())
	ctx, cancel := context.WithCancel(auth.WithPrincipal(context.Background(), caller))
	ctx, stopGuard := h.Requests.Guard(ctx, sr)
	// Refusals that need no stream are answered here, as without detaching.
	err := h.Hub.CheckCursor(ctx, sr.Patterns, sr.Options())
	if ce := request.Refusal(ctx); ce != nil {
		err = ce
	}
	if err != nil {
		stopGuard()
		cancel()
		if r.Context().Err() == nil {
			auth.WriteError(w, r, request.StreamError(err))
		}
		release()
		return true
	}
	conn, bufs, err := http.NewResponseController(w).Hijack()
	if err != nil {
		stopGuard()
		cancel()
		return false
	}
	_ = bufs // dropped, and the server's buffers with it
	out := &connOut{conn: conn, header: w.Header().Clone(), timeout: h.WriteTimeout}
	h.streams.Add(2)
	go func() {
		defer h.streams.Done()
		var b [1]byte
		_, _ = conn.Read(b[:]) // the client left (or spoke out of turn)
		cancel()
	}()
	go func() {
		defer h.streams.Done()
		defer release()
		defer conn.Close()
		defer cancel()
		defer stopGuard()
		// At shutdown, a write blocked on a client that does not read
		// gives up at once rather than after WriteTimeout.
		stop := context.AfterFunc(h.Shutdown, func() { stopGuard(); _ = conn.SetWriteDeadline(time.Now()) })
		defer stop()
		h.serve(ctx, sr, out)
	}()
	return true
}

// Wait waits for the streams served from detached connections to end.
func (h *Handler) Wait() { h.streams.Wait() }

// output is where a stream goes: a ResponseWriter, or a connection taken
// over from the server.
type output interface {
	// start sends the 200 and the headers.
	start() error
	// write sends b at once.
	write(b []byte) error
	// fail answers with err instead of a stream (before start).
	fail(err error)
}

type responseOut struct {
	w       http.ResponseWriter
	r       *http.Request
	rc      *http.ResponseController
	timeout time.Duration
}

func (o *responseOut) start() error { o.w.WriteHeader(http.StatusOK); return nil }

func (o *responseOut) write(b []byte) error {
	_ = o.rc.SetWriteDeadline(time.Now().Add(o.timeout))
	if _, err := o.w.Write(b); err != nil {
		return err
	}
	return o.rc.Flush()
}

func (o *responseOut) fail(err error) { auth.WriteError(o.w, o.r, err) }

// connOut writes HTTP/1.1 by hand: the body ends when the connection
// closes (no chunking), as EventSource and proxies accept.
type connOut struct {
	conn    net.Conn
	header  http.Header
	timeout time.Duration
}

func (o *connOut) start() error {
	var b bytes.Buffer
	b.WriteString("HTTP/1.1 200 OK\r\n")
	o.header.Set("Connection", "close")
	_ = o.header.Write(&b)
	b.WriteString("\r\n")
	return o.write(b.Bytes())
}

func (o *connOut) write(b []byte) error {
	_ = o.conn.SetWriteDeadline(time.Now().Add(o.timeout))
	_, err := o.conn.Write(b)
	return err
}

func (o *connOut) fail(err error) {
	rec := &recorder{header: http.Header{}}
	auth.WriteError(rec, &http.Request{Method: http.MethodGet, Header: http.Header{}}, err)
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", rec.code, http.StatusText(rec.code))
	rec.header.Set("Connection", "close")
	rec.header.Set("Content-Length", strconv.Itoa(rec.body.Len()))
	_ = rec.header.Write(&b)
	b.WriteString("\r\n")
	b.Write(rec.body.Bytes())
	_ = o.write(b.Bytes())
}

// recorder is the ResponseWriter an error is rendered into.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

// serve runs one stream to out until it ends.
func (h *Handler) serve(ctx context.Context, sr *request.Request, out output) {
	write := out.write
	retry := h.Retry
	if retry <= 0 {
		retry = 2 * time.Second
	}
	started := false
	var buf []byte
	o := sr.Options()
	o.Interval, o.Buffer, o.CutWhenBehind = h.Heartbeat, h.Buffer, true
	o.Heartbeat = func() error { return write([]byte(": heartbeat\n\n")) }
	var last string // the cursor a resumed stream goes on after
	o.StartsAfter = func(c eventlog.ID) { last = c.String() }
	o.Started = func() error {
		started = true
		if err := out.start(); err != nil {
			return err
		}
		return write([]byte("retry: " + strconv.FormatInt(retry.Milliseconds(), 10) + "\n: connected\n\n"))
	}
	o.Gap = func(g hub.Gap) error {
		data, _ := json.Marshal(request.NewGapJSON(g))
		return write(notice(nil, GapEvent, "", data))
	}
	err := h.Hub.Stream(ctx, sr.Patterns, o, func(batch []*hub.Event) error {
		// One write and one flush for every event queued meanwhile; each
		// event's frame is rendered once for every client.
		buf = buf[:0]
		n := 0
		for _, ev := range batch {
			if sr.AsJSON != nil {
				ev = ev.WithJSONData(sr.AsJSON)
			}
			frame, err := ev.SSE()
			if err != nil {
				h.Log.Error("event not renderable; skipped", "cursor", ev.ID.String(), "err", err)
				continue
			}
			buf = append(buf, frame...)
			batch[n] = ev
			n++
		}
		if n == 0 {
			return nil
		}
		if err := write(buf); err != nil {
			return err
		}
		last = batch[n-1].ID.String()
		if cap(buf) > 64<<10 {
			buf = nil // a burst does not stay with an idle client
		}
		if h.Delivered != nil {
			for _, ev := range batch[:n] {
				h.Delivered(ctx, ev)
			}
		}
		return nil
	})
	if !started {
		if ce := request.Refusal(ctx); ce != nil {
			out.fail(ce)
		} else if err != nil && ctx.Err() == nil {
			h.Log.Warn("stream not started", "err", err)
			out.fail(request.StreamError(err))
		}
		return
	}
	if ce := request.Refusal(ctx); request.IsQuota(ce) {
		// The last word, as for herald.lagged: the cursor to resume after
		// once the quota allows again.
		retry, _ := strconv.Atoi(ce.Meta().Get("Retry-After"))
		data, _ := json.Marshal(map[string]any{"cursor": last, "reason": ce.Message(), "retry_after": retry})
		_ = write(notice(nil, QuotaExhaustedEvent, last, data))
		return
	}
	if ce := request.Refusal(ctx); ce != nil {
		// The caller may no longer stream: say why, and close the response.
		_ = write([]byte(": stream ended: " + strings.ReplaceAll(ce.Message(), "\n", " ") + "\n\n"))
		return
	}
	var lagged *hub.LaggedError
	if errors.As(err, &lagged) {
		// The last word: the cursor to resume after, as the id, so that
		// EventSource reconnects from there.
		c := lagged.Cursor.String()
		data, _ := json.Marshal(map[string]string{"cursor": c, "reason": lagged.Error()})
		_ = write(notice(nil, LaggedEvent, c, data))
		return
	}
	if err != nil && ctx.Err() == nil {
		h.Log.Debug("stream ended", "err", err)
	}
}

// notice appends one SSE message of the given event name to b.
func notice(b []byte, event, id string, data []byte) []byte {
	if id != "" {
		b = append(b, "id: "...)
		b = append(b, id...)
		b = append(b, '\n')
	}
	b = append(b, "event: "...)
	b = append(b, event...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}
