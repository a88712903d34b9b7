//! The pub/sub scenarios of issue #11 item 7, over protocol v1 on `/ws` (`issues show 11`,
//! docs/protocol.md): `pubsub` and `resume-storm`.
//!
//! Both open N subscribers, each subscribed to one of K channels (subscriber i to channel
//! i mod K; the names carry this process's id, so a server that kept an earlier run's
//! channels does not mix them in), then one publisher connection publishes R times a
//! second in all, round robin over the channels, each `pub` carrying its send time in
//! `data.t` (nanoseconds since the run's start, same process, same monotonic clock).
//!
//! Every subscriber checks the guarantee by offsets: starting from the `sub` reply's
//! top, each publication it sees (in a `pubs` array or as a push) must be exactly one
//! more than the last. A jump is counted as lost offsets, a repeat or a step back as a
//! duplicate; what has not arrived by the deadline (publishing end + grace) is
//! `undelivered`. Each channel receives a known number of publications (k mod K), so
//! each subscriber knows the last offset to wait for.
//!
//! Every wait is bounded by the run's deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::ws::{Msg, OP_TEXT, Ws};
use crate::{Cli, Out, cpu_sample, hist, ms, open_many, put_cpu, put_ramp};

/// One server frame, as far as these scenarios care.
enum Frame {
    /// `{"push":"pub",..}`: its offset and the send time stamped in `data.t`.
    Pub { offset: u64, t: Option<u64> },
    /// `{"push":"unsub",..}`: the server ended the subscription.
    Unsub(String),
    /// A reply to a command: `ok` or `err`.
    Reply {
        id: u64,
        ok: Option<Value>,
        err: Option<Value>,
    },
    /// Anything else (an id-less error, an unknown push): kept for the report.
    Other(String),
    /// A Close frame.
    Close(Option<u16>),
}

fn classify(p: &[u8]) -> Frame {
    let Ok(Value::Object(mut v)) = serde_json::from_slice::<Value>(p) else {
        return Frame::Other(format!("not a JSON object: {}", String::from_utf8_lossy(p)));
    };
    match v.get("push").and_then(Value::as_str) {
        Some("pub") => {
            return match v.get("offset").and_then(Value::as_u64) {
                Some(offset) => Frame::Pub {
                    offset,
                    t: v.get("data").and_then(|d| d.get("t")).and_then(Value::as_u64),
                },
                None => Frame::Other("pub push without offset".into()),
            };
        }
        Some("unsub") => return Frame::Unsub(Value::Object(v).to_string()),
        _ => {}
    }
    match v.get("id").and_then(Value::as_u64) {
        Some(id) => Frame::Reply {
            id,
            ok: v.remove("ok"),
            err: v.remove("err"),
        },
        None => Frame::Other(Value::Object(v).to_string()),
    }
}

async fn read_frame(ws: &mut Ws) -> std::io::Result<Frame> {
    Ok(match ws.recv().await? {
        Msg::Data(_, p) => classify(p),
        Msg::Close(c) => Frame::Close(c),
    })
}

/// One subscriber's view of its channel: where it is, what it has seen.
struct Sub {
    ch: usize,
    epoch: String,
    /// The next offset it expects.
    next: u64,
    /// The last offset it waits for (the channel's top when publishing ends).
    end: u64,
    received: u64,
    gaps: u64,
    dups: u64,
    /// Delivery latencies of live pushes (us).
    lat: Vec<u64>,
}

impl Sub {
    fn on_pub(&mut self, offset: u64, t: Option<u64>, base: Instant, live: bool) {
        if offset < self.next {
            self.dups += 1;
            return;
        }
        self.gaps += offset - self.next;
        self.next = offset + 1;
        self.received += 1;
        if let (true, Some(t)) = (live, t) {
            let sent = base + Duration::from_nanos(t);
            self.lat
                .push(Instant::now().saturating_duration_since(sent).as_micros() as u64);
        }
    }
    fn done(&self) -> bool {
        self.next > self.end
    }
}

/// How one subscription request went.
struct Subscribed {
    epoch: String,
    top: u64,
    recovered: Option<bool>,
    pubs: Vec<(u64, Option<u64>)>,
}

/// Send `sub` (with `since` when given) and read until its reply. A push that arrives
/// before the reply is handed to `early` (the protocol says none should).
async fn subscribe(
    ws: &mut Ws,
    id: u64,
    ch: &str,
    since: Option<(&str, u64)>,
    mut early: impl FnMut(u64, Option<u64>),
) -> Result<Subscribed, String> {
    let mut cmd = json!({"id": id, "op": "sub", "ch": ch});
    if let Some((epoch, offset)) = since {
        cmd["since"] = json!({"epoch": epoch, "offset": offset});
    }
    ws.send(OP_TEXT, cmd.to_string().as_bytes())
        .await
        .map_err(|e| format!("sub send: {e}"))?;
    loop {
        match read_frame(ws).await.map_err(|e| format!("sub reply: {e}"))? {
            Frame::Reply {
                id: rid,
                ok: Some(ok),
                ..
            } if rid == id => {
                let epoch = ok.get("epoch").and_then(Value::as_str).unwrap_or("").to_owned();
                let top = ok
                    .get("offset")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| format!("sub reply without offset: {ok}"))?;
                let pubs = ok
                    .get("pubs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| {
                                let o = p.get("offset")?.as_u64()?;
                                Some((o, p.get("data").and_then(|d| d.get("t")).and_then(Value::as_u64)))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let recovered = ok.get("recovered").and_then(Value::as_bool);
                return Ok(Subscribed {
                    epoch,
                    top,
                    recovered,
                    pubs,
                });
            }
            Frame::Reply { id: rid, err, .. } if rid == id => {
                return Err(format!("sub refused: {}", err.unwrap_or(Value::Null)));
            }
            Frame::Pub { offset, t } => early(offset, t),
            Frame::Close(c) => return Err(format!("closed {c:?} before the sub reply")),
            Frame::Unsub(s) | Frame::Other(s) => return Err(format!("before the sub reply: {s}")),
            Frame::Reply { .. } => {}
        }
    }
}

/// The channel names of one run.
fn channel_names(k: usize) -> Vec<String> {
    let pid = std::process::id();
    (0..k.max(1)).map(|c| format!("bench.{pid}.{c}")).collect()
}

/// Publications channel `c` gets when `total` go round robin over `k` channels.
fn count_for(c: usize, k: usize, total: u64) -> u64 {
    let (k, c) = (k as u64, c as u64);
    total / k + u64::from(c < total % k)
}

/// What the publisher saw.
#[derive(Default)]
struct PubStats {
    sent: u64,
    acked: u64,
    errors: u64,
    first_err: Option<String>,
}

/// Publish `total` publications, round robin over `channels`, publication k at
/// `start + k/rate`; read the acks in between and afterwards until all are in or the
/// deadline passes. Ack latency (send to `ok` reply) goes to `acks`.
#[allow(clippy::too_many_arguments)]
async fn publish(
    ws: &mut Ws,
    channels: &[String],
    rate: f64,
    total: u64,
    size: usize,
    base: Instant,
    start: Instant,
    deadline: Instant,
    acks: &mut Histogram<u64>,
) -> PubStats {
    // The publisher reads inside select!: keep recv write-free.
    ws.auto_pong = false;
    let mut st = PubStats::default();
    let mut sent_at: Vec<Option<Instant>> = vec![None; total as usize];
    let pad = "x".repeat(size.saturating_sub(40));
    let mut on_frame =
        |f: std::io::Result<Frame>, st: &mut PubStats, sent_at: &mut [Option<Instant>]| -> bool {
            match f {
                Ok(Frame::Reply { id, ok, err }) => {
                    let Some(at) = id
                        .checked_sub(1)
                        .and_then(|k| sent_at.get_mut(k as usize))
                        .and_then(Option::take)
                    else {
                        return true;
                    };
                    if ok.is_some() {
                        st.acked += 1;
                        acks.saturating_record(at.elapsed().as_micros().max(1) as u64);
                    } else {
                        st.errors += 1;
                        st.first_err
                            .get_or_insert_with(|| format!("pub refused: {}", err.unwrap_or(Value::Null)));
                    }
                    true
                }
                Ok(Frame::Close(c)) => {
                    st.first_err
                        .get_or_insert_with(|| format!("publisher closed by server {c:?}"));
                    false
                }
                Ok(_) => true,
                Err(e) => {
                    st.first_err.get_or_insert_with(|| format!("publisher: {e}"));
                    false
                }
            }
        };
    'outer: for k in 0..total {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        loop {
            tokio::select! {
                _ = sleep_until(at) => break,
                f = read_frame(ws) => if !on_frame(f, &mut st, &mut sent_at) { break 'outer },
            }
        }
        let ch = &channels[k as usize % channels.len()];
        let t = (Instant::now() - base).as_nanos() as u64;
        let cmd = json!({"id": k + 1, "op": "pub", "ch": ch, "data": {"t": t, "k": k, "p": pad}});
        sent_at[k as usize] = Some(Instant::now());
        if let Err(e) = ws.send(OP_TEXT, cmd.to_string().as_bytes()).await {
            st.first_err.get_or_insert_with(|| format!("publisher send: {e}"));
            break;
        }
        st.sent += 1;
    }
    while st.acked + st.errors < st.sent {
        match timeout_at(deadline, read_frame(ws)).await {
            Ok(f) => {
                if !on_frame(f, &mut st, &mut sent_at) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    st
}

/// The totals over all subscribers.
#[derive(Default)]
struct Totals {
    received: u64,
    gaps: u64,
    undelivered: u64,
    dups: u64,
    disconnected: u64,
    unsubscribed: u64,
    subs_with_loss: u64,
    /// resume-storm: subscribers whose resubscription said `recovered: true` / `false`,
    /// or that never got back in (connect or sub failed until the deadline).
    recovered: u64,
    not_recovered: u64,
    skipped_unrecovered: u64,
    never_back: u64,
    reconnect_attempts: u64,
    first_err: Option<String>,
}

impl Totals {
    fn add(&mut self, s: &Sub) {
        let undelivered = (s.end + 1).saturating_sub(s.next);
        self.received += s.received;
        self.gaps += s.gaps;
        self.undelivered += undelivered;
        self.dups += s.dups;
        self.subs_with_loss += u64::from(s.gaps + undelivered > 0);
    }
    fn err(&mut self, e: String) {
        self.first_err.get_or_insert(e);
    }
}

/// Open the subscribers and subscribe each to its channel. Returns the connections
/// with their state, and the Out so far.
async fn open_subs(
    cli: &Cli,
    out: &mut Out,
    n: usize,
    channels: &[String],
    path: &str,
    per_ch: &[u64],
) -> Vec<(Ws, Sub)> {
    let ramp = open_many(cli, path, n).await;
    put_ramp(out, n, &ramp);
    let mut set = tokio::task::JoinSet::new();
    for (i, mut ws) in ramp.conns.into_iter().enumerate() {
        let c = i % channels.len();
        let (name, count) = (channels[c].clone(), per_ch[c]);
        set.spawn(async move {
            let r = timeout(
                Duration::from_secs(10),
                subscribe(&mut ws, 1, &name, None, |_, _| {}),
            )
            .await;
            match r {
                Ok(Ok(s)) => Ok((
                    ws,
                    Sub {
                        ch: c,
                        epoch: s.epoch,
                        next: s.top + 1,
                        end: s.top + count,
                        received: 0,
                        gaps: 0,
                        dups: 0,
                        lat: Vec::new(),
                    },
                )),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("sub reply timed out (10s)".to_owned()),
            }
        });
    }
    let mut subs = Vec::with_capacity(n);
    let (mut failed, mut first) = (0u64, None);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(s)) => subs.push(s),
            Ok(Err(e)) => {
                failed += 1;
                first.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert(e.to_string());
            }
        }
    }
    out.kv("subscribed", subs.len()).kv("sub_failed", failed);
    if let Some(e) = first {
        out.kv("sub_error", e);
    }
    subs
}

/// Read live pushes into `s` until it has everything or `until` passes. Returns why it
/// stopped: `None` (done or deadline) or the end of the connection.
async fn read_live(ws: &mut Ws, s: &mut Sub, base: Instant, until: Instant) -> Option<String> {
    while !s.done() {
        match timeout_at(until, read_frame(ws)).await {
            Err(_) => return None,
            Ok(Ok(Frame::Pub { offset, t })) => s.on_pub(offset, t, base, true),
            Ok(Ok(Frame::Unsub(u))) => return Some(format!("unsub: {u}")),
            Ok(Ok(Frame::Close(c))) => return Some(format!("closed {c:?}")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Some(e.to_string()),
        }
    }
    None
}

fn put_common(out: &mut Out, t: &Totals, p: &PubStats, lat: &Histogram<u64>, acks: &Histogram<u64>) {
    out.kv("sent", p.sent)
        .kv("acked", p.acked)
        .kv("pub_errors", p.errors);
    if !acks.is_empty() {
        out.f("ack_p50_ms", ms(acks.value_at_quantile(0.5)), 3).f(
            "ack_p99_ms",
            ms(acks.value_at_quantile(0.99)),
            3,
        );
    }
    out.kv("deliveries", t.received);
    if !lat.is_empty() {
        out.f("p50_ms", ms(lat.value_at_quantile(0.5)), 3)
            .f("p99_ms", ms(lat.value_at_quantile(0.99)), 3)
            .f("max_ms", ms(lat.max()), 3);
    }
    // lost = offsets skipped + offsets never received by the deadline.
    out.kv("lost", t.gaps + t.undelivered)
        .kv("lost_gaps", t.gaps)
        .kv("undelivered", t.undelivered)
        .kv("dup_offsets", t.dups)
        .kv("subs_with_loss", t.subs_with_loss)
        .kv("subs_disconnected", t.disconnected)
        .kv("subs_unsubscribed", t.unsubscribed);
    if let Some(e) = p.first_err.as_ref().or(t.first_err.as_ref()) {
        out.kv("error", e);
    }
}

/// `pubsub`: N subscribers over K channels, R publications/s in all for D s.
#[allow(clippy::too_many_arguments)]
pub async fn pubsub(
    cli: &Cli,
    n: usize,
    k: usize,
    rate: f64,
    duration: f64,
    settle: f64,
    grace: f64,
    size: usize,
    path: &str,
) -> Out {
    let mut out = Out::new("pubsub");
    let channels = channel_names(k);
    let k = channels.len();
    let total = (rate * duration).round().max(1.0) as u64;
    let per_ch: Vec<u64> = (0..k).map(|c| count_for(c, k, total)).collect();
    out.kv("channels", k).f("rate", rate, 0);
    let subs = open_subs(cli, &mut out, n, &channels, path, &per_ch).await;
    let mut publisher = match Ws::connect(cli.addr, path, 0).await {
        Ok(p) => p,
        Err(e) => {
            out.kv("error", format!("publisher: {e}"));
            return out;
        }
    };
    let base = Instant::now();
    let start = base + Duration::from_secs_f64(settle);
    let deadline = start + Duration::from_secs_f64(duration + grace);
    let mut tasks = Vec::with_capacity(subs.len());
    for (mut ws, mut s) in subs {
        tasks.push(tokio::spawn(async move {
            let why = read_live(&mut ws, &mut s, base, deadline).await;
            (ws, s, why)
        }));
    }
    sleep_until(start).await;
    let c0 = cpu_sample(cli.server_pid);
    let mut acks = hist();
    let p = publish(
        &mut publisher,
        &channels,
        rate,
        total,
        size,
        base,
        start,
        deadline,
        &mut acks,
    )
    .await;
    let c1 = cpu_sample(cli.server_pid);
    let mut t = Totals::default();
    let mut lat = hist();
    let mut open = Vec::new();
    for r in futures_util::future::join_all(tasks).await {
        let Ok((ws, s, why)) = r else { continue };
        t.add(&s);
        for &v in &s.lat {
            lat.saturating_record(v.max(1));
        }
        match why {
            Some(w) if w.starts_with("unsub") => t.unsubscribed += 1,
            Some(w) => {
                t.disconnected += 1;
                t.err(w);
            }
            None => open.push(ws),
        }
    }
    // Closed only once every subscriber is done (as in broadcast).
    futures_util::future::join_all(open.into_iter().chain(std::iter::once(publisher)).map(
        |mut ws| async move {
            ws.auto_pong = true;
            let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
        },
    ))
    .await;
    put_common(&mut out, &t, &p, &lat, &acks);
    out.kv("expected", (0..n).map(|i| per_ch[i % k]).sum::<u64>());
    put_cpu(&mut out, c0, c1);
    out
}

/// `resume-storm`: as `pubsub`, but `cut_after` seconds into publishing every
/// subscriber drops its TCP connection at once (no Close), reconnects (at most
/// `--in-flight` handshakes at a time) and resubscribes with `since` = the last offset
/// it saw. Reports the time from the cut until each subscriber had its `sub` reply, and
/// the offsets lost or duplicated across the cut.
#[allow(clippy::too_many_arguments)]
pub async fn resume_storm(
    cli: &Cli,
    n: usize,
    k: usize,
    rate: f64,
    duration: f64,
    cut_after: f64,
    settle: f64,
    grace: f64,
    size: usize,
    path: &str,
) -> Out {
    let mut out = Out::new("resume-storm");
    let channels = channel_names(k);
    let k = channels.len();
    let total = (rate * duration).round().max(1.0) as u64;
    let per_ch: Vec<u64> = (0..k).map(|c| count_for(c, k, total)).collect();
    out.kv("channels", k)
        .f("rate", rate, 0)
        .f("cut_after_s", cut_after, 2);
    let subs = open_subs(cli, &mut out, n, &channels, path, &per_ch).await;
    let mut publisher = match Ws::connect(cli.addr, path, 0).await {
        Ok(p) => p,
        Err(e) => {
            out.kv("error", format!("publisher: {e}"));
            return out;
        }
    };
    let base = Instant::now();
    let start = base + Duration::from_secs_f64(settle);
    let cut = start + Duration::from_secs_f64(cut_after);
    let deadline = start + Duration::from_secs_f64(duration + grace);
    let gate = Arc::new(Semaphore::new(cli.in_flight.max(1)));
    let recover = Arc::new(Mutex::new(hist()));
    let attempts = Arc::new(AtomicU64::new(0));
    let (addr, connect_to) = (cli.addr, Duration::from_secs_f64(cli.connect_timeout));
    let mut tasks = Vec::with_capacity(subs.len());
    for (i, (mut ws, mut s)) in subs.into_iter().enumerate() {
        let (gate, recover, attempts, name) = (
            gate.clone(),
            recover.clone(),
            attempts.clone(),
            channels[s.ch].clone(),
        );
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            // Read live up to the cut, then drop the connection: the server sees the TCP
            // connection end without a Close frame.
            if let Some(why) = read_live(&mut ws, &mut s, base, cut).await {
                return (None, s, Err(format!("before the cut: {why}")));
            }
            drop(ws);
            // Reconnect and resubscribe with since, until it works or the deadline.
            let mut last_err = String::from("deadline before reconnecting");
            while Instant::now() < deadline {
                attempts.fetch_add(1, Ordering::Relaxed);
                let permit = gate.clone().acquire_owned().await.expect("semaphore open");
                let r = timeout_at(deadline, async {
                    let mut ws = timeout(connect_to, Ws::connect(addr, &path, (i as u64) << 20 | 7))
                        .await
                        .map_err(|_| "reconnect timed out".to_owned())?
                        .map_err(|e| format!("reconnect: {e}"))?;
                    let since = s.next - 1;
                    let epoch = s.epoch.clone();
                    let sub = subscribe(&mut ws, 1, &name, Some((&epoch, since)), |o, t| {
                        s.on_pub(o, t, base, true)
                    })
                    .await?;
                    Ok::<_, String>((ws, sub))
                })
                .await
                .unwrap_or_else(|_| Err("deadline while resubscribing".into()));
                drop(permit);
                match r {
                    Ok((ws, sub)) => {
                        recover
                            .lock()
                            .unwrap()
                            .saturating_record(cut.elapsed().as_micros().max(1) as u64);
                        let recovered = sub.recovered == Some(true) && sub.epoch == s.epoch;
                        if recovered {
                            for (o, t) in sub.pubs {
                                s.on_pub(o, t, base, false);
                            }
                        } else {
                            // The server says what was missed is gone: go on from its top.
                            // In a new epoch, offsets say nothing about the old one: stop
                            // counting for this subscriber.
                            let skipped = (sub.top + 1).saturating_sub(s.next);
                            if sub.epoch != s.epoch {
                                s.end = sub.top;
                            }
                            s.epoch = sub.epoch;
                            s.next = sub.top + 1;
                            return (Some((ws, false, skipped)), s, Ok(()));
                        }
                        return (Some((ws, true, 0)), s, Ok(()));
                    }
                    Err(e) => {
                        last_err = e;
                        sleep_until(Instant::now() + Duration::from_millis(50)).await;
                    }
                }
            }
            (None, s, Err(last_err))
        }));
    }
    sleep_until(start).await;
    let c0 = cpu_sample(cli.server_pid);
    // The subscribers' second half (after resubscribing) runs inside these tasks' results:
    // read live until done, concurrently with the publisher.
    let readers = tokio::spawn(async move {
        let mut results = Vec::new();
        let mut live = tokio::task::JoinSet::new();
        for r in futures_util::future::join_all(tasks).await {
            let Ok((conn, mut s, res)) = r else { continue };
            match (conn, res) {
                (Some((mut ws, recovered, skipped)), Ok(())) => {
                    live.spawn(async move {
                        let why = read_live(&mut ws, &mut s, base, deadline).await;
                        (Some(ws), s, Some((recovered, skipped)), why)
                    });
                }
                (_, Err(e)) => results.push((None, s, None, Some(e))),
                (None, Ok(())) => results.push((None, s, None, None)),
            }
        }
        while let Some(r) = live.join_next().await {
            if let Ok(x) = r {
                results.push(x);
            }
        }
        results
    });
    let mut acks = hist();
    let p = publish(
        &mut publisher,
        &channels,
        rate,
        total,
        size,
        base,
        start,
        deadline,
        &mut acks,
    )
    .await;
    let c1 = cpu_sample(cli.server_pid);
    let results = readers.await.unwrap_or_default();
    let mut t = Totals::default();
    let mut lat = hist();
    let mut open = Vec::new();
    for (ws, s, rec, why) in results {
        t.add(&s);
        for &v in &s.lat {
            lat.saturating_record(v.max(1));
        }
        match rec {
            Some((true, _)) => t.recovered += 1,
            Some((false, skipped)) => {
                t.not_recovered += 1;
                t.skipped_unrecovered += skipped;
            }
            None => t.never_back += 1,
        }
        match why {
            Some(w) if w.starts_with("unsub") => t.unsubscribed += 1,
            Some(w) => {
                t.disconnected += 1;
                t.err(w);
            }
            None => {}
        }
        if let Some(ws) = ws {
            open.push(ws);
        }
    }
    t.reconnect_attempts = attempts.load(Ordering::Relaxed);
    futures_util::future::join_all(open.into_iter().chain(std::iter::once(publisher)).map(
        |mut ws| async move {
            ws.auto_pong = true;
            let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
        },
    ))
    .await;
    put_common(&mut out, &t, &p, &lat, &acks);
    let r = recover.lock().unwrap();
    out.kv("recovered", t.recovered)
        .kv("not_recovered", t.not_recovered)
        .kv("offsets_skipped_unrecovered", t.skipped_unrecovered)
        .kv("never_back", t.never_back)
        .kv("reconnect_attempts", t.reconnect_attempts);
    if !r.is_empty() {
        out.f("recover_p50_ms", ms(r.value_at_quantile(0.5)), 1)
            .f("recover_p99_ms", ms(r.value_at_quantile(0.99)), 1)
            .f("recover_all_s", r.max() as f64 / 1e6, 3);
    }
    put_cpu(&mut out, c0, c1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_counts_add_up_to_the_total() {
        for (k, total) in [(10, 1000), (3, 10), (7, 1), (1, 5)] {
            let sum: u64 = (0..k).map(|c| count_for(c, k, total)).sum();
            assert_eq!(sum, total, "k={k} total={total}");
        }
        assert_eq!(count_for(0, 3, 10), 4);
        assert_eq!(count_for(2, 3, 10), 3);
    }

    #[test]
    fn offsets_that_jump_count_as_lost_and_repeats_as_duplicates() {
        let base = Instant::now();
        let mut s = Sub {
            ch: 0,
            epoch: "e".into(),
            next: 11,
            end: 15,
            received: 0,
            gaps: 0,
            dups: 0,
            lat: Vec::new(),
        };
        for o in [11, 12, 14, 14, 13, 15] {
            s.on_pub(o, None, base, false);
        }
        assert_eq!((s.received, s.gaps, s.dups), (4, 1, 2));
        assert!(s.done());
    }

    #[test]
    fn frames_are_told_apart() {
        assert!(matches!(
            classify(br#"{"push":"pub","ch":"a","offset":7,"data":{"t":5}}"#),
            Frame::Pub {
                offset: 7,
                t: Some(5)
            }
        ));
        assert!(matches!(
            classify(br#"{"push":"unsub","ch":"a","code":1}"#),
            Frame::Unsub(_)
        ));
        assert!(matches!(
            classify(br#"{"id":3,"ok":{"epoch":"e","offset":0}}"#),
            Frame::Reply {
                id: 3,
                ok: Some(_),
                err: None
            }
        ));
        assert!(matches!(
            classify(br#"{"err":{"code":1,"msg":"x"}}"#),
            Frame::Other(_)
        ));
        assert!(matches!(classify(b"nope"), Frame::Other(_)));
    }
}
