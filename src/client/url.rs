//! `ws://` URLs: parsed once, by hand, into host, port and path. I/O-free.
//!
//! Owns nothing at run time; runs on whichever thread parses. A URL is checked here,
//! before any socket exists, so that a typo is one clear error (and exit 2 in the CLI)
//! instead of a confusing failure in the middle of a handshake.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

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
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let t = text.trim();
        let Some((scheme, rest)) = t.split_once("://") else {
            return Err(invalid("expected ws://HOST[:PORT][/PATH]"));
        };
        if !scheme.eq_ignore_ascii_case("ws") {
            let valid_scheme = !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid_scheme {
                return Err(invalid("expected ws://HOST[:PORT][/PATH]"));
            }
            return Err(ClientError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            });
        }
        if rest.contains('#') {
            return Err(invalid("a WebSocket URL may not have a fragment (#...)"));
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(invalid(
                "credentials in the URL (user@host) are not supported; send them in a header",
            ));
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((addr, after)) = bracketed.split_once(']') else {
                return Err(invalid("an IPv6 address needs its closing ']'"));
            };
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(invalid("the address in brackets is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => match p.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return Err(invalid("expected ':PORT' after the IPv6 address")),
                },
            };
            (addr, port)
        } else {
            match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(invalid(
                        "an IPv6 address must be written in brackets: ws://[::1]:8080/",
                    ));
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
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
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(invalid("the port must be a number from 1 to 65535")),
            },
        };
        let path = match path {
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
            ("ws://", "host is missing"),
            ("ws://:8080/", "host is missing"),
            ("ws://h:0/", "port"),
            ("ws://h:65536/", "port"),
            ("ws://h:/", "port"),
            ("ws://h:+80/", "port"),
            ("ws://h:x/", "port"),
            ("ws://user:pw@h/", "credentials"),
            ("ws://h/#frag", "fragment"),
            ("ws://h/a b", "percent-encode"),
            ("ws://h/é", "percent-encode"),
            ("ws://h o/", "host may only"),
            ("://h/", "expected ws://"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(matches!(e, ClientError::InvalidUrl { .. }), "{url}: {e:?}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
    }
}
