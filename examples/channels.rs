//! Channels in a minute: publish, subscribe, and recover after a dropped connection.
//!
//! ```text
//! cargo run --example channels
//! ```
//!
//! An embedded server; a reader that reaches it through a relay this program can cut
//! (as a network failure would: no Close); a writer that publishes. The reader misses
//! three publications while it is cut off, resubscribes with the position it had, and
//! gets them, once each and in order, before the live ones.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::json;
use wshub::client::Event;
use wshub::client::pubsub::{ChannelClient, ChannelConfig, ChannelError, ChannelEvent};
use wshub::{Config, Server};

fn main() -> Result<(), ChannelError> {
    let mut config = Config::default();
    config.addr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(config).expect("server starts");
    let relay = Relay::start(server.local_addr());

    let mut reader_config = ChannelConfig::default();
    reader_config.reconnect.backoff.initial = Duration::from_millis(500);
    let reader = ChannelClient::start(&format!("ws://{}/ws", relay.addr), reader_config)?;
    let writer = ChannelClient::start(
        &format!("ws://{}/ws", server.local_addr()),
        ChannelConfig::default(),
    )?;

    reader.subscribe("prices")?;
    let mut published = 0;
    for event in reader.events() {
        match event {
            ChannelEvent::Subscribed { recovered, .. } => {
                println!("subscribed (recovered: {recovered:?})");
                if recovered.is_none() {
                    for _ in 0..3 {
                        published += 1;
                        let at = writer.publish("prices", json!({ "tick": published }))?;
                        println!("published tick {published} at offset {}", at.offset);
                    }
                }
            }
            ChannelEvent::Publication { publication, .. } => {
                println!("received offset {}: {}", publication.offset, publication.data);
                if publication.offset == 3 {
                    relay.cut(); // the reader's connection drops; it will reconnect
                    for _ in 0..3 {
                        published += 1;
                        writer.publish("prices", json!({ "tick": published }))?;
                    }
                    println!("published ticks 4 to 6 while the reader was away");
                }
                if publication.offset == 6 {
                    break;
                }
            }
            ChannelEvent::Connection(Event::Disconnected { .. }) => println!("reader disconnected"),
            ChannelEvent::Connection(Event::Reconnecting { delay, .. }) => {
                println!("reconnecting in {delay:?}")
            }
            _ => {}
        }
    }
    reader.close();
    writer.close();
    server.shutdown();
    Ok(())
}

/// Forwards TCP connections to the server; `cut` drops them all.
struct Relay {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let live = Arc::new(Mutex::new(Vec::new()));
        let sockets = live.clone();
        // The relay's threads end with the program, or with their connection.
        thread::spawn(move || -> io::Result<()> {
            for client in listener.incoming() {
                let client = client?;
                let upstream = TcpStream::connect(server)?;
                sockets
                    .lock()
                    .unwrap()
                    .extend([client.try_clone()?, upstream.try_clone()?]);
                let (mut c, mut u) = (client.try_clone()?, upstream.try_clone()?);
                thread::spawn(move || io::copy(&mut c, &mut u));
                thread::spawn(move || io::copy(&mut { upstream }, &mut { client }));
            }
            Ok(())
        });
        Relay { addr, live }
    }

    fn cut(&self) {
        for socket in self.live.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}
