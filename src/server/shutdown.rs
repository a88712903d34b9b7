//! Drain-then-exit: the shutdown sequence, and the handle that starts it.
//!
//! **Owns** the server's thread handles once shutdown begins. It runs on the thread
//! that calls [`Server::wait`](crate::Server::wait) or
//! [`Server::shutdown`](crate::Server::shutdown) (in `wshub serve`, the main thread,
//! woken by the ctrlc handler through a [`ShutdownHandle`]). **Ends** when every thread
//! the server started has been joined, or, for connection threads stuck in user code,
//! given up on after a bounded wait.
//!
//! The steps, in order:
//! 1. **Stop accepting.** Set the stop flag, wake `accept()` by connecting to ourselves,
//!    join the accept thread; the listener is dropped, so new connections are refused.
//! 2. **Close everyone, after what is queued.** The hub sends each writer a Close 1001
//!    that first flushes that client's queue. Broadcasts sent before shutdown began are
//!    ahead of it in the hub's inbox, so no queued message is lost.
//! 3. **Wait for the close handshakes**, up to the drain timeout. A connection ends when
//!    its client answers the Close (or its writer gives up on it).
//! 4. **Cut the rest.** Past the deadline the hub shuts down every remaining socket,
//!    which wakes any blocked read or write at once.
//! 5. **Join** every connection thread, then stop and join the hub, then the overflow
//!    thread (whose refused sockets have had their `503` already, so nothing waited on it).
//!    Before the process exits ([`Server::wait_before_exit`](crate::Server::wait_before_exit),
//!    as `wshub serve` does), connection threads whose connections have all ended are not
//!    joined: the exit hands their stacks back at once, rather than one system call each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use log::{debug, warn};

use crate::server::accept;
use crate::server::hub::{DrainTally, Hub, HubMsg};
use crate::server::threads::ConnThreads;

/// After the cut, how long beyond the handshake timeout to wait for connection threads
/// before giving up on them (only a handler stuck in user code can take that long).
const AFTER_CUT_GRACE: Duration = Duration::from_secs(2);

/// Starts a server's shutdown from any thread (or a signal handler's thread).
/// Cheap to clone; triggering twice is harmless.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Sender<()>,
}

impl ShutdownHandle {
    pub(crate) fn new(tx: Sender<()>) -> ShutdownHandle {
        ShutdownHandle { tx }
    }

    /// Asks the server to drain and stop. Returns at once; the thread in
    /// [`Server::wait`](crate::Server::wait) does the work.
    pub fn shutdown(&self) {
        match self.tx.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections open when the drain began; each was sent Close 1001.
    pub connections: usize,
    /// Connections that ended before the drain deadline: the client answered the Close
    /// 1001 or went away. Counts the ones that registered during the drain too (they
    /// are sent Close 1001 as well), so it can exceed `connections`.
    pub closed: usize,
    /// Connections still open at the drain deadline, and cut (no close handshake):
    /// upgraded ones that never answered the Close 1001, and ones still in their HTTP
    /// handshake.
    pub cut: usize,
    /// Connection threads still running when the drain gave up on them (a handler stuck
    /// in user code); 0 in every normal shutdown.
    pub abandoned_threads: usize,
    /// From the start of the drain until every thread was joined (before an exit: until
    /// every connection had ended, and the hub's thread was joined).
    pub elapsed: Duration,
}

/// The running server's threads and channels, handed to [`drain`].
pub(crate) struct Running {
    pub local_addr: SocketAddr,
    pub stop: Arc<AtomicBool>,
    pub wake: Sender<()>,
    pub accept: JoinHandle<()>,
    /// The connection threads' handles; the drain takes them once accepting has stopped.
    pub threads: Arc<ConnThreads>,
    pub overflow: JoinHandle<()>,
    pub hub: Hub,
    pub hub_thread: JoinHandle<DrainTally>,
    pub alive: Receiver<()>,
    pub drain_timeout: Duration,
    pub handshake_timeout: Duration,
}

/// What the drain does with a connection thread once its connection has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndedThreads {
    /// Join it: its stack is handed back before the drain returns.
    Join,
    /// Leave it to the process's exit, which comes right after the drain returns.
    LeaveToExit,
}

/// Runs the shutdown sequence. See the module docs.
pub(crate) fn drain(r: Running, ended: EndedThreads) -> DrainReport {
    let start = Instant::now();
    let deadline = start + r.drain_timeout;

    // 1. Stop accepting.
    r.stop.store(true, Ordering::Release);
    drop(r.wake);
    if accept::unblock(r.local_addr, &r.accept, deadline) {
        let _ = r.accept.join();
    } else {
        warn!("the accept thread did not wake up before the drain deadline");
    }
    // Threads that ended before this were joined as later ones ended, all but the last
    // few; from here on, no thread is spawned and every handle left is the drain's to join.
    let handles = r.threads.take_all();

    // 2. Close 1001 to every connection, after what is queued for it.
    let (reply_tx, reply_rx) = bounded(1);
    let connections = match r.hub.send(HubMsg::Drain(reply_tx)) {
        Ok(()) => reply_rx.recv().unwrap_or(0),
        Err(_) => 0,
    };
    debug!("draining {connections} connections");

    // 3. Wait for the close handshakes. Nobody sends on `alive`: it disconnects when the
    // last connection thread drops its slot.
    let mut all_done = matches!(
        r.alive.recv_deadline(deadline),
        Err(RecvTimeoutError::Disconnected)
    );

    // 4. Cut the rest, and wait for their threads to notice.
    if !all_done {
        let _ = r.hub.send(HubMsg::Cut);
        let grace = Instant::now() + r.handshake_timeout + AFTER_CUT_GRACE;
        all_done = matches!(r.alive.recv_deadline(grace), Err(RecvTimeoutError::Disconnected));
    }

    debug!("connections ended after {:.2?}", start.elapsed());

    // 5. Join. Before an exit, threads whose connections have all ended are left to it:
    // each has done its work (a connection's slot goes after its `on_close`), and what
    // joining would add is handing its stack back, one `munmap` per thread, where the
    // exit unmaps every stack at once. Forgotten, not dropped: dropping a handle detaches
    // its thread, which hands the stack back just the same.
    let mut abandoned_threads = 0;
    if all_done && ended == EndedThreads::LeaveToExit {
        std::mem::forget(handles);
    } else {
        for h in handles {
            if all_done || h.is_finished() {
                let _ = h.join();
            } else {
                abandoned_threads += 1;
            }
        }
    }
    if abandoned_threads > 0 {
        warn!("{abandoned_threads} connection threads did not end; not waiting for them");
    }
    let _ = r.hub.send(HubMsg::Stop);
    let tally = r.hub_thread.join().unwrap_or_default();
    // The overflow thread ends once the accept thread, its only sender, is gone, and the
    // last refused socket's short linger is over; it answers nobody, so nothing above
    // waited for it.
    let _ = r.overflow.join();
    debug!("every thread joined after {:.2?}", start.elapsed());
    DrainReport {
        connections,
        closed: tally.going_away.saturating_sub(tally.cut_open),
        cut: tally.cut_open + tally.cut_handshaking,
        abandoned_threads,
        elapsed: start.elapsed(),
    }
}
