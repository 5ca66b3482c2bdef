package webhook_test

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/heraldmesh/herald/platform/webhook"
)

// A sender signs with both secrets during a rotation; a receiver that
// knows either verifies.
func ExampleSigner_Headers() {
	const oldSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	newSecret := webhook.NewSecret()
	signer, err := webhook.NewSigner(newSecret, oldSecret)
	if err != nil {
		panic(err)
	}
	body := []byte(`{"specversion":"1.0","id":"e1","type":"billing.invoice.paid"}`)
	sent := time.Unix(1674087231, 0)
	h := http.Header{}
	signer.Headers(h, "e1", sent, body)

	receiver, err := webhook.NewVerifier(oldSecret)
	if err != nil {
		panic(err)
	}
	fmt.Println(receiver.Verify(h, body, sent.Add(time.Minute)))
	// Output: <nil>
}

// Verify says why a request fails; errors.Is and errors.As tell the
// reasons apart.
func ExampleVerifier_Verify() {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	signer, _ := webhook.NewSigner(secret)
	verifier, _ := webhook.NewVerifier(secret)
	sent := time.Unix(1674087231, 0)
	body := []byte(`{"a":1,"b":[true,null]}`)
	h := http.Header{}
	signer.Headers(h, "e1", sent, body)

	// The receiver parsed and re-indented the body before verifying.
	err := verifier.Verify(h, []byte("{\n  \"a\": 1,\n  \"b\": [\n    true,\n    null\n  ]\n}"), sent)
	fmt.Println(errors.Is(err, webhook.ErrReserialized))
	fmt.Println(err)

	// The raw body, but an hour late.
	err = verifier.Verify(h, body, sent.Add(time.Hour))
	var skew *webhook.ClockSkewError
	if errors.As(err, &skew) {
		fmt.Println(skew.Skew())
	}
	// Output:
	// true
	// webhook: no signature matched: the body was re-serialized after signing (the signature verifies for the received body compacted); verify the raw request bytes, before any JSON parsing or reformatting
	// -1h0m0s
}

// The public keys of v1a signatures, published for receivers.
func ExampleJWKS() {
	_, public := webhook.NewSigningKey()
	kid, _ := webhook.KeyID(public)
	doc, err := webhook.JWKS(map[string]string{kid: public})
	if err != nil {
		panic(err)
	}
	keys, _ := webhook.ParseJWKS(doc)
	fmt.Println(keys[kid] == public)
	// Output: true
}
