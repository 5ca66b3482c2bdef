// Package freeport picks a free TCP port on 127.0.0.1 for a server that
// binds it a moment later (a redis-server child, a service whose address
// its peers must know before it listens).
//
// It picks below Linux's ephemeral range (32768 and up), from which the
// kernel gives every outgoing connection its local port: a port of that
// range, free when picked, is now and then taken by one of the thousands
// of connections the processes beside make before the server binds it
// ("address already in use"). port+10000, a Redis Cluster node's bus port,
// stays below the range too.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"
)

// Low and High bound the ports Pick returns: [Low, High).
const (
	Low  = 12000
	High = 22700
)

// Pick returns a port of [Low, High) that is free on 127.0.0.1 now and
// that this process was not given in the last minute (two servers starting
// side by side would otherwise now and then get the same one before either
// bound it), and one the kernel picked if none is found in 200 tries.
func Pick() (int, error) {
	for range 200 {
		port := Low + rand.IntN(High-Low)
		if given.claim(port) && Free(port) {
			return port, nil
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// given remembers the ports Pick gave, for a minute.
var given = &recent{at: map[int]time.Time{}}

type recent struct {
	mu sync.Mutex
	at map[int]time.Time
}

// claim marks port given and reports whether it was not already.
func (r *recent) claim(port int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if t, ok := r.at[port]; ok && now.Sub(t) < time.Minute {
		return false
	}
	if len(r.at) > 1000 {
		for p, t := range r.at {
			if now.Sub(t) >= time.Minute {
				delete(r.at, p)
			}
		}
	}
	r.at[port] = now
	return true
}

// Addr is Pick as a 127.0.0.1:port address.
func Addr() (string, error) {
	p, err := Pick()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// Free reports whether port can be bound on 127.0.0.1 now.
func Free(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
