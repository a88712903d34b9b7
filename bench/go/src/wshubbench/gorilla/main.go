// Command gorilla-server: the benchmark's gorilla/websocket comparison, written the way
// gorilla's own examples are.
//
//   - /echo: the echo example's loop (ReadMessage, WriteMessage), one goroutine per
//     connection, default Upgrader.
//   - /chat: the chat example's design: one hub goroutine owns the set of clients and
//     the fan-out (register, unregister and broadcast channels); each client has a read
//     pump (read deadline renewed by pongs) and a write pump (its own send queue, a
//     ping ticker, a write deadline per write). A client whose queue is full is cut,
//     as in the example. Every message goes to every /chat client, the sender included,
//     with its type kept.
//
// One deliberate difference from the chat example: its write pump joins the messages
// queued behind the first into one frame, separated by newlines; here each message is
// its own frame, as wshub and the tokio server send them and as the load generator
// counts them.
//
// /ws: a minimal protocol v1 server for the pub/sub scenarios, see pubsub.go.
//
// Drain on SIGTERM (not in the examples): see serverkit.
package main

import (
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"wshubbench/serverkit"
)

// The chat example's constants.
const (
	// Time allowed to write a message to the peer.
	writeWait = 10 * time.Second
	// Time allowed to read the next pong message from the peer.
	pongWait = 60 * time.Second
	// Send pings to peer with this period. Must be less than pongWait.
	pingPeriod = (pongWait * 9) / 10
)

type message struct {
	typ  int
	data []byte
}

// Hub is the chat example's hub: the only goroutine that touches clients.
type Hub struct {
	clients    map[*Client]bool
	broadcast  chan message
	register   chan *Client
	unregister chan *Client
}

func newHub() *Hub {
	return &Hub{
		broadcast:  make(chan message),
		register:   make(chan *Client),
		unregister: make(chan *Client),
		clients:    make(map[*Client]bool),
	}
}

func (h *Hub) run() {
	for {
		select {
		case client := <-h.register:
			h.clients[client] = true
		case client := <-h.unregister:
			if _, ok := h.clients[client]; ok {
				delete(h.clients, client)
				close(client.send)
			}
		case m := <-h.broadcast:
			for client := range h.clients {
				select {
				case client.send <- m:
				default:
					close(client.send)
					delete(h.clients, client)
				}
			}
		}
	}
}

// Client is a middleman between the websocket connection and the hub.
type Client struct {
	hub  *Hub
	conn *websocket.Conn
	send chan message
}

// readPump pumps messages from the websocket connection to the hub.
func (c *Client) readPump(maxMessage int64, done func()) {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
		done()
	}()
	readLimits(c.conn, maxMessage)
	for {
		typ, data, err := c.conn.ReadMessage()
		if err != nil {
			break
		}
		c.hub.broadcast <- message{typ, data}
	}
}

// readLimits sets up a read pump's connection as the chat example does: a size limit,
// and a read deadline that each pong renews.
func readLimits(conn *websocket.Conn, maxMessage int64) {
	conn.SetReadLimit(maxMessage)
	conn.SetReadDeadline(time.Now().Add(pongWait))
	conn.SetPongHandler(func(string) error { conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
}

// writePump pumps messages from the hub to the websocket connection.
func (c *Client) writePump() { writePump(c.conn, c.send) }

// writePump is the chat example's write pump: it writes what send brings (a Close when
// the hub closes send) and pings every pingPeriod, each write under writeWait. It is
// the only writer of conn (WriteControl aside, which gorilla allows from anywhere).
func writePump(conn *websocket.Conn, send <-chan message) {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		conn.Close()
	}()
	for {
		select {
		case m, ok := <-send:
			conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				// The hub closed the channel.
				conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if err := conn.WriteMessage(m.typ, m.data); err != nil {
				return
			}
		case <-ticker.C:
			conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func goingAway(c *websocket.Conn) func() {
	return func() {
		msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down")
		_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(writeWait))
	}
}

func main() {
	o := serverkit.ParseFlags("gorilla-server")
	t := serverkit.NewTracker()
	hub := newHub()
	go hub.run()

	// The echo example's upgrader: default options.
	echoUpgrader := websocket.Upgrader{}
	// The chat example's upgrader.
	chatUpgrader := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}

	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		c, err := echoUpgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		done := t.Add(goingAway(c))
		defer done()
		c.SetReadLimit(o.MaxMessage)
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				break
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				break
			}
		}
	})
	mux.HandleFunc("/chat", func(w http.ResponseWriter, r *http.Request) {
		conn, err := chatUpgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		client := &Client{hub: hub, conn: conn, send: make(chan message, o.Queue)}
		done := t.Add(goingAway(conn))
		client.hub.register <- client
		// Allow collection of memory referenced by the caller by doing all work in
		// new goroutines.
		go client.writePump()
		go client.readPump(o.MaxMessage, done)
	})
	ps := newPsHub(o.History)
	go ps.run()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := chatUpgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := &psClient{conn: conn, send: make(chan message, o.Queue), subs: make(map[string]bool)}
		done := t.Add(goingAway(conn))
		go writePump(c.conn, c.send)
		go ps.readPump(c, o.MaxMessage, done)
	})
	serverkit.Run("gorilla-server", o, mux, t)
}
