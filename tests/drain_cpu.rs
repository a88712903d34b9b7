//! The hub sleeps through a drain: with pings no longer sent once the drain has begun,
//! it must not keep waking for pings that have come due (it would spin, since nothing
//! reschedules them). A test binary of its own, so this process has one hub thread and
//! its CPU time is this test's alone.

mod support;

use std::thread;
use std::time::Duration;

use support::*;

/// CPU time (user + system) of this process's thread named `name`, from /proc.
fn thread_cpu(name: &str) -> Duration {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    let mut found = None;
    for task in tasks.map_while(Result::ok) {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            assert!(found.is_none(), "two threads named {name}");
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            // Fields after the command name (which ends with the last ')'): state is
            // field 3, utime 14 and stime 15.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
            // SAFETY: sysconf(3) has no preconditions.
            let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
            found = Some(Duration::from_millis(ticks * 1000 / per_sec));
        }
    }
    found.unwrap_or_else(|| panic!("no thread named {name}"))
}

#[test]
fn the_hub_sleeps_through_a_drain_even_with_pings_due() {
    watchdog(Duration::from_secs(30), || {
        let mut config = test_config();
        config.ping_interval = Duration::from_millis(20);
        config.idle_timeout = Duration::from_secs(10);
        config.drain_timeout = Duration::from_secs(3);
        let server = start(config);
        // A client that never answers the Close keeps the drain going to its deadline;
        // its ping falls due 20 ms after it registered, during the drain.
        let mut mute = Raw::connect(server.local_addr(), "/echo");
        let drain = thread::spawn(move || server.shutdown());
        assert_eq!(mute.read_close_code(), Some(1001));
        // Well past the ping's due time; then a full second of the drain, measured.
        thread::sleep(Duration::from_millis(200));
        let before = thread_cpu("wshub-hub");
        thread::sleep(Duration::from_secs(1));
        let used = thread_cpu("wshub-hub") - before;
        // A sleeping hub uses nothing measurable (clock ticks are 10 ms); a spinning one
        // a large share of a core even on a loaded machine.
        assert!(
            used < Duration::from_millis(100),
            "the hub used {used:?} of CPU in one second of the drain"
        );
        drop(mute);
        let report = drain.join().unwrap();
        assert_eq!(report.connections, 1);
    });
}
