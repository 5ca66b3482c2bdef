// Package gateway serves metering's Connect handlers as REST through grpc-gateway v2,
// in process: the generated RegisterXxxHandlerServer functions call a gRPC
// server interface, and Call adapts each Connect method to it, so that a
// REST request costs no loopback gRPC hop. Authentication is the HTTP
// middleware in front of the mux (auth.Authenticator.Middleware): the
// principal travels in the request context to the handler.
package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Caller runs Connect methods for the gateway through a chain of
// interceptors.
type Caller struct{ chain []connect.Interceptor }

// NewCaller returns a Caller whose calls pass through interceptors, the
// first outermost.
func NewCaller(interceptors ...connect.Interceptor) *Caller { return &Caller{chain: interceptors} }

// Call runs the Connect method f on req as a gRPC server method would,
// through c's interceptors: it returns the response message, or a gRPC
// status error with the Connect error's code and message. An error that is
// not a Connect error becomes a bare "internal error" (its text may hold
// internals). The Connect response's headers and an error's metadata
// (Retry-After, ...) go out as response headers.
func Call[Req, Res any](ctx context.Context, c *Caller, req *Req, f func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error)) (*Res, error) {
	next := connect.UnaryFunc(func(ctx context.Context, r connect.AnyRequest) (connect.AnyResponse, error) {
		return f(ctx, r.(*connect.Request[Req]))
	})
	for i := len(c.chain) - 1; i >= 0; i-- {
		next = c.chain[i].WrapUnary(next)
	}
	res, err := next(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, Status(ctx, err)
	}
	if h := res.Header(); len(h) > 0 {
		setHeaders(ctx, h)
	}
	return res.Any().(*Res), nil
}

// Status converts a Connect error to a gRPC status error (the codes are
// the same numbers), sending its metadata as headers.
func Status(ctx context.Context, err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return status.Error(codes.Internal, "internal error")
	}
	if len(ce.Meta()) > 0 {
		setHeaders(ctx, ce.Meta())
	}
	return status.Error(codes.Code(ce.Code()), ce.Message())
}

func setHeaders(ctx context.Context, h http.Header) {
	md := metadata.MD{}
	for k, vs := range h {
		md.Append(strings.ToLower(k), vs...)
	}
	_ = grpc.SetHeader(ctx, md)
}

// passHeaders are the response headers the gateway sends under their own
// names rather than grpc-gateway's Grpc-Metadata- prefix.
var passHeaders = map[string]bool{"retry-after": true, "content-disposition": true}

// NewMux returns a grpc-gateway mux that answers errors as grpc-gateway
// does, with a Bearer challenge on 401, and sends Retry-After and
// Content-Disposition under their own names.
func NewMux(opts ...runtime.ServeMuxOption) *runtime.ServeMux {
	base := []runtime.ServeMuxOption{
		runtime.WithErrorHandler(errorHandler),
		runtime.WithOutgoingHeaderMatcher(func(k string) (string, bool) {
			if passHeaders[strings.ToLower(k)] {
				return k, true
			}
			return runtime.DefaultHeaderMatcher(k)
		}),
	}
	return runtime.NewServeMux(append(base, opts...)...)
}

func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, bearerChallenge{w}, r, err)
}

type bearerChallenge struct{ http.ResponseWriter }

func (b bearerChallenge) WriteHeader(code int) {
	if code == http.StatusUnauthorized {
		b.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
	}
	b.ResponseWriter.WriteHeader(code)
}
