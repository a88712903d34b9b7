//! No thread of the protocol client outlives it. A test binary of its own, with one
//! test, so the process's thread count is this test's alone; the server runs in a child
//! process, so only client threads are counted.

#[path = "support/client.rs"]
mod client_support;
mod support;

use std::time::Duration;

use client_support::{closed_addr, fast_reconnect};
use serde_json::json;
use support::{ServeProcess, thread_count, wait_for_threads, watchdog};
use wshub::client::Event;
use wshub::client::pubsub::{ChannelClient, ChannelConfig, ChannelEvent};

#[test]
fn channel_client_threads_end_after_close_and_drop() {
    watchdog(Duration::from_secs(30), || {
        let serve = ServeProcess::start(&[]);
        let url = format!("ws://{}/ws", serve.addr);
        let baseline = thread_count();
        let mut config = ChannelConfig::default();
        config.reconnect = fast_reconnect();

        // Connected and subscribed, with a publication delivered; closed, then dropped.
        let clients: Vec<ChannelClient> = (0..5)
            .map(|_| ChannelClient::start(&url, config.clone()).unwrap())
            .collect();
        for c in &clients {
            c.subscribe("t").unwrap();
            c.publish("t", json!("x")).unwrap();
            while let Ok(e) = c.events().recv_timeout(Duration::from_secs(10)) {
                if matches!(e, ChannelEvent::Publication { .. }) {
                    break;
                }
            }
        }
        clients[0].close();
        drop(clients);

        // Never connected: closed in a backoff wait.
        let mut waiting = config.clone();
        waiting.reconnect.backoff.initial = Duration::from_secs(30);
        waiting.reconnect.backoff.max = Duration::from_secs(30);
        let idle = ChannelClient::start(&format!("ws://{}/ws", closed_addr()), waiting).unwrap();
        idle.subscribe("t").unwrap();
        while let Ok(e) = idle.events().recv_timeout(Duration::from_secs(10)) {
            if matches!(e, ChannelEvent::Connection(Event::Reconnecting { .. })) {
                break;
            }
        }
        drop(idle);

        let left = wait_for_threads(baseline, Duration::from_secs(10));
        assert!(left <= baseline, "{left} threads left, {baseline} before");
    });
}
