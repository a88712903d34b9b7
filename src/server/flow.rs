//! Flow control toward the hub: how much may wait in the hub's inbox, in bytes for
//! everyone together and in messages for each connection.
//!
//! **Owns** no thread: a [`Flow`] is shared by every sender (connection readers, the
//! embedding program's threads) and the hub. A sender asks for a [`Credit`] before it
//! puts a message in the inbox, and **waits** while the inbox holds [`Flow`]'s byte budget
//! already (woken by the flow's condition variable), or while its own connection has
//! [`IN_FLIGHT_PER_CONNECTION`] messages there (woken by that connection's [`Slot`], so
//! a message handled wakes its own connection's sender, not every waiting one). The credit travels with the message and
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

use std::collections::HashMap;
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
    /// Where senders wait for bytes; a connection's senders wait on its own [`Slot`].
    room: Condvar,
    max_bytes: usize,
    /// How many times a waiting sender has been woken (for the tests of who is woken).
    #[cfg(test)]
    wakeups: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes of the messages waiting in the inbox.
    bytes: usize,
    /// The hub has ended: admit everything.
    closed: bool,
    /// Senders waiting for bytes. A credit wakes them only when there are some: a
    /// wake-up is a system call, and the hub gives back a credit per message.
    waiting: usize,
    /// The slots some sender waits on, by address, so that closing the flow can wake
    /// them: the messages whose credits would wake them may stay in the inbox after the
    /// hub has gone, for as long as any sender holds the inbox's sending end.
    slot_waiters: HashMap<usize, InFlight>,
}

/// One connection's share of the inbox: how many of its messages wait there, and where
/// its senders wait until one of them has been handled. A credit given back wakes only
/// the senders of its own connection, so a message handled costs one wake-up however
/// many connections are waiting for theirs.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Its messages in the inbox or in the hub's hands. Changed only under the
    /// [`Flow`]'s lock, so a sender waiting under that lock sees every change.
    count: AtomicUsize,
    /// Its senders waiting for room (changed under the flow's lock too).
    waiting: AtomicUsize,
    /// Waited on with the flow's lock.
    room: Condvar,
}

/// A connection's [`Slot`], shared by its threads and the credits of its messages.
pub(crate) type InFlight = Arc<Slot>;

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
            #[cfg(test)]
            wakeups: AtomicUsize::new(0),
        })
    }

    /// Waits until a message of `bytes` fits in the inbox and, for a connection's
    /// message, until that connection has fewer than [`IN_FLIGHT_PER_CONNECTION`]
    /// waiting; returns its credit. A message larger than the whole budget is admitted
    /// when the inbox holds no other bytes, so nothing waits forever.
    pub(crate) fn admit(self: &Arc<Self>, bytes: usize, conn: Option<&InFlight>) -> Credit {
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                break;
            }
            if let Some(slot) = conn.filter(|c| c.count.load(Ordering::Relaxed) >= IN_FLIGHT_PER_CONNECTION) {
                let key = Arc::as_ptr(slot) as usize;
                if slot.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
                    st.slot_waiters.insert(key, slot.clone());
                }
                st = slot.room.wait(st).unwrap_or_else(|p| p.into_inner());
                if slot.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
                    // Gone already if `close` took them all.
                    st.slot_waiters.remove(&key);
                }
                self.woken();
                continue;
            }
            if st.bytes > 0 && st.bytes.saturating_add(bytes) > self.max_bytes {
                st.waiting += 1;
                st = self.room.wait(st).unwrap_or_else(|p| p.into_inner());
                st.waiting -= 1;
                self.woken();
                continue;
            }
            break;
        }
        st.bytes = st.bytes.saturating_add(bytes);
        if let Some(c) = conn {
            c.count.fetch_add(1, Ordering::Relaxed);
        }
        Credit {
            flow: self.clone(),
            bytes,
            conn: conn.cloned(),
        }
    }

    /// The hub has ended: wake every waiter and admit everything from now on.
    pub(crate) fn close(&self) {
        let slots = {
            let mut st = lock(&self.state);
            st.closed = true;
            std::mem::take(&mut st.slot_waiters)
        };
        self.room.notify_all();
        for slot in slots.values() {
            slot.room.notify_all();
        }
    }

    fn woken(&self) {
        #[cfg(test)]
        self.wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes waiting in the inbox now.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    /// Senders waiting now, for bytes or for their connection's turn.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        let st = lock(&self.state);
        let for_slots: usize = st
            .slot_waiters
            .values()
            .map(|s| s.waiting.load(Ordering::Relaxed))
            .sum();
        st.waiting + for_slots
    }
}

impl Slot {
    /// The connection's messages in the inbox or the hub's hands now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
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
        let (bytes_waiters, slot_waiters) = {
            let mut st = lock(&self.flow.state);
            st.bytes = st.bytes.saturating_sub(self.bytes);
            let slot_waiters = self.conn.as_ref().is_some_and(|c| {
                c.count.fetch_sub(1, Ordering::Relaxed);
                c.waiting.load(Ordering::Relaxed) > 0
            });
            (st.waiting > 0, slot_waiters)
        };
        if slot_waiters {
            if let Some(c) = &self.conn {
                c.room.notify_all();
            }
        }
        if bytes_waiters {
            self.flow.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{self, Receiver, TryRecvError};
    use std::thread;
    use std::time::Duration;

    /// How long a test waits for what must happen before it calls it a failure.
    const WATCHDOG: Duration = Duration::from_secs(10);

    /// A sender on a thread of its own, started by [`waiting_sender`].
    struct Waiter(Receiver<usize>);

    impl Waiter {
        /// Still waiting: not admitted yet.
        fn is_waiting(&self) -> bool {
            matches!(self.0.try_recv(), Err(TryRecvError::Empty))
        }

        /// Waits, within the watchdog, until the sender is admitted; the bytes of its
        /// credit (which it has given back by then).
        fn admitted(self) -> usize {
            self.0
                .recv_timeout(WATCHDOG)
                .expect("the sender was never admitted")
        }
    }

    /// Starts a sender of `bytes` (for `conn`) on a thread of its own and returns once it
    /// waits in [`Flow::admit`]. Fails the test if the sender is admitted instead, or does
    /// not wait within the watchdog.
    fn waiting_sender(flow: &Arc<Flow>, bytes: usize, conn: Option<&InFlight>) -> Waiter {
        let before = flow.waiting();
        let (f, c) = (flow.clone(), conn.cloned());
        let (done, admitted) = mpsc::channel();
        thread::spawn(move || {
            let credit = f.admit(bytes, c.as_ref());
            let bytes = credit.bytes;
            drop(credit);
            done.send(bytes)
        });
        let waiter = Waiter(admitted);
        let deadline = Instant::now() + WATCHDOG;
        while flow.waiting() <= before {
            assert!(waiter.is_waiting(), "admitted without waiting");
            assert!(Instant::now() < deadline, "the sender never waited");
            thread::yield_now();
        }
        waiter
    }

    /// A flow of `budget` bytes, all of them held by the credit returned with it.
    fn spent(budget: usize) -> (Arc<Flow>, Credit) {
        let flow = Flow::new(budget);
        let held = flow.admit(budget, None);
        (flow, held)
    }

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
        let (flow, held) = spent(100);
        let waiter = waiting_sender(&flow, 40, None);
        drop(held);
        assert_eq!(waiter.admitted(), 40);
    }

    #[test]
    fn a_message_larger_than_the_budget_passes_alone() {
        let flow = Flow::new(100);
        let small = flow.admit(1, None);
        let big = waiting_sender(&flow, 1000, None);
        drop(small);
        assert_eq!(big.admitted(), 1000);
    }

    #[test]
    fn a_connection_waits_at_its_in_flight_bound_while_others_pass() {
        let flow = Flow::new(1 << 20);
        let flooder: InFlight = Arc::default();
        let held: Vec<Credit> = (0..IN_FLIGHT_PER_CONNECTION)
            .map(|_| flow.admit(1, Some(&flooder)))
            .collect();
        let waiter = waiting_sender(&flow, 1, Some(&flooder));
        // Another connection is not held up by the flooder.
        let other: InFlight = Arc::default();
        drop(flow.admit(1, Some(&other)));
        drop(held);
        waiter.admitted();
        assert_eq!(flooder.count(), 0);
    }

    #[test]
    fn closing_the_flow_wakes_every_waiter() {
        let (flow, _held) = spent(10);
        let waiter = waiting_sender(&flow, 10, None);
        flow.close();
        waiter.admitted();
    }

    #[test]
    fn a_handled_message_wakes_only_the_senders_of_its_own_connection() {
        let flow = Flow::new(1 << 20);
        let slots: Vec<InFlight> = (0..20).map(|_| InFlight::default()).collect();
        // Every connection has its one message in the inbox and a sender waiting to send
        // its next.
        let mut held: Vec<Credit> = slots.iter().map(|s| flow.admit(1, Some(s))).collect();
        let waiters: Vec<Waiter> = slots.iter().map(|s| waiting_sender(&flow, 1, Some(s))).collect();
        let before = flow.wakeups.load(Ordering::Relaxed);

        // The hub handles the first connection's message.
        drop(held.remove(0));
        let mut waiters = waiters.into_iter();
        waiters.next().unwrap().admitted();

        assert_eq!(
            flow.wakeups.load(Ordering::Relaxed) - before,
            1,
            "one handled message woke the senders of other connections"
        );
        assert!(waiters.as_slice().iter().all(Waiter::is_waiting));
        drop(held);
        for waiter in waiters {
            waiter.admitted();
        }
    }

    #[test]
    fn closing_the_flow_wakes_a_sender_waiting_for_its_connections_turn() {
        let flow = Flow::new(1 << 20);
        let conn = InFlight::default();
        // Its message stays in an inbox the hub will never read again.
        let _stuck = flow.admit(1, Some(&conn));
        let waiter = waiting_sender(&flow, 1, Some(&conn));
        flow.close();
        assert_eq!(waiter.admitted(), 1, "the sender still waits");
    }
}
