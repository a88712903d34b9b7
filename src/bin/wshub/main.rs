//! The `wshub` binary: `wshub serve` runs the server; see `--help`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod connect;
mod logging;
mod serve;
mod signals;
mod token;

/// A blocking, thread-per-connection WebSocket server and client.
#[derive(Parser, Debug)]
#[command(name = "wshub", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Log line format on stderr: text, or json (one object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the WebSocket server (/ws channels, /echo, /chat, /healthz, the demo page) until SIGINT or SIGTERM.
    // Boxed: its many flags make it far larger than the other commands.
    Serve(Box<serve::Args>),
    /// Connect to a WebSocket server: stdin lines out as text, messages to stdout.
    Connect(connect::Args),
    /// Print a token (HS256 JWT) for a server in token mode (`serve --token-secret`).
    Token(token::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr; RUST_LOG overrides the default level (info).
    logging::init(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Connect(args) => connect::run(args),
        Command::Token(args) => token::run(args),
    }
}
