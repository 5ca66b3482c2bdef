package service

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"
)

// PprofEnv names the variable that turns on Go's profiling endpoints
// (net/http/pprof under /debug/pprof/) on a listener of their own. They
// are unauthenticated, so only a loopback address is accepted.
const PprofEnv = "HERALD_PPROF_ADDR"

// startPprof serves net/http/pprof on addr until ctx ends.
func startPprof(ctx context.Context, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port on a loopback address, such as 127.0.0.1:6060", PprofEnv, addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("%s %q: the profiling endpoints have no authentication, so only a loopback address is accepted", PprofEnv, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", PprofEnv, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	return nil
}

// pprofFromEnv starts the profiling endpoints when PprofEnv is set.
func pprofFromEnv(ctx context.Context) error {
	if addr := os.Getenv(PprofEnv); addr != "" {
		return startPprof(ctx, addr)
	}
	return nil
}
