//! The server's behaviour over real loopback sockets: echo, chat ordering, slow
//! consumers, timeouts, the single-writer rules, and drain-then-exit.

mod support;

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream as MaybeTls;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn echo_returns_text_and_binary_unchanged() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut ws = connect(server.local_addr(), "/echo");
        let big_text = "x".repeat(512 * 1024);
        let big_binary: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
        let cases = [
            Message::text("hello"),
            Message::text(""),
            Message::binary(Vec::new()),
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::text(big_text),
            Message::binary(big_binary),
        ];
        for msg in cases {
            ws.send(msg.clone()).unwrap();
            assert_eq!(next_data(&mut ws), msg);
        }
    });
}

#[test]
fn chat_broadcast_has_one_total_order_and_per_sender_order() {
    const CLIENTS: usize = 6;
    const EACH: usize = 40;
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        let mut clients: Vec<Client> = (0..CLIENTS).map(|_| connect(addr, "/chat")).collect();
        // Every client is registered once its own probe comes back to it.
        for (i, ws) in clients.iter_mut().enumerate() {
            ws.send(Message::text(format!("probe{i}"))).unwrap();
            while next_data(ws) != Message::text(format!("probe{i}")) {}
        }
        // Drain the other clients' probes so each log starts clean.
        for (i, ws) in clients.iter_mut().enumerate() {
            for _ in (i + 1)..CLIENTS {
                next_data(ws);
            }
        }
        let threads: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut ws)| {
                thread::spawn(move || {
                    // Closed loop: send message k+1 once message k has come back, so
                    // every sender has one message in flight and all of them interleave.
                    let mut log = Vec::new();
                    let mut sent = 1;
                    ws.send(Message::text(format!("{i}:0"))).unwrap();
                    while log.len() < CLIENTS * EACH {
                        let text = next_data(&mut ws).into_text().unwrap().to_string();
                        if text == format!("{i}:{}", sent - 1) && sent < EACH {
                            ws.send(Message::text(format!("{i}:{sent}"))).unwrap();
                            sent += 1;
                        }
                        log.push(text);
                    }
                    log
                })
            })
            .collect();
        let logs: Vec<Vec<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for log in &logs {
            assert_eq!(log, &logs[0], "every client sees the same total order");
        }
        let mut next: HashMap<&str, usize> = HashMap::new();
        for text in &logs[0] {
            let (sender, k) = text.split_once(':').unwrap();
            let expect = next.entry(sender).or_insert(0);
            assert_eq!(k.parse::<usize>().unwrap(), *expect, "sender {sender} in order");
            *expect += 1;
        }
        assert!(next.values().all(|n| *n == EACH));
    });
}

#[test]
fn slow_consumer_is_evicted_while_others_receive_every_message() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.limits.queue_size = 16;
        // If the hub ever waited on the slow client, the others would stall this long.
        config.write_timeout = Duration::from_secs(60);
        let server = start(config);
        let addr = server.local_addr();
        let mut slow = Raw::connect(addr, "/chat");
        let mut good = connect(addr, "/chat");
        good.send(Message::text("ready")).unwrap();
        assert_eq!(next_data(&mut good), Message::text("ready"));

        // The publisher sends message i+1 once the good client has message i, so the
        // good client's queue never fills; the slow one never reads, so its socket
        // buffers fill, then its queue, and the hub cuts it.
        const COUNT: usize = 400;
        let (ack_tx, ack_rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for i in 0..COUNT {
                let Message::Binary(b) = next_data(&mut good) else {
                    panic!("binary expected")
                };
                assert_eq!(b[0], (i % 256) as u8, "message {i} in order");
                ack_tx.send(()).unwrap();
            }
            good
        });
        let hub = server.hub();
        for i in 0..COUNT {
            let mut p = vec![7u8; 64 * 1024];
            p[0] = (i % 256) as u8;
            hub.broadcast("/chat", Message::binary(p)).unwrap();
            ack_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("the good client keeps receiving");
        }
        let _good = reader.join().unwrap();
        // 400 x 64 KiB is far more than socket buffers hold: the slow client was cut.
        slow.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(slow.closed_by_server());
        assert_eq!(server.connections(), 1);
    });
}

#[test]
fn silent_peer_is_closed_by_idle_timeout_while_a_pinged_peer_stays() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.idle_timeout = Duration::from_millis(800);
        config.ping_interval = Duration::from_millis(200);
        let server = start(config);
        let addr = server.local_addr();
        let mut silent = Raw::connect(addr, "/echo");
        let mut live = connect(addr, "/echo");
        // The live client answers pings (tungstenite replies while reading), on a thread
        // of its own, while the silent one never answers anything.
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let live = thread::spawn(move || {
            let mut pings = 0;
            // Five pings at the least (a full idle timeout of them), and until told.
            while pings < 5 || stop_rx.try_recv().is_err() {
                if let Message::Ping(_) = live.read().expect("the live client stays open") {
                    pings += 1;
                }
            }
            live.send(Message::text("still here")).unwrap();
            assert_eq!(next_data(&mut live), Message::text("still here"));
        });
        // Events, not a clock: the silent client's Close comes after one idle timeout,
        // while the live one, still answering, stays open past it.
        let (code, reason) = silent.read_close().expect("a Close for the silent client");
        assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
        assert!(silent.closed_by_server());
        stop_tx.send(()).unwrap();
        live.join().unwrap();
    });
}

#[test]
fn broadcast_reaches_an_idle_reader_at_once_not_after_a_read_timeout() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.idle_timeout = Duration::from_secs(60);
        config.ping_interval = Duration::from_secs(30);
        let server = start(config);
        let mut ws = connect(server.local_addr(), "/chat");
        ws.send(Message::text("joined")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("joined"));
        // The reader thread is now blocked in read() with a 60 s timeout.
        let started = Instant::now();
        server.hub().broadcast("/chat", Message::text("news")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("news"));
        // Generous, yet far below the 60 s read timeout a broadcast waiting for the
        // reader would wait out (our own read would give up at 10 s first).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_pong_overtakes_broadcasts_queued_for_a_client_that_is_not_reading() {
    watchdog(LIMIT, || {
        const QUEUED: usize = 2000;
        const SIZE: usize = 16 * 1024;
        let mut config = test_config();
        config.limits.queue_size = QUEUED + 16;
        config.max_queue_bytes = usize::MAX; // the count bound only
        config.write_timeout = Duration::from_secs(20);
        let server = start(config);
        let addr = server.local_addr();
        let mut slow = Raw::connect(addr, "/chat");
        // A fixed receive buffer: the kernel would otherwise grow it (up to tcp_rmem's
        // maximum, 32 MiB on some machines) and swallow the whole queue.
        fix_recv_buffer(&slow.sock, 64 * 1024);
        slow.send_frame(0x81, b"slow");
        assert_eq!(slow.read_frame(), Some((0x81, b"slow".to_vec())), "registered");
        let mut witness = connect(addr, "/chat");
        witness.send(Message::text("witness")).unwrap();
        while next_data(&mut witness) != Message::text("witness") {}

        // The slow client stops reading: its socket buffers fill and the rest queues.
        // Once the witness has every broadcast, the hub has offered every one of them to
        // the slow client too (one loop, in order), so they are all queued or on the wire.
        let hub = server.hub();
        for i in 0..QUEUED {
            let mut p = vec![b'q'; SIZE];
            p[..4].copy_from_slice(&(i as u32).to_be_bytes());
            hub.broadcast("/chat", Message::binary(p)).unwrap();
        }
        for _ in 0..QUEUED {
            next_data(&mut witness);
        }
        slow.send_frame(0x89, b"are you there");
        // The server's reader answers the ping within microseconds; give it a moment
        // before reading, so what we count is the writer's choice, not that race.
        thread::sleep(Duration::from_millis(100));

        // What may come before the Pong: what the socket buffers held when it was queued,
        // and the batch the writer was in the middle of. Everything else must wait.
        let in_buffers = recv_buffer(&slow.sock) + max_send_buffer();
        let bound = in_buffers / SIZE + 2 * WRITER_BATCH + 2;
        assert!(
            QUEUED > 2 * bound,
            "the queue must hold far more than the buffers"
        );
        let mut before = 0;
        loop {
            let (b0, payload) = slow.read_frame().expect("a frame");
            match b0 & 0x0F {
                0xA => {
                    assert_eq!(payload, b"are you there");
                    break;
                }
                0x2 => {
                    assert_eq!(payload[..4], (before as u32).to_be_bytes(), "in order");
                    before += 1;
                }
                _ => {}
            }
        }
        assert!(
            before <= bound,
            "{before} of {QUEUED} queued broadcasts came before the Pong (bound {bound})"
        );
        // And the Pong took nothing away: every broadcast still arrives, in order.
        let mut next = before;
        while next < QUEUED {
            let (b0, payload) = slow.read_frame().expect("a frame");
            if b0 & 0x0F == 0x2 {
                assert_eq!(payload[..4], (next as u32).to_be_bytes(), "in order");
                next += 1;
            }
        }
    });
}

/// Frames the writer gathers into one vectored write (`MAX_BATCH` in the writer).
const WRITER_BATCH: usize = 64;

#[test]
fn the_hubs_pings_queue_in_order_for_a_client_that_is_not_reading() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.limits.queue_size = 1000;
        config.max_queue_bytes = usize::MAX; // the count bound only: 200 x 64 KiB queue
        config.ping_interval = Duration::from_millis(100);
        config.idle_timeout = Duration::from_secs(5);
        let server = start(config);
        let mut ws = connect(server.local_addr(), "/chat");
        ws.send(Message::text("joined")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("joined"));
        // 100 x 64 KiB is more than the socket buffers hold while we do not read: the
        // writer blocks and the rest queues, and so do the hub's pings (its non-blocking
        // send only writes when nothing is queued).
        let big = "b".repeat(64 * 1024);
        let broadcast = |i: usize| {
            let msg = format!("{i:03}{big}");
            server.hub().broadcast("/chat", Message::text(msg)).unwrap();
        };
        (0..100).for_each(broadcast);
        // Ten ping intervals: the pings this test is about come due, behind message 99.
        thread::sleep(Duration::from_millis(1000));
        (100..200).for_each(broadcast);
        let mut pings_after = vec![0; 200];
        let mut data = 0;
        while data < 200 {
            match ws.read().unwrap() {
                Message::Text(t) => {
                    assert_eq!(&t[..3], format!("{data:03}"), "broadcasts in order");
                    data += 1;
                }
                Message::Ping(_) if data > 0 => pings_after[data - 1] += 1,
                // A slow machine may ping before the first broadcast is sent.
                Message::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // At least one, not ten: a loaded machine may run the hub late, but a ping that
        // came due while message 99 was queued must arrive after it and before 100.
        assert!(
            pings_after[99] >= 1,
            "pinged every 100 ms during the 1 s between messages 99 and 100: {pings_after:?}"
        );
    });
}

#[test]
fn a_connection_never_sends_two_close_frames() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let addr = server.local_addr();
        // The client answers the server's Close 1001 with its own Close: tungstenite in
        // the reader sees a "new" close and queues a reply, which the writer must drop.
        let mut raw = Raw::connect(addr, "/echo");
        let drain = thread::spawn(move || server.shutdown());
        let mut closes = 0;
        let mut codes = Vec::new();
        while let Some((b0, payload)) = raw.read_frame() {
            if b0 & 0x0F == 0x8 {
                closes += 1;
                codes.push(u16::from_be_bytes([payload[0], payload[1]]));
                if closes == 1 {
                    raw.send_frame(0x88, &payload[..2]);
                }
            }
        }
        assert_eq!(closes, 1, "exactly one Close frame on the wire");
        assert_eq!(codes, [1001]);
        let report = drain.join().unwrap();
        assert_eq!(report.connections, 1);
        assert_eq!(report.cut, 0, "the close handshake completed before the deadline");
        assert_eq!(report.closed, 1);
    });
}

#[test]
fn client_initiated_close_is_answered_once_with_its_code() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut raw = Raw::connect(server.local_addr(), "/echo");
        raw.send_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e']);
        let mut closes = Vec::new();
        while let Some((b0, payload)) = raw.read_frame() {
            if b0 & 0x0F == 0x8 {
                closes.push(payload);
            }
        }
        assert_eq!(closes, vec![vec![0x03, 0xE8, b'b', b'y', b'e']]);
    });
}

#[test]
fn a_finished_close_handshake_frees_the_connection_without_waiting_for_the_clients_fin() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut raw = Raw::connect(server.local_addr(), "/echo");
        raw.send_frame(0x88, &[0x03, 0xE8]);
        assert_eq!(raw.read_close_code(), Some(1000));
        // We keep our socket open. With the close handshake done and nothing unread, the
        // server has no reason to linger (1 s, `CLOSE_LINGER`) for our FIN: its threads
        // end now. The bound is the linger less a margin: the one thing it must tell
        // apart is "ended at once" from "waited out the linger".
        let started = Instant::now();
        while server.connections() > 0 {
            assert!(
                started.elapsed() < Duration::from_millis(900),
                "the connection outlived its close handshake by {:?}",
                started.elapsed()
            );
            thread::sleep(Duration::from_millis(5));
        }
        let rest = raw.rest_until_eof().expect("a clean FIN, not a reset");
        assert!(rest.is_empty(), "bytes after the Close: {rest:x?}");
    });
}

#[test]
fn a_client_still_sending_after_an_error_close_gets_the_close_before_any_reset() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut raw = Raw::connect(server.local_addr(), "/echo");
        // An unmasked frame is a protocol error (RFC 6455 §5.1): Close 1002. The bytes
        // after it are still unread when the server ends; it must linger, not reset.
        let mut bad = vec![0x81, 0x02, b'h', b'i'];
        bad.extend(std::iter::repeat_n(0x81u8, 4096));
        std::io::Write::write_all(&mut raw.sock, &bad).unwrap();
        assert_eq!(raw.read_close_code(), Some(1002));
    });
}

#[test]
fn shutdown_delivers_queued_messages_before_close_1001() {
    watchdog(LIMIT, || {
        const COUNT: usize = 200;
        const SIZE: usize = 64 * 1024;
        let mut config = test_config();
        config.drain_timeout = Duration::from_secs(10);
        config.max_queue_bytes = usize::MAX; // room for all 200 x 64 KiB
        let server = start(config);
        let mut ws = connect(server.local_addr(), "/chat");
        ws.send(Message::text("joined")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("joined"));
        // We do not read until the drain has begun: 200 x 64 KiB is more than twice what
        // the socket buffers can hold, so most of it is in the queue when the drain's
        // Close 1001 comes (broadcasts sent before the drain are ahead of it in the hub).
        let MaybeTls::Plain(sock) = ws.get_ref() else {
            unreachable!()
        };
        let buffers = fix_recv_buffer(sock, 64 * 1024) + max_send_buffer();
        assert!(buffers < COUNT * SIZE / 2, "the buffers hold {buffers} bytes");
        let hub = server.hub();
        for i in 0..COUNT {
            let mut p = vec![b'm'; SIZE];
            p[..4].copy_from_slice(&(i as u32).to_be_bytes());
            hub.broadcast("/chat", Message::binary(p)).unwrap();
        }
        // A bystander on another path, with nothing queued, gets its Close 1001 from the
        // same hub loop that queues ours: once it has it, our Close is queued behind the
        // broadcasts, and we start reading. (Reading earlier could empty the queue
        // before the drain reached it, and the test would prove nothing.)
        let mut bystander = Raw::connect(server.local_addr(), "/echo");
        let drain = thread::spawn(move || server.shutdown());
        assert_eq!(bystander.read_close_code(), Some(1001));
        bystander.send_frame(0x88, &1001u16.to_be_bytes());
        let mut got = Vec::new();
        let close = loop {
            match ws.read() {
                Ok(Message::Binary(b)) => got.push(u32::from_be_bytes(b[..4].try_into().unwrap())),
                Ok(Message::Close(frame)) => break frame,
                Ok(_) => {}
                Err(e) => panic!("connection ended without a Close: {e}"),
            }
        };
        let expected: Vec<u32> = (0..COUNT as u32).collect();
        assert_eq!(got, expected, "every queued message, in order, before the Close");
        assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
        // Finish the handshake: tungstenite sends our reply on the next read.
        while ws.read().is_ok() {}
        let report = drain.join().unwrap();
        assert_eq!(report.connections, 2);
        assert_eq!(report.cut, 0);
    });
}

#[test]
fn shutdown_ends_within_the_drain_timeout_when_clients_never_answer() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.drain_timeout = Duration::from_millis(500);
        let server = start(config);
        let addr = server.local_addr();
        // Raw clients that never read and never answer the Close.
        let _mute: Vec<Raw> = (0..5).map(|_| Raw::connect(addr, "/echo")).collect();
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        thread::spawn(move || tx.send(server.shutdown()).unwrap());
        // Generous bounds: the drain must not wait for the mute clients past its
        // deadline (it would wait forever), and must wait for them up to it.
        let report = rx.recv_timeout(Duration::from_secs(10)).expect("drain finishes");
        assert_eq!(report.connections, 5);
        assert!(report.cut > 0, "the mute clients were cut at the deadline");
        assert!(report.elapsed < Duration::from_secs(8), "{:?}", report.elapsed);
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(report.abandoned_threads, 0);
    });
}

#[test]
fn the_drain_deadline_also_cuts_connections_still_in_their_handshake() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.drain_timeout = Duration::from_millis(500);
        config.handshake_timeout = Duration::from_secs(60);
        let server = start(config);
        let mut half = std::net::TcpStream::connect(server.local_addr()).unwrap();
        std::io::Write::write_all(&mut half, b"GET /echo HTTP/1.1\r\n").unwrap();
        // Make sure the server has taken the connection before the drain starts.
        while server.connections() == 0 {
            thread::yield_now();
        }
        let report = server.shutdown();
        assert!(report.cut > 0);
        // Generous: without the cut the drain would wait out the 60 s handshake timeout.
        assert!(report.elapsed < Duration::from_secs(10), "{:?}", report.elapsed);
    });
}

#[test]
fn new_connections_are_refused_from_the_start_of_the_drain() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.drain_timeout = Duration::from_secs(20);
        let server = start(config);
        let addr = server.local_addr();
        // A client that does not answer the Close keeps the drain going.
        let mut mute = Raw::connect(addr, "/echo");
        let drain = thread::spawn(move || server.shutdown());
        // The drain stops accepting before it sends Close 1001: once we have the Close,
        // the drain is under way and the listener must be gone.
        let (code, reason) = mute.read_close().expect("the drain's Close");
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
        let refused = std::net::TcpStream::connect(addr);
        assert!(refused.is_err(), "a connection was accepted during the drain");
        assert!(
            !drain.is_finished(),
            "the drain is still waiting for the mute client"
        );
        // Now answer, so the drain ends without waiting out its deadline.
        mute.send_frame(0x88, &1001u16.to_be_bytes());
        let report = drain.join().unwrap();
        assert_eq!(report.connections, 1);
        assert_eq!(report.cut, 0);
        assert!(std::net::TcpStream::connect(addr).is_err(), "and after it");
    });
}

#[test]
fn healthz_answers_200_ok_without_upgrade() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let r = raw_exchange(server.local_addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
        assert!(r.ends_with("\r\n\r\nok"), "{r}");
    });
}

#[test]
fn unknown_path_is_404_before_the_upgrade() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let r = raw_exchange(server.local_addr(), upgrade_request("/nope", "").as_bytes());
        assert_eq!(status_line(&r), "HTTP/1.1 404 Not Found");
    });
}

#[test]
fn plain_get_on_a_websocket_endpoint_is_426() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        for path in ["/echo", "/chat"] {
            let r = raw_exchange(
                server.local_addr(),
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            assert_eq!(status_line(&r), "HTTP/1.1 426 Upgrade Required");
        }
    });
}

#[test]
fn a_custom_route_runs_its_handler_and_can_broadcast_from_another_thread() {
    watchdog(LIMIT, || {
        let server = Server::builder(test_config())
            .route("/upper", |conn: &wshub::Connection, msg: Message| {
                if let Message::Text(t) = msg {
                    conn.send(Message::text(t.to_uppercase())).unwrap();
                }
            })
            .start()
            .unwrap();
        let mut ws = connect(server.local_addr(), "/upper");
        ws.send(Message::text("shout")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("SHOUT"));
        let hub = server.hub();
        thread::spawn(move || hub.broadcast("/upper", Message::text("from afar")).unwrap())
            .join()
            .unwrap();
        assert_eq!(next_data(&mut ws), Message::text("from afar"));
    });
}

#[test]
fn a_write_blocked_for_the_write_timeout_disconnects_the_client() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.write_timeout = Duration::from_millis(500);
        // Room for everything: this client is not cut as a slow consumer, only by the
        // write timeout.
        config.limits.queue_size = 1000;
        config.max_queue_bytes = usize::MAX;
        let server = start(config);
        let mut stuck = Raw::connect(server.local_addr(), "/chat");
        let buffers = fix_recv_buffer(&stuck.sock, 64 * 1024) + max_send_buffer();
        stuck.send_frame(0x81, b"joined");
        assert_eq!(stuck.read_frame(), Some((0x81, b"joined".to_vec())));
        // More than the buffers hold, and we stop reading: the writer blocks in write().
        let count = 2 * buffers / (64 * 1024) + 10;
        assert!(count < 1000);
        let hub = server.hub();
        for _ in 0..count {
            hub.broadcast("/chat", Message::binary(vec![1u8; 64 * 1024]))
                .unwrap();
        }
        // Without reading a byte, the connection ends: its slot is freed...
        let left = wait_for_count(0, Duration::from_secs(10), || server.connections());
        assert_eq!(left, 0, "the connection outlived its blocked write");
        // ...and the socket is closed under what we have not read.
        stuck.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(stuck.closed_by_server());
    });
}

#[test]
fn send_to_a_client_that_reads_too_slowly_returns_slow_consumer_and_cuts_it() {
    watchdog(LIMIT, || {
        const FRAME: usize = 8 << 20;
        let mut config = test_config();
        config.limits.queue_size = 4;
        config.max_queue_bytes = usize::MAX; // four 8 MiB frames
        config.write_timeout = Duration::from_secs(2);
        let (tx, rx) = mpsc::channel();
        let server = Server::builder(config)
            .route("/flood", move |conn: &wshub::Connection, _msg: Message| {
                // Sends until the queue stays full for the write timeout.
                for sent in 0..100usize {
                    if let Err(e) = conn.send(Message::binary(vec![0u8; FRAME])) {
                        tx.send((sent, e)).unwrap();
                        return;
                    }
                }
                tx.send((100, wshub::SendError::Closed)).unwrap();
            })
            .start()
            .unwrap();
        let raw = Raw::connect(server.local_addr(), "/flood");
        // The client reads, but slowly: 40 KiB every 10 ms, about 4 MB/s. Two rates
        // bound what works. The writer's blocking write fails only after a whole write
        // timeout without a byte taken, and the kernel wakes a writer blocked on a full
        // send buffer (at most 4 MiB) once half of it has drained: faster than 1 MB/s
        // keeps the writer going. The sender waits for room in the queue while the
        // writer works through its batch (four 8 MiB frames): slower than 16 MB/s keeps
        // the queue full for longer than the write timeout, and the sender gives up.
        // Our reads may run late on a loaded machine (4x margin) but never early.
        // (A client that does not read at all ends by the writer's own write timeout
        // first: `Closed`, not this.)
        let mut trickle = raw.sock.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut chunk = vec![0u8; 40 * 1024];
            loop {
                thread::sleep(Duration::from_millis(10));
                match std::io::Read::read(&mut trickle, &mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        });
        let mut raw = raw;
        raw.send_frame(0x81, b"go");
        let (sent, err) = rx.recv_timeout(Duration::from_secs(20)).expect("send gave up");
        assert_eq!(err, wshub::SendError::SlowConsumer, "after {sent} sends");
        assert!(sent >= 4, "the queue's 4 places were used first: {sent}");
        // The connection is cut: the slow reader meets the end of the stream.
        reader
            .join()
            .unwrap()
            .expect("the connection ends, not our read timeout");
        let left = wait_for_count(0, Duration::from_secs(10), || server.connections());
        assert_eq!(left, 0);
    });
}

#[test]
fn a_connection_that_registers_during_the_drain_also_gets_1001() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.drain_timeout = Duration::from_secs(5);
        config.handshake_timeout = Duration::from_secs(20);
        let server = start(config);
        let addr = server.local_addr();
        // One client open, and one still in its handshake when the drain begins.
        let mut open = Raw::connect(addr, "/echo");
        let request = upgrade_request("/echo", "");
        let (first, rest) = request.as_bytes().split_at(20);
        let mut late = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut late, first).unwrap();
        wait_until(Duration::from_secs(10), "both connections taken", || {
            server.connections() == 2
        });
        let drain = thread::spawn(move || server.shutdown());
        // The open client's 1001 shows the hub is draining; now the late one upgrades.
        assert_eq!(open.read_close_code(), Some(1001));
        std::io::Write::write_all(&mut late, rest).unwrap();
        let mut late = Raw::after_upgrade(late);
        assert_eq!(
            late.read_close_code(),
            Some(1001),
            "the late client is drained too"
        );
        for raw in [&mut open, &mut late] {
            raw.send_frame(0x88, &1001u16.to_be_bytes());
        }
        let report = drain.join().unwrap();
        assert_eq!(
            report.connections, 1,
            "only the open one was counted at the start"
        );
        assert_eq!(report.cut, 0, "both answered before the deadline");
    });
}

#[test]
fn a_handler_stuck_in_user_code_is_counted_as_an_abandoned_thread() {
    watchdog(LIMIT, || {
        let mut config = test_config();
        config.drain_timeout = Duration::from_millis(300);
        config.handshake_timeout = Duration::from_millis(300);
        let (entered_tx, entered) = mpsc::channel();
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        let server = Server::builder(config)
            .route("/stuck", move |_conn: &wshub::Connection, _msg: Message| {
                entered_tx.send(()).unwrap();
                // Stuck until the test lets go (bounded, so a failure leaves no thread).
                let _ = released.recv_timeout(Duration::from_secs(20));
            })
            .start()
            .unwrap();
        let baseline = thread_count();
        let mut raw = Raw::connect(server.local_addr(), "/stuck");
        raw.send_frame(0x81, b"hang");
        entered
            .recv_timeout(Duration::from_secs(10))
            .expect("the handler runs");
        let report = server.shutdown();
        assert!(report.cut > 0);
        assert_eq!(report.abandoned_threads, 1, "{report:?}");
        // Let it go: the abandoned thread then ends by itself.
        release.send(()).unwrap();
        drop(raw);
        let now = wait_for_threads(baseline, Duration::from_secs(10));
        assert!(now <= baseline, "threads left: {now} (baseline {baseline})");
    });
}
