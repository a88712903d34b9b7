//! `wshub serve`: flags map one-to-one onto [`wshub::Config`]; this file adds nothing of
//! its own but the signal handling.
//!
//! The main thread starts the server and then blocks in [`Server::wait_before_exit`]: the
//! process exits as soon as it returns, so the threads that served the connections are
//! left to the exit rather than joined one by one. The ctrlc handler thread (SIGINT and
//! SIGTERM) triggers the drain on the first signal and exits at once, with status 130, on
//! the second.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use log::{error, info, warn};
use wshub::{Config, Engine, Server};

use crate::args::{parse_addr, parse_duration, parse_size, parse_switch, read_secret};

/// Flags of `wshub serve`. Defaults are [`wshub::Config::default`]'s.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; port 0 takes a free port (the log names it).
    /// A host name is resolved at start (localhost:8080).
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    addr: SocketAddr,
    /// Messages queued per client before it is disconnected as a slow consumer.
    #[arg(long, default_value_t = 256)]
    queue_size: usize,
    /// Time a client has to send its complete HTTP request (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Close a client that sends nothing, not even a pong, for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Ping every client this often; must be shorter than --idle-timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Disconnect a client when a write to it blocks this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// End a connection's writer thread after it has had nothing to write this long.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    writer_idle: Duration,
    /// A connection thread whose connection ended waits this long for the next one.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    spare_reader_idle: Duration,
    /// Connection threads that may wait for the next connection at once (0: none).
    #[arg(long, default_value_t = 64)]
    spare_readers: usize,
    /// On shutdown, wait this long for clients to answer Close 1001.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Connections beyond this get 503.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Allowed Origin (repeatable). None given: any origin.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Largest message a client may send (e.g. 64KiB, 16MiB, or bytes).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_message_size: usize,
    /// Largest frame a client may send (e.g. 64KiB, or bytes).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_frame_size: usize,
    /// Messages per second one connection may send (default: no limit).
    #[arg(long, value_name = "N")]
    max_message_rate: Option<u32>,
    /// Bytes read from a socket at a time, per connection.
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    read_buffer_size: usize,
    /// Stack size of each connection thread.
    #[arg(long, default_value = "128KiB", value_parser = parse_size)]
    thread_stack_size: usize,
    /// Do not serve the demo chat page at / (/wshub.js is served either way).
    #[arg(long)]
    no_demo: bool,
    /// Serve Prometheus metrics at /metrics: on or off.
    #[arg(
        long,
        value_name = "on|off",
        default_value = "on",
        value_parser = parse_switch,
        action = clap::ArgAction::Set
    )]
    metrics: bool,
    /// Turn on POST /api/publish, guarded by this key (`Authorization: apikey KEY`).
    /// Prefer --api-key-file: a command line is visible to other users.
    #[arg(long, value_name = "KEY", conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// As --api-key, with the key read from this file (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<PathBuf>,
    /// Publications each /ws channel keeps for recovery (0: none).
    #[arg(long, default_value_t = 100)]
    history_size: usize,
    /// How long a publication stays in a /ws channel's history.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    history_ttl: Duration,
    /// How long a /ws pub's idempotency key is remembered.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    idempotency_window: Duration,
    /// Channels one /ws connection may subscribe to.
    #[arg(long, default_value_t = 128)]
    max_subscriptions: usize,
    /// /ws channels that may exist at once; sub or pub to a new one past it is error 4.
    #[arg(long, default_value_t = 10_000)]
    max_channels: usize,

    /// Broadcasts per second one connection may publish before it waits; 0: no limit.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_publish_rate: u32,
    /// Bytes of broadcasts the hub's inbox may hold in all; past it, publishers wait.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    max_inbox_bytes: usize,
    /// Bytes one connection's outbound queue may hold before it is cut as slow.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    max_queue_bytes: usize,
    /// The kernel's send buffer per connection (SO_SNDBUF); 0: the kernel's autotuning.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    send_buffer_size: usize,
    /// Token mode on /ws: hello with an HS256 JWT signed by this secret must come first,
    /// within the handshake timeout (else Close 4001). Prefer --token-secret-file: a
    /// command line is visible to other users. Make tokens with `wshub token`.
    #[arg(long, value_name = "SECRET", conflicts_with = "token_secret_file")]
    token_secret: Option<String>,
    /// As --token-secret, with the secret read from this file (surrounding whitespace
    /// ignored).
    #[arg(long, value_name = "PATH")]
    token_secret_file: Option<PathBuf>,
    /// Members a /ws presence reply lists at most (the counts are always exact).
    #[arg(long, default_value_t = 1000)]
    max_presence_list: usize,
    /// Where /ws channel streams live: `memory` (this process) or redis://HOST:PORT/DB
    /// (shared by every wshub using that Redis; see docs/redis.md).
    #[arg(long, value_name = "memory|redis://HOST:PORT/DB", default_value = "memory", value_parser = parse_engine)]
    engine: Engine,
    /// With --engine redis://..: the limit on connecting to Redis and on each reply.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    engine_timeout: Duration,
    /// With --engine redis://..: how long a presence entry lives in Redis unless its node
    /// refreshes it (the longest a dead node's members stay listed).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    presence_ttl: Duration,
    /// With --engine redis://..: how often each node refreshes its presence entries
    /// (shorter than --presence-ttl).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    presence_refresh: Duration,
}

/// `memory` or a `redis://` URL.
fn parse_engine(s: &str) -> Result<Engine, String> {
    match s {
        "memory" => Ok(Engine::Memory),
        url if url.starts_with("redis://") => Ok(Engine::Redis(url.to_owned())),
        other => Err(format!(
            "expected `memory` or redis://HOST:PORT/DB, not {other:?}"
        )),
    }
}

impl Args {
    /// The configuration the flags ask for; fails only when a key or secret file cannot be read.
    fn into_config(self) -> Result<Config, String> {
        let mut c = Config::default();
        c.addr = self.addr;
        c.limits.queue_size = self.queue_size;
        c.handshake_timeout = self.handshake_timeout;
        c.idle_timeout = self.idle_timeout;
        c.ping_interval = self.ping_interval;
        c.write_timeout = self.write_timeout;
        c.drain_timeout = self.drain_timeout;
        c.writer_idle = self.writer_idle;
        c.spare_reader_idle = self.spare_reader_idle;
        c.spare_readers = self.spare_readers;
        c.max_connections = self.max_connections;
        c.allowed_origins = self.allowed_origins;
        c.limits.max_message_size = self.max_message_size;
        c.limits.max_frame_size = self.max_frame_size;
        c.max_message_rate = self.max_message_rate;
        c.limits.read_buffer_size = self.read_buffer_size;
        c.thread_stack_size = self.thread_stack_size;
        c.demo = !self.no_demo;
        c.metrics = self.metrics;
        c.api_key = read_secret(self.api_key, self.api_key_file, "API key")?.map(Into::into);
        c.token_secret = read_secret(self.token_secret, self.token_secret_file, "token secret")?
            .map(|s| s.as_str().into());
        c.max_presence_list = self.max_presence_list;
        c.history_size = self.history_size;
        c.history_ttl = self.history_ttl;
        c.idempotency_window = self.idempotency_window;
        c.max_subscriptions = self.max_subscriptions;
        c.max_channels = self.max_channels;
        c.send_buffer_size = self.send_buffer_size;
        c.max_publish_rate = self.max_publish_rate;
        c.max_inbox_bytes = self.max_inbox_bytes;
        c.max_queue_bytes = self.max_queue_bytes;
        c.engine = self.engine;
        c.engine_timeout = self.engine_timeout;
        c.presence_ttl = self.presence_ttl;
        c.presence_refresh = self.presence_refresh;
        Ok(c)
    }
}

/// Runs the server until a signal, then drains. Exit 0 after a drain, 1 when the server
/// cannot start, 2 (clap's usage error) for flags that can never work together.
pub fn run(args: Args) -> ExitCode {
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Flags that can never work together are a usage error, reported as clap reports its
    // own (exit 2), not a failure to start (exit 1).
    if let Err(e) = config.validate() {
        use clap::CommandFactory;
        crate::Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, e)
            .exit();
    }
    let server = match Server::start(config) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    let handle = server.shutdown_handle();
    let installed = crate::signals::on_signal(
        move || {
            info!("shutting down: draining connections (signal again to exit at once)");
            handle.shutdown();
        },
        "draining",
    );
    if let Err(e) = installed {
        error!("cannot install the signal handler: {e}");
        return ExitCode::from(1);
    }
    // Logged only once the handler is in place, so a signal sent by whoever waits for
    // this line always drains instead of killing the process.
    info!("listening on {}", server.local_addr());
    let report = server.wait_before_exit();
    let how = match report.cut {
        0 => format!("{} closed cleanly", report.closed),
        cut => format!("{} closed cleanly, {cut} cut at the deadline", report.closed),
    };
    if report.cut > 0 {
        warn!(
            "drained {} connections in {:.2?}: {how}",
            report.connections, report.elapsed
        );
    } else {
        info!(
            "drained {} connections in {:.2?}: {how}",
            report.connections, report.elapsed
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// The CLI adds nothing of its own: with no flags it is `Config::default()`.
    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let from_flags = Cli::parse_from(["wshub"]).args.into_config().unwrap();
        assert_eq!(format!("{from_flags:?}"), format!("{:?}", Config::default()));
    }
}
