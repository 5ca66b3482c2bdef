package safehttp_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/heraldmesh/herald/platform/safehttp"
)

func ExamplePolicy_CheckURL() {
	p, err := safehttp.ParsePolicy("localhost, 127.0.0.0/8, ::1/128") // as `herald dev` would set HERALD_WEBHOOK_ALLOW
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for _, u := range []string{
		"http://169.254.169.254/latest/meta-data/",
		"https://169.254.169.254/latest/meta-data/",
		"https://[::ffff:10.0.0.1]/hook",
		"https://hooks:secret@example.com/",
		"http://127.0.0.1:3000/hooks",
	} {
		err := p.CheckURL(ctx, u)
		var re *safehttp.RefusedError
		if errors.As(err, &re) {
			fmt.Printf("%s: %s\n", re.Class, err)
			continue
		}
		fmt.Println("ok:", u, err)
	}
	// Output:
	// https-required: refused: plain http is not allowed for host "169.254.169.254"; use https
	// metadata: refused: host "169.254.169.254" is a cloud metadata address
	// private: refused: host "::ffff:10.0.0.1" is a private address
	// userinfo: refused: the URL must not contain a user name or password; send credentials in a header instead
	// ok: http://127.0.0.1:3000/hooks <nil>
}
