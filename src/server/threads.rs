//! The connection threads' `JoinHandle`s, and who joins each one.
//!
//! **Owns** the handle of every connection thread that is still running, and the handles of
//! the last few ([`UNJOINED`]) that have ended but are not joined yet. It is a lock, not a
//! thread: the accept thread inserts under it, each connection thread takes itself out
//! under it as it ends, and the drain takes what is left. **Ends** with the drain, which
//! joins (or, for a thread stuck in user code, gives up on) every handle it finds here.
//!
//! Why it exists: a thread that has ended keeps its stack mapped (and its guard page, a
//! second mapping) until someone joins or detaches it. A server that kept every handle
//! until the drain would hold one stack per connection it ever served; one that pruned only
//! when new connections arrived would hold the stacks of a burst that has left. Here each
//! ending thread puts its own handle at the back of a short queue and joins the one at its
//! front, which ended [`UNJOINED`] threads earlier: at any moment at most that many ended
//! threads wait to be joined, however many connections came and went. Why not the thread
//! that ended just before: that one may still be on its way out (dropping its last values,
//! glibc's exit), and joining it would put the ending thread to sleep until the scheduler
//! has run it, a context switch per connection; the one at the front has had the time of
//! several connections to go. A handle is never dropped unjoined, so the drain can still
//! wait for every connection thread, and count the ones it gave up on.
//!
//! The race between a spawn and its end: the accept thread inserts a new thread's handle
//! after the spawn (not holding the lock across it, which would make ending threads wait
//! for a system call), so a thread may end before its handle is there. It then leaves its
//! id in `early`, and the accept thread, finding it there, queues the handle as ended. A
//! thread ending after the drain took the handles finds nothing and joins nothing; the
//! drain joins it. The drain takes the handles only after the accept thread has ended, so
//! no spawn comes after.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

/// Ended connection threads left unjoined at most: each ending thread joins the one that
/// ended this many threads before it.
pub(crate) const UNJOINED: usize = 4;

/// Identifies one connection thread; the accept thread's connection id.
pub(crate) type ThreadId = u64;

/// The handles, under one lock. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct ConnThreads {
    inner: Mutex<Handles>,
}

#[derive(Debug, Default)]
struct Handles {
    /// Threads not yet at their end.
    running: HashMap<ThreadId, JoinHandle<()>>,
    /// The last threads to end, oldest first; at most [`UNJOINED`] once their enders
    /// have joined the excess.
    ended: VecDeque<JoinHandle<()>>,
    /// Threads that ended before the accept thread had inserted their handle.
    early: HashSet<ThreadId>,
    /// Set by [`ConnThreads::take_all`]: no spawn after the drain took the handles.
    closed: bool,
}

impl ConnThreads {
    fn lock(&self) -> MutexGuard<'_, Handles> {
        // Nothing panics while holding the lock; the handles stay consistent either way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `f` on `builder`'s thread as connection thread `id` and keeps its handle
    /// (called by one thread only, the accept thread). `f` calls [`ConnThreads::ended`]
    /// with `id` as the last thing it does: a plain call at its end, not a guard or a
    /// wrapper, whose frame would sit under every read of a reader, whose stack must stay
    /// within two pages. Fails when the thread cannot be created, or the drain has already
    /// taken the handles; `f` is then dropped without running.
    pub(crate) fn spawn<F>(&self, id: ThreadId, builder: thread::Builder, f: F) -> io::Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        if self.lock().closed {
            return Err(io::Error::other("the server is draining"));
        }
        let handle = builder.spawn(f)?;
        let mut handles = self.lock();
        if handles.early.remove(&id) {
            handles.ended.push_back(handle); // joined by a later ender, or the drain
        } else {
            handles.running.insert(id, handle);
        }
        Ok(())
    }

    /// Called by thread `id` as the last thing it does: queues its own handle, and joins
    /// the oldest ended thread when more than [`UNJOINED`] are queued (outside the lock;
    /// that thread has finished its work, and has almost always exited by now). A thread
    /// that never calls it (it panicked) keeps its handle here until the drain joins it.
    pub(crate) fn ended(&self, id: ThreadId) {
        let mut oldest = Vec::new();
        {
            let mut handles = self.lock();
            match handles.running.remove(&id) {
                Some(me) => handles.ended.push_back(me),
                // Not inserted yet: the accept thread queues it when it is.
                None if !handles.closed => {
                    handles.early.insert(id);
                }
                None => {} // the drain has taken the handles, and joins this thread
            }
            while handles.ended.len() > UNJOINED {
                oldest.extend(handles.ended.pop_front());
            }
        }
        for thread in oldest {
            let _ = thread.join();
        }
    }

    /// Every handle still held, running or ended, for the drain to join; no spawn
    /// succeeds afterwards.
    pub(crate) fn take_all(&self) -> Vec<JoinHandle<()>> {
        let mut handles = self.lock();
        handles.closed = true;
        let mut all: Vec<JoinHandle<()>> = handles.running.drain().map(|(_, h)| h).collect();
        all.extend(handles.ended.drain(..));
        all
    }

    /// Handles held now: running threads, plus at most [`UNJOINED`] ended ones.
    #[cfg(test)]
    fn held(&self) -> usize {
        let handles = self.lock();
        handles.running.len() + handles.ended.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, bounded};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Spawns `n` threads that each wait for `go` to disconnect, then tell `done`.
    fn spawn_waiting(threads: &Arc<ConnThreads>, n: u64, go: &Receiver<()>) -> Receiver<()> {
        let (done_tx, done_rx) = bounded(n as usize);
        for id in 0..n {
            let go = go.clone();
            let done = done_tx.clone();
            let t = threads.clone();
            threads
                .spawn(id, thread::Builder::new(), move || {
                    let _ = go.recv();
                    let _ = done.send(());
                    t.ended(id);
                })
                .unwrap();
        }
        done_rx
    }

    /// Waits until `held()` is at most `n`; the last thread's `ended` runs just after
    /// its closure, so there is no message to wait on.
    fn wait_until_held_at_most(threads: &ConnThreads, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held = threads.held();
            if held <= n || Instant::now() > deadline {
                return held;
            }
            thread::yield_now();
        }
    }

    #[test]
    fn every_running_thread_is_held() {
        let threads = Arc::new(ConnThreads::default());
        let (go_tx, go_rx) = bounded::<()>(0);
        let done = spawn_waiting(&threads, 50, &go_rx);
        assert_eq!(threads.held(), 50);
        drop(go_tx);
        for _ in 0..50 {
            done.recv().unwrap();
        }
    }

    #[test]
    fn threads_that_ended_leave_at_most_a_few_handles_unjoined() {
        let threads = Arc::new(ConnThreads::default());
        let (go_tx, go_rx) = bounded::<()>(0);
        let done = spawn_waiting(&threads, 200, &go_rx);
        drop(go_tx);
        for _ in 0..200 {
            done.recv().unwrap();
        }
        assert_eq!(
            wait_until_held_at_most(&threads, UNJOINED),
            UNJOINED,
            "ended threads kept their handles"
        );
        assert_eq!(threads.take_all().len(), UNJOINED);
    }

    #[test]
    fn a_thread_that_panics_before_its_end_is_left_for_the_drain_to_join() {
        let threads = Arc::new(ConnThreads::default());
        threads
            .spawn(1, thread::Builder::new(), || panic!("a bug"))
            .unwrap();
        let t = threads.clone();
        threads
            .spawn(2, thread::Builder::new(), move || t.ended(2))
            .unwrap();
        // Thread 2's handle waits for the next thread to end; thread 1's for the drain.
        assert_eq!(wait_until_held_at_most(&threads, 2), 2);
        let taken = threads.take_all();
        assert_eq!(taken.len(), 2);
        let panicked = taken
            .into_iter()
            .map(|h| h.join().is_err())
            .filter(|p| *p)
            .count();
        assert_eq!(panicked, 1, "the drain joins the thread that panicked");
    }

    #[test]
    fn the_drain_takes_running_threads_and_joins_them_itself() {
        let threads = Arc::new(ConnThreads::default());
        let (go_tx, go_rx) = bounded::<()>(0);
        let done = spawn_waiting(&threads, 10, &go_rx);
        let taken = threads.take_all();
        assert_eq!(taken.len(), 10);
        assert_eq!(threads.held(), 0);
        drop(go_tx);
        for h in taken {
            h.join().unwrap();
        }
        assert_eq!(done.len(), 10);
        assert_eq!(
            threads.held(),
            0,
            "a thread ending after the drain kept its handle"
        );
    }

    #[test]
    fn a_thread_that_ends_before_its_handle_is_in_is_queued_as_ended() {
        let threads = ConnThreads::default();
        threads.ended(7); // thread 7's end, before the accept thread inserted its handle
        let (ran_tx, ran_rx) = bounded(1);
        threads
            .spawn(7, thread::Builder::new(), move || ran_tx.send(()).unwrap())
            .unwrap();
        ran_rx.recv().unwrap();
        {
            let handles = threads.lock();
            assert!(handles.running.is_empty(), "an ended thread was filed as running");
            assert_eq!(handles.ended.len(), 1);
            assert!(handles.early.is_empty());
        }
        for h in threads.take_all() {
            h.join().unwrap();
        }
    }

    #[test]
    fn no_spawn_after_the_drain_took_the_handles() {
        let threads = Arc::new(ConnThreads::default());
        threads.take_all();
        let ran = Arc::new(Mutex::new(false));
        let r = ran.clone();
        let spawned = threads.spawn(1, thread::Builder::new(), move || *r.lock().unwrap() = true);
        assert!(spawned.is_err());
        assert!(!*ran.lock().unwrap());
    }
}
