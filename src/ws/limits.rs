//! What bounds a connection on the server and the client alike ([`ConnectionLimits`]),
//! and the rules a connection's settings must satisfy on both ends. I/O-free.
//!
//! Owns nothing. Both configurations hold a [`ConnectionLimits`]; [`check`] runs once,
//! before anything starts, from `Config::validate` and `ClientConfig::validate`, and
//! [`ConnectionLimits::websocket_config`] once per connection, when it opens. Each rule
//! here is one a running connection would otherwise break in a confusing way; each
//! caller wraps the message in its own error type and adds the rules only it has.

use std::time::Duration;

use tungstenite::protocol::WebSocketConfig;

/// Smallest read buffer accepted: below it, reading a frame header takes several calls.
pub(crate) const MIN_READ_BUFFER_SIZE: usize = 256;

/// The bounds the server and the client both put on each connection: how many messages
/// may wait for its writer, how large a message and a frame from the peer may be, and how
/// much is read at a time. The server's [`Config`](crate::Config) and the client's
/// [`ClientConfig`](crate::client::ClientConfig) each hold one, as `limits`; the defaults
/// differ by end, and each field gives both.
///
/// ```
/// let mut config = wshub::Config::default();
/// config.limits.max_message_size = 64 * 1024;
/// config.limits.max_frame_size = 16 * 1024;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Messages queued for the connection's writer. Past it, the server disconnects the
    /// client as a slow consumer, and the client's [`send`](crate::client::Client::send)
    /// blocks. Default 256 on both ends.
    pub queue_size: usize,
    /// Largest message (after reassembly of fragments) accepted from the peer, in bytes;
    /// a larger one gets Close 1009. Default 1 MiB on the server (it also bounds a
    /// `POST /api/publish` body), 16 MiB on the client (a server may send more than it
    /// accepts).
    pub max_message_size: usize,
    /// Largest frame payload accepted from the peer, in bytes; a larger one gets Close
    /// 1009, decided from the frame header before the payload is read. Clamped to
    /// `max_message_size`. Default 1 MiB on the server, 16 MiB on the client.
    pub max_frame_size: usize,
    /// Bytes read from the socket at a time; at least 256. Default 1 KiB on the server,
    /// 16 KiB on the client.
    pub read_buffer_size: usize,
}

impl ConnectionLimits {
    /// The first rule these break, in words, or `Ok`.
    fn check(&self) -> Result<(), String> {
        if self.queue_size == 0 {
            return Err("queue size must be at least 1".into());
        }
        if self.max_message_size == 0 || self.max_frame_size == 0 {
            return Err("message and frame size limits must be at least 1 byte".into());
        }
        if self.read_buffer_size < MIN_READ_BUFFER_SIZE {
            return Err(format!(
                "read buffer size must be at least {MIN_READ_BUFFER_SIZE} bytes"
            ));
        }
        Ok(())
    }

    /// tungstenite's configuration for a connection with these limits: the frame limit
    /// clamped to the message limit, and no write buffer, since on both ends every frame
    /// tungstenite writes itself (a Pong, a Close reply) is handed on at once, whole.
    pub(crate) fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(0)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size.min(self.max_message_size)))
    }
}

/// A configuration's settings, as the shared rules see them.
pub(crate) struct ConnectionSettings<'a> {
    /// The configuration's [`ConnectionLimits`].
    pub limits: &'a ConnectionLimits,
    /// How often we ping (`None`: never).
    pub ping_interval: Option<Duration>,
    /// How long silence is tolerated (`None`: forever).
    pub idle_timeout: Option<Duration>,
    /// The other timeouts, by name.
    pub timeouts: &'a [(&'static str, Duration)],
}

/// The first rule `s` breaks, in words, or `Ok`.
pub(crate) fn check(s: &ConnectionSettings<'_>) -> Result<(), String> {
    let keepalive = [
        ("ping interval", s.ping_interval),
        ("idle timeout", s.idle_timeout),
    ];
    let timeouts = s.timeouts.iter().map(|&(name, d)| (name, Some(d)));
    for (name, d) in keepalive.into_iter().chain(timeouts) {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(format!("{name} must be greater than zero"));
        }
    }
    if let (Some(ping), Some(idle)) = (s.ping_interval, s.idle_timeout) {
        if ping >= idle {
            return Err(format!(
                "ping interval ({ping:?}) must be shorter than the idle timeout ({idle:?}), \
                 or a quiet but live peer would be closed as idle"
            ));
        }
    }
    s.limits.check()
}

/// A timeout of a configuration `C`, for its tests: its name, and what sets it to zero.
#[cfg(test)]
pub(crate) type Zeroing<C> = (&'static str, fn(&mut C));

/// For a configuration's tests: `validate` accepts `config`, and refuses it, naming the
/// timeout, once any one of `timeouts` has been set to zero. So a timeout left out of
/// the configuration's [`ConnectionSettings`] fails its test.
#[cfg(test)]
pub(crate) fn assert_every_timeout_is_checked<C: Clone, E: std::fmt::Display>(
    config: &C,
    validate: impl Fn(&C) -> Result<(), E>,
    timeouts: &[Zeroing<C>],
) {
    if let Err(e) = validate(config) {
        panic!("the configuration is refused as it is: {e}");
    }
    for (name, set_to_zero) in timeouts {
        let mut zeroed = config.clone();
        set_to_zero(&mut zeroed);
        let Err(e) = validate(&zeroed) else {
            panic!("a zero {name} passed");
        };
        let e = e.to_string();
        assert!(
            e.contains(&format!("{name} must be greater than zero")),
            "{name}: {e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALLEST: ConnectionLimits = ConnectionLimits {
        queue_size: 1,
        max_message_size: 1,
        max_frame_size: 1,
        read_buffer_size: MIN_READ_BUFFER_SIZE,
    };

    fn settings<'a>(
        limits: &'a ConnectionLimits,
        timeouts: &'a [(&'static str, Duration)],
    ) -> ConnectionSettings<'a> {
        ConnectionSettings {
            limits,
            ping_interval: Some(Duration::from_secs(1)),
            idle_timeout: Some(Duration::from_secs(2)),
            timeouts,
        }
    }

    #[test]
    fn the_smallest_sane_settings_pass() {
        let timeouts = [("write timeout", Duration::from_nanos(1))];
        assert_eq!(check(&settings(&SMALLEST, &timeouts)), Ok(()));
    }

    #[test]
    fn a_zero_timeout_is_named() {
        let err = check(&settings(&SMALLEST, &[("write timeout", Duration::ZERO)])).unwrap_err();
        assert!(err.contains("write timeout"), "{err}");
        let mut s = settings(&SMALLEST, &[]);
        s.ping_interval = Some(Duration::ZERO);
        let err = check(&s).unwrap_err();
        assert!(err.contains("ping interval must be greater than zero"), "{err}");
    }

    #[test]
    fn a_ping_interval_not_shorter_than_the_idle_timeout_is_refused() {
        let mut s = settings(&SMALLEST, &[]);
        s.ping_interval = s.idle_timeout;
        assert!(check(&s).unwrap_err().contains("ping interval"));
        s.idle_timeout = None;
        assert_eq!(check(&s), Ok(()));
    }

    #[test]
    fn empty_queues_sizes_and_tiny_buffers_are_refused() {
        for limits in [
            ConnectionLimits {
                queue_size: 0,
                ..SMALLEST
            },
            ConnectionLimits {
                max_frame_size: 0,
                ..SMALLEST
            },
            ConnectionLimits {
                read_buffer_size: MIN_READ_BUFFER_SIZE - 1,
                ..SMALLEST
            },
        ] {
            assert!(check(&settings(&limits, &[])).is_err(), "{limits:?}");
        }
    }

    #[test]
    fn tungstenite_gets_the_frame_limit_clamped_to_the_message_limit() {
        let limits = ConnectionLimits {
            max_message_size: 1000,
            max_frame_size: 5000,
            ..SMALLEST
        };
        let ws = limits.websocket_config();
        assert_eq!(ws.max_message_size, Some(1000));
        assert_eq!(ws.max_frame_size, Some(1000));
        assert_eq!(ws.read_buffer_size, MIN_READ_BUFFER_SIZE);
    }
}
