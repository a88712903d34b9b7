//! Error types: one per operation, as crossbeam-channel does, each `#[non_exhaustive]`.
//!
//! Each variant's doc says what caused it and whether it is fatal (the operation, or the
//! thing it was done to, cannot be retried as is). Nothing here wraps a panic: errors
//! from the network or from the user are values, never `unwrap()`s.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use crate::pubsub::protocol::ErrorBody;

/// Starting a [`Server`](crate::Server) failed. Always fatal for that start: nothing
/// is left running.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The [`Config`](crate::Config) broke one of its rules; the message says which.
    Config(ConfigError),
    /// The listening socket could not be bound (address in use, permission denied, an
    /// address not on this machine).
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// A server thread could not be spawned (the process is out of threads or memory).
    Spawn(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "invalid configuration: {e}"),
            Error::Bind { addr, source } if source.kind() == io::ErrorKind::AddrInUse => {
                write!(f, "cannot listen on {addr}: address already in use")
            }
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Spawn(e) => write!(f, "cannot spawn a server thread: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Bind { source, .. } => Some(source),
            Error::Spawn(e) => Some(e),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

/// A [`Config`](crate::Config) value that the server refuses. Fatal: fix the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Sending to a connection (or broadcasting through the hub) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closing or gone (or the hub has stopped). Fatal for that
    /// connection: every later send fails the same way.
    Closed,
    /// The connection's outbound queue stayed full for the whole write timeout: the client
    /// is not reading. The connection is being closed as a slow consumer. Fatal.
    SlowConsumer,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("connection is closed"),
            SendError::SlowConsumer => f.write_str("client is not reading (slow consumer)"),
        }
    }
}

impl std::error::Error for SendError {}

/// [`Hub::publish`](crate::Hub::publish) failed; nothing was published.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The channel name is not 1 to 255 bytes of `A-Z a-z 0-9 _ - : . @ /`; the message
    /// says what is wrong. Fatal for this name.
    InvalidChannel(String),
    /// The data given as JSON text is not valid JSON. Fatal for this data.
    InvalidData(String),
    /// Refused as a client's `pub` would be, with the protocol's code: 4 (limit
    /// exceeded: too many channels, data too large; fatal until something changes),
    /// 6 (unavailable: temporary, retry later).
    Rejected(ErrorBody),
    /// The server has stopped (or is stopping and its hub has gone). Fatal.
    Closed,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::InvalidChannel(m) => write!(f, "invalid channel name: {m}"),
            PublishError::InvalidData(m) => write!(f, "data is not valid JSON: {m}"),
            PublishError::Rejected(e) => {
                write!(f, "publication refused (code {}): {}", u16::from(e.code), e.msg)
            }
            PublishError::Closed => f.write_str("the server has stopped"),
        }
    }
}

impl std::error::Error for PublishError {}
