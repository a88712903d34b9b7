//! Join and leave pushes the hub owes, delivered a slice at a time. I/O-free.
//!
//! A join or leave goes to every watcher of its channel, so when W watchers of one
//! channel all reconnect at once (a deploy, a network blip) the hub owes about 2·W²
//! pushes. Offered in the step that caused them, they would hold the hub for as long
//! as that takes, and every other channel's publications would wait behind them: a
//! storm on one channel would stall them all. So a large announcement, or any
//! announcement while earlier ones are still owed, goes into this backlog instead, and
//! the hub offers [`SLICE`] of them whenever its inbox is empty and at the latest after
//! [`MESSAGES_PER_SLICE`] messages. A publication on another channel then waits for at
//! most one slice, even while the storm's own `sub` commands fill the inbox.
//!
//! Order is kept where the protocol promises it. The backlog is one FIFO, delivered in
//! order, so each watcher gets its joins and leaves in the order the hub decided them.
//! And before the hub offers a connection anything else (a reply, a publication), it
//! calls [`Backlog::settle`]: the pushes owed to that connection, and everything queued
//! before them, go first. So a watcher still sees joins, leaves and publications of a
//! channel in the hub's one order, and no push overtakes a reply, at the price of a
//! stall for a connection that is owed pushes (the watchers themselves, never the
//! channels' other subscribers).
//!
//! **Owned** by the hub thread, inside its `/ws` state ([`crate::server::commands`]);
//! generic over the [`Peer`] so the rules are tested with fakes.

use std::collections::{HashMap, VecDeque};

use crate::server::registry::{ConnId, Offer, Peer, Registry};
use crate::ws::wire::WireFrame;

/// Pushes offered per slice: between two inbox messages, the most the hub spends on
/// owed joins and leaves (each offer is at most one non-blocking `sendmsg`).
pub(crate) const SLICE: usize = 256;

/// While joins and leaves are owed, the hub handles at most this many inbox messages
/// between two slices (fewer when its inbox runs empty first).
pub(crate) const MESSAGES_PER_SLICE: usize = 64;

/// One announcement still owed to some of its watchers.
#[derive(Debug)]
struct Owed {
    frame: WireFrame,
    to: Vec<ConnId>,
    /// The next watcher in `to` to offer it to.
    next: usize,
}

/// The owed announcements, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    owed: VecDeque<Owed>,
    /// How many owed pushes each connection is waiting for.
    waiting: HashMap<ConnId, u32>,
}

/// What one delivery step did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Pushes queued for their watchers, and their bytes.
    pub pushes: usize,
    pub bytes: usize,
    /// Watchers that could not take theirs (a full queue, or gone): the caller forgets
    /// them (and cuts the slow ones), which may announce their leaves.
    pub dropped: Vec<(ConnId, Offer)>,
}

impl Backlog {
    /// Nothing owed?
    pub(crate) fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// Pushes still owed, in all.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.owed.iter().map(|o| o.to.len() - o.next).sum()
    }

    /// Announces `frame` to `to`: at once when nothing is owed and `to` fits a slice,
    /// else owed (delivered by [`deliver`](Self::deliver)).
    pub(crate) fn announce<P: Peer>(
        &mut self,
        frame: WireFrame,
        to: Vec<ConnId>,
        registry: &Registry<P>,
        out: &mut Delivered,
    ) {
        if to.is_empty() {
            return;
        }
        if self.owed.is_empty() && to.len() <= SLICE {
            for conn in to {
                offer(registry, conn, &frame, out);
            }
            return;
        }
        for conn in &to {
            *self.waiting.entry(*conn).or_default() += 1;
        }
        self.owed.push_back(Owed { frame, to, next: 0 });
    }

    /// Offers up to `most` owed pushes, oldest first.
    pub(crate) fn deliver<P: Peer>(&mut self, most: usize, registry: &Registry<P>, out: &mut Delivered) {
        for _ in 0..most {
            if !self.step(registry, out) {
                break;
            }
        }
    }

    /// Before `conn` is offered anything else: delivers what is owed up to and including
    /// the last push owed to `conn`.
    pub(crate) fn settle<P: Peer>(&mut self, conn: ConnId, registry: &Registry<P>, out: &mut Delivered) {
        if self.owed.is_empty() {
            return;
        }
        while self.waiting.contains_key(&conn) {
            if !self.step(registry, out) {
                break;
            }
        }
    }

    /// Delivers everything owed (the drain's Close 1001 must come after it).
    pub(crate) fn settle_all<P: Peer>(&mut self, registry: &Registry<P>, out: &mut Delivered) {
        while self.step(registry, out) {}
    }

    /// Offers the oldest owed push; false when nothing is owed.
    fn step<P: Peer>(&mut self, registry: &Registry<P>, out: &mut Delivered) -> bool {
        let Some(front) = self.owed.front_mut() else {
            return false;
        };
        let conn = front.to[front.next];
        front.next += 1;
        offer(registry, conn, &front.frame, out);
        if front.next == front.to.len() {
            self.owed.pop_front();
        }
        if let Some(n) = self.waiting.get_mut(&conn) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(&conn);
            }
        }
        true
    }
}

fn offer<P: Peer>(registry: &Registry<P>, conn: ConnId, frame: &WireFrame, out: &mut Delivered) {
    match registry.get(conn).map(|peer| peer.offer(frame)) {
        Some(Offer::Queued) => {
            out.pushes += 1;
            out.bytes += frame.payload().len();
        }
        // Gone from the registry already: forgotten, its leaves sent; nothing to do.
        None => {}
        Some(offer) => out.dropped.push((conn, offer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Debug, Default)]
    struct Fake {
        got: RefCell<Vec<String>>,
        full: bool,
    }

    impl Peer for Fake {
        fn offer(&self, frame: &WireFrame) -> Offer {
            if self.full {
                return Offer::Full;
            }
            let text = String::from_utf8(frame.payload().to_vec()).unwrap();
            self.got.borrow_mut().push(text);
            Offer::Queued
        }
    }

    fn frame(text: &str) -> WireFrame {
        WireFrame::from_message(tungstenite::Message::text(text)).unwrap()
    }

    fn registry(n: ConnId) -> Registry<Fake> {
        let mut r = Registry::default();
        for id in 1..=n {
            r.insert(id, "/ws", Fake::default());
        }
        r
    }

    fn got(r: &Registry<Fake>, id: ConnId) -> Vec<String> {
        r.get(id).unwrap().got.borrow().clone()
    }

    #[test]
    fn a_small_announcement_with_nothing_owed_goes_out_at_once() {
        let (r, mut b, mut out) = (registry(3), Backlog::default(), Delivered::default());
        b.announce(frame("j1"), vec![1, 2, 3], &r, &mut out);
        assert!(b.is_empty());
        assert_eq!(out.pushes, 3);
        assert_eq!(got(&r, 2), ["j1"]);
    }

    #[test]
    fn a_large_announcement_is_owed_and_delivered_a_slice_at_a_time() {
        let n = (SLICE + 10) as ConnId;
        let (r, mut b, mut out) = (registry(n), Backlog::default(), Delivered::default());
        b.announce(frame("j"), (1..=n).collect(), &r, &mut out);
        assert_eq!(out.pushes, 0, "nothing offered in the announcing step");
        b.deliver(SLICE, &r, &mut out);
        assert_eq!((out.pushes, b.len()), (SLICE, 10));
        b.deliver(SLICE, &r, &mut out);
        assert_eq!((out.pushes, b.len()), (SLICE + 10, 0));
        assert!(b.is_empty());
        assert!((1..=n).all(|id| got(&r, id) == ["j"]));
    }

    #[test]
    fn while_anything_is_owed_a_small_announcement_queues_behind_it() {
        let n = (SLICE + 1) as ConnId;
        let (r, mut b, mut out) = (registry(n), Backlog::default(), Delivered::default());
        b.announce(frame("first"), (1..=n).collect(), &r, &mut out);
        b.announce(frame("second"), vec![1], &r, &mut out);
        assert!(got(&r, 1).is_empty(), "the second may not overtake the first");
        b.settle_all(&r, &mut out);
        assert_eq!(got(&r, 1), ["first", "second"]);
    }

    #[test]
    fn settle_delivers_what_a_connection_is_owed_and_what_came_before_only() {
        let n = (SLICE + 1) as ConnId;
        let (r, mut b, mut out) = (registry(n), Backlog::default(), Delivered::default());
        b.announce(frame("a"), (1..=n).collect(), &r, &mut out);
        b.announce(frame("b"), (1..=n).collect(), &r, &mut out);
        // Connection 2 is owed "a" (2nd of the first) and "b" (2nd of the second).
        b.settle(2, &r, &mut out);
        assert_eq!(got(&r, 2), ["a", "b"]);
        assert_eq!(got(&r, 1), ["a", "b"], "everything queued before goes first");
        assert_eq!(got(&r, 3), ["a"], "what comes after waits");
        // A connection owed nothing costs nothing.
        let before = out.pushes;
        b.settle(999, &r, &mut out);
        assert_eq!(out.pushes, before);
    }

    #[test]
    fn a_watcher_that_cannot_take_its_push_is_reported_and_the_rest_go_on() {
        let mut r = registry(2);
        r.insert(
            3,
            "/ws",
            Fake {
                full: true,
                ..Fake::default()
            },
        );
        let (mut b, mut out) = (Backlog::default(), Delivered::default());
        b.announce(frame("j"), vec![3, 1, 7, 2], &r, &mut out);
        assert_eq!(
            out.dropped,
            [(3, Offer::Full)],
            "7 is gone already: nothing to do"
        );
        assert_eq!(
            (got(&r, 1), got(&r, 2)),
            (vec!["j".to_owned()], vec!["j".to_owned()])
        );
    }
}
