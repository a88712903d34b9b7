//! The checker: judges a whole soak history after the fact, the way Jepsen's checkers do.
//!
//! **Owns** nothing that runs: [`check`] is a pure function of the events (and the
//! server's log text), so each rule is unit-tested on small hand-made histories below.
//! It trusts nothing the clients decided: it replays what each subscriber was handed.
//!
//! The rules (each violation is one line of the report):
//! 1. **duplicate**: a subscriber is handed the same (epoch, offset) twice on one
//!    subscription chain (one logical subscriber, across its reconnects).
//! 2. **gap**: offsets a chain is handed do not go up by exactly one, and no
//!    `recovered: false` or `push unsub` came in between. A resume with
//!    `recovered: true` must continue exactly where the chain left off.
//! 3. **divergence**: two subscribers (or a subscriber and the publisher's ack) hold
//!    different data at the same (channel, epoch, offset).
//! 4. **lost**: an acked publication that nobody was handed, although some subscription
//!    of its channel was subscribed before it (in its epoch) and its chain was never told
//!    `recovered: false` or `push unsub` afterwards.
//! 5. **key**: one idempotency key acked with two positions within one lifetime of what
//!    holds the keys (the server in memory mode, the redis-server in Redis mode).
//! 6. **resources**: after the run (clients gone, history expired) a node's threads and
//!    fds are above its baseline, or its RSS is over 110 % of the most any lifetime of
//!    that node held at the end of its phase of load (each node against itself).
//! 7. **server**: a panic line in a server log, a lifetime that did not exit 0 after
//!    SIGTERM, an error reply to a well-formed command, a hostile client left hanging.
//! 8. **coverage**: the run never exercised one of its faults ([`MUST_HAPPEN`], plus
//!    [`MUST_HAPPEN_MEMORY`] or [`MUST_HAPPEN_REDIS`]), or a node never restarted: such a
//!    run proves nothing.
//!
//! Rules 1-5 do not care which node a subscriber or publisher used: positions are the
//! channel's (epoch, offset), which the Redis engine makes the same on every node, so a
//! chain that fails over is judged as one subscriber, and data is compared across nodes.

use crate::event::{Event, Pos};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

/// RSS after the run may be at most this share of the most a lifetime held after its load.
pub const RSS_SLACK: f64 = 1.10;

/// What the checker found: every violation, and the run's figures.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub stats: BTreeMap<&'static str, u64>,
    pub resources: Vec<String>,
}

impl Report {
    fn bump(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// The report as printed: figures first, then one line per violation.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.stats {
            let _ = writeln!(s, "soak: {k}: {v}");
        }
        for r in &self.resources {
            let _ = writeln!(s, "soak: {r}");
        }
        for v in &self.violations {
            let _ = writeln!(s, "VIOLATION: {v}");
        }
        let _ = writeln!(
            s,
            "soak: {}",
            if self.violations.is_empty() {
                "PASS: no violation".to_string()
            } else {
                format!("FAIL: {} violation(s)", self.violations.len())
            }
        );
        s
    }
}

/// Where a key was acked, and in which server lifetime (if known).
type KeyAck = (Pos, Option<u64>);
/// One /proc sample: time, lifetime, phase, threads, fds, RSS (KiB).
type Sample<'a> = (f64, u64, &'a str, u64, u64, u64);

/// One subscription as the checker rebuilds it.
struct Sub {
    ch: String,
    epoch: String,
    /// The last offset before the first one this subscription may hand out.
    from: u64,
    recovered: Option<bool>,
    reply_offset: u64,
    unsub: bool,
    delivered: Vec<u64>,
}

/// Judges `events` (each worker's events in the order it logged them) and the server's
/// log text.
pub fn check(events: &[Event], server_log: &str) -> Report {
    let mut r = Report::default();
    let (redis, nodes) = events
        .iter()
        .find_map(|e| match e {
            Event::Run { engine, nodes } => Some((engine == "redis", *nodes)),
            _ => None,
        })
        .unwrap_or((false, 1));
    // chain -> the node its last subscription was answered by
    let mut last_node: HashMap<&str, u64> = HashMap::new();
    // node -> its lifetimes that ended
    let mut lifetimes: BTreeMap<u64, u64> = BTreeMap::new();
    // chain -> its subscriptions in order; sub id -> index
    let mut chains: BTreeMap<&str, Vec<Sub>> = BTreeMap::new();
    let mut index: HashMap<(&str, u64), usize> = HashMap::new();
    // chain -> the next position it must be handed (None: free, after a reset)
    let mut expect: HashMap<&str, Option<Pos>> = HashMap::new();
    let mut seen: HashMap<&str, HashSet<(String, u64)>> = HashMap::new();
    // (ch, epoch, offset) -> (data, who)
    let mut data_at: HashMap<(String, String, u64), (String, String)> = HashMap::new();
    let mut delivered_any: HashSet<(String, String, u64)> = HashSet::new();

    let mut same_data = |r: &mut Report, ch: &str, epoch: &str, offset: u64, data: &str, who: &str| {
        let key = (ch.to_string(), epoch.to_string(), offset);
        match data_at.get(&key) {
            Some((d, first)) if d != data => r.violations.push(format!(
                "divergence: {ch} {epoch}:{offset}: {first} has {d}, {who} has {data}"
            )),
            Some(_) => {}
            None => {
                data_at.insert(key, (data.to_string(), who.to_string()));
            }
        }
    };

    for ev in events {
        match ev {
            Event::Sub {
                chain,
                sub,
                ch,
                since,
                epoch,
                offset,
                recovered,
                node,
            } => {
                r.bump("subscriptions");
                match recovered {
                    Some(true) => r.bump("recoveries true"),
                    Some(false) => r.bump("recoveries false"),
                    None => {}
                }
                if let Some(before) = last_node.insert(chain, *node)
                    && before != *node
                    && since.is_some()
                {
                    r.bump(match recovered {
                        Some(true) => "resumes on another node: recovered true",
                        _ => "resumes on another node: recovered false",
                    });
                }
                let from = match (recovered, since) {
                    (Some(true), Some(s)) => {
                        if s.epoch != *epoch {
                            r.violations.push(format!(
                                "gap: {chain}/{sub} {ch}: recovered:true into epoch {epoch} from since in epoch {}",
                                s.epoch
                            ));
                        }
                        if let Some(Some(want)) = expect.get(chain.as_str())
                            && (want.epoch != s.epoch || want.offset != s.offset + 1)
                        {
                            r.violations.push(format!(
                                "gap: {chain}/{sub} {ch}: resumed after {}:{} but was at {}:{}",
                                s.epoch,
                                s.offset,
                                want.epoch,
                                want.offset - 1
                            ));
                        }
                        s.offset
                    }
                    (Some(true), None) => {
                        r.violations.push(format!(
                            "server: {chain}/{sub} {ch}: recovered:true without since"
                        ));
                        *offset
                    }
                    _ => *offset,
                };
                expect.insert(
                    chain,
                    Some(Pos {
                        epoch: epoch.clone(),
                        offset: from + 1,
                    }),
                );
                let subs = chains.entry(chain).or_default();
                index.insert((chain, *sub), subs.len());
                subs.push(Sub {
                    ch: ch.clone(),
                    epoch: epoch.clone(),
                    from,
                    recovered: *recovered,
                    reply_offset: *offset,
                    unsub: false,
                    delivered: Vec::new(),
                });
            }
            Event::Deliver {
                chain,
                sub,
                ch,
                epoch,
                offset,
                data,
            } => {
                r.bump("deliveries");
                let who = format!("{chain}/{sub}");
                if !seen.entry(chain).or_default().insert((epoch.clone(), *offset)) {
                    r.violations
                        .push(format!("duplicate: {who} {ch}: {epoch}:{offset} handed twice"));
                } else {
                    match expect.get(chain.as_str()) {
                        Some(Some(want)) if want.epoch == *epoch && want.offset == *offset => {}
                        Some(Some(want)) => r.violations.push(format!(
                            "gap: {who} {ch}: handed {epoch}:{offset}, expected {}:{}",
                            want.epoch, want.offset
                        )),
                        _ => r.violations.push(format!(
                            "gap: {who} {ch}: handed {epoch}:{offset} outside a subscription"
                        )),
                    }
                }
                expect.insert(
                    chain,
                    Some(Pos {
                        epoch: epoch.clone(),
                        offset: offset + 1,
                    }),
                );
                same_data(&mut r, ch, epoch, *offset, data, &who);
                delivered_any.insert((ch.clone(), epoch.clone(), *offset));
                if let Some(&i) = index.get(&(chain.as_str(), *sub)) {
                    let s = &mut chains.get_mut(chain.as_str()).expect("indexed")[i];
                    s.delivered.push(*offset);
                    if s.recovered == Some(true) && *offset <= s.reply_offset {
                        r.bump("deliveries recovered (sub reply pubs)");
                    }
                }
            }
            Event::Unsub { chain, sub, .. } => {
                r.bump("push unsub");
                expect.insert(chain, None);
                if let Some(&i) = index.get(&(chain.as_str(), *sub)) {
                    chains.get_mut(chain.as_str()).expect("indexed")[i].unsub = true;
                }
            }
            Event::End { why, .. } => match why.as_str() {
                "rst" => r.bump("subscriptions ended: rst by the client"),
                "stop" => r.bump("subscriptions ended: end of run"),
                "slow-cut" => r.bump("subscriptions ended: cut after the client paused (slow consumer)"),
                _ => r.bump("subscriptions ended: cut (server, restart)"),
            },
            Event::Ack { .. } | Event::Run { .. } => {}
            Event::Refused { op, .. } => r.bump(if op == "sub" {
                "refused as unavailable (error 6): sub"
            } else {
                "refused as unavailable (error 6 or 503): pub"
            }),
            Event::Redis { up, .. } => {
                if !up {
                    r.bump("redis-server stops");
                }
            }
            Event::Unexpected { who, what } => r
                .violations
                .push(format!("server: {who}: unexpected answer: {what}")),
            Event::Hostile { kind, outcome } => {
                r.bump("hostile clients");
                if outcome.starts_with("BAD") {
                    r.violations.push(format!("server: hostile {kind}: {outcome}"));
                }
            }
            Event::Sample { .. } => {}
            Event::Exit { node, life, code } => {
                r.bump("server lifetimes");
                *lifetimes.entry(*node).or_default() += 1;
                if *code != Some(0) {
                    r.violations.push(format!(
                        "server: node {node} lifetime {life} exited with {code:?} after SIGTERM (want 0)"
                    ));
                }
            }
        }
    }

    // Acks: data, loss, keys.
    let mut keys: HashMap<(&str, &str), Vec<KeyAck>> = HashMap::new();
    for ev in events {
        let Event::Ack {
            publisher,
            via,
            ch,
            key,
            epoch,
            offset,
            data,
            life,
        } = ev
        else {
            continue;
        };
        r.bump(if via == "http" {
            "publications acked (http)"
        } else {
            "publications acked (ws)"
        });
        same_data(
            &mut r,
            ch,
            epoch,
            *offset,
            data,
            &format!("the ack to {publisher}"),
        );
        let pos = Pos {
            epoch: epoch.clone(),
            offset: *offset,
        };
        if let Some(k) = key {
            let acks = keys.entry((ch, k)).or_default();
            for (p, l) in acks.iter() {
                if *p != pos && l.is_some() && l == life {
                    r.violations.push(format!(
                        "key: {ch} key {k} acked at {}:{} and at {}:{} in {} lifetime {}",
                        p.epoch,
                        p.offset,
                        pos.epoch,
                        pos.offset,
                        if redis { "redis-server" } else { "server" },
                        l.expect("checked")
                    ));
                } else if *p != pos {
                    r.bump("keys re-published after a restart");
                }
            }
            if acks.iter().any(|(p, _)| *p == pos) {
                r.bump("keyed publications answered from the idempotency window");
            }
            acks.push((pos, *life));
        }
        if delivered_any.contains(&(ch.clone(), epoch.clone(), *offset)) {
            r.bump("acked publications delivered");
            continue;
        }
        let mut covered = false;
        let mut excused = true;
        for (chain, subs) in &chains {
            for (i, s) in subs.iter().enumerate() {
                if s.ch != *ch || s.epoch != *epoch || s.from >= *offset {
                    continue;
                }
                covered = true;
                let told = subs[i..].iter().any(|x| x.unsub)
                    || subs[i + 1..].iter().any(|x| x.recovered == Some(false));
                if !told {
                    excused = false;
                    r.violations.push(format!(
                        "lost: {ch} {epoch}:{offset} (acked to {publisher}) never handed to {chain}/{i}, subscribed from {} and never told recovered:false",
                        s.from
                    ));
                    break;
                }
            }
            if !excused {
                break;
            }
        }
        r.bump(match (covered, excused) {
            (false, _) => "acked publications no subscriber was subscribed for",
            (true, true) => "acked publications missed with recovered:false (told)",
            (true, false) => "acked publications lost",
        });
    }

    coverage(&mut r, redis, nodes, &lifetimes);
    let mut by_node: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for e in events {
        if let Event::Sample { node, .. } = e {
            by_node.entry(*node).or_default().push(e);
        }
    }
    for n in 0..nodes {
        let samples = by_node.remove(&n).unwrap_or_default();
        let name = if nodes > 1 {
            format!("node {n}")
        } else {
            "server".to_string()
        };
        resources(&mut r, &name, &samples);
    }
    for line in server_log.lines().filter(|l| l.contains("panicked")) {
        r.violations.push(format!("server: panic: {line}"));
    }
    r
}

/// What a run must have exercised to count: a soak in which no client was reset, no
/// consumer cut, no resume answered `recovered: true`, or nothing published through
/// either route, proves nothing and fails.
pub const MUST_HAPPEN: [&str; 7] = [
    "publications acked (ws)",
    "publications acked (http)",
    "acked publications delivered",
    "recoveries true",
    "subscriptions ended: rst by the client",
    "subscriptions ended: cut after the client paused (slow consumer)",
    "hostile clients",
];

/// What a memory run must also have exercised: a restart loses the history, so resumes
/// after it are answered `recovered: false`.
pub const MUST_HAPPEN_MEMORY: [&str; 1] = ["recoveries false"];

/// What a two-node Redis run must also have exercised: subscribers failing over to the
/// other node and recovering there, and the Redis fault (the redis-server stopped, so
/// publications are refused with error 6 and subscriptions end with `push unsub`; started
/// again empty, so resumes are answered `recovered: false`).
pub const MUST_HAPPEN_REDIS: [&str; 5] = [
    "resumes on another node: recovered true",
    "redis-server stops",
    "refused as unavailable (error 6 or 503): pub",
    "push unsub",
    "recoveries false",
];

/// Rule 8: the run exercised every fault it claims to, and every node restarted.
fn coverage(r: &mut Report, redis: bool, nodes: u64, lifetimes: &BTreeMap<u64, u64>) {
    let more: &[&str] = if redis {
        &MUST_HAPPEN_REDIS
    } else {
        &MUST_HAPPEN_MEMORY
    };
    for what in MUST_HAPPEN.iter().chain(more) {
        if r.stats.get(what).copied().unwrap_or(0) == 0 {
            r.violations.push(format!("coverage: the run had no {what:?}"));
        }
    }
    for n in 0..nodes {
        if lifetimes.get(&n).copied().unwrap_or(0) < 2 {
            r.violations.push(if nodes > 1 {
                format!("coverage: node {n} was never restarted")
            } else {
                "coverage: the server was never restarted".into()
            });
        }
    }
}

/// Rule 6 for one node (`name`: "server" or "node N"), and the figures: baseline, end of
/// the first phase, after the run, peaks. `events` are that node's samples.
fn resources(r: &mut Report, name: &str, events: &[&Event]) {
    let samples: Vec<Sample> = events
        .iter()
        .filter_map(|e| match e {
            Event::Sample {
                t,
                life,
                phase,
                threads,
                fds,
                rss_kib,
                ..
            } => Some((*t, *life, phase.as_str(), *threads, *fds, *rss_kib)),
            _ => None,
        })
        .collect();
    let base = samples.iter().find(|s| s.2 == "baseline");
    let first = samples.iter().rfind(|s| s.1 == 0 && s.2 == "load");
    // Every server lifetime carries one phase of the same load, so the most any lifetime
    // held at the end of its load is what one phase needs: the memory the run may keep.
    // (Comparing with the first lifetime alone made the check turn on which process
    // happened to allocate a little more.)
    let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.2 == "load") {
        ends.insert(s.1, s.5);
    }
    let one_phase = ends.values().copied().max().unwrap_or(0);
    let after = samples.iter().rfind(|s| s.2 == "quiet");
    let (Some(base), Some(first), Some(after)) = (base, first, after) else {
        r.violations.push(format!(
            "resources: no baseline, first-phase or after-run sample of the {name}"
        ));
        return;
    };
    let peak = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    r.resources.push(format!(
        "{name} baseline: {} threads, {} fds, {} KiB RSS",
        base.3, base.4, base.5
    ));
    r.resources.push(format!(
        "{name} end of first phase: {} threads, {} fds, {} KiB RSS",
        first.3, first.4, first.5
    ));
    r.resources.push(format!(
        "{name} after the run: {} threads, {} fds, {} KiB RSS",
        after.3, after.4, after.5
    ));
    r.resources.push(format!(
        "{name} peaks: {} threads, {} fds, {} KiB RSS ({} samples)",
        peak(|s| s.3),
        peak(|s| s.4),
        peak(|s| s.5),
        samples.len()
    ));
    let mut lives: BTreeMap<u64, (u64, u64, u64)> = BTreeMap::new();
    for s in &samples {
        let e = lives.entry(s.1).or_default();
        *e = (e.0.max(s.3), e.1.max(s.4), e.2.max(s.5));
    }
    for (life, (t, f, m)) in &lives {
        r.resources.push(format!(
            "{name} lifetime {life} peaks: {t} threads, {f} fds, {m} KiB RSS"
        ));
    }
    if after.3 > base.3 {
        r.violations.push(format!(
            "resources: {name}: {} threads after the run, baseline {}",
            after.3, base.3
        ));
    }
    if after.4 > base.4 {
        r.violations.push(format!(
            "resources: {name}: {} fds after the run, baseline {}",
            after.4, base.4
        ));
    }
    if after.5 as f64 > one_phase as f64 * RSS_SLACK {
        r.violations.push(format!(
            "resources: {name}: RSS {} KiB after the run, over 110 % of {} KiB, the most a lifetime held at the end of its load",
            after.5, one_phase
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(
        chain: &str,
        sub: u64,
        since: Option<(&str, u64)>,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
    ) -> Event {
        Event::Sub {
            chain: chain.into(),
            sub,
            ch: "c".into(),
            since: since.map(|(e, o)| Pos {
                epoch: e.into(),
                offset: o,
            }),
            epoch: epoch.into(),
            offset,
            recovered,
            node: 0,
        }
    }

    fn deliver(chain: &str, sub: u64, epoch: &str, offset: u64, data: &str) -> Event {
        Event::Deliver {
            chain: chain.into(),
            sub,
            ch: "c".into(),
            epoch: epoch.into(),
            offset,
            data: data.into(),
        }
    }

    fn ack(key: Option<&str>, epoch: &str, offset: u64, data: &str, life: Option<u64>) -> Event {
        Event::Ack {
            publisher: "p".into(),
            via: "ws".into(),
            ch: "c".into(),
            key: key.map(Into::into),
            epoch: epoch.into(),
            offset,
            data: data.into(),
            life,
        }
    }

    fn sample(life: u64, phase: &str, threads: u64, fds: u64, rss_kib: u64) -> Event {
        Event::Sample {
            t: 0.0,
            node: 0,
            life,
            phase: phase.into(),
            threads,
            fds,
            rss_kib,
        }
    }

    /// A side history (its own chain and channel) that passes rules 6 and 8, so each test
    /// sees only the rule it is about.
    fn healthy() -> Vec<Event> {
        let side = |mut e: Event| {
            match &mut e {
                Event::Sub { ch, .. } | Event::Deliver { ch, .. } | Event::Ack { ch, .. } => {
                    *ch = "side".into()
                }
                _ => {}
            }
            e
        };
        let end = |sub: u64, why: &str| Event::End {
            chain: "s".into(),
            sub,
            why: why.into(),
        };
        let mut http = side(ack(None, "S", 1, "s1", Some(0)));
        if let Event::Ack { via, .. } = &mut http {
            *via = "http".into();
        }
        vec![
            side(sub("s", 1, None, "S", 0, None)),
            side(deliver("s", 1, "S", 1, "s1")),
            http,
            end(1, "rst"),
            side(sub("s", 2, Some(("S", 1)), "S", 1, Some(true))),
            end(2, "slow-cut"),
            side(sub("s", 3, Some(("S", 1)), "T", 0, Some(false))),
            side(deliver("s", 3, "T", 1, "t1")),
            side(ack(Some("sk"), "T", 1, "t1", Some(1))),
            Event::Hostile {
                kind: "garbage".into(),
                outcome: "closed".into(),
            },
            Event::Exit {
                node: 0,
                life: 0,
                code: Some(0),
            },
            Event::Exit {
                node: 0,
                life: 1,
                code: Some(0),
            },
            sample(0, "baseline", 5, 8, 1000),
            sample(0, "load", 40, 30, 3000),
            sample(2, "quiet", 5, 8, 3100),
        ]
    }

    fn run(mut evs: Vec<Event>) -> Report {
        evs.extend(healthy());
        check(&evs, "")
    }

    fn assert_one(r: &Report, rule: &str) {
        assert_eq!(r.violations.len(), 1, "{}", r.render());
        assert!(r.violations[0].starts_with(rule), "{}", r.render());
    }

    #[test]
    fn a_clean_history_passes() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            ack(Some("k1"), "E", 1, "x", Some(0)),
            deliver("a", 1, "E", 2, "y"),
            ack(Some("k2"), "E", 2, "y", Some(0)),
            Event::End {
                chain: "a".into(),
                sub: 1,
                why: "cut".into(),
            },
            sub("a", 2, Some(("E", 2)), "E", 3, Some(true)),
            deliver("a", 2, "E", 3, "z"),
            ack(None, "E", 3, "z", Some(0)),
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
        // Figures include the side history's: one recovery each way, two acks delivered.
        assert_eq!(r.stats["recoveries true"], 2);
        assert_eq!(r.stats["deliveries recovered (sub reply pubs)"], 1);
        assert_eq!(r.stats["acked publications delivered"], 5);
    }

    #[test]
    fn an_offset_handed_twice_is_a_duplicate() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            deliver("a", 1, "E", 1, "x"),
        ]);
        assert_one(&r, "duplicate");
    }

    #[test]
    fn a_duplicate_across_a_resume_is_caught() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            sub("a", 2, Some(("E", 0)), "E", 1, Some(true)),
            deliver("a", 2, "E", 1, "x"),
        ]);
        // The resume itself starts before where the chain was, and hands 1 again.
        assert!(
            r.violations.iter().any(|v| v.starts_with("duplicate")),
            "{}",
            r.render()
        );
    }

    #[test]
    fn a_skipped_offset_is_a_gap() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            deliver("a", 1, "E", 3, "z"),
        ]);
        assert_one(&r, "gap");
    }

    #[test]
    fn a_resume_with_recovered_true_must_continue_where_the_chain_was() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            deliver("a", 1, "E", 2, "y"),
            sub("a", 2, Some(("E", 2)), "E", 5, Some(true)),
            deliver("a", 2, "E", 5, "w"),
        ]);
        assert_one(&r, "gap");
    }

    #[test]
    fn a_jump_after_recovered_false_is_allowed() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            sub("a", 2, Some(("E", 1)), "F", 7, Some(false)),
            deliver("a", 2, "F", 8, "q"),
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
        assert_eq!(r.stats["recoveries false"], 2);
    }

    #[test]
    fn a_jump_after_push_unsub_is_allowed() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            Event::Unsub {
                chain: "a".into(),
                sub: 1,
                ch: "c".into(),
                code: 6,
            },
            sub("a", 2, None, "E", 9, None),
            deliver("a", 2, "E", 10, "q"),
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
    }

    #[test]
    fn different_data_at_one_position_is_a_divergence() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            sub("b", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            deliver("b", 1, "E", 1, "y"),
        ]);
        assert_one(&r, "divergence");
    }

    #[test]
    fn an_ack_whose_data_differs_from_the_delivery_is_a_divergence() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            ack(None, "E", 1, "not x", Some(0)),
        ]);
        assert_one(&r, "divergence");
    }

    #[test]
    fn an_acked_publication_nobody_was_handed_is_lost() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            ack(None, "E", 1, "x", Some(0)),
            Event::End {
                chain: "a".into(),
                sub: 1,
                why: "stop".into(),
            },
        ]);
        assert_one(&r, "lost");
    }

    #[test]
    fn a_publication_missed_with_recovered_false_is_not_lost() {
        let r = run(vec![
            sub("a", 1, None, "E", 0, None),
            ack(None, "E", 1, "x", Some(0)),
            Event::End {
                chain: "a".into(),
                sub: 1,
                why: "cut".into(),
            },
            sub("a", 2, Some(("E", 0)), "F", 0, Some(false)),
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
        assert_eq!(
            r.stats["acked publications missed with recovered:false (told)"],
            1
        );
    }

    #[test]
    fn a_publication_before_every_subscription_is_not_lost() {
        let r = run(vec![
            ack(None, "E", 1, "x", Some(0)),
            sub("a", 1, None, "E", 1, None),
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
    }

    #[test]
    fn one_key_with_two_offsets_in_one_lifetime_is_a_violation() {
        let r = run(vec![
            ack(Some("k"), "E", 1, "x", Some(0)),
            ack(Some("k"), "E", 2, "x", Some(0)),
        ]);
        assert_one(&r, "key");
    }

    #[test]
    fn one_key_republished_after_a_restart_is_allowed() {
        let r = run(vec![
            ack(Some("k"), "E", 1, "x", Some(0)),
            ack(Some("k"), "F", 1, "x", Some(1)),
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
    }

    /// The healthy history, then one more after-run sample.
    fn after(threads: u64, fds: u64, rss_kib: u64) -> Report {
        let mut evs = healthy();
        evs.push(sample(2, "quiet", threads, fds, rss_kib));
        check(&evs, "")
    }

    #[test]
    fn the_healthy_side_history_passes() {
        let r = check(&healthy(), "");
        assert!(r.violations.is_empty(), "{}", r.render());
    }

    #[test]
    fn a_run_that_exercised_nothing_fails_coverage() {
        // The samples alone: resources pass, nothing else happened.
        let evs = healthy().split_off(12);
        let r = check(&evs, "");
        assert_eq!(
            r.violations.len(),
            MUST_HAPPEN.len() + MUST_HAPPEN_MEMORY.len() + 1,
            "{}",
            r.render()
        );
        assert!(
            r.violations.iter().all(|v| v.starts_with("coverage")),
            "{}",
            r.render()
        );
    }

    #[test]
    fn threads_above_baseline_after_the_run_are_a_leak() {
        assert_one(&after(7, 8, 3000), "resources");
    }

    #[test]
    fn fds_above_baseline_after_the_run_are_a_leak() {
        assert_one(&after(5, 9, 3000), "resources");
    }

    #[test]
    fn rss_over_110_percent_of_the_first_phase_is_a_leak() {
        assert_one(&after(5, 8, 3301), "resources");
    }

    #[test]
    fn a_run_without_samples_fails() {
        let mut evs = healthy();
        evs.truncate(12);
        assert_one(&check(&evs, ""), "resources");
    }

    #[test]
    fn a_panic_in_the_server_log_is_a_violation() {
        let mut evs = vec![];
        evs.extend(healthy());
        let r = check(&evs, "ok\nthread 'wshub-hub' panicked at src/server/hub.rs:1:1\n");
        assert_one(&r, "server: panic");
    }

    #[test]
    fn a_lifetime_that_does_not_exit_0_is_a_violation() {
        let r = run(vec![Event::Exit {
            node: 0,
            life: 1,
            code: None,
        }]);
        assert_one(&r, "server");
    }

    #[test]
    fn an_error_reply_to_a_good_command_is_a_violation() {
        let r = run(vec![Event::Unexpected {
            who: "p".into(),
            what: "err code 6".into(),
        }]);
        assert_one(&r, "server");
    }

    // The two-node Redis mode: the same rules across nodes, per-node resources, and the
    // mode's own coverage.

    /// `sub`, answered by `node`.
    fn sub_on(
        node: u64,
        chain: &str,
        sub_id: u64,
        since: Option<(&str, u64)>,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
    ) -> Event {
        let mut e = sub(chain, sub_id, since, epoch, offset, recovered);
        if let Event::Sub { node: n, .. } = &mut e {
            *n = node;
        }
        e
    }

    fn node_sample(node: u64, life: u64, phase: &str, threads: u64, fds: u64, rss: u64) -> Event {
        let mut e = sample(life, phase, threads, fds, rss);
        if let Event::Sample { node: n, .. } = &mut e {
            *n = node;
        }
        e
    }

    /// The healthy side history as a clean two-node Redis run: both nodes restarted and
    /// sampled, a chain that failed over with `recovered: true`, the Redis fault (a `pub`
    /// refused, a `push unsub`, a resume answered `recovered: false`).
    fn healthy_redis() -> Vec<Event> {
        let mut evs = vec![Event::Run {
            engine: "redis".into(),
            nodes: 2,
        }];
        evs.extend(healthy());
        let side = |mut e: Event| {
            if let Event::Sub { ch, .. } | Event::Deliver { ch, .. } = &mut e {
                *ch = "side".into();
            }
            e
        };
        evs.extend([
            side(sub_on(0, "f", 1, None, "T", 1, None)),
            side(sub_on(1, "f", 2, Some(("T", 1)), "T", 1, Some(true))),
            Event::Redis { t: 1.0, up: false },
            Event::Refused {
                who: "p".into(),
                op: "pub".into(),
                node: 1,
            },
            Event::Unsub {
                chain: "f".into(),
                sub: 2,
                ch: "side".into(),
                code: 6,
            },
            Event::Redis { t: 4.0, up: true },
            Event::Exit {
                node: 1,
                life: 0,
                code: Some(0),
            },
            Event::Exit {
                node: 1,
                life: 1,
                code: Some(0),
            },
            node_sample(1, 0, "baseline", 7, 10, 2000),
            node_sample(1, 0, "load", 30, 25, 5000),
            node_sample(1, 1, "quiet", 7, 10, 5200),
        ]);
        evs
    }

    fn run_redis(mut evs: Vec<Event>) -> Report {
        evs.extend(healthy_redis());
        check(&evs, "")
    }

    #[test]
    fn a_clean_two_node_history_passes() {
        let r = run_redis(vec![
            sub_on(0, "a", 1, None, "E", 0, None),
            sub_on(1, "b", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            deliver("b", 1, "E", 1, "x"),
            ack(Some("k1"), "E", 1, "x", Some(0)),
            // a fails over to node 1 and recovers there.
            sub_on(1, "a", 2, Some(("E", 1)), "E", 2, Some(true)),
            deliver("a", 2, "E", 2, "y"),
            deliver("b", 1, "E", 2, "y"),
            ack(Some("k2"), "E", 2, "y", Some(0)),
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
        assert_eq!(r.stats["resumes on another node: recovered true"], 2);
    }

    #[test]
    fn an_offset_handed_twice_after_a_failover_is_a_duplicate() {
        let r = run_redis(vec![
            sub_on(0, "a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            deliver("a", 1, "E", 2, "y"),
            sub_on(1, "a", 2, Some(("E", 2)), "E", 2, Some(true)),
            deliver("a", 2, "E", 2, "y"),
        ]);
        assert_one(&r, "duplicate");
    }

    #[test]
    fn a_silent_gap_after_a_failover_is_a_gap() {
        let r = run_redis(vec![
            sub_on(0, "a", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            sub_on(1, "a", 2, Some(("E", 1)), "E", 3, Some(true)),
            deliver("a", 2, "E", 3, "z"),
        ]);
        assert_one(&r, "gap");
    }

    #[test]
    fn two_nodes_handing_different_data_at_one_offset_is_a_divergence() {
        let r = run_redis(vec![
            sub_on(0, "a", 1, None, "E", 0, None),
            sub_on(1, "b", 1, None, "E", 0, None),
            deliver("a", 1, "E", 1, "x"),
            deliver("b", 1, "E", 1, "x'"),
        ]);
        assert_one(&r, "divergence");
    }

    #[test]
    fn an_acked_publication_no_node_handed_out_is_lost() {
        let r = run_redis(vec![
            sub_on(0, "a", 1, None, "E", 0, None),
            sub_on(1, "b", 1, None, "E", 0, None),
            ack(None, "E", 1, "x", Some(0)),
        ]);
        assert_one(&r, "lost");
    }

    #[test]
    fn a_publication_missed_with_push_unsub_is_not_lost() {
        let r = run_redis(vec![
            sub_on(0, "a", 1, None, "E", 0, None),
            ack(None, "E", 1, "x", Some(0)),
            Event::Unsub {
                chain: "a".into(),
                sub: 1,
                ch: "c".into(),
                code: 6,
            },
        ]);
        assert!(r.violations.is_empty(), "{}", r.render());
    }

    #[test]
    fn one_key_with_two_offsets_through_two_nodes_is_a_violation() {
        // Keys live in Redis: the lifetime is the redis-server's, whichever node answered.
        let r = run_redis(vec![
            ack(Some("k"), "E", 1, "x", Some(0)),
            ack(Some("k"), "E", 2, "x", Some(0)),
        ]);
        assert_one(&r, "key");
    }

    #[test]
    fn each_node_is_held_to_its_own_memory() {
        // Node 1 ends 10 % over what it held under load; node 0's larger figure must not
        // hide it.
        let mut evs = healthy_redis();
        evs.push(node_sample(0, 1, "load", 30, 25, 50_000));
        evs.push(node_sample(1, 1, "quiet", 7, 10, 5501));
        assert_one(&check(&evs, ""), "resources: node 1: RSS");
    }

    #[test]
    fn threads_above_a_nodes_own_baseline_are_a_leak() {
        let mut evs = healthy_redis();
        evs.push(node_sample(1, 1, "quiet", 8, 10, 5000));
        assert_one(&check(&evs, ""), "resources: node 1");
    }

    #[test]
    fn a_node_without_samples_fails() {
        let evs: Vec<Event> = healthy_redis()
            .into_iter()
            .filter(|e| !matches!(e, Event::Sample { node: 1, .. }))
            .collect();
        assert_one(&check(&evs, ""), "resources");
    }

    #[test]
    fn a_node_never_restarted_fails_coverage() {
        let evs: Vec<Event> = healthy_redis()
            .into_iter()
            .filter(|e| !matches!(e, Event::Exit { node: 1, life: 0, .. }))
            .collect();
        assert_one(&check(&evs, ""), "coverage: node 1");
    }

    #[test]
    fn a_redis_run_without_failover_or_redis_fault_fails_coverage() {
        let evs: Vec<Event> = healthy_redis()
            .into_iter()
            .filter(|e| {
                !matches!(
                    e,
                    Event::Sub { node: 1, .. } | Event::Redis { .. } | Event::Refused { .. }
                )
            })
            .collect();
        let r = check(&evs, "");
        assert_eq!(r.violations.len(), 3, "{}", r.render());
        assert!(
            r.violations.iter().all(|v| v.starts_with("coverage")),
            "{}",
            r.render()
        );
    }
}
