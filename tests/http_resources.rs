//! The plain-HTTP resources served before any upgrade: the demo page, the browser
//! client, and their headers, `HEAD`, and the flags that turn them off.

mod support;

use std::time::Duration;

use support::{raw_exchange, start, status_line, test_config, watchdog};

/// A response's header value (first match, case-insensitive name), and its body.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    raw_exchange(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

#[test]
fn the_demo_page_is_html_with_its_length_and_a_cache_policy() {
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let r = get(server.local_addr(), "GET", "/?ch=room");
        assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
        assert_eq!(header(&r, "Content-Type"), Some("text/html; charset=utf-8"));
        assert_eq!(header(&r, "Cache-Control"), Some("no-cache"));
        let len: usize = header(&r, "Content-Length").unwrap().parse().unwrap();
        assert_eq!(body(&r).len(), len);
        assert!(body(&r).contains("<script src=\"/wshub.js\"></script>"));
    });
}

#[test]
fn the_browser_client_is_javascript() {
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let r = get(server.local_addr(), "GET", "/wshub.js");
        assert_eq!(status_line(&r), "HTTP/1.1 200 OK");
        assert_eq!(header(&r, "Content-Type"), Some("text/javascript; charset=utf-8"));
        assert!(body(&r).contains("wshub.v1"));
    });
}

#[test]
fn head_gets_the_headers_of_get_and_no_body() {
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let full = get(server.local_addr(), "GET", "/wshub.js");
        let head = get(server.local_addr(), "HEAD", "/wshub.js");
        assert_eq!(status_line(&head), "HTTP/1.1 200 OK");
        assert_eq!(header(&head, "Content-Length"), header(&full, "Content-Length"));
        assert_eq!(body(&head), "");
    });
}

#[test]
fn no_demo_leaves_the_page_out_but_keeps_the_script() {
    watchdog(Duration::from_secs(30), || {
        let mut config = test_config();
        config.demo = false;
        let server = start(config);
        assert_eq!(
            status_line(&get(server.local_addr(), "GET", "/")),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status_line(&get(server.local_addr(), "GET", "/wshub.js")),
            "HTTP/1.1 200 OK"
        );
    });
}

#[test]
fn a_post_to_the_page_is_405_naming_get_and_head() {
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let r = raw_exchange(
            server.local_addr(),
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(status_line(&r), "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(header(&r, "Allow"), Some("GET, HEAD"));
    });
}

#[test]
fn an_upgrade_to_the_page_is_404() {
    watchdog(Duration::from_secs(30), || {
        let server = start(test_config());
        let r = raw_exchange(server.local_addr(), support::upgrade_request("/", "").as_bytes());
        assert_eq!(status_line(&r), "HTTP/1.1 404 Not Found");
    });
}

#[test]
fn a_route_of_the_embedder_wins_over_a_built_in_page() {
    watchdog(Duration::from_secs(30), || {
        let server = support::Server::builder(test_config())
            .route("/", wshub::Echo)
            .start()
            .unwrap();
        let r = get(server.local_addr(), "GET", "/");
        assert_eq!(status_line(&r), "HTTP/1.1 426 Upgrade Required");
    });
}
