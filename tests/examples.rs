//! The guide's examples (`docs/guide.md`) run unattended to completion and show what
//! they claim: each is run as its own process, with a deadline, and its output is
//! checked line by line. Each example is (re)built first with `cargo build --example`
//! (a no-op after `cargo test`, which builds them), so `cargo test --test examples`
//! never runs a stale one.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one example may run; each needs a few seconds.
const LIMIT: Duration = Duration::from_secs(60);

/// `target/<profile>/examples/<name>`, next to this test's own `deps/` folder.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "--example", name]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo");
    assert!(status.success(), "cargo build --example {name}: {status}");
    profile_dir.join("examples").join(name)
}

/// Runs an example to its end and returns its stdout; fails if it runs past [`LIMIT`]
/// (killing it) or exits with anything but 0.
fn run_example(name: &str) -> String {
    let mut child = Command::new(example_binary(name))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start example {name}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill(); // our own child, by its handle
            let _ = child.wait();
            panic!(
                "example {name} still running after {LIMIT:?}; stdout so far:\n{}",
                out.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "example {name}: {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// Asserts that `needles` appear in `text` in this order (other lines may come between).
fn assert_in_order(text: &str, needles: &[&str]) {
    let mut rest = text;
    for needle in needles {
        match rest.find(needle) {
            Some(at) => rest = &rest[at + needle.len()..],
            None => panic!("expected {needle:?} (in this order: {needles:?}) in:\n{text}"),
        }
    }
}

#[test]
fn echo_timeouts_closes_an_idle_client_with_1001_and_drops_a_slowloris() {
    let out = run_example("echo_timeouts");
    assert_in_order(
        &out,
        &["client: echoed hello", "client: Close 1001 'idle timeout' after"],
    );
    assert!(out.contains("server: idle: sent Close 1001"), "{out}");
    assert!(out.contains("server: no request head in time: dropped"), "{out}");
    assert!(out.contains("slowloris: hung up on after"), "{out}");
}

#[test]
fn hub_cuts_the_slow_consumer_while_the_others_get_every_message() {
    let out = run_example("hub");
    assert!(out.contains("hub: connection 3 is a slow consumer: cut"), "{out}");
    assert!(out.contains("alice received 500 of 500 ticks"), "{out}");
    assert!(out.contains("bob received 500 of 500 ticks"), "{out}");
    assert_eq!(
        out.matches("slow consumer").count(),
        1,
        "only carol is cut:\n{out}"
    );
}

#[test]
fn drain_delivers_queued_messages_before_1001_and_cuts_the_deaf_client() {
    let out = run_example("drain");
    assert_in_order(
        &out,
        &[
            "polite: news 1",
            "polite: news 2",
            "polite: news 3",
            "polite: Close 1001",
            "drained 2 connections in",
            "1 closed cleanly, 1 cut at the deadline",
            "new connections are refused",
        ],
    );
}

#[test]
fn reconnect_survives_a_server_restart_with_growing_delays() {
    let out = run_example("reconnect");
    assert_in_order(
        &out,
        &[
            "connected (connection 1)",
            "echoed: before",
            "disconnected: Close 1001",
            "retry 1 in",
            "retry 2 in",
            "retry 3 in",
            "starting the server again",
            "connected (connection 2)",
            "echoed: after",
            "disconnected: Close 1000 done",
            "session over after 2 connections",
        ],
    );
    assert!(!out.contains("gave up"), "{out}");
}

#[test]
fn channels_recovers_the_publications_missed_while_cut_off_once_each_in_order() {
    let out = run_example("channels");
    assert_in_order(
        &out,
        &[
            "subscribed (recovered: None)",
            "received offset 1: {\"tick\":1}",
            "received offset 2: {\"tick\":2}",
            "received offset 3: {\"tick\":3}",
            "published ticks 4 to 6 while the reader was away",
            "reader disconnected",
            "subscribed (recovered: Some(true))",
            "received offset 4: {\"tick\":4}",
            "received offset 5: {\"tick\":5}",
            "received offset 6: {\"tick\":6}",
        ],
    );
    assert_eq!(
        out.matches("received offset").count(),
        6,
        "each offset once:\n{out}"
    );
    assert!(!out.contains("recovered: Some(false)"), "{out}");
}
