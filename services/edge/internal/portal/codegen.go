package portal

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/codegen"
	"github.com/heraldmesh/herald/platform/eventtype"
	"github.com/heraldmesh/herald/platform/rpc"
)

// codegenDownload is GET /portal/codegen?lang=ts|go&types=billing.*
// [&package=events]: the typed event definitions and the webhook verifier
// of the types the session's application may see (the same as `herald
// codegen`), as the one TypeScript file, or a zip of the Go files.
func (h *Handler) codegenDownload(w http.ResponseWriter, r *http.Request, _ auth.Principal) {
	q := r.URL.Query()
	lang := q.Get("lang")
	opts := codegen.Options{Package: q.Get("package")}
	if _, err := codegen.Generate(lang, opts, nil); err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, err))
		return
	}
	patterns := []string{"*"}
	if t := q.Get("types"); t != "" {
		patterns = strings.Split(t, ",")
	}
	patterns, err := eventtype.ParsePatterns(patterns)
	if err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("types: %w", err)))
		return
	}
	all, err := h.listTypes(r.Context(), r.Context().Value(secretKey{}).(string))
	if err != nil {
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			h.o.Log.Warn("portal: event types not listed", "err", err)
			err = connect.NewError(connect.CodeUnavailable, errors.New("the catalog is unavailable; retry later"))
		}
		auth.WriteError(w, r, err)
		return
	}
	types := codegen.FromCatalog(all, patterns)
	if len(types) == 0 {
		auth.WriteError(w, r, connect.NewError(connect.CodeNotFound, fmt.Errorf("no event type you may see matches %s", strings.Join(patterns, ","))))
		return
	}
	files, err := codegen.Generate(lang, opts, types)
	if err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeFailedPrecondition, err))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if len(files) == 1 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="`+files[0].Name+`"`)
		_, _ = w.Write(files[0].Content)
		return
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range files {
		fw, err := zw.Create(f.Name)
		if err == nil {
			_, err = fw.Write(f.Content)
		}
		if err != nil {
			auth.WriteError(w, r, connect.NewError(connect.CodeInternal, errors.New("the archive could not be written")))
			return
		}
	}
	if err := zw.Close(); err != nil {
		auth.WriteError(w, r, connect.NewError(connect.CodeInternal, errors.New("the archive could not be written")))
		return
	}
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", `attachment; filename="herald-events-`+lang+`.zip"`)
	_, _ = w.Write(buf.Bytes())
}

// listTypes reads every event type the session's key may see.
func (h *Handler) listTypes(ctx context.Context, secret string) ([]*registryv1.EventType, error) {
	reg := registryv1connect.NewRegistryServiceClient(&http.Client{Transport: h.o.Transport}, h.o.RegistryURL, rpc.ClientOptions(secret)...)
	return codegen.ListEventTypes(ctx, reg)
}
