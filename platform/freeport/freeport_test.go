package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPickIsBelowTheEphemeralRangeAndFree(t *testing.T) {
	for range 50 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if p < Low || p >= High {
			t.Fatalf("port %d outside [%d, %d)", p, Low, High)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("picked port %d is not free: %v", p, err)
		}
		ln.Close()
	}
}

func TestFreeSeesABoundPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if Free(ln.Addr().(*net.TCPAddr).Port) {
		t.Fatal("a bound port reported free")
	}
}

func TestPickNeverGivesAPortTwiceInAMinute(t *testing.T) {
	seen := map[int]bool{}
	for range 500 {
		p, err := Pick()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d given twice", p)
		}
		seen[p] = true
	}
}
