// Package keyresolver resolves application keys through the registry's
// AuthenticateKey RPC, for the authenticator of metering's routes.
package keyresolver

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/api/gen/herald/registry/v1/registryv1connect"
	"github.com/heraldmesh/herald/platform/auth"
	"github.com/heraldmesh/herald/platform/rpc"
)

// New returns a Resolver that asks the registry at registryAddr, calling
// with adminKey.
func New(registryAddr, adminKey string) auth.Resolver {
	client := registryv1connect.NewRegistryServiceClient(rpc.HTTPClient(), rpc.BaseURL(registryAddr), rpc.ClientOptions(adminKey)...)
	return auth.ResolverFunc(func(ctx context.Context, keyHash string) (auth.Principal, error) {
		res, err := client.AuthenticateKey(ctx, connect.NewRequest(&registryv1.AuthenticateKeyRequest{KeyHash: keyHash}))
		if err != nil {
			switch connect.CodeOf(err) {
			case connect.CodeNotFound, connect.CodeUnauthenticated:
				return auth.Principal{}, auth.ErrUnknownKey
			}
			return auth.Principal{}, fmt.Errorf("registry AuthenticateKey: %w", err)
		}
		k := res.Msg.GetKey()
		if k.GetApplicationId() == "" {
			return auth.Principal{}, errors.New("registry AuthenticateKey: answer without an application id")
		}
		return auth.Principal{ApplicationID: k.GetApplicationId(), KeyID: k.GetId()}, nil
	})
}
