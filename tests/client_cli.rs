//! `wshub connect` as a user runs it: through pipes, against `wshub serve`.

#[path = "support/client.rs"]
mod client_support;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use client_support::closed_addr;
use support::{ServeProcess, watchdog};

const LIMIT: Duration = Duration::from_secs(20);

fn wshub(args: &[&str]) -> Output {
    support::wshub_output(args, LIMIT)
}

/// Runs `wshub connect ARGS` with stdin kept open (as at a terminal) until it exits on
/// its own; returns its status and stderr.
fn connect_with_open_stdin(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wshub connect starts");
    let stdin = child.stdin.take(); // held open until the child has exited
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    (status, stderr)
}

/// `wshub connect ARGS...`, with `input` piped in and stdin then closed; waits for it.
fn connect_piped(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wshub connect starts");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap(); // then EOF
    child.wait_with_output().unwrap()
}

/// A running `wshub connect`, with its stdout and stderr lines as they arrive.
struct ConnectProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl ConnectProcess {
    fn start(args: &[&str]) -> ConnectProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
            .arg("connect")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wshub connect starts");
        let stdin = child.stdin.take();
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        ConnectProcess {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn next_stdout(&self) -> String {
        self.stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("a line on stdout")
    }

    fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no stderr line containing {needle:?}"),
            }
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "wshub connect did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ConnectProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `wshub serve` on a given address (a restart on the port a previous one had).
fn serve_on(addr: std::net::SocketAddr) -> ServeProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["serve", "--addr", &addr.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .expect("wshub serve starts");
    let lines = lines(child.stderr.take().expect("stderr"));
    let serve = ServeProcess {
        child,
        addr,
        lines,
        startup: Vec::new(),
    };
    serve.wait_for_line("listening on", Duration::from_secs(10));
    serve
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn connect_echoes_stdin_lines_through_wshub_serve_and_exits_0_at_eof() {
    watchdog(LIMIT, || {
        let serve = ServeProcess::start(&[]);
        let url = format!("ws://{}/echo", serve.addr);
        let mut client = ConnectProcess::start(&[&url]);
        assert_eq!(client.wait_stderr("connected to"), format!("connected to {url}"));
        // Each line goes out as one text message and comes back as one stdout line.
        for line in ["hello", "wörld", "", "with\ttab"] {
            client.write_line(line);
            assert_eq!(client.next_stdout(), line);
        }
        client.close_stdin(); // EOF: close 1000, exit 0
        assert_eq!(client.wait_exit().code(), Some(0));
        let line = client.wait_stderr("disconnected:");
        assert!(line.contains("1000"), "{line}");
    });
}

#[test]
fn lines_piped_before_the_connection_is_up_are_all_sent() {
    watchdog(LIMIT, || {
        // The server's Close reply follows every echo already queued, so nothing is lost
        // even though EOF (and our Close) comes right after the last line.
        let serve = ServeProcess::start(&[]);
        let input: String = (0..200).map(|i| format!("line {i}\n")).collect();
        // EOF right away, likely before the handshake is done.
        let out = connect_piped(&[&format!("ws://{}/echo", serve.addr)], &input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), input);
    });
}

#[test]
fn connect_on_chat_delivers_one_clients_lines_to_another() {
    watchdog(LIMIT, || {
        let serve = ServeProcess::start(&[]);
        let url = format!("ws://{}/chat", serve.addr);
        let mut listener = ConnectProcess::start(&[&url]);
        listener.wait_stderr("connected to");
        // Once its own line comes back, the listener is surely in the chat room.
        listener.write_line("listener here");
        assert_eq!(listener.next_stdout(), "listener here");

        let mut talker = ConnectProcess::start(&[&url]);
        talker.wait_stderr("connected to");
        talker.write_line("hi from the talker");
        talker.close_stdin();
        assert_eq!(talker.wait_exit().code(), Some(0));

        assert_eq!(listener.next_stdout(), "hi from the talker");
        listener.close_stdin();
        assert_eq!(listener.wait_exit().code(), Some(0));
    });
}

#[test]
fn connect_reports_a_server_going_away_and_reconnects_to_its_successor() {
    watchdog(LIMIT, || {
        let mut serve = ServeProcess::start(&[]);
        let addr = serve.addr;
        let mut client = ConnectProcess::start(&[&format!("ws://{addr}/echo"), "--backoff-initial", "50ms"]);
        client.wait_stderr("connected to");
        serve.signal(libc::SIGTERM);
        assert_eq!(serve.wait_exit(Duration::from_secs(10)).code(), Some(0));
        let line = client.wait_stderr("disconnected:");
        assert!(line.contains("1001"), "{line}");
        client.wait_stderr("reconnecting in ");

        let _serve = serve_on(addr);
        client.wait_stderr("connected to");
        client.write_line("still here");
        assert_eq!(client.next_stdout(), "still here");
        client.close_stdin();
        assert_eq!(client.wait_exit().code(), Some(0));
    });
}

#[test]
fn ctrl_c_closes_the_connection_and_exits() {
    watchdog(LIMIT, || {
        let serve = ServeProcess::start(&[]);
        let mut client = ConnectProcess::start(&[&format!("ws://{}/echo", serve.addr)]);
        client.wait_stderr("connected to");
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe { libc::kill(client.child.id() as i32, libc::SIGINT) };
        assert_eq!(client.wait_exit().code(), Some(0));
        let line = client.wait_stderr("disconnected:");
        assert!(line.contains("1000"), "{line}");
    });
}

#[test]
fn max_retries_gives_up_with_one_clear_line_and_exit_1() {
    watchdog(LIMIT, || {
        let url = format!("ws://{}/", closed_addr());
        let (status, stderr) =
            connect_with_open_stdin(&[&url, "--max-retries", "2", "--backoff-initial", "10ms"]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        let giving_up: Vec<&str> = stderr.lines().filter(|l| l.starts_with("giving up")).collect();
        assert_eq!(giving_up.len(), 1, "{stderr}");
        assert!(
            giving_up[0].contains("after 2 failed attempts") && giving_up[0].contains("refused"),
            "{stderr}"
        );
        assert_eq!(stderr.matches("reconnecting in ").count(), 2, "{stderr}");
    });
}

#[test]
fn no_reconnect_exits_1_when_it_cannot_connect() {
    watchdog(LIMIT, || {
        let (status, stderr) =
            connect_with_open_stdin(&["--no-reconnect", &format!("ws://{}/", closed_addr())]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("connection failed:"), "{stderr}");
        assert!(!stderr.contains("reconnecting"), "{stderr}");
    });
}

#[test]
fn eof_before_any_connection_was_made_exits_1_at_once_with_one_clear_line() {
    watchdog(LIMIT, || {
        let url = format!("ws://{}/", closed_addr());
        let started = Instant::now();
        let out = wshub(&["connect", &url, "--backoff-initial", "30s"]); // stdin: /dev/null
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let giving_up: Vec<&str> = stderr.lines().filter(|l| l.starts_with("giving up")).collect();
        assert_eq!(giving_up.len(), 1, "{stderr}");
        assert!(
            giving_up[0].contains("could not connect") && giving_up[0].contains("stdin has ended"),
            "{stderr}"
        );
    });
}

#[test]
fn piped_lines_that_can_never_be_sent_end_in_exit_1_instead_of_retrying_forever() {
    watchdog(LIMIT, || {
        // printf 'x\n' | wshub connect ws://127.0.0.1:<closed>/x (issue #18 item 6).
        let url = format!("ws://{}/x", closed_addr());
        let out = connect_piped(&[&url, "--backoff-initial", "10ms"], "x\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("stdin has ended"), "{stderr}");
    });
}

#[test]
fn listen_keeps_retrying_after_eof_until_interrupted() {
    watchdog(LIMIT, || {
        let url = format!("ws://{}/", closed_addr());
        let mut client = ConnectProcess::start(&[
            &url,
            "--listen",
            "--backoff-initial",
            "10ms",
            "--backoff-max",
            "20ms",
        ]);
        client.close_stdin();
        // Well past the point where it would have given up without --listen.
        for _ in 0..5 {
            client.wait_stderr("reconnecting in ");
        }
        assert!(client.child.try_wait().unwrap().is_none(), "still running");
        // SAFETY: kill(2) on the PID of a child we started and have not reaped.
        unsafe { libc::kill(client.child.id() as i32, libc::SIGINT) };
        client.wait_exit();
    });
}

#[test]
fn listen_keeps_printing_after_eof() {
    watchdog(LIMIT, || {
        let serve = ServeProcess::start(&[]);
        let url = format!("ws://{}/chat", serve.addr);
        let mut listener = ConnectProcess::start(&[&url, "--listen"]);
        listener.wait_stderr("connected to");
        listener.write_line("listener here");
        assert_eq!(listener.next_stdout(), "listener here");
        listener.close_stdin();

        let talker = connect_piped(&[&url], "after your EOF\n");
        assert_eq!(talker.status.code(), Some(0));
        assert_eq!(listener.next_stdout(), "after your EOF");
        assert!(listener.child.try_wait().unwrap().is_none(), "still listening");
    });
}

#[test]
fn an_unparsable_url_is_one_clear_line_and_exit_2() {
    for url in [
        "example.com",
        "ws://",
        "ws://h:99999/",
        "wss://example.com/",
        "http://example.com/",
    ] {
        let out = wshub(&["connect", url]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{url}: {stderr}");
        assert!(stderr.starts_with("error: "), "{url}: {stderr}");
    }
}

#[test]
fn a_malformed_header_is_a_clear_error_and_exit_2() {
    for header in ["no-colon", ": empty name", "Bad Name: x", "Sec-WebSocket-Key: x"] {
        let out = wshub(&["connect", "ws://127.0.0.1:1/", "--header", header]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{header}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{header}: {stderr}");
        assert!(stderr.contains("invalid header"), "{header}: {stderr}");
    }
}

#[test]
fn connect_help_lists_its_flags() {
    let out = wshub(&["connect", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--no-reconnect",
        "--max-retries",
        "--origin",
        "--header",
        "--connect-timeout",
        "--backoff-initial",
        "--backoff-max",
        "--listen",
        "--channel",
        "--json",
        "--publish-timeout",
    ] {
        assert!(text.contains(flag), "--help lists {flag}");
    }
}

/// `wshub connect ws://ADDR/ws --channel NAME ARGS...`, piping `input` and closing stdin.
fn channel_pipe(addr: std::net::SocketAddr, channel: &str, args: &[&str], input: &str) -> Output {
    let url = format!("ws://{addr}/ws");
    let mut all = vec![url.as_str(), "--channel", channel];
    all.extend_from_slice(args);
    connect_piped(&all, input)
}

#[test]
fn channel_mode_publishes_stdin_lines_and_prints_each_publications_data_as_json() {
    watchdog(LIMIT, || {
        let serve = ServeProcess::start(&[]);
        let url = format!("ws://{}/ws", serve.addr);
        let listener = ConnectProcess::start(&[&url, "--channel", "news", "--listen"]);
        listener.wait_stderr("subscribed to news");

        let out = channel_pipe(serve.addr, "news", &[], "hello\nsay \"hi\"\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        // The publisher is subscribed too: its own lines come back before it exits.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "\"hello\"\n\"say \\\"hi\\\"\"\n"
        );
        assert_eq!(listener.next_stdout(), "\"hello\"");
        assert_eq!(listener.next_stdout(), "\"say \\\"hi\\\"\"");
    });
}

#[test]
fn channel_mode_json_prints_whole_pushes() {
    watchdog(LIMIT, || {
        let serve = ServeProcess::start(&[]);
        let out = channel_pipe(serve.addr, "room:1", &["--json"], "x\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let push: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        assert_eq!(push["push"], "pub");
        assert_eq!(push["ch"], "room:1");
        assert_eq!(push["offset"], 1);
        assert_eq!(push["data"], "x");
        assert!(push["from"]["client"].is_string(), "{push}");
    });
}

#[test]
fn channel_mode_reports_an_unrecoverable_resume_after_a_server_restart_and_carries_on() {
    watchdog(LIMIT, || {
        let mut serve = ServeProcess::start(&[]);
        let addr = serve.addr;
        let url = format!("ws://{addr}/ws");
        let mut listener = ConnectProcess::start(&[&url, "--channel", "news", "--backoff-initial", "50ms"]);
        listener.wait_stderr("subscribed to news");
        listener.write_line("before");
        assert_eq!(listener.next_stdout(), "\"before\"");

        serve.signal(libc::SIGTERM);
        assert_eq!(serve.wait_exit(Duration::from_secs(10)).code(), Some(0));
        listener.wait_stderr("reconnecting in ");
        let serve = serve_on(addr);
        let line = listener.wait_stderr("resubscribed to news");
        assert!(line.contains("could not be recovered"), "{line}");

        let out = channel_pipe(serve.addr, "news", &[], "after\n");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(listener.next_stdout(), "\"after\"");
        listener.close_stdin();
        assert_eq!(listener.wait_exit().code(), Some(0));
    });
}

#[test]
fn channel_mode_with_piped_lines_and_no_server_exits_1_once_stdin_has_ended() {
    watchdog(LIMIT, || {
        let out = channel_pipe(closed_addr(), "news", &["--backoff-initial", "10ms"], "x\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("could not connect") && stderr.contains("stdin has ended"),
            "{stderr}"
        );
    });
}

#[test]
fn channel_mode_refuses_a_bad_channel_name_with_exit_2() {
    let out = wshub(&["connect", "ws://127.0.0.1:1/ws", "--channel", "no spaces"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid channel"), "{stderr}");
}
#[test]
fn connect_prints_a_binary_message_as_its_length_and_hex_never_raw_bytes() {
    watchdog(LIMIT, || {
        struct Greeter;
        impl wshub::Handler for Greeter {
            fn on_open(&self, conn: &wshub::Connection) {
                // A newline and a NUL among the bytes: raw output would break the line.
                conn.send(wshub::Message::binary(vec![0x00, 0x0a, 0xff, 0x41]))
                    .unwrap();
                conn.send(wshub::Message::binary(Vec::new())).unwrap();
                conn.send(wshub::Message::text("done")).unwrap();
            }
            fn on_message(&self, _conn: &wshub::Connection, _msg: wshub::Message) {}
        }
        let server = wshub::Server::builder(support::test_config())
            .route("/bin", Greeter)
            .start()
            .unwrap();
        let client = ConnectProcess::start(&[&format!("ws://{}/bin", server.local_addr())]);
        assert_eq!(client.next_stdout(), "[binary 4 bytes] 000aff41");
        assert_eq!(client.next_stdout(), "[binary 0 bytes]");
        assert_eq!(client.next_stdout(), "done");
        drop(client);
        server.shutdown();
    });
}
