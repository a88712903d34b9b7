//! The protocol client: channels on a wshub server's `/ws` (protocol v1), on top of a
//! [`ReconnectingClient`].
//!
//! [`ChannelClient::subscribe`] a channel and its publications arrive as
//! [`ChannelEvent::Publication`]s, each exactly once and in offset order, across
//! reconnects: after a connection is lost, every subscription is sent again with `since`
//! = the last position it delivered, and the server sends what was missed. When that is
//! no longer possible (the server restarted, or too much was missed), the event
//! [`ChannelEvent::Subscribed`] says `recovered: Some(false)`: reload your state from the
//! application, then carry on with the live publications. [`ChannelClient::publish`]
//! blocks until the server has the publication in its history (the ack) and returns its
//! position; if the connection is lost before the ack, the same `pub`, with the same
//! idempotency key, is sent again on the next connection, and the server applies it once.
//!
//! **Identity and presence.** With a [`ChannelConfig::hello`] (a token for a server in
//! token mode, or a user), every connection starts with `hello`, before the
//! subscriptions are sent again, and the answer is [`ChannelEvent::Welcome`] or
//! [`ChannelEvent::HelloRefused`]. [`ChannelClient::presence`] lists a channel's
//! subscribers; with [`ChannelConfig::joins`], [`ChannelEvent::Join`] and
//! [`ChannelEvent::Leave`] arrive in order with the channel's publications.
//!
//! **Threads.** The session's own (see [`ReconnectingClient`]) and one *protocol
//! thread*, which **owns** the subscriptions, the commands waiting for their replies and
//! the positions delivered (an I/O-free `State`, unit-tested without sockets). It
//! **wakes** on the session's events (connected, a frame, disconnected...), on a call
//! from the handle (through a bounded channel), and on the earliest deadline of a
//! waiting call. It **ends** on [`ChannelClient::close`] (or drop): it stops the session,
//! answers every waiting caller [`ChannelError::Closed`], and its event channel
//! disconnects; and when the session has given up.
//!
//! **Blocking.** `publish` and `history` wait at most their timeout
//! ([`ChannelConfig::publish_timeout`], [`ChannelConfig::history_timeout`]), including
//! while disconnected. Events wait for you on a bounded channel: if you stop taking
//! them, the protocol thread waits, and so does everything behind it (calls time out,
//! and the server eventually cuts this client as a slow consumer; it then resumes).
//! So take events on a thread that does not also wait in `publish`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use wshub::client::pubsub::{ChannelClient, ChannelConfig, ChannelEvent};
//! # use wshub::{Config, Server};
//! # let mut config = Config::default();
//! # config.addr = "127.0.0.1:0".parse().unwrap();
//! # let server = Server::start(config).unwrap();
//! # let url = format!("ws://{}/ws", server.local_addr());
//!
//! let client = ChannelClient::start(&url, ChannelConfig::default())?;
//! client.subscribe("news")?;
//! // Wait until subscribed, so that our own publication comes back to us.
//! for event in client.events() {
//!     if let ChannelEvent::Subscribed { .. } = event {
//!         break;
//!     }
//! }
//! let position = client.publish("news", serde_json::json!({"title": "hello"}))?;
//! for event in client.events() {
//!     if let ChannelEvent::Publication { publication, .. } = event {
//!         assert_eq!(publication.offset, position.offset);
//!         assert_eq!(publication.data["title"], "hello");
//!         break;
//!     }
//! }
//! client.close();
//! # server.shutdown();
//! # Ok::<(), wshub::client::pubsub::ChannelError>(())
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, bounded};
use rand::RngExt;
use serde_json::Value;

use crate::pubsub::protocol::{Command, SUBPROTOCOL};
pub use crate::pubsub::protocol::{
    ErrorBody, ErrorCode, Member, PresenceList, Publication, Snapshot, StreamPosition,
};

use super::{ClientError, EVENT_QUEUE_SIZE, Event, ReconnectConfig, ReconnectingClient};

mod state;
mod thread_main;

use state::Answered;
use thread_main::{Call, Protocol};

/// Configuration of a [`ChannelClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// The session: connection timeouts and headers, backoff, when to give up.
    pub reconnect: ReconnectConfig,
    /// How long [`ChannelClient::publish`] waits for the ack, across reconnects. Default
    /// 10 s.
    pub publish_timeout: Duration,
    /// How long [`ChannelClient::history`] and [`ChannelClient::presence`] wait for
    /// their reply, across reconnects. Default 10 s.
    pub history_timeout: Duration,
    /// Who this client says it is: sent as `hello`, first on every connection, when any
    /// of it is set. Default: nothing set, no `hello`.
    pub hello: Hello,
    /// Ask every subscription for joins and leaves ([`ChannelEvent::Join`],
    /// [`ChannelEvent::Leave`]). Default `false`.
    pub joins: bool,
}

/// What a [`ChannelClient`] says in its `hello` (protocol v1): who it is, and what its
/// presence entry carries.
///
/// ```
/// let mut config = wshub::client::pubsub::ChannelConfig::default();
/// config.hello.user = Some("ann".into());
/// config.hello.info = Some(serde_json::json!({"status": "away"}));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Hello {
    /// A signed token (JWT); a server in token mode needs one. Default none.
    pub token: Option<String>,
    /// The user name, for a server in open mode. Default none.
    pub user: Option<String>,
    /// Presence info: a JSON object of at most 1 KiB. Default none.
    pub info: Option<Value>,
}

impl Hello {
    /// The command to send first on every connection: none while nothing is set.
    fn command(&self) -> Option<Command> {
        (self.token.is_some() || self.user.is_some() || self.info.is_some()).then(|| Command::Hello {
            token: self.token.clone(),
            user: self.user.clone(),
            info: self.info.clone(),
        })
    }
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            reconnect: ReconnectConfig::default(),
            publish_timeout: Duration::from_secs(10),
            history_timeout: Duration::from_secs(10),
            hello: Hello::default(),
            joins: false,
        }
    }
}

/// What happened, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The connection's own events: [`Event::Connected`], [`Event::Disconnected`],
    /// [`Event::ConnectFailed`], [`Event::Reconnecting`], [`Event::GaveUp`] (never
    /// [`Event::Message`]: frames are the protocol's). After a `Connected`, every
    /// subscription is sent again and answers with [`ChannelEvent::Subscribed`].
    Connection(Event),
    /// The server confirmed a subscription (again, after a reconnect).
    Subscribed {
        /// The channel.
        ch: String,
        /// The channel's epoch and top offset: live publications follow it.
        position: StreamPosition,
        /// `None` for a subscription without a position to resume from (the first
        /// one). `Some(true)`: every publication missed since the last one delivered
        /// follows, then the live ones, with no gap and no duplicate. `Some(false)`:
        /// what was missed cannot be recovered (a new epoch: the server restarted or
        /// the channel's state expired; or more was missed than the history holds):
        /// reload your state from the application; publications from `position` on
        /// follow.
        recovered: Option<bool>,
    },
    /// The server refused a subscription for good (a bad channel name, too many
    /// subscriptions, forbidden...: a fatal [`ChannelError`]). The subscription is
    /// dropped.
    SubscribeFailed {
        /// The channel.
        ch: String,
        /// The server's answer.
        error: ChannelError,
    },
    /// The server refused a subscription for now (error 6, unavailable: its engine,
    /// Redis, is down). The subscription is kept, with its position, and sent again
    /// after `retry_in` (backoff with jitter, as the session's reconnects:
    /// [`ReconnectConfig::backoff`]), until it succeeds ([`ChannelEvent::Subscribed`],
    /// recovering what was missed meanwhile) or the application unsubscribes.
    SubscribeRetrying {
        /// The channel.
        ch: String,
        /// The server's answer.
        error: ChannelError,
        /// When the next attempt goes out.
        retry_in: Duration,
    },
    /// The server ended a subscription (`push unsub`) for good. (One it ends with code 6,
    /// unavailable, is subscribed again at once and answers with `Subscribed`.)
    Unsubscribed {
        /// The channel.
        ch: String,
        /// Why, as an error code.
        code: ErrorCode,
        /// Human-readable detail.
        reason: String,
    },
    /// The server accepted this connection's `hello` (sent first on every connection
    /// when [`ChannelConfig::hello`] has a token, user or info).
    Welcome {
        /// This connection's id on the server.
        client: String,
        /// The user the server took it for.
        user: String,
    },
    /// The server refused the `hello`: in token mode it closes the connection (4001)
    /// next; the session reconnects and tries again with the same token, so stop it if
    /// the error is fatal.
    HelloRefused(ChannelError),
    /// Another connection subscribed to a channel subscribed here (with
    /// [`ChannelConfig::joins`]).
    Join(Member),
    /// Another connection left such a channel (unsubscribed, closed, died, was cut).
    Leave(Member),
    /// A publication on a subscribed channel. For each channel the offsets go up by one
    /// each time within an epoch, each delivered once.
    Publication {
        /// The channel's epoch: with `publication.offset`, the position to resume from.
        epoch: String,
        /// The channel, offset, data and publisher.
        publication: Publication,
    },
}

/// Why a channel operation failed. Each variant says whether it is fatal (retrying the
/// same call as is cannot succeed).
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// Starting the session failed (URL, configuration, thread): see
    /// [`ClientError::is_fatal`].
    Client(ClientError),
    /// Not a valid channel name (1 to 255 bytes of `A-Z a-z 0-9 _ - : . @ /`). Fatal.
    InvalidChannel {
        /// The name as given.
        ch: String,
        /// What is wrong with it.
        reason: String,
    },
    /// [`ChannelClient::subscribe`] to a channel already subscribed. Fatal for that call.
    AlreadySubscribed(String),
    /// [`ChannelClient::unsubscribe`] from a channel not subscribed. Fatal for that call.
    NotSubscribed(String),
    /// No reply within the call's timeout (connected or not). For a `publish`, the
    /// publication may or may not have been made: call
    /// [`publish_with_key`](ChannelClient::publish_with_key) with the same key to find
    /// out without publishing twice. Not fatal.
    Timeout,
    /// The server answered with an error. Fatal unless its code is
    /// [`ErrorCode::Unavailable`] (retry later).
    Server(ErrorBody),
    /// The server's reply did not have the shape protocol v1 gives it; the message says
    /// what was wrong. Fatal: the server speaks another protocol.
    BadReply(String),
    /// An idempotency key that is empty or longer than 255 bytes. Fatal.
    InvalidKey,
    /// The client has been closed, or its session gave up. Fatal.
    Closed,
}

impl ChannelError {
    /// True when retrying the same call as is cannot succeed (see each variant).
    pub fn is_fatal(&self) -> bool {
        match self {
            ChannelError::Client(e) => e.is_fatal(),
            ChannelError::Timeout => false,
            ChannelError::Server(e) => e.code != ErrorCode::Unavailable,
            _ => true,
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Client(e) => e.fmt(f),
            ChannelError::InvalidChannel { ch, reason } => write!(f, "invalid channel {ch:?}: {reason}"),
            ChannelError::AlreadySubscribed(ch) => write!(f, "already subscribed to {ch:?}"),
            ChannelError::NotSubscribed(ch) => write!(f, "not subscribed to {ch:?}"),
            ChannelError::Timeout => f.write_str("no reply from the server in time"),
            ChannelError::Server(e) => {
                write!(f, "the server refused: {} (error {})", e.msg, u16::from(e.code))
            }
            ChannelError::BadReply(m) => write!(f, "the server's reply is not protocol v1: {m}"),
            ChannelError::InvalidKey => f.write_str("an idempotency key must be 1 to 255 bytes"),
            ChannelError::Closed => f.write_str("the channel client is closed"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Client(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ClientError> for ChannelError {
    fn from(e: ClientError) -> Self {
        ChannelError::Client(e)
    }
}

/// A client of a wshub server's channels (protocol v1 on `/ws`): subscribe, publish
/// with acks, history, and resume after a reconnect with nothing lost or repeated. See
/// the [module docs](self).
///
/// Every method takes `&self`: share it (an `Arc`) to publish from one thread while
/// another takes the [`events`](Self::events). Dropping it closes it.
#[derive(Debug)]
pub struct ChannelClient {
    calls: Sender<Call>,
    events: Receiver<ChannelEvent>,
    config: ChannelConfig,
    session: Arc<ReconnectingClient>,
    /// Dropped by `close`: its disconnection wakes the protocol thread to end.
    closing: Mutex<Option<Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Calls that may wait for the protocol thread before a method blocks.
const CALL_QUEUE_SIZE: usize = 64;

impl ChannelClient {
    /// Checks the URL and configuration and starts the session, which connects at once
    /// (offering the subprotocol `wshub.v1`). Errors here are the fatal ones and a
    /// failure to spawn a thread; connection failures arrive as events.
    pub fn start(url: &str, config: ChannelConfig) -> Result<ChannelClient, ChannelError> {
        let mut reconnect = config.reconnect.clone();
        let offered = reconnect
            .client
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"));
        if !offered {
            reconnect
                .client
                .headers
                .push(("Sec-WebSocket-Protocol".into(), SUBPROTOCOL.into()));
        }
        let session = Arc::new(ReconnectingClient::start(url, reconnect)?);
        let (calls_tx, calls_rx) = bounded(CALL_QUEUE_SIZE);
        let (events_tx, events_rx) = bounded(EVENT_QUEUE_SIZE);
        let (closing_tx, closing_rx) = bounded(0);
        let state = state::State::with_identity(config.hello.command(), config.joins)
            .with_retry(config.reconnect.backoff);
        let protocol = Protocol::new(session.clone(), calls_rx, events_tx, closing_rx, state);
        let handle = super::spawn("wshub-channels", move || protocol.run())?;
        Ok(ChannelClient {
            calls: calls_tx,
            events: events_rx,
            config,
            session,
            closing: Mutex::new(Some(closing_tx)),
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Events in order (see [`ChannelEvent`]). The channel disconnects once the client
    /// is closed or its session has given up.
    pub fn events(&self) -> &Receiver<ChannelEvent> {
        &self.events
    }

    /// Subscribes to `ch`: now if connected, else as soon as a connection is open. The
    /// server's answer arrives as [`ChannelEvent::Subscribed`] (or `SubscribeFailed`).
    pub fn subscribe(&self, ch: &str) -> Result<(), ChannelError> {
        self.subscribe_since(ch, None)
    }

    /// [`subscribe`](Self::subscribe), resuming after `since`: a position this
    /// application kept from an earlier run (a publication's epoch and offset).
    pub fn subscribe_since(&self, ch: &str, since: Option<StreamPosition>) -> Result<(), ChannelError> {
        self.request(None, |answer| Call::Subscribe {
            ch: ch.to_owned(),
            since,
            answer,
        })
        .map(drop)
    }

    /// Ends the subscription to `ch`; nothing more is delivered for it.
    pub fn unsubscribe(&self, ch: &str) -> Result<(), ChannelError> {
        self.request(None, |answer| Call::Unsubscribe {
            ch: ch.to_owned(),
            answer,
        })
        .map(drop)
    }

    /// Publishes `data` to `ch` (subscribed or not) and waits for the ack: the
    /// publication's position. Waits at most [`ChannelConfig::publish_timeout`], while
    /// connected or not; a `pub` whose connection is lost before its ack is sent again
    /// with the same random idempotency key, so it is published once.
    pub fn publish(&self, ch: &str, data: Value) -> Result<StreamPosition, ChannelError> {
        self.publish_with_key(ch, data, &random_key())
    }

    /// [`publish`](Self::publish) with your own idempotency key (1 to 255 bytes): a
    /// `pub` with the same channel and key within the server's idempotency window
    /// returns the first one's position and publishes nothing. Use it to retry after a
    /// [`ChannelError::Timeout`].
    pub fn publish_with_key(&self, ch: &str, data: Value, key: &str) -> Result<StreamPosition, ChannelError> {
        if key.is_empty() || key.len() > crate::pubsub::protocol::MAX_KEY_LEN {
            return Err(ChannelError::InvalidKey);
        }
        let command = Command::Pub {
            ch: ch.to_owned(),
            data,
            key: Some(key.to_owned()),
        };
        match self.call(command, self.config.publish_timeout)? {
            Answered::Published(position) => Ok(position),
            other => Err(ChannelError::BadReply(format!("{other:?}"))),
        }
    }

    /// Reads `ch`'s history: the publications after `since` (all that are kept without
    /// it), at most `limit` of them (default and maximum: the server's history size),
    /// oldest first, with the channel's current epoch and top offset. Waits at most
    /// [`ChannelConfig::history_timeout`].
    pub fn history(
        &self,
        ch: &str,
        since: Option<StreamPosition>,
        limit: Option<u64>,
    ) -> Result<Snapshot, ChannelError> {
        let command = Command::History {
            ch: ch.to_owned(),
            since,
            limit,
        };
        match self.call(command, self.config.history_timeout)? {
            Answered::History(snapshot) => Ok(snapshot),
            other => Err(ChannelError::BadReply(format!("{other:?}"))),
        }
    }

    /// Who is subscribed to `ch` (the server lists only its subscribers' channels,
    /// unless its authorizer allows more): at most the server's list limit of members,
    /// with exact counts. Waits at most [`ChannelConfig::history_timeout`].
    pub fn presence(&self, ch: &str) -> Result<PresenceList, ChannelError> {
        let command = Command::Presence { ch: ch.to_owned() };
        match self.call(command, self.config.history_timeout)? {
            Answered::Presence(list) => Ok(list),
            other => Err(ChannelError::BadReply(format!("{other:?}"))),
        }
    }

    /// True while a connection is open.
    pub fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    /// Closes the client: the connection is closed with 1000 (at most a round trip to
    /// the server, bounded by the close timeout), waiting callers are answered
    /// [`ChannelError::Closed`], the event channel disconnects (events not yet taken may
    /// be dropped), and every thread has ended when this returns.
    pub fn close(&self) {
        drop(lock(&self.closing).take()); // wakes the protocol thread, wherever it waits
        let handle = lock(&self.thread).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        self.session.stop();
    }

    fn call(&self, command: Command, timeout: Duration) -> Result<Answered, ChannelError> {
        let deadline = super::after(timeout);
        let answer = self.request(Some(deadline), |answer| Call::Request {
            command,
            deadline,
            answer,
        })?;
        answer.ok_or(ChannelError::Closed)
    }

    /// Hands a call to the protocol thread and waits for its answer, until `deadline`
    /// if there is one. The protocol thread answers every call: at once for subscribe
    /// and unsubscribe, by the reply or the deadline for the others, and `Closed` when
    /// it ends (which also disconnects the call queue).
    fn request(
        &self,
        deadline: Option<Instant>,
        make: impl FnOnce(Sender<Result<Option<Answered>, ChannelError>>) -> Call,
    ) -> Result<Option<Answered>, ChannelError> {
        let (tx, rx) = bounded(1);
        let call = make(tx);
        match deadline {
            None => {
                self.calls.send(call).map_err(|_| ChannelError::Closed)?;
                rx.recv().unwrap_or(Err(ChannelError::Closed))
            }
            Some(deadline) => {
                self.calls.send_deadline(call, deadline).map_err(|e| match e {
                    SendTimeoutError::Timeout(_) => ChannelError::Timeout,
                    SendTimeoutError::Disconnected(_) => ChannelError::Closed,
                })?;
                match rx.recv_deadline(deadline) {
                    Ok(answer) => answer,
                    Err(RecvTimeoutError::Timeout) => Err(ChannelError::Timeout),
                    Err(RecvTimeoutError::Disconnected) => Err(ChannelError::Closed),
                }
            }
        }
    }
}

impl Drop for ChannelClient {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh idempotency key, as [`ChannelClient::publish`] makes for each publication:
/// 128 random bits in hex. Keep it to retry a [`publish_with_key`](ChannelClient::publish_with_key).
pub fn random_key() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_goes_out_when_any_of_it_is_set_and_only_then() {
        let mut hello = Hello::default();
        assert_eq!(hello.command(), None);
        hello.info = Some(serde_json::json!({"status": "away"}));
        let info = hello.info.clone();
        assert_eq!(
            hello.command(),
            Some(Command::Hello {
                token: None,
                user: None,
                info
            })
        );
    }
}
