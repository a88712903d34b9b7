// A minimal protocol v1 /ws (issue #11, docs/protocol.md) in the chat example's style, so
// that the load generator's pubsub and resume-storm scenarios can be proven, and compared,
// before wshub's own /ws exists: sub (with since: recovery from history), unsub, pub (with
// an ack that carries the offset), per-channel epoch, offsets and a history of the last
// --history publications. Not covered: history's TTL, idempotency keys, the history op,
// channel-name validation beyond non-empty, limits.
//
// Ownership as in the chat example: one goroutine (psHub.run) owns every channel's state
// and every subscription; read pumps send it commands, it answers on each client's send
// queue (a client whose queue is full is cut), and write pumps write. Because that one
// goroutine sequences publications and takes the snapshot for a sub reply, the reply and
// the pushes that follow join with no gap and no duplicate.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/gorilla/websocket"
)

type psPos struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

type psCmd struct {
	ID    *uint64         `json:"id"`
	Op    string          `json:"op"`
	Ch    string          `json:"ch"`
	Since *psPos          `json:"since"`
	Data  json.RawMessage `json:"data"`
}

// The server's frames are structs, not maps, so that their fields come in wshub's order
// (encoding/json sorts a map's keys): a client that scans bytes, as the pubsub branch's
// load generator does, reads them too.

type psPub struct {
	Ch     string          `json:"ch"`
	Offset uint64          `json:"offset"`
	Data   json.RawMessage `json:"data"`
}

type psPush struct {
	Push   string          `json:"push"`
	Ch     string          `json:"ch"`
	Offset uint64          `json:"offset"`
	Data   json.RawMessage `json:"data"`
}

type psSubOK struct {
	Epoch     string  `json:"epoch"`
	Offset    uint64  `json:"offset"`
	Pubs      []psPub `json:"pubs"`
	Recovered *bool   `json:"recovered,omitempty"`
}

type psReply struct {
	ID uint64      `json:"id"`
	OK interface{} `json:"ok"`
}

type psErr struct {
	Code int    `json:"code"`
	Msg  string `json:"msg"`
}

type psErrReply struct {
	ID  *uint64 `json:"id,omitempty"`
	Err psErr   `json:"err"`
}

type psChannel struct {
	epoch string
	top   uint64
	hist  []psPub // the last historySize publications, oldest first
	subs  map[*psClient]bool
}

type psClient struct {
	conn *websocket.Conn
	send chan message
	subs map[string]bool
	gone bool
}

type psReq struct {
	c   *psClient
	raw []byte
}

type psHub struct {
	historySize int
	channels    map[string]*psChannel
	reqs        chan psReq
	unregister  chan *psClient
}

func newPsHub(historySize int) *psHub {
	return &psHub{
		historySize: historySize,
		channels:    make(map[string]*psChannel),
		reqs:        make(chan psReq),
		unregister:  make(chan *psClient),
	}
}

func newEpoch() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// deliver queues a frame for c, or cuts c when its queue is full.
func (h *psHub) deliver(c *psClient, frame []byte) {
	if c.gone {
		return
	}
	select {
	case c.send <- message{websocket.TextMessage, frame}:
	default:
		h.drop(c)
	}
}

func (h *psHub) drop(c *psClient) {
	if c.gone {
		return
	}
	c.gone = true
	for name := range c.subs {
		if ch := h.channels[name]; ch != nil {
			delete(ch.subs, c)
		}
	}
	close(c.send)
}

func mustJSON(v interface{}) []byte {
	b, _ := json.Marshal(v)
	return b
}

func reply(id uint64, ok interface{}) []byte {
	return mustJSON(psReply{id, ok})
}

func replyErr(id *uint64, code int, msg string) []byte {
	return mustJSON(psErrReply{id, psErr{code, msg}})
}

func (h *psHub) channel(name string) *psChannel {
	ch := h.channels[name]
	if ch == nil {
		ch = &psChannel{epoch: newEpoch(), subs: make(map[*psClient]bool)}
		h.channels[name] = ch
	}
	return ch
}

func (h *psHub) handle(c *psClient, raw []byte) {
	var cmd psCmd
	if err := json.Unmarshal(raw, &cmd); err != nil || cmd.ID == nil || *cmd.ID == 0 {
		h.deliver(c, replyErr(nil, 1, "not a command with a valid id"))
		return
	}
	id := *cmd.ID
	if cmd.Ch == "" {
		h.deliver(c, replyErr(cmd.ID, 1, "missing ch"))
		return
	}
	switch cmd.Op {
	case "sub":
		if c.subs[cmd.Ch] {
			h.deliver(c, replyErr(cmd.ID, 2, "already subscribed"))
			return
		}
		ch := h.channel(cmd.Ch)
		ok := psSubOK{Epoch: ch.epoch, Offset: ch.top, Pubs: []psPub{}}
		if s := cmd.Since; s != nil {
			oldest := ch.top - uint64(len(ch.hist)) // offsets after this one are in history
			recovered := s.Epoch == ch.epoch && s.Offset >= oldest && s.Offset <= ch.top
			ok.Recovered = &recovered
			if recovered {
				ok.Pubs = ch.hist[s.Offset-oldest:]
			}
		}
		c.subs[cmd.Ch] = true
		ch.subs[c] = true
		h.deliver(c, reply(id, ok))
	case "unsub":
		if !c.subs[cmd.Ch] {
			h.deliver(c, replyErr(cmd.ID, 2, "not subscribed"))
			return
		}
		delete(c.subs, cmd.Ch)
		delete(h.channels[cmd.Ch].subs, c)
		h.deliver(c, reply(id, struct{}{}))
	case "pub":
		if len(cmd.Data) == 0 {
			h.deliver(c, replyErr(cmd.ID, 1, "missing data"))
			return
		}
		ch := h.channel(cmd.Ch)
		ch.top++
		p := psPub{Ch: cmd.Ch, Offset: ch.top, Data: append(json.RawMessage(nil), cmd.Data...)}
		if len(ch.hist) == h.historySize {
			ch.hist = append(ch.hist[:0:0], ch.hist[1:]...)
		}
		ch.hist = append(ch.hist, p)
		push := mustJSON(psPush{"pub", p.Ch, p.Offset, p.Data})
		for s := range ch.subs {
			h.deliver(s, push)
		}
		h.deliver(c, reply(id, psPos{ch.epoch, ch.top}))
	default:
		h.deliver(c, replyErr(cmd.ID, 1, "unknown op"))
	}
}

func (h *psHub) run() {
	for {
		select {
		case c := <-h.unregister:
			h.drop(c)
		case r := <-h.reqs:
			h.handle(r.c, r.raw)
		}
	}
}

// readPump hands every text frame to the hub as a command; a binary frame gets Close
// 1003, as the protocol says.
func (h *psHub) readPump(c *psClient, maxMessage int64, done func()) {
	defer func() {
		h.unregister <- c
		c.conn.Close()
		done()
	}()
	readLimits(c.conn, maxMessage)
	for {
		typ, data, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		if typ != websocket.TextMessage {
			msg := websocket.FormatCloseMessage(websocket.CloseUnsupportedData, "text frames only")
			_ = c.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(writeWait))
			return
		}
		h.reqs <- psReq{c, data}
	}
}
