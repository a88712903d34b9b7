//! The plain-HTTP resources a connection thread answers before (instead of) an upgrade:
//! the demo page `GET /`, the browser client `GET /wshub.js`, `GET /metrics`, and the
//! publish API `POST /api/publish`.
//!
//! **Owns** nothing and spawns nothing: it runs on the reader thread of the connection
//! that asked, inside the handshake phase, so the handshake deadline bounds it (a body
//! is read under the same deadline as the head). The page and the script are compiled
//! into the binary (`include_str!` of `web/`), so a server needs no files at run time.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::pubsub::protocol::ErrorCode;
use crate::server::config::Config;
use crate::server::connection::Shared;
use crate::server::error::PublishError;
use crate::ws::handshake::{Content, Request, Resource, StatusCode, response};

/// How long a scrape waits for the hub's channel sizes before leaving them out: the
/// hub answers between two messages, so only a hub that is stopping or swamped is
/// slower.
const HUB_STATS_WAIT: Duration = Duration::from_secs(1);

/// The demo page: a small chat on a channel named in its query (`?ch=`).
const DEMO_PAGE: &str = include_str!("../../web/index.html");

/// The browser client for protocol v1.
const CLIENT_SCRIPT: &str = include_str!("../../web/wshub.js");

/// Which resource `path` is, given what `config` turns on; `None`: nothing here.
pub(crate) fn resource(config: &Config, path: &str) -> Option<Resource> {
    match path {
        "/" if config.demo => Some(Resource::Demo),
        "/wshub.js" => Some(Resource::Script),
        "/metrics" if config.metrics => Some(Resource::Metrics),
        "/api/publish" if config.api_key.is_some() => Some(Resource::Publish),
        _ => None,
    }
}

/// The complete response for a `GET` or `HEAD` of a static resource or the metrics.
pub(crate) fn get(resource: Resource, head: bool, shared: &Shared) -> Vec<u8> {
    match resource {
        Resource::Demo => response(
            StatusCode::OK,
            "",
            &Content {
                content_type: "text/html; charset=utf-8",
                // Revalidate every time: the page is small and must match its script.
                cache_control: "no-cache",
                body: DEMO_PAGE.as_bytes(),
            },
            head,
        ),
        Resource::Script => response(
            StatusCode::OK,
            "",
            &Content {
                content_type: "text/javascript; charset=utf-8",
                cache_control: "no-cache",
                body: CLIENT_SCRIPT.as_bytes(),
            },
            head,
        ),
        Resource::Metrics => {
            let stats = shared.hub.stats(HUB_STATS_WAIT);
            let text = shared.metrics.render(
                shared.hub.inbox_depth(),
                stats,
                shared.hub.engine_health().errors(),
                shared.spares.waiting(),
            );
            response(
                StatusCode::OK,
                "",
                &Content {
                    content_type: crate::server::metrics::CONTENT_TYPE,
                    cache_control: "no-store",
                    body: text.as_bytes(),
                },
                head,
            )
        }
        Resource::Publish => response(StatusCode::NOT_FOUND, "", &Content::text(b"not here\n"), head),
    }
}

/// `POST /api/publish`: checks the key, reads the body (bounded by the message size
/// limit, before `deadline`), publishes through the hub as a client's `pub` would
/// (same sequencing, history, idempotency `key`), and answers with JSON. Returns the
/// status (for the access log and the metrics) and the complete response.
///
/// The answers: 200 `{"epoch":E,"offset":N}`; 401 without the right key; 411 without a
/// `Content-Length`; 413 over the size limit; 400 for a body that is not
/// `{"ch":C,"data":D,"key":K?}` or a bad channel or key; 408 when the body is late;
/// 503 when the hub refuses (a limit, code 4; unavailable, code 6) or is stopping.
/// Every error body is `{"error":{"code":C,"msg":"..."}}` with the protocol's codes.
pub(crate) fn publish(
    request: &Request,
    leftover: Vec<u8>,
    sock: &TcpStream,
    deadline: Instant,
    shared: &Shared,
) -> (StatusCode, Vec<u8>) {
    let config = &shared.config;
    let expected = config.api_key.as_ref().map_or("", |k| k.expose());
    let given = request
        .header("Authorization")
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
        .map(|(_, key)| key.trim());
    if !given.is_some_and(|k| same_key(k, expected)) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            7,
            "missing or wrong API key (Authorization: apikey KEY)",
        );
    }
    if request.header("Transfer-Encoding").is_some() {
        return api_error(
            StatusCode::LENGTH_REQUIRED,
            1,
            "send the body with a Content-Length, not chunked",
        );
    }
    let Some(length) = request.header("Content-Length") else {
        return api_error(StatusCode::LENGTH_REQUIRED, 1, "Content-Length required");
    };
    let Ok(length) = length.trim().parse::<usize>() else {
        return api_error(StatusCode::BAD_REQUEST, 1, "Content-Length is not a number");
    };
    if length > config.limits.max_message_size {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            4,
            "body is larger than the message size limit",
        );
    }
    if request
        .header("Expect")
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue"))
        && leftover.is_empty()
    {
        let _ = sock.set_write_timeout(Some(config.write_timeout));
        let _ = (&*sock).write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let body = match read_body(sock, leftover, length, deadline) {
        Ok(body) => body,
        Err(BodyError::Late) => {
            return api_error(
                StatusCode::REQUEST_TIMEOUT,
                1,
                "request body not received in time",
            );
        }
        Err(BodyError::Gone) => return api_error(StatusCode::BAD_REQUEST, 1, "the request body ended early"),
    };
    let parsed: PublishBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                1,
                &format!("body must be {{\"ch\":..,\"data\":..,\"key\":..}}: {e}"),
            );
        }
    };
    let result = match parsed.key {
        Some(key) => shared.hub.publish_with_key(&parsed.ch, parsed.data, &key),
        None => shared.hub.publish(&parsed.ch, parsed.data),
    };
    match result {
        Ok(position) => {
            let body = serde_json::to_vec(&position).unwrap_or_default();
            (StatusCode::OK, json_response(StatusCode::OK, &body))
        }
        Err(PublishError::InvalidChannel(m)) => {
            api_error(StatusCode::BAD_REQUEST, 1, &format!("invalid channel name: {m}"))
        }
        Err(PublishError::Rejected(e)) if e.code == ErrorCode::BadRequest => {
            api_error(StatusCode::BAD_REQUEST, 1, &e.msg)
        }
        Err(PublishError::Rejected(e)) => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, u16::from(e.code), &e.msg)
        }
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, 6, &e.to_string()),
    }
}

/// The body `POST /api/publish` takes. Unknown fields are ignored, as in protocol v1.
#[derive(Deserialize)]
struct PublishBody {
    ch: String,
    data: Value,
    #[serde(default)]
    key: Option<String>,
}

/// Compares two keys in time that depends on their lengths only, not on where they
/// first differ, so a client cannot find the key a byte at a time by timing.
fn same_key(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json_response(status: StatusCode, body: &[u8]) -> Vec<u8> {
    response(
        status,
        "",
        &Content {
            content_type: "application/json",
            cache_control: "no-store",
            body,
        },
        false,
    )
}

/// An error answer of the publish API: `{"error":{"code":C,"msg":M}}`.
fn api_error(status: StatusCode, code: u16, msg: &str) -> (StatusCode, Vec<u8>) {
    let body = serde_json::json!({ "error": { "code": code, "msg": msg } }).to_string();
    let extra = match status {
        StatusCode::UNAUTHORIZED => "WWW-Authenticate: apikey\r\n",
        _ => "",
    };
    let content = Content {
        content_type: "application/json",
        cache_control: "no-store",
        body: body.as_bytes(),
    };
    (status, response(status, extra, &content, false))
}

enum BodyError {
    Late,
    Gone,
}

/// Reads exactly `length` body bytes (the first of them already read with the head, in
/// `have`) before `deadline`.
fn read_body(
    sock: &TcpStream,
    mut have: Vec<u8>,
    length: usize,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    have.truncate(length);
    let mut at = have.len();
    have.resize(length, 0);
    while at < length {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BodyError::Late);
        }
        sock.set_read_timeout(Some(left)).map_err(|_| BodyError::Gone)?;
        match (&*sock).read(&mut have[at..]) {
            Ok(0) => return Err(BodyError::Gone),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(BodyError::Late);
            }
            Err(_) => return Err(BodyError::Gone),
        }
    }
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_equal_only_when_equal() {
        assert!(same_key("s3cret", "s3cret"));
        assert!(!same_key("s3cres", "s3cret"));
        assert!(!same_key("s3cre", "s3cret"));
        assert!(!same_key("", "s3cret"));
    }

    /// The resource at `path` with the default configuration, then with `change` made.
    fn resource_before_and_after(path: &str, change: impl FnOnce(&mut Config)) -> [Option<Resource>; 2] {
        let mut config = Config::default();
        let before = resource(&config, path);
        change(&mut config);
        [before, resource(&config, path)]
    }

    #[test]
    fn the_demo_follows_its_flag_and_the_script_is_always_there() {
        let demo_off = |c: &mut Config| c.demo = false;
        assert_eq!(
            resource_before_and_after("/", demo_off),
            [Some(Resource::Demo), None]
        );
        let script = Some(Resource::Script);
        assert_eq!(resource_before_and_after("/wshub.js", demo_off), [script, script]);
    }

    #[test]
    fn the_publish_api_exists_only_with_a_key() {
        let with_key = |c: &mut Config| c.api_key = Some("k".into());
        let publish = resource_before_and_after("/api/publish", with_key);
        assert_eq!(publish, [None, Some(Resource::Publish)]);
    }

    #[test]
    fn metrics_follow_their_flag() {
        let metrics_off = |c: &mut Config| c.metrics = false;
        let metrics = resource_before_and_after("/metrics", metrics_off);
        assert_eq!(metrics, [Some(Resource::Metrics), None]);
    }
}
