//! What a route does with a connection: the [`Handler`] trait, the [`Connection`] handle
//! handlers act through, the built-in [`Echo`], [`Chat`] and [`Ws`] handlers, and the
//! routing table.
//!
//! Owns no thread. A handler runs on the reader thread of the connection it serves, so
//! it may block briefly (it delays only its own connection) and needs no locking for
//! per-connection state. A [`Connection`] is `Clone + Send`: hand it to another thread to
//! send to that client from there.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender};

use crate::server::queue::{OutboundTx, PushError};
use tungstenite::Message;

use std::sync::OnceLock;

use log::info;

use crate::pubsub::auth::{Action, Authorizer, Hello, Identity};
use crate::pubsub::encode;
use crate::pubsub::protocol::{
    self, Command, Empty, ErrorBody, ErrorCode, Reply, SUBPROTOCOL, parse_request,
};
use crate::server::commands::ConnCommand;
use crate::server::error::SendError;
use crate::server::flow::{self, InFlight};
use crate::server::hub::{Hub, HubMsg, UNAUTHORIZED_CLOSE};
use crate::server::registry::ConnId;
use crate::server::writer::{Ctrl, WriteSide};
use crate::sync::lock;
use crate::ws::close_policy::UNSUPPORTED_DATA;
use crate::ws::handshake::{Endpoint, Request};
use crate::ws::rate_limit::RateLimiter;
use crate::ws::wire::WireFrame;

/// Serves the connections on one path.
///
/// Any `Fn(&Connection, Message) + Send + Sync + 'static` closure is a handler that only
/// reacts to messages:
///
/// ```no_run
/// use wshub::{Config, Connection, Message, Server};
/// let server = Server::builder(Config::default())
///     .route("/shout", |conn: &Connection, msg: Message| {
///         if let Message::Text(text) = msg {
///             let _ = conn.send(Message::text(text.to_uppercase()));
///         }
///     })
///     .start()
///     .unwrap();
/// ```
///
/// A panic in any method closes only this connection, with 1011, and is logged with the
/// connection's id; the server and every other connection carry on.
///
/// The methods run on the connection's own thread, which serves this one connection until
/// it ends, and may then serve later connections in turn (it waits as a spare for the
/// next one, see [`Config::spare_readers`](crate::Config::spare_readers)): keep
/// per-connection state keyed by [`Connection::id`] or in the handler's own maps, not in
/// thread-locals.
pub trait Handler: Send + Sync + 'static {
    /// The upgrade is done and the connection is registered with the hub.
    fn on_open(&self, conn: &Connection) {
        let _ = conn;
    }

    /// A complete text or binary message arrived. (Pings, pongs and the close
    /// handshake are handled for you.)
    fn on_message(&self, conn: &Connection, msg: Message);

    /// The connection has ended; nothing more can be sent to it.
    fn on_close(&self, conn: &Connection) {
        let _ = conn;
    }

    /// The WebSocket subprotocols this route speaks. When a client offers one of them
    /// (`Sec-WebSocket-Protocol`), the upgrade selects the first it offered; a client
    /// that offers none is served all the same. Default: none.
    fn subprotocols(&self) -> &'static [&'static str] {
        &[]
    }
}

impl<F> Handler for F
where
    F: Fn(&Connection, Message) + Send + Sync + 'static,
{
    fn on_message(&self, conn: &Connection, msg: Message) {
        self(conn, msg)
    }
}

/// `/echo`: every text or binary message goes back to its sender unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_message(&self, conn: &Connection, msg: Message) {
        // A failed send means the connection is closing; its reader will notice.
        let _ = conn.send(msg);
    }
}

/// `/chat`: every message is broadcast to every connection on the same path, the
/// sender included, in one total order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Chat;

impl Handler for Chat {
    fn on_message(&self, conn: &Connection, msg: Message) {
        let _ = conn.broadcast(msg);
    }
}

/// `/ws`: channels with protocol v1 (`docs/protocol.md`): `sub`, `unsub`, `pub` and
/// `history` commands as JSON text frames, replies and pushes from the hub.
///
/// Runs on the connection's reader thread: it parses each text frame and checks
/// everything that needs no state (JSON object, id, op, field types, channel name),
/// answers a frame it cannot take with an error reply at once (the connection stays
/// open), and sends valid commands to the hub, which executes them in one order for
/// every connection and writes the replies and pushes. A binary frame gets Close 1003.
/// Selects the subprotocol `wshub.v1` when the client offers it.
///
/// Identity and permissions are checked here too, on the reader, before a command is
/// forwarded: the server's [`Authorizer`] takes the `hello` and is asked about each
/// `sub`, `pub`, `history` and `presence`, so user code never runs on the hub thread.
/// The identity lives in the [`Connection`] (set once, by this thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ws;

impl Handler for Ws {
    fn on_open(&self, conn: &Connection) {
        if conn.inner.authorizer.requires_hello() {
            let _ = conn.hub().send(HubMsg::AwaitHello(conn.id()));
        }
    }

    fn on_message(&self, conn: &Connection, msg: Message) {
        match msg {
            Message::Text(text) => match parse_request(&text) {
                Ok(request) => ws_command(conn, request, text.len()),
                Err(rejected) => {
                    let _ = conn.send(Message::Text(encode::reply(&rejected.reply())));
                }
            },
            Message::Binary(_) => {
                let _ = conn.close(UNSUPPORTED_DATA, "protocol v1 frames are JSON text");
            }
            _ => {}
        }
    }

    fn subprotocols(&self) -> &'static [&'static str] {
        &[SUBPROTOCOL]
    }
}

/// Checks a valid command against the connection's identity and the authorizer, then
/// forwards it to the hub; answers a refusal itself.
fn ws_command(conn: &Connection, request: protocol::Request, bytes: usize) {
    let Some((identity, presence_any)) = admit(conn, &request) else {
        return;
    };
    let publishes = matches!(request.command, Command::Pub { .. });
    let cmd = ConnCommand {
        conn: conn.id(),
        request,
        identity,
        presence_any,
    };
    // Under the same bounds as a broadcast: a `pub` waits while this connection is over
    // its publication rate, and every command while it has its bound in the hub's inbox,
    // so a flooding client slows only itself. Fails only when the hub has stopped: the
    // server is going away and the drain closes this connection.
    let _ = conn.to_hub(HubMsg::Command(Box::new(cmd)), bytes, publishes);
}

/// Whether `request` may go to the hub, and with what: for `hello`, the identity the
/// authorizer found; for `presence`, whether the authorizer lets this client list a
/// channel it is not subscribed to. `None` when refused (the refusal already answered).
fn admit(conn: &Connection, request: &protocol::Request) -> Option<(Option<Arc<Identity>>, bool)> {
    let auth = &*conn.inner.authorizer;
    let refuse = |err: ErrorBody| {
        let reply = encode::reply(&Reply::<Empty>::err(Some(request.id), err));
        let _ = conn.send(Message::Text(reply));
        None
    };
    if let Command::Hello { token, user, info } = &request.command {
        if conn.inner.identity.get().is_some() {
            return refuse(ErrorBody::new(
                ErrorCode::BadState,
                "hello must be the first command, and only one",
            ));
        }
        let hello = Hello {
            conn: conn.id(),
            token: token.as_deref(),
            user: user.as_deref(),
            info: info.as_ref(),
        };
        return match auth.hello(&hello) {
            Ok(who) => {
                let who = Arc::new(who);
                let _ = conn.inner.identity.set(who.clone());
                Some((Some(who), false))
            }
            Err(err) => {
                // The message names the rule that failed, never the token.
                info!("connection {}: hello refused: {}", conn.id(), err.msg);
                conn.hub().metrics().hellos_refused.fetch_add(1, Relaxed);
                refuse(err);
                if auth.requires_hello() {
                    let _ = conn.close(UNAUTHORIZED_CLOSE, "unauthorized");
                }
                None
            }
        };
    }
    let who = match conn.inner.identity.get() {
        Some(who) => who,
        None if auth.requires_hello() => {
            return refuse(ErrorBody::new(
                ErrorCode::Unauthorized,
                "send hello with a valid token first",
            ));
        }
        // Open mode: a first command other than hello makes the client anonymous.
        None => conn.inner.identity.get_or_init(Arc::default),
    };
    let action = match &request.command {
        Command::Sub { .. } => Some(Action::Subscribe),
        Command::Pub { .. } => Some(Action::Publish),
        Command::History { .. } => Some(Action::History),
        Command::Presence { .. } => Some(Action::Presence),
        _ => None,
    };
    let mut presence_any = false;
    if let (Some(action), Some(ch)) = (action, request.command.channel()) {
        if let Err(err) = auth.allow(who, action, ch) {
            return refuse(err);
        }
        presence_any = action == Action::Presence && auth.presence_without_subscription(who, ch);
    }
    Some((None, presence_any))
}

/// A handle on one open connection, given to its handler. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    id: ConnId,
    request: Request,
    topic: Arc<str>,
    data: OutboundTx,
    ctrl: Sender<Ctrl>,
    write: Arc<WriteSide>,
    hub: Hub,
    write_timeout: Duration,
    /// This connection's broadcasts waiting in the hub's inbox.
    in_flight: InFlight,
    /// `max_publish_rate`, when set.
    publish_limit: Option<Mutex<RateLimiter>>,
    authorizer: Arc<dyn Authorizer>,
    /// Who the client is on `/ws`: set once, by the reader, on `hello` (or, in open
    /// mode, anonymous on its first other command).
    identity: OnceLock<Arc<Identity>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("path", &self.inner.request.path())
            .finish()
    }
}

/// The parts a connection thread hands to [`Connection::new`].
pub(crate) struct ConnParts {
    pub id: ConnId,
    pub request: Request,
    pub data: OutboundTx,
    pub ctrl: Sender<Ctrl>,
    pub write: Arc<WriteSide>,
    pub hub: Hub,
    pub write_timeout: Duration,
    /// Broadcasts per second this connection may publish; 0: no limit.
    pub publish_rate: u32,
    pub authorizer: Arc<dyn Authorizer>,
}

impl Connection {
    pub(crate) fn new(p: ConnParts) -> Connection {
        let topic = Arc::from(p.request.path());
        Connection {
            inner: Arc::new(ConnInner {
                id: p.id,
                request: p.request,
                topic,
                data: p.data,
                ctrl: p.ctrl,
                write: p.write,
                hub: p.hub,
                write_timeout: p.write_timeout,
                in_flight: InFlight::default(),
                publish_limit: (p.publish_rate > 0)
                    .then(|| Mutex::new(RateLimiter::new(p.publish_rate, Instant::now()))),
                authorizer: p.authorizer,
                identity: OnceLock::new(),
            }),
        }
    }

    /// This connection's id, unique for the life of the server (it appears in logs).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The path the client connected to, which is also its broadcast topic.
    pub fn path(&self) -> &str {
        self.inner.request.path()
    }

    /// Who the client is on `/ws`, once its `hello` was accepted (or, in open mode, it
    /// sent another command first: the anonymous identity). `None` before that.
    pub fn identity(&self) -> Option<&Identity> {
        self.inner.identity.get().map(|who| &**who)
    }

    /// The client's upgrade request: path, query, headers.
    pub fn request(&self) -> &Request {
        &self.inner.request
    }

    pub(crate) fn topic(&self) -> &Arc<str> {
        &self.inner.topic
    }

    /// Sends `msg` to this client: at once, from this thread, when nobody else is writing
    /// to it and the socket has room (no thread is woken), else through its queue and
    /// the connection's writer thread (started if none runs).
    /// Waits while the queue is full, for at most the write timeout; if it is still full
    /// then, the client is not reading, the connection is cut and
    /// [`SendError::SlowConsumer`] returned. A `Close` message starts the close
    /// handshake, as [`Connection::close`] does.
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        if let Message::Close(frame) = msg {
            let (code, reason) = crate::ws::wire::close_parts(frame.as_ref());
            return self.close(code, reason);
        }
        let Some(frame) = WireFrame::from_message(msg) else {
            return Ok(());
        };
        let len = frame.payload().len();
        let sent = self.send_frame(frame);
        if sent.is_ok() {
            self.inner.hub.metrics().sent(1, len);
        }
        sent
    }

    fn send_frame(&self, frame: WireFrame) -> Result<(), SendError> {
        if self
            .inner
            .write
            .write_now(&frame, &self.inner.data, &self.inner.ctrl)
        {
            return Ok(());
        }
        match self.inner.data.push_timeout(frame, self.inner.write_timeout) {
            Ok(()) => {
                self.inner.write.wake();
                Ok(())
            }
            Err(PushError::Timeout) => {
                self.cut();
                self.inner.hub.metrics().slow_consumers.fetch_add(1, Relaxed);
                Err(SendError::SlowConsumer)
            }
            Err(PushError::Closed) => Err(SendError::Closed),
        }
    }

    /// Broadcasts `msg` to every connection on this connection's path, itself included.
    ///
    /// Waits while this connection is over its publication rate
    /// ([`Config::max_publish_rate`](crate::Config::max_publish_rate)) or has its bound
    /// of broadcasts waiting in the hub's inbox: one client publishing as fast as it can
    /// slows itself, not the others.
    pub fn broadcast(&self, msg: Message) -> Result<(), SendError> {
        if let Some(limit) = &self.inner.publish_limit {
            flow::pace(&mut lock(limit));
        }
        self.inner
            .hub
            .broadcast_from(self.inner.topic.clone(), msg, Some(&self.inner.in_flight))
    }

    /// Sends `msg` (`bytes` long on the wire it came from) to the hub under this
    /// connection's bounds, as [`broadcast`](Self::broadcast) does: when `publishes`,
    /// first waits out the publication rate; then waits while this connection has its
    /// bound of messages in the hub's inbox, or the inbox its byte budget.
    pub(crate) fn to_hub(&self, msg: HubMsg, bytes: usize, publishes: bool) -> Result<(), SendError> {
        if let Some(limit) = self.inner.publish_limit.as_ref().filter(|_| publishes) {
            flow::pace(&mut lock(limit));
        }
        self.inner.hub.post_from(msg, bytes, &self.inner.in_flight)
    }

    /// Starts the close handshake with `code` and `reason`, after everything already
    /// queued for the client has been sent.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), SendError> {
        let msg = Ctrl::Close {
            code,
            reason: Cow::Owned(reason.to_owned()),
        };
        match self.inner.ctrl.send_timeout(msg, self.inner.write_timeout) {
            Ok(()) => {
                // A writer sends it (and times the client's answer): started if none runs.
                self.inner.write.wake();
                Ok(())
            }
            Err(SendTimeoutError::Timeout(_)) => {
                self.cut();
                Err(SendError::SlowConsumer)
            }
            Err(SendTimeoutError::Disconnected(_)) => Err(SendError::Closed),
        }
    }

    /// The hub, for broadcasting to other paths.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Cuts the connection at once (no Close frame): an abortive close, which wakes its
    /// reader and writer (see `writer::cut`).
    pub(crate) fn cut(&self) {
        self.inner.write.cut();
    }
}

/// The health-check path, answered with `200 ok` without an upgrade.
pub const HEALTH_PATH: &str = "/healthz";

/// Path to handler. Starts with `/echo`, `/chat` and `/ws`; the builder adds or replaces.
#[derive(Clone)]
pub(crate) struct Routes {
    map: HashMap<String, Arc<dyn Handler>>,
}

impl Default for Routes {
    fn default() -> Self {
        let mut routes = Routes { map: HashMap::new() };
        routes.insert("/echo", Arc::new(Echo));
        routes.insert("/chat", Arc::new(Chat));
        routes.insert("/ws", Arc::new(Ws));
        routes
    }
}

impl Routes {
    pub(crate) fn insert(&mut self, path: &str, handler: Arc<dyn Handler>) {
        self.map.insert(path.to_owned(), handler);
    }

    pub(crate) fn endpoint(&self, path: &str) -> Endpoint {
        if self.map.contains_key(path) {
            Endpoint::WebSocket
        } else if path == HEALTH_PATH {
            Endpoint::Health
        } else {
            Endpoint::None
        }
    }

    pub(crate) fn get(&self, path: &str) -> Option<Arc<dyn Handler>> {
        self.map.get(path).cloned()
    }

    /// Removes every route, the built-in ones included.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }

    /// The routes' paths.
    pub(crate) fn paths(&self) -> Arc<[Box<str>]> {
        self.map.keys().map(|p| Box::from(p.as_str())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_routes_and_health() {
        let routes = Routes::default();
        assert_eq!(routes.endpoint("/echo"), Endpoint::WebSocket);
        assert_eq!(routes.endpoint("/chat"), Endpoint::WebSocket);
        assert_eq!(routes.endpoint("/ws"), Endpoint::WebSocket);
        assert_eq!(routes.endpoint("/healthz"), Endpoint::Health);
        assert_eq!(routes.endpoint("/nope"), Endpoint::None);
        assert_eq!(routes.endpoint("/echo/"), Endpoint::None);
    }

    #[test]
    fn a_route_can_replace_healthz() {
        let mut routes = Routes::default();
        routes.insert("/healthz", Arc::new(Echo));
        assert_eq!(routes.endpoint("/healthz"), Endpoint::WebSocket);
    }
}
