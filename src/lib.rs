//! # wshub: a blocking WebSocket server and client
//!
//! wshub serves WebSocket clients with plain OS threads: no async runtime, no polling.
//! Each client has a reader thread blocked in a socket read and a writer thread blocked
//! on its queue; one hub thread owns the registry of clients and fans broadcasts out;
//! `crossbeam-channel` carries everything between them. It is meant to be run on a small
//! box, embedded in an ordinary threaded program, and read.
//!
//! ## Who owns what
//!
//! ```text
//!                        TcpListener
//!                            |  accept() (blocking)
//!                    +---------------+   past max_connections   +-----------------+
//!                    | accept thread |------------------------->| overflow thread |
//!                    +---------------+  503 at once, then up to +-----------------+
//!                            |          64 sockets to close      reads, then closes
//!                            | spawns one per client
//!                            v
//!   client ==bytes==> +---------------+  HubMsg (bounded 16384,   +------------+
//!                     | reader thread |  a byte budget, 8 broad-  | hub thread |
//!                     |               |  casts per connection):   |            |
//!                     |               |  Register / Broadcast /   |            |
//!                     |  handshake,   |  Command / Unregister --> |  owns the  |
//!                     |  tungstenite  |                           |  registry, |
//!                     |  read(), your |  Ctrl (bounded 8):        |  channels, |
//!                     |  Handler      |  Pong/Close replies,      |  pings all |
//!                     +---------------+  Close, Finish            +------------+
//!                            |  |             |                        | broadcasts, /ws
//!                            |  |             |                        | replies and pushes,
//!                            |  |             |                        | pings: nobody writing?
//!                            |  |             |                        | send now, else queue
//!                            |  +--- data ----|------> WireFrame queue (256, 4 MiB)
//!                            |   (echo, send) v              |        |
//!                            |          +---------------+ <--+        |
//!   client <==bytes======================| writer thread |<-- write lock (one writer at
//!                            | on demand | blocking      |    a time; has a Close gone
//!                            +---------->| writes        |    out?) ---+
//!                                        +---------------+
//!
//!   shutdown (ctrlc / ShutdownHandle) -> drain: stop accept -> hub: Close 1001 to all
//!   (after their queues) -> wait up to drain_timeout -> cut the rest -> join everything
//! ```
//!
//! - The **accept thread** owns the listener; it blocks in `accept()` and spawns a
//!   reader per client. Shutdown wakes it by connecting to it.
//! - A **reader thread** owns one client's read side and protocol state. It reads the
//!   HTTP request head itself ([`Request`]: plain-HTTP resources such as `/healthz`,
//!   `/metrics`, the demo page and `POST /api/publish` are answered there, and refusals
//!   such as `404`, `426`, `403`), then runs tungstenite's `read()` with the idle timeout
//!   as the socket timeout, and calls your [`Handler`] for each message.
//! - A **writer thread** makes every blocking write to one client's socket, and runs
//!   only while frames wait for that socket: it is started when the first one has to
//!   wait and ends after `writer_idle` with nothing to write, so an idle connection has
//!   none. It is fed by a bounded data queue and a small control channel (tungstenite's
//!   Pong and Close replies come through it when they cannot be written at once), so
//!   frames never interleave and a broadcast reaches an idle client at once.
//! - The **hub thread** owns the registry. A broadcast is encoded once and offered to
//!   every member: written at once when nobody is writing to the member and its socket
//!   has room (a non-blocking send under the connection's write lock, so no thread is
//!   woken), else queued without waiting (and a writer started for it if none runs). A full queue marks a slow consumer, which is cut while
//!   everyone else carries on. The hub also pings every connection once per
//!   `ping_interval` the same way, so an idle connection's one thread sleeps until its client
//!   sends something (its Pong, at the least). It also owns the channels of `/ws`
//!   ([`pubsub`]): it executes every `sub`, `pub`, `unsub`, `history`, `hello` and
//!   `presence` command, so it is each channel's sequencer, and offsets, history, fan-out
//!   and join/leave pushes agree by construction. Who a client is and what it may do
//!   ([`pubsub::auth::Authorizer`]) is decided on its reader thread before a command
//!   reaches the hub.
//!
//! Each of those lives in a module of its own name under `src/server/`: `accept`,
//! `connection`, `writer`, `hub` (with `commands`, its `/ws` side), `shutdown`; the
//! I/O-free rules they apply sit in `registry` and, under `src/ws/`, `handshake`,
//! `keepalive`, `close_policy`, `rate_limit`, `utf8_guard` and `wire`, and the channel
//! state in [`pubsub`], each with unit tests and no sockets.
//!
//! ## Why threads
//!
//! A blocked thread costs its stack pages and a kernel task, and nothing else: it uses
//! no CPU until the kernel wakes it. An idle client costs its threads' touched stack
//! pages, its read buffer and the kernel's socket (`docs/benchmarks.md` gives the
//! figures), and the code reads top to bottom. The price is a thread per client (a
//! second one, its writer, only while frames wait for its socket): waking a thread costs
//! more than writing a small frame (so the hub writes broadcasts itself when nobody is
//! writing to a client), and the kernel's limits bound the count (`vm.max_map_count`
//! allows about 15 000 connections by default; `pid_max`, 32768, about 30 000). Past
//! that, an async server is the better tool.
//!
//! ## Tutorial: embed a server
//!
//! Start a server on a free port, talk to it, and shut it down:
//!
//! ```
//! use wshub::{Config, Message, Server};
//!
//! let mut config = Config::default();
//! config.addr = "127.0.0.1:0".parse().unwrap(); // port 0: any free port
//! let server = Server::start(config).expect("start");
//! let url = format!("ws://{}/echo", server.local_addr());
//!
//! // Any WebSocket client will do; tungstenite's blocking one is at hand.
//! let (mut ws, _) = tungstenite::connect(url.as_str()).expect("connect");
//! ws.send(Message::text("hello")).unwrap();
//! assert_eq!(ws.read().unwrap(), Message::text("hello"));
//!
//! // Drain on another thread: everything queued goes out, then Close 1001, and the
//! // drain waits for the client's reply (tungstenite sends it while we read).
//! let drain = std::thread::spawn(move || server.shutdown());
//! loop {
//!     match ws.read() {
//!         Ok(Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1001),
//!         Ok(_) => {}
//!         Err(_) => break, // the server closed the connection after the handshake
//!     }
//! }
//! drop(ws);
//! let report = drain.join().unwrap();
//! assert_eq!(report.connections, 1);
//! ```
//!
//! Add your own route with a [`Handler`] (any `Fn(&Connection, Message)` closure is
//! one), and broadcast from your own threads through the [`Hub`]:
//!
//! ```
//! use wshub::{Config, Connection, Message, Server};
//!
//! let mut config = Config::default();
//! config.addr = "127.0.0.1:0".parse().unwrap();
//! let server = Server::builder(config)
//!     .route("/news", |conn: &Connection, msg: Message| {
//!         // Runs on this connection's reader thread: reply to the sender only.
//!         let _ = conn.send(msg);
//!     })
//!     .start()
//!     .expect("start");
//!
//! let url = format!("ws://{}/news", server.local_addr());
//! let (mut ws, _) = tungstenite::connect(url.as_str()).expect("connect");
//! ws.send(Message::text("ping")).unwrap();
//! assert_eq!(ws.read().unwrap(), Message::text("ping")); // registered by now
//!
//! let hub = server.hub();
//! std::thread::spawn(move || hub.broadcast("/news", Message::text("extra!")))
//!     .join()
//!     .unwrap()
//!     .unwrap();
//! assert_eq!(ws.read().unwrap(), Message::text("extra!"));
//! drop(ws); // the client leaves; its connection ends on its own
//! server.shutdown();
//! ```
//!
//! To stop from a signal or another thread, keep a [`ShutdownHandle`] and call
//! [`Server::wait`] on the thread that should do the draining; `examples/embed.rs` is a
//! complete program. A program that exits as soon as the drain is over, as `wshub serve`
//! does, can call [`Server::wait_before_exit`] instead, which leaves the stacks of the
//! threads that served the connections to the exit rather than joining them one by one.
//!
//! ## Channels: `/ws`
//!
//! `/ws` speaks protocol v1 (`docs/protocol.md`): JSON commands to subscribe, publish
//! with an acknowledgement, read history and resume after a reconnect with nothing lost.
//! An embedding program publishes from any thread with [`Hub::publish`]:
//!
//! ```
//! use serde_json::{Value, json};
//! use wshub::{Config, Message, Server};
//!
//! let mut config = Config::default();
//! config.addr = "127.0.0.1:0".parse().unwrap();
//! let server = Server::start(config).expect("start");
//! let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws", server.local_addr())).unwrap();
//! fn json_of(msg: Message) -> Value {
//!     serde_json::from_str(msg.to_text().unwrap()).unwrap()
//! }
//!
//! ws.send(Message::text(r#"{"id":1,"op":"sub","ch":"news"}"#)).unwrap();
//! let reply = json_of(ws.read().unwrap());
//! assert_eq!(reply["ok"]["offset"], 0); // a new channel, nothing published yet
//!
//! // From any thread of the program: returns once the publication is in history and
//! // has been offered to every subscriber (written, or queued for its writer).
//! let pos = server.hub().publish("news", json!({"title": "hello"})).unwrap();
//! assert_eq!(pos.offset, 1);
//! let push = json_of(ws.read().unwrap());
//! assert_eq!(push, json!({"push":"pub","ch":"news","offset":1,"data":{"title":"hello"}}));
//! drop(ws);
//! server.shutdown();
//! ```
//!
//! ## The client
//!
//! [`client::Client`] is one blocking client connection built the same way (a reader
//! thread, a writer thread that alone writes the socket); [`client::ReconnectingClient`]
//! keeps a session going across disconnects with exponential backoff and jitter
//! ([`client::backoff`]). `examples/client.rs` is a chat client; `wshub connect` is the CLI.
//! [`client::pubsub::ChannelClient`] speaks the channels protocol of `/ws` on top of it:
//! subscribe, publish with acks, and resume after a reconnect with nothing lost or
//! repeated (`examples/channels.rs`; `wshub connect --channel NAME`).

#![deny(missing_docs)]
#![forbid(unsafe_code)]

// Linux only: the write path uses `MSG_NOSIGNAL`, the capacity check reads `/proc`, and
// the stack and memory-mapping arithmetic is glibc's and Linux's.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "wshub runs on Linux only: it relies on MSG_NOSIGNAL sends, /proc and Linux's \
     thread and memory-mapping limits"
);

pub mod client;
pub mod pubsub;
pub mod server;
mod sync;
mod ws;

pub use pubsub::protocol::StreamPosition;
pub use server::{
    ApiKey, Chat, Config, ConfigError, Connection, DrainReport, Echo, Engine, Error, HEALTH_PATH, Handler,
    Hub, PublishError, SendError, Server, ServerBuilder, ShutdownHandle, TokenSecret, Ws,
};
pub use tungstenite::Message;
pub use ws::handshake::{MAX_REQUEST_HEAD, Request};
pub use ws::limits::ConnectionLimits;

/// The request-head parser, the handshake decision, the close policy and the reader's
/// UTF-8 screening,
/// exposed for the fuzz targets (`fuzz/`) only. Not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::ws::close_policy;
    pub use crate::ws::handshake::{
        Answer, Endpoint, MAX_REQUEST_HEADERS, Reject, Resource, StatusCode, answer, parse_head,
    };
    pub use crate::ws::utf8_guard::Screened;
}
