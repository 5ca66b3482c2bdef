package testutil

import (
	"net"
	"testing"
	"time"
)

func TestMosquittoStopStart(t *testing.T) {
	addr, ctl := Mosquitto(t)
	dial := func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("broker not reachable after Mosquitto: %v", err)
	}
	ctl.Stop()
	if err := dial(); err == nil {
		t.Fatal("broker still accepts connections after Stop")
	}
	ctl.Start()
	if err := dial(); err != nil {
		t.Fatalf("broker not reachable after Start: %v", err)
	}
}
