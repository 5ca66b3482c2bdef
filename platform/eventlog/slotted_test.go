package eventlog

import (
	"runtime"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// A client marked as talking to a cluster node is forgotten once it is
// garbage collected: the memory of marked clients does not grow with every
// client a process ever made.
func TestSlottedClientsAreForgotten(t *testing.T) {
	count := func() int {
		n := 0
		slotted.Range(func(any, any) bool { n++; return true })
		return n
	}
	before := count()
	kept := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer kept.Close()
	markSlotted(kept)
	for range 100 {
		c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
		markSlotted(c)
		markSlotted(c) // once is remembered once
		c.Close()
	}
	if layoutOf(kept) != oneNode {
		t.Fatal("a marked client is not known as talking to a cluster node")
	}
	deadline := time.Now().Add(10 * time.Second)
	for count() > before+1 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := count() - before; n != 1 {
		t.Fatalf("%d marked clients remembered after 100 of the 101 were dropped, want 1", n)
	}
	if layoutOf(kept) != oneNode {
		t.Fatal("the client still in use was forgotten")
	}
	runtime.KeepAlive(kept)
}
