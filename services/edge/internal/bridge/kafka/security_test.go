package kafka

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/heraldmesh/herald/platform/testutil"
	"github.com/heraldmesh/herald/services/edge/internal/bridge"
)

// The bridge authenticates with SASL PLAIN, SCRAM-SHA-256 and
// SCRAM-SHA-512, the secret being the password: its sink writes and its
// source reads; a wrong password delivers nothing.
func TestSASL(t *testing.T) {
	const topic = "secured"
	users := map[string][2]string{
		"PLAIN":         {"alice", "alice-pw"},
		"SCRAM-SHA-256": {"bob", "bob-pw"},
		"SCRAM-SHA-512": {"carol", "carol-pw"},
	}
	var opts []kfake.Opt
	opts = append(opts, kfake.EnableSASL())
	for mech, u := range users {
		opts = append(opts, kfake.Superuser(mech, u[0], u[1]))
	}
	k := startCluster(t, 1, []string{topic}, opts...)
	sent := 0
	for mech, u := range users {
		t.Run(mech, func(t *testing.T) {
			cfg := func(dir bool, secret string) bridge.Config {
				d := sinkDir
				if !dir {
					d = sourceDir
				}
				c := kafkaCfg(k.addr, topic, d, false)
				c.Bridge.GetKafka().SaslMechanism = mech
				c.Bridge.GetKafka().Username = u[0]
				c.Secret = secret
				c.Name = "orders-" + u[0] // a group of its own
				return c
			}
			s := testSink(t, cfg(true, u[1]), options{})
			for i, err := range sendAll(t, s, messages(sent, 3, 3), 3) {
				if err != nil {
					t.Fatalf("done(%d): %v", i, err)
				}
			}
			sent += 3

			src := testSource(t, cfg(false, u[1]))
			c := &collector{}
			runSource(t, src, 100, c.publish)
			testutil.Eventually(t, testTimeout, func() bool { return len(c.records(false)) >= sent }, "the source reads what the sinks wrote")

			bad := testSink(t, cfg(true, "wrong"), options{deliveryTimeout: time.Second})
			for i, err := range sendAll(t, bad, messages(100, 2, 1), 2) {
				if err == nil {
					t.Fatalf("done(%d) with a wrong password: nil", i)
				}
			}
		})
	}
}

// With tls set the bridge speaks TLS, checking the broker's certificate.
func TestTLS(t *testing.T) {
	const topic = "secured"
	cert, pool := selfSigned(t)
	k := startCluster(t, 1, []string{topic}, kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	cfg := kafkaCfg(k.addr, topic, sinkDir, false)
	cfg.Bridge.GetKafka().Tls = true

	s := testSink(t, cfg, options{rootCAs: pool})
	for i, err := range sendAll(t, s, messages(0, 3, 3), 3) {
		if err != nil {
			t.Fatalf("done(%d): %v", i, err)
		}
	}
	// Not trusted by the system's roots: nothing goes.
	untrusted := testSink(t, cfg, options{deliveryTimeout: time.Second})
	for i, err := range sendAll(t, untrusted, messages(0, 1, 1), 1) {
		if err == nil {
			t.Fatalf("done(%d) to an untrusted broker: nil", i)
		}
	}
}

// selfSigned is a certificate for 127.0.0.1 and the pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kfake"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}
