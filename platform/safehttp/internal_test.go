package safehttp

import (
	"errors"
	"net/netip"
	"testing"
)

// TestControl: the second line of defence refuses a socket to anything but
// the checked addresses and port.
func TestControl(t *testing.T) {
	c := control("h.example", []netip.Addr{netip.MustParseAddr("93.184.215.14"), netip.MustParseAddr("2606:4700::1")}, 443)
	for addr, ok := range map[string]bool{
		"93.184.215.14:443":          true,
		"[::ffff:93.184.215.14]:443": true,
		"[2606:4700::1]:443":         true,
		"93.184.215.14:80":           false,
		"10.0.0.1:443":               false,
		"[::1]:443":                  false,
		"garbage":                    false,
	} {
		err := c("tcp4", addr, nil)
		if (err == nil) != ok {
			t.Errorf("control(%s) = %v, want allowed %v", addr, err, ok)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("control(%s) = %v, want ErrRefused", addr, err)
		}
	}
}
