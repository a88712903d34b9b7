//! `wshub connect URL`: stdin lines out as text messages, received messages to stdout,
//! connection events to stderr. Built on [`ReconnectingClient`].
//!
//! Threads: the **main thread** prints. It blocks in one `select!` over the session's
//! events and the interrupt; either **wakes** it. It never sends, so it keeps draining
//! events even while a send waits for room: a large piped file cannot wedge the client
//! against a server that is blocked writing back to it. The **stdin thread** reads a line
//! and sends it; while no connection is open it waits for the main thread's "connected"
//! doorbell, so at most one line is read ahead and none is dropped. At EOF it asks the
//! session to close with 1000 and ends. The **ctrlc handler thread** rings the interrupt
//! once; on a second signal it exits the process at once with 130.
//!
//! Main **ends** when the session's event channel disconnects: after the close that EOF
//! or Ctrl-C asked for (exit 0), or after the session gave up (exit 1; with
//! `--no-reconnect`, exit 0 if the server closed normally with 1000).
//!
//! A line already handed to a connection that then dies is lost: delivery is at most
//! once, as for any WebSocket client without acknowledgements.

use std::fmt::Write as _;
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::args::parse_duration;
use crossbeam_channel::{Receiver, Sender, bounded, select};
use wshub::Message;
use wshub::client::backoff::BackoffConfig;
use wshub::client::{
    ClientConfig, ClientError, CloseFrame, Event, ReconnectConfig, ReconnectingClient, WsUrl,
};

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
    let mut headers = Vec::new();
    for h in &args.headers {
        match parse_header(h) {
            Ok(pair) => headers.push(pair),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(USAGE);
            }
        }
    }
    let mut client = ClientConfig::default();
    client.connect_timeout = args.connect_timeout;
    client.origin = args.origin;
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

    let session = match ReconnectingClient::start_url(url.clone(), config) {
        Ok(s) => Arc::new(s),
        Err(e) if e.is_fatal() => {
            eprintln!("error: {e}");
            return ExitCode::from(USAGE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };

    let (interrupt_tx, interrupt) = bounded::<()>(1);
    let installed = crate::signals::on_signal(
        move || {
            let _ = interrupt_tx.try_send(());
        },
        "closing",
    );
    if let Err(e) = installed {
        eprintln!("error: cannot install the signal handler: {e}");
        return ExitCode::from(1);
    }

    // Capacity 1: a doorbell; one pending ring is as good as many.
    let (connected_tx, connected_rx) = bounded::<()>(1);
    let eof = Arc::new(AtomicBool::new(false));
    if let Err(e) = spawn_stdin_sender(session.clone(), connected_rx, eof.clone()) {
        eprintln!("error: cannot read stdin: {e}");
        return ExitCode::from(1);
    }
    let mut printer = Printer::new(url, args.no_reconnect, connected_tx);
    let status = printer.run(&session, &interrupt, &eof);
    session.stop(); // returns at once if the session has ended on its own
    status
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

/// The stdin thread: each line is sent as one text message, waiting for a connection
/// when there is none; at EOF (or a read error) it asks the session to close.
fn spawn_stdin_sender(
    session: Arc<ReconnectingClient>,
    connected: Receiver<()>,
    eof: Arc<AtomicBool>,
) -> io::Result<()> {
    let sender = move || {
        let stdin = io::stdin();
        let mut input = stdin.lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                        if buf.last() == Some(&b'\r') {
                            buf.pop();
                        }
                    }
                    // A text message must be UTF-8: invalid bytes become U+FFFD.
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if !send_when_connected(&session, Message::text(line), &connected) {
                        return; // the session has ended
                    }
                }
            }
        }
        eof.store(true, Ordering::SeqCst);
        // 1000 is always a valid code; this cannot fail.
        let _ = session.close(1000, "");
    };
    // Not joined: at exit it may still be blocked reading a terminal.
    thread::Builder::new()
        .name("stdin".into())
        .spawn(sender)
        .map(drop)
}

/// Sends `msg`, waiting for the next connection while there is none. `false` once the
/// session has ended (the doorbell's sender, held by the main thread, is gone).
fn send_when_connected(session: &ReconnectingClient, msg: Message, connected: &Receiver<()>) -> bool {
    loop {
        match session.send(msg.clone()) {
            Ok(()) => return true,
            Err(ClientError::NotConnected) => {
                if connected.recv().is_err() {
                    return false;
                }
            }
            Err(e) => {
                eprintln!("cannot send: {e}");
                return true;
            }
        }
    }
}

/// The main thread's state: what to print, and how the session ended.
struct Printer {
    url: WsUrl,
    no_reconnect: bool,
    /// Rung on every `Connected`, for the stdin thread.
    connected: Sender<()>,
    /// Ctrl-C asked for the close.
    interrupted: bool,
    /// The last Disconnected was a clean close with 1000 (for `--no-reconnect`).
    closed_normally: bool,
    /// The last failure, for the giving-up line.
    last_error: Option<String>,
    gave_up: bool,
}

impl Printer {
    fn new(url: WsUrl, no_reconnect: bool, connected: Sender<()>) -> Self {
        Printer {
            url,
            no_reconnect,
            connected,
            interrupted: false,
            closed_normally: false,
            last_error: None,
            gave_up: false,
        }
    }

    fn run(&mut self, session: &ReconnectingClient, interrupt: &Receiver<()>, eof: &AtomicBool) -> ExitCode {
        let stdout = io::stdout();
        loop {
            select! {
                recv(session.events()) -> event => match event {
                    Ok(event) => {
                        let closing = self.interrupted || eof.load(Ordering::SeqCst);
                        if self.on_event(event, closing, &mut stdout.lock()).is_err() {
                            // stdout is gone (a closed pipe): nobody reads what arrives.
                            return ExitCode::from(1);
                        }
                    }
                    Err(_) => break, // the session has ended
                },
                recv(interrupt) -> _ => {
                    self.interrupted = true;
                    let _ = session.close(1000, "");
                }
            }
        }
        // Success: the close we asked for (EOF, Ctrl-C), or, without reconnecting, a
        // server that ended the session normally (1000).
        let asked = self.interrupted || eof.load(Ordering::SeqCst);
        let normal_end = self.gave_up && self.no_reconnect && self.closed_normally;
        if (asked && !self.gave_up) || normal_end {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }

    /// Prints one event; `closing`: we asked for the close that may follow.
    fn on_event(&mut self, event: Event, closing: bool, out: &mut impl Write) -> io::Result<()> {
        match event {
            Event::Connected => {
                eprintln!("connected to {}", self.url);
                let _ = self.connected.try_send(());
            }
            Event::Message(msg) => {
                if let Some(line) = display_message(&msg) {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
            }
            Event::Disconnected { close, error } => {
                self.closed_normally =
                    error.is_none() && close.as_ref().is_some_and(|f| u16::from(f.code) == 1000);
                let why = describe_disconnect(close.as_ref(), error.as_ref(), closing);
                if !closing {
                    self.last_error = Some(why.clone());
                }
                eprintln!("disconnected: {why}");
            }
            Event::ConnectFailed { error, .. } => {
                eprintln!("connection failed: {error}");
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
        Ok(())
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
