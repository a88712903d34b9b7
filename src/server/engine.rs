//! Whether the channel engine can be reached, for `/healthz`.
//!
//! **Owns** two flags and a count, written by the Redis engine's threads (its command
//! connection and its PUB/SUB connection) and read by any connection thread answering
//! `/healthz` or `/metrics` (`wshub_engine_errors_total`). With the memory engine both
//! flags stay up and the count at zero. Nothing here blocks or wakes anyone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The engine's reachability. Shared (`Arc`) between the engine's threads and the
/// connection threads.
#[derive(Debug)]
pub(crate) struct EngineHealth {
    commands: AtomicBool,
    pubsub: AtomicBool,
    /// Failures of either connection: each failed command, lost connection or failed
    /// attempt to connect.
    errors: AtomicU64,
}

impl EngineHealth {
    /// Up: the memory engine, or a Redis engine before its first failure. A Redis
    /// engine marks its PUB/SUB side down until it has connected once.
    pub(crate) fn up() -> EngineHealth {
        EngineHealth {
            commands: AtomicBool::new(true),
            pubsub: AtomicBool::new(true),
            errors: AtomicU64::new(0),
        }
    }

    /// One more engine failure (a command that failed, a connection lost, an attempt
    /// to connect refused).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Engine failures since the start.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The command connection worked (`true`) or failed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_commands(&self, ok: bool) {
        self.commands.store(ok, Ordering::Relaxed);
    }

    /// The PUB/SUB connection is up (`true`) or down.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn set_pubsub(&self, ok: bool) {
        self.pubsub.store(ok, Ordering::Relaxed);
    }

    /// Why the engine is down, or `None` if it is up.
    pub(crate) fn down(&self) -> Option<&'static str> {
        if !self.pubsub.load(Ordering::Relaxed) {
            Some("engine down: Redis PUB/SUB connection is not established")
        } else if !self.commands.load(Ordering::Relaxed) {
            Some("engine down: Redis command connection failed")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_connection_down_is_engine_down() {
        let h = EngineHealth::up();
        assert_eq!(h.down(), None);
        h.set_pubsub(false);
        assert!(h.down().unwrap().contains("PUB/SUB"));
        h.set_pubsub(true);
        h.set_commands(false);
        assert!(h.down().unwrap().contains("command"));
        h.set_commands(true);
        assert_eq!(h.down(), None);
    }

    #[test]
    fn failures_are_counted_whatever_the_flags_say() {
        let h = EngineHealth::up();
        assert_eq!(h.errors(), 0);
        h.failed();
        h.failed();
        assert_eq!(h.errors(), 2);
        assert_eq!(h.down(), None, "the count says nothing about now");
    }
}
