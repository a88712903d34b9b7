//! `wshub serve` as a user runs it: flags, errors and exit codes, signals.

mod support;

use std::time::Duration;

use support::*;
use tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `wshub ARGS` to its end; one that is still running after 10 s is killed and
/// fails the test (these commands all exit at once: help, or a refused start).
fn wshub(args: &[&str]) -> std::process::Output {
    wshub_output(args, Duration::from_secs(10))
}

#[test]
fn help_and_version_work() {
    watchdog(LIMIT, || {
        let help = wshub(&["serve", "--help"]);
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout);
        for flag in [
            "--addr",
            "--queue-size",
            "--idle-timeout",
            "--ping-interval",
            "--write-timeout",
            "--drain-timeout",
        ] {
            assert!(text.contains(flag), "--help lists {flag}");
        }
        let version = wshub(&["--version"]);
        assert!(version.status.success());
        assert!(String::from_utf8_lossy(&version.stdout).starts_with("wshub "));
    });
}

#[test]
fn a_bad_flag_prints_usage_and_exits_2() {
    watchdog(LIMIT, || {
        for args in [
            &["serve", "--no-such-flag"][..],
            &["serve", "--idle-timeout", "soon"],
            &["serve", "--max-message-size", "lots"],
            &["serve", "--addr", "not-an-address"],
        ] {
            let out = wshub(args);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.starts_with("error: "), "{args:?}: {err}");
            assert!(err.contains("Usage") || err.contains("--help"), "{args:?}: {err}");
        }
    });
}

#[test]
fn address_in_use_is_one_clear_line_and_exit_1() {
    watchdog(LIMIT, || {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let out = wshub(&["serve", "--addr", &addr]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("cannot listen on {addr}: address already in use")),
            "{err}"
        );
    });
}

#[test]
fn ping_interval_not_shorter_than_idle_timeout_is_a_usage_error() {
    watchdog(LIMIT, || {
        let out = wshub(&[
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--ping-interval",
            "30s",
            "--idle-timeout",
            "30s",
        ]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("ping interval"));
    });
}

#[test]
fn sigterm_drains_every_client_with_1001_and_exits_0() {
    watchdog(LIMIT, || {
        let mut server = ServeProcess::start(&[]);
        let mut ws = connect(server.addr, "/echo");
        ws.send(Message::text("hi")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("hi"));
        server.signal(libc::SIGTERM);
        let close = loop {
            match ws.read() {
                Ok(Message::Close(frame)) => break frame,
                Ok(_) => {}
                Err(e) => panic!("no Close before the end: {e}"),
            }
        };
        assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
        while ws.read().is_ok() {}
        drop(ws);
        let line = server.wait_for_line("drained", Duration::from_secs(10));
        assert!(line.contains("drained 1 connections in"), "{line}");
        assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    });
}

#[test]
fn a_second_sigint_exits_at_once_without_draining() {
    watchdog(LIMIT, || {
        let mut server = ServeProcess::start(&["--drain-timeout", "60s"]);
        // A client that never answers the Close keeps the drain waiting.
        let _mute = Raw::connect(server.addr, "/echo");
        server.signal(libc::SIGINT);
        server.wait_for_line("shutting down", Duration::from_secs(10));
        server.signal(libc::SIGINT);
        let status = server.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(130));
    });
}

#[test]
fn the_server_refuses_connections_from_the_start_of_its_drain() {
    watchdog(LIMIT, || {
        let mut server = ServeProcess::start(&["--drain-timeout", "60s"]);
        let addr = server.addr;
        // A client that does not answer the Close keeps the drain going.
        let mut mute = Raw::connect(addr, "/echo");
        server.signal(libc::SIGTERM);
        // The drain stops accepting before it sends Close 1001.
        assert_eq!(mute.read_close_code(), Some(1001));
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "a connection was accepted during the drain"
        );
        assert!(server.child.try_wait().unwrap().is_none(), "still draining");
        mute.send_frame(0x88, &1001u16.to_be_bytes());
        assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
        assert!(std::net::TcpStream::connect(addr).is_err(), "and after it exits");
    });
}

/// The start-up line about a lowered connection limit, as (the configured limit if the
/// line names it, the limit now served, the kernel limit that set it). Two wordings
/// are read: this branch's `max connections lowered from A to B: LIMIT leaves room for
/// no more (...)`, and main's `[max connections lowered from A: ]serving at most B
/// connections: LIMIT leaves room for no more (...)`.
fn lowered(startup: &[String]) -> (Option<usize>, usize, String) {
    let line = startup
        .iter()
        .find(|l| l.contains(" leaves room for no more"))
        .unwrap_or_else(|| panic!("no lowering line in {startup:#?}"));
    let number_after = |marker: &str| -> Option<usize> {
        let rest = line.split(marker).nth(1)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let from = number_after("max connections lowered from ");
    let to = number_after("serving at most ")
        .or_else(|| number_after(&format!("lowered from {} to ", from?)))
        .unwrap_or_else(|| panic!("no lowered limit in {line}"));
    let (head, tail) = line.split_once(" leaves room for no more").unwrap();
    let limit = head.rsplit_once(": ").map_or(head, |(_, l)| l).to_owned();
    assert!(
        tail.contains("each connection needs 1 thread and 4 memory mappings"),
        "{line}"
    );
    (from, to, limit)
}

#[test]
fn max_connections_beyond_what_the_kernel_allows_is_lowered_at_start_with_a_warning() {
    watchdog(LIMIT, || {
        // A billion connections: no kernel's mapping or thread limits allow that.
        let mut server = ServeProcess::start(&["--max-connections", "1000000000"]);
        let (from, to, limit) = lowered(&server.startup);
        assert_eq!(from, Some(1_000_000_000));
        assert!(
            limit == "vm.max_map_count" || limit == "the thread limit",
            "{limit}"
        );
        // Each connection needs 4 mappings and 1 thread: at most this many fit.
        let map_count: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((1..=map_count / 4).contains(&to), "lowered to {to}");
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    });
}

#[test]
fn a_lowered_max_connections_is_enforced_with_503() {
    // The limit is lowered with RLIMIT_NPROC, which the kernel does not enforce for
    // root: as root the low limit only feeds the server's ceiling. As anyone else it
    // would also stop the child's own threads, so the test needs root.
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (RLIMIT_NPROC is enforced for other users)");
        return;
    }
    watchdog(LIMIT, || {
        // 64 threads are the server's margin; what is left over gives a handful of
        // connections.
        let mut server = ServeProcess::start_with_rlimits(&[(libc::RLIMIT_NPROC, 64 + 10)], &[]);
        let (from, to, limit) = lowered(&server.startup);
        // The default limit: the line may or may not name it.
        assert!(matches!(from, None | Some(10_000)), "{from:?}");
        assert_eq!(limit, "the thread limit");
        assert!((1..=5).contains(&to), "lowered to {to}");
        let open: Vec<Raw> = (0..to).map(|_| Raw::connect(server.addr, "/echo")).collect();
        let over = raw_exchange(server.addr, upgrade_request("/echo", "").as_bytes());
        assert_eq!(status_line(&over), "HTTP/1.1 503 Service Unavailable");
        drop(open);
        server.signal(libc::SIGTERM);
        assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    });
}
