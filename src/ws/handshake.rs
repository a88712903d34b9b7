//! The HTTP side of a connection, before the upgrade: parsing the request head and
//! deciding the answer. I/O-free: bytes in, a decision and response bytes out.
//!
//! Owns nothing and runs on whichever connection thread calls it; the socket reading
//! (with the handshake deadline) lives in [`crate::server::connection`]. We read the request
//! head ourselves instead of calling `tungstenite::accept`, because tungstenite drops a
//! request that lacks the upgrade headers without writing any response, and a
//! production server answers every request: `/healthz`, `404`, `426`, `403` and so on.
//! Once the upgrade is agreed, the socket goes to tungstenite's protocol engine.
//!
//! Plain-HTTP resources (the demo page, `/wshub.js`, `/metrics`, the publish API) are
//! decided here too ([`Endpoint::Resource`]: which methods each takes, `HEAD` answered
//! like `GET` without the body); what they contain is built by `crate::server::http`,
//! and [`response`] writes any of them with its length and cache policy.
//!
//! RFC 6455 §4.2.1 lists what the opening handshake must carry; each check below
//! quotes the rule it enforces.

use std::fmt::Write as _;

/// Largest HTTP request head (request line and headers) before the upgrade; longer
/// gets `431`. 8 KiB is what common servers (nginx's default buffer) allow.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most headers in a request head. Browsers send about 15; 64 leaves room for proxies.
pub const MAX_REQUEST_HEADERS: usize = 64;

/// The parts of a client's HTTP request a handler may want: path, query and headers.
///
/// Stored compactly, because every open connection keeps its request: all the text in
/// one string, and each part as a span of it (two allocations instead of two per header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    text: Box<str>,
    method: Span,
    path: Span,
    query: Option<Span>,
    minor_version: u8,
    headers: Box<[(Span, Span)]>,
}

/// A byte range of [`Request::text`]; a head is at most 8 KiB, so `u16` offsets suffice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span(u16, u16);

/// Builds a [`Request`]'s text, one part at a time.
struct TextBuilder(String);

impl TextBuilder {
    fn push(&mut self, part: &[u8]) -> Span {
        let start = self.0.len();
        self.0.push_str(&String::from_utf8_lossy(part));
        // Lossy replacement can grow a part (3 bytes per invalid byte); clamp rather than
        // wrap, though an 8 KiB head cannot reach u16::MAX even so.
        let clamp = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        Span(clamp(start), clamp(self.0.len()))
    }
}

impl Request {
    fn get(&self, span: Span) -> &str {
        self.text.get(span.0 as usize..span.1 as usize).unwrap_or("")
    }

    /// The request method (`GET` for every WebSocket connection).
    pub fn method(&self) -> &str {
        self.get(self.method)
    }

    /// The path, without the query string (`/chat`).
    pub fn path(&self) -> &str {
        self.get(self.path)
    }

    /// The query string without its `?`, if the request had one.
    pub fn query(&self) -> Option<&str> {
        self.query.map(|q| self.get(q))
    }

    /// The first value of a header, matched case-insensitively. Header values that
    /// were not valid UTF-8 are kept with the invalid bytes replaced by U+FFFD.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header, in the order the client sent them.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (self.get(*n), self.get(*v)))
    }

    /// Does a comma-separated header (such as `Connection`) carry `token`?
    fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// The HTTP statuses this server answers with are `http`'s [`StatusCode`]s: `200` (health
/// check, the demo page and script, metrics, a publication), `400` (not HTTP, a malformed
/// handshake or request body), `401` (publish API key missing or wrong), `403` (`Origin` not
/// allowed), `404` (no endpoint), `405` (a method the path does not take), `408` (no
/// request head or body within the handshake timeout), `411` (a body without a length),
/// `413` (a body over the message size limit), `426` (a plain request to a WebSocket
/// endpoint, or a `Sec-WebSocket-Version` other than 13), `431` (head over
/// [`MAX_REQUEST_HEAD`]) and `503` (connection limit reached).
pub use tungstenite::http::StatusCode;

/// A refusal: the status and a one-line explanation sent as the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The status to answer with.
    pub status: StatusCode,
    /// The body: why, in one line.
    pub why: &'static str,
    /// The methods the path takes, sent as `Allow` with a `405` (and ignored otherwise).
    pub allow: &'static str,
}

/// A refusal with `why` as its body (and `Allow: GET` should it be a `405`).
pub fn reject(status: StatusCode, why: &'static str) -> Reject {
    Reject {
        status,
        why,
        allow: "GET",
    }
}

/// Tries to parse a complete request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more (unless `buf` is already over the limit, which is
/// `431`). `Ok(Some((request, n)))`: the head is the first `n` bytes; anything after it
/// is the client's first WebSocket bytes and must not be lost.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, Reject> {
    // On the heap, not the stack: 2 KiB of stack touched once per connection would stay
    // resident in every reader thread for the connection's whole life.
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let limit = &buf[..buf.len().min(MAX_REQUEST_HEAD)];
    match req.parse(limit) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => Err(reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head is larger than 8 KiB",
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            let mut text = TextBuilder(String::with_capacity(n));
            let method = text.push(req.method.unwrap_or("").as_bytes());
            let path = text.push(path.as_bytes());
            let query = query.map(|q| text.push(q.as_bytes()));
            let headers = req
                .headers
                .iter()
                .map(|h| (text.push(h.name.as_bytes()), text.push(h.value)))
                .collect();
            let request = Request {
                text: text.0.into_boxed_str(),
                method,
                path,
                query,
                minor_version: req.version.unwrap_or(0),
                headers,
            };
            Ok(Some((request, n)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers",
        )),
        Err(_) => Err(reject(StatusCode::BAD_REQUEST, "not a valid HTTP/1.1 request")),
    }
}

/// What kind of endpoint a path is, as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A WebSocket endpoint (`/echo`, `/chat`, a user's route).
    WebSocket,
    /// The plain-HTTP health check.
    Health,
    /// A plain-HTTP resource served before any upgrade: a page, a script, the metrics,
    /// the publish API.
    Resource(Resource),
    /// Nothing here.
    None,
}

/// The plain-HTTP resources the server answers itself, besides `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `GET /`: the demo page.
    Demo,
    /// `GET /wshub.js`: the browser client for protocol v1.
    Script,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `POST /api/publish`: publish without a WebSocket.
    Publish,
}

impl Resource {
    /// The methods it takes, as an `Allow` header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Resource::Publish => "POST",
            _ => "GET, HEAD",
        }
    }
}

/// The decision for a parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `200 ok`, no upgrade.
    Health,
    /// Serve a plain-HTTP resource, no upgrade; `head`: the request was `HEAD`, so the
    /// response carries the headers of a `GET` and no body.
    Resource {
        /// What to serve.
        resource: Resource,
        /// Headers only.
        head: bool,
    },
    /// Upgrade: send `101` with this `Sec-WebSocket-Accept` value.
    Upgrade {
        /// The derived accept key.
        accept: String,
    },
    /// Refuse with a status.
    Reject(Reject),
}

/// Decides how to answer `request`, given what its path routes to and the `Origin`
/// allowlist (empty: any origin).
pub fn answer(request: &Request, endpoint: Endpoint, allowed_origins: &[String]) -> Answer {
    let wants_upgrade = request.header("Upgrade").is_some()
        || request.header("Sec-WebSocket-Key").is_some()
        || request.header("Sec-WebSocket-Version").is_some();
    match endpoint {
        Endpoint::None => {
            return Answer::Reject(reject(StatusCode::NOT_FOUND, "no endpoint at this path"));
        }
        Endpoint::Health | Endpoint::Resource(_) if wants_upgrade => {
            return Answer::Reject(reject(
                StatusCode::NOT_FOUND,
                "no WebSocket endpoint at this path",
            ));
        }
        Endpoint::Health => {
            // Health checkers often use HEAD: it gets GET's answer without the body.
            return if matches!(request.method(), "GET" | "HEAD") {
                Answer::Health
            } else {
                Answer::Reject(Reject {
                    allow: "GET, HEAD",
                    ..reject(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD")
                })
            };
        }
        Endpoint::Resource(resource) => {
            let method = request.method();
            let allowed = match resource {
                Resource::Publish => method == "POST",
                _ => method == "GET" || method == "HEAD",
            };
            return if allowed {
                Answer::Resource {
                    resource,
                    head: method == "HEAD",
                }
            } else {
                Answer::Reject(Reject {
                    allow: resource.allow(),
                    ..reject(StatusCode::METHOD_NOT_ALLOWED, "method not allowed at this path")
                })
            };
        }
        Endpoint::WebSocket => {}
    }
    // "The method of the request MUST be GET, and the HTTP version MUST be at least 1.1."
    if request.method() != "GET" {
        return Answer::Reject(reject(
            StatusCode::METHOD_NOT_ALLOWED,
            "WebSocket endpoints take GET",
        ));
    }
    if !wants_upgrade {
        return Answer::Reject(reject(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: send an upgrade request",
        ));
    }
    if request.minor_version < 1 {
        return Answer::Reject(reject(StatusCode::BAD_REQUEST, "WebSocket needs HTTP/1.1"));
    }
    // "The request MUST contain a |Host| header field."
    if request.header("Host").is_none() {
        return Answer::Reject(reject(StatusCode::BAD_REQUEST, "missing Host header"));
    }
    // "The request MUST contain an |Upgrade| header field whose value MUST include the
    // "websocket" keyword." and "a |Connection| header field whose value MUST include
    // the "Upgrade" token."
    if !request.header_has_token("Upgrade", "websocket") {
        return Answer::Reject(reject(
            StatusCode::BAD_REQUEST,
            "Upgrade header must be websocket",
        ));
    }
    if !request.header_has_token("Connection", "upgrade") {
        return Answer::Reject(reject(
            StatusCode::BAD_REQUEST,
            "Connection header must include Upgrade",
        ));
    }
    // "The request MUST include a header field with the name |Sec-WebSocket-Version|.
    // The value of this header field MUST be 13." §4.4: a server that does not speak
    // the version answers with the versions it does speak.
    match request.header("Sec-WebSocket-Version").map(str::trim) {
        None => return Answer::Reject(reject(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Version")),
        Some("13") => {}
        Some(_) => {
            return Answer::Reject(reject(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version: this server speaks 13",
            ));
        }
    }
    // "|Sec-WebSocket-Key| ... a base64-encoded value that, when decoded, is 16 bytes".
    let key = match request.header("Sec-WebSocket-Key").map(str::trim) {
        Some(k) if is_valid_key(k) => k,
        Some(_) => return Answer::Reject(reject(StatusCode::BAD_REQUEST, "malformed Sec-WebSocket-Key")),
        None => return Answer::Reject(reject(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key")),
    };
    // Browsers always send Origin; checking it stops cross-site WebSocket hijacking.
    if !allowed_origins.is_empty() {
        let allowed = request
            .header("Origin")
            .is_some_and(|o| allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o.trim())));
        if !allowed {
            return Answer::Reject(reject(StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    Answer::Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
    }
}

/// 16 bytes in base64 are exactly 22 significant characters and `==`.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
        // The 22nd character carries only 2 data bits; the other 4 must be zero.
        && matches!(b[21], b'A' | b'Q' | b'g' | b'w')
}

/// The subprotocol to select: the first one the client offers
/// (`Sec-WebSocket-Protocol`, possibly repeated, comma-separated) that the endpoint
/// `supported`. `None` when the client offers none of them, or none at all: RFC 6455
/// §4.2.2 then has the server answer without the header, and the client decides.
pub fn select_subprotocol(request: &Request, supported: &[&'static str]) -> Option<&'static str> {
    request
        .headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Sec-WebSocket-Protocol"))
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .find_map(|offered| supported.iter().copied().find(|s| *s == offered))
}

/// The `101 Switching Protocols` response for an agreed upgrade, naming the selected
/// subprotocol if there is one.
pub fn upgrade_response(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    )
    .into_bytes()
}

/// A complete plain-HTTP response that closes the connection.
pub fn http_response(status: StatusCode, body: &str) -> Vec<u8> {
    let extra = match status {
        StatusCode::METHOD_NOT_ALLOWED => "Allow: GET\r\n",
        _ => "",
    };
    response(status, extra, &Content::text(body.as_bytes()), false)
}

/// The response for a refusal, the explanation as a one-line body; `head`: the answer
/// to a `HEAD` request, headers only.
pub fn reject_response(r: &Reject, head: bool) -> Vec<u8> {
    let allow;
    let extra = match r.status {
        StatusCode::METHOD_NOT_ALLOWED => {
            allow = format!("Allow: {}\r\n", r.allow);
            allow.as_str()
        }
        _ => "",
    };
    response(
        r.status,
        extra,
        &Content::text(format!("{}\n", r.why).as_bytes()),
        head,
    )
}

/// A response body and how a client should treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content<'a> {
    /// The `Content-Type`.
    pub content_type: &'a str,
    /// The `Cache-Control`.
    pub cache_control: &'a str,
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Content<'a> {
    /// A plain-text answer that no cache keeps.
    pub fn text(body: &'a [u8]) -> Content<'a> {
        Content {
            content_type: "text/plain; charset=utf-8",
            cache_control: "no-store",
            body,
        }
    }
}

/// A complete plain-HTTP response that closes the connection: the status line, the
/// headers each status needs (`Upgrade` with 426, `Retry-After` with 503), `extra`
/// header lines (each ending in CRLF), then `content`; `head`: headers only, with the
/// `Content-Length` the body would have (RFC 9110 §9.3.2).
pub fn response(status: StatusCode, extra: &str, content: &Content<'_>, head: bool) -> Vec<u8> {
    let mut out = String::with_capacity(200 + extra.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    match status {
        StatusCode::UPGRADE_REQUIRED => out.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"),
        StatusCode::SERVICE_UNAVAILABLE => out.push_str("Retry-After: 1\r\n"),
        _ => {}
    }
    out.push_str(extra);
    let _ = write!(
        out,
        "Content-Type: {}\r\nContent-Length: {}\r\nCache-Control: {}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        content.content_type,
        content.body.len(),
        content.cache_control
    );
    let mut out = out.into_bytes();
    if !head {
        out.extend_from_slice(content.body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn parse(text: &str) -> Request {
        parse_head(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn rfc_sample_key_gets_rfc_sample_accept() {
        let req = parse(&upgrade_request(""));
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query(), Some("room=1"));
        assert_eq!(
            answer(&req, Endpoint::WebSocket, &[]),
            Answer::Upgrade {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
    }

    #[test]
    fn an_offered_supported_subprotocol_is_selected() {
        let req = parse(&upgrade_request("Sec-WebSocket-Protocol: chat.v2, wshub.v1\r\n"));
        assert_eq!(select_subprotocol(&req, &["wshub.v1"]), Some("wshub.v1"));
        let split = parse(&upgrade_request(
            "Sec-WebSocket-Protocol: x\r\nsec-websocket-protocol: wshub.v1\r\n",
        ));
        assert_eq!(select_subprotocol(&split, &["wshub.v1"]), Some("wshub.v1"));
    }

    #[test]
    fn no_subprotocol_is_selected_when_none_fits() {
        let none = parse(&upgrade_request(""));
        assert_eq!(select_subprotocol(&none, &["wshub.v1"]), None);
        let other = parse(&upgrade_request("Sec-WebSocket-Protocol: mqtt\r\n"));
        assert_eq!(select_subprotocol(&other, &["wshub.v1"]), None);
        let offered = parse(&upgrade_request("Sec-WebSocket-Protocol: wshub.v1\r\n"));
        assert_eq!(select_subprotocol(&offered, &[]), None);
    }

    #[test]
    fn the_upgrade_response_names_the_selected_subprotocol() {
        let with = String::from_utf8(upgrade_response("abc", Some("wshub.v1"))).unwrap();
        assert!(
            with.contains("\r\nSec-WebSocket-Protocol: wshub.v1\r\n"),
            "{with}"
        );
        assert!(with.ends_with("\r\n\r\n"));
        let without = String::from_utf8(upgrade_response("abc", None)).unwrap();
        assert!(!without.contains("Protocol:"), "{without}");
    }

    #[test]
    fn headers_keep_order_and_non_utf8_values_are_replaced() {
        let req = parse("GET / HTTP/1.1\r\nHost: a\r\nX-Bin: \u{e9}\r\nhost: b\r\n\r\n");
        let all: Vec<_> = req.headers().collect();
        assert_eq!(all, [("Host", "a"), ("X-Bin", "\u{e9}"), ("host", "b")]);
        assert_eq!(req.header("HOST"), Some("a"));
        let raw = b"GET /p?q HTTP/1.1\r\nX: \xff\r\n\r\n";
        let (req, _) = parse_head(raw).unwrap().unwrap();
        assert_eq!(req.header("x"), Some("\u{fffd}"));
        assert_eq!((req.method(), req.path(), req.query()), ("GET", "/p", Some("q")));
    }

    #[test]
    fn incomplete_head_asks_for_more() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn bytes_after_the_head_are_not_part_of_it() {
        let text = upgrade_request("") + "\u{81}";
        let (_, n) = parse_head(text.as_bytes()).unwrap().unwrap();
        assert_eq!(n, text.len() - 2);
    }

    #[test]
    fn oversized_head_is_431() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(
            parse_head(big.as_bytes()).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        let many: String = (0..MAX_REQUEST_HEADERS + 1)
            .map(|i| format!("X{i}: y\r\n"))
            .collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_head(text.as_bytes()).unwrap_err().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn garbage_is_400() {
        assert_eq!(
            parse_head(b"\x16\x03\x01\x02\x00").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_head(b"HELLO WORLD\r\n\r\n").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    fn status_of(text: &str, endpoint: Endpoint, origins: &[String]) -> Option<StatusCode> {
        match answer(&parse(text), endpoint, origins) {
            Answer::Reject(r) => Some(r.status),
            _ => None,
        }
    }

    /// The status a WebSocket endpoint refuses the upgrade request with once `from` in it
    /// is replaced by `to` (`None`: not refused).
    fn edited_upgrade_status(from: &str, to: &str) -> Option<StatusCode> {
        status_of(&upgrade_request("").replace(from, to), Endpoint::WebSocket, &[])
    }

    #[test]
    fn unknown_path_is_404() {
        assert_eq!(
            status_of(&upgrade_request(""), Endpoint::None, &[]),
            Some(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn plain_get_on_websocket_endpoint_is_426() {
        let text = "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            status_of(text, Endpoint::WebSocket, &[]),
            Some(StatusCode::UPGRADE_REQUIRED)
        );
    }

    #[test]
    fn healthz_is_ok_without_upgrade_to_get_and_head() {
        for method in ["GET", "HEAD"] {
            let req = parse(&format!("{method} /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
            assert_eq!(answer(&req, Endpoint::Health, &[]), Answer::Health, "{method}");
        }
    }

    #[test]
    fn wrong_version_is_426_and_missing_is_400() {
        let wrong = edited_upgrade_status("Version: 13", "Version: 8");
        assert_eq!(wrong, Some(StatusCode::UPGRADE_REQUIRED));
        let missing = edited_upgrade_status("Sec-WebSocket-Version: 13\r\n", "");
        assert_eq!(missing, Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn missing_or_malformed_key_is_400() {
        let missing = edited_upgrade_status(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
        assert_eq!(missing, Some(StatusCode::BAD_REQUEST));
        for bad in [
            "short==",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j!Q==",
        ] {
            assert_eq!(
                edited_upgrade_status(KEY, bad),
                Some(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
    }

    #[test]
    fn upgrade_header_other_than_websocket_is_400() {
        for (from, to) in [
            ("Upgrade: websocket", "Upgrade: h2c"),
            ("keep-alive, Upgrade", "keep-alive"),
        ] {
            assert_eq!(
                edited_upgrade_status(from, to),
                Some(StatusCode::BAD_REQUEST),
                "{to}"
            );
        }
    }

    #[test]
    fn a_head_refusal_keeps_the_headers_and_drops_the_body() {
        let r = reject(StatusCode::NOT_FOUND, "nothing here");
        let text = String::from_utf8(reject_response(&r, true)).unwrap();
        assert!(text.contains("Content-Length: 13\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn non_get_is_405() {
        assert_eq!(
            edited_upgrade_status("GET", "POST"),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
    }

    #[test]
    fn origin_outside_allowlist_is_403() {
        let allowed = vec!["https://good.example".to_string()];
        let good = upgrade_request("Origin: https://good.example\r\n");
        assert_eq!(status_of(&good, Endpoint::WebSocket, &allowed), None);
        let bad = upgrade_request("Origin: https://evil.example\r\n");
        assert_eq!(
            status_of(&bad, Endpoint::WebSocket, &allowed),
            Some(StatusCode::FORBIDDEN)
        );
        let none = upgrade_request("");
        assert_eq!(
            status_of(&none, Endpoint::WebSocket, &allowed),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(status_of(&bad, Endpoint::WebSocket, &[]), None);
    }

    #[test]
    fn responses_are_well_formed() {
        let r = http_response(StatusCode::UPGRADE_REQUIRED, "x\n");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\nx\n"));
    }

    #[test]
    fn resources_take_their_methods_and_no_upgrade() {
        let get = parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let head = parse("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        let post = parse("POST / HTTP/1.1\r\nHost: x\r\n\r\n");
        let demo = Endpoint::Resource(Resource::Demo);
        let publish = Endpoint::Resource(Resource::Publish);
        assert_eq!(
            answer(&get, demo, &[]),
            Answer::Resource {
                resource: Resource::Demo,
                head: false
            }
        );
        assert_eq!(
            answer(&head, demo, &[]),
            Answer::Resource {
                resource: Resource::Demo,
                head: true
            }
        );
        assert_eq!(
            status_of("POST / HTTP/1.1\r\nHost: x\r\n\r\n", demo, &[]),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert!(matches!(
            answer(&post, publish, &[]),
            Answer::Resource { head: false, .. }
        ));
        assert_eq!(
            status_of("GET / HTTP/1.1\r\nHost: x\r\n\r\n", publish, &[]),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            status_of(&upgrade_request(""), demo, &[]),
            Some(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn a_405_names_the_methods_the_path_takes() {
        let Answer::Reject(r) = answer(
            &parse("GET / HTTP/1.1\r\n\r\n"),
            Endpoint::Resource(Resource::Publish),
            &[],
        ) else {
            panic!("not a refusal")
        };
        let text = String::from_utf8(reject_response(&r, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 "), "{text}");
        assert!(text.contains("\r\nAllow: POST\r\n"), "{text}");
    }

    #[test]
    fn a_head_response_has_the_length_of_the_body_it_leaves_out() {
        let content = Content {
            content_type: "text/html; charset=utf-8",
            cache_control: "no-cache",
            body: b"<p>hello</p>",
        };
        let get = String::from_utf8(response(StatusCode::OK, "", &content, false)).unwrap();
        let head = String::from_utf8(response(StatusCode::OK, "", &content, true)).unwrap();
        assert!(get.ends_with("\r\n\r\n<p>hello</p>"));
        assert_eq!(head, get.strip_suffix("<p>hello</p>").unwrap());
        assert!(head.contains("Content-Length: 12\r\n") && head.contains("Cache-Control: no-cache\r\n"));
    }
}
