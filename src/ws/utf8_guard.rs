//! Fails a text message on its first invalid UTF-8 byte, as the bytes arrive. I/O-free.
//!
//! RFC 6455 §8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that
//! the byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the
//! WebSocket Connection_." tungstenite checks a fragmented message frame by frame, but
//! a single frame only once all of it has arrived: a client could send a 16 MiB text
//! frame whose first bytes are already invalid, and we would wait for (and buffer) the
//! rest. [`Utf8Guard`] sees the client's bytes first, as the reader thread reads them
//! from the socket (`ReaderStream::read` in [`crate::server::connection`]): it follows the
//! client's frame headers, unmasks the payload of text frames and of their
//! continuations, and validates it incrementally, carrying an incomplete code point over
//! to the next read or the next frame.
//!
//! **Owns** nothing but a few dozen bytes of state per connection, kept by the reader
//! thread. It only ever withholds bytes: when a read's bytes turn out invalid, it passes
//! on those before the offending byte (so tungstenite still reports any earlier protocol
//! violation, and handles earlier complete messages, in stream order) and turns the next
//! read into an [`io::Error`] that [`crate::ws::close_policy::classify`] answers with Close
//! 1007. Everything else (reserved bits, unmasked frames, bad opcodes, sizes, the
//! reason of a Close) stays tungstenite's to check: on a frame header that breaks the
//! protocol, or on a Close frame (once it has read its code), the guard stops checking
//! for good, since tungstenite fails or closes the connection at that frame.
//!
//! The one write [`Screened`] touches: tungstenite refuses Close code 1014 (registered,
//! "bad gateway") as if it were reserved and answers 1002; the client's code, read here,
//! lets `Screened` replace that answer with the echo of 1014.
//!
//! Cost: header bytes (2 to 14 per frame) are copied into a small array; other frames'
//! payloads are skipped whole; text payload is unmasked into a stack buffer a few hundred
//! bytes at a time and checked with `std::str::from_utf8`.

use std::io::{Read, Write};

use std::{error, fmt, io};
use tungstenite::protocol::frame::coding::{Control, OpCode};

/// Text payload bytes unmasked and checked per `from_utf8` call. A stack buffer on the
/// deepest path a reader thread takes, so kept small: every reader's stack must fit in
/// two pages (see `connection::open_websocket`), and 128 bytes per call costs a long
/// message one extra loop turn per 128 bytes, nothing next to the `read` that brought it.
const SCRATCH: usize = 128;

/// The error [`Utf8Guard`] makes a read return; see [`is_invalid_utf8`].
#[derive(Debug)]
pub(crate) struct InvalidUtf8;

impl fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8 in a text message")
    }
}

impl error::Error for InvalidUtf8 {}

/// The `io::Error` for invalid UTF-8 in a text message.
pub(crate) fn invalid_utf8() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, InvalidUtf8)
}

/// True for the error made by [`invalid_utf8`].
pub(crate) fn is_invalid_utf8(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData && e.get_ref().is_some_and(|inner| inner.is::<InvalidUtf8>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a frame header into `head`.
    Head,
    /// `remaining` payload bytes of the current frame to go.
    Payload,
    /// Not checking any more: the client sent a Close, broke the protocol, or sent
    /// invalid UTF-8.
    Off,
}

/// Follows a client's frames and checks the UTF-8 of its text messages. See the module
/// docs.
#[derive(Debug)]
pub(crate) struct Utf8Guard {
    phase: Phase,
    /// The current frame's header so far (2 to 14 bytes).
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes left in the current frame.
    remaining: u64,
    /// The mask key, rotated so that `mask[0]` applies to the next payload byte.
    mask: [u8; 4],
    /// The current frame's payload is text.
    text: bool,
    /// The current frame is the last of a text message.
    ends_text: bool,
    /// A fragmented message is in progress; `Some(true)` for text.
    fragmented: Option<bool>,
    /// The start of a code point whose other bytes have not arrived yet.
    tail: [u8; 3],
    tail_len: u8,
    /// Invalid UTF-8 was found: every later read fails.
    failed: bool,
    /// The current frame is the client's Close: its code is being read.
    closing: bool,
    /// The client's Close code, once its two bytes have arrived (see [`Screened`]'s
    /// `Write`).
    close_code: [u8; 2],
    close_code_len: u8,
}

impl Default for Utf8Guard {
    fn default() -> Self {
        Utf8Guard {
            phase: Phase::Head,
            head: [0; 14],
            head_len: 0,
            remaining: 0,
            mask: [0; 4],
            text: false,
            ends_text: false,
            fragmented: None,
            tail: [0; 3],
            tail_len: 0,
            failed: false,
            closing: false,
            close_code: [0; 2],
            close_code_len: 0,
        }
    }
}

impl Utf8Guard {
    /// The code of the client's Close frame, once it has arrived.
    pub(crate) fn peer_close_code(&self) -> Option<u16> {
        (self.close_code_len == 2).then(|| u16::from_be_bytes(self.close_code))
    }

    /// The error to return instead of reading, once invalid UTF-8 has been found.
    pub(crate) fn check(&self) -> io::Result<()> {
        if self.failed { Err(invalid_utf8()) } else { Ok(()) }
    }

    /// Screens `bytes`, just read from the client: returns how many of them to pass on,
    /// all of them unless they make a text message invalid. Then it is the bytes before
    /// the offending one, and every later [`Self::check`] fails; if there are none, the
    /// error itself. Empty `bytes` (end of stream) pass as `Ok(0)`.
    pub(crate) fn screen(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.check()?;
        match self.feed(bytes) {
            Ok(()) => Ok(bytes.len()),
            Err(0) => Err(invalid_utf8()),
            Err(cut) => Ok(cut),
        }
    }

    /// [`Self::screen`] for bytes already read (those after the request head): keeps
    /// the ones to pass on; an error shows at the next [`Self::check`].
    pub(crate) fn screen_vec(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        let keep = self.screen(&bytes).unwrap_or(0);
        bytes.truncate(keep);
        bytes
    }

    /// Follows `bytes`; on invalid UTF-8, fails and returns the offset of the byte that
    /// must not reach tungstenite (one inside the offending frame, so that tungstenite
    /// cannot complete that frame with the bytes before it).
    fn feed(&mut self, bytes: &[u8]) -> Result<(), usize> {
        let mut at = 0;
        while at < bytes.len() {
            match self.phase {
                Phase::Off => return Ok(()),
                Phase::Head => {
                    let have = self.head_len as usize;
                    let want = if have < 2 { 2 } else { header_len(self.head[1]) };
                    let take = (want - have).min(bytes.len() - at);
                    self.head[have..have + take].copy_from_slice(&bytes[at..at + take]);
                    self.head_len += take as u8;
                    at += take;
                    if have + take < want {
                        return Ok(());
                    }
                    if want == 2 {
                        self.first_two_bytes();
                    } else {
                        self.start_payload();
                        if self.remaining == 0 {
                            // The header's last byte completes an empty frame.
                            self.end_frame().map_err(|()| self.fail(at - 1))?;
                        }
                    }
                }
                Phase::Payload if self.closing => {
                    // The Close code's two bytes, unmasked; then nothing more to check.
                    while self.close_code_len < 2 && at < bytes.len() {
                        let i = self.close_code_len as usize;
                        self.close_code[i] = bytes[at] ^ self.mask[i];
                        self.close_code_len += 1;
                        at += 1;
                    }
                    if self.close_code_len == 2 {
                        self.phase = Phase::Off;
                    }
                }
                Phase::Payload => {
                    let take = self.remaining.min((bytes.len() - at) as u64) as usize;
                    if self.text {
                        self.check_text(&bytes[at..at + take])
                            .map_err(|off| self.fail(at + off))?;
                    }
                    self.remaining -= take as u64;
                    at += take;
                    if self.remaining == 0 {
                        // The frame's last byte completes it.
                        self.end_frame().map_err(|()| self.fail(at - 1))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, cut: usize) -> usize {
        self.failed = true;
        self.phase = Phase::Off;
        cut
    }

    /// Decides from FIN, RSV, the opcode and the mask bit what the frame is to us.
    fn first_two_bytes(&mut self) {
        let [b0, b1] = [self.head[0], self.head[1]];
        let fin = b0 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
            // Reserved bits (no extension is ever negotiated) or an unmasked frame.
            self.phase = Phase::Off;
            return;
        }
        self.ends_text = false;
        match (b0 & 0x0F, self.fragmented) {
            (0x0, Some(text)) => {
                self.text = text;
                if fin {
                    self.fragmented = None;
                    self.ends_text = text;
                }
            }
            (op @ (0x1 | 0x2), None) => {
                self.text = op == 0x1;
                self.tail_len = 0;
                if fin {
                    self.ends_text = self.text;
                } else {
                    self.fragmented = Some(self.text);
                }
            }
            (0x9 | 0xA, _) if fin && len7 <= 125 => self.text = false,
            // A Close with a code: read the code, then stop (nothing after it is a
            // message of ours to check).
            (0x8, _) if fin && (2..=125).contains(&len7) => {
                self.text = false;
                self.closing = true;
            }
            // Close without a code (nothing after it is a message of ours to check), or a frame
            // tungstenite rejects: a continuation with nothing to continue, a new
            // message inside a fragmented one, a reserved opcode, a fragmented or
            // oversized control frame.
            _ => self.phase = Phase::Off,
        }
    }

    /// The header is complete: take the payload length and the mask key.
    fn start_payload(&mut self) {
        let h = &self.head;
        let (len, key_at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")), 10),
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 {
            // RFC 6455 §5.2: "the most significant bit MUST be 0". tungstenite's size
            // limit ends the connection here.
            self.phase = Phase::Off;
            return;
        }
        self.mask.copy_from_slice(&h[key_at..key_at + 4]);
        self.remaining = len;
        self.phase = Phase::Payload;
    }

    /// The frame is over; `Err` when it ends a text message in the middle of a code
    /// point.
    fn end_frame(&mut self) -> Result<(), ()> {
        self.phase = Phase::Head;
        self.head_len = 0;
        if self.ends_text && self.tail_len != 0 {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Unmasks and checks a piece of text payload; `Err(offset)` gives the offset in
    /// `masked` where the invalid sequence starts (0 if it started in an earlier piece).
    /// Kept out of line: only text payload touches its stack buffer.
    #[inline(never)]
    fn check_text(&mut self, masked: &[u8]) -> Result<(), usize> {
        let mut scratch = [0u8; SCRATCH];
        let mut done = 0;
        while done < masked.len() {
            let carried = self.tail_len as usize;
            scratch[..carried].copy_from_slice(&self.tail[..carried]);
            let take = (SCRATCH - carried).min(masked.len() - done);
            unmask(
                &mut scratch[carried..carried + take],
                &masked[done..done + take],
                self.mask,
            );
            // `[u8; 4]::rotate_left` would do, but it runs a general slice rotation with a
            // stack buffer, deeper than this whole read path (see `connection::open_websocket`
            // on why reader stack depth matters); as one big-endian word it is one instruction.
            self.mask = u32::from_be_bytes(self.mask)
                .rotate_left(8 * (take % 4) as u32)
                .to_be_bytes();
            let piece = &scratch[..carried + take];
            self.tail_len = 0;
            if let Err(e) = std::str::from_utf8(piece) {
                let valid = e.valid_up_to();
                if e.error_len().is_some() {
                    return Err(done + valid.saturating_sub(carried));
                }
                // A code point cut short by the end of the piece: at most 3 bytes.
                let rest = &piece[valid..];
                self.tail[..rest.len()].copy_from_slice(rest);
                self.tail_len = rest.len() as u8;
            }
            done += take;
        }
        Ok(())
    }
}

/// A client frame header's length, from its second byte (mask bit assumed set).
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + 4
}

/// `dst = src XOR mask`, with `mask[0]` for `src[0]`. Four bytes at a time.
fn unmask(dst: &mut [u8], src: &[u8], mask: [u8; 4]) {
    let mut d = dst.chunks_exact_mut(4);
    let mut s = src.chunks_exact(4);
    for (d4, s4) in (&mut d).zip(&mut s) {
        for ((d1, s1), m) in d4.iter_mut().zip(s4).zip(mask) {
            *d1 = s1 ^ m;
        }
    }
    for (i, (d1, s1)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *d1 = s1 ^ mask[i];
    }
}

/// A client byte stream screened before tungstenite reads it: invalid UTF-8 in a text
/// message ends the stream with the error `close_policy::classify` answers with 1007.
/// Writes pass through, but for the answer to a Close 1014 (see the module docs). Every
/// reader thread reads its socket through one; the fuzz targets use it too.
pub struct Screened<S> {
    inner: S,
    guard: Utf8Guard,
}

impl<S> Screened<S> {
    /// Wraps `inner`, whose bytes follow `leftover` (those read with the request
    /// head); returns the wrapper and what of `leftover` to hand tungstenite.
    pub fn new(inner: S, leftover: Vec<u8>) -> (Screened<S>, Vec<u8>) {
        let mut guard = Utf8Guard::default();
        let leftover = guard.screen_vec(leftover);
        (Screened { inner, guard }, leftover)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Read> Read for Screened<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.guard.check()?;
        let n = self.inner.read(buf)?;
        self.guard.screen(&buf[..n])
    }
}

/// tungstenite's answer to a client's Close whose code it does not know:
/// Close 1002 "Protocol violation", unmasked.
const TUNGSTENITE_REFUSED_CLOSE: &[u8] = b"\x88\x14\x03\xeaProtocol violation";

/// Close 1014 (bad gateway): registered with IANA and sendable, but unknown to
/// tungstenite, which refuses it as if it were reserved.
const BAD_GATEWAY: u16 = 1014;

impl<S: Write> Write for Screened<S> {
    /// Passes tungstenite's writes through, but one: when the client's Close carried
    /// 1014, tungstenite answers with 1002 as for a reserved code, and the answer is
    /// replaced by the echo of 1014 that RFC 6455 §5.5.1 expects.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.guard.peer_close_code() == Some(BAD_GATEWAY) && buf.starts_with(TUNGSTENITE_REFUSED_CLOSE) {
            let mut echo = Vec::new();
            let payload = crate::ws::wire::close_payload(BAD_GATEWAY, "");
            crate::ws::wire::encode_frame(&mut echo, OpCode::Control(Control::Close), None, &payload);
            echo.extend_from_slice(&buf[TUNGSTENITE_REFUSED_CLOSE.len()..]);
            self.inner.write_all(&echo)?;
            return Ok(buf.len());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame: first byte (FIN, RSV, opcode), payload; `wide` forces the
    /// 64-bit length form.
    fn frame_with(first: u8, payload: &[u8], wide: bool) -> Vec<u8> {
        let header = tungstenite::protocol::frame::FrameHeader {
            is_final: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            rsv2: first & 0x20 != 0,
            rsv3: first & 0x10 != 0,
            opcode: OpCode::from(first & 0x0F),
            mask: Some(MASK),
        };
        let mut out = Vec::new();
        crate::ws::wire::encode_with_header(&mut out, &header, payload);
        if wide {
            // The same frame with its length in the 64-bit form: legal, if not minimal.
            let masked = out.split_off(out.len() - payload.len());
            out = vec![first, 0x80 | 127];
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            out.extend_from_slice(&MASK);
            out.extend(masked);
        }
        out
    }

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        frame_with(first, payload, false)
    }

    /// Frames one after another: the stream, and where each frame starts in it.
    fn frames(parts: &[(u8, &[u8])]) -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let mut starts = Vec::new();
        for &(first, payload) in parts {
            starts.push(stream.len());
            stream.extend(frame(first, payload));
        }
        (stream, starts)
    }

    const TEXT: u8 = 0x81;
    const TEXT_START: u8 = 0x01;
    const BINARY: u8 = 0x82;
    const BINARY_START: u8 = 0x02;
    const CONT: u8 = 0x00;
    const CONT_END: u8 = 0x80;
    const PING: u8 = 0x89;
    const PONG: u8 = 0x8A;
    const CLOSE: u8 = 0x88;

    /// What feeding a stream in given pieces did.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// Every byte passed on.
        Passed,
        /// Failed: bytes passed on in all, and the index of the piece that failed.
        Failed { passed: usize, piece: usize },
    }

    fn run(pieces: &[&[u8]]) -> Outcome {
        let mut g = Utf8Guard::default();
        let mut passed = 0;
        for (i, p) in pieces.iter().enumerate() {
            match g.screen(p) {
                Ok(n) if n == p.len() => passed += n,
                Ok(n) => {
                    assert!(n < p.len());
                    assert!(g.check().is_err(), "a short pass must leave the error pending");
                    return Outcome::Failed {
                        passed: passed + n,
                        piece: i,
                    };
                }
                Err(e) => {
                    assert!(is_invalid_utf8(&e));
                    return Outcome::Failed { passed, piece: i };
                }
            }
        }
        assert!(g.check().is_ok());
        Outcome::Passed
    }

    fn whole(stream: &[u8]) -> Outcome {
        run(&[stream])
    }

    fn byte_at_a_time(stream: &[u8]) -> Outcome {
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        run(&pieces)
    }

    /// Feeds `stream` whole, a byte at a time, and split in two at every offset; all must
    /// agree on pass or fail, and a failure must come at byte `bad` (the first byte that
    /// proves the stream invalid) and pass on no byte from `bad` on.
    fn assert_every_split(stream: &[u8], bad: Option<usize>) {
        let check = |outcome: Outcome, piece_of_bad: &dyn Fn(usize) -> usize, how: &str| match (bad, outcome)
        {
            (None, Outcome::Passed) => {}
            (Some(bad), Outcome::Failed { passed, piece }) => {
                assert!(passed <= bad, "{how}: passed {passed} bytes, bad byte at {bad}");
                assert_eq!(piece, piece_of_bad(bad), "{how}: failed late or early");
            }
            (bad, outcome) => panic!("{how}: expected failure at {bad:?}, got {outcome:?}"),
        };
        check(whole(stream), &|_| 0, "whole");
        check(byte_at_a_time(stream), &|b| b, "byte at a time");
        for split in 1..stream.len() {
            let outcome = run(&[&stream[..split], &stream[split..]]);
            check(
                outcome,
                &|b| usize::from(b >= split),
                &format!("split at {split}"),
            );
        }
    }

    #[test]
    fn valid_text_passes_however_it_is_cut() {
        let s = frame(TEXT, "Hello-µ@ßöäüàá-UTF-8!! €𝄞 κόσμε".as_bytes());
        assert_every_split(&s, None);
        assert_eq!(whole(&frame(TEXT, b"")), Outcome::Passed);
    }

    #[test]
    fn invalid_bytes_fail_before_the_rest_of_the_frame_arrives() {
        // Autobahn 6.4.3: the frame's first chop ends in a sequence that no byte can
        // complete (F4 90: above U+10FFFF); the rest of the frame has not arrived.
        let payload = [
            &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5][..],
            &[0xf4, 0x90, 0x80, 0x80],
            b"edited",
        ]
        .concat();
        let s = frame(TEXT, &payload);
        let first_chop = 6 + 11 + 2;
        assert_eq!(
            run(&[&s[..first_chop]]),
            Outcome::Failed {
                passed: 6 + 11,
                piece: 0
            }
        );
        assert_every_split(&s, Some(6 + 11 + 1));
    }

    #[test]
    fn the_bytes_before_the_bad_one_are_passed_on_and_the_next_read_fails() {
        let mut s = frame(TEXT, b"fine");
        let bad = frame(TEXT, b"ab\xffcd");
        s.extend_from_slice(&bad);
        let mut g = Utf8Guard::default();
        let n = g.screen(&s).unwrap();
        assert_eq!(n, 10 + 6 + 2, "the first frame and the bad one's valid start");
        assert!(is_invalid_utf8(&g.check().unwrap_err()));
        // Nothing more is passed on.
        assert!(is_invalid_utf8(&g.screen(b"x").unwrap_err()));
    }

    #[test]
    fn invalid_byte_at_the_start_of_a_read_is_an_error_not_end_of_stream() {
        let s = frame(TEXT, b"\xff");
        let mut g = Utf8Guard::default();
        assert_eq!(g.screen(&s[..6]).unwrap(), 6);
        let e = g.screen(&s[6..]).unwrap_err();
        assert!(is_invalid_utf8(&e));
    }

    #[test]
    fn code_point_split_across_reads_and_across_frames() {
        // "€" is E2 82 AC, "𝄞" is F0 9D 84 9E.
        let (s, _) = frames(&[
            (TEXT_START, b"a\xe2"),
            (CONT, b"\x82"),
            (CONT, b"\xac\xf0\x9d\x84"),
            (CONT_END, b"\x9e z"),
        ]);
        assert_every_split(&s, None);
    }

    #[test]
    fn bad_continuation_byte_in_the_next_frame_fails_there() {
        let (s, at) = frames(&[(TEXT_START, b"a\xe2\x82"), (CONT_END, b"Xyz")]);
        assert_every_split(&s, Some(at[1] + 6));
    }

    #[test]
    fn control_frames_inside_a_fragmented_text_message_are_not_text() {
        let (s, _) = frames(&[
            (TEXT_START, b"caf\xc3"),
            (PING, b"\xff\xfe not text"),
            (PONG, b"\xc3"),
            (CONT, b"\xa9 \xf0\x9f"),
            (PING, b""),
            (CONT_END, b"\x98\x80"),
        ]);
        assert_every_split(&s, None);
        // The code point is still cut short at the end.
        let (t, at) = frames(&[(TEXT_START, b"caf\xc3"), (PING, b"\xa9"), (CONT_END, b"!")]);
        assert_every_split(&t, Some(at[2] + 6));
    }

    #[test]
    fn message_ending_inside_a_code_point_fails_at_its_last_byte() {
        let s = frame(TEXT, b"ab\xe2\x82");
        assert_every_split(&s, Some(s.len() - 1));
        // ... also when the last frame is empty: at the last byte of its header.
        let (t, _) = frames(&[(TEXT_START, b"ab\xe2\x82"), (CONT_END, b"")]);
        assert_every_split(&t, Some(t.len() - 1));
    }

    #[test]
    fn binary_frames_are_not_checked() {
        let junk = b"\xff\xfe\xc0\xaf\xed\xa0\x80\xe2";
        assert_every_split(&frame(BINARY, junk), None);
        let (s, _) = frames(&[(BINARY_START, junk), (PING, b"p"), (CONT, junk), (CONT_END, junk)]);
        assert_every_split(&s, None);
    }

    #[test]
    fn each_text_message_is_checked_on_its_own_and_checking_stops_between() {
        let (s, at) = frames(&[
            (TEXT, b"one"),
            (BINARY, b"\xff"),
            (TEXT_START, b"tw"),
            (CONT_END, b"o"),
            (BINARY, b"\xe2\x82"),
            (TEXT, b"\xac"),
        ]);
        assert_every_split(&s, Some(at[5] + 6));
    }

    #[test]
    fn overlong_encodings_and_surrogates_are_invalid() {
        for bad in [
            &b"\xc0\xaf"[..],
            b"\xe0\x80\xaf",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xfe",
        ] {
            let mut payload = b"ok ".to_vec();
            payload.extend_from_slice(bad);
            let s = frame(TEXT, &payload);
            assert!(matches!(whole(&s), Outcome::Failed { .. }), "{bad:x?}");
            assert!(matches!(byte_at_a_time(&s), Outcome::Failed { .. }), "{bad:x?}");
        }
    }

    #[test]
    fn sixteen_bit_lengths() {
        let mut payload = "é".repeat(150).into_bytes(); // 300 bytes
        assert_every_split(&frame(TEXT, &payload), None);
        payload[201] = b'x'; // the second byte of a two-byte sequence
        assert_every_split(&frame(TEXT, &payload), Some(8 + 201));
    }

    #[test]
    fn sixty_four_bit_lengths() {
        let mut payload = "ab€".repeat(20_000).into_bytes(); // 100 000 bytes
        let s = frame(TEXT, &payload);
        assert_eq!(s[1] & 0x7F, 127);
        assert_eq!(whole(&s), Outcome::Passed);
        let pieces: Vec<&[u8]> = s.chunks(1021).collect();
        assert_eq!(run(&pieces), Outcome::Passed);
        // The 64-bit form for a short payload is accepted too.
        assert_every_split(&frame_with(TEXT, "€uro".as_bytes(), true), None);
        // A bad byte deep inside fails in the read that brings it.
        payload[77_777] = 0xff;
        let s = frame(TEXT, &payload);
        let pieces: Vec<&[u8]> = s.chunks(1021).collect();
        let at = 14 + 77_777;
        assert_eq!(
            run(&pieces),
            Outcome::Failed {
                passed: at,
                piece: at / 1021
            }
        );
    }

    #[test]
    fn checking_stops_at_a_close_frame() {
        let (s, _) = frames(&[(CLOSE, b"\x03\xe8"), (TEXT, b"\xff")]);
        assert_every_split(&s, None);
    }

    #[test]
    fn a_close_code_is_read_however_the_frame_is_cut() {
        let close = frame(CLOSE, b"\x03\xf6bye");
        for cut in 0..=close.len() {
            let mut g = Utf8Guard::default();
            assert_eq!(g.screen(&close[..cut]).unwrap(), cut);
            assert_eq!(g.screen(&close[cut..]).unwrap(), close.len() - cut);
            assert_eq!(g.peer_close_code(), Some(1014), "cut at {cut}");
        }
        let mut g = Utf8Guard::default();
        g.screen(&frame(CLOSE, b"")).unwrap();
        assert_eq!(g.peer_close_code(), None, "a Close without a code");
    }

    #[test]
    fn tungstenites_1002_answer_to_a_1014_close_becomes_its_echo() {
        let (mut s, _) = Screened::new(Vec::new(), frame(CLOSE, b"\x03\xf6"));
        s.write_all(TUNGSTENITE_REFUSED_CLOSE).unwrap();
        assert_eq!(s.get_ref().as_slice(), b"\x88\x02\x03\xf6");
        // Any other code's answer passes as tungstenite wrote it.
        let (mut s, _) = Screened::new(Vec::new(), frame(CLOSE, b"\x03\xec"));
        s.write_all(TUNGSTENITE_REFUSED_CLOSE).unwrap();
        assert_eq!(s.get_ref().as_slice(), TUNGSTENITE_REFUSED_CLOSE);
    }

    #[test]
    fn frames_tungstenite_rejects_stop_checking_without_a_false_alarm() {
        // Each is followed by invalid text, which must not be reported.
        let bad_text = frame(TEXT, b"\xff");
        for (what, first) in [
            ("unmasked", vec![TEXT, 1, 0xff]),
            ("rsv", frame(0xC1, b"\xff")),
            ("orphan", frame(CONT_END, b"\xff")),
            ("nested", frame(TEXT_START, b"a")),
            ("reserved opcode", frame(0x83, b"\xff")),
            ("fragmented ping", frame(0x09, b"\xff")),
        ] {
            let s = [first, bad_text.clone()].concat();
            assert_eq!(whole(&s), Outcome::Passed, "{what}: {s:x?}");
        }
    }

    #[test]
    fn an_error_in_the_bytes_after_the_request_head_shows_at_the_first_read() {
        let mut g = Utf8Guard::default();
        let (leftover, _) = frames(&[(TEXT, b"ok"), (TEXT, b"x\xffyz")]);
        let kept = g.screen_vec(leftover);
        assert_eq!(kept.len(), 8 + 7);
        assert!(g.check().is_err());

        let mut g = Utf8Guard::default();
        assert_eq!(g.screen_vec(frame(TEXT, b"ok")).len(), 8);
        assert!(g.check().is_ok());
        assert_eq!(g.screen(&[]).unwrap(), 0, "end of stream passes through");
    }

    #[test]
    fn unmask_matches_the_byte_wise_definition() {
        let src: Vec<u8> = (0..=255u8).collect();
        for len in 0..12 {
            let mut dst = vec![0u8; len];
            unmask(&mut dst, &src[..len], MASK);
            let want: Vec<u8> = src[..len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i % 4])
                .collect();
            assert_eq!(dst, want);
        }
    }

    /// xorshift64*: deterministic pseudo-random numbers for the model test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random text messages (valid, or with one corrupted byte), fragmented at random
    /// with pings in between, read in random pieces: the guard fails exactly when
    /// `std::str::from_utf8` rejects the message, and within the read that brings the
    /// first byte after the message's longest valid prefix.
    #[test]
    fn agrees_with_from_utf8_on_random_messages() {
        let alphabet = [
            "a",
            "~",
            "ß",
            "€",
            "𝄞",
            "κ",
            "\u{7ff}",
            "\u{800}",
            "\u{ffff}",
            "\u{10000}",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..3000 {
            let mut text = Vec::new();
            for _ in 0..rng.below(40) {
                text.extend_from_slice(alphabet[rng.below(alphabet.len())].as_bytes());
            }
            if !text.is_empty() && rng.below(2) == 0 {
                let i = rng.below(text.len());
                text[i] = rng.next() as u8;
            }
            // Fragment it, with pings between fragments, and record where each payload
            // byte lands in the stream.
            let mut stream = frame(BINARY, b"\xff");
            let mut offsets = Vec::new();
            let mut rest = &text[..];
            let mut first = true;
            loop {
                let n = if rest.is_empty() {
                    0
                } else {
                    1 + rng.below(rest.len())
                };
                let (now, later) = rest.split_at(n);
                let fin = later.is_empty();
                let op = if first { 0x1 } else { 0x0 };
                let f = frame(op | if fin { 0x80 } else { 0 }, now);
                let payload_at = stream.len() + f.len() - now.len();
                offsets.extend((0..now.len()).map(|i| payload_at + i));
                stream.extend(f);
                first = false;
                rest = later;
                if fin {
                    break;
                }
                if rng.below(3) == 0 {
                    stream.extend(frame(PING, b"\xc3"));
                }
            }
            // The byte that proves the message invalid: the first that no valid UTF-8
            // starts with what came before, or the message's last byte when it ends
            // inside a code point.
            let proof = (0..text.len())
                .find(|&p| std::str::from_utf8(&text[..=p]).is_err_and(|e| e.error_len().is_some()));
            let expect = match (std::str::from_utf8(&text), proof) {
                (Ok(_), _) => None,
                (Err(_), Some(p)) => Some(offsets[p]),
                (Err(_), None) => Some(stream.len() - 1),
            };
            let mut pieces = Vec::new();
            let mut left = &stream[..];
            while !left.is_empty() {
                let (p, l) = left.split_at(1 + rng.below(left.len().min(64)));
                pieces.push(p);
                left = l;
            }
            let outcome = run(&pieces);
            match expect {
                None => assert_eq!(outcome, Outcome::Passed, "round {round}: {text:x?}"),
                Some(bad) => {
                    let Outcome::Failed { passed, piece } = outcome else {
                        panic!("round {round}: {text:x?} passed");
                    };
                    assert!(passed <= bad, "round {round}");
                    let bad_piece_end = pieces[..=piece].iter().map(|p| p.len()).sum::<usize>();
                    let bad_piece_start = bad_piece_end - pieces[piece].len();
                    assert!(
                        (bad_piece_start..bad_piece_end).contains(&bad),
                        "round {round}: failed in the wrong read"
                    );
                }
            }
        }
    }
}
