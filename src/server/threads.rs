//! The connection threads' `JoinHandle`s, and who joins each one.
//!
//! **Owns** the handle of every connection thread that is still running, and the handle of
//! at most one that has ended but is not joined yet. It is a lock, not a thread: the
//! accept thread inserts under it, each connection thread takes itself out under it as it
//! ends, and the drain takes what is left. **Ends** with the drain, which joins (or, for a
//! thread stuck in user code, gives up on) every handle it finds here.
//!
//! Why it exists: a thread that has ended keeps its stack mapped (and its guard page, a
//! second mapping) until someone joins or detaches it. A server that kept every handle
//! until the drain would hold one stack per connection it ever served; one that pruned
//! only when new connections arrived would hold the stacks of a burst that has left. Here
//! each ending thread hands its own handle to the next one that ends, and joins the one it
//! was handed: at any moment at most one ended thread is waiting to be joined, however
//! many connections came and went. A handle is never dropped unjoined, so the drain can
//! still wait for every connection thread, and count the ones it gave up on.
//!
//! Order, to close the race: the accept thread spawns and inserts while holding the lock,
//! so a thread that ends at once finds its own handle when it takes the lock at its end.
//! A thread ending after the drain took the handles finds nothing and joins nothing; the
//! drain joins it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

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
    /// The last thread to end; the next one to end joins it.
    ended: Option<JoinHandle<()>>,
    /// Set by [`ConnThreads::take_all`]: no spawn after the drain took the handles.
    closed: bool,
}

impl ConnThreads {
    fn lock(&self) -> MutexGuard<'_, Handles> {
        // Nothing panics while holding the lock; the handles stay consistent either way.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `f` on `builder`'s thread as connection thread `id` and keeps its handle.
    /// When `f` returns (or unwinds), the thread joins the thread that ended before it.
    /// Fails when the thread cannot be created, or the drain has already taken the
    /// handles; `f` is then dropped without running.
    pub(crate) fn spawn<F>(self: &Arc<Self>, id: ThreadId, builder: thread::Builder, f: F) -> io::Result<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let mut handles = self.lock();
        if handles.closed {
            return Err(io::Error::other("the server is draining"));
        }
        let me = Arc::clone(self);
        let handle = builder.spawn(move || {
            let _end = EndGuard { threads: me, id };
            f();
        })?;
        handles.running.insert(id, handle);
        Ok(())
    }

    /// Called by thread `id` as it ends: keeps its own handle for the next thread to end,
    /// and joins the previous one (outside the lock; that thread has finished its work
    /// and is at most returning from this same call).
    fn ended(&self, id: ThreadId) {
        let previous = {
            let mut handles = self.lock();
            match handles.running.remove(&id) {
                Some(me) => handles.ended.replace(me),
                None => None, // the drain has taken the handles, and joins this thread
            }
        };
        if let Some(previous) = previous {
            let _ = previous.join();
        }
    }

    /// Every handle still held, running or ended, for the drain to join; no spawn
    /// succeeds afterwards.
    pub(crate) fn take_all(&self) -> Vec<JoinHandle<()>> {
        let mut handles = self.lock();
        handles.closed = true;
        let mut all: Vec<JoinHandle<()>> = handles.running.drain().map(|(_, h)| h).collect();
        all.extend(handles.ended.take());
        all
    }

    /// Handles held now: running threads, plus at most one ended thread.
    #[cfg(test)]
    fn held(&self) -> usize {
        let handles = self.lock();
        handles.running.len() + usize::from(handles.ended.is_some())
    }
}

/// Runs [`ConnThreads::ended`] when a connection thread's work is over, also when it
/// unwinds.
struct EndGuard {
    threads: Arc<ConnThreads>,
    id: ThreadId,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.threads.ended(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, bounded};
    use std::time::{Duration, Instant};

    /// Spawns `n` threads that each wait for `go` to disconnect, then tell `done`.
    fn spawn_waiting(threads: &Arc<ConnThreads>, n: u64, go: &Receiver<()>) -> Receiver<()> {
        let (done_tx, done_rx) = bounded(n as usize);
        for id in 0..n {
            let go = go.clone();
            let done = done_tx.clone();
            threads
                .spawn(id, thread::Builder::new(), move || {
                    let _ = go.recv();
                    let _ = done.send(());
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
    fn threads_that_ended_leave_at_most_one_handle_unjoined() {
        let threads = Arc::new(ConnThreads::default());
        let (go_tx, go_rx) = bounded::<()>(0);
        let done = spawn_waiting(&threads, 200, &go_rx);
        drop(go_tx);
        for _ in 0..200 {
            done.recv().unwrap();
        }
        assert_eq!(
            wait_until_held_at_most(&threads, 1),
            1,
            "ended threads kept their handles"
        );
        assert_eq!(threads.take_all().len(), 1);
    }

    #[test]
    fn a_thread_that_panics_still_hands_its_handle_on() {
        let threads = Arc::new(ConnThreads::default());
        threads
            .spawn(1, thread::Builder::new(), || panic!("a handler bug"))
            .unwrap();
        threads.spawn(2, thread::Builder::new(), || {}).unwrap();
        assert_eq!(wait_until_held_at_most(&threads, 1), 1);
        for h in threads.take_all() {
            let _ = h.join();
        }
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
