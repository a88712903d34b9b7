//! Presence, free of I/O: who each connection is, who is subscribed to each channel,
//! and who asked to hear joins and leaves.
//!
//! **Owns** nothing shared: the hub thread owns one [`Presence`] next to its
//! [`Channels`](super::Channels) (no `Mutex`: no other thread can reach it) and calls it
//! as it executes `hello`, `sub`, `unsub`, `presence` and as connections go. Nothing
//! here wakes by itself or sends anything: [`Presence::join`] and [`Presence::leave`]
//! return the event and the connections to push it to, and the hub offers it to them
//! in the same step as it changes the subscription, so joins, leaves and publications
//! on one channel reach every watcher in the one order the hub executed them.
//!
//! The members of each channel live behind [`PresenceStore`], the same kind of seam as
//! [`Store`](super::Store): [`MemoryPresence`] keeps them in this process; another
//! engine (Redis) can keep every server's members in one place. The identities of this
//! server's connections and the watchers (`"joins": true`) are always local. With the
//! Redis engine the hub keeps this node's members here too (they are what the node
//! refreshes in Redis) and reads the channel's whole list from Redis.
//!
//! **Client ids.** A connection's id on the wire ([`client_id`]) is its number on this
//! server, behind the node's prefix when there is one: `"17"` with the memory engine
//! (one process), `"3f9a0c6e21d4-17"` with the Redis engine, whose nodes each draw a
//! random prefix at start, so ids are unique across every node sharing the Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::ConnId;
use super::protocol::{Member, PresenceList};

/// The wire id of connection `conn` on a node with `prefix` (`""`: no prefix).
pub fn client_id(prefix: &str, conn: ConnId) -> String {
    if prefix.is_empty() {
        conn.to_string()
    } else {
        format!("{prefix}-{conn}")
    }
}

/// The connection behind wire id `client`, if it is one of the node with `prefix`.
pub fn conn_of(prefix: &str, client: &str) -> Option<ConnId> {
    let number = if prefix.is_empty() {
        client
    } else {
        client.strip_prefix(prefix)?.strip_prefix('-')?
    };
    number.parse().ok()
}

/// One connection's presence entry: its id, user and info. Shared by every channel it
/// is in.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The connection's id, as a string (as `from.client` shows it).
    pub client: String,
    /// Its user (`""` when it never said).
    pub user: Arc<str>,
    /// Its presence info.
    pub info: Option<Value>,
}

impl Entry {
    /// The wire form, with `ch` for a push or without for a list.
    pub fn member(&self, ch: Option<&str>) -> Member {
        Member {
            ch: ch.map(str::to_owned),
            client: self.client.clone(),
            user: self.user.to_string(),
            info: self.info.clone(),
        }
    }
}

/// Where channel members live. Every method runs on the hub thread and returns at once.
pub trait PresenceStore: Send {
    /// `conn` (described by `entry`) is now in `ch`.
    fn add(&mut self, ch: &str, conn: ConnId, entry: &Arc<Entry>);
    /// `conn` is no longer in `ch`.
    fn remove(&mut self, ch: &str, conn: ConnId);
    /// At most `max` of `ch`'s members, with the exact counts.
    fn list(&self, ch: &str, max: usize) -> PresenceList;
}

/// Members in this process: per channel, the members by connection id and a count of
/// connections per user (so `num_users` is exact without a walk).
#[derive(Debug, Default)]
pub struct MemoryPresence {
    channels: HashMap<Arc<str>, ChannelMembers>,
}

#[derive(Debug, Default)]
struct ChannelMembers {
    members: BTreeMap<ConnId, Arc<Entry>>,
    users: HashMap<Arc<str>, usize>,
}

impl MemoryPresence {
    /// Channels with at least one member.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether `conn` is a member of `ch`.
    pub fn contains(&self, ch: &str, conn: ConnId) -> bool {
        self.channels
            .get(ch)
            .is_some_and(|m| m.members.contains_key(&conn))
    }

    /// Every channel with its members, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &Arc<Entry>>)> {
        self.channels.iter().map(|(ch, m)| (&**ch, m.members.values()))
    }
}

impl PresenceStore for MemoryPresence {
    fn add(&mut self, ch: &str, conn: ConnId, entry: &Arc<Entry>) {
        let members = match self.channels.get_mut(ch) {
            Some(m) => m,
            None => self.channels.entry(Arc::from(ch)).or_default(),
        };
        if members.members.insert(conn, entry.clone()).is_none() {
            *members.users.entry(entry.user.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, ch: &str, conn: ConnId) {
        let Some(members) = self.channels.get_mut(ch) else {
            return;
        };
        if let Some(entry) = members.members.remove(&conn) {
            if let Some(n) = members.users.get_mut(&entry.user) {
                *n -= 1;
                if *n == 0 {
                    members.users.remove(&entry.user);
                }
            }
        }
        if members.members.is_empty() {
            self.channels.remove(ch);
        }
    }

    fn list(&self, ch: &str, max: usize) -> PresenceList {
        let Some(members) = self.channels.get(ch) else {
            return PresenceList {
                clients: Vec::new(),
                num_clients: 0,
                num_users: 0,
            };
        };
        PresenceList {
            clients: members
                .members
                .values()
                .take(max)
                .map(|e| e.member(None))
                .collect(),
            num_clients: members.members.len() as u64,
            num_users: members.users.len() as u64,
        }
    }
}

/// A join or leave to push: the event and the watchers to push it to.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The member who came or went, with `ch` set.
    pub member: Member,
    /// The connections that asked for joins on that channel, the member itself excluded.
    pub to: Vec<ConnId>,
}

/// Identities, members and watchers. Owned by the hub thread.
#[derive(Debug)]
pub struct Presence<P = MemoryPresence> {
    store: P,
    max_list: usize,
    /// This node's client id prefix (see [`client_id`]).
    prefix: Arc<str>,
    who: HashMap<ConnId, Arc<Entry>>,
    watchers: HashMap<Arc<str>, BTreeSet<ConnId>>,
}

impl Presence<MemoryPresence> {
    /// Presence in memory, listing at most `max_list` members.
    pub fn in_memory(max_list: usize) -> Presence<MemoryPresence> {
        Presence::new(MemoryPresence::default(), max_list)
    }
}

impl<P: PresenceStore> Presence<P> {
    /// Presence over `store`, listing at most `max_list` members per `presence` reply.
    pub fn new(store: P, max_list: usize) -> Presence<P> {
        Presence {
            store,
            max_list,
            prefix: Arc::from(""),
            who: HashMap::new(),
            watchers: HashMap::new(),
        }
    }

    /// Names this node's connections `PREFIX-N` instead of `N` (see [`client_id`]).
    pub fn with_prefix(mut self, prefix: &str) -> Presence<P> {
        self.prefix = Arc::from(prefix);
        self
    }

    /// This node's client id prefix (`""` for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The wire id of `conn` (see [`client_id`]).
    pub fn client_id(&self, conn: ConnId) -> String {
        client_id(&self.prefix, conn)
    }

    /// The store, for inspection.
    pub fn store(&self) -> &P {
        &self.store
    }

    /// The connections watching `ch` (its subscribers with `joins`).
    pub fn watchers(&self, ch: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.watchers.get(ch).into_iter().flatten().copied()
    }

    /// Records who `conn` is (its `hello`), for the channels it subscribes to from now on.
    pub fn identify(&mut self, conn: ConnId, user: &str, info: Option<Value>) {
        self.who.insert(
            conn,
            Arc::new(Entry {
                client: self.client_id(conn),
                user: Arc::from(user),
                info,
            }),
        );
    }

    /// Whether `conn` has said who it is.
    pub fn is_identified(&self, conn: ConnId) -> bool {
        self.who.contains_key(&conn)
    }

    /// `conn`'s entry: its `hello`'s, or the anonymous one.
    pub fn entry(&self, conn: ConnId) -> Arc<Entry> {
        self.who.get(&conn).cloned().unwrap_or_else(|| {
            Arc::new(Entry {
                client: self.client_id(conn),
                user: Arc::from(""),
                info: None,
            })
        })
    }

    /// `conn` subscribed to `ch` (and, with `joins`, watches it): the join to push.
    pub fn join(&mut self, conn: ConnId, ch: &str, joins: bool) -> Event {
        let entry = self.entry(conn);
        self.store.add(ch, conn, &entry);
        let to = self.watchers_of(ch, conn);
        if joins {
            match self.watchers.get_mut(ch) {
                Some(w) => {
                    w.insert(conn);
                }
                None => {
                    self.watchers.insert(Arc::from(ch), BTreeSet::from([conn]));
                }
            }
        }
        Event {
            member: entry.member(Some(ch)),
            to,
        }
    }

    /// `conn` left `ch` (unsubscribed, went, or was cut): the leave to push.
    pub fn leave(&mut self, conn: ConnId, ch: &str) -> Event {
        let entry = self.entry(conn);
        self.store.remove(ch, conn);
        if let Some(w) = self.watchers.get_mut(ch) {
            w.remove(&conn);
            if w.is_empty() {
                self.watchers.remove(ch);
            }
        }
        Event {
            member: entry.member(Some(ch)),
            to: self.watchers_of(ch, conn),
        }
    }

    /// Forgets `conn`'s identity; call after [`leave`](Self::leave) for each of its
    /// channels.
    pub fn forget(&mut self, conn: ConnId) {
        self.who.remove(&conn);
    }

    /// `ch`'s members (at most the list limit) and exact counts.
    pub fn list(&self, ch: &str) -> PresenceList {
        self.store.list(ch, self.max_list)
    }

    /// Connections whose identity is kept.
    pub fn identified_count(&self) -> usize {
        self.who.len()
    }

    fn watchers_of(&self, ch: &str, except: ConnId) -> Vec<ConnId> {
        self.watchers
            .get(ch)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&c| c != except)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Presence (lists of at most 10) with each connection identified as its user.
    fn identified(users: &[(ConnId, &str)]) -> Presence {
        let mut p = Presence::in_memory(10);
        for &(conn, user) in users {
            p.identify(conn, user, None);
        }
        p
    }

    /// Presence (lists of at most 10) after these joins, each `(connection, channel,
    /// asks for joins)`.
    fn joined(joins: &[(ConnId, &str, bool)]) -> Presence {
        let mut p = Presence::in_memory(10);
        for &(conn, ch, joins) in joins {
            p.join(conn, ch, joins);
        }
        p
    }

    #[test]
    fn a_join_goes_to_watchers_other_than_the_joiner() {
        let mut p = Presence::in_memory(10);
        assert!(p.join(1, "a", true).to.is_empty());
        p.identify(2, "bob", Some(json!({"x":1})));
        let ev = p.join(2, "a", false);
        assert_eq!(ev.to, vec![1]);
        assert_eq!(ev.member.user, "bob");
        assert_eq!(ev.member.ch.as_deref(), Some("a"));
        assert_eq!(ev.member.info, Some(json!({"x":1})));
        // A subscriber without joins is not told.
        assert_eq!(p.join(3, "a", true).to, vec![1]);
        assert_eq!(p.join(4, "a", false).to, vec![1, 3]);
    }

    #[test]
    fn a_leave_goes_to_the_remaining_watchers_and_stops_the_leavers_joins() {
        let mut p = joined(&[(1, "a", true), (2, "a", true)]);
        assert_eq!(p.leave(1, "a").to, vec![2]);
        assert!(p.join(3, "a", false).to == vec![2]);
        assert!(p.leave(2, "a").to.is_empty());
        assert_eq!(p.leave(3, "a").to, Vec::<ConnId>::new());
    }

    #[test]
    fn two_connections_of_one_user_are_two_clients_and_one_user() {
        let mut p = identified(&[(1, "ann"), (2, "ann"), (3, "bob")]);
        for c in 1..=3 {
            p.join(c, "a", false);
        }
        let l = p.list("a");
        assert_eq!((l.num_clients, l.num_users), (3, 2));
        p.leave(1, "a");
        let l = p.list("a");
        assert_eq!((l.num_clients, l.num_users), (2, 2));
        p.leave(2, "a");
        assert_eq!(p.list("a").num_users, 1);
    }

    #[test]
    fn the_list_is_capped_but_the_counts_are_exact() {
        let mut p = Presence::in_memory(2);
        for c in 1..=5 {
            p.join(c, "a", false);
        }
        let l = p.list("a");
        assert_eq!(l.clients.len(), 2);
        assert_eq!(l.num_clients, 5);
        assert_eq!(l.num_users, 1, "all five are the anonymous user");
    }

    #[test]
    fn empty_channels_and_forgotten_connections_leave_nothing_behind() {
        let mut p = identified(&[(1, "ann")]);
        p.join(1, "a", true);
        p.join(1, "b", false);
        p.leave(1, "a");
        p.leave(1, "b");
        p.forget(1);
        assert_eq!(p.store().channel_count(), 0);
        assert_eq!(p.identified_count(), 0);
        assert!(p.watchers.is_empty());
        let l = p.list("a");
        assert_eq!((l.clients.len(), l.num_clients, l.num_users), (0, 0, 0));
    }

    #[test]
    fn client_ids_carry_the_node_prefix_and_read_back_only_for_that_node() {
        assert_eq!(client_id("", 17), "17");
        assert_eq!(client_id("ab12", 17), "ab12-17");
        assert_eq!(conn_of("ab12", "ab12-17"), Some(17));
        assert_eq!(conn_of("ab12", "cd34-17"), None);
        assert_eq!(conn_of("ab12", "ab123-17"), None);
        assert_eq!(conn_of("", "17"), Some(17));
        assert_eq!(Presence::in_memory(10).prefix(), "");
        let mut p = Presence::in_memory(10).with_prefix("ab12");
        assert_eq!(p.prefix(), "ab12");
        assert_eq!(conn_of(p.prefix(), &p.client_id(3)), Some(3));
        p.identify(3, "ann", None);
        assert_eq!(p.join(3, "a", false).member.client, "ab12-3");
        assert_eq!(p.join(4, "a", false).member.client, "ab12-4");
        assert!(p.store().contains("a", 3));
    }

    #[test]
    fn an_anonymous_connection_is_user_empty() {
        let mut p = Presence::in_memory(10);
        let ev = p.join(7, "a", false);
        assert_eq!(ev.member.user, "");
        assert_eq!(ev.member.client, "7");
        assert!(!p.is_identified(8));
    }

    #[test]
    fn identify_records_who_a_connection_is_until_it_is_forgotten() {
        let mut p = Presence::in_memory(10);
        p.identify(7, "ann", None);
        assert!(p.is_identified(7));
        assert_eq!(p.identified_count(), 1);
        p.forget(7);
        assert!(!p.is_identified(7));
        assert_eq!(p.identified_count(), 0);
    }

    #[test]
    fn watchers_are_the_subscribers_that_asked_for_joins() {
        let p = joined(&[(1, "a", true), (2, "a", false), (3, "a", true)]);
        assert_eq!(p.watchers("a").collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(p.watchers("b").count(), 0);
    }

    #[test]
    fn the_store_lists_each_channel_with_its_own_members() {
        // What a node refreshes in the Redis engine: its members, channel by channel.
        let p = joined(&[(1, "a", false), (2, "a", false), (2, "b", false)]);
        let store = p.store();
        assert_eq!(store.channel_count(), 2);
        assert!(store.contains("a", 1) && store.contains("b", 2));
        assert!(!store.contains("b", 1) && !store.contains("c", 1));
        let mut listed: Vec<(String, Vec<String>)> = store
            .channels()
            .map(|(ch, members)| (ch.to_owned(), members.map(|e| e.client.clone()).collect()))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                ("a".to_owned(), vec!["1".to_owned(), "2".to_owned()]),
                ("b".to_owned(), vec!["2".to_owned()]),
            ]
        );
    }
}
