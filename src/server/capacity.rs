//! How many connections this machine can actually hold, read once at start.
//!
//! Owns nothing and runs once, on the thread that starts the server. Each connection
//! costs one thread (its reader) and four memory mappings (the thread's stack and its
//! guard page, and the alternate signal stack Rust gives every thread, with its guard
//! page). Writer threads are started only while frames wait for a client's socket (see
//! [`crate::server::writer`]), and each costs the same again: the ceiling reserves room for
//! [`writer_budget`] of them (one per 16 connections) and for the spare connection threads
//! that wait between two connections (`Config::spare_readers`, see
//! [`crate::server::spare`]), and a server may run as many as
//! [`writers_allowed`] (all the room its limits leave beside its readers) at once. When the kernel refuses a
//! mapping, the damage is worse than a refused client: a new thread whose signal stack
//! cannot be mapped aborts the whole process. So `max_connections` is lowered at start to
//! what `vm.max_map_count` and the thread limits (`kernel.threads-max`, `kernel.pid_max`,
//! `RLIMIT_NPROC`) allow for the connections and their writer budget together, with a
//! warning that names the limit; past it, clients get `503` instead of a crash, and a
//! writer past the budget cuts its connection instead of spawning. File descriptors are
//! not counted here: running out of them is survived by design (`accept` backs off, see
//! [`crate::server::accept`]).
//!
//! The arithmetic ([`ceiling`], [`writer_budget`], [`writers_allowed`]) is I/O-free; [`SystemLimits::read`] is
//! the thin shell.

use std::fs;

/// Threads every connection holds for its whole life: its reader.
pub const THREADS_PER_CONNECTION: u64 = 1;
/// Memory mappings per thread: the stack, its guard page, the alternate signal stack and
/// its guard page.
pub const MAPS_PER_THREAD: u64 = 4;

/// One writer thread may run per this many connections at once. A writer runs only while
/// a client's socket is full (or for `writer_idle` after): in a healthy server a few
/// clients at a time, and a client that stays behind is cut as a slow consumer once its
/// queue fills. One in sixteen (6 %) leaves 15 000 connections room in the default
/// `vm.max_map_count` (65 530) and still lets hundreds of clients lag at once.
pub const CONNECTIONS_PER_WRITER: usize = 16;
/// The budget's floor, so that a small server can still have many slow clients at once.
pub const MIN_WRITERS: usize = 64;

/// The writer threads [`ceiling`] reserves room for beside `max_connections` readers: the
/// least a server of that size is allowed to run at once.
pub fn writer_budget(max_connections: usize) -> usize {
    max_connections.div_ceil(CONNECTIONS_PER_WRITER).max(MIN_WRITERS)
}

/// Writer threads a server of `connections` (at most its [`ceiling`]) with `spare` spare
/// readers may run at once: all the room the limits leave beside its readers, never less
/// than [`writer_budget`] and never more than one per connection (with the budget's
/// floor). A default server of 10 000 connections at the default `vm.max_map_count` may
/// so run about 6 000 writers, not just the 625 the ceiling reserves.
pub fn writers_allowed(l: &SystemLimits, connections: usize, spare: usize) -> usize {
    let floor = writer_budget(connections);
    let readers = connections.saturating_add(spare);
    let room = threads_within(l).map_or(usize::MAX, |t| t.saturating_sub(readers));
    room.min(connections.max(floor)).max(floor)
}

/// Connection threads the limits leave room for (after the margins), `None` when no
/// limit is known.
fn threads_within(l: &SystemLimits) -> Option<usize> {
    let by = |limit: Option<u64>, used: u64, margin: u64, per_thread: u64| {
        limit.map(|max| max.saturating_sub(used).saturating_sub(margin) / per_thread)
    };
    [
        by(l.max_map_count, l.maps_in_use, MAP_MARGIN, MAPS_PER_THREAD),
        by(l.max_threads, l.threads_in_use, THREAD_MARGIN, 1),
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|t| usize::try_from(t).unwrap_or(usize::MAX))
}

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

/// The most connections the limits allow, with their writer budget and `spare` spare
/// readers (connection threads between two connections, see
/// [`crate::server::spare`]), and the name of the tightest limit.
pub fn ceiling(l: &SystemLimits, spare: usize) -> Option<(usize, &'static str)> {
    // Threads the limit leaves, and the most connections whose readers and writer budget
    // fit in them.
    let by = |limit: Option<u64>, used: u64, margin: u64, per_thread: u64, name: &'static str| {
        limit.map(|max| {
            let threads = max.saturating_sub(used).saturating_sub(margin) / per_thread;
            (connections_within(threads.saturating_sub(spare as u64)), name)
        })
    };
    [
        by(
            l.max_map_count,
            l.maps_in_use,
            MAP_MARGIN,
            MAPS_PER_THREAD,
            "vm.max_map_count",
        ),
        by(
            l.max_threads,
            l.threads_in_use,
            THREAD_MARGIN,
            1,
            "the thread limit",
        ),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|(n, _)| *n)
}

/// The most connections `n` whose readers and writer budget together take at most
/// `threads` threads: `n * THREADS_PER_CONNECTION + writer_budget(n) <= threads`.
fn connections_within(threads: u64) -> usize {
    let threads = usize::try_from(threads).unwrap_or(usize::MAX);
    let fits = |n: usize| {
        n.checked_mul(THREADS_PER_CONNECTION as usize)
            .and_then(|t| t.checked_add(writer_budget(n)))
            .is_some_and(|t| t <= threads)
    };
    // Both sides grow with `n`: bisect for the largest that fits.
    let (mut lo, mut hi) = (0usize, threads);
    if !fits(lo) {
        return 0;
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
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

    /// Linux's default `vm.max_map_count`, with 300 mappings in use, and nothing else known.
    const DEFAULT_MAP_COUNT: SystemLimits = SystemLimits {
        max_map_count: Some(65530),
        maps_in_use: 300,
        max_threads: None,
        threads_in_use: 0,
    };

    #[test]
    fn the_default_map_count_allows_fifteen_thousand_connections() {
        let l = DEFAULT_MAP_COUNT;
        let spare = crate::server::config::DEFAULT_SPARE_READERS;
        let (n, limit) = ceiling(&l, spare).unwrap();
        assert_eq!(limit, "vm.max_map_count");
        assert!(n >= 15_000, "{n}");
        // And it is the most that fits: readers, the spares and the writer budget, four
        // maps each.
        let maps = |n: usize| (n + spare + writer_budget(n)) as u64 * MAPS_PER_THREAD;
        assert!(maps(n) <= 65530 - 300 - MAP_MARGIN);
        assert!(maps(n + 1) > 65530 - 300 - MAP_MARGIN);
    }

    #[test]
    fn the_writer_budget_is_one_in_sixteen_connections_with_a_floor() {
        assert_eq!(writer_budget(16_000), 1000);
        assert_eq!(writer_budget(16_001), 1001);
        assert_eq!(writer_budget(100), MIN_WRITERS);
        assert_eq!(writer_budget(0), MIN_WRITERS);
    }

    #[test]
    fn writers_get_the_room_the_limits_leave_beside_the_readers() {
        let l = DEFAULT_MAP_COUNT;
        let threads = (65530 - 300 - MAP_MARGIN as usize) / MAPS_PER_THREAD as usize;
        assert_eq!(writers_allowed(&l, 10_000, 0), threads - 10_000);
        assert_eq!(writers_allowed(&l, 10_000, 64), threads - 10_064);
        // At the ceiling, what the ceiling reserved.
        let (n, _) = ceiling(&l, 64).unwrap();
        assert!(writers_allowed(&l, n, 64) >= writer_budget(n));
        assert!(n + 64 + writers_allowed(&l, n, 64) <= threads);
        // Never more than one per connection; the floor for a small server.
        assert_eq!(writers_allowed(&l, 100, 64), 100);
        assert_eq!(writers_allowed(&l, 10, 64), MIN_WRITERS);
        // No known limit: one per connection.
        assert_eq!(writers_allowed(&SystemLimits::default(), 20_000, 64), 20_000);
    }

    #[test]
    fn the_ceiling_leaves_room_for_the_writer_budget() {
        // 1000 threads: readers and their budget's writers together stay within them.
        assert_eq!(connections_within(1000), 1000 - MIN_WRITERS);
        assert_eq!(connections_within(17_000), 16_000);
        assert_eq!(connections_within(MIN_WRITERS as u64), 0);
        assert_eq!(connections_within(0), 0);
    }

    #[test]
    fn the_tightest_limit_wins() {
        let l = SystemLimits {
            max_map_count: Some(1 << 20),
            maps_in_use: 0,
            max_threads: Some(32768),
            threads_in_use: 4,
        };
        assert_eq!(
            ceiling(&l, 0),
            Some((connections_within(32768 - 4 - 64), "the thread limit"))
        );
        let l = SystemLimits {
            max_map_count: Some(65530),
            ..l
        };
        assert_eq!(ceiling(&l, 0).map(|c| c.1), Some("vm.max_map_count"));
    }

    #[test]
    fn the_ceiling_leaves_room_for_the_spare_readers() {
        let l = SystemLimits {
            max_threads: Some(10_000),
            ..SystemLimits::default()
        };
        let (without, _) = ceiling(&l, 0).unwrap();
        let (with, _) = ceiling(&l, 500).unwrap();
        assert_eq!(without, connections_within(10_000 - THREAD_MARGIN));
        assert_eq!(with, connections_within(10_000 - THREAD_MARGIN - 500));
        assert!(with < without);
    }

    #[test]
    fn no_known_limit_means_no_ceiling() {
        assert_eq!(ceiling(&SystemLimits::default(), 64), None);
    }

    #[test]
    fn limits_below_the_margins_give_zero_not_an_underflow() {
        let l = SystemLimits {
            max_threads: Some(10),
            threads_in_use: 20,
            ..SystemLimits::default()
        };
        assert_eq!(ceiling(&l, 64).map(|c| c.0), Some(0));
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
        assert!(ceiling(&l, 64).is_some());
    }
}
