// Package serverkit is what the two Go comparison servers share and what neither
// library's examples cover: the command line, the listener, and the drain on SIGTERM.
//
// It owns the set of open WebSocket connections (a mutex-guarded map, used only to
// say "going away" to each at shutdown). Run ends the process: on SIGTERM or SIGINT
// it stops accepting, asks every tracked connection to close with 1001, waits for the
// connections' handlers to return (at most the drain timeout plus one second), logs
// `drained N connections in T` and exits 0. It prints `listening on ADDR` once the
// listener is bound, the line scripts/bench waits for.
package serverkit

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Options are the flags every comparison server takes.
type Options struct {
	// Addr to listen on (--addr).
	Addr string
	// DrainTimeout: how long a connection may take to answer Close 1001 at shutdown.
	DrainTimeout time.Duration
	// Queue: messages a /chat subscriber may fall behind before it is cut.
	Queue int
	// MaxMessage: the largest message read, in bytes (wshub's default: 1 MiB).
	MaxMessage int64
	// History: publications a /ws channel keeps for recovery (gorilla-server only).
	History int
}

// ParseFlags reads the common flags; name is the server's name in usage text.
func ParseFlags(name string) Options {
	var o Options
	flag.StringVar(&o.Addr, "addr", "127.0.0.1:9303", "address to listen on")
	flag.DurationVar(&o.DrainTimeout, "drain-timeout", 10*time.Second, "time for each client to answer Close 1001 at shutdown")
	flag.IntVar(&o.Queue, "queue", 256, "messages a /chat subscriber may fall behind before it is cut (wshub's default)")
	flag.Int64Var(&o.MaxMessage, "max-message", 1<<20, "largest message read, in bytes (wshub's default)")
	flag.IntVar(&o.History, "history", 100, "publications a /ws channel keeps for recovery (wshub's default; gorilla-server only)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "%s: /echo and /chat WebSocket server (benchmark comparison)\n", name)
		flag.PrintDefaults()
	}
	flag.Parse()
	return o
}

// Tracker holds every open connection's "going away" function.
type Tracker struct {
	mu      sync.Mutex
	conns   map[*entry]struct{}
	closing bool
	wg      sync.WaitGroup
}

type entry struct{ goingAway func() }

// NewTracker returns an empty tracker.
func NewTracker() *Tracker {
	return &Tracker{conns: make(map[*entry]struct{})}
}

// Add registers a connection. goingAway sends it Close 1001 (it may block for up to the
// drain timeout; it runs on its own goroutine). The returned func must be called once,
// when the connection's handler is done with it.
func (t *Tracker) Add(goingAway func()) (done func()) {
	e := &entry{goingAway}
	t.mu.Lock()
	if t.closing {
		// Accepted during the drain: told at once, not waited for.
		t.mu.Unlock()
		go goingAway()
		return func() {}
	}
	t.wg.Add(1) // under the lock: never concurrent with Run's Wait
	t.conns[e] = struct{}{}
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		delete(t.conns, e)
		t.mu.Unlock()
		t.wg.Done()
	}
}

// Run serves mux on o.Addr until SIGTERM or SIGINT, then drains the tracked
// connections and exits the process.
func Run(name string, o Options, mux http.Handler, t *Tracker) {
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: listen %s: %v\n", name, o.Addr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "listening on %s\n", ln.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	srv := &http.Server{Handler: mux}
	go func() {
		// Returns when the listener is closed below; upgraded connections are hijacked,
		// so Close does not touch them.
		_ = srv.Serve(ln)
	}()
	<-sig
	started := time.Now()
	_ = srv.Close()
	t.mu.Lock()
	t.closing = true
	n := len(t.conns)
	for e := range t.conns {
		go e.goingAway()
	}
	t.mu.Unlock()
	all := make(chan struct{})
	go func() { t.wg.Wait(); close(all) }()
	suffix := ""
	select {
	case <-all:
	case <-time.After(o.DrainTimeout + time.Second):
		suffix = " (timed out)"
	}
	fmt.Fprintf(os.Stderr, "drained %d connections in %v%s\n", n, time.Since(started), suffix)
	os.Exit(0)
}
