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
//! a server frame is exactly header + payload. The client's frames are masked
//! ([`encode_frame`]). Both are laid out by one encoder, tungstenite's
//! `FrameHeader::format`, here; and a Close payload is built, its reason cut to fit, by
//! [`close_payload`] alone.

use std::io::Cursor;

use tungstenite::Bytes;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::ws::close_policy::NORMAL;

/// The largest unmasked frame header: 2 bytes, plus 8 for a 64-bit length.
const MAX_HEADER: usize = 10;

/// The largest control-frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// One complete, unmasked server frame, ready for the socket.
#[derive(Clone, Debug)]
pub(crate) struct WireFrame {
    head: [u8; MAX_HEADER],
    head_len: u8,
    payload: Bytes,
}

impl WireFrame {
    /// A final (unfragmented), unmasked frame with `opcode` and `payload`.
    fn new(opcode: OpCode, payload: Bytes) -> WireFrame {
        let mut head = [0u8; MAX_HEADER];
        let mut out = &mut head[..];
        // Cannot fail: an unmasked header is at most MAX_HEADER bytes.
        let _ = final_header(opcode, None).format(payload.len() as u64, &mut out);
        let head_len = (MAX_HEADER - out.len()) as u8;
        WireFrame {
            head,
            head_len,
            payload,
        }
    }

    /// Bytes that are already whole frames (tungstenite's own Pong and Close replies),
    /// carried as one `WireFrame` with no header of ours: the bytes are its payload.
    /// [`WireFrame::is_close`] says nothing about such a frame; its sender knows.
    pub(crate) fn preformatted(bytes: Vec<u8>) -> WireFrame {
        WireFrame {
            head: [0; MAX_HEADER],
            head_len: 0,
            payload: Bytes::from(bytes),
        }
    }

    /// Encodes a data or control message. `None` for `Message::Frame`, which this
    /// server never sends.
    pub(crate) fn from_message(msg: Message) -> Option<WireFrame> {
        Some(match msg {
            Message::Text(text) => WireFrame::new(OpCode::Data(Data::Text), Bytes::from(text)),
            Message::Binary(data) => WireFrame::new(OpCode::Data(Data::Binary), data),
            // Control frames carry at most 125 bytes (§5.5); longer payloads are cut.
            Message::Ping(data) => WireFrame::new(OpCode::Control(Control::Ping), truncate_control(data)),
            Message::Pong(data) => WireFrame::new(OpCode::Control(Control::Pong), truncate_control(data)),
            Message::Close(frame) => {
                let (code, reason) = close_parts(frame.as_ref());
                WireFrame::close(code, reason)
            }
            Message::Frame(_) => return None,
        })
    }

    /// A Close frame with `code` and `reason` (cut to fit 125 bytes on a char boundary).
    pub(crate) fn close(code: u16, reason: &str) -> WireFrame {
        WireFrame::new(
            OpCode::Control(Control::Close),
            Bytes::from(close_payload(code, reason)),
        )
    }

    /// An empty Ping.
    pub(crate) fn ping() -> WireFrame {
        WireFrame::new(OpCode::Control(Control::Ping), Bytes::new())
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
        self.head[0] & 0x0F == u8::from(OpCode::Control(Control::Close))
    }
}

fn truncate_control(mut data: Bytes) -> Bytes {
    data.truncate(MAX_CONTROL_PAYLOAD);
    data
}

/// The header of a final frame with `opcode`, masked with `mask` if given.
fn final_header(opcode: OpCode, mask: Option<[u8; 4]>) -> FrameHeader {
    FrameHeader {
        is_final: true,
        opcode,
        mask,
        ..FrameHeader::default()
    }
}

/// Appends one final frame to `out`: the header (with the mask key, if any), then the
/// payload masked with it. The client's encoder (RFC 6455 §5.3: every client frame is
/// masked); [`WireFrame`] lays out the server's with the same header code.
pub(crate) fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) {
    encode_with_header(out, &final_header(opcode, mask), payload);
}

/// [`encode_frame`] with a header of the caller's (a `Message::Frame` sent as it is).
pub(crate) fn encode_with_header(out: &mut Vec<u8>, header: &FrameHeader, payload: &[u8]) {
    // Formatting into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    match header.mask {
        Some(mask) => out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m)),
        None => out.extend_from_slice(payload),
    }
}

/// The longest prefix of `reason` that fits a Close frame beside its 2-byte code
/// (125 bytes in all), cut at a character boundary so it stays valid UTF-8.
pub(crate) fn cut_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A Close frame's payload: `code`, big-endian, then the reason cut by [`cut_reason`].
pub(crate) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let reason = cut_reason(reason);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// The code and reason a Close message asks for; 1000 and no reason without a frame.
pub(crate) fn close_parts(frame: Option<&CloseFrame>) -> (u16, &str) {
    frame.map_or((NORMAL, ""), |f| (u16::from(f.code), f.reason.as_str()))
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
    fn client_frames_are_masked_and_round_trip() {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, OpCode::Data(Data::Text), Some([1, 2, 3, 4]), b"hello");
        assert_eq!(bytes[0], 0x81);
        assert_eq!(bytes[1], 0x80 | 5);
        assert_eq!(&bytes[2..6], &[1, 2, 3, 4]);
        let unmasked: Vec<u8> = bytes[6..]
            .iter()
            .zip([1u8, 2, 3, 4].iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn an_unmasked_encoded_frame_is_the_server_frame() {
        for len in [0usize, 125, 126, 65536] {
            let payload = vec![3u8; len];
            let mut bytes = Vec::new();
            encode_frame(&mut bytes, OpCode::Data(Data::Binary), None, &payload);
            let ours = WireFrame::from_message(Message::binary(payload)).unwrap();
            assert_eq!(bytes, wire(&ours), "length {len}");
        }
    }

    #[test]
    fn a_reason_that_fits_is_kept_whole() {
        assert_eq!(cut_reason("bye"), "bye");
        assert_eq!(cut_reason(&"a".repeat(123)).len(), 123);
        assert_eq!(cut_reason(&"a".repeat(124)).len(), 123);
    }

    #[test]
    fn a_close_message_without_a_frame_is_a_normal_closure() {
        assert_eq!(close_parts(None), (1000, ""));
        let f = WireFrame::from_message(Message::Close(None)).unwrap();
        assert_eq!(wire(&f), b"\x88\x02\x03\xe8");
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
