//! Drain-then-exit with a deadline. Go would wire `signal.NotifyContext` to
//! `http.Server.Shutdown(ctx)` and then close its hijacked WebSocket connections itself;
//! wshub does the whole sequence: stop accepting, send every client what is queued for
//! it and then Close 1001, wait for the close handshakes up to `drain_timeout`, cut the
//! rest, join every thread.
//!
//! Two clients are on /chat: `polite` answers the Close (tungstenite does that while it
//! reads), `deaf` never reads again and is cut at the deadline. Three broadcasts are sent
//! just before the shutdown starts; `polite` still gets all three before the Close.
//!
//! A real program starts the drain from its signal handler (`wshub serve` does it with the
//! `ctrlc` crate); here a thread of ours plays that part.
//! Run: `cargo run --example drain`. The code: `drain` in `src/server/shutdown.rs`.

use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use wshub::{Config, Server};

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// Connects to /chat and waits until its own hello comes back: it is a member from then on.
fn join(addr: std::net::SocketAddr, name: &str) -> Client {
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/chat")).expect("connect");
    ws.send(Message::text(format!("hello from {name}")))
        .expect("send");
    while ws.read().expect("read") != Message::text(format!("hello from {name}")) {}
    ws
}

fn main() {
    let mut config = Config::default();
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.drain_timeout = Duration::from_secs(1); // how long the close handshakes may take
    let server = Server::start(config).expect("start");
    let addr = server.local_addr();

    let deaf = join(addr, "deaf"); // from now on it never reads
    let mut polite = join(addr, "polite");
    let polite = thread::spawn(move || {
        loop {
            match polite.read() {
                Ok(Message::Text(t)) => println!("polite: {t}"),
                Ok(Message::Close(Some(frame))) => {
                    println!("polite: Close {} {}", u16::from(frame.code), frame.reason)
                }
                Ok(_) => {}
                Err(_) => break, // the server closed the TCP connection after the handshake
            }
        }
    });

    // The "signal handler": three broadcasts, then the shutdown, from another thread.
    let hub = server.hub();
    let stop = server.shutdown_handle();
    thread::spawn(move || {
        for n in 1..=3 {
            hub.broadcast("/chat", Message::text(format!("news {n}")))
                .expect("broadcast");
        }
        stop.shutdown(); // returns at once; the thread in `wait` does the drain
    });

    let report = server.wait(); // blocks until the drain is over and every thread joined
    polite.join().expect("polite client");
    drop(deaf);
    println!(
        "drained {} connections in {:.1?}: {} closed cleanly, {} cut at the deadline",
        report.connections, report.elapsed, report.closed, report.cut
    );
    match TcpStream::connect(addr) {
        Ok(_) => println!("the port still accepts connections (it should not)"),
        Err(_) => println!("the server is gone: new connections are refused"),
    }
}
