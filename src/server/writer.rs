//! A connection's writer thread, and the write lock it shares with the hub.
//!
//! **Owns** the blocking writes to one client socket and, through [`WriteSide`], the one
//! fact that matters for them: whether a Close frame has gone out. **Woken** by its two
//! channels — the bounded data queue (broadcasts the hub could not write at once, a
//! handler's sends) and the small control channel (tungstenite's automatic Pong and Close
//! replies, a Close to send, "the reader is done") — and by nothing else: it keeps no
//! ping timer (the hub pings, see [`crate::ws::keepalive`]), so an idle connection's writer
//! sleeps until there is something to write. The one timer it arms is the wait for the
//! peer's answer after it sent a Close. **Ends** when the reader says it is done, when a
//! write fails or blocks for the write timeout, or when the peer has not answered our
//! Close within the drain timeout; it then shuts the socket down (abortively, see
//! [`cut`], unless the end was orderly), which also wakes the reader.
//!
//! # Why a writer thread, and how tungstenite's replies get here
//!
//! tungstenite has no split: one `WebSocket` both reads and writes. If the reader thread
//! also wrote, a broadcast would wait until the reader's blocking `read()` returned
//! (up to the idle timeout). If a second `WebSocket` wrote on a cloned socket, its frames
//! could interleave with the Pong and Close replies tungstenite writes from the reader.
//! So the reader's `WebSocket` runs over a stream whose `Read` is the socket and whose
//! `Write` hands each chunk to this thread as [`Ctrl::Raw`]; this thread formats every
//! other frame itself ([`WireFrame`]). Whole frames, no interleaving, and a broadcast
//! reaches an idle client at once.
//!
//! Control goes first: a Pong overtakes queued broadcasts (RFC 6455 §5.5.2: "It SHOULD
//! respond with Pong frame as soon as is practical"), except that a Close, ours or
//! tungstenite's reply to the peer's, first flushes everything already queued, so
//! neither a shutdown nor a client's Close loses a message.
//!
//! # The hub's fast path, and the write lock
//!
//! Waking a thread costs more than writing a small frame, so a broadcast that woke every
//! member's writer would spend its time on wake-ups, not writes (the benchmarks show
//! how much). So the hub (and a handler's
//! [`Connection::send`](crate::Connection::send), for an echo) may write a frame itself,
//! but only when that cannot block or reorder anything: the writer is not writing (the
//! sender *tries* the per-connection write lock, never waits for it), nothing is queued
//! ahead of the frame, data or control (a Pong waiting for the writer goes first), and the
//! socket takes the whole frame at once (a non-blocking `sendmsg`). Otherwise the frame is
//! queued as before. The writer thread takes the lock for every write it makes, and takes
//! messages off both channels only while holding it, so "both channels are empty" under
//! the lock means every earlier frame is on the wire. A frame the socket
//! took only part of is left in the lock's state for the writer, which finishes it before
//! anything else. Whoever holds the lock writes: one writer at a time, always whole
//! frames, and all blocking writes (those that can wait up to the write timeout) stay on
//! this thread.
//!
//! # Close, exactly once
//!
//! RFC 6455 §5.5.1: "After sending a Close frame, the endpoint MUST NOT send any further
//! data frames." Once a Close has gone out — ours, or tungstenite's reply to the peer's —
//! everything else queued is dropped, including a second Close.

use std::borrow::Cow;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};

use crate::server::queue::{OutboundRx, OutboundTx};
use crate::sync::{lock, try_lock};
use crate::ws::wire::{WireFrame, frames_through_close};

/// Frames gathered into one vectored write. 64 frames amortise the system call over a
/// burst while keeping the `IoSlice` array (2 per frame) on the stack.
const MAX_BATCH: usize = 64;

/// Messages the control channel holds. Control traffic is one Pong per client Ping plus
/// at most a few Close/Finish messages; 8 absorbs a burst of pings, and a client that
/// pings faster than it reads blocks its own reader instead of growing a queue. (The
/// channel's slots are allocated up front, so every slot costs each idle connection.)
pub(crate) const CTRL_QUEUE: usize = 8;

/// What the reader, the hub and handlers tell a writer besides data.
#[derive(Debug)]
pub(crate) enum Ctrl {
    /// Bytes tungstenite wrote: complete Pong or Close frames.
    Raw(Vec<u8>),
    /// Send Close with this code and reason, after everything already in the data queue,
    /// unless a Close has already gone out.
    Close {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: Cow<'static, str>,
    },
    /// The hub started a frame it could not finish without waiting: finish it.
    Resume,
    /// The reader has finished; shut the socket and end.
    Finish,
}

/// The writer's one timer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterTimers {
    /// How long to wait for the peer's Close after ours before cutting the connection.
    pub close_timeout: Duration,
}

/// How the writer ended, for the reader's last steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The reader finished and the socket's write side is shut: a clean end.
    Finished,
    /// The socket was cut: a write failed, or the peer ignored our Close.
    Cut,
}

/// The write side of one socket, shared by its writer thread and the hub. Whoever holds
/// the lock writes, so frames never interleave; the writer thread takes it for every
/// write it makes, the hub only ever tries it (see the module docs).
pub(crate) struct WriteSide {
    /// The socket (also used to shut it down).
    pub sock: Arc<TcpStream>,
    state: Mutex<WriteState>,
}

#[derive(Default)]
struct WriteState {
    /// A Close has gone out: nothing more may.
    close_sent: bool,
    /// A frame the hub started but could not finish without waiting, and how many of its
    /// bytes went out. The writer sends the rest before anything else.
    pending: Option<(WireFrame, usize)>,
}

/// What the hub's attempt to write at once came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastWrite {
    /// Written whole (or dropped, after a Close, as the writer would have).
    Done,
    /// Partly written; the writer must be woken to finish it.
    Started,
    /// Not possible now (someone is writing, frames are queued, the socket is full):
    /// queue it.
    Later,
}

/// Cuts a connection: an abortive close, for every end the server forces (a slow
/// consumer, a write that failed or timed out, a peer that ignored our Close, the drain
/// deadline). The shutdown wakes the connection's reader and writer now; `SO_LINGER` 0
/// makes the socket's last close send RST and free its unsent data at once, instead of
/// the kernel keeping it in FIN-WAIT-1 for as long as the peer keeps its end open.
pub(crate) fn cut(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
    let _ = sock.shutdown(Shutdown::Both);
}

impl WriteSide {
    pub(crate) fn new(sock: Arc<TcpStream>) -> WriteSide {
        WriteSide {
            sock,
            state: Mutex::new(WriteState::default()),
        }
    }

    /// Cuts this connection (see [`cut`]).
    pub(crate) fn cut(&self) {
        cut(&self.sock);
    }

    /// Takes the lock for a blocking write, first finishing any frame the hub started.
    fn begin(&self) -> io::Result<MutexGuard<'_, WriteState>> {
        let mut st = lock(&self.state);
        if let Some((frame, sent)) = st.pending.take() {
            write_rest(&self.sock, &frame, sent)?;
        }
        Ok(st)
    }

    /// Whether a Close has gone out, when that can be known without waiting (a writer
    /// in the middle of a write holds the lock: then `false`, and whatever the caller
    /// queues is dropped by the writer instead).
    pub(crate) fn has_sent_close(&self) -> bool {
        try_lock(&self.state).is_some_and(|st| st.close_sent)
    }

    /// The fast path, for the hub and a handler's send alike: writes `frame` now if
    /// [`WriteSide::try_write_now`] can, and hands a frame the socket took only in part
    /// to the writer ([`Ctrl::Resume`]; a full control channel means the writer is about
    /// to wake anyway, and it finishes the started frame before anything else). `false`:
    /// nothing was written, the caller queues the frame.
    pub(crate) fn write_now(&self, frame: &WireFrame, queue: &OutboundTx, ctrl: &Sender<Ctrl>) -> bool {
        match self.try_write_now(frame, queue, ctrl) {
            FastWrite::Done => true,
            FastWrite::Started => {
                let _ = ctrl.try_send(Ctrl::Resume);
                true
            }
            FastWrite::Later => false,
        }
    }

    /// Writes `frame` now if nobody is writing, nothing is queued ahead of
    /// it (data or control: a Pong the reader queued goes first), and the socket takes it
    /// without waiting. Never blocks.
    fn try_write_now(&self, frame: &WireFrame, queue: &OutboundTx, ctrl: &Sender<Ctrl>) -> FastWrite {
        if !queue.is_empty() || !ctrl.is_empty() {
            return FastWrite::Later;
        }
        let Some(mut st) = try_lock(&self.state) else {
            return FastWrite::Later;
        };
        if st.close_sent {
            return FastWrite::Done;
        }
        // Checked again under the lock: the writer takes messages off both channels only
        // while holding it, so empty channels now mean every earlier frame is on the wire.
        if st.pending.is_some() || !queue.is_empty() || !ctrl.is_empty() {
            return FastWrite::Later;
        }
        let written = match send_now(&self.sock, frame) {
            Ok(n) if n == frame.len() => FastWrite::Done,
            Ok(n) if n > 0 => {
                st.pending = Some((frame.clone(), n));
                FastWrite::Started
            }
            // Full socket, or an error the writer will meet on its next write.
            _ => return FastWrite::Later,
        };
        if frame.is_close() {
            st.close_sent = true;
        }
        written
    }
}

struct Writer {
    side: Arc<WriteSide>,
    batch: Vec<WireFrame>,
}

/// Runs the writer loop until the connection ends. See the module docs.
pub(crate) fn run(
    side: Arc<WriteSide>,
    data: OutboundRx,
    ctrl: Receiver<Ctrl>,
    timers: WriterTimers,
) -> WriterEnd {
    let mut w = Writer {
        side,
        // Grows on first use: an idle connection's writer holds no batch memory.
        batch: Vec::new(),
    };
    match w.serve(data, ctrl, timers) {
        Ok(WriterEnd::Finished) => {
            // The peer may already have closed; there is nothing to do about an error.
            let _ = w.side.sock.shutdown(Shutdown::Write);
            WriterEnd::Finished
        }
        _ => {
            w.side.cut();
            WriterEnd::Cut
        }
    }
}

impl Writer {
    fn serve(
        &mut self,
        queue: OutboundRx,
        ctrl: Receiver<Ctrl>,
        timers: WriterTimers,
    ) -> io::Result<WriterEnd> {
        let data = &queue.rx;
        // Built once: waits until a channel is ready without taking anything off it, since
        // frames leave the queue only under the write lock (see `WriteSide::try_write_now`).
        let mut ready = Select::new_biased();
        ready.recv(&ctrl);
        let data_index = ready.recv(data);
        // Its own handle, so the lock guard does not borrow `self`.
        let side = self.side.clone();
        let mut close_deadline: Option<Instant> = None;
        loop {
            {
                // Control first, then data; both taken off their channels only under the
                // write lock (see `WriteSide::try_write_now`).
                let mut st = side.begin()?;
                match ctrl.try_recv() {
                    Ok(msg) => {
                        if self.on_ctrl(msg, &mut st, &queue, &mut close_deadline, timers)? {
                            return Ok(WriterEnd::Finished);
                        }
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return Ok(WriterEnd::Finished),
                    Err(TryRecvError::Empty) => {}
                }
                if !data.is_empty() {
                    self.write_queued(MAX_BATCH, st.close_sent, &queue)?;
                    continue;
                }
            }
            let woken = match close_deadline {
                Some(deadline) => ready.ready_deadline(deadline).ok(),
                None => Some(ready.ready()),
            };
            match woken {
                // Ready but empty: every data sender is gone; serve control until Finish.
                Some(i) if i == data_index && data.is_empty() => ready.remove(data_index),
                // Control or data: the top of the loop takes it.
                Some(_) => {}
                // RFC 6455 §7.1.1: the server may close the TCP connection itself when
                // the peer does not answer our Close in time.
                None => return Ok(WriterEnd::Cut),
            }
        }
    }

    /// Handles one control message; `Ok(true)` when the writer should end.
    fn on_ctrl(
        &mut self,
        msg: Ctrl,
        st: &mut WriteState,
        data: &OutboundRx,
        close_deadline: &mut Option<Instant>,
        timers: WriterTimers,
    ) -> io::Result<bool> {
        match msg {
            Ctrl::Raw(bytes) => {
                if !st.close_sent {
                    let (upto, is_close) = frames_through_close(&bytes);
                    if is_close {
                        // tungstenite answering the peer's Close: replies already queued
                        // to the peer's earlier messages go out first.
                        self.flush_queued(data)?;
                    }
                    (&*self.side.sock).write_all(&bytes[..upto])?;
                    if is_close {
                        st.close_sent = true;
                    }
                }
            }
            Ctrl::Close { code, reason } => {
                if !st.close_sent {
                    self.flush_queued(data)?;
                    write_frames(&self.side.sock, &[WireFrame::close(code, &reason)])?;
                    st.close_sent = true;
                    *close_deadline = Some(Instant::now() + timers.close_timeout);
                }
            }
            // The caller's `begin` finished the frame the hub started.
            Ctrl::Resume => {}
            Ctrl::Finish => return Ok(true),
        }
        Ok(false)
    }

    /// Takes up to `most` queued frames off the queue and writes them, a batch per
    /// vectored write; the caller holds the write lock. After a Close (`close_sent`) they
    /// are taken and dropped instead.
    fn write_queued(&mut self, most: usize, close_sent: bool, data: &OutboundRx) -> io::Result<()> {
        let mut left = most;
        let mut written = Ok(());
        while left > 0 && written.is_ok() {
            while left > 0 && self.batch.len() < MAX_BATCH {
                let Some(f) = data.try_take() else { break };
                left -= 1;
                self.batch.push(f);
            }
            if self.batch.is_empty() {
                break;
            }
            if !close_sent {
                written = write_frames(&self.side.sock, &self.batch);
            }
            self.batch.clear();
        }
        data.made_room();
        written
    }

    /// Writes what is queued now, ahead of a Close; the caller holds the write lock. Only
    /// what is queued now: a hub still broadcasting must not keep the Close waiting forever.
    fn flush_queued(&mut self, data: &OutboundRx) -> io::Result<()> {
        self.write_queued(data.len(), false, data)
    }
}

/// Writes whole frames with vectored writes: headers and shared payloads go to the
/// kernel as they are, with no copy into a buffer of ours.
fn write_frames(sock: &TcpStream, frames: &[WireFrame]) -> io::Result<()> {
    let mut slices = [IoSlice::new(&[]); 2 * MAX_BATCH];
    for chunk in frames.chunks(MAX_BATCH) {
        let mut n = 0;
        for f in chunk {
            slices[n] = IoSlice::new(f.head());
            n += 1;
            if !f.payload().is_empty() {
                slices[n] = IoSlice::new(f.payload());
                n += 1;
            }
        }
        write_slices(sock, &mut slices[..n])?;
    }
    Ok(())
}

/// Writes the bytes of `frame` from offset `sent` on.
fn write_rest(sock: &TcpStream, frame: &WireFrame, sent: usize) -> io::Result<()> {
    let (head, payload) = (frame.head(), frame.payload());
    let mut slices = if sent < head.len() {
        [IoSlice::new(&head[sent..]), IoSlice::new(payload)]
    } else {
        [IoSlice::new(&payload[sent - head.len()..]), IoSlice::new(&[])]
    };
    write_slices(sock, &mut slices)
}

fn write_slices(sock: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while bufs.iter().any(|b| !b.is_empty()) {
        match (&*sock).write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => IoSlice::advance_slices(&mut bufs, k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One non-blocking `sendmsg(2)` of a whole frame (header and payload as two iovecs).
/// `MSG_DONTWAIT` makes this one call non-blocking without touching the socket's mode,
/// which its reader thread relies on.
fn send_now(sock: &TcpStream, frame: &WireFrame) -> io::Result<usize> {
    let iov = [IoSlice::new(frame.head()), IoSlice::new(frame.payload())];
    socket2::SockRef::from(sock).send_vectored_with_flags(&iov, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::queue::outbound;
    use crossbeam_channel::bounded;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (Arc<WriteSide>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Arc::new(WriteSide::new(Arc::new(s))), c)
    }

    fn text(t: &str) -> WireFrame {
        WireFrame::from_message(tungstenite::Message::text(t)).unwrap()
    }

    fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        client.read_exact(&mut got).unwrap();
        got
    }

    #[test]
    fn the_hub_writes_at_once_to_an_idle_connection() {
        let (side, mut client) = pair();
        let (dtx, _drx) = outbound(8, 1 << 20);
        assert_eq!(
            side.try_write_now(&text("now"), &dtx, &bounded(1).0),
            FastWrite::Done
        );
        assert_eq!(read_exactly(&mut client, 5), b"\x81\x03now");
    }

    #[test]
    fn a_close_the_hub_writes_is_the_last_frame() {
        let (side, mut client) = pair();
        let (dtx, _drx) = outbound(8, 1 << 20);
        assert_eq!(
            side.try_write_now(&WireFrame::close(1001, ""), &dtx, &bounded(1).0),
            FastWrite::Done
        );
        assert_eq!(
            side.try_write_now(&text("after"), &dtx, &bounded(1).0),
            FastWrite::Done
        );
        side.sock.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"\x88\x02\x03\xe9");
    }

    #[test]
    fn a_pong_waiting_for_the_writer_is_not_overtaken() {
        let (side, _client) = pair();
        let (dtx, _drx) = outbound(8, 1 << 20);
        let (ctx, _crx) = bounded(8);
        ctx.send(Ctrl::Raw(vec![0x8A, 0x00])).unwrap();
        assert_eq!(side.try_write_now(&text("echo"), &dtx, &ctx), FastWrite::Later);
    }

    #[test]
    fn the_hub_queues_behind_frames_already_queued() {
        let (side, _client) = pair();
        let (dtx, _drx) = outbound(8, 1 << 20);
        dtx.try_push(text("first"));
        assert_eq!(
            side.try_write_now(&text("second"), &dtx, &bounded(1).0),
            FastWrite::Later
        );
    }

    #[test]
    fn the_hub_waits_for_no_one_holding_the_write_lock() {
        let (side, _client) = pair();
        let (dtx, _drx) = outbound(8, 1 << 20);
        let held = side.begin().unwrap();
        assert_eq!(
            side.try_write_now(&text("x"), &dtx, &bounded(1).0),
            FastWrite::Later
        );
        drop(held);
    }

    #[test]
    fn nothing_goes_out_after_a_close_even_on_the_fast_path() {
        let (side, mut client) = pair();
        let (dtx, drx) = outbound(8, 1 << 20);
        let (ctx, crx) = bounded(8);
        ctx.send(Ctrl::Close {
            code: 1000,
            reason: "".into(),
        })
        .unwrap();
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(run(side.clone(), drx, crx, TIMERS), WriterEnd::Finished);
        assert_eq!(
            side.try_write_now(&text("late"), &dtx, &bounded(1).0),
            FastWrite::Done
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"\x88\x02\x03\xe8");
    }

    #[test]
    fn a_frame_the_hub_started_is_finished_before_anything_else() {
        let (side, mut client) = pair();
        let frame = text("hello");
        // As if the hub's non-blocking send had taken only the first 3 bytes.
        (&*side.sock)
            .write_all(&[frame.head(), frame.payload()].concat()[..3])
            .unwrap();
        side.state.lock().unwrap().pending = Some((frame, 3));
        let (_dtx, drx) = outbound(8, 1 << 20);
        let (ctx, crx) = bounded(8);
        ctx.send(Ctrl::Raw(vec![0x8A, 0x00])).unwrap(); // a pong from tungstenite
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(run(side, drx, crx, TIMERS), WriterEnd::Finished);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"\x81\x05hello\x8a\x00");
    }

    const TIMERS: WriterTimers = WriterTimers {
        close_timeout: Duration::from_secs(5),
    };

    #[test]
    fn drain_close_flushes_queued_data_first_and_sends_one_close() {
        let (server, mut client) = pair();
        let (dtx, drx) = outbound(8, 1 << 20);
        let (ctx, crx) = bounded(8);
        for i in 0..3u8 {
            dtx.try_push(WireFrame::from_message(tungstenite::Message::binary(vec![i])).unwrap());
        }
        ctx.send(Ctrl::Close {
            code: 1001,
            reason: "bye".into(),
        })
        .unwrap();
        // A second Close, and tungstenite's reply Close, must both be dropped.
        ctx.send(Ctrl::Close {
            code: 1000,
            reason: "".into(),
        })
        .unwrap();
        ctx.send(Ctrl::Raw(vec![0x88, 0x02, 0x03, 0xe8])).unwrap();
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(run(server, drx, crx, TIMERS), WriterEnd::Finished);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"\x82\x01\x00\x82\x01\x01\x82\x01\x02\x88\x05\x03\xe9bye");
    }

    #[test]
    fn a_close_reply_from_tungstenite_goes_out_after_queued_data() {
        let (server, mut client) = pair();
        let (dtx, drx) = outbound(8, 1 << 20);
        let (ctx, crx) = bounded(8);
        dtx.try_push(WireFrame::from_message(tungstenite::Message::text("echo")).unwrap());
        ctx.send(Ctrl::Raw(vec![0x88, 0x02, 0x03, 0xe8])).unwrap();
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(run(server, drx, crx, TIMERS), WriterEnd::Finished);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"\x81\x04echo\x88\x02\x03\xe8");
    }

    #[test]
    fn unanswered_close_is_cut_after_the_close_timeout() {
        let (server, _client) = pair();
        let (_dtx, drx) = outbound(8, 1 << 20);
        let (ctx, crx) = bounded(8);
        ctx.send(Ctrl::Close {
            code: 1001,
            reason: "".into(),
        })
        .unwrap();
        let timers = WriterTimers {
            close_timeout: Duration::from_millis(50),
        };
        assert_eq!(run(server, drx, crx, timers), WriterEnd::Cut);
    }
}
