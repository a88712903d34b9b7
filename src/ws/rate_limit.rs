//! Per-connection message rate limit: a token bucket. I/O-free.
//!
//! Owned by one connection's reader thread; the caller passes the time in, so tests
//! need no clock. A bucket of `rate` tokens refilled at `rate` per second lets a client
//! burst up to one second's worth, then holds it to the average. What happens over the
//! limit is the caller's: the reader closes with 1008 (`max_message_rate`), a publisher
//! waits for the [`delay`](RateLimiter::delay) (`max_publish_rate`).

use std::time::{Duration, Instant};

/// A token bucket allowing `rate` messages per second on average.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket for `rate` messages per second, starting at `now`.
    pub fn new(rate: u32, now: Instant) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes a token for one message arriving at `now`; `false` when over the limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.delay(now).is_zero()
    }

    /// Takes a token for one message at `now` if there is one (`Duration::ZERO`);
    /// otherwise takes nothing and says how long until there is one.
    pub fn delay(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_rate_messages_is_allowed_then_refused() {
        let t = Instant::now();
        let mut r = RateLimiter::new(5, t);
        assert!((0..5).all(|_| r.allow(t)));
        assert!(!r.allow(t));
    }

    #[test]
    fn tokens_refill_with_time() {
        let t = Instant::now();
        let mut r = RateLimiter::new(10, t);
        assert!((0..10).all(|_| r.allow(t)));
        assert!(!r.allow(t));
        assert!(r.allow(t + Duration::from_millis(100)));
        assert!(!r.allow(t + Duration::from_millis(100)));
    }

    #[test]
    fn the_bucket_never_holds_more_than_one_second() {
        let t = Instant::now();
        let mut r = RateLimiter::new(3, t);
        let later = t + Duration::from_secs(60);
        assert!((0..3).all(|_| r.allow(later)));
        assert!(!r.allow(later));
    }
}
