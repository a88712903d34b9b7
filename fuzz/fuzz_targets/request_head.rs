//! Fuzzes what a client sends before the upgrade: the request-head parser and the
//! handshake decision for every kind of endpoint, with and without an origin allowlist.
//!
//! Checks, besides "no panic":
//! - a complete head never claims more bytes than it was given, nor more than 8 KiB;
//! - the server reads the head in pieces, so every prefix of a complete head must ask for
//!   more (not be rejected), and the head alone must parse to the same request;
//! - `431` only for a head at the size limit or with more headers than allowed;
//! - an upgrade only for a `GET` on a WebSocket endpoint carrying version 13, a
//!   well-formed key, and (with an allowlist) a listed origin.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub::MAX_REQUEST_HEAD;
use wshub::fuzzing::{Answer, Endpoint, MAX_REQUEST_HEADERS, Resource, StatusCode, answer, parse_head};

const ALLOWED: &str = "https://good.example";

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(None) => assert!(data.len() < MAX_REQUEST_HEAD, "incomplete at the size limit"),
        Err(r) => {
            let seen = &data[..data.len().min(MAX_REQUEST_HEAD)];
            let lines = seen.iter().filter(|b| **b == b'\n').count();
            match r.status {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => assert!(
                    data.len() >= MAX_REQUEST_HEAD || lines > MAX_REQUEST_HEADERS,
                    "431 for a small head with {lines} lines"
                ),
                StatusCode::BAD_REQUEST => {}
                other => panic!("the parser answered {other:?}"),
            }
        }
        Ok(Some((request, used))) => {
            assert!(used <= data.len() && used <= MAX_REQUEST_HEAD, "used {used}");
            assert!(request.headers().count() <= MAX_REQUEST_HEADERS);
            assert!(!request.path().contains('?'));
            // The head alone parses to the same request, and a strict prefix of it is
            // "read more": a request split across TCP segments is never refused.
            assert_eq!(parse_head(&data[..used]), Ok(Some((request.clone(), used))));
            for cut in [used - 1, used / 2, used.saturating_sub(2)] {
                assert_eq!(parse_head(&data[..cut]), Ok(None), "prefix of {cut} bytes");
            }
            let allowlists: [&[String]; 2] = [&[], &[ALLOWED.to_string()]];
            for endpoint in [
                Endpoint::WebSocket,
                Endpoint::Health,
                Endpoint::Resource(Resource::Demo),
                Endpoint::Resource(Resource::Publish),
                Endpoint::None,
            ] {
                for allowed in allowlists {
                    check_answer(&request, endpoint, allowed);
                }
            }
        }
    }
});

fn check_answer(request: &wshub::Request, endpoint: Endpoint, allowed: &[String]) {
    match answer(request, endpoint, allowed) {
        Answer::Health => {
            assert_eq!(endpoint, Endpoint::Health);
            assert_eq!(request.method(), "GET");
        }
        Answer::Resource { resource, head } => {
            assert_eq!(endpoint, Endpoint::Resource(resource));
            assert!(request.header("Upgrade").is_none());
            assert_eq!(head, request.method() == "HEAD");
        }
        Answer::Upgrade { accept } => {
            assert_eq!(endpoint, Endpoint::WebSocket);
            assert_eq!(request.method(), "GET");
            assert_eq!(request.header("Sec-WebSocket-Version").map(str::trim), Some("13"));
            let key = request.header("Sec-WebSocket-Key").expect("a key").trim();
            assert_eq!(key.len(), 24);
            assert_eq!(accept.len(), 28, "base64 of a SHA-1");
            assert!(request.header("Host").is_some());
            if !allowed.is_empty() {
                let origin = request.header("Origin").expect("an origin").trim();
                assert!(origin.eq_ignore_ascii_case(ALLOWED), "origin {origin:?}");
            }
        }
        Answer::Reject(r) => {
            assert_ne!(r.status, StatusCode::OK);
            assert!(!r.why.is_empty() && !r.why.contains(['\r', '\n']));
            match endpoint {
                Endpoint::None => assert_eq!(r.status, StatusCode::NOT_FOUND),
                _ => assert!(!matches!(
                    r.status,
                    StatusCode::REQUEST_TIMEOUT | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE | StatusCode::SERVICE_UNAVAILABLE
                )),
            }
        }
    }
}
