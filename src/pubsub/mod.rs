//! Channels on `/ws` (protocol v1), free of I/O: the wire types ([`protocol`]) and the
//! channel state the hub thread owns ([`Channels`]).
//!
//! **Owns** nothing and spawns nothing by itself: the hub thread owns one [`Channels`]
//! (no `Mutex`: no other thread can reach it) and calls it for every command. Nothing
//! here wakes by itself: every call takes the time it decides at (`now`) and the
//! connection it is about, so each rule is unit-tested without a socket. Nothing under
//! `src/pubsub/` may use sockets, channels or the server's threads (`tests/layout.rs`
//! checks it).
//!
//! The parts:
//! - [`protocol`]: the JSON shapes, shared with the Rust client, and command validation.
//! - [`encode`]: the server's output, each publication encoded once.
//! - [`history`], [`recovery`], [`idempotency`]: the ring of recent publications, the
//!   `since` decision, the `(channel, key)` cache.
//! - [`auth`]: who a client is and what it may do ([`auth::Authorizer`]), called on the
//!   readers, not here.
//! - [`presence`]: identities, channel members, join/leave watchers, owned by the hub.
//! - [`channel`]: [`MemoryStore`], the default engine: epochs, offsets, history.
//! - [`Channels`]: which connection is subscribed to what ([`Subscriptions`], always local
//!   to this server) in front of a [`Store`], the seam where another engine can stand in
//!   for [`MemoryStore`]. The Redis engine (issue #13) keeps only the [`Subscriptions`]
//!   here: its streams are read by its own thread.
//!
//! # Why the hub sequences
//!
//! Every command of every connection is executed by the one hub thread, in the order its
//! inbox received them. A publication gets its offset, enters history and is offered to
//! every subscriber in one step, before the hub looks at anything else; a `sub` takes its
//! snapshot in one step too. So the reply to a `sub` and the pushes after it join with no
//! gap and no duplicate, and every subscriber sees one order.

pub mod auth;
pub mod channel;
pub mod encode;
pub mod history;
pub mod idempotency;
pub mod presence;
pub mod protocol;
pub mod recovery;
pub mod relay;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use channel::MemoryStore;
use encode::Encoded;
use protocol::{ErrorBody, ErrorCode, Snapshot, StreamPosition};

/// A connection's id, as the hub knows it.
pub type ConnId = u64;

/// What bounds the channel state. The server fills it from its
/// [`Config`](crate::Config); each field's default is documented there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Publications kept per channel (0: no history, so no recovery).
    pub history_size: usize,
    /// How long a publication stays in history.
    pub history_ttl: Duration,
    /// How long a `pub`'s `(channel, key)` is remembered.
    pub idempotency_window: Duration,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Channels whose state may exist at once.
    pub max_channels: usize,
    /// Largest encoded publication, in bytes (the server's max message size), so history
    /// holds at most `history_size` x this per channel.
    pub max_publication_size: usize,
}

/// A publication to make: a client's `pub`, or one through the server API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Publish<'a> {
    /// The channel.
    pub ch: &'a str,
    /// The data.
    pub data: &'a Value,
    /// The idempotency key: a second publication with it within the window publishes
    /// nothing and gets the first one's position.
    pub key: Option<&'a str>,
    /// The connection that published, if a client did (its client id goes into the
    /// publication).
    pub from: Option<ConnId>,
}

impl<'a> Publish<'a> {
    /// `data` to `ch`, with no key and from no connection.
    pub fn new(ch: &'a str, data: &'a Value) -> Publish<'a> {
        Publish {
            ch,
            data,
            key: None,
            from: None,
        }
    }
}

/// A read of a channel's history (a `history` command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery<'a> {
    /// The channel.
    pub ch: &'a str,
    /// Without it the newest publications, with it the first ones after it.
    pub since: Option<&'a StreamPosition>,
    /// How many at most; it defaults to and is capped by the history size.
    pub limit: Option<u64>,
}

impl<'a> HistoryQuery<'a> {
    /// The newest publications of `ch`, as many as history keeps.
    pub fn new(ch: &'a str) -> HistoryQuery<'a> {
        HistoryQuery {
            ch,
            since: None,
            limit: None,
        }
    }
}

/// What a `pub` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The position the publication got (for a repeated key: the first one's).
    pub position: StreamPosition,
    /// The encoded publication to push to every subscriber; `None` when the key was seen
    /// within the window and nothing was published.
    pub publication: Option<Encoded>,
}

/// Where channel streams live: epochs, offsets, history, idempotency keys. The seam for
/// engines: [`MemoryStore`] keeps them in this process; another engine (Redis) keeps them
/// elsewhere, while subscriptions and fan-out stay with the hub ([`Channels`]).
///
/// Every method runs on the hub thread and returns at once; errors are the protocol's.
pub trait Store: Send {
    /// A connection of this server subscribes to `ch`: make sure its state exists (error
    /// 4 past the channel limit), count the subscriber, and return the snapshot (with
    /// the recovered publications when `since` is given).
    fn open(
        &mut self,
        ch: &str,
        since: Option<&StreamPosition>,
        now: Instant,
    ) -> Result<Snapshot<Encoded>, ErrorBody>;

    /// One subscriber of `ch` on this server has gone.
    fn close(&mut self, ch: &str);

    /// Publishes `p.data` to `p.ch`: the next offset, into history, remembered under
    /// `p.key`.
    fn publish(&mut self, p: Publish<'_>, now: Instant) -> Result<Published, ErrorBody>;

    /// Reads `q.ch`'s history: without `since` the newest `limit`, with it the first
    /// `limit` after it (with `recovered`). `limit` defaults to and is capped by the
    /// history size.
    fn history(&mut self, q: HistoryQuery<'_>, now: Instant) -> Result<Snapshot<Encoded>, ErrorBody>;

    /// Drops what has expired by `now`: history, idempotency keys, idle channels.
    fn expire(&mut self, now: Instant);

    /// Nothing is kept that could expire: no channel state, no idempotency key. The hub
    /// sleeps without a sweep deadline then.
    fn is_empty(&self) -> bool;
}

/// Which connection is subscribed to what, and nothing else: the bookkeeping of
/// [`Channels`], which puts a [`Store`] behind it. The Redis engine, whose streams are in
/// Redis, uses it alone. Owned by the hub thread.
#[derive(Debug)]
pub struct Subscriptions {
    max_subscriptions: usize,
    by_conn: HashMap<ConnId, Vec<Arc<str>>>,
    by_channel: HashMap<Arc<str>, HashSet<ConnId>>,
}

impl Subscriptions {
    /// No subscriptions yet; at most `max_subscriptions` per connection.
    pub fn new(max_subscriptions: usize) -> Subscriptions {
        Subscriptions {
            max_subscriptions,
            by_conn: HashMap::new(),
            by_channel: HashMap::new(),
        }
    }

    /// Subscribes `conn` to `ch`. Error 2 if it already is, error 4 past its subscription
    /// limit; an error changes nothing.
    pub fn subscribe(&mut self, conn: ConnId, ch: &str) -> Result<(), ErrorBody> {
        self.may_subscribe(conn, ch)?;
        self.add(conn, ch);
        Ok(())
    }

    fn may_subscribe(&self, conn: ConnId, ch: &str) -> Result<(), ErrorBody> {
        let held = self.by_conn.get(&conn);
        if held.is_some_and(|chs| chs.iter().any(|c| &**c == ch)) {
            return Err(ErrorBody::new(
                ErrorCode::BadState,
                format!("already subscribed to {ch}"),
            ));
        }
        if held.map_or(0, Vec::len) >= self.max_subscriptions {
            return Err(ErrorBody::new(
                ErrorCode::LimitExceeded,
                format!("too many subscriptions (max {})", self.max_subscriptions),
            ));
        }
        Ok(())
    }

    fn add(&mut self, conn: ConnId, ch: &str) {
        let name: Arc<str> = match self.by_channel.get_key_value(ch) {
            Some((k, _)) => k.clone(),
            None => Arc::from(ch),
        };
        self.by_channel.entry(name.clone()).or_default().insert(conn);
        self.by_conn.entry(conn).or_default().push(name);
    }

    /// Ends `conn`'s subscription to `ch`; error 2 if it had none.
    pub fn unsubscribe(&mut self, conn: ConnId, ch: &str) -> Result<(), ErrorBody> {
        let chs = self.by_conn.get_mut(&conn);
        let at = chs.as_ref().and_then(|chs| chs.iter().position(|c| &**c == ch));
        let (Some(chs), Some(at)) = (chs, at) else {
            return Err(ErrorBody::new(
                ErrorCode::BadState,
                format!("not subscribed to {ch}"),
            ));
        };
        chs.swap_remove(at);
        if chs.is_empty() {
            self.by_conn.remove(&conn);
        }
        self.leave(conn, ch);
        Ok(())
    }

    fn leave(&mut self, conn: ConnId, ch: &str) {
        if let Some(members) = self.by_channel.get_mut(ch) {
            members.remove(&conn);
            if members.is_empty() {
                self.by_channel.remove(ch);
            }
        }
    }

    /// Drops every subscription of `conn` (it has gone, or was cut) and returns the
    /// channels it was subscribed to (none the second time).
    pub fn remove_conn(&mut self, conn: ConnId) -> Vec<Arc<str>> {
        let chs = self.by_conn.remove(&conn).unwrap_or_default();
        for ch in &chs {
            self.leave(conn, ch);
        }
        chs
    }

    /// Whether `conn` is subscribed to `ch`.
    pub fn is_subscribed(&self, conn: ConnId, ch: &str) -> bool {
        self.by_channel.get(ch).is_some_and(|m| m.contains(&conn))
    }

    /// The connections subscribed to `ch`, in no particular order.
    pub fn subscribers(&self, ch: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.by_channel.get(ch).into_iter().flatten().copied()
    }

    /// Subscriptions of every connection together.
    pub fn subscription_total(&self) -> usize {
        self.by_conn.values().map(Vec::len).sum()
    }

    /// The channels `conn` is subscribed to.
    pub fn channels_of(&self, conn: ConnId) -> impl Iterator<Item = Arc<str>> + '_ {
        self.by_conn.get(&conn).into_iter().flatten().cloned()
    }

    /// How many channels `conn` is subscribed to.
    pub fn subscription_count(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, Vec::len)
    }
}

/// Every connection's subscriptions, in front of a [`Store`]. Owned by the hub thread.
#[derive(Debug)]
pub struct Channels<S = MemoryStore> {
    store: S,
    subs: Subscriptions,
}

impl Channels<MemoryStore> {
    /// Channels in memory, with `limits`.
    pub fn in_memory(limits: Limits) -> Channels<MemoryStore> {
        Channels::new(MemoryStore::new(limits), limits.max_subscriptions)
    }
}

impl<S: Store> Channels<S> {
    /// Subscriptions (at most `max_subscriptions` per connection) over `store`.
    pub fn new(store: S, max_subscriptions: usize) -> Channels<S> {
        Channels {
            store,
            subs: Subscriptions::new(max_subscriptions),
        }
    }

    /// The store, for inspection.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether `conn` is subscribed to `ch`.
    pub fn is_subscribed(&self, conn: ConnId, ch: &str) -> bool {
        self.subs.is_subscribed(conn, ch)
    }

    /// The connections subscribed to `ch`, in no particular order.
    pub fn subscribers(&self, ch: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.subs.subscribers(ch)
    }

    /// Subscriptions of every connection together.
    pub fn subscription_total(&self) -> usize {
        self.subs.subscription_total()
    }

    /// The channels `conn` is subscribed to.
    pub fn channels_of(&self, conn: ConnId) -> impl Iterator<Item = Arc<str>> + '_ {
        self.subs.channels_of(conn)
    }

    /// How many channels `conn` is subscribed to.
    pub fn subscription_count(&self, conn: ConnId) -> usize {
        self.subs.subscription_count(conn)
    }

    /// Subscribes `conn` to `ch` and returns the snapshot its reply carries. Error 2 if
    /// it already is, error 4 past its subscription limit or the channel limit; an error
    /// changes nothing.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        ch: &str,
        since: Option<&StreamPosition>,
        now: Instant,
    ) -> Result<Snapshot<Encoded>, ErrorBody> {
        self.subs.may_subscribe(conn, ch)?;
        let snap = self.store.open(ch, since, now)?;
        self.subs.add(conn, ch);
        Ok(snap)
    }

    /// Ends `conn`'s subscription to `ch`; error 2 if it had none.
    pub fn unsubscribe(&mut self, conn: ConnId, ch: &str) -> Result<(), ErrorBody> {
        self.subs.unsubscribe(conn, ch)?;
        self.store.close(ch);
        Ok(())
    }

    /// Drops every subscription of `conn` (it has gone, or was cut) and returns the
    /// channels it was subscribed to (none the second time).
    pub fn remove_conn(&mut self, conn: ConnId) -> Vec<Arc<str>> {
        let chs = self.subs.remove_conn(conn);
        for ch in &chs {
            self.store.close(ch);
        }
        chs
    }

    /// Publishes; the caller then offers the publication to the subscribers of `p.ch`.
    pub fn publish(&mut self, p: Publish<'_>, now: Instant) -> Result<Published, ErrorBody> {
        self.store.publish(p, now)
    }

    /// Reads history; see [`Store::history`].
    pub fn history(&mut self, q: HistoryQuery<'_>, now: Instant) -> Result<Snapshot<Encoded>, ErrorBody> {
        self.store.history(q, now)
    }

    /// Drops what has expired by `now`.
    pub fn expire(&mut self, now: Instant) {
        self.store.expire(now);
    }

    /// Whether anything is kept that a sweep could expire.
    pub fn has_state(&self) -> bool {
        !self.store.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn channels() -> Channels {
        let limits = Limits {
            history_size: 10,
            history_ttl: Duration::from_secs(300),
            idempotency_window: Duration::from_secs(300),
            max_subscriptions: 2,
            max_channels: 100,
            max_publication_size: 1 << 20,
        };
        Channels::new(MemoryStore::seeded(limits, 5), limits.max_subscriptions)
    }

    /// Channels where each `(conn, ch)` has subscribed, in order.
    fn subscribed(subscriptions: &[(ConnId, &str)]) -> Channels {
        let mut c = channels();
        let now = Instant::now();
        for &(conn, ch) in subscriptions {
            c.subscribe(conn, ch, None, now).unwrap();
        }
        c
    }

    fn subs(c: &Channels, ch: &str) -> Vec<ConnId> {
        let mut v: Vec<_> = c.subscribers(ch).collect();
        v.sort();
        v
    }

    #[test]
    fn subscribers_are_per_channel() {
        let c = subscribed(&[(1, "a"), (2, "a"), (2, "b")]);
        assert_eq!(subs(&c, "a"), vec![1, 2]);
        assert_eq!(subs(&c, "b"), vec![2]);
        assert!(subs(&c, "c").is_empty());
    }

    #[test]
    fn subscribing_twice_is_error_2() {
        let mut c = subscribed(&[(1, "a")]);
        let err = c.subscribe(1, "a", None, Instant::now()).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadState);
        assert_eq!(c.subscription_count(1), 1);
    }

    #[test]
    fn unsubscribing_without_a_subscription_is_error_2() {
        let mut c = channels();
        assert_eq!(c.unsubscribe(1, "a").unwrap_err().code, ErrorCode::BadState);
        c.subscribe(1, "a", None, Instant::now()).unwrap();
        c.unsubscribe(1, "a").unwrap();
        assert!(subs(&c, "a").is_empty());
        assert_eq!(c.unsubscribe(1, "a").unwrap_err().code, ErrorCode::BadState);
    }

    #[test]
    fn past_max_subscriptions_is_error_4_and_changes_nothing() {
        let mut c = subscribed(&[(1, "a"), (1, "b")]);
        let now = Instant::now();
        let err = c.subscribe(1, "c", None, now).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert_eq!(c.subscription_count(1), 2);
        assert!(subs(&c, "c").is_empty());
        assert_eq!(c.store().channel_count(), 2);
        // Another connection is not affected.
        c.subscribe(2, "c", None, now).unwrap();
    }

    #[test]
    fn removing_a_connection_drops_its_subscriptions_and_idle_channels() {
        let mut c = subscribed(&[(1, "a"), (1, "b"), (2, "a")]);
        c.remove_conn(1);
        assert_eq!(subs(&c, "a"), vec![2]);
        assert!(subs(&c, "b").is_empty());
        assert_eq!(c.store().channel_count(), 1, "b had no history and no subscriber");
        assert_eq!(c.subscription_count(1), 0);
    }

    #[test]
    fn subscriptions_without_a_store_follow_the_same_rules() {
        let mut s = Subscriptions::new(1);
        s.subscribe(1, "a").unwrap();
        assert_eq!(s.subscribe(1, "a").unwrap_err().code, ErrorCode::BadState);
        assert_eq!(s.subscribe(1, "b").unwrap_err().code, ErrorCode::LimitExceeded);
        assert_eq!(s.subscription_count(1), 1);
        assert!(!s.is_subscribed(1, "b"));
    }

    #[test]
    fn a_snapshot_then_publications_join_with_no_gap() {
        let mut c = channels();
        let now = Instant::now();
        c.publish(Publish::new("a", &json!(1)), now).unwrap();
        let snap = c.subscribe(1, "a", None, now).unwrap();
        let data = json!(2);
        let from_a_client = Publish {
            from: Some(9),
            ..Publish::new("a", &data)
        };
        let next = c.publish(from_a_client, now).unwrap();
        assert_eq!(next.position.offset, snap.offset + 1);
        assert_eq!(next.position.epoch, snap.epoch);
    }

    #[test]
    fn a_sweep_drops_expired_history_and_the_state_goes_with_it() {
        // The hub keeps a sweep deadline only while `has_state`.
        let mut c = channels();
        let t0 = Instant::now();
        assert!(!c.has_state());
        c.publish(Publish::new("a", &json!(1)), t0).unwrap();
        assert!(c.has_state());
        c.expire(t0 + Duration::from_secs(299));
        assert!(c.has_state());
        c.expire(t0 + Duration::from_secs(300));
        assert!(!c.has_state(), "the sweep dropped the expired history");
    }

    #[test]
    fn a_connections_channels_and_the_total_follow_its_subscriptions() {
        let mut c = channels();
        let now = Instant::now();
        c.subscribe(1, "a", None, now).unwrap();
        c.subscribe(1, "b", None, now).unwrap();
        c.subscribe(2, "a", None, now).unwrap();
        assert_eq!(c.subscription_total(), 3);
        let mut of: Vec<String> = c.channels_of(1).map(|ch| ch.to_string()).collect();
        of.sort();
        assert_eq!(of, ["a", "b"]);
        c.remove_conn(1);
        assert_eq!(c.subscription_total(), 1);
        assert_eq!(c.channels_of(1).count(), 0);
    }
}
