//! The writer on demand (issue #15 item 2): an idle connection holds one thread, its
//! reader; a writer thread is started only when a frame has to wait for the client's
//! socket, and ends after `Config::writer_idle` with nothing to write. Over real loopback
//! sockets; threads are counted by name (`wshub-reader`, `wshub-writer`) in
//! `/proc/self/task`, and the tests of this binary run one at a time so that they count
//! only their own server's threads.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::*;
use tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(60);

/// One test at a time: each counts the threads of its own server.
fn alone() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Threads of this process whose name passes `pick`.
fn threads_where(pick: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|comm| pick(comm.trim()))
        .count()
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    threads_where(|n| n == name)
}

/// The server's threads of every kind (the test harness's own come and go).
fn server_threads() -> usize {
    threads_where(|n| n.starts_with("wshub-"))
}

fn readers() -> usize {
    threads_named("wshub-reader")
}

fn writers() -> usize {
    threads_named("wshub-writer")
}

/// The value of counter `name` (without `wshub_` and `_total`) in `GET /metrics`.
fn counter(addr: SocketAddr, name: &str) -> u64 {
    metric(addr, &format!("wshub_{name}_total")) as u64
}

/// A raw client on `/chat` whose receive window is about 4 KiB and stays so: a client
/// that stops reading stops the server's writes after a known, small amount. Returns
/// once it is a member of `/chat` (its own message came back to it).
fn small_window(addr: SocketAddr) -> Raw {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut sock: TcpStream = sock.into();
    sock.write_all(upgrade_request("/chat", "").as_bytes()).unwrap();
    let mut raw = Raw::after_upgrade(sock);
    raw.send_frame(0x81, b"joined");
    assert_eq!(raw.read_frame(), Some((0x81, b"joined".to_vec())));
    raw
}

/// A server whose sockets hold little: a few broadcasts fill a non-reader's socket.
fn small_buffers() -> wshub::Config {
    let mut config = test_config();
    config.send_buffer_size = 4096;
    config.writer_idle = Duration::from_millis(300);
    config
}

/// Broadcasts `n` binary messages of 4000 bytes to `/chat`, the i-th filled with `i`.
fn broadcast_numbered(server: &wshub::Server, n: u8) {
    let hub = server.hub();
    for i in 0..n {
        hub.broadcast("/chat", Message::binary(vec![i; 4000])).unwrap();
    }
}

/// Reads the `n` numbered broadcasts in order; returns how many Pongs came among them.
fn read_numbered(raw: &mut Raw, n: u8) -> usize {
    let mut pongs = 0;
    let mut next = 0u8;
    while next < n {
        let (b0, payload) = raw.read_frame().expect("a frame");
        match b0 {
            0x82 => {
                assert_eq!(payload.len(), 4000);
                assert_eq!(payload[0], next, "broadcasts in order, none lost");
                next += 1;
            }
            0x8A => pongs += 1,
            0x89 => {}
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    pongs
}

#[test]
fn an_idle_upgraded_connection_has_exactly_one_thread() {
    let _one = alone();
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let mut clients: Vec<Client> = (0..5).map(|_| connect(addr, "/echo")).collect();
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("hello {i}"))).unwrap();
            assert_eq!(next_data(ws), Message::text(format!("hello {i}")));
            ws.send(Message::Ping(vec![1u8].into())).unwrap();
            loop {
                if let Message::Pong(p) = ws.read().unwrap() {
                    assert_eq!(&p[..], &[1u8]);
                    break;
                }
            }
        }
        // Every reader is up (each answered); nothing had to wait, so no writer runs.
        assert_eq!(readers(), 5);
        assert_eq!(writers(), 0);
        // A thread takes its name when it first runs: on a loaded machine the overflow
        // thread, spawned at start and idle since, may not have run yet. Wait for it
        // (bounded); the counts below are then exact.
        let server_wide = || ["wshub-hub", "wshub-accept", "wshub-overflow"].map(threads_named);
        let named_by = Instant::now() + Duration::from_secs(10);
        while server_wide() != [1, 1, 1] && Instant::now() < named_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server_wide(), [1, 1, 1]);
        assert_eq!(
            server_threads() - 3,
            5,
            "one thread per idle connection: {:?}",
            thread_names()
        );
        assert_eq!(counter(addr, "writer_spawns"), 0);
        drop(clients);
        server.shutdown();
    });
}

#[test]
fn a_client_that_stops_reading_gets_a_writer_that_ends_after_writer_idle() {
    let _one = alone();
    watchdog(LIMIT, || {
        let server = start(small_buffers());
        let addr = server.local_addr();
        let mut raw = small_window(addr);
        assert_eq!(writers(), 0);
        // 800 kB for a client with a 4 KiB window: most of it has to wait in the queue.
        broadcast_numbered(&server, 200);
        wait_until(Duration::from_secs(10), "a writer is started", || writers() == 1);
        assert_eq!(read_numbered(&mut raw, 200), 0);
        // Queue empty: the writer ends after `writer_idle`, the connection goes on.
        wait_until(Duration::from_secs(10), "the writer ends", || writers() == 0);
        assert_eq!(readers(), 1);
        assert!(counter(addr, "writer_spawns") >= 1);
        broadcast_numbered(&server, 1);
        assert_eq!(read_numbered(&mut raw, 1), 0);
        raw.send_frame(0x88, &1000u16.to_be_bytes());
        assert_eq!(raw.read_close_code(), Some(1000));
        drop(raw);
        assert_eq!(server.shutdown().cut, 0);
        wait_until(Duration::from_secs(10), "every thread ends", || {
            readers() + writers() == 0
        });
    });
}

#[test]
fn pong_and_close_replies_reach_a_client_with_no_writer_thread() {
    let _one = alone();
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let mut raw = Raw::connect(addr, "/echo");
        raw.send_frame(0x89, b"are you there");
        assert_eq!(raw.read_frame(), Some((0x8A, b"are you there".to_vec())));
        raw.send_frame(0x88, &1000u16.to_be_bytes());
        assert_eq!(raw.read_frame(), Some((0x88, 1000u16.to_be_bytes().to_vec())));
        assert!(raw.closed_by_server());
        // The reader wrote both replies itself, and ended without a writer.
        assert_eq!(counter(addr, "writer_spawns"), 0);
        assert_eq!(writers(), 0);
        server.shutdown();
    });
}

#[test]
fn pong_and_close_replies_reach_a_client_whose_socket_is_full() {
    let _one = alone();
    watchdog(LIMIT, || {
        let server = start(small_buffers());
        let addr = server.local_addr();
        let mut raw = small_window(addr);
        broadcast_numbered(&server, 200);
        wait_until(Duration::from_secs(10), "a writer is started", || writers() == 1);
        // The Ping's Pong cannot be written at once: it goes through the writer, ahead
        // of the broadcasts still queued.
        raw.send_frame(0x89, b"p");
        raw.send_frame(0x88, &1000u16.to_be_bytes());
        assert_eq!(
            read_numbered(&mut raw, 200),
            1,
            "exactly one Pong among the broadcasts"
        );
        // The Close reply comes after everything queued, and is the last frame.
        assert_eq!(raw.read_frame(), Some((0x88, 1000u16.to_be_bytes().to_vec())));
        assert!(raw.closed_by_server());
        server.shutdown();
        wait_until(Duration::from_secs(10), "every thread ends", || {
            readers() + writers() == 0
        });
    });
}

#[test]
fn drain_closes_idle_connections_at_once_and_cuts_blocked_ones_at_the_deadline() {
    let _one = alone();
    watchdog(LIMIT, || {
        let mut config = small_buffers();
        config.drain_timeout = Duration::from_secs(2);
        let server = start(config);
        let addr = server.local_addr();
        // Two clients that stop reading with broadcasts queued for them: their Close
        // 1001 waits behind the queue, on a writer.
        let blocked: Vec<Raw> = (0..2).map(|_| small_window(addr)).collect();
        broadcast_numbered(&server, 200);
        wait_until(Duration::from_secs(10), "their writers are started", || {
            writers() == 2
        });
        // Three idle clients, no writer: each answers the drain's Close 1001 when it comes.
        let idle: Vec<_> = (0..3)
            .map(|_| {
                let mut ws = connect(addr, "/echo");
                // Registered once it has echoed.
                ws.send(Message::text("hi")).unwrap();
                assert_eq!(next_data(&mut ws), Message::text("hi"));
                thread::spawn(move || {
                    let started = Instant::now();
                    let close = loop {
                        match ws.read() {
                            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
                            Ok(_) => {}
                            Err(e) => panic!("no Close 1001: {e}"),
                        }
                    };
                    while ws.read().is_ok() {}
                    (close, started.elapsed())
                })
            })
            .collect();
        assert_eq!(writers(), 2, "the idle clients have no writer");
        let report = server.shutdown();
        for t in idle {
            let (close, waited) = t.join().unwrap();
            assert_eq!(close, Some(1001));
            assert!(
                waited < Duration::from_secs(2),
                "the Close 1001 came before the deadline: {waited:?}"
            );
        }
        assert_eq!(
            (report.connections, report.closed, report.cut),
            (5, 3, 2),
            "{report:?}"
        );
        wait_until(Duration::from_secs(10), "every thread ends", || {
            readers() + writers() == 0
        });
        for mut raw in blocked {
            // Cut: whatever it still reads ends in a reset or EOF, not a read timeout.
            let mut sink = Vec::new();
            let _ = raw.sock.read_to_end(&mut sink);
        }
    });
}
