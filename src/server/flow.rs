//! Flow control toward the hub: how much may wait in the hub's inbox, in bytes for
//! everyone together and in messages for each connection.
//!
//! **Owns** no thread: a [`Flow`] is shared by every sender (connection readers, the
//! embedding program's threads) and the hub. A sender asks for a [`Credit`] before it
//! puts a message in the inbox, and **waits** (woken by the condition variable) while the
//! inbox holds [`Flow`]'s byte budget already, or while its own connection has
//! [`IN_FLIGHT_PER_CONNECTION`] messages there. The credit travels with the message and
//! gives its room back when dropped: after the hub has handled the message, or with the
//! inbox itself. When the hub ends it closes the flow, which wakes every waiter and
//! admits everything from then on (the send then fails as the hub is gone), so no wait
//! outlives the hub.
//!
//! [`pace`] is the other half: a sender over its rate waits for its next token.
//!
//! Why: the inbox is one FIFO shared by every connection. Without a bound per
//! connection, one client sending as fast as it can fills it with its own messages and
//! every other member's broadcast waits behind them; with one, the flooder's reader
//! waits instead, which stops it reading its socket and pushes back on that client's TCP
//! alone. The bound is one message: a connection's next message enters the inbox only
//! once the hub has handled its last, so the FIFO serves the connections that are
//! sending in turn, one message each. Another member's broadcast then waits behind at
//! most one message of each flooder (the one the hub holds, or the one waiting), not
//! behind a backlog of them; with a bound of n it waited behind up to n of each. The byte
//! budget bounds the inbox's memory whatever the message size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use std::time::Instant;

use crate::sync::lock;
use crate::ws::rate_limit::RateLimiter;

/// Messages one connection may have in the hub's inbox or in the hub's hands at once.
/// One, so that the inbox serves sending connections in turn: a member's broadcast waits
/// behind at most this many of each flooder's, and each of those costs the hub a
/// fan-out to the whole topic. The price: a busy sender's reader waits for the hub after
/// every message instead of reading ahead of it.
pub(crate) const IN_FLIGHT_PER_CONNECTION: usize = 1;

/// The hub inbox's budget, shared by every sender and the hub.
#[derive(Debug)]
pub(crate) struct Flow {
    state: Mutex<State>,
    room: Condvar,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes of the messages waiting in the inbox.
    bytes: usize,
    /// The hub has ended: admit everything.
    closed: bool,
    /// Senders waiting for room. A credit wakes them only when there are some: a
    /// wake-up is a system call, and the hub gives back a credit per message.
    waiting: usize,
}

/// One connection's count of messages waiting in the inbox. Changed only under the
/// [`Flow`]'s lock, so waiting on the flow's condition variable sees every change.
pub(crate) type InFlight = Arc<AtomicUsize>;

/// Room in the inbox for one message, given back when dropped.
#[derive(Debug)]
pub(crate) struct Credit {
    flow: Arc<Flow>,
    bytes: usize,
    conn: Option<InFlight>,
}

impl Flow {
    /// A budget of `max_bytes` for the whole inbox.
    pub(crate) fn new(max_bytes: usize) -> Arc<Flow> {
        Arc::new(Flow {
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            max_bytes,
        })
    }

    /// Waits until a message of `bytes` fits in the inbox and, for a connection's
    /// message, until that connection has fewer than [`IN_FLIGHT_PER_CONNECTION`]
    /// waiting; returns its credit. A message larger than the whole budget is admitted
    /// when the inbox holds no other bytes, so nothing waits forever.
    pub(crate) fn admit(self: &Arc<Self>, bytes: usize, conn: Option<&InFlight>) -> Credit {
        let mut st = lock(&self.state);
        loop {
            let conn_full = conn.is_some_and(|c| c.load(Ordering::Relaxed) >= IN_FLIGHT_PER_CONNECTION);
            let bytes_full = st.bytes > 0 && st.bytes.saturating_add(bytes) > self.max_bytes;
            if st.closed || !(conn_full || bytes_full) {
                break;
            }
            st.waiting += 1;
            st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiting -= 1;
        }
        st.bytes = st.bytes.saturating_add(bytes);
        if let Some(c) = conn {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Credit {
            flow: self.clone(),
            bytes,
            conn: conn.cloned(),
        }
    }

    /// The hub has ended: wake every waiter and admit everything from now on.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.room.notify_all();
    }

    /// Bytes waiting in the inbox now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        lock(&self.state).bytes
    }
}

/// Waits until `limiter` has a token for one more message, and takes it: how a sender
/// over its rate slows itself (a publisher, a client flooding pings). Each wait is at
/// most one token's time.
pub(crate) fn pace(limiter: &mut RateLimiter) {
    loop {
        let wait = limiter.delay(Instant::now());
        if wait.is_zero() {
            return;
        }
        std::thread::sleep(wait);
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        let someone_waits = {
            let mut st = lock(&self.flow.state);
            st.bytes = st.bytes.saturating_sub(self.bytes);
            if let Some(c) = &self.conn {
                c.fetch_sub(1, Ordering::Relaxed);
            }
            st.waiting > 0
        };
        if someone_waits {
            self.flow.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn a_credit_gives_its_bytes_back_when_dropped() {
        let flow = Flow::new(100);
        let c = flow.admit(60, None);
        assert_eq!(flow.bytes(), 60);
        drop(c);
        assert_eq!(flow.bytes(), 0);
    }

    #[test]
    fn a_sender_waits_while_the_byte_budget_is_spent() {
        let flow = Flow::new(100);
        let first = flow.admit(80, None);
        let f = flow.clone();
        let waiter = thread::spawn(move || f.admit(40, None).bytes);
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "admitted past the budget");
        drop(first);
        assert_eq!(waiter.join().unwrap(), 40);
    }

    #[test]
    fn a_message_larger_than_the_budget_passes_alone() {
        let flow = Flow::new(100);
        let big = flow.admit(1000, None);
        assert_eq!(flow.bytes(), 1000);
        drop(big);
    }

    #[test]
    fn a_connection_waits_at_its_in_flight_bound_while_others_pass() {
        let flow = Flow::new(1 << 20);
        let flooder: InFlight = Arc::default();
        let held: Vec<Credit> = (0..IN_FLIGHT_PER_CONNECTION)
            .map(|_| flow.admit(1, Some(&flooder)))
            .collect();
        let (f, c) = (flow.clone(), flooder.clone());
        let waiter = thread::spawn(move || drop(f.admit(1, Some(&c))));
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the flooder got past its bound");
        // Another connection is not held up by the flooder.
        let other: InFlight = Arc::default();
        drop(flow.admit(1, Some(&other)));
        drop(held);
        waiter.join().unwrap();
        assert_eq!(flooder.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn closing_the_flow_wakes_every_waiter() {
        let flow = Flow::new(10);
        let _held = flow.admit(10, None);
        let f = flow.clone();
        let waiter = thread::spawn(move || drop(f.admit(10, None)));
        thread::sleep(Duration::from_millis(50));
        flow.close();
        waiter.join().unwrap();
    }
}
