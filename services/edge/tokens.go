package edge

import (
	"net/http"
	"time"

	"github.com/heraldmesh/herald/api/gen/herald/edge/v1/edgev1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/catalog"
	"github.com/heraldmesh/herald/platform/service"
)

// tokenRoutes are the routes that take browser tokens: those whose
// handlers apply a token's scope (auth.Principal.Scope: types, filter,
// expiry) through the request parser. Everywhere else a token is refused.
var tokenRoutes = map[string]bool{
	"/v1/stream": true, "/v1/poll": true,
	edgev1connect.EdgeServiceStreamEventsProcedure: true,
}

// browserTokens makes the edge accept applications' browser tokens on its
// stream routes: HS256 secrets are opened with HERALD_SECRET_KEY (without
// it only public-key tokens verify), JWKS URLs are fetched through the
// outbound guard of webhooks (HERALD_WEBHOOK_ALLOW) and cached, and aud
// may be "herald" or the edge's public URL.
func browserTokens(base *service.Base, cat *catalog.Cache, cfg Config) error {
	box, policy, err := outbound(cfg)
	if err != nil {
		return err
	}
	verifier := auth.NewTokenVerifier(auth.TokenOptions{
		Issuers:   cat.TokenIssuers(box),
		Audiences: []string{cfg.PublicURL},
		JWKS:      auth.NewJWKSCache(policy.Client(10*time.Second), 0),
	})
	base.Auth.AcceptTokens(verifier, func(r *http.Request) bool {
		// The query and the cookie are read on GET and HEAD only (auth);
		// StreamEvents (a POST) takes the token in its header.
		return tokenRoutes[r.URL.Path]
	})
	return nil
}
