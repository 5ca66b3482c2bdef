package websub_test

import (
	"testing"

	"github.com/heraldmesh/herald/platform/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The authenticator's expirable LRUs (golang-lru) start a goroutine
	// that has no way to be stopped; everything else must end.
	goleak.VerifyTestMain(testutil.StoppingSpares(m), goleak.IgnoreTopFunction("github.com/hashicorp/golang-lru/v2/expirable.NewLRU[...].func1"))
}
