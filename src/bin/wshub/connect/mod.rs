//! `wshub connect URL`: a WebSocket session from the terminal, built on
//! [`ReconnectingClient`]. Two modes share the flags, stdin handling and exit rules:
//!
//! - **raw** (`raw.rs`): stdin lines out as text messages, received messages to stdout;
//! - **channel** (`--channel NAME`, `channel.rs`): protocol v1 on `/ws` through
//!   [`wshub::client::pubsub`]: stdin lines are published as JSON strings, each
//!   publication's `data` is printed as one line of JSON (`--json`: the whole push).
//!
//! In both, connection events go to stderr; stdin is read by the stdin thread of
//! [`input`]; the **main thread** prints events and never sends, so a large piped input
//! cannot wedge the client against a server that is blocked writing back to it; a
//! **sender thread** sends (or publishes) each line, waiting for a connection when
//! there is none. The ctrlc handler thread rings the interrupt once; on a second signal
//! it exits the process at once with 130.
//!
//! **Exit status.** 0 after the close that the end of stdin or Ctrl-C asked for (and,
//! with `--no-reconnect`, after a server's normal close, 1000); 1 when the session gave
//! up, or when stdin has ended before any connection could be made ([`input::Patience`]:
//! retrying would achieve nothing; `--listen` keeps trying); 2 for a usage error.
//! `--listen` also keeps the session open after stdin has ended, until Ctrl-C.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use crate::args::parse_duration;
use crossbeam_channel::{Receiver, TryRecvError, bounded, never};
use wshub::Message;
use wshub::client::backoff::BackoffConfig;
use wshub::client::{ClientConfig, ClientError, CloseFrame, Event, ReconnectConfig, WsUrl};

use input::Patience;

mod channel;
mod input;
mod raw;

/// Flags of `wshub connect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Server URL: ws://HOST[:PORT][/PATH] (wss:// is not supported).
    #[arg(value_name = "URL")]
    url: String,
    /// Do not reconnect: exit when the connection ends or cannot be made.
    #[arg(long, conflicts_with = "max_retries")]
    no_reconnect: bool,
    /// Give up after N failed reconnection attempts in a row (default: never).
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Speak protocol v1 (the server's /ws): subscribe to this channel, publish each
    /// stdin line to it as a JSON string, print each publication's data as a line of JSON.
    #[arg(long, value_name = "NAME")]
    channel: Option<String>,
    /// With --channel: print each push whole, as the server sent it, instead of its data.
    #[arg(long, requires = "channel")]
    json: bool,
    /// With --channel: how long to wait for a publication's ack before sending it again
    /// (with the same idempotency key, so it is published once).
    #[arg(long, default_value = "10s", value_parser = parse_duration, requires = "channel")]
    publish_timeout: Duration,
    /// With --channel: say hello with this token first on every connection (a server in
    /// token mode needs one; make it with `wshub token`).
    #[arg(long, value_name = "TOKEN", requires = "channel")]
    token: Option<String>,
    /// With --channel: say hello as this user first on every connection (open mode).
    #[arg(long, value_name = "NAME", requires = "channel")]
    user: Option<String>,
    /// With --channel: print who joins and leaves the channel on stderr.
    #[arg(long, requires = "channel")]
    joins: bool,
    /// Keep the session open after stdin ends (until Ctrl-C), and keep trying to connect
    /// even if no connection was ever made.
    #[arg(long)]
    listen: bool,
    /// Origin header to send with the handshake.
    #[arg(long)]
    origin: Option<String>,
    /// Extra handshake header, as 'Name: value' (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Time allowed for the TCP connection to each address (e.g. 500ms, 5s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// First reconnect delay; it doubles after each failed attempt.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    backoff_initial: Duration,
    /// Cap on the reconnect delay (up to half of it again is added as jitter).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    backoff_max: Duration,
}

/// Exit status for a usage error (bad URL, bad header), as clap uses for bad flags.
const USAGE: u8 = 2;

/// Runs the client until stdin ends, Ctrl-C, or the session gives up.
pub fn run(args: Args) -> ExitCode {
    let url: WsUrl = match args.url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let config = match session_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let interrupt = match interrupt() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("error: cannot install the signal handler: {e}");
            return ExitCode::from(1);
        }
    };
    let input = match input::spawn() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: cannot read stdin: {e}");
            return ExitCode::from(1);
        }
    };
    match &args.channel {
        Some(channel) => channel::run(url, config, &args, channel, input, &interrupt),
        None => raw::run(url, config, &args, input, &interrupt),
    }
}

/// The session's configuration from the flags; `Err` for a malformed header.
fn session_config(args: &Args) -> Result<ReconnectConfig, String> {
    let mut headers = Vec::new();
    for h in &args.headers {
        headers.push(parse_header(h)?);
    }
    let mut client = ClientConfig::default();
    client.connect_timeout = args.connect_timeout;
    client.origin = args.origin.clone();
    client.headers = headers;
    let mut backoff = BackoffConfig::default();
    backoff.initial = args.backoff_initial;
    backoff.max = args.backoff_max;
    let mut config = ReconnectConfig::default();
    config.client = client;
    config.backoff = backoff;
    config.max_retries = if args.no_reconnect {
        Some(0)
    } else {
        args.max_retries
    };
    Ok(config)
}

/// SIGINT and SIGTERM ring the returned doorbell (once; a second signal exits).
fn interrupt() -> Result<Receiver<()>, ctrlc::Error> {
    let (interrupt_tx, interrupt) = bounded::<()>(1);
    crate::signals::on_signal(
        move || {
            let _ = interrupt_tx.try_send(());
        },
        "closing",
    )?;
    Ok(interrupt)
}

/// The exit status for a session start that failed: a usage error if it was the
/// configuration's fault.
fn start_failed(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(if e.is_fatal() { USAGE } else { 1 })
}

/// The connection's story on stderr, shared by both modes, with the end of stdin that
/// the main thread waits on, and the exit status they lead to.
struct ConnectionLog {
    url: WsUrl,
    no_reconnect: bool,
    /// Ctrl-C asked for the close.
    interrupted: bool,
    /// The last Disconnected was a clean close with 1000 (for `--no-reconnect`).
    closed_normally: bool,
    /// The last failure, for the giving-up line.
    last_error: Option<String>,
    gave_up: bool,
    patience: Patience,
    /// Disconnects when stdin has ended ([`input::Input::ended`]); `never()` once the
    /// main thread has taken that, so its `select!` wakes for it once.
    stdin: Receiver<()>,
}

impl ConnectionLog {
    fn new(url: WsUrl, args: &Args, stdin_ended: Receiver<()>) -> Self {
        ConnectionLog {
            url,
            no_reconnect: args.no_reconnect,
            interrupted: false,
            closed_normally: false,
            last_error: None,
            gave_up: false,
            patience: Patience {
                listen: args.listen,
                ..Patience::default()
            },
            stdin: stdin_ended,
        }
    }

    /// What the main thread's `select!` waits on for the end of stdin; when it fires,
    /// [`stdin_ended`](Self::stdin_ended).
    fn stdin(&self) -> &Receiver<()> {
        &self.stdin
    }

    /// stdin has ended: the patience rule knows, and [`stdin`](Self::stdin) never wakes
    /// again.
    fn stdin_ended(&mut self) {
        self.patience.stdin_ended = true;
        self.stdin = never();
    }

    /// We asked for the close that may follow (Ctrl-C, or stdin ended without `--listen`).
    fn closing(&self) -> bool {
        self.interrupted || (self.patience.stdin_ended && !self.patience.listen)
    }

    /// Prints a connection event on stderr. (`Event::Message` is the mode's to print.)
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                eprintln!("connected to {}", self.url);
                self.patience.connected();
            }
            Event::Disconnected { close, error } => {
                self.closed_normally =
                    error.is_none() && close.as_ref().is_some_and(|f| u16::from(f.code) == 1000);
                let closing = self.closing();
                let why = describe_disconnect(close.as_ref(), error.as_ref(), closing);
                if !closing {
                    self.last_error = Some(why.clone());
                }
                eprintln!("disconnected: {why}");
            }
            Event::ConnectFailed { error, .. } => {
                eprintln!("connection failed: {error}");
                self.patience.attempt_failed();
                self.last_error = Some(error.to_string());
            }
            Event::Reconnecting { attempt, delay } => {
                eprintln!("reconnecting in {:.1}s (attempt {attempt})", delay.as_secs_f64());
            }
            Event::GaveUp { retries } => {
                self.gave_up = true;
                let why = self.last_error.take().unwrap_or_default();
                if retries > 0 {
                    eprintln!("giving up after {retries} failed attempts to reconnect: {why}");
                } else if !self.no_reconnect {
                    eprintln!("giving up: {why}");
                }
            }
            _ => {}
        }
    }

    /// `Some(1)`, after one clear line, when [`Patience`] says there is nothing left to
    /// wait for.
    fn exhausted(&self) -> Option<ExitCode> {
        if !self.patience.exhausted() {
            return None;
        }
        let why = self
            .last_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        eprintln!(
            "giving up: could not connect to {}{why}, and stdin has ended (--listen keeps trying)",
            self.url
        );
        Some(ExitCode::from(1))
    }

    /// The exit status once the session has ended: success for the close we asked for
    /// (EOF, Ctrl-C) on a session that connected, or, without reconnecting, a server that
    /// ended the session normally (1000). stdin is looked at once more: the session may
    /// have ended (on the close that EOF led to) before the main thread took the end of
    /// stdin.
    fn exit_status(&mut self) -> ExitCode {
        if self.stdin.try_recv() == Err(TryRecvError::Disconnected) {
            self.stdin_ended();
        }
        let asked = self.interrupted || self.patience.stdin_ended;
        let normal_end = self.gave_up && self.no_reconnect && self.closed_normally;
        if (asked && !self.gave_up && self.patience.ever_connected) || normal_end {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// `Name: value` into a pair. The library checks the name and value themselves.
fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("invalid header {text:?}: expected 'Name: value'")),
    }
}

/// One line for a received message: text as is; binary as hex, never raw bytes.
fn display_message(msg: &Message) -> Option<String> {
    match msg {
        Message::Text(text) => Some(text.as_str().to_owned()),
        Message::Binary(bytes) => {
            let mut line = format!("[binary {} bytes]", bytes.len());
            if !bytes.is_empty() {
                line.push(' ');
            }
            for b in bytes.iter() {
                let _ = write!(line, "{b:02x}");
            }
            Some(line)
        }
        _ => None,
    }
}

/// Why a connection ended, in a few words. `by_us`: we sent the first Close, so the
/// server's frame is only its reply.
fn describe_disconnect(close: Option<&CloseFrame>, error: Option<&ClientError>, by_us: bool) -> String {
    if let Some(e) = error {
        return e.to_string();
    }
    match close {
        Some(frame) => {
            let code = u16::from(frame.code);
            let who = if by_us { "closed" } else { "closed by the server" };
            let mut s = format!("{who} with {code}");
            if let Some(name) = close_code_name(code) {
                let _ = write!(s, " ({name})");
            }
            if !frame.reason.is_empty() {
                let _ = write!(s, ": {}", frame.reason.as_str());
            }
            s
        }
        None => "closed".to_owned(),
    }
}

fn close_code_name(code: u16) -> Option<&'static str> {
    Some(match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1007 => "invalid data",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "missing extension",
        1011 => "internal error",
        1012 => "service restart",
        1013 => "try again later",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_shown_as_hex_and_text_as_is() {
        assert_eq!(
            display_message(&Message::binary(vec![0x0a, 0x0b, 0x0c])).as_deref(),
            Some("[binary 3 bytes] 0a0b0c")
        );
        assert_eq!(
            display_message(&Message::binary(Vec::new())).as_deref(),
            Some("[binary 0 bytes]")
        );
        assert_eq!(display_message(&Message::text("héllo")).as_deref(), Some("héllo"));
        assert_eq!(display_message(&Message::Ping(Default::default())), None);
    }

    #[test]
    fn headers_are_name_colon_value() {
        assert_eq!(
            parse_header("X-Token: a:b "),
            Ok(("X-Token".into(), "a:b".into()))
        );
        assert_eq!(parse_header("X-Empty:"), Ok(("X-Empty".into(), String::new())));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
    }

    #[test]
    fn disconnects_are_described() {
        let frame = CloseFrame {
            code: 1001.into(),
            reason: "server shutting down".into(),
        };
        assert_eq!(
            describe_disconnect(Some(&frame), None, false),
            "closed by the server with 1001 (going away): server shutting down"
        );
        assert_eq!(describe_disconnect(None, None, true), "closed");
        let e = ClientError::IdleTimeout(Duration::from_secs(60));
        assert!(describe_disconnect(None, Some(&e), false).contains("60s"));
    }
}
