//! What a new user meets first (issue #18): the start-up lines, host names for
//! `--addr`, `HEAD /healthz`, what a drain reports, usage errors, and an embedding
//! program that serves only its own routes.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;
use tungstenite::Message;
use wshub::{Connection, SendError};

const LIMIT: Duration = Duration::from_secs(30);

/// Starts `wshub serve ARGS` and returns it with its stderr lines up to `listening on`.
fn serve_until_listening(args: &[&str]) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wshub starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no `listening on` line; got {lines:?}");
        };
        let done = line.contains("listening on ");
        lines.push(line);
        if done {
            return (child, lines);
        }
    }
}

/// The address a `listening on ADDR` line names.
fn listening_addr(line: &str) -> std::net::SocketAddr {
    line.split("listening on ")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn stop(mut child: std::process::Child) {
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// How many connections the kernel's limits leave room for, as the server computes it
/// (the same arithmetic: 8 mappings per connection, 1024 kept free).
fn map_count_ceiling() -> Option<u64> {
    let max: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Four mappings per connection's reader, and room for one writer per 16 connections.
    Some(max.saturating_sub(1024) / 4 * 16 / 17)
}

#[test]
fn a_lowered_default_limit_is_an_info_line_not_a_warning() {
    watchdog(LIMIT, || {
        let (child, lines) = serve_until_listening(&["--addr", "127.0.0.1:0"]);
        stop(child);
        assert!(
            lines.iter().all(|l| !l.contains(" WARN ")),
            "no warning at start: {lines:?}"
        );
        match map_count_ceiling() {
            Some(ceiling) if ceiling < 10_000 => {
                let line = lines
                    .iter()
                    .find(|l| l.contains("serving at most"))
                    .expect("the limit is named");
                assert!(line.contains(" INFO "), "{line}");
                assert!(
                    line.contains("sysctl -w vm.max_map_count"),
                    "says what to do: {line}"
                );
            }
            _ => eprintln!("vm.max_map_count allows 10 000 connections here: nothing to lower"),
        }
    });
}

#[test]
fn a_limit_the_user_asked_for_but_cannot_have_is_a_warning() {
    watchdog(LIMIT, || {
        let (child, lines) =
            serve_until_listening(&["--addr", "127.0.0.1:0", "--max-connections", "1000000"]);
        stop(child);
        let line = lines
            .iter()
            .find(|l| l.contains("lowered from 1000000"))
            .expect("the lowering is logged");
        assert!(line.contains(" WARN "), "{line}");
    });
}

#[test]
fn addr_accepts_a_host_name() {
    watchdog(LIMIT, || {
        let (child, lines) = serve_until_listening(&["--addr", "localhost:0"]);
        let last = lines.last().unwrap();
        let addr = listening_addr(last);
        assert!(addr.ip().is_loopback(), "{last}");
        let mut ws = connect(addr, "/echo");
        ws.send(Message::text("hi")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("hi"));
        drop(ws);
        stop(child);
    });
}

#[test]
fn an_unresolvable_addr_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--addr", "no-such-host.invalid:8080"])
        .stdin(Stdio::null())
        .output()
        .expect("wshub runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot resolve"));
}

#[test]
fn flags_that_can_never_work_together_exit_2_like_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--addr", "127.0.0.1:0", "--ping-interval", "90s"])
        .stdin(Stdio::null())
        .output()
        .expect("wshub runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ping interval (90s) must be shorter than the idle timeout"),
        "{err}"
    );
}

#[test]
fn head_healthz_is_answered_like_get_without_a_body() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut sock = TcpStream::connect(server.local_addr()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        sock.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        sock.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert!(answer.contains("Content-Length: 2\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "no body after the head: {answer:?}");
        server.shutdown();
    });
}

#[test]
fn a_drain_reports_clean_closes_and_cuts_apart() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.drain_timeout = Duration::from_millis(500);
        let server = start(config);
        let addr = server.local_addr();
        // One client that answers the Close, one that never reads again.
        let mut polite = connect(addr, "/echo");
        polite.send(Message::text("x")).unwrap();
        next_data(&mut polite);
        let mut mute = Raw::connect(addr, "/echo");
        mute.send_frame(0x81, b"y");
        mute.read_frame().expect("its echo: registered");
        let drain = std::thread::spawn(move || server.shutdown());
        // Read until the server ends it, answering its 1001 on the way.
        while polite.read().is_ok() {}
        let report = drain.join().unwrap();
        assert_eq!(report.connections, 2);
        assert_eq!((report.closed, report.cut), (1, 1), "{report:?}");
        drop(mute);
    });
}

#[test]
fn broadcast_to_a_topic_no_route_serves_is_an_error() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let hub = server.hub();
        assert_eq!(
            hub.broadcast("/ticks", Message::text("t")),
            Err(SendError::NoSuchTopic)
        );
        // A route with nobody on it is an empty room, not a mistake.
        assert_eq!(hub.broadcast("/chat", Message::text("t")), Ok(()));
        server.shutdown();
    });
}

#[test]
fn a_server_without_builtin_routes_serves_only_its_own() {
    watchdog(LIMIT, || {
        let server = Server::builder(test_config())
            .without_builtin_routes()
            .route("/mine", |conn: &Connection, msg: Message| {
                let _ = conn.send(msg);
            })
            .start()
            .expect("start");
        let addr = server.local_addr();
        for path in ["/chat", "/echo"] {
            let answer = raw_exchange(addr, upgrade_request(path, "").as_bytes());
            assert_eq!(status_line(&answer), "HTTP/1.1 404 Not Found", "{path}");
        }
        assert_eq!(
            server.hub().broadcast("/chat", Message::text("t")),
            Err(SendError::NoSuchTopic)
        );
        let mut ws = connect(addr, "/mine");
        ws.send(Message::text("mine")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("mine"));
        drop(ws);
        server.shutdown();
    });
}

#[test]
fn metrics_can_be_turned_off_and_on_from_the_command_line() {
    watchdog(LIMIT, || {
        for (switch, want) in [("off", "HTTP/1.1 404 Not Found"), ("on", "HTTP/1.1 200 OK")] {
            let (child, lines) = serve_until_listening(&["--addr", "127.0.0.1:0", "--metrics", switch]);
            let last = lines.last().unwrap();
            let addr = listening_addr(last);
            let answer = raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            stop(child);
            assert_eq!(status_line(&answer), want, "--metrics {switch}");
        }
    });
}
