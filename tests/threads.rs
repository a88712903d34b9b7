//! No thread outlives its connection by more than the spare time: after clients come and
//! go, the process's thread count is back at its baseline once `spare_reader_idle` has
//! passed; and while it has not, a new connection is served by a waiting spare thread
//! instead of a new one. The tests count the connection threads, by name, and take
//! turns ([`one_at_a_time`]) so that no other test's server disturbs the count.

mod support;

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::Message;

/// Serialises the tests of this binary: each counts the whole process's threads.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's threads (their `/proc/self/task/TID` directories) whose name is one of
/// `names`.
fn threads_named(names: &[&str]) -> Vec<std::path::PathBuf> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|t| t.path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| names.contains(&c.trim())))
        .collect()
}

/// The server's connection threads: readers and writers, by name. Counting only these,
/// not the whole process, keeps out the test harness's own threads, which it starts
/// while earlier tests still hold their turn, and the server's other threads, which name
/// themselves a moment after the server starts.
fn connection_threads() -> usize {
    threads_named(&["wshub-reader", "wshub-writer"]).len()
}

/// The server's readers, each with whether it is asleep (state `S` in `/proc`).
fn readers() -> Vec<bool> {
    threads_named(&["wshub-reader"])
        .iter()
        .map(|t| {
            let stat = std::fs::read_to_string(t.join("stat")).unwrap_or_default();
            // The state follows the parenthesised name: "tid (name) S ...".
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('S'))
        })
        .collect()
}

/// Waits (bounded) until exactly `n` connection threads exist and all of them sleep: with
/// no connection open, those are spares waiting for the next one.
fn until_spares_wait(server: &wshub::Server, n: usize, what: &str) {
    wait_until(
        Duration::from_secs(10),
        &format!("{what}: {n} spares waiting"),
        || {
            let r = readers();
            server.connections() == 0 && r.len() == n && r.iter().all(|asleep| *asleep)
        },
    );
}

/// A server with `spares` spare readers that each wait `idle` (the defaults otherwise).
fn start_with_spares(spares: usize, idle: Duration) -> wshub::Server {
    let mut config = test_config();
    config.spare_readers = spares;
    config.spare_reader_idle = idle;
    start(config)
}

/// One echo on a fresh `/echo` connection, then a clean close, until the server's side
/// has ended.
fn echo_once(server: &wshub::Server) {
    let mut ws = connect(server.local_addr(), "/echo");
    ws.send(Message::text("hi")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("hi"));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    wait_until(Duration::from_secs(10), "the connection ended", || {
        server.connections() == 0
    });
}

#[test]
fn threads_return_to_baseline_after_200_mixed_connections() {
    let _turn = one_at_a_time();
    watchdog(Duration::from_secs(60), || {
        let mut config = test_config();
        config.spare_reader_idle = Duration::from_millis(200);
        config.handshake_timeout = Duration::from_millis(300);
        config.idle_timeout = Duration::from_millis(400);
        config.ping_interval = Duration::from_millis(300);
        let server = start(config);
        let addr = server.local_addr();
        let baseline = connection_threads();
        // 20 rounds of 10 connections: clean close, abrupt drop, idle timeout, handshake
        // timeout, and an HTTP request, all at once.
        for _ in 0..20 {
            let mut round = Vec::new();
            for kind in 0..10 {
                round.push(thread::spawn(move || match kind % 5 {
                    0 => {
                        let mut ws = connect(addr, "/echo");
                        ws.send(Message::text("hi")).unwrap();
                        next_data(&mut ws);
                        ws.close(None).unwrap();
                        while ws.read().is_ok() {}
                    }
                    1 => {
                        let mut ws = connect(addr, "/chat");
                        ws.send(Message::text("bye")).unwrap();
                        drop(ws); // no Close: the TCP connection just goes
                    }
                    2 => {
                        let mut raw = Raw::connect(addr, "/echo");
                        assert_eq!(raw.read_close_code(), Some(1001)); // idle timeout
                    }
                    3 => {
                        let r = raw_exchange(addr, b"GET /echo HTTP/1.1\r\n"); // never finished
                        assert_eq!(status_line(&r), "HTTP/1.1 408 Request Timeout");
                    }
                    _ => {
                        let r = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                        assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
                    }
                }));
            }
            for t in round {
                t.join().unwrap();
            }
        }
        let now = wait_for_count(baseline, Duration::from_secs(10), connection_threads);
        assert_eq!(now, baseline, "connection threads left behind");
        assert_eq!(server.connections(), 0);
    });
}

#[test]
fn a_new_connection_is_served_by_the_thread_of_one_that_ended() {
    let _turn = one_at_a_time();
    watchdog(Duration::from_secs(60), || {
        let server = start_with_spares(4, Duration::from_secs(60));
        echo_once(&server);
        until_spares_wait(&server, 1, "the ended connection's thread waits as a spare");
        // The next connection, of whatever kind, takes that thread: no new one starts.
        let addr = server.local_addr();
        for round in 0..20 {
            match round % 4 {
                0 => echo_once(&server),
                1 => {
                    let r = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                    assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
                }
                2 => {
                    let r = raw_exchange(addr, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
                    assert_eq!(status_line(&r), "HTTP/1.1 404 Not Found");
                }
                _ => {
                    let mut ws = connect(addr, "/chat");
                    ws.send(Message::text("to all")).unwrap();
                    assert_eq!(next_data(&mut ws), Message::text("to all"));
                    drop(ws); // no Close: the TCP connection just goes
                    wait_until(Duration::from_secs(10), "the chat ended", || {
                        server.connections() == 0
                    });
                }
            }
            until_spares_wait(&server, 1, "one thread served every connection in turn");
        }
        // The first connection started the thread; the 20 after it and the scrape (itself
        // a connection the spare serves) reused it.
        assert_eq!(metric(addr, "wshub_reader_reuses_total"), 21.0);
        server.shutdown();
    });
}

#[test]
fn a_spare_thread_ends_after_the_spare_idle_time() {
    let _turn = one_at_a_time();
    watchdog(Duration::from_secs(60), || {
        let server = start_with_spares(4, Duration::from_millis(200));
        let baseline = connection_threads();
        echo_once(&server);
        let ended = Instant::now();
        assert_eq!(
            wait_for_count(baseline, Duration::from_secs(10), connection_threads),
            baseline
        );
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "took {:?}",
            ended.elapsed()
        );
        server.shutdown();
    });
}

#[test]
fn no_more_than_spare_readers_threads_wait() {
    let _turn = one_at_a_time();
    watchdog(Duration::from_secs(60), || {
        let server = start_with_spares(2, Duration::from_secs(60));
        let baseline = connection_threads();
        let addr = server.local_addr();
        // Six open at once, so six threads; then all end.
        let mut clients: Vec<Client> = (0..6).map(|_| connect(addr, "/echo")).collect();
        for ws in &mut clients {
            ws.send(Message::text("hi")).unwrap();
            assert_eq!(next_data(ws), Message::text("hi"));
        }
        assert_eq!(connection_threads(), baseline + 6);
        for mut ws in clients {
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        wait_until(Duration::from_secs(10), "the connections ended", || {
            server.connections() == 0
        });
        // Two wait (for a minute); the other four have ended.
        until_spares_wait(&server, 2, "two spares, no more");
        assert_eq!(connection_threads(), baseline + 2);
        server.shutdown();
    });
}

#[test]
fn the_drain_sends_waiting_spares_away_at_once() {
    let _turn = one_at_a_time();
    watchdog(Duration::from_secs(60), || {
        let before = connection_threads();
        let server = start_with_spares(4, Duration::from_secs(60));
        let baseline = connection_threads();
        for _ in 0..3 {
            thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| echo_once(&server));
                }
            });
        }
        assert!(connection_threads() > baseline, "spares wait");
        let start = Instant::now();
        server.shutdown();
        // Not the minute the spares would otherwise wait.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the drain took {:?}",
            start.elapsed()
        );
        assert_eq!(
            wait_for_count(before, Duration::from_secs(10), connection_threads),
            before
        );
    });
}

#[test]
fn with_no_spares_a_thread_ends_with_its_connection() {
    let _turn = one_at_a_time();
    watchdog(Duration::from_secs(60), || {
        let server = start_with_spares(0, Duration::from_secs(60));
        let baseline = connection_threads();
        for _ in 0..5 {
            echo_once(&server);
            assert_eq!(
                wait_for_count(baseline, Duration::from_secs(5), connection_threads),
                baseline
            );
        }
        assert_eq!(metric(server.local_addr(), "wshub_reader_reuses_total"), 0.0);
        server.shutdown();
    });
}
