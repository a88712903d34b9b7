//! The hub's bookkeeping: which connections exist and which topic each is on. I/O-free.
//!
//! Owned by the hub thread alone (no `Mutex`: nobody else can see it), and generic over
//! the peer type so the rules are tested with fakes and no sockets. A topic is the path a
//! connection came in on (`/chat`); a broadcast goes to every member of one topic.
//!
//! The one rule that keeps the hub from ever blocking: a peer is *offered* a frame and
//! answers at once. A peer whose queue is full is a slow consumer and is removed from the
//! registry in the same step, so everyone else carries on.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ws::wire::WireFrame;

pub use crate::ws::ConnId;

/// A peer's answer to an offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the client.
    Queued,
    /// The client's queue is full: it is not keeping up.
    Full,
    /// The connection is already gone.
    Gone,
}

/// What the registry needs of a connection.
pub trait Peer {
    /// Queues `frame` without blocking.
    fn offer(&self, frame: &WireFrame) -> Offer;
}

/// What one broadcast did.
#[derive(Debug)]
pub struct Broadcast<P> {
    /// Members that queued the frame.
    pub delivered: usize,
    /// Members removed because their queue was full; the caller disconnects them.
    pub slow: Vec<(ConnId, P)>,
}

/// Connections by topic, with O(1) insert and remove.
#[derive(Debug)]
pub struct Registry<P> {
    topics: HashMap<Arc<str>, Vec<(ConnId, P)>>,
    /// Where each connection sits: its topic and its index in that topic's `Vec`.
    index: HashMap<ConnId, (Arc<str>, usize)>,
}

impl<P> Default for Registry<P> {
    fn default() -> Self {
        Registry {
            topics: HashMap::new(),
            index: HashMap::new(),
        }
    }
}

impl<P: Peer> Registry<P> {
    /// Number of registered connections.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Adds a connection to `topic`. A second insert of the same id replaces the first.
    pub fn insert(&mut self, id: ConnId, topic: &str, peer: P) {
        self.remove(id);
        let topic: Arc<str> = match self.topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        };
        let members = self.topics.entry(topic.clone()).or_default();
        members.push((id, peer));
        self.index.insert(id, (topic, members.len() - 1));
    }

    /// Removes a connection, returning its peer if it was registered.
    pub fn remove(&mut self, id: ConnId) -> Option<P> {
        let (topic, at) = self.index.remove(&id)?;
        let members = self.topics.get_mut(&topic)?;
        let (_, peer) = members.swap_remove(at);
        if let Some((moved, _)) = members.get(at) {
            if let Some(entry) = self.index.get_mut(moved) {
                entry.1 = at;
            }
        }
        if members.is_empty() {
            self.topics.remove(&topic);
        }
        Some(peer)
    }

    /// Offers `frame` to every member of `topic`, in one pass. Slow members are removed
    /// and handed back; members already gone are removed silently.
    pub fn broadcast(&mut self, topic: &str, frame: &WireFrame) -> Broadcast<P> {
        let mut delivered = 0;
        let mut dropped = Vec::new();
        if let Some(members) = self.topics.get(topic) {
            for (id, peer) in members {
                match peer.offer(frame) {
                    Offer::Queued => delivered += 1,
                    offer => dropped.push((*id, offer)),
                }
            }
        }
        let mut slow = Vec::new();
        for (id, offer) in dropped {
            if let Some(peer) = self.remove(id) {
                if offer == Offer::Full {
                    slow.push((id, peer));
                }
            }
        }
        Broadcast { delivered, slow }
    }

    /// The peer registered as `id`, if it is.
    pub fn get(&self, id: ConnId) -> Option<&P> {
        let (topic, at) = self.index.get(&id)?;
        self.topics.get(topic)?.get(*at).map(|(_, peer)| peer)
    }

    /// Is `id` registered?
    pub fn contains(&self, id: ConnId) -> bool {
        self.index.contains_key(&id)
    }

    /// Every registered connection.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &P)> {
        self.topics.values().flatten().map(|(id, p)| (*id, p))
    }

    /// Members of one topic.
    #[cfg(test)]
    pub fn topic_len(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    #[derive(Debug, Default)]
    struct Fake {
        capacity: usize,
        got: RefCell<Vec<Vec<u8>>>,
        gone: Cell<bool>,
    }

    impl Fake {
        fn with_capacity(capacity: usize) -> Fake {
            Fake {
                capacity,
                ..Fake::default()
            }
        }
    }

    impl Peer for Fake {
        fn offer(&self, frame: &WireFrame) -> Offer {
            if self.gone.get() {
                return Offer::Gone;
            }
            let mut got = self.got.borrow_mut();
            if got.len() == self.capacity {
                return Offer::Full;
            }
            got.push(frame.payload().to_vec());
            Offer::Queued
        }
    }

    fn frame(text: &str) -> WireFrame {
        WireFrame::from_message(tungstenite::Message::text(text)).unwrap()
    }

    #[test]
    fn broadcast_reaches_every_member_of_the_topic_only() {
        let mut r = Registry::default();
        r.insert(1, "/chat", Fake::with_capacity(8));
        r.insert(2, "/chat", Fake::with_capacity(8));
        r.insert(3, "/other", Fake::with_capacity(8));
        let out = r.broadcast("/chat", &frame("hi"));
        assert_eq!(out.delivered, 2);
        assert!(out.slow.is_empty());
        let other: Vec<_> = r.iter().filter(|(id, _)| *id == 3).collect();
        assert!(other[0].1.got.borrow().is_empty());
    }

    #[test]
    fn a_full_member_is_evicted_and_the_rest_still_receive() {
        let mut r = Registry::default();
        r.insert(1, "/chat", Fake::with_capacity(1));
        r.insert(2, "/chat", Fake::with_capacity(8));
        r.broadcast("/chat", &frame("a"));
        let out = r.broadcast("/chat", &frame("b"));
        assert_eq!(out.delivered, 1);
        assert_eq!(out.slow.len(), 1);
        assert_eq!(out.slow[0].0, 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r.broadcast("/chat", &frame("c")).delivered, 1);
    }

    #[test]
    fn gone_members_are_dropped_silently() {
        let mut r = Registry::default();
        let fake = Fake::with_capacity(8);
        fake.gone.set(true);
        r.insert(1, "/chat", fake);
        let out = r.broadcast("/chat", &frame("a"));
        assert_eq!((out.delivered, out.slow.len(), r.len()), (0, 0, 0));
    }

    #[test]
    fn removal_keeps_the_index_consistent() {
        let mut r = Registry::default();
        for id in 0..100 {
            r.insert(id, "/chat", Fake::with_capacity(8));
        }
        for id in (0..100).step_by(3) {
            assert!(r.remove(id).is_some());
        }
        assert!(r.remove(0).is_none());
        assert_eq!(r.len(), 66);
        for id in (1..100).filter(|i| i % 3 != 0) {
            assert!(r.remove(id).is_some(), "{id}");
        }
        assert_eq!(r.len(), 0);
        assert_eq!(r.topic_len("/chat"), 0);
    }

    #[test]
    fn get_finds_a_member_after_others_leave() {
        let mut r = Registry::default();
        for id in 0..4 {
            r.insert(id, "/chat", Fake::with_capacity(id as usize + 1));
        }
        r.remove(1);
        // id 3 was swapped into id 1's slot.
        assert_eq!(r.get(3).map(|p| p.capacity), Some(4));
        assert!(r.get(1).is_none() && !r.contains(1) && r.contains(3));
    }

    #[test]
    fn reinserting_an_id_moves_it() {
        let mut r = Registry::default();
        r.insert(1, "/a", Fake::with_capacity(8));
        r.insert(1, "/b", Fake::with_capacity(8));
        assert_eq!((r.len(), r.topic_len("/a"), r.topic_len("/b")), (1, 0, 1));
    }
}
