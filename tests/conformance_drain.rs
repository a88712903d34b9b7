//! Autobahn|Testsuite behaviours, checked in-process over loopback sockets.
//!
//! The suite itself (`scripts/conformance.sh`) only meets a server at rest. Its
//! closing-handshake cases (7.x) must also hold while the server drains for a shutdown,
//! when the server, not the client, starts the handshake with Close 1001: the client's
//! answer completes it, the server then closes the TCP connection first (RFC 6455 §7.1.1:
//! "the underlying TCP connection, in most normal cases, SHOULD be closed first by the
//! server"), nothing follows a Close (§5.5.1), and a Close crossing ours is answered by
//! no second one. Last, two cases the suite found, end to end: invalid UTF-8 fails the
//! connection before the rest of its frame arrives (6.4.3), and messages before a
//! protocol violation are still echoed ahead of the Close (5.15).

mod support;

use std::io::{ErrorKind, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(30);

const CLOSE: u8 = 0x88;
const TEXT: u8 = 0x81;

/// Close frames and their codes (or 0 for an empty Close), data frames and their bytes.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Close(u16),
    Data(u8, Vec<u8>),
    Other(u8),
}

fn next_frame(raw: &mut Raw) -> Option<Frame> {
    let (b0, payload) = raw.read_frame()?;
    Some(match b0 & 0x0F {
        0x8 => Frame::Close(if payload.len() >= 2 {
            u16::from_be_bytes([payload[0], payload[1]])
        } else {
            0
        }),
        0x1 | 0x2 => Frame::Data(b0, payload),
        _ => Frame::Other(b0),
    })
}

/// Reads past pings to the first Close or data frame.
fn next_significant(raw: &mut Raw) -> Option<Frame> {
    loop {
        match next_frame(raw)? {
            Frame::Other(_) => {}
            f => return Some(f),
        }
    }
}

/// Asserts the server closes the TCP connection cleanly (FIN, not RST) with nothing
/// after what was read, while our side stays open, within `within`.
fn assert_server_closes_first(raw: &mut Raw, within: Duration) {
    raw.sock.set_read_timeout(Some(within)).unwrap();
    match raw.rest_until_eof() {
        Ok(rest) => assert!(rest.is_empty(), "bytes after the Close: {rest:x?}"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the server did not close the TCP connection within {within:?}")
        }
        Err(e) => panic!("the connection did not end cleanly: {e}"),
    }
}

#[test]
fn drain_1001_answered_by_the_client_then_the_server_closes_tcp_first() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut raw = Raw::connect(server.local_addr(), "/echo");
        raw.send_frame(TEXT, b"before");
        assert_eq!(
            next_significant(&mut raw),
            Some(Frame::Data(TEXT, b"before".to_vec()))
        );

        let drain = thread::spawn(move || server.shutdown());
        assert_eq!(next_significant(&mut raw), Some(Frame::Close(1001)));
        // 7.1.x: the client sends data after the server's Close, then answers it with a
        // Close echoing the code. After its Close the server sends nothing more.
        raw.send_frame(TEXT, b"too late");
        raw.send_frame(CLOSE, &1001u16.to_be_bytes());
        // Well before the drain's deadline (3 s in test_config), when it would be cut.
        assert_server_closes_first(&mut raw, Duration::from_secs(2));
        drop(raw); // else the server lingers up to a second for our FIN

        let report = drain.join().unwrap();
        assert_eq!(report.connections, 1);
        assert!(
            report.cut == 0,
            "the handshake completed; nothing was cut at the deadline"
        );
    });
}

#[test]
fn a_close_crossing_the_drain_1001_gets_exactly_one_close_and_a_clean_end() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut raw = Raw::connect(server.local_addr(), "/echo");
        let drain = thread::spawn(move || server.shutdown());
        // Wait until the server's Close 1001 is in our receive buffer, unread: then our
        // Close 1000 crosses it, each side having sent Close before reading the other's.
        let mut byte = [0u8; 1];
        assert_eq!(raw.sock.peek(&mut byte).unwrap(), 1);
        raw.send_frame(CLOSE, &1000u16.to_be_bytes());
        assert_eq!(next_significant(&mut raw), Some(Frame::Close(1001)));
        // tungstenite in the reader takes our Close for a new one and replies to it: the
        // writer must drop that second Close.
        assert_server_closes_first(&mut raw, Duration::from_secs(2));
        drop(raw); // else the server lingers up to a second for our FIN

        let report = drain.join().unwrap();
        assert_eq!(report.connections, 1);
        assert_eq!(report.cut, 0);
    });
}

#[test]
fn closes_from_either_side_of_the_drain_each_get_one_close_and_a_clean_end() {
    watchdog(LIMIT, || {
        const EACH: usize = 4;
        let server = start(test_config());
        let addr = server.local_addr();
        // Before the drain: these clients close first; each gets the reply to its own
        // Close (1000) and its connection ends before the drain counts anyone.
        let early: Vec<Raw> = (0..EACH).map(|_| Raw::connect(addr, "/echo")).collect();
        // Crossing the drain: these clients send their Close only once the server's
        // 1001 is in their receive buffer, unread, so both Closes are on the wire at
        // once, each sent before the other was read.
        let crossing: Vec<Raw> = (0..EACH).map(|_| Raw::connect(addr, "/echo")).collect();
        for mut raw in early {
            raw.send_frame(CLOSE, &1000u16.to_be_bytes());
            assert_eq!(next_significant(&mut raw), Some(Frame::Close(1000)));
            assert_server_closes_first(&mut raw, Duration::from_secs(5));
        }
        // Their threads end after the server's FIN; the drain must not count them.
        let left = wait_for_count(EACH, Duration::from_secs(10), || server.connections());
        assert_eq!(left, EACH, "the early clients' connections ended");
        let start_line = Arc::new(Barrier::new(EACH + 1));
        let clients: Vec<_> = crossing
            .into_iter()
            .map(|mut raw| {
                let start_line = start_line.clone();
                thread::spawn(move || {
                    start_line.wait();
                    let mut byte = [0u8; 1];
                    assert_eq!(raw.sock.peek(&mut byte).unwrap(), 1, "the 1001 is here");
                    raw.send_frame(CLOSE, &1000u16.to_be_bytes());
                    // Exactly one Close: the drain's own, not a reply to ours.
                    let close = next_significant(&mut raw);
                    assert_server_closes_first(&mut raw, Duration::from_secs(5));
                    close
                })
            })
            .collect();
        start_line.wait();
        let report = server.shutdown();
        for client in clients {
            assert_eq!(client.join().unwrap(), Some(Frame::Close(1001)));
        }
        assert_eq!(report.connections, EACH, "only the crossing clients were drained");
        assert_eq!(report.cut, 0);
    });
}

#[test]
fn invalid_utf8_fails_before_the_rest_of_its_frame_arrives() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut raw = Raw::connect(server.local_addr(), "/echo");
        // Autobahn 6.4.3: a 21-byte text frame whose first 15 bytes already hold an
        // invalid sequence (F4 90 80 80 is above U+10FFFF); the rest is never sent.
        let payload = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited";
        let frame = client_frame(TEXT, payload);
        raw.sock.write_all(&frame[..6 + 15]).unwrap();
        // Well within the idle timeout, which is what a server that waits would hit.
        raw.sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(raw.read_close_code(), Some(1007));
        raw.send_frame(CLOSE, &1007u16.to_be_bytes());
        assert_server_closes_first(&mut raw, Duration::from_secs(2));
        drop(raw);
        server.shutdown();
    });
}

#[test]
fn messages_before_a_protocol_violation_are_echoed_ahead_of_the_close() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        // Autobahn 5.15, in one write: a message in two fragments, then a continuation
        // with nothing to continue, then a text message.
        let mut chop = client_frame(0x01, b"fragment1");
        chop.extend(client_frame(0x80, b"fragment2"));
        chop.extend(client_frame(0x00, b"fragment3"));
        chop.extend(client_frame(TEXT, b"fragment4"));
        // The reader queues the echo and meets the violation microseconds later; a Close
        // that overtook the queue would win that race often, not always: try a few times.
        for _ in 0..20 {
            let mut raw = Raw::connect(server.local_addr(), "/echo");
            raw.sock.write_all(&chop).unwrap();
            assert_eq!(
                next_significant(&mut raw),
                Some(Frame::Data(TEXT, b"fragment1fragment2".to_vec()))
            );
            assert_eq!(next_significant(&mut raw), Some(Frame::Close(1002)));
            raw.send_frame(CLOSE, &1002u16.to_be_bytes());
            assert_server_closes_first(&mut raw, Duration::from_secs(2));
        }
        server.shutdown();
    });
}
