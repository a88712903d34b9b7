//! The pub/sub scenarios of issue #11 item 7, over protocol v1 on `/ws` (`issues show 11`,
//! docs/protocol.md): `pubsub` and `resume` (the resume storm); and of issue #13 item 8:
//! `pubsub` with the subscribers split across two nodes sharing one Redis
//! (`--sub-addr` twice), and `pubrate`, the acked publications/s one node pushes
//! through its engine.
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
use crate::{Cli, Out, Ramp, cpu_sample, hist, ms, open_many_at, put_cpu, put_ramp};

mod storm;
pub use storm::storm;

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
    /// When each of them arrived (us since the run's `base`), index for index.
    at: Vec<u64>,
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
            let (sent, now) = (base + Duration::from_nanos(t), Instant::now());
            self.lat
                .push(now.saturating_duration_since(sent).as_micros() as u64);
            self.at
                .push(now.saturating_duration_since(base).as_micros() as u64);
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

/// Publish `run.total` publications, round robin over the channels, publication k at
/// `start + k/rate`; read the acks in between and afterwards until all are in or the
/// deadline passes. Ack latency (send to `ok` reply) goes to `acks`.
async fn publish(run: &mut Setup, a: &PsArgs, acks: &mut Histogram<u64>) -> PubStats {
    let (ws, channels, total, rate) = (&mut run.publisher, &run.channels, run.total, a.rate);
    let (base, start, deadline) = (run.base, run.start, run.deadline);
    // The publisher reads inside select!: keep recv write-free.
    ws.auto_pong = false;
    let mut st = PubStats::default();
    let mut sent_at: Vec<Option<Instant>> = vec![None; total as usize];
    let pad = "x".repeat(a.size.saturating_sub(40));
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
    /// resume: subscribers whose resubscription said `recovered: true` / `false`,
    /// or that never got back in (connect or sub failed until the deadline).
    recovered: u64,
    not_recovered: u64,
    skipped_unrecovered: u64,
    resub_failed: u64,
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
    a: &PsArgs,
    channels: &[String],
    per_ch: &[u64],
) -> Vec<(Ws, Sub)> {
    let n = a.subs;
    let nodes = if a.sub_addrs.is_empty() {
        vec![cli.addr]
    } else {
        a.sub_addrs.clone()
    };
    // Node j gets a contiguous share, so each channel (i mod K) has subscribers on
    // every node once n / nodes >= K.
    let mut conns = Vec::with_capacity(n);
    let mut ramp_all = Ramp {
        conns: Vec::new(),
        failed: 0,
        first_err: None,
        secs: 0.0,
    };
    for (j, addr) in nodes.iter().enumerate() {
        let share = n / nodes.len() + usize::from(j < n % nodes.len());
        let ramp = open_many_at(cli, *addr, &a.path, share).await;
        ramp_all.failed += ramp.failed;
        ramp_all.secs += ramp.secs;
        if ramp_all.first_err.is_none() {
            ramp_all.first_err = ramp.first_err;
        }
        conns.extend(ramp.conns);
    }
    put_ramp(out, n, &ramp_all);
    out.kv("sub_nodes", nodes.len());
    let mut set = tokio::task::JoinSet::new();
    for (i, mut ws) in conns.into_iter().enumerate() {
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
                        at: Vec::new(),
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
        .kv("acks", p.acked)
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
        .kv("dup_or_reordered", t.dups)
        .kv("subs_with_loss", t.subs_with_loss)
        .kv("subs_disconnected", t.disconnected)
        .kv("subs_unsubscribed", t.unsubscribed);
    if let Some(e) = p.first_err.as_ref().or(t.first_err.as_ref()) {
        out.kv("error", e);
    }
}

/// What both scenarios take (flattened into each subcommand).
#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Channels; subscriber i is on channel i mod K.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Publications per second, in all (round robin over the channels).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds between the last subscription and the first publication.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds after the last publication that subscribers keep waiting for it.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Approximate size of each publication's data, in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value = "/ws")]
    path: String,
    /// The nodes the subscribers connect to, split evenly in the order given (the first
    /// share to the first node...); default `--addr`. The publisher is on `--addr`.
    #[arg(long = "sub-addr")]
    sub_addrs: Vec<std::net::SocketAddr>,
}

/// A run, set up: every subscriber subscribed, the publisher connected, the clock.
struct Setup {
    channels: Vec<String>,
    total: u64,
    subs: Vec<(Ws, Sub)>,
    publisher: Ws,
    /// The origin of the `data.t` stamps.
    base: Instant,
    /// The first publication.
    start: Instant,
    /// Publishing end + grace: every wait ends here.
    deadline: Instant,
}

/// Subscribe every subscriber and connect the publisher; `None` (the error in `out`) when
/// the publisher cannot connect.
async fn setup(cli: &Cli, out: &mut Out, a: &PsArgs) -> Option<Setup> {
    let channels = channel_names(a.channels);
    let k = channels.len();
    let total = (a.rate * a.duration).round().max(1.0) as u64;
    let per_ch: Vec<u64> = (0..k).map(|c| count_for(c, k, total)).collect();
    out.kv("channels", k).f("rate", a.rate, 0);
    out.kv("expected", (0..a.subs).map(|i| per_ch[i % k]).sum::<u64>());
    let subs = open_subs(cli, out, a, &channels, &per_ch).await;
    let publisher = match Ws::connect(cli.addr, &a.path, 0).await {
        Ok(p) => p,
        Err(e) => {
            out.kv("error", format!("publisher: {e}"));
            return None;
        }
    };
    let base = Instant::now();
    let start = base + Duration::from_secs_f64(a.settle);
    Some(Setup {
        channels,
        total,
        subs,
        publisher,
        base,
        start,
        deadline: start + Duration::from_secs_f64(a.duration + a.grace),
    })
}

/// One subscriber at the end of a run.
struct Ended {
    /// Its connection, when still open.
    ws: Option<Ws>,
    s: Sub,
    /// resume: whether its resubscription recovered, and the offsets skipped if not;
    /// `None` when it never got back in.
    resumed: Option<(bool, u64)>,
    /// Why it stopped reading before having everything: the connection ended, or the
    /// server unsubscribed it.
    why: Option<String>,
}

/// Publish on schedule (sampling the server's CPU around it), then gather the
/// subscribers, close every connection still open, and report.
async fn publish_and_report(
    cli: &Cli,
    out: &mut Out,
    a: &PsArgs,
    mut run: Setup,
    subscribers: impl std::future::Future<Output = Vec<Ended>> + Send + 'static,
) -> Totals {
    let subscribers = tokio::spawn(subscribers);
    sleep_until(run.start).await;
    let c0 = cpu_sample(cli.server_pid);
    let mut acks = hist();
    let p = publish(&mut run, a, &mut acks).await;
    let c1 = cpu_sample(cli.server_pid);
    let mut t = Totals::default();
    let mut lat = hist();
    let mut open = vec![run.publisher];
    for e in subscribers.await.unwrap_or_default() {
        t.add(&e.s);
        for &v in &e.s.lat {
            lat.saturating_record(v.max(1));
        }
        match e.resumed {
            Some((true, _)) => t.recovered += 1,
            Some((false, skipped)) => {
                t.not_recovered += 1;
                t.skipped_unrecovered += skipped;
            }
            None => t.resub_failed += 1,
        }
        match e.why {
            Some(w) if w.starts_with("unsub") => t.unsubscribed += 1,
            Some(w) => {
                t.disconnected += 1;
                t.err(w);
            }
            None => {}
        }
        open.extend(e.ws);
    }
    // Closed only once every subscriber is done (as in broadcast).
    futures_util::future::join_all(open.into_iter().map(|mut ws| async move {
        ws.auto_pong = true;
        let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
    }))
    .await;
    put_common(out, &t, &p, &lat, &acks);
    put_cpu(out, c0, c1);
    t
}

/// `pubsub`: N subscribers over K channels, R publications/s in all for D s.
pub async fn pubsub(cli: &Cli, a: &PsArgs) -> Out {
    let mut out = Out::new("pubsub");
    let Some(mut run) = setup(cli, &mut out, a).await else {
        return out;
    };
    let (base, deadline) = (run.base, run.deadline);
    let subs = std::mem::take(&mut run.subs);
    let readers = async move {
        let tasks = subs.into_iter().map(|(mut ws, mut s)| {
            tokio::spawn(async move {
                let why = read_live(&mut ws, &mut s, base, deadline).await;
                Ended {
                    ws: why.is_none().then_some(ws),
                    s,
                    resumed: Some((true, 0)), // not cut: nothing to resume (not reported)
                    why,
                }
            })
        });
        let ended = futures_util::future::join_all(tasks).await;
        ended.into_iter().filter_map(Result::ok).collect()
    };
    publish_and_report(cli, &mut out, a, run, readers).await;
    out
}

/// `resume` (the resume storm): as `pubsub`, but `cut_after` seconds into publishing every
/// subscriber drops its TCP connection at once (no Close), reconnects (at most
/// `--in-flight` handshakes at a time) and resubscribes with `since` = the last offset
/// it saw. Reports the time from the cut until each subscriber had its `sub` reply, and
/// the offsets lost or duplicated across the cut.
pub async fn resume_storm(cli: &Cli, a: &PsArgs, cut_after: f64) -> Out {
    let mut out = Out::new("resume");
    out.f("cut_after_s", cut_after, 2);
    let Some(mut run) = setup(cli, &mut out, a).await else {
        return out;
    };
    let (base, deadline) = (run.base, run.deadline);
    let cut = run.start + Duration::from_secs_f64(cut_after);
    let gate = Arc::new(Semaphore::new(cli.in_flight.max(1)));
    let recover = Arc::new(Mutex::new(hist()));
    let attempts = Arc::new(AtomicU64::new(0));
    let (addr, connect_to) = (cli.addr, Duration::from_secs_f64(cli.connect_timeout));
    let subs = std::mem::take(&mut run.subs);
    let names = run.channels.clone();
    let path = a.path.clone();
    let (recover2, attempts2) = (recover.clone(), attempts.clone());
    let readers = async move {
        let tasks = subs.into_iter().enumerate().map(|(i, (ws, s))| {
            let (gate, recover, attempts) = (gate.clone(), recover2.clone(), attempts2.clone());
            let (name, path) = (names[s.ch].clone(), path.clone());
            tokio::spawn(async move {
                let r = Resume {
                    ws,
                    s,
                    base,
                    deadline,
                };
                r.run(
                    cut, &gate, &recover, &attempts, addr, connect_to, &path, &name, i as u64,
                )
                .await
            })
        });
        let ended = futures_util::future::join_all(tasks).await;
        ended.into_iter().filter_map(Result::ok).collect::<Vec<Ended>>()
    };
    let t = publish_and_report(cli, &mut out, a, run, readers).await;
    let r = recover.lock().unwrap();
    out.kv("recovered", t.recovered)
        .kv("not_recovered", t.not_recovered)
        .kv("offsets_skipped_unrecovered", t.skipped_unrecovered)
        .kv("resub_failed", t.resub_failed)
        .kv("reconnect_attempts", attempts.load(Ordering::Relaxed));
    if !r.is_empty() {
        out.f("recover_p50_ms", ms(r.value_at_quantile(0.5)), 1)
            .f("recover_p99_ms", ms(r.value_at_quantile(0.99)), 1)
            .f("all_recovered_ms", ms(r.max()), 1);
    }
    out
}

/// One resume-storm subscriber.
struct Resume {
    ws: Ws,
    s: Sub,
    base: Instant,
    deadline: Instant,
}

impl Resume {
    /// Read live up to `cut`, drop the connection (the server sees the TCP connection end
    /// without a Close frame), reconnect and resubscribe with `since` until it works or the
    /// deadline, then read live to the end.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        cut: Instant,
        gate: &Arc<Semaphore>,
        recover: &Mutex<Histogram<u64>>,
        attempts: &AtomicU64,
        addr: std::net::SocketAddr,
        connect_to: Duration,
        path: &str,
        name: &str,
        seed: u64,
    ) -> Ended {
        let (base, deadline) = (self.base, self.deadline);
        let s = &mut self.s;
        if let Some(why) = read_live(&mut self.ws, s, base, cut).await {
            let why = Some(format!("before the cut: {why}"));
            return Ended {
                ws: None,
                s: self.s,
                resumed: None,
                why,
            };
        }
        drop(self.ws);
        let mut last_err = String::from("deadline before reconnecting");
        while Instant::now() < deadline {
            attempts.fetch_add(1, Ordering::Relaxed);
            let permit = gate.clone().acquire_owned().await.expect("semaphore open");
            let (since, epoch) = (s.next - 1, s.epoch.clone());
            let r = timeout_at(deadline, async {
                let mut ws = timeout(connect_to, Ws::connect(addr, path, seed << 20 | 7))
                    .await
                    .map_err(|_| "reconnect timed out".to_owned())?
                    .map_err(|e| format!("reconnect: {e}"))?;
                let early = |o, t| s.on_pub(o, t, base, true);
                let sub = subscribe(&mut ws, 1, name, Some((&epoch, since)), early).await?;
                Ok::<_, String>((ws, sub))
            })
            .await
            .unwrap_or_else(|_| Err("deadline while resubscribing".into()));
            drop(permit);
            let (mut ws, sub) = match r {
                Ok(x) => x,
                Err(e) => {
                    last_err = e;
                    sleep_until(Instant::now() + Duration::from_millis(50)).await;
                    continue;
                }
            };
            recover
                .lock()
                .unwrap()
                .saturating_record(cut.elapsed().as_micros().max(1) as u64);
            let resumed = if sub.recovered == Some(true) && sub.epoch == s.epoch {
                for (o, t) in sub.pubs {
                    s.on_pub(o, t, base, false);
                }
                (true, 0)
            } else {
                // The server says what was missed is gone: go on from its top. In a new
                // epoch, offsets say nothing about the old one: stop counting.
                let skipped = (sub.top + 1).saturating_sub(s.next);
                if sub.epoch != s.epoch {
                    s.end = sub.top;
                }
                s.epoch = sub.epoch;
                s.next = sub.top + 1;
                (false, skipped)
            };
            let why = read_live(&mut ws, s, base, deadline).await;
            return Ended {
                ws: why.is_none().then_some(ws),
                s: self.s,
                resumed: Some(resumed),
                why,
            };
        }
        Ended {
            ws: None,
            s: self.s,
            resumed: None,
            why: Some(last_err),
        }
    }
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
            at: Vec::new(),
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

/// What `pubrate` takes.
#[derive(clap::Args, Debug)]
pub struct RateArgs {
    /// Publisher connections, each with one `pub` in flight at a time.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Channels; publisher p publishes on channel p mod K. One subscriber per channel,
    /// on the same node, reads every publication, so the node's PUB/SUB side and its
    /// fan-out carry each one too.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Approximate size of each publication's data, in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// redis-server's PID: its CPU over the run is reported (`redis_cpu_pct`).
    #[arg(long)]
    redis_pid: Option<u32>,
    #[arg(long, default_value = "/ws")]
    path: String,
}

/// `pubrate`: P closed-loop publishers on one node for D s. Reports acked
/// publications/s, ack latency, whether the subscribers got every acked publication,
/// and CPU: the server's, per server thread (`thr_<name>_pct` for the hub and the
/// Redis engine's threads, `thr_others_pct` for the connection threads), and Redis's.
/// One engine thread runs one script at a time, so `1 / pubs_per_s` is its time per
/// publication; a thread or Redis near 100 % names the limit, none of them near it
/// names the round trip.
pub async fn pubrate(cli: &Cli, a: &RateArgs) -> Out {
    let mut out = Out::new("pubrate");
    let channels = channel_names(a.channels);
    out.kv("publishers", a.publishers).kv("channels", channels.len());
    let ramp = open_many_at(cli, cli.addr, &a.path, channels.len()).await;
    let mut subs = Vec::new();
    for (c, mut ws) in ramp.conns.into_iter().enumerate() {
        match timeout(
            Duration::from_secs(10),
            subscribe(&mut ws, 1, &channels[c], None, |_, _| {}),
        )
        .await
        {
            Ok(Ok(_)) => subs.push(ws),
            Ok(Err(e)) => {
                out.kv("error", e);
                return out;
            }
            Err(_) => {
                out.kv("error", "sub reply timed out (10s)");
                return out;
            }
        }
    }
    let pubs = open_many_at(cli, cli.addr, &a.path, a.publishers).await;
    if subs.len() < channels.len() || pubs.conns.len() < a.publishers {
        out.kv(
            "error",
            pubs.first_err.unwrap_or_else(|| "connections failed".into()),
        );
        return out;
    }
    let received = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let deadline = end + Duration::from_secs(5);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut ws| {
            let (received, target) = (received.clone(), target.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline
                    && received.load(Ordering::Relaxed) < target.load(Ordering::Relaxed)
                {
                    match timeout(Duration::from_millis(100), read_frame(&mut ws)).await {
                        Ok(Ok(Frame::Pub { .. })) => {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(Frame::Close(_)) | Err(_)) => break,
                        _ => {}
                    }
                }
                let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
            })
        })
        .collect();
    let pid = cli.server_pid;
    let c0 = cpu_sample(pid);
    let th0 = pid.map(crate::procfs::thread_ticks).unwrap_or_default();
    let r0 = a.redis_pid.and_then(crate::procfs::cpu_ticks);
    let pad = "x".repeat(a.size.saturating_sub(40));
    let tasks: Vec<_> = pubs
        .conns
        .into_iter()
        .enumerate()
        .map(|(p, mut ws)| {
            let ch = channels[p % channels.len()].clone();
            let pad = pad.clone();
            tokio::spawn(async move {
                let mut lat = hist();
                let (mut ok, mut err, mut first_err) = (0u64, 0u64, None::<String>);
                let mut id = 0u64;
                'run: while Instant::now() < end {
                    id += 1;
                    let cmd = json!({"id": id, "op": "pub", "ch": ch, "data": {"k": id, "p": pad}});
                    let sent = Instant::now();
                    if let Err(e) = ws.send(OP_TEXT, cmd.to_string().as_bytes()).await {
                        first_err.get_or_insert(format!("send: {e}"));
                        break;
                    }
                    loop {
                        match timeout_at(deadline, read_frame(&mut ws)).await {
                            Ok(Ok(Frame::Reply {
                                id: rid,
                                ok: o,
                                err: e,
                            })) if rid == id => {
                                if o.is_some() {
                                    ok += 1;
                                    lat.saturating_record(sent.elapsed().as_micros().max(1) as u64);
                                } else {
                                    err += 1;
                                    first_err
                                        .get_or_insert(format!("pub refused: {}", e.unwrap_or(Value::Null)));
                                }
                                break;
                            }
                            Ok(Ok(Frame::Close(c))) => {
                                first_err.get_or_insert(format!("closed {c:?}"));
                                break 'run;
                            }
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                first_err.get_or_insert(e.to_string());
                                break 'run;
                            }
                            Err(_) => break 'run,
                        }
                    }
                }
                // Closed after the CPU sample: a connection's threads that end take their
                // CPU time out of /proc/PID/task with them.
                (ok, err, first_err, lat, ws)
            })
        })
        .collect();
    let (mut acked, mut errors, mut first_err, mut acks) = (0u64, 0u64, None, hist());
    let mut open = Vec::new();
    for t in futures_util::future::join_all(tasks).await.into_iter().flatten() {
        acked += t.0;
        errors += t.1;
        if first_err.is_none() {
            first_err = t.2;
        }
        let _ = acks.add(&t.3);
        open.push(t.4);
    }
    let c1 = cpu_sample(pid);
    let th1 = pid.map(crate::procfs::thread_ticks).unwrap_or_default();
    let r1 = a.redis_pid.and_then(crate::procfs::cpu_ticks);
    futures_util::future::join_all(open.into_iter().map(|mut ws| async move {
        let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
    }))
    .await;
    let secs = start.elapsed().as_secs_f64();
    target.store(acked, Ordering::Relaxed);
    futures_util::future::join_all(readers).await;
    let delivered = received.load(Ordering::Relaxed);
    out.kv("acked", acked)
        .kv("pub_errors", errors)
        .f("secs", secs, 2)
        .f("pubs_per_s", acked as f64 / secs, 0);
    if !acks.is_empty() {
        out.f("ack_p50_ms", ms(acks.value_at_quantile(0.5)), 3).f(
            "ack_p99_ms",
            ms(acks.value_at_quantile(0.99)),
            3,
        );
    }
    out.kv("delivered", delivered)
        .kv("lost", acked.saturating_sub(delivered));
    put_cpu(&mut out, c0, c1);
    let pct = |ticks: u64| ticks as f64 / crate::procfs::clk_tck() / secs * 100.0;
    let mut others = 0u64;
    for (name, t1) in &th1 {
        let d = t1.saturating_sub(th0.get(name).copied().unwrap_or(0));
        if name.starts_with("wshub-redis") || name == "wshub-hub" {
            out.f(
                &format!("thr_{}_pct", name.trim_start_matches("wshub-").replace('-', "_")),
                pct(d),
                1,
            );
        } else {
            others += d;
        }
    }
    if pid.is_some() {
        out.f("thr_others_pct", pct(others), 1);
    }
    if let (Some(r0), Some(r1)) = (r0, r1) {
        out.f("redis_cpu_pct", pct(r1.saturating_sub(r0)), 1);
    }
    if let Some(e) = first_err {
        out.kv("error", e);
    }
    out
}
