//! Which Close code answers which failure. I/O-free.
//!
//! Owns nothing; called by a connection's reader thread when tungstenite's `read()`
//! fails. tungstenite detects the violations but does not answer them with a Close
//! frame: turning each into the right code is ours. RFC 6455 §7.4.1 defines the codes.

use std::io;

use tungstenite::error::{CapacityError, Error, ProtocolError};

use crate::ws::utf8_guard;

/// 1000: "a normal closure, meaning that the purpose for which the connection was
/// established has been fulfilled."
pub const NORMAL: u16 = 1000;
/// 1001: "an endpoint is 'going away', such as a server going down". Also used for the
/// idle timeout: the server is going away from a client that went quiet.
pub const GOING_AWAY: u16 = 1001;
/// 1002: "an endpoint is terminating the connection due to a protocol error."
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: "an endpoint is terminating the connection because it has received a type of
/// data it cannot accept" (a binary frame on `/ws`, whose protocol is JSON text).
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1007: "received data within a message that was not consistent with the type of the
/// message (e.g., non-UTF-8 data within a text message)."
pub const INVALID_DATA: u16 = 1007;
/// 1008: "received a message that violates its policy" (rate limit, slow consumer).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: "received a message that is too big for it to process."
pub const TOO_BIG: u16 = 1009;
/// 1011: "encountered an unexpected condition that prevented it from fulfilling the
/// request" (a handler panicked).
pub const INTERNAL_ERROR: u16 = 1011;

/// How a connection's read side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// The close handshake finished, or the peer vanished: no Close frame to send.
    Done,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The peer broke the protocol or a limit: answer with this Close, then end.
    Fail {
        /// The Close code.
        code: u16,
        /// The Close reason.
        reason: &'static str,
    },
}

/// Classifies an error returned by tungstenite's `read()`.
pub fn classify(err: &Error) -> ReadEnd {
    let fail = |code, reason| ReadEnd::Fail { code, reason };
    match err {
        Error::ConnectionClosed | Error::AlreadyClosed => ReadEnd::Done,
        Error::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            ReadEnd::Idle
        }
        // Our fail-fast check found invalid UTF-8 before tungstenite had the whole frame.
        Error::Io(e) if utf8_guard::is_invalid_utf8(e) => fail(INVALID_DATA, "invalid UTF-8"),
        // Reset, broken pipe, our own shutdown(2) from the writer: nobody to tell.
        Error::Io(_) => ReadEnd::Done,
        Error::Utf8(_) => fail(INVALID_DATA, "invalid UTF-8"),
        Error::Capacity(CapacityError::MessageTooLong { .. }) => fail(TOO_BIG, "message too big"),
        Error::Capacity(_) => fail(TOO_BIG, "too big"),
        // The peer closed TCP without a Close frame: it is gone.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadEnd::Done,
        Error::Protocol(p) => fail(PROTOCOL_ERROR, protocol_reason(p)),
        _ => fail(PROTOCOL_ERROR, "protocol error"),
    }
}

fn protocol_reason(p: &ProtocolError) -> &'static str {
    match p {
        ProtocolError::UnmaskedFrameFromClient => "unmasked client frame",
        ProtocolError::NonZeroReservedBits => "reserved bits set",
        ProtocolError::UnknownControlFrameType(_) | ProtocolError::UnknownDataFrameType(_) => {
            "unknown opcode"
        }
        ProtocolError::InvalidOpcode(_) => "unknown opcode",
        ProtocolError::FragmentedControlFrame => "fragmented control frame",
        ProtocolError::ControlFrameTooBig => "control frame over 125 bytes",
        ProtocolError::UnexpectedContinueFrame => "continuation without a start",
        ProtocolError::ExpectedFragment(_) => "new message inside a fragmented one",
        ProtocolError::InvalidCloseSequence => "invalid close frame",
        ProtocolError::ReceivedAfterClosing => "data after close",
        _ => "protocol error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::Data;

    fn code(err: Error) -> Option<u16> {
        match classify(&err) {
            ReadEnd::Fail { code, .. } => Some(code),
            _ => None,
        }
    }

    #[test]
    fn protocol_violations_are_1002() {
        for p in [
            ProtocolError::UnmaskedFrameFromClient,
            ProtocolError::NonZeroReservedBits,
            ProtocolError::UnknownControlFrameType(11),
            ProtocolError::UnknownDataFrameType(3),
            ProtocolError::FragmentedControlFrame,
            ProtocolError::ControlFrameTooBig,
            ProtocolError::UnexpectedContinueFrame,
            ProtocolError::ExpectedFragment(Data::Text),
            ProtocolError::InvalidCloseSequence,
        ] {
            assert_eq!(code(Error::Protocol(p)), Some(PROTOCOL_ERROR));
        }
    }

    #[test]
    fn invalid_utf8_is_1007() {
        assert_eq!(code(Error::Utf8("bad".into())), Some(INVALID_DATA));
    }

    #[test]
    fn invalid_utf8_found_while_reading_is_1007_other_invalid_data_is_not() {
        assert_eq!(code(Error::Io(utf8_guard::invalid_utf8())), Some(INVALID_DATA));
        let other = io::Error::new(io::ErrorKind::InvalidData, "something else");
        assert_eq!(classify(&Error::Io(other)), ReadEnd::Done);
    }

    #[test]
    fn too_big_is_1009() {
        let e = Error::Capacity(CapacityError::MessageTooLong { size: 2, max_size: 1 });
        assert_eq!(code(e), Some(TOO_BIG));
    }

    #[test]
    fn read_timeout_is_idle() {
        let e = Error::Io(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(classify(&e), ReadEnd::Idle);
    }

    #[test]
    fn vanished_peer_gets_no_close_frame() {
        assert_eq!(classify(&Error::ConnectionClosed), ReadEnd::Done);
        let e = Error::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&e), ReadEnd::Done);
        let e = Error::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(classify(&e), ReadEnd::Done);
    }
}
