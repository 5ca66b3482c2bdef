# One image with the four service binaries and the herald CLI; docker-compose.yml
# picks the binary per service. Kept correct by reading: no engine runs where
# Herald is developed (see README).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache/go-build --mount=type=cache,target=/go/pkg/mod \
    CGO_ENABLED=0 go build -trimpath -o /out/ \
      ./services/registry/cmd/registry ./services/router/cmd/router \
      ./services/metering/cmd/metering ./services/edge/cmd/edge ./cmd/herald

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER nonroot
