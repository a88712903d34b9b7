//! A reconnecting client with exponential backoff and jitter. Go code loops on
//! `Dial`, sleeping a doubling delay plus a random part between attempts; wshub's
//! `ReconnectingClient` runs that loop on a supervisor thread, waits on a channel (not a
//! sleep, so stopping it ends even a long wait at once), and reports every step as an
//! event, in order, on one channel.
//!
//! The demo: a server, a session on its /echo, the server stopped (its drain sends Close
//! 1001), a few failed attempts with growing delays, the server back on the same port,
//! the session connected again, and a clean close.
//! Run: `cargo run --example reconnect`. The code: `src/client/reconnect.rs` (the loop)
//! and `src/client/backoff.rs` (the delays).

use std::time::Duration;

use wshub::client::{Event, ReconnectConfig, ReconnectingClient};
use wshub::{Config, Message, Server};

fn main() {
    let mut config = Config::default();
    config.addr = "127.0.0.1:0".parse().unwrap();
    let mut server = Some(Server::start(config.clone()).expect("start"));
    config.addr = server.as_ref().unwrap().local_addr(); // the restart reuses this port

    let mut reconnect = ReconnectConfig::default();
    reconnect.backoff.initial = Duration::from_millis(100); // then 200, 400, ... plus jitter
    reconnect.backoff.max = Duration::from_secs(1);
    reconnect.max_retries = Some(20); // a demo must end even if something goes wrong
    let url = format!("ws://{}/echo", config.addr);
    let session = ReconnectingClient::start(&url, reconnect).expect("a valid URL");

    let mut connections = 0;
    let mut failures = 0;
    // The event channel disconnects once the session has ended.
    for event in session.events() {
        match event {
            Event::Connected => {
                connections += 1;
                println!("connected (connection {connections})");
                let text = if connections == 1 { "before" } else { "after" };
                session.send(Message::text(text)).expect("send");
            }
            Event::Message(msg) => {
                println!("echoed: {msg}");
                if msg == Message::text("before") {
                    println!("stopping the server");
                    server.take().unwrap().shutdown(); // the session answers its Close 1001
                } else {
                    session.close(1000, "done").expect("a valid close code");
                }
            }
            Event::Disconnected { close, .. } => match close {
                Some(frame) => println!("disconnected: Close {} {}", u16::from(frame.code), frame.reason),
                None => println!("disconnected without a Close frame"),
            },
            Event::Reconnecting { attempt, delay } => {
                println!("retry {attempt} in {}ms", delay.as_millis())
            }
            Event::ConnectFailed { error, .. } => {
                failures += 1;
                println!("attempt failed: {error}");
                if failures == 3 {
                    println!("starting the server again on {}", config.addr);
                    server = Some(Server::start(config.clone()).expect("restart on the same port"));
                }
            }
            Event::GaveUp { retries } => println!("gave up after {retries} retries"),
            other => println!("{other:?}"),
        }
    }
    if let Some(server) = server {
        server.shutdown();
    }
    println!("session over after {connections} connections");
}
