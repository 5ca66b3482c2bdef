//go:build !unix

package nodehook

// lockFile does nothing where flock(2) is missing: test binaries that
// install at the same moment may then collide, which `make test-node`
// (installing first) avoids.
func lockFile(string) (unlock func(), err error) { return func() {}, nil }
