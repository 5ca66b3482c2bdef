// Package server is the one-port HTTP server every Herald service runs: gRPC,
// gRPC-Web and Connect handlers (h2c and HTTP/1.1) next to /healthz, /readyz,
// /metrics, grpc.health.v1 and server reflection.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
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

	// streams is cancelled when shutdown starts, so that long-lived streams
	// (SSE, server streams, Watch) end and let the server drain.
	streams     context.Context
	stopStreams context.CancelFunc
	ln          net.Listener
}

// New returns a server for the named service. metrics may be nil.
func New(name string, log *slog.Logger, metrics *prometheus.Registry) *Server {
	if metrics == nil {
		metrics = prometheus.NewRegistry()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{name: name, log: log, mux: http.NewServeMux(), metrics: metrics, streams: ctx, stopStreams: cancel}
}

// Handle mounts an RPC service handler, as returned by a generated
// New...Handler constructor (path is "/<package>.<Service>/"), and lists the
// service for reflection and health.
func (s *Server) Handle(path string, h http.Handler) {
	s.services = append(s.services, strings.Trim(path, "/"))
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
	s.ln = ln
	return ln.Addr(), nil
}

// Serve serves until ctx is cancelled, then shuts down gracefully: it stops
// accepting, ends streams, and waits up to drain for in-flight requests.
func (s *Server) Serve(ctx context.Context, drain time.Duration) error {
	if s.ln == nil {
		return errors.New("server: Serve before Listen")
	}
	checker := grpchealth.NewStaticChecker(s.services...)
	s.mux.Handle(grpchealth.NewHandler(checker))
	reflector := grpcreflect.NewStaticReflector(append([]string{grpchealth.HealthV1ServiceName}, s.services...)...)
	s.mux.Handle(grpcreflect.NewHandlerV1(reflector))
	s.mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics, promhttp.HandlerOpts{Registry: s.metrics}))

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s.mux,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.ln) }()
	s.log.Info("serving", "addr", s.ln.Addr().String())
	select {
	case err := <-errc:
		s.stopStreams()
		return fmt.Errorf("%s: serve: %w", s.name, err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	checker.SetStatus("", grpchealth.StatusNotServing)
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
	for _, f := range s.ready {
		if err := f(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}
