package codegen_test

import (
	"fmt"
	"strings"

	"github.com/heraldmesh/herald/platform/codegen"
)

func ExampleGenerate() {
	files, err := codegen.Generate(codegen.TypeScript, codegen.Options{}, []codegen.Type{{
		Name:          "billing.invoice.paid",
		Description:   "An invoice was paid in full.",
		Schema:        []byte(`{"type":"object","required":["invoice_id"],"properties":{"invoice_id":{"type":"string"},"currency":{"enum":["EUR","USD"]}},"additionalProperties":false}`),
		SchemaVersion: 2,
	}})
	if err != nil {
		panic(err)
	}
	for _, f := range files {
		fmt.Println(f.Name)
		for _, line := range strings.Split(string(f.Content), "\n") {
			if strings.HasPrefix(line, "export type Billing") || strings.HasPrefix(line, "export interface Billing") || strings.HasPrefix(line, "  ") && strings.Contains(line, "invoice_id") {
				fmt.Println(line)
			}
		}
	}
	// Output:
	// events.ts
	// export interface BillingInvoicePaid {
	//   invoice_id: string;
	// export type BillingInvoicePaidCurrency = "EUR" | "USD";
	// export type BillingInvoicePaidEvent = CloudEvent<"billing.invoice.paid", BillingInvoicePaid>;
}
