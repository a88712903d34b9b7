//! Helpers for the client tests (`tests/client_*.rs`): waiting for events with a limit,
//! fast backoff settings, and a hand-rolled one-connection server that lets a test see
//! and write raw frames (to check masking, Close exactly once, Pong replies).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use wshub::client::{Event, ReconnectConfig};

/// How long a test waits for any one expected event before failing.
pub const EVENT_LIMIT: Duration = Duration::from_secs(10);

/// Reconnect settings for tests: 20 ms doubling to 100 ms, seeded.
pub fn fast_reconnect() -> ReconnectConfig {
    let mut c = ReconnectConfig::default();
    c.backoff.initial = Duration::from_millis(20);
    c.backoff.max = Duration::from_millis(100);
    c.seed = Some(7);
    c
}

/// Waits for the first event for which `want` is true; other events are skipped and
/// listed in the failure message. Fails after `limit`, or if the channel ends first.
pub fn wait_for<E: std::fmt::Debug>(events: &Receiver<E>, what: &str, want: impl Fn(&E) -> bool) -> E {
    let deadline = Instant::now() + EVENT_LIMIT;
    let mut skipped = Vec::new();
    loop {
        match events.recv_deadline(deadline) {
            Ok(e) if want(&e) => return e,
            Ok(e) => skipped.push(format!("{e:?}")),
            Err(RecvTimeoutError::Timeout) => panic!("no {what} within {EVENT_LIMIT:?}; saw {skipped:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("events ended before {what}; saw {skipped:#?}"),
        }
    }
}

/// The text of an [`Event::Message`] carrying a text message.
pub fn text_of(event: &Event) -> Option<&str> {
    match event {
        Event::Message(wshub::Message::Text(t)) => Some(t.as_str()),
        _ => None,
    }
}

/// Waits for a text message equal to `text`.
pub fn wait_for_text(events: &Receiver<Event>, text: &str) {
    wait_for(events, &format!("message {text:?}"), |e| text_of(e) == Some(text));
}

/// Waits until the event channel disconnects (the session or connection has ended),
/// returning what arrived before.
pub fn drain_to_end(events: &Receiver<Event>) -> Vec<Event> {
    let deadline = Instant::now() + EVENT_LIMIT;
    let mut seen = Vec::new();
    loop {
        match events.recv_deadline(deadline) {
            Ok(e) => seen.push(e),
            Err(RecvTimeoutError::Disconnected) => return seen,
            Err(RecvTimeoutError::Timeout) => {
                panic!("events did not end within {EVENT_LIMIT:?}; saw {seen:#?}")
            }
        }
    }
}

/// A loopback address with nothing listening: connecting is refused at once.
pub fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A frame as the client sent it, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenFrame {
    pub opcode: u8,
    pub fin: bool,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl SeenFrame {
    /// For a Close frame: its code, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A listening socket whose connections the test handles by hand.
pub struct RawServer {
    pub listener: TcpListener,
    pub addr: SocketAddr,
}

impl RawServer {
    pub fn bind() -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        RawServer { listener, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Accepts one connection and answers its upgrade with 101.
    pub fn accept(&self) -> RawConn {
        let (sock, _) = self.listener.accept().unwrap();
        sock.set_read_timeout(Some(EVENT_LIMIT)).unwrap();
        let mut conn = RawConn {
            sock,
            head: String::new(),
            buf: Vec::new(),
        };
        conn.head = conn.read_head();
        let key = conn
            .header("sec-websocket-key")
            .unwrap_or_else(|| panic!("no key in {}", conn.head));
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        conn.sock.write_all(response.as_bytes()).unwrap();
        conn
    }
}

/// One connection on a [`RawServer`], after the handshake.
pub struct RawConn {
    pub sock: TcpStream,
    /// The request head the client sent.
    pub head: String,
    buf: Vec<u8>,
}

impl RawConn {
    fn read_head(&mut self) -> String {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = self.buf.split_off(i + 4);
                let head = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf = rest;
                return head;
            }
            let n = self.sock.read(&mut chunk).expect("request head");
            assert!(n > 0, "client closed during the handshake");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A request header's value (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// Writes one unmasked server frame with FIN set.
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126, "small frames only");
        let mut out = vec![0x80 | opcode, payload.len() as u8];
        out.extend_from_slice(payload);
        self.sock.write_all(&out).unwrap();
    }

    /// Writes a Close frame with `code` and `reason`.
    pub fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send_frame(0x8, &payload);
    }

    /// Reads one client frame; `None` at EOF or on a read error.
    pub fn read_frame(&mut self) -> Option<SeenFrame> {
        let mut chunk = [0u8; 65536];
        loop {
            if let Some((frame, used)) = parse_client_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            match self.sock.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until the client closes the TCP connection.
    pub fn frames_until_eof(&mut self) -> Vec<SeenFrame> {
        let mut frames = Vec::new();
        while let Some(f) = self.read_frame() {
            frames.push(f);
        }
        frames
    }
}

/// Parses one client frame from the front of `buf`, unmasking it.
pub fn parse_client_frame(buf: &[u8]) -> Option<(SeenFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return None;
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < at + len {
        return None;
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    let frame = SeenFrame {
        opcode: buf[0] & 0x0F,
        fin: buf[0] & 0x80 != 0,
        masked,
        payload,
    };
    Some((frame, at + len))
}

/// A minimal in-order echo server on tungstenite, one thread per connection: each
/// message is echoed before the next is read, so a Close reply always comes after
/// every echo. (The wshub server promises the same order, its writer flushing queued
/// echoes ahead of a Close; this one is simply smaller, and independent of the server,
/// for the tests of the client's close ordering.)
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(EVENT_LIMIT));
                    let Ok(mut ws) = tungstenite::accept(stream) else {
                        return;
                    };
                    loop {
                        match ws.read() {
                            Ok(m @ (wshub::Message::Text(_) | wshub::Message::Binary(_))) => {
                                if ws.send(m).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}
