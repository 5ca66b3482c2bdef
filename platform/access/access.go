// Package access decides what an application may do with an event type:
// publish and subscribe grants (names or patterns), and visibility by
// audience. The registry applies it when subscriptions are created; router
// and edge apply it on every publish and stream.
package access

import (
	"strings"

	registryv1 "github.com/heraldmesh/herald/api/gen/herald/registry/v1"
	"github.com/heraldmesh/herald/platform/eventtype"
)

// Covers reports whether a grant pattern covers a requested name or
// pattern: "*" covers everything, "billing.*" covers billing.invoice.paid
// and billing.invoice.*, an exact name covers only itself.
func Covers(grant, requested string) bool {
	if grant == "*" {
		return true
	}
	if !strings.HasSuffix(requested, "*") {
		return eventtype.Match(grant, requested)
	}
	if requested == "*" {
		return false
	}
	// requested is prefix.*: covered by a grant whose prefix is no longer.
	gp, ok := strings.CutSuffix(grant, "*")
	return ok && strings.HasPrefix(strings.TrimSuffix(requested, "*"), gp)
}

// Allowed reports whether some grant for action covers requested.
func Allowed(grants []*registryv1.Grant, action registryv1.GrantAction, requested string) bool {
	for _, g := range grants {
		if g.GetAction() == action && Covers(g.GetPattern(), requested) {
			return true
		}
	}
	return false
}

// Visible reports whether an application of the audience may see a type of
// the visibility. Unset visibility is INTERNAL, unset audience INTERNAL.
func Visible(audience registryv1.Audience, visibility registryv1.Visibility) bool {
	switch audience {
	case registryv1.Audience_AUDIENCE_PUBLIC:
		return visibility == registryv1.Visibility_VISIBILITY_PUBLIC
	case registryv1.Audience_AUDIENCE_PARTNER:
		return visibility == registryv1.Visibility_VISIBILITY_PUBLIC || visibility == registryv1.Visibility_VISIBILITY_PARTNER
	default:
		return true
	}
}
