//! The accept thread, and the overflow thread that turns away clients past the limit.
//!
//! **Owns** the `TcpListener` and the next connection id; it spawns each connection
//! thread through [`ConnThreads`](crate::server::threads::ConnThreads), which keeps the
//! thread's `JoinHandle` until it is joined (by a connection thread that ends later, or
//! by the drain). **Woken** by the kernel when a client connects: a blocking `accept()`,
//! no polling, so an idle server uses no CPU and a client is accepted at once. **Ends** when the drain sets the stop flag and connects to the
//! listener itself to wake `accept()` (tiny_http's `unblock()`); dropping the listener
//! then refuses new connections.
//!
//! Each accepted client gets its own reader thread ([`crate::server::connection`]) at once, so
//! a slow handshake never delays the next `accept()`: a spare one if one is waiting
//! ([`crate::server::spare`]), else a new one. Past `max_connections` a client
//! gets its `503` at once, from the accept thread, without waiting for its request (one
//! non-blocking send: the answer fits in a fresh socket's buffer); the single overflow
//! thread then keeps the socket open for a moment, reading what the client sends, so
//! closing it does not turn into a reset that could destroy the `503` before the client
//! reads it. A flood costs one thread, not one per client, and never delays an answer.
//!
//! Errors from `accept()` never end the thread. A connection aborted before we took it
//! is skipped; running out of file descriptors (EMFILE, ENFILE) or memory is logged and
//! backed off (10 ms, doubling to 1 s), since retrying at once would spin a core while
//! nothing can change; the wait is on a channel so shutdown still interrupts it.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, warn};

use crate::server::connection::{self, Shared, SlotGuard};
use crate::server::hub::HubMsg;
use crate::server::spare::{Accepted, SpareSender};
use crate::ws::handshake::{StatusCode, http_response};

/// Refused clients (already answered) whose socket the overflow thread keeps open at
/// once. Past that many, a refused socket is closed right after its `503`: a client that
/// had sent its request by then may see a reset instead of the answer.
pub(crate) const OVERFLOW_QUEUE: usize = 64;

/// How long a refused client's socket stays open after its `503`, counted from its
/// accept: time for its request to arrive and be read, and for its FIN, so that the
/// close is orderly. Deadlines run from each accept, so a burst of silent sockets holds
/// the overflow thread for this long in all, not this long each.
const REFUSED_LINGER: Duration = Duration::from_millis(100);

/// First and largest pause after an `accept()` error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Everything the accept thread owns.
pub(crate) struct Acceptor {
    pub listener: TcpListener,
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
    /// Never sent on; disconnected by the drain to cut an error back-off short.
    pub wake: Receiver<()>,
    pub live: Arc<AtomicUsize>,
    pub alive: Sender<()>,
    /// Refused sockets, answered already, and when to close each.
    pub overflow: Sender<(TcpStream, Instant)>,
    /// Hands accepted sockets to spare connection threads; dropped when this thread
    /// ends, which sends the spares away.
    pub spare: SpareSender,
}

/// What one `accept()` error calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// This one connection failed (aborted, interrupted): accept the next at once.
    Skip,
    /// The process or system is short of something (descriptors, memory): back off.
    BackOff,
}

/// Classifies an `accept()` error. I/O-free.
pub(crate) fn classify_accept_error(e: &io::Error) -> AcceptError {
    match e.kind() {
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted
        | io::ErrorKind::WouldBlock => AcceptError::Skip,
        _ => AcceptError::BackOff,
    }
}

impl Acceptor {
    /// Runs the accept loop until stopped.
    pub(crate) fn run(self) {
        let mut next_id: u64 = 0;
        let mut backoff = ACCEPT_BACKOFF_MIN;
        let config = &self.shared.config;
        let refusal = http_response(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
        while !self.stop.load(Ordering::Acquire) {
            let sock = match self.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) => {
                    match classify_accept_error(&e) {
                        AcceptError::Skip => debug!("accept failed: {e}; skipped"),
                        AcceptError::BackOff => {
                            warn!("accept failed: {e}; retrying in {backoff:?}");
                            // Returns at once when the drain disconnects `wake`.
                            let _ = self.wake.recv_timeout(backoff);
                            backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        }
                    }
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF_MIN;
            if self.stop.load(Ordering::Acquire) {
                break; // the drain's wake-up connection, or a client just too late
            }
            self.shared.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            if self.live.load(Ordering::Acquire) >= config.max_connections {
                self.shared
                    .metrics
                    .rejected(StatusCode::SERVICE_UNAVAILABLE.as_u16());
                refuse(sock, &refusal, &self.overflow);
                continue;
            }
            self.live.fetch_add(1, Ordering::AcqRel);
            let slot = SlotGuard {
                live: self.live.clone(),
                _alive: self.alive.clone(),
            };
            next_id += 1;
            let id = next_id;
            let sock = Arc::new(sock);
            // The hub learns of the socket now, so a drain can cut it even while its
            // handshake is still under way.
            let _ = self.shared.hub.send(HubMsg::Accepted {
                id,
                sock: sock.clone(),
            });
            // A spare thread if one is waiting, else a new one.
            let job = match self.spare.offer(Accepted { sock, id, slot }) {
                Ok(()) => {
                    self.shared.metrics.reader_reuses.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(job) => job,
            };
            let shared = self.shared.clone();
            let builder = thread::Builder::new()
                .name("wshub-reader".into())
                .stack_size(config.thread_stack_size);
            let spawned = self
                .shared
                .threads
                .spawn(id, builder, move || connection::run(job, shared));
            if let Err(e) = spawned {
                // The closure (socket and slot) is dropped: the client sees the close.
                warn!("cannot spawn a connection thread: {e}");
                let _ = self.shared.hub.send(HubMsg::Unregister(id));
            }
        }
    }
}

/// Answers a client past the limit with `response` (a `503`) now, without waiting for
/// its request, and hands the socket to the overflow thread for an orderly close.
fn refuse(sock: TcpStream, response: &[u8], overflow: &Sender<(TcpStream, Instant)>) {
    // Non-blocking: a fresh socket's send buffer takes the whole answer, and the accept
    // thread must never wait on a client.
    let _ = socket2::SockRef::from(&sock).send_with_flags(response, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
    let _ = sock.shutdown(Shutdown::Write);
    if let Err(TrySendError::Full(_)) = overflow.try_send((sock, Instant::now() + REFUSED_LINGER)) {
        debug!("overflow queue full: closing a refused connection at once");
    }
}

/// Runs the overflow thread: keeps each refused socket open until its client closes or
/// its deadline passes, reading and discarding what it sends. Ends when the accept thread
/// (the only sender) is gone; by then no deadline is more than [`REFUSED_LINGER`] away.
pub(crate) fn run_overflow(rx: Receiver<(TcpStream, Instant)>) {
    for (sock, deadline) in rx {
        let _ = connection::linger_until(&sock, deadline);
    }
}

/// Wakes a thread blocked in `accept()` on `addr` by connecting to it, retrying until
/// `accept_thread` has finished or `deadline` passes. Returns whether it finished.
pub(crate) fn unblock(addr: SocketAddr, accept_thread: &JoinHandle<()>, deadline: Instant) -> bool {
    let target = match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    };
    let pause = crossbeam_channel::never::<()>();
    while !accept_thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        // The connection itself is dropped at once; the accept thread sees the stop flag.
        let _ = TcpStream::connect_timeout(&target, Duration::from_millis(200));
        let _ = pause.recv_timeout(Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborted_connections_are_skipped() {
        let e = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(classify_accept_error(&e), AcceptError::Skip);
    }

    #[test]
    fn descriptor_exhaustion_backs_off() {
        let emfile = io::Error::from_raw_os_error(24);
        assert_eq!(classify_accept_error(&emfile), AcceptError::BackOff);
        let enfile = io::Error::from_raw_os_error(23);
        assert_eq!(classify_accept_error(&enfile), AcceptError::BackOff);
    }
}
