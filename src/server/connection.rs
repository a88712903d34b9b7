//! A connection's reader thread: handshake, then reading frames and running the handler.
//!
//! **Owns** one client socket's read side, its tungstenite `WebSocket` (the protocol
//! state) and its rate limiter; it is the connection's one thread for its whole life (a
//! writer thread joins it only while frames wait for the socket, see
//! [`crate::server::writer`]). Spawned by the accept thread for an accepted client when
//! no spare thread is waiting; once its connection has ended it waits a moment as a spare
//! for the next one ([`crate::server::spare`]), so a thread serves one connection at a
//! time, possibly several in turn.
//! **Woken** only by the socket: bytes, EOF, the socket read timeout (first the handshake
//! deadline, then the idle timeout), or a `shutdown(2)` from a writer, the hub or the
//! drain, which makes the blocked `read` return at once. **Ends** when the read side
//! ends; it then queues its Close and `Finish`, joins the writer thread if one runs (else
//! writes those last frames itself), leaves the hub, and gives its connection slot back.
//! No thread outlives its last connection by more than `spare_reader_idle`.
//!
//! The steps: read the request head under the handshake deadline ([`crate::ws::handshake`]
//! decides the answer); on an upgrade, make the writer's channels and park them in the
//! [`WriteSide`] (no writer thread yet), register with the hub, and loop on tungstenite's
//! blocking `read()`. tungstenite's automatic Pong and Close replies go through
//! [`ReaderStream`]'s `Write`, which writes them at once when nobody is writing, nothing
//! is queued and the socket has room, else queues them for a writer (started if none
//! runs); a handler's echo goes the same way (the write lock in
//! [`crate::server::writer`] keeps one writer at a time).

use std::borrow::Cow;
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use log::{debug, error, info};
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket};

use crate::server::config::Config;
use crate::server::flow;
use crate::server::handler::{ConnParts, Connection, Handler, Routes};
use crate::server::http;
use crate::server::hub::{Hub, HubMsg, PeerHandle};
use crate::server::metrics::Metrics;
use crate::server::queue::{OutboundRx, OutboundTx, outbound};
use crate::server::registry::ConnId;
use crate::server::spare::{Accepted, Spares};
use crate::server::threads::ConnThreads;
use crate::server::writer::{self, CTRL_QUEUE, Ctrl, Receivers, WriteSide, WriterEnd, Writers};
use crate::ws::close_policy::{self, GOING_AWAY, INTERNAL_ERROR, POLICY_VIOLATION, ReadEnd};
use crate::ws::handshake::MAX_REQUEST_HEAD;
use crate::ws::handshake::{self, Answer, Endpoint, Reject, Request, Resource, StatusCode};
use crate::ws::rate_limit::RateLimiter;
use crate::ws::utf8_guard::Screened;

/// How long a finished connection keeps reading (and discarding) until the client closes
/// its side. Closing a socket with unread bytes makes the kernel send RST, which can
/// destroy our last response or Close frame before the client reads it; a short linger
/// lets the client's FIN arrive first. One second covers any loopback or LAN peer.
/// Skipped after a finished close handshake with nothing unread (see [`serve`]).
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The close code counted for a connection that ended with no Close frame either way
/// (RFC 6455 §7.1.5: never sent on the wire).
const ABNORMAL: u16 = 1006;

/// Pings and pongs a connection is served per second (after a burst of one second's
/// worth), whatever `max_message_rate` says: past it the reader waits before reading
/// on, so a client flooding control frames slows only itself. Each Ping costs a wake-up
/// of the reader and one of the writer for its Pong; keep-alive needs one every few
/// seconds.
const CONTROL_FRAMES_PER_SECOND: u32 = 100;

/// Bytes read per `read` call while waiting for the request head.
const HEAD_CHUNK: usize = 1024;

/// What every connection thread shares, read-only.
pub(crate) struct Shared {
    pub config: Config,
    pub routes: Routes,
    /// Who `/ws` clients are and what they may do; called on the readers.
    pub authorizer: Arc<dyn crate::pubsub::auth::Authorizer>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    /// The on-demand writers' budget and settings.
    pub writers: Arc<Writers>,
    /// The connection threads' handles; each thread hands its own on as it ends.
    pub threads: Arc<ConnThreads>,
    /// Where a thread whose connection ended waits for the next one.
    pub spares: Spares,
}

/// Held by a connection thread for its connection's whole life: gives the connection
/// slot back and tells the drain this connection is done, when dropped.
pub(crate) struct SlotGuard {
    pub live: Arc<AtomicUsize>,
    /// Never sent on; the drain waits for every clone to be dropped.
    pub _alive: Sender<()>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The stream tungstenite runs over: reads from the socket, writes through the fast path
/// or a writer. tungstenite gets it wrapped in [`Screened`], which checks text messages
/// for invalid UTF-8 as they arrive (RFC 6455 §8.1).
///
/// A frame it cannot write at once is queued for a writer, but the writer is not woken
/// (possibly spawned) here, deep inside tungstenite's `read`: a thread spawn there would
/// take a reader's stack past its two pages for the rest of its life. The read loop
/// wakes it as soon as `read` returns ([`ReaderStream::wake_if_owed`]), and makes
/// tungstenite write its Pong right away rather than at the start of the next, blocking,
/// `read`.
struct ReaderStream {
    side: Arc<WriteSide>,
    data: OutboundTx,
    ctrl: Sender<Ctrl>,
    /// A frame was queued and the writer not yet woken for it.
    wake_owed: Cell<bool>,
}

impl ReaderStream {
    /// Wakes the writer for what `write` queued, if anything.
    fn wake_if_owed(&self) {
        if self.wake_owed.replace(false) {
            self.side.wake();
        }
    }
}

impl Read for ReaderStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.side.sock).read(buf)
    }
}

impl Write for ReaderStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tungstenite does not know about a Close the hub or the writer sent, so it
        // answers the client's reply to it with a Close of its own, which the writer would
        // only drop (RFC 6455 §5.5.1: nothing after a Close). Dropping it here saves
        // waking the writer for nothing: one wake-up per connection in a drain.
        if self.side.has_sent_close() {
            return Ok(buf.len());
        }
        // At once when nobody writes, nothing is queued and the socket has room: no
        // writer thread needed for a Pong to an idle client.
        if self.side.write_raw_now(buf, &self.data, &self.ctrl) {
            return Ok(buf.len());
        }
        // Blocks while the control channel is full; a full channel has a writer, which
        // always drains it or ends (write timeout), and its end disconnects the channel.
        // (tungstenite writes at most a Pong and a Close reply between two returns of
        // `read`, each of which wakes the writer: far fewer than the channel holds.)
        self.ctrl
            .send(Ctrl::Raw(buf.to_vec()))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        self.wake_owed.set(true);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection thread's life: serves `first`, then each connection the accept thread
/// hands it while it waits as a spare ([`Spares::wait`]), one at a time, and ends when
/// none comes.
///
/// Each connection's phases run in sibling frames called from here, so that nothing the
/// HTTP phase, the write side's making or the writer's spawn put on the stack sits under
/// the WebSocket phase's reads; and in no frame of their own under this one, which would
/// sit under every read.
pub(crate) fn run(first: Accepted, shared: Arc<Shared>) {
    let thread = first.id;
    let mut next = Some(first);
    while let Some(Accepted { sock, id, slot }) = next {
        match handshake_phase(&sock, id, &shared) {
            Some(upgrade) => match open_write_side(&sock, &shared) {
                Some(writer) => serve(sock, id, upgrade, writer, &shared),
                None => leave_hub(&shared, id),
            },
            None => leave_hub(&shared, id),
        }
        drop(slot);
        next = shared.spares.wait();
    }
    // Last, and a plain call rather than a guard held across the connections: anything
    // this frame keeps sits under every read, and the reader's stack must stay within
    // two pages. A panic escaping a connection (a bug: a handler's panics are caught)
    // skips it; that thread's handle then waits for the drain, which joins it.
    shared.threads.ended(thread);
}

/// The write side of an upgraded connection, with its idle timeout set; `None` when the
/// socket is already gone.
#[inline(never)]
fn open_write_side(sock: &Arc<TcpStream>, shared: &Shared) -> Option<WriterLink> {
    let config = &shared.config;
    // RFC 6455 §5.1 and the idle timeout: a read that sees nothing for this long ends.
    sock.set_read_timeout(Some(config.idle_timeout)).ok()?;
    // Made in this shallow frame rather than in `serve`, and the channels in a frame of
    // their own beside it, not under it: crossbeam builds each channel on the stack
    // (aligned to 128 bytes) before boxing it, the deepest the reader's stack goes, and
    // every page a reader's stack touches stays resident.
    let queues = writer_queues(config);
    Some(link_writer(sock, &shared.writers, queues))
}

/// The senders of the writer's two channels, and the write side that holds its
/// receivers (parked: no writer thread until a frame has to wait).
struct WriterLink {
    data: OutboundTx,
    ctrl: Sender<Ctrl>,
    side: Arc<WriteSide>,
}

/// Both ends of the two channels that feed a writer: data, then control.
struct WriterQueues {
    data: (OutboundTx, OutboundRx),
    ctrl: (Sender<Ctrl>, Receiver<Ctrl>),
}

/// Makes a writer's channels, each in a frame of its own (crossbeam builds a channel on
/// the stack before boxing it), so that no channel's construction sits on another's.
#[inline(never)]
fn writer_queues(config: &Config) -> WriterQueues {
    WriterQueues {
        data: outbound(config.limits.queue_size, config.max_queue_bytes),
        ctrl: ctrl_channel(),
    }
}

#[inline(never)]
fn ctrl_channel() -> (Sender<Ctrl>, Receiver<Ctrl>) {
    bounded(CTRL_QUEUE)
}

/// Tells the hub this connection has ended, from a frame of its own: a send inlined
/// into [`run`] would put its temporaries under every frame of the connection's life.
#[inline(never)]
fn leave_hub(shared: &Shared, id: ConnId) {
    let _ = shared.hub.send(HubMsg::Unregister(id));
}

#[inline(never)]
fn link_writer(sock: &Arc<TcpStream>, writers: &Arc<Writers>, queues: WriterQueues) -> WriterLink {
    let WriterQueues {
        data: (data, data_rx),
        ctrl: (ctrl, ctrl_rx),
    } = queues;
    let rx = Receivers {
        data: data_rx,
        ctrl: ctrl_rx,
    };
    let side = Arc::new(WriteSide::new(sock.clone(), writers.clone(), Some(rx)));
    WriterLink { data, ctrl, side }
}

/// An agreed upgrade: what the WebSocket phase needs from the HTTP phase.
struct Upgrade {
    request: Request,
    leftover: Vec<u8>,
    handler: Arc<dyn Handler>,
}

/// Reads the request head and answers it; `Some` when the connection was upgraded.
///
/// Kept out of line, as are [`serve`] and [`read_loop`]: every page of stack a thread
/// touches stays resident for its life, so the HTTP phase's frames must not sit on top
/// of the WebSocket phase's for ten thousand idle readers.
#[inline(never)]
fn handshake_phase(sock: &TcpStream, id: ConnId, shared: &Shared) -> Option<Box<Upgrade>> {
    let config = &shared.config;
    // Small frames should leave at once: Nagle's delay would add up to 40 ms to an echo.
    let _ = sock.set_nodelay(true);
    if config.send_buffer_size > 0 {
        let _ = socket2::SockRef::from(sock).set_send_buffer_size(config.send_buffer_size);
    }
    let deadline = Instant::now() + config.handshake_timeout;
    let (request, leftover) = match read_head(sock, deadline) {
        Ok(head) => head,
        Err(HeadError::Reject(r)) => {
            refuse(sock, id, None, &r, shared);
            return None;
        }
        Err(HeadError::Timeout) => {
            let r = handshake::reject(StatusCode::REQUEST_TIMEOUT, "request head not received in time");
            refuse(sock, id, None, &r, shared);
            return None;
        }
        Err(HeadError::Gone) => return None,
    };
    let endpoint = match shared.routes.endpoint(request.path()) {
        Endpoint::None => http::resource(config, request.path()).map_or(Endpoint::None, Endpoint::Resource),
        routed => routed,
    };
    match handshake::answer(&request, endpoint, &config.allowed_origins) {
        Answer::Health => {
            let head = request.method() == "HEAD";
            // Green only while delivery works: with the Redis engine, only while Redis is
            // reachable.
            let answer = match shared.hub.engine_health().down() {
                None => handshake::response(StatusCode::OK, "", &handshake::Content::text(b"ok"), head),
                Some(why) => handshake::response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "",
                    &handshake::Content::text(why.as_bytes()),
                    head,
                ),
            };
            respond_and_close(sock, &answer, config);
            None
        }
        Answer::Resource {
            resource: Resource::Publish,
            ..
        } => {
            let (status, response) = http::publish(&request, leftover, sock, deadline, shared);
            if status != StatusCode::OK {
                shared.metrics.rejected(status.as_u16());
                info!("connection {id}: \"POST {}\" {}", request.path(), status.as_u16());
            }
            respond_and_close(sock, &response, config);
            None
        }
        Answer::Resource { resource, head } => {
            let response = http::get(resource, head, shared);
            respond_and_close(sock, &response, config);
            None
        }
        Answer::Reject(r) => {
            refuse(sock, id, Some(&request), &r, shared);
            None
        }
        Answer::Upgrade { accept } => {
            let handler = shared.routes.get(request.path())?;
            let protocol = handshake::select_subprotocol(&request, handler.subprotocols());
            let _ = sock.set_write_timeout(Some(config.write_timeout));
            (&*sock)
                .write_all(&handshake::upgrade_response(&accept, protocol))
                .ok()?;
            Some(Box::new(Upgrade {
                request,
                leftover,
                handler,
            }))
        }
    }
}

/// Answers a refused handshake with its status, counts it, and logs it at info level,
/// one line per refusal, as an access log would.
fn refuse(sock: &TcpStream, id: ConnId, request: Option<&Request>, r: &Reject, shared: &Shared) {
    shared.metrics.rejected(r.status.as_u16());
    let peer = sock
        .peer_addr()
        .map_or_else(|_| "-".to_string(), |a| a.to_string());
    match request {
        Some(req) => info!(
            "connection {id}: {peer} \"{} {}\" {} {}",
            req.method(),
            req.path(),
            r.status.as_u16(),
            r.why
        ),
        None => info!("connection {id}: {peer} - {} {}", r.status.as_u16(), r.why),
    }
    let head = request.is_some_and(|req| req.method() == "HEAD");
    respond_and_close(sock, &handshake::reject_response(r, head), &shared.config);
}

enum HeadError {
    Reject(Reject),
    Timeout,
    Gone,
}

/// Reads until a complete request head, the size limit or the deadline. Returns the
/// request and the bytes that followed it.
fn read_head(sock: &TcpStream, deadline: Instant) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(HEAD_CHUNK);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        sock.set_read_timeout(Some(left)).map_err(|_| HeadError::Gone)?;
        let start = buf.len();
        let want = HEAD_CHUNK.min(MAX_REQUEST_HEAD - start);
        buf.resize(start + want, 0);
        let n = match (&*sock).read(&mut buf[start..]) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(HeadError::Timeout);
            }
            Err(_) => return Err(HeadError::Gone),
        };
        buf.truncate(start + n);
        match handshake::parse_head(&buf) {
            Ok(Some((request, used))) => return Ok((request, buf.split_off(used))),
            Ok(None) => {}
            Err(r) => return Err(HeadError::Reject(r)),
        }
    }
}

/// Sends a plain HTTP response, then closes without losing it to a RST.
fn respond_and_close(sock: &TcpStream, response: &[u8], config: &Config) {
    let _ = sock.set_write_timeout(Some(config.write_timeout));
    if (&*sock).write_all(response).is_ok() {
        let _ = sock.shutdown(std::net::Shutdown::Write);
        let _ = linger(sock);
    }
}

/// Reads and discards until the peer closes its side, for at most [`CLOSE_LINGER`].
/// `false` when the peer was still there at the end of it.
fn linger(sock: &TcpStream) -> bool {
    linger_until(sock, Instant::now() + CLOSE_LINGER)
}

/// Reads and discards until the peer closes its side or `deadline` passes; `false` when
/// the peer was still there at the deadline.
pub(crate) fn linger_until(sock: &TcpStream, deadline: Instant) -> bool {
    let mut scratch = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match (&*sock).read(&mut scratch) {
            Ok(0) => return true,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// The WebSocket phase: hub registration, read loop, orderly end.
///
/// Its own frame holds only what lives across the read loop: joining the hub and winding
/// up run in frames of their own ([`join_hub`], [`wind_up`]), so that their temporaries
/// (the connection's state, the hub's messages) are not under every `read`. The upgrade
/// arrives boxed for the same reason: [`run`] holds it while it calls this.
#[inline(never)]
#[allow(clippy::boxed_local)]
fn serve(sock: Arc<TcpStream>, id: ConnId, upgrade: Box<Upgrade>, writer: WriterLink, shared: &Shared) {
    let Upgrade {
        request,
        leftover,
        handler,
    } = *upgrade;
    let WriterLink {
        data: data_tx,
        ctrl: ctrl_tx,
        side,
    } = writer;
    let finish = FinishWriter {
        ctrl: Some(ctrl_tx.clone()),
        side: side.clone(),
    };
    let (conn, registered) = join_hub(id, request, data_tx.clone(), &ctrl_tx, &side, shared);

    let mut peer_close = None;
    let end = if !registered {
        // The hub has stopped: the server is going away.
        ReadEnd::Fail {
            code: GOING_AWAY,
            reason: "server shutting down",
        }
    } else if let Err(why) = guarded(id, "on_open", || handler.on_open(&conn)) {
        why
    } else {
        let mut ws = open_websocket(&side, &data_tx, &ctrl_tx, leftover, &shared.config);
        read_loop(id, &mut ws, &conn, &*handler, shared, &mut peer_close)
    };
    wind_up(Ending {
        sock,
        id,
        end,
        registered,
        peer_close,
        finish,
        ctrl_tx,
        handler,
        conn,
        shared,
    });
}

/// Makes the connection's [`Connection`] and registers it with the hub; `true` when
/// registered (the hub is running).
#[inline(never)]
fn join_hub(
    id: ConnId,
    request: Request,
    data_tx: OutboundTx,
    ctrl_tx: &Sender<Ctrl>,
    side: &Arc<WriteSide>,
    shared: &Shared,
) -> (Connection, bool) {
    let config = &shared.config;
    let conn = Connection::new(ConnParts {
        id,
        request,
        data: data_tx.clone(),
        ctrl: ctrl_tx.clone(),
        write: side.clone(),
        hub: shared.hub.clone(),
        write_timeout: config.write_timeout,
        publish_rate: config.max_publish_rate,
        authorizer: shared.authorizer.clone(),
    });
    let registered = shared
        .hub
        .send(HubMsg::Register {
            id,
            topic: conn.topic().clone(),
            peer: PeerHandle {
                data: data_tx,
                ctrl: ctrl_tx.clone(),
                write: side.clone(),
            },
        })
        .is_ok();
    if registered {
        shared.metrics.open.fetch_add(1, Ordering::Relaxed);
    }
    (conn, registered)
}

/// What [`wind_up`] needs from [`serve`] once the read side has ended.
struct Ending<'a> {
    sock: Arc<TcpStream>,
    id: ConnId,
    end: ReadEnd,
    registered: bool,
    /// The code of the client's Close, if it sent one.
    peer_close: Option<u16>,
    finish: FinishWriter,
    ctrl_tx: Sender<Ctrl>,
    handler: Arc<dyn Handler>,
    conn: Connection,
    shared: &'a Shared,
}

/// The orderly end of an upgraded connection: counts it, closes it as its read side
/// ended, finishes the writing (joins the writer thread, or writes the last frames on
/// this thread when none runs), leaves the hub, runs `on_close`, and lingers or cuts.
#[inline(never)]
fn wind_up(e: Ending<'_>) {
    let (id, shared) = (e.id, e.shared);
    let close_handshake_done = e.end == ReadEnd::Done;
    let close = match e.end {
        ReadEnd::Done => None,
        ReadEnd::Idle => Some((GOING_AWAY, "idle timeout")),
        ReadEnd::Fail { code, reason } => Some((code, reason)),
    };
    if e.registered {
        shared.metrics.open.fetch_sub(1, Ordering::Relaxed);
        // The first Close decides the code: the client's, else ours; neither is 1006.
        let code = e.peer_close.or(close.map(|(code, _)| code)).unwrap_or(ABNORMAL);
        shared.metrics.closed(code);
    }
    if let Some((code, reason)) = close {
        debug!("connection {id}: closing with {code} ({reason})");
        // The writer sends what the handler queued before the failure ahead of the
        // Close (Autobahn 5.15: the echo, then Close 1002).
        let _ = e.ctrl_tx.send(Ctrl::Close {
            code,
            reason: Cow::Borrowed(reason),
        });
    }
    drop(e.ctrl_tx);
    let writer_end = e.finish.finish();
    leave_hub(shared, id);
    let _ = guarded(id, "on_close", || e.handler.on_close(&e.conn));
    drop(e.conn);
    // After a finished close handshake the client has sent its Close and must send
    // nothing more (RFC 6455 §5.5.1), so closing cannot make the kernel answer unread
    // bytes with an RST: end now, rather than a round trip later when its FIN comes. A
    // connection that ended any other way, or a client still sending, gets the linger.
    // A peer still there after the linger (an idle client that ignored our Close, one
    // that keeps sending) is cut: what we sent it has had its chance, and an orderly
    // close would leave the kernel holding whatever it has not read.
    if writer_end == WriterEnd::Finished
        && !(close_handshake_done && nothing_unread(&e.sock))
        && !linger(&e.sock)
    {
        writer::cut(&e.sock);
    }
    debug!("connection {id}: ended");
}

/// Ends the connection's writing: [`FinishWriter::finish`] at the reader's orderly end,
/// and its `Drop` if the reader unwinds from a panic instead. Either way the writer gets
/// its [`Ctrl::Finish`]; without it, a writer whose reader died would wait for a `Finish`
/// that never comes (a `Connection` the handler kept elsewhere holds its channel open).
struct FinishWriter {
    /// `None` once [`FinishWriter::finish`] has run.
    ctrl: Option<Sender<Ctrl>>,
    side: Arc<WriteSide>,
}

impl FinishWriter {
    /// Queues `Finish` after whatever the reader queued, then joins the writer thread, or
    /// runs the last writer on this thread when none runs (no spawn for an ordinary end).
    #[inline(never)]
    fn finish(mut self) -> WriterEnd {
        if let Some(ctrl) = self.ctrl.take() {
            // Waits only while the control channel is full: then a writer runs, and it
            // drains the channel or ends.
            let _ = ctrl.send(Ctrl::Finish);
        }
        self.side.finish()
    }
}

impl Drop for FinishWriter {
    // Out of line: inlined, the send's temporaries would sit in `serve`'s frame, under
    // every `read` (see [`serve`]).
    #[inline(never)]
    fn drop(&mut self) {
        // Only when the reader unwinds: a writer thread (started if none runs) serves the
        // `Finish` and ends; nobody is left to join it, and it needs nobody.
        if let Some(ctrl) = self.ctrl.take() {
            let _ = ctrl.send(Ctrl::Finish);
            self.side.wake();
        }
    }
}

/// Nothing the client sent is waiting to be read (end of stream and errors count as
/// nothing): a non-blocking peek, without touching the socket's blocking mode.
fn nothing_unread(sock: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    let peeked = socket2::SockRef::from(sock).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    !matches!(peeked, Ok(n) if n > 0)
}

/// tungstenite's protocol state for the WebSocket phase, on the heap.
///
/// Why a `Box`, built in a frame of its own: the reader's stack must stay within two
/// pages for ten thousand idle readers to cost two pages each (`tests/threads.rs` checks
/// it). glibc puts the thread's descriptor and TLS at the top of its stack, leaving
/// less than two pages for `run`, `serve`, the read loop and a `read` down into
/// tungstenite; a `WebSocket` and its construction's temporaries in `serve`'s frame push
/// the deepest read past the second page, which costs every connection another page.
#[inline(never)]
fn open_websocket(
    side: &Arc<WriteSide>,
    data: &OutboundTx,
    ctrl: &Sender<Ctrl>,
    leftover: Vec<u8>,
    config: &Config,
) -> Box<WebSocket<Screened<ReaderStream>>> {
    // Every frame tungstenite writes (a Pong, a Close reply) goes to `ReaderStream` at
    // once, whole.
    let ws_config = config.limits.websocket_config();
    let (stream, leftover) = Screened::new(
        ReaderStream {
            side: side.clone(),
            data: data.clone(),
            ctrl: ctrl.clone(),
            wake_owed: Cell::new(false),
        },
        leftover,
    );
    Box::new(WebSocket::from_partially_read(
        stream,
        leftover,
        Role::Server,
        Some(ws_config),
    ))
}

/// Reads messages until the read side ends, and says how it ended.
#[inline(never)]
fn read_loop(
    id: ConnId,
    ws: &mut WebSocket<Screened<ReaderStream>>,
    conn: &Connection,
    handler: &dyn Handler,
    shared: &Shared,
    peer_close: &mut Option<u16>,
) -> ReadEnd {
    let config = &shared.config;
    let mut limiter = config
        .max_message_rate
        .map(|r| RateLimiter::new(r, Instant::now()));
    let mut control = RateLimiter::new(CONTROL_FRAMES_PER_SECOND, Instant::now());
    loop {
        let read = ws.read();
        if let Ok(msg) = &read {
            if matches!(msg, Message::Ping(_)) {
                // tungstenite would send the Pong at the start of the next `read`, which
                // then blocks: send it now. An error here shows again on that `read`.
                let _ = ws.flush();
            }
            // Wake a writer for what tungstenite queued during `read` or `flush` (see
            // `ReaderStream`). After an error the reader ends, and its last writer
            // (run on this thread when none is running) writes what is queued.
            ws.get_ref().get_ref().wake_if_owed();
        }
        match read {
            Ok(msg) => {
                if matches!(msg, Message::Ping(_) | Message::Pong(_)) {
                    flow::pace(&mut control);
                }
                // Pings and pongs count: each costs a wake-up, and a Ping a reply.
                let counted = !matches!(msg, Message::Close(_) | Message::Frame(_));
                if let Some(limiter) = limiter.as_mut().filter(|_| counted) {
                    if !limiter.allow(Instant::now()) {
                        return ReadEnd::Fail {
                            code: POLICY_VIOLATION,
                            reason: "rate limit",
                        };
                    }
                }
                // Pings are answered by tungstenite (through the writer); pongs only
                // prove the client is alive, which the successful read already did.
                // After a Close, the next read finishes the handshake and reports
                // ConnectionClosed.
                match msg {
                    Message::Text(_) | Message::Binary(_) => {
                        shared.metrics.received(msg.len());
                        if let Err(end) = guarded(id, "on_message", || handler.on_message(conn, msg)) {
                            return end;
                        }
                    }
                    // 1005: a Close without a status code (RFC 6455 §7.1.5).
                    Message::Close(frame) => *peer_close = Some(frame.map_or(1005, |f| u16::from(f.code))),
                    _ => {}
                }
            }
            Err(e) => {
                let end = close_policy::classify(&e);
                if !matches!(end, ReadEnd::Done) {
                    debug!("connection {id}: read ended: {e}");
                }
                return end;
            }
        }
    }
}

/// Runs handler code, turning a panic into Close 1011 for this connection only.
fn guarded(id: ConnId, what: &str, f: impl FnOnce()) -> Result<(), ReadEnd> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| handler_panicked(id, what, panic))
}

/// Logs a handler's panic and says how the connection ends. Out of line: the logging's
/// temporaries stay out of the frames `guarded` is inlined into (see [`serve`]).
#[inline(never)]
fn handler_panicked(id: ConnId, what: &str, panic: Box<dyn std::any::Any + Send>) -> ReadEnd {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into());
    error!("connection {id}: handler panicked in {what}: {text}");
    ReadEnd::Fail {
        code: INTERNAL_ERROR,
        reason: "internal error",
    }
}
