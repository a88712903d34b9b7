//! Spare connection threads: a thread whose connection has ended waits a moment for the
//! next accepted one instead of exiting.
//!
//! **Owns** nothing but a count: the channel's one sender is the accept thread's, and
//! each waiting thread owns the connection it is handed. **Woken** by the accept thread
//! handing over an accepted socket ([`SpareSender::offer`]), or by its own timeout
//! ([`Config::spare_reader_idle`](crate::Config::spare_reader_idle)). **Ends**: a thread
//! that times out, finds [`Config::spare_readers`](crate::Config::spare_readers) threads
//! already waiting, or sees the accept thread gone (the drain: the sender is dropped,
//! which wakes every waiting thread at once) exits as before.
//!
//! Why: starting and ending an OS thread is most of what a short connection costs the
//! server (`clone3`, the kernel's task setup and teardown, Rust's signal stack mapped and
//! unmapped; see docs/benchmarks.md, churn). A thread still serves one connection at a
//! time, for that connection's whole life, and every wait has an exit: a spare thread
//! outlives its last connection by at most `spare_reader_idle`. This is the spare-thread
//! rule of thread-per-connection servers such as Apache's worker MPM (`MaxSpareThreads`).
//!
//! The hand-over is a zero-capacity channel: [`SpareSender::offer`] succeeds only when a
//! thread is waiting in [`Spares::wait`] at that moment, and never blocks; otherwise the
//! accept thread spawns a thread as it always did. A timeout racing an offer is settled
//! by the channel: the socket is either received or handed back, never lost.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::server::connection::SlotGuard;
use crate::server::registry::ConnId;

/// One accepted client, as the accept thread hands it to a connection thread.
pub(crate) struct Accepted {
    pub sock: Arc<TcpStream>,
    pub id: ConnId,
    pub slot: SlotGuard,
}

/// The waiting side, shared by every connection thread.
#[derive(Debug)]
pub(crate) struct Spares {
    rx: Receiver<Accepted>,
    /// Threads in [`Spares::wait`] now.
    waiting: AtomicUsize,
    max: usize,
    idle: Duration,
}

/// The accept thread's side. Dropping it (the accept thread ending) wakes every waiting
/// thread, which then exits.
#[derive(Debug)]
pub(crate) struct SpareSender {
    tx: Sender<Accepted>,
}

/// The two sides: at most `max` threads wait at once, each for at most `idle`.
pub(crate) fn spares(max: usize, idle: Duration) -> (SpareSender, Spares) {
    let (tx, rx) = bounded(0);
    let spares = Spares {
        rx,
        waiting: AtomicUsize::new(0),
        max,
        idle,
    };
    (SpareSender { tx }, spares)
}

impl SpareSender {
    /// Hands `job` to a waiting thread, or gives it back when none is waiting. Never
    /// blocks.
    pub(crate) fn offer(&self, job: Accepted) -> Result<(), Accepted> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(job),
        }
    }
}

impl Spares {
    /// Called by a connection thread whose connection has ended: waits for the next
    /// accepted connection; `None` means exit (timed out, enough threads waiting, or the
    /// accept thread is gone). Kept out of line: the channel's wait builds its state on
    /// the stack, and nothing of it may sit under the next connection's reads.
    #[inline(never)]
    pub(crate) fn wait(&self) -> Option<Accepted> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let next = self.rx.recv_timeout(self.idle).ok();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        next
    }

    /// Threads waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;
    use std::net::TcpListener;
    use std::thread;
    use std::time::Instant;

    fn job(id: ConnId) -> (Accepted, Receiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (alive, gone) = unbounded();
        let slot = SlotGuard {
            live: Arc::new(AtomicUsize::new(1)),
            _alive: alive,
        };
        let accepted = Accepted {
            sock: Arc::new(sock),
            id,
            slot,
        };
        (accepted, gone)
    }

    /// Waits (with a watchdog) until `n` threads are in `wait`.
    fn until_waiting(spares: &Spares, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while spares.waiting() != n {
            assert!(Instant::now() < deadline, "{} waiting, not {n}", spares.waiting());
            thread::yield_now();
        }
    }

    #[test]
    fn an_offer_with_nobody_waiting_hands_the_job_back() {
        let (tx, _spares) = spares(4, Duration::from_secs(10));
        let (j, _gone) = job(7);
        let back = tx.offer(j).expect_err("handed back");
        assert_eq!(back.id, 7);
    }

    #[test]
    fn a_waiting_thread_receives_the_offered_job() {
        let (tx, spares) = spares(4, Duration::from_secs(10));
        let spares = Arc::new(spares);
        let s = spares.clone();
        let waiter = thread::spawn(move || s.wait().map(|j| j.id));
        until_waiting(&spares, 1);
        let (j, _gone) = job(9);
        // The waiter is counted just before it blocks in the channel: retry until the
        // channel pairs the two.
        let mut j = j;
        loop {
            match tx.offer(j) {
                Ok(()) => break,
                Err(back) => j = back,
            }
            thread::yield_now();
        }
        assert_eq!(waiter.join().unwrap(), Some(9));
        assert_eq!(spares.waiting(), 0);
    }

    #[test]
    fn a_waiting_thread_gives_up_after_the_idle_time() {
        let (_tx, spares) = spares(4, Duration::from_millis(50));
        let start = Instant::now();
        assert!(spares.wait().is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(spares.waiting(), 0);
    }

    #[test]
    fn no_more_than_max_threads_wait() {
        let (_tx, spares) = spares(2, Duration::from_secs(30));
        let spares = Arc::new(spares);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let s = spares.clone();
                thread::spawn(move || s.wait().is_none())
            })
            .collect();
        until_waiting(&spares, 2);
        let start = Instant::now();
        assert!(spares.wait().is_none(), "a third thread must not wait");
        assert!(start.elapsed() < Duration::from_secs(5), "it returned at once");
        drop(_tx); // wakes the two
        for w in waiters {
            assert!(w.join().unwrap());
        }
    }

    #[test]
    fn dropping_the_sender_wakes_every_waiting_thread_at_once() {
        let (tx, spares) = spares(8, Duration::from_secs(30));
        let spares = Arc::new(spares);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = spares.clone();
                thread::spawn(move || s.wait().is_none())
            })
            .collect();
        until_waiting(&spares, 3);
        let start = Instant::now();
        drop(tx);
        for w in waiters {
            assert!(w.join().unwrap());
        }
        // And a thread whose connection ends later does not wait at all.
        assert!(spares.wait().is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn zero_spares_means_no_thread_waits() {
        let (_tx, spares) = spares(0, Duration::from_secs(30));
        let start = Instant::now();
        assert!(spares.wait().is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
