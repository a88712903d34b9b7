//! How many connections this machine can actually hold, read once at start.
//!
//! Owns nothing and runs once, on the thread that starts the server. Each connection
//! costs two threads and eight memory mappings (each thread's stack and its guard page,
//! and the alternate signal stack Rust gives every thread, with its guard page). When the
//! kernel refuses a mapping, the damage is worse than a refused client: a new thread
//! whose signal stack cannot be mapped aborts the whole process. So `max_connections` is
//! lowered at start to what `vm.max_map_count` and the thread limits (`kernel.threads-max`,
//! `kernel.pid_max`, `RLIMIT_NPROC`) allow, with a warning that names the limit; past it,
//! clients get `503` instead of a crash. File descriptors are not counted here: running
//! out of them is survived by design (`accept` backs off, see [`crate::server::accept`]).
//!
//! The arithmetic ([`ceiling`]) is I/O-free; [`SystemLimits::read`] is the thin shell.

use std::fs;

/// Threads per connection: its reader and its writer.
pub const THREADS_PER_CONNECTION: u64 = 2;
/// Memory mappings per connection: per thread, the stack, its guard page, the
/// alternate signal stack and its guard page.
pub const MAPS_PER_CONNECTION: u64 = 8;

/// Mappings kept free for the allocator's arenas, libraries and growth.
const MAP_MARGIN: u64 = 1024;
/// Threads kept free for the server's own threads and the embedding program's.
const THREAD_MARGIN: u64 = 64;

/// The limits that bound connections; `None` where unknown or unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemLimits {
    /// `vm.max_map_count`.
    pub max_map_count: Option<u64>,
    /// Mappings the process already has.
    pub maps_in_use: u64,
    /// The smallest of `kernel.threads-max`, `kernel.pid_max` and `RLIMIT_NPROC`.
    pub max_threads: Option<u64>,
    /// Threads the process already has.
    pub threads_in_use: u64,
}

/// The most connections the limits allow, and the name of the tightest limit.
pub fn ceiling(l: &SystemLimits) -> Option<(usize, &'static str)> {
    let by = |limit: Option<u64>, used: u64, margin: u64, per: u64, name: &'static str| {
        limit.map(|max| (max.saturating_sub(used).saturating_sub(margin) / per, name))
    };
    [
        by(
            l.max_map_count,
            l.maps_in_use,
            MAP_MARGIN,
            MAPS_PER_CONNECTION,
            "vm.max_map_count",
        ),
        by(
            l.max_threads,
            l.threads_in_use,
            THREAD_MARGIN,
            THREADS_PER_CONNECTION,
            "the thread limit",
        ),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(n, _)| *n)
    .map(|(n, name)| (usize::try_from(n).unwrap_or(usize::MAX), name))
}

/// One line on how to raise `limit` (a name [`ceiling`] returns), for the start-up log.
pub fn how_to_raise(limit: &str) -> &'static str {
    match limit {
        "vm.max_map_count" => "for more, run `sysctl -w vm.max_map_count=262144` as root",
        _ => "for more, raise `ulimit -u` or the sysctls kernel.pid_max and kernel.threads-max",
    }
}

impl SystemLimits {
    /// Reads the limits from /proc (`RLIMIT_NPROC` from `/proc/self/limits`). Anything unreadable is `None`.
    pub fn read() -> SystemLimits {
        let proc_u64 = |path: &str| fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
        let count_lines = |path: &str| {
            fs::read_to_string(path)
                .map(|s| s.lines().count() as u64)
                .unwrap_or(0)
        };
        let threads_in_use = fs::read_dir("/proc/self/task")
            .map(|d| d.count() as u64)
            .unwrap_or(1);
        let max_threads = [
            proc_u64("/proc/sys/kernel/threads-max"),
            proc_u64("/proc/sys/kernel/pid_max"),
            fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|l| soft_limit(&l, "Max processes")),
        ]
        .into_iter()
        .flatten()
        .min();
        SystemLimits {
            max_map_count: proc_u64("/proc/sys/vm/max_map_count"),
            maps_in_use: count_lines("/proc/self/maps"),
            max_threads,
            threads_in_use,
        }
    }
}

/// The soft limit named `name` in a `/proc/<pid>/limits` text (`Max processes`, ...),
/// `None` when unlimited, absent or unreadable. Reading the file rather than calling
/// getrlimit(2) keeps this module to safe code, with no dependency for one call.
fn soft_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_map_count_allows_about_eight_thousand_connections() {
        let l = SystemLimits {
            max_map_count: Some(65530),
            maps_in_use: 100,
            ..SystemLimits::default()
        };
        assert_eq!(ceiling(&l), Some(((65530 - 100 - 1024) / 8, "vm.max_map_count")));
    }

    #[test]
    fn the_tightest_limit_wins() {
        let l = SystemLimits {
            max_map_count: Some(1 << 20),
            maps_in_use: 0,
            max_threads: Some(32768),
            threads_in_use: 4,
        };
        assert_eq!(ceiling(&l), Some(((32768 - 4 - 64) / 2, "the thread limit")));
        let l = SystemLimits {
            max_map_count: Some(65530),
            ..l
        };
        assert_eq!(ceiling(&l).map(|c| c.1), Some("vm.max_map_count"));
    }

    #[test]
    fn no_known_limit_means_no_ceiling() {
        assert_eq!(ceiling(&SystemLimits::default()), None);
    }

    #[test]
    fn limits_below_the_margins_give_zero_not_an_underflow() {
        let l = SystemLimits {
            max_threads: Some(10),
            threads_in_use: 20,
            ..SystemLimits::default()
        };
        assert_eq!(ceiling(&l).map(|c| c.0), Some(0));
    }

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max processes             4096                 63704                processes \n\
        Max open files            1024                 1048576              files     \n";

    #[test]
    fn the_soft_process_limit_is_read_from_proc_limits() {
        assert_eq!(soft_limit(LIMITS, "Max processes"), Some(4096));
        assert_eq!(soft_limit(LIMITS, "Max open files"), Some(1024));
    }

    #[test]
    fn an_unlimited_or_missing_limit_is_none() {
        assert_eq!(soft_limit(LIMITS, "Max cpu time"), None);
        assert_eq!(soft_limit(LIMITS, "Max locked memory"), None);
    }

    #[test]
    fn this_machine_has_readable_limits() {
        let l = SystemLimits::read();
        assert!(l.maps_in_use > 0);
        assert!(l.threads_in_use >= 1);
        assert!(ceiling(&l).is_some());
    }
}
