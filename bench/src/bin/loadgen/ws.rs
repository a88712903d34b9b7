//! A minimal RFC 6455 client over a tokio `TcpStream`, for the load generator.
//!
//! Why not `tokio_tungstenite::WebSocketStream` on the client side: on a 2-core box the
//! load generator gets one core, the server the other, so every microsecond the client
//! spends per message shows up as server "throughput" lost. This client does exactly one
//! `write` per sent frame and reads into one per-connection buffer, parses frames in
//! place and answers pings. It is a correct client for what the benchmark sends (masked
//! frames with random keys, Sec-WebSocket-Accept checked, fragmented messages
//! reassembled), not a general one (no extensions, no subprotocols).
//! The key derivation comes from tungstenite.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// What [`Ws::recv`] returns.
pub enum Msg<'a> {
    /// A text or binary message (opcode, payload).
    #[allow(dead_code)]
    Data(u8, &'a [u8]),
    /// A Close frame; the status code if the frame had one.
    Close(Option<u16>),
}

pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
    frag: Vec<u8>,
    frag_op: u8,
    rng: u64,
    /// Answer pings (off for a connection read from inside `select!`, so that `recv`
    /// never writes and stays cancel-safe).
    pub auto_pong: bool,
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Ws {
    /// TCP connect + HTTP upgrade. `seed` feeds the mask-key generator.
    pub async fn connect(addr: SocketAddr, path: &str, seed: u64) -> io::Result<Ws> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut ws = Ws {
            stream,
            buf: vec![0; 1024],
            start: 0,
            end: 0,
            wbuf: Vec::with_capacity(128),
            frag: Vec::new(),
            frag_op: 0,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            auto_pong: true,
        };
        ws.stream.write_all(req.as_bytes()).await?;
        // Read the response head.
        let head_len = loop {
            if let Some(p) = find(&ws.buf[..ws.end], b"\r\n\r\n") {
                break p + 4;
            }
            if ws.end == ws.buf.len() {
                if ws.buf.len() >= 16 * 1024 {
                    return Err(err("response head too long"));
                }
                ws.buf.resize(ws.buf.len() * 2, 0);
            }
            let n = ws.stream.read(&mut ws.buf[ws.end..]).await?;
            if n == 0 {
                return Err(err("EOF during handshake"));
            }
            ws.end += n;
        };
        let head = std::str::from_utf8(&ws.buf[..head_len]).map_err(|_| err("non-UTF-8 head"))?;
        let status_line = head.lines().next().unwrap_or("");
        if !status_line.starts_with("HTTP/1.1 101") {
            return Err(err(format!("handshake refused: {status_line}")));
        }
        let want = derive_accept_key(key.as_bytes());
        let ok = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
            })
        });
        if !ok {
            return Err(err("bad Sec-WebSocket-Accept"));
        }
        ws.start = head_len;
        Ok(ws)
    }

    /// Reads up to `n` bytes at a time from now on (the buffer only grows): a
    /// connection that falls behind then catches up in fewer system calls.
    pub fn read_up_to(&mut self, n: usize) {
        if self.buf.len() < n {
            self.buf.resize(n, 0);
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64*: unpredictable enough for a benchmark's mask keys.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) as u32).to_ne_bytes()
    }

    /// Encode one masked frame into `wbuf` and write it with a single `write_all`.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mask = self.next_mask();
        self.wbuf.clear();
        self.wbuf.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            self.wbuf.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            self.wbuf.push(0x80 | 126);
            self.wbuf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.wbuf.push(0x80 | 127);
            self.wbuf.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.wbuf.extend_from_slice(&mask);
        let at = self.wbuf.len();
        self.wbuf.extend_from_slice(payload);
        for (i, b) in self.wbuf[at..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        self.stream.write_all(&self.wbuf).await
    }

    pub async fn send_close(&mut self, code: u16) -> io::Result<()> {
        self.send(OP_CLOSE, &code.to_be_bytes()).await
    }

    /// Next text/binary message or Close frame. Pings are answered, pongs skipped.
    /// EOF is an `UnexpectedEof` error.
    pub async fn recv(&mut self) -> io::Result<Msg<'_>> {
        loop {
            match self.parse()? {
                Some((fin, op, ps, pe)) => {
                    self.start = pe;
                    match op {
                        OP_PING if !self.auto_pong => {}
                        OP_PING => {
                            let p = self.buf[ps..pe].to_vec();
                            self.send(OP_PONG, &p).await?;
                        }
                        OP_PONG => {}
                        OP_CLOSE => {
                            let code =
                                (pe - ps >= 2).then(|| u16::from_be_bytes([self.buf[ps], self.buf[ps + 1]]));
                            return Ok(Msg::Close(code));
                        }
                        OP_TEXT | OP_BINARY if fin && self.frag_op == 0 => {
                            return Ok(Msg::Data(op, &self.buf[ps..pe]));
                        }
                        OP_TEXT | OP_BINARY if self.frag_op == 0 => {
                            self.frag_op = op;
                            self.frag.clear();
                            let (b, f) = (&self.buf, &mut self.frag);
                            f.extend_from_slice(&b[ps..pe]);
                        }
                        OP_CONT if self.frag_op != 0 => {
                            let (b, f) = (&self.buf, &mut self.frag);
                            f.extend_from_slice(&b[ps..pe]);
                            if fin {
                                let op = std::mem::take(&mut self.frag_op);
                                return Ok(Msg::Data(op, &self.frag));
                            }
                        }
                        _ => return Err(err(format!("unexpected opcode {op:#x}"))),
                    }
                }
                None => self.fill().await?,
            }
        }
    }

    /// Parse one complete frame at `start`: (fin, opcode, payload start, payload end).
    fn parse(&mut self) -> io::Result<Option<(bool, u8, usize, usize)>> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let op = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut hdr) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return Ok(None),
            l => (l as usize, 2),
        };
        if len > 64 << 20 {
            return Err(err("frame too large"));
        }
        let mut mask = None;
        if masked {
            if b.len() < hdr + 4 {
                return Ok(None);
            }
            mask = Some([b[hdr], b[hdr + 1], b[hdr + 2], b[hdr + 3]]);
            hdr += 4;
        }
        if b.len() < hdr + len {
            // Make room for the whole frame.
            let need = hdr + len;
            if self.buf.len() - self.start < need {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < need {
                    self.buf.resize(need.next_power_of_two(), 0);
                }
            }
            return Ok(None);
        }
        let ps = self.start + hdr;
        let pe = ps + len;
        if let Some(m) = mask {
            for (i, x) in self.buf[ps..pe].iter_mut().enumerate() {
                *x ^= m[i & 3];
            }
        }
        Ok(Some((fin, op, ps, pe)))
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
        }
        self.end += n;
        Ok(())
    }

    /// Close handshake from our side: send Close(code), then read until the peer's
    /// Close or EOF.
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        self.send_close(code).await?;
        loop {
            match self.recv().await {
                Ok(Msg::Close(_)) => return Ok(()),
                Ok(Msg::Data(..)) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
