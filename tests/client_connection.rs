//! One client connection ([`wshub::client::Client`]) on real loopback sockets: against
//! the wshub server, and against a hand-rolled server that shows the raw frames.

#[path = "support/client.rs"]
mod client_support;
mod support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use client_support::*;
use support::{start, test_config, watchdog};
use wshub::Message;
use wshub::client::{Client, ClientConfig, ClientError, Event};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn text_and_binary_messages_round_trip_through_the_echo_server() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let client = Client::connect(
            &format!("ws://{}/echo", server.local_addr()),
            &ClientConfig::default(),
        )
        .unwrap();
        client.send(Message::text("hello")).unwrap();
        client.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
        let big = vec![7u8; 300_000];
        client.send(Message::binary(big.clone())).unwrap();
        wait_for_text(client.events(), "hello");
        let bin = wait_for(client.events(), "binary", |e| {
            matches!(e, Event::Message(Message::Binary(_)))
        });
        assert!(matches!(bin, Event::Message(Message::Binary(b)) if b[..] == [0u8, 1, 2, 255]));
        let bin = wait_for(client.events(), "big binary", |e| {
            matches!(e, Event::Message(Message::Binary(_)))
        });
        assert!(matches!(bin, Event::Message(Message::Binary(b)) if b[..] == big[..]));
        client.close(1000, "done").unwrap();
        server.shutdown();
    });
}

#[test]
fn one_thread_sends_while_another_is_blocked_receiving() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let client = Arc::new(
            Client::connect(
                &format!("ws://{}/echo", server.local_addr()),
                &ClientConfig::default(),
            )
            .unwrap(),
        );
        let receiver = {
            let client = client.clone();
            thread::spawn(move || {
                // Blocks here before anything is sent.
                let got: Vec<String> = (0..100)
                    .map(|_| {
                        let e = wait_for(client.events(), "echo", |e| text_of(e).is_some());
                        text_of(&e).unwrap_or_default().to_owned()
                    })
                    .collect();
                got
            })
        };
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let client = client.clone();
                thread::spawn(move || {
                    for i in 0..25 {
                        client.send(Message::text(format!("{t}-{i}"))).unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        let got = receiver.join().unwrap();
        assert_eq!(got.len(), 100);
        // Each sender's messages arrive in the order it sent them.
        for t in 0..4 {
            let mine: Vec<&String> = got.iter().filter(|m| m.starts_with(&format!("{t}-"))).collect();
            let expected: Vec<String> = (0..25).map(|i| format!("{t}-{i}")).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>());
        }
        client.close(1000, "").unwrap();
        server.shutdown();
    });
}

#[test]
fn close_sends_exactly_one_masked_close_with_the_code_and_waits_for_the_reply() {
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/x");
        let server = thread::spawn(move || {
            let mut conn = raw.accept();
            let mut frames = Vec::new();
            // Read up to the Close, answer it, then read on until the client's EOF.
            while let Some(f) = conn.read_frame() {
                let is_close = f.opcode == 0x8;
                frames.push(f);
                if is_close {
                    conn.send_close(4000, "ok");
                    break;
                }
            }
            conn.sock.shutdown(std::net::Shutdown::Write).unwrap();
            frames.extend(conn.frames_until_eof());
            frames
        });
        let client = Client::connect(&url, &ClientConfig::default()).unwrap();
        client.send(Message::text("last words")).unwrap();
        let started = Instant::now();
        client.close(4000, "bye").unwrap();
        client.close(1000, "again").unwrap(); // a second close sends nothing more
        // The reply came: well under the 5 s close timeout it would otherwise wait out.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "close took {:?}",
            started.elapsed()
        );
        assert!(matches!(
            client.send(Message::text("late")),
            Err(ClientError::Closed)
        ));
        assert!(!client.is_open());

        let frames = server.join().unwrap();
        assert!(frames.iter().all(|f| f.masked && f.fin), "{frames:?}");
        let closes: Vec<_> = frames.iter().filter(|f| f.opcode == 0x8).collect();
        assert_eq!(closes.len(), 1, "{frames:?}");
        assert_eq!(closes[0].close_code(), Some(4000));
        assert_eq!(&closes[0].payload[2..], b"bye");
        assert_eq!(
            frames[0].payload, b"last words",
            "queued messages go out before the Close"
        );

        let end = wait_for(client.events(), "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        assert_eq!(end.close_code(), Some(4000));
        assert!(matches!(end, Event::Disconnected { error: None, .. }), "{end:?}");
    });
}

#[test]
fn a_server_close_is_answered_once_and_reported() {
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/");
        let server = thread::spawn(move || {
            let mut conn = raw.accept();
            conn.send_close(1001, "going down");
            let reply = conn.read_frame();
            // Close the TCP connection after the reply, as a server should.
            conn.sock.shutdown(std::net::Shutdown::Write).unwrap();
            let after = conn.frames_until_eof();
            (reply, after)
        });
        let client = Client::connect(&url, &ClientConfig::default()).unwrap();
        let end = wait_for(client.events(), "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        assert_eq!(end.close_code(), Some(1001));
        assert!(
            matches!(&end, Event::Disconnected { error: None, close: Some(f) } if f.reason == "going down")
        );
        assert!(client.events().recv().is_err(), "Disconnected is the last event");
        client.close(1000, "").unwrap(); // nothing more goes out
        let (reply, after) = server.join().unwrap();
        let reply = reply.expect("a Close reply");
        assert_eq!(
            (reply.opcode, reply.close_code(), reply.masked),
            (0x8, Some(1001), true)
        );
        assert!(after.is_empty(), "nothing after the Close: {after:?}");
    });
}

#[test]
fn a_server_close_1014_is_echoed_and_reported_as_1014() {
    // 1014 ("bad gateway") is registered and sendable, but tungstenite does not know it
    // and would report and answer it as 1002.
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/");
        let server = thread::spawn(move || {
            let mut conn = raw.accept();
            conn.send_close(1014, "upstream down");
            let reply = conn.read_frame();
            conn.sock.shutdown(std::net::Shutdown::Write).unwrap();
            let after = conn.frames_until_eof();
            (reply, after)
        });
        let client = Client::connect(&url, &ClientConfig::default()).unwrap();
        let end = wait_for(client.events(), "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        assert_eq!(end.close_code(), Some(1014), "{end:?}");
        assert!(
            matches!(&end, Event::Disconnected { error: None, close: Some(f) } if f.reason == "upstream down"),
            "{end:?}"
        );
        let (reply, after) = server.join().unwrap();
        let reply = reply.expect("a Close reply");
        assert_eq!(
            (reply.opcode, reply.close_code(), reply.masked),
            (0x8, Some(1014), true)
        );
        assert!(after.is_empty(), "nothing after the Close: {after:?}");
    });
}

#[test]
fn a_ping_from_the_server_gets_a_masked_pong_with_its_payload() {
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/");
        let server = thread::spawn(move || {
            let mut conn = raw.accept();
            conn.send_frame(0x9, b"abc");
            conn.read_frame()
        });
        let mut config = ClientConfig::default();
        config.ping_interval = None; // only the Pong should arrive
        let client = Client::connect(&url, &config).unwrap();
        let pong = server.join().unwrap().expect("a frame");
        assert_eq!(
            (pong.opcode, pong.masked, &pong.payload[..]),
            (0xA, true, &b"abc"[..])
        );
        drop(client);
    });
}

#[test]
fn origin_and_extra_headers_go_out_with_the_handshake() {
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/chat?room=1");
        let server = thread::spawn(move || raw.accept());
        let mut config = ClientConfig::default();
        config.origin = Some("https://app.example".into());
        config.headers = vec![("X-Token".into(), "s3cret".into())];
        let client = Client::connect(&url, &config).unwrap();
        let conn = server.join().unwrap();
        assert!(
            conn.head.starts_with("GET /chat?room=1 HTTP/1.1\r\n"),
            "{}",
            conn.head
        );
        assert_eq!(conn.header("origin").as_deref(), Some("https://app.example"));
        assert_eq!(conn.header("x-token").as_deref(), Some("s3cret"));
        assert_eq!(conn.header("host"), Some(client.peer_addr().to_string()));
    });
}

#[test]
fn a_refused_upgrade_reports_the_status_and_is_fatal_for_4xx() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let err = Client::connect(
            &format!("ws://{}/nope", server.local_addr()),
            &ClientConfig::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, ClientError::Rejected { status: 404, .. }),
            "{err:?}"
        );
        assert!(err.is_fatal());
        assert!(err.to_string().contains("404"), "{err}");
        server.shutdown();
    });
}

#[test]
fn a_refused_connection_and_a_wss_url_are_clear_errors() {
    watchdog(LIMIT, || {
        let err = Client::connect(&format!("ws://{}/", closed_addr()), &ClientConfig::default()).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(!err.is_fatal());
        let err = Client::connect("wss://127.0.0.1/", &ClientConfig::default()).unwrap_err();
        assert!(matches!(err, ClientError::UnsupportedScheme { .. }), "{err:?}");
        assert!(err.is_fatal());
    });
}

#[test]
fn a_server_that_never_answers_the_handshake_times_out() {
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/");
        let mut config = ClientConfig::default();
        config.handshake_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = Client::connect(&url, &config).unwrap_err();
        assert!(matches!(err, ClientError::HandshakeTimeout(_)), "{err:?}");
        // Generous: the timeout is 300 ms; the default (10 s) would fail this.
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        drop(raw);
    });
}

#[test]
fn a_silent_server_is_dropped_after_the_idle_timeout() {
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/");
        let server = thread::spawn(move || {
            let mut conn = raw.accept();
            conn.frames_until_eof() // reads our pings, never answers
        });
        let mut config = ClientConfig::default();
        config.ping_interval = Some(Duration::from_millis(100));
        config.idle_timeout = Some(Duration::from_millis(400));
        let client = Client::connect(&url, &config).unwrap();
        let end = wait_for(client.events(), "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        assert!(
            matches!(
                end,
                Event::Disconnected {
                    error: Some(ClientError::IdleTimeout(_)),
                    ..
                }
            ),
            "{end:?}"
        );
        let frames = server.join().unwrap();
        assert!(
            frames.iter().any(|f| f.opcode == 0x9),
            "the client pinged: {frames:?}"
        );
    });
}

#[test]
fn an_unanswered_close_gives_up_after_the_close_timeout() {
    watchdog(LIMIT, || {
        let raw = RawServer::bind();
        let url = raw.url("/");
        let server = thread::spawn(move || {
            let mut conn = raw.accept();
            conn.frames_until_eof() // never replies to the Close
        });
        let mut config = ClientConfig::default();
        config.close_timeout = Duration::from_millis(300);
        let client = Client::connect(&url, &config).unwrap();
        let started = Instant::now();
        client.close(1000, "").unwrap();
        let took = started.elapsed();
        // At least the timeout (less the clock's slack); at most a generous multiple of
        // it, since a loaded machine may run the client late. Not waiting forever is
        // what the upper bound checks.
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(10),
            "{took:?}"
        );
        let end = wait_for(client.events(), "disconnect", |e| {
            matches!(e, Event::Disconnected { .. })
        });
        assert!(
            matches!(
                end,
                Event::Disconnected {
                    error: Some(ClientError::CloseTimeout(_)),
                    ..
                }
            ),
            "{end:?}"
        );
        let frames = server.join().unwrap();
        assert_eq!(frames.iter().filter(|f| f.opcode == 0x8).count(), 1, "{frames:?}");
    });
}
