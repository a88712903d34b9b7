//! Starting a server, and the handle an embedding program keeps.
//!
//! **Owns** nothing that runs: [`Server::start`] binds the listener and spawns the hub,
//! accept and overflow threads, then returns at once. The [`Server`] value holds their
//! handles until [`Server::wait`] or [`Server::shutdown`] hands them to the drain
//! ([`crate::server::shutdown`]). Dropping a `Server` drains it too, so no thread outlives it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded};
use log::{info, warn};

use crate::pubsub::auth::{Authorizer, JwtAuthorizer, Open};
use crate::server::accept::{self, Acceptor};
use crate::server::capacity::{self, SystemLimits};
use crate::server::config::Engine;
use crate::server::config::{Config, DEFAULT_MAX_CONNECTIONS};
use crate::server::connection::Shared;
use crate::server::engine::EngineHealth;
#[cfg(feature = "redis")]
use crate::server::error::ConfigError;
use crate::server::error::Error;
use crate::server::handler::{Handler, Routes};
use crate::server::hub::{self, Hub, HubConfig};
use crate::server::metrics::Metrics;
use crate::server::shutdown::{self, DrainReport, EndedThreads, Running, ShutdownHandle};
use crate::server::spare;
use crate::server::threads::ConnThreads;
use crate::server::writer::{WriterTimers, Writers};

/// Adds routes before starting a [`Server`]. Built-in routes: `/echo`, `/chat`, `/ws`
/// (channels, protocol v1: see `docs/protocol.md`), and the plain-HTTP `/healthz`;
/// [`ServerBuilder::without_builtin_routes`] removes the WebSocket ones, for a program
/// that serves only its own (add `.route("/ws", wshub::Ws)` back to keep channels).
pub struct ServerBuilder {
    config: Config,
    routes: Routes,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl ServerBuilder {
    /// Serves WebSocket connections on `path` (exact match, no query) with `handler`,
    /// replacing any route already there. Connections on `path` form one broadcast
    /// topic named `path`.
    pub fn route(mut self, path: &str, handler: impl Handler) -> ServerBuilder {
        self.routes.insert(path, Arc::new(handler));
        self
    }

    /// Decides who `/ws` clients are and what they may do (`hello`, and each `sub`,
    /// `pub`, `history` and `presence`), in place of the default: [`JwtAuthorizer`] when
    /// [`Config::token_secret`] is set, else [`Open`]. It runs on each connection's
    /// reader thread, never on the hub thread, so it may block briefly.
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> ServerBuilder {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Removes the built-in WebSocket routes (`/echo`, `/chat`, `/ws`), and any route added so
    /// far, so the server serves only the routes added after this (and `/healthz`). An
    /// embedding program calls it first, so that it does not expose a chat anyone can
    /// broadcast on.
    ///
    /// ```
    /// # use wshub::{Config, Connection, Message, Server};
    /// let mut config = Config::default();
    /// config.addr = "127.0.0.1:0".parse().unwrap();
    /// let server = Server::builder(config)
    ///     .without_builtin_routes()
    ///     .route("/ticks", |_: &Connection, _: Message| {})
    ///     .start()
    ///     .unwrap();
    /// let chat = format!("ws://{}/chat", server.local_addr());
    /// assert!(tungstenite::connect(chat.as_str()).is_err()); // 404: no such route
    /// # server.shutdown();
    /// ```
    pub fn without_builtin_routes(mut self) -> ServerBuilder {
        self.routes.clear();
        self
    }

    /// Validates the configuration, binds, starts the threads and returns at once.
    pub fn start(self) -> Result<Server, Error> {
        let ServerBuilder {
            mut config,
            routes,
            authorizer,
        } = self;
        config.validate()?;
        let listener = TcpListener::bind(config.addr).map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.addr,
            source,
        })?;
        widen_backlog(&listener);
        let limits = SystemLimits::read();
        if let Some((ceiling, limit)) = capacity::ceiling(&limits, config.spare_readers) {
            if ceiling < config.max_connections {
                let ceiling = ceiling.max(1);
                // On a stock kernel this is the normal case, not a fault: say it plainly.
                // A warning is kept for a limit the user set above what the box allows.
                let msg = format!(
                    "serving at most {ceiling} connections: {limit} leaves room for no more \
                     (each connection needs 1 thread and 4 memory mappings, plus room for one \
                     writer thread per {} connections and {} spare connection threads; {})",
                    capacity::CONNECTIONS_PER_WRITER,
                    config.spare_readers,
                    capacity::how_to_raise(limit)
                );
                if config.max_connections == DEFAULT_MAX_CONNECTIONS {
                    info!("{msg}");
                } else {
                    warn!("max connections lowered from {}: {msg}", config.max_connections);
                }
                config.max_connections = ceiling;
            }
        }

        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(EngineHealth::up());
        let (hub, inbox) = hub::inbox(
            config.max_inbox_bytes,
            routes.paths(),
            metrics.clone(),
            health.clone(),
        );
        // With Redis, client ids carry a prefix drawn here, unique across the nodes.
        let client_prefix = match config.engine {
            Engine::Memory => String::new(),
            _ => node_prefix(),
        };
        let remote = remote_engine(
            &config,
            config.channel_limits(),
            &client_prefix,
            health,
            hub.clone(),
        )?;
        let hub_config = HubConfig {
            ping_interval: config.ping_interval,
            limits: config.channel_limits(),
            hello_timeout: config.handshake_timeout,
            max_presence_list: config.max_presence_list,
            client_prefix,
        };
        let hub_metrics = metrics.clone();
        let hub_thread = spawn("wshub-hub", move || {
            hub::run(inbox, hub_config, hub_metrics, remote)
        })?;
        let authorizer = authorizer.unwrap_or_else(|| match &config.token_secret {
            Some(secret) => Arc::new(JwtAuthorizer::new(secret.expose())),
            None => Arc::new(Open),
        });

        let (overflow_tx, overflow_rx) = bounded(accept::OVERFLOW_QUEUE);
        let overflow = spawn("wshub-overflow", move || accept::run_overflow(overflow_rx))?;

        let stop = Arc::new(AtomicBool::new(false));
        let (wake_tx, wake_rx) = bounded(0);
        let (alive_tx, alive_rx) = bounded(0);
        let live = Arc::new(AtomicUsize::new(0));
        let drain_timeout = config.drain_timeout;
        let handshake_timeout = config.handshake_timeout;
        let writers = Arc::new(Writers::new(
            capacity::writers_allowed(&limits, config.max_connections, config.spare_readers),
            config.thread_stack_size,
            WriterTimers {
                close_timeout: config.drain_timeout,
                idle: config.writer_idle,
            },
            metrics.clone(),
        ));
        let threads = Arc::new(ConnThreads::default());
        let (spare_tx, spares) = spare::spares(config.spare_readers, config.spare_reader_idle);
        let acceptor = Acceptor {
            listener,
            shared: Arc::new(Shared {
                config,
                routes,
                authorizer,
                hub: hub.clone(),
                metrics,
                writers,
                threads: threads.clone(),
                spares,
            }),
            stop: stop.clone(),
            wake: wake_rx,
            live: live.clone(),
            alive: alive_tx,
            overflow: overflow_tx,
            spare: spare_tx,
        };
        let accept = spawn("wshub-accept", move || acceptor.run())?;

        let (trigger_tx, trigger_rx) = bounded(1);
        Ok(Server {
            local_addr,
            hub: hub.clone(),
            live,
            trigger_tx,
            trigger_rx,
            running: Some(Running {
                local_addr,
                stop,
                wake: wake_tx,
                accept,
                threads,
                overflow,
                hub,
                hub_thread,
                alive: alive_rx,
                drain_timeout,
                handshake_timeout,
            }),
        })
    }
}

/// Connections the kernel queues for `accept()`. std's `TcpListener::bind` asks for 128;
/// when a restart brings every client back at once, the kernel drops SYNs past that and
/// each dropped client waits a full second to retry. 4096 (the kernel clamps it to
/// `net.core.somaxconn`) absorbs such a wave; the queue costs nothing while empty.
const LISTEN_BACKLOG: i32 = 4096;

/// Calls listen(2) again with [`LISTEN_BACKLOG`]: on Linux, listening again on a
/// listening socket just updates its backlog. Best effort: on failure std's 128 stays.
fn widen_backlog(listener: &TcpListener) {
    if let Err(e) = socket2::SockRef::from(listener).listen(LISTEN_BACKLOG) {
        log::debug!("could not widen the listen backlog: {e}");
    }
}

/// Starts the Redis engine's threads when the config asks for it. Redis need not be up:
/// the engine reconnects, and `/healthz` says it is down meanwhile.
#[cfg(feature = "redis")]
fn remote_engine(
    config: &Config,
    limits: crate::pubsub::Limits,
    client_prefix: &str,
    health: Arc<EngineHealth>,
    hub: Hub,
) -> Result<Option<crate::server::redis::RedisSide>, Error> {
    let Engine::Redis(url) = &config.engine else {
        return Ok(None);
    };
    health.set_pubsub(false);
    let presence = crate::server::redis::PresenceConfig {
        ttl: config.presence_ttl,
        refresh: config.presence_refresh,
        max_list: config.max_presence_list,
    };
    crate::server::redis::RedisSide::start(
        url,
        config.engine_timeout,
        limits,
        presence,
        client_prefix,
        health,
        hub,
    )
    .map(Some)
    .map_err(|e| Error::Config(ConfigError::new(e)))
}

/// A random node prefix for client ids: 12 hex digits (48 bits), so two of a hundred
/// nodes sharing one Redis collide with odds of about one in 6·10^10.
fn node_prefix() -> String {
    use rand::RngExt;
    format!("{:012x}", rand::rng().random::<u64>() >> 16)
}

/// Without the `redis` feature, [`Config::validate`] has refused `Engine::Redis`.
#[cfg(not(feature = "redis"))]
fn remote_engine(
    _config: &Config,
    _limits: crate::pubsub::Limits,
    _client_prefix: &str,
    _health: Arc<EngineHealth>,
    _hub: Hub,
) -> Result<Option<hub::off::Remote>, Error> {
    Ok(None)
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>, Error> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(Error::Spawn)
}

/// A running WebSocket server. See the [crate docs](crate) for a tutorial.
pub struct Server {
    local_addr: SocketAddr,
    hub: Hub,
    live: Arc<AtomicUsize>,
    trigger_tx: Sender<()>,
    trigger_rx: Receiver<()>,
    running: Option<Running>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Server {
    /// Starts a server with the built-in routes. Shorthand for
    /// `Server::builder(config).start()`.
    pub fn start(config: Config) -> Result<Server, Error> {
        Server::builder(config).start()
    }

    /// A builder, to add routes before starting.
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder {
            config,
            routes: Routes::default(),
            authorizer: None,
        }
    }

    /// The address the server listens on (with the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle for broadcasting from any thread.
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Connections open or in their handshake right now.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// A handle that starts the shutdown from another thread or a signal handler.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.trigger_tx.clone())
    }

    /// Blocks until a [`ShutdownHandle`] asks for shutdown, then drains and stops.
    pub fn wait(mut self) -> DrainReport {
        let _ = self.trigger_rx.recv();
        self.drain(EndedThreads::Join)
    }

    /// Drains and stops now: stop accepting, send every client what is queued for it and
    /// then Close 1001, wait for their replies up to the drain timeout, cut the rest,
    /// join every thread.
    pub fn shutdown(mut self) -> DrainReport {
        self.drain(EndedThreads::Join)
    }

    /// [`Server::wait`] for a process that exits as soon as it returns, as `wshub serve`
    /// does: the same drain, but once every connection has ended (its close handshake
    /// done, its `on_close` run) it does not join the threads that served them. Joining
    /// hands each thread's stack back with a system call of its own; the process's exit
    /// hands them all back at once. A program that goes on running after the drain should
    /// call [`Server::wait`]: here every ended connection thread's stack stays mapped
    /// until the process ends.
    pub fn wait_before_exit(mut self) -> DrainReport {
        let _ = self.trigger_rx.recv();
        self.drain(EndedThreads::LeaveToExit)
    }

    fn drain(&mut self, ended: EndedThreads) -> DrainReport {
        // `running` is only taken here and in `drop`, and both consume the server.
        self.running
            .take()
            .map(|r| shutdown::drain(r, ended))
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            shutdown::drain(r, EndedThreads::Join);
        }
    }
}
