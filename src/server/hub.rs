//! The hub thread: the one owner of the connection registry and of fan-out.
//!
//! **Owns** the [`Registry`] of open connections (no `Mutex`: no other thread can reach
//! it), their keep-alive [`PingSchedule`], the `/ws` channel state ([`Channels`]:
//! subscriptions, offsets, history), and the sockets of connections still in their
//! handshake, so a drain can cut those too. **Woken** by [`HubMsg`]s on its bounded
//! inbox (register and unregister from connection threads, broadcasts from handlers and
//! from the embedding program's own threads, `/ws` commands and API publications, the
//! shutdown steps), by the next ping coming due (it pings every open connection once per
//! `ping_interval`, through the same fast path as a broadcast, so no writer keeps a timer
//! or wakes to ping; see [`crate::ws::keepalive`]), and by the next sweep of expired
//! history while any channel exists. **Ends** on [`HubMsg::Stop`], which the shutdown
//! sequence sends once every connection thread has ended, or when every sender is gone.
//!
//! `/ws` commands are executed here, one at a time, by [`crate::server::commands`]: the
//! hub is each channel's sequencer, so offsets, history and fan-out agree by
//! construction.
//!
//! With the Redis engine (`Config::engine`, `src/server/redis/`) Redis is the
//! sequencer instead: the hub hands `pub`, `sub`, `history`, `presence`, joins and
//! leaves to the engine's threads, is woken by their results (`HubMsg::Redis`: replies,
//! snapshots, publications, joins and leaves from PUB/SUB) and by the next refresh of
//! this node's presence entries, and fans out locally; it stops those threads when it
//! ends.
//!
//! The hub never blocks on a client. Each broadcast is offered to every member: written
//! at once when nobody is writing to that member and its socket has room (a non-blocking
//! send under the connection's write lock, see [`crate::server::writer`]), else pushed on its
//! bounded queue without waiting, and a writer thread started for it if none runs (a
//! spawn on this thread; one that cannot be started cuts the member). A member whose queue is full is a slow consumer and is
//! cut at once (its TCP window is full, so a Close frame would sit unread behind the
//! queue) while everyone else carries on.
//!
//! # Ordering
//!
//! Every broadcast to a topic passes through this one thread, which offers it to every
//! member before it looks at the next message, and each member's frames reach its
//! socket in FIFO order (the fast path writes only when nothing is queued ahead). So all members of a topic see broadcasts in one total order, and a connection's
//! own messages in the order it sent them (its reader sends them to the hub in order).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use serde_json::Value;

use crate::server::queue::OutboundTx;
use log::{debug, info, trace};
use tungstenite::Message;

use crate::pubsub::presence::Presence;
use crate::pubsub::protocol::{Command, ErrorBody, ErrorCode, MAX_KEY_LEN, StreamPosition, validate_channel};
use crate::pubsub::{Channels, Limits};
use crate::server::backlog::{Backlog, MESSAGES_PER_SLICE, SLICE};
use crate::server::commands::{ApiPublish, ConnCommand, Hubside};
use crate::server::engine::EngineHealth;
use crate::server::error::{PublishError, SendError};
use crate::server::flow::{Credit, Flow, InFlight};
#[cfg(not(feature = "redis"))]
use crate::server::hub::off::{Out, Remote, RemoteEvent};
use crate::server::metrics::{HubStats, Metrics};
#[cfg(feature = "redis")]
use crate::server::redis::{Event as RemoteEvent, Out, RedisSide as Remote};
use crate::server::registry::{ConnId, Offer, Peer, Registry};
use crate::server::writer::{self, Ctrl, WriteSide};
use crate::ws::close_policy::GOING_AWAY;
use crate::ws::keepalive::PingSchedule;
use crate::ws::wire::WireFrame;

/// Messages the hub's inbox holds. When it is full, senders (readers relaying chat
/// messages, the embedding program) wait: that is back-pressure from a hub that is
/// momentarily behind, and the hub itself never waits on anyone, so it always drains.
/// Broadcasts are bounded in bytes too, and per connection ([`crate::server::flow`]).
///
/// Sized so that every connection of a full default server (ten thousand) can leave at
/// once, as in a drain, without its reader waiting here: each sends one `Unregister`
/// while the hub is still busy closing everyone, so the inbox must hold more messages
/// than the default connection limit. The slots are allocated up front (one
/// `HubMsg` each, per server).
pub(crate) const HUB_QUEUE: usize = 16384;

/// The reason sent with the drain's Close 1001.
const GOING_AWAY_REASON: &str = "server shutting down";

/// What the hub is told.
pub(crate) enum HubMsg {
    /// The accept thread took a connection; its handshake is under way.
    Accepted {
        /// Its id.
        id: ConnId,
        /// Its socket, only ever used to shut it down.
        sock: Arc<TcpStream>,
    },
    /// A connection finished its handshake and joins `topic`.
    Register {
        /// Its id.
        id: ConnId,
        /// The topic (its path).
        topic: Arc<str>,
        /// How to reach it.
        peer: PeerHandle,
    },
    /// A connection ended (with or without a handshake).
    Unregister(ConnId),
    /// Send `frame` to every member of `topic`.
    Broadcast {
        /// The topic.
        topic: Arc<str>,
        /// The frame, encoded once.
        frame: WireFrame,
    },
    /// A `/ws` command from a connection (boxed: the inbox's slots stay small).
    Command(Box<ConnCommand>),
    /// A `/ws` connection in token mode opened: close it with 4001 unless it has sent a
    /// valid `hello` within the handshake timeout.
    AwaitHello(ConnId),
    /// A publication through [`Hub::publish`].
    Publish(Box<ApiPublish>),
    /// Shutdown has begun: Close 1001 (after what is queued) to every connection, and to
    /// every connection that registers from now on. Replies with the number closed.
    Drain(Sender<usize>),
    /// The drain deadline passed: cut every connection still registered, and any that
    /// registers from now on.
    Cut,
    /// Every connection thread has ended: stop.
    Stop,
    /// A scrape of `/metrics` asks for the sizes only the hub can see.
    Stats(Sender<HubStats>),
    /// What the Redis engine's threads report (boxed: the inbox's slots stay small).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis(Box<RemoteEvent>),
}

/// Without the `redis` feature the Redis engine cannot exist: these types have no
/// values, so the hub's calls into them compile to nothing.
#[cfg(not(feature = "redis"))]
pub(crate) mod off {
    use std::time::Instant;

    use super::{ApiPublish, HubStats, Metrics, PeerHandle, Registry};
    use crate::pubsub::ConnId;
    use crate::pubsub::presence::Presence;
    use crate::server::commands::ConnCommand;

    #[derive(Debug)]
    pub(crate) enum RemoteEvent {}
    pub(crate) enum Remote {}
    #[allow(dead_code)]
    pub(crate) struct Out<'a> {
        pub registry: &'a mut Registry<PeerHandle>,
        pub metrics: &'a Metrics,
        pub presence: &'a mut Presence,
    }
    impl Remote {
        pub(crate) fn execute(&mut self, _: ConnCommand, _: &mut Out<'_>) {
            match *self {}
        }
        pub(crate) fn next_due(&self, _: &Presence) -> Option<Instant> {
            match *self {}
        }
        pub(crate) fn tick(&mut self, _: Instant, _: &Presence) {
            match *self {}
        }
        pub(crate) fn api_publish(&mut self, _: ApiPublish) {
            match *self {}
        }
        pub(crate) fn event(&mut self, e: RemoteEvent, _: &mut Out<'_>) {
            match e {}
        }
        pub(crate) fn remove_conn(&mut self, _: ConnId, _: &mut Presence) {
            match *self {}
        }
        pub(crate) fn stats(&self) -> HubStats {
            match *self {}
        }
        pub(crate) fn stop(&mut self) {
            match *self {}
        }
    }
}

/// The hub's handle on one connection: its two queues and its socket.
pub(crate) struct PeerHandle {
    /// The bounded data queue to the writer.
    pub data: OutboundTx,
    /// The control channel to the writer.
    pub ctrl: Sender<Ctrl>,
    /// The socket's write side, for the fast path and to shut it down.
    pub write: Arc<WriteSide>,
}

impl Peer for PeerHandle {
    /// Writes at once when nobody is writing to the connection and its socket has room
    /// (no wake-up, no queueing), else queues for its writer, started if none runs.
    fn offer(&self, frame: &WireFrame) -> Offer {
        if self.write.write_now(frame, &self.data, &self.ctrl) {
            return Offer::Queued;
        }
        let offer = self.data.try_push(frame.clone());
        if offer == Offer::Queued {
            self.write.wake();
        }
        offer
    }
}

impl PeerHandle {
    /// Sends `close` (a Close 1001) after everything queued: at once when nothing is
    /// queued and nobody is writing, else through a writer. Cuts the connection if
    /// even the control channel is full (its writer is stuck on a client that does not
    /// read). A Close the hub wrote itself arms no timer and starts no writer; the
    /// drain's own deadline cuts a client that never answers.
    fn going_away(&self, close: &WireFrame) {
        if self.write.write_now(close, &self.data, &self.ctrl) {
            return;
        }
        let close = Ctrl::Close {
            code: GOING_AWAY,
            reason: Cow::Borrowed(GOING_AWAY_REASON),
        };
        self.to_writer(close);
    }

    /// Sends Close 4001 after everything queued, through a writer (which times the
    /// client's answer); cuts the connection if even its control channel is full.
    fn close_unauthorized(&self) {
        let close = Ctrl::Close {
            code: UNAUTHORIZED_CLOSE,
            reason: Cow::Borrowed("no valid hello"),
        };
        self.to_writer(close);
    }

    /// Hands `msg` to the connection's writer, started if none runs; cuts the connection
    /// if even its control channel is full (its writer is stuck on a client that does
    /// not read).
    fn to_writer(&self, msg: Ctrl) {
        match self.ctrl.try_send(msg) {
            Ok(()) => self.write.wake(),
            Err(TrySendError::Full(_)) => self.cut(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Cuts the connection (an abortive close), which wakes its reader and writer.
    pub(crate) fn cut(&self) {
        self.write.cut();
    }
}

/// A handle for broadcasting through the hub from any thread. Cheap to clone.
///
/// ```no_run
/// # let server = wshub::Server::start(wshub::Config::default()).unwrap();
/// let hub = server.hub();
/// std::thread::spawn(move || {
///     hub.broadcast("/chat", wshub::Message::text("tick")).ok();
/// });
/// ```
#[derive(Clone, Debug)]
pub struct Hub {
    tx: Sender<Envelope>,
    flow: Arc<Flow>,
    /// The routes' paths: the only topics a client can be on. Fixed at start.
    topics: Arc<[Box<str>]>,
    metrics: Arc<Metrics>,
    engine: Arc<EngineHealth>,
}

/// A message in the hub's inbox, with the room it takes there
/// ([`crate::server::flow`]), given back once the hub has handled it.
pub(crate) struct Envelope {
    msg: HubMsg,
    _credit: Option<Credit>,
}

/// The hub's end of its inbox.
pub(crate) struct Inbox {
    rx: Receiver<Envelope>,
    flow: Arc<Flow>,
}

/// The hub's inbox: [`HUB_QUEUE`] messages, broadcasts up to `max_bytes` in all; the
/// [`Hub`] handle knows the routes' `topics` and counts into `metrics`.
pub(crate) fn inbox(
    max_bytes: usize,
    topics: Arc<[Box<str>]>,
    metrics: Arc<Metrics>,
    engine: Arc<EngineHealth>,
) -> (Hub, Inbox) {
    let (tx, rx) = bounded(HUB_QUEUE);
    let flow = Flow::new(max_bytes);
    (
        Hub {
            tx,
            flow: flow.clone(),
            topics,
            metrics,
            engine,
        },
        Inbox { rx, flow },
    )
}

impl std::fmt::Debug for HubMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HubMsg::Accepted { .. } => "Accepted",
            HubMsg::Register { .. } => "Register",
            HubMsg::Unregister(_) => "Unregister",
            HubMsg::Broadcast { .. } => "Broadcast",
            HubMsg::Command(_) => "Command",
            HubMsg::AwaitHello(_) => "AwaitHello",
            HubMsg::Publish(_) => "Publish",
            HubMsg::Drain(_) => "Drain",
            HubMsg::Cut => "Cut",
            HubMsg::Stop => "Stop",
            HubMsg::Stats(_) => "Stats",
            HubMsg::Redis(_) => "Redis",
        })
    }
}

impl Hub {
    /// Whether the channel engine is reachable, for `/healthz`.
    pub(crate) fn engine_health(&self) -> &EngineHealth {
        &self.engine
    }

    /// The server's counters, for the threads that count.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The sizes only the hub can see, asked through its inbox; `None` if it does not
    /// answer within `limit` (it is stopping, or its inbox is full).
    pub(crate) fn stats(&self, limit: Duration) -> Option<HubStats> {
        let (reply, answer) = bounded(1);
        let deadline = Instant::now() + limit;
        let msg = Envelope {
            msg: HubMsg::Stats(reply),
            _credit: None,
        };
        self.tx.send_deadline(msg, deadline).ok()?;
        answer.recv_deadline(deadline).ok()
    }

    /// Messages waiting in the hub's inbox now.
    pub(crate) fn inbox_depth(&self) -> usize {
        self.tx.len()
    }

    /// Sends `msg` to every connection on `topic` (a route's path, such as `/chat`).
    /// The message is encoded once, here, on the calling thread. Blocks only while the
    /// hub's inbox is full, or holds its byte budget of broadcasts
    /// ([`Config::max_inbox_bytes`](crate::Config::max_inbox_bytes)). Fails with
    /// [`SendError::NoSuchTopic`] when no route serves `topic` (nobody could ever
    /// receive it), and with [`SendError::Closed`] once the server has stopped. A topic
    /// that has a route but nobody on it right now is fine: the message goes to nobody,
    /// as a broadcast to an empty room does.
    pub fn broadcast(&self, topic: &str, msg: Message) -> Result<(), SendError> {
        if !self.topics.iter().any(|t| &**t == topic) {
            return Err(SendError::NoSuchTopic);
        }
        self.broadcast_from(Arc::from(topic), msg, None)
    }

    /// A broadcast, from connection `conn` when given: it then waits also while that
    /// connection has its bound of messages in the inbox.
    pub(crate) fn broadcast_from(
        &self,
        topic: Arc<str>,
        msg: Message,
        conn: Option<&InFlight>,
    ) -> Result<(), SendError> {
        let Some(frame) = WireFrame::from_message(msg) else {
            return Ok(());
        };
        let credit = self.flow.admit(frame.len(), conn);
        self.post(HubMsg::Broadcast { topic, frame }, Some(credit))
    }

    /// Publishes `data` on the `/ws` channel `ch` and returns the position it got: its
    /// offset in the channel's epoch. Callable from any thread; publications made this
    /// way have no `from`. It returns once the publication is in history and has been
    /// offered to every subscriber (as a client's `pub` ack does). Blocks while the hub's
    /// inbox is full and until the hub has executed it; if the server stops first, the
    /// hub drops the request and this returns [`PublishError::Closed`], so it never waits
    /// on a hub that is gone.
    ///
    /// ```no_run
    /// # let server = wshub::Server::start(wshub::Config::default()).unwrap();
    /// let pos = server.hub().publish("news", serde_json::json!({"title": "hello"})).unwrap();
    /// println!("published at {} in epoch {}", pos.offset, pos.epoch);
    /// ```
    pub fn publish(&self, ch: &str, data: Value) -> Result<StreamPosition, PublishError> {
        self.publish_keyed(ch, data, None)
    }

    /// [`publish`](Self::publish) with an idempotency `key` (1 to 255 bytes), as a
    /// client's `pub` with `key`: a `(ch, key)` seen within the idempotency window
    /// returns the first publication's position and publishes nothing. A bad key is
    /// [`PublishError::Rejected`] with code 1.
    pub fn publish_with_key(&self, ch: &str, data: Value, key: &str) -> Result<StreamPosition, PublishError> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(PublishError::Rejected(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("key must be 1 to {MAX_KEY_LEN} bytes"),
            )));
        }
        self.publish_keyed(ch, data, Some(key.to_owned()))
    }

    fn publish_keyed(
        &self,
        ch: &str,
        data: Value,
        key: Option<String>,
    ) -> Result<StreamPosition, PublishError> {
        validate_channel(ch).map_err(PublishError::InvalidChannel)?;
        let (reply, result) = bounded(1);
        let p = ApiPublish {
            ch: ch.to_owned(),
            data,
            key,
            reply,
        };
        self.send(HubMsg::Publish(Box::new(p)))
            .map_err(|_| PublishError::Closed)?;
        result.recv().map_err(|_| PublishError::Closed)?
    }

    /// [`publish`](Self::publish) with the data as JSON text (`"{\"n\":1}"`, `"\"hi\""`);
    /// text that is not JSON is [`PublishError::InvalidData`].
    pub fn publish_json(&self, ch: &str, json: &str) -> Result<StreamPosition, PublishError> {
        let data = serde_json::from_str(json).map_err(|e| PublishError::InvalidData(e.to_string()))?;
        self.publish(ch, data)
    }

    pub(crate) fn send(&self, msg: HubMsg) -> Result<(), SendError> {
        self.post(msg, None)
    }

    /// Posts `msg`, `bytes` long, from connection `conn`: waits while that connection has
    /// its bound of messages in the inbox, or the inbox its byte budget.
    pub(crate) fn post_from(&self, msg: HubMsg, bytes: usize, conn: &InFlight) -> Result<(), SendError> {
        let credit = self.flow.admit(bytes, Some(conn));
        self.post(msg, Some(credit))
    }

    fn post(&self, msg: HubMsg, credit: Option<Credit>) -> Result<(), SendError> {
        self.tx
            .send(Envelope { msg, _credit: credit })
            .map_err(|_| SendError::Closed)
    }
}

/// What the hub did in a drain, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DrainTally {
    /// Connections sent Close 1001: open when the drain began, or registered during it.
    pub going_away: usize,
    /// Of those, the ones still open at the drain deadline, and cut.
    pub cut_open: usize,
    /// Connections still in their HTTP handshake at the deadline, and cut.
    pub cut_handshaking: usize,
}

/// How often the hub sweeps expired history and idempotency keys while any channel
/// exists: a quarter of the shorter lifetime, so nothing outlives it by more than a
/// quarter, within [`MIN_SWEEP`] and [`MAX_SWEEP`]. Reads expire what they touch
/// anyway; the sweep returns memory of channels nobody reads.
fn sweep_interval(limits: &Limits) -> Duration {
    (limits.history_ttl.min(limits.idempotency_window) / 4).clamp(MIN_SWEEP, MAX_SWEEP)
}

/// Sweeps are at least this far apart: each walks every channel.
const MIN_SWEEP: Duration = Duration::from_millis(100);
/// Sweeps are at most this far apart.
const MAX_SWEEP: Duration = Duration::from_secs(10);

/// The close code for a `/ws` client that did not identify itself in token mode: no
/// valid `hello` within the handshake timeout, or a refused one.
pub(crate) const UNAUTHORIZED_CLOSE: u16 = 4001;

/// What the hub needs to know of the configuration.
pub(crate) struct HubConfig {
    /// How often every connection is pinged.
    pub ping_interval: Duration,
    /// The channel state's bounds.
    pub limits: Limits,
    /// How long a token-mode connection has for its `hello` (the handshake timeout).
    pub hello_timeout: Duration,
    /// Members a `presence` reply lists at most.
    pub max_presence_list: usize,
    /// This node's client id prefix: `""` with the memory engine, a random one drawn at
    /// start with the Redis engine (see [`crate::pubsub::presence::client_id`]).
    pub client_prefix: String,
}

/// Runs the hub loop until [`HubMsg::Stop`]. See the module docs.
pub(crate) fn run(
    inbox: Inbox,
    config: HubConfig,
    metrics: Arc<Metrics>,
    remote: Option<Remote>,
) -> DrainTally {
    // However the hub ends, even by a panic: wake any sender still waiting for room in
    // the inbox, now that nothing will make it.
    struct CloseFlow(Arc<Flow>);
    impl Drop for CloseFlow {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let Inbox { rx, flow } = inbox;
    let _close = CloseFlow(flow);
    serve(rx, config, &metrics, remote)
}

fn serve(
    inbox: Receiver<Envelope>,
    config: HubConfig,
    metrics: &Metrics,
    mut remote: Option<Remote>,
) -> DrainTally {
    let HubConfig {
        ping_interval,
        limits,
        hello_timeout,
        max_presence_list,
        client_prefix,
    } = config;
    let mut tally = DrainTally::default();
    let mut registry: Registry<PeerHandle> = Registry::default();
    let mut channels = Channels::in_memory(limits);
    let mut presence = Presence::in_memory(max_presence_list).with_prefix(&client_prefix);
    let mut backlog = Backlog::default();
    let mut messages_since_slice = 0;
    // Token-mode connections that have until then for their `hello`, oldest first (one
    // timeout for all, so the order of arrival is the order of the deadlines).
    let mut awaiting_hello: VecDeque<(Instant, ConnId)> = VecDeque::new();
    let sweep_every = sweep_interval(&limits);
    let mut next_sweep = Instant::now() + sweep_every;
    let mut pings = PingSchedule::new(ping_interval);
    // Connections still in their HTTP handshake: only a drain's cut needs them.
    let mut handshaking: HashMap<ConnId, Arc<TcpStream>> = HashMap::new();
    let mut draining = false;
    let mut cutting = false;
    // Encoded once each: every connection gets the same bytes.
    let going_away = WireFrame::close(GOING_AWAY, GOING_AWAY_REASON);
    let ping = WireFrame::ping();
    // The hub's `/ws` state, borrowed for one command or one departure.
    macro_rules! side {
        () => {
            Hubside {
                channels: &mut channels,
                registry: &mut registry,
                presence: &mut presence,
                backlog: &mut backlog,
                metrics,
            }
        };
    }
    // What the Redis engine's hub side may touch, borrowed for one command or one event.
    macro_rules! out {
        () => {
            Out {
                registry: &mut registry,
                metrics,
                presence: &mut presence,
            }
        };
    }
    // Ends everything `id` held on `/ws`, with either engine: its subscriptions (with
    // their leaves), who it was, and its engine state.
    macro_rules! forget {
        ($id:expr) => {{
            // The engine's leaves first: they name the member by who it said it was,
            // which `Hubside::forget` then forgets.
            if let Some(r) = remote.as_mut() {
                r.remove_conn($id, &mut presence);
            }
            side!().forget($id);
        }};
    }
    loop {
        // Sleep until a message arrives, the next ping is due or the next sweep; nothing
        // else wakes us.
        let ping_due = pings.next_due().filter(|_| !draining);
        let sweep_due = channels.has_state().then_some(next_sweep);
        let hello_due = awaiting_hello.front().map(|(due, _)| *due);
        let refresh_due = remote.as_ref().and_then(|r| r.next_due(&presence));
        // Joins and leaves still owed (a storm's): do not sleep while any are.
        let owed_due = (!backlog.is_empty()).then(Instant::now);
        let next = match ping_due
            .into_iter()
            .chain(sweep_due)
            .chain(hello_due)
            .chain(refresh_due)
            .chain(owed_due)
            .min()
        {
            Some(due) => inbox.recv_deadline(due),
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        // The envelope's credit gives its room back at the end of this iteration, once
        // the message is handled.
        let (msg, _credit) = match next {
            Ok(Envelope { msg, _credit }) => (Some(msg), _credit),
            Err(RecvTimeoutError::Timeout) => (None, None),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        match msg {
            None => {}
            Some(HubMsg::Accepted { id, sock }) => {
                if cutting {
                    writer::cut(&sock);
                } else {
                    handshaking.insert(id, sock);
                }
            }
            Some(HubMsg::Register { id, topic, peer }) => {
                handshaking.remove(&id);
                if cutting {
                    peer.cut();
                    continue;
                }
                if draining {
                    tally.going_away += 1;
                    peer.going_away(&going_away);
                }
                registry.insert(id, &topic, peer);
                pings.add(id, Instant::now());
            }
            Some(HubMsg::Unregister(id)) => {
                handshaking.remove(&id);
                let removed = registry.remove(id).is_some();
                forget!(id);
                if removed {
                    pings.compact(registry.len(), |id| registry.contains(id));
                }
            }
            Some(HubMsg::Broadcast { topic, frame }) => {
                let started = Instant::now();
                let out = registry.broadcast(&topic, &frame);
                metrics.broadcast(
                    started.elapsed(),
                    out.delivered,
                    frame.payload().len(),
                    out.slow.len(),
                );
                trace!("broadcast on {topic} queued for {}", out.delivered);
                for (id, peer) in out.slow {
                    info!("connection {id}: slow consumer (queue full), disconnecting");
                    peer.cut();
                    forget!(id);
                }
            }
            // A connection cut as a slow consumer may still have commands in the inbox:
            // they would only rebuild state for a connection that is gone.
            Some(HubMsg::Command(cmd)) if registry.get(cmd.conn).is_none() => {}
            // `hello` is about the connection, not a channel: the same with either engine
            // (the reader has already refused one that does not come first).
            Some(HubMsg::Command(cmd))
                if remote.is_some() && !matches!(cmd.request.command, Command::Hello { .. }) =>
            {
                if let Some(r) = remote.as_mut() {
                    r.execute(*cmd, &mut out!());
                }
            }
            Some(HubMsg::Publish(p)) if remote.is_some() => {
                if let Some(r) = remote.as_mut() {
                    r.api_publish(*p);
                }
            }
            Some(HubMsg::Redis(event)) => {
                if let Some(r) = remote.as_mut() {
                    r.event(*event, &mut out!());
                }
            }
            Some(HubMsg::Command(cmd)) => {
                let mut side = side!();
                side.execute(*cmd, Instant::now());
            }
            Some(HubMsg::AwaitHello(id)) => {
                awaiting_hello.push_back((Instant::now() + hello_timeout, id));
            }
            Some(HubMsg::Publish(p)) => {
                let mut side = side!();
                side.api_publish(*p, Instant::now());
            }
            Some(HubMsg::Stats(reply)) => {
                let _ = reply.try_send(match &remote {
                    Some(r) => r.stats(),
                    None => HubStats {
                        channels: channels.store().channel_count(),
                        subscriptions: channels.subscription_total(),
                        history_bytes: channels.store().history_bytes(),
                    },
                });
            }
            Some(HubMsg::Drain(reply)) => {
                draining = true;
                // Owed joins and leaves go before the Close (nothing may follow it).
                side!().settle_all();
                debug!("hub: closing {} connections with 1001", registry.len());
                for (_, peer) in registry.iter() {
                    peer.going_away(&going_away);
                }
                tally.going_away += registry.len();
                let _ = reply.send(registry.len());
            }
            Some(HubMsg::Cut) => {
                cutting = true;
                tally.cut_open = registry.len();
                tally.cut_handshaking = handshaking.len();
                for (_, peer) in registry.iter() {
                    peer.cut();
                }
                for sock in handshaking.values() {
                    writer::cut(sock);
                }
            }
            Some(HubMsg::Stop) => break,
        }
        let now = Instant::now();
        while let Some(&(due, id)) = awaiting_hello.front() {
            if due > now {
                break;
            }
            awaiting_hello.pop_front();
            if presence.is_identified(id) {
                continue;
            }
            if let Some(peer) = registry.get(id) {
                info!("connection {id}: no valid hello within {hello_timeout:?}, closing with 4001");
                peer.close_unauthorized();
            }
        }
        // Owed joins and leaves take a slice when the inbox is empty, and at the latest
        // every few messages: a storm's own commands (its `sub`s) cannot crowd out
        // other channels' publications, and a busy inbox cannot starve the backlog.
        if !backlog.is_empty() {
            messages_since_slice += 1;
            if inbox.is_empty() || messages_since_slice >= MESSAGES_PER_SLICE {
                messages_since_slice = 0;
                side!().deliver_owed(SLICE);
            }
        }
        if now >= next_sweep {
            channels.expire(now);
            next_sweep = now + sweep_every;
        }
        if let Some(r) = remote.as_mut() {
            r.tick(now, &presence);
        }
        // After a Close nothing more may be sent (RFC 6455 §5.5.1), pings included.
        if !draining {
            // A ping is offered like a broadcast: written at once by a non-blocking send
            // when the writer is idle, else queued behind what is waiting. A full queue is
            // left alone: the next broadcast or the write timeout deals with that client.
            pings.ping_due(Instant::now(), |id| match registry.get(id) {
                Some(peer) => {
                    let _ = peer.offer(&ping);
                    true
                }
                None => false,
            });
        }
    }
    // Its threads may be handing over a result: with the inbox gone that fails at once
    // instead of waiting, so they see their senders dropped and end.
    drop(inbox);
    if let Some(r) = remote.as_mut() {
        r.stop();
    }
    tally
}
