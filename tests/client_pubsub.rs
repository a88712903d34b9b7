//! The protocol client (`wshub::client::pubsub`) against the real server's `/ws`:
//! ordered delivery, acks, resume after a cut connection or a server restart, and
//! publishing across a reconnect without publishing twice.

#[path = "support/client.rs"]
mod client_support;
#[path = "support/proxy.rs"]
mod proxy;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wshub::client::Event;
use wshub::client::pubsub::{ChannelClient, ChannelConfig, ChannelError, ChannelEvent};

use client_support::{closed_addr, fast_reconnect};
use proxy::Proxy;
use support::{Server, start, test_config, watchdog};

const LIMIT: Duration = Duration::from_secs(30);

fn config() -> ChannelConfig {
    let mut c = ChannelConfig::default();
    c.reconnect = fast_reconnect();
    c.publish_timeout = Duration::from_secs(10);
    c
}

fn client(addr: SocketAddr) -> ChannelClient {
    ChannelClient::start(&format!("ws://{addr}/ws"), config()).expect("client starts")
}

/// Waits for the first event for which `want` is true, skipping others.
fn wait_for(client: &ChannelClient, what: &str, want: impl Fn(&ChannelEvent) -> bool) -> ChannelEvent {
    client_support::wait_for(client.events(), what, want)
}

/// Subscribes and waits for the server's confirmation; returns `recovered`.
fn subscribe(client: &ChannelClient, ch: &str) {
    client.subscribe(ch).unwrap();
    wait_subscribed(client, ch);
}

fn wait_subscribed(client: &ChannelClient, ch: &str) -> Option<bool> {
    match wait_for(
        client,
        "subscribed",
        |e| matches!(e, ChannelEvent::Subscribed { ch: c, .. } if c == ch),
    ) {
        ChannelEvent::Subscribed { recovered, .. } => recovered,
        _ => unreachable!(),
    }
}

/// The next `n` publications' (offset, data), other events skipped.
fn publications(client: &ChannelClient, n: usize) -> Vec<(u64, Value)> {
    (0..n)
        .map(|_| {
            match wait_for(client, "a publication", |e| {
                matches!(e, ChannelEvent::Publication { .. })
            }) {
                ChannelEvent::Publication { publication, .. } => (publication.offset, publication.data),
                _ => unreachable!(),
            }
        })
        .collect()
}

/// Asserts that nothing more is delivered for a moment (no duplicate after the last).
fn assert_no_more_publications(client: &ChannelClient) {
    let until = Instant::now() + Duration::from_millis(300);
    while let Ok(e) = client.events().recv_deadline(until) {
        assert!(!matches!(e, ChannelEvent::Publication { .. }), "unexpected {e:?}");
    }
}

fn server() -> Server {
    start(test_config())
}

#[test]
fn a_subscriber_receives_publications_in_order_with_contiguous_offsets() {
    watchdog(LIMIT, || {
        let server = server();
        let sub = client(server.local_addr());
        subscribe(&sub, "news");
        let publisher = client(server.local_addr());
        for i in 0..20 {
            publisher.publish("news", json!({ "n": i })).unwrap();
        }
        let got = publications(&sub, 20);
        let first = got[0].0;
        for (i, (offset, data)) in got.iter().enumerate() {
            assert_eq!(*offset, first + i as u64);
            assert_eq!(data, &json!({ "n": i }));
        }
        assert_no_more_publications(&sub);
    });
}

#[test]
fn a_publish_is_acked_with_the_offset_it_got() {
    watchdog(LIMIT, || {
        let server = server();
        let c = client(server.local_addr());
        subscribe(&c, "acks");
        let first = c.publish("acks", json!("one")).unwrap();
        let second = c.publish("acks", json!("two")).unwrap();
        assert_eq!(second.epoch, first.epoch);
        assert_eq!(second.offset, first.offset + 1);
        assert_eq!(
            publications(&c, 2),
            [(first.offset, json!("one")), (second.offset, json!("two"))]
        );
    });
}

#[test]
fn history_returns_what_was_published_after_since() {
    watchdog(LIMIT, || {
        let server = server();
        let c = client(server.local_addr());
        let first = c.publish("log", json!(1)).unwrap();
        c.publish("log", json!(2)).unwrap();
        c.publish("log", json!(3)).unwrap();
        let snapshot = c.history("log", Some(first.clone()), None).unwrap();
        assert_eq!(snapshot.epoch, first.epoch);
        assert_eq!(snapshot.offset, first.offset + 2);
        let data: Vec<Value> = snapshot.pubs.into_iter().map(|p| p.data).collect();
        assert_eq!(data, [json!(2), json!(3)]);
    });
}

#[test]
fn a_cut_connection_resumes_with_every_missed_publication_exactly_once() {
    watchdog(LIMIT, || {
        let server = server();
        let proxy = Proxy::start(server.local_addr());
        let sub = client(proxy.addr);
        subscribe(&sub, "feed");
        let publisher = client(server.local_addr());
        for i in 1..=5 {
            publisher.publish("feed", json!(i)).unwrap();
        }
        let before = publications(&sub, 5);

        // The network fails: no Close; the subscriber cannot get back for a while.
        proxy.refuse(true);
        proxy.cut();
        wait_for(&sub, "the disconnect", |e| {
            matches!(e, ChannelEvent::Connection(Event::Disconnected { .. }))
        });
        for i in 6..=15 {
            publisher.publish("feed", json!(i)).unwrap();
        }
        proxy.refuse(false);
        assert_eq!(wait_subscribed(&sub, "feed"), Some(true));
        let missed = publications(&sub, 10);
        for i in 16..=20 {
            publisher.publish("feed", json!(i)).unwrap();
        }
        let live = publications(&sub, 5);

        let all: Vec<(u64, Value)> = before.into_iter().chain(missed).chain(live).collect();
        let first = all[0].0;
        for (i, (offset, data)) in all.iter().enumerate() {
            assert_eq!(*offset, first + i as u64, "{all:?}");
            assert_eq!(data, &json!(i + 1), "{all:?}");
        }
        assert_no_more_publications(&sub);
    });
}

#[test]
fn a_subscriber_cut_repeatedly_while_publications_continue_gets_each_offset_once_in_order() {
    watchdog(LIMIT, || {
        const N: u64 = 300;
        // History holds the whole stream, so however far the subscriber lags behind
        // when it is cut, it can recover.
        let mut config = test_config();
        config.history_size = N as usize;
        let server = start(config);
        let proxy = Proxy::start(server.local_addr());
        let sub = client(proxy.addr);
        subscribe(&sub, "stream");
        let publisher = client(server.local_addr());
        // Paced, so that a cut finds the stream live rather than all of it queued here.
        let publishing = thread::spawn(move || {
            for i in 1..=N {
                publisher.publish("stream", json!(i)).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
        });
        let mut offsets = Vec::new();
        let mut recoveries = 0;
        while offsets.len() < N as usize {
            match wait_for(&sub, "a publication or a resubscription", |e| {
                matches!(
                    e,
                    ChannelEvent::Publication { .. } | ChannelEvent::Subscribed { .. }
                )
            }) {
                ChannelEvent::Publication { publication, .. } => {
                    assert_eq!(publication.data, json!(publication.offset));
                    offsets.push(publication.offset);
                    if offsets.len() % 75 == 0 {
                        proxy.cut(); // mid-stream, no Close
                    }
                }
                ChannelEvent::Subscribed { recovered, .. } => {
                    assert_eq!(recovered, Some(true));
                    recoveries += 1;
                }
                _ => unreachable!(),
            }
        }
        publishing.join().unwrap();
        assert_eq!(offsets, (1..=N).collect::<Vec<u64>>());
        // Each cut is followed by a resubscription, though those after the last
        // publication may not have happened yet.
        assert!(recoveries >= 1, "resumed {recoveries} times");
        assert_no_more_publications(&sub);
    });
}

#[test]
fn a_server_restart_resubscribes_with_since_and_reports_recovered_false() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        let server = start(config.clone());
        let addr = server.local_addr();
        let sub = client(addr);
        subscribe(&sub, "room");
        let publisher = client(addr);
        publisher.publish("room", json!("before")).unwrap();
        assert_eq!(publications(&sub, 1)[0].1, json!("before"));

        server.shutdown();
        wait_for(&sub, "the disconnect", |e| {
            matches!(e, ChannelEvent::Connection(Event::Disconnected { .. }))
        });
        config.addr = addr;
        let _server = start(config); // a new process's state: a new epoch
        // Recovery is impossible: the client says so, then carries on live.
        assert_eq!(wait_subscribed(&sub, "room"), Some(false));
        wait_for(&publisher, "the publisher's reconnection", |e| {
            matches!(e, ChannelEvent::Connection(Event::Connected))
        });
        let after = publisher.publish("room", json!("after")).unwrap();
        assert_eq!(publications(&sub, 1), [(after.offset, json!("after"))]);
    });
}

#[test]
fn a_publish_whose_ack_is_lost_is_sent_again_with_its_key_and_published_once() {
    watchdog(LIMIT, || {
        let server = server();
        let watcher = client(server.local_addr());
        subscribe(&watcher, "once");
        let proxy = Proxy::start(server.local_addr());
        let publisher = Arc::new(client(proxy.addr));
        wait_for(&publisher, "the connection", |e| {
            matches!(e, ChannelEvent::Connection(Event::Connected))
        });

        // The pub reaches the server; its ack is lost with the connection.
        proxy.swallow(true);
        let p = publisher.clone();
        let publishing = thread::spawn(move || p.publish("once", json!("only once")));
        let (offset, data) = publications(&watcher, 1).remove(0);
        assert_eq!(data, json!("only once"));
        thread::sleep(Duration::from_millis(50)); // an ack let through would be back by now
        assert!(!publishing.is_finished(), "the ack was lost");
        proxy.cut();
        proxy.swallow(false);

        // After the reconnect, the same key: the first publication's position, and
        // nothing published a second time.
        let acked = publishing.join().unwrap().expect("acked after the reconnect");
        assert_eq!(acked.offset, offset);
        let next = publisher.publish("once", json!("next")).unwrap();
        assert_eq!(next.offset, offset + 1);
        assert_eq!(publications(&watcher, 1), [(offset + 1, json!("next"))]);
    });
}

#[test]
fn a_publish_with_no_server_times_out_and_close_answers_the_rest() {
    watchdog(LIMIT, || {
        let mut c = config();
        c.publish_timeout = Duration::from_millis(300);
        let client = Arc::new(ChannelClient::start(&format!("ws://{}/ws", closed_addr()), c).unwrap());
        let started = Instant::now();
        assert!(matches!(
            client.publish("x", json!(1)),
            Err(ChannelError::Timeout)
        ));
        assert!(started.elapsed() >= Duration::from_millis(300));

        // A publish waiting when the client is closed is answered at once.
        let mut slow = config();
        slow.publish_timeout = Duration::from_secs(60);
        let client = Arc::new(ChannelClient::start(&format!("ws://{}/ws", closed_addr()), slow).unwrap());
        let c = client.clone();
        let waiting = thread::spawn(move || c.publish("x", json!(1)));
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        client.close();
        assert!(matches!(waiting.join().unwrap(), Err(ChannelError::Closed)));
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn bad_channel_names_and_double_subscriptions_are_refused_locally() {
    let client = ChannelClient::start(&format!("ws://{}/ws", closed_addr()), config()).unwrap();
    assert!(matches!(
        client.subscribe("no spaces"),
        Err(ChannelError::InvalidChannel { .. })
    ));
    client.subscribe("ok").unwrap();
    assert!(matches!(
        client.subscribe("ok"),
        Err(ChannelError::AlreadySubscribed(_))
    ));
    assert!(matches!(
        client.unsubscribe("other"),
        Err(ChannelError::NotSubscribed(_))
    ));
    assert!(matches!(
        client.publish_with_key("ok", json!(1), ""),
        Err(ChannelError::InvalidKey)
    ));
}
