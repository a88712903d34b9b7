//! Spare connection threads: a thread whose connection has ended waits a moment for the
//! next accepted one instead of exiting.
//!
//! **Owns** the list of waiting threads, under a lock that the accept thread and the
//! waiting threads each hold for a push or a pop; each waiting thread owns the connection
//! it is handed. **Woken** by the accept thread
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
//! The hand-over: each waiting thread puts the sending end of a one-slot channel of its
//! own on the list; [`SpareSender::offer`] pops the thread that began waiting last (its
//! stack and caches are the warmest; the ones waiting longest time out first, so the
//! spares shrink to what the traffic needs) and sends into its channel, which never
//! blocks; with nobody on the list, the accept thread spawns a thread as it always did.
//! The job is in the channel before the thread wakes. (Not a zero-capacity channel: it
//! wakes the receiver before the sender has written the job, and on a busy core the woken
//! thread then yields, over and over, until the accept thread runs again, while the next
//! accepts wait behind it; docs/benchmarks.md has the handshake latencies of both.) A
//! timeout racing an offer is settled under the lock: a thread that finds itself still
//! on the list takes itself off and exits, one that does not receives the job that is
//! on its way. Nothing is lost either way.

use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

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
    board: Arc<Board>,
    max: usize,
    idle: Duration,
}

/// The accept thread's side. Dropping it (the accept thread ending) sends every waiting
/// thread away, and no thread waits after it.
#[derive(Debug)]
pub(crate) struct SpareSender {
    board: Arc<Board>,
}

/// The threads waiting now, under one lock.
#[derive(Debug, Default)]
struct Board(Mutex<Waiting>);

#[derive(Debug, Default)]
struct Waiting {
    /// Each waiting thread by its ticket and the sending end of its own one-slot
    /// channel, the latest last.
    threads: Vec<(u64, Sender<Accepted>)>,
    /// The next thread's ticket.
    next_ticket: u64,
    /// The accept thread has gone.
    closed: bool,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding the lock; the list stays consistent either way.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The two sides: at most `max` threads wait at once, each for at most `idle`.
pub(crate) fn spares(max: usize, idle: Duration) -> (SpareSender, Spares) {
    let board = Arc::new(Board::default());
    let spares = Spares {
        board: board.clone(),
        max,
        idle,
    };
    (SpareSender { board }, spares)
}

impl SpareSender {
    /// Hands `job` to the thread that began waiting last, or gives it back when none is
    /// waiting. Never blocks: the job goes into that thread's own one-slot channel, which
    /// nothing else sends on, before the thread is woken, so a thread that runs at once
    /// finds it there and the accept thread is never left holding a hand-over half done.
    pub(crate) fn offer(&self, job: Accepted) -> Result<(), Accepted> {
        let Some((_, thread)) = self.board.lock().threads.pop() else {
            return Err(job);
        };
        // Cannot fail: a waiting thread keeps its receiver until it has received, or has
        // taken itself off the list (then it was not there to pop).
        thread.send(job).map_err(|e| e.into_inner())
    }
}

impl Drop for SpareSender {
    fn drop(&mut self) {
        let mut waiting = self.board.lock();
        waiting.closed = true;
        // Dropping their senders wakes every waiting thread, which then exits.
        waiting.threads.clear();
    }
}

impl Spares {
    /// Called by a connection thread whose connection has ended: waits for the next
    /// accepted connection; `None` means exit (timed out, enough threads waiting, or the
    /// accept thread is gone). Kept out of line: nothing of the wait may sit under the
    /// next connection's reads.
    #[inline(never)]
    pub(crate) fn wait(&self) -> Option<Accepted> {
        let (ticket, rx) = {
            let mut waiting = self.board.lock();
            // Checked first: a thread ending during the drain, or past the cap, makes no
            // channel.
            if waiting.closed || waiting.threads.len() >= self.max {
                return None;
            }
            let (tx, rx) = bounded(1);
            let ticket = waiting.next_ticket;
            waiting.next_ticket += 1;
            waiting.threads.push((ticket, tx));
            (ticket, rx)
        };
        match rx.recv_timeout(self.idle) {
            Ok(job) => Some(job),
            // The accept thread has gone (the drain).
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let mut waiting = self.board.lock();
                if let Some(at) = waiting.threads.iter().position(|(t, _)| *t == ticket) {
                    waiting.threads.remove(at);
                    return None;
                }
                drop(waiting);
                // The accept thread took this thread off the list just now: its send is
                // under way and cannot block, or it has gone and the channel disconnects.
                rx.recv_timeout(self.idle).ok()
            }
        }
    }

    /// Threads waiting now.
    pub(crate) fn waiting(&self) -> usize {
        self.board.lock().threads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, unbounded};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

    /// A thread in `wait`, returning the id of the job it was handed, if any.
    fn waiter(spares: &Arc<Spares>) -> thread::JoinHandle<Option<ConnId>> {
        let s = spares.clone();
        thread::spawn(move || s.wait().map(|j| j.id))
    }

    /// `n` threads in `wait`, each returning whether it was sent away (no job).
    fn waiters(spares: &Arc<Spares>, n: usize) -> Vec<thread::JoinHandle<bool>> {
        (0..n)
            .map(|_| {
                let s = spares.clone();
                thread::spawn(move || s.wait().is_none())
            })
            .collect()
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
        let one = waiter(&spares);
        until_waiting(&spares, 1);
        let (j, _gone) = job(9);
        // On the list means ready: the job waits in its channel if it has not blocked yet.
        assert!(tx.offer(j).is_ok());
        assert_eq!(one.join().unwrap(), Some(9));
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
        let (tx, spares) = spares(2, Duration::from_secs(30));
        let spares = Arc::new(spares);
        let two = waiters(&spares, 2);
        until_waiting(&spares, 2);
        let start = Instant::now();
        assert!(spares.wait().is_none(), "a third thread must not wait");
        assert!(start.elapsed() < Duration::from_secs(5), "it returned at once");
        drop(tx); // wakes the two
        for w in two {
            assert!(w.join().unwrap());
        }
    }

    #[test]
    fn dropping_the_sender_wakes_every_waiting_thread_at_once() {
        let (tx, spares) = spares(8, Duration::from_secs(30));
        let spares = Arc::new(spares);
        let three = waiters(&spares, 3);
        until_waiting(&spares, 3);
        let start = Instant::now();
        drop(tx);
        for w in three {
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

    #[test]
    fn the_thread_that_began_waiting_last_is_handed_the_job() {
        let (tx, spares) = spares(4, Duration::from_secs(30));
        let spares = Arc::new(spares);
        let first = waiter(&spares);
        until_waiting(&spares, 1);
        let second = waiter(&spares);
        until_waiting(&spares, 2);
        let (j, _gone) = job(1);
        assert!(tx.offer(j).is_ok());
        assert_eq!(second.join().unwrap(), Some(1));
        assert_eq!(spares.waiting(), 1);
        drop(tx);
        assert_eq!(first.join().unwrap(), None);
    }

    #[test]
    fn offers_racing_timeouts_lose_no_job() {
        // Waits of a millisecond, so that offers keep meeting threads as they time out:
        // every job the offer kept must reach a thread, and every other come back.
        let (tx, spares) = spares(8, Duration::from_millis(1));
        let spares = Arc::new(spares);
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (s, received, stop) = (spares.clone(), received.clone(), stop.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        if s.wait().is_some() {
                            received.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                })
            })
            .collect();
        let mut kept = 0;
        for id in 0..2000 {
            let (j, _gone) = job(id);
            if tx.offer(j).is_ok() {
                kept += 1;
            }
        }
        stop.store(true, Ordering::Release);
        drop(tx); // wakes any thread still waiting
        for w in waiters {
            w.join().unwrap();
        }
        assert!(kept > 0, "no offer met a waiting thread");
        assert_eq!(received.load(Ordering::Acquire), kept);
    }

    #[test]
    fn a_thread_taken_off_the_list_as_it_times_out_still_receives_its_job() {
        let (_tx, spares) = spares(4, Duration::from_millis(300));
        let spares = Arc::new(spares);
        let one = waiter(&spares);
        until_waiting(&spares, 1);
        // What `offer` does, split in two: take the thread off the list now...
        let (_, thread) = spares.board.lock().threads.pop().unwrap();
        // ...and send only after the thread's wait has timed out (300 ms), within the
        // second wait it then owes the job.
        thread::sleep(Duration::from_millis(450));
        let (j, _gone) = job(5);
        assert!(thread.send(j).is_ok(), "the thread gave up on its job");
        assert_eq!(one.join().unwrap(), Some(5));
    }
}
