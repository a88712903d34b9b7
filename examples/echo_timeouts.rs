//! Echo with a timeout on every read and write, the teaching version: std threads and
//! tungstenite only. Go would call `conn.SetReadDeadline` before each read and
//! `SetWriteDeadline` before each write; with OS threads the same thing is a socket
//! timeout, and a timed-out read is an ordinary error the connection thread handles.
//!
//! - The request head must arrive within `HANDSHAKE` (a slowloris client that sends half a
//!   request and waits is dropped, and holds only its own thread meanwhile).
//! - After the upgrade, a client that sends nothing for `IDLE` gets Close 1001.
//! - Every write may block at most `WRITE`: a client that stops reading cannot pin the
//!   thread forever.
//!
//! Run: `cargo run --example echo_timeouts`. In wshub: `handshake_phase`/`read_head` and
//! `run` in `src/server/connection.rs`, the write timeout in `src/server/writer.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error, HandshakeError, Message};

const HANDSHAKE: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(1);
const WRITE: Duration = Duration::from_secs(1);

/// Was this error a socket timeout? (Linux reports `WouldBlock` for `SO_RCVTIMEO`.)
fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// One connection, on its own thread, from the first byte to the end. Returns why it ended.
fn serve(sock: TcpStream) -> String {
    // Every blocking call below has an exit: one of these two timeouts.
    sock.set_read_timeout(Some(HANDSHAKE)).unwrap();
    sock.set_write_timeout(Some(WRITE)).unwrap();
    let mut ws = match tungstenite::accept(sock) {
        Ok(ws) => ws,
        // A read timeout mid-handshake shows as an interrupted (resumable) handshake.
        Err(HandshakeError::Interrupted(_)) => return "no request head in time: dropped".into(),
        Err(e) => return format!("bad handshake: {e}"),
    };
    ws.get_ref().set_read_timeout(Some(IDLE)).unwrap(); // from now on: the idle timeout
    loop {
        match ws.read() {
            Ok(msg) if msg.is_text() || msg.is_binary() => {
                if let Err(e) = ws.send(msg) {
                    return format!("write failed: {e}"); // includes a write timeout
                }
            }
            Ok(_) => {} // ping, pong: tungstenite answers pings itself
            Err(Error::Io(e)) if timed_out(&e) => {
                let close = CloseFrame {
                    code: CloseCode::Away,
                    reason: "idle timeout".into(),
                };
                let _ = ws.close(Some(close));
                let _ = ws.flush(); // bounded by the write timeout
                return "idle: sent Close 1001".into();
            }
            Err(Error::ConnectionClosed) => return "closed by the client".into(),
            Err(e) => return format!("ended: {e}"),
        }
    }
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            thread::spawn(move || println!("server: {}", serve(sock)));
        }
    });

    // 1. A client that echoes once, then goes quiet: the idle timeout closes it.
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/")).expect("connect");
    ws.send(Message::text("hello")).unwrap();
    println!("client: echoed {}", ws.read().unwrap());
    let quiet = Instant::now();
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                println!(
                    "client: Close {} '{}' after {:.1?} of silence",
                    u16::from(frame.code),
                    frame.reason,
                    quiet.elapsed()
                );
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }

    // 2. A slowloris: half a request head, then nothing. The server hangs up.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(HANDSHAKE * 5)).unwrap(); // our own watchdog
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    println!("slowloris: hung up on after {:.1?}", started.elapsed());

    thread::sleep(Duration::from_millis(200)); // let the server's threads print their end
}
