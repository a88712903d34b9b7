//! The idempotency cache: `(channel, key)` to the position its first `pub` got, kept for
//! the idempotency window. I/O-free.
//!
//! **Owned** by [`crate::pubsub::Channels`] (so by the hub thread); nothing wakes it: the
//! caller passes `now`. It is separate from the channels' state on purpose: a retried
//! `pub` must find its first result even when the channel's history or whole state has
//! gone since (the answer then names the old epoch, which tells the client where its
//! publication went).
//!
//! Bounded twice: an entry leaves once the window has passed, and at most `capacity`
//! entries are kept (the oldest leaves first), so a flood of keyed publications cannot
//! grow it without end. Entries are kept in insertion order, which is time order because
//! `now` never goes back, so expiry looks only at the front.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a keyed publication went: the channel's epoch then, and its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The channel's epoch when it was published.
    pub epoch: Arc<str>,
    /// The offset it got.
    pub offset: u64,
}

type Key = (Arc<str>, Box<str>);

/// Keys seen within the window.
#[derive(Debug)]
pub struct Idempotency {
    window: Duration,
    capacity: usize,
    map: HashMap<Key, Seen>,
    order: VecDeque<(Instant, Key)>,
}

impl Idempotency {
    /// A cache remembering each key for `window`, and at most `capacity` keys.
    pub fn new(window: Duration, capacity: usize) -> Idempotency {
        Idempotency {
            window,
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The first result for `(ch, key)`, if it was recorded less than the window before
    /// `now`.
    pub fn get(&mut self, ch: &str, key: &str, now: Instant) -> Option<Seen> {
        self.expire(now);
        // A tuple key cannot be looked up by borrowed parts; the lookup key is small.
        self.map.get(&(Arc::from(ch), Box::from(key))).cloned()
    }

    /// Records the result of the first `pub` with `(ch, key)`.
    pub fn insert(&mut self, ch: Arc<str>, key: &str, seen: Seen, now: Instant) {
        self.expire(now);
        if self.capacity == 0 {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        let k: Key = (ch, Box::from(key));
        if self.map.insert(k.clone(), seen).is_none() {
            self.order.push_back((now, k));
        }
    }

    /// Forgets every key recorded a window or more before `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.window {
                break;
            }
            if let Some((_, k)) = self.order.pop_front() {
                self.map.remove(&k);
            }
        }
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No key is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn seen(offset: u64) -> Seen {
        Seen {
            epoch: Arc::from("e1"),
            offset,
        }
    }

    /// A cache of at most `capacity` keys given each of `keys` on "ch": the n-th (from 1)
    /// seen at offset n, inserted at `t0` plus its seconds.
    fn inserted(capacity: usize, t0: Instant, keys: &[(&str, u64)]) -> Idempotency {
        let mut c = Idempotency::new(WINDOW, capacity);
        for (n, &(key, secs)) in (1..).zip(keys) {
            c.insert(Arc::from("ch"), key, seen(n), t0 + Duration::from_secs(secs));
        }
        c
    }

    #[test]
    fn a_key_is_found_within_the_window() {
        let t0 = Instant::now();
        let mut c = Idempotency::new(WINDOW, 100);
        c.insert(Arc::from("ch"), "k", seen(4), t0);
        assert_eq!(
            c.get("ch", "k", t0 + WINDOW - Duration::from_millis(1)),
            Some(seen(4))
        );
    }

    #[test]
    fn a_key_is_forgotten_after_the_window() {
        let t0 = Instant::now();
        let mut c = Idempotency::new(WINDOW, 100);
        c.insert(Arc::from("ch"), "k", seen(4), t0);
        assert_eq!(c.get("ch", "k", t0 + WINDOW), None);
        assert!(c.is_empty());
    }

    #[test]
    fn keys_are_per_channel() {
        let t0 = Instant::now();
        let mut c = Idempotency::new(WINDOW, 100);
        c.insert(Arc::from("a"), "k", seen(1), t0);
        assert_eq!(c.get("b", "k", t0), None);
        assert_eq!(c.get("a", "other", t0), None);
    }

    #[test]
    fn the_oldest_key_leaves_when_full() {
        let t0 = Instant::now();
        let mut c = inserted(2, t0, &[("k1", 0), ("k2", 1), ("k3", 2)]);
        assert_eq!(c.len(), 2);
        let now = t0 + Duration::from_secs(3);
        assert_eq!(c.get("ch", "k1", now), None);
        assert_eq!(c.get("ch", "k2", now), Some(seen(2)));
        assert_eq!(c.get("ch", "k3", now), Some(seen(3)));
    }

    #[test]
    fn expiry_keeps_younger_keys() {
        let t0 = Instant::now();
        let mut c = inserted(10, t0, &[("old", 0), ("new", 200)]);
        c.expire(t0 + WINDOW);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("ch", "new", t0 + WINDOW), Some(seen(2)));
    }
}
