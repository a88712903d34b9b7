//! The poison-tolerant lock, one for the whole crate.
//!
//! Owns nothing. Every `Mutex` in wshub guards plain data (flags, an `Option`, a
//! handle) that a panic cannot leave half-updated, so a poisoned lock is still usable:
//! taking it anyway keeps one panicking handler from wedging a connection or a client.

use std::sync::{Mutex, MutexGuard, TryLockError};

/// Takes the lock, waiting for it, whether or not a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes the lock if nobody holds it, whether or not a holder panicked; never waits.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = Mutex::new(1);
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = m.lock().unwrap();
                panic!("poison it");
            })
            .join()
        });
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(try_lock(&m).map(|g| *g), Some(2));
    }

    #[test]
    fn try_lock_does_not_wait_for_a_holder() {
        let m = Mutex::new(());
        let _held = lock(&m);
        assert!(try_lock(&m).is_none());
    }
}
