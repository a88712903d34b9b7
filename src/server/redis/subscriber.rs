//! The subscriber thread: this node's one Redis PUB/SUB connection.
//!
//! **Owns** the PUB/SUB connection and which Redis channels it is subscribed to.
//! **Woken** by a publication from Redis, or every [`POLL`] (the read timeout) to take
//! the hub's [`Ctl`] requests (subscribe, unsubscribe). **Ends** when the hub drops its
//! sender (the hub has stopped), noticed within [`POLL`], or within a backoff wait.
//!
//! It subscribes to the Redis channel of a wshub channel when the hub asks (the first
//! local subscriber), tells the hub once Redis has confirmed (so the hub reads the
//! snapshot only after the subscription is live), and hands every publication to the
//! hub, and every join and leave (which travel on the same Redis channel). When the
//! connection fails it tells the hub ([`Event::SubscriberLost`]: the hub ends every
//! local subscription with `push unsub` code 6) and reconnects with backoff
//! and jitter; until it is back, every subscribe request fails at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use log::{info, warn};
use redis::{Client, Connection};

use super::{Event, Names};
use crate::client::backoff::Backoff;
use crate::pubsub::encode::Encoded;
use crate::pubsub::relay;
use crate::server::engine::EngineHealth;
use crate::server::hub::{Hub, HubMsg};

/// How long a read on the PUB/SUB connection waits before the thread looks at its
/// requests again: the most a `sub` on a channel new to this node waits for its Redis
/// subscription to start.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// What the hub asks of the subscriber thread.
#[derive(Debug)]
pub(crate) enum Ctl {
    /// Subscribe to `ch`'s Redis channel; answer [`Event::Subscribed`] with `round`.
    Subscribe { ch: String, round: u64 },
    /// Unsubscribe from it.
    Unsubscribe { ch: String },
}

enum Ended {
    /// The hub is gone.
    Stop,
    /// The connection failed.
    Lost(String),
}

/// Runs until the hub is gone.
pub(crate) fn run(
    client: Client,
    timeout: Duration,
    ctl: Receiver<Ctl>,
    hub: Hub,
    health: Arc<EngineHealth>,
) {
    let tell = |e: Event| {
        let _ = hub.send(HubMsg::Redis(Box::new(e)));
    };
    let mut backoff = Backoff::new(super::reconnect_backoff());
    let mut was_up = true;
    loop {
        let con = client
            .get_connection_with_timeout(timeout)
            .and_then(|con| con.set_write_timeout(Some(timeout)).map(|()| con));
        match con {
            Ok(mut con) => {
                if !was_up {
                    info!("engine: PUB/SUB connection to Redis is back");
                }
                backoff.reset();
                health.set_pubsub(true);
                match serve(&mut con, timeout, &ctl, &tell) {
                    Ended::Stop => return,
                    Ended::Lost(why) => {
                        warn!("engine: Redis PUB/SUB connection lost: {why}");
                        health.set_pubsub(false);
                        health.failed();
                        was_up = false;
                        tell(Event::SubscriberLost);
                    }
                }
            }
            Err(e) => {
                if was_up {
                    warn!("engine: cannot reach Redis for PUB/SUB: {e}; retrying with backoff");
                }
                was_up = false;
                health.set_pubsub(false);
                health.failed();
                // Until the next try every subscribe fails at once (the `sub` gets
                // error 6): nothing waits on a Redis that is not there.
                let until = Instant::now() + backoff.next_delay();
                loop {
                    match ctl.recv_deadline(until) {
                        Ok(Ctl::Subscribe { ch, round }) => tell(Event::SubscribeFailed { ch, round }),
                        Ok(Ctl::Unsubscribe { .. }) => {}
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        }
    }
}

/// Serves one connection until it fails or the hub is gone.
fn serve(con: &mut Connection, timeout: Duration, ctl: &Receiver<Ctl>, tell: &impl Fn(Event)) -> Ended {
    let mut ps = con.as_pubsub();
    // The read timeout is `POLL` while waiting for publications, and the engine timeout
    // while waiting for Redis's answer to a (un)subscribe, which a busy Redis may take
    // longer than `POLL` to give.
    let mut polling = false;
    loop {
        loop {
            let req = match ctl.try_recv() {
                Ok(req) => req,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ended::Stop,
            };
            if polling {
                if let Err(e) = ps.set_read_timeout(Some(timeout)) {
                    return Ended::Lost(e.to_string());
                }
                polling = false;
            }
            match req {
                Ctl::Subscribe { ch, round } => match ps.subscribe(Names::new(&ch).live) {
                    Ok(()) => tell(Event::Subscribed { ch, round }),
                    Err(e) => {
                        tell(Event::SubscribeFailed { ch, round });
                        return Ended::Lost(e.to_string());
                    }
                },
                Ctl::Unsubscribe { ch } => {
                    if let Err(e) = ps.unsubscribe(Names::new(&ch).live) {
                        return Ended::Lost(e.to_string());
                    }
                }
            }
        }
        if !polling {
            if let Err(e) = ps.set_read_timeout(Some(POLL)) {
                return Ended::Lost(e.to_string());
            }
            polling = true;
        }
        match ps.get_message() {
            Ok(msg) => {
                let Some(ch) = Names::channel_of(msg.get_channel_name()) else {
                    continue;
                };
                let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
                    continue;
                };
                if let Some((join, client, member)) = relay::parse_presence(text) {
                    tell(Event::Presence {
                        ch: ch.to_owned(),
                        join,
                        client: client.to_owned(),
                        member: member.to_owned(),
                    });
                    continue;
                }
                let Some((epoch, offset, publication)) = relay::parse_live(text) else {
                    continue;
                };
                tell(Event::Live {
                    ch: ch.to_owned(),
                    epoch: epoch.to_owned(),
                    offset,
                    publication: Encoded::from(publication.to_owned()),
                });
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Ended::Lost(e.to_string()),
        }
    }
}
