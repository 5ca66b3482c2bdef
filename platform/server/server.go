// Package server is the one-port HTTP server every Herald service runs: gRPC,
// gRPC-Web and Connect handlers (h2c and HTTP/1.1) next to /healthz, /readyz,
// /metrics, grpc.health.v1 and server reflection.
//
// Every request passes one gate before it reaches a handler:
//
//   - Authentication, from the headers alone and before any byte of the body
//     is read (connect-go reads a unary request's body before interceptors
//     run, so an interceptor would come too late). Open without a key: only
//     /healthz, /readyz, /metrics, grpc.health.v1, server reflection (which
//     describes the APIs, not their data) and routes mounted with
//     HandlePublic. Routes mounted with HandleSelfAuth authenticate
//     themselves (metering's dashboard session cookie). The principal goes
//     into the request context, where auth.Interceptor and auth.Middleware
//     find it.
//   - A body read deadline (Options.BodyReadTimeout) for every request
//     except client- and bidi-streaming RPCs, whose request stream is
//     long-lived. It is lifted once the body has been read to its end, so
//     server streams and slow handlers are not cut.
//   - A connection ceiling on the listener (Options.MaxConnections, by
//     default derived from RLIMIT_NOFILE): idle keep-alive connections are
//     closed first when the ceiling is reached; past it, a small headroom of
//     connections is accepted in which only health and metrics are served
//     and every other request gets 503 with Retry-After; past the headroom
//     new connections are closed at once, so accept never meets the
//     process's file limit.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyFunc reports whether the service can serve: dependencies reachable,
// caches warm. A non-nil error makes /readyz answer 503 with its text.
type ReadyFunc func(ctx context.Context) error

// Server hosts one service's handlers on one port.
type Server struct {
	name     string
	log      *slog.Logger
	mux      *http.ServeMux
	services []string
	ready    []ReadyFunc
	metrics  *prometheus.Registry
	opts     Options
	public   map[string]bool // mux patterns served without a key
	selfAuth map[string]bool // mux patterns whose handler authenticates
	rpc      map[string]bool // mux patterns of RPC services
	conns    *connTracker

	// streams is cancelled when shutdown starts, so that long-lived streams
	// (SSE, server streams, Watch) end and let the server drain.
	streams     context.Context
	stopStreams context.CancelFunc
	ln          net.Listener
	tls         *tls.Config // nil: h2c and HTTP/1.1 in the clear
	stopping    atomic.Bool // shutdown has begun: /readyz answers 503
}

// New returns a server for the named service. metrics may be nil.
func New(name string, log *slog.Logger, metrics *prometheus.Registry) *Server {
	if metrics == nil {
		metrics = prometheus.NewRegistry()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		name: name, log: log, mux: http.NewServeMux(), metrics: metrics, streams: ctx, stopStreams: cancel,
		public: map[string]bool{}, selfAuth: map[string]bool{}, rpc: map[string]bool{}, opts: Options{BodyReadTimeout: DefaultBodyReadTimeout},
	}
}

// DefaultBodyReadTimeout is the default Options.BodyReadTimeout.
const DefaultBodyReadTimeout = 30 * time.Second

// Options configure the gate in front of every handler (see the package
// documentation).
type Options struct {
	// Auth authenticates every request but the public routes, from its
	// headers, before its body is read. Nil: no authentication at this layer.
	Auth *auth.Authenticator
	// BodyReadTimeout bounds how long reading a request body may take
	// (except client- and bidi-streaming RPCs). 0: DefaultBodyReadTimeout;
	// negative: no deadline.
	BodyReadTimeout time.Duration
	// MaxConnections is the connection ceiling of the listener. 0: derived
	// from the open-file limit (RLIMIT_NOFILE minus a reserve for Redis
	// connections and files); negative: no ceiling.
	MaxConnections int
	// ShutdownDelay: once asked to stop, the server goes on serving this
	// long with /readyz answering 503 and gRPC health NOT_SERVING, so that
	// load balancers stop sending new requests before the listener closes.
	ShutdownDelay time.Duration
}

// Configure sets the options. Call it before Serve.
func (s *Server) Configure(o Options) {
	if o.BodyReadTimeout == 0 {
		o.BodyReadTimeout = DefaultBodyReadTimeout
	}
	s.opts = o
}

// UseTLS serves HTTPS with the PEM certificate (chain) and key files:
// HTTP/2 and HTTP/1.1 negotiated by ALPN, as browsers need to get HTTP/2.
// Call it before Serve.
func (s *Server) UseTLS(certFile, keyFile string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("%s: TLS certificate: %w", s.name, err)
	}
	s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	return nil
}

// HandlePublic mounts a plain HTTP handler that answers without a key
// (documents that describe the API, not its data).
func (s *Server) HandlePublic(pattern string, h http.Handler) {
	s.public[pattern] = true
	s.mux.Handle(pattern, h)
}

// HandleSelfAuth mounts a plain HTTP handler that authenticates its
// requests itself, from their headers and before reading their bodies (the
// metering dashboard's routes, which accept a session cookie besides a
// bearer key). The gate skips authentication for it but applies the
// connection ceiling and the body read deadline.
func (s *Server) HandleSelfAuth(pattern string, h http.Handler) {
	s.selfAuth[pattern] = true
	s.mux.Handle(pattern, h)
}

// Handle mounts an RPC service handler, as returned by a generated
// New...Handler constructor (path is "/<package>.<Service>/"), and lists the
// service for reflection and health.
func (s *Server) Handle(path string, h http.Handler) {
	s.services = append(s.services, strings.Trim(path, "/"))
	s.rpc[path] = true
	s.mux.Handle(path, h)
}

// HandleHTTP mounts a plain HTTP handler (REST, SSE, documents).
func (s *Server) HandleHTTP(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// OnReady adds a readiness check.
func (s *Server) OnReady(f ReadyFunc) { s.ready = append(s.ready, f) }

// StreamContext is cancelled when the server starts shutting down. Handlers
// of long-lived streams select on it to end cleanly.
func (s *Server) StreamContext() context.Context { return s.streams }

// Addr is the bound address, nil before Listen.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Listen binds the address. It is separate from Serve so that callers can
// learn the bound address (port 0) before serving.
func (s *Server) Listen(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: listen %s: %w", s.name, addr, err)
	}
	s.conns = trackerFor(s.log, s.opts.MaxConnections)
	s.conns.register(s.metrics)
	s.ln = &limitListener{Listener: ln, t: s.conns}
	return ln.Addr(), nil
}

// Serve serves until ctx is cancelled, then shuts down gracefully: it stops
// accepting, ends streams, and waits up to drain for in-flight requests.
func (s *Server) Serve(ctx context.Context, drain time.Duration) error {
	if s.ln == nil {
		return errors.New("server: Serve before Listen")
	}
	checker := grpchealth.NewStaticChecker(s.services...)
	// Health and reflection stay open without a key, as health checkers
	// and grpcurl expect: they tell which services exist, not their data.
	s.HandlePublic(grpchealth.NewHandler(checker))
	reflector := grpcreflect.NewStaticReflector(append([]string{grpchealth.HealthV1ServiceName}, s.services...)...)
	s.HandlePublic(grpcreflect.NewHandlerV1(reflector))
	s.HandlePublic(grpcreflect.NewHandlerV1Alpha(reflector))
	s.HandlePublic("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	}))
	s.HandlePublic("GET /readyz", http.HandlerFunc(s.serveReady))
	s.HandlePublic("GET /metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{Registry: s.metrics}))

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	if s.tls != nil {
		protocols.SetHTTP2(true)
	}
	srv := &http.Server{
		TLSConfig:         s.tls,
		Handler:           http.HandlerFunc(s.gate),
		ConnState:         s.conns.state,
		ConnContext:       connContext,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() {
		if s.tls != nil {
			errc <- srv.ServeTLS(s.ln, "", "")
			return
		}
		errc <- srv.Serve(s.ln)
	}()
	s.log.Info("serving", "addr", s.ln.Addr().String())
	select {
	case err := <-errc:
		s.stopStreams()
		return fmt.Errorf("%s: serve: %w", s.name, err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	s.stopping.Store(true)
	checker.SetStatus("", grpchealth.StatusNotServing)
	if d := s.opts.ShutdownDelay; d > 0 {
		s.log.Info("not ready any more; serving on before closing", "delay", d.String())
		select {
		case <-time.After(d):
		case err := <-errc:
			s.stopStreams()
			return fmt.Errorf("%s: serve: %w", s.name, err)
		}
	}
	s.stopStreams()
	sctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("%s: shutdown: %w", s.name, err)
	}
	<-errc
	return nil
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain")
	if s.stopping.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: shutting down\n"))
		return
	}
	for _, f := range s.ready {
		if err := f(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}
