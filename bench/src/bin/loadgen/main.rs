//! Load generator for wshub benchmarks: one process, one tokio thread (current-thread
//! runtime), thousands of WebSocket client connections.
//!
//! Every mode prints exactly one machine-readable line on stdout:
//! `RESULT mode=... key=value key=value ...` (no spaces inside values); progress and
//! errors go to stderr. Every loop is bounded by a deadline. See bench/README.md.

mod flood;
mod procfs;
mod pubsub;
mod ws;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};

use ws::{Msg, OP_TEXT, Ws};

#[derive(Parser, Debug)]
#[command(
    about = "WebSocket load generator (echo, broadcast, idle, churn, drain, pubsub, resume, storm, flood)"
)]
struct Cli {
    /// Server address (loopback).
    #[arg(long, default_value = "127.0.0.1:9301")]
    addr: SocketAddr,
    /// Server PID, for CPU / memory sampling (idle, drain need it; echo, churn,
    /// broadcast use it to report the server's CPU).
    #[arg(long)]
    server_pid: Option<u32>,
    /// The core the server is pinned to: reports how busy it was with other processes
    /// (`server_core_other_pct`), a check that the measurement was not disturbed.
    #[arg(long)]
    server_core: Option<u32>,
    /// Handshakes in flight at once while ramping connections up.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds one connect + handshake may take before it counts as failed.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Keep the generator's thread busy polling instead of sleeping in epoll_wait. On
    /// loopback the sender's system call runs the receiver's TCP receive path and wakes
    /// the receiver (a cross-core interrupt, a VM exit here), all charged to the server's
    /// core; on a real network that work happens on the client's machine. With this flag
    /// the receiver is never asleep, so the server pays for its sends only. Reported
    /// `loadgen_cpu_pct` is then 100 and says nothing about headroom.
    #[arg(long)]
    busy_poll: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// N connections, closed loop: send, wait for the echo, repeat.
    Echo {
        #[arg(long, default_value_t = 100)]
        conns: usize,
        /// Measured seconds (after the warm-up).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Payload bytes (text).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "/echo")]
        path: String,
    },
    /// N subscribers on /chat, one publisher at R msg/s; delivery latency and loss.
    Broadcast {
        #[arg(long, default_value_t = 1000)]
        subs: usize,
        /// Messages per second from the publisher.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Seconds between the last subscriber connecting and the first message.
        #[arg(long, default_value_t = 1.0)]
        settle: f64,
        /// Seconds after the last message that subscribers keep waiting for it.
        #[arg(long, default_value_t = 3.0)]
        grace: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "/chat")]
        path: String,
    },
    /// N connections held open; the server's RSS, threads and CPU sampled from /proc.
    Idle {
        #[arg(long, default_value_t = 10000)]
        conns: usize,
        /// Seconds between the ramp's end and the first sample.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        /// Seconds over which the server's CPU time is measured.
        #[arg(long, default_value_t = 10.0)]
        window: f64,
        #[arg(long, default_value = "/echo")]
        path: String,
    },
    /// Connect, one echo, close; as fast as possible with bounded concurrency, or at a rate.
    Churn {
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Target new connections per second (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "/echo")]
        path: String,
    },
    /// Protocol v1 on /ws: N subscribers over K channels, one publisher at R
    /// publications/s in all; delivery latency, ack latency, loss counted by offsets.
    /// With `--sub-addr A --sub-addr B` the subscribers are split across two nodes
    /// (the Redis engine's two-node scenario); the publisher is on `--addr`.
    Pubsub {
        #[command(flatten)]
        a: pubsub::PsArgs,
    },
    /// Protocol v1 on /ws: P publishers on one node, each closed loop (pub, wait for the
    /// ack, repeat) for D s; acked publications/s and where the server's CPU went, per
    /// thread (the Redis engine's threads by name) and Redis's (`--redis-pid`).
    Pubrate {
        #[command(flatten)]
        a: pubsub::RateArgs,
    },
    /// The resume storm: as pubsub, but every subscriber's TCP connection is cut at once
    /// mid-run; all reconnect and resubscribe with `since`. Time to recover, lost /
    /// duplicated offsets.
    #[command(alias = "resume-storm")]
    Resume {
        #[command(flatten)]
        a: pubsub::PsArgs,
        /// Seconds into publishing when every subscriber cuts its connection.
        #[arg(long, default_value_t = 2.0)]
        cut_after: f64,
    },
    /// The join/leave storm: as pubsub, plus W watchers of one more channel subscribed
    /// with joins; mid-run all watchers drop and resubscribe at once. Calm channels'
    /// delivery p99 before and during the storm.
    Storm {
        #[command(flatten)]
        a: pubsub::PsArgs,
        /// Watchers of the storm channel (subscribed with `"joins": true`).
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Seconds into publishing when every watcher cuts its connection.
        #[arg(long, default_value_t = 2.0)]
        storm_after: f64,
    },
    /// One client floods /chat with small messages as fast as its socket takes them
    /// while a canary member broadcasts every 100 ms and M members read: the canary's
    /// latency at every member before and during the flood, loss, members cut.
    Flood {
        #[command(flatten)]
        a: flood::FloodArgs,
    },
    /// N connections, SIGTERM to the server, time until every client saw Close 1001
    /// and the process exited.
    Drain {
        #[arg(long, default_value_t = 10000)]
        conns: usize,
        #[arg(long, default_value_t = 1.0)]
        settle: f64,
        /// Seconds to wait for the closes and the exit.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        #[arg(long, default_value = "/echo")]
        path: String,
    },
}

/// The one `RESULT` line.
struct Out(Vec<(String, String)>);

impl Out {
    fn new(mode: &str) -> Out {
        Out(vec![("mode".into(), mode.into())])
    }
    fn kv(&mut self, k: &str, v: impl std::fmt::Display) -> &mut Self {
        let v = v
            .to_string()
            .replace(|c: char| c.is_whitespace() || c == '=', "_");
        self.0.push((k.into(), v));
        self
    }
    fn f(&mut self, k: &str, v: f64, digits: usize) -> &mut Self {
        self.kv(k, format!("{v:.digits$}"))
    }
    fn print(&self) {
        let s: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("RESULT {}", s.join(" "));
    }
}

fn hist() -> Histogram<u64> {
    // Microseconds, 1 us .. 120 s, 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// CPU of this process and of the server between two points in time.
#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    me: u64,
    server: Option<u64>,
    core: Option<(u64, u64, u64)>,
}

static SERVER_CORE: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();

fn cpu_sample(pid: Option<u32>) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        me: procfs::cpu_ticks(std::process::id()).unwrap_or(0),
        server: pid.and_then(procfs::cpu_ticks),
        core: SERVER_CORE
            .get()
            .copied()
            .flatten()
            .and_then(procfs::core_jiffies),
    }
}

/// Percent of the server's core used by anything but the server (other processes,
/// interrupts), and percent stolen by the hypervisor, between two samples.
fn core_other_pct(a: CpuSample, b: CpuSample) -> Option<(f64, f64)> {
    let ((b0, s0, t0), (b1, s1, t1)) = (a.core?, b.core?);
    let total = ((t1 - t0) as f64).max(1.0);
    let busy = (b1 - b0) as f64 / total * 100.0;
    let steal = (s1 - s0) as f64 / total * 100.0;
    let srv = cpu_pct(a, b).1.unwrap_or(0.0);
    Some(((busy - srv).max(0.0), steal))
}

/// (loadgen %, server %) of one core.
fn cpu_pct(a: CpuSample, b: CpuSample) -> (f64, Option<f64>) {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let tck = procfs::clk_tck();
    let me = (b.me.saturating_sub(a.me)) as f64 / tck / secs * 100.0;
    let srv = match (a.server, b.server) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x) as f64 / tck / secs * 100.0),
        _ => None,
    };
    (me, srv)
}

fn put_cpu(out: &mut Out, a: CpuSample, b: CpuSample) {
    let (me, srv) = cpu_pct(a, b);
    out.f("loadgen_cpu_pct", me, 1);
    if let Some(s) = srv {
        out.f("server_cpu_pct", s, 1);
    }
    if let Some((o, st)) = core_other_pct(a, b) {
        out.f("server_core_other_pct", o, 1)
            .f("server_core_steal_pct", st, 1);
    }
}

struct Ramp {
    conns: Vec<Ws>,
    failed: usize,
    first_err: Option<String>,
    secs: f64,
}

/// Open `n` connections with at most `in_flight` handshakes at a time.
async fn open_many(cli: &Cli, path: &str, n: usize) -> Ramp {
    open_many_at(cli, cli.addr, path, n).await
}

/// [`open_many`] to `addr`.
async fn open_many_at(cli: &Cli, addr: SocketAddr, path: &str, n: usize) -> Ramp {
    let t = Instant::now();
    let to = Duration::from_secs_f64(cli.connect_timeout);
    let results: Vec<std::io::Result<Ws>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            match timeout(to, Ws::connect(addr, path, i as u64 + 1)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake timed out",
                )),
            }
        })
        .buffer_unordered(cli.in_flight.max(1))
        .collect()
        .await;
    let mut ramp = Ramp {
        conns: Vec::with_capacity(n),
        failed: 0,
        first_err: None,
        secs: 0.0,
    };
    for r in results {
        match r {
            Ok(ws) => ramp.conns.push(ws),
            Err(e) => {
                ramp.failed += 1;
                ramp.first_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    ramp.secs = t.elapsed().as_secs_f64();
    eprintln!(
        "loadgen: {} of {n} connections to {path} in {:.2}s ({} failed{})",
        ramp.conns.len(),
        ramp.secs,
        ramp.failed,
        ramp.first_err
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default()
    );
    ramp
}

fn put_ramp(out: &mut Out, n: usize, r: &Ramp) {
    out.kv("conns", n)
        .kv("connected", r.conns.len())
        .kv("failed", r.failed);
    out.f("ramp_s", r.secs, 2);
    if let Some(e) = &r.first_err {
        out.kv("first_error", e);
    }
}

fn main() {
    let cli = Cli::parse();
    let _ = SERVER_CORE.set(cli.server_core);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(async {
        if cli.busy_poll {
            // Never idle, so the runtime never parks in epoll_wait: it polls with a zero
            // timeout between tasks, and a server's send finds nobody to wake.
            tokio::spawn(async {
                loop {
                    tokio::task::yield_now().await;
                }
            });
        }
        match &cli.mode {
            Mode::Echo {
                conns,
                duration,
                warmup,
                size,
                path,
            } => echo(&cli, *conns, *duration, *warmup, *size, path).await,
            Mode::Broadcast {
                subs,
                rate,
                duration,
                settle,
                grace,
                size,
                path,
            } => broadcast(&cli, *subs, *rate, *duration, *settle, *grace, *size, path).await,
            Mode::Idle {
                conns,
                settle,
                window,
                path,
            } => idle(&cli, *conns, *settle, *window, path).await,
            Mode::Churn {
                duration,
                concurrency,
                rate,
                size,
                path,
            } => churn(&cli, *duration, *concurrency, *rate, *size, path).await,
            Mode::Drain {
                conns,
                settle,
                timeout,
                path,
            } => drain(&cli, *conns, *settle, *timeout, path).await,
            Mode::Pubsub { a } => pubsub::pubsub(&cli, a).await,
            Mode::Pubrate { a } => pubsub::pubrate(&cli, a).await,
            Mode::Resume { a, cut_after } => pubsub::resume_storm(&cli, a, *cut_after).await,
            Mode::Storm {
                a,
                watchers,
                storm_after,
            } => pubsub::storm(&cli, a, *watchers, *storm_after).await,
            Mode::Flood { a } => flood::flood(&cli, a).await,
        }
    });
    out.print();
    // Do not wait for stragglers (tasks still closing): the result is out.
    drop(rt);
}

async fn echo(cli: &Cli, n: usize, duration: f64, warmup: f64, size: usize, path: &str) -> Out {
    let mut out = Out::new("echo");
    let ramp = open_many(cli, path, n).await;
    put_ramp(&mut out, n, &ramp);
    let h = Arc::new(Mutex::new(hist()));
    let count = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_err: Arc<Mutex<Option<String>>> = Arc::default();
    let t0 = tokio::time::Instant::now();
    let m_start = t0 + Duration::from_secs_f64(warmup);
    let m_end = m_start + Duration::from_secs_f64(duration);
    let payload: Arc<[u8]> = vec![b'x'; size].into();
    let mut tasks = Vec::with_capacity(n);
    for mut ws in ramp.conns {
        let (h, count, errors, first_err, payload) = (
            h.clone(),
            count.clone(),
            errors.clone(),
            first_err.clone(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::with_capacity(1024);
            let mut ok = true;
            loop {
                let sent = tokio::time::Instant::now();
                if sent >= m_end {
                    break;
                }
                let r = timeout(Duration::from_secs(10), async {
                    ws.send(OP_TEXT, &payload).await?;
                    match ws.recv().await? {
                        Msg::Data(_, p) if p.len() == payload.len() => Ok(()),
                        Msg::Data(_, p) => Err(format!("echo of {} bytes, sent {}", p.len(), payload.len())),
                        Msg::Close(c) => Err(format!("server closed {c:?}")),
                    }
                    .map_err(std::io::Error::other)
                })
                .await;
                let done = tokio::time::Instant::now();
                match r {
                    Ok(Ok(())) => {
                        if sent >= m_start && done <= m_end {
                            local.push((done - sent).as_micros() as u64);
                        }
                    }
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e.to_string());
                        ok = false;
                        break;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_err
                            .lock()
                            .unwrap()
                            .get_or_insert("echo timed out (10s)".into());
                        ok = false;
                        break;
                    }
                }
                if local.len() == local.capacity() {
                    flush(&h, &count, &mut local);
                }
            }
            flush(&h, &count, &mut local);
            if ok {
                let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
            }
        }));
    }
    sleep_until(m_start).await;
    let c0 = cpu_sample(cli.server_pid);
    sleep_until(m_end).await;
    let c1 = cpu_sample(cli.server_pid);
    for t in tasks {
        let _ = timeout(Duration::from_secs(15), t).await;
    }
    let h = h.lock().unwrap();
    let msgs = count.load(Ordering::Relaxed);
    out.kv("msgs", msgs).f("msgs_per_s", msgs as f64 / duration, 0);
    out.f("p50_ms", ms(h.value_at_quantile(0.50)), 3)
        .f("p99_ms", ms(h.value_at_quantile(0.99)), 3)
        .f("max_ms", ms(h.max()), 3);
    out.kv("errors", errors.load(Ordering::Relaxed));
    if let Some(e) = first_err.lock().unwrap().as_ref() {
        out.kv("error", e);
    }
    put_cpu(&mut out, c0, c1);
    out
}

fn flush(h: &Mutex<Histogram<u64>>, count: &AtomicU64, local: &mut Vec<u64>) {
    if local.is_empty() {
        return;
    }
    let mut h = h.lock().unwrap();
    for &v in local.iter() {
        h.saturating_record(v.max(1));
    }
    count.fetch_add(local.len() as u64, Ordering::Relaxed);
    local.clear();
}

#[derive(Default)]
struct SubStats {
    received: u64,
    lost: u64,
    gaps: u64,
    dup: u64,
    disconnected: u64,
    subs_with_loss: u64,
    max_loss: u64,
    timed_out: u64,
    first_end: Option<tokio::time::Instant>,
    last_recv: Option<tokio::time::Instant>,
}

#[allow(clippy::too_many_arguments)]
async fn broadcast(
    cli: &Cli,
    n: usize,
    rate: f64,
    duration: f64,
    settle: f64,
    grace: f64,
    size: usize,
    path: &str,
) -> Out {
    let mut out = Out::new("broadcast");
    let ramp = open_many(cli, path, n).await;
    put_ramp(&mut out, n, &ramp);
    let mut publisher = match Ws::connect(cli.addr, path, 0).await {
        Ok(p) => p,
        Err(e) => {
            out.kv("error", format!("publisher: {e}"));
            return out;
        }
    };
    // The publisher reads its own copies from inside select!: keep recv write-free.
    publisher.auto_pong = false;
    let total = (rate * duration).round().max(1.0) as u64;
    let base = tokio::time::Instant::now();
    let pub_start = base + Duration::from_secs_f64(settle);
    let deadline = pub_start + Duration::from_secs_f64(duration + grace);
    let h = Arc::new(Mutex::new(hist()));
    let stats = Arc::new(Mutex::new(SubStats::default()));
    let mut tasks = Vec::with_capacity(n);
    for mut ws in ramp.conns {
        let (h, stats) = (h.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = 0u64;
            let (mut received, mut dup, mut disconnected, mut gaps) = (0u64, 0u64, false, 0u64);
            let mut timed_out = false;
            let mut lat = Vec::with_capacity(total as usize);
            let mut last = None;
            while next < total {
                match timeout_at(deadline, ws.recv()).await {
                    Ok(Ok(Msg::Data(_, p))) => {
                        let now = tokio::time::Instant::now();
                        let Some((seq, ts)) = parse_stamp(p) else { continue };
                        let sent = base + Duration::from_nanos(ts);
                        lat.push(now.saturating_duration_since(sent).as_micros() as u64);
                        if seq >= next {
                            gaps += seq - next;
                            next = seq + 1;
                            received += 1;
                        } else {
                            dup += 1;
                        }
                        last = Some(now);
                    }
                    Ok(Ok(Msg::Close(_))) | Ok(Err(_)) => {
                        disconnected = true;
                        break;
                    }
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                }
            }
            let ended = tokio::time::Instant::now();
            let lost = total - received;
            {
                let mut hh = h.lock().unwrap();
                for v in lat {
                    hh.saturating_record(v.max(1));
                }
            }
            {
                let mut s = stats.lock().unwrap();
                s.received += received;
                s.lost += lost;
                s.gaps += gaps;
                s.dup += dup;
                s.disconnected += disconnected as u64;
                s.subs_with_loss += (lost > 0) as u64;
                s.max_loss = s.max_loss.max(lost);
                s.timed_out += timed_out as u64;
                s.first_end = Some(s.first_end.map_or(ended, |f| f.min(ended)));
                if last > s.last_recv {
                    s.last_recv = last;
                }
            }
            // Closed only once every subscriber is done: a subscriber closing as soon as
            // it has the last message would wake the server's reader for it while the
            // server is still sending that message to the others.
            (!disconnected).then_some(ws)
        }));
    }
    // Publisher: message k leaves at pub_start + k/rate (catching up if late); its own
    // copies (the sender is a /chat client too) are read and dropped in between.
    let c0;
    let mut pub_err = None;
    {
        sleep_until(pub_start).await;
        c0 = cpu_sample(cli.server_pid);
        let mut text = String::with_capacity(size + 32);
        let mut own = 0u64;
        'outer: for k in 0..total {
            let at = pub_start + Duration::from_secs_f64(k as f64 / rate);
            loop {
                tokio::select! {
                    _ = sleep_until(at) => break,
                    r = publisher.recv() => match r {
                        Ok(Msg::Data(..)) => own += 1,
                        Ok(Msg::Close(c)) => { pub_err = Some(format!("publisher closed by server {c:?}")); break 'outer; }
                        Err(e) => { pub_err = Some(format!("publisher: {e}")); break 'outer; }
                    }
                }
            }
            let ts = (tokio::time::Instant::now() - base).as_nanos() as u64;
            text.clear();
            use std::fmt::Write;
            let _ = write!(text, "{k} {ts} ");
            while text.len() < size {
                text.push('x');
            }
            if let Err(e) = publisher.send(OP_TEXT, text.as_bytes()).await {
                pub_err = Some(format!("publisher send: {e}"));
                break;
            }
        }
        let _ = own;
    }
    let c1 = cpu_sample(cli.server_pid);
    let pub_end = tokio::time::Instant::now();
    // Keep reading the publisher's copies while the subscribers finish.
    let mut sub_tasks = futures_util::future::join_all(tasks);
    let mut pub_alive = pub_err.is_none();
    let mut open_subs = Vec::new();
    loop {
        tokio::select! {
            done = &mut sub_tasks => {
                open_subs = done.into_iter().filter_map(|r| r.ok().flatten()).collect();
                break;
            }
            r = publisher.recv(), if pub_alive => if r.is_err() || matches!(r, Ok(Msg::Close(_))) { pub_alive = false },
            _ = sleep_until(deadline + Duration::from_secs(5)) => break,
        }
    }
    futures_util::future::join_all(open_subs.into_iter().map(|mut ws| async move {
        let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
    }))
    .await;
    if pub_alive {
        publisher.auto_pong = true;
        let _ = timeout(Duration::from_secs(2), publisher.close(1000)).await;
    }
    let s = stats.lock().unwrap();
    let h = h.lock().unwrap();
    let expected = total * n as u64;
    let span = s
        .last_recv
        .map(|l| (l - pub_start).as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-9);
    out.kv("rate", rate).kv("sent", total);
    out.f("publish_s", (pub_end - pub_start).as_secs_f64(), 2);
    out.kv("deliveries", s.received).kv("expected", expected);
    out.f("deliveries_per_s", s.received as f64 / span, 0);
    out.f("expected_per_s", n as f64 * rate, 0);
    out.f("p50_ms", ms(h.value_at_quantile(0.50)), 3)
        .f("p99_ms", ms(h.value_at_quantile(0.99)), 3)
        .f("max_ms", ms(h.max()), 3);
    // lost = gaps (sequence numbers skipped: dropped by the server) + undelivered
    // (the tail not received by the deadline: late or dropped).
    out.kv("lost", s.lost)
        .kv("lost_gaps", s.gaps)
        .kv("undelivered", s.lost - s.gaps);
    out.kv("subs_with_loss", s.subs_with_loss)
        .kv("max_loss_per_sub", s.max_loss);
    out.kv("dup_or_reordered", s.dup)
        .kv("subs_disconnected", s.disconnected);
    out.kv("subs_timed_out", s.timed_out);
    if let Some(f) = s.first_end {
        out.f("first_sub_end_s", (f - pub_start).as_secs_f64(), 2);
    }
    if let Some(e) = pub_err {
        out.kv("error", e);
    }
    put_cpu(&mut out, c0, c1);
    out
}

/// "SEQ TS ..." -> (seq, ts_ns).
fn parse_stamp(p: &[u8]) -> Option<(u64, u64)> {
    let mut it = p.split(|&b| b == b' ');
    let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
    Some((num(it.next()?)?, num(it.next()?)?))
}

async fn idle(cli: &Cli, n: usize, settle: f64, window: f64, path: &str) -> Out {
    let mut out = Out::new("idle");
    let Some(pid) = cli.server_pid else {
        out.kv("error", "--server-pid required");
        return out;
    };
    let m0 = procfs::mem(pid);
    let ramp = open_many(cli, path, n).await;
    put_ramp(&mut out, n, &ramp);
    let connected = ramp.conns.len();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let closed_by_server = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connected);
    for mut ws in ramp.conns {
        let (mut stop, closed_by_server, errors) =
            (stop_rx.clone(), closed_by_server.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = ws.recv() => match r {
                        Ok(Msg::Data(..)) => {}
                        Ok(Msg::Close(_)) => { closed_by_server.fetch_add(1, Ordering::Relaxed); return; }
                        Err(_) => { errors.fetch_add(1, Ordering::Relaxed); return; }
                    },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            let _ = timeout(Duration::from_secs(3), ws.close(1000)).await;
        }));
    }
    sleep(Duration::from_secs_f64(settle)).await;
    let c0 = cpu_sample(Some(pid));
    sleep(Duration::from_secs_f64(window)).await;
    let c1 = cpu_sample(Some(pid));
    let m1 = procfs::mem(pid);
    let server_alive = !matches!(procfs::state(pid), None | Some('Z') | Some('X'));
    out.kv("server_alive", server_alive as u8);
    if !server_alive {
        // Nothing per connection to report about a process that is gone.
        out.kv("error", "server exited during the run");
        let _ = stop_tx.send(true);
        let _ = timeout(Duration::from_secs(10), futures_util::future::join_all(tasks)).await;
        return out;
    }
    out.kv("server_maps", procfs::map_count(pid).unwrap_or(0));
    let lost = closed_by_server.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed);
    let alive = connected as u64 - lost;
    let per = |a: u64, b: u64| (b as f64 - a as f64) / (alive.max(1) as f64);
    out.kv("alive", alive)
        .kv("closed_by_server", closed_by_server.load(Ordering::Relaxed))
        .kv("conn_errors", errors.load(Ordering::Relaxed));
    out.kv("rss_before_kib", m0.server_rss)
        .kv("rss_after_kib", m1.server_rss);
    out.f("rss_kib_per_conn", per(m0.server_rss, m1.server_rss), 1);
    out.kv("threads_before", m0.server_threads)
        .kv("threads", m1.server_threads);
    let (me, srv) = cpu_pct(c0, c1);
    out.f("idle_cpu_pct", srv.unwrap_or(f64::NAN), 2)
        .f("loadgen_cpu_pct", me, 2);
    if let Some((o, st)) = core_other_pct(c0, c1) {
        out.f("server_core_other_pct", o, 1)
            .f("server_core_steal_pct", st, 1);
    }
    out.f("window_s", window, 1);
    // The kernel's share: MemAvailable's drop covers both ends (the load generator's
    // sockets are on this machine too); subtract both processes' RSS growth.
    let drop_avail = per(m1.mem_available, m0.mem_available);
    out.f("memavail_drop_kib_per_conn", drop_avail, 1);
    out.f("loadgen_rss_kib_per_conn", per(m0.loadgen_rss, m1.loadgen_rss), 1);
    out.f(
        "kernel_kib_per_conn",
        drop_avail - per(m0.server_rss, m1.server_rss) - per(m0.loadgen_rss, m1.loadgen_rss),
        1,
    );
    // Less noisy than MemAvailable (which moves with the page cache): the kernel's own
    // counters. Slab and TCP buffers cover both ends' sockets; KernelStack the server's
    // threads (the load generator adds none); PageTables mostly the server's mappings.
    let counters = |m: &procfs::Mem| m.kernel_stack + m.slab + m.page_tables + m.tcp_mem;
    out.f(
        "kernel_counters_kib_per_conn",
        per(counters(&m0), counters(&m1)),
        1,
    );
    out.f(
        "kernelstack_kib_per_conn",
        per(m0.kernel_stack, m1.kernel_stack),
        1,
    );
    out.f("slab_kib_per_conn", per(m0.slab, m1.slab), 1);
    out.f("pagetables_kib_per_conn", per(m0.page_tables, m1.page_tables), 1);
    out.f("tcp_mem_kib_per_conn", per(m0.tcp_mem, m1.tcp_mem), 1);
    let _ = stop_tx.send(true);
    let _ = timeout(Duration::from_secs(10), futures_util::future::join_all(tasks)).await;
    out
}

async fn churn(cli: &Cli, duration: f64, concurrency: usize, rate: f64, size: usize, path: &str) -> Out {
    let mut out = Out::new("churn");
    let hs = Arc::new(Mutex::new(hist()));
    let cycle = Arc::new(Mutex::new(hist()));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slot = Arc::new(AtomicU64::new(0));
    let first_err: Arc<Mutex<Option<String>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(duration);
    let c0 = cpu_sample(cli.server_pid);
    let path: Arc<str> = path.into();
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let (hs, cycle, ok, failed, slot, first_err, path) = (
            hs.clone(),
            cycle.clone(),
            ok.clone(),
            failed.clone(),
            slot.clone(),
            first_err.clone(),
            path.clone(),
        );
        let addr = cli.addr;
        let payload = vec![b'x'; size];
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                if rate > 0.0 {
                    let k = slot.fetch_add(1, Ordering::Relaxed);
                    let at = start + Duration::from_secs_f64(k as f64 / rate);
                    if at >= end {
                        break;
                    }
                    sleep_until(at).await;
                }
                let t0 = tokio::time::Instant::now();
                if t0 >= end {
                    break;
                }
                i += 1;
                let r: std::io::Result<(Duration, Duration)> = timeout(Duration::from_secs(10), async {
                    let mut ws = Ws::connect(addr, &path, (w as u64) << 32 | i).await?;
                    let t_hs = t0.elapsed();
                    ws.send(OP_TEXT, &payload).await?;
                    match ws.recv().await? {
                        Msg::Data(..) => {}
                        Msg::Close(c) => {
                            return Err(std::io::Error::other(format!("closed {c:?} before echo")));
                        }
                    }
                    let t_echo = t0.elapsed();
                    ws.close(1000).await?;
                    Ok((t_hs, t_echo))
                })
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("cycle timed out (10s)")));
                match r {
                    Ok((t_hs, t_echo)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        hs.lock()
                            .unwrap()
                            .saturating_record(t_hs.as_micros().max(1) as u64);
                        cycle
                            .lock()
                            .unwrap()
                            .saturating_record(t_echo.as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_err.lock().unwrap().get_or_insert(e.to_string());
                        // Do not hammer a refusing server in a tight loop.
                        sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = timeout(Duration::from_secs(20), t).await;
    }
    let c1 = cpu_sample(cli.server_pid);
    let elapsed = (tokio::time::Instant::now() - start).as_secs_f64();
    let okn = ok.load(Ordering::Relaxed);
    let (hs, cycle) = (hs.lock().unwrap(), cycle.lock().unwrap());
    out.kv("concurrency", concurrency).kv("rate", rate);
    out.kv("ok", okn).kv("failed", failed.load(Ordering::Relaxed));
    out.f("elapsed_s", elapsed, 2);
    out.f("handshakes_per_s", okn as f64 / elapsed, 0);
    out.f("hs_p50_ms", ms(hs.value_at_quantile(0.5)), 3)
        .f("hs_p99_ms", ms(hs.value_at_quantile(0.99)), 3);
    out.f("p50_ms", ms(cycle.value_at_quantile(0.5)), 3)
        .f("p99_ms", ms(cycle.value_at_quantile(0.99)), 3);
    if let Some(e) = first_err.lock().unwrap().as_ref() {
        out.kv("error", e);
    }
    put_cpu(&mut out, c0, c1);
    out
}

enum Seen {
    Close(u16, tokio::time::Instant),
    Eof,
    Error,
    Timeout,
}

async fn drain(cli: &Cli, n: usize, settle: f64, timeout_s: f64, path: &str) -> Out {
    let mut out = Out::new("drain");
    let Some(pid) = cli.server_pid else {
        out.kv("error", "--server-pid required");
        return out;
    };
    let ramp = open_many(cli, path, n).await;
    put_ramp(&mut out, n, &ramp);
    sleep(Duration::from_secs_f64(settle)).await;
    let t_sig = tokio::time::Instant::now();
    let deadline = t_sig + Duration::from_secs_f64(timeout_s);
    let mut tasks = Vec::with_capacity(ramp.conns.len());
    for mut ws in ramp.conns {
        tasks.push(tokio::spawn(async move {
            loop {
                match timeout_at(deadline, ws.recv()).await {
                    Ok(Ok(Msg::Data(..))) => {}
                    Ok(Ok(Msg::Close(code))) => {
                        let at = tokio::time::Instant::now();
                        // Echo the status code, as RFC 6455 section 5.5.1 asks.
                        let _ = timeout(Duration::from_secs(1), ws.send_close(code.unwrap_or(1000))).await;
                        return Seen::Close(code.unwrap_or(1005), at);
                    }
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return Seen::Eof;
                    }
                    Ok(Err(_)) => return Seen::Error,
                    Err(_) => return Seen::Timeout,
                }
            }
        }));
    }
    // SAFETY: kill(2) with a PID we were given and a valid signal number.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    if rc != 0 {
        out.kv("error", format!("kill: {}", std::io::Error::last_os_error()));
    }
    let exit_poll = async {
        loop {
            // Gone, or a zombie none of whose threads is still exiting: a thread-group
            // leader shows 'Z' as soon as it has exited itself, while the others may
            // still be on their way out.
            let exited = match procfs::state(pid) {
                None | Some('X') => true,
                Some('Z') => procfs::status_field(&pid.to_string(), "Threads").is_none_or(|n| n <= 1),
                _ => false,
            };
            if exited {
                return Some(tokio::time::Instant::now());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(1)).await;
        }
    };
    let (exited, seen) = tokio::join!(exit_poll, futures_util::future::join_all(tasks));
    let mut h = hist();
    let (mut c1001, mut cother, mut eof, mut err, mut to) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut last_close = None::<tokio::time::Instant>;
    let mut other_code = None;
    for s in seen {
        match s {
            Ok(Seen::Close(1001, at)) => {
                c1001 += 1;
                h.saturating_record((at - t_sig).as_micros().max(1) as u64);
                last_close = last_close.max(Some(at));
            }
            Ok(Seen::Close(code, _)) => {
                cother += 1;
                other_code.get_or_insert(code);
            }
            Ok(Seen::Eof) => eof += 1,
            Ok(Seen::Error) | Err(_) => err += 1,
            Ok(Seen::Timeout) => to += 1,
        }
    }
    let secs = |t: Option<tokio::time::Instant>| t.map(|t| (t - t_sig).as_secs_f64());
    out.kv("close_1001", c1001)
        .kv("close_other", cother)
        .kv("eof_without_close", eof);
    out.kv("conn_errors", err).kv("still_open", to);
    if let Some(c) = other_code {
        out.kv("other_code", c);
    }
    if c1001 > 0 {
        out.f("close_p50_ms", ms(h.value_at_quantile(0.5)), 1).f(
            "close_p99_ms",
            ms(h.value_at_quantile(0.99)),
            1,
        );
    }
    match secs(last_close) {
        Some(s) => out.f("all_closed_s", s, 3),
        None => out.kv("all_closed_s", "none"),
    };
    match secs(exited) {
        Some(s) => out.f("exit_s", s, 3),
        None => out.kv("exit_s", "timeout"),
    };
    let all = c1001 as usize == n && exited.is_some();
    match (all, secs(exited), secs(last_close)) {
        (true, Some(e), Some(c)) => out.f("drain_s", e.max(c), 3),
        _ => out.kv("drain_s", "incomplete"),
    };
    out
}
