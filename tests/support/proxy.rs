//! A TCP proxy on loopback that a test can cut: every connection through it is closed
//! without a WebSocket Close (as a network failure would), new ones can be refused for
//! a while, and the server's bytes can be swallowed (a reply lost on the way).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Default)]
struct Flags {
    /// Accepted connections are closed at once.
    refuse: AtomicBool,
    /// Bytes from the server are dropped instead of forwarded.
    swallow: AtomicBool,
    /// The proxy is being dropped.
    done: AtomicBool,
    /// Both sockets of every live connection, to cut them.
    live: Mutex<Vec<(TcpStream, TcpStream)>>,
}

/// The proxy; dropping it cuts everything and stops its threads.
pub struct Proxy {
    pub addr: SocketAddr,
    flags: Arc<Flags>,
}

impl Proxy {
    /// Forwards connections on a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let flags = Arc::new(Flags::default());
        let f = flags.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if f.done.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if f.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                f.live
                    .lock()
                    .unwrap()
                    .push((client.try_clone().unwrap(), server.try_clone().unwrap()));
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), None);
                pump(server, client, Some(f.clone()));
            }
        });
        Proxy { addr, flags }
    }

    /// Closes every connection through the proxy (TCP shutdown, no WebSocket Close).
    pub fn cut(&self) {
        for (a, b) in self.flags.live.lock().unwrap().drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// While `true`, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.flags.refuse.store(on, Ordering::SeqCst);
    }

    /// While `true`, what the server sends is dropped.
    pub fn swallow(&self, on: bool) {
        self.flags.swallow.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.flags.done.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake accept
    }
}

/// Copies `from` to `to` on a thread of its own until either side ends; from the
/// server (`flags` given), bytes are dropped while `swallow` is set.
fn pump(mut from: TcpStream, mut to: TcpStream, flags: Option<Arc<Flags>>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if flags.as_ref().is_some_and(|f| f.swallow.load(Ordering::SeqCst)) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
