//! The soak's clients: subscribers that log everything they are handed, publishers over
//! `/ws` and `POST /api/publish`, and hostile clients.
//!
//! With several nodes, each client starts on a node of its own and moves to the next one
//! on every reconnection (a subscriber resumes there with `since`: it fails over), and the
//! HTTP publisher and the hostile clients take the nodes in turn.
//!
//! **Owns**: each worker is one thread owning its sockets, its log file and its random
//! state. **Woken** by its socket (reads time out every [`TICK`] so it can look at the
//! clock and the run's [`Stage`]); **ended** by the stage reaching `Stop`. Every client is
//! raw tungstenite over a std socket, so what is logged is what the wire said.

use crate::event::{Event, LogFile, Pos};
use crate::server::Life;
use serde_json::{Value, json};
use socket2::{Domain, SockRef, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocket;
use tungstenite::{Error as WsError, Message};

/// How often a blocked read returns to look at the clock and the stage.
pub const TICK: Duration = Duration::from_millis(200);
/// Connect and handshake timeout of every client.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a publisher waits for its ack before it reconnects and retries.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Times a publication is retried (same key) before the publisher gives it up.
pub const PUB_TRIES: u32 = 6;
/// The API key the soak's server runs with.
pub const API_KEY: &str = "soak-key";

/// The run's stage: faults and publishing (`LOAD`), publishers stopped and subscribers
/// reading what is left without faults (`QUIESCE`), everyone gone (`STOP`).
pub type Stage = Arc<AtomicU8>;
pub const LOAD: u8 = 0;
pub const QUIESCE: u8 = 1;
pub const STOP: u8 = 2;

/// xorshift64*: the soak needs varied timings, not good randomness.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A duration between `lo` and `hi` milliseconds.
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

pub type Ws = WebSocket<TcpStream>;

/// Opens `/ws`. A `rcvbuf` makes the client's socket small, so a consumer that stops
/// reading fills the server's queue quickly.
pub fn connect(addr: SocketAddr, rcvbuf: Option<usize>) -> Result<Ws, String> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).map_err(|e| e.to_string())?;
    }
    sock.connect_timeout(&addr.into(), CONNECT_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), tcp).map_err(|e| e.to_string())?;
    ws.get_ref()
        .set_read_timeout(Some(TICK))
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// One frame, or `Ok(None)` when the read timed out. Errors end the connection.
pub fn read(ws: &mut Ws) -> Result<Option<Value>, String> {
    match ws.read() {
        Ok(Message::Text(t)) => serde_json::from_str(t.as_str())
            .map(Some)
            .map_err(|e| format!("server sent bad JSON: {e}")),
        Ok(Message::Close(c)) => Err(format!("close {c:?}")),
        Ok(_) => Ok(None),
        Err(WsError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn send(ws: &mut Ws, v: &Value) -> Result<(), String> {
    ws.send(Message::text(v.to_string())).map_err(|e| e.to_string())
}

/// Resets the connection: SO_LINGER 0, then close, so the server sees an RST and no Close.
pub fn reset(ws: Ws) {
    let _ = SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
    drop(ws);
}

/// The data's canonical text (keys sorted), as the checker compares it.
pub fn canon(v: &Value) -> String {
    v.to_string()
}

/// How a subscriber misbehaves while the run is loading.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Reads everything; reconnects only when cut (restarts).
    Keeper,
    /// Resets its connection (RST, no Close) at random, and resumes with `since`.
    Dropper,
    /// Stops reading at random until the server cuts it, then comes back with `since`.
    Slow,
}

/// The nodes a client may use, and the one it starts on; each reconnection moves to the
/// next (one node: always the same).
#[derive(Clone)]
pub struct Nodes {
    pub addrs: Vec<SocketAddr>,
    pub next: usize,
}

impl Nodes {
    /// The node to use now (its index and address); the next call gives the next one.
    pub fn take(&mut self) -> (u64, SocketAddr) {
        let i = self.next % self.addrs.len();
        self.next = i + 1;
        (i as u64, self.addrs[i])
    }
}

/// A subscriber chain: subscribes to `ch`, logs every reply and publication, and resumes
/// with `since` (its last position) after every disconnection, on the next node, until
/// the stage is STOP.
#[allow(clippy::too_many_arguments)]
pub fn subscriber(
    mut nodes: Nodes,
    dir: &Path,
    name: String,
    ch: String,
    mode: Mode,
    stage: Stage,
    seed: u64,
) {
    let mut log = LogFile::create(dir, &name).expect("subscriber log");
    let mut rng = Rng::new(seed);
    let mut last: Option<Pos> = None;
    let mut sub_id = 0u64;
    let mut pause_more = Duration::ZERO;
    while stage.load(Ordering::Acquire) != STOP {
        let rcvbuf = matches!(mode, Mode::Slow).then_some(4096);
        let (node, addr) = nodes.take();
        let mut ws = match connect(addr, rcvbuf) {
            Ok(ws) => ws,
            Err(_) => {
                thread::sleep(rng.ms(50, 250));
                continue;
            }
        };
        let mut cmd = json!({"id": 1, "op": "sub", "ch": ch});
        if let Some(p) = &last {
            cmd["since"] = json!({"epoch": p.epoch, "offset": p.offset});
        }
        if send(&mut ws, &cmd).is_err() {
            continue;
        }
        sub_id += 1;
        let sub = sub_id;
        let mut epoch: Option<String> = None;
        let mut fault_at = Instant::now()
            + match mode {
                Mode::Keeper => Duration::from_secs(3600),
                Mode::Dropper => rng.ms(500, 4000),
                Mode::Slow => rng.ms(2000, 5000),
            };
        let mut paused = false;
        let why = loop {
            if stage.load(Ordering::Acquire) == STOP {
                let _ = ws.close(None);
                let _ = ws.flush();
                break "stop";
            }
            if stage.load(Ordering::Acquire) == LOAD && Instant::now() >= fault_at {
                match mode {
                    Mode::Keeper => {}
                    Mode::Dropper => {
                        reset(ws);
                        log.log(&Event::End {
                            chain: name.clone(),
                            sub,
                            why: "rst".into(),
                        });
                        break "";
                    }
                    Mode::Slow => {
                        // Stop reading; the server cuts us once our queue is full.
                        // Each pause that did not get us cut makes the next longer.
                        let until = Instant::now() + rng.ms(5000, 10000) + pause_more;
                        while Instant::now() < until && stage.load(Ordering::Acquire) == LOAD {
                            thread::sleep(TICK);
                        }
                        pause_more += Duration::from_secs(5);
                        paused = true;
                        fault_at = Instant::now() + rng.ms(2000, 5000);
                    }
                }
            }
            let msg = match read(&mut ws) {
                Ok(None) => continue,
                Ok(Some(m)) => m,
                // A cut after a pause is (most likely) the server's slow-consumer cut.
                Err(_) if paused => {
                    pause_more = Duration::ZERO;
                    break "slow-cut";
                }
                Err(_) => break "cut",
            };
            if msg.get("id").is_some() {
                let Some(ok) = msg.get("ok") else {
                    if msg["err"]["code"].as_u64() == Some(6) {
                        // Unavailable: the engine is down or the node drains. Retry.
                        log.log(&Event::Refused {
                            who: format!("{name}/{sub}"),
                            op: "sub".into(),
                            node,
                        });
                        let _ = ws.close(None);
                        let _ = ws.flush();
                        thread::sleep(rng.ms(50, 250));
                        break "";
                    }
                    log.log(&Event::Unexpected {
                        who: format!("{name}/{sub}"),
                        what: msg.to_string(),
                    });
                    break "cut";
                };
                let e = ok["epoch"].as_str().unwrap_or_default().to_string();
                let top = ok["offset"].as_u64().unwrap_or_default();
                log.log(&Event::Sub {
                    chain: name.clone(),
                    sub,
                    ch: ch.clone(),
                    since: last.clone(),
                    epoch: e.clone(),
                    offset: top,
                    recovered: ok.get("recovered").and_then(Value::as_bool),
                    node,
                });
                for p in ok["pubs"].as_array().into_iter().flatten() {
                    log.log(&Event::Deliver {
                        chain: name.clone(),
                        sub,
                        ch: ch.clone(),
                        epoch: e.clone(),
                        offset: p["offset"].as_u64().unwrap_or_default(),
                        data: canon(&p["data"]),
                    });
                }
                last = Some(Pos {
                    epoch: e.clone(),
                    offset: top,
                });
                epoch = Some(e);
            } else if msg["push"] == "pub" {
                let off = msg["offset"].as_u64().unwrap_or_default();
                let Some(e) = epoch.clone() else {
                    log.log(&Event::Unexpected {
                        who: format!("{name}/{sub}"),
                        what: format!("push before the sub reply: {msg}"),
                    });
                    continue;
                };
                log.log(&Event::Deliver {
                    chain: name.clone(),
                    sub,
                    ch: ch.clone(),
                    epoch: e.clone(),
                    offset: off,
                    data: canon(&msg["data"]),
                });
                last = Some(Pos {
                    epoch: e,
                    offset: off,
                });
            } else if msg["push"] == "unsub" {
                log.log(&Event::Unsub {
                    chain: name.clone(),
                    sub,
                    ch: ch.clone(),
                    code: msg["code"].as_u64().unwrap_or_default(),
                });
                break "cut";
            }
        };
        if !why.is_empty() {
            log.log(&Event::End {
                chain: name.clone(),
                sub,
                why: why.into(),
            });
        }
    }
}

/// What a publisher needs: where, which channels, the run's stage and the key holder's
/// lifetime.
#[derive(Clone)]
pub struct PubCtx {
    pub nodes: Nodes,
    pub channels: Vec<String>,
    pub stage: Stage,
    pub life: Life,
    pub every: Duration,
    /// Bytes of padding in each publication's data.
    pub pad: usize,
}

/// Publishes over `/ws` with a key per publication until the stage leaves LOAD; retries a
/// publication (same key) on a new connection (the next node) when its ack does not come;
/// every 50th is sent a second time on purpose, to exercise the idempotency window.
pub fn ws_publisher(mut ctx: PubCtx, dir: &Path, name: String) {
    let mut log = LogFile::create(dir, &name).expect("publisher log");
    let mut conn: Option<(Ws, u64)> = None;
    let mut id = 0u64;
    let mut n = 0u64;
    while ctx.stage.load(Ordering::Acquire) == LOAD {
        n += 1;
        let ch = &ctx.channels[n as usize % ctx.channels.len()];
        let key = format!("{name}-{n}");
        let data = json!({"p": name, "n": n, "pad": ".".repeat(ctx.pad)});
        let times = if n.is_multiple_of(50) { 2 } else { 1 };
        for _ in 0..times {
            for _try in 0..PUB_TRIES {
                if conn.is_none() {
                    let (node, addr) = ctx.nodes.take();
                    match connect(addr, None) {
                        Ok(ws) => conn = Some((ws, node)),
                        Err(_) => {
                            thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    }
                }
                let (ws, node) = conn.as_mut().expect("connected");
                id += 1;
                // The key holder's lifetime, if the same before the request and after the
                // answer. (A restarted memory server's lifetime moves on before it starts,
                // and an old one answers nothing once it has exited.)
                let before = ctx.life.load(Ordering::Acquire);
                let cmd = json!({"id": id, "op": "pub", "ch": ch, "data": data, "key": key});
                match await_reply(ws, &cmd, id) {
                    Ok(ok) => {
                        let same = before == ctx.life.load(Ordering::Acquire);
                        log.log(&Event::Ack {
                            publisher: name.clone(),
                            via: "ws".into(),
                            ch: ch.clone(),
                            key: Some(key.clone()),
                            epoch: ok["epoch"].as_str().unwrap_or_default().into(),
                            offset: ok["offset"].as_u64().unwrap_or_default(),
                            data: canon(&data),
                            life: same.then_some(before),
                        });
                        break;
                    }
                    Err(Reply::Refused(err)) => {
                        // 6 (unavailable: the node drains, or its engine is down) is worth
                        // a retry, with the same key.
                        if err["code"].as_u64() == Some(6) {
                            log.log(&Event::Refused {
                                who: name.clone(),
                                op: "pub".into(),
                                node: *node,
                            });
                        } else {
                            log.log(&Event::Unexpected {
                                who: name.clone(),
                                what: err.to_string(),
                            });
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                    Err(Reply::Lost) => {
                        conn = None;
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        thread::sleep(ctx.every);
    }
    if let Some((mut ws, _)) = conn {
        let _ = ws.close(None);
        let _ = ws.flush();
    }
}

enum Reply {
    Refused(Value),
    Lost,
}

/// Sends `cmd` and waits for the reply with `id`, ignoring pushes.
fn await_reply(ws: &mut Ws, cmd: &Value, id: u64) -> Result<Value, Reply> {
    send(ws, cmd).map_err(|_| Reply::Lost)?;
    let deadline = Instant::now() + ACK_TIMEOUT;
    while Instant::now() < deadline {
        match read(ws) {
            Ok(Some(m)) if m["id"].as_u64() == Some(id) => {
                return match m.get("ok") {
                    Some(ok) => Ok(ok.clone()),
                    None => Err(Reply::Refused(m["err"].clone())),
                };
            }
            Ok(_) => {}
            Err(_) => return Err(Reply::Lost),
        }
    }
    Err(Reply::Lost)
}

/// Publishes through `POST /api/publish`, one connection a request, taking the nodes in
/// turn; every other publication carries a key (retried with it), the rest none (retried
/// as new).
pub fn http_publisher(mut ctx: PubCtx, dir: &Path, name: String) {
    let mut log = LogFile::create(dir, &name).expect("publisher log");
    let mut n = 0u64;
    while ctx.stage.load(Ordering::Acquire) == LOAD {
        n += 1;
        let ch = &ctx.channels[n as usize % ctx.channels.len()];
        let key = n.is_multiple_of(2).then(|| format!("{name}-{n}"));
        let data = json!({"p": name, "n": n, "pad": ".".repeat(ctx.pad)});
        let mut body = json!({"ch": ch, "data": data});
        if let Some(k) = &key {
            body["key"] = json!(k);
        }
        for _try in 0..PUB_TRIES {
            let before = ctx.life.load(Ordering::Acquire);
            let (node, addr) = ctx.nodes.take();
            match http_post(addr, "/api/publish", &body.to_string()) {
                Ok((200, ok)) => {
                    let after = ctx.life.load(Ordering::Acquire);
                    log.log(&Event::Ack {
                        publisher: name.clone(),
                        via: "http".into(),
                        ch: ch.clone(),
                        key: key.clone(),
                        epoch: ok["epoch"].as_str().unwrap_or_default().into(),
                        offset: ok["offset"].as_u64().unwrap_or_default(),
                        data: canon(&data),
                        life: (before == after).then_some(after),
                    });
                    break;
                }
                Ok((503, _)) => {
                    log.log(&Event::Refused {
                        who: name.clone(),
                        op: "pub".into(),
                        node,
                    });
                    thread::sleep(Duration::from_millis(100));
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
                Ok((status, body)) => {
                    log.log(&Event::Unexpected {
                        who: name.clone(),
                        what: format!("{status} {body}"),
                    });
                    break;
                }
            }
        }
        thread::sleep(ctx.every);
    }
}

/// One `POST` with the soak's API key; returns the status and the JSON body.
pub fn http_post(addr: SocketAddr, path: &str, body: &str) -> Result<(u16, Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(ACK_TIMEOUT)).map_err(|e| e.to_string())?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: apikey {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Hostile clients at a low rate, in turn: garbage bytes, an oversized frame, a slowloris,
/// taking the nodes in turn. Each logs what the server did; an answer the server must
/// never give is marked `BAD`.
pub fn hostile(mut nodes: Nodes, dir: &Path, stage: Stage, max_message: usize, seed: u64) {
    let mut log = LogFile::create(dir, "hostile").expect("hostile log");
    let mut rng = Rng::new(seed);
    let mut turn = 0u64;
    while stage.load(Ordering::Acquire) == LOAD {
        turn += 1;
        let (_, addr) = nodes.take();
        let (kind, outcome) = match turn % 3 {
            0 => ("garbage", garbage(addr, &mut rng)),
            1 => ("oversized", oversized(addr, max_message)),
            _ => ("slowloris", slowloris(addr, &stage)),
        };
        log.log(&Event::Hostile {
            kind: kind.into(),
            outcome,
        });
        thread::sleep(rng.ms(300, 1000));
    }
}

/// How long a hostile client waits for the server to end its connection; well above the
/// server's `--handshake-timeout`.
const HOSTILE_PATIENCE: Duration = Duration::from_secs(8);

fn garbage(addr: SocketAddr, rng: &mut Rng) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
        return "no server".into();
    };
    let bytes: Vec<u8> = (0..512).map(|_| rng.next() as u8).chain(*b"\r\n\r\n").collect();
    let _ = s.write_all(&bytes);
    let _ = s.set_read_timeout(Some(HOSTILE_PATIENCE));
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) if resp.is_empty() => "closed".into(),
        Ok(_) => String::from_utf8_lossy(resp.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned(),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            format!("BAD: still open after {HOSTILE_PATIENCE:?}")
        }
        Err(e) => format!("reset ({e})"),
    }
}

fn oversized(addr: SocketAddr, max_message: usize) -> String {
    let Ok(mut ws) = connect(addr, None) else {
        return "no server".into();
    };
    let big = "x".repeat(max_message + 1024);
    if ws.send(Message::text(big)).is_err() {
        return "closed while sending".into();
    }
    let deadline = Instant::now() + HOSTILE_PATIENCE;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(Some(f))) if u16::from(f.code) == 1009 => return "close 1009".into(),
            Ok(Message::Close(Some(f))) if u16::from(f.code) == 1001 => return "close 1001 (restart)".into(),
            Ok(Message::Close(f)) => return format!("BAD: close {f:?}, want 1009"),
            Ok(_) => {}
            Err(WsError::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return format!("ended without close ({e})"),
        }
    }
    format!("BAD: no close after {HOSTILE_PATIENCE:?}")
}

fn slowloris(addr: SocketAddr, stage: &Stage) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
        return "no server".into();
    };
    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: soak\r\n");
    let _ = s.set_nonblocking(true);
    let start = Instant::now();
    let mut probe = [0u8; 256];
    while start.elapsed() < HOSTILE_PATIENCE && stage.load(Ordering::Acquire) == LOAD {
        match s.read(&mut probe) {
            Ok(0) => return format!("cut after {:.1}s", start.elapsed().as_secs_f64()),
            Ok(_) => return format!("answered after {:.1}s", start.elapsed().as_secs_f64()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return format!("reset after {:.1}s", start.elapsed().as_secs_f64()),
        }
        if s.write_all(b"X").is_err() {
            return format!("cut after {:.1}s", start.elapsed().as_secs_f64());
        }
        thread::sleep(Duration::from_millis(400));
    }
    if stage.load(Ordering::Acquire) != LOAD {
        return "run over".into();
    }
    format!("BAD: still open after {HOSTILE_PATIENCE:?}")
}
