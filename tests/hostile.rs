//! Hostile input and limits (issue 3): every bad input gets a precise answer, and after
//! it the server still serves a fresh client and its thread count is back at baseline.
//!
//! Where a real client would refuse to send the bad bytes, the tests write them over raw
//! TCP. Each asserts three things in order: the exact status line or Close code; that a
//! fresh client is served (an echo round trip); that the thread count returns to the
//! baseline taken just after the test's server started (the server's own process, for
//! the tests that run `wshub serve` as a child). Tests in one binary share one process,
//! so they take [`SERIAL`] and run one at a time: another test's threads would
//! otherwise pollute the count.

mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use wshub::Connection;

/// One test at a time in this binary; see the module docs.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next test must still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const LIMIT: Duration = Duration::from_secs(30);

/// A started server and the thread count taken right after it started.
struct Case {
    server: Server,
    addr: SocketAddr,
    baseline: usize,
}

impl Case {
    fn start(config: Config) -> Case {
        Case::with(start(config))
    }

    fn with(server: Server) -> Case {
        let addr = server.local_addr();
        let baseline = settled_thread_count();
        Case {
            server,
            addr,
            baseline,
        }
    }

    /// The last two steps of every test: a fresh client is served, and every thread the
    /// test's connections used is gone.
    fn finish(self) {
        echo_round_trip(self.addr, None);
        self.threads_back();
    }

    fn threads_back(self) {
        let now = wait_for_threads(self.baseline, Duration::from_secs(10));
        assert_eq!(now, self.baseline, "threads left behind");
        assert_eq!(self.server.connections(), 0, "connection slots left taken");
    }
}

/// The thread count once it has stopped changing for 200 ms. The test harness starts
/// the next test's thread just as the previous test releases [`SERIAL`]; waiting for
/// the count to settle keeps that thread out of (or in) the baseline for good.
fn settled_thread_count() -> usize {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = thread_count();
    let mut since = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        let n = thread_count();
        if n != last {
            last = n;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(200) {
            break;
        }
    }
    last
}

/// A fresh tungstenite client on `/echo` (with an `Origin` if given) gets its message
/// back, then closes cleanly.
fn echo_round_trip(addr: SocketAddr, origin: Option<&str>) {
    let mut request = format!("ws://{addr}/echo").into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse().unwrap());
    }
    let (mut ws, _) = tungstenite::connect(request).expect("a fresh client connects");
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws.send(Message::text("fresh")).unwrap();
    assert_eq!(next_data(&mut ws), Message::text("fresh"));
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
}

/// Reads frames up to the server's Close; returns its code and reason and the data
/// frames before it.
fn read_close(raw: &mut Raw) -> (u16, String, Vec<(u8, Vec<u8>)>) {
    let mut before = Vec::new();
    loop {
        let (b0, payload) = raw.read_frame().expect("a Close frame before the end");
        if b0 & 0x0F == 0x8 {
            assert_eq!(b0, 0x88, "a final Close frame, no reserved bits");
            assert!(payload.len() >= 2, "the Close carries a code: {payload:?}");
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason = String::from_utf8(payload[2..].to_vec()).expect("a UTF-8 reason");
            return (code, reason, before);
        }
        before.push((b0, payload));
    }
}

/// After the Close: nothing more, and the server closes the TCP connection (EOF or
/// reset), rather than leaving it open until our read timeout.
fn assert_server_closed(raw: &mut Raw) {
    raw.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if let Some((b0, payload)) = raw.read_frame() {
        panic!("a frame after the Close: {b0:#04x} {payload:?}");
    }
    let mut byte = [0u8; 1];
    match raw.sock.read(&mut byte) {
        Ok(0) => {}
        Err(e) if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        other => panic!("the server left the connection open: {other:?}"),
    }
}

/// Upgrades on `/echo`, sends `bytes`, and expects exactly one Close with `code`
/// (and no data before it), then the end of the connection.
fn expect_close_code(addr: SocketAddr, bytes: &[u8], code: u16) -> String {
    let mut raw = Raw::connect(addr, "/echo");
    raw.sock.write_all(bytes).unwrap();
    let (got, reason, before) = read_close(&mut raw);
    assert_eq!(got, code, "Close code for {bytes:02x?} (reason {reason:?})");
    assert!(before.is_empty(), "frames before the Close: {before:?}");
    assert_server_closed(&mut raw);
    reason
}

/// A complete plain-HTTP exchange: the whole response, which must end with the
/// server closing the connection.
fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let response = raw_exchange(addr, request);
    assert!(
        !response.is_empty(),
        "no response to {:?}",
        String::from_utf8_lossy(request)
    );
    response
}

// ---------------------------------------------------------------------------------
// Before the upgrade
// ---------------------------------------------------------------------------------

#[test]
fn slowloris_clients_get_408_while_a_fresh_client_is_served() {
    let _serial = serial();
    watchdog(LIMIT, || {
        const SLOW: usize = 50;
        const TRICKLING: usize = 10;
        let timeout = Duration::from_secs(3);
        let mut config = test_config();
        config.handshake_timeout = timeout;
        let case = Case::start(config);
        let started = Instant::now();
        // 50 clients that start a request head and never finish it.
        let slow: Vec<TcpStream> = (0..SLOW)
            .map(|_| {
                let mut s = TcpStream::connect(case.addr).unwrap();
                s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
                s
            })
            .collect();
        // Each costs exactly one thread (its reader), none of them blocks another.
        let deadline = Instant::now() + Duration::from_secs(10);
        while case.server.connections() < SLOW || thread_count() < case.baseline + SLOW {
            assert!(
                Instant::now() < deadline,
                "{} connections",
                case.server.connections()
            );
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            thread_count(),
            case.baseline + SLOW,
            "one reader thread per slow client"
        );
        // Ten of them trickle a byte every 200 ms until answered: that must not extend
        // their deadline (if it did, they would never be answered).
        let trickle: Vec<TcpStream> = slow[..TRICKLING].iter().map(|s| s.try_clone().unwrap()).collect();
        let trickler = thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(15);
            let mut open = trickle;
            while !open.is_empty() && Instant::now() < until {
                open.retain_mut(|s| s.write_all(b"a").is_ok());
                thread::sleep(Duration::from_millis(200));
            }
        });

        // While all 50 hang, a fresh client is served: before any of them is answered.
        echo_round_trip(case.addr, None);
        for (i, s) in slow.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            let unanswered = matches!(s.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            assert!(
                unanswered,
                "slow client {i} was answered before the fresh client was served"
            );
            s.set_nonblocking(false).unwrap();
        }

        // Every slow client is answered 408 when its own deadline passes: not before the
        // handshake timeout, and all within a generous margin after it (no deadline
        // waits behind another, and none moves).
        for (i, mut s) in slow.into_iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut response = Vec::new();
            let _ = s.read_to_end(&mut response);
            let response = String::from_utf8_lossy(&response);
            assert_eq!(
                status_line(&response),
                "HTTP/1.1 408 Request Timeout",
                "client {i}"
            );
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= timeout && elapsed < timeout + Duration::from_secs(5),
            "all 50 answered after {elapsed:?}"
        );
        trickler.join().unwrap();
        case.finish();
    });
}

#[test]
fn request_head_over_8_kib_gets_431() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        let big = format!(
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9 * 1024)
        );
        let r = http_exchange(case.addr, big.as_bytes());
        assert_eq!(status_line(&r), "HTTP/1.1 431 Request Header Fields Too Large");
        // The same status for a small head with more header lines than allowed.
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let r = http_exchange(case.addr, format!("GET /echo HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert_eq!(status_line(&r), "HTTP/1.1 431 Request Header Fields Too Large");
        case.finish();
    });
}

#[test]
fn bytes_that_are_not_http_get_400() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        let cases: [&[u8]; 4] = [
            // A TLS ClientHello's first bytes: https:// to a plain port.
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x91",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x00\x01\x02\x03\r\n\r\n",
            b"GET /echo HTTP/9.9\r\nHost: x\r\n\r\n",
        ];
        for bytes in cases {
            let r = http_exchange(case.addr, bytes);
            assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "for {bytes:02x?}");
            assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        }
        case.finish();
    });
}

#[test]
fn missing_or_malformed_websocket_key_gets_400() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        let good = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let valid = upgrade_request("/echo", "");
        let requests = [
            valid.replace(good, ""),
            valid.replace(good, "Sec-WebSocket-Key: \r\n"),
            valid.replace(good, "Sec-WebSocket-Key: short==\r\n"),
            valid.replace(good, "Sec-WebSocket-Key: not*base64*at*all*here!!\r\n"),
            // 24 characters, but decodes to 17 bytes' worth of bits.
            valid.replace(good, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n"),
        ];
        for request in &requests {
            let r = http_exchange(case.addr, request.as_bytes());
            assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "for {request:?}");
        }
        case.finish();
    });
}

#[test]
fn websocket_headers_without_upgrade_get_400() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        let valid = upgrade_request("/echo", "");
        let requests = [
            valid.replace("Upgrade: websocket\r\n", ""),
            valid.replace("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"),
            valid.replace("Connection: Upgrade\r\n", ""),
        ];
        for request in &requests {
            let r = http_exchange(case.addr, request.as_bytes());
            assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "for {request:?}");
        }
        case.finish();
    });
}

#[test]
fn plain_get_on_a_websocket_path_unknown_path_and_other_methods_get_426_404_405() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        let cases = [
            (
                "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
                "HTTP/1.1 426 Upgrade Required",
            ),
            (upgrade_request("/nowhere", ""), "HTTP/1.1 404 Not Found"),
            (
                upgrade_request("/echo", "").replacen("GET", "POST", 1),
                "HTTP/1.1 405 Method Not Allowed",
            ),
            (
                "DELETE /chat HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
                "HTTP/1.1 405 Method Not Allowed",
            ),
        ];
        for (request, status) in &cases {
            let r = http_exchange(case.addr, request.as_bytes());
            assert_eq!(status_line(&r), *status, "for {request:?}");
        }
        case.finish();
    });
}

#[test]
fn wrong_websocket_version_gets_426_naming_version_13() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        for version in ["8", "12", "14", "banana"] {
            let request = upgrade_request("/echo", "").replace(
                "Sec-WebSocket-Version: 13",
                &format!("Sec-WebSocket-Version: {version}"),
            );
            let r = http_exchange(case.addr, request.as_bytes());
            assert_eq!(
                status_line(&r),
                "HTTP/1.1 426 Upgrade Required",
                "version {version}"
            );
            assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{r}");
        }
        case.finish();
    });
}

#[test]
fn flood_past_max_connections_gets_503_and_a_freed_slot_is_reused() {
    let _serial = serial();
    watchdog(LIMIT, || {
        const MAX: usize = 20;
        let mut config = test_config();
        config.max_connections = MAX;
        let case = Case::start(config);
        let mut open: Vec<Client> = (0..MAX).map(|_| connect(case.addr, "/echo")).collect();
        assert_eq!(case.server.connections(), MAX);

        // 30 more at once: every one is answered 503 before any upgrade.
        let mut flood: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(case.addr).unwrap()).collect();
        for s in &mut flood {
            s.write_all(upgrade_request("/echo", "").as_bytes()).unwrap();
        }
        for (i, mut s) in flood.into_iter().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut response = Vec::new();
            let _ = s.read_to_end(&mut response);
            let response = String::from_utf8_lossy(&response);
            assert_eq!(
                status_line(&response),
                "HTTP/1.1 503 Service Unavailable",
                "client {i}"
            );
            assert!(response.contains("\r\nRetry-After: 1\r\n"), "{response}");
        }
        // The 20 inside never noticed.
        for ws in &mut open {
            ws.send(Message::text("still here")).unwrap();
            assert_eq!(next_data(ws), Message::text("still here"));
        }
        assert_eq!(case.server.connections(), MAX);

        // Five leave; their slots free, and newcomers get them.
        for mut ws in open.drain(..5) {
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while case.server.connections() > MAX - 5 {
            assert!(
                Instant::now() < deadline,
                "slots not freed: {}",
                case.server.connections()
            );
            thread::sleep(Duration::from_millis(10));
        }
        let mut newcomers: Vec<Client> = (0..4).map(|_| connect(case.addr, "/echo")).collect();
        echo_round_trip(case.addr, None); // the fifth free slot
        for ws in &mut newcomers {
            ws.send(Message::text("in")).unwrap();
            assert_eq!(next_data(ws), Message::text("in"));
        }
        for mut ws in open.into_iter().chain(newcomers) {
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        case.threads_back();
    });
}

#[test]
fn origin_outside_the_allowlist_gets_403_and_a_listed_origin_is_upgraded() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.allowed_origins = vec!["https://good.example".into(), "https://also.example".into()];
        let case = Case::start(config);
        for extra in [
            "Origin: https://evil.example\r\n",
            "Origin: https://good.example.evil.example\r\n",
            "Origin: null\r\n",
            "", // no Origin at all
        ] {
            let r = http_exchange(case.addr, upgrade_request("/echo", extra).as_bytes());
            assert_eq!(status_line(&r), "HTTP/1.1 403 Forbidden", "for {extra:?}");
        }
        // A listed origin is upgraded (101) and served.
        let mut raw = raw_connect_with(case.addr, "/echo", "Origin: https://also.example\r\n");
        raw.send_frame(0x81, b"hi");
        assert_eq!(raw.read_frame(), Some((0x81, b"hi".to_vec())));
        raw.send_frame(0x88, &1000u16.to_be_bytes());
        assert_eq!(read_close(&mut raw).0, 1000);
        assert_server_closed(&mut raw);
        echo_round_trip(case.addr, Some("https://good.example"));
        case.threads_back();
    });
}

// ---------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------

/// Resident memory of this process, in KiB.
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn fragmented_message_over_max_message_size_gets_1009() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.limits.max_message_size = 64 * 1024;
        config.limits.max_frame_size = 16 * 1024;
        let case = Case::start(config);
        let mut raw = Raw::connect(case.addr, "/echo");
        // Four 16 KiB fragments reach the limit exactly: nothing to object to yet.
        let piece = vec![b'x'; 16 * 1024];
        raw.send_frame(0x02, &piece);
        for _ in 0..3 {
            raw.send_frame(0x00, &piece);
        }
        raw.sock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let quiet = raw.sock.peek(&mut byte);
        assert!(
            matches!(&quiet, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
            "the server answered a message at its limit: {quiet:?}"
        );
        // One more byte is over it: 1009 at once, without waiting for the final frame.
        raw.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.send_frame(0x00, b"x");
        let (code, reason, before) = read_close(&mut raw);
        assert_eq!((code, reason.as_str()), (1009, "message too big"));
        assert!(before.is_empty());
        assert_server_closed(&mut raw);

        // The same limit on a text message sent whole (in one 16 KiB frame the frame
        // limit allows) is not an error, and an over-limit text message is 1009 too.
        let mut raw = Raw::connect(case.addr, "/echo");
        raw.send_frame(0x81, &piece);
        assert_eq!(raw.read_frame(), Some((0x81, piece.clone())));
        raw.send_frame(0x01, &piece);
        for _ in 0..4 {
            raw.send_frame(0x00, &piece);
        }
        assert_eq!(read_close(&mut raw).0, 1009);
        assert_server_closed(&mut raw);
        case.finish();
    });
}

#[test]
fn frame_over_max_frame_size_gets_1009_from_its_header_alone() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.limits.max_frame_size = 16 * 1024;
        let case = Case::start(config);
        // One byte over the frame limit (the message limit is the default 1 MiB).
        let mut raw = Raw::connect(case.addr, "/echo");
        raw.send_frame(0x82, &vec![0u8; 16 * 1024 + 1]);
        let (code, reason, _) = read_close(&mut raw);
        assert_eq!((code, reason.as_str()), (1009, "message too big"));
        assert_server_closed(&mut raw);

        // A header announcing a 1 GiB frame, and no payload: 1009 at once, and the
        // server never reserved the gigabyte.
        let rss_before = rss_kib();
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 30).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        let started = Instant::now();
        let reason = expect_close_code(case.addr, &header, 1009);
        // Generous: a server waiting for the payload would only answer at the idle
        // timeout (60 s), after our 10 s read timeout.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(reason, "message too big");
        // Same, with the largest length the header can carry.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        expect_close_code(case.addr, &header, 1009);
        let grown = rss_kib().saturating_sub(rss_before);
        assert!(grown < 64 * 1024, "resident memory grew by {grown} KiB");
        case.finish();
    });
}

// ---------------------------------------------------------------------------------
// Close codes for protocol violations
// ---------------------------------------------------------------------------------

#[test]
fn unmasked_client_frame_gets_1002() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        let reason = expect_close_code(case.addr, b"\x81\x05hello", 1002);
        assert_eq!(reason, "unmasked client frame");
        case.finish();
    });
}

#[test]
fn violation_sent_along_with_the_request_head_still_gets_its_close_code() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        // The bad frame arrives in the same segment as the request head, so the server
        // has it before the upgrade: it is handed on, not lost or misread.
        let cases: [(Vec<u8>, u16); 3] = [
            (b"\x81\x05hello".to_vec(), 1002),
            (client_frame(0x81, b"bad \xff"), 1007),
            (client_frame(0x83, b""), 1002),
        ];
        for (frame, code) in cases {
            let mut bytes = upgrade_request("/echo", "").into_bytes();
            bytes.extend_from_slice(&frame);
            let mut sock = TcpStream::connect(case.addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            sock.write_all(&bytes).unwrap();
            let mut response = Vec::new();
            sock.read_to_end(&mut response)
                .expect("the server closes the connection");
            let end = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a head")
                + 4;
            assert!(response.starts_with(b"HTTP/1.1 101 "));
            let ((b0, payload), used) = parse_server_frame(&response[end..]).expect("a frame");
            assert_eq!(b0, 0x88, "a Close frame");
            assert_eq!(
                u16::from_be_bytes([payload[0], payload[1]]),
                code,
                "for {frame:02x?}"
            );
            assert_eq!(end + used, response.len(), "nothing after the Close");
        }
        case.finish();
    });
}

#[test]
fn reserved_bits_set_get_1002() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        for first in [0xC1, 0xA1, 0x91, 0xF2] {
            let reason = expect_close_code(case.addr, &client_frame(first, b"hi"), 1002);
            assert_eq!(reason, "reserved bits set");
        }
        case.finish();
    });
}

#[test]
fn unknown_opcodes_get_1002() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        // Reserved data opcodes 0x3-0x7 and control opcodes 0xB-0xF.
        for first in [0x83, 0x87, 0x8B, 0x8F] {
            let reason = expect_close_code(case.addr, &client_frame(first, b""), 1002);
            assert_eq!(reason, "unknown opcode");
        }
        case.finish();
    });
}

#[test]
fn fragmented_control_frame_gets_1002() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        // A Ping, a Pong and a Close without FIN.
        for first in [0x09, 0x0A, 0x08] {
            let reason = expect_close_code(case.addr, &client_frame(first, b"x"), 1002);
            assert_eq!(reason, "fragmented control frame");
        }
        case.finish();
    });
}

#[test]
fn control_frame_over_125_bytes_gets_1002() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        for first in [0x89, 0x8A, 0x88] {
            let mut payload = vec![b'p'; 126];
            payload[..2].copy_from_slice(&1000u16.to_be_bytes());
            let reason = expect_close_code(case.addr, &client_frame(first, &payload), 1002);
            assert_eq!(reason, "control frame over 125 bytes");
        }
        case.finish();
    });
}

#[test]
fn continuation_without_a_start_gets_1002() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        for first in [0x80, 0x00] {
            let reason = expect_close_code(case.addr, &client_frame(first, b"orphan"), 1002);
            assert_eq!(reason, "continuation without a start");
        }
        // And a new message inside a fragmented one.
        let mut bytes = client_frame(0x01, b"start");
        bytes.extend(client_frame(0x81, b"interloper"));
        let reason = expect_close_code(case.addr, &bytes, 1002);
        assert_eq!(reason, "new message inside a fragmented one");
        case.finish();
    });
}

#[test]
fn invalid_utf8_in_a_text_message_gets_1007() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        expect_close_code(case.addr, &client_frame(0x81, b"bad \xff\xfe"), 1007);
        // Split across fragments, and a sequence cut off by the end of the message.
        let mut bytes = client_frame(0x01, b"ok \xe2\x82");
        bytes.extend(client_frame(0x80, b"\x28 no"));
        expect_close_code(case.addr, &bytes, 1007);
        expect_close_code(case.addr, &client_frame(0x81, b"cut \xe2\x82"), 1007);
        // Fail fast: a 64 KiB text frame whose first bytes are already invalid gets
        // 1007 without the server waiting for (and buffering) the rest of it.
        let mut frame = client_frame(0x81, &[0xff; 64 * 1024]);
        frame.truncate(frame.len() - 60 * 1024);
        expect_close_code(case.addr, &frame, 1007);
        case.finish();
    });
}

#[test]
fn invalid_utf8_in_a_close_reason_gets_1007() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye \xc3\x28");
        expect_close_code(case.addr, &client_frame(0x88, &payload), 1007);
        case.finish();
    });
}

#[test]
fn malformed_close_frames_get_1002() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let case = Case::start(test_config());
        // A one-byte payload cannot hold a code.
        let reason = expect_close_code(case.addr, &client_frame(0x88, &[0x03]), 1002);
        assert_eq!(reason, "invalid close frame");
        // Codes an endpoint must never send: reserved (1005, 1006, 1015), unassigned
        // (1016) or out of range (999, 5000).
        // (tungstenite answers these itself, with its own reason.)
        for code in [999u16, 1005, 1006, 1015, 1016, 5000] {
            expect_close_code(case.addr, &client_frame(0x88, &code.to_be_bytes()), 1002);
        }
        case.finish();
    });
}

// ---------------------------------------------------------------------------------
// Rate limit, handler panics
// ---------------------------------------------------------------------------------

#[test]
fn client_over_the_rate_limit_gets_1008_rate_limit() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.max_message_rate = Some(5);
        let case = Case::start(config);
        let mut raw = Raw::connect(case.addr, "/echo");
        // A burst of 20 messages: the bucket holds 5 (one second's worth).
        let burst: Vec<u8> = (0..20)
            .flat_map(|i| client_frame(0x81, format!("m{i}").as_bytes()))
            .collect();
        raw.sock.write_all(&burst).unwrap();
        let (code, reason, before) = read_close(&mut raw);
        assert_eq!((code, reason.as_str()), (1008, "rate limit"));
        // The messages within the limit were served, in order, and no more.
        let echoed: Vec<_> = before
            .into_iter()
            .map(|(_, p)| String::from_utf8(p).unwrap())
            .collect();
        assert!((5..=6).contains(&echoed.len()), "{echoed:?}");
        for (i, text) in echoed.iter().enumerate() {
            assert_eq!(text, &format!("m{i}"));
        }
        assert_server_closed(&mut raw);

        // A client within the limit is never cut: 5 a second for 1.5 s.
        let mut ws = connect(case.addr, "/echo");
        for i in 0..8 {
            ws.send(Message::text(format!("paced{i}"))).unwrap();
            assert_eq!(next_data(&mut ws), Message::text(format!("paced{i}")));
            thread::sleep(Duration::from_millis(210));
        }
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
        case.finish();
    });
}

#[test]
fn handler_panic_closes_only_its_connection_with_1011() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let server = Server::builder(test_config())
            .route("/fragile", |conn: &Connection, msg: Message| {
                if msg == Message::text("boom") {
                    panic!("the handler was told to panic");
                }
                let _ = conn.send(msg);
            })
            .start()
            .unwrap();
        let case = Case::with(server);
        let mut victim = connect(case.addr, "/fragile");
        let mut neighbour = connect(case.addr, "/fragile");
        for ws in [&mut victim, &mut neighbour] {
            ws.send(Message::text("before")).unwrap();
            assert_eq!(next_data(ws), Message::text("before"));
        }
        victim.send(Message::text("boom")).unwrap();
        let close = match victim.read().expect("a Close before the end") {
            Message::Close(frame) => frame.expect("a Close code"),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(u16::from(close.code), 1011);
        while victim.read().is_ok() {}

        // The neighbour on the same route, and a client on another, carry on; so does
        // a newcomer on the panicking route.
        neighbour.send(Message::text("after")).unwrap();
        assert_eq!(next_data(&mut neighbour), Message::text("after"));
        let mut newcomer = connect(case.addr, "/fragile");
        newcomer.send(Message::text("new")).unwrap();
        assert_eq!(next_data(&mut newcomer), Message::text("new"));
        echo_round_trip(case.addr, None);
        for mut ws in [neighbour, newcomer] {
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
        drop(victim);
        case.threads_back();
    });
}

// ---------------------------------------------------------------------------------
// Out of file descriptors
// ---------------------------------------------------------------------------------

/// A `wshub serve` child, optionally with a lowered descriptor limit; killed (by its
/// PID) on drop, so a failing test leaves no process behind.
struct ChildServer(ServeProcess);

impl ChildServer {
    fn start(nofile: Option<libc::rlim_t>, args: &[&str]) -> ChildServer {
        ChildServer(ServeProcess::start_with_nofile(nofile, args))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn pid(&self) -> u32 {
        self.0.child.id()
    }

    /// Running (not exited, not a zombie), read from /proc without reaping it.
    fn child_alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
            .unwrap_or(false)
    }

    fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        self.0.wait_for_line(needle, limit)
    }

    /// User plus system CPU time the child has used so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces;
        // utime and stime are fields 14 and 15 of the whole line.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_sec)
    }

    fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn wait_for_threads(&self, baseline: usize, limit: Duration) -> usize {
        wait_for_count(baseline, limit, || self.threads())
    }
}

#[test]
fn out_of_file_descriptors_is_logged_backed_off_and_survived() {
    let _serial = serial();
    watchdog(Duration::from_secs(45), || {
        let server = ChildServer::start(Some(32), &["--handshake-timeout", "30s"]);
        let addr = server.addr();
        let own_baseline = settled_thread_count();
        let child_baseline = server.threads();
        // Connections that never send a request hold a descriptor each in the server
        // for the 30 s handshake timeout; 32 descriptors run out after about 25. The
        // rest wait in the listen backlog, where accept() fails with EMFILE.
        let held: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let line = server.wait_for_line("accept failed", Duration::from_secs(10));
        assert!(line.contains("os error 24"), "EMFILE expected: {line}");

        // Backing off, not spinning: over a second, well under a tenth of a core.
        let cpu_before = server.cpu_time();
        let wall = Instant::now();
        thread::sleep(Duration::from_secs(1));
        let used = server.cpu_time() - cpu_before;
        let elapsed = wall.elapsed();
        assert!(
            used * 10 < elapsed,
            "the server used {used:?} of CPU in {elapsed:?}"
        );
        assert!(server.child_alive(), "the server exited");

        // Descriptors come back when the clients leave; the server accepts and serves
        // again (within its back-off, at most a second).
        drop(held);
        echo_round_trip(addr, None);
        assert!(server.child_alive(), "the server exited");
        let now = server.wait_for_threads(child_baseline, Duration::from_secs(10));
        assert_eq!(now, child_baseline, "server threads left behind");
        drop(server);
        let now = wait_for_threads(own_baseline, Duration::from_secs(10));
        assert!(
            now <= own_baseline,
            "test threads left behind: {now} > {own_baseline}"
        );
    });
}

#[test]
fn limit_flags_of_wshub_serve_are_enforced() {
    let _serial = serial();
    watchdog(LIMIT, || {
        let server = ChildServer::start(
            None,
            &[
                "--max-message-size",
                "1KiB",
                "--max-frame-size",
                "512",
                "--allowed-origin",
                "https://good.example",
                "--max-connections",
                "3",
            ],
        );
        let addr = server.addr();
        let baseline = server.threads();
        let good = "Origin: https://good.example\r\n";
        let r = http_exchange(
            addr,
            upgrade_request("/echo", "Origin: https://evil.example\r\n").as_bytes(),
        );
        assert_eq!(status_line(&r), "HTTP/1.1 403 Forbidden");

        // 1 KiB in two 512-byte frames is within both limits; a 513-byte frame is not.
        let mut raw = raw_connect_with(addr, "/echo", good);
        raw.send_frame(0x02, &[1; 512]);
        raw.send_frame(0x80, &[2; 512]);
        let (b0, payload) = raw.read_frame().unwrap();
        assert_eq!((b0, payload.len()), (0x82, 1024));
        raw.send_frame(0x82, &[0; 513]);
        assert_eq!(read_close(&mut raw).0, 1009);
        assert_server_closed(&mut raw);
        // Three 400-byte fragments are over the 1 KiB message limit.
        let mut raw = raw_connect_with(addr, "/echo", good);
        for first in [0x01, 0x00, 0x80] {
            raw.send_frame(first, &[b'a'; 400]);
        }
        assert_eq!(read_close(&mut raw).0, 1009);
        assert_server_closed(&mut raw);
        drop(raw);
        // Those two have left (their slots are free) once their threads are gone.
        assert_eq!(
            server.wait_for_threads(baseline, Duration::from_secs(10)),
            baseline
        );

        // Three connections fill the server; the fourth is turned away.
        let mut three: Vec<Raw> = (0..3).map(|_| raw_connect_with(addr, "/echo", good)).collect();
        let r = http_exchange(addr, upgrade_request("/echo", good).as_bytes());
        assert_eq!(status_line(&r), "HTTP/1.1 503 Service Unavailable");
        for raw in &mut three {
            raw.send_frame(0x88, &1000u16.to_be_bytes());
            assert_eq!(read_close(raw).0, 1000);
            assert_server_closed(raw);
        }
        drop(three);
        // A slot frees when its connection's threads end, just after the client left.
        assert_eq!(
            server.wait_for_threads(baseline, Duration::from_secs(10)),
            baseline
        );

        echo_round_trip(addr, Some("https://good.example"));
        let now = server.wait_for_threads(baseline, Duration::from_secs(10));
        assert_eq!(now, baseline, "server threads left behind");
    });
}
