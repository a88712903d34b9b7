//! Identity and permissions on `/ws` (issue #12): `hello` in open and token mode, the
//! JWT rules, Close 4001, the channels claim, and the library's `Authorizer` hook. Over
//! loopback, each under a watchdog, synchronised on replies and Close frames.

mod support;

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::peer::Peer;
use support::*;
use wshub::pubsub::auth::{Action, Authorizer, Hello, Identity, issue_token};
use wshub::pubsub::protocol::{ErrorBody, ErrorCode};

const LIMIT: Duration = Duration::from_secs(60);
const SECRET: &str = "test-secret";

fn token_server(handshake: Duration) -> Server {
    let mut c = test_config();
    c.token_secret = Some(SECRET.into());
    c.handshake_timeout = handshake;
    start(c)
}

fn token(user: &str, channels: Option<&[&str]>, ttl: Option<Duration>, now: SystemTime) -> String {
    issue_token(
        SECRET.as_bytes(),
        user,
        channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
        None,
        ttl,
        now,
    )
}

/// Sends `hello` with `t` and expects error 7, then Close 4001.
fn refused_with_4001(addr: std::net::SocketAddr, t: &str) -> Value {
    let mut p = Peer::connect(addr);
    let r = p.cmd(json!({"op":"hello","token":t}));
    assert_eq!(r["err"]["code"], 7, "{r}");
    assert_eq!(p.close_code(), Some(4001));
    r
}

#[test]
fn open_mode_needs_no_hello() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut p = Peer::connect(server.local_addr());
        p.ok(json!({"op":"sub","ch":"a"}));
        p.ok(json!({"op":"pub","ch":"a","data":1}));
        let list = p.ok(json!({"op":"presence","ch":"a"}));
        assert_eq!(list["clients"][0]["user"], "", "{list}");
    });
}

#[test]
fn open_mode_hello_names_the_user_and_must_come_first() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut p = Peer::connect(server.local_addr());
        let ok = p.ok(json!({"op":"hello","user":"ann","info":{"name":"Ann"}}));
        assert_eq!(ok["user"], "ann");
        assert!(ok["client"].as_str().is_some_and(|c| !c.is_empty()), "{ok}");
        assert_eq!(p.err_code(json!({"op":"hello","user":"bob"})), 2);
        let mut late = Peer::connect(server.local_addr());
        late.ok(json!({"op":"sub","ch":"a"}));
        assert_eq!(late.err_code(json!({"op":"hello","user":"bob"})), 2);
    });
}

#[test]
fn info_must_be_an_object_of_at_most_1_kib() {
    watchdog(LIMIT, || {
        let server = start(test_config());
        let mut p = Peer::connect(server.local_addr());
        assert_eq!(p.err_code(json!({"op":"hello","user":"a","info":"x"})), 1);
        let big = json!({"op":"hello","user":"a","info":{"x":"y".repeat(1100)}});
        assert_eq!(p.err_code(big), 4);
        p.ok(json!({"op":"hello","user":"a","info":{"x":1}}));
    });
}

#[test]
fn token_mode_a_valid_token_is_ok_and_names_the_user() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        let mut p = Peer::connect(server.local_addr());
        let t = token("ann", None, Some(Duration::from_secs(3600)), SystemTime::now());
        let ok = p.ok(json!({"op":"hello","token":t}));
        assert_eq!(ok["user"], "ann");
        p.ok(json!({"op":"sub","ch":"anything"}));
        p.ok(json!({"op":"pub","ch":"other","data":1}));
    });
}

#[test]
fn token_mode_a_command_before_hello_is_error_7() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        let mut p = Peer::connect(server.local_addr());
        assert_eq!(p.err_code(json!({"op":"sub","ch":"a"})), 7);
        assert_eq!(p.err_code(json!({"op":"pub","ch":"a","data":1})), 7);
        // The connection stays usable until the deadline.
        let t = token("ann", None, None, SystemTime::now());
        p.ok(json!({"op":"hello","token":t}));
        p.ok(json!({"op":"sub","ch":"a"}));
    });
}

#[test]
fn token_mode_no_hello_is_closed_with_4001_after_the_handshake_timeout() {
    watchdog(LIMIT, || {
        let timeout = Duration::from_millis(500);
        let server = token_server(timeout);
        let started = Instant::now();
        let mut p = Peer::connect(server.local_addr());
        assert_eq!(p.close_code(), Some(4001));
        assert!(
            started.elapsed() >= timeout,
            "closed after {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn token_mode_a_client_that_said_hello_outlives_the_handshake_timeout() {
    watchdog(LIMIT, || {
        let timeout = Duration::from_millis(300);
        let server = token_server(timeout);
        let mut p = Peer::connect(server.local_addr());
        p.ok(json!({"op":"hello","token":token("ann", None, None, SystemTime::now())}));
        std::thread::sleep(timeout * 3);
        p.ok(json!({"op":"sub","ch":"a"}));
    });
}

#[test]
fn token_mode_an_expired_token_is_error_7_then_4001() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        let old = SystemTime::now() - Duration::from_secs(7200);
        let r = refused_with_4001(
            server.local_addr(),
            &token("ann", None, Some(Duration::from_secs(60)), old),
        );
        assert!(r["err"]["msg"].as_str().unwrap().contains("expired"), "{r}");
    });
}

#[test]
fn token_mode_a_wrong_signature_is_error_7_then_4001() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        let forged = issue_token(b"not-the-secret", "ann", None, None, None, SystemTime::now());
        let r = refused_with_4001(server.local_addr(), &forged);
        assert!(r["err"]["msg"].as_str().unwrap().contains("signature"), "{r}");
    });
}

#[test]
fn token_mode_alg_none_is_error_7_then_4001() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        // {"alg":"none","typ":"JWT"} . {"sub":"ann"} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbm4ifQ.";
        let r = refused_with_4001(server.local_addr(), none);
        assert!(r["err"]["msg"].as_str().unwrap().contains("alg"), "{r}");
    });
}

#[test]
fn token_mode_a_malformed_token_or_none_at_all_is_error_7_then_4001() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        refused_with_4001(server.local_addr(), "not.a.jwt");
        let mut p = Peer::connect(server.local_addr());
        assert_eq!(p.err_code(json!({"op":"hello","user":"ann"})), 7);
        assert_eq!(p.close_code(), Some(4001));
    });
}

#[test]
fn token_mode_a_channel_outside_the_channels_claim_is_error_3() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        let mut p = Peer::connect(server.local_addr());
        let t = token("ann", Some(&["room:*", "lobby"]), None, SystemTime::now());
        p.ok(json!({"op":"hello","token":t}));
        p.ok(json!({"op":"sub","ch":"room:1"}));
        p.ok(json!({"op":"sub","ch":"lobby"}));
        p.ok(json!({"op":"pub","ch":"room:2","data":1}));
        assert_eq!(p.err_code(json!({"op":"sub","ch":"lobby2"})), 3);
        assert_eq!(p.err_code(json!({"op":"pub","ch":"admin","data":1})), 3);
        assert_eq!(p.err_code(json!({"op":"history","ch":"admin"})), 3);
        assert_eq!(p.err_code(json!({"op":"presence","ch":"admin"})), 3);
    });
}

/// An embedding program's rule: users named `guest*` may only read, and anyone may
/// list presence of `lobby` without subscribing.
struct ReadOnlyGuests;

impl Authorizer for ReadOnlyGuests {
    fn hello(&self, hello: &Hello<'_>) -> Result<Identity, ErrorBody> {
        match hello.user {
            Some(u) if !u.is_empty() => Ok(Identity {
                user: u.to_owned(),
                ..Identity::default()
            }),
            _ => Err(ErrorBody::new(ErrorCode::Unauthorized, "who are you?")),
        }
    }

    fn allow(&self, who: &Identity, action: Action, _ch: &str) -> Result<(), ErrorBody> {
        if action == Action::Publish && who.user.starts_with("guest") {
            return Err(ErrorBody::new(ErrorCode::Forbidden, "guests only read"));
        }
        Ok(())
    }

    fn presence_without_subscription(&self, _who: &Identity, ch: &str) -> bool {
        ch == "lobby"
    }
}

#[test]
fn the_authorizer_hook_decides_hello_pub_and_presence() {
    watchdog(LIMIT, || {
        let server = Server::builder(test_config())
            .authorizer(ReadOnlyGuests)
            .start()
            .expect("starts");
        let addr = server.local_addr();
        let mut anon = Peer::connect(addr);
        // The hook does not require hello (open mode), but refuses an empty user.
        assert_eq!(anon.err_code(json!({"op":"hello"})), 7);
        let mut guest = Peer::connect(addr);
        guest.ok(json!({"op":"hello","user":"guest1"}));
        guest.ok(json!({"op":"sub","ch":"news"}));
        assert_eq!(guest.err_code(json!({"op":"pub","ch":"news","data":1})), 3);
        // Presence: lobby is open to all, other channels to their subscribers.
        assert_eq!(guest.ok(json!({"op":"presence","ch":"lobby"}))["num_clients"], 0);
        assert_eq!(guest.err_code(json!({"op":"presence","ch":"other"})), 3);
        let mut staff = Peer::connect(addr);
        staff.ok(json!({"op":"hello","user":"ann"}));
        staff.ok(json!({"op":"pub","ch":"news","data":1}));
        assert_eq!(guest.push()["data"], 1);
    });
}

fn wshub(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wshub runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap(); // then EOF
    child.wait_with_output().unwrap()
}

#[test]
fn the_cli_token_command_makes_a_token_the_server_accepts_within_its_channels() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        let out = wshub(
            &[
                "token",
                "--secret",
                SECRET,
                "--user",
                "ann",
                "--channels",
                "room:*",
                "--ttl",
                "1h",
            ],
            "",
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let t = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mut p = Peer::connect(server.local_addr());
        assert_eq!(p.ok(json!({"op":"hello","token":t}))["user"], "ann");
        p.ok(json!({"op":"sub","ch":"room:1"}));
        assert_eq!(p.err_code(json!({"op":"sub","ch":"lobby"})), 3);
    });
}

#[test]
fn the_cli_connect_with_a_token_publishes_in_token_mode() {
    watchdog(LIMIT, || {
        let server = token_server(Duration::from_secs(5));
        let t = token("ann", None, None, SystemTime::now());
        let url = format!("ws://{}/ws", server.local_addr());
        let out = wshub(&["connect", &url, "--channel", "room", "--token", &t], "hi\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("hello: user \"ann\""), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "\"hi\"");
        // Without a token the server refuses the subscription: exit 1, and says why.
        let out = wshub(&["connect", &url, "--channel", "room", "--no-reconnect"], "hi\n");
        assert!(!out.status.success());
    });
}
