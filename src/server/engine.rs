//! Whether the channel engine can be reached, for `/healthz`.
//!
//! **Owns** two flags, written by the Redis engine's threads (its command connection and
//! its PUB/SUB connection) and read by any connection thread answering `/healthz`. With
//! the memory engine both stay up. Nothing here blocks or wakes anyone.

use std::sync::atomic::{AtomicBool, Ordering};

/// The engine's reachability. Shared (`Arc`) between the engine's threads and the
/// connection threads.
#[derive(Debug)]
pub(crate) struct EngineHealth {
    commands: AtomicBool,
    pubsub: AtomicBool,
}

impl EngineHealth {
    /// Up: the memory engine, or a Redis engine before its first failure. A Redis
    /// engine marks its PUB/SUB side down until it has connected once.
    pub(crate) fn up() -> EngineHealth {
        EngineHealth {
            commands: AtomicBool::new(true),
            pubsub: AtomicBool::new(true),
        }
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
}
