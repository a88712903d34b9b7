//! The protocol v1 (`/ws`) scenarios: `pubsub` (delivery latency and loss counted by
//! offsets) and `resume` (every subscriber cut at once while publishing goes on, then
//! all recover with `since`).
//!
//! The server's JSON is read by scanning bytes, not parsed: the generator's core is the
//! bottleneck of every scenario, and the server's output has a fixed field order
//! (`{"push":"pub","ch":..,"offset":N,"data":"K TS xxx"}`; a `sub` reply is
//! `{"id":N,"ok":{"epoch":"E","offset":TOP,"pubs":[..],"recovered":B}}`). Each
//! publication's data is a JSON string `"K TS xxx"`: its sequence number over all
//! channels and its send time (ns since the run's base, same monotonic clock).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::ws::{Msg, OP_TEXT, Ws};
use crate::{Cli, Out, cpu_sample, hist, ms, open_many, put_cpu, put_ramp};

/// The channel subscriber `i` of `channels` uses, and publication `k` goes to.
fn channel(i: u64, channels: u64) -> String {
    format!("bench:{}", i % channels)
}

/// Publications among `0..total` that go to channel `c` (round-robin).
fn count_for(c: u64, channels: u64, total: u64) -> u64 {
    total / channels + u64::from(c < total % channels)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer right after the first `key` at or after `from`, and where it ends.
fn num_after(p: &[u8], key: &[u8], from: usize) -> Option<(u64, usize)> {
    let at = from + find(p.get(from..)?, key)? + key.len();
    let digits = p[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let v = std::str::from_utf8(&p[at..at + digits]).ok()?.parse().ok()?;
    Some((v, at + digits))
}

/// The `"epoch":"..."` string of a reply.
fn epoch_of(p: &[u8]) -> Option<String> {
    let key = b"\"epoch\":\"";
    let at = find(p, key)? + key.len();
    let len = p[at..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&p[at..at + len]).into_owned())
}

/// Every publication in `p` (a push, or a reply's `pubs`) from byte `from` on:
/// (offset, sequence number, send time ns).
fn publications(p: &[u8], mut from: usize) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    while let Some((offset, end)) = num_after(p, b"\"offset\":", from) {
        let Some((k, end)) = num_after(p, b"\"data\":\"", end) else {
            break;
        };
        let Some((ts, end)) = num_after(p, b" ", end) else {
            break;
        };
        out.push((offset, k, ts));
        from = end;
    }
    out
}

/// What one subscriber saw, folded into the run's totals.
#[derive(Default)]
struct Tally {
    received: u64,
    gaps: u64,
    dup: u64,
    undelivered: u64,
    disconnected: u64,
    timed_out: u64,
    subs_with_loss: u64,
    recovered: u64,
    not_recovered: u64,
    resub_failed: u64,
    last_recv: Option<Instant>,
}

/// One subscription's offset bookkeeping: the next offset due, and the last delivered.
struct Track {
    next: u64,
    target: u64,
    received: u64,
    gaps: u64,
    dup: u64,
}

impl Track {
    fn see(&mut self, offset: u64) {
        if offset >= self.next {
            self.gaps += offset - self.next;
            self.next = offset + 1;
            self.received += 1;
        } else {
            self.dup += 1;
        }
    }

    fn done(&self) -> bool {
        self.next > self.target
    }
}

/// Sends `sub` (with `since` if given) and reads until its reply; returns the reply's
/// epoch, top offset, `recovered` flag and the publications it carries.
async fn subscribe(
    ws: &mut Ws,
    ch: &str,
    since: Option<(&str, u64)>,
) -> std::io::Result<(String, u64, Option<bool>, Vec<(u64, u64, u64)>)> {
    let cmd = match since {
        None => format!(r#"{{"id":1,"op":"sub","ch":"{ch}"}}"#),
        Some((e, o)) => {
            format!(r#"{{"id":1,"op":"sub","ch":"{ch}","since":{{"epoch":"{e}","offset":{o}}}}}"#)
        }
    };
    ws.send(OP_TEXT, cmd.as_bytes()).await?;
    loop {
        match ws.recv().await? {
            Msg::Data(_, p) if p.starts_with(b"{\"id\":1,\"ok\"") => {
                let epoch = epoch_of(p).unwrap_or_default();
                let (top, end) = num_after(p, b"\"offset\":", 0).unwrap_or((0, 0));
                let recovered = if find(p, b"\"recovered\":true").is_some() {
                    Some(true)
                } else if find(p, b"\"recovered\":false").is_some() {
                    Some(false)
                } else {
                    None
                };
                return Ok((epoch, top, recovered, publications(p, end)));
            }
            Msg::Data(_, p) if p.starts_with(b"{\"id\":1,\"err\"") => {
                return Err(std::io::Error::other(String::from_utf8_lossy(p).into_owned()));
            }
            Msg::Data(..) => {}
            Msg::Close(c) => return Err(std::io::Error::other(format!("closed {c:?}"))),
        }
    }
}

/// Publishes `total` publications at `rate`/s from `pub_start`, round-robin over the
/// channels, pipelined (acks are read in between). Returns (acks, error acks, error).
async fn publish(
    publisher: &mut Ws,
    total: u64,
    rate: f64,
    channels: u64,
    size: usize,
    base: Instant,
    pub_start: Instant,
) -> (u64, u64, Option<String>) {
    let (mut acks, mut errs) = (0u64, 0u64);
    let mut text = String::with_capacity(size + 64);
    for k in 0..total {
        let at = pub_start + Duration::from_secs_f64(k as f64 / rate);
        loop {
            tokio::select! {
                _ = sleep_until(at) => break,
                r = publisher.recv() => match r {
                    Ok(Msg::Data(_, p)) => {
                        if p.starts_with(b"{\"id\"") {
                            acks += 1;
                            errs += u64::from(find(p, b"\"err\"").is_some());
                        }
                    }
                    Ok(Msg::Close(c)) => return (acks, errs, Some(format!("publisher closed by server {c:?}"))),
                    Err(e) => return (acks, errs, Some(format!("publisher: {e}"))),
                }
            }
        }
        let ts = (Instant::now() - base).as_nanos() as u64;
        text.clear();
        use std::fmt::Write;
        let ch = channel(k, channels);
        let _ = write!(
            text,
            r#"{{"id":{},"op":"pub","ch":"{ch}","data":"{k} {ts} "#,
            k + 1
        );
        while text.len() < size + 40 {
            text.push('x');
        }
        text.push_str("\"}");
        if let Err(e) = publisher.send(OP_TEXT, text.as_bytes()).await {
            return (acks, errs, Some(format!("publisher send: {e}")));
        }
    }
    // The remaining acks.
    let end = Instant::now() + Duration::from_secs(5);
    while acks < total {
        match timeout_at(end, publisher.recv()).await {
            Ok(Ok(Msg::Data(_, p))) if p.starts_with(b"{\"id\"") => {
                acks += 1;
                errs += u64::from(find(p, b"\"err\"").is_some());
            }
            Ok(Ok(Msg::Data(..))) => {}
            _ => break,
        }
    }
    (acks, errs, None)
}

/// Sets SO_LINGER 0, so dropping the socket sends RST: a cut, not a close.
fn abort_on_drop(ws: &Ws) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `linger`, which outlives the call, on a descriptor we own.
    unsafe {
        libc::setsockopt(
            ws.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The parameters both scenarios share.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    #[arg(long, default_value_t = 10)]
    channels: u64,
    /// Publications per second, over all channels.
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
    /// Payload bytes of each publication's data.
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value = "/ws")]
    path: String,
}

/// `pubsub`: N subscribers over C channels, one publisher at R publications/s in all.
/// Every subscriber checks its offsets are contiguous from the `sub` reply's top.
pub async fn pubsub(cli: &Cli, p: &Args) -> Out {
    run(cli, p, None).await
}

/// `resume`: as `pubsub`, and at `cut_after` seconds into publishing every subscriber's
/// connection is reset at once; each reconnects and subscribes with `since` = the last
/// offset it received. Reports how long until every one has its `sub` reply back, how
/// many were `recovered: false`, and loss or duplicates over the whole run.
pub async fn resume(cli: &Cli, p: &Args, cut_after: f64) -> Out {
    run(cli, p, Some(cut_after)).await
}

async fn run(cli: &Cli, p: &Args, cut_after: Option<f64>) -> Out {
    let mut out = Out::new(if cut_after.is_some() { "resume" } else { "pubsub" });
    let ramp = open_many(cli, &p.path, p.subs).await;
    put_ramp(&mut out, p.subs, &ramp);
    let channels = p.channels.max(1);
    let total = (p.rate * p.duration).round().max(1.0) as u64;
    let base = Instant::now();
    let h = Arc::new(Mutex::new(hist()));
    let rec_h = Arc::new(Mutex::new(hist()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(p.subs.max(1));
    // Publishing starts once every subscriber is subscribed, plus the settle time; the
    // tasks learn the start (for the cut) through this.
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(p.subs);
    for (i, mut ws) in ramp.conns.into_iter().enumerate() {
        let (h, rec_h, tally, ready_tx) = (h.clone(), rec_h.clone(), tally.clone(), ready_tx.clone());
        let mut start_rx = start_rx.clone();
        let (addr, path) = (cli.addr, p.path.clone());
        let connect_to = Duration::from_secs_f64(cli.connect_timeout);
        let (duration, grace) = (p.duration, p.grace);
        tasks.push(tokio::spawn(async move {
            let ch = channel(i as u64, channels);
            let c = i as u64 % channels;
            let (epoch, top) = match subscribe(&mut ws, &ch, None).await {
                Ok((e, top, ..)) => (e, top),
                Err(e) => {
                    eprintln!("loadgen: sub {i}: {e}");
                    let _ = ready_tx.send(false).await;
                    return None;
                }
            };
            let _ = ready_tx.send(true).await;
            let Ok(start) = start_rx
                .wait_for(Option::is_some)
                .await
                .map(|s| s.unwrap_or_else(Instant::now))
            else {
                return None;
            };
            let deadline = start + Duration::from_secs_f64(duration + grace);
            let cut_at = cut_after.map(|c| start + Duration::from_secs_f64(c));
            let mut t = Track {
                next: top + 1,
                target: top + count_for(c, channels, total),
                received: 0,
                gaps: 0,
                dup: 0,
            };
            let mut lat = Vec::with_capacity(count_for(c, channels, total) as usize);
            let (mut disconnected, mut timed_out, mut last) = (false, false, None);
            let (mut recovered, mut resub_failed, mut rec_us) = (None, false, None);
            let mut ws = Some(ws);
            while !t.done() {
                let Some(conn) = ws.as_mut() else { break };
                let until = match cut_at {
                    Some(cut) if recovered.is_none() => cut.min(deadline),
                    _ => deadline,
                };
                match timeout_at(until, conn.recv()).await {
                    Ok(Ok(Msg::Data(_, m))) => {
                        let now = Instant::now();
                        for (offset, _k, ts) in publications(m, 0) {
                            lat.push(
                                now.saturating_duration_since(base + Duration::from_nanos(ts))
                                    .as_micros() as u64,
                            );
                            t.see(offset);
                            last = Some(now);
                        }
                    }
                    Ok(Ok(Msg::Close(_))) | Ok(Err(_)) => {
                        disconnected = true;
                        break;
                    }
                    Err(_) if Instant::now() >= deadline => {
                        timed_out = true;
                        break;
                    }
                    Err(_) => {
                        // The cut: reset the connection, reconnect, resubscribe with since.
                        let cut = Instant::now();
                        if let Some(old) = ws.take() {
                            abort_on_drop(&old);
                        }
                        let since = t.next - 1;
                        let mut again = None;
                        while again.is_none() && Instant::now() < deadline {
                            match timeout(connect_to, Ws::connect(addr, &path, i as u64 + 7)).await {
                                Ok(Ok(w)) => again = Some(w),
                                _ => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                        let Some(mut w) = again else {
                            resub_failed = true;
                            break;
                        };
                        match subscribe(&mut w, &ch, Some((&epoch, since))).await {
                            Ok((_, _, rec, pubs)) => {
                                let now = Instant::now();
                                recovered = Some(rec == Some(true));
                                rec_us = Some(now.saturating_duration_since(cut).as_micros() as u64);
                                for (offset, _k, ts) in pubs {
                                    lat.push(
                                        now.saturating_duration_since(base + Duration::from_nanos(ts))
                                            .as_micros() as u64,
                                    );
                                    t.see(offset);
                                    last = Some(now);
                                }
                                ws = Some(w);
                                if recovered == Some(false) {
                                    // Offsets of the new epoch say nothing about the
                                    // old one: what was left counts as undelivered.
                                    break;
                                }
                            }
                            Err(e) => {
                                eprintln!("loadgen: resubscribe {i}: {e}");
                                resub_failed = true;
                                break;
                            }
                        }
                    }
                }
            }
            {
                let mut hh = h.lock().unwrap();
                for v in lat {
                    hh.saturating_record(v.max(1));
                }
            }
            if let Some(us) = rec_us {
                rec_h.lock().unwrap().saturating_record(us.max(1));
            }
            let mut s = tally.lock().unwrap();
            let undelivered = (t.target + 1).saturating_sub(t.next);
            s.received += t.received;
            s.gaps += t.gaps;
            s.dup += t.dup;
            s.undelivered += undelivered;
            s.subs_with_loss += u64::from(t.gaps + undelivered > 0);
            s.disconnected += u64::from(disconnected);
            s.timed_out += u64::from(timed_out);
            s.recovered += u64::from(recovered == Some(true));
            s.not_recovered += u64::from(recovered == Some(false));
            s.resub_failed += u64::from(resub_failed);
            if last > s.last_recv {
                s.last_recv = last;
            }
            ws
        }));
    }
    drop(ready_tx);
    let mut subscribed = 0usize;
    let ready_by = Instant::now() + Duration::from_secs(30);
    while subscribed < tasks.len() {
        match timeout_at(ready_by, ready_rx.recv()).await {
            Ok(Some(true)) => subscribed += 1,
            Ok(Some(false)) => {}
            _ => break,
        }
    }
    out.kv("subscribed", subscribed).kv("channels", channels);
    let mut publisher = match Ws::connect(cli.addr, &p.path, 0).await {
        Ok(w) => w,
        Err(e) => {
            out.kv("error", format!("publisher: {e}"));
            return out;
        }
    };
    publisher.auto_pong = false;
    let pub_start = Instant::now() + Duration::from_secs_f64(p.settle);
    let _ = start_tx.send(Some(pub_start));
    sleep_until(pub_start).await;
    let c0 = cpu_sample(cli.server_pid);
    let (acks, pub_errs, pub_err) =
        publish(&mut publisher, total, p.rate, channels, p.size, base, pub_start).await;
    let c1 = cpu_sample(cli.server_pid);
    let open: Vec<Ws> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect();
    futures_util::future::join_all(open.into_iter().map(|mut ws| async move {
        let _ = timeout(Duration::from_secs(2), ws.close(1000)).await;
    }))
    .await;
    publisher.auto_pong = true;
    let _ = timeout(Duration::from_secs(2), publisher.close(1000)).await;

    let s = tally.lock().unwrap();
    let h = h.lock().unwrap();
    let expected: u64 = (0..subscribed as u64)
        .map(|i| count_for(i % channels, channels, total))
        .sum();
    out.kv("rate", p.rate)
        .kv("sent", total)
        .kv("acks", acks)
        .kv("pub_errors", pub_errs);
    out.kv("deliveries", s.received).kv("expected", expected);
    out.f("p50_ms", ms(h.value_at_quantile(0.50)), 3)
        .f("p99_ms", ms(h.value_at_quantile(0.99)), 3)
        .f("max_ms", ms(h.max()), 3);
    // lost = offsets skipped (gaps) + offsets never delivered by the deadline.
    out.kv("lost", s.gaps + s.undelivered)
        .kv("lost_gaps", s.gaps)
        .kv("undelivered", s.undelivered)
        .kv("dup_or_reordered", s.dup)
        .kv("subs_with_loss", s.subs_with_loss)
        .kv("subs_disconnected", s.disconnected)
        .kv("subs_timed_out", s.timed_out);
    if cut_after.is_some() {
        let r = rec_h.lock().unwrap();
        out.kv("recovered", s.recovered)
            .kv("not_recovered", s.not_recovered)
            .kv("resub_failed", s.resub_failed);
        // From each subscriber's cut to its `sub` reply: the slowest is the storm's length.
        out.f("recover_p50_ms", ms(r.value_at_quantile(0.50)), 1)
            .f("recover_p99_ms", ms(r.value_at_quantile(0.99)), 1)
            .f("all_recovered_ms", ms(r.max()), 1);
    }
    if let Some(last) = s.last_recv {
        out.f("last_delivery_s", (last - pub_start).as_secs_f64(), 2);
    }
    if let Some(e) = pub_err {
        out.kv("error", e);
    }
    put_cpu(&mut out, c0, c1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_counts_add_up() {
        for (channels, total) in [(10, 1000), (3, 10), (7, 2), (1, 5)] {
            let sum: u64 = (0..channels).map(|c| count_for(c, channels, total)).sum();
            assert_eq!(sum, total);
            for k in 0..total {
                assert!(channel(k, channels).starts_with("bench:"));
            }
        }
    }

    #[test]
    fn publications_are_read_from_pushes_and_replies() {
        let push = br#"{"push":"pub","ch":"bench:1","offset":17,"data":"5 123456 xx"}"#;
        assert_eq!(publications(push, 0), vec![(17, 5, 123456)]);
        let reply = br#"{"id":1,"ok":{"epoch":"ab12","offset":9,"pubs":[{"ch":"bench:1","offset":8,"data":"1 10 x"},{"ch":"bench:1","offset":9,"data":"2 20 x"}],"recovered":true}}"#;
        assert_eq!(epoch_of(reply).as_deref(), Some("ab12"));
        let (top, end) = num_after(reply, b"\"offset\":", 0).unwrap();
        assert_eq!(top, 9);
        assert_eq!(publications(reply, end), vec![(8, 1, 10), (9, 2, 20)]);
    }
}
