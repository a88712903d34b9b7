//! [`wshub::client::ReconnectingClient`] on real loopback sockets: a session across a
//! server restart, prompt cancellation, giving up, and 200 clients reconnecting with
//! jitter after a mass disconnect.

#[path = "support/client.rs"]
mod client_support;
mod support;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use client_support::*;
use support::{start, test_config, watchdog};
use wshub::client::{ClientError, Event, ReconnectConfig, ReconnectingClient};
use wshub::{Message, Server};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn a_session_survives_a_server_stop_and_restart_on_the_same_port() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let session = ReconnectingClient::start(&format!("ws://{addr}/echo"), fast_reconnect()).unwrap();
        wait_for(session.events(), "first connection", |e| {
            matches!(e, Event::Connected)
        });
        session.send(Message::text("before")).unwrap();
        wait_for_text(session.events(), "before");

        server.shutdown();
        let gone = wait_for(session.events(), "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        assert_eq!(gone.close_code(), Some(1001), "{gone:?}");
        // The client is retrying against a closed port now.
        wait_for(session.events(), "a failed attempt", |e| {
            matches!(e, Event::ConnectFailed { .. })
        });
        assert!(matches!(
            session.send(Message::text("lost")),
            Err(ClientError::NotConnected)
        ));

        let mut config = test_config();
        config.addr = addr;
        let server = Server::start(config).expect("restart on the same port");
        wait_for(session.events(), "reconnection", |e| {
            matches!(e, Event::Connected)
        });
        session.send(Message::text("after")).unwrap();
        wait_for_text(session.events(), "after");
        assert!(session.is_connected());

        session.stop();
        server.shutdown();
    });
}

#[test]
fn stop_during_a_30s_backoff_wait_returns_at_once() {
    watchdog(LIMIT, || {
        let mut config = ReconnectConfig::default();
        config.backoff.initial = Duration::from_secs(30);
        config.backoff.max = Duration::from_secs(30);
        let session = ReconnectingClient::start(&format!("ws://{}/", closed_addr()), config).unwrap();
        wait_for(session.events(), "refused attempt", |e| {
            matches!(e, Event::ConnectFailed { .. })
        });
        let waiting = wait_for(session.events(), "backoff", |e| {
            matches!(e, Event::Reconnecting { .. })
        });
        assert!(
            matches!(waiting, Event::Reconnecting { attempt: 1, delay } if delay >= Duration::from_secs(30))
        );

        // Generous: what matters is not waiting out the 30 s backoff.
        let started = Instant::now();
        session.stop();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "stop took {took:?}");
        assert!(drain_to_end(session.events()).is_empty());
    });
}

#[test]
fn stop_during_a_stuck_handshake_returns_promptly() {
    watchdog(LIMIT, || {
        // Accepts TCP connections (the kernel does) but never answers the upgrade.
        let raw = RawServer::bind();
        let session = ReconnectingClient::start(&raw.url("/"), ReconnectConfig::default()).unwrap();
        let (conn, _) = raw.listener.accept().unwrap(); // the attempt is in its handshake
        // Generous: what matters is not waiting out the 10 s handshake timeout.
        let started = Instant::now();
        session.stop();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "stop took {took:?}");
        drop(conn);
    });
}

#[test]
fn close_delivers_the_last_messages_and_a_clean_disconnect_then_ends() {
    watchdog(LIMIT, || {
        let server = EchoServer::start();
        let session = ReconnectingClient::start(&server.url("/"), fast_reconnect()).unwrap();
        wait_for(session.events(), "connection", |e| matches!(e, Event::Connected));
        for i in 0..50 {
            session.send(Message::text(format!("m{i}"))).unwrap();
        }
        session.close(1000, "bye").unwrap();
        let rest = drain_to_end(session.events());
        let texts: Vec<&str> = rest.iter().filter_map(text_of).collect();
        let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        assert_eq!(texts, expected, "every echo arrives before the end");
        let last = rest.last().expect("a Disconnected");
        assert!(
            matches!(last, Event::Disconnected { error: None, .. }),
            "{last:?}"
        );
        assert_eq!(last.close_code(), Some(1000));
        assert!(!rest.iter().any(|e| matches!(e, Event::Reconnecting { .. })));
        assert!(matches!(
            session.send(Message::text("late")),
            Err(ClientError::NotConnected)
        ));
        drop(server);
    });
}

#[test]
fn max_retries_gives_up_after_that_many_failed_attempts() {
    watchdog(LIMIT, || {
        let mut config = fast_reconnect();
        config.max_retries = Some(3);
        let session = ReconnectingClient::start(&format!("ws://{}/", closed_addr()), config).unwrap();
        let events = drain_to_end(session.events());
        let failures = events
            .iter()
            .filter(|e| matches!(e, Event::ConnectFailed { .. }))
            .count();
        let retries: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                Event::Reconnecting { attempt, .. } => Some(*attempt),
                _ => None,
            })
            .collect();
        assert_eq!(failures, 4, "the first attempt and 3 retries: {events:?}");
        assert_eq!(retries, [1, 2, 3]);
        assert!(
            matches!(events.last(), Some(Event::GaveUp { retries: 3 })),
            "{events:?}"
        );
    });
}

#[test]
fn a_fatal_refusal_gives_up_at_once() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let session = ReconnectingClient::start(
            &format!("ws://{}/no-such-path", server.local_addr()),
            fast_reconnect(),
        )
        .unwrap();
        let events = drain_to_end(session.events());
        assert!(
            matches!(
                &events[..],
                [
                    Event::ConnectFailed {
                        attempt: 0,
                        error: ClientError::Rejected { status: 404, .. }
                    },
                    Event::GaveUp { retries: 0 }
                ]
            ),
            "{events:?}"
        );
        server.shutdown();
    });
}

#[test]
fn two_hundred_clients_cut_off_at_once_reconnect_spread_over_the_jitter_window() {
    const CLIENTS: usize = 200;
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let addr = server.local_addr();
        let url = format!("ws://{addr}/echo");
        // A 3 s first delay, with jitter drawn from [0, 1.5 s): long enough that the
        // drain of 200 clients and the rebind below finish before anyone retries, even on
        // a loaded machine (the default 1 s left too little room).
        let mut config = ReconnectConfig::default();
        config.backoff.initial = Duration::from_secs(3);
        let sessions: Vec<ReconnectingClient> = (0..CLIENTS)
            .map(|_| ReconnectingClient::start(&url, config.clone()).unwrap())
            .collect();
        for s in &sessions {
            wait_for(s.events(), "connection", |e| matches!(e, Event::Connected));
        }

        // Cut everyone off at once: the drain sends Close 1001 to all 200.
        let cut = Instant::now();
        server.shutdown();
        // Listen on the same port and timestamp every first reconnection attempt. A
        // client's second attempt comes at least 6 s after its first, so the first 200
        // connections are the first attempts of the 200 clients.
        let listener = TcpListener::bind(addr).expect("rebind the port");
        let bound = Instant::now();
        let mut attempts = Vec::with_capacity(CLIENTS);
        while attempts.len() < CLIENTS {
            let (sock, _) = listener.accept().unwrap();
            attempts.push(Instant::now());
            drop(sock); // the handshake fails; the client backs off for 6 s or more
        }
        drop(listener);
        // The delay each client drew, as it reported it before waiting.
        let mut delays = Vec::with_capacity(CLIENTS);
        for s in &sessions {
            let waiting = wait_for(s.events(), "the backoff", |e| {
                matches!(e, Event::Reconnecting { .. })
            });
            let Event::Reconnecting { delay, .. } = waiting else {
                unreachable!()
            };
            delays.push(delay);
            wait_for(s.events(), "the failed attempt", |e| {
                matches!(e, Event::ConnectFailed { .. })
            });
        }
        thread::scope(|scope| {
            for s in &sessions {
                scope.spawn(|| s.stop());
            }
        });

        let first = attempts[0];
        let last = attempts[CLIENTS - 1];
        let spread = last - first;
        let window = Duration::from_millis(1500);
        assert!(
            first.duration_since(cut) >= Duration::from_millis(2900),
            "no client retries before the base delay: first after {:?}",
            first.duration_since(cut)
        );
        assert!(
            bound.duration_since(cut) < Duration::from_millis(2900),
            "the drain and the rebind took longer than the first delay: {:?}",
            bound.duration_since(cut)
        );
        // Uniform jitter over 1.5 s spreads 200 clients over nearly all of it; without
        // jitter they would all land within a few milliseconds.
        assert!(spread >= window / 2, "reconnections spread over only {spread:?}");
        // No thundering herd: at most a quarter of the clients drew delays within any
        // 20 ms. (Counted on the delays the clients drew, not on when our accept loop
        // saw them: on a loaded machine that loop runs late and accepts in bursts.)
        delays.sort();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(3) && *d < Duration::from_millis(4500)),
            "every delay in [3 s, 4.5 s): {:?} .. {:?}",
            delays[0],
            delays[CLIENTS - 1]
        );
        let busiest = delays
            .iter()
            .map(|start| {
                delays
                    .iter()
                    .filter(|d| **d >= *start && **d < *start + Duration::from_millis(20))
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(
            busiest <= CLIENTS / 4,
            "{busiest} clients drew delays within 20 ms (attempts spread over {spread:?})"
        );
        eprintln!("first reconnection attempts spread over {spread:?}; busiest 20 ms: {busiest} clients");
    });
}
