//! Channels on `/ws` (protocol v1), free of I/O: the wire types ([`protocol`]) and the
//! channel state the hub thread owns.
//!
//! **Owns** nothing and spawns nothing by itself: the hub thread owns the channel state
//! (no `Mutex`: no other thread can reach it), and every function here takes the time
//! and the connection it decides about as arguments, so each rule is unit-tested
//! without a socket.

pub mod protocol;
