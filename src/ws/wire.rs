//! Outbound frames as bytes on the wire. I/O-free.
//!
//! Owns nothing; used by every thread that queues something for a client. A message is
//! turned into a [`WireFrame`] once, by the thread that sends it: a header of at most
//! 10 bytes kept inline, and the payload as a reference-counted [`Bytes`]. A broadcast
//! to ten thousand clients therefore encodes once and queues ten thousand cheap clones
//! (a refcount increment and a 10-byte copy each); the writer hands header and payload
//! to the kernel with one vectored write, so even an echo is never copied in user space.
//!
//! RFC 6455 §5.1: "A server MUST NOT mask any frames that it sends to the client", so
//! a server frame is exactly header + payload.

use std::io::Cursor;

use tungstenite::Bytes;
use tungstenite::Message;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, OpCode};

/// The largest frame header: 2 bytes, plus 8 for a 64-bit length (no mask key).
const MAX_HEADER: usize = 10;

/// Opcodes of RFC 6455 §5.2.
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One complete, unmasked server frame, ready for the socket.
#[derive(Clone, Debug)]
pub(crate) struct WireFrame {
    head: [u8; MAX_HEADER],
    head_len: u8,
    payload: Bytes,
}

impl WireFrame {
    /// A final (unfragmented) frame with `opcode` and `payload`.
    fn new(opcode: u8, payload: Bytes) -> WireFrame {
        let mut head = [0u8; MAX_HEADER];
        head[0] = 0x80 | opcode; // FIN set, RSV bits clear
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        WireFrame {
            head,
            head_len,
            payload,
        }
    }

    /// Encodes a data or control message. `None` for `Message::Frame`, which this
    /// server never sends.
    pub(crate) fn from_message(msg: Message) -> Option<WireFrame> {
        Some(match msg {
            Message::Text(text) => WireFrame::new(OP_TEXT, Bytes::from(text)),
            Message::Binary(data) => WireFrame::new(OP_BINARY, data),
            // Control frames carry at most 125 bytes (§5.5); longer payloads are cut.
            Message::Ping(data) => WireFrame::new(OP_PING, truncate_control(data)),
            Message::Pong(data) => WireFrame::new(OP_PONG, truncate_control(data)),
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1000, String::new()));
                WireFrame::close(code, &reason)
            }
            Message::Frame(_) => return None,
        })
    }

    /// A Close frame with `code` and `reason` (cut to fit 125 bytes on a char boundary).
    pub(crate) fn close(code: u16, reason: &str) -> WireFrame {
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = Vec::with_capacity(2 + cut);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        WireFrame::new(OP_CLOSE, Bytes::from(payload))
    }

    /// An empty Ping.
    pub(crate) fn ping() -> WireFrame {
        WireFrame::new(OP_PING, Bytes::new())
    }

    /// The header bytes.
    pub(crate) fn head(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }

    /// The payload bytes.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Header plus payload, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.head_len as usize + self.payload.len()
    }

    /// Is this a Close frame?
    pub(crate) fn is_close(&self) -> bool {
        self.head[0] & 0x0F == OP_CLOSE
    }
}

fn truncate_control(mut data: Bytes) -> Bytes {
    data.truncate(125);
    data
}

/// How many leading bytes of `bytes` to write: up to and including the first Close
/// frame, if there is one (and then `true`), else all of them.
///
/// tungstenite writes its automatic replies (Pong, and the Close that answers the
/// peer's Close) through our stream, as whole frames. The server's and the client's
/// writers use this to learn that a Close went out, so they never send a second one and
/// nothing after it. Bytes it cannot parse are passed on as they are.
pub(crate) fn frames_through_close(bytes: &[u8]) -> (usize, bool) {
    let mut pos = 0;
    while pos < bytes.len() {
        let mut cursor = Cursor::new(&bytes[pos..]);
        let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) else {
            return (bytes.len(), false);
        };
        let head = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        let end = pos
            .saturating_add(head)
            .saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        if header.opcode == OpCode::Control(Control::Close) {
            return (end.min(bytes.len()), true);
        }
        pos = end;
    }
    (bytes.len(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(f: &WireFrame) -> Vec<u8> {
        [f.head(), f.payload()].concat()
    }

    #[test]
    fn short_text_frame_has_two_byte_header() {
        let f = WireFrame::from_message(Message::text("hi")).unwrap();
        assert_eq!(wire(&f), b"\x81\x02hi");
    }

    #[test]
    fn lengths_use_16_and_64_bit_forms() {
        let f = WireFrame::from_message(Message::binary(vec![0u8; 126])).unwrap();
        assert_eq!(f.head(), [0x82, 126, 0, 126]);
        let f = WireFrame::from_message(Message::binary(vec![0u8; 65536])).unwrap();
        assert_eq!(f.head(), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn frames_match_tungstenite_encoding() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 70000] {
            let payload = vec![7u8; len];
            let ours = wire(&WireFrame::from_message(Message::binary(payload.clone())).unwrap());
            let mut theirs = Vec::new();
            tungstenite::protocol::frame::Frame::message(
                payload,
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Binary,
                ),
                true,
            )
            .format(&mut theirs)
            .unwrap();
            assert_eq!(ours, theirs, "length {len}");
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let f = WireFrame::close(1001, &"é".repeat(100));
        assert!(f.payload().len() <= 125);
        assert!(std::str::from_utf8(&f.payload()[2..]).is_ok());
        assert!(f.is_close());
    }

    #[test]
    fn writing_stops_after_the_first_close() {
        let pong = wire(&WireFrame::from_message(Message::Pong(Bytes::from_static(b"abc"))).unwrap());
        let close = wire(&WireFrame::close(1000, "bye"));
        assert_eq!(frames_through_close(&pong), (pong.len(), false));
        assert_eq!(frames_through_close(&close), (close.len(), true));
        let all = [pong.clone(), close.clone(), pong.clone()].concat();
        assert_eq!(frames_through_close(&all), (pong.len() + close.len(), true));
        assert_eq!(frames_through_close(&[]), (0, false));
        assert_eq!(frames_through_close(&pong[..1]), (1, false));
    }

    #[test]
    fn masked_frames_are_measured_with_their_mask_key() {
        // A masked Pong (as a client writes it), then a Close.
        let masked_pong = [0x8A, 0x81, 1, 2, 3, 4, b'p' ^ 1];
        let close = wire(&WireFrame::close(1000, ""));
        let all = [&masked_pong[..], &close].concat();
        assert_eq!(frames_through_close(&all), (all.len(), true));
    }
}
