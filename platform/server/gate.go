package server

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// gate is the handler in front of the mux: connection ceiling,
// authentication from the headers, body read deadline (see the package
// documentation).
func (s *Server) gate(w http.ResponseWriter, r *http.Request) {
	_, pattern := s.mux.Handler(r)
	public := s.public[pattern]
	if !public && s.conns.overflow(r.Context()) {
		refuse(w, r, connect.NewError(connect.CodeUnavailable, errors.New("this server is at its connection limit; retry later or on another replica")), "1")
		return
	}
	ctx := r.Context()
	if !public && !s.selfAuth[pattern] && s.opts.Auth != nil {
		p, err := s.opts.Auth.Request(r, !s.rpc[pattern])
		if err != nil {
			refuse(w, r, err, "")
			return
		}
		ctx = auth.WithPrincipal(ctx, p)
	}
	r = r.WithContext(ctx)
	if d := s.opts.BodyReadTimeout; d > 0 && hasBody(r) && !clientStreaming(r.URL.Path) {
		rc := http.NewResponseController(w)
		if rc.SetReadDeadline(time.Now().Add(d)) == nil {
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
		}
	}
	s.mux.ServeHTTP(w, r)
}

// refuse answers a request without reading its body. On HTTP/1 the
// connection is closed after the answer: the unread body must not be
// drained (a slow sender would hold the answer back) nor parsed as the
// next request.
func refuse(w http.ResponseWriter, r *http.Request, err error, retryAfter string) {
	if retryAfter != "" {
		var ce *connect.Error
		if errors.As(err, &ce) {
			ce.Meta().Set("Retry-After", retryAfter)
		}
	}
	if r.ProtoMajor != 1 || !hasBody(r) {
		auth.WriteError(w, r, err)
		return
	}
	// HTTP/1 with a body: answer at once and close, without waiting for
	// the body. A client still writing it (connect-node, curl) would see
	// the close as a reset and lose the answer if unread bytes were left
	// in the socket, so what has already arrived (at most 64 KiB, for at
	// most 100 ms) is read and thrown away after the answer is flushed.
	rc := http.NewResponseController(w)
	w.Header().Set("Connection", "close")
	_ = rc.EnableFullDuplex()
	auth.WriteError(w, r, err)
	_ = rc.Flush()
	_ = rc.SetReadDeadline(time.Now().Add(refuseLinger))
	_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
	// net/http drains up to 256 KiB more when the handler ends; a
	// deadline in the past makes that drain fail at once.
	_ = rc.SetReadDeadline(time.Now())
}

// refuseLinger is how long a refused HTTP/1 request's body is read after
// the answer.
const refuseLinger = 100 * time.Millisecond

func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// deadlineBody lifts the read deadline once the body has been read to its
// end: what follows (a slow handler, a server stream) is not the client's
// to hurry, and on HTTP/1 a deadline left on the connection would cut the
// response short.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	once sync.Once
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		b.once.Do(func() { _ = b.rc.SetReadDeadline(time.Time{}) })
	}
	return n, err
}

var streamingClient sync.Map // procedure path -> bool

// clientStreaming reports whether path ("/pkg.Service/Method") is an RPC
// whose request is a stream (client or bidi streaming), from the
// registered protobuf descriptors. Those requests read their body for as
// long as the RPC lasts (Subscribe reads acks), so they get no deadline.
func clientStreaming(path string) bool {
	if v, ok := streamingClient.Load(path); ok {
		return v.(bool)
	}
	svc, method, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !ok {
		return false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false
	}
	m := sd.Methods().ByName(protoreflect.Name(method))
	if m == nil {
		return false // only known procedures are cached, so the map stays bounded
	}
	streaming := m.IsStreamingClient()
	streamingClient.Store(path, streaming)
	return streaming
}
