package secretbox_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/heraldmesh/herald/platform/secretbox"
)

func mustBox(t testing.TB, keys ...string) *secretbox.Box {
	t.Helper()
	b, err := secretbox.New(keys...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	b := mustBox(t, secretbox.NewKey())
	for _, pt := range [][]byte{[]byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), {}, bytes.Repeat([]byte{0, 255}, 5000)} {
		sealed, err := b.Seal(pt, "sub_1")
		if err != nil {
			t.Fatal(err)
		}
		if len(pt) > 8 && strings.Contains(sealed, string(pt[:8])) {
			t.Fatalf("sealed value %q shows the plaintext", sealed)
		}
		got, err := b.Open(sealed, "sub_1")
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Open = %q, %v; want %q", got, err, pt)
		}
	}
	// A random nonce: the same plaintext seals differently each time.
	a, _ := b.Seal([]byte("x"), "sub_1")
	c, _ := b.Seal([]byte("x"), "sub_1")
	if a == c {
		t.Fatal("two seals of one plaintext are equal")
	}
	if !strings.HasPrefix(a, "sb1.") {
		t.Fatalf("sealed value %q lacks the sb1. prefix", a)
	}
}

// A value sealed under the old key opens after a new key is put first,
// new values are sealed under the new key, and Reseal moves old values
// over so that the old key can go.
func TestRotation(t *testing.T) {
	oldKey, newKey := secretbox.NewKey(), secretbox.NewKey()
	before := mustBox(t, oldKey)
	sealedOld, err := before.Seal([]byte("s3cret"), "sub_1")
	if err != nil {
		t.Fatal(err)
	}

	during := mustBox(t, newKey, oldKey)
	if got, err := during.Open(sealedOld, "sub_1"); err != nil || string(got) != "s3cret" {
		t.Fatalf("Open of an old value during the rotation = %q, %v", got, err)
	}
	if during.Current(sealedOld) {
		t.Fatal("an old value counts as current")
	}
	sealedNew, err := during.Seal([]byte("fresh"), "sub_2")
	if err != nil {
		t.Fatal(err)
	}
	if !during.Current(sealedNew) {
		t.Fatal("a new value is not sealed under the first key")
	}
	if _, err := before.Open(sealedNew, "sub_2"); !errors.Is(err, secretbox.ErrUnknownKey) {
		t.Fatalf("the old box opens a value sealed under the new key: %v", err)
	}
	resealed, err := during.Reseal(sealedOld, "sub_1")
	if err != nil || !during.Current(resealed) {
		t.Fatalf("Reseal = %q, %v", resealed, err)
	}
	if again, err := during.Reseal(resealed, "sub_1"); err != nil || again != resealed {
		t.Fatalf("Reseal of a current value = %q, %v; want it unchanged", again, err)
	}

	after := mustBox(t, newKey)
	if got, err := after.Open(resealed, "sub_1"); err != nil || string(got) != "s3cret" {
		t.Fatalf("Open of a resealed value after the rotation = %q, %v", got, err)
	}
	_, err = after.Open(sealedOld, "sub_1")
	if !errors.Is(err, secretbox.ErrUnknownKey) || !strings.Contains(err.Error(), "keep the old key in HERALD_SECRET_KEY") {
		t.Fatalf("Open of an old value after the old key is gone = %v, want ErrUnknownKey", err)
	}
}

func TestOpenFailures(t *testing.T) {
	key := secretbox.NewKey()
	b := mustBox(t, key)
	sealed, err := b.Seal([]byte("s3cret"), "sub_1")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(sealed, ".")
	ct, _ := base64.RawURLEncoding.DecodeString(parts[2])
	flip := func(i int) string {
		c := bytes.Clone(ct)
		c[i] ^= 1
		return parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(c)
	}
	otherKid := mustBox(t, secretbox.NewKey())
	otherSealed, _ := otherKid.Seal([]byte("s3cret"), "sub_1")
	otherParts := strings.Split(otherSealed, ".")

	for _, tc := range []struct {
		name, sealed, context string
		box                   *secretbox.Box
		want                  error
	}{
		{"wrong context", sealed, "sub_2", b, secretbox.ErrOpen},
		{"context differs in case", sealed, "SUB_1", b, secretbox.ErrOpen},
		{"nonce altered", flip(0), "sub_1", b, secretbox.ErrOpen},
		{"ciphertext altered", flip(13), "sub_1", b, secretbox.ErrOpen},
		{"tag altered", flip(len(ct) - 1), "sub_1", b, secretbox.ErrOpen},
		{"key id swapped for another key's", parts[0] + "." + otherParts[1] + "." + parts[2], "sub_1", otherKid, secretbox.ErrOpen},
		{"wrong key", sealed, "sub_1", otherKid, secretbox.ErrUnknownKey},
		{"truncated", parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(ct[:len(ct)-3]), "sub_1", b, secretbox.ErrOpen},
		{"cut mid-character", sealed[:len(sealed)-1], "sub_1", b, secretbox.ErrMalformed},
		{"too short for nonce and tag", parts[0] + "." + parts[1] + "." + parts[2][:20], "sub_1", b, secretbox.ErrMalformed},
		{"empty", "", "sub_1", b, secretbox.ErrMalformed},
		{"plaintext, not sealed", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "sub_1", b, secretbox.ErrMalformed},
		{"other version", "sb2" + sealed[3:], "sub_1", b, secretbox.ErrMalformed},
		{"no payload", parts[0] + "." + parts[1], "sub_1", b, secretbox.ErrMalformed},
		{"bad base64", parts[0] + "." + parts[1] + ".!!!!", "sub_1", b, secretbox.ErrMalformed},
		{"line break inside, which base64 would skip", sealed[:20] + "\r\n" + sealed[20:], "sub_1", b, secretbox.ErrMalformed},
		{"padded base64", sealed + "==", "sub_1", b, secretbox.ErrMalformed},
		{"short key id", parts[0] + ".abc." + parts[2], "sub_1", b, secretbox.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pt, err := tc.box.Open(tc.sealed, tc.context)
			if !errors.Is(err, tc.want) || pt != nil {
				t.Fatalf("Open = %q, %v; want %v", pt, err, tc.want)
			}
			if strings.Contains(err.Error(), key[:8]) || strings.Contains(err.Error(), parts[1]) {
				t.Fatalf("error %q shows key material or the key id", err)
			}
		})
	}
	if _, err := b.Open(sealed, ""); err == nil || !strings.Contains(err.Error(), "needs the context") {
		t.Fatalf("Open without a context = %v", err)
	}
	if _, err := b.Seal([]byte("x"), ""); err == nil || !strings.Contains(err.Error(), "needs a context") {
		t.Fatalf("Seal without a context = %v", err)
	}
}

func TestNewRefusesBadKeys(t *testing.T) {
	k := secretbox.NewKey()
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	hexKey := hex.EncodeToString(make([]byte, 32))
	for _, tc := range []struct {
		name string
		keys []string
		err  string
	}{
		{"none", nil, "secretbox: no key; create one with `openssl rand -base64 32`"},
		{"empty", []string{" "}, "secretbox: the key is empty"},
		{"not base64", []string{"not a key!"}, "secretbox: the key is not standard base64"},
		{"16 bytes", []string{short}, "secretbox: the key decodes to 16 bytes, want 32; create one with `openssl rand -base64 32`"},
		{"hex", []string{hexKey}, "decodes to 48 bytes, want 32; it looks like hex (openssl rand -hex)"},
		{"second of two is bad", []string{k, short}, "secretbox: key 2 of 2 decodes to 16 bytes"},
		{"the same key twice", []string{k, " " + k}, "secretbox: key 2 repeats key 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := secretbox.New(tc.keys...)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("New error = %v, want %q", err, tc.err)
			}
			if strings.Contains(err.Error(), short) || strings.Contains(err.Error(), hexKey) {
				t.Fatalf("error %q shows the key", err)
			}
		})
	}
	if _, err := secretbox.New(" " + k + "\n"); err != nil {
		t.Fatalf("New with white space around the key: %v", err)
	}
}

// unsetenv unsets k; call t.Setenv(k, ...) first so that the test restores it.
func unsetenv(k string) error { return os.Unsetenv(k) }

func TestFromEnv(t *testing.T) {
	k1, k2 := secretbox.NewKey(), secretbox.NewKey()
	for _, tc := range []struct {
		name, value string
		set         bool
		err         string
	}{
		{"unset", "", false, "secretbox: HERALD_SECRET_KEY is not set: it holds the key that encrypts secrets at rest; create one with `openssl rand -base64 32`"},
		{"empty", "", true, "HERALD_SECRET_KEY is not set"},
		{"blank", "  ", true, "HERALD_SECRET_KEY is not set"},
		{"one key", k1, true, ""},
		{"two keys with spaces", k2 + ", " + k1, true, ""},
		{"trailing comma", k1 + ",", true, "secretbox: HERALD_SECRET_KEY: key 2 of 2 is empty"},
		{"short", "c2hvcnQ=", true, "secretbox: HERALD_SECRET_KEY: the key decodes to 5 bytes, want 32"},
		{"quoted", `"` + k1 + `"`, true, "secretbox: HERALD_SECRET_KEY: the key is not standard base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.set {
				t.Setenv(secretbox.EnvKey, tc.value)
			} else {
				t.Setenv(secretbox.EnvKey, "x") // restored after the test
				if err := unsetenv(secretbox.EnvKey); err != nil {
					t.Fatal(err)
				}
			}
			b, err := secretbox.FromEnv()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("FromEnv error = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("FromEnv: %v", err)
			}
			sealed, err := b.Seal([]byte("s"), "c")
			if err != nil {
				t.Fatal(err)
			}
			// The first key of the variable seals.
			first := mustBox(t, strings.TrimSpace(strings.Split(tc.value, ",")[0]))
			if got, err := first.Open(sealed, "c"); err != nil || string(got) != "s" {
				t.Fatalf("the first key does not open what FromEnv's box sealed: %v", err)
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	box := mustBox(b, secretbox.NewKey())
	sealed, _ := box.Seal([]byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "sub_1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := box.Open(sealed, "sub_1"); err != nil {
			b.Fatal(err)
		}
	}
}
