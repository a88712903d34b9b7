//! No thread outlives its connection: after clients come and go, the process's thread
//! count is back at its baseline. Alone in this test binary, so that no other test's
//! threads disturb the count.

mod support;

use std::thread;
use std::time::Duration;

use support::*;
use tungstenite::Message;

#[test]
fn threads_return_to_baseline_after_200_mixed_connections() {
    watchdog(Duration::from_secs(60), || {
        let mut config = test_config();
        config.handshake_timeout = Duration::from_millis(300);
        config.idle_timeout = Duration::from_millis(400);
        config.ping_interval = Duration::from_millis(300);
        let server = start(config);
        let addr = server.local_addr();
        let baseline = thread_count();
        // 20 rounds of 10 connections: clean close, abrupt drop, idle timeout, handshake
        // timeout, and an HTTP request, all at once.
        for _ in 0..20 {
            let mut round = Vec::new();
            for kind in 0..10 {
                round.push(thread::spawn(move || match kind % 5 {
                    0 => {
                        let mut ws = connect(addr, "/echo");
                        ws.send(Message::text("hi")).unwrap();
                        next_data(&mut ws);
                        ws.close(None).unwrap();
                        while ws.read().is_ok() {}
                    }
                    1 => {
                        let mut ws = connect(addr, "/chat");
                        ws.send(Message::text("bye")).unwrap();
                        drop(ws); // no Close: the TCP connection just goes
                    }
                    2 => {
                        let mut raw = Raw::connect(addr, "/echo");
                        assert_eq!(raw.read_close_code(), Some(1001)); // idle timeout
                    }
                    3 => {
                        let r = raw_exchange(addr, b"GET /echo HTTP/1.1\r\n"); // never finished
                        assert_eq!(status_line(&r), "HTTP/1.1 408 Request Timeout");
                    }
                    _ => {
                        let r = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                        assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
                    }
                }));
            }
            for t in round {
                t.join().unwrap();
            }
        }
        let now = wait_for_threads(baseline, Duration::from_secs(10));
        assert_eq!(now, baseline, "connection threads left behind");
        assert_eq!(server.connections(), 0);
    });
}
