//! The reconnect delays with a seeded RNG: within [d, 1.5·d), doubling, capped, reset
//! after a success, and the same for the same seed.

use std::time::Duration;

use wshub::client::backoff::{Backoff, BackoffConfig};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn the_backoff_sequence_with_a_seeded_rng_doubles_caps_jitters_and_resets() {
    let config = BackoffConfig::default(); // 1 s, x2, 30 s cap, jitter on
    let mut backoff = Backoff::with_seed(config, 2024);
    let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0];

    let mut first_run = Vec::new();
    for (step, d) in bases.iter().enumerate() {
        let delay = backoff.next_delay();
        assert!(
            delay >= secs(*d) && delay < secs(d * 1.5),
            "step {step}: {delay:?} is outside [{d} s, {} s)",
            d * 1.5
        );
        first_run.push(delay);
    }
    // The jitter is really there: not every delay sits on its base.
    assert!(first_run.iter().zip(bases).any(|(delay, d)| *delay != secs(d)));

    // A success resets to the initial delay.
    backoff.reset();
    let after_reset = backoff.next_delay();
    assert!(
        after_reset >= secs(1.0) && after_reset < secs(1.5),
        "{after_reset:?}"
    );
    let next = backoff.next_delay();
    assert!(next >= secs(2.0) && next < secs(3.0), "{next:?}");

    // Deterministic: the same seed draws the same delays.
    let mut again = Backoff::with_seed(config, 2024);
    let second_run: Vec<Duration> = bases.iter().map(|_| again.next_delay()).collect();
    assert_eq!(first_run, second_run);
}

#[test]
fn jitter_off_gives_exactly_the_doubling_capped_sequence() {
    let mut config = BackoffConfig::default();
    config.jitter = false;
    config.initial = Duration::from_millis(100);
    config.max = Duration::from_millis(1000);
    config.factor = 3.0;
    let mut backoff = Backoff::with_seed(config, 0);
    let got: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
    assert_eq!(got, [100, 300, 900, 1000, 1000]);
}
