//! `wshub token --secret S --user ann [--channels 'room:*'] [--ttl 1h]`: prints a token
//! for a server in token mode, so the whole of token mode can be tried from the CLI.
//! Runs on the main thread, prints one line and exits.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use wshub::pubsub::auth::issue_token;
use wshub::pubsub::protocol::validate_info;

use crate::args::{parse_duration, read_secret};

/// Flags of `wshub token`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server's token secret (as `serve --token-secret`).
    #[arg(
        long,
        value_name = "SECRET",
        required_unless_present = "secret_file",
        conflicts_with = "secret_file"
    )]
    secret: Option<String>,
    /// As --secret, read from this file (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// The user (the token's `sub`).
    #[arg(long)]
    user: String,
    /// Channel patterns the token may use, comma-separated ('room:*' matches every
    /// channel starting with 'room:'); default: every channel.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    channels: Option<Vec<String>>,
    /// Presence info, a JSON object of at most 1 KiB.
    #[arg(long, value_name = "JSON")]
    info: Option<String>,
    /// How long the token is valid (e.g. 1h, 30m); default: no expiry.
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
}

/// Prints the token; exit 1 when the secret file cannot be read or `--info` is not a
/// JSON object of at most 1 KiB.
pub fn run(args: Args) -> ExitCode {
    match token(args) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wshub token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: Args) -> Result<String, String> {
    let secret =
        read_secret(args.secret, args.secret_file, "secret")?.ok_or("give --secret or --secret-file")?;
    if secret.is_empty() {
        return Err("the secret must not be empty".into());
    }
    let info = match args.info {
        Some(text) => {
            let v = serde_json::from_str(&text).map_err(|e| format!("--info is not JSON: {e}"))?;
            validate_info(&v).map_err(|e| format!("--info: {}", e.msg))?;
            Some(v)
        }
        None => None,
    };
    Ok(issue_token(
        secret.as_bytes(),
        &args.user,
        args.channels,
        info,
        args.ttl,
        SystemTime::now(),
    ))
}
