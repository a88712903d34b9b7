//! Faults of the box itself, each a short scenario against a server of its own:
//! - **nofile**: the server, under `prlimit --nofile`, runs out of file descriptors while
//!   clients pile on; it must stay up, and serve again once they leave.
//! - **nproc**: the server runs as an unprivileged user under `prlimit --nproc` (a low
//!   `ulimit -u`) with `--max-connections` far above it; connections it cannot give a
//!   thread must be refused cleanly (closed), the process must not abort, and it must
//!   serve again once clients leave.
//!
//! **Owns** each scenario's server process and clients, on the calling thread; ends by
//! SIGTERM to the server, whose exit code must be 0.

use crate::clients::{self, Ws};
use crate::server::{self, Server};
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

/// The fd limit of the nofile scenario: a few above what an idle server uses.
const NOFILE: u32 = 32;
/// The thread limit (RLIMIT_NPROC, for the unprivileged user) of the nproc scenario:
/// the server keeps a margin of 64 threads and room for its 64 spare readers, and needs
/// one a connection and a writer budget beside it, so this leaves it room for about one
/// connection.
const NPROC: u32 = 100;
/// Clients each scenario opens: well past what either limit allows.
const CLIENTS: usize = 48;
/// Refusals after which a scenario stops piling on (each costs a client timeout).
const ENOUGH_REFUSALS: usize = 5;
/// How long the server has to serve again once the clients left.
const RECOVER_WITHIN: Duration = Duration::from_secs(10);
/// The server's `--spare-reader-idle` (its default, passed explicitly): how long a thread
/// whose connection ended waits for the next one before it ends.
const SPARE_IDLE: Duration = Duration::from_secs(1);
/// How long the server has to give back the last client's thread and fd once it is
/// served: the spare's idle time, and room to notice.
const SETTLE_WITHIN: Duration = Duration::from_secs(3);
/// The unprivileged user the nproc scenario runs the server as (nobody).
const NOBODY: &str = "65534";

pub fn run(bin: &str, dir: &Path) -> ExitCode {
    std::fs::create_dir_all(dir).expect("log dir");
    let mut failed = false;
    for (name, wrap) in [
        (
            "nofile",
            vec![
                "prlimit".to_string(),
                format!("--nofile={NOFILE}:{NOFILE}"),
                "--".into(),
            ],
        ),
        (
            "nproc",
            vec![
                "prlimit".to_string(),
                format!("--nproc={NPROC}:{NPROC}"),
                "--".into(),
                "setpriv".into(),
                format!("--reuid={NOBODY}"),
                format!("--regid={NOBODY}"),
                "--clear-groups".into(),
                "--".into(),
            ],
        ),
    ] {
        // SAFETY: geteuid(2) has no preconditions.
        if name == "nproc" && unsafe { libc::geteuid() } != 0 {
            println!("soak: fault {name}: SKIPPED: needs root (to run the server as nobody)");
            continue;
        }
        match scenario(name, bin, &wrap, dir) {
            Ok(msg) => println!("soak: fault {name}: PASS: {msg}"),
            Err(msg) => {
                println!("VIOLATION: fault {name}: {msg}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn scenario(name: &str, bin: &str, wrap: &[String], dir: &Path) -> Result<String, String> {
    let addr = server::free_addr();
    let mut cmd: Vec<String> = wrap.to_vec();
    cmd.extend(
        [
            bin,
            "serve",
            "--addr",
            &addr.to_string(),
            "--max-connections",
            "100000",
            "--handshake-timeout",
            "2s",
            "--drain-timeout",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    cmd.extend([
        "--spare-reader-idle".to_string(),
        format!("{}ms", SPARE_IDLE.as_millis()),
    ]);
    let log = dir.join(format!("fault-{name}.log"));
    let mut srv = Server::start(&cmd, addr, &log)?;
    // The readiness check's connection leaves its thread waiting as a spare for up to
    // `SPARE_IDLE`: the baseline is taken once it has ended, so that a
    // thread kept after the clients leave cannot hide behind it.
    thread::sleep(SPARE_IDLE + Duration::from_millis(300));
    let base = server::probe(srv.pid()).ok_or("cannot read the server's /proc")?;
    // Pile on: every client subscribes, so it holds its threads and its fd.
    let mut held: Vec<Ws> = Vec::new();
    let mut refused = 0;
    let mut how: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..CLIENTS {
        match clients::connect(addr, None).and_then(|mut ws| sub(&mut ws, i).map(|_| ws)) {
            Ok(ws) => held.push(ws),
            Err(e) => {
                refused += 1;
                *how.entry(e.chars().take(48).collect()).or_default() += 1;
            }
        }
        if refused >= ENOUGH_REFUSALS {
            break;
        }
        if !srv.alive() {
            return Err(format!(
                "the server died with {} clients in (see {})",
                held.len(),
                log.display()
            ));
        }
    }
    let peak = server::probe(srv.pid()).unwrap_or_default();
    if refused == 0 {
        return Err(format!(
            "all {CLIENTS} clients got in: the limit was never reached (peak {peak:?})"
        ));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let (pid, base_threads, held_n) = (srv.pid(), base.0, held.len());
    drop(held);
    // Back to serving once the clients are gone.
    let deadline = Instant::now() + RECOVER_WITHIN;
    let served = loop {
        if let Ok(mut ws) = clients::connect(addr, None)
            && sub(&mut ws, 999).is_ok()
            && publish(&mut ws).is_ok()
        {
            break true;
        }
        if Instant::now() > deadline || !srv.alive() {
            break false;
        }
        thread::sleep(Duration::from_millis(200));
    };
    if !served {
        return Err(format!(
            "no client served within {RECOVER_WITHIN:?} after the others left (see {})",
            log.display()
        ));
    }
    // The last client's thread outlives its connection by up to `SPARE_IDLE`, waiting as
    // a spare for the next one: poll until the server is back to its
    // baseline, and judge what it holds at the deadline.
    let settle = Instant::now() + SETTLE_WITHIN;
    let after = loop {
        let now = server::probe(pid).unwrap_or_default();
        if (now.0 <= base_threads && now.1 <= base.1) || Instant::now() > settle {
            break now;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let code = srv.terminate();
    if code != Some(0) {
        return Err(format!(
            "exit {code:?} after SIGTERM, want 0 (see {})",
            log.display()
        ));
    }
    if text.contains("panicked") {
        return Err(format!("a panic in {}", log.display()));
    }
    if after.0 > base_threads || after.1 > base.1 {
        return Err(format!(
            "threads/fds not back to baseline: {} threads, {} fds after; {} and {} before",
            after.0, after.1, base_threads, base.1
        ));
    }
    let said = text
        .lines()
        .filter(|l| {
            l.contains("accept failed") || l.contains("cannot spawn") || l.contains("max connections lowered")
        })
        .count();
    Ok(format!(
        "{} clients held, then {refused} refused ({how:?}); {said} log lines about it; served again; threads {}->{}->{}, fds {}->{}->{}",
        held_n, base.0, peak.0, after.0, base.1, peak.1, after.1
    ))
}

fn sub(ws: &mut Ws, i: usize) -> Result<(), String> {
    roundtrip(ws, json!({"id": 1, "op": "sub", "ch": format!("fault:{i}")}), 1).map(|_| ())
}

fn publish(ws: &mut Ws) -> Result<(), String> {
    roundtrip(
        ws,
        json!({"id": 2, "op": "pub", "ch": "fault:999", "data": "after"}),
        2,
    )
    .map(|_| ())
}

fn roundtrip(ws: &mut Ws, cmd: Value, id: u64) -> Result<Value, String> {
    ws.send(tungstenite::Message::text(cmd.to_string()))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + clients::ACK_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(m) = clients::read(ws)?
            && m["id"].as_u64() == Some(id)
        {
            return m.get("ok").cloned().ok_or_else(|| m.to_string());
        }
    }
    Err("no reply".into())
}
