package server

import "testing"

// The derived ceiling leaves a small reserve: under the 20,000-file limit
// of this kind of machine it admits 19,900 connections, and small limits
// keep a larger share for Redis and the rest.
func TestDerivedCeiling(t *testing.T) {
	for _, c := range []struct{ limit, want int }{
		{20000, 19900},
		{1024, 924},
		{300, 200},
		{100, 16}, // never below the headroom
		{0, 10000},
	} {
		if got := derivedCeiling(c.limit); got != c.want {
			t.Errorf("derivedCeiling(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
	if got := Ceiling(42); got != 42 {
		t.Errorf("Ceiling(42) = %d", got)
	}
	if got := Ceiling(-1); got != 0 {
		t.Errorf("Ceiling(-1) = %d, want 0 (none)", got)
	}
	if got, want := Ceiling(0), derivedCeiling(openFileLimit()); got != want {
		t.Errorf("Ceiling(0) = %d, want %d", got, want)
	}
}
