//! One channel's history: a ring of its last publications, each kept for a time to live,
//! with the bytes they hold counted. I/O-free.
//!
//! **Owned** by the channel it belongs to (so by the hub thread); nothing wakes it: the
//! caller passes `now` to every call that can expire entries. Entries are kept in offset
//! order with no holes (the channel appends top+1 each time), so "is everything after
//! offset N still here" is one comparison with the oldest entry.
//!
//! Generic over the stored item so the rules are tested with plain values; the hub
//! stores encoded publications ([`crate::pubsub::encode::Encoded`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One kept publication.
#[derive(Debug, Clone)]
struct Entry<P> {
    offset: u64,
    at: Instant,
    bytes: usize,
    item: P,
}

/// The last `capacity` publications of one channel, younger than the time to live.
#[derive(Debug, Clone)]
pub struct History<P> {
    entries: VecDeque<Entry<P>>,
    capacity: usize,
    ttl: Duration,
    bytes: usize,
}

impl<P: Clone> History<P> {
    /// An empty history keeping at most `capacity` entries for `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> History<P> {
        History {
            entries: VecDeque::new(),
            capacity,
            ttl,
            bytes: 0,
        }
    }

    /// Appends the publication at `offset` (the previous one's + 1), published at `at`
    /// and holding `bytes`; the oldest entry leaves when the ring is full. A history of
    /// capacity 0 keeps nothing.
    pub fn push(&mut self, offset: u64, at: Instant, item: P, bytes: usize) {
        debug_assert!(self.entries.back().is_none_or(|e| e.offset + 1 == offset));
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            self.pop_oldest();
        }
        self.bytes += bytes;
        self.entries.push_back(Entry {
            offset,
            at,
            bytes,
            item,
        });
    }

    fn pop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.bytes;
        }
    }

    /// Drops every entry published `ttl` or more before `now`. Returns how many went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) >= self.ttl)
        {
            self.pop_oldest();
        }
        before - self.entries.len()
    }

    /// The publications after `offset`, oldest first, if every one of them up to `top`
    /// is still kept; `None` when some have left (or `offset` is past `top`). After
    /// [`expire`](Self::expire) has run for the current time.
    pub fn after(&self, offset: u64, top: u64) -> Option<Vec<P>> {
        if offset > top {
            return None;
        }
        if offset == top {
            return Some(Vec::new());
        }
        let oldest = self.entries.front()?.offset;
        if oldest > offset + 1 {
            return None;
        }
        let skip = (offset + 1 - oldest) as usize;
        Some(self.entries.iter().skip(skip).map(|e| e.item.clone()).collect())
    }

    /// The newest `limit` publications, oldest first.
    pub fn latest(&self, limit: usize) -> Vec<P> {
        let skip = self.entries.len().saturating_sub(limit);
        self.entries.iter().skip(skip).map(|e| e.item.clone()).collect()
    }

    /// Publications kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the kept publications hold, as given to [`push`](Self::push).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The offset of the oldest kept publication.
    pub fn oldest(&self) -> Option<u64> {
        self.entries.front().map(|e| e.offset)
    }
}

/// The TTL of the histories tests make.
#[cfg(test)]
pub(crate) const TEST_TTL: Duration = Duration::from_secs(300);

#[cfg(test)]
impl History<u64> {
    /// For tests: a ring of `capacity` (with [`TEST_TTL`]) with offsets 1 to `n` pushed
    /// at `t0`, each with its offset as the publication and 10 bytes.
    pub(crate) fn filled(capacity: usize, n: u64, t0: Instant) -> History<u64> {
        History::pushed(capacity, t0, &vec![(0, 10); n as usize])
    }

    /// For tests: a ring of `capacity` (with [`TEST_TTL`]) with offsets 1, 2... pushed
    /// as `entries` list them, each `(seconds after t0, bytes)`, with its offset as the
    /// publication.
    pub(crate) fn pushed(capacity: usize, t0: Instant, entries: &[(u64, usize)]) -> History<u64> {
        let mut h = History::new(capacity, TEST_TTL);
        for (off, &(secs, bytes)) in (1..).zip(entries) {
            h.push(off, t0 + Duration::from_secs(secs), off, bytes);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_capacity_entries() {
        let h = History::filled(3, 5, Instant::now());
        assert_eq!(h.len(), 3);
        assert_eq!(h.oldest(), Some(3));
        assert_eq!(h.latest(10), vec![3, 4, 5]);
        assert_eq!(h.bytes(), 30);
    }

    #[test]
    fn bytes_follow_pushes_evictions_and_expiry() {
        let t0 = Instant::now();
        let mut h = History::pushed(2, t0, &[(0, 100), (10, 7)]);
        assert_eq!(h.bytes(), 107);
        h.push(3, t0 + Duration::from_secs(20), 3, 1);
        assert_eq!(h.bytes(), 8);
        h.expire(t0 + TEST_TTL + Duration::from_secs(10));
        assert_eq!(h.bytes(), 1);
        assert_eq!(h.latest(5), vec![3]);
    }

    #[test]
    fn entries_expire_after_the_ttl_and_not_before() {
        let t0 = Instant::now();
        let mut h = History::pushed(10, t0, &[(0, 1), (60, 1)]);
        assert_eq!(h.expire(t0 + TEST_TTL - Duration::from_millis(1)), 0);
        assert_eq!(h.expire(t0 + TEST_TTL), 1);
        assert_eq!(h.latest(10), vec![2]);
        assert_eq!(h.expire(t0 + TEST_TTL + Duration::from_secs(60)), 1);
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn after_returns_exactly_the_missing_ones() {
        let h = History::filled(10, 5, Instant::now());
        assert_eq!(h.after(2, 5), Some(vec![3, 4, 5]));
        assert_eq!(h.after(0, 5), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(h.after(5, 5), Some(vec![]));
    }

    #[test]
    fn after_fails_when_some_have_left_the_ring() {
        let h = History::filled(3, 5, Instant::now()); // keeps 3, 4, 5
        assert_eq!(h.after(2, 5), Some(vec![3, 4, 5]));
        assert_eq!(h.after(1, 5), None);
        assert_eq!(h.after(0, 5), None);
    }

    #[test]
    fn after_fails_past_the_top() {
        let h = History::filled(10, 5, Instant::now());
        assert_eq!(h.after(6, 5), None);
    }

    #[test]
    fn after_on_an_emptied_history_only_accepts_the_top() {
        let t0 = Instant::now();
        let mut h = History::filled(10, 5, t0);
        h.expire(t0 + TEST_TTL);
        assert_eq!(h.after(5, 5), Some(vec![]));
        assert_eq!(h.after(4, 5), None);
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut h = History::new(0, TEST_TTL);
        h.push(1, Instant::now(), 1u64, 5);
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
        assert_eq!(h.after(0, 1), None);
        assert_eq!(h.after(1, 1), Some(vec![]));
    }

    #[test]
    fn latest_limits_from_the_newest_end() {
        let h = History::filled(10, 5, Instant::now());
        assert_eq!(h.latest(2), vec![4, 5]);
        assert_eq!(h.latest(0), Vec::<u64>::new());
    }
}
