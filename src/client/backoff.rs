//! Reconnect delays: exponential backoff with jitter. I/O-free.
//!
//! **Owns** one client's delay sequence: the base delay for the next attempt and the
//! random number generator that draws its jitter. **Runs on** whichever thread asks for
//! the next delay — for [`ReconnectingClient`](crate::client::ReconnectingClient), its
//! supervisor thread. Nothing here blocks, sleeps, or wakes anything: [`Backoff`] only
//! says how long to wait; the caller decides how (the supervisor waits on its stop
//! channel, so a stop ends the wait at once). **Ends** when dropped.
//!
//! # The rule
//!
//! The `n`-th delay after a success (counting from 0) is `d + j`, where
//!
//! - `d = min(initial · factorⁿ, max)` — the base, doubled (by default) after each
//!   failure and capped;
//! - `j` is drawn uniformly from `[0, d/2)` when jitter is on, else `0`.
//!
//! So every delay lies in `[d, 1.5·d)`. [`Backoff::reset`] goes back to `n = 0`; a client
//! calls it once a connection has succeeded.
//!
//! # Why jitter
//!
//! When a server restarts, every client it had loses its connection in the same instant.
//! Without jitter they would all retry after exactly 1 s, then exactly 2 s, and so on: a
//! wall of simultaneous handshakes at each step, which can knock over the new instance.
//! Drawing each delay from `[d, 1.5·d)` spreads the same clients over half a delay. The
//! jitter is only ever added, so no client retries sooner than the base delay promises.
//!
//! ```
//! use std::time::Duration;
//! use wshub::client::backoff::{Backoff, BackoffConfig};
//!
//! let mut backoff = Backoff::with_seed(BackoffConfig::default(), 7);
//! let first = backoff.next_delay();
//! assert!(first >= Duration::from_secs(1) && first < Duration::from_millis(1500));
//! let second = backoff.next_delay();
//! assert!(second >= Duration::from_secs(2) && second < Duration::from_secs(3));
//! backoff.reset(); // a connection succeeded
//! assert!(backoff.next_delay() < Duration::from_millis(1500));
//! ```

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Default first delay: 1 s. Long enough that a server which refuses connections is not
/// hammered, short enough that a brief blip (a restart) costs a user about a second.
pub(crate) const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(1);

/// Default cap on the base delay: 30 s. Beyond that a client that has been away for a
/// while would notice the server's return too late; with jitter the longest wait is 45 s.
pub(crate) const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);

/// Default growth factor: each failure doubles the base delay.
pub(crate) const DEFAULT_FACTOR: f64 = 2.0;

/// How the delays grow. Build it with [`BackoffConfig::default`] and set what you need.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// Base delay before the first retry. Default 1 s.
    pub initial: Duration,
    /// Cap on the base delay; the jitter comes on top. Default 30 s.
    pub max: Duration,
    /// Factor the base delay grows by after each failure; at least 1. Default 2.
    pub factor: f64,
    /// Add a random `[0, d/2)` to each base delay `d`. Default on; turn it off only for
    /// a single client, never for a fleet.
    pub jitter: bool,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: DEFAULT_INITIAL_DELAY,
            max: DEFAULT_MAX_DELAY,
            factor: DEFAULT_FACTOR,
            jitter: true,
        }
    }
}

impl BackoffConfig {
    /// Checks the configuration. [`Backoff`] itself never panics on a bad one (a factor
    /// below 1 or not a number counts as 1; a cap below the initial delay wins), but a
    /// caller taking these values from a user should refuse them with this message.
    pub fn validate(&self) -> Result<(), InvalidBackoff> {
        if self.initial.is_zero() {
            return Err(InvalidBackoff(
                "the initial backoff delay must be greater than zero",
            ));
        }
        if self.max < self.initial {
            return Err(InvalidBackoff(
                "the maximum backoff delay must not be shorter than the initial delay",
            ));
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(InvalidBackoff(
                "the backoff factor must be a finite number of at least 1",
            ));
        }
        Ok(())
    }
}

/// A [`BackoffConfig`] that [`BackoffConfig::validate`] refuses. The message says which
/// rule it broke. Fatal: fix the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidBackoff(&'static str);

impl fmt::Display for InvalidBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidBackoff {}

/// One client's sequence of reconnect delays. See the [module docs](self) for the rule.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    /// Base delay the next call to [`Backoff::next_delay`] starts from.
    base: Duration,
    rng: StdRng,
}

impl Backoff {
    /// A backoff whose jitter is seeded from the operating system, so that clients
    /// started together draw different delays.
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff::from_rng(config, rand::make_rng())
    }

    /// A backoff with a fixed seed: the same seed gives the same delays, for tests.
    pub fn with_seed(config: BackoffConfig, seed: u64) -> Backoff {
        Backoff::from_rng(config, StdRng::seed_from_u64(seed))
    }

    fn from_rng(config: BackoffConfig, rng: StdRng) -> Backoff {
        Backoff {
            config,
            base: config.initial.min(config.max),
            rng,
        }
    }

    /// The configuration this backoff follows.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// The base delay (without jitter) the next call to [`Backoff::next_delay`] uses.
    pub fn current_base(&self) -> Duration {
        self.base
    }

    /// The delay before the next attempt, and one step of growth for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = grow(base, self.config.factor, self.config.max);
        base.saturating_add(self.jitter(base))
    }

    /// Back to the initial delay: call it once a connection has succeeded.
    pub fn reset(&mut self) {
        self.base = self.config.initial.min(self.config.max);
    }

    /// Uniform in `[0, base/2)`, in whole nanoseconds; zero when jitter is off or the
    /// window is empty.
    fn jitter(&mut self, base: Duration) -> Duration {
        if !self.config.jitter {
            return Duration::ZERO;
        }
        // Nanoseconds fit in a u64 for any delay under 584 years; saturate beyond.
        let half = u64::try_from(base.as_nanos() / 2).unwrap_or(u64::MAX);
        if half == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.random_range(0..half))
    }
}

/// `min(base · factor, max)`, without panicking on any input.
fn grow(base: Duration, factor: f64, max: Duration) -> Duration {
    let factor = if factor.is_finite() && factor >= 1.0 {
        factor
    } else {
        1.0
    };
    match Duration::try_from_secs_f64(base.as_secs_f64() * factor) {
        Ok(next) => next.min(max),
        Err(_) => max, // overflow: past any cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn every_delay_is_within_base_and_one_and_a_half_base() {
        let mut b = Backoff::with_seed(BackoffConfig::default(), 1);
        let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0];
        for (i, d) in bases.iter().enumerate() {
            assert_eq!(b.current_base(), secs(*d), "step {i}");
            let delay = b.next_delay();
            assert!(delay >= secs(*d) && delay < secs(d * 1.5), "step {i}: {delay:?}");
        }
    }

    #[test]
    fn without_jitter_the_delays_are_exactly_the_bases() {
        let config = BackoffConfig {
            jitter: false,
            ..BackoffConfig::default()
        };
        let mut b = Backoff::with_seed(config, 0);
        let got: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn reset_goes_back_to_the_initial_delay() {
        let mut b = Backoff::with_seed(BackoffConfig::default(), 2);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.current_base(), secs(1.0));
        assert!(b.next_delay() < secs(1.5));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_others_differ() {
        let run = |seed| {
            let mut b = Backoff::with_seed(BackoffConfig::default(), seed);
            (0..6).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn jitter_covers_the_window() {
        // 2000 draws from [1 s, 1.5 s): both ends of the window are reached.
        let mut b = Backoff::with_seed(BackoffConfig::default(), 3);
        let draws: Vec<Duration> = (0..2000)
            .map(|_| {
                b.reset();
                b.next_delay()
            })
            .collect();
        let lo = draws.iter().min().copied().unwrap_or_default();
        let hi = draws.iter().max().copied().unwrap_or_default();
        assert!(lo < secs(1.01), "{lo:?}");
        assert!(hi > secs(1.49) && hi < secs(1.5), "{hi:?}");
    }

    #[test]
    fn nonsense_configurations_do_not_panic_and_are_refused() {
        let zero = BackoffConfig {
            initial: Duration::ZERO,
            ..BackoffConfig::default()
        };
        assert_eq!(Backoff::with_seed(zero, 0).next_delay(), Duration::ZERO);
        assert!(zero.validate().is_err());

        let shrinking = BackoffConfig {
            factor: 0.5,
            ..BackoffConfig::default()
        };
        let mut b = Backoff::with_seed(shrinking, 0);
        b.next_delay();
        assert_eq!(b.current_base(), secs(1.0));
        assert!(shrinking.validate().is_err());

        let nan = BackoffConfig {
            factor: f64::NAN,
            ..BackoffConfig::default()
        };
        assert!(nan.validate().is_err());
        let _ = Backoff::with_seed(nan, 0).next_delay();

        let huge = BackoffConfig {
            initial: Duration::MAX,
            max: Duration::MAX,
            factor: f64::MAX,
            jitter: true,
        };
        let mut b = Backoff::with_seed(huge, 0);
        assert!(b.next_delay() >= Duration::MAX / 2);
        assert_eq!(b.current_base(), Duration::MAX);

        let cap_below_initial = BackoffConfig {
            max: Duration::from_millis(500),
            ..BackoffConfig::default()
        };
        assert!(cap_below_initial.validate().is_err());
        assert_eq!(Backoff::with_seed(cap_below_initial, 0).current_base(), secs(0.5));

        assert!(BackoffConfig::default().validate().is_ok());
    }
}
