//! No client thread outlives its connection or session. A test binary of its own, with
//! one test, so the process's thread count is this test's alone; the server runs in a
//! child process, so only client threads are counted.

#[path = "support/client.rs"]
mod client_support;
mod support;

use std::time::Duration;

use client_support::*;
use support::{ServeProcess, thread_count, wait_for_threads, watchdog};
use wshub::Message;
use wshub::client::{Client, ClientConfig, Event, ReconnectConfig, ReconnectingClient};

#[test]
fn client_threads_end_after_close_drop_and_stop() {
    watchdog(Duration::from_secs(30), || {
        let serve = ServeProcess::start(&[]);
        let url = format!("ws://{}/echo", serve.addr);
        let baseline = thread_count();

        // Closed cleanly, and dropped without a close.
        for close in [true, false] {
            let clients: Vec<Client> = (0..10)
                .map(|_| Client::connect(&url, &ClientConfig::default()).unwrap())
                .collect();
            for c in &clients {
                c.send(Message::text("x")).unwrap();
                wait_for_text(c.events(), "x");
                if close {
                    c.close(1000, "").unwrap();
                }
            }
            drop(clients);
        }

        // Sessions stopped while connected, and one stopped in a backoff wait.
        let sessions: Vec<ReconnectingClient> = (0..10)
            .map(|_| ReconnectingClient::start(&url, fast_reconnect()).unwrap())
            .collect();
        for s in &sessions {
            wait_for(s.events(), "connection", |e| matches!(e, Event::Connected));
        }
        for s in &sessions {
            s.stop();
        }
        drop(sessions);
        let mut waiting = ReconnectConfig::default();
        waiting.backoff.initial = Duration::from_secs(30);
        let idle = ReconnectingClient::start(&format!("ws://{}/", closed_addr()), waiting).unwrap();
        wait_for(idle.events(), "backoff", |e| {
            matches!(e, Event::Reconnecting { .. })
        });
        drop(idle);

        // A session closed cleanly, read to its end.
        let session = ReconnectingClient::start(&url, fast_reconnect()).unwrap();
        wait_for(session.events(), "connection", |e| matches!(e, Event::Connected));
        session.close(1000, "").unwrap();
        drain_to_end(session.events());
        drop(session);

        let left = wait_for_threads(baseline, Duration::from_secs(10));
        assert!(left <= baseline, "{left} threads left, {baseline} before");
    });
}
