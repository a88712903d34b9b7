//! The [`Handler`] contract over loopback sockets: `on_open` runs once the connection is
//! registered and before any message, `on_message` once per message in order, `on_close`
//! once after the connection has ended; a panic in any of them ends only its own
//! connection (with Close 1011 while the connection is still open), and the server and
//! every other connection carry on. (`on_message`'s panic also has a test of its own in
//! `tests/hostile.rs`, with the thread count.)

mod support;

use std::sync::mpsc;
use std::time::Duration;

use support::*;
use tungstenite::Message;
use wshub::{Connection, Handler, Server};

const LIMIT: Duration = Duration::from_secs(30);

/// What a [`Recorder`] saw, with the connection's id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Open(u64),
    Message(u64, String),
    Close(u64),
}

/// A handler that records every call, greets on open and echoes messages.
struct Recorder {
    seen: mpsc::Sender<Seen>,
}

impl Handler for Recorder {
    fn on_open(&self, conn: &Connection) {
        conn.send(Message::text("welcome")).unwrap();
        self.seen.send(Seen::Open(conn.id())).unwrap();
    }

    fn on_message(&self, conn: &Connection, msg: Message) {
        let text = msg.to_text().unwrap().to_owned();
        self.seen.send(Seen::Message(conn.id(), text)).unwrap();
        let _ = conn.send(msg);
    }

    fn on_close(&self, conn: &Connection) {
        self.seen.send(Seen::Close(conn.id())).unwrap();
    }
}

fn recording_server() -> (Server, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let server = Server::builder(test_config())
        .route("/rec", Recorder { seen: tx })
        .start()
        .unwrap();
    (server, rx)
}

fn next_seen(rx: &mpsc::Receiver<Seen>) -> Seen {
    rx.recv_timeout(Duration::from_secs(10)).expect("a handler call")
}

/// The first call recorded must be `on_open`; returns its connection id.
fn opened(rx: &mpsc::Receiver<Seen>) -> u64 {
    match next_seen(rx) {
        Seen::Open(id) => id,
        other => panic!("on_open first, not {other:?}"),
    }
}

/// A client on the recording route, past its greeting (sent from `on_open`).
fn greeted(server: &Server) -> Client {
    let mut ws = connect(server.local_addr(), "/rec");
    assert_eq!(next_data(&mut ws), Message::text("welcome"));
    ws
}

#[test]
fn on_open_runs_before_any_message_and_can_send_to_the_client() {
    watchdog(LIMIT, || {
        let (server, seen) = recording_server();
        // Nothing sent yet: the greeting comes from on_open alone.
        let mut ws = greeted(&server);
        let id = opened(&seen);
        ws.send(Message::text("hi")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("hi"));
        assert_eq!(next_seen(&seen), Seen::Message(id, "hi".into()));
        drop(ws);
        server.shutdown();
    });
}

#[test]
fn on_close_runs_once_after_the_last_message_when_the_client_leaves() {
    watchdog(LIMIT, || {
        let (server, seen) = recording_server();
        let mut ws = greeted(&server);
        for m in ["a", "b"] {
            ws.send(Message::text(m)).unwrap();
            assert_eq!(next_data(&mut ws), Message::text(m));
        }
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        drop(ws);
        let id = opened(&seen);
        assert_eq!(next_seen(&seen), Seen::Message(id, "a".into()));
        assert_eq!(next_seen(&seen), Seen::Message(id, "b".into()));
        assert_eq!(next_seen(&seen), Seen::Close(id));
        // Exactly once: nothing more, even after the server is gone.
        server.shutdown();
        assert_eq!(seen.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    });
}

#[test]
fn on_close_runs_for_every_connection_the_drain_closes_before_shutdown_returns() {
    watchdog(LIMIT, || {
        let (server, seen) = recording_server();
        let clients: Vec<Client> = (0..3).map(|_| greeted(&server)).collect();
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut ws| std::thread::spawn(move || while ws.read().is_ok() {}))
            .collect();
        server.shutdown();
        let calls: Vec<Seen> = seen.try_iter().collect();
        let opens = calls.iter().filter(|s| matches!(s, Seen::Open(_))).count();
        let closes = calls.iter().filter(|s| matches!(s, Seen::Close(_))).count();
        assert_eq!((opens, closes), (3, 3), "{calls:?}");
        for r in readers {
            r.join().unwrap();
        }
    });
}

/// A handler that greets on open, and whose `on_close` takes a while, then records the
/// connection.
struct SlowClose {
    closed: mpsc::Sender<u64>,
}

impl Handler for SlowClose {
    fn on_open(&self, conn: &Connection) {
        conn.send(Message::text("welcome")).unwrap();
    }

    fn on_message(&self, _conn: &Connection, _msg: Message) {}

    fn on_close(&self, conn: &Connection) {
        std::thread::sleep(Duration::from_millis(200));
        self.closed.send(conn.id()).unwrap();
    }
}

#[test]
fn wait_before_exit_returns_only_after_every_connections_on_close() {
    watchdog(LIMIT, || {
        let (tx, closed) = mpsc::channel();
        let server = Server::builder(test_config())
            .route("/slow", SlowClose { closed: tx })
            .start()
            .unwrap();
        let clients: Vec<Client> = (0..3)
            .map(|_| {
                let mut ws = connect(server.local_addr(), "/slow");
                assert_eq!(next_data(&mut ws), Message::text("welcome"));
                ws
            })
            .collect();
        let readers: Vec<_> = clients
            .into_iter()
            .map(|mut ws| std::thread::spawn(move || while ws.read().is_ok() {}))
            .collect();
        server.shutdown_handle().shutdown();
        // Not joining the threads that served them does not mean not waiting for them:
        // every `on_close` has run when it returns.
        let report = server.wait_before_exit();
        assert_eq!((report.connections, report.closed, report.cut), (3, 3, 0));
        assert_eq!(closed.try_iter().count(), 3, "an on_close was still running");
        for r in readers {
            r.join().unwrap();
        }
    });
}

/// A handler whose `on_open`, `on_message` or `on_close` panics, as `which` says; it
/// echoes otherwise.
struct Fragile {
    which: &'static str,
}

impl Handler for Fragile {
    fn on_open(&self, _conn: &Connection) {
        if self.which == "on_open" {
            panic!("on_open was told to panic");
        }
    }

    fn on_message(&self, conn: &Connection, msg: Message) {
        if self.which == "on_message" && msg == Message::text("boom") {
            panic!("on_message was told to panic");
        }
        let _ = conn.send(msg);
    }

    fn on_close(&self, _conn: &Connection) {
        if self.which == "on_close" {
            panic!("on_close was told to panic");
        }
    }
}

fn fragile_server(which: &'static str) -> Server {
    Server::builder(test_config())
        .route("/fragile", Fragile { which })
        .start()
        .unwrap()
}

/// The server still serves: an echo on the built-in route.
fn still_serving(server: &Server) {
    let mut ws = connect(server.local_addr(), "/echo");
    ws.send(Message::text("still there")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("still there"));
}

/// After a panic: a client already connected (`neighbour`) and a newcomer on `/echo` are
/// served, and the server shuts down with no thread left behind.
fn others_carry_on(server: Server, mut neighbour: Client) {
    neighbour.send(Message::text("after")).unwrap();
    assert_eq!(next_data(&mut neighbour), Message::text("after"));
    still_serving(&server);
    drop(neighbour);
    let report = server.shutdown();
    assert_eq!(report.abandoned_threads, 0);
}

#[test]
fn a_panic_in_on_open_closes_only_that_connection_with_1011() {
    watchdog(LIMIT, || {
        let server = fragile_server("on_open");
        let neighbour = connect(server.local_addr(), "/echo");
        let mut raw = Raw::connect(server.local_addr(), "/fragile");
        let (code, reason) = raw.read_close().expect("a Close");
        assert_eq!((code, reason.as_str()), (1011, "internal error"));
        raw.send_frame(0x88, &1011u16.to_be_bytes());
        assert!(raw.closed_by_server());
        others_carry_on(server, neighbour);
    });
}

#[test]
fn a_panic_in_on_message_closes_only_that_connection_with_1011() {
    watchdog(LIMIT, || {
        let server = fragile_server("on_message");
        let mut raw = Raw::connect(server.local_addr(), "/fragile");
        raw.send_frame(0x81, b"fine");
        assert_eq!(raw.read_frame(), Some((0x81, b"fine".to_vec())));
        raw.send_frame(0x81, b"boom");
        assert_eq!(raw.read_close_code(), Some(1011));
        still_serving(&server);
        server.shutdown();
    });
}

#[test]
fn a_panic_in_on_close_ends_nothing_but_that_connection_which_had_already_ended() {
    watchdog(LIMIT, || {
        let server = fragile_server("on_close");
        let addr = server.local_addr();
        let neighbour = connect(addr, "/fragile");
        let mut leaving = Raw::connect(addr, "/fragile");
        leaving.send_frame(0x81, b"bye");
        assert_eq!(leaving.read_frame(), Some((0x81, b"bye".to_vec())));
        // A clean close handshake: on_close runs after it, and panics.
        leaving.send_frame(0x88, &1000u16.to_be_bytes());
        assert_eq!(leaving.read_close_code(), Some(1000), "the reply to our Close");
        assert!(leaving.closed_by_server());
        drop(leaving);
        // Its connection slot is freed, the neighbour on the same route carries on.
        assert_eq!(
            wait_for_count(1, Duration::from_secs(10), || server.connections()),
            1
        );
        others_carry_on(server, neighbour);
    });
}
