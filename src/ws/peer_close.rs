//! The code of the Close frame a peer sent, read off the raw bytes. I/O-free.
//!
//! tungstenite knows the close codes of RFC 6455 and a few later ones, but not 1014
//! ("bad gateway", registered with IANA): it reports a Close 1014 as a Close 1002
//! "Protocol violation" and answers it with 1002, as if the code were reserved. RFC 6455
//! §5.5.1 asks for an echo of the code instead. [`PeerClose`] follows a peer's frame
//! headers as the bytes arrive, skips every payload but a Close frame's, and so knows
//! the code (and reason) the peer really sent; the client's reader
//! ([`crate::client`]) uses it to echo 1014 and to report it. (The server side does the
//! same inside [`crate::ws::utf8_guard`], which already follows the client's frames.)
//!
//! **Owns** a few bytes of state per connection, kept by the reader thread. After the
//! first Close frame (or a header no frame can have) it stops looking for good:
//! tungstenite closes or fails the connection at that frame.

/// Follows a byte stream of WebSocket frames (masked or not) for the first Close.
#[derive(Debug, Default)]
pub struct PeerClose {
    /// The current frame header's bytes (2 to 14).
    header: [u8; 14],
    /// How many of them have arrived.
    have: usize,
    /// Payload bytes of the current frame still to skip; `None` while in a header.
    left: Option<u64>,
    /// Set while the current frame is a Close: the mask key (zero when unmasked) and the
    /// payload read so far (at most [`MAX_CLOSE_PAYLOAD`] bytes are kept).
    close: Option<([u8; 4], Vec<u8>)>,
    /// Set once looking is over: the Close's code and reason, or `None` when it had no
    /// code.
    done: Option<Option<(u16, String)>>,
}

/// A control frame's payload is at most 125 bytes (RFC 6455 §5.5); a longer one is
/// tungstenite's to refuse, and only its first 125 bytes are kept here.
const MAX_CLOSE_PAYLOAD: usize = 125;

/// Opcode of a Close frame.
const CLOSE: u8 = 0x8;

impl PeerClose {
    /// Takes the next bytes the peer sent, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.done.is_none() {
            match self.left {
                None => {
                    let need = header_len(&self.header[..self.have]);
                    let take = (need - self.have).min(bytes.len());
                    self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                    self.have += take;
                    bytes = &bytes[take..];
                    if self.have == header_len(&self.header[..self.have]) {
                        self.start_payload();
                    }
                }
                Some(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    if let Some((mask, payload)) = &mut self.close {
                        let keep = take.min(MAX_CLOSE_PAYLOAD - payload.len().min(MAX_CLOSE_PAYLOAD));
                        for &b in &bytes[..keep] {
                            let at = payload.len();
                            payload.push(b ^ mask[at % 4]);
                        }
                    }
                    bytes = &bytes[take..];
                    self.left = Some(left - take as u64);
                    if left - take as u64 == 0 {
                        self.end_frame();
                    }
                }
            }
        }
    }

    /// The code of the peer's Close, once the whole frame has arrived.
    pub fn code(&self) -> Option<u16> {
        self.done.as_ref()?.as_ref().map(|(code, _)| *code)
    }

    /// The reason of the peer's Close (lossy UTF-8: tungstenite checks it), once the
    /// whole frame has arrived.
    pub fn reason(&self) -> Option<&str> {
        self.done.as_ref()?.as_ref().map(|(_, reason)| reason.as_str())
    }

    fn start_payload(&mut self) {
        let h = &self.header[..self.have];
        let len = payload_len(h);
        if h[0] & 0x0F == CLOSE {
            let mut mask = [0; 4];
            if h[1] & 0x80 != 0 {
                mask.copy_from_slice(&h[self.have - 4..self.have]);
            }
            if len < 2 {
                // A Close without a code: nothing to learn, and nothing more to follow.
                self.done = Some(None);
                return;
            }
            self.close = Some((mask, Vec::new()));
        }
        self.left = Some(len);
        if len == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        if let Some((_, payload)) = self.close.take() {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
            self.done = Some(Some((code, reason)));
        }
        self.have = 0;
        self.left = None;
        self.close = None;
    }
}

/// A frame header's full length, from the bytes of it seen so far (at least 2 are
/// needed to know; fewer answer 2).
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    let ext = match h[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + mask
}

/// A complete header's payload length.
fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes(h[2..10].try_into().expect("eight bytes")),
        n => u64::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::wire::{close_payload, encode_frame};
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

    fn frame(op: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, op, mask, payload);
        out
    }

    fn stream() -> Vec<u8> {
        let mut s = frame(OpCode::Data(Data::Text), None, b"hello");
        s.extend(frame(OpCode::Data(Data::Binary), None, &vec![7u8; 70_000]));
        s.extend(frame(OpCode::Control(Control::Ping), None, b"p"));
        s.extend(frame(OpCode::Data(Data::Binary), None, &[0x88; 300]));
        s.extend(frame(
            OpCode::Control(Control::Close),
            None,
            &close_payload(1014, "upstream"),
        ));
        s
    }

    #[test]
    fn finds_the_code_of_a_close_after_other_frames() {
        let mut p = PeerClose::default();
        p.feed(&stream());
        assert_eq!(p.code(), Some(1014));
        assert_eq!(p.reason(), Some("upstream"));
    }

    #[test]
    fn finds_it_whatever_the_bytes_are_cut_into() {
        let s = stream();
        for chunk in [1, 2, 3, 5, 13, 126, 4096] {
            let mut p = PeerClose::default();
            for piece in s.chunks(chunk) {
                p.feed(piece);
            }
            assert_eq!(p.code(), Some(1014), "chunks of {chunk}");
            assert_eq!(p.reason(), Some("upstream"), "chunks of {chunk}");
        }
    }

    #[test]
    fn unmasks_a_masked_close() {
        let mut p = PeerClose::default();
        p.feed(&frame(
            OpCode::Control(Control::Close),
            Some([0x37, 0xfa, 0x21, 0x3d]),
            &close_payload(4000, "masked"),
        ));
        assert_eq!(p.code(), Some(4000));
        assert_eq!(p.reason(), Some("masked"));
    }

    #[test]
    fn knows_no_code_before_a_close_or_for_an_empty_one() {
        let mut p = PeerClose::default();
        p.feed(&frame(OpCode::Data(Data::Text), None, &[0x88, 0x02, 0x03, 0xf6]));
        assert_eq!(p.code(), None, "close-like bytes inside a payload are payload");
        p.feed(&frame(OpCode::Control(Control::Close), None, b""));
        assert_eq!(p.code(), None);
        p.feed(&frame(
            OpCode::Control(Control::Close),
            None,
            &close_payload(1000, ""),
        ));
        assert_eq!(p.code(), None, "looking stops at the first Close");
    }
}
