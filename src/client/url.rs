//! `ws://` URLs: parsed once, by `http::Uri`, into host, port and path. I/O-free.
//!
//! Owns nothing at run time; runs on whichever thread parses. A URL is checked here,
//! before any socket exists, so that a typo is one clear error (and exit 2 in the CLI)
//! instead of a confusing failure in the middle of a handshake.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use tungstenite::http::Uri;

use super::ClientError;

/// A parsed `ws://HOST[:PORT][/PATH][?QUERY]` URL.
///
/// - the scheme is `ws` (any case); `wss` is refused with
///   [`ClientError::UnsupportedScheme`], since wshub does not do TLS;
/// - the host is a name, an IPv4 address, or an IPv6 address in brackets;
/// - the port defaults to 80;
/// - the path defaults to `/` and keeps its query; it must already be percent-encoded
///   (no spaces, control characters or non-ASCII);
/// - credentials (`user@`) and fragments (`#...`, RFC 6455 §3) are refused.
///
/// ```
/// let url: wshub::client::WsUrl = "ws://127.0.0.1:8080/chat?room=1".parse().unwrap();
/// assert_eq!(url.host(), "127.0.0.1");
/// assert_eq!(url.port(), 8080);
/// assert_eq!(url.path(), "/chat?room=1");
/// assert_eq!(url.to_string(), "ws://127.0.0.1:8080/chat?room=1");
/// assert!("wss://example.com/".parse::<wshub::client::WsUrl>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WsUrl {
    /// Host name or address, without IPv6 brackets.
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl WsUrl {
    /// The host: a name or an address (an IPv6 address without its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (80 when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path and query, starting with `/`: what goes on the request line.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `host[:port]` as the `Host` header writes it: IPv6 in brackets, port 80 omitted.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ws://{}{}", self.authority(), self.path)
    }
}

impl FromStr for WsUrl {
    type Err = ClientError;

    fn from_str(text: &str) -> Result<WsUrl, ClientError> {
        const EXPECTED: &str = "expected ws://HOST[:PORT][/PATH]";
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let t = text.trim();
        // http::Uri drops a fragment without a word; RFC 6455 §3 forbids one.
        if t.contains('#') {
            return Err(invalid("a WebSocket URL may not have a fragment (#...)"));
        }
        let uri: Uri = t.parse().map_err(|e| {
            invalid(&format!(
                "{e}; {EXPECTED}, an IPv6 address in brackets, the path percent-encoded"
            ))
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(invalid(EXPECTED));
        };
        if scheme.is_empty() {
            return Err(invalid(EXPECTED));
        }
        if !scheme.eq_ignore_ascii_case("ws") {
            return Err(ClientError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            });
        }
        if authority.as_str().contains('@') {
            return Err(invalid(
                "credentials in the URL (user@host) are not supported; send them in a header",
            ));
        }
        let host = match authority.host().strip_prefix('[') {
            Some(bracketed) => {
                let addr = bracketed.strip_suffix(']').unwrap_or(bracketed);
                if addr.parse::<Ipv6Addr>().is_err() {
                    return Err(invalid("the address in brackets is not an IPv6 address"));
                }
                addr
            }
            None => authority.host(),
        };
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(invalid(
                "the host may only contain letters, digits, '.', '-' and '_'",
            ));
        }
        // http::Uri reads an unparsable port as none: check what follows the host.
        let port = match &authority.as_str()[authority.host().len()..] {
            "" => 80,
            after => match after.strip_prefix(':').map(|p| (p, p.parse::<u16>())) {
                Some((p, Ok(n))) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                Some(_) => return Err(invalid("the port must be a number from 1 to 65535")),
                None => return Err(invalid("expected ':PORT' after the host")),
            },
        };
        let path = match uri.path_and_query().map_or("", |p| p.as_str()) {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if path.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(invalid(
                "the path has a space, a control character or non-ASCII text; percent-encode it",
            ));
        }
        Ok(WsUrl {
            host: host.to_owned(),
            port,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WsUrl, ClientError> {
        s.parse()
    }

    #[test]
    fn host_port_and_path_are_found() {
        let u = parse("ws://example.com:9001/chat").unwrap();
        assert_eq!((u.host(), u.port(), u.path()), ("example.com", 9001, "/chat"));
        let u = parse("WS://example.com").unwrap();
        assert_eq!((u.port(), u.path()), (80, "/"));
        assert_eq!(u.to_string(), "ws://example.com/");
        let u = parse("ws://h?x=1").unwrap();
        assert_eq!(u.path(), "/?x=1");
        let u = parse("  ws://127.0.0.1:8080/a/b?c=d%20e  ").unwrap();
        assert_eq!(u.path(), "/a/b?c=d%20e");
    }

    #[test]
    fn ipv6_needs_brackets() {
        let u = parse("ws://[::1]:8080/echo").unwrap();
        assert_eq!((u.host(), u.port()), ("::1", 8080));
        assert_eq!(u.authority(), "[::1]:8080");
        assert_eq!(parse("ws://[::1]/").unwrap().authority(), "[::1]");
        assert!(parse("ws://::1:8080/").is_err());
        assert!(parse("ws://[::1/").is_err());
        assert!(parse("ws://[nope]/").is_err());
        assert!(parse("ws://[::1]x/").is_err());
    }

    #[test]
    fn wss_and_other_schemes_are_refused_clearly() {
        let e = parse("wss://example.com/").unwrap_err();
        assert!(matches!(e, ClientError::UnsupportedScheme { .. }));
        assert!(e.to_string().contains("wss://"), "{e}");
        let e = parse("http://example.com/").unwrap_err();
        assert!(e.to_string().contains("expected ws://"), "{e}");
        assert!(e.is_fatal());
    }

    #[test]
    fn malformed_urls_say_what_is_wrong() {
        for (url, says) in [
            ("", "expected ws://"),
            ("example.com:8080", "expected ws://"),
            ("ws://", "expected ws://"),
            ("ws://:8080/", "host is missing"),
            ("ws://h:0/", "port"),
            ("ws://h:65536/", "port"),
            ("ws://h:/", "port"),
            ("ws://h:+80/", "port"),
            ("ws://h:x/", "port"),
            ("ws://user:pw@h/", "credentials"),
            ("ws://h/#frag", "fragment"),
            ("ws://h/a b", "percent-encode"),
            ("ws://::1:8080/", "IPv6 address in brackets"),
            ("ws://h/é", "percent-encode"),
            ("ws://h o/", "invalid uri character"),
            ("ws://h.example!/", "host may only"),
            ("://h/", "expected ws://"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(matches!(e, ClientError::InvalidUrl { .. }), "{url}: {e:?}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
    }
}
