//! Shared test helpers: servers on free ports, clients (tungstenite and raw bytes),
//! a watchdog, and the process's thread count.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub use wshub::{Config, Server};

pub mod peer;

/// Runs `body` on its own thread and fails the test if it takes longer than `limit`:
/// a hang fails instead of stalling CI.
///
/// A fired watchdog ends the whole test process (after naming the test): the body is
/// still running and cannot be stopped, and its threads and sockets would otherwise
/// skew whatever runs next in this binary (a thread-count baseline, a serial lock).
pub fn watchdog<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let test = thread::current().name().unwrap_or("<unnamed>").to_owned();
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body sent nothing but did not panic"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => watchdog_fired(&test, limit),
    }
}

/// Ends the test process because `test` outlived `limit`. Exit code 101, as a failed
/// test binary's.
pub fn watchdog_fired(test: &str, limit: Duration) -> ! {
    // Straight to the process's stderr: the harness captures `eprintln!` in a test's
    // thread and would lose the line when the process exits.
    let _ = writeln!(
        std::io::stderr(),
        "watchdog: test {test} still running after {limit:?}; ending the test process"
    );
    std::process::exit(101)
}

/// A config on a free loopback port, with short timeouts suited to tests.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.addr = "127.0.0.1:0".parse().unwrap();
    c.drain_timeout = Duration::from_secs(3);
    c
}

pub fn start(config: Config) -> Server {
    Server::start(config).expect("server starts")
}

pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// A tungstenite client on `path`, with a read timeout so a lost message fails the test.
pub fn connect(addr: SocketAddr, path: &str) -> Client {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}{path}")).expect("websocket connects");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

/// Reads until a text or binary message (skipping pings and pongs).
pub fn next_data(ws: &mut Client) -> Message {
    loop {
        if let m @ (Message::Text(_) | Message::Binary(_)) = ws.read().expect("read") {
            return m;
        }
    }
}

/// Number of threads in this process, from /proc.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (polling, bounded) until the thread count is back to `baseline`; returns the
/// last count seen. Threads end asynchronously after their last message, so there is
/// no event to wait on from outside the server.
pub fn wait_for_threads(baseline: usize, limit: Duration) -> usize {
    wait_for_count(baseline, limit, thread_count)
}

/// Polls `count` (bounded) until it is at most `baseline`; returns the last value seen.
pub fn wait_for_count(baseline: usize, limit: Duration, count: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let n = count();
        if n <= baseline || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `done` (bounded) until it is true; fails the test with `what` after `limit`.
/// For states the server shows no event for (its connection count, say).
pub fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends raw bytes and returns everything the server answers until it closes.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One scrape of `GET /metrics`: the value of the sample `name` (with its labels, if
/// any, as `/metrics` writes them). Panics if there is none.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = raw_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The status line of a raw response.
pub fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// A valid upgrade request for `path`, with extra header lines.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A raw client: the handshake done by hand, frames written and read as bytes, for
/// cases a real client refuses to produce.
pub struct Raw {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects and upgrades on `path`; panics unless the answer is 101.
    pub fn connect(addr: SocketAddr, path: &str) -> Raw {
        raw_connect_with(addr, path, "")
    }

    /// Writes one masked frame.
    pub fn send_frame(&mut self, first_byte: u8, payload: &[u8]) {
        self.sock.write_all(&client_frame(first_byte, payload)).unwrap();
    }

    /// Reads one server frame: (first byte, payload). `None` at EOF, reset or read
    /// timeout; [`Raw::next_frame`] tells them apart.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        self.next_frame().ok()
    }

    /// Reads one server frame: (first byte, payload), or how the read ended instead.
    pub fn next_frame(&mut self) -> Result<(u8, Vec<u8>), ReadEnd> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err(ReadEnd::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ReadEnd::TimedOut);
                }
                Err(e) => return Err(ReadEnd::Error(e.kind())),
            }
        }
    }

    /// Reads frames until a Close; returns its code. Skips pings and data.
    pub fn read_close_code(&mut self) -> Option<u16> {
        loop {
            let (b0, payload) = self.read_frame()?;
            if b0 & 0x0F == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }

    /// Reads frames until a Close; returns its code and reason (`None` for a Close
    /// without a code, or no Close before the end). Skips pings and data.
    pub fn read_close(&mut self) -> Option<(u16, String)> {
        loop {
            let (b0, payload) = self.read_frame()?;
            if b0 & 0x0F == 0x8 {
                if payload.len() < 2 {
                    return None;
                }
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return Some((code, String::from_utf8_lossy(&payload[2..]).into_owned()));
            }
        }
    }

    /// True when the server closes the TCP connection (EOF or reset) after any
    /// remaining frames; false when it is still open at the socket's read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        loop {
            match self.next_frame() {
                Ok(_) => {}
                Err(ReadEnd::TimedOut) => return false,
                Err(ReadEnd::Eof | ReadEnd::Error(_)) => return true,
            }
        }
    }
}

/// How a [`Raw`] read ended without a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The server closed the connection cleanly (FIN).
    Eof,
    /// Nothing arrived within the socket's read timeout: the connection is still open.
    TimedOut,
    /// Any other error (a reset, most often).
    Error(std::io::ErrorKind),
}

/// A masked client frame with the given first byte (FIN, RSV and opcode).
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = vec![first_byte];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Parses one unmasked server frame from the front of `buf`.
pub fn parse_server_frame(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < at + len {
        return None;
    }
    Some(((buf[0], buf[at..at + len].to_vec()), at + len))
}

/// A `wshub serve` child process, its address, and its stderr lines as they arrive.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub lines: mpsc::Receiver<String>,
    /// The lines logged before `listening on` (a lowered connection limit, say).
    pub startup: Vec<String>,
}

impl ServeProcess {
    /// Starts `wshub serve --addr 127.0.0.1:0 ARGS...` and waits for `listening on`.
    pub fn start(args: &[&str]) -> ServeProcess {
        ServeProcess::start_with_rlimits(&[], args)
    }

    /// As [`ServeProcess::start`], with the child's soft open-files limit set to `nofile`
    /// (when given) before it runs.
    pub fn start_with_nofile(nofile: Option<libc::rlim_t>, args: &[&str]) -> ServeProcess {
        match nofile {
            Some(n) => ServeProcess::start_with_rlimits(&[(libc::RLIMIT_NOFILE, n)], args),
            None => ServeProcess::start(args),
        }
    }

    /// As [`ServeProcess::start`], with the child's soft limits for the given resources
    /// set before it runs (each hard limit stays).
    pub fn start_with_rlimits(
        rlimits: &[(libc::__rlimit_resource_t, libc::rlim_t)],
        args: &[&str],
    ) -> ServeProcess {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"));
        command
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            // The `listening on` line this waits for is an info line, whatever the
            // caller's environment says.
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut limits = Vec::new();
        for &(resource, soft) in rlimits {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit through a valid pointer.
            assert_eq!(unsafe { libc::getrlimit(resource, &mut limit) }, 0);
            limit.rlim_cur = soft; // the soft limit; the hard one stays
            limits.push((resource, limit));
        }
        if !limits.is_empty() {
            // SAFETY: between fork and exec the closure only calls setrlimit(2), which
            // is async-signal-safe, on values computed before the fork.
            unsafe {
                command.pre_exec(move || {
                    for (resource, limit) in &limits {
                        if libc::setrlimit(*resource, limit) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("wshub starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Warnings (a lowered connection limit, say) may come first.
        let mut startup = Vec::new();
        let first = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("a `listening on` line; saw {startup:#?}"));
            if line.contains("listening on ") {
                break line;
            }
            startup.push(line);
        };
        let addr = first
            .split("listening on ")
            .nth(1)
            .unwrap_or_else(|| panic!("the line names the address: {first}"))
            // The address ends the human line, or the `msg` string of a JSON line.
            .split(|c: char| c == '"' || c.is_whitespace())
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap();
        ServeProcess {
            child,
            addr,
            lines,
            startup,
        }
    }

    /// Sends a signal to the child (by its PID).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the PID of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for a log line containing `needle`, for at most `limit`.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within {limit:?}"),
            }
        }
    }

    /// Waits for the child to exit, for at most `limit`; kills it past that.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("wshub did not exit within {limit:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Like [`Raw::connect`], with extra header lines in the upgrade request (an `Origin`,
/// say); panics unless the answer is 101.
pub fn raw_connect_with(addr: SocketAddr, path: &str, extra: &str) -> Raw {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(upgrade_request(path, extra).as_bytes()).unwrap();
    Raw::after_upgrade(sock)
}

impl Raw {
    /// Reads the answer to an upgrade request already written on `sock`; panics
    /// unless it is 101.
    pub fn after_upgrade(mut sock: TcpStream) -> Raw {
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = sock.read(&mut chunk).expect("handshake response");
            assert!(n > 0, "server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let rest = buf.split_off(end);
        Raw { sock, buf: rest }
    }

    /// Everything the server still sends until it closes the connection, frames not yet
    /// parsed included: `Ok` on a clean end of stream (its FIN), `Err` on a reset or when
    /// the stream does not end within the socket's read timeout.
    pub fn rest_until_eof(&mut self) -> std::io::Result<Vec<u8>> {
        let mut rest = std::mem::take(&mut self.buf);
        self.sock.read_to_end(&mut rest)?;
        Ok(rest)
    }
}

/// The receive buffer the kernel gives `sock` now.
pub fn recv_buffer(sock: &TcpStream) -> usize {
    sockopt(sock, libc::SO_RCVBUF, None)
}

/// Fixes `sock`'s receive buffer at about `bytes` (the kernel doubles the value for its
/// bookkeeping): it no longer grows on its own, so a client that stops reading stops
/// the server's writes after a known amount. Returns the size the kernel reports.
pub fn fix_recv_buffer(sock: &TcpStream, bytes: usize) -> usize {
    sockopt(sock, libc::SO_RCVBUF, Some(bytes as libc::c_int))
}

fn sockopt(sock: &TcpStream, opt: libc::c_int, set: Option<libc::c_int>) -> usize {
    use std::os::fd::AsRawFd;
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    if let Some(value) = set {
        // SAFETY: setsockopt(2) reads one c_int through a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                size,
            )
        };
        assert_eq!(rc, 0, "setsockopt");
    }
    let mut value: libc::c_int = 0;
    let mut len = size;
    // SAFETY: getsockopt(2) writes one c_int and its length through valid pointers.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt");
    value as usize
}

/// The most a TCP send buffer grows to (the third field of `tcp_wmem`): with the
/// receiver's buffer fixed, the most a server can write to a client that stops reading.
pub fn max_send_buffer() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .expect("tcp_wmem")
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("tcp_wmem's maximum")
}

/// Runs `wshub ARGS` (stdin: /dev/null) to its end with [`output_within`]'s deadline.
pub fn wshub_output(args: &[&str], limit: Duration) -> std::process::Output {
    output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
            .args(args)
            .stdin(std::process::Stdio::null()),
        limit,
    )
}

/// Runs `command` to its end, as `Command::output` does, but kills it and fails the test
/// if it is still running after `limit`: a regression that makes it hang (a server that
/// starts instead of refusing its flags, say) fails instead of stalling the suite, and
/// leaves no process behind.
pub fn output_within(command: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = collect(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = collect(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {limit:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
