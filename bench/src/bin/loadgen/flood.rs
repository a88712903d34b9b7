//! `flood`: one sender floods a broadcast path, and the question is whether it stalls
//! another member's broadcasts (issue #17 item 2: "a sender must only slow itself").
//!
//! On `--path` (`/chat`): M members connect and read everything; one more connection, the
//! canary, broadcasts a timestamped message every `--interval-ms`; one more, the flooder,
//! connects too and reads (so it is not cut as a slow consumer itself). After `--settle`
//! the canary starts; `--quiet` seconds later the flooder starts writing `--size`-byte text
//! messages as fast as its socket takes them, for `--duration` seconds, then resets its
//! connection (`SO_LINGER` 0). The server still reads what its socket had received by
//! then (a receive buffer's worth) and broadcasts it after the window; nothing measured
//! depends on that.
//!
//! The canary's latency is measured at **every member** (the canary's own copy and the
//! flooder's are not counted): from the send time in the payload (same process, same
//! monotonic clock) to the member's reading of it. Canary messages are split by their
//! send time: quiet (before the flood) and flood (while the flooder writes). Reported:
//! p50/p99 of every (message, member) delivery in each phase and their ratio, and the p99
//! of the time until the last member had a message.
//!
//! Loss is checked both ways: every member must get every canary message (sequence
//! numbers), and the flood messages carry a sequence number too, so every member checks
//! that the flooder's messages reach it in order with no gap. A member whose connection
//! the server ends is counted (`members_cut`).
//!
//! Every wait is bounded by the run's deadline (flood end + `--grace`).

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::ws::{Msg, OP_TEXT, Ws};
use crate::{
    Cli, Out, core_other_pct, cpu_pct, cpu_sample, hist, ms, open_many, parse_stamp, procfs, put_ramp,
};

#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    /// Members that read (the canary and the flooder come on top).
    #[arg(long, default_value_t = 200)]
    members: usize,
    /// Seconds of the quiet phase: the canary alone.
    #[arg(long, default_value_t = 5.0)]
    quiet: f64,
    /// Seconds of flooding.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Milliseconds between two canary messages.
    #[arg(long, default_value_t = 100.0)]
    interval_ms: f64,
    /// Payload bytes of a flood message (13 or more: it carries a sequence number).
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Seconds between the last member connecting and the canary's first message.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds after the flood's end that members keep waiting for canary messages.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    #[arg(long, default_value = "/chat")]
    path: String,
}

/// Frames the flooder encodes per batch it hands to the socket.
const BATCH: usize = 64;

/// What one member saw.
#[derive(Default)]
struct Seen {
    /// (canary seq, latency in us) for every canary message received.
    canary: Vec<(u64, u64)>,
    canary_dup: u64,
    /// Flood messages: the next sequence number expected, gaps and steps back.
    flood_next: u64,
    flood_gaps: u64,
    flood_dup: u64,
    /// The highest flood sequence number + 1 received by the flood's end.
    flood_in_window: u64,
    /// Why the server ended the connection, if it did.
    cut: Option<String>,
}

/// A flood payload: "F" and its sequence number, zero-padded to `size` bytes.
fn flood_payload(seq: u64, size: usize, out: &mut Vec<u8>) {
    out.push(b'F');
    let digits = seq.to_string();
    out.resize(out.len() + (size - 1).saturating_sub(digits.len()), b'0');
    out.extend_from_slice(digits.as_bytes());
}

fn flood_seq(p: &[u8]) -> Option<u64> {
    std::str::from_utf8(p.get(1..)?).ok()?.parse().ok()
}

/// Appends one masked client text frame to `out`.
fn client_frame(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | OP_TEXT);
    assert!(payload.len() < 126, "flood messages are small");
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

async fn member(mut ws: Ws, base: Instant, flood_end: Instant, deadline: Instant, canaries: u64) -> Seen {
    // A member that fell behind (this process lost its core) catches up in big reads.
    ws.read_up_to(64 * 1024);
    let mut s = Seen::default();
    let mut have = vec![false; canaries as usize];
    let mut missing = canaries;
    loop {
        // Done once every canary message is in and the flood is over.
        if missing == 0 && Instant::now() >= flood_end {
            break;
        }
        match timeout_at(deadline, ws.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                s.cut = Some(e.to_string());
                break;
            }
            Ok(Ok(Msg::Close(c))) => {
                s.cut = Some(format!("closed {c:?}"));
                break;
            }
            Ok(Ok(Msg::Data(_, p))) => {
                let now = Instant::now();
                if p.first() == Some(&b'F') {
                    let Some(seq) = flood_seq(p) else { continue };
                    if seq >= s.flood_next {
                        s.flood_gaps += seq - s.flood_next;
                        s.flood_next = seq + 1;
                    } else {
                        s.flood_dup += 1;
                    }
                    if now <= flood_end {
                        s.flood_in_window = s.flood_in_window.max(seq + 1);
                    }
                } else if let Some((seq, ts)) = parse_stamp(p) {
                    let lat = now.saturating_duration_since(base + Duration::from_nanos(ts));
                    match have.get_mut(seq as usize) {
                        Some(h) if !*h => {
                            *h = true;
                            missing -= 1;
                            s.canary.push((seq, lat.as_micros() as u64));
                        }
                        _ => s.canary_dup += 1,
                    }
                }
            }
        }
    }
    s
}

/// What the flooder did.
#[derive(Default)]
struct Flooded {
    /// Whole frames its socket took.
    written: u64,
    /// The server ended the connection before the flood's end.
    cut: Option<String>,
}

/// Reads (and drops) what the server sends until `flood_start`, then writes flood frames
/// as fast as the socket takes them while still reading, until `flood_end`; then resets
/// the connection, which drops what its own socket still holds.
async fn flooder(ws: Ws, size: usize, flood_start: Instant, flood_end: Instant) -> Flooded {
    let mut out = Flooded::default();
    let mut stream = ws.stream;
    let mut sink = vec![0u8; 64 * 1024];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut mask = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) as u32).to_ne_bytes()
    };
    let frame_len = 2 + 4 + size as u64;
    let (mut batch, mut payload) = (Vec::with_capacity(BATCH * frame_len as usize), Vec::new());
    let (mut off, mut next_seq, mut bytes) = (0usize, 0u64, 0u64);
    {
        let (mut rd, mut wr) = stream.split();
        // Before the flood: a quiet member.
        loop {
            tokio::select! {
                _ = sleep_until(flood_start) => break,
                r = rd.read(&mut sink) => if !matches!(r, Ok(n) if n > 0) {
                    out.cut = Some(format!("before the flood: {r:?}"));
                    return out;
                },
            }
        }
        loop {
            if off == batch.len() {
                batch.clear();
                off = 0;
                for _ in 0..BATCH {
                    payload.clear();
                    flood_payload(next_seq, size, &mut payload);
                    client_frame(&payload, mask(), &mut batch);
                    next_seq += 1;
                }
            }
            // `write` (not `write_all`) so that a branch cancelled by another loses nothing.
            tokio::select! {
                _ = sleep_until(flood_end) => break,
                r = rd.read(&mut sink) => if !matches!(r, Ok(n) if n > 0) {
                    out.cut = Some(format!("during the flood: {r:?}"));
                    break;
                },
                w = wr.write(&batch[off..]) => match w {
                    Ok(n) if n > 0 => { off += n; bytes += n as u64; }
                    other => { out.cut = Some(format!("write: {other:?}")); break; }
                },
            }
        }
    }
    out.written = bytes / frame_len;
    // An abortive close: what this socket has not sent yet is dropped with it.
    let _ = stream.set_zero_linger();
    drop(stream);
    out
}

pub async fn flood(cli: &Cli, a: &FloodArgs) -> Out {
    let mut out = Out::new("flood");
    if a.size < 13 || a.size > 125 {
        out.kv("error", "--size must be 13 to 125");
        return out;
    }
    let ramp = open_many(cli, &a.path, a.members).await;
    put_ramp(&mut out, a.members, &ramp);
    let (canary, flooder_ws) = match (
        Ws::connect(cli.addr, &a.path, 1 << 40).await,
        Ws::connect(cli.addr, &a.path, 2 << 40).await,
    ) {
        (Ok(c), Ok(f)) => (c, f),
        (Err(e), _) | (_, Err(e)) => {
            out.kv("error", format!("canary or flooder: {e}"));
            return out;
        }
    };
    let interval = Duration::from_secs_f64(a.interval_ms / 1000.0);
    let base = Instant::now();
    let t0 = base + Duration::from_secs_f64(a.settle);
    let flood_start = t0 + Duration::from_secs_f64(a.quiet);
    let flood_end = flood_start + Duration::from_secs_f64(a.duration);
    let deadline = flood_end + Duration::from_secs_f64(a.grace);
    // Canary message k leaves at t0 + k·interval, for every k before the flood's end.
    let at = move |k: u64| t0 + interval * k as u32;
    let canaries = (0..).take_while(|&k| at(k) < flood_end).count() as u64;
    let quiet_n = (0..canaries).filter(|&k| at(k) < flood_start).count() as u64;
    out.kv("quiet_s", a.quiet)
        .kv("flood_s", a.duration)
        .kv("interval_ms", a.interval_ms)
        .kv("size", a.size);

    let members: Vec<_> = ramp
        .conns
        .into_iter()
        .map(|ws| tokio::spawn(member(ws, base, flood_end, deadline, canaries)))
        .collect();
    let flood_task = tokio::spawn(flooder(flooder_ws, a.size, flood_start, flood_end));
    // The canary: its own copies (it is a member too) are read and dropped in between.
    let canary_task = tokio::spawn(async move {
        let mut ws = canary;
        ws.auto_pong = false;
        let mut cut = None;
        'outer: for k in 0..canaries {
            loop {
                tokio::select! {
                    _ = sleep_until(at(k)) => break,
                    r = ws.recv() => match r {
                        Ok(Msg::Data(..)) => {}
                        Ok(Msg::Close(c)) => {
                            cut = Some(format!("canary closed {c:?}"));
                            break 'outer;
                        }
                        Err(e) => {
                            cut = Some(format!("canary: {e}"));
                            break 'outer;
                        }
                    },
                }
            }
            let ts = (Instant::now() - base).as_nanos() as u64;
            if let Err(e) = ws.send(OP_TEXT, format!("{k} {ts} canary").as_bytes()).await {
                cut = Some(format!("canary send: {e}"));
                break;
            }
        }
        // Keep reading until the deadline so that the canary is not a slow consumer.
        while cut.is_none() && matches!(timeout_at(deadline, ws.recv()).await, Ok(Ok(Msg::Data(..)))) {}
        cut
    });

    // How long this thread and the server's hub were runnable but not running, during
    // the flood: a generator that loses its core to another process reads late, which
    // shows as latency that is not the server's.
    let hub_path = cli
        .server_pid
        .and_then(|p| procfs::thread_schedstat_path(p, "wshub-hub"));
    let waits = || {
        (
            procfs::schedstat("/proc/thread-self/schedstat").map(|s| s.1),
            hub_path.as_deref().and_then(procfs::schedstat).map(|s| s.1),
        )
    };
    sleep_until(t0).await;
    let c0 = cpu_sample(cli.server_pid);
    sleep_until(flood_start).await;
    let c1 = cpu_sample(cli.server_pid);
    let w1 = waits();
    sleep_until(flood_end - Duration::from_millis(50).min(flood_end - flood_start)).await;
    let threads = cli
        .server_pid
        .and_then(|p| procfs::status_field(&p.to_string(), "Threads"));
    sleep_until(flood_end).await;
    let c2 = cpu_sample(cli.server_pid);
    let w2 = waits();

    let flooded = flood_task.await.unwrap_or_default();
    let seen: Vec<Seen> = futures_util::future::join_all(members)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let canary_cut = canary_task.await.ok().flatten();

    // Every delivery by phase, and per message the latency of its last member.
    let (mut quiet, mut flooding) = (hist(), hist());
    let mut last = vec![0u64; canaries as usize];
    let mut received = 0u64;
    for s in &seen {
        for &(seq, lat) in &s.canary {
            received += 1;
            let h: &mut Histogram<u64> = if seq < quiet_n { &mut quiet } else { &mut flooding };
            h.saturating_record(lat.max(1));
            last[seq as usize] = last[seq as usize].max(lat);
        }
    }
    // For the log: each message's last delivery (ms), in sending order, flood from '|'.
    let per_msg: Vec<String> = last
        .iter()
        .enumerate()
        .map(|(k, &l)| format!("{}{:.1}", if k as u64 == quiet_n { "| " } else { "" }, ms(l)))
        .collect();
    eprintln!(
        "loadgen: canary, last member's latency per message (ms): {}",
        per_msg.join(" ")
    );
    let (mut quiet_last, mut flood_last) = (hist(), hist());
    for (seq, &l) in last.iter().enumerate() {
        if l > 0 {
            let h = if (seq as u64) < quiet_n {
                &mut quiet_last
            } else {
                &mut flood_last
            };
            h.saturating_record(l);
        }
    }
    let expected = canaries * seen.len() as u64;
    out.kv("canary_sent", canaries)
        .kv("canary_quiet", quiet_n)
        .kv("canary_flood", canaries - quiet_n);
    out.kv("canary_expected", expected)
        .kv("canary_received", received)
        .kv("canary_lost", expected - received)
        .kv("canary_dup", seen.iter().map(|s| s.canary_dup).sum::<u64>());
    let q = |h: &Histogram<u64>, p: f64| ms(h.value_at_quantile(p));
    for (name, h) in [("quiet", &quiet), ("flood", &flooding)] {
        out.kv(&format!("{name}_n"), h.len());
        if !h.is_empty() {
            out.f(&format!("{name}_p50_ms"), q(h, 0.5), 3)
                .f(&format!("{name}_p99_ms"), q(h, 0.99), 3)
                .f(&format!("{name}_max_ms"), ms(h.max()), 3);
        }
    }
    if !quiet.is_empty() && !flooding.is_empty() {
        out.f("p50_ratio", q(&flooding, 0.5) / q(&quiet, 0.5), 2).f(
            "p99_ratio",
            q(&flooding, 0.99) / q(&quiet, 0.99),
            2,
        );
    }
    for (name, h) in [("quiet_last", &quiet_last), ("flood_last", &flood_last)] {
        if !h.is_empty() {
            out.f(&format!("{name}_p50_ms"), q(h, 0.5), 3)
                .f(&format!("{name}_p99_ms"), q(h, 0.99), 3);
        }
    }
    let broadcast = seen.iter().map(|s| s.flood_in_window).max().unwrap_or(0);
    out.kv("flood_written", flooded.written)
        .kv("flood_broadcast", broadcast)
        .f("flood_per_s", broadcast as f64 / a.duration, 0)
        .kv("flood_gaps", seen.iter().map(|s| s.flood_gaps).sum::<u64>())
        .kv(
            "flood_dup_or_reordered",
            seen.iter().map(|s| s.flood_dup).sum::<u64>(),
        )
        .kv(
            "flood_recv_min",
            seen.iter().map(|s| s.flood_next).min().unwrap_or(0),
        );
    let cut: Vec<&Seen> = seen.iter().filter(|s| s.cut.is_some()).collect();
    out.kv("members_seen", seen.len())
        .kv("members_cut", cut.len())
        .kv("flooder_cut", flooded.cut.is_some() as u8)
        .kv("canary_cut", canary_cut.is_some() as u8);
    if let Some(why) = cut.first().and_then(|s| s.cut.as_ref()) {
        out.kv("member_cut_error", why);
    }
    if let Some(why) = flooded.cut.as_ref().or(canary_cut.as_ref()) {
        out.kv("flood_error", why);
    }
    // The usual keys are the flood's window; the quiet phase's server CPU beside them.
    let (_, srv_quiet) = cpu_pct(c0, c1);
    let (lg_flood, srv_flood) = cpu_pct(c1, c2);
    if let (Some(sq), Some(sf)) = (srv_quiet, srv_flood) {
        out.f("server_cpu_quiet_pct", sq, 1).f("server_cpu_pct", sf, 1);
    }
    out.f("loadgen_cpu_pct", lg_flood, 1);
    if let Some((o, st)) = core_other_pct(c1, c2) {
        out.f("server_core_other_pct", o, 1)
            .f("server_core_steal_pct", st, 1);
    }
    if let Some(t) = threads {
        out.kv("server_threads_flood", t);
    }
    let window_ns = (c2.at - c1.at).as_nanos().max(1) as f64;
    let pct = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?) as f64 / window_ns * 100.0);
    if let Some(p) = pct(w1.0, w2.0) {
        out.f("loadgen_runq_wait_pct", p, 1);
    }
    if let Some(p) = pct(w1.1, w2.1) {
        out.f("hub_runq_wait_pct", p, 1);
    }
    out
}
