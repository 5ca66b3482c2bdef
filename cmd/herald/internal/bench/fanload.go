package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The fan-out benchmark's SSE clients live in loader processes: one
// process holds at most 19,900 connections under this machine's
// 20,000-file limit, so two edges with 19,900 clients each need two. The
// coordinator drives each loader with one JSON command per line on its
// stdin and reads one JSON answer per line from its stdout.
//
// A loader's clients are the same for Herald and its peers: raw HTTP/1.1
// GETs from 127.0.0.x source addresses (past the ephemeral port range of
// one address), reading SSE lines. Every data line that carries
// `"hseq":<n>` and `"hts":<unix ns>` is event n, stamped by the publisher
// when it sent it: its latency is its arrival time minus that stamp
// (one clock: one machine). Heartbeats, comments and other events are
// skipped.

// loaderCmd is one command to a loader.
type loaderCmd struct {
	Op string `json:"op"` // connect, wait, collect, drop (close every client)
	// connect: N more clients, each GET URL with Headers, from the
	// source addresses Src in turn, DialConcurrency at a time.
	N               int               `json:"n,omitempty"`
	URL             string            `json:"url,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
	Src             []string          `json:"src,omitempty"`
	DialConcurrency int               `json:"dial_concurrency,omitempty"`
	// wait: until every open client has every event From..To, or
	// TimeoutMs.
	From      int64 `json:"from,omitempty"`
	To        int64 `json:"to,omitempty"`
	TimeoutMs int64 `json:"timeout_ms,omitempty"`
}

// loaderAnswer is a loader's answer to one command.
type loaderAnswer struct {
	Error string `json:"error,omitempty"`
	// Open clients; Closed: clients whose stream ended since they were
	// connected (by the server or an error).
	Open   int    `json:"open"`
	Closed int    `json:"closed,omitempty"`
	Ended  string `json:"ended,omitempty"` // why the first one ended
	// wait: clients that had every event by the deadline.
	Complete int `json:"complete,omitempty"`
	// collect: latencies in µs of every first receipt since the last
	// collect, and receipts of an event already received.
	SamplesUs  []int32 `json:"samples_us,omitempty"`
	Duplicates int     `json:"duplicates,omitempty"`
}

// loader holds the SSE clients of one process.
type loader struct {
	mu      sync.Mutex
	clients []*sseClient
	closed  atomic.Int64
	ended   atomic.Pointer[string]
	srcNext int
}

type sseClient struct {
	conn net.Conn
	mu   sync.Mutex
	seen bitset
	lat  []int32
	dups int
	done atomic.Bool
}

// bitset holds the event numbers a client received.
type bitset []uint64

func (b *bitset) set(i int64) (was bool) {
	w := int(i >> 6)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w-len(*b)+1)...)
	}
	m := uint64(1) << (i & 63)
	was = (*b)[w]&m != 0
	(*b)[w] |= m
	return was
}

// has reports whether every number in [from, to] is in b.
func (b bitset) has(from, to int64) bool {
	for i := from; i <= to; {
		w := int(i >> 6)
		if w >= len(b) {
			return false
		}
		if i&63 == 0 && i+63 <= to {
			if b[w] != ^uint64(0) {
				return false
			}
			i += 64
			continue
		}
		if b[w]&(1<<(i&63)) == 0 {
			return false
		}
		i++
	}
	return true
}

func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// RunLoader serves loader commands from in until it ends, answering on
// out. It is the hidden `herald bench fanout-loader`.
func RunLoader(in io.Reader, out io.Writer) error {
	l := &loader{}
	defer l.closeAll()
	dec := json.NewDecoder(in)
	enc := json.NewEncoder(out)
	for {
		var c loaderCmd
		if err := dec.Decode(&c); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		a := l.do(c)
		if err := enc.Encode(a); err != nil {
			return err
		}
	}
}

func (l *loader) do(c loaderCmd) loaderAnswer {
	var a loaderAnswer
	switch c.Op {
	case "connect":
		if err := l.connect(c); err != nil {
			a.Error = err.Error()
		}
	case "wait":
		a.Complete = l.wait(c.From, c.To, time.Duration(c.TimeoutMs)*time.Millisecond)
	case "collect":
		a.SamplesUs, a.Duplicates = l.collect()
	case "drop":
		l.closeAll()
	default:
		a.Error = fmt.Sprintf("unknown op %q", c.Op)
	}
	l.mu.Lock()
	a.Open = len(l.clients) - int(l.closed.Load())
	l.mu.Unlock()
	a.Closed = int(l.closed.Load())
	if e := l.ended.Load(); e != nil {
		a.Ended = *e
	}
	return a
}

// connect opens c.N clients; it returns once each has its response
// headers (status 200), or the first failure.
func (l *loader) connect(c loaderCmd) error {
	u, err := url.Parse(c.URL)
	if err != nil {
		return err
	}
	reqText := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n", u.RequestURI(), u.Host)
	for k, v := range c.Headers {
		reqText += k + ": " + v + "\r\n"
	}
	req := []byte(reqText + "\r\n")
	conc := max(1, c.DialConcurrency)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var first atomic.Pointer[error]
	for i := range c.N {
		if first.Load() != nil {
			break
		}
		src := ""
		if len(c.Src) > 0 {
			l.mu.Lock()
			src = c.Src[l.srcNext%len(c.Src)]
			l.srcNext++
			l.mu.Unlock()
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cl, err := openSSE(u.Host, src, req)
			if err != nil {
				err = fmt.Errorf("client %d: %w", i, err)
				first.CompareAndSwap(nil, &err)
				return
			}
			l.mu.Lock()
			l.clients = append(l.clients, cl.c)
			l.mu.Unlock()
			go l.read(cl)
		})
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return *e
	}
	return nil
}

type openClient struct {
	c     *sseClient
	lines *bufio.Reader
}

func openSSE(host, src string, req []byte) (*openClient, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	conn, err := d.Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(req); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 4096)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(res.Body, 300))
		conn.Close()
		return nil, fmt.Errorf("status %d: %s", res.StatusCode, bytes.TrimSpace(body))
	}
	_ = conn.SetDeadline(time.Time{})
	oc := &openClient{c: &sseClient{conn: conn}, lines: br}
	if len(res.TransferEncoding) > 0 {
		// A chunked body has its own framing, under a buffer of its own;
		// an identity body (Herald's HTTP/1 streams) is read straight from
		// the connection's buffer.
		oc.lines = bufio.NewReaderSize(res.Body, 4096)
	}
	return oc, nil
}

var (
	seqKey = []byte(`"hseq":`)
	tsKey  = []byte(`"hts":`)
)

// read reads a client's stream until it ends, recording every event.
func (l *loader) read(oc *openClient) {
	c, lines := oc.c, oc.lines
	for {
		line, err := lines.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if !c.done.Swap(true) { // not closed by closeAll
				l.closed.Add(1)
				why := err.Error()
				l.ended.CompareAndSwap(nil, &why)
			}
			return
		}
		if !bytes.HasPrefix(line, []byte("data:")) {
			continue
		}
		now := time.Now().UnixNano()
		seq, ok1 := field(line, seqKey)
		ts, ok2 := field(line, tsKey)
		if !ok1 || !ok2 {
			continue
		}
		c.mu.Lock()
		if c.seen.set(seq) {
			c.dups++
		} else {
			c.lat = append(c.lat, int32(min((now-ts)/1000, 1<<31-1)))
		}
		c.mu.Unlock()
	}
}

// field finds key in line and parses the integer after it.
func field(line, key []byte) (int64, bool) {
	i := bytes.Index(line, key)
	if i < 0 {
		return 0, false
	}
	j := i + len(key)
	for j < len(line) && line[j] == ' ' {
		j++
	}
	k := j
	for k < len(line) && line[k] >= '0' && line[k] <= '9' {
		k++
	}
	n, err := strconv.ParseInt(string(line[j:k]), 10, 64)
	return n, err == nil
}

// wait waits until every open client has events from..to, or timeout; it
// returns how many have.
func (l *loader) wait(from, to int64, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		l.mu.Lock()
		clients := l.clients
		l.mu.Unlock()
		complete, open := 0, 0
		for _, c := range clients {
			if c.done.Load() {
				continue
			}
			open++
			c.mu.Lock()
			if c.seen.has(from, to) {
				complete++
			}
			c.mu.Unlock()
		}
		if complete == open || time.Now().After(deadline) {
			return complete
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (l *loader) collect() ([]int32, int) {
	l.mu.Lock()
	clients := l.clients
	l.mu.Unlock()
	var out []int32
	dups := 0
	for _, c := range clients {
		c.mu.Lock()
		out = append(out, c.lat...)
		c.lat = c.lat[:0]
		dups += c.dups
		c.dups = 0
		c.mu.Unlock()
	}
	return out, dups
}

func (l *loader) closeAll() {
	l.mu.Lock()
	clients := l.clients
	l.clients = nil
	l.mu.Unlock()
	for _, c := range clients {
		c.done.Store(true)
		c.conn.Close()
	}
	l.closed.Store(0)
}

// loaderProc is the coordinator's side of one loader.
type loaderProc struct {
	name string
	cmd  *exec.Cmd // nil: in this process
	enc  *json.Encoder
	dec  *json.Decoder
	mu   sync.Mutex
	stop func()
}

// startLoader starts a loader: a child process running argv (the hidden
// `herald bench fanout-loader`), or with no argv one in this process (the
// tests' small runs).
func startLoader(name string, argv []string) (*loaderProc, error) {
	lp := &loaderProc{name: name}
	if len(argv) == 0 {
		cin, lin := io.Pipe()
		lout, cout := io.Pipe()
		done := make(chan struct{})
		go func() {
			_ = RunLoader(cin, cout)
			cout.Close()
			close(done)
		}()
		lp.enc, lp.dec = json.NewEncoder(lin), json.NewDecoder(lout)
		lp.stop = func() { lin.Close(); <-done }
		return lp, nil
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the load client %s: %w", argv[0], err)
	}
	lp.cmd = cmd
	lp.enc, lp.dec = json.NewEncoder(in), json.NewDecoder(bufio.NewReaderSize(out, 1<<20))
	lp.stop = func() {
		in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	return lp, nil
}

func (lp *loaderProc) pid() int {
	if lp.cmd == nil {
		return os.Getpid()
	}
	return lp.cmd.Process.Pid
}

// call sends a command and reads its answer; ctx ending kills nothing but
// returns at once (the answer is then lost with the run).
func (lp *loaderProc) call(ctx context.Context, c loaderCmd) (loaderAnswer, error) {
	type result struct {
		a   loaderAnswer
		err error
	}
	ch := make(chan result, 1)
	go func() {
		lp.mu.Lock()
		defer lp.mu.Unlock()
		var r result
		if r.err = lp.enc.Encode(c); r.err == nil {
			r.err = lp.dec.Decode(&r.a)
		}
		if r.err == nil && r.a.Error != "" {
			r.err = fmt.Errorf("load client %s: %s: %s", lp.name, c.Op, r.a.Error)
		}
		ch <- r
	}()
	select {
	case r := <-ch:
		return r.a, r.err
	case <-ctx.Done():
		return loaderAnswer{}, ctx.Err()
	}
}
