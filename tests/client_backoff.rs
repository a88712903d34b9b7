//! The reconnect delays with a seeded RNG: within [d, 1.5·d), doubling, capped, reset
//! after a success, and the same for the same seed; the jitter's spread over its whole
//! window; which configurations are valid, and the message for one that is not.

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
fn the_jitter_spreads_delays_over_the_whole_half_delay_window() {
    // With the cap at the initial delay every draw has the same base d = 1 s, so the
    // delays are d + j with j uniform in [0, d/2). Over 2000 draws the extremes come
    // within 2 % of d of both ends (a miss has probability (0.96)^2000 per end, about
    // 1e-35), and each tenth of the window gets its share: a narrower window (say
    // [0, d/4)) or a jitter piled at one end fails here.
    let mut config = BackoffConfig::default();
    config.initial = Duration::from_secs(1);
    config.max = Duration::from_secs(1);
    let mut backoff = Backoff::with_seed(config, 99);
    let draws: Vec<f64> = (0..2000).map(|_| backoff.next_delay().as_secs_f64()).collect();
    let min = draws.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = draws.iter().cloned().fold(0.0, f64::max);
    assert!(
        (1.0..1.02).contains(&min),
        "smallest delay {min} s, expected just above 1 s"
    );
    assert!(
        (1.48..1.5).contains(&max),
        "largest delay {max} s, expected just below 1.5 s"
    );
    let mut tenths = [0usize; 10];
    for d in &draws {
        tenths[((d - 1.0) / 0.05) as usize] += 1;
    }
    // 200 expected in each; 120 is more than five standard deviations (13) below.
    assert!(
        tenths.iter().all(|n| *n >= 120),
        "draws per tenth of the window: {tenths:?}"
    );
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

#[test]
fn the_boundaries_of_a_valid_configuration_are_valid() {
    // A factor of exactly 1 (a constant delay) and a cap equal to the initial delay are
    // allowed; just past either is refused.
    let mut config = BackoffConfig::default();
    config.factor = 1.0;
    config.max = config.initial;
    assert!(config.validate().is_ok(), "{:?}", config.validate());
    config.factor = 0.999;
    assert!(config.validate().is_err());
    config.factor = 1.0;
    config.max = config.initial - Duration::from_nanos(1);
    assert!(config.validate().is_err());
}

#[test]
fn a_refused_configuration_says_which_rule_it_broke() {
    let mut config = BackoffConfig::default();
    config.factor = 0.5;
    let err = config.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "the backoff factor must be a finite number of at least 1"
    );
    let mut config = BackoffConfig::default();
    config.initial = Duration::ZERO;
    assert!(config.validate().unwrap_err().to_string().contains("initial"));
}

#[test]
fn a_backoff_reports_the_configuration_it_follows() {
    let mut config = BackoffConfig::default();
    config.initial = Duration::from_millis(250);
    config.factor = 3.0;
    let backoff = Backoff::with_seed(config, 5);
    assert_eq!(backoff.config(), &config);
}
