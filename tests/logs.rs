//! `wshub serve --log-format json`: every line is one JSON object, connection lines
//! carry the connection's id, and a refused handshake gets an info line with its status.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{ServeProcess, raw_exchange, status_line, watchdog};

#[test]
fn json_log_lines_parse_and_a_refusal_is_logged_with_its_status_and_connection() {
    watchdog(Duration::from_secs(60), || {
        let server = ServeProcess::start(&["--log-format", "json"]);
        let r = raw_exchange(server.addr, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(status_line(&r).contains("404"));
        let line = server.wait_for_line("/nowhere", Duration::from_secs(10));
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "INFO");
        assert!(v["conn"].as_u64().is_some(), "{line}");
        let msg = v["msg"].as_str().unwrap();
        assert!(msg.contains("\"GET /nowhere\" 404"), "{msg}");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        server.signal(libc::SIGTERM);
        let drained = server.wait_for_line("drained", Duration::from_secs(10));
        let v: Value = serde_json::from_str(&drained).unwrap_or_else(|e| panic!("not JSON ({e}): {drained}"));
        assert!(v.get("conn").is_none());
    });
}
