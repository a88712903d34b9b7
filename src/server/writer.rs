//! A connection's writer, started on demand, and the write lock it shares with the hub.
//!
//! **Owns** the blocking writes to one client socket and, through [`WriteSide`], the two
//! facts that matter for them: whether a Close frame has gone out, and who holds the
//! receivers of the connection's two channels — a writer thread, or nobody (parked in the
//! [`WriteSide`]). **Woken** by those channels — the bounded data queue (broadcasts the hub
//! could not write at once, a handler's sends) and the small control channel
//! (tungstenite's automatic Pong and Close replies the reader could not write at once, a
//! Close to send, "the reader is done") — and by nothing else: it keeps no ping timer (the
//! hub pings, see [`crate::ws::keepalive`]). **Started** by whoever queues something while
//! no writer thread is running ([`WriteSide::wake`]); an idle connection has none.
//! **Ends** when it has been idle for `Config::writer_idle` (it parks the receivers back
//! and exits), when the reader says it is done, when a write fails or blocks for the write
//! timeout, or when the peer has not answered our Close within the drain timeout; in the
//! last three cases it shuts the socket down (abortively, see [`cut`], unless the end was
//! orderly), which also wakes the reader.
//!
//! # Why a writer at all, and how tungstenite's replies get out
//!
//! tungstenite has no split: one `WebSocket` both reads and writes. If the reader thread
//! also made the blocking writes, a broadcast would wait until the reader's blocking
//! `read()` returned (up to the idle timeout). If a second `WebSocket` wrote on a cloned
//! socket, its frames could interleave with the Pong and Close replies tungstenite writes
//! from the reader. So the reader's `WebSocket` runs over a stream whose `Read` is the
//! socket and whose `Write` takes the same fast path as the hub (below) and, when that
//! would block or reorder, hands the chunk to a writer as [`Ctrl::Raw`]; a writer formats
//! every other frame itself ([`WireFrame`]). Whole frames, no interleaving, and a
//! broadcast reaches an idle client at once.
//!
//! Control goes first: a Pong overtakes queued broadcasts (RFC 6455 §5.5.2: "It SHOULD
//! respond with Pong frame as soon as is practical"), except that a Close, ours or
//! tungstenite's reply to the peer's, first flushes everything already queued, so
//! neither a shutdown nor a client's Close loses a message.
//!
//! # The fast path, and the write lock
//!
//! Waking a thread costs more than writing a small frame, so a broadcast that woke every
//! member's writer would spend its time on wake-ups, not writes (the benchmarks show
//! how much). So the hub, a handler's [`Connection::send`](crate::Connection::send) and
//! the reader's replies write a frame themselves, but only when that cannot block or
//! reorder anything: nobody else is writing (the sender *tries* the per-connection write
//! lock, never waits for it), nothing is queued ahead of the frame, data or control (a
//! Pong waiting for the writer goes first), and the socket takes the whole frame at once
//! (a non-blocking `sendmsg`). Otherwise the frame is queued and a writer woken. A writer
//! takes the lock for every write it makes, and takes messages off both channels only
//! while holding it, so "both channels are empty" under the lock means every earlier
//! frame is on the wire. A frame the socket took only part of is left in the lock's state
//! for the writer, which finishes it before anything else. Whoever holds the lock writes:
//! one writer at a time, always whole frames, and every blocking write (those that can
//! wait up to the write timeout, through the socket's `SO_SNDTIMEO`) is a writer's.
//!
//! # A writer on demand: who starts it, who ends it
//!
//! The receivers of both channels are in exactly one place: parked in the [`WriteSide`]
//! (no writer thread), or moved into the one writer that runs (see [`Holder`], the
//! decision table, free of I/O). Everyone who queues something (data or control) calls
//! [`WriteSide::wake`] afterwards: under the `life` lock, if the receivers are parked it
//! takes them and spawns a writer with them. A writer that has waited `writer_idle` with
//! nothing to do parks them back and exits, but only after checking, under the write
//! lock and the `life` lock together, that both channels are empty and no started frame
//! is pending. The race is closed by the order of the two sides: a producer queues
//! *before* it takes the `life` lock, and the writer checks the channels *while* holding
//! it. Either the writer's check comes after the producer's wake (it sees the frame and
//! carries on; the producer saw a writer running) or before it (the producer then finds
//! the receivers parked and spawns a new writer). Nothing queued is ever left without a
//! writer. The `life` lock is never held across a write; it is held across a spawn, so
//! that a new writer is recorded before it can park.
//!
//! A writer that parks detaches itself (its work is done under the locks; its thread
//! ends microseconds later). The reader, at its end, queues its last Close and
//! [`Ctrl::Finish`] and calls [`WriteSide::finish`]: it joins the running writer, or, with
//! none, runs that last writer loop itself on its own thread, so that an ordinary end
//! costs no spawn.
//!
//! A spawn can fail (the thread limit, `vm.max_map_count`) or be refused: at most
//! [`Writers`]' budget of writer threads run at once
//! ([`crate::server::capacity::writers_allowed`]: the room the system's limits leave
//! beside the readers, at least what the connection ceiling computed at start reserved),
//! so that a spawn never meets a refused mapping. Either is treated like a write that blocked past the write timeout:
//! the connection is cut, counted (`writer_spawns_refused`), and logged (a warning the
//! first time, then at debug level). Nothing aborts and nothing waits.
//!
//! # Close, exactly once, and who times it
//!
//! RFC 6455 §5.5.1: "After sending a Close frame, the endpoint MUST NOT send any further
//! data frames." Once a Close has gone out — ours, or tungstenite's reply to the peer's —
//! everything else queued is dropped, including a second Close.
//!
//! The wait for the peer's answer to our Close is a writer's timer: a Close sent through
//! [`Ctrl::Close`] (a handler's `close`, the hub's hello timeout) always runs on a writer,
//! spawned for it if need be, which does not park while that timer runs and cuts the
//! connection when it expires. A Close written on the fast path (the drain's 1001) arms no
//! timer: the drain's own deadline cuts a client that never answers. A Close the reader
//! sends as it ends is followed by `Finish` at once: the reader's linger bounds that end.

use std::borrow::Cow;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};
use log::{debug, warn};

use crate::server::metrics::Metrics;
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

/// The writer's timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterTimers {
    /// How long to wait for the peer's Close after ours before cutting the connection.
    pub close_timeout: Duration,
    /// How long a writer with nothing to do waits before it parks and its thread ends
    /// (`Config::writer_idle`).
    pub idle: Duration,
}

/// How a writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The reader finished and the socket's write side is shut: a clean end.
    Finished,
    /// The socket was cut: a write failed, the peer ignored our Close, or no writer
    /// could be started.
    Cut,
    /// Idle: the receivers are parked in the write side, the connection goes on.
    Parked,
}

/// Why no writer thread could be started for a connection.
#[derive(Debug)]
enum Refused {
    /// [`Writers`]' budget of writer threads is in use.
    Budget(usize),
    /// The system refused the thread.
    Spawn(io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Budget(n) => write!(f, "all {n} writer threads of the budget are running"),
            Refused::Spawn(e) => write!(f, "cannot spawn a writer thread: {e}"),
        }
    }
}

/// What every connection's on-demand writer shares, one per server: the budget of writer
/// threads running at once, how to start one, and the counters.
pub(crate) struct Writers {
    /// Writer threads allowed at once (see [`crate::server::capacity::writers_allowed`]).
    budget: usize,
    /// Writer threads running now.
    live: AtomicUsize,
    stack_size: usize,
    timers: WriterTimers,
    metrics: Arc<Metrics>,
    /// A refusal has been logged as a warning; later ones go to debug.
    warned: AtomicBool,
}

impl Writers {
    pub(crate) fn new(
        budget: usize,
        stack_size: usize,
        timers: WriterTimers,
        metrics: Arc<Metrics>,
    ) -> Writers {
        Writers {
            budget,
            live: AtomicUsize::new(0),
            stack_size,
            timers,
            metrics,
            warned: AtomicBool::new(false),
        }
    }

    /// Starts a writer thread for `side` with the receivers, within the budget.
    fn spawn(&self, side: &Arc<WriteSide>, rx: Receivers) -> Result<JoinHandle<WriterEnd>, Refused> {
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.budget {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Budget(self.budget));
        }
        let side = side.clone();
        let timers = self.timers;
        let spawned = thread::Builder::new()
            .name("wshub-writer".into())
            .stack_size(self.stack_size)
            .spawn(move || {
                let end = run(side.clone(), rx, timers);
                side.writers.live.fetch_sub(1, Ordering::AcqRel);
                end
            });
        match spawned {
            Ok(thread) => {
                self.metrics.writer_spawns.fetch_add(1, Ordering::Relaxed);
                Ok(thread)
            }
            // The closure, and with it the receivers, is dropped: the channels close.
            Err(e) => {
                self.live.fetch_sub(1, Ordering::AcqRel);
                Err(Refused::Spawn(e))
            }
        }
    }

    /// Counts and logs a refused writer (a warning the first time, then debug).
    fn refused(&self, why: &Refused) {
        self.metrics.writer_spawns_refused.fetch_add(1, Ordering::Relaxed);
        if self.warned.swap(true, Ordering::Relaxed) {
            debug!("connection cut: {why}");
        } else {
            warn!("connection cut: {why} (later ones are logged at debug level)");
        }
    }

    /// Writer threads running now.
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

/// The receiving ends of a connection's two channels: whoever holds them is its writer.
#[derive(Debug)]
pub(crate) struct Receivers {
    pub data: OutboundRx,
    pub ctrl: Receiver<Ctrl>,
}

impl Receivers {
    fn is_empty(&self) -> bool {
        self.data.rx.is_empty() && self.ctrl.is_empty()
    }
}

/// Where a connection's receivers are: the decision table of the writer's life, free of
/// I/O. Every change happens under the `life` lock of a [`WriteSide`].
#[derive(Debug)]
enum Holder<R> {
    /// No writer thread: the receivers wait here for the next [`Holder::wake`].
    Parked(R),
    /// A writer thread holds them (or a spawn is under way).
    Running,
    /// The connection's writing is over (the reader is finishing, or no writer could be
    /// started): nobody starts a writer again.
    Done,
}

/// What [`Holder::finish`] leaves the reader to do.
#[derive(Debug)]
enum Finish<R> {
    /// No writer is running: run the last one on this thread, with these.
    Inline(R),
    /// A writer is running: join it (it sees the `Finish` already queued).
    Join,
    /// Writing was already over.
    Gone,
}

impl<R> Holder<R> {
    /// Something was queued: the receivers, when a writer must be started with them.
    fn wake(&mut self) -> Option<R> {
        match std::mem::replace(self, Holder::Running) {
            Holder::Parked(rx) => Some(rx),
            other => {
                *self = other;
                None
            }
        }
    }

    /// A running writer found nothing to do: parks the receivers. Refused (they are
    /// handed back) once the reader is finishing: the writer then serves its `Finish`.
    fn park(&mut self, rx: R) -> Result<(), R> {
        match self {
            Holder::Running => {
                *self = Holder::Parked(rx);
                Ok(())
            }
            _ => Err(rx),
        }
    }

    /// The reader ends the connection; from now on nobody starts a writer.
    fn finish(&mut self) -> Finish<R> {
        match std::mem::replace(self, Holder::Done) {
            Holder::Parked(rx) => Finish::Inline(rx),
            Holder::Running => Finish::Join,
            Holder::Done => Finish::Gone,
        }
    }
}

/// A writer's life, under its own lock (never held across a write).
struct Life {
    holder: Holder<Receivers>,
    /// The running writer thread, for the reader to join at its end.
    thread: Option<JoinHandle<WriterEnd>>,
}

/// The write side of one socket, shared by the reader, the hub, handlers and the writer
/// thread when one runs. Whoever holds the write lock writes, so frames never
/// interleave; a writer takes it for every write it makes, everyone else only ever
/// tries it (see the module docs).
pub(crate) struct WriteSide {
    /// The socket (also used to shut it down).
    pub sock: Arc<TcpStream>,
    state: Mutex<WriteState>,
    life: Mutex<Life>,
    writers: Arc<Writers>,
}

#[derive(Default)]
struct WriteState {
    /// A Close has gone out: nothing more may.
    close_sent: bool,
    /// A frame the fast path started but could not finish without waiting, and how many
    /// of its bytes went out. The writer sends the rest before anything else.
    pending: Option<(WireFrame, usize)>,
}

/// What an attempt to write at once came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FastWrite {
    /// Written whole (or dropped, after a Close, as the writer would have).
    Done,
    /// Partly written; a writer must finish it.
    Started,
    /// Not possible now (someone is writing, frames are queued, the socket is full):
    /// queue it.
    Later,
}

/// Cuts a connection: an abortive close, for every end the server forces (a slow
/// consumer, a write that failed or timed out, a peer that ignored our Close, the drain
/// deadline, a writer that could not be started). The shutdown wakes the connection's
/// reader and writer now; `SO_LINGER` 0 makes the socket's last close send RST and free
/// its unsent data at once, instead of the kernel keeping it in FIN-WAIT-1 for as long as
/// the peer keeps its end open.
pub(crate) fn cut(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
    let _ = sock.shutdown(Shutdown::Both);
}

impl WriteSide {
    /// A write side whose receivers are parked (`Some`: no writer yet, one is started on
    /// demand) or held by a writer the caller runs itself (`None`).
    pub(crate) fn new(sock: Arc<TcpStream>, writers: Arc<Writers>, rx: Option<Receivers>) -> WriteSide {
        WriteSide {
            sock,
            state: Mutex::new(WriteState::default()),
            life: Mutex::new(Life {
                holder: rx.map_or(Holder::Running, Holder::Parked),
                thread: None,
            }),
            writers,
        }
    }

    /// Cuts this connection (see [`cut`]).
    pub(crate) fn cut(&self) {
        cut(&self.sock);
    }

    /// Makes sure a writer will take what the caller has just queued (data or control):
    /// starts one with the parked receivers, if no writer runs. Call it after every
    /// push. Never waits on a write: the `life` lock is only held across a spawn. A
    /// writer that cannot be started cuts the connection (see the module docs).
    pub(crate) fn wake(self: &Arc<Self>) {
        let mut life = lock(&self.life);
        let Some(rx) = life.holder.wake() else {
            return;
        };
        match self.writers.spawn(self, rx) {
            Ok(thread) => life.thread = Some(thread),
            Err(why) => {
                life.holder = Holder::Done;
                drop(life);
                self.writers.refused(&why);
                self.cut();
            }
        }
    }

    /// A writer with nothing to do parks its receivers and may end, if both channels are
    /// empty and no started frame is pending, checked under both locks (see the module
    /// docs); else they are handed back.
    fn park(&self, rx: Receivers) -> Result<(), Receivers> {
        #[cfg(test)]
        tests::widen_the_park_race();
        let st = lock(&self.state);
        let mut life = lock(&self.life);
        if st.pending.is_some() || !rx.is_empty() {
            return Err(rx);
        }
        life.holder.park(rx)?;
        // Detached: its work is done, and the thread ends as soon as it returns.
        let me = life.thread.take();
        drop(life);
        drop(st);
        drop(me);
        Ok(())
    }

    /// The reader's end, after it queued its last Close (if any) and [`Ctrl::Finish`]:
    /// joins the running writer, or runs the last writer loop on the calling thread when
    /// none runs. From now on no writer is started.
    pub(crate) fn finish(self: &Arc<Self>) -> WriterEnd {
        let (finish, thread) = {
            let mut life = lock(&self.life);
            (life.holder.finish(), life.thread.take())
        };
        match finish {
            Finish::Inline(rx) => run(self.clone(), rx, self.writers.timers),
            Finish::Join => thread.and_then(|t| t.join().ok()).unwrap_or(WriterEnd::Cut),
            Finish::Gone => WriterEnd::Cut,
        }
    }

    /// Takes the lock for a blocking write, first finishing any frame the fast path
    /// started.
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
    /// to a writer ([`Ctrl::Resume`]; a full control channel means a writer is about
    /// to wake anyway, and it finishes the started frame before anything else). `false`:
    /// nothing was written, the caller queues the frame (and calls [`WriteSide::wake`]).
    pub(crate) fn write_now(
        self: &Arc<Self>,
        frame: &WireFrame,
        queue: &OutboundTx,
        ctrl: &Sender<Ctrl>,
    ) -> bool {
        self.fast(frame, frame.is_close(), queue, ctrl)
    }

    /// The fast path for bytes tungstenite wrote on the reader (whole Pong or Close
    /// frames): as [`WriteSide::write_now`]. `false`: the caller hands them to a writer
    /// as [`Ctrl::Raw`].
    pub(crate) fn write_raw_now(
        self: &Arc<Self>,
        bytes: &[u8],
        queue: &OutboundTx,
        ctrl: &Sender<Ctrl>,
    ) -> bool {
        let (upto, is_close) = frames_through_close(bytes);
        self.fast(
            &WireFrame::preformatted(bytes[..upto].to_vec()),
            is_close,
            queue,
            ctrl,
        )
    }

    fn fast(
        self: &Arc<Self>,
        frame: &WireFrame,
        closes: bool,
        queue: &OutboundTx,
        ctrl: &Sender<Ctrl>,
    ) -> bool {
        match self.try_write_now(frame, closes, queue, ctrl) {
            FastWrite::Done => true,
            FastWrite::Started => {
                let _ = ctrl.try_send(Ctrl::Resume);
                self.wake();
                true
            }
            FastWrite::Later => false,
        }
    }

    /// Writes `frame` (a Close if `closes`) now if nobody is writing, nothing is queued
    /// ahead of it (data or control: a Pong the reader queued goes first), and the socket
    /// takes it without waiting. Never blocks.
    fn try_write_now(
        &self,
        frame: &WireFrame,
        closes: bool,
        queue: &OutboundTx,
        ctrl: &Sender<Ctrl>,
    ) -> FastWrite {
        if !queue.is_empty() || !ctrl.is_empty() {
            return FastWrite::Later;
        }
        let Some(mut st) = try_lock(&self.state) else {
            return FastWrite::Later;
        };
        if st.close_sent {
            return FastWrite::Done;
        }
        // Checked again under the lock: a writer takes messages off both channels only
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
        if closes {
            st.close_sent = true;
        }
        written
    }
}

struct Writer {
    side: Arc<WriteSide>,
    batch: Vec<WireFrame>,
}

/// How one stretch of serving ended.
enum Served {
    /// The reader is done (or every control sender is gone).
    Finished,
    /// The peer did not answer our Close in time.
    Unanswered,
    /// Nothing to do for `writer_idle`.
    Idle,
}

/// Runs a writer until the connection ends or the writer parks. See the module docs.
pub(crate) fn run(side: Arc<WriteSide>, rx: Receivers, timers: WriterTimers) -> WriterEnd {
    let mut w = Writer {
        side: side.clone(),
        // Grows on first use, and goes with the thread when it parks.
        batch: Vec::new(),
    };
    let mut rx = rx;
    loop {
        match w.serve(&rx, timers) {
            Ok(Served::Idle) => match side.park(rx) {
                Ok(()) => return WriterEnd::Parked,
                Err(back) => rx = back,
            },
            Ok(Served::Finished) => {
                // The peer may already have closed; there is nothing to do about an error.
                let _ = side.sock.shutdown(Shutdown::Write);
                return WriterEnd::Finished;
            }
            Ok(Served::Unanswered) | Err(_) => {
                side.cut();
                return WriterEnd::Cut;
            }
        }
    }
}

impl Writer {
    fn serve(&mut self, rx: &Receivers, timers: WriterTimers) -> io::Result<Served> {
        let (queue, ctrl) = (&rx.data, &rx.ctrl);
        let data = &queue.rx;
        // Waits until a channel is ready without taking anything off it, since frames
        // leave the queue only under the write lock (see `WriteSide::try_write_now`).
        let mut ready = Select::new_biased();
        ready.recv(ctrl);
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
                        if self.on_ctrl(msg, &mut st, queue, &mut close_deadline, timers)? {
                            return Ok(Served::Finished);
                        }
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return Ok(Served::Finished),
                    Err(TryRecvError::Empty) => {}
                }
                if !data.is_empty() {
                    self.write_queued(MAX_BATCH, st.close_sent, queue)?;
                    continue;
                }
            }
            let woken = match close_deadline {
                // RFC 6455 §7.1.1: the server may close the TCP connection itself when
                // the peer does not answer our Close in time. No parking meanwhile: the
                // timer is this writer's.
                Some(deadline) => match ready.ready_deadline(deadline) {
                    Ok(i) => i,
                    Err(_) => return Ok(Served::Unanswered),
                },
                None => match ready.ready_timeout(timers.idle) {
                    Ok(i) => i,
                    Err(_) => return Ok(Served::Idle),
                },
            };
            // Ready but empty: every data sender is gone; serve control until Finish.
            // Otherwise control or data: the top of the loop takes it.
            if woken == data_index && data.is_empty() {
                ready.remove(data_index);
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
    use crate::server::registry::Offer;
    use crossbeam_channel::bounded;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair over loopback: the server's end, and the client's (reads time out
    /// after 5 s, so a frame that never comes fails the test).
    fn sockets() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (s, c)
    }

    /// A write side whose receivers are held elsewhere (by the test), and the client socket.
    fn pair() -> (Arc<WriteSide>, TcpStream) {
        let (s, c) = sockets();
        (Arc::new(WriteSide::new(Arc::new(s), writers(), None)), c)
    }

    fn text(t: &str) -> WireFrame {
        WireFrame::from_message(tungstenite::Message::text(t)).unwrap()
    }

    fn close(code: u16, reason: &'static str) -> Ctrl {
        Ctrl::Close {
            code,
            reason: reason.into(),
        }
    }

    fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        client.read_exact(&mut got).unwrap();
        got
    }

    /// Everything the client receives until the server's end shuts down.
    fn read_all(client: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    }

    /// A connection's two channels, with `data` already queued and `ctrl` sent: their
    /// senders and, as a writer would hold them, their receivers.
    fn queues(data: Vec<WireFrame>, ctrl: Vec<Ctrl>) -> (OutboundTx, Sender<Ctrl>, Receivers) {
        let (dtx, drx) = outbound(8, 1 << 20);
        let (ctx, crx) = bounded(8);
        for f in data {
            assert_eq!(dtx.try_push(f), Offer::Queued);
        }
        for c in ctrl {
            ctx.send(c).unwrap();
        }
        (dtx, ctx, Receivers { data: drx, ctrl: crx })
    }

    /// Offers `frame` on the hub's fast path with `data` already in the data queue and
    /// `ctrl` waiting in the control channel.
    fn offer_now(
        side: &WriteSide,
        frame: &WireFrame,
        closes: bool,
        data: Vec<WireFrame>,
        ctrl: Vec<Ctrl>,
    ) -> FastWrite {
        let (dtx, ctx, _rx) = queues(data, ctrl);
        side.try_write_now(frame, closes, &dtx, &ctx)
    }

    /// Runs a writer on `side` until it ends, with `data` queued and `ctrl` sent before it
    /// starts (the senders stay open meanwhile).
    fn run_queued(
        side: Arc<WriteSide>,
        data: Vec<WireFrame>,
        ctrl: Vec<Ctrl>,
        timers: WriterTimers,
    ) -> WriterEnd {
        let (_dtx, _ctx, rx) = queues(data, ctrl);
        run(side, rx, timers)
    }

    #[test]
    fn the_hub_writes_at_once_to_an_idle_connection() {
        let (side, mut client) = pair();
        assert_eq!(
            offer_now(&side, &text("now"), false, vec![], vec![]),
            FastWrite::Done
        );
        assert_eq!(read_exactly(&mut client, 5), b"\x81\x03now");
    }

    #[test]
    fn a_close_the_hub_writes_is_the_last_frame() {
        let (side, mut client) = pair();
        let bye = WireFrame::close(1001, "");
        assert_eq!(offer_now(&side, &bye, true, vec![], vec![]), FastWrite::Done);
        assert_eq!(
            offer_now(&side, &text("after"), false, vec![], vec![]),
            FastWrite::Done
        );
        side.sock.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut client), b"\x88\x02\x03\xe9");
    }

    #[test]
    fn a_pong_waiting_for_the_writer_is_not_overtaken() {
        let (side, _client) = pair();
        let pong = Ctrl::Raw(vec![0x8A, 0x00]);
        assert_eq!(
            offer_now(&side, &text("echo"), false, vec![], vec![pong]),
            FastWrite::Later
        );
    }

    #[test]
    fn the_hub_queues_behind_frames_already_queued() {
        let (side, _client) = pair();
        let first = text("first");
        assert_eq!(
            offer_now(&side, &text("second"), false, vec![first], vec![]),
            FastWrite::Later
        );
    }

    #[test]
    fn the_hub_waits_for_no_one_holding_the_write_lock() {
        let (side, _client) = pair();
        let held = side.begin().unwrap();
        assert_eq!(
            offer_now(&side, &text("x"), false, vec![], vec![]),
            FastWrite::Later
        );
        drop(held);
    }

    #[test]
    fn nothing_goes_out_after_a_close_even_on_the_fast_path() {
        let (side, mut client) = pair();
        let ctrl = vec![close(1000, ""), Ctrl::Finish];
        assert_eq!(
            run_queued(side.clone(), vec![], ctrl, TIMERS),
            WriterEnd::Finished
        );
        assert_eq!(
            offer_now(&side, &text("late"), false, vec![], vec![]),
            FastWrite::Done
        );
        assert_eq!(read_all(&mut client), b"\x88\x02\x03\xe8");
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
        let pong = Ctrl::Raw(vec![0x8A, 0x00]); // as tungstenite writes it
        assert_eq!(
            run_queued(side, vec![], vec![pong, Ctrl::Finish], TIMERS),
            WriterEnd::Finished
        );
        assert_eq!(read_all(&mut client), b"\x81\x05hello\x8a\x00");
    }

    #[test]
    fn a_frame_the_hub_started_is_finished_wherever_the_socket_stopped_it() {
        // Cut inside the header, at its end, and inside the payload, for a 2-byte and a
        // 4-byte header.
        for (frame, cuts) in [
            (text("hello"), vec![1, 2, 3, 5, 6]),
            (text(&"x".repeat(200)), vec![1, 3, 4, 5, 9, 203]),
        ] {
            let whole = [frame.head(), frame.payload()].concat();
            for cut in cuts {
                let (side, mut client) = pair();
                (&*side.sock).write_all(&whole[..cut]).unwrap();
                side.state.lock().unwrap().pending = Some((frame.clone(), cut));
                let (_dtx, drx) = outbound(8, 1 << 20);
                let (ctx, crx) = bounded(8);
                ctx.send(Ctrl::Finish).unwrap();
                assert_eq!(
                    run(side, Receivers { data: drx, ctrl: crx }, TIMERS),
                    WriterEnd::Finished
                );
                let mut got = Vec::new();
                client.read_to_end(&mut got).unwrap();
                assert_eq!(got, whole, "cut after {cut} of {} bytes", whole.len());
            }
        }
    }

    #[test]
    fn no_fast_write_goes_into_the_middle_of_a_started_frame() {
        // A partial fast write leaves its frame pending and only then queues `Resume`:
        // another sender (the hub, a handler) trying the fast path in between finds both
        // channels empty, and must still wait for the writer to finish the frame.
        let (side, client) = pair();
        side.state.lock().unwrap().pending = Some((text("started"), 3));
        let (dtx, _drx) = outbound(8, 1 << 20);
        assert_eq!(
            side.try_write_now(&text("x"), false, &dtx, &bounded(1).0),
            FastWrite::Later
        );
        client.set_nonblocking(true).unwrap();
        let e = (&client).read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "nothing was written");
    }

    #[test]
    fn a_writer_woken_for_control_still_wakes_for_data_queued_later() {
        let (side, mut client) = pair();
        let (dtx, drx) = outbound(8, 1 << 20);
        let (ctx, crx) = bounded(8);
        // Idle far longer than the client's read timeout: data must not wait for it.
        let timers = WriterTimers {
            idle: Duration::from_secs(60),
            ..TIMERS
        };
        let rx = Receivers { data: drx, ctrl: crx };
        let writer = thread::spawn(move || run(side, rx, timers));
        // Pacing, not synchronisation: the writer is waiting when each message comes.
        thread::sleep(Duration::from_millis(50));
        ctx.send(Ctrl::Raw(vec![0x8A, 0x00])).unwrap();
        assert_eq!(read_exactly(&mut client, 2), b"\x8a\x00");
        thread::sleep(Duration::from_millis(50));
        // Queued as a send that found the writer writing (no wake: a writer runs).
        dtx.try_push(text("data"));
        assert_eq!(read_exactly(&mut client, 6), b"\x81\x04data");
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(writer.join().unwrap(), WriterEnd::Finished);
    }

    /// A write side and a client socket that hold little (about 4 KiB each way): a few
    /// frames the client does not read block the writer.
    fn small_pair() -> (Arc<WriteSide>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_recv_buffer_size(4096).unwrap();
        c.connect(&l.local_addr().unwrap().into()).unwrap();
        let c: TcpStream = c.into();
        let (s, _) = l.accept().unwrap();
        socket2::SockRef::from(&s).set_send_buffer_size(4096).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Arc::new(WriteSide::new(Arc::new(s), writers(), None)), c)
    }

    fn numbered(i: u8) -> WireFrame {
        WireFrame::from_message(tungstenite::Message::binary(vec![i; 4000])).unwrap()
    }

    #[test]
    fn a_close_waits_for_what_was_queued_before_it_not_for_frames_queued_after() {
        let (side, mut client) = small_pair();
        let (dtx, drx) = outbound(1024, 1 << 30);
        let (ctx, crx) = bounded(8);
        // More than one batch ahead of the Close, so the flush takes them in two.
        for i in 0..100 {
            dtx.try_push(numbered(i));
        }
        ctx.send(close(1001, "")).unwrap();
        let rx = Receivers { data: drx, ctrl: crx };
        let writer = thread::spawn(move || run(side, rx, TIMERS));
        // The client reads nothing yet: the writer is blocked in the first batch when
        // a hub still broadcasting queues more (pacing, not synchronisation).
        thread::sleep(Duration::from_millis(100));
        for i in 100..105 {
            dtx.try_push(numbered(i));
        }
        for i in 0..100 {
            let got = read_exactly(&mut client, 4 + 4000);
            assert_eq!(&got[..4], b"\x82\x7e\x0f\xa0");
            assert_eq!(got[4], i, "the frames queued before the Close, in order");
        }
        assert_eq!(read_exactly(&mut client, 4), b"\x88\x02\x03\xe9");
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(writer.join().unwrap(), WriterEnd::Finished);
        let mut after = Vec::new();
        client.read_to_end(&mut after).unwrap();
        assert!(after.is_empty(), "{} bytes after the Close", after.len());
    }

    #[test]
    fn a_flush_ahead_of_a_close_stops_at_the_first_write_that_times_out() {
        // A client that reads nothing, twelve batches queued ahead of a Close: the writer
        // gives up after one write timeout, not one per batch.
        let (side, _client) = small_pair();
        let timeout = Duration::from_millis(200);
        side.sock.set_write_timeout(Some(timeout)).unwrap();
        let (dtx, drx) = outbound(1024, 1 << 30);
        let (ctx, crx) = bounded(8);
        for i in 0..=255 {
            dtx.try_push(numbered(i));
            dtx.try_push(numbered(i));
            dtx.try_push(numbered(i));
        }
        ctx.send(Ctrl::Close {
            code: 1001,
            reason: "".into(),
        })
        .unwrap();
        let started = Instant::now();
        assert_eq!(
            run(side, Receivers { data: drx, ctrl: crx }, TIMERS),
            WriterEnd::Cut
        );
        // At most two timeouts: the call that fills the socket, then the one that finds
        // it full. Twelve batches would take twelve.
        let took = started.elapsed();
        assert!(took < 6 * timeout, "{took:?}");
    }

    #[test]
    fn a_close_answered_within_the_close_timeout_ends_cleanly() {
        let (side, mut client) = pair();
        let (_dtx, ctx, rx) = queues(vec![], vec![close(1000, "")]);
        let writer = thread::spawn(move || run(side, rx, TIMERS));
        assert_eq!(read_exactly(&mut client, 4), b"\x88\x02\x03\xe8");
        // The peer takes a while to answer; its reply reaches the reader, which is done.
        thread::sleep(Duration::from_millis(200));
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(writer.join().unwrap(), WriterEnd::Finished);
    }

    const TIMERS: WriterTimers = WriterTimers {
        close_timeout: Duration::from_secs(5),
        idle: Duration::from_secs(5),
    };

    fn writers() -> Arc<Writers> {
        Arc::new(Writers::new(4, 64 * 1024, TIMERS, Arc::default()))
    }

    #[test]
    fn drain_close_flushes_queued_data_first_and_sends_one_close() {
        let (server, mut client) = pair();
        let data = (0..3u8)
            .map(|i| WireFrame::from_message(tungstenite::Message::binary(vec![i])).unwrap())
            .collect();
        let ctrl = vec![
            close(1001, "bye"),
            // A second Close, and tungstenite's reply Close, must both be dropped.
            close(1000, ""),
            Ctrl::Raw(vec![0x88, 0x02, 0x03, 0xe8]),
            Ctrl::Finish,
        ];
        assert_eq!(run_queued(server, data, ctrl, TIMERS), WriterEnd::Finished);
        assert_eq!(
            read_all(&mut client),
            b"\x82\x01\x00\x82\x01\x01\x82\x01\x02\x88\x05\x03\xe9bye"
        );
    }

    #[test]
    fn a_close_reply_from_tungstenite_goes_out_after_queued_data() {
        let (server, mut client) = pair();
        let reply = Ctrl::Raw(vec![0x88, 0x02, 0x03, 0xe8]);
        let ctrl = vec![reply, Ctrl::Finish];
        assert_eq!(
            run_queued(server, vec![text("echo")], ctrl, TIMERS),
            WriterEnd::Finished
        );
        assert_eq!(read_all(&mut client), b"\x81\x04echo\x88\x02\x03\xe8");
    }

    #[test]
    fn unanswered_close_is_cut_after_the_close_timeout() {
        let (server, _client) = pair();
        let timers = WriterTimers {
            close_timeout: Duration::from_millis(50),
            ..TIMERS
        };
        assert_eq!(
            run_queued(server, vec![], vec![close(1001, "")], timers),
            WriterEnd::Cut
        );
    }

    // --- the writer's life: the decision table, then over a socket -------------------

    /// Microseconds a writer waits between deciding it is idle and parking, in tests that
    /// set it: pushes then land in the window the locks must guard.
    static PARK_DELAY_US: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn widen_the_park_race() {
        let us = PARK_DELAY_US.load(Ordering::Relaxed);
        if us > 0 {
            thread::sleep(Duration::from_micros(us as u64));
        }
    }

    #[test]
    fn a_wake_takes_parked_receivers_once() {
        let mut h = Holder::Parked(7);
        assert_eq!(h.wake(), Some(7));
        assert_eq!(h.wake(), None, "a writer runs: nobody starts another");
        assert!(matches!(h, Holder::Running));
    }

    #[test]
    fn a_running_writer_parks_and_the_next_wake_takes_them_again() {
        let mut h: Holder<u8> = Holder::Running;
        assert_eq!(h.park(3), Ok(()));
        assert_eq!(h.wake(), Some(3));
    }

    #[test]
    fn the_readers_finish_runs_the_last_writer_itself_when_none_runs() {
        let mut h = Holder::Parked(1);
        assert!(matches!(h.finish(), Finish::Inline(1)));
        assert_eq!(h.wake(), None, "after the finish nobody starts a writer");
        assert!(matches!(h.finish(), Finish::Gone));
    }

    #[test]
    fn the_readers_finish_joins_a_running_writer_which_may_not_park_after_it() {
        let mut h: Holder<u8> = Holder::Running;
        assert!(matches!(h.finish(), Finish::Join));
        assert_eq!(h.park(5), Err(5), "it must serve the Finish instead");
        assert_eq!(h.wake(), None);
    }

    /// A write side whose receivers are parked, with its senders, and the client socket.
    fn parked(
        idle: Duration,
        budget: usize,
    ) -> (Arc<WriteSide>, OutboundTx, Sender<Ctrl>, TcpStream, Arc<Metrics>) {
        let (s, c) = sockets();
        let (dtx, drx) = outbound(1 << 16, 1 << 30);
        let (ctx, crx) = bounded(CTRL_QUEUE);
        let metrics = Arc::new(Metrics::default());
        let timers = WriterTimers { idle, ..TIMERS };
        let writers = Arc::new(Writers::new(budget, 64 * 1024, timers, metrics.clone()));
        let rx = Receivers { data: drx, ctrl: crx };
        let side = Arc::new(WriteSide::new(Arc::new(s), writers, Some(rx)));
        (side, dtx, ctx, c, metrics)
    }

    /// Offers `frame` as the hub does: at once if it can, else queued and a writer woken.
    fn offer(side: &Arc<WriteSide>, dtx: &OutboundTx, ctx: &Sender<Ctrl>, frame: WireFrame) {
        if !side.write_now(&frame, dtx, ctx) {
            assert_eq!(dtx.try_push(frame), Offer::Queued);
            side.wake();
        }
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "not within 10 s: {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_queued_frame_starts_a_writer_which_parks_when_idle_and_the_next_starts_another() {
        let (side, dtx, ctx, mut client, metrics) = parked(Duration::from_millis(20), 4);
        dtx.try_push(text("one"));
        side.wake();
        assert_eq!(read_exactly(&mut client, 5), b"\x81\x03one");
        wait_for("the writer parks", || side.writers.live() == 0);
        assert!(matches!(lock(&side.life).holder, Holder::Parked(_)));
        dtx.try_push(text("two"));
        side.wake();
        assert_eq!(read_exactly(&mut client, 5), b"\x81\x03two");
        assert_eq!(metrics.writer_spawns.load(Ordering::Relaxed), 2);
        // The reader's end, with the receivers parked again: no third spawn.
        wait_for("the writer parks again", || side.writers.live() == 0);
        ctx.send(Ctrl::Finish).unwrap();
        assert_eq!(side.finish(), WriterEnd::Finished);
        assert_eq!(metrics.writer_spawns.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn producers_racing_a_writer_that_parks_lose_no_frame_and_keep_order() {
        // `writer_idle` zero: the writer parks the moment it finds both channels empty.
        // Each burst starts with the writer parked, so the producers race each other to
        // start one, and its parking races their last pushes.
        const PRODUCERS: u8 = 4;
        const BURSTS: u16 = 25;
        const EACH: u16 = 20;
        PARK_DELAY_US.store(50, Ordering::Relaxed);
        for round in 0..8 {
            let (side, dtx, ctx, mut client, metrics) = parked(Duration::ZERO, 64);
            let start = Arc::new(std::sync::Barrier::new(PRODUCERS as usize + 1));
            let done = Arc::new(std::sync::Barrier::new(PRODUCERS as usize + 1));
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let (side, dtx, ctx) = (side.clone(), dtx.clone(), ctx.clone());
                    let (start, done) = (start.clone(), done.clone());
                    thread::spawn(move || {
                        for i in 0..BURSTS * EACH {
                            if i % EACH == 0 {
                                start.wait();
                            }
                            // Pacing (not synchronisation): pushes spread over the
                            // burst, so that some land while the writer parks.
                            thread::sleep(Duration::from_micros(u64::from(i % 4) * 30));
                            let [hi, lo] = i.to_be_bytes();
                            let frame =
                                WireFrame::from_message(tungstenite::Message::binary(vec![p, hi, lo]))
                                    .unwrap();
                            if p % 2 == 0 {
                                offer(&side, &dtx, &ctx, frame);
                            } else {
                                // Queued always, as a send that found the lock taken.
                                assert_eq!(dtx.try_push(frame), Offer::Queued);
                                side.wake();
                            }
                            if i % EACH == EACH - 1 {
                                done.wait();
                            }
                        }
                    })
                })
                .collect();
            let mut next = [0u16; PRODUCERS as usize];
            for _ in 0..BURSTS {
                wait_for("the writer parks between bursts", || {
                    side.writers.live() == 0 && matches!(lock(&side.life).holder, Holder::Parked(_))
                });
                start.wait();
                done.wait();
                // The whole burst arrives with no further push to wake anyone: a frame
                // left queued behind a parked writer fails the read (5 s timeout).
                for _ in 0..PRODUCERS as usize * EACH as usize {
                    let got = read_exactly(&mut client, 5);
                    assert_eq!(&got[..2], b"\x82\x03", "round {round}: a whole binary frame");
                    let (p, i) = (got[2] as usize, u16::from_be_bytes([got[3], got[4]]));
                    assert_eq!(i, next[p], "round {round}: producer {p}'s frames in order");
                    next[p] += 1;
                }
            }
            for t in producers {
                t.join().unwrap();
            }
            ctx.send(Ctrl::Finish).unwrap();
            side.finish();
            // Most bursts needed a writer (a burst the fast path wrote whole needs none).
            let spawns = metrics.writer_spawns.load(Ordering::Relaxed);
            eprintln!("round {round}: {spawns} writer spawns");
            assert!(
                spawns > u64::from(BURSTS) / 2,
                "round {round}: {spawns} writer spawns"
            );
        }
    }

    #[test]
    fn a_refused_writer_is_logged_with_the_limit_it_met() {
        assert_eq!(
            Refused::Budget(4).to_string(),
            "all 4 writer threads of the budget are running"
        );
        let spawn = Refused::Spawn(io::Error::from(io::ErrorKind::OutOfMemory));
        assert!(
            spawn.to_string().starts_with("cannot spawn a writer thread: "),
            "{spawn}"
        );
    }

    #[test]
    fn a_writer_past_the_budget_cuts_its_connection_and_is_counted() {
        let (side, dtx, _ctx, mut client, metrics) = parked(TIMERS.idle, 0);
        dtx.try_push(text("never"));
        side.wake();
        assert_eq!(metrics.writer_spawns_refused.load(Ordering::Relaxed), 1);
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got);
        assert!(got.is_empty(), "nothing was written: {got:?}");
        assert!(matches!(lock(&side.life).holder, Holder::Done));
        assert_eq!(dtx.try_push(text("later")), Offer::Gone);
    }
}
