//! The wshub soak: `soak run` drives a server for a while under everything at once and
//! records every delivery; `soak check` judges the records; `soak faults` runs the
//! box-fault scenarios. `scripts/soak` runs the three. `soak run ... redis` is the
//! two-node mode: two `wshub serve --engine redis://...` sharing a redis-server the run
//! starts itself, restarted one at a time, with one Redis fault.
//!
//! **Owns**: the run's main thread owns the server processes (and the redis-server) and
//! restarts them; every worker is a thread of its own ([`clients`]), and each node's
//! sampler another ([`server::Sampler`]). The run **ends** by itself: publishers stop at
//! the deadline, subscribers a few seconds later, and the servers after the quiet phase.

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

/// How long a Redis run's nodes stay up without clients before the after-run sample.
const QUIET_REDIS: Duration = Duration::from_secs(5);
/// How long the redis-server stays down in the Redis fault phase of a Redis run.
const REDIS_DOWN_FOR: Duration = Duration::from_secs(3);

fn usage() -> ExitCode {
    eprintln!("usage: soak run WSHUB_BIN SECONDS DIR [redis] | soak check DIR | soak faults WSHUB_BIN DIR");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["run", bin, secs, dir, rest @ ..] => {
            let redis = match rest {
                [] => false,
                ["redis"] => true,
                _ => return usage(),
            };
            match secs.parse() {
                Ok(secs) => run(bin, secs, Path::new(dir), redis),
                Err(_) => usage(),
            }
        }
        ["check", dir] => check(Path::new(dir)),
        ["faults", bin, dir] => faults::run(bin, Path::new(dir)),
        _ => usage(),
    }
}

/// The server's command line for the soak; `engine` is a `redis://` URL in Redis mode.
fn serve_cmd(bin: &str, addr: SocketAddr, engine: Option<&str>) -> Vec<String> {
    let ttl = format!("{HISTORY_TTL_SECS}s");
    let mut cmd: Vec<String> = [
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
    .collect();
    if let Some(url) = engine {
        cmd.extend(["--engine".to_string(), url.to_string()]);
    }
    cmd
}

/// The Redis fault of a Redis run: still to come, Redis down since, or over (or none).
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Pending,
    Down(Instant),
    Done,
}

/// One wshub node of the run: its process, its command line, its sampler's cell, and how
/// many times it was restarted.
struct Node {
    /// `None` in the one-node memory run (whose logs keep their old names).
    id: Option<u64>,
    addr: SocketAddr,
    cmd: Vec<String>,
    srv: Option<Server>,
    life: u64,
    watch: Watch,
}

impl Node {
    fn log(&self, dir: &Path) -> PathBuf {
        server::log_path(dir, self.id, self.life)
    }

    /// SIGTERM, drain, exit (logged), then start again on the same port. `keys` is the
    /// key holder's lifetime when this node holds the keys (memory mode): it moves on
    /// before the new process can answer anything.
    fn restart(
        &mut self,
        dir: &Path,
        life_log: &mut LogFile,
        keys: Option<&AtomicU64>,
    ) -> Result<Option<i32>, String> {
        let code = self.srv.take().expect("running").terminate();
        life_log.log(&Event::Exit {
            node: self.id.unwrap_or(0),
            life: self.life,
            code,
        });
        self.life += 1;
        if let Some(k) = keys {
            k.store(self.life, Ordering::Release);
        }
        let srv = Server::start(&self.cmd, self.addr, &self.log(dir))?;
        self.watch.set(srv.pid(), self.life);
        self.srv = Some(srv);
        Ok(code)
    }
}

/// `soak run`: one node with the memory engine, or (`redis`) two nodes sharing a
/// redis-server of the run's own, restarted one at a time, with a Redis fault phase.
fn run(bin: &str, secs: u64, dir: &Path, redis: bool) -> ExitCode {
    std::fs::create_dir_all(dir).expect("log dir");
    // Memory: a restart every 20 s (60 s in a long run). Redis: every 10 s (30 s), taking
    // the two nodes in turn, so each node restarts as often as the memory run's server.
    let restart_every = Duration::from_secs(match (secs <= 120, redis) {
        (true, false) => 20,
        (false, false) => 60,
        (true, true) => 10,
        (false, true) => 30,
    });
    let mut redis_srv = if redis {
        match server::Redis::start(&dir.join("redis")) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("soak: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let url = redis_srv.as_ref().map(server::Redis::url);
    let t0 = Instant::now();
    let mut life_log = LogFile::create(dir, "server").expect("server events log");
    let n_nodes: u64 = if redis { 2 } else { 1 };
    life_log.log(&Event::Run {
        engine: if redis { "redis" } else { "memory" }.into(),
        nodes: n_nodes,
    });
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n_nodes {
        let addr = server::free_addr();
        let id = redis.then_some(i);
        let cmd = serve_cmd(bin, addr, url.as_deref());
        let srv = match Server::start(&cmd, addr, &server::log_path(dir, id, 0)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("soak: {e}");
                for n in nodes {
                    if let Some(s) = n.srv {
                        s.terminate();
                    }
                }
                return ExitCode::FAILURE;
            }
        };
        let watch = Watch::new(srv.pid());
        nodes.push(Node {
            id,
            addr,
            cmd,
            srv: Some(srv),
            life: 0,
            watch,
        });
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    println!(
        "soak: {} on {}{}, {secs} s, restart every {restart_every:?}, logs in {}",
        if redis { "two nodes" } else { "server" },
        addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        url.as_deref()
            .map(|u| format!(" sharing {u}"))
            .unwrap_or_default(),
        dir.display()
    );
    // Baseline: the fresh servers before any client. A Redis node opens its command
    // connection to Redis at its first command and keeps it: one publication through
    // each node first, so the baseline counts that fd.
    if redis {
        for n in &nodes {
            let body = r#"{"ch":"soak:warmup","data":"warmup"}"#;
            if let Err(e) = clients::http_post(n.addr, "/api/publish", body).and_then(|(st, b)| {
                if st == 200 {
                    Ok(())
                } else {
                    Err(format!("{st} {b}"))
                }
            }) {
                eprintln!("soak: warm-up publication through {} failed: {e}", n.addr);
                for n in nodes {
                    n.srv.map(Server::terminate);
                }
                return ExitCode::FAILURE;
            }
        }
    }
    thread::sleep(Duration::from_millis(500));
    let samplers: Vec<Sampler> = nodes
        .iter()
        .map(|n| Sampler::start(dir, n.id, n.watch.clone(), t0))
        .collect();
    thread::sleep(Duration::from_millis(1500));
    for n in &nodes {
        n.watch.phase("load");
    }

    let stage = Arc::new(AtomicU8::new(LOAD));
    // The lifetime of whatever holds the idempotency keys: the server, or the redis-server.
    let life = Arc::new(AtomicU64::new(0));
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    println!("soak: seed {seed}");
    // Each client starts on a node of its own (in turn), and moves on at each reconnection.
    let mut k = 0u64;
    let mut place = || {
        k += 1;
        clients::Nodes {
            addrs: addrs.clone(),
            next: k as usize,
        }
    };
    let mut workers = Vec::new();
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
            let nodes = place();
            let s = seed ^ nodes.next as u64;
            workers.push(thread::spawn(move || {
                clients::subscriber(nodes, &d, name, ch, mode, st, s)
            }));
        }
    }
    let ctx = PubCtx {
        nodes: place(),
        channels: CHANNELS.iter().map(|s| s.to_string()).collect(),
        stage: stage.clone(),
        life: life.clone(),
        every: Duration::from_millis(15),
        pad: 200,
    };
    let mut publishers = Vec::new();
    for i in 0..2 {
        let (mut c, d) = (ctx.clone(), dir.to_path_buf());
        c.nodes = place();
        publishers.push(thread::spawn(move || {
            clients::ws_publisher(c, &d, format!("pub-ws-{i}"))
        }));
    }
    {
        // The bulk channel: large publications, so a consumer that stops reading fills
        // the kernel's socket buffers (megabytes on loopback) and its queue within its
        // pause, and is cut.
        let (mut c, d) = (ctx.clone(), dir.to_path_buf());
        c.nodes = place();
        c.channels = vec![BULK.to_string()];
        c.pad = 16 * 1024;
        c.every = Duration::from_millis(10);
        publishers.push(thread::spawn(move || {
            clients::ws_publisher(c, &d, "pub-ws-bulk".into())
        }));
    }
    {
        let (mut c, d) = (ctx.clone(), dir.to_path_buf());
        c.nodes = place();
        c.every = Duration::from_millis(30);
        publishers.push(thread::spawn(move || {
            clients::http_publisher(c, &d, "pub-http-0".into())
        }));
    }
    {
        let (d, st, nodes) = (dir.to_path_buf(), stage.clone(), place());
        publishers.push(thread::spawn(move || {
            clients::hostile(nodes, &d, st, MAX_MESSAGE, seed)
        }));
    }

    // Load, with a restart every `restart_every` (one node at a time), and in Redis mode
    // one Redis fault: past the middle of the run, once half a period has passed since
    // the last restart, the redis-server is killed and, REDIS_DOWN_FOR later, started
    // again empty; no restart while it is down, nor in the half period after.
    let end = t0 + Duration::from_secs(secs);
    let mut next_restart = Instant::now() + restart_every;
    let mut last_restart = Instant::now();
    let mut restarts = 0usize;
    let fault_after = t0 + Duration::from_secs(secs / 2);
    let mut redis_fault = if redis { Fault::Pending } else { Fault::Done };
    let mut failed = false;
    'load: while Instant::now() < end {
        thread::sleep(Duration::from_millis(100));
        for n in &mut nodes {
            if !n.srv.as_mut().expect("running").alive() {
                eprintln!(
                    "soak: a server died during the run (see {})",
                    n.log(dir).display()
                );
                break 'load;
            }
        }
        let now = Instant::now();
        if let Some(r) = &mut redis_srv {
            if redis_fault == Fault::Pending
                && now >= fault_after
                && now >= last_restart + restart_every / 2
                && end.saturating_duration_since(now) > REDIS_DOWN_FOR + Duration::from_secs(5)
            {
                // Keys die with it: acks across this point carry no lifetime.
                life.fetch_add(1, Ordering::AcqRel);
                r.down();
                life_log.log(&Event::Redis {
                    t: t0.elapsed().as_secs_f64(),
                    up: false,
                });
                println!("soak: {:>5.1}s redis-server stopped", t0.elapsed().as_secs_f64());
                redis_fault = Fault::Down(now);
            } else if let Fault::Down(at) = redis_fault
                && now >= at + REDIS_DOWN_FOR
            {
                if let Err(e) = r.up() {
                    eprintln!("soak: {e}");
                    failed = true;
                    break 'load;
                }
                life_log.log(&Event::Redis {
                    t: t0.elapsed().as_secs_f64(),
                    up: true,
                });
                println!(
                    "soak: {:>5.1}s redis-server started again, empty",
                    t0.elapsed().as_secs_f64()
                );
                redis_fault = Fault::Done;
                next_restart = next_restart.max(Instant::now() + restart_every / 2);
            }
        }
        let redis_down = matches!(redis_fault, Fault::Down(_));
        if now >= next_restart && !redis_down && end.saturating_duration_since(now) > Duration::from_secs(5) {
            let n = &mut nodes[restarts % n_nodes as usize];
            restarts += 1;
            let l = n.life;
            match n.restart(dir, &mut life_log, (!redis).then_some(&*life)) {
                Ok(code) => {
                    println!(
                        "soak: {:>5.1}s restart: {}lifetime {l} exited {code:?}",
                        t0.elapsed().as_secs_f64(),
                        n.id.map(|i| format!("node {i} ")).unwrap_or_default()
                    );
                }
                Err(e) => {
                    eprintln!("soak: restart failed: {e}");
                    failed = true;
                    break 'load;
                }
            }
            next_restart = Instant::now() + restart_every;
            last_restart = Instant::now();
        }
    }
    if let (Fault::Down(_), Some(r)) = (redis_fault, &mut redis_srv) {
        // The run ended while Redis was down: bring it back so the clients can finish.
        let _ = r.up();
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
    // Quiet: no client, and history and keys expire (TTL, then the sweep). A Redis node
    // holds neither (they live in Redis): it only has to let its connections go.
    for n in &nodes {
        n.watch.phase("quiet");
    }
    println!(
        "soak: {:>5.1}s clients gone; {}",
        t0.elapsed().as_secs_f64(),
        if redis {
            "a quiet moment"
        } else {
            "waiting for history to expire"
        }
    );
    thread::sleep(if redis {
        QUIET_REDIS
    } else {
        Duration::from_secs(HISTORY_TTL_SECS + HISTORY_TTL_SECS / 4 + 4)
    });
    for s in samplers {
        s.stop();
    }
    for n in &mut nodes {
        let Some(srv) = n.srv.take() else { continue };
        let code = srv.terminate();
        life_log.log(&Event::Exit {
            node: n.id.unwrap_or(0),
            life: n.life,
            code,
        });
        println!(
            "soak: {:>5.1}s run over: {}lifetime {} exited {code:?}",
            t0.elapsed().as_secs_f64(),
            n.id.map(|i| format!("node {i} ")).unwrap_or_default(),
            n.life
        );
    }
    drop(redis_srv);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
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
