//! The WebSocket rules, free of I/O: what a request head must say, which close code
//! answers which failure, how text is screened for UTF-8, how a frame is laid out on
//! the wire, what bounds a connection on both ends and which settings make sense, when
//! a connection is due a ping and whether a sender is over its rate, and which code a
//! peer's Close really carried.
//!
//! **Owns** nothing and spawns nothing. Every function here takes the time, the bytes or
//! the peer it decides about as an argument, so each rule is unit-tested without a
//! socket. Nothing under `src/ws/` may use `std::net`, `crossbeam_channel` or
//! `crate::server` (`tests/layout.rs` checks it): the threads that apply these rules
//! live in [`crate::server`] and [`crate::client`].

pub mod close_policy;
pub mod handshake;
pub mod keepalive;
pub(crate) mod limits;
pub(crate) mod peer_close;
pub mod rate_limit;
pub mod utf8_guard;
pub mod wire;

/// A connection's id, unique for the life of a server.
pub type ConnId = u64;
