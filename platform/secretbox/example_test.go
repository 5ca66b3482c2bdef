package secretbox_test

import (
	"errors"
	"fmt"

	"github.com/heraldmesh/herald/platform/secretbox"
)

// A webhook secret sealed for one subscription opens for it and for no
// other.
func Example() {
	box, err := secretbox.New(secretbox.NewKey()) // or secretbox.FromEnv()
	if err != nil {
		panic(err)
	}
	sealed, err := box.Seal([]byte("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "sub_1")
	if err != nil {
		panic(err)
	}
	secret, err := box.Open(sealed, "sub_1")
	fmt.Println(string(secret), err)
	_, err = box.Open(sealed, "sub_2")
	fmt.Println(errors.Is(err, secretbox.ErrOpen))
	// Output:
	// whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw <nil>
	// true
}
