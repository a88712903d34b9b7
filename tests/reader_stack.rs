//! The reader's stack fits in two pages: after a handshake, messages both ways, a ping
//! and a pong, every reader thread has touched at most two pages of its stack, glibc's
//! thread descriptor and TLS at its top included. Ten thousand idle clients cost two
//! pages of stack each only while this holds (see `open_websocket` in
//! `src/server/connection.rs`).
//!
//! Measured through the real code path: real readers on loopback sockets, each stack
//! found from the thread's stack pointer (`/proc/PID/task/*/syscall`) and its resident
//! size read from `/proc/PID/smaps`. Twice: in this test process (the library, as an
//! embedder runs it) and in a `wshub serve` child (the binary that ships). Both are
//! needed: the thread descriptor and TLS at the stack's top differ in size from one
//! program to the next, and a change that added 80 bytes under every read once passed
//! the in-process check while the binary's readers went to three pages. The rule is
//! about optimised code, so the check runs in release builds (`cargo test --release
//! --test reader_stack`); a debug build runs the same path and reports the figure without
//! asserting it. The in-process test is alone in its test binary, so that only its
//! readers are measured.

mod support;

use std::fs;
use std::time::Duration;

use support::*;
use tungstenite::Message;

/// What the rule allows: two 4 KiB pages.
const TWO_PAGES: u64 = 2 * 4096;

/// The stack pointer of thread `tid` of process `proc_dir` (`/proc/self`, `/proc/PID`)
/// while it is blocked in a system call.
fn stack_pointer(proc_dir: &str, tid: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("{proc_dir}/task/{tid}/syscall")).ok()?;
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

/// The resident stack bytes of every thread named `name` in process `proc_dir`.
fn resident_stacks(proc_dir: &str, name: &str) -> Vec<u64> {
    let smaps = fs::read_to_string(format!("{proc_dir}/smaps")).unwrap();
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("{proc_dir}/task")).unwrap() {
        let tid = entry.unwrap().file_name().into_string().unwrap();
        let comm = fs::read_to_string(format!("{proc_dir}/task/{tid}/comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        if let Some(rss) =
            stack_pointer(proc_dir, &tid).and_then(|sp| resident_bytes_of_mapping_at(&smaps, sp))
        {
            out.push(rss);
        }
    }
    out
}

/// Clients on the server at `addr` (half on `/echo`, half on `/chat`), each having sent
/// text, a binary message and a ping, and read its echoes: every reader has been through
/// its ordinary paths. Not always its deepest one: a Pong that finds the socket busy (a
/// `/chat` broadcast being written to it) waits for a writer thread, which the reader
/// starts; that happens by chance here. While that spawn ran from deep inside
/// tungstenite's `read`, about one run in ten had a reader at three pages (measured
/// 2026-12-02); it now runs from the read loop (`ReaderStream` in
/// `src/server/connection.rs`), and 20 runs had none.
const CLIENTS: usize = 4;

fn exercised_clients(addr: std::net::SocketAddr) -> Vec<Client> {
    let mut clients = Vec::new();
    for (i, path) in ["/echo", "/chat"].into_iter().cycle().take(CLIENTS).enumerate() {
        let mut ws = connect(addr, path);
        ws.send(Message::text(format!("hello {i}"))).unwrap();
        ws.send(Message::binary(vec![7u8; 3000])).unwrap();
        ws.send(Message::Ping(vec![1, 2, 3].into())).unwrap();
        assert_eq!(next_data(&mut ws), Message::text(format!("hello {i}")));
        assert_eq!(next_data(&mut ws), Message::binary(vec![7u8; 3000]));
        clients.push(ws);
    }
    clients
}

/// Measures the readers of process `proc_dir` (one per client) and applies the rule.
fn assert_readers_within_two_pages(proc_dir: &str, readers: usize) {
    // Every reader is back in its blocking read by the time its echo arrived, but give
    // the last one a moment to re-enter the system call.
    let mut stacks = Vec::new();
    for _ in 0..50 {
        stacks = resident_stacks(proc_dir, "wshub-reader");
        if stacks.len() == readers {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stacks.len(), readers, "one measured stack per reader: {stacks:?}");
    let deepest = *stacks.iter().max().unwrap();
    eprintln!("{proc_dir}: reader stacks, resident bytes: {stacks:?}");
    if cfg!(debug_assertions) {
        eprintln!("debug build: the two-page rule is checked in release builds only");
    } else {
        assert!(
            deepest <= TWO_PAGES,
            "{proc_dir}: a reader's stack has {deepest} resident bytes, more than two pages: {stacks:?}"
        );
    }
}

#[test]
fn a_readers_stack_stays_within_two_pages() {
    watchdog(Duration::from_secs(60), || {
        let server = start(test_config());
        let clients = exercised_clients(server.local_addr());
        assert_readers_within_two_pages("/proc/self", clients.len());
        drop(clients);
        server.shutdown();
    });
}

#[test]
fn the_wshub_binarys_readers_stay_within_two_pages() {
    watchdog(Duration::from_secs(60), || {
        let mut server = ServeProcess::start(&[]);
        let clients = exercised_clients(server.addr);
        assert_readers_within_two_pages(&format!("/proc/{}", server.child.id()), clients.len());
        drop(clients);
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(Duration::from_secs(10)).success());
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
    let stacks = resident_stacks("/proc/self", "deep-stack");
    tx.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(stacks.len(), 1, "{stacks:?}");
    assert!(stacks[0] >= 64 * 1024, "{stacks:?}");
}
