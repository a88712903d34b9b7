//! Standard input for `wshub connect`, read ahead of the sender, and the rule for when
//! waiting to connect has become pointless.
//!
//! The **stdin thread** owns stdin. A line **wakes** it (it blocks in `read`); it hands
//! each line to the sender through a bounded queue of [`READ_AHEAD`] lines, so that the
//! end of a short piped input is seen even while no connection has ever been made. It
//! **ends** at EOF or on a read error, dropping both of its senders: `lines` then ends
//! after the last line, and `ended` disconnects at once, which wakes the main thread. It
//! also ends when the sender has gone. It is never joined: at exit it may still be
//! blocked reading a terminal.

use std::io::{self, BufRead};
use std::thread;

use crossbeam_channel::{Receiver, Sender, bounded};

/// Lines read ahead of the sender. A piped input that fits entirely is known to have
/// ended even before the first connection (see [`Patience`]); a longer one is read as
/// it is sent, so memory stays bounded.
pub const READ_AHEAD: usize = 256;

/// What the stdin thread hands over.
pub struct Input {
    /// The lines, without their line ending, as UTF-8 (invalid bytes become U+FFFD).
    /// Disconnects after the last line.
    pub lines: Receiver<String>,
    /// Never carries anything: it disconnects when stdin has ended.
    pub ended: Receiver<()>,
}

/// Starts the stdin thread.
pub fn spawn() -> io::Result<Input> {
    let (lines_tx, lines) = bounded(READ_AHEAD);
    let (ended_tx, ended) = bounded::<()>(0);
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            read_lines(&lines_tx);
            // `ended` first: whoever sees the lines end can count on stdin having ended.
            drop(ended_tx);
            drop(lines_tx);
        })
        .map(drop)?;
    Ok(Input { lines, ended })
}

/// Reads stdin into `lines` until EOF, a read error, or the sender has gone.
fn read_lines(lines: &Sender<String>) {
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if lines.send(line).is_err() {
                    return; // the sender has gone
                }
            }
        }
    }
}

/// When to stop retrying a connection that was never made (issue #18 item 6): once
/// stdin has ended, a session that has never connected and whose last attempt failed
/// has nothing to wait for, unless the user asked to keep listening (`--listen`).
/// Once a connection has been made, the session keeps reconnecting as usual (a server
/// restart), whatever stdin does.
#[derive(Debug, Default, Clone, Copy)]
pub struct Patience {
    /// `--listen`: keep trying (and listening) after stdin has ended.
    pub listen: bool,
    /// stdin has ended.
    pub stdin_ended: bool,
    /// A connection has been open at least once.
    pub ever_connected: bool,
    /// The last connection attempt failed (and none has succeeded since).
    pub last_attempt_failed: bool,
}

impl Patience {
    /// A connection is open.
    pub fn connected(&mut self) {
        self.ever_connected = true;
        self.last_attempt_failed = false;
    }

    /// An attempt to connect failed.
    pub fn attempt_failed(&mut self) {
        self.last_attempt_failed = true;
    }

    /// True when the session should end now, with exit status 1.
    pub fn exhausted(&self) -> bool {
        !self.listen && self.stdin_ended && !self.ever_connected && self.last_attempt_failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_connected_after_eof() -> Patience {
        let mut p = Patience::default();
        p.attempt_failed();
        p.stdin_ended = true;
        p
    }

    #[test]
    fn a_failed_first_connection_after_eof_is_the_end() {
        assert!(never_connected_after_eof().exhausted());
    }

    #[test]
    fn eof_alone_waits_for_the_attempt_in_progress() {
        let p = Patience {
            stdin_ended: true,
            ..Patience::default()
        };
        assert!(!p.exhausted());
    }

    #[test]
    fn failures_while_stdin_is_open_are_retried() {
        let mut p = Patience::default();
        p.attempt_failed();
        assert!(!p.exhausted());
    }

    #[test]
    fn listen_keeps_trying_after_eof() {
        let mut p = never_connected_after_eof();
        p.listen = true;
        assert!(!p.exhausted());
    }

    #[test]
    fn a_session_that_was_connected_keeps_reconnecting() {
        let mut p = Patience::default();
        p.connected();
        p.stdin_ended = true;
        p.attempt_failed();
        assert!(!p.exhausted());
    }
}
