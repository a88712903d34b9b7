//! The servers under test: starts `wshub serve` (one node, or two sharing a
//! `redis-server` this module also starts), restarts a node (SIGTERM, drain, start again
//! on the same port), and samples each node from /proc.
//!
//! **Owns** the nodes' child processes ([`Server`]) and the redis-server's ([`Redis`]);
//! the run's main thread holds them and is the only one to restart them. Each node has a
//! [`Sampler`] thread that owns its samples log and reads the node's current pid from a
//! shared cell; **woken** by its one-second timer, **ended** by its stop flag. The
//! lifetime counter of whatever holds the idempotency keys (the server in memory mode, the
//! redis-server in Redis mode) is shared (read-only) with every worker, so an ack can be
//! tied to the lifetime it came from. The redis-server **ends** when its [`Redis`] is
//! stopped or dropped (SIGKILL by PID; it persists nothing), so a failed run leaves none
//! behind.

use crate::event::{Event, LogFile};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a server may take to answer `/healthz` after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd server may take to drain and exit before it is killed (and the
/// checker told so). Well above the server's `--drain-timeout`.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `wshub serve`.
pub struct Server {
    pub child: Child,
}

impl Server {
    /// Starts `cmd` (the server and its flags; `cmd[0]` may be a wrapper such as
    /// `prlimit`) with its stderr and stdout appended to `log`, then waits until it
    /// answers `/healthz`.
    pub fn start(cmd: &[String], addr: SocketAddr, log: &Path) -> Result<Server, String> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cmd[0]))?;
        let mut s = Server { child };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !healthy(addr) {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!("server exited at start: {st} (see {})", log.display()));
            }
            if Instant::now() > deadline {
                s.kill();
                return Err(format!(
                    "server not ready in {READY_TIMEOUT:?} (see {})",
                    log.display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(s)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits for the drain; returns the exit code (`None`: it had to be
    /// killed, or died of a signal).
    pub fn terminate(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return st.code(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /healthz` answers 200.
pub fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

/// A free port on 127.0.0.1 (bound, then let go, so the server can take it).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Threads, open fds and RSS (KiB) of `pid`, from /proc. `None` once it is gone.
pub fn probe(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((field("Threads:")?, fds, field("VmRSS:")?))
}

/// A `redis-server` of the run's own: 127.0.0.1 on a free port, its working directory in
/// the run's directory, persisting nothing (so a restart starts empty).
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

/// How long a started redis-server may take to answer `PING`.
pub const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Redis {
    /// Starts one in `dir` (created), logging to `dir/redis.log`.
    pub fn start(dir: &Path) -> Result<Redis, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut r = Redis {
            child: None,
            port: free_addr().port(),
            dir: dir.to_path_buf(),
            log: dir.join("redis.log"),
        };
        r.up()?;
        Ok(r)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again, empty) on its port and waits for `PING`.
    pub fn up(&mut self) -> Result<(), String> {
        self.down();
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_READY_TIMEOUT;
        while !self.pong() {
            if Instant::now() > deadline {
                self.down();
                return Err(format!(
                    "redis-server did not answer PING in {REDIS_READY_TIMEOUT:?} (see {})",
                    self.log.display()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills it (SIGKILL, by PID) and reaps it: everything it held is gone.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 5];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

/// What the sampler reads each second: the pid to sample, its lifetime, and the phase.
#[derive(Clone)]
pub struct Watch(Arc<Mutex<(u32, u64, &'static str)>>);

impl Watch {
    pub fn new(pid: u32) -> Watch {
        Watch(Arc::new(Mutex::new((pid, 0, "baseline"))))
    }
    pub fn set(&self, pid: u32, life: u64) {
        let mut w = self.0.lock().expect("watch");
        w.0 = pid;
        w.1 = life;
    }
    pub fn phase(&self, phase: &'static str) {
        self.0.lock().expect("watch").2 = phase;
    }
    fn get(&self) -> (u32, u64, &'static str) {
        *self.0.lock().expect("watch")
    }
}

/// Samples the watched process every second into `samples.jsonl` (`samples-nN.jsonl`
/// for node N of a several-node run) until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Sampler {
    pub fn start(dir: &Path, node: Option<u64>, watch: Watch, t0: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let name = node.map_or("samples".to_string(), |n| format!("samples-n{n}"));
        let mut log = LogFile::create(dir, &name).expect("samples log");
        let node = node.unwrap_or(0);
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            while !flag.load(Ordering::Acquire) {
                let (pid, life, phase) = watch.get();
                if let Some((threads, fds, rss_kib)) = probe(pid) {
                    log.log(&Event::Sample {
                        t: t0.elapsed().as_secs_f64(),
                        node,
                        life,
                        phase: phase.into(),
                        threads,
                        fds,
                        rss_kib,
                    });
                }
                thread::sleep(Duration::from_secs(1));
            }
        });
        Sampler { stop, handle }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.handle.join();
    }
}

/// The lifetime (how many restarts so far) of whatever holds the idempotency keys, read by
/// workers around each request.
pub type Life = Arc<AtomicU64>;

/// Where a lifetime's log goes: `server-LLL.log`, or `server-nN-LLL.log` for node N of
/// a several-node run.
pub fn log_path(dir: &Path, node: Option<u64>, life: u64) -> PathBuf {
    match node {
        None => dir.join(format!("server-{life:03}.log")),
        Some(n) => dir.join(format!("server-n{n}-{life:03}.log")),
    }
}
