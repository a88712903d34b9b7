//! Raw mode: stdin lines out as text messages, received messages to stdout.
//!
//! The **sender thread** owns the line queue's receiving end: it takes each line and
//! sends it as one text message; while no connection is open it waits for the main
//! thread's "connected" doorbell, so no line is dropped. When the lines end (stdin has
//! ended and all were handed to a connection) it waits until a connection has been open
//! at least once, then asks the session to close with 1000, unless `--listen`; it
//! **ends** then, or when the session has ended (the doorbell's sender, owned by the
//! main thread, is gone).
//!
//! The **main thread** prints. It blocks in one `select!` over the session's events,
//! the interrupt and the end of stdin; any of them **wakes** it. It **ends** when the
//! session's event channel disconnects, or when [`Patience`] says that nothing is left
//! to wait for (it then stops the session).
//!
//! A line already handed to a connection that then dies is lost: delivery is at most
//! once, as for any WebSocket client without acknowledgements (`--channel` has them).

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded, never, select};
use wshub::Message;
use wshub::client::{ClientError, Event, ReconnectConfig, ReconnectingClient, WsUrl};

use super::input::{Input, Patience};
use super::{Args, describe_disconnect, display_message, never_connected, start_failed};

/// Runs raw mode until stdin ends, Ctrl-C, or the session gives up.
pub fn run(
    url: WsUrl,
    config: ReconnectConfig,
    args: &Args,
    input: Input,
    interrupt: &Receiver<()>,
) -> ExitCode {
    let session = match ReconnectingClient::start_url(url.clone(), config) {
        Ok(s) => Arc::new(s),
        Err(e) => return start_failed(&e),
    };
    // Capacity 1: a doorbell; one pending ring is as good as many.
    let (connected_tx, connected_rx) = bounded::<()>(1);
    if let Err(e) = spawn_sender(session.clone(), input.lines, connected_rx, args.listen) {
        eprintln!("error: cannot start the sender thread: {e}");
        return ExitCode::from(1);
    }
    let mut printer = Printer::new(url, args.no_reconnect, args.listen, connected_tx);
    let status = printer.run(&session, interrupt, &input.ended);
    session.stop(); // returns at once if the session has ended on its own
    status
}

/// The sender thread (see the module docs).
fn spawn_sender(
    session: Arc<ReconnectingClient>,
    lines: Receiver<String>,
    connected: Receiver<()>,
    listen: bool,
) -> io::Result<()> {
    let sender = move || {
        for line in lines.iter() {
            if !send_when_connected(&session, Message::text(line), &connected) {
                return; // the session has ended
            }
        }
        if listen {
            return;
        }
        // Close only a session that has connected: one that never did is the main
        // thread's to end (with status 1), or to keep trying with --listen.
        if session.is_connected() || connected.recv().is_ok() {
            // 1000 is always a valid code; this cannot fail.
            let _ = session.close(1000, "");
        }
    };
    // Not joined: it ends with the session.
    thread::Builder::new()
        .name("sender".into())
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
    /// Rung on every `Connected`, for the sender thread.
    connected: Sender<()>,
    /// Ctrl-C asked for the close.
    interrupted: bool,
    /// The last Disconnected was a clean close with 1000 (for `--no-reconnect`).
    closed_normally: bool,
    /// The last failure, for the giving-up line.
    last_error: Option<String>,
    gave_up: bool,
    patience: Patience,
}

impl Printer {
    fn new(url: WsUrl, no_reconnect: bool, listen: bool, connected: Sender<()>) -> Self {
        Printer {
            url,
            no_reconnect,
            connected,
            interrupted: false,
            closed_normally: false,
            last_error: None,
            gave_up: false,
            patience: Patience {
                listen,
                ..Patience::default()
            },
        }
    }

    fn run(
        &mut self,
        session: &ReconnectingClient,
        interrupt: &Receiver<()>,
        stdin_ended: &Receiver<()>,
    ) -> ExitCode {
        let stdout = io::stdout();
        let mut ended = stdin_ended.clone();
        loop {
            select! {
                recv(session.events()) -> event => match event {
                    Ok(event) => {
                        let closing = self.interrupted || (self.patience.stdin_ended && !self.patience.listen);
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
                recv(ended) -> _ => {
                    self.patience.stdin_ended = true;
                    ended = never();
                }
            }
            if self.patience.exhausted() {
                eprintln!("{}", never_connected(&self.url, self.last_error.as_deref()));
                return ExitCode::from(1);
            }
        }
        // Success: the close we asked for (EOF, Ctrl-C) on a session that connected, or,
        // without reconnecting, a server that ended the session normally (1000).
        let asked = self.interrupted || self.patience.stdin_ended;
        let normal_end = self.gave_up && self.no_reconnect && self.closed_normally;
        if (asked && !self.gave_up && self.patience.ever_connected) || normal_end {
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
                self.patience.connected();
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
        Ok(())
    }
}
