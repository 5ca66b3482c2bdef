package service

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"connectrpc.com/connect"
)

func TestClientError(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	withRetry := connect.NewError(connect.CodeUnavailable, fmt.Errorf("checking key abc123: %w", dial))
	withRetry.Meta().Set("Retry-After", "1")
	for _, c := range []struct {
		name string
		in   error
		code connect.Code
		msg  string // the whole message when deliberate, else generic
	}{
		{"deliberate refusal", connect.NewError(connect.CodeInvalidArgument, errors.New("name is required")), connect.CodeInvalidArgument, "name is required"},
		{"deliberate unavailable sentence", connect.NewError(connect.CodeUnavailable, errors.New("shutting down: reconnect")), connect.CodeUnavailable, "shutting down: reconnect"},
		{"unavailable wrapping internals", withRetry, connect.CodeUnavailable, MessageUnavailable},
		{"internal wrapping a dial error", connect.NewError(connect.CodeInternal, fmt.Errorf("read herald:{registry}:types: %w", dial)), connect.CodeUnavailable, MessageUnavailable},
		{"plain dial error", fmt.Errorf("read herald:x: %w", dial), connect.CodeUnavailable, MessageUnavailable},
		{"plain other error", errors.New("decode herald:x: bad proto"), connect.CodeInternal, MessageInternal},
	} {
		var log bytes.Buffer
		out := ClientError(slog.New(slog.NewTextHandler(&log, nil)), "/p", c.in)
		if connect.CodeOf(out) != c.code {
			t.Errorf("%s: code %v, want %v", c.name, connect.CodeOf(out), c.code)
		}
		var ce *connect.Error
		if !errors.As(out, &ce) || ce.Message() != c.msg {
			t.Errorf("%s: %v, want message %q", c.name, out, c.msg)
		}
		if generic := c.msg == MessageUnavailable || c.msg == MessageInternal; generic && !strings.Contains(log.String(), "herald:") && !strings.Contains(log.String(), "abc123") {
			t.Errorf("%s: the detail is not logged: %s", c.name, log.String())
		}
	}
	if got := ClientError(nil, "/p", withRetry).(*connect.Error).Meta().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want it kept", got)
	}
}
