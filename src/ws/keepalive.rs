//! The keep-alive schedule: when each open connection is next pinged. I/O-free.
//!
//! **Owned** by the hub thread, beside the [`Registry`](crate::server::registry::Registry); no
//! other thread sees it. The hub sleeps on its inbox until the earliest ping is due
//! ([`PingSchedule::next_due`]), then pings every connection whose turn has come, each
//! through the same non-blocking fast path as a broadcast.
//!
//! # Why the hub pings, not each writer
//!
//! RFC 6455 §5.5.2: "A Ping frame MAY be sent after the connection is established and
//! before the connection is closed." A server pings so that a quiet but live client keeps
//! sending something (its Pong) and a dead one is found by the idle timeout. If each
//! writer thread kept its own ping timer, every ping would wake a thread that has nothing
//! else to do, and a thread wake-up costs more than the ping: with ten thousand idle
//! clients the timers alone cost several percent of a core. The hub writes a 2-byte ping
//! with one `sendmsg` and wakes nobody; only the client's Pong wakes its reader, which is
//! the one wake-up the keep-alive cannot avoid.
//!
//! # The data structure
//!
//! Every connection is pinged once per interval, counted from when it registered, so a
//! FIFO is already in due order: each entry goes in at the back with `now + interval`,
//! which is never earlier than any entry before it. Taking and rescheduling is O(1).
//! Connections that leave are not searched for; their entries are skipped when they come
//! due, and [`PingSchedule::compact`] drops them in one pass once they outnumber the live
//! ones, so the schedule never holds more than about twice the open connections.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ws::ConnId;

/// Stale entries tolerated before a compaction is worth its pass, on top of the live
/// count: keeps a small server from compacting after every departure.
const COMPACT_SLACK: usize = 1024;

/// When each connection is next due a ping. See the module docs.
#[derive(Debug)]
pub(crate) struct PingSchedule {
    interval: Duration,
    /// (due, connection), in due order.
    due: VecDeque<(Instant, ConnId)>,
}

impl PingSchedule {
    /// A schedule that pings every connection once per `interval`.
    pub(crate) fn new(interval: Duration) -> PingSchedule {
        PingSchedule {
            interval,
            due: VecDeque::new(),
        }
    }

    /// Schedules `id`'s first ping, one interval from `now`.
    pub(crate) fn add(&mut self, id: ConnId, now: Instant) {
        self.due.push_back((now + self.interval, id));
    }

    /// When the earliest ping is due, if any connection is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|&(at, _)| at)
    }

    /// Calls `ping` for every connection due by `now`, in due order. `ping` answers
    /// whether the connection is still open; an open one is due again one interval from
    /// `now`, a closed one leaves the schedule.
    pub(crate) fn ping_due(&mut self, now: Instant, mut ping: impl FnMut(ConnId) -> bool) {
        while let Some(&(at, id)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            if ping(id) {
                self.due.push_back((now + self.interval, id));
            }
        }
    }

    /// Drops the entries of connections that have left (`open` says which are still
    /// here), once they outnumber the `live` ones by [`COMPACT_SLACK`]. Amortised O(1)
    /// per departure: a pass over n entries happens at most once per n/2 departures.
    pub(crate) fn compact(&mut self, live: usize, open: impl Fn(ConnId) -> bool) {
        if self.due.len() > 2 * live + COMPACT_SLACK {
            self.due.retain(|&(_, id)| open(id));
        }
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// Pings what is due at `now`, every connection still open; who was pinged, in order.
    fn ping_open(s: &mut PingSchedule, now: Instant) -> Vec<ConnId> {
        let mut pinged = Vec::new();
        s.ping_due(now, |id| {
            pinged.push(id);
            true
        });
        pinged
    }

    #[test]
    fn a_connection_is_first_pinged_one_interval_after_it_registers() {
        let t0 = Instant::now();
        let mut s = PingSchedule::new(10 * SEC);
        s.add(1, t0);
        assert_eq!(s.next_due(), Some(t0 + 10 * SEC));
        assert!(ping_open(&mut s, t0 + 9 * SEC).is_empty());
        assert_eq!(ping_open(&mut s, t0 + 10 * SEC), [1]);
    }

    #[test]
    fn an_open_connection_is_pinged_again_one_interval_after_its_ping() {
        let t0 = Instant::now();
        let mut s = PingSchedule::new(10 * SEC);
        s.add(1, t0);
        // The hub woke late: the next ping counts from when this one went out.
        ping_open(&mut s, t0 + 12 * SEC);
        assert_eq!(s.next_due(), Some(t0 + 22 * SEC));
    }

    #[test]
    fn connections_are_pinged_in_the_order_they_came_due() {
        let t0 = Instant::now();
        let mut s = PingSchedule::new(10 * SEC);
        for (id, at) in [(7, 0), (3, 1), (9, 2)] {
            s.add(id, t0 + at * SEC);
        }
        assert_eq!(ping_open(&mut s, t0 + 11 * SEC), [7, 3]);
        assert_eq!(s.next_due(), Some(t0 + 12 * SEC));
    }

    #[test]
    fn a_closed_connection_leaves_the_schedule_when_it_comes_due() {
        let t0 = Instant::now();
        let mut s = PingSchedule::new(10 * SEC);
        s.add(1, t0);
        s.add(2, t0);
        s.ping_due(t0 + 10 * SEC, |id| id == 2);
        assert_eq!(ping_open(&mut s, t0 + 40 * SEC), [2]);
    }

    #[test]
    fn an_empty_schedule_has_nothing_due() {
        let mut s = PingSchedule::new(SEC);
        assert_eq!(s.next_due(), None);
        s.ping_due(Instant::now() + 100 * SEC, |_| panic!("nothing is scheduled"));
    }

    #[test]
    fn stale_entries_are_compacted_once_they_outnumber_the_live_ones() {
        let t0 = Instant::now();
        let mut s = PingSchedule::new(10 * SEC);
        let n = 3 * COMPACT_SLACK as u64;
        for id in 0..n {
            s.add(id, t0);
        }
        // All but ten have left: under the threshold nothing happens...
        s.compact(n as usize, |id| id < 10);
        assert_eq!(s.len(), n as usize);
        // ...past it, one pass keeps only the open ones, in order.
        s.compact(10, |id| id < 10);
        assert_eq!(s.len(), 10);
        assert_eq!(ping_open(&mut s, t0 + 10 * SEC), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn compaction_starts_one_entry_past_twice_the_live_count_plus_the_slack() {
        // The threshold exactly: 2 x 10 live + the slack entries are tolerated, one more
        // is not. (Found by scripts/mutants: `>=` for `>` and `2 + live` for `2 * live`
        // passed every other test.)
        let t0 = Instant::now();
        let mut s = PingSchedule::new(10 * SEC);
        let at_threshold = 2 * 10 + COMPACT_SLACK;
        for id in 0..at_threshold as u64 {
            s.add(id, t0);
        }
        s.compact(10, |id| id < 10);
        assert_eq!(s.len(), at_threshold, "at the threshold: no pass");
        s.add(at_threshold as u64, t0);
        s.compact(10, |id| id < 10);
        assert_eq!(s.len(), 10, "one past it: compacted");
    }
}
