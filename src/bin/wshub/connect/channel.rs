//! Channel mode (`--channel NAME`): protocol v1 through [`ChannelClient`]. Each stdin
//! line is published to the channel as a JSON string; each publication on the channel
//! is printed as its `data`, one line of JSON (`--json`: the whole push, as on the
//! wire); subscriptions, recoveries and connection events go to stderr.
//!
//! The **sender thread** owns the line queue's receiving end: it publishes each line
//! and waits for its ack, retrying with the same idempotency key after a timeout, so a
//! line is published once even across a server restart. When the lines end it tells
//! the main thread the position of its last ack and **ends**; it also ends when the
//! client is closed.
//!
//! The **main thread** prints. It blocks in one `select!` over the client's events, the
//! interrupt, the end of stdin, the sender's "done" and a grace timer; any of them
//! **wakes** it. Once the sender is done (and not `--listen`), it waits until its own
//! last publication has come back to it (at most the publish timeout), so what was
//! piped in is also printed, then closes. It **ends** when the client's events end, or
//! when [`Patience`](super::input::Patience) says that nothing is left to wait for.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, bounded, never, select};
use serde_json::Value;
use wshub::client::Event;
use wshub::client::pubsub::{
    ChannelClient, ChannelConfig, ChannelError, ChannelEvent, Member, StreamPosition, random_key,
};
use wshub::client::{ReconnectConfig, WsUrl};
use wshub::pubsub::protocol::Push;

use super::input::Input;
use super::{Args, ConnectionLog, start_failed};

/// Runs channel mode until stdin ends, Ctrl-C, or the session gives up.
pub fn run(
    url: WsUrl,
    reconnect: ReconnectConfig,
    args: &Args,
    channel: &str,
    input: Input,
    interrupt: &Receiver<()>,
) -> ExitCode {
    let mut config = ChannelConfig::default();
    config.reconnect = reconnect;
    config.publish_timeout = args.publish_timeout;
    config.hello.token = args.token.clone();
    config.hello.user = args.user.clone();
    config.joins = args.joins;
    let client = match ChannelClient::start(&url.to_string(), config) {
        Ok(c) => Arc::new(c),
        Err(ChannelError::Client(e)) => return start_failed(&e),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = client.subscribe(channel) {
        eprintln!("error: {e}");
        return ExitCode::from(if e.is_fatal() { super::USAGE } else { 1 });
    }
    let (done_tx, done_rx) = bounded(1);
    if let Err(e) = spawn_sender(client.clone(), channel.to_owned(), input.lines, done_tx) {
        eprintln!("error: cannot start the sender thread: {e}");
        return ExitCode::from(1);
    }
    let mut printer = Printer {
        log: ConnectionLog::new(url, args, input.ended),
        channel: channel.to_owned(),
        json: args.json,
        listen: args.listen,
        grace: args.publish_timeout,
        awaiting: None,
        printed: None,
        subscribed: false,
    };
    let status = printer.run(&client, interrupt, &done_rx);
    client.close();
    status
}

/// What the sender reports when the lines have ended: the position of its last ack.
type Done = Option<StreamPosition>;

/// The sender thread (see the module docs).
fn spawn_sender(
    client: Arc<ChannelClient>,
    channel: String,
    lines: Receiver<String>,
    done: Sender<Done>,
) -> io::Result<()> {
    let sender = move || {
        let mut last = None;
        for line in lines.iter() {
            match publish_once(&client, &channel, Value::String(line)) {
                Ok(position) => last = Some(position),
                Err(ChannelError::Closed) => return,
                Err(e) => eprintln!("cannot publish a line: {e}"),
            }
        }
        let _ = done.send(last);
    };
    // Not joined: it ends with the client.
    thread::Builder::new()
        .name("sender".into())
        .spawn(sender)
        .map(drop)
}

/// Publishes `data`, retrying after a timeout with the same key (the server applies it
/// once), until it is acked or fails for good.
fn publish_once(client: &ChannelClient, channel: &str, data: Value) -> Result<StreamPosition, ChannelError> {
    let key = random_key();
    loop {
        match client.publish_with_key(channel, data.clone(), &key) {
            Err(ChannelError::Timeout) => {}
            Err(e) if !e.is_fatal() => thread::sleep(Duration::from_millis(200)), // unavailable
            other => return other,
        }
    }
}

/// One join or leave, on stderr: `ann joined room (client 7) {"name":"Ann"}`.
fn print_member(what: &str, m: &Member) {
    let user = if m.user.is_empty() { "(anonymous)" } else { &m.user };
    let info = m.info.as_ref().map(|i| format!(" {i}")).unwrap_or_default();
    let ch = m.ch.as_deref().unwrap_or_default();
    eprintln!("{user} {what} {ch} (client {}){info}", m.client);
}

/// The main thread's state.
struct Printer {
    log: ConnectionLog,
    channel: String,
    json: bool,
    listen: bool,
    /// How long to wait for our own last publication to come back before closing.
    grace: Duration,
    /// The sender is done: close once this position has been printed (or at the
    /// deadline).
    awaiting: Option<(Done, Instant)>,
    /// The last publication printed.
    printed: Option<StreamPosition>,
    /// The subscription is confirmed (our own publications will come back).
    subscribed: bool,
}

impl Printer {
    fn run(&mut self, client: &ChannelClient, interrupt: &Receiver<()>, done: &Receiver<Done>) -> ExitCode {
        let stdout = io::stdout();
        let mut done = done.clone();
        loop {
            let grace = match &self.awaiting {
                Some((_, deadline)) => at(*deadline),
                None => never(),
            };
            select! {
                recv(client.events()) -> event => match event {
                    Ok(event) => {
                        if let Err(status) = self.on_event(event, &mut stdout.lock()) {
                            return status;
                        }
                    }
                    Err(_) => break, // the client has ended
                },
                recv(interrupt) -> _ => {
                    self.log.interrupted = true;
                    break;
                }
                recv(self.log.stdin()) -> _ => self.log.stdin_ended(),
                recv(done) -> last => {
                    done = never();
                    if !self.listen {
                        self.awaiting = Some((last.unwrap_or(None), Instant::now() + self.grace));
                    }
                }
                recv(grace) -> _ => break,
            }
            if let Some(status) = self.log.exhausted() {
                return status;
            }
            if self.caught_up() {
                break;
            }
        }
        self.log.exit_status()
    }

    /// The sender is done and what it published last has been printed (or it published
    /// nothing, and the subscription is confirmed).
    fn caught_up(&self) -> bool {
        match &self.awaiting {
            Some((None, _)) => self.subscribed,
            Some((Some(last), _)) => self
                .printed
                .as_ref()
                .is_some_and(|p| p.epoch != last.epoch || p.offset >= last.offset),
            None => false,
        }
    }

    /// Prints one event; `Err` with the exit status when the session must end.
    fn on_event(&mut self, event: ChannelEvent, out: &mut impl Write) -> Result<(), ExitCode> {
        match event {
            ChannelEvent::Connection(event) => {
                if matches!(event, Event::Disconnected { .. }) {
                    self.subscribed = false;
                }
                self.log.on_event(event);
            }
            ChannelEvent::Subscribed {
                ch,
                position,
                recovered,
            } => {
                self.subscribed = true;
                match recovered {
                    None => eprintln!(
                        "subscribed to {ch} (epoch {}, offset {})",
                        position.epoch, position.offset
                    ),
                    Some(true) => eprintln!("resubscribed to {ch}: recovered every missed publication"),
                    Some(false) => eprintln!(
                        "resubscribed to {ch}: missed publications could not be recovered \
                         (epoch {}, offset {}); continuing with new ones",
                        position.epoch, position.offset
                    ),
                }
            }
            ChannelEvent::Welcome { client, user } => {
                eprintln!("hello: user {user:?} (client {client})");
            }
            ChannelEvent::HelloRefused(error) => {
                eprintln!("error: the server refused hello: {error}");
                return Err(ExitCode::from(1));
            }
            ChannelEvent::Join(m) => print_member("joined", &m),
            ChannelEvent::Leave(m) => print_member("left", &m),
            ChannelEvent::SubscribeRetrying { ch, error, retry_in } => {
                eprintln!(
                    "cannot subscribe to {ch} yet: {error}; retrying in {:.1}s",
                    retry_in.as_secs_f64()
                );
            }
            ChannelEvent::SubscribeFailed { ch, error } => {
                eprintln!("error: cannot subscribe to {ch}: {error}");
                return Err(ExitCode::from(1));
            }
            ChannelEvent::Unsubscribed { ch, code, reason } => {
                eprintln!(
                    "unsubscribed from {ch} by the server: {reason} (error {})",
                    u16::from(code)
                );
                if self.json {
                    let push = Push::Unsub { ch, code, reason };
                    print_line(out, &push).map_err(|_| ExitCode::from(1))?;
                }
                return Err(ExitCode::from(1));
            }
            ChannelEvent::Publication { epoch, publication } => {
                debug_assert_eq!(publication.ch, self.channel);
                self.printed = Some(StreamPosition {
                    epoch,
                    offset: publication.offset,
                });
                let printed = if self.json {
                    print_line(out, &Push::Pub(publication))
                } else {
                    print_line(out, &publication.data)
                };
                // stdout is gone (a closed pipe): nobody reads what arrives.
                printed.map_err(|_| ExitCode::from(1))?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// One value as one line of JSON (serde_json escapes newlines inside strings).
fn print_line(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    let line = serde_json::to_string(value).map_err(io::Error::other)?;
    writeln!(out, "{line}")?;
    out.flush()
}
