//! Sampling a process and the machine from /proc.

use std::fs;

/// Clock ticks per second for utime/stime.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process, in clock ticks (all its threads, live and exited).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of each thread of a process, in clock ticks, by thread name (threads
/// with one name summed).
pub fn thread_ticks(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(s) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let name = s[open + 1..close].to_owned();
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        *out.entry(name).or_default() += t;
    }
    out
}

/// Process state letter from /proc/PID/stat ('Z' zombie), None when gone.
pub fn state(pid: u32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// A `Key:  value kB` field of /proc/PID/status (VmRSS, Threads, ...).
pub fn status_field(pid: &str, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field(&s, key)
}

/// A field of /proc/meminfo in KiB (MemAvailable, KernelStack, Slab, PageTables, ...).
pub fn meminfo(key: &str) -> Option<u64> {
    field(&fs::read_to_string("/proc/meminfo").ok()?, key)
}

fn field(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Pages of memory held by TCP socket buffers system-wide (/proc/net/sockstat "TCP: ... mem N").
pub fn tcp_mem_pages() -> Option<u64> {
    let s = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Memory snapshot for the idle mode.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub server_rss: u64,
    pub server_threads: u64,
    pub loadgen_rss: u64,
    pub mem_available: u64,
    pub kernel_stack: u64,
    pub slab: u64,
    pub page_tables: u64,
    pub tcp_mem: u64,
}

pub fn mem(pid: u32) -> Mem {
    let p = pid.to_string();
    Mem {
        server_rss: status_field(&p, "VmRSS").unwrap_or(0),
        server_threads: status_field(&p, "Threads").unwrap_or(0),
        loadgen_rss: status_field("self", "VmRSS").unwrap_or(0),
        mem_available: meminfo("MemAvailable").unwrap_or(0),
        kernel_stack: meminfo("KernelStack").unwrap_or(0),
        slab: meminfo("Slab").unwrap_or(0),
        page_tables: meminfo("PageTables").unwrap_or(0),
        tcp_mem: tcp_mem_pages().unwrap_or(0) * page_kib(),
    }
}

fn page_kib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 / 1024 } else { 4 }
}

/// Memory mappings of a process (vm.max_map_count bounds them).
pub fn map_count(pid: u32) -> Option<usize> {
    Some(
        fs::read_to_string(format!("/proc/{pid}/maps"))
            .ok()?
            .lines()
            .count(),
    )
}

/// (busy, steal, total) jiffies of one CPU from /proc/stat ("cpuN" line). Busy excludes
/// idle, iowait and steal (time the hypervisor gave to someone else).
pub fn core_jiffies(core: u32) -> Option<(u64, u64, u64)> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)?;
    let steal = *v.get(7)?;
    let total = busy + v.get(3)? + v.get(4)? + steal;
    Some((busy, steal, total))
}

/// Nanoseconds a task has spent on a CPU and waiting on a run queue (runnable but not
/// running), from a `schedstat` file (`/proc/thread-self/schedstat`, or one of
/// [`thread_schedstat_path`]).
pub fn schedstat(path: &str) -> Option<(u64, u64)> {
    let s = fs::read_to_string(path).ok()?;
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The `schedstat` file of `pid`'s first thread named `name`.
pub fn thread_schedstat_path(pid: u32, name: &str) -> Option<String> {
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(comm) = fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() == name {
            return Some(e.path().join("schedstat").to_string_lossy().into_owned());
        }
    }
    None
}
