package safehttp_test

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/heraldmesh/herald/platform/safehttp"
)

func BenchmarkClassify(b *testing.B) {
	addrs := []netip.Addr{netip.MustParseAddr("93.184.215.14"), netip.MustParseAddr("2606:4700:4700::1111"), netip.MustParseAddr("10.0.0.1")}
	for b.Loop() {
		for _, a := range addrs {
			safehttp.Classify(a)
		}
	}
}

func BenchmarkCheckURL(b *testing.B) {
	r := newResolver()
	r.set("hooks.example.com", "93.184.215.14", "2606:4700:4700::1111")
	p := safehttp.Policy{Resolver: r}
	for b.Loop() {
		if err := p.CheckURL(b.Context(), "https://hooks.example.com/hook"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClientPost: signed-delivery-sized POSTs through the checked
// client to a local receiver, in parallel, on kept-alive connections.
func BenchmarkClientPost(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	r := newResolver()
	r.set("receiver.herald.test", "127.0.0.1")
	p := safehttp.Policy{Resolver: r, Allow: []string{"receiver.herald.test"}}
	c := p.Client(0)
	u := "http://receiver.herald.test:" + port + "/hook"
	body := strings.Repeat("x", 512)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	c.CloseIdleConnections()
}
