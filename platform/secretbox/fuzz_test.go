package secretbox_test

import (
	"errors"
	"testing"

	"github.com/heraldmesh/herald/platform/secretbox"
)

// Open never panics on any input, opens only what was sealed for the same
// context, and fails with one of its documented errors.
func FuzzOpen(f *testing.F) {
	box, err := secretbox.New("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=")
	if err != nil {
		f.Fatal(err)
	}
	old, err := secretbox.New("ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=")
	if err != nil {
		f.Fatal(err)
	}
	// Fixed values (a fuzzing worker that sealed its own would get other
	// nonces): "whsec_abc" for sub_1 under the first key, "" for sub_2
	// under the second.
	const (
		s1 = "sb1.O9n-4oo1.05DPkbxmhCTeZwR6G7h5DftZpCo6v6oD0baz8Du8QhKdKAznHQ"
		s2 = "sb1.65gYtRrP.6QR3JJ_1u9DTKL2CvJtHs0fh4Xs5axA8ksLiSA"
	)
	if pt, err := old.Open(s2, "sub_2"); err != nil || len(pt) != 0 {
		f.Fatalf("seed s2: %q, %v", pt, err)
	}
	for _, seed := range []struct{ sealed, context string }{
		{s1, "sub_1"}, {s1, "sub_2"}, {s2, "sub_2"}, {"", "x"}, {"sb1.", "x"}, {"sb1.AAAAAAAA.", "x"},
		{"sb1.AAAAAAAA.AAAA", "x"}, {"sb1..", "x"}, {"sb1.AAAAAAAA.AAAA.AAAA", "x"}, {s1[:len(s1)-1], "sub_1"},
	} {
		f.Add(seed.sealed, seed.context)
	}
	f.Fuzz(func(t *testing.T, sealed, context string) {
		pt, err := box.Open(sealed, context)
		if err == nil {
			// Anything that opens is one of the seeds' genuine values.
			if !(sealed == s1 && context == "sub_1" && string(pt) == "whsec_abc") && !(sealed == s2 && context == "sub_2" && len(pt) == 0) {
				t.Fatalf("Open(%q, %q) = %q", sealed, context, pt)
			}
			return
		}
		if pt != nil {
			t.Fatalf("Open returned %q with error %v", pt, err)
		}
		if context != "" && !errors.Is(err, secretbox.ErrMalformed) && !errors.Is(err, secretbox.ErrUnknownKey) && !errors.Is(err, secretbox.ErrOpen) {
			t.Fatalf("Open error %v is none of the documented ones", err)
		}
	})
}
