//! The protocol client's identity and presence against the real server's `/ws`: `hello`
//! first on every (re)connect, in token mode too; `presence`; join and leave events.

#[path = "support/client.rs"]
mod client_support;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use wshub::client::Event;
use wshub::client::pubsub::{ChannelClient, ChannelConfig, ChannelEvent};
use wshub::pubsub::auth::issue_token;

use client_support::fast_reconnect;
use support::{start, test_config, watchdog};

const LIMIT: Duration = Duration::from_secs(30);

fn client(addr: SocketAddr, f: impl FnOnce(&mut ChannelConfig)) -> ChannelClient {
    let mut c = ChannelConfig::default();
    c.reconnect = fast_reconnect();
    f(&mut c);
    ChannelClient::start(&format!("ws://{addr}/ws"), c).expect("client starts")
}

fn wait_for(client: &ChannelClient, what: &str, want: impl Fn(&ChannelEvent) -> bool) -> ChannelEvent {
    client_support::wait_for(client.events(), what, want)
}

fn subscribed(client: &ChannelClient, ch: &str) {
    wait_for(
        client,
        "subscribed",
        |e| matches!(e, ChannelEvent::Subscribed { ch: c, .. } if c == ch),
    );
}

#[test]
fn the_client_says_hello_with_its_token_before_resubscribing_after_a_restart() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.token_secret = Some("s".into());
        let server = start(config.clone());
        let addr = server.local_addr();
        let token = issue_token(b"s", "ann", None, None, None, SystemTime::now());
        let c = client(addr, |c| c.hello.token = Some(token));
        c.subscribe("room").unwrap();
        let welcome = wait_for(&c, "welcome", |e| matches!(e, ChannelEvent::Welcome { .. }));
        assert!(matches!(welcome, ChannelEvent::Welcome { ref user, .. } if user == "ann"));
        subscribed(&c, "room");
        server.shutdown();
        wait_for(&c, "the disconnect", |e| {
            matches!(e, ChannelEvent::Connection(Event::Disconnected { .. }))
        });
        config.addr = addr;
        let _server = start(config);
        // A sub before hello would be error 7 and end in SubscribeFailed; it succeeds.
        wait_for(&c, "welcome again", |e| matches!(e, ChannelEvent::Welcome { .. }));
        subscribed(&c, "room");
        let list = c.presence("room").unwrap();
        assert_eq!(list.num_clients, 1);
        assert_eq!(list.clients[0].user, "ann");
    });
}

#[test]
fn a_refused_hello_is_an_event() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.token_secret = Some("s".into());
        let server = start(config);
        let forged = issue_token(b"wrong", "ann", None, None, None, SystemTime::now());
        let c = client(server.local_addr(), |c| c.hello.token = Some(forged));
        wait_for(&c, "the refusal", |e| matches!(e, ChannelEvent::HelloRefused(_)));
        c.close();
    });
}

#[test]
fn the_client_reports_joins_and_leaves_and_counts_presence() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let watcher = client(addr, |c| {
            c.hello.user = Some("wendy".into());
            c.joins = true;
        });
        watcher.subscribe("room").unwrap();
        subscribed(&watcher, "room");
        let ann = client(addr, |c| c.hello.user = Some("ann".into()));
        ann.subscribe("room").unwrap();
        subscribed(&ann, "room");
        match wait_for(&watcher, "the join", |e| matches!(e, ChannelEvent::Join(_))) {
            ChannelEvent::Join(m) => assert_eq!(m.user, "ann"),
            _ => unreachable!(),
        }
        let list = watcher.presence("room").unwrap();
        assert_eq!((list.num_clients, list.num_users), (2, 2));
        ann.close();
        match wait_for(&watcher, "the leave", |e| matches!(e, ChannelEvent::Leave(_))) {
            ChannelEvent::Leave(m) => assert_eq!(m.user, "ann"),
            _ => unreachable!(),
        }
        assert_eq!(watcher.presence("room").unwrap().num_clients, 1);
    });
}
