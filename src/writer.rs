//! A connection's writer thread: the only thread that ever writes to its socket.
//!
//! **Owns** the write side of one client socket and the one fact that matters for it:
//! whether a Close frame has gone out. **Woken** by its two channels — the bounded data
//! queue (broadcasts, a handler's sends) and the small control channel (tungstenite's
//! automatic Pong and Close replies, a Close to send, "the reader is done") — and by its
//! ping timer. **Ends** when the reader says it is done, when a write fails or blocks for
//! the write timeout, or when the peer has not answered our Close within the drain
//! timeout; it then shuts the socket down, which also wakes the reader.
//!
//! # Why a writer thread, and how tungstenite's replies get here
//!
//! tungstenite has no split: one `WebSocket` both reads and writes. If the reader thread
//! also wrote, a broadcast would wait until the reader's blocking `read()` returned
//! (up to the idle timeout). If a second `WebSocket` wrote on a cloned socket, its frames
//! could interleave with the Pong and Close replies tungstenite writes from the reader.
//! So the reader's `WebSocket` runs over a stream whose `Read` is the socket and whose
//! `Write` hands each chunk to this thread as [`Ctrl::Raw`]; this thread formats every
//! other frame itself ([`WireFrame`]). One writer, whole frames, no interleaving, and a
//! broadcast reaches an idle client as soon as the hub queues it.
//!
//! Control goes first: a Pong overtakes queued broadcasts (RFC 6455 §5.5.2: "It SHOULD
//! respond with Pong frame as soon as is practical"), except that a Close, ours or
//! tungstenite's reply to the peer's, first flushes everything already queued, so
//! neither a shutdown nor a client's Close loses a message.
//!
//! # Close, exactly once
//!
//! RFC 6455 §5.5.1: "After sending a Close frame, the endpoint MUST NOT send any further
//! data frames." Once a Close has gone out — ours, or tungstenite's reply to the peer's —
//! everything else queued is dropped, including a second Close.

use std::borrow::Cow;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError, never, select_biased};

use crate::queue::OutboundRx;
use crate::wire::{WireFrame, frames_through_close};

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
    /// The reader has finished; shut the socket and end.
    Finish,
}

/// The writer's timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterTimers {
    /// How often to ping.
    pub ping_interval: Duration,
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

struct Writer {
    sock: Arc<TcpStream>,
    close_sent: bool,
    batch: Vec<WireFrame>,
}

/// Runs the writer loop until the connection ends. See the module docs.
pub(crate) fn run(
    sock: Arc<TcpStream>,
    data: OutboundRx,
    ctrl: Receiver<Ctrl>,
    timers: WriterTimers,
) -> WriterEnd {
    let mut w = Writer {
        sock,
        close_sent: false,
        // Grows on first use: an idle connection's writer holds no batch memory.
        batch: Vec::new(),
    };
    let end = w.serve(data, ctrl, timers);
    let how = match end {
        Ok(WriterEnd::Finished) => Shutdown::Write,
        _ => Shutdown::Both,
    };
    // The peer may already have closed; there is nothing to do about an error here.
    let _ = w.sock.shutdown(how);
    end.unwrap_or(WriterEnd::Cut)
}

impl Writer {
    fn serve(
        &mut self,
        queue: OutboundRx,
        ctrl: Receiver<Ctrl>,
        timers: WriterTimers,
    ) -> io::Result<WriterEnd> {
        let mut data = queue.rx.clone();
        let mut next_ping = Instant::now() + timers.ping_interval;
        let mut close_deadline: Option<Instant> = None;
        loop {
            // Control first; `select_biased!` below keeps that order when both are ready.
            match ctrl.try_recv() {
                Ok(msg) => {
                    if self.on_ctrl(msg, &queue, &mut close_deadline, timers)? {
                        return Ok(WriterEnd::Finished);
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => return Ok(WriterEnd::Finished),
                Err(TryRecvError::Empty) => {}
            }
            let wake = close_deadline.unwrap_or(next_ping);
            let timeout = wake.saturating_duration_since(Instant::now());
            select_biased! {
                recv(ctrl) -> msg => match msg {
                    Ok(msg) => {
                        if self.on_ctrl(msg, &queue, &mut close_deadline, timers)? {
                            return Ok(WriterEnd::Finished);
                        }
                    }
                    Err(_) => return Ok(WriterEnd::Finished),
                },
                recv(data) -> frame => match frame {
                    Ok(frame) => self.write_data(frame, &queue)?,
                    // Every data sender is gone; keep serving control until Finish.
                    Err(_) => data = never(),
                },
                default(timeout) => {
                    if close_deadline.is_some_and(|d| Instant::now() >= d) {
                        // RFC 6455 §7.1.1: the server may close the TCP connection
                        // itself when the peer does not answer in time.
                        return Ok(WriterEnd::Cut);
                    }
                    if Instant::now() >= next_ping {
                        if !self.close_sent {
                            self.write_frames(&[WireFrame::ping()])?;
                        }
                        next_ping = Instant::now() + timers.ping_interval;
                    }
                }
            }
        }
    }

    /// Handles one control message; `Ok(true)` when the writer should end.
    fn on_ctrl(
        &mut self,
        msg: Ctrl,
        data: &OutboundRx,
        close_deadline: &mut Option<Instant>,
        timers: WriterTimers,
    ) -> io::Result<bool> {
        match msg {
            Ctrl::Raw(bytes) => {
                if !self.close_sent {
                    let (upto, is_close) = frames_through_close(&bytes);
                    if is_close {
                        // tungstenite answering the peer's Close: replies already queued
                        // to the peer's earlier messages go out first.
                        self.flush_queued(data)?;
                    }
                    write_all(&self.sock, &bytes[..upto])?;
                    if is_close {
                        self.close_sent = true;
                    }
                }
            }
            Ctrl::Close { code, reason } => {
                if !self.close_sent {
                    self.flush_queued(data)?;
                    self.write_frames(&[WireFrame::close(code, &reason)])?;
                    self.close_sent = true;
                    *close_deadline = Some(Instant::now() + timers.close_timeout);
                }
            }
            Ctrl::Finish => return Ok(true),
        }
        Ok(false)
    }

    /// Writes what is queued now, ahead of a Close. Only what is queued now: a hub still
    /// broadcasting must not keep the Close waiting forever.
    fn flush_queued(&mut self, data: &OutboundRx) -> io::Result<()> {
        let mut left = data.len();
        while left > 0 {
            let Ok(first) = data.rx.try_recv() else { break };
            left -= 1;
            self.batch.push(first);
            while left > 0 && self.batch.len() < MAX_BATCH {
                let Ok(f) = data.rx.try_recv() else { break };
                left -= 1;
                self.batch.push(f);
            }
            self.flush_batch()?;
        }
        data.made_room();
        Ok(())
    }

    /// Writes `first` and whatever else is already queued, up to a batch, in one call.
    fn write_data(&mut self, first: WireFrame, data: &OutboundRx) -> io::Result<()> {
        if self.close_sent {
            return Ok(());
        }
        self.batch.push(first);
        while self.batch.len() < MAX_BATCH {
            match data.rx.try_recv() {
                Ok(f) => self.batch.push(f),
                Err(_) => break,
            }
        }
        let written = self.flush_batch();
        data.made_room();
        written
    }

    fn flush_batch(&mut self) -> io::Result<()> {
        let result = write_frames(&self.sock, &self.batch);
        self.batch.clear();
        result
    }

    fn write_frames(&mut self, frames: &[WireFrame]) -> io::Result<()> {
        write_frames(&self.sock, frames)
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
        let mut bufs = &mut slices[..n];
        while !bufs.is_empty() {
            match (&*sock).write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => IoSlice::advance_slices(&mut bufs, k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn write_all(sock: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    (&*sock).write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::outbound;
    use crossbeam_channel::bounded;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (Arc<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Arc::new(s), c)
    }

    const TIMERS: WriterTimers = WriterTimers {
        ping_interval: Duration::from_secs(60),
        close_timeout: Duration::from_secs(5),
    };

    #[test]
    fn drain_close_flushes_queued_data_first_and_sends_one_close() {
        let (server, mut client) = pair();
        let (dtx, drx) = outbound(8);
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
        let (dtx, drx) = outbound(8);
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
        let (_dtx, drx) = outbound(8);
        let (ctx, crx) = bounded(8);
        ctx.send(Ctrl::Close {
            code: 1001,
            reason: "".into(),
        })
        .unwrap();
        let timers = WriterTimers {
            close_timeout: Duration::from_millis(50),
            ..TIMERS
        };
        assert_eq!(run(server, drx, crx, timers), WriterEnd::Cut);
    }
}
