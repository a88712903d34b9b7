//! Presence on `/ws` (issue #12): `presence` lists and counts, `join`/`leave` pushes in
//! order with publications, exactly one leave for a connection that dies. Over
//! loopback, each under a watchdog, synchronised on replies and pushes.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::peer::Peer;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn hello(addr: std::net::SocketAddr, user: &str) -> (Peer, String) {
    let mut p = Peer::connect(addr);
    let ok = p.ok(json!({"op":"hello","user":user,"info":{"name":user}}));
    let client = ok["client"].as_str().unwrap().to_owned();
    (p, client)
}

#[test]
fn join_and_leave_reach_watchers_in_order_with_publications() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let (mut watcher, _) = hello(addr, "wendy");
        watcher.ok(json!({"op":"sub","ch":"room","joins":true}));
        let (mut ann, ann_id) = hello(addr, "ann");
        ann.ok(json!({"op":"pub","ch":"room","data":"before"}));
        ann.ok(json!({"op":"sub","ch":"room"}));
        ann.ok(json!({"op":"pub","ch":"room","data":"inside"}));
        ann.ok(json!({"op":"unsub","ch":"room"}));
        ann.ok(json!({"op":"pub","ch":"room","data":"after"}));
        let seen: Vec<String> = (0..5)
            .map(|_| {
                let p = watcher.push();
                match p["push"].as_str().unwrap() {
                    "pub" => format!("pub {}", p["data"].as_str().unwrap()),
                    kind => {
                        assert_eq!(p["ch"], "room");
                        assert_eq!(p["client"], ann_id.as_str());
                        assert_eq!(p["user"], "ann");
                        assert_eq!(p["info"], json!({"name":"ann"}));
                        format!("{kind} {}", p["user"].as_str().unwrap())
                    }
                }
            })
            .collect();
        assert_eq!(
            seen,
            ["pub before", "join ann", "pub inside", "leave ann", "pub after"]
        );
    });
}

#[test]
fn a_subscriber_without_joins_gets_no_join_or_leave() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let mut quiet = Peer::connect(addr);
        quiet.ok(json!({"op":"sub","ch":"room"}));
        let (mut ann, _) = hello(addr, "ann");
        ann.ok(json!({"op":"sub","ch":"room"}));
        ann.ok(json!({"op":"unsub","ch":"room"}));
        ann.ok(json!({"op":"pub","ch":"room","data":1}));
        assert_eq!(quiet.push()["push"], "pub", "the publication is the first push");
    });
}

#[test]
fn a_connection_killed_without_a_close_produces_exactly_one_leave() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let (mut watcher, _) = hello(addr, "wendy");
        watcher.ok(json!({"op":"sub","ch":"room","joins":true}));
        let (mut victim, victim_id) = hello(addr, "vic");
        victim.ok(json!({"op":"sub","ch":"room"}));
        victim.ok(json!({"op":"sub","ch":"other"}));
        assert_eq!(watcher.push()["push"], "join");
        victim.cut();
        let leave = watcher.push();
        assert_eq!(leave["push"], "leave", "{leave}");
        assert_eq!(leave["client"], victim_id.as_str());
        // Nothing more about the victim: the next push is a later publication.
        let mut publisher = Peer::connect(addr);
        publisher.ok(json!({"op":"pub","ch":"room","data":"next"}));
        let next = watcher.push();
        assert_eq!(
            (next["push"].as_str(), next["data"].as_str()),
            (Some("pub"), Some("next"))
        );
        let list = watcher.ok(json!({"op":"presence","ch":"room"}));
        assert_eq!(list["num_clients"], 1, "{list}");
    });
}

#[test]
fn a_silent_dead_connection_leaves_within_the_idle_timeout() {
    watchdog(LIMIT, || {
        let mut c = test_config();
        c.idle_timeout = Duration::from_millis(800);
        c.ping_interval = Duration::from_millis(200);
        let server = start(c);
        let addr = server.local_addr();
        let (mut watcher, _) = hello(addr, "wendy");
        watcher.ok(json!({"op":"sub","ch":"room","joins":true}));
        // Subscribes, then never reads or sends again: no pongs, no Close, socket open.
        let (mut silent, _) = hello(addr, "sid");
        silent.ok(json!({"op":"sub","ch":"room"}));
        let started = Instant::now();
        // The watcher reads (and answers pings) meanwhile.
        assert_eq!(watcher.push()["push"], "join");
        let leave = watcher.push();
        assert_eq!(leave["push"], "leave", "{leave}");
        assert_eq!(leave["user"], "sid");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(5), "leave after {waited:?}");
        drop(silent);
    });
}

#[test]
fn two_connections_of_one_user_count_as_two_clients_and_one_user() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let (mut tab1, id1) = hello(addr, "ann");
        let (mut tab2, id2) = hello(addr, "ann");
        let (mut bob, _) = hello(addr, "bob");
        for p in [&mut tab1, &mut tab2, &mut bob] {
            p.ok(json!({"op":"sub","ch":"room"}));
        }
        let list = bob.ok(json!({"op":"presence","ch":"room"}));
        assert_eq!(list["num_clients"], 3, "{list}");
        assert_eq!(list["num_users"], 2, "{list}");
        let mut clients: Vec<&str> = list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["user"] == "ann")
            .map(|m| m["client"].as_str().unwrap())
            .collect();
        clients.sort();
        let mut want = vec![id1.as_str(), id2.as_str()];
        want.sort();
        assert_eq!(clients, want);
        tab1.ok(json!({"op":"unsub","ch":"room"}));
        let list = bob.ok(json!({"op":"presence","ch":"room"}));
        assert_eq!(
            (list["num_clients"].as_u64(), list["num_users"].as_u64()),
            (Some(2), Some(2))
        );
    });
}

#[test]
fn presence_is_for_subscribers_only() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut p = Peer::connect(server.local_addr());
        assert_eq!(p.err_code(json!({"op":"presence","ch":"room"})), 3);
        p.ok(json!({"op":"sub","ch":"room"}));
        assert_eq!(p.ok(json!({"op":"presence","ch":"room"}))["num_clients"], 1);
    });
}

#[test]
fn the_list_is_capped_by_max_presence_list_but_the_counts_are_exact() {
    watchdog(LIMIT, || {
        let mut c = test_config();
        c.max_presence_list = 2;
        let server = start(c);
        let addr = server.local_addr();
        let mut peers: Vec<Peer> = (0..4).map(|i| hello(addr, &format!("u{i}")).0).collect();
        for p in &mut peers {
            p.ok(json!({"op":"sub","ch":"room"}));
        }
        let list = peers[0].ok(json!({"op":"presence","ch":"room"}));
        assert_eq!(list["clients"].as_array().unwrap().len(), 2, "{list}");
        assert_eq!(
            (list["num_clients"].as_u64(), list["num_users"].as_u64()),
            (Some(4), Some(4))
        );
    });
}
