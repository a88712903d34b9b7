//! A client's outbound queue: bounded in length and in bytes, without memory reserved
//! up front.
//!
//! Owns no thread. The sending half is held by the hub (for broadcasts) and by the
//! connection's [`Connection`](crate::Connection) handles (for direct sends); the
//! receiving half by the connection's writer thread while one runs, else parked in its
//! write side (see [`crate::server::writer`]).
//!
//! # Why not `crossbeam_channel::bounded`
//!
//! A bounded crossbeam channel allocates and initialises every slot when it is made: one
//! `WireFrame` (a header and a payload handle) per slot, for every connection, idle or
//! not, which for the default queue would be a large share of an idle connection's
//! memory. An unbounded (list) channel allocates its blocks of 31 slots only while
//! messages are in flight. So the queue is an unbounded channel whose
//! length we check before each push:
//! - the hub [`try_push`](OutboundTx::try_push)es: a full queue is a slow consumer, now;
//! - a handler's send [`push_timeout`](OutboundTx::push_timeout)s: it waits for room,
//!   woken by the writer through a one-slot `space` channel after each batch it writes.
//!
//! The byte bound counts each frame's header and payload while it is queued (a
//! broadcast's payload is shared by every queue holding it, but a queue keeps it alive);
//! a frame larger than the whole bound still goes to an empty queue.
//!
//! The bounds are checked, then the push made, without a lock, so concurrent senders may
//! overshoot them by one message each; there are at most a handful (the hub, the reader,
//! threads the program gave a `Connection` to), so the bound holds to within a few.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded, unbounded};

use crate::server::registry::Offer;
use crate::ws::wire::WireFrame;

/// The senders' half. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct OutboundTx {
    tx: Sender<WireFrame>,
    space: Receiver<()>,
    cap: usize,
    cap_bytes: usize,
    bytes: Arc<AtomicUsize>,
}

/// The writer's half.
#[derive(Debug)]
pub(crate) struct OutboundRx {
    /// The frames, in order. Take them with [`OutboundRx::try_take`], which keeps the
    /// byte count; waiting on it directly is fine.
    pub rx: Receiver<WireFrame>,
    space: Sender<()>,
    bytes: Arc<AtomicUsize>,
}

/// Why [`OutboundTx::push_timeout`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// Still full when the timeout passed.
    Timeout,
    /// The writer is gone.
    Closed,
}

/// A queue holding at most `cap` frames and `cap_bytes` bytes.
///
/// Made on a reader thread, whose stack must stay within two pages (see
/// `connection::writer_queues`): crossbeam builds each channel on the stack before boxing
/// it, so the frames' channel is built in a frame of its own, beside `bounded`'s rather
/// than above it.
pub(crate) fn outbound(cap: usize, cap_bytes: usize) -> (OutboundTx, OutboundRx) {
    let (tx, rx) = frames_channel();
    let (space_tx, space_rx) = bounded(1);
    let bytes = Arc::new(AtomicUsize::new(0));
    (
        OutboundTx {
            tx,
            space: space_rx,
            cap,
            cap_bytes,
            bytes: bytes.clone(),
        },
        OutboundRx {
            rx,
            space: space_tx,
            bytes,
        },
    )
}

/// The unbounded channel of an [`outbound`] queue, out of line (see there).
#[inline(never)]
fn frames_channel() -> (Sender<WireFrame>, Receiver<WireFrame>) {
    unbounded()
}

impl OutboundTx {
    /// Nothing is waiting to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Whether `frame` would take the queue past either bound.
    fn full_for(&self, frame: &WireFrame) -> bool {
        let bytes = self.bytes.load(Ordering::Acquire);
        self.tx.len() >= self.cap || (bytes > 0 && bytes.saturating_add(frame.len()) > self.cap_bytes)
    }

    fn push(&self, frame: WireFrame) -> Result<(), WireFrame> {
        let len = frame.len();
        self.bytes.fetch_add(len, Ordering::AcqRel);
        self.tx.send(frame).map_err(|e| {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            e.into_inner()
        })
    }

    /// Queues `frame` unless the queue is full. Never blocks.
    pub(crate) fn try_push(&self, frame: WireFrame) -> Offer {
        if self.full_for(&frame) {
            return Offer::Full;
        }
        match self.push(frame) {
            Ok(()) => Offer::Queued,
            Err(_) => Offer::Gone,
        }
    }

    /// Queues `frame`, waiting up to `timeout` for room.
    pub(crate) fn push_timeout(&self, frame: WireFrame, timeout: Duration) -> Result<(), PushError> {
        let deadline = Instant::now() + timeout;
        while self.full_for(&frame) {
            match self.space.recv_deadline(deadline) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => return Err(PushError::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(PushError::Closed),
            }
        }
        self.push(frame).map_err(|_| PushError::Closed)
    }
}

impl OutboundRx {
    /// Takes the next frame, if one is waiting.
    pub(crate) fn try_take(&self) -> Option<WireFrame> {
        let frame = self.rx.try_recv().ok()?;
        self.bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }

    /// Frames waiting now.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    /// Tells a waiting sender there may be room (after the writer took frames).
    pub(crate) fn made_room(&self) {
        match self.space.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn frame() -> WireFrame {
        WireFrame::from_message(tungstenite::Message::text("x")).unwrap()
    }

    #[test]
    fn try_push_refuses_past_the_bound() {
        let (tx, rx) = outbound(2, 1 << 20);
        assert_eq!(tx.try_push(frame()), Offer::Queued);
        assert_eq!(tx.try_push(frame()), Offer::Queued);
        assert_eq!(tx.try_push(frame()), Offer::Full);
        rx.try_take().unwrap();
        assert_eq!(tx.try_push(frame()), Offer::Queued);
    }

    #[test]
    fn try_push_refuses_past_the_byte_bound_but_takes_one_big_frame() {
        let big = || WireFrame::from_message(tungstenite::Message::binary(vec![0u8; 100])).unwrap();
        let (tx, rx) = outbound(100, 150);
        assert_eq!(tx.try_push(big()), Offer::Queued);
        assert_eq!(tx.try_push(big()), Offer::Full);
        rx.try_take().unwrap();
        assert_eq!(tx.try_push(big()), Offer::Queued);
        let (tx, _rx) = outbound(100, 10);
        assert_eq!(
            tx.try_push(big()),
            Offer::Queued,
            "alone, a frame over the bound goes"
        );
        assert_eq!(tx.try_push(frame()), Offer::Full);
    }

    #[test]
    fn try_push_to_a_gone_writer_is_gone() {
        let (tx, rx) = outbound(2, 1 << 20);
        drop(rx);
        assert_eq!(tx.try_push(frame()), Offer::Gone);
    }

    #[test]
    fn push_timeout_waits_for_room_made_by_the_writer() {
        let (tx, rx) = outbound(1, 1 << 20);
        tx.try_push(frame());
        let writer = thread::spawn(move || {
            rx.try_take().unwrap();
            rx.made_room();
            rx
        });
        assert_eq!(tx.push_timeout(frame(), Duration::from_secs(10)), Ok(()));
        let rx = writer.join().unwrap();
        assert_eq!(rx.len(), 1);
    }

    #[test]
    fn push_timeout_gives_up_on_a_queue_that_stays_full() {
        let (tx, _rx) = outbound(1, 1 << 20);
        tx.try_push(frame());
        assert_eq!(
            tx.push_timeout(frame(), Duration::from_millis(20)),
            Err(PushError::Timeout)
        );
    }

    #[test]
    fn push_timeout_to_a_gone_writer_is_closed() {
        let (tx, rx) = outbound(1, 1 << 20);
        tx.try_push(frame());
        drop(rx);
        assert_eq!(
            tx.push_timeout(frame(), Duration::from_secs(10)),
            Err(PushError::Closed)
        );
    }
}
