//! Server configuration: one plain struct, conservative defaults, validated once.
//!
//! Owns nothing at run time. [`Config`] is built by the caller (or by the CLI, which
//! maps each flag onto one field and adds nothing of its own), checked by
//! [`Config::validate`] when the server starts, and then copied into each thread that
//! needs it. Every timeout is its own named [`Duration`] (as ureq's `Timeouts` does) and
//! every bound is a named constant below with the reason for its size. The bounds the
//! client puts on a connection too sit together in one [`ConnectionLimits`], the type
//! both configurations hold, checked by the same rules (`ws::limits`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::pubsub::Limits;
use crate::server::error::ConfigError;
use crate::ws::limits::{self, ConnectionLimits, ConnectionSettings};

/// Messages a client's outbound queue holds before the client counts as a slow consumer
/// and is disconnected. 256 frames absorb a burst of broadcasts while the writer is
/// momentarily behind, yet cap what one stalled reader can pin: 256 shared
/// `Arc` handles (the frame bytes themselves are shared with every other recipient).
pub(crate) const DEFAULT_QUEUE_SIZE: usize = 256;

/// Concurrent connections (in handshake or open) before new ones get `503`. Each
/// connection is two threads, so this keeps the process well below a default `pid_max`
/// of 32768; what a given box holds is in the benchmarks, not here.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Largest message (after reassembly of fragments) a client may send. 1 MiB is plenty
/// for chat-like traffic and bounds what one connection can make the server buffer.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 1 << 20;

/// Largest single frame payload a client may send. tungstenite checks it from the frame
/// header, before buffering the payload, so an announced 2^63-byte frame costs nothing.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 20;

/// Bytes tungstenite reads from the socket at a time (its read buffer, allocated and
/// zeroed per connection, so it is resident even for an idle client). tungstenite's own
/// default is 128 KiB, which would be 1.25 GiB for ten thousand idle clients. 1 KiB
/// holds dozens of typical chat messages per `read`. The trade-off is larger messages:
/// the buffer grows to hold the frame being read, but each `read` still asks for at most
/// this much, so a message takes one `read` call per this many bytes. Raise it
/// (`--read-buffer-size 64KiB`) for bulk transfer.
pub(crate) const DEFAULT_READ_BUFFER_SIZE: usize = 1024;

/// Stack reserved for each connection thread. The default Rust stack is 2 MiB of address
/// space; only touched pages cost memory, but 20 000 threads x 2 MiB is 40 GiB of
/// reservations. 128 KiB is many times what the reader and writer touch (the reader
/// keeps within two pages: `tests/threads.rs` checks it) and leaves room for a user
/// handler's moderate recursion. Raise it with `--thread-stack-size` for handlers that need more.
pub(crate) const DEFAULT_THREAD_STACK_SIZE: usize = 128 * 1024;

/// Default [`Config::spare_readers`].
pub(crate) const DEFAULT_SPARE_READERS: usize = 64;

/// Publications each channel on `/ws` keeps for recovery. 100 covers a client that was
/// away for a few seconds on a busy channel or minutes on a quiet one; history holds at
/// most this many times `limits.max_message_size` bytes per channel.
pub(crate) const DEFAULT_HISTORY_SIZE: usize = 100;

/// How long a publication stays in a channel's history: 5 minutes, long enough for a
/// phone switching networks or a server restart behind a load balancer.
pub(crate) const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);

/// How long a `pub`'s idempotency key is remembered: 5 minutes, as long as a client may
/// take to reconnect and retry an unacknowledged publication.
pub(crate) const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(300);

/// Subscriptions one `/ws` connection may hold. 128 is plenty for an application's views
/// and bounds what one client makes the hub track.
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS: usize = 128;

/// Channels whose state may exist at once. Bounds the hub's memory: each channel holds
/// at most `history_size x limits.max_message_size` bytes of history.
pub(crate) const DEFAULT_MAX_CHANNELS: usize = 10_000;

/// The kernel's send buffer for each connection's socket (`SO_SNDBUF`; Linux doubles
/// the value for its bookkeeping). Left to itself the kernel grows a socket's buffer to
/// megabytes for a client that does not read, and keeps it after the client is cut for
/// as long as the client keeps its end open; this bounds what one connection can make
/// the kernel hold. 64 KiB keeps a fast reader's socket busy and makes a slow one's
/// queue fill (and the client be cut) early.
pub(crate) const DEFAULT_SEND_BUFFER_SIZE: usize = 64 * 1024;

/// Bytes of broadcasts the hub's inbox may hold, from every sender together. Bounds the
/// inbox's memory whatever the message size (its message count alone would allow
/// 16 384 messages of the largest size).
pub(crate) const DEFAULT_MAX_INBOX_BYTES: usize = 64 << 20;

/// Bytes one connection's outbound queue may hold. A broadcast's bytes are shared by
/// every queue holding it, but a queue keeps what it holds alive: this bounds what one
/// slow reader can pin. Four of the largest default messages.
pub(crate) const DEFAULT_MAX_QUEUE_BYTES: usize = 4 << 20;

/// Broadcasts per second one connection may publish before its publishing waits.
pub(crate) const DEFAULT_MAX_PUBLISH_RATE: u32 = 1000;

/// Smallest stack we accept: below this, glibc's guard page and thread-local storage
/// leave too little for tungstenite's parser.
pub(crate) const MIN_THREAD_STACK_SIZE: usize = 32 * 1024;

/// The publish API's key: a string that `Debug` does not show, so a logged or printed
/// [`Config`] does not leak it. Build it from a `String` or `&str` (`Some("k".into())`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> ApiKey {
        ApiKey(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> ApiKey {
        ApiKey(key.to_owned())
    }
}

/// The secret token mode checks `hello` tokens with (HS256). Like [`ApiKey`], `Debug`
/// does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(Vec<u8>);

impl TokenSecret {
    /// The secret itself.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

impl From<&str> for TokenSecret {
    fn from(secret: &str) -> TokenSecret {
        TokenSecret(secret.as_bytes().to_vec())
    }
}

impl From<Vec<u8>> for TokenSecret {
    fn from(secret: Vec<u8>) -> TokenSecret {
        TokenSecret(secret)
    }
}

/// The default of [`Config::max_presence_list`].
pub(crate) const DEFAULT_MAX_PRESENCE_LIST: usize = 1000;

/// Configuration of a [`Server`](crate::Server).
///
/// Build it with [`Config::default`] and set the fields you need; the server calls
/// [`Config::validate`] once at start.
///
/// ```
/// use std::time::Duration;
/// let mut config = wshub::Config::default();
/// config.addr = "127.0.0.1:0".parse().unwrap();
/// config.idle_timeout = Duration::from_secs(60);
/// config.ping_interval = Duration::from_secs(20);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on. Port 0 takes a free port; [`Server::local_addr`]
    /// tells which. Default `127.0.0.1:8080` (loopback: exposing a server is a choice).
    ///
    /// [`Server::local_addr`]: crate::Server::local_addr
    pub addr: SocketAddr,
    /// Time a client has to send a complete HTTP request head. Default 5 s: a slowloris
    /// client holds a thread for at most this long.
    pub handshake_timeout: Duration,
    /// A client that sends nothing at all (not even a pong) for this long is closed with
    /// 1001. Default 60 s: two ping intervals, so a dead peer is found within a minute
    /// and a live one may miss answering one ping.
    pub idle_timeout: Duration,
    /// How often the server pings each client, so live but quiet clients are not idle.
    /// Must be shorter than `idle_timeout`. Default 30 s.
    ///
    /// The trade-off: each ping costs the server one `sendmsg` from the hub and one
    /// wake-up of the client's reader thread for its Pong, so idle clients cost
    /// `clients / ping_interval` of those per second: halving the interval doubles the
    /// idle load. 30 s stays under the 60 s
    /// idle timeouts of common proxies (nginx's `proxy_read_timeout`, cloud load
    /// balancers), which would otherwise drop a quiet connection; gorilla/websocket's
    /// example pings every 54 s, Socket.IO every 25 s.
    pub ping_interval: Duration,
    /// A write to a client blocked this long disconnects it. Default 5 s.
    pub write_timeout: Duration,
    /// How long a connection's writer thread, started when a frame had to wait for the
    /// client's socket, stays with nothing to do before it ends. Default 1 s. An idle
    /// connection has no writer thread (frames that fit the socket at once are written by
    /// whoever sends them); this is the price of a slow reader: a longer wait saves
    /// spawns for clients that lag often, a shorter one gives the thread back sooner.
    pub writer_idle: Duration,
    /// How long a connection thread whose connection has ended waits for the accept
    /// thread to hand it the next one before it exits (a spare, see `spare_readers`).
    /// Default 1 s: a burst's threads are given back a second after it, and steady
    /// traffic reuses them.
    pub spare_reader_idle: Duration,
    /// Connection threads that may wait as spares at once. A new connection goes to a
    /// waiting spare instead of a new thread, which saves a thread's start and exit
    /// (most of what a short connection costs the server); each spare holds a thread, its
    /// stack's touched pages and four memory mappings while it waits. `0`: every
    /// connection gets a new thread, which ends with it. Default 64.
    pub spare_readers: usize,
    /// How long a shutdown waits for clients to answer Close 1001 before forcing the
    /// rest closed. Also the time a connection waits for the peer's Close reply after
    /// sending its own. Default 10 s.
    pub drain_timeout: Duration,
    /// Connections (in handshake or open) beyond which new ones get `503`.
    /// Default 10 000.
    pub max_connections: usize,
    /// Allowed `Origin` header values. Empty: any origin. Otherwise a handshake whose
    /// `Origin` is missing from the list gets `403` (cross-site WebSocket hijacking).
    pub allowed_origins: Vec<String>,
    /// The bounds on each connection that the client has too: messages queued for its
    /// writer (past them the client is disconnected as a slow consumer), the largest
    /// message and frame it may send (past them, Close 1009; the message size also
    /// bounds a `POST /api/publish` body), bytes read at a time. Defaults: 256 messages,
    /// 1 MiB, 1 MiB, 1 KiB.
    pub limits: ConnectionLimits,
    /// Messages per second one connection may send, pings and pongs included; over it
    /// gets Close 1008. `None` (the default): no limit.
    pub max_message_rate: Option<u32>,
    /// Broadcasts per second one connection may publish (what its handler hands the hub
    /// through [`Connection::broadcast`](crate::Connection::broadcast), as `/chat` does);
    /// past it the publisher waits, which stops its reader reading and slows that
    /// client alone. It may burst up to one second's worth. Default 1000. `0`: no limit.
    pub max_publish_rate: u32,
    /// Bytes of broadcasts the hub's inbox may hold in all; past it, publishers wait.
    /// Default 64 MiB.
    pub max_inbox_bytes: usize,
    /// Bytes one connection's outbound queue may hold; past it (or past
    /// `limits.queue_size` messages) the client is a slow consumer and is cut. A single
    /// message larger than this still goes to an empty queue. Default 4 MiB.
    pub max_queue_bytes: usize,
    /// Stack size of every connection thread. Default 128 KiB.
    pub thread_stack_size: usize,
    /// Serve the demo page at `GET /`. Default `true`. (`GET /wshub.js`, the browser
    /// client, is served either way.)
    pub demo: bool,
    /// Serve `GET /metrics` (Prometheus text). Default `true`. The counters run either
    /// way; this only decides whether the listener shows them.
    pub metrics: bool,
    /// The key `POST /api/publish` requires (`Authorization: apikey KEY`). `None` (the
    /// default): the publish API is off and its path is `404`.
    pub api_key: Option<ApiKey>,
    /// Publications each `/ws` channel keeps for recovery (`sub` with `since`, `history`).
    /// 0 keeps none: recovery then succeeds only for a client that missed nothing.
    /// Default 100.
    pub history_size: usize,
    /// How long a publication stays in history. Default 5 min.
    pub history_ttl: Duration,
    /// How long a `pub`'s `(channel, key)` is remembered, so a retried `pub` publishes
    /// nothing new. Default 5 min.
    pub idempotency_window: Duration,
    /// Subscriptions one `/ws` connection may hold; past it `sub` gets error 4.
    /// Default 128.
    pub max_subscriptions: usize,
    /// Channels whose state may exist at once; past it `sub` or `pub` to a new channel
    /// gets error 4. Default 10 000.
    pub max_channels: usize,

    /// The kernel's send buffer per connection (`SO_SNDBUF`), in bytes: what a client
    /// that stops reading can make the kernel hold for it, on top of its queue. Default
    /// 64 KiB. `0`: leave it to the kernel's autotuning (up to `net.ipv4.tcp_wmem`'s
    /// maximum, megabytes, per connection).
    pub send_buffer_size: usize,
    /// Where channel streams live: [`Engine::Memory`] (the default) or
    /// [`Engine::Redis`], shared by every node using the same Redis. See `docs/redis.md`.
    pub engine: Engine,
    /// With the Redis engine: the limit on connecting to Redis and on each reply from it.
    /// A `pub` that gets no answer within it fails with error 6. Default 2 s.
    pub engine_timeout: Duration,
    /// Token mode on `/ws`: `hello` with an HS256 JWT signed by this secret must come
    /// first, within the handshake timeout (else Close 4001). `None` (the default): open
    /// mode, `hello` optional. An authorizer set on the builder takes precedence.
    pub token_secret: Option<TokenSecret>,
    /// Members a `presence` reply lists at most (the counts are always exact).
    /// Default 1000.
    pub max_presence_list: usize,
    /// With the Redis engine: how long a member's presence entry lives in Redis unless
    /// its node refreshes it, so the most a node that dies (SIGKILL, power loss) leaves
    /// its members listed. Default 60 s.
    pub presence_ttl: Duration,
    /// With the Redis engine: how often each node gives its members' entries a new
    /// expiry. Must be shorter than `presence_ttl`; default 20 s, so an entry survives
    /// two missed refreshes (a busy Redis, a slow node) before it expires.
    pub presence_refresh: Duration,
}

/// Where `/ws` channel streams (epochs, offsets, history, idempotency keys) live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Engine {
    /// In this process (the default): one node, nothing else to run.
    #[default]
    Memory,
    /// In the Redis at this URL (`redis://HOST:PORT/DB`), so channels span every node
    /// that uses it. Needs the `redis` cargo feature (the binary has it).
    Redis(String),
}

/// The default [`Config::presence_ttl`].
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(60);

/// The default [`Config::presence_refresh`].
pub const DEFAULT_PRESENCE_REFRESH: Duration = Duration::from_secs(20);

/// The default [`Config::engine_timeout`].
pub const DEFAULT_ENGINE_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            limits: ConnectionLimits {
                queue_size: DEFAULT_QUEUE_SIZE,
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                max_frame_size: DEFAULT_MAX_FRAME_SIZE,
                read_buffer_size: DEFAULT_READ_BUFFER_SIZE,
            },
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            writer_idle: Duration::from_secs(1),
            spare_reader_idle: Duration::from_secs(1),
            spare_readers: DEFAULT_SPARE_READERS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_origins: Vec::new(),
            max_message_rate: None,
            max_publish_rate: DEFAULT_MAX_PUBLISH_RATE,
            max_inbox_bytes: DEFAULT_MAX_INBOX_BYTES,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            thread_stack_size: DEFAULT_THREAD_STACK_SIZE,
            demo: true,
            metrics: true,
            api_key: None,
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_channels: DEFAULT_MAX_CHANNELS,

            send_buffer_size: DEFAULT_SEND_BUFFER_SIZE,
            engine: Engine::Memory,
            engine_timeout: DEFAULT_ENGINE_TIMEOUT,
            token_secret: None,
            max_presence_list: DEFAULT_MAX_PRESENCE_LIST,
            presence_ttl: DEFAULT_PRESENCE_TTL,
            presence_refresh: DEFAULT_PRESENCE_REFRESH,
        }
    }
}

impl Config {
    /// Checks the configuration once, before anything starts. Every rule here is one a
    /// running server would otherwise break in a confusing way.
    pub fn validate(&self) -> Result<(), ConfigError> {
        limits::check(&ConnectionSettings {
            limits: &self.limits,
            ping_interval: Some(self.ping_interval),
            idle_timeout: Some(self.idle_timeout),
            timeouts: &[
                ("handshake timeout", self.handshake_timeout),
                ("write timeout", self.write_timeout),
                ("drain timeout", self.drain_timeout),
                ("writer idle", self.writer_idle),
                ("spare reader idle", self.spare_reader_idle),
                ("history TTL", self.history_ttl),
                ("idempotency window", self.idempotency_window),
                ("engine timeout", self.engine_timeout),
                ("presence TTL", self.presence_ttl),
                ("presence refresh", self.presence_refresh),
            ],
        })
        .map_err(ConfigError::new)?;
        if self.max_connections == 0 {
            return Err(ConfigError::new("max connections must be at least 1"));
        }
        if self.max_inbox_bytes == 0 || self.max_queue_bytes == 0 {
            return Err(ConfigError::new(
                "inbox and queue byte limits must be at least 1 byte",
            ));
        }
        if self.max_message_rate == Some(0) {
            return Err(ConfigError::new("max message rate must be at least 1 per second"));
        }
        if self.max_subscriptions == 0 || self.max_channels == 0 {
            return Err(ConfigError::new(
                "max subscriptions and max channels must be at least 1",
            ));
        }
        if self.token_secret.as_ref().is_some_and(|s| s.0.is_empty()) {
            return Err(ConfigError::new("the token secret must not be empty"));
        }
        if self
            .api_key
            .as_ref()
            .is_some_and(|k| k.0.is_empty() || k.0.contains(char::is_whitespace))
        {
            return Err(ConfigError::new(
                "the API key must be non-empty and have no whitespace",
            ));
        }
        if let Engine::Redis(url) = &self.engine {
            if !cfg!(feature = "redis") {
                return Err(ConfigError::new(
                    "the Redis engine needs wshub built with the `redis` feature",
                ));
            }
            if !url.starts_with("redis://") {
                return Err(ConfigError::new(format!(
                    "engine must be `memory` or redis://HOST:PORT/DB, not {url:?}"
                )));
            }
        }
        if self.presence_refresh >= self.presence_ttl {
            return Err(ConfigError::new(format!(
                "presence refresh ({:?}) must be shorter than the presence TTL ({:?}), \
                 or live members would expire between refreshes",
                self.presence_refresh, self.presence_ttl
            )));
        }
        if self.thread_stack_size < MIN_THREAD_STACK_SIZE {
            return Err(ConfigError::new(format!(
                "thread stack size must be at least {} KiB",
                MIN_THREAD_STACK_SIZE / 1024
            )));
        }
        Ok(())
    }

    /// The bounds of the `/ws` channel state.
    pub(crate) fn channel_limits(&self) -> Limits {
        Limits {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            idempotency_window: self.idempotency_window,
            max_subscriptions: self.max_subscriptions,
            max_channels: self.max_channels,
            max_publication_size: self.limits.max_message_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn the_presence_refresh_must_be_shorter_than_the_presence_ttl() {
        let mut c = Config::default();
        assert!(c.presence_refresh < c.presence_ttl);
        c.presence_refresh = c.presence_ttl;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("presence refresh"), "{err}");
        c.presence_refresh = Duration::ZERO;
        assert!(c.validate().is_err(), "a zero refresh would spin the hub");
        c.presence_refresh = Duration::from_millis(500);
        c.presence_ttl = Duration::from_secs(2);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn a_redis_engine_needs_a_redis_url() {
        let mut c = Config {
            engine: Engine::Redis("127.0.0.1:6379".into()),
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("redis://HOST:PORT/DB"), "{err}");
        c.engine = Engine::Redis("redis://127.0.0.1:6379/0".into());
        assert_eq!(c.validate().is_ok(), cfg!(feature = "redis"));
    }

    #[test]
    fn ping_interval_must_be_shorter_than_idle_timeout() {
        let config = Config {
            ping_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("ping interval"), "{err}");
    }

    #[test]
    fn channel_limits_must_allow_something() {
        for config in [
            Config {
                max_channels: 0,
                ..Config::default()
            },
            Config {
                max_subscriptions: 0,
                ..Config::default()
            },
            Config {
                history_ttl: Duration::ZERO,
                ..Config::default()
            },
        ] {
            assert!(config.validate().is_err());
        }
        let no_history = Config {
            history_size: 0,
            ..Config::default()
        };
        assert!(no_history.validate().is_ok());
    }

    #[test]
    fn debug_does_not_show_the_api_key() {
        let config = Config {
            api_key: Some("hunter2".into()),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.api_key.unwrap().expose(), "hunter2");
    }

    #[test]
    fn an_empty_or_spaced_api_key_is_refused() {
        for key in ["", "two words"] {
            let config = Config {
                api_key: Some(key.into()),
                ..Config::default()
            };
            assert!(config.validate().is_err(), "{key:?}");
        }
    }

    #[test]
    fn zero_message_or_frame_sizes_are_rejected() {
        for (message, frame) in [(0, 1024), (1024, 0)] {
            let mut config = Config::default();
            config.limits.max_message_size = message;
            config.limits.max_frame_size = frame;
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains("message and frame size limits must be at least 1 byte"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_timeout_must_be_greater_than_zero() {
        limits::assert_every_timeout_is_checked(
            &Config::default(),
            Config::validate,
            &[
                ("ping interval", |c| c.ping_interval = Duration::ZERO),
                ("idle timeout", |c| c.idle_timeout = Duration::ZERO),
                ("handshake timeout", |c| c.handshake_timeout = Duration::ZERO),
                ("write timeout", |c| c.write_timeout = Duration::ZERO),
                ("drain timeout", |c| c.drain_timeout = Duration::ZERO),
                ("writer idle", |c| c.writer_idle = Duration::ZERO),
                ("spare reader idle", |c| c.spare_reader_idle = Duration::ZERO),
                ("history TTL", |c| c.history_ttl = Duration::ZERO),
                ("idempotency window", |c| c.idempotency_window = Duration::ZERO),
                ("engine timeout", |c| c.engine_timeout = Duration::ZERO),
                ("presence TTL", |c| c.presence_ttl = Duration::ZERO),
                ("presence refresh", |c| c.presence_refresh = Duration::ZERO),
            ],
        );
    }
}
