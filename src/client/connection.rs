//! One client connection: connect and handshake, then a reader thread and a writer
//! thread for as long as it is open.
//!
//! **Owns** one socket. The caller's thread resolves, connects (with the connect
//! timeout, per resolved address) and runs the handshake (with the handshake timeout as
//! a deadline over all its reads); then two threads take over:
//!
//! - the **reader thread** owns the socket's read side and tungstenite's `WebSocket`.
//!   Bytes from the server wake it; the socket's read timeout (the idle timeout) bounds
//!   each wait. It **ends** on the server's Close (after waiting up to the close timeout
//!   for the TCP close that follows), on EOF or an error, on the idle timeout, or when
//!   the writer shuts the socket down. Its last act is [`Event::Disconnected`].
//! - the **writer thread** owns the write side: the only code that writes this socket.
//!   It is woken by tungstenite's replies (handed over by the reader; they go first), by
//!   your messages, by a Close request (taken only when your messages are all out, so a
//!   clean close loses none), and by its timer (pings; the close deadline). It **ends**
//!   when the reader has ended (its reply channel disconnects, after its last reply),
//!   when a write fails or blocks for the write timeout, or when the server leaves our
//!   Close unanswered for the close timeout. It always shuts the socket down on the way
//!   out, which wakes the reader if it is still blocked.
//!
//! The writer is the one place that knows whether a Close has gone out: ours, or
//! tungstenite's reply to the server's, which it recognises in the bytes it is handed.
//! After one, it writes nothing more.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{
    Receiver, RecvTimeoutError, Sender, TryRecvError, at, bounded, never, select_biased,
};
use log::debug;
use rand::RngExt;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::client::Request;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::{CloseFrame, WebSocket};
use tungstenite::{Error as WsError, Message};

use crate::ws::close_policy::{self, PROTOCOL_ERROR, ReadEnd};
use crate::ws::peer_close::PeerClose;
use crate::ws::wire::{self, frames_through_close};

use super::{
    CTRL_QUEUE_SIZE, ClientConfig, ClientError, EVENT_QUEUE_SIZE, Event, WsUrl, after,
    close_code_is_sendable, close_frame, spawn,
};

/// Headers the handshake sets itself; a user value would break it or lie about it.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "sec-websocket-extensions",
];

/// A write buffer that grew past this (a large message) is released after use, so one
/// big send does not pin its size for the life of the connection.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// One open WebSocket connection to a `ws://` server.
///
/// Every method takes `&self`, and `Client` is `Send + Sync`: share it (an `Arc`, or a
/// scoped thread) to [`send`](Client::send) from one thread while another blocks on
/// [`events`](Client::events). Dropping it starts a Close 1000 without waiting; call
/// [`close`](Client::close) to wait for the server's reply.
///
/// ```no_run
/// use wshub::Message;
/// use wshub::client::{Client, ClientConfig, Event};
///
/// let client = Client::connect("ws://127.0.0.1:8080/echo", &ClientConfig::default())?;
/// client.send(Message::text("hello"))?;
/// if let Ok(Event::Message(reply)) = client.events().recv() {
///     println!("{reply}");
/// }
/// client.close(1000, "done")?;
/// # Ok::<(), wshub::client::ClientError>(())
/// ```
#[derive(Debug)]
pub struct Client {
    url: WsUrl,
    /// Your messages, for the writer.
    data: Sender<Message>,
    /// One Close request; the writer takes it once `data` is empty.
    close: Sender<Option<CloseFrame>>,
    events: Receiver<Event>,
    shared: Arc<Shared>,
    /// Disconnects when the writer thread has finished (and shut the socket down).
    writer_done: Receiver<()>,
    /// For a last-resort shutdown when a close takes longer than it may.
    socket: TcpStream,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    /// Longest [`Client::close`] waits for the writer before shutting the socket itself.
    close_wait: Duration,
}

/// State the reader, the writer and the handle share. Flags only; no queue behind a lock.
#[derive(Debug, Default)]
struct Shared {
    /// `close()` or a drop has asked for a Close: sends fail from now on.
    close_requested: AtomicBool,
    /// The writer has written a Close (ours or the reply to the server's).
    close_sent: AtomicBool,
    /// The reader has received the server's Close.
    close_received: AtomicBool,
    /// Why the writer gave up, for the reader to report: its own error is then only a
    /// consequence (the socket was shut down under it).
    writer_error: Mutex<Option<ClientError>>,
}

impl Shared {
    fn writer_error(&self) -> MutexGuard<'_, Option<ClientError>> {
        crate::sync::lock(&self.writer_error)
    }
}

impl Client {
    /// Connects to a `ws://` URL and completes the handshake.
    ///
    /// Blocks for at most the connect timeout per resolved address plus the handshake
    /// timeout (name resolution itself is the system resolver's and has no timeout).
    pub fn connect(url: &str, config: &ClientConfig) -> Result<Client, ClientError> {
        let url: WsUrl = url.parse()?;
        Client::connect_url(&url, config)
    }

    /// Connects to an already parsed URL; see [`Client::connect`].
    pub fn connect_url(url: &WsUrl, config: &ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let request = build_request(url, config)?;
        let socket = open_socket(url, config)?;
        let client = start(url, config, request, &socket);
        if client.is_err() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        client
    }

    /// Queues a message for the writer thread. Blocks while the outbound queue is full;
    /// the writer either drains it or fails within the write timeout, so the wait is
    /// bounded.
    ///
    /// `Message::Close` starts a close without waiting (as a drop does); prefer
    /// [`Client::close`]. Fails with [`ClientError::Closed`] once a close has started or
    /// the connection has ended.
    pub fn send(&self, msg: Message) -> Result<(), ClientError> {
        match &msg {
            Message::Close(frame) => {
                if let Some(f) = frame {
                    let code = u16::from(f.code);
                    if !close_code_is_sendable(code) {
                        return Err(ClientError::InvalidCloseCode(code));
                    }
                }
                self.begin_close(frame.clone());
                return Ok(());
            }
            Message::Ping(p) | Message::Pong(p) if p.len() > 125 => {
                return Err(ClientError::InvalidMessage(
                    "a Ping or Pong payload is at most 125 bytes",
                ));
            }
            _ => {}
        }
        if self.shared.close_requested.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        self.data.send(msg).map_err(|_| ClientError::Closed)
    }

    /// Events from this connection, in order: [`Event::Message`] for each message,
    /// then one [`Event::Disconnected`]; after it the channel is disconnected.
    ///
    /// Take them promptly: when [`EVENT_QUEUE_SIZE`](super::EVENT_QUEUE_SIZE) are
    /// waiting, the reader waits for room and stops reading the socket.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Closes the connection cleanly: everything already sent goes out, then a Close
    /// with `code` and `reason` (cut to 123 bytes at a character boundary); waits for the
    /// server's Close reply up to the close timeout, then shuts the socket down.
    ///
    /// Returns once the socket is shut: at most the write timeout plus the close timeout.
    /// Calling it again, or after the connection ended, returns at once. Fails only with
    /// [`ClientError::InvalidCloseCode`] for a code an endpoint may not send.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        let frame = close_frame(code, reason)?;
        self.close_and_wait(Some(frame));
        Ok(())
    }

    /// True until a close has started or the connection has ended.
    pub fn is_open(&self) -> bool {
        !self.shared.close_requested.load(Ordering::Acquire)
            && matches!(self.writer_done.try_recv(), Err(TryRecvError::Empty))
    }

    /// The URL this client connected to.
    pub fn url(&self) -> &WsUrl {
        &self.url
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's address (the resolved address that accepted the connection).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Asks the writer for a Close (after the messages already queued) without waiting.
    /// Only the first request counts.
    pub(crate) fn begin_close(&self, frame: Option<CloseFrame>) {
        if !self.shared.close_requested.swap(true, Ordering::AcqRel) {
            // Capacity 1 and only ever one request: this cannot be full. If the writer
            // has already gone, there is nothing left to close.
            let _ = self.close.try_send(frame);
        }
    }

    /// [`Client::begin_close`], then waits for the writer to finish (it waits for the
    /// server's reply); past `close_wait`, shuts the socket down itself.
    pub(crate) fn close_and_wait(&self, frame: Option<CloseFrame>) {
        self.begin_close(frame);
        if let Err(RecvTimeoutError::Timeout) = self.writer_done.recv_timeout(self.close_wait) {
            debug!(
                "{}: close took longer than {:?}; shutting the socket",
                self.url, self.close_wait
            );
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Client {
    /// Starts a Close 1000 (after what is queued) and returns at once; the connection's
    /// threads finish on their own within the write and close timeouts.
    fn drop(&mut self) {
        self.begin_close(Some(CloseFrame {
            code: 1000.into(),
            reason: "".into(),
        }));
    }
}

/// Checks `config.origin` and `config.headers` the way [`build_request`] will use them.
pub(crate) fn check_headers(config: &ClientConfig) -> Result<(), ClientError> {
    if let Some(origin) = &config.origin {
        header("Origin", origin)?;
    }
    for (name, value) in &config.headers {
        header(name, value)?;
    }
    Ok(())
}

/// A validated header: a valid name that the handshake does not own, and a value
/// without control characters (CR and LF in particular: no header injection).
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidHeader {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| invalid("not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(invalid("the WebSocket handshake sets this header itself"));
    }
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| invalid("the value may not contain control characters or non-ASCII bytes"))?;
    Ok((parsed, value))
}

/// The upgrade request: tungstenite's standard headers (with a fresh random
/// `Sec-WebSocket-Key`), then the `Origin` and the extra headers.
pub(crate) fn build_request(url: &WsUrl, config: &ClientConfig) -> Result<Request, ClientError> {
    let uri = format!("ws://{}{}", url.authority(), url.path());
    let mut request = uri
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    let headers = request.headers_mut();
    if let Some(origin) = &config.origin {
        let (name, value) = header("Origin", origin)?;
        headers.insert(name, value);
    }
    for (name, value) in &config.headers {
        let (name, value) = header(name, value)?;
        headers.append(name, value);
    }
    Ok(request)
}

/// Resolves the host and connects to the first address that answers, each with the
/// connect timeout.
fn open_socket(url: &WsUrl, config: &ClientConfig) -> Result<TcpStream, ClientError> {
    let resolve_error = |source| ClientError::Resolve {
        host: url.host().to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = (url.host(), url.port())
        .to_socket_addrs()
        .map_err(resolve_error)?
        .collect();
    let mut last = resolve_error(io::Error::new(io::ErrorKind::NotFound, "no address found"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, config.connect_timeout) {
            Ok(socket) => return Ok(socket),
            Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                last = ClientError::ConnectTimeout {
                    addr: addr.to_string(),
                    timeout: config.connect_timeout,
                };
            }
            Err(source) => {
                last = ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                }
            }
        }
        debug!("{url}: {last}");
    }
    Err(last)
}

/// Handshake on `socket`, then the reader and writer threads.
fn start(
    url: &WsUrl,
    config: &ClientConfig,
    request: Request,
    socket: &TcpStream,
) -> Result<Client, ClientError> {
    socket.set_nodelay(true).map_err(ClientError::Io)?;
    socket
        .set_write_timeout(Some(config.write_timeout))
        .map_err(ClientError::Io)?;
    let local_addr = socket.local_addr().map_err(ClientError::Io)?;
    let peer_addr = socket.peer_addr().map_err(ClientError::Io)?;
    let clone = || socket.try_clone().map_err(ClientError::Io);

    let stream = ReaderStream {
        sock: clone()?,
        sink: Sink::Direct(clone()?),
        deadline: Some(after(config.handshake_timeout)),
        peer_close: PeerClose::default(),
        head_end: 0,
        echo_close: None,
    };
    // What tungstenite writes (Pong and Close replies) goes to the writer at once.
    let ws_config = config.limits.websocket_config();
    let mut ws = match tungstenite::client::client_with_config(request, stream, Some(ws_config)) {
        Ok((ws, _response)) => ws,
        Err(HandshakeError::Interrupted(_)) => {
            return Err(ClientError::HandshakeTimeout(config.handshake_timeout));
        }
        Err(HandshakeError::Failure(e)) => return Err(handshake_error(e, config.handshake_timeout)),
    };

    let (ctrl_tx, ctrl_rx) = bounded(CTRL_QUEUE_SIZE);
    {
        let stream = ws.get_mut();
        stream.deadline = None;
        stream.sink = Sink::Writer(ctrl_tx);
        // Every wait for the server is now bounded by the idle timeout.
        stream
            .sock
            .set_read_timeout(config.idle_timeout)
            .map_err(ClientError::Io)?;
    }

    let shared = Arc::new(Shared::default());
    let (data_tx, data_rx) = bounded(config.limits.queue_size);
    let (close_tx, close_rx) = bounded(1);
    let (events_tx, events_rx) = bounded(EVENT_QUEUE_SIZE);
    let (done_tx, done_rx) = bounded::<()>(0);

    let writer = Writer {
        sock: clone()?,
        shared: shared.clone(),
        ping_interval: config.ping_interval,
        close_timeout: config.close_timeout,
        write_timeout: config.write_timeout,
        buf: Vec::new(),
    };
    spawn("wshub-client-writer", move || {
        writer.run(data_rx, ctrl_rx, close_rx, done_tx)
    })?;

    let reader = Reader {
        shared: shared.clone(),
        events: events_tx,
        idle_timeout: config.idle_timeout,
        close_timeout: config.close_timeout,
    };
    // If this spawn fails, `ws` is dropped with the closure: the writer sees its reply
    // channel disconnect and shuts the socket down.
    spawn("wshub-client-reader", move || reader.run(ws))?;

    debug!("{url}: connected from {local_addr} to {peer_addr}");
    Ok(Client {
        url: url.clone(),
        data: data_tx,
        close: close_tx,
        events: events_rx,
        shared,
        writer_done: done_rx,
        socket: clone()?,
        local_addr,
        peer_addr,
        close_wait: config.write_timeout.saturating_add(config.close_timeout),
    })
}

fn handshake_error(e: WsError, timeout: Duration) -> ClientError {
    match e {
        WsError::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).trim().to_owned())
                .unwrap_or_default();
            ClientError::Rejected {
                status: response.status().as_u16(),
                body,
            }
        }
        WsError::Io(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
            ClientError::HandshakeTimeout(timeout)
        }
        other => ClientError::Handshake(other),
    }
}

/// The reader's stream: reads the socket; writes go straight to the socket during the
/// handshake (no other thread exists yet), then to the writer thread.
struct ReaderStream {
    sock: TcpStream,
    sink: Sink,
    /// While set (the handshake), every read waits at most until this instant.
    deadline: Option<Instant>,
    /// The server's frames, followed for the code of its Close: every byte after the
    /// response head (frames can arrive in the same read as the head's end).
    peer_close: PeerClose,
    /// How much of the head's end, `\r\n\r\n`, has been read (4: the head is over).
    head_end: usize,
    /// Set by the reader when tungstenite's next write is its 1002 answer to a Close
    /// code it does not know but RFC 6455 registers (1014): that write becomes the echo.
    echo_close: Option<u16>,
}

enum Sink {
    Direct(TcpStream),
    Writer(Sender<Vec<u8>>),
}

impl Read for ReaderStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(deadline) = self.deadline else {
            let n = self.sock.read(buf)?;
            self.follow(&buf[..n]);
            return Ok(n);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.sock.set_read_timeout(Some(left))?;
        // tungstenite's handshake would take WouldBlock for "try again later"; this is
        // a blocking socket, so it means the deadline has passed.
        let n = self.sock.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => io::ErrorKind::TimedOut.into(),
            _ => e,
        })?;
        self.follow(&buf[..n]);
        Ok(n)
    }
}

impl ReaderStream {
    /// Hands the bytes after the response head to [`PeerClose`].
    fn follow(&mut self, mut bytes: &[u8]) {
        const HEAD_END: &[u8] = b"\r\n\r\n";
        while self.head_end < HEAD_END.len() {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            bytes = rest;
            self.head_end = match b {
                _ if b == HEAD_END[self.head_end] => self.head_end + 1,
                b'\r' => 1,
                _ => 0,
            };
        }
        self.peer_close.feed(bytes);
    }
}

impl Write for ReaderStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Sink::Direct(sock) => sock.write(buf),
            Sink::Writer(tx) => {
                let bytes = match self.echo_close.take() {
                    Some(code) if buf.first() == Some(&0x88) => encode_close(code, ""),
                    _ => buf.to_vec(),
                };
                tx.send(bytes).map_err(|_| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "the writer thread has stopped")
                })?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Direct(sock) => sock.flush(),
            Sink::Writer(_) => Ok(()),
        }
    }
}

/// The server's Close, when its code is one RFC 6455 lets an endpoint send but
/// tungstenite does not know (1014, "bad gateway"): tungstenite reports and answers such a
/// Close as 1002, as if the code were reserved.
fn registered_close_tungstenite_refused(stream: &ReaderStream) -> Option<CloseFrame> {
    let code = stream.peer_close.code()?;
    if !close_code_is_sendable(code) || CloseCode::from(code).is_allowed() {
        return None;
    }
    Some(CloseFrame {
        code: CloseCode::from(code),
        reason: stream.peer_close.reason().unwrap_or_default().to_owned().into(),
    })
}

struct Reader {
    shared: Arc<Shared>,
    events: Sender<Event>,
    idle_timeout: Option<Duration>,
    close_timeout: Duration,
}

impl Reader {
    fn run(self, mut ws: WebSocket<ReaderStream>) {
        let mut peer_close = None;
        let mut listening = true;
        let failure = loop {
            match ws.read() {
                Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                    // Blocks while the event queue is full: backpressure, not loss.
                    if listening && self.events.send(Event::Message(msg)).is_err() {
                        listening = false; // nobody is listening: read on to the close
                    }
                }
                Ok(Message::Close(mut frame)) => {
                    self.shared.close_received.store(true, Ordering::Release);
                    if let Some(registered) = registered_close_tungstenite_refused(ws.get_ref()) {
                        // tungstenite turned it into 1002 and queued a 1002 answer: report
                        // the server's own code, and echo it (RFC 6455 §5.5.1).
                        ws.get_mut().echo_close = Some(registered.code.into());
                        frame = Some(registered);
                    }
                    peer_close = frame;
                    // Hand tungstenite's Close reply to the writer now (it drops it if our
                    // own Close went first), then wait, briefly, for the server to close
                    // the TCP connection as RFC 6455 §7.1.1 asks.
                    let _ = ws.flush();
                    let _ = ws.get_ref().sock.set_read_timeout(Some(self.close_timeout));
                }
                // A Ping's Pong goes out at the start of the next read(); nothing else to do.
                Ok(_) => {}
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => break None,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(WsError::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    if self.closing() {
                        break None;
                    }
                    break Some(match self.idle_timeout {
                        Some(idle) => ClientError::IdleTimeout(idle),
                        None => ClientError::Io(e),
                    });
                }
                Err(e) if self.closing() => {
                    debug!("reader: after the Close: {e}");
                    break None;
                }
                Err(WsError::Io(e)) => break Some(ClientError::Io(e)),
                Err(WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                    break Some(ClientError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection without a Close frame",
                    )));
                }
                Err(e) => {
                    // The server broke the protocol: fail the connection (RFC 6455 §7.1.7)
                    // with a Close that says why; the writer sends it and shuts down.
                    let (code, reason) = match close_policy::classify(&e) {
                        ReadEnd::Fail { code, reason } => (code, reason),
                        _ => (PROTOCOL_ERROR, "protocol error"),
                    };
                    let _ = ws.get_mut().write_all(&encode_close(code, reason));
                    break Some(ClientError::Protocol(e));
                }
            }
        };
        // Dropping the WebSocket drops the reply channel's only sender: the writer writes
        // what is left on it, shuts the socket down and ends.
        drop(ws);
        let writer_error = self.shared.writer_error().take();
        let error = writer_error.or(failure);
        if let Some(e) = &error {
            debug!("reader: connection ended: {e}");
        }
        if listening {
            let _ = self.events.send(Event::Disconnected {
                close: peer_close,
                error,
            });
        }
    }

    /// A Close has gone one way or the other: an EOF or timeout now is the end of the
    /// close handshake, not a failure.
    fn closing(&self) -> bool {
        self.shared.close_received.load(Ordering::Acquire) || self.shared.close_sent.load(Ordering::Acquire)
    }
}

struct Writer {
    sock: TcpStream,
    shared: Arc<Shared>,
    ping_interval: Option<Duration>,
    close_timeout: Duration,
    write_timeout: Duration,
    buf: Vec<u8>,
}

impl Writer {
    fn run(
        mut self,
        mut data: Receiver<Message>,
        ctrl: Receiver<Vec<u8>>,
        mut close: Receiver<Option<CloseFrame>>,
        _done: Sender<()>,
    ) {
        let mut rng = rand::rng();
        // Set once a Close has gone out: from then on nothing else is written, and the
        // server has until this instant to answer and close.
        let mut close_deadline: Option<Instant> = None;
        let mut next_ping = self.ping_interval.map(after);
        let result = loop {
            let timer = match close_deadline.or(next_ping) {
                Some(when) => at(when),
                None => never(),
            };
            select_biased! {
                recv(ctrl) -> raw => match raw {
                    Ok(bytes) => {
                        if close_deadline.is_some() {
                            continue; // a late Pong, or the reply to the server's reply
                        }
                        let (end, has_close) = frames_through_close(&bytes);
                        if let Err(e) = self.write(&bytes[..end]) {
                            break Err(e);
                        }
                        if has_close {
                            self.close_went_out(&mut close_deadline);
                        }
                        next_ping = self.ping_interval.map(after);
                    }
                    // The reader has ended, and everything it handed over is written.
                    Err(_) => break Ok(()),
                },
                recv(data) -> msg => match msg {
                    Ok(msg) => {
                        if close_deadline.is_some() {
                            continue; // RFC 6455 §5.5.1: nothing after a Close
                        }
                        if let Err(e) = self.write_message(msg, rng.random()) {
                            break Err(e);
                        }
                        next_ping = self.ping_interval.map(after);
                    }
                    Err(_) => data = never(), // every handle is gone; the reader decides
                },
                recv(close) -> frame => match frame {
                    Ok(frame) => {
                        if close_deadline.is_some() {
                            continue; // never two Close frames
                        }
                        if let Err(e) = self.write_close(frame, rng.random()) {
                            break Err(e);
                        }
                        self.close_went_out(&mut close_deadline);
                    }
                    Err(_) => close = never(),
                },
                recv(timer) -> _ => {
                    let now = Instant::now();
                    if let Some(deadline) = close_deadline {
                        if now >= deadline {
                            if self.shared.close_received.load(Ordering::Acquire) {
                                break Ok(()); // answered; the server just did not close TCP
                            }
                            break Err(ClientError::CloseTimeout(self.close_timeout));
                        }
                    } else if let Some(interval) = self.ping_interval {
                        if next_ping.is_some_and(|t| now >= t) {
                            if let Err(e) = self.write_frame(OpCode::Control(Control::Ping), &[], rng.random()) {
                                break Err(e);
                            }
                            next_ping = Some(after(interval));
                        }
                    }
                },
            }
        };
        if let Err(e) = result {
            debug!("writer: {e}");
            // Before the shutdown below, so the reader, woken by it, finds the cause.
            *self.shared.writer_error() = Some(e);
        }
        let _ = self.sock.shutdown(Shutdown::Both);
        // `_done` drops here: whoever waits in `Client::close` wakes.
    }

    fn close_went_out(&self, close_deadline: &mut Option<Instant>) {
        self.shared.close_sent.store(true, Ordering::Release);
        *close_deadline = Some(after(self.close_timeout));
    }

    fn write_message(&mut self, msg: Message, mask: [u8; 4]) -> Result<(), ClientError> {
        match msg {
            Message::Text(text) => self.write_frame(OpCode::Data(Data::Text), text.as_bytes(), mask),
            Message::Binary(bytes) => self.write_frame(OpCode::Data(Data::Binary), &bytes, mask),
            Message::Ping(bytes) => self.write_frame(OpCode::Control(Control::Ping), &bytes, mask),
            Message::Pong(bytes) => self.write_frame(OpCode::Control(Control::Pong), &bytes, mask),
            Message::Frame(frame) => {
                let mut header = frame.header().clone();
                header.mask = Some(mask);
                self.buf.clear();
                wire::encode_with_header(&mut self.buf, &header, frame.payload());
                self.flush_buf()
            }
            // `Client::send` routes Close to the close channel; nothing to do here.
            Message::Close(_) => Ok(()),
        }
    }

    fn write_close(&mut self, frame: Option<CloseFrame>, mask: [u8; 4]) -> Result<(), ClientError> {
        // A Close without a frame has an empty payload (RFC 6455 §5.5.1: the body is
        // optional).
        let payload = frame
            .as_ref()
            .map(|f| wire::close_payload(u16::from(f.code), &f.reason))
            .unwrap_or_default();
        self.write_frame(OpCode::Control(Control::Close), &payload, mask)
    }

    fn write_frame(&mut self, opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Result<(), ClientError> {
        // RFC 6455 §5.3: every client frame is masked.
        self.buf.clear();
        wire::encode_frame(&mut self.buf, opcode, Some(mask), payload);
        self.flush_buf()
    }

    fn flush_buf(&mut self) -> Result<(), ClientError> {
        let buf = std::mem::take(&mut self.buf);
        let written = self.write(&buf);
        self.buf = buf;
        if self.buf.capacity() > KEEP_WRITE_BUFFER {
            self.buf = Vec::new();
        }
        written
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.sock.write_all(bytes).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("a write to the server blocked for {:?}", self.write_timeout),
            )),
            _ => ClientError::Io(e),
        })
    }
}

/// A whole masked Close frame, as bytes (the reader hands these to the writer).
fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let payload = wire::close_payload(code, reason);
    wire::encode_frame(
        &mut out,
        OpCode::Control(Control::Close),
        Some(rand::random()),
        &payload,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_sees_a_close_among_the_replies() {
        let mut pong = Vec::new();
        wire::encode_frame(
            &mut pong,
            OpCode::Control(Control::Pong),
            Some([1, 2, 3, 4]),
            b"p",
        );
        let close = encode_close(1000, "bye");
        let mut both = pong.clone();
        both.extend_from_slice(&close);
        both.extend_from_slice(&pong);
        assert_eq!(frames_through_close(&pong), (pong.len(), false));
        assert_eq!(frames_through_close(&both), (pong.len() + close.len(), true));
        assert_eq!(frames_through_close(&[]), (0, false));
        assert_eq!(frames_through_close(&[0x8a]), (1, false));
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused() {
        assert!(header("X-Token", "abc").is_ok());
        assert!(header("Authorization", "Bearer x y").is_ok());
        for (name, value) in [
            ("Sec-WebSocket-Key", "x"),
            ("host", "evil"),
            ("Bad Name", "x"),
            ("", "x"),
            ("X-Inject", "a\r\nHost: evil"),
        ] {
            assert!(
                matches!(header(name, value), Err(ClientError::InvalidHeader { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn the_request_carries_origin_and_headers_in_order() {
        let config = ClientConfig {
            origin: Some("https://a.example".into()),
            headers: vec![("X-A".into(), "1".into()), ("X-A".into(), "2".into())],
            ..ClientConfig::default()
        };
        let url: WsUrl = "ws://127.0.0.1:9000/chat?x=1".parse().unwrap();
        let req = build_request(&url, &config).unwrap();
        assert_eq!(req.uri().path_and_query().map(|p| p.as_str()), Some("/chat?x=1"));
        assert_eq!(req.headers()["host"], "127.0.0.1:9000");
        assert_eq!(req.headers()["origin"], "https://a.example");
        let xs: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xs, ["1", "2"]);
    }
}
