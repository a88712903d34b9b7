//! The server's counters and gauges, and their Prometheus text for `GET /metrics`.
//!
//! **Owns** one [`Metrics`] per server: plain atomics, shared (`Arc`) by every thread
//! that counts something. Counting is one relaxed `fetch_add` (or `store`) where the
//! thing happens: no lock, no allocation, no label lookup, so the hot paths (the hub's
//! fan-out, a reader's message) pay a few nanoseconds. Labelled families (rejections by
//! status, closes by code, recoveries by outcome) are fixed arrays indexed by the label.
//! **Woken** by nothing: a scrape (a connection thread answering `GET /metrics`) reads
//! every atomic once and hands the values to `prometheus-client`'s encoder, which writes
//! the text exposition (format 0.0.4). Values read during a scrape are each exact but
//! not a single snapshot, as with any Prometheus client.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The statuses a refused request is counted under (`rejected_total{status=...}`): a
/// refused handshake, a plain-HTTP request answered with an error, a failed API publish.
pub(crate) const REJECT_STATUSES: [u16; 11] = [400, 401, 403, 404, 405, 408, 411, 413, 426, 431, 503];

/// The close codes counted by name (`closed_total{code=...}`); any other is `other`.
/// 1006 is a connection that ended without a Close frame from either side.
pub(crate) const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1005];

/// The closed-by-code counter for codes outside [`CLOSE_CODES`].
const OTHER_CODE: usize = CLOSE_CODES.len();

/// Upper bounds of the fan-out duration histogram, in microseconds: from one small
/// broadcast to a few members up to ten thousand members behind slow sockets.
const FANOUT_BUCKETS_US: [u64; 10] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000, 50_000];

/// The sizes of the hub's channel state, which only the hub thread can read: a scrape
/// asks it through its inbox (`Hub::stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HubStats {
    /// Channels whose state exists (subscribers or history).
    pub channels: usize,
    /// Subscriptions of every connection together.
    pub subscriptions: usize,
    /// Bytes of publications held in history.
    pub history_bytes: usize,
}

/// A histogram of durations with fixed buckets, counted with atomics only.
#[derive(Debug, Default)]
pub(crate) struct DurationHistogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; FANOUT_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl DurationHistogram {
    /// Counts one observation.
    pub(crate) fn observe(&self, d: Duration) {
        let us = d.as_micros();
        let i = FANOUT_BUCKETS_US
            .iter()
            .position(|b| us <= u128::from(*b))
            .unwrap_or(FANOUT_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// `(upper bound in seconds, count in this bucket alone)` per bucket, `+Inf` last, as
    /// `prometheus-client`'s encoder wants them (it adds them up); the sum in seconds;
    /// the count.
    fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            total += n;
            let bound = FANOUT_BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            out.push((bound, n));
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        // The count is the buckets' total, so the two always agree.
        (out, sum, total)
    }
}

/// Every counter and gauge of one server. See the module docs and `docs/operations.md`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// TCP connections accepted (before the handshake).
    pub accepted: AtomicU64,
    /// Connections refused with an HTTP status, indexed like [`REJECT_STATUSES`].
    pub rejected: [AtomicU64; REJECT_STATUSES.len()],
    /// WebSocket connections open now (upgraded and registered with the hub).
    pub open: AtomicI64,
    /// WebSocket connections closed, indexed like [`CLOSE_CODES`], then `other`.
    pub closed: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Text and binary messages received from clients, and their payload bytes.
    pub messages_in: AtomicU64,
    /// See `messages_in`.
    pub bytes_in: AtomicU64,
    /// Text and binary messages handed to clients' connections (sent at once or
    /// queued), and their payload bytes. Pings and Close frames are not counted.
    pub messages_out: AtomicU64,
    /// See `messages_out`.
    pub bytes_out: AtomicU64,
    /// Connections cut because their queue was full.
    pub slow_consumers: AtomicU64,
    /// Writer threads started on demand (a frame had to wait for a client's socket).
    pub writer_spawns: AtomicU64,
    /// Connections cut because no writer thread could be started for them (the writer
    /// budget was in use, or the system refused the thread).
    pub writer_spawns_refused: AtomicU64,
    /// Connections handed to a spare connection thread (one whose earlier connection had
    /// ended) instead of a new thread.
    pub reader_reuses: AtomicU64,
    /// Broadcasts the hub fanned out.
    pub broadcasts: AtomicU64,
    /// Publications sequenced on channels (protocol v1 and the HTTP API).
    pub publications: AtomicU64,
    /// Hub time per broadcast.
    pub fanout: DurationHistogram,
    /// Subscriptions with `since`, by outcome: `[not recovered, recovered]`.
    pub recoveries: [AtomicU64; 2],
    /// `hello`s the authorizer refused (bad, expired or missing token...).
    pub hellos_refused: AtomicU64,
    /// `join` and `leave` pushes handed to watchers.
    pub presence_pushes: AtomicU64,
}

impl Metrics {
    /// Counts a refusal with `status`; a status outside [`REJECT_STATUSES`] is not one
    /// a handshake can end with and is ignored.
    pub(crate) fn rejected(&self, status: u16) {
        if let Some(i) = REJECT_STATUSES.iter().position(|s| *s == status) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a connection closed with `code` (1006: no Close frame at all).
    pub(crate) fn closed(&self, code: u16) {
        let i = CLOSE_CODES.iter().position(|c| *c == code).unwrap_or(OTHER_CODE);
        self.closed[i].fetch_add(1, Relaxed);
    }

    /// Counts `n` messages of `len` payload bytes each, handed to clients.
    pub(crate) fn sent(&self, n: usize, len: usize) {
        self.messages_out.fetch_add(n as u64, Relaxed);
        self.bytes_out.fetch_add((n * len) as u64, Relaxed);
    }

    /// Counts one broadcast: the hub's time on it, the members it reached with a
    /// message of `len` payload bytes, and the slow consumers it cut.
    pub(crate) fn broadcast(&self, took: Duration, delivered: usize, len: usize, slow: usize) {
        self.fanout.observe(took);
        self.broadcasts.fetch_add(1, Relaxed);
        self.sent(delivered, len);
        self.slow_consumers.fetch_add(slow as u64, Relaxed);
    }

    /// Counts one new publication (not a retried `pub`): the hub's time offering its push
    /// to the subscribers, the `delivered` it reached with `len` payload bytes, and the
    /// slow consumers it cut.
    pub(crate) fn publication(&self, took: Duration, delivered: usize, len: usize, slow: usize) {
        self.fanout.observe(took);
        self.publications.fetch_add(1, Relaxed);
        self.sent(delivered, len);
        self.slow_consumers.fetch_add(slow as u64, Relaxed);
    }

    /// Counts a `sub`'s outcome: with `since`, recovered or not; without, nothing.
    pub(crate) fn recovery(&self, recovered: Option<bool>) {
        if let Some(r) = recovered {
            self.recoveries[usize::from(r)].fetch_add(1, Relaxed);
        }
    }

    /// Counts one message of `len` payload bytes from a client.
    pub(crate) fn received(&self, len: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(len as u64, Relaxed);
    }

    /// The Prometheus text exposition of every metric, with `inbox` (the hub's inbox
    /// depth now), the hub's `stats` (left out when the hub did not answer), the channel
    /// engine's failures so far, the spare connection threads waiting now and the
    /// process's thread count read at this moment.
    pub(crate) fn render(
        self: &Arc<Self>,
        inbox: usize,
        stats: Option<HubStats>,
        engine_errors: u64,
        spare_readers: usize,
    ) -> String {
        let mut registry = Registry::with_prefix("wshub");
        registry.register_collector(Box::new(Scrape {
            metrics: self.clone(),
            inbox,
            stats,
            engine_errors,
            spare_readers,
            threads: process_threads(),
        }));
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail, and every name here is valid.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// Threads of this process now, from `/proc/self/status` (0 where there is no procfs).
fn process_threads() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One scrape: the values read once, encoded by `prometheus-client`.
struct Scrape {
    metrics: Arc<Metrics>,
    inbox: usize,
    stats: Option<HubStats>,
    engine_errors: u64,
    spare_readers: usize,
    threads: i64,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        encode_all(self, encoder)
    }
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> Result<(), fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn labelled(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (String, u64)>,
) -> Result<(), fmt::Error> {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, value.as_str())];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_all(s: &Scrape, mut e: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
    let m = &*s.metrics;
    let load = |a: &AtomicU64| a.load(Relaxed);
    gauge(
        &mut e,
        "connections_open",
        "WebSocket connections open now",
        m.open.load(Relaxed),
    )?;
    counter(
        &mut e,
        "connections_accepted",
        "TCP connections accepted",
        load(&m.accepted),
    )?;
    labelled(
        &mut e,
        "connections_rejected",
        "Connections refused before an upgrade, by HTTP status",
        "status",
        REJECT_STATUSES
            .iter()
            .zip(&m.rejected)
            .map(|(s, n)| (s.to_string(), load(n))),
    )?;
    labelled(
        &mut e,
        "connections_closed",
        "WebSocket connections closed, by close code (1006: no Close frame)",
        "code",
        CLOSE_CODES
            .iter()
            .map(u16::to_string)
            .chain(["other".to_string()])
            .zip(m.closed.iter().map(load)),
    )?;
    counter(
        &mut e,
        "messages_received",
        "Text and binary messages from clients",
        load(&m.messages_in),
    )?;
    counter(
        &mut e,
        "received_bytes",
        "Payload bytes of messages from clients",
        load(&m.bytes_in),
    )?;
    counter(
        &mut e,
        "messages_sent",
        "Text and binary messages handed to clients",
        load(&m.messages_out),
    )?;
    counter(
        &mut e,
        "sent_bytes",
        "Payload bytes of messages handed to clients",
        load(&m.bytes_out),
    )?;
    counter(
        &mut e,
        "slow_consumers",
        "Connections cut because their queue was full",
        load(&m.slow_consumers),
    )?;
    counter(
        &mut e,
        "writer_spawns",
        "Writer threads started on demand for frames that had to wait for a socket",
        load(&m.writer_spawns),
    )?;
    counter(
        &mut e,
        "writer_spawns_refused",
        "Connections cut because no writer thread could be started for them",
        load(&m.writer_spawns_refused),
    )?;
    counter(
        &mut e,
        "reader_reuses",
        "Connections served by a spare connection thread instead of a new one",
        load(&m.reader_reuses),
    )?;
    counter(
        &mut e,
        "broadcasts",
        "Broadcasts fanned out by the hub",
        load(&m.broadcasts),
    )?;
    counter(
        &mut e,
        "publications",
        "Publications sequenced on channels",
        load(&m.publications),
    )?;
    counter(
        &mut e,
        "hellos_refused",
        "hello commands refused by the authorizer",
        load(&m.hellos_refused),
    )?;
    counter(
        &mut e,
        "presence_pushes",
        "join and leave pushes handed to watchers",
        load(&m.presence_pushes),
    )?;
    let (buckets, sum, count) = m.fanout.read();
    let mut h = e.encode_descriptor(
        "fanout_duration_seconds",
        "Hub time per broadcast",
        None,
        MetricType::Histogram,
    )?;
    h.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    gauge(
        &mut e,
        "hub_inbox_depth",
        "Messages waiting in the hub's inbox",
        s.inbox as i64,
    )?;
    if let Some(st) = s.stats {
        gauge(
            &mut e,
            "channels",
            "Channels whose state exists now",
            st.channels as i64,
        )?;
        gauge(
            &mut e,
            "subscriptions",
            "Channel subscriptions now",
            st.subscriptions as i64,
        )?;
        gauge(
            &mut e,
            "history_bytes",
            "Bytes held in channel history",
            st.history_bytes as i64,
        )?;
    }
    gauge(
        &mut e,
        "spare_readers",
        "Connection threads waiting for the next connection",
        s.spare_readers as i64,
    )?;
    gauge(
        &mut e,
        "process_threads",
        "Threads of the server process",
        s.threads,
    )?;
    labelled(
        &mut e,
        "recoveries",
        "Subscriptions with since, by outcome",
        "recovered",
        ["false", "true"]
            .into_iter()
            .map(str::to_string)
            .zip(m.recoveries.iter().map(load)),
    )?;
    counter(
        &mut e,
        "engine_errors",
        "Errors from the channel engine",
        s.engine_errors,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{text}"))
    }

    #[test]
    fn counters_render_with_their_labels() {
        let m = Arc::new(Metrics::default());
        m.rejected(404);
        m.rejected(404);
        m.rejected(503);
        m.closed(1000);
        m.closed(4000);
        m.sent(3, 10);
        let text = m.render(7, None, 0, 0);
        assert_eq!(
            line(&text, "wshub_connections_rejected_total{status=\"404\"}"),
            "wshub_connections_rejected_total{status=\"404\"} 2"
        );
        for expected in [
            "wshub_connections_rejected_total{status=\"503\"} 1\n",
            "wshub_connections_closed_total{code=\"1000\"} 1\n",
            "wshub_connections_closed_total{code=\"other\"} 1\n",
            "wshub_messages_sent_total 3\n",
            "wshub_sent_bytes_total 30\n",
            "wshub_hub_inbox_depth 7\n",
            "# TYPE wshub_connections_open gauge\n",
        ] {
            assert!(text.contains(expected), "no {expected:?} in\n{text}");
        }
    }

    #[test]
    fn a_duration_lands_in_every_bucket_from_its_own_up() {
        let m = Arc::new(Metrics::default());
        m.fanout.observe(Duration::from_micros(30));
        m.fanout.observe(Duration::from_secs(1));
        let text = m.render(0, None, 0, 0);
        assert!(
            text.contains("wshub_fanout_duration_seconds_bucket{le=\"2.5e-05\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("wshub_fanout_duration_seconds_bucket{le=\"5e-05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("wshub_fanout_duration_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("wshub_fanout_duration_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("wshub_fanout_duration_seconds_count 2\n"), "{text}");
        assert!(
            line(&text, "wshub_fanout_duration_seconds_sum").ends_with(" 1.00003"),
            "{text}"
        );
    }

    #[test]
    fn a_status_no_handshake_ends_with_is_not_counted() {
        let m = Arc::new(Metrics::default());
        m.rejected(200);
        assert!(m.rejected.iter().all(|n| n.load(Relaxed) == 0));
    }
}
