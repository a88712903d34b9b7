//! The `since` decision: can a client that last saw `since` be given exactly what it
//! missed? I/O-free, one pure function.
//!
//! **Owns** nothing; called by the channel state on `sub` and `history` with `since`.
//! The rule (Centrifugo's): recovery succeeds only when `since` names the channel's
//! current epoch, is not past its top, and every publication after it is still in
//! history. Anything else is `recovered: false`, and the client must reload its state
//! from the application: the server cannot say what it missed.

use crate::pubsub::history::History;

/// The outcome of a `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery<P> {
    /// Every publication after `since`, oldest first (empty when nothing was missed).
    Recovered(Vec<P>),
    /// Not recoverable: another epoch, a position past the top, or some publications
    /// have left history.
    Lost,
}

/// Decides what a client at (`since_epoch`, `since_offset`) gets from a channel at
/// (`epoch`, `top`) with `history`, which must be expired up to now.
pub fn recover<P: Clone>(
    epoch: &str,
    top: u64,
    history: &History<P>,
    since_epoch: &str,
    since_offset: u64,
) -> Recovery<P> {
    if since_epoch != epoch {
        return Recovery::Lost;
    }
    match history.after(since_offset, top) {
        Some(pubs) => Recovery::Recovered(pubs),
        None => Recovery::Lost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::history::TEST_TTL;
    use std::time::Instant;

    #[test]
    fn same_epoch_and_all_in_history_recovers_exactly_the_missed() {
        let h = History::filled(100, 10, Instant::now());
        assert_eq!(recover("e", 10, &h, "e", 7), Recovery::Recovered(vec![8, 9, 10]));
    }

    #[test]
    fn at_the_top_recovers_nothing_missed() {
        let h = History::filled(100, 10, Instant::now());
        assert_eq!(recover("e", 10, &h, "e", 10), Recovery::Recovered(vec![]));
    }

    #[test]
    fn another_epoch_is_lost() {
        let h = History::filled(100, 10, Instant::now());
        assert_eq!(recover("e2", 10, &h, "e1", 10), Recovery::Lost);
        assert_eq!(recover("e2", 10, &h, "e1", 3), Recovery::Lost);
    }

    #[test]
    fn more_missed_than_history_is_lost() {
        let h = History::filled(5, 20, Instant::now()); // keeps 16..=20
        assert_eq!(
            recover("e", 20, &h, "e", 15),
            Recovery::Recovered(vec![16, 17, 18, 19, 20])
        );
        assert_eq!(recover("e", 20, &h, "e", 14), Recovery::Lost);
    }

    #[test]
    fn a_position_past_the_top_is_lost() {
        let h = History::filled(100, 10, Instant::now());
        assert_eq!(recover("e", 10, &h, "e", 11), Recovery::Lost);
    }

    #[test]
    fn expired_history_is_lost_unless_nothing_was_missed() {
        let t0 = Instant::now();
        let mut h = History::filled(100, 10, t0);
        h.expire(t0 + TEST_TTL);
        assert_eq!(recover("e", 10, &h, "e", 9), Recovery::Lost);
        assert_eq!(recover("e", 10, &h, "e", 10), Recovery::Recovered(vec![]));
    }
}
