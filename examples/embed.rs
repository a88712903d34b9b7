//! Embedding wshub in a plain threaded program: no async runtime anywhere.
//!
//! The program starts a server on a free port with one route of its own, runs a ticker
//! thread that broadcasts through the hub, connects a client of its own, and after a
//! few ticks shuts the server down and prints the drain report. With `--forever` it keeps
//! serving until Ctrl-C instead (try `wshub connect ws://ADDR/chat` against it).
//!
//! Threads here: main (starts everything, then waits), the ticker (ours), the client
//! reader (ours), and the server's own accept, hub and per-connection threads.
//!
//! Run: `cargo run --example embed` (or `-- --forever`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, bounded};
use wshub::{Config, Connection, Handler, Message, Server};

/// A route of our own: answers each message with how many this connection has sent.
/// Per-connection state would live in the handler keyed by `conn.id()`; this one keeps
/// a global counter to stay short.
struct Counter {
    total: AtomicU64,
}

impl Handler for Counter {
    fn on_open(&self, conn: &Connection) {
        println!("[server] connection {} opened on {}", conn.id(), conn.path());
    }

    fn on_message(&self, conn: &Connection, _msg: Message) {
        let n = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = conn.send(Message::text(format!("message #{n}")));
    }

    fn on_close(&self, conn: &Connection) {
        println!("[server] connection {} closed", conn.id());
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let forever = std::env::args().any(|a| a == "--forever");

    let mut config = Config::default();
    config.addr = "127.0.0.1:0".parse().expect("a valid address");
    let server = Server::builder(config)
        .route(
            "/count",
            Counter {
                total: AtomicU64::new(0),
            },
        )
        .start()
        .unwrap_or_else(|e| {
            eprintln!("cannot start: {e}");
            std::process::exit(1);
        });
    let addr = server.local_addr();
    println!("serving on ws://{addr} (/echo, /chat, /count, /healthz)");

    // Our own thread broadcasts through the hub. It stops when `stop_rx` disconnects,
    // and waits on that channel rather than sleeping, so stopping it is immediate.
    let hub = server.hub();
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let ticker = thread::spawn(move || {
        for n in 1.. {
            match stop_rx.recv_timeout(Duration::from_millis(300)) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            if hub
                .broadcast("/chat", Message::text(format!("tick {n}")))
                .is_err()
            {
                return; // the server has stopped
            }
        }
    });

    if forever {
        let handle = server.shutdown_handle();
        ctrlc::set_handler(move || handle.shutdown()).expect("signal handler");
        let report = server.wait();
        drop(stop_tx);
        let _ = ticker.join();
        println!(
            "drained {} connections in {:.2?}",
            report.connections, report.elapsed
        );
        return;
    }

    // A client of our own on /count and /chat.
    let (mut count, _) = tungstenite::connect(format!("ws://{addr}/count")).expect("connect /count");
    count.send(Message::text("hello")).expect("send");
    println!("[client] /count answered: {}", count.read().expect("read"));

    let (mut chat, _) = tungstenite::connect(format!("ws://{addr}/chat")).expect("connect /chat");
    let mut ticks = 0;
    while ticks < 3 {
        if let Message::Text(t) = chat.read().expect("read") {
            println!("[client] /chat: {t}");
            ticks += 1;
        }
    }
    drop(count); // leaves without a Close: the server notices and cleans up

    // Shut down on another thread while the client answers the Close 1001.
    let drain = thread::spawn(move || server.shutdown());
    loop {
        match chat.read() {
            Ok(Message::Close(frame)) => println!("[client] server closed with {frame:?}"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(chat);
    let report = drain.join().expect("drain thread");
    drop(stop_tx);
    let _ = ticker.join();
    println!(
        "drained {} connections in {:.2?}",
        report.connections, report.elapsed
    );
}
