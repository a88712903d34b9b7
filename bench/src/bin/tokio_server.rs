//! The comparison server: the async design a Rust user would otherwise pick.
//!
//! tokio (multi-thread runtime, one worker per CPU in the process's affinity mask) +
//! tokio-tungstenite with its default buffers. One task per connection.
//!
//! * `/echo`: every text or binary message is sent back.
//! * `/chat`: every text or binary message goes to every `/chat` client, the sender
//!   included, through one `tokio::sync::broadcast` channel (a subscriber that lags
//!   behind by more than `--broadcast-capacity` messages skips them, and they are counted).
//! * any other path: `404`.
//!
//! SIGTERM or SIGINT: stop accepting, send Close 1001 to every client, wait for the
//! replies (at most `--drain-timeout`), log `drained N connections in T`, exit 0.
//!
//! Deliberately not tuned beyond `TCP_NODELAY` (which wshub sets too and most async WS
//! servers set): the point is to compare with what one gets by default.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser, Debug)]
#[command(about = "tokio-tungstenite echo + broadcast server (benchmark comparison)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9302")]
    addr: SocketAddr,
    /// Capacity of the /chat broadcast channel (messages a subscriber may lag behind).
    #[arg(long, default_value_t = 1024)]
    broadcast_capacity: usize,
    /// Seconds to wait for clients' Close replies on shutdown.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Worker threads (default: CPUs in the affinity mask, as tokio does).
    #[arg(long)]
    workers: Option<usize>,
}

struct Shared {
    chat: broadcast::Sender<Message>,
    shutdown: watch::Receiver<bool>,
    open: AtomicUsize,
    lagged: AtomicU64,
    drain_timeout: Duration,
}

fn main() {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(w) = args.workers {
        rt.worker_threads(w);
    }
    let rt = rt.build().expect("tokio runtime");
    let code = rt.block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    let listener = match TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tokio-server: bind {}: {e}", args.addr);
            return 1;
        }
    };
    eprintln!("listening on {}", listener.local_addr().unwrap());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (chat, _) = broadcast::channel(args.broadcast_capacity);
    let shared = Arc::new(Shared {
        chat,
        shutdown: shutdown_rx,
        open: AtomicUsize::new(0),
        lagged: AtomicU64::new(0),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
    });
    // Every connection task holds a clone of `alive`; when all are dropped, recv() is None.
    let (alive, mut all_done) = mpsc::channel::<()>(1);

    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let mut sigint =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");

    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    let alive = alive.clone();
                    tokio::spawn(async move {
                        handle(stream, &shared).await;
                        drop(alive);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    eprintln!("tokio-server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let started = Instant::now();
    drop(listener);
    let open = shared.open.load(Ordering::SeqCst);
    let _ = shutdown_tx.send(true);
    drop(alive);
    let deadline = shared.drain_timeout + Duration::from_secs(1);
    let clean = tokio::time::timeout(deadline, all_done.recv()).await.is_ok();
    eprintln!(
        "drained {open} connections in {:?}{} (broadcast lagged: {} messages skipped)",
        started.elapsed(),
        if clean { "" } else { " (timed out)" },
        shared.lagged.load(Ordering::Relaxed)
    );
    0
}

#[allow(clippy::result_large_err)] // the callback type is tungstenite's
async fn handle(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_owned();
        if path == "/echo" || path == "/chat" {
            Ok(resp)
        } else {
            let mut r = ErrorResponse::new(Some("not found".into()));
            *r.status_mut() = http::StatusCode::NOT_FOUND;
            Err(r)
        }
    };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
        Ok(ws) => ws,
        Err(_) => return,
    };
    shared.open.fetch_add(1, Ordering::SeqCst);
    if path == "/chat" {
        chat(ws, shared).await;
    } else {
        echo(ws, shared).await;
    }
    shared.open.fetch_sub(1, Ordering::SeqCst);
}

async fn echo(mut ws: WebSocketStream<TcpStream>, shared: &Shared) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                // Ping/Pong are answered by tungstenite; after a Close the next poll
                // flushes the reply and ends the stream.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                going_away(ws, shared.drain_timeout).await;
                return;
            }
        }
    }
}

async fn chat(mut ws: WebSocketStream<TcpStream>, shared: &Shared) {
    let mut shutdown = shared.shutdown.clone();
    let mut rx = shared.chat.subscribe();
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    let _ = shared.chat.send(m);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            b = rx.recv() => match b {
                Ok(m) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    shared.lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                going_away(ws, shared.drain_timeout).await;
                return;
            }
        }
    }
}

/// Close 1001, then read until the peer's Close reply ends the stream (bounded).
async fn going_away(mut ws: WebSocketStream<TcpStream>, timeout: Duration) {
    let frame = CloseFrame {
        code: CloseCode::Away,
        reason: Utf8Bytes::from_static("server shutting down"),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(timeout, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}
