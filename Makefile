# Herald: `make up` runs the mesh, `make test` runs every test.
SHELL := /bin/bash
MODULES := api platform services/registry services/router services/metering services/edge cmd/herald
PKGS := $(foreach m,$(MODULES),./$(m)/...)
# The slowest test packages, started first so that they run beside the many
# short ones instead of alone at the end (go test runs -p packages at once,
# in the order given; a package listed twice runs once).
SLOWEST := ./cmd/herald/internal/mesh ./services/edge ./services/router ./cmd/herald/internal/bench \
	./services/registry ./services/router/internal/appender ./services/edge/internal/websub ./cmd/herald
BIN := $(CURDIR)/bin
TOOLS := $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-connect-go $(BIN)/protoc-gen-go-grpc \
	$(BIN)/protoc-gen-grpc-gateway $(BIN)/protoc-gen-openapiv2 $(BIN)/grpcurl
export PATH := $(BIN):$(PATH)

.PHONY: up build tools generate check-generated lint test test-go test-node bench clean

## up: build and run the whole mesh in the foreground (Ctrl-C stops it)
up: build
	$(BIN)/herald dev

## build: the herald CLI and the four service binaries, into ./bin
build:
	go build -o $(BIN)/herald ./cmd/herald
	go build -o $(BIN)/ ./services/registry/cmd/registry ./services/router/cmd/router ./services/metering/cmd/metering ./services/edge/cmd/edge

## tools: buf, the protoc plugins and grpcurl, pinned in tools/go.mod, built into ./bin
tools: $(TOOLS)
$(TOOLS): tools/go.mod tools/go.sum
	cd tools && GOWORK=off GOBIN=$(BIN) go install tool
	@touch $(TOOLS)

## generate: regenerate api/ from proto/ (offline: local plugins only)
generate: tools
	buf format -w proto
	buf generate

## check-generated: fail when api/ is not what proto/ generates
check-generated: generate
	@if [ -n "$$(git status --porcelain -- api proto)" ]; then \
		git status --porcelain -- api proto; git diff --stat -- api proto; \
		echo "generated code is stale: run 'make generate' and commit the result"; exit 1; fi

## lint: buf lint, go vet, gofmt
lint: tools
	buf lint
	go vet $(PKGS)
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

## test: every test (what CI runs): generated code fresh, lint, Go tests with the race detector
test: check-generated lint test-node test-go

## test-node: install the Node test tooling, pinned by package-lock.json, that Go tests run: tests/asyncapi
## (the official AsyncAPI parser, for the catalog's AsyncAPI export), tests/webhooks (the official
## standardwebhooks library, verifying Herald's webhook signatures), tests/tokens (the jose library,
## minting browser tokens that stream from the edge), tests/websub (a WebSub subscriber, with
## http-link-header for discovery), tests/console (playwright-core, driving Debian's chromium through
## the edge's console page; it downloads no browser), tests/eventsource (the npm eventsource library,
## following the edge's SSE stream with an application key and reconnecting by itself) and tests/connect
## (@connectrpc/connect-node and @bufbuild/protobuf, calling EdgeService.StreamEvents over Connect and
## gRPC on h2c from descriptors loaded at run time) and tests/dashboard (playwright-core again, driving
## metering's operator dashboard: sign-in form, charts and top lists against the API, live counter) and
## tests/codegen (typescript, type-checking what `herald codegen --lang ts` writes with tsc --strict) and
## tests/portal (playwright-core, driving the edge's consumer portal from a portal link to signed webhooks) and
## tests/lake (@duckdb/node-api, reading the lake bridge's Parquet files with hive_partitioning) and
## tests/kafka (kafkajs, reading what the edge's Kafka bridge sink writes).
## Node.js >= 20
test-node:
	cd tests/asyncapi && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/webhooks && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/tokens && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/websub && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/console && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/eventsource && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/connect && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/dashboard && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/codegen && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/portal && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/lake && npm ci --no-audit --no-fund --ignore-scripts
	cd tests/kafka && npm ci --no-audit --no-fund --ignore-scripts

test-go: tools test-node
	go test -race -count=1 -timeout 20m $(SLOWEST) $(PKGS)

## bench: Go benchmarks (Publish vs raw XADD, batches of 100; Subscribe vs raw XREADGROUP), then `herald bench publish`
## with its defaults (Herald vs raw XADD vs NATS JetStream): see BENCHMARKS.md
bench: build
	go test -run '^$$' -bench 'PublishBatch100|XAddBatch100' -count=1 ./cmd/herald/internal/bench
	go test -run '^$$' -bench 'SubscribeAck|XReadGroupAck' -benchtime 20000x -count=1 ./services/router
	$(BIN)/herald bench publish

clean:
	rm -rf bin var
