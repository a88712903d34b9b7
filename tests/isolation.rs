//! Isolation (issue #17): one client cannot pin the kernel's memory, stretch the drain
//! or keep another client waiting for its answer. Everything over loopback, bounded in
//! count and time; the kernel's view of each server socket is read from
//! `/proc/net/tcp` (only this server's port, so other programs do not disturb it) and
//! `/proc/net/sockstat` is printed before and after for the record.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::*;
use tungstenite::Message;

/// One TCP socket as `/proc/net/tcp` shows it.
#[derive(Debug, Clone, Copy)]
struct KernelSocket {
    local_port: u16,
    /// The kernel's state number: 1 ESTABLISHED, 4 FIN-WAIT-1, 10 LISTEN, ...
    state: u8,
    /// Bytes sent but not yet acknowledged, or not yet sent.
    tx_queue: u64,
}

const FIN_WAIT_1: u8 = 4;
const LISTEN: u8 = 10;

fn kernel_sockets() -> Vec<KernelSocket> {
    let text = fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let tx = f[4].split(':').next().unwrap();
            KernelSocket {
                local_port: port(f[1]),
                state: u8::from_str_radix(f[3], 16).unwrap(),
                tx_queue: u64::from_str_radix(tx, 16).unwrap(),
            }
        })
        .collect()
}

/// The server's side of its client connections (the listener left out).
fn server_side(port: u16) -> Vec<KernelSocket> {
    kernel_sockets()
        .into_iter()
        .filter(|s| s.local_port == port && s.state != LISTEN)
        .collect()
}

fn sockstat_tcp() -> String {
    fs::read_to_string("/proc/net/sockstat")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .unwrap_or("")
        .to_owned()
}

/// A client that upgrades on `path` and then never reads: a 4 KiB receive buffer, so
/// that what piles up is the server's, not ours.
fn non_reader(addr: SocketAddr, path: &str) -> TcpStream {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut sock: TcpStream = sock.into();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(upgrade_request(path, "").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            sock.read(&mut byte).unwrap(),
            1,
            "server closed during the handshake"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    sock
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cut_slow_consumers_leave_no_unsent_data_in_the_kernel() {
    watchdog(Duration::from_secs(90), || {
        let mut config = test_config();
        config.limits.queue_size = 8;
        let server = start(config);
        let addr = server.local_addr();
        let port = addr.port();
        let hub = server.hub();
        let payload = Message::binary(vec![0x5a; 64 * 1024]);
        eprintln!("before: {}", sockstat_tcp());
        // Every batch of non-readers is cut while all the earlier ones keep their end of
        // the connection open: what the kernel holds for the server must not grow.
        let mut kept_open = Vec::new();
        for batch in 0..3 {
            let clients: Vec<TcpStream> = (0..10).map(|_| non_reader(addr, "/chat")).collect();
            assert!(eventually(Duration::from_secs(10), || server.connections() == 10));
            let mut sent = 0;
            let give_up = Instant::now() + Duration::from_secs(20);
            while server.connections() > 0 {
                assert!(Instant::now() < give_up, "the non-readers were never cut");
                hub.broadcast("/chat", payload.clone()).unwrap();
                sent += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            let settled = eventually(Duration::from_secs(10), || server_side(port).is_empty());
            let left = server_side(port);
            eprintln!(
                "batch {batch}: cut after {sent} broadcasts; {}; server sockets left: {left:?}",
                sockstat_tcp()
            );
            assert!(
                settled,
                "after the cut the server still holds sockets (FIN-WAIT-1 is state {FIN_WAIT_1}): {left:?}"
            );
            kept_open.extend(clients);
        }
        eprintln!("after: {}", sockstat_tcp());
        drop(kept_open);
        server.shutdown();
    });
}

#[test]
fn a_client_that_does_not_read_cannot_make_the_kernel_buffer_megabytes() {
    watchdog(Duration::from_secs(60), || {
        let mut config = test_config();
        // Room for everything in the queue: the connection is not cut, so the kernel's
        // send buffer is what fills.
        config.limits.queue_size = 4096;
        config.max_queue_bytes = 1 << 30;
        let send_buffer = config.send_buffer_size;
        assert!(send_buffer > 0, "the default bounds the send buffer");
        let server = start(config);
        let addr = server.local_addr();
        let port = addr.port();
        let client = non_reader(addr, "/chat");
        assert!(eventually(Duration::from_secs(10), || server.connections() == 1));
        let hub = server.hub();
        // 8 MiB, twice the kernel's largest autotuned send buffer on a default Linux.
        for _ in 0..128 {
            hub.broadcast("/chat", Message::binary(vec![1u8; 64 * 1024]))
                .unwrap();
        }
        // Give the writer time to fill whatever the kernel will take.
        let mut held = 0;
        let filled = eventually(Duration::from_secs(5), || {
            let now: u64 = server_side(port).iter().map(|s| s.tx_queue).sum();
            let still = now == held && now > 0;
            held = now;
            still
        });
        assert!(filled, "the server's socket never filled");
        eprintln!("unsent bytes the kernel holds for one non-reader: {held}");
        // Linux doubles SO_SNDBUF for its bookkeeping; the payload bytes it holds stay
        // below that.
        assert!(
            held <= 2 * send_buffer as u64,
            "{held} bytes held for one client, over twice the {send_buffer}-byte send buffer"
        );
        drop(client);
        server.shutdown();
    });
}

/// A socket past the connection limit that connects and then says nothing.
fn silent(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}

/// Connects past the limit, sends a request, and reads the whole answer; returns it
/// and how long it took from the connect.
fn refused_answer(addr: SocketAddr) -> (String, Duration) {
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = sock.write_all(upgrade_request("/echo", "").as_bytes());
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), start.elapsed())
}

#[test]
fn the_drain_sends_close_1001_without_waiting_for_refused_connections() {
    watchdog(Duration::from_secs(60), || {
        let mut config = test_config();
        config.max_connections = 1;
        config.drain_timeout = Duration::from_secs(3);
        let server = start(config);
        let addr = server.local_addr();
        let mut member = connect(addr, "/echo");
        member.send(Message::text("in")).unwrap();
        assert_eq!(next_data(&mut member), Message::text("in"));
        // More silent sockets past the limit than the overflow queue holds.
        let silents: Vec<TcpStream> = (0..100).map(|_| silent(addr)).collect();
        let started = Instant::now();
        let drain = std::thread::spawn(move || server.shutdown());
        let close_after = loop {
            match member.read() {
                Ok(Message::Close(Some(frame))) => {
                    assert_eq!(u16::from(frame.code), 1001);
                    break started.elapsed();
                }
                Ok(_) => {}
                Err(e) => panic!("no Close 1001 before the connection ended: {e}"),
            }
        };
        while member.read().is_ok() {}
        let report = drain.join().unwrap();
        eprintln!(
            "Close 1001 after {close_after:?}; drain took {:?}",
            report.elapsed
        );
        assert!(
            close_after < Duration::from_secs(1),
            "Close 1001 came after {close_after:?}"
        );
        assert!(
            report.elapsed < Duration::from_secs(3),
            "the drain took {:?}, past its 3 s deadline",
            report.elapsed
        );
        drop(silents);
    });
}

#[test]
fn every_refused_connection_gets_its_503_at_once_even_behind_silent_ones() {
    watchdog(Duration::from_secs(60), || {
        let mut config = test_config();
        config.max_connections = 1;
        let server = start(config);
        let addr = server.local_addr();
        let mut member = connect(addr, "/echo");
        member.send(Message::text("in")).unwrap();
        assert_eq!(next_data(&mut member), Message::text("in"));
        // Silent sockets first, enough to fill the overflow queue, then a burst of
        // real clients all at once.
        let silents: Vec<TcpStream> = (0..64).map(|_| silent(addr)).collect();
        let burst: Vec<_> = (0..100)
            .map(|_| std::thread::spawn(move || refused_answer(addr)))
            .collect();
        let answers: Vec<(String, Duration)> = burst.into_iter().map(|h| h.join().unwrap()).collect();
        let slowest = answers.iter().map(|a| a.1).max().unwrap();
        eprintln!("slowest 503 of {}: {slowest:?}", answers.len());
        for (answer, took) in &answers {
            assert!(
                answer.starts_with("HTTP/1.1 503"),
                "not a 503 after {took:?}: {answer:?}"
            );
            assert!(answer.contains("Retry-After:"), "{answer:?}");
        }
        assert!(slowest < Duration::from_secs(1), "a 503 took {slowest:?}");
        drop(silents);
        drop(member);
        server.shutdown();
    });
}

/// A member of `/chat` that reads and discards everything on its own thread, so that it
/// keeps up; it ends when the server closes the connection.
fn reading_member(addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let mut ws = connect(addr, "/chat");
    std::thread::spawn(move || while ws.read().is_ok() {})
}

/// A client on `path` that writes `burst` (100 client frames) over and over for 4 s, as
/// fast as its socket takes it, and reads what comes back on another thread so that it is
/// not cut as slow itself. Joins to the number of frames it sent.
fn flooder(addr: SocketAddr, path: &str, burst: Vec<u8>) -> std::thread::JoinHandle<u64> {
    flooder_for(addr, path, burst, Duration::from_secs(4))
}

/// [`flooder`] for `how_long`.
fn flooder_for(
    addr: SocketAddr,
    path: &str,
    burst: Vec<u8>,
    how_long: Duration,
) -> std::thread::JoinHandle<u64> {
    let mut flooder = TcpStream::connect(addr).unwrap();
    flooder.write_all(upgrade_request(path, "").as_bytes()).unwrap();
    let mut drain = flooder.try_clone().unwrap();
    let drainer = std::thread::spawn(move || {
        let mut sink = [0u8; 64 * 1024];
        while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
    });
    let stop = Instant::now() + how_long;
    std::thread::spawn(move || {
        let mut sent = 0u64;
        while Instant::now() < stop && flooder.write_all(&burst).is_ok() {
            sent += 100;
        }
        let _ = flooder.shutdown(std::net::Shutdown::Both);
        drainer.join().unwrap();
        sent
    })
}

/// How long `ws`'s own broadcast `text` takes to come back to it (skipping others').
fn own_broadcast_latency(ws: &mut Client, text: &str) -> Duration {
    let start = Instant::now();
    ws.send(Message::text(text)).unwrap();
    loop {
        if next_data(ws) == Message::text(text) {
            return start.elapsed();
        }
    }
}

#[test]
fn a_flooding_publisher_slows_only_itself() {
    watchdog(Duration::from_secs(90), || {
        let mut config = test_config();
        // The in-flight bound alone: no publication rate limit, and queues that hold a
        // flood, so nobody is cut and the flood goes on.
        config.max_publish_rate = 0;
        config.limits.queue_size = 1 << 20;
        config.max_queue_bytes = 1 << 30;
        let server = start(config);
        let addr = server.local_addr();
        let members: Vec<_> = (0..20).map(|_| reading_member(addr)).collect();
        let mut marker = connect(addr, "/chat");
        let quiet = (0..5)
            .map(|i| own_broadcast_latency(&mut marker, &format!("quiet {i}")))
            .max()
            .unwrap();

        // The flooder writes 20-byte messages as fast as its socket takes them.
        let burst: Vec<u8> = (0..100)
            .flat_map(|_| client_frame(0x81, b"flood flood flood!!!"))
            .collect();
        let writer = flooder(addr, "/chat", burst);
        std::thread::sleep(Duration::from_millis(1000));
        let flooded = (0..5)
            .map(|i| own_broadcast_latency(&mut marker, &format!("flooded {i}")))
            .max()
            .unwrap();
        let sent = writer.join().unwrap();
        eprintln!(
            "own broadcast, slowest of 5: {quiet:?} quiet, {flooded:?} during a flood of {sent} messages"
        );
        assert!(
            flooded < Duration::from_millis(500).max(quiet * 10),
            "a member's broadcast took {flooded:?} during the flood ({quiet:?} without)"
        );
        drop(marker);
        server.shutdown();
        for m in members {
            m.join().unwrap();
        }
    });
}

/// Raises this process's soft limit of open files to its hard limit: both ends of every
/// test connection are in this process, and tests run side by side.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The median of `v`.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The hub's inbox is one FIFO for every sender, and a connection may have one message
/// in it (or in the hub's hands) at a time, so the hub serves sending connections in
/// turn: a broadcast waits behind at most one message of a flooder, however fast the
/// flooder writes. With a bound of 8 it waited behind about 8 of them.
///
/// How that is seen without trusting absolute times on a loaded machine: the flooder's
/// path has many members that hold their sockets open and never read, so each
/// flood message costs the hub a fan-out time F, read from `/metrics` during the flood.
/// The canary is alone on a path of its own, so what it times (its own broadcast coming
/// back) is the hub's wait, not a backlog of flood frames on its socket. Its median
/// extra wait during the flood must stay under 4 F: behind one flood message it is about
/// F/2, behind eight about 7.5 F; the rest is the canary's own scheduling on a busy
/// machine. A machine that is slower all round slows F too, and medians of 30 absorb
/// the odd stall.
#[test]
fn a_broadcast_waits_behind_at_most_one_message_of_a_flooder() {
    // Enough that a flood message's fan-out outweighs the canary's own scheduling noise:
    // 800 sockets in this process, beside other tests'.
    const MEMBERS: usize = 400;
    raise_open_files();
    watchdog(Duration::from_secs(120), || {
        let mut config = test_config();
        // The in-flight bound alone: no rate limit, so the flood keeps the hub busy.
        config.max_publish_rate = 0;
        let server = wshub::Server::builder(config)
            .route("/calm", wshub::Chat)
            .start()
            .unwrap();
        let addr = server.local_addr();
        // Members that never read: what the test sends them in a few seconds fits in
        // their default socket buffers, so every frame is a real send.
        let members: Vec<Raw> = (0..MEMBERS).map(|_| Raw::connect(addr, "/chat")).collect();
        assert!(eventually(Duration::from_secs(20), || server.connections() == MEMBERS));
        let mut canary = connect(addr, "/calm");
        let mut round_trip = |label: &str, i: usize| {
            let text = format!("{label} {i}");
            let start = Instant::now();
            canary.send(Message::text(text.clone())).unwrap();
            assert_eq!(next_data(&mut canary), Message::text(text));
            start.elapsed()
        };
        for i in 0..5 {
            round_trip("warm", i);
        }
        let quiet = median((0..30).map(|i| round_trip("quiet", i)).collect());

        let burst: Vec<u8> = (0..100)
            .flat_map(|_| client_frame(0x81, b"flood flood flood!!!"))
            .collect();
        // Short: what it sends must fit in the members' socket buffers.
        let writer = flooder_for(addr, "/chat", burst, Duration::from_secs(2));
        // Until the flood has reached the hub.
        let started = metric(addr, "wshub_broadcasts_total");
        assert!(eventually(Duration::from_secs(10), || {
            metric(addr, "wshub_broadcasts_total") > started + 100.0
        }));
        let (hub_s, broadcasts) = (
            metric(addr, "wshub_fanout_duration_seconds_sum"),
            metric(addr, "wshub_broadcasts_total"),
        );
        let flooded = median((0..30).map(|i| round_trip("flooded", i)).collect());
        let fanout = Duration::from_secs_f64(
            (metric(addr, "wshub_fanout_duration_seconds_sum") - hub_s)
                / (metric(addr, "wshub_broadcasts_total") - broadcasts),
        );
        let sent = writer.join().unwrap();
        let waited = flooded.saturating_sub(quiet);
        eprintln!(
            "canary round trip, median of 30: {quiet:?} quiet, {flooded:?} flooded; fan-out of a flood \
             message {fanout:?}: the canary waited {:.1} fan-outs more ({sent} flood messages written)",
            waited.as_secs_f64() / fanout.as_secs_f64()
        );
        assert!(
            waited < fanout * 4,
            "the canary waited {waited:?} more during the flood, over 4 flood fan-outs of {fanout:?}"
        );
        drop(canary);
        drop(members);
        server.shutdown();
    });
}

#[test]
fn a_publisher_over_its_rate_waits_and_loses_nothing() {
    watchdog(Duration::from_secs(60), || {
        let mut config = test_config();
        config.max_publish_rate = 20;
        let server = start(config);
        let mut ws = connect(server.local_addr(), "/chat");
        let start = Instant::now();
        // One second's worth goes at once; the other 40 at 20 per second.
        for i in 0..60 {
            ws.send(Message::text(format!("m{i}"))).unwrap();
        }
        for i in 0..60 {
            assert_eq!(next_data(&mut ws), Message::text(format!("m{i}")));
        }
        let took = start.elapsed();
        eprintln!("60 publications at 20/s took {took:?}");
        assert!(took >= Duration::from_millis(1500), "not paced: {took:?}");
        ws.send(Message::text("still open")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("still open"));
        server.shutdown();
    });
}

#[test]
fn a_slow_consumer_is_cut_by_its_queue_bytes_before_its_queue_length() {
    watchdog(Duration::from_secs(60), || {
        let mut config = test_config();
        config.limits.queue_size = 1000;
        config.max_queue_bytes = 256 * 1024;
        let server = start(config);
        let addr = server.local_addr();
        let _client = non_reader(addr, "/chat");
        assert!(eventually(Duration::from_secs(10), || server.connections() == 1));
        let hub = server.hub();
        let mut sent = 0;
        let give_up = Instant::now() + Duration::from_secs(20);
        while server.connections() > 0 {
            assert!(Instant::now() < give_up, "never cut");
            hub.broadcast("/chat", Message::binary(vec![0u8; 64 * 1024]))
                .unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        eprintln!("cut after {sent} broadcasts of 64 KiB");
        assert!(
            sent < 100,
            "cut only after {sent} broadcasts: the byte bound did not hold"
        );
        server.shutdown();
    });
}

#[test]
fn pings_count_toward_the_message_rate_limit() {
    watchdog(Duration::from_secs(30), || {
        let mut config = test_config();
        config.max_message_rate = Some(10);
        let server = start(config);
        let mut ws = connect(server.local_addr(), "/echo");
        for _ in 0..50 {
            if ws.send(Message::Ping(vec![0u8; 125].into())).is_err() {
                break;
            }
        }
        let code = loop {
            match ws.read() {
                Ok(Message::Close(Some(frame))) => break u16::from(frame.code),
                Ok(_) => {}
                Err(e) => panic!("no Close before the end: {e}"),
            }
        };
        assert_eq!(code, 1008);
        server.shutdown();
    });
}

#[test]
fn a_close_with_code_1014_is_echoed_not_answered_with_1002() {
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let mut raw = support::Raw::connect(server.local_addr(), "/echo");
        raw.send_frame(0x88, &1014u16.to_be_bytes());
        let (first, payload) = raw.read_frame().expect("the server's Close");
        assert_eq!(first, 0x88);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1014);
        server.shutdown();
    });
}

#[test]
fn a_ping_flood_is_paced_without_a_rate_flag() {
    watchdog(Duration::from_secs(60), || {
        let server = start(test_config());
        let mut ws = connect(server.local_addr(), "/echo");
        let start = Instant::now();
        // One second's worth at once, then 100 per second: 300 pings take 2 s or more.
        for _ in 0..300 {
            ws.send(Message::Ping(vec![0u8; 125].into())).unwrap();
        }
        ws.send(Message::text("after the pings")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("after the pings"));
        let took = start.elapsed();
        eprintln!("300 pings then an echo: {took:?}");
        assert!(
            took >= Duration::from_millis(1800),
            "the pings were not paced: {took:?}"
        );
        server.shutdown();
    });
}

/// A `/ws` client's own `pub` on `ch`: the time until its push comes back.
fn own_publication_latency(ws: &mut Client, ch: &str, id: u64) -> Duration {
    let started = Instant::now();
    let cmd = format!(r#"{{"id":{id},"op":"pub","ch":"{ch}","data":{id}}}"#);
    ws.send(Message::text(cmd)).unwrap();
    loop {
        let Message::Text(text) = next_data(ws) else {
            continue;
        };
        if text.contains(r#""push":"pub""#) && text.contains(&format!(r#""data":{id}"#)) {
            return started.elapsed();
        }
    }
}

#[test]
fn a_flooding_publisher_on_ws_cannot_stall_other_channels() {
    watchdog(Duration::from_secs(90), || {
        let mut config = test_config();
        // The in-flight bound alone, as for /chat: no rate limit, queues that hold a flood.
        config.max_publish_rate = 0;
        config.limits.queue_size = 1 << 20;
        config.max_queue_bytes = 1 << 30;
        let server = start(config);
        let addr = server.local_addr();
        let mut calm = connect(addr, "/ws");
        calm.send(Message::text(r#"{"id":1,"op":"sub","ch":"calm"}"#))
            .unwrap();
        next_data(&mut calm); // the sub reply
        let quiet = (10..15)
            .map(|i| own_publication_latency(&mut calm, "calm", i))
            .max()
            .unwrap();

        // The flooder publishes on another channel as fast as its socket takes it.
        let burst: Vec<u8> = (1..=100u64)
            .flat_map(|i| {
                client_frame(
                    0x81,
                    format!(r#"{{"id":{i},"op":"pub","ch":"flood","data":1}}"#).as_bytes(),
                )
            })
            .collect();
        let writer = flooder(addr, "/ws", burst);
        std::thread::sleep(Duration::from_millis(1000));
        let flooded = (20..25)
            .map(|i| own_publication_latency(&mut calm, "calm", i))
            .max()
            .unwrap();
        let sent = writer.join().unwrap();
        eprintln!(
            "own pub on a calm channel, slowest of 5: {quiet:?} quiet, {flooded:?} during a flood of {sent} pubs"
        );
        assert!(
            flooded < Duration::from_millis(500).max(quiet * 10),
            "a pub on another channel took {flooded:?} during the flood ({quiet:?} without)"
        );
        drop(calm);
        server.shutdown();
    });
}
