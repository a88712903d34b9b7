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

    /// Takes `n` messages at `at` and checks that the next one is refused.
    fn allows_exactly(r: &mut RateLimiter, n: u32, at: Instant) {
        assert!((0..n).all(|_| r.allow(at)), "fewer than {n} allowed");
        assert!(!r.allow(at), "more than {n} allowed");
    }

    #[test]
    fn a_burst_of_rate_messages_is_allowed_then_refused() {
        let t = Instant::now();
        allows_exactly(&mut RateLimiter::new(5, t), 5, t);
    }

    #[test]
    fn tokens_refill_with_time() {
        let t = Instant::now();
        let mut r = RateLimiter::new(10, t);
        allows_exactly(&mut r, 10, t);
        allows_exactly(&mut r, 1, t + Duration::from_millis(100));
    }

    #[test]
    fn the_bucket_never_holds_more_than_one_second() {
        let t = Instant::now();
        allows_exactly(&mut RateLimiter::new(3, t), 3, t + Duration::from_secs(60));
    }
}
