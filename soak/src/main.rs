//! The wshub soak: `soak run` drives a server for a while under everything at once and
//! records every delivery; `soak check` judges the records; `soak faults` runs the
//! box-fault scenarios. `scripts/soak` runs the three.
//!
//! **Owns**: the run's main thread owns the server process and restarts it; every worker
//! is a thread of its own ([`clients`]), and the sampler another ([`server::Sampler`]).
//! The run **ends** by itself: publishers stop at the deadline, subscribers a few seconds
//! later, and the server after the quiet phase.

mod checker;
mod clients;
mod event;
mod faults;
mod server;

use clients::{LOAD, Mode, PubCtx, QUIESCE, STOP};
use event::{Event, LogFile};
use server::{Sampler, Server, Watch};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The channels the publishers share.
const CHANNELS: [&str; 3] = ["soak:a", "soak:b", "soak:c"];
/// A channel of large publications, for the slow consumers.
const BULK: &str = "soak:bulk";
/// The server's history TTL and idempotency window: short, so the quiet phase can wait
/// them out and check that memory comes back.
const HISTORY_TTL_SECS: u64 = 6;
/// The largest message the server accepts (the oversized hostile client sends more).
const MAX_MESSAGE: usize = 64 * 1024;
/// How long subscribers keep reading after the publishers stopped.
const QUIESCE_FOR: Duration = Duration::from_secs(3);

fn usage() -> ExitCode {
    eprintln!("usage: soak run WSHUB_BIN SECONDS DIR | soak check DIR | soak faults WSHUB_BIN DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["run", bin, secs, dir] => match secs.parse() {
            Ok(secs) => run(bin, secs, Path::new(dir)),
            Err(_) => usage(),
        },
        ["check", dir] => check(Path::new(dir)),
        ["faults", bin, dir] => faults::run(bin, Path::new(dir)),
        _ => usage(),
    }
}

/// The server's command line for the soak.
fn serve_cmd(bin: &str, addr: SocketAddr) -> Vec<String> {
    let ttl = format!("{HISTORY_TTL_SECS}s");
    [
        bin,
        "serve",
        "--addr",
        &addr.to_string(),
        "--api-key",
        clients::API_KEY,
        "--history-size",
        "1000",
        "--history-ttl",
        &ttl,
        "--idempotency-window",
        &ttl,
        "--queue-size",
        "64",
        "--write-timeout",
        "2s",
        "--drain-timeout",
        "2s",
        "--handshake-timeout",
        "2s",
        "--max-message-size",
        "64KiB",
        "--max-frame-size",
        "64KiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(bin: &str, secs: u64, dir: &Path) -> ExitCode {
    std::fs::create_dir_all(dir).expect("log dir");
    let restart_every = Duration::from_secs(if secs <= 120 { 20 } else { 60 });
    let addr = server::free_addr();
    let cmd = serve_cmd(bin, addr);
    let t0 = Instant::now();
    let mut life_log = LogFile::create(dir, "server").expect("server events log");
    let mut srv = match Server::start(&cmd, addr, &server::log_path(dir, 0)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "soak: server on {addr}, {secs} s, restart every {restart_every:?}, logs in {}",
        dir.display()
    );
    // Baseline: the fresh server before any client.
    thread::sleep(Duration::from_millis(500));
    let watch = Watch::new(srv.pid());
    let sampler = Sampler::start(dir, watch.clone(), t0);
    thread::sleep(Duration::from_millis(1500));
    watch.phase("load");

    let stage = Arc::new(AtomicU8::new(LOAD));
    let life = Arc::new(AtomicU64::new(0));
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    println!("soak: seed {seed}");
    let mut workers = Vec::new();
    let mut k = 0u64;
    let bulk = [
        (Mode::Keeper, "keeper"),
        (Mode::Slow, "slow"),
        (Mode::Slow, "slow2"),
    ];
    let each = [
        (Mode::Keeper, "keeper"),
        (Mode::Dropper, "dropper"),
        (Mode::Slow, "slow"),
    ];
    let roles = CHANNELS.iter().map(|c| (*c, &each[..]));
    for (ch, roles) in roles.chain([(BULK, &bulk[..])]) {
        for &(mode, tag) in roles {
            let (d, st, ch) = (dir.to_path_buf(), stage.clone(), ch.to_string());
            let name = format!("sub-{tag}-{}", ch.replace(':', "-"));
            k += 1;
            let s = seed ^ k;
            workers.push(thread::spawn(move || {
                clients::subscriber(addr, &d, name, ch, mode, st, s)
            }));
        }
    }
    let ctx = PubCtx {
        addr,
        channels: CHANNELS.iter().map(|s| s.to_string()).collect(),
        stage: stage.clone(),
        life: life.clone(),
        every: Duration::from_millis(15),
        pad: 200,
    };
    let mut publishers = Vec::new();
    for i in 0..2 {
        let (c, d) = (ctx.clone(), dir.to_path_buf());
        publishers.push(thread::spawn(move || {
            clients::ws_publisher(c, &d, format!("pub-ws-{i}"))
        }));
    }
    {
        // The bulk channel: large publications, so a consumer that stops reading fills
        // the kernel's socket buffers (megabytes on loopback) and its queue within its
        // pause, and is cut.
        let (mut c, d) = (ctx.clone(), dir.to_path_buf());
        c.channels = vec![BULK.to_string()];
        c.pad = 16 * 1024;
        c.every = Duration::from_millis(10);
        publishers.push(thread::spawn(move || {
            clients::ws_publisher(c, &d, "pub-ws-bulk".into())
        }));
    }
    {
        let (mut c, d) = (ctx.clone(), dir.to_path_buf());
        c.every = Duration::from_millis(30);
        publishers.push(thread::spawn(move || {
            clients::http_publisher(c, &d, "pub-http-0".into())
        }));
    }
    {
        let (d, st) = (dir.to_path_buf(), stage.clone());
        publishers.push(thread::spawn(move || {
            clients::hostile(addr, &d, st, MAX_MESSAGE, seed)
        }));
    }

    // Load, with a restart every `restart_every`.
    let end = t0 + Duration::from_secs(secs);
    let mut next_restart = Instant::now() + restart_every;
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(100));
        if !srv.alive() {
            eprintln!(
                "soak: the server died during the run (see {})",
                server::log_path(dir, life.load(Ordering::Acquire)).display()
            );
            break;
        }
        if Instant::now() >= next_restart
            && end.saturating_duration_since(Instant::now()) > Duration::from_secs(5)
        {
            let l = life.load(Ordering::Acquire);
            let code = srv.terminate();
            life_log.log(&Event::Exit { life: l, code });
            life.store(l + 1, Ordering::Release);
            println!(
                "soak: {:>5.1}s restart: lifetime {l} exited {code:?}",
                t0.elapsed().as_secs_f64()
            );
            srv = match Server::start(&cmd, addr, &server::log_path(dir, l + 1)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("soak: restart failed: {e}");
                    stage.store(STOP, Ordering::Release);
                    return ExitCode::FAILURE;
                }
            };
            watch.set(srv.pid(), l + 1);
            next_restart = Instant::now() + restart_every;
        }
    }
    stage.store(QUIESCE, Ordering::Release);
    for p in publishers {
        let _ = p.join();
    }
    thread::sleep(QUIESCE_FOR);
    stage.store(STOP, Ordering::Release);
    for w in workers {
        let _ = w.join();
    }
    // Quiet: no client, and history and keys expire (TTL, then the sweep).
    watch.phase("quiet");
    println!(
        "soak: {:>5.1}s clients gone; waiting for history to expire",
        t0.elapsed().as_secs_f64()
    );
    thread::sleep(Duration::from_secs(HISTORY_TTL_SECS + HISTORY_TTL_SECS / 4 + 4));
    sampler.stop();
    let l = life.load(Ordering::Acquire);
    let code = srv.terminate();
    life_log.log(&Event::Exit { life: l, code });
    println!(
        "soak: {:>5.1}s run over: lifetime {l} exited {code:?}",
        t0.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}

fn check(dir: &Path) -> ExitCode {
    let events = match event::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("soak: cannot read the logs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut server_log = String::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for p in logs {
        server_log.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
    }
    let report = checker::check(&events, &server_log);
    print!("{}", report.render());
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
