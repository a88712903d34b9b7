//! SIGINT and SIGTERM for both subcommands: the first signal starts an orderly end,
//! a second one exits at once.
//!
//! ctrlc runs the handler on a thread of its own, so `first` may log and send on
//! channels; it must not block for long.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Exit status for a second signal: 128 + SIGINT, as shells report an interrupted program.
const EXIT_SECOND_SIGNAL: i32 = 130;

/// Installs the handler: `first` runs on the first signal; a second prints `what` was
/// cut short (`draining`, `closing`) and exits with 130.
pub fn on_signal(first: impl Fn() + Send + 'static, what: &'static str) -> Result<(), ctrlc::Error> {
    let signals = AtomicUsize::new(0);
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) == 0 {
            first();
        } else {
            eprintln!("second signal: exiting without {what}");
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
    })
}
