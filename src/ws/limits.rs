//! What a connection's settings must satisfy, on the server and the client alike.
//! I/O-free.
//!
//! Owns nothing; runs once, before anything starts, from `Config::validate` and
//! `ClientConfig::validate`. Each rule here is one a running connection would otherwise
//! break in a confusing way; each caller wraps the message in its own error type and adds
//! the rules only it has.

use std::time::Duration;

/// Smallest read buffer accepted: below it, reading a frame header takes several calls.
pub(crate) const MIN_READ_BUFFER_SIZE: usize = 256;

/// The settings both ends share.
pub(crate) struct ConnectionSettings<'a> {
    /// Named timeouts; `None` means "never" and is always valid.
    pub timeouts: &'a [(&'static str, Option<Duration>)],
    /// How often we ping (`None`: never).
    pub ping_interval: Option<Duration>,
    /// How long silence is tolerated (`None`: forever).
    pub idle_timeout: Option<Duration>,
    /// Messages queued before a sender waits.
    pub queue_size: usize,
    /// Largest message accepted.
    pub max_message_size: usize,
    /// Largest frame accepted.
    pub max_frame_size: usize,
    /// Bytes read at a time.
    pub read_buffer_size: usize,
}

/// The first rule `s` breaks, in words, or `Ok`.
pub(crate) fn check(s: &ConnectionSettings<'_>) -> Result<(), String> {
    for (name, d) in s.timeouts {
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
    if s.queue_size == 0 {
        return Err("queue size must be at least 1".into());
    }
    if s.max_message_size == 0 || s.max_frame_size == 0 {
        return Err("message and frame size limits must be at least 1 byte".into());
    }
    if s.read_buffer_size < MIN_READ_BUFFER_SIZE {
        return Err(format!(
            "read buffer size must be at least {MIN_READ_BUFFER_SIZE} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(timeouts: &'a [(&'static str, Option<Duration>)]) -> ConnectionSettings<'a> {
        ConnectionSettings {
            timeouts,
            ping_interval: Some(Duration::from_secs(1)),
            idle_timeout: Some(Duration::from_secs(2)),
            queue_size: 1,
            max_message_size: 1,
            max_frame_size: 1,
            read_buffer_size: MIN_READ_BUFFER_SIZE,
        }
    }

    #[test]
    fn the_smallest_sane_settings_pass() {
        assert_eq!(check(&settings(&[("write timeout", None)])), Ok(()));
    }

    #[test]
    fn a_zero_timeout_is_named() {
        let err = check(&settings(&[("write timeout", Some(Duration::ZERO))])).unwrap_err();
        assert!(err.contains("write timeout"), "{err}");
    }

    #[test]
    fn a_ping_interval_not_shorter_than_the_idle_timeout_is_refused() {
        let mut s = settings(&[]);
        s.ping_interval = s.idle_timeout;
        assert!(check(&s).unwrap_err().contains("ping interval"));
        s.idle_timeout = None;
        assert_eq!(check(&s), Ok(()));
    }

    #[test]
    fn empty_queues_sizes_and_tiny_buffers_are_refused() {
        let mut s = settings(&[]);
        s.queue_size = 0;
        assert!(check(&s).is_err());
        let mut s = settings(&[]);
        s.max_frame_size = 0;
        assert!(check(&s).is_err());
        let mut s = settings(&[]);
        s.read_buffer_size = MIN_READ_BUFFER_SIZE - 1;
        assert!(check(&s).is_err());
    }
}
