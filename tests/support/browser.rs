//! A real headless Chromium for tests, driven through `chromedriver` with WebDriver's
//! JSON over HTTP (W3C WebDriver), from a plain blocking HTTP client: no async runtime.
//!
//! [`Browser::start`] starts `chromedriver` on a free loopback port, and through it one
//! Chromium with a fresh profile in a temporary directory. Dropping the [`Browser`] ends
//! the session, then kills by PID every process `chromedriver` started (found through
//! `/proc`) and `chromedriver` itself, and removes the profile: nothing outlives a test.
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver`
//! packages. Without them a test fails and says how to install them, unless
//! `WSHUB_SKIP_BROWSER=1`, which makes it print that it skipped and pass.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long one WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One Chromium under one chromedriver, with one WebDriver session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    profile: PathBuf,
    /// One browser at a time in a test binary: a Chromium per test, all at once, is
    /// more than a small shared machine runs without timing out. Released last, after
    /// the processes are gone.
    _turn: MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `Some(browser)`, or `None` after printing that the test is skipped (chromium missing
/// and `WSHUB_SKIP_BROWSER=1`). Panics with an install hint when chromium is missing
/// and skipping was not asked for.
pub fn browser_or_skip(test: &str) -> Option<Browser> {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        if std::env::var("WSHUB_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!(
                "{test}: skipped: {} not installed (WSHUB_SKIP_BROWSER=1)",
                missing.join(" and ")
            );
            return None;
        }
        panic!(
            "{test}: {} not installed. Install Debian's browser for the tests with \
             `apt-get install -y chromium chromium-driver`, or set WSHUB_SKIP_BROWSER=1 to skip them.",
            missing.join(" and ")
        );
    }
    Some(Browser::start())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Panics if either fails.
    pub fn start() -> Browser {
        // A test that panicked while holding it poisons it; the browser it had is gone.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = std::env::temp_dir().join(format!("wshub-browser-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(COMMAND_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
            profile,
            _turn: turn,
        };
        browser.wait_ready();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--window-size=420,800".to_string(),
            format!("--user-data-dir={}", browser.profile.display()),
        ];
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
                }
            }
        });
        let reply = browser.call("POST", "/session", Some(caps));
        browser.session = reply["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {reply}"))
            .to_string();
        browser
    }

    /// Polls chromedriver's `/status` until it is ready (bounded).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut r) = self.agent.get(format!("{}/status", self.base)).call() {
                if let Ok(text) = r.body_mut().read_to_string() {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    if v["value"]["ready"] == json!(true) {
                        return;
                    }
                }
            }
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "chromedriver not ready within 20 s");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One WebDriver command; returns its `value`. Panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let result = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or(json!({})).to_string()),
        };
        let mut response = result.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "value": text }));
        let value = v["value"].clone();
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status}: {}",
            value["message"].as_str().unwrap_or(&text)
        );
        value
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` in the current window and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.call("POST", &self.session_path("/url"), Some(json!({ "url": url })));
    }

    /// Opens a new window and returns its handle (the current window does not change).
    pub fn new_window(&self) -> String {
        let v = self.call(
            "POST",
            &self.session_path("/window/new"),
            Some(json!({ "type": "window" })),
        );
        v["handle"].as_str().expect("a window handle").to_string()
    }

    /// The current window's handle.
    pub fn window(&self) -> String {
        self.call("GET", &self.session_path("/window"), None)
            .as_str()
            .expect("a window handle")
            .to_string()
    }

    /// Makes `handle` the window commands go to.
    pub fn switch_to(&self, handle: &str) {
        self.call(
            "POST",
            &self.session_path("/window"),
            Some(json!({ "handle": handle })),
        );
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns what it
    /// returns.
    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` until it returns something other than `null`/`false`, for at most
    /// `limit`; returns that. Panics naming `what` when the time is up.
    pub fn wait_for(&self, what: &str, script: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.exec(script, json!([]));
            if !(v.is_null() || v == json!(false)) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The WebDriver id of the first element matching the CSS `selector`.
    pub fn find(&self, selector: &str) -> String {
        let v = self.call(
            "POST",
            &self.session_path("/element"),
            Some(json!({ "using": "css selector", "value": selector })),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {selector}: {v}"))
            .to_string()
    }

    /// Types `text` into the element matching `selector`, as keystrokes.
    pub fn type_into(&self, selector: &str, text: &str) {
        let el = self.find(selector);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{el}/value")),
            Some(json!({ "text": text })),
        );
    }

    /// Clicks the element matching `selector`.
    pub fn click(&self, selector: &str) {
        let el = self.find(selector);
        self.call(
            "POST",
            &self.session_path(&format!("/element/{el}/click")),
            Some(json!({})),
        );
    }

    /// A PNG screenshot of the current window.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.call("GET", &self.session_path("/screenshot"), None);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 text"))
            .expect("valid base64")
    }
}

/// Every process whose ancestry leads to `root`, from `/proc` (children before their
/// own children are found, so the order is breadth-first).
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name is in parentheses and may hold spaces: skip past it.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (chromedriver closes Chromium), then makes sure: every process
        // chromedriver started is killed by its PID, then chromedriver.
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.base, self.session))
                .config()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .call();
        }
        for pid in descendants(self.driver.id()) {
            // SAFETY: kill(2) on a PID that /proc just listed as chromedriver's descendant.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where the browser tests keep their screenshots: `target/browser-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&dir).expect("the artifacts directory");
    dir
}

/// Decodes a PNG and checks that it shows something: a real size, and pixels that are
/// not all one colour (a blank or failed page renders as one flat colour). Returns
/// `(width, height, distinct grey levels)`.
pub fn check_not_blank(png_bytes: &[u8]) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("a buffer size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let (w, h) = (info.width, info.height);
    assert!(w >= 200 && h >= 200, "screenshot is only {w}x{h}");
    let channels = info.color_type.samples();
    let mut levels = [false; 256];
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    let pixels = &buf[..info.buffer_size()];
    let n = pixels.len() / channels;
    for px in pixels.chunks_exact(channels) {
        let grey =
            (u32::from(px[0]) + u32::from(px[channels.min(3) / 2]) + u32::from(px[channels.min(3) - 1])) / 3;
        levels[grey as usize] = true;
        sum += f64::from(grey);
        sum_sq += f64::from(grey * grey);
    }
    let mean = sum / n as f64;
    let variance = sum_sq / n as f64 - mean * mean;
    let distinct = levels.iter().filter(|l| **l).count();
    assert!(
        variance > 50.0 && distinct > 8,
        "screenshot looks blank: variance {variance:.1}, {distinct} grey levels"
    );
    (w, h, distinct)
}
