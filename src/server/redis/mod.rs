//! The Redis engine (issue #13): channel streams (epochs, offsets, history,
//! idempotency keys) and presence live in Redis, so every node that uses the same Redis
//! serves the same channels. Subscriptions and fan-out stay local to each node. See
//! `docs/redis.md`.
//!
//! Three owners:
//! - [`RedisSide`], owned by the **hub thread**: this node's subscriptions, and per
//!   channel the last position relayed and the `sub`s waiting for their snapshot; with
//!   the hub's [`Presence`] (lent in [`Out`]) this node's members and watchers. It
//!   never calls Redis: it sends work to the two threads below and gets their results
//!   back as [`Event`]s in its inbox, so fan-out never waits for a round trip. The hub
//!   also wakes it every `presence_refresh` ([`RedisSide::tick`]) to refresh this
//!   node's members' entries.
//! - The **engine thread** ([`engine`]): the publish, read and presence scripts, on the
//!   node's command connection.
//! - The **subscriber thread** ([`subscriber`]): the node's PUB/SUB connection, which
//!   delivers every publication, join and leave of the channels this node has
//!   subscribers for.
//!
//! # Presence
//!
//! A `sub` joins once its reply has gone out: the member goes into the hub's
//! [`Presence`] (this node's members, the source of each refresh) and a join job to the
//! engine thread, which records it in Redis and publishes it on the channel's PUB/SUB
//! channel. Every node, this one included, offers it to its watchers of the channel
//! (the member itself excepted: its client id carries this node's prefix). A
//! subscription that ends for any reason leaves the same way, once.
//!
//! Both threads end when the hub drops its senders ([`RedisSide::stop`] joins them).
//!
//! # Ordering
//!
//! The publish script gives a publication its offset, appends it to the stream and
//! `PUBLISH`es it in one atomic step, so Redis delivers the publications of a channel
//! to every node's PUB/SUB connection in offset order, and each node relays them in the
//! order received. A `sub` joins history and live like this: the Redis subscription is
//! confirmed first, then the snapshot is read; publications arriving meanwhile are
//! buffered; the reply carries the snapshot and is followed by the buffered ones past
//! its top. Anything published before the snapshot is in it, anything after arrives
//! live: no gap, and offsets at or below the top are dropped: no duplicate. A node that
//! sees an offset skipped or the epoch change (its PUB/SUB connection dropped, the
//! channel was flushed) ends the subscriptions on that channel with `push unsub` code 6;
//! clients resubscribe with `since` and recover from the stream.
//!
//! A `pub` ack goes out when the script has returned, so it can reach the publisher
//! before its own push (which travels through Redis PUB/SUB); the memory engine sends
//! the push first.

pub(crate) mod engine;
pub(crate) mod subscriber;

use crate::pubsub::presence::{Entry, Presence, client_id, conn_of};
use crate::pubsub::relay::presence_push;
use crate::server::commands::ConnCommand;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError, bounded, unbounded};
use log::{info, warn};
use serde_json::Value;
use tungstenite::Utf8Bytes;

use crate::client::backoff::BackoffConfig;
use crate::pubsub::encode::{self, Encoded};
use crate::pubsub::protocol::{Command, Empty, ErrorBody, ErrorCode, Push, Reply, Snapshot, StreamPosition};
use crate::pubsub::relay::{Continuity, Template, continuity};
use crate::pubsub::{ConnId, Limits, Subscriptions};
use crate::server::commands::{ApiPublish, text_frame};
use crate::server::engine::EngineHealth;
use crate::server::error::PublishError;
use crate::server::hub::{Hub, PeerHandle};
use crate::server::metrics::{HubStats, Metrics};
use crate::server::registry::{Offer, Peer, Registry};
use engine::{EngineThread, Job};
use subscriber::Ctl;

/// Jobs waiting for the engine thread. Past it a `pub`, `sub` or `history` gets error 6
/// at once: the hub never waits for the engine.
const JOB_QUEUE: usize = 4096;

/// How the engine's connections retry: quickly at first (a Redis restart is short),
/// at most every 5 s, with jitter so a fleet of nodes does not reconnect in step.
pub(crate) fn reconnect_backoff() -> BackoffConfig {
    BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
        ..BackoffConfig::default()
    }
}

/// The Redis names of one wshub channel.
pub(crate) struct Names {
    /// Hash: `e` the epoch, `o` the top offset.
    pub meta: String,
    /// Stream: the history, entry id `OFFSET-0`, field `p` the publication.
    pub stream: String,
    /// PUB/SUB channel.
    pub live: String,
    /// Hash: the channel's members, client id -> member JSON.
    pub members: String,
    /// Sorted set: the members' client ids, scored by when each entry expires.
    pub expiry: String,
    ch: String,
}

const LIVE_PREFIX: &str = "wshub:live:";

impl Names {
    pub(crate) fn new(ch: &str) -> Names {
        Names {
            meta: format!("wshub:meta:{ch}"),
            stream: format!("wshub:hist:{ch}"),
            live: format!("{LIVE_PREFIX}{ch}"),
            members: format!("wshub:pres:{ch}"),
            expiry: format!("wshub:pexp:{ch}"),
            ch: ch.to_owned(),
        }
    }

    /// The idempotency key of `key` on this channel (the channel's length first, so no
    /// two `(channel, key)` pairs share one).
    pub(crate) fn idempotency(&self, key: &str) -> String {
        format!("wshub:idem:{}:{}:{key}", self.ch.len(), self.ch)
    }

    /// The wshub channel of a PUB/SUB channel name.
    pub(crate) fn channel_of(live: &str) -> Option<&str> {
        live.strip_prefix(LIVE_PREFIX)
    }
}

/// How the engine keeps presence (from [`Config`](crate::Config)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PresenceConfig {
    /// How long a member's entry lives in Redis unless its node refreshes it.
    pub ttl: Duration,
    /// How often this node refreshes its members' entries.
    pub refresh: Duration,
    /// Members a `presence` reply lists at most.
    pub max_list: usize,
}

/// Where a publication's result goes.
#[derive(Debug)]
pub(crate) enum PubTarget {
    /// A client's `pub`: the ack (or error) to `conn`.
    Conn { conn: ConnId, id: u64 },
    /// [`Hub::publish`](crate::Hub::publish): the caller.
    Api(Sender<Result<StreamPosition, PublishError>>),
}

/// What the engine and subscriber threads tell the hub.
#[derive(Debug)]
pub(crate) enum Event {
    /// A reply to offer to `conn` (a `pub` ack or a `history` reply).
    Reply { conn: ConnId, text: Utf8Bytes },
    /// A `sub`'s snapshot, read after its Redis subscription was confirmed.
    Snapshot {
        ch: String,
        conn: ConnId,
        id: u64,
        ticket: u64,
        result: Result<Snapshot<Encoded>, ErrorBody>,
    },
    /// Redis confirmed the subscription to `ch` asked for with `round`.
    Subscribed { ch: String, round: u64 },
    /// The subscription to `ch` asked for with `round` could not be made.
    SubscribeFailed { ch: String, round: u64 },
    /// A publication on `ch`, from PUB/SUB.
    Live {
        ch: String,
        epoch: String,
        offset: u64,
        publication: Encoded,
    },
    /// A join or leave on `ch`, from PUB/SUB (any node's, this one's included).
    Presence {
        ch: String,
        join: bool,
        /// The member's client id.
        client: String,
        /// The member's JSON.
        member: String,
    },
    /// The PUB/SUB connection failed: every Redis subscription is gone.
    SubscriberLost,
}

fn not_here() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "streams are kept in Redis")
}

/// A member's JSON as Redis keeps it: `client`, `user`, `info` (no `ch`).
fn member_json(e: &Entry) -> String {
    serde_json::to_string(&e.member(None)).unwrap_or_default()
}

fn busy() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "engine busy, retry later")
}

/// A `sub` waiting for its snapshot.
#[derive(Debug)]
struct Pending {
    id: u64,
    ticket: u64,
    since: Option<StreamPosition>,
    joins: bool,
}

/// A publication relayed from PUB/SUB.
#[derive(Debug, Clone)]
struct Live {
    pos: StreamPosition,
    publication: Encoded,
}

/// This node's view of one channel it has subscribers for.
#[derive(Debug, Default)]
struct Node {
    /// The number of the Redis subscription asked for; a confirmation of an older one
    /// (since unsubscribed) is ignored.
    round: u64,
    /// Redis confirmed the subscription: snapshots can be read.
    subscribed: bool,
    /// The last publication relayed.
    last: Option<StreamPosition>,
    /// `sub`s waiting for their snapshot.
    pending: HashMap<ConnId, Pending>,
    /// What arrived while some `sub` was pending.
    buffer: Vec<Live>,
    /// Subscribers whose snapshot reached past `last`: offsets up to theirs are skipped.
    ahead: HashMap<ConnId, u64>,
}

/// The Redis engine on the hub thread. See the module docs.
pub(crate) struct RedisSide {
    /// Who is subscribed to what here; the streams are in Redis, read only by the engine
    /// thread.
    subs: Subscriptions,
    nodes: HashMap<String, Node>,
    next_round: u64,
    next_ticket: u64,
    limits: Limits,
    /// This node's client id prefix (see [`client_id`]).
    prefix: String,
    jobs: Option<Sender<Job>>,
    ctl: Option<Sender<Ctl>>,
    threads: Vec<JoinHandle<()>>,
    /// How often this node's members are refreshed in Redis, and when next.
    refresh_every: Duration,
    next_refresh: Instant,
}

/// What the hub lends the Redis side for one call.
pub(crate) struct Out<'a> {
    pub registry: &'a mut Registry<PeerHandle>,
    pub metrics: &'a Metrics,
    /// Identities, this node's members and the watchers.
    pub presence: &'a mut Presence,
}

impl RedisSide {
    /// Starts the engine and subscriber threads for `url`.
    pub(crate) fn start(
        url: &str,
        timeout: Duration,
        limits: Limits,
        presence: PresenceConfig,
        prefix: &str,
        health: Arc<EngineHealth>,
        hub: Hub,
    ) -> Result<RedisSide, String> {
        let client = redis::Client::open(url).map_err(|e| format!("engine {url:?}: {e}"))?;
        let (jobs_tx, jobs_rx) = bounded(JOB_QUEUE);
        let (ctl_tx, ctl_rx) = unbounded();
        let engine = EngineThread::new(
            client.clone(),
            timeout,
            limits,
            presence,
            health.clone(),
            hub.clone(),
        );
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| format!("cannot spawn {name}: {e}"))
        };
        let t1 = spawn("wshub-redis-cmd", Box::new(move || engine.run(jobs_rx)))?;
        let t2 = spawn(
            "wshub-redis-sub",
            Box::new(move || subscriber::run(client, timeout, ctl_rx, hub, health)),
        )?;
        info!("engine: Redis at {url}");
        Ok(RedisSide {
            subs: Subscriptions::new(limits.max_subscriptions),
            nodes: HashMap::new(),
            next_round: 0,
            next_ticket: 0,
            limits,
            prefix: prefix.to_owned(),
            jobs: Some(jobs_tx),
            ctl: Some(ctl_tx),
            threads: vec![t1, t2],
            refresh_every: presence.refresh,
            next_refresh: Instant::now() + presence.refresh,
        })
    }

    /// Stops both threads (each notices within its timeout) and waits for them.
    pub(crate) fn stop(&mut self) {
        self.jobs = None;
        self.ctl = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn job(&self, job: Job) -> Result<(), ErrorBody> {
        let Some(jobs) = &self.jobs else {
            return Err(not_here());
        };
        match jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(busy()),
            Err(TrySendError::Disconnected(_)) => Err(not_here()),
        }
    }

    fn ctl(&self, ctl: Ctl) {
        if let Some(tx) = &self.ctl {
            let _ = tx.send(ctl);
        }
    }

    /// The sizes `/metrics` shows.
    pub(crate) fn stats(&self) -> HubStats {
        HubStats {
            channels: self.nodes.len(),
            subscriptions: self.subs.subscription_total(),
            history_bytes: 0,
        }
    }

    /// When the next presence refresh is due, while this node has members.
    pub(crate) fn next_due(&self, presence: &Presence) -> Option<Instant> {
        (presence.store().channel_count() > 0).then_some(self.next_refresh)
    }

    /// Refreshes this node's members in Redis when it is time: each gets a new expiry,
    /// so an entry outlives its node by at most the presence TTL.
    pub(crate) fn tick(&mut self, now: Instant, presence: &Presence) {
        if now < self.next_refresh {
            return;
        }
        self.next_refresh = now + self.refresh_every;
        let channels: Vec<(String, Vec<(String, String)>)> = presence
            .store()
            .channels()
            .map(|(ch, members)| {
                let members = members.map(|e| (e.client.clone(), member_json(e))).collect();
                (ch.to_owned(), members)
            })
            .collect();
        if channels.is_empty() {
            return;
        }
        if let Err(e) = self.job(Job::Refresh(channels)) {
            warn!(
                "engine: presence refresh skipped ({}); next in {:?}",
                e.msg, self.refresh_every
            );
        }
    }

    /// Executes a `/ws` command of a connection still registered (the hub drops the
    /// others').
    pub(crate) fn execute(&mut self, cmd: ConnCommand, out: &mut Out<'_>) {
        let (conn, id) = (cmd.conn, cmd.request.id);
        if let Err(e) = cmd.check_presence(|ch| self.subs.is_subscribed(conn, ch)) {
            self.offer(out, conn, encode::reply(&Reply::<Empty>::err(Some(id), e)));
            return;
        }
        let done = match cmd.request.command {
            // The hub answers `hello` itself, with either engine.
            Command::Hello { .. } => Ok(None),
            Command::Presence { ch } => self.job(Job::Presence { ch, conn, id }).map(|()| None),
            Command::Sub { ch, since, joins } => self.sub(conn, id, ch, since, joins),
            Command::Unsub { ch } => {
                if self.subs.is_subscribed(conn, &ch) {
                    self.drop_sub(out.presence, conn, &ch);
                    Ok(Some(encode::reply(&Reply::ok(id, Empty {}))))
                } else {
                    // Not subscribed: the bookkeeping's own error.
                    self.subs.unsubscribe(conn, &ch).map(|()| None)
                }
            }
            Command::Pub { ch, data, key } => self
                .publish(&ch, &data, key, Some(conn), PubTarget::Conn { conn, id })
                .map(|()| None),
            Command::History { ch, since, limit } => self
                .job(Job::Read {
                    ch,
                    conn,
                    id,
                    since,
                    limit,
                    sub: None,
                })
                .map(|()| None),
        };
        match done {
            Ok(None) => {}
            Ok(Some(text)) => self.offer(out, conn, text),
            Err(e) => self.offer(out, conn, encode::reply(&Reply::<Empty>::err(Some(id), e))),
        }
    }

    /// A publication through the server API.
    pub(crate) fn api_publish(&mut self, p: ApiPublish) {
        let reply = p.reply.clone();
        if let Err(e) = self.publish(&p.ch, &p.data, p.key, None, PubTarget::Api(p.reply)) {
            let _ = reply.send(Err(PublishError::Rejected(e)));
        }
    }

    fn publish(
        &mut self,
        ch: &str,
        data: &Value,
        key: Option<String>,
        from: Option<ConnId>,
        to: PubTarget,
    ) -> Result<(), ErrorBody> {
        let client = from.map(|c| client_id(&self.prefix, c));
        let template = Template::new(ch, data, client.as_deref());
        // The offset is not known yet: count it at its widest.
        let len = template.len_at(u64::MAX);
        let max = self.limits.max_publication_size;
        if len > max {
            return Err(ErrorBody::new(
                ErrorCode::LimitExceeded,
                format!("data too large: the publication is up to {len} bytes, the limit {max}"),
            ));
        }
        self.job(Job::Publish {
            ch: ch.to_owned(),
            template,
            key,
            to,
        })
    }

    fn sub(
        &mut self,
        conn: ConnId,
        id: u64,
        ch: String,
        since: Option<StreamPosition>,
        joins: bool,
    ) -> Result<Option<Utf8Bytes>, ErrorBody> {
        self.subs.subscribe(conn, &ch)?;
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let node = match self.nodes.get_mut(&ch) {
            Some(node) => node,
            None => {
                self.next_round += 1;
                let round = self.next_round;
                self.ctl(Ctl::Subscribe {
                    ch: ch.clone(),
                    round,
                });
                self.nodes.entry(ch.clone()).or_insert(Node {
                    round,
                    ..Node::default()
                })
            }
        };
        let subscribed = node.subscribed;
        node.pending.insert(
            conn,
            Pending {
                id,
                ticket,
                since: since.clone(),
                joins,
            },
        );
        if subscribed {
            if let Err(e) = self.read_snapshot(&ch, conn, id, ticket, since) {
                // Still pending: not a member yet, so no presence to undo.
                self.unsubscribe_here(conn, &ch);
                return Err(e);
            }
        }
        Ok(None)
    }

    fn read_snapshot(
        &self,
        ch: &str,
        conn: ConnId,
        id: u64,
        ticket: u64,
        since: Option<StreamPosition>,
    ) -> Result<(), ErrorBody> {
        self.job(Job::Read {
            ch: ch.to_owned(),
            conn,
            id,
            since,
            limit: None,
            sub: Some(ticket),
        })
    }

    /// Ends `conn`'s subscription to `ch` here (no reply, no push to it); if it had
    /// joined, it leaves: its entry is removed from Redis and every node's watchers are
    /// told.
    fn drop_sub(&mut self, presence: &mut Presence, conn: ConnId, ch: &str) {
        if presence.store().contains(ch, conn) {
            let leave = presence.leave(conn, ch);
            let job = Job::Leave {
                ch: ch.to_owned(),
                client: leave.member.client,
            };
            if let Err(e) = self.job(job) {
                warn!(
                    "engine: leave of connection {conn} from {ch} not sent ({}); its entry expires",
                    e.msg
                );
            }
        }
        self.unsubscribe_here(conn, ch);
    }

    /// `conn`'s subscription to `ch` has succeeded: it joins, in Redis for every node.
    fn join(&mut self, presence: &mut Presence, conn: ConnId, ch: &str, joins: bool) {
        let joined = presence.join(conn, ch, joins);
        let client = joined.member.client.clone();
        let mut member = joined.member;
        member.ch = None;
        let job = Job::Join {
            ch: ch.to_owned(),
            client,
            member: serde_json::to_string(&member).unwrap_or_default(),
        };
        if let Err(e) = self.job(job) {
            warn!(
                "engine: join of connection {conn} to {ch} not sent ({}); the next refresh lists it",
                e.msg
            );
        }
    }

    /// Ends `conn`'s subscription to `ch` in this node's bookkeeping only.
    fn unsubscribe_here(&mut self, conn: ConnId, ch: &str) {
        let _ = self.subs.unsubscribe(conn, ch);
        if let Some(node) = self.nodes.get_mut(ch) {
            node.pending.remove(&conn);
            node.ahead.remove(&conn);
        }
        self.release(ch);
    }

    /// Forgets `ch` and its Redis subscription once nobody here is subscribed.
    fn release(&mut self, ch: &str) {
        if self.subs.subscribers(ch).next().is_none() && self.nodes.remove(ch).is_some() {
            self.ctl(Ctl::Unsubscribe { ch: ch.to_owned() });
        }
    }

    /// `conn` has gone: drop its subscriptions (with their leaves).
    pub(crate) fn remove_conn(&mut self, conn: ConnId, presence: &mut Presence) {
        let chs: Vec<Arc<str>> = self.subs.channels_of(conn).collect();
        for ch in chs {
            self.drop_sub(presence, conn, &ch);
        }
    }

    /// Offers `text` to `conn`; a full queue cuts it.
    fn offer(&mut self, out: &mut Out<'_>, conn: ConnId, text: Utf8Bytes) {
        let frame = text_frame(text);
        match out.registry.get(conn).map(|peer| peer.offer(&frame)) {
            Some(Offer::Queued) => out.metrics.sent(1, frame.payload().len()),
            None => {}
            Some(offer) => self.cut(out, conn, offer),
        }
    }

    fn cut(&mut self, out: &mut Out<'_>, conn: ConnId, offer: Offer) {
        self.remove_conn(conn, out.presence);
        if let Some(peer) = out.registry.remove(conn) {
            if offer == Offer::Full {
                info!("connection {conn}: slow consumer on /ws (queue full), disconnecting");
                peer.cut();
            }
        }
    }

    /// Ends `conn`'s subscription to `ch` with `push unsub` code 6.
    fn resubscribe(&mut self, out: &mut Out<'_>, conn: ConnId, ch: &str, reason: &str) {
        self.drop_sub(out.presence, conn, ch);
        let push = Push::Unsub {
            ch: ch.to_owned(),
            code: ErrorCode::Unavailable,
            reason: reason.to_owned(),
        };
        let text = Utf8Bytes::from(serde_json::to_string(&push).unwrap_or_default());
        self.offer(out, conn, text);
    }

    /// Handles what the engine or subscriber thread reports.
    pub(crate) fn event(&mut self, event: Event, out: &mut Out<'_>) {
        match event {
            Event::Reply { conn, text } => self.offer(out, conn, text),
            Event::Subscribed { ch, round } => {
                let Some(node) = self.nodes.get_mut(&ch) else {
                    // Its node was dropped while the subscribe was under way.
                    self.ctl(Ctl::Unsubscribe { ch });
                    return;
                };
                if node.round != round || node.subscribed {
                    return;
                }
                node.subscribed = true;
                let waiting: Vec<_> = node
                    .pending
                    .iter()
                    .map(|(c, p)| (*c, p.id, p.ticket, p.since.clone()))
                    .collect();
                for (conn, id, ticket, since) in waiting {
                    if let Err(e) = self.read_snapshot(&ch, conn, id, ticket, since) {
                        self.drop_sub(out.presence, conn, &ch);
                        self.offer(out, conn, encode::reply(&Reply::<Empty>::err(Some(id), e)));
                    }
                }
            }
            Event::SubscribeFailed { ch, round } => {
                let Some(node) = self.nodes.get(&ch).filter(|n| n.round == round) else {
                    return;
                };
                let waiting: Vec<_> = node.pending.iter().map(|(c, p)| (*c, p.id)).collect();
                for (conn, id) in waiting {
                    self.drop_sub(out.presence, conn, &ch);
                    let e =
                        ErrorBody::new(ErrorCode::Unavailable, "engine unavailable: Redis is unreachable");
                    self.offer(out, conn, encode::reply(&Reply::<Empty>::err(Some(id), e)));
                }
            }
            Event::Snapshot {
                ch,
                conn,
                id,
                ticket,
                result,
            } => self.snapshot(out, &ch, conn, id, ticket, result),
            Event::Live {
                ch,
                epoch,
                offset,
                publication,
            } => self.live(
                out,
                &ch,
                Live {
                    pos: StreamPosition { epoch, offset },
                    publication,
                },
            ),
            Event::Presence {
                ch,
                join,
                client,
                member,
            } => self.presence_event(out, &ch, join, &client, &member),
            Event::SubscriberLost => {
                let chs: Vec<String> = self.nodes.keys().cloned().collect();
                for ch in chs {
                    let pending: Vec<_> = self.nodes[&ch].pending.iter().map(|(c, p)| (*c, p.id)).collect();
                    for (conn, id) in pending {
                        self.drop_sub(out.presence, conn, &ch);
                        let e = ErrorBody::new(
                            ErrorCode::Unavailable,
                            "engine unavailable: Redis connection lost",
                        );
                        self.offer(out, conn, encode::reply(&Reply::<Empty>::err(Some(id), e)));
                    }
                    let live: Vec<ConnId> = self.subs.subscribers(&ch).collect();
                    for conn in live {
                        self.resubscribe(out, conn, &ch, "engine reconnecting: resubscribe with since");
                    }
                }
                // The Redis subscriptions went with the connection.
                self.nodes.clear();
            }
        }
    }

    fn snapshot(
        &mut self,
        out: &mut Out<'_>,
        ch: &str,
        conn: ConnId,
        id: u64,
        ticket: u64,
        result: Result<Snapshot<Encoded>, ErrorBody>,
    ) {
        let Some(node) = self.nodes.get_mut(ch) else {
            return;
        };
        if node.pending.get(&conn).is_none_or(|p| p.ticket != ticket) {
            return;
        }
        let joins = node.pending.remove(&conn).is_some_and(|p| p.joins);
        let snap = match result {
            Ok(snap) => snap,
            Err(e) => {
                self.drop_sub(out.presence, conn, ch);
                self.offer(out, conn, encode::reply(&Reply::<Empty>::err(Some(id), e)));
                return;
            }
        };
        out.metrics.recovery(snap.recovered);
        // What was relayed while this `sub` waited, past its snapshot.
        let mut at = StreamPosition {
            epoch: snap.epoch.clone(),
            offset: snap.offset,
        };
        let mut catch_up = Vec::new();
        let mut broken = false;
        for live in &node.buffer {
            match continuity(Some(&at), &live.pos.epoch, live.pos.offset) {
                Continuity::InOrder => {
                    at = live.pos.clone();
                    catch_up.push(live.publication.clone());
                }
                Continuity::Duplicate => {}
                Continuity::Broken => {
                    broken = true;
                    break;
                }
            }
        }
        if node.pending.is_empty() {
            node.buffer.clear();
        }
        // Later publications are checked against what the node relayed last.
        match &node.last {
            None => node.last = Some(at.clone()),
            Some(last) if last.epoch == at.epoch && last.offset == at.offset => {}
            Some(last) if last.epoch == at.epoch && last.offset < at.offset => {
                // Relayed ones up to `at` are still on their way: skip them for this one.
                node.ahead.insert(conn, at.offset);
            }
            Some(_) => broken = true,
        }
        self.offer(out, conn, encode::snapshot_reply(id, &snap));
        for p in catch_up {
            self.offer(out, conn, encode::push(&p));
        }
        if broken {
            self.resubscribe(out, conn, ch, "missed publications: resubscribe with since");
        } else if out.registry.get(conn).is_some() {
            // The reply is out: the others hear of it (through Redis, every node).
            self.join(out.presence, conn, ch, joins);
        }
    }

    /// A join or leave from PUB/SUB: offered to this node's watchers of `ch`, the
    /// member itself excepted.
    fn presence_event(&mut self, out: &mut Out<'_>, ch: &str, join: bool, client: &str, member: &str) {
        let itself = conn_of(out.presence.prefix(), client);
        let to: Vec<ConnId> = out.presence.watchers(ch).filter(|w| Some(*w) != itself).collect();
        if to.is_empty() {
            return;
        }
        let frame = text_frame(Utf8Bytes::from(presence_push(join, ch, member)));
        let mut dropped = Vec::new();
        for watcher in to {
            match out.registry.get(watcher).map(|peer| peer.offer(&frame)) {
                Some(Offer::Queued) => {
                    out.metrics.sent(1, frame.payload().len());
                    out.metrics
                        .presence_pushes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Some(offer) => dropped.push((watcher, offer)),
                None => dropped.push((watcher, Offer::Gone)),
            }
        }
        for (watcher, offer) in dropped {
            self.cut(out, watcher, offer);
        }
    }

    fn live(&mut self, out: &mut Out<'_>, ch: &str, live: Live) {
        let Some(node) = self.nodes.get_mut(ch) else {
            return;
        };
        if !node.pending.is_empty() {
            node.buffer.push(live.clone());
        }
        match continuity(node.last.as_ref(), &live.pos.epoch, live.pos.offset) {
            Continuity::Duplicate => {}
            Continuity::InOrder => {
                node.last = Some(live.pos.clone());
                let offset = live.pos.offset;
                let started = Instant::now();
                let frame = text_frame(encode::push(&live.publication));
                let mut delivered = 0;
                let mut dropped = Vec::new();
                for sub in self.subs.subscribers(ch) {
                    if node.pending.contains_key(&sub) || node.ahead.get(&sub).is_some_and(|u| *u >= offset) {
                        continue;
                    }
                    match out.registry.get(sub).map(|peer| peer.offer(&frame)) {
                        Some(Offer::Queued) => delivered += 1,
                        Some(offer) => dropped.push((sub, offer)),
                        None => dropped.push((sub, Offer::Gone)),
                    }
                }
                // Who was ahead up to here is level with the node from now on.
                node.ahead.retain(|_, upto| *upto > offset);
                let slow = dropped.iter().filter(|(_, o)| *o == Offer::Full).count();
                out.metrics
                    .publication(started.elapsed(), delivered, frame.payload().len(), slow);
                for (sub, offer) in dropped {
                    self.cut(out, sub, offer);
                }
            }
            Continuity::Broken => {
                node.last = Some(live.pos.clone());
                node.ahead.clear();
                let pending: Vec<ConnId> = node.pending.keys().copied().collect();
                let cut: Vec<ConnId> = self
                    .subs
                    .subscribers(ch)
                    .filter(|c| !pending.contains(c))
                    .collect();
                for conn in cut {
                    self.resubscribe(out, conn, ch, "missed publications: resubscribe with since");
                }
            }
        }
    }
}
