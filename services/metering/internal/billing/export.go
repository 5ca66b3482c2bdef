package billing

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	meteringv1 "github.com/heraldmesh/herald/api/gen/herald/metering/v1"
)

// Export serves GET /v1/invoices/{invoice_id}/export?format=csv|json (JSON
// by default) as a download: the invoice as protojson, or CSV with one row
// per line, then the credit notes and the totals. It expects the
// authenticator's middleware in front of it.
func (h *Handler) Export(w http.ResponseWriter, r *http.Request, params map[string]string) {
	format := r.URL.Query().Get("format")
	if format == "" {
		format = "json"
	}
	if format != "json" && format != "csv" {
		writeError(w, invalid("format %q is not known: csv or json", format))
		return
	}
	inv, err := h.invoice(r.Context(), params["invoice_id"])
	if err != nil {
		writeError(w, err)
		return
	}
	name := inv.GetId() + "." + format
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	if format == "json" {
		b, err := protojson.MarshalOptions{EmitUnpopulated: false}.Marshal(inv)
		if err != nil {
			writeError(w, h.internal(r.Context(), "export", err))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	cw := csv.NewWriter(w)
	i64 := func(n int64) string { return strconv.FormatInt(n, 10) }
	_ = cw.Write([]string{"invoice_id", "month", "currency", "kind", "description", "event_type", "domain", "product", "tier", "quantity", "unit_price_minor", "amount_minor"})
	row := func(kind, desc, typ, domain, product, tier, qty, unit, amount string) {
		_ = cw.Write([]string{inv.GetId(), inv.GetMonth(), inv.GetCurrency(), kind, desc, typ, domain, product, tier, qty, unit, amount})
	}
	for _, l := range inv.GetLines() {
		kind := map[meteringv1.LineKind]string{meteringv1.LineKind_LINE_KIND_FEE: "fee", meteringv1.LineKind_LINE_KIND_INCLUDED: "included", meteringv1.LineKind_LINE_KIND_USAGE: "usage"}[l.GetKind()]
		tier := ""
		if l.GetTier() > 0 {
			tier = strconv.Itoa(int(l.GetTier()))
		}
		row(kind, l.GetDescription(), l.GetEventType(), l.GetDomain(), l.GetProduct(), tier, i64(l.GetQuantity()), i64(l.GetUnitPriceMinor()), i64(l.GetAmountMinor()))
	}
	for _, n := range inv.GetCreditNotes() {
		row("credit_note", n.GetReason(), "", "", "", "", "", "", i64(-n.GetAmountMinor()))
	}
	row("subtotal", "", "", "", "", "", "", "", i64(inv.GetSubtotalMinor()))
	row("credited", "", "", "", "", "", "", "", i64(inv.GetCreditedMinor()))
	row("total", "", "", "", "", "", "", "", i64(inv.GetTotalMinor()))
	cw.Flush()
}

var httpStatus = map[connect.Code]int{
	connect.CodeInvalidArgument:    http.StatusBadRequest,
	connect.CodeUnauthenticated:    http.StatusUnauthorized,
	connect.CodePermissionDenied:   http.StatusForbidden,
	connect.CodeNotFound:           http.StatusNotFound,
	connect.CodeUnavailable:        http.StatusServiceUnavailable,
	connect.CodeFailedPrecondition: http.StatusBadRequest,
}

// writeError answers as the gateway does: {"code": n, "message": "..."}.
func writeError(w http.ResponseWriter, err error) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		ce = connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	st, ok := httpStatus[ce.Code()]
	if !ok {
		st = http.StatusInternalServerError
	}
	if st == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(st)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": int(ce.Code()), "message": ce.Message()})
}
