//! `GET /metrics`: scraped before and after a known workload, every counter the
//! workload touches moves by exactly what it did.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use support::{Client, connect, next_data, raw_exchange, start, status_line, test_config, watchdog};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

/// One scrape: every sample line, `name{labels}` to value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let r = raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
    assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
    let body = r.split_once("\r\n\r\n").unwrap().1;
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Scrapes until `done` holds for the scrape (bounded): connections end on their own
/// threads after the client has seen their end, so their counts land a moment later.
fn scrape_until(addr: SocketAddr, done: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(addr);
        if done(&m) || Instant::now() > deadline {
            return m;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn close_normally(mut ws: Client) {
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    while ws.read().is_ok() {}
}

#[test]
fn counters_move_by_exactly_the_workload() {
    watchdog(Duration::from_secs(60), || {
        let server = start(test_config());
        let addr = server.local_addr();
        let before = scrape(addr);

        // Two chat members. Each one's own first broadcast reaches it only once it is
        // registered, so: a says "sync-a" alone; then b joins and says "sync-b", which
        // reaches both. Then a says three 5-byte messages, each reaching both.
        let mut a = connect(addr, "/chat");
        a.send(Message::text("sync-a")).unwrap();
        assert_eq!(next_data(&mut a), Message::text("sync-a"));
        let mut b = connect(addr, "/chat");
        b.send(Message::text("sync-b")).unwrap();
        assert_eq!(next_data(&mut b), Message::text("sync-b"));
        assert_eq!(next_data(&mut a), Message::text("sync-b"));
        for i in 0..3 {
            a.send(Message::text(format!("msg-{i}"))).unwrap();
            assert_eq!(next_data(&mut a), Message::text(format!("msg-{i}")));
            assert_eq!(next_data(&mut b), Message::text(format!("msg-{i}")));
        }
        // One echo client: two 4-byte messages back.
        let mut e = connect(addr, "/echo");
        for text in ["abcd", "wxyz"] {
            e.send(Message::text(text)).unwrap();
            assert_eq!(next_data(&mut e), Message::text(text));
        }
        // Two refusals: a path that does not exist, a plain GET to a WebSocket path.
        assert!(status_line(&raw_exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")).contains("404"));
        assert!(status_line(&raw_exchange(addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")).contains("426"));
        for ws in [a, b, e] {
            close_normally(ws);
        }

        let closed = "wshub_connections_closed_total{code=\"1000\"}";
        let after = scrape_until(addr, |m| m[closed] - before[closed] >= 3.0);
        let delta = |k: &str| after[k] - before[k];
        assert_eq!(delta(closed), 3.0);
        assert_eq!(delta("wshub_connections_open"), 0.0);
        // Three WebSocket clients, two refused requests, and the `after` scrape (or more
        // scrapes while waiting; each counts itself).
        assert!(delta("wshub_connections_accepted_total") >= 6.0);
        assert_eq!(delta("wshub_connections_rejected_total{status=\"404\"}"), 1.0);
        assert_eq!(delta("wshub_connections_rejected_total{status=\"426\"}"), 1.0);
        // In: 2 sync (6 bytes), 3 chat (5 bytes), 2 echo (4 bytes).
        assert_eq!(delta("wshub_messages_received_total"), 7.0);
        assert_eq!(
            delta("wshub_received_bytes_total"),
            2.0 * 6.0 + 3.0 * 5.0 + 2.0 * 4.0
        );
        assert_eq!(delta("wshub_broadcasts_total"), 5.0);
        assert_eq!(delta("wshub_fanout_duration_seconds_count"), 5.0);
        // Out: sync-a to 1, sync-b to 2, each chat message to 2, each echo to 1.
        assert_eq!(delta("wshub_messages_sent_total"), 1.0 + 2.0 + 3.0 * 2.0 + 2.0);
        assert_eq!(
            delta("wshub_sent_bytes_total"),
            6.0 + 2.0 * 6.0 + 3.0 * 2.0 * 5.0 + 2.0 * 4.0
        );
        assert_eq!(delta("wshub_slow_consumers_total"), 0.0);
        assert!(after["wshub_process_threads"] > 0.0);
    });
}

#[test]
fn a_connection_that_vanishes_without_a_close_counts_as_1006() {
    watchdog(Duration::from_secs(60), || {
        let server = start(test_config());
        let addr = server.local_addr();
        let before = scrape(addr);
        let mut ws = connect(addr, "/echo");
        ws.send(Message::text("x")).unwrap();
        assert_eq!(next_data(&mut ws), Message::text("x"));
        drop(ws); // TCP closed, no Close frame
        let k = "wshub_connections_closed_total{code=\"1006\"}";
        let after = scrape_until(addr, |m| m[k] > before[k]);
        assert_eq!(after[k] - before[k], 1.0);
    });
}

#[test]
fn metrics_off_is_404() {
    watchdog(Duration::from_secs(30), || {
        let mut config = test_config();
        config.metrics = false;
        let server = start(config);
        let r = raw_exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status_line(&r), "HTTP/1.1 404 Not Found");
    });
}

/// Sends one protocol v1 command and reads frames until its reply.
fn command(ws: &mut Client, cmd: serde_json::Value) -> serde_json::Value {
    let id = cmd["id"].clone();
    ws.send(Message::text(cmd.to_string())).unwrap();
    loop {
        let Message::Text(t) = next_data(ws) else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["id"] == id {
            return v;
        }
    }
}

#[test]
fn channel_metrics_follow_publications_subscriptions_and_recoveries() {
    use serde_json::json;
    watchdog(Duration::from_secs(60), || {
        let server = start(test_config());
        let addr = server.local_addr();
        let before = scrape(addr);
        let mut a = connect(addr, "/ws");
        let sub = command(&mut a, json!({"id": 1, "op": "sub", "ch": "m"}));
        let epoch = sub["ok"]["epoch"].as_str().unwrap().to_string();
        for i in 0..3 {
            server.hub().publish("m", json!(i)).unwrap();
        }
        let mut b = connect(addr, "/ws");
        let since = json!({"epoch": epoch, "offset": 1});
        let r = command(&mut b, json!({"id": 1, "op": "sub", "ch": "m", "since": since}));
        assert_eq!(r["ok"]["recovered"], json!(true));
        let stale = json!({"epoch": "not-this-one", "offset": 0});
        let r = command(&mut b, json!({"id": 2, "op": "sub", "ch": "n", "since": stale}));
        assert_eq!(r["ok"]["recovered"], json!(false));

        let after = scrape(addr);
        let delta = |k: &str| after[k] - before[k];
        assert_eq!(delta("wshub_publications_total"), 3.0);
        assert_eq!(delta("wshub_recoveries_total{recovered=\"true\"}"), 1.0);
        assert_eq!(delta("wshub_recoveries_total{recovered=\"false\"}"), 1.0);
        assert_eq!(after["wshub_subscriptions"], 3.0);
        assert_eq!(after["wshub_channels"], 2.0);
        assert!(after["wshub_history_bytes"] > 0.0);
    });
}
