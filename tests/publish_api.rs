//! `POST /api/publish`: publishing over plain HTTP with an API key, through the same
//! sequencing, history and idempotency as a `/ws` client's `pub`, and a clear answer
//! for every bad request.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, connect, next_data, raw_exchange, start, status_line, test_config, watchdog};
use tungstenite::Message;

const KEY: &str = "test-key-123";

fn server_with_key() -> support::Server {
    let mut config = test_config();
    config.api_key = Some(KEY.into());
    config.limits.max_message_size = 1024;
    start(config)
}

/// POSTs `body` with `auth` as the Authorization header (none if empty).
fn post(addr: SocketAddr, auth: &str, body: &str) -> String {
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("Authorization: {auth}\r\n")
    };
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_exchange(addr, req.as_bytes())
}

fn json_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

fn error_code(response: &str) -> u64 {
    json_body(response)["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no error code: {response}"))
}

fn subscribe(addr: SocketAddr, ch: &str) -> Client {
    let mut ws = connect(addr, "/ws");
    ws.send(Message::text(json!({"id": 1, "op": "sub", "ch": ch}).to_string()))
        .unwrap();
    let Message::Text(reply) = next_data(&mut ws) else {
        panic!("no reply")
    };
    assert!(reply.contains("\"ok\""), "{reply}");
    ws
}

fn next_json(ws: &mut Client) -> Value {
    let Message::Text(t) = next_data(ws) else {
        panic!("not text")
    };
    serde_json::from_str(&t).unwrap()
}

#[test]
fn a_publish_with_the_key_gets_its_position_and_reaches_subscribers() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let mut sub = subscribe(server.local_addr(), "news");
        let r = post(
            server.local_addr(),
            &format!("apikey {KEY}"),
            r#"{"ch":"news","data":{"n":1}}"#,
        );
        assert_eq!(status_line(&r), "HTTP/1.1 200 OK", "{r}");
        assert!(r.contains("Content-Type: application/json\r\n"));
        let pos = json_body(&r);
        assert_eq!(pos["offset"], json!(1));
        assert!(pos["epoch"].is_string());
        let push = next_json(&mut sub);
        assert_eq!(push["push"], json!("pub"));
        assert_eq!(push["offset"], json!(1));
        assert_eq!(push["data"], json!({"n": 1}));
        assert!(
            push.get("from").is_none(),
            "a server publication has no from: {push}"
        );
    });
}

#[test]
fn the_same_key_twice_publishes_once_and_answers_the_same_position() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let addr = server.local_addr();
        let mut sub = subscribe(addr, "jobs");
        let body = r#"{"ch":"jobs","data":"run","key":"cron-42"}"#;
        let first = json_body(&post(addr, &format!("apikey {KEY}"), body));
        let again = json_body(&post(addr, &format!("apikey {KEY}"), body));
        assert_eq!(first, again);
        // One push only: the next one the subscriber sees is a later, different publication.
        let other = json_body(&post(
            addr,
            &format!("apikey {KEY}"),
            r#"{"ch":"jobs","data":"next"}"#,
        ));
        assert_eq!(other["offset"], json!(2));
        assert_eq!(next_json(&mut sub)["data"], json!("run"));
        assert_eq!(next_json(&mut sub)["data"], json!("next"));
    });
}

#[test]
fn without_a_configured_key_the_api_is_404() {
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let r = post(
            server.local_addr(),
            &format!("apikey {KEY}"),
            r#"{"ch":"a","data":1}"#,
        );
        assert_eq!(status_line(&r), "HTTP/1.1 404 Not Found");
    });
}

#[test]
fn a_missing_or_wrong_key_is_401() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let addr = server.local_addr();
        for auth in ["", "apikey wrong-key-123", "Bearer test-key-123", "apikey"] {
            let r = post(addr, auth, r#"{"ch":"a","data":1}"#);
            assert_eq!(status_line(&r), "HTTP/1.1 401 Unauthorized", "{auth:?}");
            assert!(r.contains("WWW-Authenticate: apikey\r\n"));
            assert_eq!(error_code(&r), 7);
        }
        // The scheme's case does not matter.
        let r = post(addr, &format!("ApiKey {KEY}"), r#"{"ch":"a","data":1}"#);
        assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
    });
}

#[test]
fn a_malformed_body_is_400_with_a_json_error() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let addr = server.local_addr();
        for body in [
            "not json",
            "[1,2]",
            r#"{"data":1}"#,
            r#"{"ch":"a"}"#,
            r#"{"ch":5,"data":1}"#,
            r#"{"ch":"bad name!","data":1}"#,
            r#"{"ch":"a","data":1,"key":""}"#,
        ] {
            let r = post(addr, &format!("apikey {KEY}"), body);
            assert_eq!(status_line(&r), "HTTP/1.1 400 Bad Request", "{body}: {r}");
            assert_eq!(error_code(&r), 1, "{body}");
            assert!(!json_body(&r)["error"]["msg"].as_str().unwrap().is_empty());
        }
    });
}

#[test]
fn a_body_over_the_message_size_limit_is_413_before_it_is_read() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let big = format!(r#"{{"ch":"a","data":"{}"}}"#, "x".repeat(2000));
        let r = post(server.local_addr(), &format!("apikey {KEY}"), &big);
        assert!(status_line(&r).starts_with("HTTP/1.1 413 "), "{r}");
        assert_eq!(error_code(&r), 4);
    });
}

#[test]
fn a_body_without_a_length_is_411() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {KEY}\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let r = raw_exchange(server.local_addr(), req.as_bytes());
        assert_eq!(status_line(&r), "HTTP/1.1 411 Length Required");
    });
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408() {
    watchdog(Duration::from_secs(30), || {
        let mut config = test_config();
        config.api_key = Some(KEY.into());
        config.handshake_timeout = Duration::from_millis(300);
        let server = start(config);
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {KEY}\r\nContent-Length: 50\r\n\r\n{{\"ch\""
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert_eq!(status_line(&out), "HTTP/1.1 408 Request Timeout");
    });
}

#[test]
fn a_get_of_the_api_is_405_naming_post() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let r = raw_exchange(
            server.local_addr(),
            b"GET /api/publish HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert_eq!(status_line(&r), "HTTP/1.1 405 Method Not Allowed");
        assert!(r.contains("Allow: POST\r\n"));
    });
}

#[test]
fn expect_100_continue_gets_its_interim_answer_then_the_result() {
    watchdog(Duration::from_secs(30), || {
        let server = server_with_key();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"ch":"a","data":true}"#;
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: apikey {KEY}\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(body.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert_eq!(status_line(&out), "HTTP/1.1 200 OK", "{out}");
    });
}

#[test]
fn the_cli_reads_the_key_from_a_file() {
    watchdog(Duration::from_secs(60), || {
        let path = std::env::temp_dir().join(format!("wshub-api-key-{}", std::process::id()));
        std::fs::write(&path, format!("{KEY}\n")).unwrap();
        let server = support::ServeProcess::start(&["--api-key-file", path.to_str().unwrap()]);
        let ok = post(server.addr, &format!("apikey {KEY}"), r#"{"ch":"a","data":1}"#);
        let wrong = post(server.addr, "apikey other", r#"{"ch":"a","data":1}"#);
        let _ = std::fs::remove_file(&path);
        assert_eq!(status_line(&ok), "HTTP/1.1 200 OK", "{ok}");
        assert_eq!(status_line(&wrong), "HTTP/1.1 401 Unauthorized");
    });
}
