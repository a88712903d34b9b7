//! The server's threads and the state each one owns: the accept thread
//! ([`accept`](self)), one reader per connection (`connection`, kept a moment as a spare
//! for the next connection by `spare`), a writer per
//! connection (`writer`, fed by `queue`), the hub (`hub`, owning the `registry`), and
//! the drain (`shutdown`); `threads` holds the connection threads' handles until each
//! is joined. `handler` is what a route does with a connection, `config`
//! and `capacity` what the server may use, `start` puts it together.
//!
//! Every blocking call here has an exit: a socket timeout, a shutdown of the socket
//! that wakes it, or a message on a channel. The rules these threads apply are I/O-free
//! and live in `src/ws/`.

mod accept;
mod backlog;
mod capacity;
mod commands;
mod config;
mod connection;
mod engine;
mod error;
mod flow;
mod handler;
mod http;
mod hub;
mod metrics;
mod queue;
#[cfg(feature = "redis")]
mod redis;
mod registry;
mod shutdown;
mod spare;
mod start;
mod threads;
mod writer;

pub use config::{ApiKey, Config, Engine, TokenSecret};
pub use error::{ConfigError, Error, PublishError, SendError};
pub use handler::{Chat, Connection, Echo, HEALTH_PATH, Handler, Ws};
pub use hub::Hub;
pub use shutdown::{DrainReport, ShutdownHandle};
pub use start::{Server, ServerBuilder};
