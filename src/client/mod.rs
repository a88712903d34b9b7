//! The WebSocket client: one connection ([`Client`]), or a session that reconnects with
//! backoff ([`ReconnectingClient`]). Blocking, plain threads, no async runtime.
//!
//! **Owns** the client side of connections to a `ws://` server: the URL and handshake
//! request, the socket, and the threads that serve it. **Threads**, per open connection:
//!
//! - a *reader thread* owns the socket's read side and tungstenite's protocol state. It
//!   blocks in tungstenite's `read()`; bytes from the server **wake** it, and it turns
//!   each text or binary message into an [`Event::Message`] on a bounded channel. It
//!   **ends** when the connection does: the server's Close, EOF, a read error, the idle
//!   timeout (the socket's read timeout), or the writer shutting the socket down.
//! - a *writer thread* is the only thread that ever writes the socket. Its queues **wake**
//!   it: your messages (bounded), tungstenite's automatic Pong and Close replies (handed
//!   over by the reader), a Close request; and its ping timer. It is the one place that
//!   knows whether a Close has gone out, so no connection sends two Close frames or
//!   anything after one. It **ends** when the reader is done, when a write fails or
//!   blocks for the write timeout, or when the server has not answered our Close within
//!   the close timeout; it then shuts the socket down, which also wakes the reader.
//!
//! A [`ReconnectingClient`] adds a *supervisor thread* that connects, forwards the
//! connection's events to you, and after a failure or a disconnect waits
//! [`Backoff::next_delay`](crate::client::backoff::Backoff::next_delay) before the next attempt.
//! It waits on a channel with a timeout, never in `thread::sleep`, so
//! [`ReconnectingClient::stop`] **wakes** it at once; it **ends** on stop, on
//! [`ReconnectingClient::close`], or after giving up.
//!
//! ```text
//!   your threads --send()--> [outbound queue, 256] --+
//!                                                    v
//!   server <==bytes========================== writer thread   (pings; Close exactly once)
//!      |                                             ^
//!      +==bytes==> reader thread --Pong/Close replies+
//!                       | tungstenite read()
//!                       v
//!                  [events, 256] --> you (Client) or the supervisor --> [events, 256] --> you
//! ```
//!
//! # Single writer
//!
//! tungstenite has no split: one `WebSocket` both reads and writes. The reader's
//! `WebSocket` therefore runs over a stream whose `Read` is the socket and whose `Write`
//! hands each chunk tungstenite writes (always whole Pong or Close frames) to the writer
//! thread. The writer formats every other frame itself and masks it, as RFC 6455 §5.3
//! requires of a client ("The masking key needs to be unpredictable"; wshub draws it from
//! `rand`'s thread-local CSPRNG). So a program can [`send`](Client::send) from any
//! thread while another is blocked receiving events, and frames never interleave.
//!
//! # Delivery
//!
//! Events arrive in order on a bounded channel. If you stop taking them, the reader
//! waits for room and stops reading the socket, so TCP pushes back on the server; nothing
//! is dropped and memory stays bounded. A message you [`send`](Client::send) is queued for
//! the writer; if the connection dies before the writer has written it, it is lost:
//! delivery is at most once. A [`ReconnectingClient`] does not queue while disconnected:
//! [`send`](ReconnectingClient::send) returns [`ClientError::NotConnected`].
//!
//! # Example
//!
//! ```no_run
//! use wshub::Message;
//! use wshub::client::{Event, ReconnectConfig, ReconnectingClient};
//!
//! let client = ReconnectingClient::start("ws://127.0.0.1:8080/chat", ReconnectConfig::default())?;
//! for event in client.events() {
//!     match event {
//!         Event::Connected => client.send(Message::text("hello"))?,
//!         Event::Message(msg) => println!("{msg}"),
//!         Event::Reconnecting { attempt, delay } => eprintln!("retry {attempt} in {delay:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok::<(), wshub::client::ClientError>(())
//! ```

use std::fmt;
use std::io;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tungstenite::Message;

pub use crate::ws::limits::ConnectionLimits;
use crate::ws::limits::{self, ConnectionSettings};
pub use tungstenite::protocol::CloseFrame;

pub mod backoff;
mod connection;
pub mod pubsub;
mod reconnect;
mod url;

pub use connection::Client;
pub use reconnect::{ReconnectConfig, ReconnectingClient};
pub use url::WsUrl;

/// Messages your threads may queue for one connection's writer before
/// [`Client::send`] blocks. The same 256 the server allows per client: a burst of sends
/// is absorbed while the writer is momentarily behind, and a connection whose writer is
/// stuck pins at most 256 messages.
pub(crate) const DEFAULT_QUEUE_SIZE: usize = 256;

/// Events (received messages and connection events) that may wait for you before the
/// reader stops reading the socket. 256 absorbs a burst of broadcasts while your thread
/// is busy; past it, TCP backpressure slows the server down instead of this process
/// buffering without bound.
pub const EVENT_QUEUE_SIZE: usize = 256;

/// tungstenite's Pong and Close replies waiting for the writer. A burst of server pings
/// is all that can queue here; when 16 are waiting the reader waits too.
pub(crate) const CTRL_QUEUE_SIZE: usize = 16;

/// Largest message accepted from the server: 16 MiB. Four times the server's own limit
/// on what clients send, so an echo of anything the server accepts fits, while a
/// hostile server cannot make us buffer without bound.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Largest frame payload accepted from the server: 16 MiB (tungstenite's default).
pub(crate) const DEFAULT_MAX_FRAME_SIZE: usize = 16 << 20;

/// Bytes read from the socket at a time: 16 KiB. tungstenite's default of 128 KiB is
/// allocated per connection; a client seldom has many, but a test or a load generator
/// may hold hundreds, and 16 KiB still reads a typical message in one call.
pub(crate) const DEFAULT_READ_BUFFER_SIZE: usize = 16 * 1024;

/// Stack of every client thread (reader, writer, supervisor, connector): 256 KiB. They
/// keep their buffers on the heap; this leaves ample room for tungstenite's parser and
/// the handshake while a load test with hundreds of clients does not reserve gigabytes.
pub const THREAD_STACK_SIZE: usize = 256 * 1024;

/// Starts a client thread named `name`, with [`THREAD_STACK_SIZE`].
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, ClientError> {
    thread::Builder::new()
        .name(name.into())
        .stack_size(THREAD_STACK_SIZE)
        .spawn(f)
        .map_err(ClientError::Spawn)
}

/// Timeouts, limits and handshake headers of a client connection. Build it with
/// [`ClientConfig::default`] and set the fields you need.
///
/// ```
/// use std::time::Duration;
/// let mut config = wshub::client::ClientConfig::default();
/// config.connect_timeout = Duration::from_secs(3);
/// config.origin = Some("https://example.com".into());
/// config.headers.push(("Authorization".into(), "Bearer t0ken".into()));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Time a TCP connection to one resolved address may take. Default 10 s.
    pub connect_timeout: Duration,
    /// Time the server has to answer the upgrade request. Default 10 s.
    pub handshake_timeout: Duration,
    /// A write to the socket blocked this long ends the connection. Default 10 s.
    pub write_timeout: Duration,
    /// After a Close has gone out, how long to wait for the server's reply (and for it to
    /// close the TCP connection) before shutting the socket. Default 5 s.
    pub close_timeout: Duration,
    /// Ping the server after this long without sending anything, so a dead peer is
    /// noticed even when the server sends nothing. `None`: never. Default 20 s.
    pub ping_interval: Option<Duration>,
    /// Nothing at all received (not even a Pong) for this long ends the connection with
    /// [`ClientError::IdleTimeout`]. Must be longer than `ping_interval`. `None`: wait
    /// forever. Default 60 s (three of its own ping intervals; the wshub server pings every 30 s).
    pub idle_timeout: Option<Duration>,
    /// `Origin` header for the handshake; servers with an allowlist check it.
    pub origin: Option<String>,
    /// Extra handshake headers, sent in this order. The handshake's own headers (`Host`,
    /// `Upgrade`, `Connection`, `Sec-WebSocket-Key`, `-Version`, `-Extensions`) are
    /// refused with [`ClientError::InvalidHeader`].
    pub headers: Vec<(String, String)>,
    /// The bounds on the connection that the server has too: messages queued for the
    /// writer before [`Client::send`] blocks, the largest message and frame accepted
    /// from the server, bytes read at a time. Defaults: 256 messages, 16 MiB, 16 MiB,
    /// 16 KiB.
    pub limits: ConnectionLimits,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(60)),
            origin: None,
            headers: Vec::new(),
            limits: ConnectionLimits {
                queue_size: DEFAULT_QUEUE_SIZE,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            },
        }
    }
}

impl ClientConfig {
    /// Checks the configuration, including that every header is a valid HTTP header
    /// the client may set. [`Client::connect`] and [`ReconnectingClient::start`] call it.
    pub fn validate(&self) -> Result<(), ClientError> {
        limits::check(&ConnectionSettings {
            limits: &self.limits,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            timeouts: &[
                ("connect timeout", self.connect_timeout),
                ("handshake timeout", self.handshake_timeout),
                ("write timeout", self.write_timeout),
                ("close timeout", self.close_timeout),
            ],
        })
        .map_err(ClientError::InvalidConfig)?;
        connection::check_headers(self)
    }
}

/// What happened on a connection or a reconnecting session, in order.
///
/// A [`Client`] delivers only [`Event::Message`] and, last, [`Event::Disconnected`]. A
/// [`ReconnectingClient`] delivers all of them; after [`Event::GaveUp`], or once it has
/// been stopped or closed, its event channel is disconnected (iteration ends).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection is open: the handshake succeeded. Sends work from now on.
    Connected,
    /// A text or binary message from the server. (Pings and pongs are answered and
    /// consumed by the client; Close becomes [`Event::Disconnected`].)
    Message(Message),
    /// The open connection has ended.
    Disconnected {
        /// The server's Close frame, if one arrived: its code and reason. A reply to our
        /// own Close carries whatever code the server echoed.
        close: Option<CloseFrame>,
        /// Why the connection failed, if it did not end with a clean close handshake.
        error: Option<ClientError>,
    },
    /// A connection attempt failed (resolve, connect, or handshake).
    ConnectFailed {
        /// Which attempt: 0 for the first connection, then the number of the retry, as in
        /// [`Event::Reconnecting`].
        attempt: u32,
        /// What went wrong; [`ClientError::is_fatal`] says whether a retry can help.
        error: ClientError,
    },
    /// The supervisor is waiting `delay` before reconnection attempt number `attempt`
    /// (1 for the first retry after a success or after the start).
    Reconnecting {
        /// 1-based number of this retry since the last successful connection.
        attempt: u32,
        /// How long the supervisor waits before trying, jitter included.
        delay: Duration,
    },
    /// No more attempts: `max_retries` retries in a row failed, reconnecting is off, or
    /// the last error was fatal. The event channel disconnects after this.
    GaveUp {
        /// Retries made since the last successful connection.
        retries: u32,
    },
}

impl Event {
    /// For [`Event::Disconnected`] with a Close frame from the server: its code.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Event::Disconnected {
                close: Some(frame), ..
            } => Some(u16::from(frame.code)),
            _ => None,
        }
    }
}

/// Why a client operation failed. Each variant says whether it is fatal: whether trying
/// again as is (the same URL and configuration, or the same call) cannot succeed.
/// [`ClientError::is_fatal`] answers the same question in code; a [`ReconnectingClient`]
/// gives up at once on a fatal error and retries the rest.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not a `ws://HOST[:PORT][/PATH]` URL; `reason` says what is wrong.
    /// Fatal: fix the URL.
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme is not `ws`. `wss://` needs TLS, which wshub does not do (put a
    /// TLS-terminating proxy in front, or use a TLS-capable client). Fatal.
    UnsupportedScheme {
        /// The scheme as given (`wss`, `http`, ...).
        scheme: String,
    },
    /// An `Origin` or extra header is not a valid HTTP header, or would override one the
    /// handshake sets itself. Fatal: fix the header.
    InvalidHeader {
        /// The header name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A [`ClientConfig`] or backoff value that breaks a rule; the message says which.
    /// Fatal: fix the value.
    InvalidConfig(String),
    /// The host name did not resolve to any address. Not fatal: DNS may answer later.
    Resolve {
        /// The host name.
        host: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// No resolved address accepted a TCP connection (refused, unreachable, ...); the
    /// error is the last address's. Not fatal: the server may come back.
    Connect {
        /// The last address tried.
        addr: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// The TCP connection was not established within the connect timeout. Not fatal.
    ConnectTimeout {
        /// The last address tried.
        addr: String,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The server did not complete the upgrade within the handshake timeout. Not fatal.
    HandshakeTimeout(Duration),
    /// The server answered the upgrade with an HTTP status other than 101. Fatal for a
    /// 4xx other than 408 and 429 (the server has said no, and the same request will get
    /// the same answer); not fatal otherwise (a 503 from a busy or restarting server).
    Rejected {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, if any (lossy UTF-8, at most 200 bytes).
        body: String,
    },
    /// The handshake failed otherwise: the server closed the connection mid-handshake or
    /// answered something that is not a valid WebSocket upgrade. Not fatal.
    Handshake(tungstenite::Error),
    /// The connection failed: reset, EOF without a Close frame, or a write that blocked
    /// for the write timeout. Not fatal: reconnect.
    Io(io::Error),
    /// The server broke the WebSocket protocol (a masked frame, invalid UTF-8 in a text
    /// message, a message over the size limit...). The client answered with a Close
    /// (1002, 1007 or 1009) and dropped the connection. Not fatal: reconnect.
    Protocol(tungstenite::Error),
    /// Nothing at all arrived from the server for the idle timeout. Not fatal.
    IdleTimeout(Duration),
    /// The server did not answer our Close within the close timeout; the socket was shut
    /// down without it. Not fatal.
    CloseTimeout(Duration),
    /// A send on a connection that is closing or closed. Fatal for that [`Client`]: every
    /// later send fails the same way; connect again.
    Closed,
    /// A [`ReconnectingClient::send`] while no connection is open (nothing is queued).
    /// Not fatal: send again after the next [`Event::Connected`].
    NotConnected,
    /// A close code that an endpoint may not send (RFC 6455 §7.4: 1004-1006, 1015, below
    /// 1000, 1016-2999, from 5000). Fatal for that call.
    InvalidCloseCode(u16),
    /// A message that cannot be sent: a Ping or Pong payload over 125 bytes
    /// (RFC 6455 §5.5). Fatal for that message.
    InvalidMessage(&'static str),
    /// A client thread could not be spawned (the process is out of threads or memory).
    /// Not fatal: a later attempt may succeed.
    Spawn(io::Error),
}

impl ClientError {
    /// True when retrying the same operation as is cannot succeed (see each variant).
    pub fn is_fatal(&self) -> bool {
        match self {
            ClientError::InvalidUrl { .. }
            | ClientError::UnsupportedScheme { .. }
            | ClientError::InvalidHeader { .. }
            | ClientError::InvalidConfig(_)
            | ClientError::Closed
            | ClientError::InvalidCloseCode(_)
            | ClientError::InvalidMessage(_) => true,
            ClientError::Rejected { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            _ => false,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidUrl { url, reason } => write!(f, "invalid URL {url:?}: {reason}"),
            ClientError::UnsupportedScheme { scheme } if scheme.eq_ignore_ascii_case("wss") => f.write_str(
                "wss:// (WebSocket over TLS) is not supported: use ws://, or a TLS-terminating proxy",
            ),
            ClientError::UnsupportedScheme { scheme } => {
                write!(
                    f,
                    "unsupported URL scheme {scheme:?}: expected ws://HOST[:PORT][/PATH]"
                )
            }
            ClientError::InvalidHeader { name, reason } => write!(f, "invalid header {name:?}: {reason}"),
            ClientError::InvalidConfig(m) => write!(f, "invalid client configuration: {m}"),
            ClientError::Resolve { host, source } => write!(f, "cannot resolve {host}: {source}"),
            ClientError::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            ClientError::ConnectTimeout { addr, timeout } => {
                write!(f, "cannot connect to {addr}: no answer within {timeout:?}")
            }
            ClientError::HandshakeTimeout(t) => {
                write!(f, "the server did not complete the handshake within {t:?}")
            }
            ClientError::Rejected { status, body } => {
                let reason = tungstenite::http::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                write!(f, "the server refused the upgrade: {status} {reason}")?;
                if !body.is_empty() {
                    write!(f, " ({body})")?;
                }
                Ok(())
            }
            ClientError::Handshake(e) => write!(f, "handshake failed: {e}"),
            ClientError::Io(e) => write!(f, "connection failed: {e}"),
            ClientError::Protocol(e) => write!(f, "the server broke the protocol: {e}"),
            ClientError::IdleTimeout(t) => write!(f, "nothing received from the server for {t:?}"),
            ClientError::CloseTimeout(t) => write!(f, "the server did not answer our Close within {t:?}"),
            ClientError::Closed => f.write_str("the connection is closed"),
            ClientError::NotConnected => f.write_str("not connected"),
            ClientError::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            ClientError::InvalidMessage(m) => write!(f, "cannot send this message: {m}"),
            ClientError::Spawn(e) => write!(f, "cannot spawn a client thread: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Resolve { source, .. } | ClientError::Connect { source, .. } => Some(source),
            ClientError::Io(e) | ClientError::Spawn(e) => Some(e),
            ClientError::Handshake(e) | ClientError::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

/// `Instant::now() + d`, for any `d`: a timeout too large to represent is as good as
/// never (a year from now).
pub(crate) fn after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Close codes an endpoint may send (RFC 6455 §7.4.1 and the IANA registry): the
/// defined ones except 1004 (reserved), 1005, 1006 and 1015 (never on the wire), and
/// 3000-4999 for libraries and applications.
pub(crate) fn close_code_is_sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A Close frame for `code` and `reason`, the reason cut at a character boundary to fit
/// a control frame's 125 bytes (2 of which are the code).
pub(crate) fn close_frame(code: u16, reason: &str) -> Result<CloseFrame, ClientError> {
    if !close_code_is_sendable(code) {
        return Err(ClientError::InvalidCloseCode(code));
    }
    Ok(CloseFrame {
        code: code.into(),
        reason: crate::ws::wire::cut_reason(reason).to_owned().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(ClientConfig::default().validate().is_ok());
    }

    #[test]
    fn ping_interval_must_be_shorter_than_idle_timeout() {
        let mut c = ClientConfig {
            ping_interval: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        assert!(matches!(c.validate(), Err(ClientError::InvalidConfig(_))));
        c.idle_timeout = None;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn every_timeout_must_be_greater_than_zero() {
        limits::assert_every_timeout_is_checked(
            &ClientConfig::default(),
            ClientConfig::validate,
            &[
                ("ping interval", |c| c.ping_interval = Some(Duration::ZERO)),
                ("idle timeout", |c| c.idle_timeout = Some(Duration::ZERO)),
                ("connect timeout", |c| c.connect_timeout = Duration::ZERO),
                ("handshake timeout", |c| c.handshake_timeout = Duration::ZERO),
                ("write timeout", |c| c.write_timeout = Duration::ZERO),
                ("close timeout", |c| c.close_timeout = Duration::ZERO),
            ],
        );
    }

    #[test]
    fn close_codes_follow_rfc_6455() {
        for ok in [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4999] {
            assert!(close_code_is_sendable(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(!close_code_is_sendable(bad), "{bad}");
            assert!(matches!(close_frame(bad, ""), Err(ClientError::InvalidCloseCode(c)) if c == bad));
        }
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let frame = close_frame(1000, &long).unwrap();
        assert!(frame.reason.len() <= 123);
        assert_eq!(frame.reason.len() % 2, 0);
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        assert!(after(Duration::MAX) > std::time::Instant::now());
        let c = ClientConfig {
            idle_timeout: None,
            connect_timeout: Duration::MAX,
            close_timeout: Duration::MAX,
            ping_interval: Some(Duration::MAX),
            ..ClientConfig::default()
        };
        assert!(c.validate().is_ok());
    }

    #[test]
    fn fatal_errors_are_the_ones_a_retry_cannot_fix() {
        let rejected = |status| ClientError::Rejected {
            status,
            body: String::new(),
        };
        assert!(rejected(404).is_fatal());
        assert!(rejected(403).is_fatal());
        assert!(!rejected(429).is_fatal());
        assert!(!rejected(503).is_fatal());
        assert!(ClientError::UnsupportedScheme { scheme: "wss".into() }.is_fatal());
        assert!(!ClientError::Io(io::ErrorKind::ConnectionReset.into()).is_fatal());
        assert!(!ClientError::NotConnected.is_fatal());
    }
}
