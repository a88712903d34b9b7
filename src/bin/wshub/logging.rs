//! The binary's log output on stderr: the human format (a timestamp, the level, the
//! message) or, with `--log-format json`, one JSON object per line for log shippers.
//!
//! Owns nothing after start-up: [`init`] installs `env_logger` once, before any thread
//! of the server runs. `RUST_LOG` sets the level (default `info`). Every line about one
//! connection starts `connection N:` in the human format; in JSON that id is the `conn`
//! field and the message follows without it.

use std::io::Write;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `[2026-01-01T10:00:00.000Z INFO  wshub::server] listening on ...`
    #[default]
    Text,
    /// `{"ts":"2026-01-01T10:00:00.000Z","level":"INFO","target":"wshub::server","msg":"..."}`
    Json,
}

/// Installs the logger.
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format_timestamp_millis();
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let msg = record.args().to_string();
            let mut line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
            });
            match split_conn(&msg) {
                Some((id, rest)) => {
                    line["conn"] = id.into();
                    line["msg"] = rest.into();
                }
                None => line["msg"] = msg.into(),
            }
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// `connection 42: text` -> `(42, "text")`.
fn split_conn(msg: &str) -> Option<(u64, &str)> {
    let rest = msg.strip_prefix("connection ")?;
    let (id, text) = rest.split_once(": ")?;
    Some((id.parse().ok()?, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_line_gives_its_id_apart() {
        assert_eq!(
            split_conn("connection 42: 404 no endpoint"),
            Some((42, "404 no endpoint"))
        );
        assert_eq!(split_conn("listening on 127.0.0.1:80"), None);
        assert_eq!(split_conn("connection refused: x"), None);
    }
}
