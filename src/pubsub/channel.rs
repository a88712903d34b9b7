//! The in-memory engine's channel state: each channel's epoch, top offset and history,
//! and the idempotency cache. I/O-free.
//!
//! **Owns** the state of every channel of one server, inside [`Channels`](super::Channels)
//! and so on the hub thread. Nothing wakes it: every call takes `now`, history expires
//! when read and on the hub's sweep ([`Store::expire`]).
//!
//! A channel's state exists while it has subscribers or history. It is created on the
//! first `sub` or `pub` with a fresh random epoch and dropped once its last subscriber
//! has left and its history is empty (expired, or never kept): the next `sub` or `pub`
//! creates it again with a new epoch, so a client holding an old position is told
//! `recovered: false` rather than given offsets that mean something else now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::pubsub::encode::{self, Encoded};
use crate::pubsub::history::History;
use crate::pubsub::idempotency::{Idempotency, Seen};
use crate::pubsub::protocol::{ErrorBody, ErrorCode, Snapshot, StreamPosition};
use crate::pubsub::recovery::{Recovery, recover};
use crate::pubsub::{HistoryQuery, Limits, Publish, Published, Store};

/// Keys the idempotency cache holds at most, over all channels. The window alone would
/// let a flood of keyed publications grow it without bound; this caps it (the per-entry
/// cost is in `docs/protocol.md`). Past it the oldest key is forgotten first.
pub const IDEMPOTENCY_CAPACITY: usize = 1 << 18;

/// One channel's stream.
#[derive(Debug)]
struct Channel {
    epoch: Arc<str>,
    top: u64,
    history: History<Encoded>,
    /// Local subscribers, counted: the state stays while any is left.
    subscribers: usize,
}

impl Channel {
    fn is_idle(&self) -> bool {
        self.subscribers == 0 && self.history.is_empty()
    }
}

/// Every channel's stream, in this process's memory (the default engine).
#[derive(Debug)]
pub struct MemoryStore {
    limits: Limits,
    channels: HashMap<Arc<str>, Channel>,
    idempotency: Idempotency,
    rng: StdRng,
}

impl MemoryStore {
    /// An empty store; epochs are drawn from a generator seeded by the operating system.
    pub fn new(limits: Limits) -> MemoryStore {
        MemoryStore::with_rng(limits, rand::make_rng())
    }

    /// An empty store with a given epoch generator (a fixed seed in tests).
    pub fn with_rng(limits: Limits, rng: StdRng) -> MemoryStore {
        MemoryStore {
            idempotency: Idempotency::new(limits.idempotency_window, IDEMPOTENCY_CAPACITY),
            limits,
            channels: HashMap::new(),
            rng,
        }
    }

    /// A store whose epochs come from `seed`, for tests.
    pub fn seeded(limits: Limits, seed: u64) -> MemoryStore {
        MemoryStore::with_rng(limits, StdRng::seed_from_u64(seed))
    }

    /// Channels whose state exists.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Bytes held by the history of every channel.
    pub fn history_bytes(&self) -> usize {
        self.channels.values().map(|c| c.history.bytes()).sum()
    }

    /// The channel's state, created with a new epoch if it has none; error 4 when that
    /// would pass `max_channels`. Its history is expired up to `now`.
    fn channel(&mut self, ch: &str, now: Instant) -> Result<&mut Channel, ErrorBody> {
        if !self.channels.contains_key(ch) {
            if self.channels.len() >= self.limits.max_channels {
                return Err(ErrorBody::new(
                    ErrorCode::LimitExceeded,
                    format!("too many channels (max {})", self.limits.max_channels),
                ));
            }
            let epoch: Arc<str> = Arc::from(format!("{:016x}", self.rng.random::<u64>()));
            self.channels.insert(
                Arc::from(ch),
                Channel {
                    epoch,
                    top: 0,
                    history: History::new(self.limits.history_size, self.limits.history_ttl),
                    subscribers: 0,
                },
            );
        }
        let c = self.channels.get_mut(ch).ok_or_else(unavailable)?;
        c.history.expire(now);
        Ok(c)
    }

    /// Drops the channel's state if nothing keeps it.
    fn drop_if_idle(&mut self, ch: &str) {
        if self.channels.get(ch).is_some_and(Channel::is_idle) {
            self.channels.remove(ch);
        }
    }

    fn snapshot(c: &Channel, since: Option<&StreamPosition>, limit: usize) -> Snapshot<Encoded> {
        let (pubs, recovered) = match since {
            None => (c.history.latest(limit), None),
            Some(s) => match recover(&c.epoch, c.top, &c.history, &s.epoch, s.offset) {
                Recovery::Recovered(mut pubs) => {
                    pubs.truncate(limit);
                    (pubs, Some(true))
                }
                Recovery::Lost => (Vec::new(), Some(false)),
            },
        };
        Snapshot {
            epoch: c.epoch.to_string(),
            offset: c.top,
            pubs,
            recovered,
        }
    }
}

fn unavailable() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "channel state unavailable")
}

impl Store for MemoryStore {
    fn open(
        &mut self,
        ch: &str,
        since: Option<&StreamPosition>,
        now: Instant,
    ) -> Result<Snapshot<Encoded>, ErrorBody> {
        let c = self.channel(ch, now)?;
        c.subscribers += 1;
        // Without `since`, a subscription starts at the top: no publications in the reply.
        let limit = if since.is_some() { usize::MAX } else { 0 };
        Ok(MemoryStore::snapshot(c, since, limit))
    }

    fn close(&mut self, ch: &str) {
        if let Some(c) = self.channels.get_mut(ch) {
            c.subscribers = c.subscribers.saturating_sub(1);
        }
        self.drop_if_idle(ch);
    }

    fn publish(&mut self, p: Publish<'_>, now: Instant) -> Result<Published, ErrorBody> {
        let Publish { ch, data, key, from } = p;
        if let Some(key) = key {
            if let Some(seen) = self.idempotency.get(ch, key, now) {
                return Ok(Published {
                    position: StreamPosition {
                        epoch: seen.epoch.to_string(),
                        offset: seen.offset,
                    },
                    publication: None,
                });
            }
        }
        let max = self.limits.max_publication_size;
        let c = self.channel(ch, now)?;
        let offset = c.top + 1;
        let encoded = encode::publication(ch, offset, data, from);
        if encoded.len() > max {
            let len = encoded.len();
            self.drop_if_idle(ch);
            return Err(ErrorBody::new(
                ErrorCode::LimitExceeded,
                format!("data too large: the publication is {len} bytes, the limit {max}"),
            ));
        }
        c.top = offset;
        c.history.push(offset, now, encoded.clone(), encoded.len());
        let epoch = c.epoch.clone();
        if let Some(key) = key {
            let name = self
                .channels
                .get_key_value(ch)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(ch));
            let seen = Seen {
                epoch: epoch.clone(),
                offset,
            };
            self.idempotency.insert(name, key, seen, now);
        }
        // With no subscribers and no history kept (history size 0), nothing holds the
        // channel: the publication reached nobody and its state goes.
        self.drop_if_idle(ch);
        Ok(Published {
            position: StreamPosition {
                epoch: epoch.to_string(),
                offset,
            },
            publication: Some(encoded),
        })
    }

    fn history(&mut self, q: HistoryQuery<'_>, now: Instant) -> Result<Snapshot<Encoded>, ErrorBody> {
        let HistoryQuery { ch, since, limit } = q;
        let size = self.limits.history_size;
        let limit = limit.map_or(size, |l| usize::try_from(l).unwrap_or(usize::MAX).min(size));
        if !self.channels.contains_key(ch) {
            // Reading creates no state: an absent channel is empty, in an epoch that
            // nothing will ever match.
            let epoch = format!("{:016x}", self.rng.random::<u64>());
            return Ok(Snapshot {
                epoch,
                offset: 0,
                pubs: Vec::new(),
                recovered: since.map(|_| false),
            });
        }
        let c = self.channel(ch, now)?;
        let snap = MemoryStore::snapshot(c, since, limit);
        self.drop_if_idle(ch);
        Ok(snap)
    }

    fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.idempotency.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        self.idempotency.expire(now);
        self.channels.retain(|_, c| {
            c.history.expire(now);
            !c.is_idle()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            history_size: 3,
            history_ttl: Duration::from_secs(300),
            idempotency_window: Duration::from_secs(300),
            max_subscriptions: 10,
            max_channels: 2,
            max_publication_size: 1024,
        }
    }

    fn store() -> MemoryStore {
        MemoryStore::seeded(limits(), 7)
    }

    fn offsets(snap: &Snapshot<Encoded>) -> Vec<u64> {
        snap.pubs
            .iter()
            .map(|p| {
                serde_json::from_str::<Value>(p).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    fn pos(s: &Snapshot<Encoded>, offset: u64) -> StreamPosition {
        StreamPosition {
            epoch: s.epoch.clone(),
            offset,
        }
    }

    /// A store where each of `channels` has had a subscriber open it at `now`.
    fn opened(channels: &[&str], now: Instant) -> MemoryStore {
        let mut s = store();
        for ch in channels {
            s.open(ch, None, now).unwrap();
        }
        s
    }

    /// A store where "a" has a subscriber (its snapshot returned) and one publication,
    /// both at `t0`.
    fn subscribed_with_one(t0: Instant) -> (MemoryStore, Snapshot<Encoded>) {
        let mut s = store();
        let snap = s.open("a", None, t0).unwrap();
        s.publish(Publish::new("a", &json!(1)), t0).unwrap();
        (s, snap)
    }

    #[test]
    fn offsets_go_up_by_one_from_one() {
        let mut s = store();
        let now = Instant::now();
        let a = s.publish(Publish::new("a", &json!(1)), now).unwrap();
        let data = json!(2);
        let from_a_client = Publish {
            from: Some(3),
            ..Publish::new("a", &data)
        };
        let b = s.publish(from_a_client, now).unwrap();
        assert_eq!(a.position.offset, 1);
        assert_eq!(b.position.offset, 2);
        assert_eq!(a.position.epoch, b.position.epoch);
    }

    #[test]
    fn a_sub_without_since_starts_at_the_top_with_no_pubs() {
        let mut s = store();
        let now = Instant::now();
        s.publish(Publish::new("a", &json!(1)), now).unwrap();
        let snap = s.open("a", None, now).unwrap();
        assert_eq!(snap.offset, 1);
        assert!(snap.pubs.is_empty());
        assert_eq!(snap.recovered, None);
    }

    #[test]
    fn a_sub_with_since_recovers_what_was_missed() {
        let mut s = store();
        let now = Instant::now();
        let first = s.open("a", None, now).unwrap();
        for n in 1..=3 {
            s.publish(Publish::new("a", &json!(n)), now).unwrap();
        }
        let snap = s.open("a", Some(&pos(&first, 1)), now).unwrap();
        assert_eq!(snap.recovered, Some(true));
        assert_eq!(offsets(&snap), vec![2, 3]);
    }

    #[test]
    fn a_sub_with_an_unknown_epoch_is_not_recovered() {
        let mut s = store();
        let now = Instant::now();
        s.publish(Publish::new("a", &json!(1)), now).unwrap();
        let since = StreamPosition {
            epoch: "another".into(),
            offset: 0,
        };
        let snap = s.open("a", Some(&since), now).unwrap();
        assert_eq!(snap.recovered, Some(false));
        assert!(snap.pubs.is_empty());
    }

    #[test]
    fn the_state_goes_when_history_expires_and_nobody_is_subscribed() {
        let mut s = store();
        let t0 = Instant::now();
        let first = s.publish(Publish::new("a", &json!(1)), t0).unwrap();
        assert_eq!(s.channel_count(), 1);
        s.expire(t0 + Duration::from_secs(299));
        assert_eq!(s.channel_count(), 1);
        s.expire(t0 + Duration::from_secs(300));
        assert_eq!(s.channel_count(), 0);
        assert_eq!(s.history_bytes(), 0);
        let again = s
            .publish(Publish::new("a", &json!(2)), t0 + Duration::from_secs(301))
            .unwrap();
        assert_ne!(
            again.position.epoch, first.position.epoch,
            "a new state has a new epoch"
        );
        assert_eq!(again.position.offset, 1);
    }

    #[test]
    fn a_subscribed_channel_keeps_its_epoch_when_history_expires() {
        let t0 = Instant::now();
        let (mut s, snap) = subscribed_with_one(t0);
        s.expire(t0 + Duration::from_secs(400));
        let later = s
            .publish(Publish::new("a", &json!(2)), t0 + Duration::from_secs(401))
            .unwrap();
        assert_eq!(later.position.epoch, snap.epoch);
        assert_eq!(later.position.offset, 2);
    }

    #[test]
    fn expiry_on_access_makes_recovery_fail_without_a_sweep() {
        let t0 = Instant::now();
        let (mut s, snap) = subscribed_with_one(t0);
        let later = t0 + Duration::from_secs(300);
        let back = s.open("a", Some(&pos(&snap, 0)), later).unwrap();
        assert_eq!(back.recovered, Some(false));
        let hist = s.history(HistoryQuery::new("a"), later).unwrap();
        assert!(hist.pubs.is_empty());
    }

    #[test]
    fn the_last_subscriber_leaving_an_empty_channel_drops_it() {
        let now = Instant::now();
        let mut s = opened(&["a", "a"], now);
        s.close("a");
        assert_eq!(s.channel_count(), 1);
        s.close("a");
        assert_eq!(s.channel_count(), 0);
    }

    #[test]
    fn too_many_channels_is_error_4_and_changes_nothing() {
        let now = Instant::now();
        let mut s = opened(&["a", "b"], now);
        let err = s.open("c", None, now).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        let err = s.publish(Publish::new("c", &json!(1)), now).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert_eq!(s.channel_count(), 2);
        assert_eq!(
            s.publish(Publish::new("a", &json!(1)), now)
                .unwrap()
                .position
                .offset,
            1
        );
    }

    #[test]
    fn the_same_key_returns_the_first_position_and_publishes_once() {
        let now = Instant::now();
        let mut s = opened(&["a"], now);
        let data = json!(1);
        let keyed = Publish {
            key: Some("k"),
            ..Publish::new("a", &data)
        };
        let first = s.publish(keyed, now).unwrap();
        assert!(first.publication.is_some());
        let again = s.publish(keyed, now).unwrap();
        assert_eq!(again.position, first.position);
        assert!(again.publication.is_none(), "a repeat publishes nothing");
        let hist = s.history(HistoryQuery::new("a"), now).unwrap();
        assert_eq!(hist.offset, 1);
        assert_eq!(offsets(&hist), vec![1]);
    }

    /// A store whose history lasts a minute while idempotency keys last five: a key
    /// outlives the channel state it was published with.
    fn minute_of_history() -> MemoryStore {
        let short = Limits {
            history_ttl: Duration::from_secs(60),
            ..limits()
        };
        MemoryStore::seeded(short, 3)
    }

    #[test]
    fn a_key_outlives_the_channel_state_within_the_window() {
        let mut s = minute_of_history();
        let t0 = Instant::now();
        let data = json!(1);
        let keyed = Publish {
            key: Some("k"),
            ..Publish::new("a", &data)
        };
        let first = s.publish(keyed, t0).unwrap();
        s.expire(t0 + Duration::from_secs(60));
        assert_eq!(s.channel_count(), 0);
        let later = t0 + Duration::from_secs(299);
        let again = s.publish(keyed, later).unwrap();
        assert_eq!(again.position, first.position);
        assert!(again.publication.is_none());
        assert_eq!(s.channel_count(), 0, "a repeat creates no state");
    }

    #[test]
    fn too_large_a_publication_is_error_4_and_keeps_nothing() {
        let mut s = store();
        let now = Instant::now();
        let big = json!("x".repeat(2000));
        let err = s.publish(Publish::new("a", &big), now).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert_eq!(s.channel_count(), 0);
    }

    #[test]
    fn a_publication_of_exactly_the_size_limit_is_published() {
        let data = json!("x".repeat(100));
        let size = encode::publication("a", 1, &data, None).len();
        let at_limit = Limits {
            max_publication_size: size,
            ..limits()
        };
        let mut s = MemoryStore::seeded(at_limit, 1);
        let now = Instant::now();
        let first = s.publish(Publish::new("a", &data), now).unwrap();
        assert_eq!(first.publication.map(|p| p.len()), Some(size));
        let over = json!("x".repeat(101));
        let err = s.publish(Publish::new("a", &over), now).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
    }

    #[test]
    fn a_remembered_key_alone_keeps_the_store_non_empty_until_its_window_ends() {
        // The hub sweeps only a store that is not empty: a key must still be swept.
        let mut s = minute_of_history();
        assert!(s.is_empty());
        let t0 = Instant::now();
        s.publish(
            Publish {
                key: Some("k"),
                ..Publish::new("a", &json!(1))
            },
            t0,
        )
        .unwrap();
        s.expire(t0 + Duration::from_secs(60));
        assert_eq!(s.channel_count(), 0);
        assert!(!s.is_empty(), "the key is remembered for 300 s");
        s.expire(t0 + Duration::from_secs(300));
        assert!(s.is_empty());
    }

    #[test]
    fn history_keeps_the_last_history_size_and_counts_bytes() {
        let now = Instant::now();
        let mut s = opened(&["a"], now);
        let mut total = 0;
        for n in 1..=5 {
            let p = s.publish(Publish::new("a", &json!(n)), now).unwrap();
            if n > 2 {
                total += p.publication.unwrap().len();
            }
        }
        let hist = s.history(HistoryQuery::new("a"), now).unwrap();
        assert_eq!(offsets(&hist), vec![3, 4, 5]);
        assert_eq!(s.history_bytes(), total);
        let newest_two = HistoryQuery {
            limit: Some(2),
            ..HistoryQuery::new("a")
        };
        let two = s.history(newest_two, now).unwrap();
        assert_eq!(offsets(&two), vec![4, 5]);
        let after_3 = pos(&hist, 3);
        let one_after_3 = HistoryQuery {
            since: Some(&after_3),
            limit: Some(1),
            ..HistoryQuery::new("a")
        };
        let since = s.history(one_after_3, now).unwrap();
        assert_eq!(offsets(&since), vec![4]);
        assert_eq!(since.recovered, Some(true));
    }

    #[test]
    fn history_of_an_absent_channel_creates_nothing() {
        let mut s = store();
        let snap = s.history(HistoryQuery::new("nobody"), Instant::now()).unwrap();
        assert_eq!(snap.offset, 0);
        assert!(snap.pubs.is_empty());
        assert_eq!(s.channel_count(), 0);
    }

    #[test]
    fn without_history_a_publication_to_nobody_leaves_no_state() {
        let mut s = MemoryStore::seeded(
            Limits {
                history_size: 0,
                ..limits()
            },
            1,
        );
        let now = Instant::now();
        s.publish(Publish::new("a", &json!(1)), now).unwrap();
        assert_eq!(s.channel_count(), 0);
    }
}
