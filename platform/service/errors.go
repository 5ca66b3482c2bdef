package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
)

// The one rule for what an error tells a client: a deliberate Connect error
// (a client's mistake, a refusal, a conflict) keeps its code and message;
// anything else, a server fault, is answered UNAVAILABLE (a dependency such
// as Redis could not be reached: retry) or INTERNAL with a generic message,
// and its detail (addresses, key names, key hashes, Redis errors) goes to
// the log only.
const (
	MessageUnavailable = "the service is temporarily unavailable; retry later"
	MessageInternal    = "internal error"
)

// ClientError returns err as a client may see it, logging the detail of a
// server fault to log (nil: not logged). procedure names the request in
// the log. Nil stays nil.
func ClientError(log *slog.Logger, procedure string, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	isConnect := errors.As(err, &ce)
	switch {
	case isConnect && deliberate(ce):
		return err
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("the request was canceled"))
	case errors.Is(err, context.DeadlineExceeded) && (!isConnect || ce.Code() == connect.CodeDeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("the request ran out of time"))
	}
	code, msg := connect.CodeInternal, MessageInternal
	if Transient(err) || (isConnect && ce.Code() == connect.CodeUnavailable) {
		code, msg = connect.CodeUnavailable, MessageUnavailable
	}
	if log != nil {
		log.Error("request failed", "procedure", procedure, "code", code.String(), "err", err.Error())
	}
	out := connect.NewError(code, errors.New(msg))
	if isConnect {
		if ra := ce.Meta().Get("Retry-After"); ra != "" {
			out.Meta().Set("Retry-After", ra)
		}
	}
	return out
}

// deliberate reports whether a Connect error may go to the client as it
// is: any code that is not a server fault; a server-fault code only when
// its message is a sentence of its own, wrapping no underlying error (a
// wrapped error is where internals come from).
func deliberate(ce *connect.Error) bool {
	switch ce.Code() {
	case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
		return false
	case connect.CodeUnavailable:
		cause := ce.Unwrap()
		return cause != nil && errors.Unwrap(cause) == nil && !Transient(cause) && !isRedisError(cause)
	default:
		return true
	}
}

// Transient reports whether err means a dependency could not be reached
// (a network error, a closed connection or pool, Redis loading or
// read-only): the request may succeed later.
func Transient(err error) bool {
	var ne net.Error
	var se *os.SyscallError
	switch {
	case errors.As(err, &ne), errors.As(err, &se),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		errors.Is(err, redis.ErrClosed), errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted):
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		return redis.HasErrorPrefix(re, "LOADING") || redis.HasErrorPrefix(re, "READONLY") ||
			redis.HasErrorPrefix(re, "MASTERDOWN") || redis.HasErrorPrefix(re, "TRYAGAIN") || redis.HasErrorPrefix(re, "CLUSTERDOWN")
	}
	return false
}

func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// ErrorInterceptor applies ClientError to every error a handler returns,
// unary or streaming, logging server faults to log.
func ErrorInterceptor(log *slog.Logger) connect.Interceptor { return errorInterceptor{log} }

type errorInterceptor struct{ log *slog.Logger }

func (e errorInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if err != nil {
			return nil, ClientError(e.log, req.Spec().Procedure, err)
		}
		return res, nil
	}
}

func (e errorInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (e errorInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return ClientError(e.log, conn.Spec().Procedure, next(ctx, conn))
	}
}
