//! `/ws` on the hub thread: protocol v1 commands executed against the channel state,
//! and every reply and push offered to its connection.
//!
//! **Owns** nothing itself: it runs on the hub thread with the hub's
//! [`Channels`](crate::pubsub::Channels) and [`Registry`], which only that thread can
//! reach. **Woken** by the hub, for each [`HubMsg::Command`](super::hub::HubMsg) a `/ws`
//! reader sent and each [`Hub::publish`](crate::Hub::publish) call.
//!
//! Every reply and push goes out through [`Peer::offer`], the non-blocking path
//! broadcasts take, so the hub never waits on a client. Because the hub executes
//! commands one at a time and offers to one connection in order:
//! - a `sub` reply (its snapshot taken here) is queued before any push that follows it:
//!   no gap, no duplicate;
//! - a publication is in history and offered to every subscriber before its `pub` ack
//!   is offered, so a publisher subscribed to its own channel sees the push first.
//!
//! A connection whose queue is full is a slow consumer: it is cut at once, as on `/chat`,
//! and its subscriptions end with it (its client recovers with `since`).
//!
//! Presence ([`Presence`]) changes in the same step as the subscription it follows: a
//! `sub` offers its `join` to the channel's watchers right after its reply, an `unsub`
//! its `leave`, and a connection that goes (closed, dead, cut) one `leave` per channel,
//! exactly once, through [`Hubside::forget`]. So watchers see joins, leaves and
//! publications of one channel in the one order the hub executed them. A storm of
//! joins and leaves is owed through [`crate::server::backlog`] and delivered in slices
//! between the hub's messages, so it cannot stall other channels; whatever a connection
//! is owed goes out before anything else is offered to it, which keeps that order. Identity and
//! permissions were checked on the connection's reader before the command got here
//! ([`crate::pubsub::auth`]); only "is it subscribed" (for `presence`) needs the hub.

use std::time::Instant;

use crossbeam_channel::Sender;
use log::info;
use serde_json::Value;
use tungstenite::{Message, Utf8Bytes};

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::pubsub::auth::Identity;
use crate::pubsub::encode;
use crate::pubsub::presence::{Event, Presence};
use crate::pubsub::protocol::{
    Command, Empty, ErrorBody, ErrorCode, Push, Reply, Request, StreamPosition, Welcome,
};
use crate::pubsub::{Channels, ConnId, HistoryQuery, Publish};
use crate::server::backlog::{Backlog, Delivered};
use crate::server::error::PublishError;
use crate::server::hub::PeerHandle;
use crate::server::metrics::Metrics;
use crate::server::registry::{Offer, Peer, Registry};
use crate::ws::wire::WireFrame;

/// A command a `/ws` reader parsed, for the hub.
#[derive(Debug)]
pub(crate) struct ConnCommand {
    /// The connection it came from.
    pub conn: ConnId,
    /// The command.
    pub request: Request,
    /// For `hello`: who the reader's authorizer found the client to be.
    pub identity: Option<Arc<Identity>>,
    /// For `presence`: the authorizer lets this client list the channel without being
    /// subscribed to it.
    pub presence_any: bool,
}

impl ConnCommand {
    /// The rule both engines apply before listing presence: a `presence` of a channel
    /// this connection is not subscribed to (`subscribed` asks the engine's
    /// subscriptions) is error 3, forbidden, unless the authorizer lets it list any
    /// channel. Every other command passes.
    pub(crate) fn check_presence(&self, subscribed: impl FnOnce(&str) -> bool) -> Result<(), ErrorBody> {
        match &self.request.command {
            Command::Presence { ch } if !self.presence_any && !subscribed(ch) => Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!("presence of {ch} is for its subscribers"),
            )),
            _ => Ok(()),
        }
    }
}

/// A publication through [`Hub::publish`](crate::Hub::publish).
#[derive(Debug)]
pub(crate) struct ApiPublish {
    /// The channel (already validated).
    pub ch: String,
    /// The data.
    pub data: Value,
    /// The idempotency key, as a client's `pub` carries it (already validated).
    pub key: Option<String>,
    /// Where the result goes. Dropped unanswered if the hub stops first, which wakes the
    /// caller.
    pub reply: Sender<Result<StreamPosition, PublishError>>,
}

impl ApiPublish {
    /// The publication it asks for: from no connection.
    pub(crate) fn publication(&self) -> Publish<'_> {
        Publish {
            key: self.key.as_deref(),
            ..Publish::new(&self.ch, &self.data)
        }
    }
}

/// The hub's state that `/ws` commands touch.
pub(crate) struct Hubside<'a> {
    pub channels: &'a mut Channels,
    pub registry: &'a mut Registry<PeerHandle>,
    pub presence: &'a mut Presence,
    /// Joins and leaves still owed to their watchers (a storm's, delivered in slices).
    pub backlog: &'a mut Backlog,
    pub metrics: &'a Metrics,
}

impl Hubside<'_> {
    /// Executes one command and offers its reply (and, for `pub`, the pushes). The hub
    /// has dropped the commands of connections that are gone.
    pub(crate) fn execute(&mut self, cmd: ConnCommand, now: Instant) {
        let (conn, id) = (cmd.conn, cmd.request.id);
        if let Err(e) = cmd.check_presence(|ch| self.channels.is_subscribed(conn, ch)) {
            self.send(conn, encode::reply(&Reply::<Empty>::err(Some(id), e)));
            return;
        }
        let reply = match cmd.request.command {
            Command::Hello { .. } => self.hello(conn, id, cmd.identity),
            Command::Sub { ch, since, joins } => {
                match self.channels.subscribe(conn, &ch, since.as_ref(), now) {
                    Ok(snap) => {
                        self.metrics.recovery(snap.recovered);
                        // The reply first, so the subscriber's own view starts before any
                        // push; then the others hear of it.
                        self.send(conn, encode::snapshot_reply(id, &snap));
                        let join = self.presence.join(conn, &ch, joins);
                        self.announce(Push::Join, join);
                        return;
                    }
                    Err(e) => encode::reply(&Reply::<Empty>::err(Some(id), e)),
                }
            }
            Command::Unsub { ch } => match self.channels.unsubscribe(conn, &ch) {
                Ok(()) => {
                    self.send(conn, encode::reply(&Reply::ok(id, Empty {})));
                    let leave = self.presence.leave(conn, &ch);
                    self.announce(Push::Leave, leave);
                    return;
                }
                Err(e) => encode::reply(&Reply::<Empty>::err(Some(id), e)),
            },
            Command::Presence { ch } => encode::reply(&Reply::ok(id, self.presence.list(&ch))),
            Command::Pub { ch, data, key } => {
                let p = Publish {
                    ch: &ch,
                    data: &data,
                    key: key.as_deref(),
                    from: Some(conn),
                };
                match self.publish(p, now) {
                    Ok(position) => encode::reply(&Reply::ok(id, position)),
                    Err(e) => encode::reply(&Reply::<Empty>::err(Some(id), e)),
                }
            }
            Command::History { ch, since, limit } => {
                let q = HistoryQuery {
                    ch: &ch,
                    since: since.as_ref(),
                    limit,
                };
                match self.channels.history(q, now) {
                    Ok(snap) => encode::snapshot_reply(id, &snap),
                    Err(e) => encode::reply(&Reply::<Empty>::err(Some(id), e)),
                }
            }
        };
        self.send(conn, reply);
    }

    /// Records who `conn` is; error 2 once it has subscribed to anything (its presence
    /// entries are already out under the old name).
    fn hello(&mut self, conn: ConnId, id: u64, identity: Option<Arc<Identity>>) -> Utf8Bytes {
        if self.channels.subscription_count(conn) > 0 || self.presence.is_identified(conn) {
            let e = ErrorBody::new(ErrorCode::BadState, "hello must be the first command");
            return encode::reply(&Reply::<Empty>::err(Some(id), e));
        }
        let who = identity.unwrap_or_default();
        self.presence.identify(conn, &who.user, who.info.clone());
        encode::reply(&Reply::ok(
            id,
            Welcome {
                client: self.presence.client_id(conn),
                user: who.user.clone(),
            },
        ))
    }

    /// Offers a join or leave to the watchers it names, now or (a storm's) through the
    /// backlog; a watcher too slow to take it is cut (and its own leaves follow).
    fn announce(&mut self, push: fn(crate::pubsub::protocol::Member) -> Push, event: Event) {
        if event.to.is_empty() {
            return;
        }
        let frame = text_frame(encode::push_frame(&push(event.member)));
        let mut out = Delivered::default();
        self.backlog.announce(frame, event.to, self.registry, &mut out);
        self.delivered(out);
    }

    /// Offers up to `most` owed joins and leaves (the hub calls it between messages).
    pub(crate) fn deliver_owed(&mut self, most: usize) {
        let mut out = Delivered::default();
        self.backlog.deliver(most, self.registry, &mut out);
        self.delivered(out);
    }

    /// Offers every owed join and leave (before the drain's Close 1001).
    pub(crate) fn settle_all(&mut self) {
        let mut out = Delivered::default();
        self.backlog.settle_all(self.registry, &mut out);
        self.delivered(out);
    }

    /// Before `conn` is offered anything but a join or leave: what it is owed goes first.
    fn settle(&mut self, conn: ConnId) {
        if self.backlog.is_empty() {
            return;
        }
        let mut out = Delivered::default();
        self.backlog.settle(conn, self.registry, &mut out);
        self.delivered(out);
    }

    /// Counts delivered joins and leaves, and forgets the watchers that could not take
    /// theirs.
    fn delivered(&mut self, out: Delivered) {
        if out.pushes > 0 {
            self.metrics.sent(out.pushes, out.bytes);
            self.metrics.presence_pushes.fetch_add(out.pushes as u64, Relaxed);
        }
        for (conn, offer) in out.dropped {
            self.drop_conn(conn, offer);
        }
    }

    /// Ends every subscription of `conn`, which has gone or been cut, with one `leave`
    /// per channel to its watchers, and forgets who it was. A second call finds nothing
    /// left, so each connection's leaves go out exactly once.
    pub(crate) fn forget(&mut self, conn: ConnId) {
        for ch in self.channels.remove_conn(conn) {
            let leave = self.presence.leave(conn, &ch);
            self.announce(Push::Leave, leave);
        }
        self.presence.forget(conn);
    }

    /// A publication through the server API (`Hub::publish*`, `POST /api/publish`): no
    /// `from`; a key when the caller gave one.
    pub(crate) fn api_publish(&mut self, p: ApiPublish, now: Instant) {
        let result = self.publish(p.publication(), now).map_err(PublishError::Rejected);
        // The caller may have given up waiting; nothing to do then.
        let _ = p.reply.send(result);
    }

    /// Publishes and offers the push to every subscriber, before the caller acks.
    fn publish(&mut self, p: Publish<'_>, now: Instant) -> Result<StreamPosition, ErrorBody> {
        let published = self.channels.publish(p, now)?;
        if let Some(publication) = &published.publication {
            let started = Instant::now();
            let frame = text_frame(encode::push(publication));
            let mut dropped = Vec::new();
            let mut delivered = 0;
            let mut owed = Delivered::default();
            for sub in self.channels.subscribers(p.ch) {
                if !self.backlog.is_empty() {
                    self.backlog.settle(sub, self.registry, &mut owed);
                }
                match self.registry.get(sub).map(|peer| peer.offer(&frame)) {
                    Some(Offer::Queued) => delivered += 1,
                    Some(offer) => dropped.push((sub, offer)),
                    None => dropped.push((sub, Offer::Gone)),
                }
            }
            let slow = dropped.iter().filter(|(_, o)| *o == Offer::Full).count();
            let len = frame.payload().len();
            self.metrics.publication(started.elapsed(), delivered, len, slow);
            self.delivered(owed);
            for (sub, offer) in dropped {
                self.drop_conn(sub, offer);
            }
        }
        Ok(published.position)
    }

    /// Offers `text` to `conn`; a full queue cuts it.
    fn send(&mut self, conn: ConnId, text: Utf8Bytes) {
        self.settle(conn);
        let frame = text_frame(text);
        match self.registry.get(conn).map(|peer| peer.offer(&frame)) {
            Some(Offer::Queued) => self.metrics.sent(1, frame.payload().len()),
            None => {}
            Some(offer) => self.drop_conn(conn, offer),
        }
    }

    /// Forgets a connection that could not take a frame; a slow one is cut.
    pub(crate) fn drop_conn(&mut self, conn: ConnId, offer: Offer) {
        if let Some(peer) = self.registry.remove(conn) {
            if offer == Offer::Full {
                info!("connection {conn}: slow consumer on /ws (queue full), disconnecting");
                peer.cut();
            }
        }
        self.forget(conn);
    }
}

/// A text frame of shared text, without a copy.
pub(crate) fn text_frame(text: Utf8Bytes) -> WireFrame {
    // `from_message` is `None` only for `Message::Frame`, never for text; were it ever,
    // an empty Ping would be sent instead, harmless to every client.
    WireFrame::from_message(Message::Text(text)).unwrap_or_else(WireFrame::ping)
}
