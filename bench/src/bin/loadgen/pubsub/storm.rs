//! `storm`: the join/leave storm of issue #12. As `pubsub` (calm subscribers over K
//! channels, one publisher at R publications/s, delivery latency by offsets), plus W
//! watchers of one more channel, each subscribed with `"joins": true`. `storm_after`
//! seconds into publishing every watcher drops its TCP connection at once (no Close) and
//! all reconnect and resubscribe with joins: W leaves and W joins, each pushed to every
//! other watcher (about 2·W² pushes). The question is whether that stalls publications on
//! the other channels: the calm deliveries' p99 is reported before the storm and inside
//! it (from the cut until the last watcher has its `sub` reply, plus one second).
//!
//! Watchers read everything they are sent (a watcher that stops reading is a slow
//! consumer, which is another scenario). Every wait is bounded by the run's deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};

use super::{Ended, PsArgs, publish_and_report, read_live, setup};
use crate::ws::{Msg, OP_TEXT, Ws};
use crate::{Cli, Out, hist, ms, open_many};

/// Calm deliveries before the cut, inside the storm, and the storm's length (s).
type Split = (Histogram<u64>, Histogram<u64>, f64);

/// What the watchers saw, in all.
struct Watch {
    joins: AtomicU64,
    leaves: AtomicU64,
    /// Watchers back in (their resubscription answered) / never back in.
    back: AtomicU64,
    failed: AtomicU64,
    /// Watchers whose connection the server ended (a Close, or a reset) after they were
    /// back: cut as slow consumers during the storm, for instance.
    ended_by_server: AtomicU64,
    first_err: Mutex<Option<String>>,
    /// Watchers whose first subscription was answered.
    subscribed: AtomicU64,
    /// Cut to `sub` reply, per watcher (us).
    back_after: Mutex<Histogram<u64>>,
}

impl Watch {
    fn err(&self, e: String) {
        self.first_err.lock().unwrap().get_or_insert(e);
    }
}

/// `sub` with joins, reading (and counting) pushes until its reply.
async fn sub_with_joins(ws: &mut Ws, ch: &str, w: &Watch) -> Result<(), String> {
    let cmd = json!({"id": 1, "op": "sub", "ch": ch, "joins": true});
    ws.send(OP_TEXT, cmd.to_string().as_bytes())
        .await
        .map_err(|e| format!("sub send: {e}"))?;
    loop {
        match ws.recv().await.map_err(|e| format!("sub reply: {e}"))? {
            Msg::Close(c) => return Err(format!("closed {c:?} before the sub reply")),
            Msg::Data(_, p) => {
                let v: Value = serde_json::from_slice(p).map_err(|e| format!("not JSON: {e}"))?;
                if count_push(&v, w) {
                    continue;
                }
                if v.get("id").and_then(Value::as_u64) == Some(1) {
                    return match v.get("err") {
                        None => Ok(()),
                        Some(e) => Err(format!("sub refused: {e}")),
                    };
                }
            }
        }
    }
}

/// Counts a join or leave push; true when `v` was one.
fn count_push(v: &Value, w: &Watch) -> bool {
    match v.get("push").and_then(Value::as_str) {
        Some("join") => w.joins.fetch_add(1, Ordering::Relaxed),
        Some("leave") => w.leaves.fetch_add(1, Ordering::Relaxed),
        _ => return false,
    };
    true
}

/// Reads and counts until `until`; `Some(why)` when the connection ended first.
async fn watch_until(ws: &mut Ws, until: Instant, w: &Watch) -> Option<String> {
    loop {
        match timeout_at(until, ws.recv()).await {
            Err(_) => return None,
            Ok(Err(e)) => return Some(e.to_string()),
            Ok(Ok(Msg::Close(c))) => return Some(format!("closed {c:?}")),
            Ok(Ok(Msg::Data(_, p))) => {
                if let Ok(v) = serde_json::from_slice::<Value>(p) {
                    count_push(&v, w);
                }
            }
        }
    }
}

/// One watcher: subscribe with joins and read until told when the cut is, read up to
/// the cut, drop the connection, reconnect and resubscribe (at most `--in-flight`
/// handshakes at once), read to the deadline.
#[allow(clippy::too_many_arguments)]
async fn watcher(
    mut ws: Ws,
    mut cut_at: watch::Receiver<Option<(Instant, Instant)>>,
    gate: Arc<Semaphore>,
    w: Arc<Watch>,
    cli_addr: std::net::SocketAddr,
    connect_to: Duration,
    path: String,
    ch: String,
    seed: u64,
) -> Option<Ws> {
    match timeout(Duration::from_secs(30), sub_with_joins(&mut ws, &ch, &w)).await {
        Ok(Ok(())) => w.subscribed.fetch_add(1, Ordering::Relaxed),
        Ok(Err(e)) => {
            w.err(e);
            return None;
        }
        Err(_) => {
            w.err("watcher sub timed out (30s)".into());
            return None;
        }
    };
    // Until the run is set up: keep reading (the other watchers' joins).
    let (cut, deadline) = loop {
        if let Some(t) = *cut_at.borrow_and_update() {
            break t;
        }
        tokio::select! {
            changed = cut_at.changed() => if changed.is_err() { return None },
            m = ws.recv() => match m {
                Ok(Msg::Data(_, p)) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(p) {
                        count_push(&v, &w);
                    }
                }
                Ok(Msg::Close(c)) => { w.err(format!("watcher closed {c:?} before the cut")); return None }
                Err(e) => { w.err(format!("watcher before the cut: {e}")); return None }
            },
        }
    };
    if let Some(why) = watch_until(&mut ws, cut, &w).await {
        w.err(format!("watcher before the cut: {why}"));
    }
    drop(ws);
    while Instant::now() < deadline {
        let permit = gate.clone().acquire_owned().await.expect("semaphore open");
        let r = timeout_at(deadline, async {
            let mut ws = timeout(connect_to, Ws::connect(cli_addr, &path, seed << 20 | 9))
                .await
                .map_err(|_| "reconnect timed out".to_owned())?
                .map_err(|e| format!("reconnect: {e}"))?;
            sub_with_joins(&mut ws, &ch, &w).await?;
            Ok::<_, String>(ws)
        })
        .await
        .unwrap_or_else(|_| Err("deadline while resubscribing".into()));
        drop(permit);
        match r {
            Ok(mut ws) => {
                w.back.fetch_add(1, Ordering::Relaxed);
                w.back_after
                    .lock()
                    .unwrap()
                    .saturating_record(cut.elapsed().as_micros().max(1) as u64);
                if let Some(why) = watch_until(&mut ws, deadline, &w).await {
                    w.ended_by_server.fetch_add(1, Ordering::Relaxed);
                    w.err(format!("watcher after the storm: {why}"));
                    return None;
                }
                return Some(ws);
            }
            Err(e) => {
                w.err(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    w.failed.fetch_add(1, Ordering::Relaxed);
    None
}

pub async fn storm(cli: &Cli, a: &PsArgs, watchers: usize, storm_after: f64) -> Out {
    let mut out = Out::new("storm");
    out.kv("watchers", watchers).f("storm_after_s", storm_after, 2);
    let storm_ch = format!("bench.{}.storm", std::process::id());
    let w = Arc::new(Watch {
        joins: AtomicU64::new(0),
        leaves: AtomicU64::new(0),
        back: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        ended_by_server: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
        first_err: Mutex::new(None),
        back_after: Mutex::new(hist()),
    });
    // The watchers first: subscribed with joins, each reading the joins of those after
    // it, until all W·(W-1)/2 of them are in (bounded); only then the calm run.
    let ramp = open_many(cli, &a.path, watchers).await;
    let opened = ramp.conns.len() as u64;
    let gate = Arc::new(Semaphore::new(cli.in_flight.max(1)));
    let connect_to = Duration::from_secs_f64(cli.connect_timeout);
    let (cut_tx, cut_rx) = watch::channel(None);
    let watch_tasks: Vec<_> = ramp
        .conns
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            tokio::spawn(watcher(
                ws,
                cut_rx.clone(),
                gate.clone(),
                w.clone(),
                cli.addr,
                connect_to,
                a.path.clone(),
                storm_ch.clone(),
                i as u64 + 1,
            ))
        })
        .collect();
    let settled = Instant::now() + Duration::from_secs(60);
    let want = opened * opened.saturating_sub(1) / 2;
    while Instant::now() < settled
        && (w.subscribed.load(Ordering::Relaxed) + w.failed.load(Ordering::Relaxed) < opened
            || w.joins.load(Ordering::Relaxed) < want)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out.kv("watchers_subscribed", w.subscribed.load(Ordering::Relaxed))
        .kv("setup_joins", w.joins.load(Ordering::Relaxed));
    let Some(mut run) = setup(cli, &mut out, a).await else {
        return out;
    };
    let (base, deadline) = (run.base, run.deadline);
    let cut = run.start + Duration::from_secs_f64(storm_after);
    // The joins while the watchers came in are not the storm's.
    let joins_before = w.joins.load(Ordering::Relaxed);
    let _ = cut_tx.send(Some((cut, deadline)));
    // Calm deliveries split by when they arrived: before the cut, inside the storm.
    let split: Arc<Mutex<Split>> = Arc::new(Mutex::new((hist(), hist(), 0.0)));
    let (split2, w2) = (split.clone(), w.clone());
    let subs = std::mem::take(&mut run.subs);
    let readers = async move {
        let tasks = subs.into_iter().map(|(mut ws, mut s)| {
            tokio::spawn(async move {
                let why = read_live(&mut ws, &mut s, base, deadline).await;
                Ended {
                    ws: why.is_none().then_some(ws),
                    s,
                    resumed: Some((true, 0)),
                    why,
                }
            })
        });
        let ended: Vec<Ended> = futures_util::future::join_all(tasks)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        let watchers: Vec<Ws> = futures_util::future::join_all(watch_tasks)
            .await
            .into_iter()
            .filter_map(|r| r.ok().flatten())
            .collect();
        // The storm: from the cut until the last watcher was back, plus a second.
        let all_back = w2.back_after.lock().unwrap().max();
        let storm_end = cut + Duration::from_micros(all_back) + Duration::from_secs(1);
        {
            let mut sp = split2.lock().unwrap();
            sp.2 = (storm_end - cut).as_secs_f64();
            for e in &ended {
                for (&lat, &at) in e.s.lat.iter().zip(&e.s.at) {
                    let at = base + Duration::from_micros(at);
                    if at < cut {
                        sp.0.saturating_record(lat.max(1));
                    } else if at <= storm_end {
                        sp.1.saturating_record(lat.max(1));
                    }
                }
            }
        }
        futures_util::future::join_all(watchers.into_iter().map(|mut ws| async move {
            let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
        }))
        .await;
        ended
    };
    publish_and_report(cli, &mut out, a, run, readers).await;
    let sp = split.lock().unwrap();
    for (name, h) in [("calm_before", &sp.0), ("calm_storm", &sp.1)] {
        out.kv(&format!("{name}_n"), h.len());
        if !h.is_empty() {
            out.f(&format!("{name}_p50_ms"), ms(h.value_at_quantile(0.5)), 3)
                .f(&format!("{name}_p99_ms"), ms(h.value_at_quantile(0.99)), 3);
        }
    }
    out.f("storm_window_s", sp.2, 2)
        .kv("watchers_back", w.back.load(Ordering::Relaxed))
        .kv("watchers_never_back", w.failed.load(Ordering::Relaxed))
        .kv(
            "watchers_ended_by_server",
            w.ended_by_server.load(Ordering::Relaxed),
        )
        .kv("storm_joins", w.joins.load(Ordering::Relaxed) - joins_before)
        .kv("storm_leaves", w.leaves.load(Ordering::Relaxed));
    let b = w.back_after.lock().unwrap();
    if !b.is_empty() {
        out.f("all_back_ms", ms(b.max()), 1);
    }
    if let Some(e) = w.first_err.lock().unwrap().as_ref() {
        out.kv("watcher_error", e);
    }
    out
}
