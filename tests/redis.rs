//! The Redis engine (issue #13) against a real `redis-server` started per test
//! (`support/redis.rs`): several wshub nodes share channels, offsets, history and
//! idempotency keys; node loss, Redis loss and a Redis restarted empty are each
//! visible to clients and lose nothing silently. Two nodes are two `Server`s in this
//! process, or a `wshub serve` child where a signal is the subject. Each test runs under
//! a watchdog and synchronises on replies, pushes and `/healthz`, not on sleeps.
#![cfg(feature = "redis")]

#[path = "support/client.rs"]
mod client_support;
#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis_support::RedisServer;
use serde_json::{Value, json};
use support::peer::Peer;
use support::*;
use wshub::client::pubsub::{ChannelClient, ChannelConfig, ChannelEvent};
use wshub::{Engine, PublishError};

const LIMIT: Duration = Duration::from_secs(60);

/// A node on `url`.
fn node(url: &str) -> Server {
    let mut c = test_config();
    c.engine = Engine::Redis(url.to_owned());
    start(c)
}

/// Subscribes; returns the reply's `ok`.
fn subscribe(peer: &mut Peer, ch: &str, since: Option<Value>) -> Value {
    let mut cmd = json!({"op": "sub", "ch": ch});
    if let Some(s) = since {
        cmd["since"] = s;
    }
    peer.ok(cmd)
}

fn publish(peer: &mut Peer, ch: &str, data: Value) -> Value {
    peer.cmd(json!({"op": "pub", "ch": ch, "data": data}))
}

/// The offsets of the next `n` publication pushes.
fn offsets(peer: &mut Peer, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let p = peer.push();
            assert_eq!(p["push"], "pub", "{p}");
            p["offset"].as_u64().unwrap()
        })
        .collect()
}

/// Nothing more has been pushed: a command's reply comes with no push before it.
fn assert_no_push(peer: &mut Peer) {
    peer.cmd(json!({"op": "history", "ch": "-", "limit": 0}));
    assert!(peer.pushes.is_empty(), "unexpected pushes: {:?}", peer.pushes);
}

fn healthz(addr: SocketAddr) -> String {
    raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// `wshub_engine_errors_total` from `/metrics`.
fn engine_errors(addr: SocketAddr) -> u64 {
    metric(addr, "wshub_engine_errors_total") as u64
}

/// Polls `/healthz` (bounded) until its status line contains `want`.
fn wait_health(addr: SocketAddr, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = healthz(addr);
        if status_line(&r).contains(want) {
            return r;
        }
        assert!(Instant::now() < deadline, "/healthz never said {want}: {r}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_publication_on_one_node_reaches_subscribers_on_both_with_the_same_offsets() {
    let Some(redis) = RedisServer::start_or_skip("same_offsets") else {
        return;
    };
    watchdog(LIMIT, move || {
        let (a, b) = (node(&redis.url()), node(&redis.url()));
        let mut on_a = Peer::connect(a.local_addr());
        let mut on_b = Peer::connect(b.local_addr());
        let sa = subscribe(&mut on_a, "room", None);
        let sb = subscribe(&mut on_b, "room", None);
        assert_eq!(
            sa["epoch"], sb["epoch"],
            "one epoch for the channel on every node"
        );
        let mut publisher = Peer::connect(a.local_addr());
        for n in 1..=5u64 {
            let ack = publish(&mut publisher, "room", json!({"n": n}));
            assert_eq!(ack["ok"]["offset"], n, "{ack}");
            assert_eq!(ack["ok"]["epoch"], sa["epoch"]);
        }
        assert_eq!(offsets(&mut on_a, 5), vec![1, 2, 3, 4, 5]);
        assert_eq!(offsets(&mut on_b, 5), vec![1, 2, 3, 4, 5]);
        assert_no_push(&mut on_a);
        assert_no_push(&mut on_b);
        drop(redis);
    });
}

#[test]
fn two_publishers_on_two_nodes_produce_one_order_seen_everywhere() {
    let Some(redis) = RedisServer::start_or_skip("one_order") else {
        return;
    };
    watchdog(LIMIT, move || {
        let (a, b) = (node(&redis.url()), node(&redis.url()));
        let addrs = [a.local_addr(), a.local_addr(), b.local_addr(), b.local_addr()];
        let mut subs: Vec<Peer> = addrs.iter().map(|&addr| Peer::connect(addr)).collect();
        for s in &mut subs {
            subscribe(s, "race", None);
        }
        const EACH: u64 = 50;
        let publishers: Vec<_> = [a.local_addr(), b.local_addr()]
            .into_iter()
            .enumerate()
            .map(|(p, addr)| {
                thread::spawn(move || {
                    let mut peer = Peer::connect(addr);
                    for n in 0..EACH {
                        let ack = publish(&mut peer, "race", json!({"p": p, "n": n}));
                        assert!(ack.get("ok").is_some(), "{ack}");
                    }
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        let mut seen = Vec::new();
        for s in &mut subs {
            let pushes: Vec<Value> = (0..2 * EACH).map(|_| s.push()).collect();
            let offsets: Vec<u64> = pushes.iter().map(|p| p["offset"].as_u64().unwrap()).collect();
            assert_eq!(
                offsets,
                (1..=2 * EACH).collect::<Vec<_>>(),
                "no gap, no duplicate"
            );
            for p in 0..2 {
                let ns: Vec<u64> = pushes
                    .iter()
                    .filter(|x| x["data"]["p"] == p)
                    .map(|x| x["data"]["n"].as_u64().unwrap())
                    .collect();
                assert_eq!(
                    ns,
                    (0..EACH).collect::<Vec<_>>(),
                    "each publisher's order is kept"
                );
            }
            seen.push(pushes.iter().map(|p| p["data"].clone()).collect::<Vec<_>>());
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "every subscriber saw one order"
        );
        drop(redis);
    });
}

#[test]
fn history_and_idempotency_keys_are_shared_by_every_node() {
    let Some(redis) = RedisServer::start_or_skip("shared_history") else {
        return;
    };
    watchdog(LIMIT, move || {
        let (a, b) = (node(&redis.url()), node(&redis.url()));
        let mut on_a = Peer::connect(a.local_addr());
        let mut on_b = Peer::connect(b.local_addr());
        let first = on_a.cmd(json!({"op": "pub", "ch": "h", "data": 1, "key": "k1"}));
        let again = on_b.cmd(json!({"op": "pub", "ch": "h", "data": 1, "key": "k1"}));
        assert_eq!(first["ok"], again["ok"], "a repeated key publishes nothing new");
        publish(&mut on_a, "h", json!(2));
        publish(&mut on_a, "h", json!(3));
        let h = on_b.cmd(json!({"op": "history", "ch": "h", "limit": 2}));
        let pubs: Vec<_> = h["ok"]["pubs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["data"].clone())
            .collect();
        assert_eq!(pubs, vec![json!(2), json!(3)], "{h}");
        assert_eq!(h["ok"]["offset"], 3);
        let api = b.hub().publish("h", json!(4)).unwrap();
        assert_eq!(api.offset, 4);
        assert_eq!(json!(api.epoch), first["ok"]["epoch"]);
        drop(redis);
    });
}

/// A child process killed (by PID) when dropped, so a failing test leaves none behind.
struct Reaped(Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `wshub serve` child on a free port, using `url`, with `extra` flags; ready once
/// `/healthz` is 200.
fn child_node(url: &str, extra: &[&str]) -> (Reaped, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_wshub"))
            .args([
                "serve",
                "--addr",
                &addr.to_string(),
                "--engine",
                url,
                "--drain-timeout",
                "2s",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wshub serve starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::net::TcpStream::connect(addr).is_ok_and(|_| status_line(&healthz(addr)).contains("200")) {
        assert!(Instant::now() < deadline, "the child node never became healthy");
        thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// A subscriber on a child node that is stopped with `signal` moves to another node with
/// `since` and gets every publication it missed, once.
fn a_stopped_node_s_subscriber_recovers_on_another(signal: &'static str) {
    let Some(redis) = RedisServer::start_or_skip(signal) else {
        return;
    };
    watchdog(LIMIT, move || {
        let (mut child, addr_a) = child_node(&redis.url(), &[]);
        let b = node(&redis.url());
        let mut sub = Peer::connect(addr_a);
        let snap = subscribe(&mut sub, "feed", None);
        for n in 1..=3 {
            b.hub().publish("feed", json!(n)).unwrap();
        }
        assert_eq!(offsets(&mut sub, 3), vec![1, 2, 3]);
        let since = json!({"epoch": snap["epoch"], "offset": 3});
        if signal == "KILL" {
            child.kill().unwrap();
        } else {
            let ok = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        child.wait().unwrap();
        // Published while the subscriber has no node.
        for n in 4..=7 {
            b.hub().publish("feed", json!(n)).unwrap();
        }
        drop(sub);
        let mut moved = Peer::connect(b.local_addr());
        let r = subscribe(&mut moved, "feed", Some(since));
        assert_eq!(r["recovered"], true, "{r}");
        let recovered: Vec<u64> = r["pubs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(recovered, vec![4, 5, 6, 7]);
        b.hub().publish("feed", json!(8)).unwrap();
        assert_eq!(offsets(&mut moved, 1), vec![8]);
        assert_no_push(&mut moved);
        drop(redis);
    });
}

#[test]
fn a_subscriber_whose_node_gets_sigterm_recovers_everything_on_another_node() {
    a_stopped_node_s_subscriber_recovers_on_another("TERM");
}

#[test]
fn a_subscriber_whose_node_gets_sigkill_recovers_everything_on_another_node() {
    a_stopped_node_s_subscriber_recovers_on_another("KILL");
}

#[test]
fn redis_down_is_error_6_and_503_and_redis_back_empty_is_a_new_epoch() {
    let Some(mut redis) = RedisServer::start_or_skip("redis_down") else {
        return;
    };
    watchdog(LIMIT, move || {
        let a = node(&redis.url());
        wait_health(a.local_addr(), "200");
        assert_eq!(engine_errors(a.local_addr()), 0, "no failure yet");
        let mut sub = Peer::connect(a.local_addr());
        let snap = subscribe(&mut sub, "c", None);
        a.hub().publish("c", json!(1)).unwrap();
        a.hub().publish("c", json!(2)).unwrap();
        assert_eq!(offsets(&mut sub, 2), vec![1, 2]);

        redis.stop();
        // The subscriber is told: its subscription ends with code 6.
        let told = sub.push();
        assert_eq!(told["push"], "unsub", "{told}");
        assert_eq!(told["ch"], "c");
        assert_eq!(told["code"], 6);
        let health = wait_health(a.local_addr(), "503");
        assert!(health.contains("engine down"), "{health}");
        let errors = engine_errors(a.local_addr());
        assert!(errors > 0, "the outage is counted in /metrics: {errors}");
        let mut publisher = Peer::connect(a.local_addr());
        let err = publish(&mut publisher, "c", json!(3));
        assert_eq!(
            err["err"]["code"], 6,
            "nothing is acked while Redis is down: {err}"
        );
        match a.hub().publish("c", json!(3)) {
            Err(PublishError::Rejected(e)) => assert_eq!(u16::from(e.code), 6),
            other => panic!("expected error 6, got {other:?}"),
        }
        let resub = sub.cmd(json!({"op": "sub", "ch": "c", "since": {"epoch": snap["epoch"], "offset": 2}}));
        assert_eq!(resub["err"]["code"], 6, "{resub}");

        redis.restart();
        wait_health(a.local_addr(), "200");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ack = loop {
            let r = publisher.cmd(json!({"op": "pub", "ch": "c", "data": 3, "key": "three"}));
            if r.get("ok").is_some() {
                break r;
            }
            assert_eq!(r["err"]["code"], 6, "{r}");
            assert!(Instant::now() < deadline, "publishing never resumed");
            thread::sleep(Duration::from_millis(50));
        };
        assert_ne!(
            ack["ok"]["epoch"], snap["epoch"],
            "Redis restarted empty: a new epoch"
        );
        assert_eq!(ack["ok"]["offset"], 1);
        let r = subscribe(&mut sub, "c", Some(json!({"epoch": snap["epoch"], "offset": 2})));
        assert_eq!(r["recovered"], false, "{r}");
        assert_eq!(r["epoch"], ack["ok"]["epoch"]);
        publish(&mut publisher, "c", json!(4));
        assert_eq!(offsets(&mut sub, 1), vec![2]);
    });
}

#[test]
fn a_gap_in_what_redis_delivers_ends_the_subscription_with_code_6() {
    let Some(redis) = RedisServer::start_or_skip("gap") else {
        return;
    };
    watchdog(LIMIT, move || {
        let a = node(&redis.url());
        let mut sub = Peer::connect(a.local_addr());
        let snap = subscribe(&mut sub, "g", None);
        a.hub().publish("g", json!(1)).unwrap();
        assert_eq!(offsets(&mut sub, 1), vec![1]);
        // Offset 5 arrives where 2 was due: this node missed something.
        let epoch = snap["epoch"].as_str().unwrap();
        let fake = format!("{epoch} 5 {{\"ch\":\"g\",\"offset\":5,\"data\":0}}");
        redis.command(&["PUBLISH", "wshub:live:g", &fake]).unwrap();
        let told = sub.push();
        assert_eq!(
            (told["push"].as_str(), told["code"].as_u64()),
            (Some("unsub"), Some(6)),
            "{told}"
        );
        let r = subscribe(&mut sub, "g", Some(json!({"epoch": epoch, "offset": 1})));
        assert_eq!(r["recovered"], true, "{r}");
        a.hub().publish("g", json!(2)).unwrap();
        assert_eq!(offsets(&mut sub, 1), vec![2]);
        drop(redis);
    });
}

/// A node on `url` whose presence entries expire `ttl` after their last refresh.
fn node_with_presence_ttl(url: &str, ttl: Duration) -> Server {
    let mut c = test_config();
    c.engine = Engine::Redis(url.to_owned());
    c.presence_ttl = ttl;
    c.presence_refresh = ttl / 4;
    start(c)
}

/// A peer that said `hello` as `user` and subscribed to `ch`; returns it and its client id.
fn member(addr: SocketAddr, user: &str, ch: &str, joins: bool) -> (Peer, String) {
    let mut peer = Peer::connect(addr);
    let ok = peer.ok(json!({"op": "hello", "user": user}));
    let id = ok["client"].as_str().unwrap().to_owned();
    peer.ok(json!({"op": "sub", "ch": ch, "joins": joins}));
    (peer, id)
}

/// The next push, which must be a `join` or `leave` (as `kind`) on `ch`.
fn presence_push(peer: &mut Peer, kind: &str, ch: &str) -> Value {
    let p = peer.push();
    assert_eq!(
        (p["push"].as_str(), p["ch"].as_str()),
        (Some(kind), Some(ch)),
        "{p}"
    );
    p
}

#[test]
fn client_ids_are_unique_across_nodes() {
    let Some(redis) = RedisServer::start_or_skip("unique_ids") else {
        return;
    };
    watchdog(LIMIT, move || {
        let (a, b) = (node(&redis.url()), node(&redis.url()));
        // The first connection of each node: the same number on each.
        let (_on_a, id_a) = member(a.local_addr(), "ann", "ids", false);
        let (mut on_b, id_b) = member(b.local_addr(), "ann", "ids", false);
        assert_ne!(id_a, id_b, "two nodes gave one client id");
        // `hello` must come first with this engine too: after a `sub` it is error 2.
        let mut late = Peer::connect(a.local_addr());
        subscribe(&mut late, "ids", None);
        assert_eq!(late.err_code(json!({"op": "hello", "user": "eve"})), 2);
        // `from.client` of a publication is the same id as `hello` and presence give.
        publish(&mut on_b, "ids", json!(1));
        let p = on_b.push();
        assert_eq!(p["from"]["client"], id_b.as_str(), "{p}");
        drop(redis);
    });
}

#[test]
fn presence_lists_and_counts_span_two_nodes() {
    let Some(redis) = RedisServer::start_or_skip("presence_span") else {
        return;
    };
    watchdog(LIMIT, move || {
        let (a, b) = (node(&redis.url()), node(&redis.url()));
        let (mut ann, ann_id) = member(a.local_addr(), "ann", "p", true);
        let (mut bob, bob_id) = member(b.local_addr(), "bob", "p", false);
        let (mut ann2, ann2_id) = member(b.local_addr(), "ann", "p", false);
        // Ann hears both joins: they are in Redis. Her own went before her read on her
        // node's one command connection; that read's answer is in Redis for every node.
        presence_push(&mut ann, "join", "p");
        presence_push(&mut ann, "join", "p");
        let mut want = vec![ann_id.as_str(), bob_id.as_str(), ann2_id.as_str()];
        want.sort_unstable();
        for (peer, who) in [(&mut ann, "from A"), (&mut bob, "from B")] {
            let l = peer.ok(json!({"op": "presence", "ch": "p"}));
            let counts = (l["num_clients"].as_u64(), l["num_users"].as_u64());
            assert_eq!(counts, (Some(3), Some(2)), "{who}: {l}");
            let mut listed: Vec<&str> = l["clients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["client"].as_str().unwrap())
                .collect();
            listed.sort_unstable();
            assert_eq!(listed, want, "{who}");
        }
        bob.ok(json!({"op": "unsub", "ch": "p"}));
        assert_eq!(presence_push(&mut ann, "leave", "p")["client"], bob_id.as_str());
        for (peer, who) in [(&mut ann, "from A"), (&mut ann2, "from B")] {
            let l = peer.ok(json!({"op": "presence", "ch": "p"}));
            let counts = (l["num_clients"].as_u64(), l["num_users"].as_u64());
            assert_eq!(counts, (Some(2), Some(1)), "{who}: {l}");
        }
        // Not subscribed: error 3, as with the memory engine.
        assert_eq!(bob.err_code(json!({"op": "presence", "ch": "p"})), 3);
        drop(redis);
    });
}

#[test]
fn joins_and_leaves_reach_watchers_on_the_other_node_in_order_with_publications() {
    let Some(redis) = RedisServer::start_or_skip("presence_pushes") else {
        return;
    };
    watchdog(LIMIT, move || {
        let (a, b) = (node(&redis.url()), node(&redis.url()));
        let (mut watcher, _) = member(a.local_addr(), "wendy", "room", true);
        let (mut bob, bob_id) = member(b.local_addr(), "bob", "room", false);
        // Bob publishes right after his sub reply: the watcher hears of him first.
        publish(&mut bob, "room", json!("hi"));
        let join = presence_push(&mut watcher, "join", "room");
        assert_eq!(
            (join["client"].as_str(), join["user"].as_str()),
            (Some(bob_id.as_str()), Some("bob")),
            "{join}"
        );
        assert_eq!(watcher.push()["push"], "pub");
        bob.ok(json!({"op": "unsub", "ch": "room"}));
        let leave = presence_push(&mut watcher, "leave", "room");
        assert_eq!(leave["client"], bob_id.as_str(), "{leave}");
        // A connection that dies without a Close leaves too, once.
        let (carol, carol_id) = member(b.local_addr(), "carol", "room", false);
        assert_eq!(
            presence_push(&mut watcher, "join", "room")["client"],
            carol_id.as_str()
        );
        carol.cut();
        let leave = presence_push(&mut watcher, "leave", "room");
        assert_eq!(leave["client"], carol_id.as_str(), "{leave}");
        assert_no_push(&mut watcher);
        drop(redis);
    });
}

#[test]
fn a_node_stopped_with_sigterm_sends_its_members_leaves_at_once() {
    let Some(redis) = RedisServer::start_or_skip("presence_sigterm") else {
        return;
    };
    watchdog(LIMIT, move || {
        // A TTL far longer than the test: only the drain's leaves can end the entry.
        let (child, addr_b) = child_node(&redis.url(), &["--presence-ttl", "60s"]);
        let a = node(&redis.url());
        let (mut watcher, _) = member(a.local_addr(), "wendy", "t", true);
        let (_leaving, leaving_id) = member(addr_b, "lee", "t", false);
        assert_eq!(
            presence_push(&mut watcher, "join", "t")["client"],
            leaving_id.as_str()
        );
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let leave = presence_push(&mut watcher, "leave", "t");
        assert_eq!(leave["client"], leaving_id.as_str(), "{leave}");
        let l = watcher.ok(json!({"op": "presence", "ch": "t"}));
        assert_eq!(l["num_clients"], 1, "{l}");
        drop(child);
        drop(redis);
    });
}

#[test]
fn a_node_killed_with_sigkill_disappears_from_presence_within_the_expiry() {
    let Some(redis) = RedisServer::start_or_skip("presence_sigkill") else {
        return;
    };
    watchdog(LIMIT, move || {
        const TTL: Duration = Duration::from_secs(2);
        let (mut child, addr_b) = child_node(
            &redis.url(),
            &["--presence-ttl", "2s", "--presence-refresh", "500ms"],
        );
        let a = node_with_presence_ttl(&redis.url(), TTL);
        let (mut watcher, watcher_id) = member(a.local_addr(), "wendy", "k", true);
        let (_doomed, doomed_id) = member(addr_b, "dan", "k", false);
        assert_eq!(
            presence_push(&mut watcher, "join", "k")["client"],
            doomed_id.as_str()
        );
        let l = watcher.ok(json!({"op": "presence", "ch": "k"}));
        assert_eq!(l["num_clients"], 2, "{l}");
        // Past the expiry, the live node's refreshes keep its own member listed.
        std::thread::sleep(TTL + TTL / 2);
        let l = watcher.ok(json!({"op": "presence", "ch": "k"}));
        assert_eq!(l["num_clients"], 2, "refreshed entries outlive the TTL: {l}");

        child.kill().unwrap();
        let killed = Instant::now();
        child.wait().unwrap();
        // The dead node's member is dropped within the TTL of its last refresh, and
        // the watcher hears its leave (from whichever node swept it first).
        let gone = loop {
            let l = watcher.ok(json!({"op": "presence", "ch": "k"}));
            if l["num_clients"] == 1 {
                break l;
            }
            assert!(
                killed.elapsed() < TTL * 2,
                "still listed {:?} after the kill: {l}",
                killed.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(gone["clients"][0]["client"], watcher_id.as_str(), "{gone}");
        assert!(
            killed.elapsed() <= TTL + Duration::from_secs(1),
            "took {:?}",
            killed.elapsed()
        );
        let leave = presence_push(&mut watcher, "leave", "k");
        assert_eq!(leave["client"], doomed_id.as_str(), "{leave}");
        drop(redis);
    });
}

#[test]
fn subscribing_while_publications_stream_joins_snapshot_and_live_with_no_gap_or_duplicate() {
    let Some(redis) = RedisServer::start_or_skip("join_under_load") else {
        return;
    };
    watchdog(LIMIT, move || {
        let (a, b) = (node(&redis.url()), node(&redis.url()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hub = a.hub();
        let publishing = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    hub.publish("stream", json!(n)).unwrap();
                    n += 1;
                }
            })
        };
        // Each subscriber joins mid-stream, some with `since` a little behind the top.
        let mut kept = Vec::new();
        for i in 0..12u64 {
            let mut s = Peer::connect(b.local_addr());
            let snap = if i % 2 == 0 {
                subscribe(&mut s, "stream", None)
            } else {
                let top = a.hub().publish("stream", json!("mark")).unwrap();
                let since = json!({"epoch": top.epoch, "offset": top.offset.saturating_sub(3)});
                let r = subscribe(&mut s, "stream", Some(since));
                assert_eq!(r["recovered"], true, "{r}");
                r
            };
            let mut next = snap["offset"].as_u64().unwrap() + 1;
            let first = snap["pubs"]
                .as_array()
                .unwrap()
                .first()
                .map(|p| p["offset"].as_u64().unwrap());
            if let Some(f) = first {
                next = f;
                for p in snap["pubs"].as_array().unwrap() {
                    assert_eq!(p["offset"].as_u64().unwrap(), next, "recovered in order");
                    next += 1;
                }
            }
            assert_eq!(
                offsets(&mut s, 20),
                (next..next + 20).collect::<Vec<_>>(),
                "subscriber {i}"
            );
            kept.push(s);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        publishing.join().unwrap();
        drop(redis);
    });
}

#[test]
fn an_engine_that_is_neither_memory_nor_redis_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--engine", "mysql://127.0.0.1/0"])
        .output()
        .expect("wshub runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis://HOST:PORT/DB"), "{err}");
}

#[test]
fn the_rust_client_retries_a_subscription_refused_while_redis_is_down_until_redis_is_back() {
    let Some(mut redis) = RedisServer::start_or_skip("client_retry") else {
        return;
    };
    watchdog(LIMIT, move || {
        let a = node(&redis.url());
        let mut config = ChannelConfig::default();
        config.reconnect = client_support::fast_reconnect();
        let client = ChannelClient::start(&format!("ws://{}/ws", a.local_addr()), config).unwrap();
        let events = client.events().clone();
        let wait =
            |what: &str, want: &dyn Fn(&ChannelEvent) -> bool| client_support::wait_for(&events, what, want);
        client.subscribe("r").unwrap();
        wait("subscribed", &|e| matches!(e, ChannelEvent::Subscribed { .. }));
        a.hub().publish("r", json!(1)).unwrap();
        wait("publication 1", &|e| {
            matches!(e, ChannelEvent::Publication { .. })
        });

        redis.stop();
        // `push unsub` code 6, the resubscribe refused with error 6, again and again:
        // the subscription is kept and retried.
        for n in 0..2 {
            let e = wait(&format!("retry {n}"), &|e| {
                matches!(e, ChannelEvent::SubscribeRetrying { .. })
            });
            let ChannelEvent::SubscribeRetrying { ch, error, .. } = e else {
                unreachable!()
            };
            assert_eq!(ch, "r");
            assert!(!error.is_fatal(), "{error}");
        }
        redis.restart();
        // Redis came back empty: subscribed again, in a new epoch (not recovered).
        let e = wait("resubscribed", &|e| {
            matches!(
                e,
                ChannelEvent::Subscribed { .. } | ChannelEvent::SubscribeFailed { .. }
            )
        });
        assert!(
            matches!(
                e,
                ChannelEvent::Subscribed {
                    recovered: Some(false),
                    ..
                }
            ),
            "{e:?}"
        );
        a.hub().publish("r", json!(2)).unwrap();
        let e = wait("publication 2", &|e| {
            matches!(e, ChannelEvent::Publication { .. })
        });
        let ChannelEvent::Publication { publication, .. } = e else {
            unreachable!()
        };
        assert_eq!(publication.data, json!(2));
        client.close();
    });
}

#[test]
fn wshub_connect_channel_mode_shows_the_retries_while_redis_is_down() {
    let Some(mut redis) = RedisServer::start_or_skip("cli_retry") else {
        return;
    };
    watchdog(LIMIT, move || {
        use std::io::{BufRead, BufReader};
        let a = node(&redis.url());
        let mut child = Reaped(
            Command::new(env!("CARGO_BIN_EXE_wshub"))
                .args([
                    "connect",
                    &format!("ws://{}/ws", a.local_addr()),
                    "--channel",
                    "r",
                    "--listen",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("wshub connect starts"),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let mut wait_line = |want: &str| {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) if line.contains(want) => return line,
                    Ok(line) => seen.push(line),
                    Err(_) => panic!("no line with {want:?} within 20 s; saw {seen:#?}"),
                }
            }
        };
        wait_line("subscribed to r");
        redis.stop();
        let retry = wait_line("cannot subscribe to r yet");
        assert!(
            retry.contains("error 6") && retry.contains("retrying in"),
            "{retry}"
        );
        redis.restart();
        wait_line("resubscribed to r");
    });
}
