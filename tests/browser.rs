//! The demo page and `wshub.js` in a real headless Chromium, driven over WebDriver
//! (`support/browser.rs`): two pages chat, survive a server restart, and catch up after
//! a cut connection. Needs Debian's `chromium` and `chromium-driver`; without them each
//! test fails with an install hint, or prints that it skipped when
//! `WSHUB_SKIP_BROWSER=1`. Screenshots go to `target/browser-artifacts/`.

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use browser::{Browser, artifacts_dir, browser_or_skip, check_not_blank};
use serde_json::json;
use support::{Server, start, test_config, watchdog};

/// How long a page may take to show what a step expects (reconnects back off).
const SHOW: Duration = Duration::from_secs(30);

/// Whole-test limit: Chromium's start-up is slow on a loaded machine, and a test may wait
/// for the other browser tests' turns first (one browser at a time).
const TEST_LIMIT: Duration = Duration::from_secs(420);

/// Opens the demo page for `ch` as `name` in the current window.
fn open_page(b: &Browser, base: SocketAddr, ch: &str, name: &str) {
    b.goto(&format!("http://{base}/?ch={ch}&name={name}"));
    wait_subscribed(b);
}

/// Opens the chat on `ch` as Alice (reaching the server at `alice_via`) in the current
/// window and as Bob (at `bob_via`) in a new one; returns their window handles, Bob's
/// current.
fn two_pages(b: &Browser, ch: &str, alice_via: SocketAddr, bob_via: SocketAddr) -> (String, String) {
    let alice = b.window();
    open_page(b, alice_via, ch, "alice");
    let bob = b.new_window();
    b.switch_to(&bob);
    open_page(b, bob_via, ch, "bob");
    (alice, bob)
}

/// Waits until the page's connection badge says `state`.
fn wait_state(b: &Browser, state: &str) {
    b.wait_for(
        &format!("the page's connection to be {state}"),
        &format!("return document.getElementById('state').dataset.state === '{state}'"),
        SHOW,
    );
}

/// Waits until the page's client is open and subscribed (it shows an offset).
fn wait_subscribed(b: &Browser) {
    b.wait_for(
        "the page to connect and subscribe",
        "return document.getElementById('state').dataset.state === 'open' \
         && window.wshubDemo.sub.active \
         && document.getElementById('offset').textContent !== '-'",
        SHOW,
    );
}

/// Types a message and sends it, as a person would; waits until the page says which
/// offset it got, and returns it.
fn say(b: &Browser, text: &str) -> u64 {
    b.exec("document.getElementById('sendstate').textContent = ''", json!([]));
    b.type_into("#text", text);
    b.click("button[type=submit]");
    let sent = b.wait_for(
        "the page to confirm the send",
        "const t = document.getElementById('sendstate').textContent; \
         return t.startsWith('sent as #') ? t : null",
        SHOW,
    );
    sent.as_str()
        .unwrap()
        .trim_start_matches("sent as #")
        .parse()
        .unwrap()
}

/// The messages a page shows: `(offset, text)` in the order shown.
fn shown(b: &Browser) -> Vec<(u64, String)> {
    let v = b.exec(
        "return Array.from(document.querySelectorAll('#log li[data-offset]'), \
         li => [Number(li.dataset.offset), li.querySelector('.text').textContent])",
        json!([]),
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_str().unwrap().to_string()))
        .collect()
}

/// Waits until the page shows `n` messages, then returns them.
fn wait_shown(b: &Browser, n: usize) -> Vec<(u64, String)> {
    b.wait_for(
        &format!("{n} messages on the page"),
        &format!("return document.querySelectorAll('#log li[data-offset]').length >= {n}"),
        SHOW,
    );
    shown(b)
}

fn text_of(b: &Browser, id: &str) -> String {
    b.exec(
        &format!("return document.getElementById('{id}').textContent"),
        json!([]),
    )
    .as_str()
    .unwrap()
    .to_string()
}

/// Saves a screenshot of the current window as `name` and checks it is not blank.
fn keep_screenshot(b: &Browser, name: &str) {
    let png = b.screenshot();
    std::fs::write(artifacts_dir().join(name), &png).unwrap();
    check_not_blank(&png);
}

#[test]
fn a_headless_browser_loads_the_demo_page_and_its_screenshot_is_not_blank() {
    watchdog(TEST_LIMIT, || {
        let Some(b) = browser_or_skip("browser smoke test") else {
            return;
        };
        let server = start(test_config());
        b.goto(&format!("http://{}/?ch=smoke", server.local_addr()));
        assert_eq!(b.exec("return document.title", json!([])), "wshub demo chat");
        assert_eq!(text_of(&b, "channel"), "smoke");
        assert_eq!(
            b.exec("return typeof window.Wshub", json!([])),
            "object",
            "wshub.js did not load"
        );
        keep_screenshot(&b, "smoke.png");
    });
}

#[test]
fn two_pages_chat_and_see_the_same_offsets() {
    watchdog(TEST_LIMIT, || {
        let Some(b) = browser_or_skip("two pages chat") else {
            return;
        };
        let server = start(test_config());
        let addr = server.local_addr();
        let (alice, bob) = two_pages(&b, "room", addr, addr);

        b.switch_to(&alice);
        assert_eq!(say(&b, "hello from alice"), 1);
        b.switch_to(&bob);
        assert_eq!(say(&b, "hi alice"), 2);
        let bob_sees = wait_shown(&b, 2);
        b.switch_to(&alice);
        let alice_sees = wait_shown(&b, 2);
        let expected = vec![(1, "hello from alice".to_string()), (2, "hi alice".to_string())];
        assert_eq!(alice_sees, expected);
        assert_eq!(bob_sees, expected);
        keep_screenshot(&b, "two-pages-chat.png");
    });
}

#[test]
fn two_pages_show_who_is_online_and_see_a_page_leave() {
    watchdog(TEST_LIMIT, || {
        let Some(b) = browser_or_skip("who is online") else {
            return;
        };
        let server = start(test_config());
        let addr = server.local_addr();
        let (alice, bob) = two_pages(&b, "lobby", addr, addr);
        let both = "return document.getElementById('who').textContent === 'alice, bob'";
        b.wait_for("Bob's page to list alice and bob", both, SHOW);
        b.switch_to(&alice);
        b.wait_for("Alice's page to list alice and bob (Bob's join)", both, SHOW);
        keep_screenshot(&b, "who-is-online.png");
        b.switch_to(&bob);
        b.exec("window.wshubDemo.client.close()", json!([]));
        b.switch_to(&alice);
        b.wait_for(
            "Alice's page to see Bob leave",
            "return document.getElementById('who').textContent === 'alice'",
            SHOW,
        );
        assert_eq!(text_of(&b, "online"), "1 connection, 1 user");
    });
}

#[test]
fn pages_reconnect_after_a_server_restart_and_say_they_did_not_recover() {
    watchdog(TEST_LIMIT, || {
        let Some(b) = browser_or_skip("server restart") else {
            return;
        };
        let server = start(test_config());
        let addr = server.local_addr();
        let (alice, bob) = two_pages(&b, "room", addr, addr);
        assert_eq!(say(&b, "before the restart"), 1);
        let epoch_before = text_of(&b, "epoch");

        server.shutdown();
        for w in [&alice, &bob] {
            b.switch_to(w);
            wait_state(&b, "reconnecting");
        }
        let mut config = test_config();
        config.addr = addr;
        let _server = Server::start(config).expect("the server starts again on the same port");

        for w in [&alice, &bob] {
            b.switch_to(w);
            b.wait_for(
                "the page to reconnect and report the recovery",
                "return document.getElementById('recovery').dataset.recovered === 'false'",
                SHOW,
            );
            wait_subscribed(&b);
            assert_eq!(text_of(&b, "reconnects"), "1");
            assert!(text_of(&b, "recovery").starts_with("not recovered"));
            assert_ne!(
                text_of(&b, "epoch"),
                epoch_before,
                "a restarted server has a new epoch"
            );
        }
        // The chat goes on in the new epoch, for both.
        assert_eq!(say(&b, "after the restart"), 1);
        b.switch_to(&alice);
        let seen = wait_shown(&b, 2);
        assert_eq!(seen[1], (1, "after the restart".to_string()));
        keep_screenshot(&b, "after-restart.png");
    });
}

#[test]
fn a_page_cut_off_while_the_other_publishes_shows_every_missed_message_once() {
    watchdog(TEST_LIMIT, || {
        let Some(b) = browser_or_skip("cut and recover") else {
            return;
        };
        let server = start(test_config());
        let addr = server.local_addr();
        // Alice reaches the server through a proxy the test can cut; Bob directly.
        let proxy = CutProxy::start(addr);
        let (alice, bob) = two_pages(&b, "room", proxy.addr, addr);
        assert_eq!(say(&b, "one"), 1);
        b.switch_to(&alice);
        wait_shown(&b, 1);

        proxy.cut_and_block();
        wait_state(&b, "reconnecting");
        b.switch_to(&bob);
        for (i, text) in ["two", "three", "four"].into_iter().enumerate() {
            assert_eq!(say(&b, text), i as u64 + 2);
        }
        proxy.unblock();

        b.switch_to(&alice);
        b.wait_for(
            "Alice's page to reconnect and recover",
            "return document.getElementById('recovery').dataset.recovered === 'true'",
            SHOW,
        );
        let seen = wait_shown(&b, 4);
        let expected: Vec<(u64, String)> = ["one", "two", "three", "four"]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, t.to_string()))
            .collect();
        assert_eq!(seen, expected, "every missed message once, in order");
        assert!(
            text_of(&b, "recovery").contains("3 missed"),
            "{}",
            text_of(&b, "recovery")
        );
        // And live messages follow with no gap.
        b.switch_to(&bob);
        assert_eq!(say(&b, "five"), 5);
        b.switch_to(&alice);
        assert_eq!(wait_shown(&b, 5)[4], (5, "five".to_string()));
        keep_screenshot(&b, "recovered-after-cut.png");
    });
}

#[test]
fn a_publish_whose_ack_is_lost_is_sent_again_with_its_key_and_happens_once() {
    watchdog(TEST_LIMIT, || {
        let Some(b) = browser_or_skip("lost ack") else {
            return;
        };
        let server = start(test_config());
        let addr = server.local_addr();
        let proxy = CutProxy::start(addr);
        let (alice, bob) = two_pages(&b, "room", proxy.addr, addr);

        // Alice's publication reaches the server, but its ack (and the push) do not.
        b.switch_to(&alice);
        proxy.mute_replies();
        b.type_into("#text", "said once");
        b.click("button[type=submit]");
        b.switch_to(&bob);
        assert_eq!(wait_shown(&b, 1), vec![(1, "said once".to_string())]);

        // Alice's connection dies with the ack unseen; after the reconnect her client
        // sends the same pub with the same key, and gets the first one's offset.
        proxy.cut_and_block();
        b.switch_to(&alice);
        wait_state(&b, "reconnecting");
        proxy.unblock();
        let sent = b.wait_for(
            "Alice's page to get the ack after reconnecting",
            "const t = document.getElementById('sendstate').textContent; \
             return t.startsWith('sent as #') ? t : null",
            SHOW,
        );
        assert_eq!(sent, "sent as #1");
        assert_eq!(wait_shown(&b, 1), vec![(1, "said once".to_string())]);

        // Published once: the next publication is offset 2, and Bob saw nothing between.
        b.switch_to(&bob);
        assert_eq!(say(&b, "next"), 2);
        assert_eq!(
            wait_shown(&b, 2),
            vec![(1, "said once".to_string()), (2, "next".to_string())]
        );
        b.switch_to(&alice);
        assert_eq!(wait_shown(&b, 2).len(), 2);
    });
}

/// A loopback TCP proxy in front of the server whose connections the test can cut
/// (both directions shut, no Close frame: what a dead network looks like to the
/// browser) and whose new connections it can refuse for a while.
struct CutProxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

struct ProxyShared {
    stop: AtomicBool,
    blocked: AtomicBool,
    /// Server-to-browser bytes are read and dropped (the browser's sends still arrive).
    muted: AtomicBool,
    /// Every socket of every proxied connection, to cut them; and the copy threads.
    conns: Mutex<(Vec<TcpStream>, Vec<JoinHandle<()>>)>,
}

impl CutProxy {
    fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(ProxyShared {
            stop: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            muted: AtomicBool::new(false),
            conns: Mutex::new((Vec::new(), Vec::new())),
        });
        let s = shared.clone();
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if s.blocked.load(Ordering::SeqCst) {
                    continue; // dropped: the browser sees the connection fail
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut conns = s.conns.lock().unwrap();
                for (from, to, mutable) in [(&client, &server, false), (&server, &client, true)] {
                    let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let s = s.clone();
                    conns.1.push(thread::spawn(move || {
                        let muted = || mutable && s.muted.load(Ordering::SeqCst);
                        let _ = pump(&from, &to, muted);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    }));
                }
                conns.0.push(client);
                conns.0.push(server);
            }
        });
        CutProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    fn cut_all(&self) {
        for sock in self.shared.conns.lock().unwrap().0.drain(..) {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    /// Cuts every proxied connection and refuses new ones until [`unblock`](Self::unblock).
    fn cut_and_block(&self) {
        self.shared.blocked.store(true, Ordering::SeqCst);
        self.cut_all();
    }

    fn unblock(&self) {
        self.shared.muted.store(false, Ordering::SeqCst);
        self.shared.blocked.store(false, Ordering::SeqCst);
    }

    /// From now on, what the server sends is dropped: the browser's messages arrive,
    /// the answers are lost.
    fn mute_replies(&self) {
        self.shared.muted.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends; while `muted()`, reads and drops.
fn pump(mut from: &TcpStream, mut to: &TcpStream, muted: impl Fn() -> bool) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if !muted() {
            to.write_all(&buf[..n])?;
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut_all();
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        let threads = std::mem::take(&mut self.shared.conns.lock().unwrap().1);
        for h in threads {
            let _ = h.join();
        }
    }
}
