// Package api holds Herald's contracts as Go code: the packages under gen/
// are generated from proto/ by `make generate` (never edit them), and this
// file embeds the OpenAPI document that protoc-gen-openapiv2 writes.
package api

import _ "embed"

// MeteringOpenAPI is the OpenAPI (Swagger 2.0) document of the metering REST
// gateway, as generated from proto/herald/metering/v1.
//
//go:embed openapi/metering.swagger.json
var MeteringOpenAPI []byte
