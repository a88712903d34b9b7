//! Fuzzes what a client may send after the upgrade, through the server's read path:
//! the reader's UTF-8 screening ([`wshub::fuzzing::Screened`]) under tungstenite's
//! server-side `WebSocket`, with the configuration a wshub reader thread uses, reading
//! from an in-memory socket, then [`wshub::fuzzing::close_policy::classify`] on the error that
//! ends it, as the reader thread does.
//!
//! The same bytes also go through tungstenite alone, and the two must agree: the same
//! messages, and the same end, except that the screening may end a connection with 1007
//! where tungstenite alone was still waiting for the rest of the offending frame (the
//! input ran out) or reached the message-size limit first.
//!
//! The first two input bytes steer the harness, the rest is the client's bytes:
//! - byte 0: how many bytes each socket `read` returns (0: as many as asked), since TCP
//!   delivers a stream in arbitrary pieces; bit 7 of byte 1 selects tiny size limits
//!   (64-byte messages, 32-byte frames) so the 1009 paths are reached with short inputs;
//! - byte 1 (low bits): how many of the client's bytes arrived with the request head
//!   (the reader hands those to tungstenite as already read).
//!
//! Checks, besides "no panic": every read either consumes input or ends the loop (no
//! hang), the end maps to a Close code a server may send with a reason that fits a
//! control frame, and the server writes only complete, unmasked control frames.

#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use wshub::fuzzing::close_policy::{self, ReadEnd};
use wshub::fuzzing::Screened;

/// The client's side of the socket, in memory.
struct Pipe<'a> {
    input: &'a [u8],
    chunk: usize,
    written: Vec<u8>,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len()).min(self.chunk);
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The server only ever writes Pong and Close replies here: bounded by the input.
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The configuration `connection::serve` gives tungstenite, from wshub's defaults.
fn server_config(tiny: bool) -> WebSocketConfig {
    let c = wshub::Config::default().limits;
    let (message, frame) = if tiny {
        (64, 32)
    } else {
        (c.max_message_size, c.max_frame_size)
    };
    WebSocketConfig::default()
        .read_buffer_size(c.read_buffer_size)
        .write_buffer_size(0)
        .max_message_size(Some(message))
        .max_frame_size(Some(frame.min(message)))
}

fuzz_target!(|data: &[u8]| {
    let [chunk, split, rest @ ..] = data else {
        return;
    };
    let chunk = if *chunk == 0 {
        usize::MAX
    } else {
        usize::from(*chunk)
    };
    let tiny = split & 0x80 != 0;
    let leftover = usize::from(split & 0x7F).min(rest.len());
    let (head, input) = rest.split_at(leftover);
    let pipe = || Pipe {
        input,
        chunk,
        written: Vec::new(),
    };
    let config = Some(server_config(tiny));

    let (screened, leftover) = Screened::new(pipe(), head.to_vec());
    let mut ws = WebSocket::from_partially_read(screened, leftover, Role::Server, config);
    let (messages, end) = read_all(&mut ws, rest.len());
    check_written(&ws.get_ref().get_ref().written);

    let mut plain = WebSocket::from_partially_read(pipe(), head.to_vec(), Role::Server, config);
    let (plain_messages, plain_end) = read_all(&mut plain, rest.len());
    check_written(&plain.get_ref().written);

    assert_eq!(messages, plain_messages, "the screening changed the messages");
    if end != plain_end {
        assert!(
            matches!(end, ReadEnd::Fail { code: 1007, .. })
                && matches!(plain_end, ReadEnd::Done | ReadEnd::Fail { code: 1009, .. }),
            "screened: {end:?}, tungstenite alone: {plain_end:?}"
        );
    }
});

/// Reads until the read side ends, as `connection::read_loop` does; returns the messages
/// and how it ended.
fn read_all<S: Read + Write>(ws: &mut WebSocket<S>, input_len: usize) -> (Vec<Message>, ReadEnd) {
    // Every successful read consumes at least one frame header (2 bytes), so the loop
    // ends within input_len / 2 + 2 reads; more would be a hang.
    let mut messages = Vec::new();
    let mut reads = 0;
    loop {
        reads += 1;
        assert!(
            reads <= input_len / 2 + 3,
            "read() returned without consuming input"
        );
        match ws.read() {
            Ok(msg) => {
                if let Message::Text(t) = &msg {
                    assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                }
                messages.push(msg);
            }
            Err(e) => {
                let end = close_policy::classify(&e);
                if let ReadEnd::Fail { code, reason } = end {
                    assert!(matches!(code, 1002 | 1007 | 1009), "code {code} for {e}");
                    assert!(reason.len() <= 123, "a Close reason must fit in 125 bytes");
                }
                return (messages, end);
            }
        }
    }
}

/// What tungstenite wrote (through the writer thread, in the server): whole server
/// frames, never masked, only Pong and Close.
fn check_written(mut out: &[u8]) {
    while !out.is_empty() {
        assert!(out.len() >= 2, "truncated frame");
        let (op, masked, len) = (out[0] & 0x0F, out[1] & 0x80 != 0, usize::from(out[1] & 0x7F));
        assert!(
            !masked && len <= 125 && matches!(op, 0x8 | 0xA),
            "frame {:02x?}",
            &out[..2]
        );
        assert!(out.len() >= 2 + len, "truncated frame");
        out = &out[2 + len..];
    }
}
