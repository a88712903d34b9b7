//! The `wshub` binary: `wshub serve` runs the server; see `--help`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod connect;
mod serve;
mod signals;

/// A blocking, thread-per-connection WebSocket server and client.
#[derive(Parser, Debug)]
#[command(name = "wshub", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the WebSocket server (/echo, /chat, /healthz) until SIGINT or SIGTERM.
    Serve(serve::Args),
    /// Connect to a WebSocket server: stdin lines out as text, messages to stdout.
    Connect(connect::Args),
}

fn main() -> ExitCode {
    // Logs go to stderr; RUST_LOG overrides the default level (info).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Connect(args) => connect::run(args),
    }
}
