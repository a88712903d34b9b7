//! A chat client in a plain program: no async runtime, two threads of its own.
//!
//! ```text
//! cargo run -- serve                                   # in one terminal
//! cargo run --example client -- ws://127.0.0.1:8080/chat alice
//! cargo run --example client -- ws://127.0.0.1:8080/chat bob
//! ```
//!
//! The main thread prints what arrives on `/chat` (every message is broadcast to
//! everyone, the sender included) and the connection's ups and downs. A second thread
//! reads stdin and sends each line as `NAME: line`, while the main thread is blocked
//! receiving. Stop the server and start it again: the client reconnects on its own, with
//! exponential backoff and jitter. End stdin (Ctrl-D) to leave cleanly.

use std::io::BufRead;
use std::sync::Arc;
use std::thread;

use wshub::Message;
use wshub::client::{ClientError, Event, ReconnectConfig, ReconnectingClient};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/chat".to_owned());
    let name = args.next().unwrap_or_else(|| "anonymous".to_owned());

    let chat = match ReconnectingClient::start(&url, ReconnectConfig::default()) {
        Ok(chat) => Arc::new(chat),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };

    // The main thread: everything that happens, in order, until the session ends.
    let mut typing = None;
    for event in chat.events() {
        match event {
            Event::Connected => {
                eprintln!("* connected to {url}");
                // Start reading stdin once there is somewhere to send it.
                if typing.is_none() {
                    typing = Some(spawn_typing(chat.clone(), name.clone()));
                }
            }
            Event::Message(Message::Text(text)) => println!("{text}"),
            Event::Message(other) => println!("[{} bytes of binary]", other.len()),
            Event::Disconnected { close, error } => match (close, error) {
                (_, Some(e)) => eprintln!("* disconnected: {e}"),
                (Some(frame), None) => eprintln!("* disconnected: {} {}", frame.code, frame.reason),
                (None, None) => eprintln!("* disconnected"),
            },
            Event::ConnectFailed { error, .. } => eprintln!("* cannot connect: {error}"),
            Event::Reconnecting { attempt, delay } => {
                eprintln!(
                    "* reconnecting in {:.1}s (attempt {attempt})",
                    delay.as_secs_f64()
                )
            }
            Event::GaveUp { .. } => eprintln!("* giving up"),
            _ => {}
        }
    }
    // The typing thread may still be blocked reading stdin; the process can end anyway.
    drop(typing);
}

/// The typing thread: sends each stdin line while the main thread is blocked receiving.
fn spawn_typing(chat: Arc<ReconnectingClient>, name: String) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match chat.send(Message::text(format!("{name}: {line}"))) {
                Ok(()) => {}
                // Nothing is queued while disconnected: say so rather than lose it silently.
                Err(ClientError::NotConnected) => eprintln!("(not connected; \"{line}\" was not sent)"),
                Err(e) => eprintln!("(cannot send: {e})"),
            }
        }
        // Ctrl-D: leave cleanly. The main loop ends when the session does.
        let _ = chat.close(1000, "bye");
    })
}
