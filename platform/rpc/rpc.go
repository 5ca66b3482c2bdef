// Package rpc builds clients for calls between Herald services: Connect
// clients over prior-knowledge HTTP/2 (h2c) with the caller's key attached.
package rpc

import (
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/heraldmesh/herald/platform/auth"
)

// HTTPClient returns an HTTP client that speaks h2c, as Herald services do.
func HTTPClient() *http.Client {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:           protocols,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// BaseURL turns a listen address into the URL to reach it: an empty or
// wildcard host means this machine.
func BaseURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "http://" + addr
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// ClientOptions are the options for a service-to-service Connect client
// using the gRPC protocol and the given key.
func ClientOptions(key string) []connect.ClientOption {
	return []connect.ClientOption{connect.WithGRPC(), connect.WithInterceptors(auth.ClientInterceptor(key))}
}
