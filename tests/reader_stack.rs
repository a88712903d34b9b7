//! The reader's stack fits in two pages: after a handshake, messages both ways, a ping
//! and a pong, every reader thread has touched at most two pages of its stack, glibc's
//! thread descriptor and TLS at its top included. Ten thousand idle clients cost two
//! pages of stack each only while this holds (see `open_websocket` in
//! `src/server/connection.rs`).
//!
//! Measured through the real code path: real readers on loopback sockets, each stack
//! found from the thread's stack pointer (`/proc/self/task/*/syscall`) and its resident
//! size read from `/proc/self/smaps`. The rule is about optimised code, so the check
//! runs in release builds (`cargo test --release --test reader_stack`); a debug build
//! runs the same path and reports the figure without asserting it. Alone in its test
//! binary, so that only this test's readers are measured.

mod support;

use std::fs;
use std::time::Duration;

use support::*;
use tungstenite::Message;

/// What the rule allows: two 4 KiB pages.
const TWO_PAGES: u64 = 2 * 4096;

/// The stack pointer of thread `tid` while it is blocked in a system call.
fn stack_pointer(tid: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    // "NR arg1 .. arg6 SP PC" while in a system call; "running" or "-1 SP PC" otherwise.
    let fields: Vec<&str> = text.split_whitespace().collect();
    (fields.len() == 9)
        .then(|| u64::from_str_radix(fields[7].trim_start_matches("0x"), 16).ok())
        .flatten()
}

/// Resident bytes of the mapping that contains `addr`, from `/proc/self/smaps`.
fn resident_bytes_of_mapping_at(smaps: &str, addr: u64) -> Option<u64> {
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                inside = lo <= addr && addr < hi;
                continue;
            }
        }
        if inside {
            if let Some(kb) = line.strip_prefix("Rss:") {
                return kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(|k| k * 1024);
            }
        }
    }
    None
}

/// The resident stack bytes of every thread named `name`.
fn resident_stacks(name: &str) -> Vec<u64> {
    let smaps = fs::read_to_string("/proc/self/smaps").unwrap();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/task").unwrap() {
        let tid = entry.unwrap().file_name().into_string().unwrap();
        let comm = fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        if let Some(rss) = stack_pointer(&tid).and_then(|sp| resident_bytes_of_mapping_at(&smaps, sp)) {
            out.push(rss);
        }
    }
    out
}

#[test]
fn a_readers_stack_stays_within_two_pages() {
    watchdog(Duration::from_secs(60), || {
        let server = start(test_config());
        let addr = server.local_addr();
        let mut clients = Vec::new();
        for (i, path) in ["/echo", "/chat", "/echo", "/chat"].into_iter().enumerate() {
            let mut ws = connect(addr, path);
            ws.send(Message::text(format!("hello {i}"))).unwrap();
            ws.send(Message::binary(vec![7u8; 3000])).unwrap();
            ws.send(Message::Ping(vec![1, 2, 3].into())).unwrap();
            assert_eq!(next_data(&mut ws), Message::text(format!("hello {i}")));
            assert_eq!(next_data(&mut ws), Message::binary(vec![7u8; 3000]));
            clients.push(ws);
        }
        // Every reader is back in its blocking read by the time its echo arrived, but
        // give the last one a moment to re-enter the system call.
        let mut stacks = Vec::new();
        for _ in 0..50 {
            stacks = resident_stacks("wshub-reader");
            if stacks.len() == clients.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            stacks.len(),
            clients.len(),
            "one measured stack per reader: {stacks:?}"
        );
        let deepest = *stacks.iter().max().unwrap();
        eprintln!("reader stacks, resident bytes: {stacks:?}");
        if cfg!(debug_assertions) {
            eprintln!("debug build: the two-page rule is checked in release builds only");
        } else {
            assert!(
                deepest <= TWO_PAGES,
                "a reader's stack has {deepest} resident bytes, more than two pages: {stacks:?}"
            );
        }
        drop(clients);
        server.shutdown();
    });
}

#[test]
fn the_stack_measure_sees_a_deep_stack() {
    // The measuring itself must be able to fail: a thread that touches 64 KiB of its
    // stack and then blocks shows at least that much.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::Builder::new()
        .name("deep-stack".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut big = [0u8; 64 * 1024];
            std::hint::black_box(&mut big);
            ready_tx.send(()).unwrap();
            rx.recv().unwrap();
            std::hint::black_box(&big);
        })
        .unwrap();
    ready_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let stacks = resident_stacks("deep-stack");
    tx.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(stacks.len(), 1, "{stacks:?}");
    assert!(stacks[0] >= 64 * 1024, "{stacks:?}");
}
