//! The hub thread: the one owner of the connection registry and of fan-out.
//!
//! **Owns** the [`Registry`] of open connections (no `Mutex`: no other thread can reach
//! it), their keep-alive [`PingSchedule`], and the sockets of connections still in their
//! handshake, so a drain can cut those too. **Woken** by [`HubMsg`]s on its bounded
//! inbox (register and unregister from connection threads, broadcasts from handlers and
//! from the embedding program's own threads, the shutdown steps) and by the next ping
//! coming due: it pings every open connection once per `ping_interval`, through the same
//! fast path as a broadcast, so no writer keeps a timer or wakes to ping (see
//! [`crate::ws::keepalive`]). **Ends** on [`HubMsg::Stop`], which the shutdown
//! sequence sends once every connection thread has ended, or when every sender is gone.
//!
//! The hub never blocks on a client. Each broadcast is offered to every member: written
//! at once when that member's writer is idle and its socket has room (a non-blocking
//! send under the connection's write lock, see [`crate::server::writer`]), else pushed on its
//! bounded queue without waiting. A member whose queue is full is a slow consumer and is
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
use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use crate::server::queue::OutboundTx;
use log::{debug, info, trace};
use tungstenite::Message;

use crate::server::error::SendError;
use crate::server::flow::{Credit, Flow, InFlight};
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
    /// Shutdown has begun: Close 1001 (after what is queued) to every connection, and to
    /// every connection that registers from now on. Replies with the number closed.
    Drain(Sender<usize>),
    /// The drain deadline passed: cut every connection still registered, and any that
    /// registers from now on.
    Cut,
    /// Every connection thread has ended: stop.
    Stop,
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
    /// Writes at once when the connection's writer is idle (no wake-up, no queueing),
    /// else queues for it.
    fn offer(&self, frame: &WireFrame) -> Offer {
        if self.write.write_now(frame, &self.data, &self.ctrl) {
            Offer::Queued
        } else {
            self.data.try_push(frame.clone())
        }
    }
}

impl PeerHandle {
    /// Sends `close` (a Close 1001) after everything queued: at once when nothing is
    /// queued and the writer is idle, else through the writer. Cuts the connection if
    /// even the control channel is full (its writer is stuck on a client that does not
    /// read). A Close the hub wrote itself arms no timer in the writer; the drain's own
    /// deadline cuts a client that never answers.
    fn going_away(&self, close: &WireFrame) {
        if self.write.write_now(close, &self.data, &self.ctrl) {
            return;
        }
        let close = Ctrl::Close {
            code: GOING_AWAY,
            reason: Cow::Borrowed(GOING_AWAY_REASON),
        };
        if let Err(TrySendError::Full(_)) = self.ctrl.try_send(close) {
            self.cut();
        }
    }

    /// Cuts the connection (an abortive close), which wakes its reader and writer.
    fn cut(&self) {
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

/// The hub's inbox: [`HUB_QUEUE`] messages, broadcasts up to `max_bytes` in all.
pub(crate) fn inbox(max_bytes: usize) -> (Hub, Inbox) {
    let (tx, rx) = bounded(HUB_QUEUE);
    let flow = Flow::new(max_bytes);
    (
        Hub {
            tx,
            flow: flow.clone(),
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
            HubMsg::Drain(_) => "Drain",
            HubMsg::Cut => "Cut",
            HubMsg::Stop => "Stop",
        })
    }
}

impl Hub {
    /// Sends `msg` to every connection on `topic` (a route's path, such as `/chat`).
    /// The message is encoded once, here, on the calling thread. Blocks only while the
    /// hub's inbox is full. Fails with [`SendError::Closed`] once the server has stopped.
    /// Blocks also while the inbox holds its byte budget of broadcasts
    /// ([`Config::max_inbox_bytes`](crate::Config::max_inbox_bytes)).
    pub fn broadcast(&self, topic: &str, msg: Message) -> Result<(), SendError> {
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

    pub(crate) fn send(&self, msg: HubMsg) -> Result<(), SendError> {
        self.post(msg, None)
    }

    fn post(&self, msg: HubMsg, credit: Option<Credit>) -> Result<(), SendError> {
        self.tx
            .send(Envelope { msg, _credit: credit })
            .map_err(|_| SendError::Closed)
    }
}

/// Runs the hub loop until [`HubMsg::Stop`]. See the module docs.
pub(crate) fn run(inbox: Inbox, ping_interval: Duration) {
    // However the hub ends, even by a panic: wake any sender still waiting for room in
    // the inbox, now that nothing will make it.
    struct CloseFlow(Arc<Flow>);
    impl Drop for CloseFlow {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = CloseFlow(inbox.flow);
    serve(&inbox.rx, ping_interval);
}

fn serve(inbox: &Receiver<Envelope>, ping_interval: Duration) {
    let mut registry: Registry<PeerHandle> = Registry::default();
    let mut pings = PingSchedule::new(ping_interval);
    // Connections still in their HTTP handshake: only a drain's cut needs them.
    let mut handshaking: HashMap<ConnId, Arc<TcpStream>> = HashMap::new();
    let mut draining = false;
    let mut cutting = false;
    // Encoded once each: every connection gets the same bytes.
    let going_away = WireFrame::close(GOING_AWAY, GOING_AWAY_REASON);
    let ping = WireFrame::ping();
    loop {
        // Sleep until a message arrives or the next ping is due; nothing else wakes us.
        let next = match pings.next_due() {
            Some(due) if !draining => inbox.recv_deadline(due),
            _ => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
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
                    peer.going_away(&going_away);
                }
                registry.insert(id, &topic, peer);
                pings.add(id, Instant::now());
            }
            Some(HubMsg::Unregister(id)) => {
                handshaking.remove(&id);
                if registry.remove(id).is_some() {
                    pings.compact(registry.len(), |id| registry.contains(id));
                }
            }
            Some(HubMsg::Broadcast { topic, frame }) => {
                let out = registry.broadcast(&topic, &frame);
                trace!("broadcast on {topic} queued for {}", out.delivered);
                for (id, peer) in out.slow {
                    info!("connection {id}: slow consumer (queue full), disconnecting");
                    peer.cut();
                }
            }
            Some(HubMsg::Drain(reply)) => {
                draining = true;
                debug!("hub: closing {} connections with 1001", registry.len());
                for (_, peer) in registry.iter() {
                    peer.going_away(&going_away);
                }
                let _ = reply.send(registry.len());
            }
            Some(HubMsg::Cut) => {
                cutting = true;
                for (_, peer) in registry.iter() {
                    peer.cut();
                }
                for sock in handshaking.values() {
                    writer::cut(sock);
                }
            }
            Some(HubMsg::Stop) => break,
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
}
