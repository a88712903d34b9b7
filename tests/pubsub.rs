//! Channels on `/ws` (protocol v1), specified over real loopback sockets with a plain
//! tungstenite client: ordering, recovery after a cut, idempotent publishing, the answer
//! to every kind of bad input, and when an ack may go out. Each test runs under a
//! watchdog and synchronises on replies and pushes, never on sleeps (except where time
//! itself is the subject: history expiry).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::peer::Peer;
use support::*;
use tungstenite::client::IntoClientRequest;

const LIMIT: Duration = Duration::from_secs(60);

fn server_with(f: impl FnOnce(&mut Config)) -> Server {
    let mut c = test_config();
    f(&mut c);
    start(c)
}

fn offset(v: &Value) -> u64 {
    v["offset"].as_u64().unwrap_or_else(|| panic!("no offset in {v}"))
}

fn offsets(pubs: &Value) -> Vec<u64> {
    pubs.as_array().expect("pubs array").iter().map(offset).collect()
}

fn code(reply: &Value) -> u64 {
    reply["err"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
}

#[test]
fn three_subscribers_see_the_same_offsets_in_the_same_order_while_two_publishers_publish() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let addr = server.local_addr();
        const EACH: u64 = 200;
        let mut subs: Vec<Peer> = (0..3).map(|_| Peer::connect(addr)).collect();
        let tops: Vec<u64> = subs
            .iter_mut()
            .map(|s| offset(&s.ok(json!({"op":"sub","ch":"room"}))))
            .collect();
        assert!(
            tops.iter().all(|t| *t == 0),
            "a new channel starts at 0: {tops:?}"
        );
        let publishers: Vec<_> = ["p1", "p2"]
            .into_iter()
            .map(|name| {
                thread::spawn(move || {
                    let mut p = Peer::connect(addr);
                    // Pipelined: every pub sent, then every ack read.
                    let ids: Vec<u64> = (0..EACH)
                        .map(|n| p.send_cmd(json!({"op":"pub","ch":"room","data":{"by":name,"n":n}})))
                        .collect();
                    let acked: Vec<u64> = ids.into_iter().map(|id| offset(&p.reply(id)["ok"])).collect();
                    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{name}'s acks go up");
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        let mut seen: Vec<Vec<(u64, Value)>> = Vec::new();
        for s in &mut subs {
            let got: Vec<(u64, Value)> = (0..2 * EACH)
                .map(|_| {
                    let p = s.push();
                    assert_eq!(p["push"], "pub");
                    assert_eq!(p["ch"], "room");
                    assert!(
                        p["from"]["client"].is_string(),
                        "a client's publication names it: {p}"
                    );
                    (offset(&p), p["data"].clone())
                })
                .collect();
            let offs: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
            assert_eq!(offs, (1..=2 * EACH).collect::<Vec<_>>(), "no gap, no duplicate");
            for name in ["p1", "p2"] {
                let ns: Vec<u64> = got
                    .iter()
                    .filter(|(_, d)| d["by"] == name)
                    .map(|(_, d)| d["n"].as_u64().unwrap())
                    .collect();
                assert_eq!(ns, (0..EACH).collect::<Vec<_>>(), "{name}'s order is kept");
            }
            seen.push(got);
        }
        assert_eq!(seen[0], seen[1], "one order for every subscriber");
        assert_eq!(seen[1], seen[2], "one order for every subscriber");
        drop(subs);
        server.shutdown();
    });
}

#[test]
fn a_subscriber_cut_without_close_recovers_every_missed_publication_once_then_the_live_ones() {
    watchdog(LIMIT, || {
        let server = server_with(|c| c.history_size = 10_000);
        let addr = server.local_addr();
        let mut sub = Peer::connect(addr);
        let snap = sub.ok(json!({"op":"sub","ch":"feed"}));
        let epoch = snap["epoch"].as_str().unwrap().to_owned();
        // Publishes until told to stop; `acked` is the last offset acknowledged.
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (acked, stop) = (acked.clone(), stop.clone());
            thread::spawn(move || {
                let mut p = Peer::connect(addr);
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let pos = p.ok(json!({"op":"pub","ch":"feed","data":n}));
                    assert_eq!(offset(&pos), n);
                    acked.store(n, Ordering::Release);
                    thread::sleep(Duration::from_micros(300));
                }
                n
            })
        };
        // Read some live pushes, then lose the connection mid-stream (no Close).
        let mut last = 0;
        for _ in 0..50 {
            let p = sub.push();
            assert_eq!(offset(&p), last + 1);
            last = offset(&p);
        }
        sub.cut();
        // Make sure publications were missed while away.
        while acked.load(Ordering::Acquire) < last + 30 {
            thread::sleep(Duration::from_millis(1));
        }
        let mut back = Peer::connect(addr);
        let reply = back.ok(json!({"op":"sub","ch":"feed","since":{"epoch":epoch,"offset":last}}));
        assert_eq!(reply["recovered"], true, "{reply}");
        assert_eq!(reply["epoch"], epoch.as_str());
        let recovered = offsets(&reply["pubs"]);
        assert!(
            recovered.len() >= 30,
            "the missed ones are recovered: {recovered:?}"
        );
        assert_eq!(
            recovered,
            (last + 1..=offset(&reply)).collect::<Vec<_>>(),
            "exactly the missed ones"
        );
        for p in reply["pubs"].as_array().unwrap() {
            assert_eq!(p["data"], json!(offset(p)), "each with its data");
            assert!(p.get("push").is_none(), "a pubs entry has no push field: {p}");
        }
        last = offset(&reply);
        // Live pushes continue from the recovered top while publishing goes on.
        for _ in 0..50 {
            let p = back.push();
            assert_eq!(offset(&p), last + 1, "the live pushes join the recovered ones");
            last = offset(&p);
        }
        stop.store(true, Ordering::Release);
        let total = publisher.join().unwrap();
        while last < total {
            let p = back.push();
            assert_eq!(offset(&p), last + 1);
            last = offset(&p);
        }
        drop(back);
        server.shutdown();
    });
}

#[test]
fn more_missed_than_the_history_size_is_not_recovered() {
    watchdog(LIMIT, || {
        let server = server_with(|c| c.history_size = 5);
        let addr = server.local_addr();
        let mut sub = Peer::connect(addr);
        let snap = sub.ok(json!({"op":"sub","ch":"c"}));
        // Keep the channel alive with a second subscriber, subscribed before the first is
        // cut (a channel with neither subscribers nor history ends, and a new one gets a
        // new epoch): only history is in question here.
        let mut p = Peer::connect(addr);
        p.ok(json!({"op":"sub","ch":"c"}));
        sub.cut();
        for n in 0..6 {
            p.ok(json!({"op":"pub","ch":"c","data":n}));
        }
        let mut back = Peer::connect(addr);
        let since = json!({"epoch":snap["epoch"],"offset":0});
        let reply = back.ok(json!({"op":"sub","ch":"c","since":since}));
        assert_eq!(reply["recovered"], false);
        assert_eq!(reply["pubs"], json!([]));
        assert_eq!(offset(&reply), 6, "the top, from which pushes follow");
        assert_eq!(reply["epoch"], snap["epoch"]);
        // Five missed would have been recoverable.
        let mut other = Peer::connect(addr);
        let since = json!({"epoch":snap["epoch"],"offset":1});
        let reply = other.ok(json!({"op":"sub","ch":"c","since":since}));
        assert_eq!(reply["recovered"], true);
        assert_eq!(offsets(&reply["pubs"]), vec![2, 3, 4, 5, 6]);
        drop((p, back, other));
        server.shutdown();
    });
}

#[test]
fn a_server_restarted_in_between_answers_recovered_false_with_a_new_epoch() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut p = Peer::connect(server.local_addr());
        p.ok(json!({"op":"sub","ch":"c"}));
        let pos = p.ok(json!({"op":"pub","ch":"c","data":"before"}));
        drop(p);
        server.shutdown();

        let server = server_with(|_| {});
        let mut back = Peer::connect(server.local_addr());
        let reply = back.ok(json!({"op":"sub","ch":"c","since":pos}));
        assert_eq!(reply["recovered"], false);
        assert_eq!(reply["pubs"], json!([]));
        assert_ne!(reply["epoch"], pos["epoch"], "a new state has a new epoch");
        assert_eq!(offset(&reply), 0);
        drop(back);
        server.shutdown();
    });
}

#[test]
fn the_same_pub_key_twice_gives_the_same_offset_and_one_publication() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let addr = server.local_addr();
        let mut sub = Peer::connect(addr);
        sub.ok(json!({"op":"sub","ch":"c"}));
        let mut p = Peer::connect(addr);
        let first = p.ok(json!({"op":"pub","ch":"c","data":"once","key":"k-1"}));
        drop(p);
        // The retry comes from a new connection, as after a lost ack.
        let mut retry = Peer::connect(addr);
        let again = retry.ok(json!({"op":"pub","ch":"c","data":"once","key":"k-1"}));
        assert_eq!(again, first, "same epoch and offset");
        let next = retry.ok(json!({"op":"pub","ch":"c","data":"next"}));
        assert_eq!(offset(&next), offset(&first) + 1, "the retry took no offset");
        assert_eq!(sub.push()["data"], "once");
        let p2 = sub.push();
        assert_eq!(p2["data"], "next", "no second copy of the keyed publication");
        let hist = retry.ok(json!({"op":"history","ch":"c"}));
        assert_eq!(offsets(&hist["pubs"]), vec![1, 2]);
        drop((sub, retry));
        server.shutdown();
    });
}

#[test]
fn malformed_json_gets_error_1_without_id_and_the_connection_stays_open() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut p = Peer::connect(server.local_addr());
        for bad in [
            "{\"id\":1,",
            "[1,2]",
            "\"sub\"",
            "{\"op\":\"sub\",\"ch\":\"c\"}",
            "{\"id\":0}",
        ] {
            p.send_text(bad);
            let r = p.frame();
            assert_eq!(code(&r), 1, "{bad}: {r}");
            assert!(
                r.get("id").is_none(),
                "{bad}: no valid id, none in the answer: {r}"
            );
            assert!(r["err"]["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
        // Still open and working.
        let snap = p.ok(json!({"op":"sub","ch":"c"}));
        assert_eq!(offset(&snap), 0);
        drop(p);
        server.shutdown();
    });
}

#[test]
fn an_unknown_op_or_a_wrongly_typed_field_gets_error_1_with_its_id() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut p = Peer::connect(server.local_addr());
        for bad in [
            json!({"op":"dance","ch":"c"}),
            json!({"op":"sub"}),
            json!({"op":"pub","ch":"c"}),
            json!({"op":"sub","ch":"c","since":{"epoch":"e"}}),
            json!({"op":"history","ch":"c","limit":-1}),
        ] {
            let id = p.send_cmd(bad.clone());
            let r = p.reply(id);
            assert_eq!(code(&r), 1, "{bad}: {r}");
        }
        assert_eq!(
            p.cmd(json!({"op":"unsub","ch":"c"}))["err"]["code"],
            2,
            "nothing was subscribed"
        );
        drop(p);
        server.shutdown();
    });
}

#[test]
fn a_bad_channel_name_gets_error_1_and_changes_nothing() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut p = Peer::connect(server.local_addr());
        let long = "x".repeat(256);
        for ch in ["", "has space", "star*", "é", long.as_str()] {
            let r = p.cmd(json!({"op":"sub","ch":ch}));
            assert_eq!(code(&r), 1, "{ch:?}: {r}");
            let r = p.cmd(json!({"op":"pub","ch":ch,"data":1}));
            assert_eq!(code(&r), 1, "{ch:?}: {r}");
        }
        let ok = p.ok(json!({"op":"sub","ch":"A-z_0:9.@/x"}));
        assert_eq!(offset(&ok), 0);
        drop(p);
        server.shutdown();
    });
}

#[test]
fn a_binary_frame_gets_close_1003() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut raw = Raw::connect(server.local_addr(), "/ws");
        raw.send_frame(0x82, b"\x01\x02");
        assert_eq!(raw.read_close_code(), Some(1003));
        server.shutdown();
    });
}

#[test]
fn too_many_subscriptions_gets_error_4_and_keeps_the_others() {
    watchdog(LIMIT, || {
        let server = server_with(|c| c.max_subscriptions = 2);
        let addr = server.local_addr();
        let mut p = Peer::connect(addr);
        p.ok(json!({"op":"sub","ch":"a"}));
        p.ok(json!({"op":"sub","ch":"b"}));
        let r = p.cmd(json!({"op":"sub","ch":"c"}));
        assert_eq!(code(&r), 4, "{r}");
        assert_eq!(
            p.cmd(json!({"op":"sub","ch":"a"}))["err"]["code"],
            2,
            "already subscribed"
        );
        let mut publisher = Peer::connect(addr);
        publisher.ok(json!({"op":"pub","ch":"c","data":"not for p"}));
        publisher.ok(json!({"op":"pub","ch":"b","data":"for p"}));
        let got = p.push();
        assert_eq!(
            (got["ch"].as_str(), got["data"].as_str()),
            (Some("b"), Some("for p"))
        );
        // Leaving one makes room for another.
        p.ok(json!({"op":"unsub","ch":"a"}));
        p.ok(json!({"op":"sub","ch":"c"}));
        drop((p, publisher));
        server.shutdown();
    });
}

#[test]
fn too_many_channels_gets_error_4_for_a_new_channel_only() {
    watchdog(LIMIT, || {
        let server = server_with(|c| {
            c.max_channels = 2;
            c.history_size = 10;
        });
        let mut p = Peer::connect(server.local_addr());
        p.ok(json!({"op":"sub","ch":"a"}));
        p.ok(json!({"op":"pub","ch":"b","data":1}));
        assert_eq!(code(&p.cmd(json!({"op":"sub","ch":"c"}))), 4);
        assert_eq!(code(&p.cmd(json!({"op":"pub","ch":"c","data":1}))), 4);
        assert_eq!(offset(&p.ok(json!({"op":"pub","ch":"b","data":2}))), 2);
        assert_eq!(offset(&p.ok(json!({"op":"pub","ch":"a","data":1}))), 1);
        drop(p);
        server.shutdown();
    });
}

#[test]
fn an_ack_follows_the_push_and_the_publication_is_in_history_when_acked() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut p = Peer::connect(server.local_addr());
        p.ok(json!({"op":"sub","ch":"c"}));
        for n in 1..=20u64 {
            let id = p.send_cmd(json!({"op":"pub","ch":"c","data":n}));
            // The first frame after the pub must be its push, then the ack.
            let first = p.frame();
            assert_eq!(first["push"], "pub", "push before ack: {first}");
            assert_eq!(offset(&first), n);
            let ack = p.frame();
            assert_eq!(ack["id"], json!(id), "{ack}");
            assert_eq!(offset(&ack["ok"]), n);
            let hist = p.ok(json!({"op":"history","ch":"c","limit":1}));
            assert_eq!(offsets(&hist["pubs"]), vec![n], "in history once acked");
            assert_eq!(hist["pubs"][0]["data"], json!(n));
        }
        drop(p);
        server.shutdown();
    });
}

#[test]
fn a_sub_reply_and_the_pushes_after_it_join_with_no_gap_under_concurrent_publishing() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let addr = server.local_addr();
        const TOTAL: u64 = 300;
        let publisher = thread::spawn(move || {
            let mut p = Peer::connect(addr);
            let ids: Vec<u64> = (1..=TOTAL)
                .map(|n| p.send_cmd(json!({"op":"pub","ch":"c","data":n})))
                .collect();
            for id in ids {
                p.reply(id);
            }
        });
        // Subscribers arrive while the publisher runs; each must continue from its top.
        let mut subs = Vec::new();
        for _ in 0..5 {
            let mut s = Peer::connect(addr);
            let top = offset(&s.ok(json!({"op":"sub","ch":"c"})));
            subs.push((s, top));
        }
        publisher.join().unwrap();
        for (s, top) in &mut subs {
            for want in *top + 1..=TOTAL {
                assert_eq!(offset(&s.push()), want);
            }
        }
        drop(subs);
        server.shutdown();
    });
}

#[test]
fn hub_publish_from_another_thread_reaches_subscribers_without_from() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut sub = Peer::connect(server.local_addr());
        let snap = sub.ok(json!({"op":"sub","ch":"news"}));
        let hub = server.hub();
        let pos = thread::spawn(move || hub.publish("news", json!({"title":"hi"})))
            .join()
            .unwrap()
            .expect("published");
        assert_eq!(pos.offset, 1);
        assert_eq!(pos.epoch, snap["epoch"].as_str().unwrap());
        let p = sub.push();
        assert_eq!(p["data"], json!({"title":"hi"}));
        assert!(p.get("from").is_none(), "API publications have no from: {p}");
        let hub = server.hub();
        assert_eq!(hub.publish_json("news", "\"two\"").unwrap().offset, 2);
        assert_eq!(sub.push()["data"], "two");
        assert!(matches!(
            hub.publish("bad name", json!(1)),
            Err(wshub::PublishError::InvalidChannel(_))
        ));
        assert!(matches!(
            hub.publish_json("news", "{nope"),
            Err(wshub::PublishError::InvalidData(_))
        ));
        drop(sub);
        server.shutdown();
        assert_eq!(hub.publish("news", json!(3)), Err(wshub::PublishError::Closed));
    });
}

#[test]
fn history_expires_after_the_ttl() {
    watchdog(LIMIT, || {
        let server = server_with(|c| c.history_ttl = Duration::from_millis(300));
        let mut p = Peer::connect(server.local_addr());
        p.ok(json!({"op":"sub","ch":"c"}));
        let pos = p.ok(json!({"op":"pub","ch":"c","data":1}));
        let hist = p.ok(json!({"op":"history","ch":"c"}));
        assert_eq!(offsets(&hist["pubs"]), vec![1]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let hist = p.ok(json!({"op":"history","ch":"c"}));
            if hist["pubs"] == json!([]) {
                assert_eq!(offset(&hist), 1, "the top stays while the channel is subscribed");
                assert_eq!(hist["epoch"], pos["epoch"]);
                break;
            }
            assert!(Instant::now() < deadline, "history never expired");
            thread::sleep(Duration::from_millis(50));
        }
        let since = json!({"epoch":pos["epoch"],"offset":0});
        let mut back = Peer::connect(server.local_addr());
        assert_eq!(
            back.ok(json!({"op":"sub","ch":"c","since":since}))["recovered"],
            false
        );
        drop((p, back));
        server.shutdown();
    });
}

#[test]
fn unsubscribing_stops_the_pushes() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let mut p = Peer::connect(server.local_addr());
        p.ok(json!({"op":"sub","ch":"a"}));
        p.ok(json!({"op":"sub","ch":"b"}));
        assert_eq!(p.ok(json!({"op":"unsub","ch":"a"})), json!({}));
        p.ok(json!({"op":"pub","ch":"a","data":"gone"}));
        p.ok(json!({"op":"pub","ch":"b","data":"here"}));
        let got = p.push();
        assert_eq!(got["ch"], "b", "no push for the channel left: {got}");
        assert!(p.pushes.is_empty());
        drop(p);
        server.shutdown();
    });
}

#[test]
fn the_subprotocol_wshub_v1_is_selected_when_offered() {
    watchdog(LIMIT, || {
        let server = server_with(|_| {});
        let url = format!("ws://{}/ws", server.local_addr());
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "other, wshub.v1".parse().unwrap());
        let (ws, resp) = tungstenite::connect(req).expect("upgrade");
        assert_eq!(
            resp.headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap()),
            Some("wshub.v1")
        );
        drop(ws);
        let (ws, resp) = tungstenite::connect(url.as_str()).expect("upgrade without a protocol");
        assert!(resp.headers().get("Sec-WebSocket-Protocol").is_none());
        drop(ws);
        server.shutdown();
    });
}

#[test]
fn a_connection_that_goes_away_leaves_its_subscriptions() {
    watchdog(LIMIT, || {
        // Without history, a channel lives only while it has subscribers, so its epoch
        // changes once the last one has really gone.
        let server = server_with(|c| c.history_size = 0);
        let addr = server.local_addr();
        let mut a = Peer::connect(addr);
        let first = a.ok(json!({"op":"sub","ch":"c"}))["epoch"].clone();
        a.cut();
        let mut b = Peer::connect(addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snap = b.ok(json!({"op":"sub","ch":"c"}));
            if snap["epoch"] != first {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cut connection still holds its subscription"
            );
            b.ok(json!({"op":"unsub","ch":"c"}));
            thread::sleep(Duration::from_millis(20));
        }
        drop(b);
        server.shutdown();
    });
}

#[test]
fn a_subscriber_that_does_not_read_is_cut_and_the_others_carry_on() {
    watchdog(LIMIT, || {
        let server = server_with(|c| c.limits.queue_size = 4);
        let addr = server.local_addr();
        let mut reader = Peer::connect(addr);
        reader.ok(json!({"op":"sub","ch":"c"}));
        let mut stalled = Raw::connect(addr, "/ws");
        stalled.send_frame(0x81, br#"{"id":1,"op":"sub","ch":"c"}"#);
        // Subscribed before anything is published (then it stops reading).
        let (_, reply) = stalled.read_frame().expect("the sub reply");
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(offset(&reply["ok"]), 0, "{reply}");
        let mut p = Peer::connect(addr);
        // Far more than the stalled client's socket buffers and queue hold: the server
        // keeps at most 4 MiB in its send buffer and 4 frames in the queue.
        const N: u64 = 200;
        let data = "x".repeat(64 * 1024);
        for n in 1..=N {
            p.ok(json!({"op":"pub","ch":"c","data":data}));
            assert_eq!(offset(&reader.push()), n, "the reading subscriber keeps up");
        }
        // The stalled client now reads what reached it: a prefix, then the end of the
        // connection (a client that was never cut would wait here for more, and fail).
        let mut pushes = 0u64;
        while let Some((b0, payload)) = stalled.read_frame() {
            if b0 & 0x0F == 0x1 {
                let v: Value = serde_json::from_slice(&payload).unwrap();
                if v.get("push").is_some() {
                    pushes += 1;
                    assert_eq!(offset(&v), pushes, "a contiguous prefix");
                }
            }
        }
        assert!(
            pushes < N,
            "the stalled subscriber was cut, not served everything"
        );
        // And the others carry on.
        p.ok(json!({"op":"pub","ch":"c","data":"after"}));
        assert_eq!(reader.push()["data"], "after");
        drop((reader, p));
        server.shutdown();
    });
}

#[test]
fn hub_publish_to_a_new_channel_past_max_channels_is_refused_with_code_4() {
    watchdog(LIMIT, || {
        let server = server_with(|c| c.max_channels = 1);
        let hub = server.hub();
        // History keeps the first channel's state alive.
        assert_eq!(hub.publish("a", json!(1)).unwrap().offset, 1);
        match hub.publish("b", json!(1)) {
            Err(wshub::PublishError::Rejected(e)) => {
                assert_eq!(u16::from(e.code), 4, "{e:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            hub.publish("a", json!(2)).unwrap().offset,
            2,
            "the existing channel is unaffected"
        );
        server.shutdown();
    });
}
