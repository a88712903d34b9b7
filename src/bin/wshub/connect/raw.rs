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

use crossbeam_channel::{Receiver, Sender, bounded, select};
use wshub::Message;
use wshub::client::{ClientError, Event, ReconnectConfig, ReconnectingClient, WsUrl};

use super::input::Input;
use super::{Args, ConnectionLog, display_message, start_failed};

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
    let mut printer = Printer {
        log: ConnectionLog::new(url, args, input.ended),
        connected: connected_tx,
    };
    let status = printer.run(&session, interrupt);
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

/// The main thread's state: the connection's story, and the doorbell.
struct Printer {
    log: ConnectionLog,
    /// Rung on every `Connected`, for the sender thread.
    connected: Sender<()>,
}

impl Printer {
    fn run(&mut self, session: &ReconnectingClient, interrupt: &Receiver<()>) -> ExitCode {
        let stdout = io::stdout();
        loop {
            select! {
                recv(session.events()) -> event => match event {
                    Ok(Event::Message(msg)) => {
                        if let Some(line) = display_message(&msg) {
                            let mut out = stdout.lock();
                            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                                // stdout is gone (a closed pipe): nobody reads what arrives.
                                return ExitCode::from(1);
                            }
                        }
                    }
                    Ok(event) => {
                        if matches!(event, Event::Connected) {
                            let _ = self.connected.try_send(());
                        }
                        self.log.on_event(event);
                    }
                    Err(_) => break, // the session has ended
                },
                recv(interrupt) -> _ => {
                    self.log.interrupted = true;
                    let _ = session.close(1000, "");
                }
                recv(self.log.stdin()) -> _ => self.log.stdin_ended(),
            }
            if let Some(status) = self.log.exhausted() {
                return status;
            }
        }
        self.log.exit_status()
    }
}
