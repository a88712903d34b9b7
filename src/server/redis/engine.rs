//! The engine thread: every command this node sends Redis (the publish script, the
//! read script behind `sub` and `history`, the presence script behind joins, leaves,
//! refreshes and `presence`), one at a time, on one connection.
//!
//! **Owns** the node's command connection to Redis (reconnected on demand, with
//! backoff and jitter from [`crate::client::backoff`]) and the two scripts. **Woken**
//! by a [`Job`] from the hub; it never waits on the hub except to hand a result to its
//! inbox, which the hub always drains. **Ends** when the hub drops its sender (the hub
//! has stopped). Each Redis call is bounded by `Config::engine_timeout`.
//!
//! The hub sends work here instead of calling Redis itself, so fan-out never waits for
//! a round trip. Jobs run in the order the hub sent them, so one connection's `pub`s get
//! offsets in the order it sent them, and a `sub`'s join is published before any `pub`
//! the same connection sends after its `sub` reply.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, info, warn};
use rand::RngExt;
use redis::{Client, Connection, RedisError, Script};

use super::{Event, Names, PubTarget};
use crate::client::backoff::Backoff;
use crate::pubsub::encode::{self, Encoded};
use crate::pubsub::protocol::{
    Empty, ErrorBody, ErrorCode, Member, PresenceList, Reply, Snapshot, StreamPosition,
};
use crate::pubsub::relay::{self, Template};
use crate::pubsub::{ConnId, HistoryQuery, Limits};
use crate::server::engine::EngineHealth;
use crate::server::error::PublishError;
use crate::server::hub::{Hub, HubMsg};

/// How long a channel's epoch and top offset stay in Redis after its last `pub` or
/// `sub`: past it the channel starts again with a new epoch (as a channel dropped from
/// memory does). Much longer than any history TTL, so live subscribers keep their epoch.
pub(crate) const META_TTL: Duration = Duration::from_secs(24 * 3600);

/// Work for the engine thread.
#[derive(Debug)]
pub(crate) enum Job {
    /// Run the publish script.
    Publish {
        /// The channel.
        ch: String,
        /// The publication without its offset.
        template: Template,
        /// The idempotency key.
        key: Option<String>,
        /// Who gets the result.
        to: PubTarget,
    },
    /// Run the read script for a `sub` (creating the channel) or a `history`.
    Read {
        /// The channel.
        ch: String,
        /// The connection asking.
        conn: ConnId,
        /// The command's id.
        id: u64,
        /// Its `since`.
        since: Option<StreamPosition>,
        /// Its `limit` (`history` only).
        limit: Option<u64>,
        /// `Some(ticket)` for a `sub`: the hub's number for the pending subscription.
        sub: Option<u64>,
    },
    /// A member joined `ch` on this node: add it and publish its join.
    Join {
        /// The channel.
        ch: String,
        /// Its client id.
        client: String,
        /// Its member JSON (`client`, `user`, `info`).
        member: String,
    },
    /// A member of this node left `ch`: remove it and publish its leave.
    Leave {
        /// The channel.
        ch: String,
        /// Its client id.
        client: String,
    },
    /// Every member this node has, per channel: give each a new expiry.
    Refresh(Vec<(String, Vec<(String, String)>)>),
    /// A `presence` command: the channel's members, from every node.
    Presence {
        /// The channel.
        ch: String,
        /// The connection asking.
        conn: ConnId,
        /// The command's id.
        id: u64,
    },
}

/// Members re-added per script call on a refresh, so one call stays short and other
/// commands are not held up behind a channel with many members.
const REFRESH_BATCH: usize = 500;

pub(crate) struct EngineThread {
    client: Client,
    con: Option<Connection>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    timeout: Duration,
    limits: Limits,
    health: Arc<EngineHealth>,
    hub: Hub,
    publish: Script,
    read: Script,
    presence: Script,
    presence_ttl: Duration,
    max_presence_list: usize,
}

/// Error 6, for anything that went wrong between us and Redis.
fn unavailable(why: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, format!("engine unavailable: {why}"))
}

fn new_epoch() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

impl EngineThread {
    pub(crate) fn new(
        client: Client,
        timeout: Duration,
        limits: Limits,
        presence: super::PresenceConfig,
        health: Arc<EngineHealth>,
        hub: Hub,
    ) -> EngineThread {
        EngineThread {
            client,
            con: None,
            retry_at: None,
            backoff: Backoff::new(super::reconnect_backoff()),
            timeout,
            limits,
            health,
            hub,
            publish: Script::new(include_str!("publish.lua")),
            read: Script::new(include_str!("read.lua")),
            presence: Script::new(include_str!("presence.lua")),
            presence_ttl: presence.ttl,
            max_presence_list: presence.max_list,
        }
    }

    /// Runs jobs until the hub is gone. While the connection is down it also reconnects
    /// on its own at each backoff deadline, so `/healthz` turns green again without
    /// waiting for a client's `pub`.
    pub(crate) fn run(mut self, jobs: Receiver<Job>) {
        loop {
            let next = match self.retry_at.filter(|_| self.con.is_none()) {
                Some(at) => jobs.recv_deadline(at),
                None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match next {
                Ok(job) => self.handle(job),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.connection();
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Publish {
                ch,
                template,
                key,
                to,
            } => {
                let result = self.publish(&ch, &template, key.as_deref());
                match to {
                    PubTarget::Api(reply) => {
                        let _ = reply.send(result.map_err(PublishError::Rejected));
                    }
                    PubTarget::Conn { conn, id } => {
                        let text = match result {
                            Ok(pos) => encode::reply(&Reply::ok(id, pos)),
                            Err(e) => encode::reply(&Reply::<Empty>::err(Some(id), e)),
                        };
                        self.tell(Event::Reply { conn, text });
                    }
                }
            }
            Job::Read {
                ch,
                conn,
                id,
                since,
                limit,
                sub,
            } => {
                let q = HistoryQuery {
                    ch: &ch,
                    since: since.as_ref(),
                    limit,
                };
                let result = self.read(q, sub.is_some());
                match sub {
                    Some(ticket) => self.tell(Event::Snapshot {
                        ch,
                        conn,
                        id,
                        ticket,
                        result,
                    }),
                    None => {
                        let text = match result {
                            Ok(snap) => encode::snapshot_reply(id, &snap),
                            Err(e) => encode::reply(&Reply::<Empty>::err(Some(id), e)),
                        };
                        self.tell(Event::Reply { conn, text });
                    }
                }
            }
            // While Redis is down every subscription ends (push unsub code 6) and each
            // of these fails: the connection's own warnings say so once, not per member.
            Job::Join { ch, client, member } => {
                if let Err(e) = self.presence_call(&ch, "add", &[client.as_str(), member.as_str()]) {
                    debug!("engine: join of {client} to {ch} not recorded: {}", e.msg);
                }
            }
            Job::Leave { ch, client } => {
                if let Err(e) = self.presence_call(&ch, "remove", &[client.as_str()]) {
                    debug!(
                        "engine: leave of {client} from {ch} not recorded ({}); its entry expires",
                        e.msg
                    );
                }
            }
            Job::Refresh(channels) => {
                for (ch, members) in channels {
                    for batch in members.chunks(REFRESH_BATCH) {
                        let args: Vec<&str> =
                            batch.iter().flat_map(|(c, m)| [c.as_str(), m.as_str()]).collect();
                        if let Err(e) = self.presence_call(&ch, "refresh", &args) {
                            warn!("engine: presence refresh of {ch} failed: {}", e.msg);
                            return;
                        }
                    }
                }
            }
            Job::Presence { ch, conn, id } => {
                let text = match self.presence_call(&ch, "read", &[]) {
                    Ok(members) => {
                        encode::reply(&Reply::ok(id, presence_list(&members, self.max_presence_list)))
                    }
                    Err(e) => encode::reply(&Reply::<Empty>::err(Some(id), e)),
                };
                self.tell(Event::Reply { conn, text });
            }
        }
    }

    /// Runs the presence script on `ch` in `mode` with `args` after the common ones.
    fn presence_call(&mut self, ch: &str, mode: &str, args: &[&str]) -> Result<Vec<String>, ErrorBody> {
        let names = Names::new(ch);
        let script = self.presence.clone();
        let ttl = millis(self.presence_ttl);
        self.call(|con| {
            let mut inv = script.key(&names.members);
            inv.key(&names.expiry).arg(mode).arg(ttl).arg(&names.live);
            for a in args {
                inv.arg(*a);
            }
            inv.invoke(con)
        })
    }

    fn tell(&self, event: Event) {
        // The hub always drains its inbox; if it has stopped, nobody needs this.
        let _ = self.hub.send(HubMsg::Redis(Box::new(event)));
    }

    /// The connection, (re)connecting if it is time to try.
    fn connection(&mut self) -> Result<&mut Connection, ErrorBody> {
        if self.con.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Err(unavailable("Redis is unreachable, reconnecting"));
            }
            match self.connect() {
                Ok(con) => {
                    if self.retry_at.take().is_some() {
                        info!("engine: reconnected to Redis");
                    }
                    self.backoff.reset();
                    self.health.set_commands(true);
                    self.con = Some(con);
                }
                Err(e) => {
                    self.failed(&e);
                    return Err(unavailable(e));
                }
            }
        }
        self.con.as_mut().ok_or_else(|| unavailable("no connection"))
    }

    fn connect(&self) -> Result<Connection, RedisError> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    /// The connection failed: drop it and wait a backoff delay before the next try.
    fn failed(&mut self, e: &RedisError) {
        if self.con.take().is_some() || self.retry_at.is_none() {
            warn!("engine: Redis command connection failed: {e}");
        }
        self.health.set_commands(false);
        self.health.failed();
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
    }

    /// Runs `f` on the connection; an I/O error or a timeout drops the connection.
    fn call<T>(&mut self, f: impl FnOnce(&mut Connection) -> Result<T, RedisError>) -> Result<T, ErrorBody> {
        let con = self.connection()?;
        f(con).map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.failed(&e);
            }
            unavailable(e)
        })
    }

    fn publish(
        &mut self,
        ch: &str,
        template: &Template,
        key: Option<&str>,
    ) -> Result<StreamPosition, ErrorBody> {
        let names = Names::new(ch);
        let limits = self.limits;
        let script = self.publish.clone();
        let epoch = new_epoch();
        let (epoch, offset, _seen): (String, u64, u8) = self.call(|con| {
            script
                .key(&names.meta)
                .key(&names.stream)
                .key(names.idempotency(key.unwrap_or_default()))
                .arg(&template.head)
                .arg(&template.tail)
                .arg(limits.history_size)
                .arg(millis(limits.history_ttl))
                .arg(META_TTL.as_secs())
                .arg(&epoch)
                .arg(millis(limits.idempotency_window))
                .arg(&names.live)
                .arg(if key.is_some() { "1" } else { "0" })
                .invoke(con)
        })?;
        Ok(StreamPosition { epoch, offset })
    }

    fn read(&mut self, q: HistoryQuery<'_>, create: bool) -> Result<Snapshot<Encoded>, ErrorBody> {
        let HistoryQuery { ch, since, limit } = q;
        let names = Names::new(ch);
        let cap = self.limits.history_size as u64;
        // A `sub` reads everything after `since` (at most the history size); a `history`
        // reads at most `limit`.
        let limit = if create {
            cap
        } else {
            limit.unwrap_or(cap).min(cap)
        };
        let script = self.read.clone();
        let epoch = new_epoch();
        let (epoch, top, entries): (String, u64, Vec<String>) = self.call(|con| {
            script
                .key(&names.meta)
                .key(&names.stream)
                .arg(if create { "1" } else { "0" })
                .arg(&epoch)
                .arg(META_TTL.as_secs())
                .arg(since.map_or("", |s| s.epoch.as_str()))
                .arg(since.map_or(0, |s| s.offset.saturating_add(1)))
                .arg(limit)
                .arg(if create { "" } else { "newest" })
                .invoke(con)
        })?;
        let mut first = None;
        let mut pubs = Vec::with_capacity(entries.len() / 2);
        for pair in entries.chunks_exact(2) {
            if first.is_none() {
                first = pair[0].split('-').next().and_then(|o| o.parse().ok());
            }
            pubs.push(Encoded::from(pair[1].clone()));
        }
        let recovered = since.map(|s| relay::recovered(s, &epoch, top, first));
        if recovered == Some(false) {
            pubs.clear();
        }
        Ok(Snapshot {
            epoch,
            offset: top,
            pubs,
            recovered,
        })
    }
}

/// A `presence` reply from every member's JSON as Redis holds it: listed in client id
/// order, at most `max`, the counts exact. An entry that is not a member (written by
/// something else) is skipped.
pub(crate) fn presence_list(members: &[String], max: usize) -> PresenceList {
    let mut all: Vec<Member> = members
        .iter()
        .filter_map(|m| serde_json::from_str::<Member>(m).ok())
        .collect();
    all.sort_by(|a, b| a.client.cmp(&b.client));
    let users: HashSet<&str> = all.iter().map(|m| m.user.as_str()).collect();
    let num_users = users.len() as u64;
    let num_clients = all.len() as u64;
    all.truncate(max);
    PresenceList {
        clients: all,
        num_clients,
        num_users,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_list_from_redis_is_sorted_capped_and_counted_exactly() {
        let members: Vec<String> = [
            r#"{"client":"b-2","user":"ann"}"#,
            r#"{"client":"a-1","user":"ann","info":{"x":1}}"#,
            r#"{"client":"a-7","user":"bob"}"#,
            "not a member",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let l = presence_list(&members, 2);
        assert_eq!((l.num_clients, l.num_users), (3, 2));
        let listed: Vec<&str> = l.clients.iter().map(|m| m.client.as_str()).collect();
        assert_eq!(listed, ["a-1", "a-7"]);
    }
}
