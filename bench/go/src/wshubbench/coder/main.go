// Command coder-server: the benchmark's coder/websocket comparison (Debian packages it
// under its first import path, nhooyr.io/websocket), written the way that library's own
// examples are.
//
//   - /echo: the echo example: one goroutine per connection, each message streamed back
//     with Reader, Writer and io.Copy. (The example also rate-limits each connection and
//     bounds each message by a 10 s context; neither is kept: the first would cap the
//     benchmark, the second would close an idle connection after 10 s.)
//   - /chat: the chat example's chatServer: a mutex-guarded set of subscribers, each with
//     its own message queue; publish offers the message to every queue without blocking
//     and closes a subscriber whose queue is full ("too slow to keep up"); each
//     connection's handler goroutine writes its queue with a 5 s write timeout. Where
//     the example takes publications by HTTP POST, here a second goroutine per
//     connection reads them from the WebSocket, so every message goes to every /chat
//     client, the sender included, with its type kept. The queue holds --queue messages
//     (256 by default, as wshub's and gorilla's example; coder's example uses 16).
//
// Drain on SIGTERM (not in the examples): see serverkit.
package main

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"

	"nhooyr.io/websocket"

	"wshubbench/serverkit"
)

type message struct {
	typ  websocket.MessageType
	data []byte
}

// chatServer is the chat example's: it owns the subscriber set, under its mutex.
type chatServer struct {
	subscriberMessageBuffer int
	subscribersMu           sync.Mutex
	subscribers             map[*subscriber]struct{}
}

type subscriber struct {
	msgs      chan message
	closeSlow func()
}

func (cs *chatServer) subscribe(ctx context.Context, c *websocket.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &subscriber{
		msgs: make(chan message, cs.subscriberMessageBuffer),
		closeSlow: func() {
			c.Close(websocket.StatusPolicyViolation, "connection too slow to keep up with messages")
		},
	}
	cs.addSubscriber(s)
	defer cs.deleteSubscriber(s)
	// Publications arrive on the WebSocket itself (the example's POST handler).
	go func() {
		defer cancel()
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			cs.publish(message{typ, data})
		}
	}()
	for {
		select {
		case m := <-s.msgs:
			if err := writeTimeout(ctx, time.Second*5, c, m); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (cs *chatServer) publish(m message) {
	cs.subscribersMu.Lock()
	defer cs.subscribersMu.Unlock()
	for s := range cs.subscribers {
		select {
		case s.msgs <- m:
		default:
			go s.closeSlow()
		}
	}
}

func (cs *chatServer) addSubscriber(s *subscriber) {
	cs.subscribersMu.Lock()
	cs.subscribers[s] = struct{}{}
	cs.subscribersMu.Unlock()
}

func (cs *chatServer) deleteSubscriber(s *subscriber) {
	cs.subscribersMu.Lock()
	delete(cs.subscribers, s)
	cs.subscribersMu.Unlock()
}

func writeTimeout(ctx context.Context, timeout time.Duration, c *websocket.Conn, m message) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return c.Write(ctx, m.typ, m.data)
}

// echo is the echo example's: one message, streamed back.
func echo(ctx context.Context, c *websocket.Conn) error {
	typ, r, err := c.Reader(ctx)
	if err != nil {
		return err
	}
	w, err := c.Writer(ctx, typ)
	if err != nil {
		return err
	}
	if _, err = io.Copy(w, r); err != nil {
		return err
	}
	return w.Close()
}

func goingAway(c *websocket.Conn) func() {
	return func() { c.Close(websocket.StatusGoingAway, "server shutting down") }
}

func main() {
	o := serverkit.ParseFlags("coder-server")
	t := serverkit.NewTracker()
	cs := &chatServer{subscriberMessageBuffer: o.Queue, subscribers: make(map[*subscriber]struct{})}

	// accept wraps a handler: the example's Accept and deferred Close, the read limit,
	// and registration for the drain.
	accept := func(handle func(ctx context.Context, c *websocket.Conn)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close(websocket.StatusInternalError, "the sky is falling")
			done := t.Add(goingAway(c))
			defer done()
			c.SetReadLimit(o.MaxMessage)
			handle(r.Context(), c)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", accept(func(ctx context.Context, c *websocket.Conn) {
		for {
			if err := echo(ctx, c); err != nil {
				return
			}
		}
	}))
	mux.HandleFunc("/chat", accept(func(ctx context.Context, c *websocket.Conn) {
		_ = cs.subscribe(ctx, c)
	}))
	serverkit.Run("coder-server", o, mux, t)
}
