//! A session that outlives its connections: reconnect with backoff and jitter.
//!
//! **Owns** the session: the URL, the [`Backoff`], and the current [`Client`] (shared
//! with the handle only so that [`ReconnectingClient::send`] can reach it). A
//! **supervisor thread** runs it: connect; forward the connection's events; after a
//! failure or a disconnect, wait [`Backoff::next_delay`]; try again.
//!
//! Every wait of the supervisor is on its wake channel — `recv_deadline` during a
//! backoff, `select!` beside the connection's events or the connection attempt — so
//! [`ReconnectingClient::stop`] and [`ReconnectingClient::close`] **wake** it at once,
//! whatever it is doing; the flags they set say what to do. A connection attempt runs on
//! a short-lived *connector thread*, so that even a connect or handshake in progress
//! does not hold a stop up: the supervisor stops waiting for it, and its result, if it
//! ever succeeds, is dropped, which closes that connection with 1000.
//!
//! The supervisor **ends** on stop, on close (once the connection's last events are
//! delivered), or after [`Event::GaveUp`]; its events channel then disconnects.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, bounded, select};
use log::debug;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;

use super::connection::Client;
use super::{ClientConfig, ClientError, EVENT_QUEUE_SIZE, Event, WsUrl, after, close_frame, spawn};
use crate::client::backoff::{Backoff, BackoffConfig};
use crate::sync::lock;

/// Configuration of a [`ReconnectingClient`]: the connection's, the backoff's, and when
/// to give up.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ReconnectConfig {
    /// Each connection's timeouts, limits and headers.
    pub client: ClientConfig,
    /// How the wait between attempts grows (1 s doubling to 30 s, with jitter, by
    /// default).
    pub backoff: BackoffConfig,
    /// Retries in a row (since the last successful connection) after which the session
    /// gives up with [`Event::GaveUp`]. `None` (the default): never give up. `Some(0)`:
    /// never reconnect.
    pub max_retries: Option<u32>,
    /// Seed for the backoff's jitter, for deterministic tests. `None` (the default):
    /// seeded from the operating system, so clients started together spread out.
    pub seed: Option<u64>,
}

/// A WebSocket session that reconnects: a supervisor thread keeps a connection open,
/// reconnecting after failures with exponential backoff and jitter, and delivers
/// [`Event`]s in order.
///
/// Every method takes `&self`; share it (an `Arc`) to [`send`](Self::send) or
/// [`stop`](Self::stop) from one thread while another iterates over
/// [`events`](Self::events). Dropping it stops it.
///
/// ```no_run
/// use std::time::Duration;
/// use wshub::client::{Event, ReconnectConfig, ReconnectingClient};
///
/// let mut config = ReconnectConfig::default();
/// config.max_retries = Some(5);
/// config.backoff.initial = Duration::from_millis(500);
/// let session = ReconnectingClient::start("ws://127.0.0.1:8080/chat", config)?;
/// while let Ok(event) = session.events().recv() {
///     if let Event::GaveUp { retries } = event {
///         eprintln!("server gone: gave up after {retries} retries");
///     }
/// }
/// # Ok::<(), wshub::client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct ReconnectingClient {
    url: WsUrl,
    shared: Arc<Shared>,
    /// Wakes the supervisor to look at the flags. Capacity 1: a wake-up is a doorbell,
    /// one pending ring is as good as many.
    wake: Sender<()>,
    events: Receiver<Event>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The open connection, while there is one.
    current: Mutex<Option<Arc<Client>>>,
    /// `stop()`: end now, closing an open connection with 1000.
    stop: AtomicBool,
    /// `close()`: close the open connection with this frame, deliver its last events,
    /// end without reconnecting.
    close: Mutex<Option<CloseFrame>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn close_request(&self) -> Option<CloseFrame> {
        lock(&self.close).clone()
    }

    fn ending(&self) -> bool {
        self.stopping() || lock(&self.close).is_some()
    }

    fn set_current(&self, client: Option<Arc<Client>>) {
        *lock(&self.current) = client;
    }
}

impl ReconnectingClient {
    /// Validates the URL and configuration, then starts the supervisor, which connects
    /// at once. Errors here are the fatal ones (URL, headers, configuration) and a
    /// failure to spawn the thread; everything else arrives as an [`Event`].
    pub fn start(url: &str, config: ReconnectConfig) -> Result<ReconnectingClient, ClientError> {
        ReconnectingClient::start_url(url.parse()?, config)
    }

    /// [`ReconnectingClient::start`] with an already parsed URL.
    pub fn start_url(url: WsUrl, config: ReconnectConfig) -> Result<ReconnectingClient, ClientError> {
        config.client.validate()?;
        config
            .backoff
            .validate()
            .map_err(|e| ClientError::InvalidConfig(e.to_string()))?;
        let shared = Arc::new(Shared::default());
        let (events_tx, events_rx) = bounded(EVENT_QUEUE_SIZE);
        let (wake_tx, wake_rx) = bounded(1);
        let backoff = match config.seed {
            Some(seed) => Backoff::with_seed(config.backoff, seed),
            None => Backoff::new(config.backoff),
        };
        let supervisor = Supervisor {
            url: url.clone(),
            config: config.client,
            max_retries: config.max_retries,
            backoff,
            shared: shared.clone(),
            events: events_tx,
            wake: wake_rx,
        };
        let handle = spawn("wshub-client-supervisor", move || supervisor.run())?;
        Ok(ReconnectingClient {
            url,
            shared,
            wake: wake_tx,
            events: events_rx,
            supervisor: Mutex::new(Some(handle)),
        })
    }

    /// Events in order: [`Event::Connected`], [`Event::Message`]s,
    /// [`Event::Disconnected`], [`Event::ConnectFailed`], [`Event::Reconnecting`], ...
    /// The channel disconnects when the session has ended (stop, close, or
    /// [`Event::GaveUp`]). Take events promptly: while
    /// [`EVENT_QUEUE_SIZE`](super::EVENT_QUEUE_SIZE) wait, the supervisor waits too.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Sends on the open connection (see [`Client::send`]: it blocks while that
    /// connection's queue is full). While no connection is open, fails at once with
    /// [`ClientError::NotConnected`]: nothing is queued for later. `Message::Close` is
    /// [`ReconnectingClient::close`] with its code (1000 without one).
    pub fn send(&self, msg: Message) -> Result<(), ClientError> {
        if let Message::Close(frame) = msg {
            return match frame {
                Some(f) => self.close(u16::from(f.code), &f.reason),
                None => self.close(1000, ""),
            };
        }
        let client = lock(&self.shared.current).clone();
        match client {
            None => Err(ClientError::NotConnected),
            Some(c) => match c.send(msg) {
                Err(ClientError::Closed) => Err(ClientError::NotConnected),
                other => other,
            },
        }
    }

    /// True while a connection is open.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared.current).as_ref().is_some_and(|c| c.is_open())
    }

    /// The URL this session connects to.
    pub fn url(&self) -> &WsUrl {
        &self.url
    }

    /// Ends the session cleanly, without waiting: the open connection (if any) sends
    /// what is queued, then Close with `code` and `reason`; its remaining messages and
    /// its [`Event::Disconnected`] are delivered; then the event channel disconnects.
    /// A backoff wait or a connection attempt in progress ends at once. Keep reading
    /// [`events`](Self::events) to the end. Fails only for a code an endpoint may not
    /// send.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        let frame = close_frame(code, reason)?;
        lock(&self.shared.close).get_or_insert(frame);
        let _ = self.wake.try_send(());
        Ok(())
    }

    /// Stops the session and waits for the supervisor thread to end. A backoff wait or
    /// a connection attempt ends at once (well under 100 ms); an open connection is
    /// closed with 1000, which takes a round trip to the server (at most the close
    /// timeout). Events not yet taken may be dropped; the event channel disconnects.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.wake.try_send(());
        let handle = lock(&self.supervisor).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                debug!("{}: the supervisor thread panicked", self.url);
            }
        }
    }
}

impl Drop for ReconnectingClient {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the supervisor does after a connection ends.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Reconnect,
    End,
}

struct Supervisor {
    url: WsUrl,
    config: ClientConfig,
    max_retries: Option<u32>,
    backoff: Backoff,
    shared: Arc<Shared>,
    events: Sender<Event>,
    wake: Receiver<()>,
}

impl Supervisor {
    fn run(mut self) {
        // Retries since the last successful connection.
        let mut attempt: u32 = 0;
        loop {
            let Some(result) = self.connect() else { break };
            match result {
                Ok(client) => {
                    self.backoff.reset();
                    attempt = 0;
                    if self.serve(Arc::new(client)) == Next::End {
                        break;
                    }
                }
                Err(error) => {
                    debug!("{}: attempt {attempt}: {error}", self.url);
                    let fatal = error.is_fatal();
                    self.emit(Event::ConnectFailed { attempt, error });
                    if fatal {
                        self.emit(Event::GaveUp { retries: attempt });
                        break;
                    }
                }
            }
            if self.shared.ending() {
                break;
            }
            if self.max_retries.is_some_and(|max| attempt >= max) {
                self.emit(Event::GaveUp { retries: attempt });
                break;
            }
            attempt = attempt.saturating_add(1);
            let delay = self.backoff.next_delay();
            self.emit(Event::Reconnecting { attempt, delay });
            if !self.wait(delay) {
                break;
            }
        }
        self.shared.set_current(None);
        debug!("{}: session ended", self.url);
        // `self.events` drops here: the event channel disconnects.
    }

    /// One connection attempt on a connector thread; `None` if the session is ending.
    fn connect(&self) -> Option<Result<Client, ClientError>> {
        if self.shared.ending() {
            return None;
        }
        let (tx, rx) = bounded(1);
        let url = self.url.clone();
        let config = self.config.clone();
        let spawned = spawn("wshub-client-connect", move || {
            // If nobody waits any more, the client is dropped here: Close 1000.
            let _ = tx.send(Client::connect_url(&url, &config));
        });
        if let Err(e) = spawned {
            return Some(Err(e));
        }
        loop {
            select! {
                recv(rx) -> result => {
                    return Some(result.unwrap_or_else(|_| {
                        Err(ClientError::Io(io::Error::other("the connector thread ended without an answer")))
                    }));
                }
                recv(self.wake) -> rang => {
                    if rang.is_err() {
                        self.shared.stop.store(true, Ordering::Release);
                    }
                    if self.shared.ending() {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs one open connection: forwards its events until it ends.
    fn serve(&self, client: Arc<Client>) -> Next {
        self.shared.set_current(Some(client.clone()));
        self.emit(Event::Connected);
        let mut closing = false;
        loop {
            if self.shared.stopping() {
                self.shared.set_current(None);
                client.close_and_wait(close_1000());
                self.pass_on_last_events(&client);
                return Next::End;
            }
            if !closing {
                if let Some(frame) = self.shared.close_request() {
                    self.shared.set_current(None);
                    client.begin_close(Some(frame));
                    closing = true;
                }
            }
            select! {
                recv(client.events()) -> event => match event {
                    Ok(event @ Event::Disconnected { .. }) => {
                        self.shared.set_current(None);
                        self.emit(event);
                        return if closing { Next::End } else { Next::Reconnect };
                    }
                    Ok(event) => self.emit(event),
                    Err(_) => {
                        // The reader always ends with Disconnected; be safe anyway.
                        self.shared.set_current(None);
                        self.emit(Event::Disconnected { close: None, error: Some(ClientError::Closed) });
                        return if closing { Next::End } else { Next::Reconnect };
                    }
                },
                recv(self.wake) -> rang => {
                    if rang.is_err() {
                        self.shared.stop.store(true, Ordering::Release);
                    }
                }
            }
        }
    }

    /// On stop, after the close: hand on what the connection still has, without ever
    /// blocking on a full event queue, until its reader has ended.
    fn pass_on_last_events(&self, client: &Client) {
        let deadline = after(self.config.close_timeout);
        while let Ok(event) = client.events().recv_deadline(deadline) {
            let last = matches!(event, Event::Disconnected { .. });
            if self.events.try_send(event).is_err() || last {
                return;
            }
        }
    }

    /// Delivers an event, waiting while the queue is full, unless the session is being
    /// stopped (then the event is dropped).
    fn emit(&self, event: Event) {
        loop {
            if self.shared.stopping() {
                return;
            }
            let mut sel = Select::new();
            let send = sel.send(&self.events);
            let wake = sel.recv(&self.wake);
            let op = sel.select();
            match op.index() {
                i if i == send => {
                    let _ = op.send(&self.events, event);
                    return;
                }
                i if i == wake => {
                    if op.recv(&self.wake).is_err() {
                        self.shared.stop.store(true, Ordering::Release);
                    }
                }
                _ => return,
            }
        }
    }

    /// Waits `delay` unless woken to end; `false` if the session is ending.
    fn wait(&self, delay: Duration) -> bool {
        let deadline = Instant::now().checked_add(delay);
        loop {
            if self.shared.ending() {
                return false;
            }
            let rang = match deadline {
                Some(deadline) => self.wake.recv_deadline(deadline),
                None => self.wake.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match rang {
                Ok(()) => {} // look at the flags again
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => {
                    self.shared.stop.store(true, Ordering::Release);
                    return false;
                }
            }
        }
    }
}

fn close_1000() -> Option<CloseFrame> {
    Some(CloseFrame {
        code: 1000.into(),
        reason: "".into(),
    })
}
