//! The soak's log: one JSON event a line, written by the driver's workers and read back
//! whole by the checker.
//!
//! **Owns** nothing that runs: each worker owns its own [`LogFile`] (one file per worker,
//! so no lock and no interleaving), and the checker reads every `*.jsonl` of the run's
//! directory once the run is over. Events are what the wire said, before any dedupe:
//! a subscriber logs every subscribe reply and every publication it is handed, as is.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;

/// A stream position: a channel's epoch and an offset within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pos {
    pub epoch: String,
    pub offset: u64,
}

/// One thing a worker saw. `chain` names a logical subscriber (it survives reconnects),
/// `sub` one subscription of it (one `sub` reply and the pushes after it, until its
/// connection ends).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// A `sub` reply: `since` is what was asked, `offset` the reply's top offset,
    /// `recovered` as the server said (absent without `since`).
    Sub {
        chain: String,
        sub: u64,
        ch: String,
        since: Option<Pos>,
        epoch: String,
        offset: u64,
        recovered: Option<bool>,
        /// The node that answered (0 in the one-node memory mode; logs from before the
        /// two-node mode have none).
        #[serde(default)]
        node: u64,
    },
    /// A publication handed to the subscriber: from the `sub` reply's `pubs`, or a push.
    /// `data` is its JSON, compact.
    Deliver {
        chain: String,
        sub: u64,
        ch: String,
        epoch: String,
        offset: u64,
        data: String,
    },
    /// A `push unsub` for the subscription.
    Unsub {
        chain: String,
        sub: u64,
        ch: String,
        code: u64,
    },
    /// The subscription's connection ended: `why` is `rst` (we reset it), `cut` (the
    /// server or the network closed it), or `stop` (the run is over).
    End { chain: String, sub: u64, why: String },
    /// A publication acknowledged (a `pub` ok reply, or `POST /api/publish` 200).
    /// `life` is the lifetime (restart count) of whatever holds the idempotency keys — the
    /// server in memory mode, the redis-server in Redis mode — when known for sure (the
    /// same before the request and after the answer).
    Ack {
        publisher: String,
        via: String,
        ch: String,
        key: Option<String>,
        epoch: String,
        offset: u64,
        data: String,
        life: Option<u64>,
    },
    /// An answer the server should never give to a well-formed command.
    Unexpected { who: String, what: String },
    /// A command refused as temporarily unavailable (error 6 on `/ws`, `503` on the HTTP
    /// API): the engine is down or the node is draining. Counted, never a violation:
    /// nothing was acked, and the client retries.
    Refused { who: String, op: String, node: u64 },
    /// A hostile client's attempt and what the server did with it.
    Hostile { kind: String, outcome: String },
    /// One sample of the server process from /proc.
    Sample {
        t: f64,
        /// The node sampled (0 in the one-node memory mode).
        #[serde(default)]
        node: u64,
        life: u64,
        phase: String,
        threads: u64,
        fds: u64,
        rss_kib: u64,
    },
    /// A server lifetime ended: its exit status after SIGTERM (`None`: killed by a signal).
    /// `life` counts the restarts of that `node`.
    Exit {
        #[serde(default)]
        node: u64,
        life: u64,
        code: Option<i32>,
    },
    /// What the run was, logged once at its start: the engine (`memory` or `redis`) and
    /// the number of nodes. Logs without it are from a one-node memory run.
    Run { engine: String, nodes: u64 },
    /// The redis-server was stopped (`up: false`) or started again, empty (`up: true`):
    /// the Redis fault phase.
    Redis { t: f64, up: bool },
}

/// A worker's log file; each event is one line.
pub struct LogFile(BufWriter<File>);

impl LogFile {
    pub fn create(dir: &Path, name: &str) -> io::Result<LogFile> {
        Ok(LogFile(BufWriter::new(File::create(
            dir.join(format!("{name}.jsonl")),
        )?)))
    }

    /// Appends one event. A log that cannot be written makes the run worthless: panic.
    pub fn log(&mut self, ev: &Event) {
        let line = serde_json::to_string(ev).expect("events serialise");
        writeln!(self.0, "{line}").expect("write the soak log");
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = self.0.flush();
    }
}

/// Reads every `*.jsonl` file of `dir`, in name order, each in its own order. A line that
/// is not an event is an error (a broken log must not pass as a clean one).
pub fn read_dir(dir: &Path) -> io::Result<Vec<Event>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        for (i, line) in BufReader::new(File::open(&path)?).lines().enumerate() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            let ev = serde_json::from_str(&line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), i + 1),
                )
            })?;
            out.push(ev);
        }
    }
    Ok(out)
}
