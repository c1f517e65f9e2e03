//! Per-shard counters and their Prometheus text rendering.
//!
//! Each shard owns one [`ShardMetrics`] (cache-line aligned, shared with the admin thread by
//! `Arc`). Only the owning shard writes it, with plain relaxed load + store (no locked
//! read-modify-write, no contention on the hot path); the admin thread only reads, and sums
//! over shards when rendering `/metrics`. Gauges that are per shard keep a `shard` label
//! (`tether_connections{shard="N"}`); counters are node totals.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Outcomes of an upgrade attempt, the `result` label of `tether_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    UnsupportedVersion,
    HeadTooLarge,
    Rejected,
    OverCapacity,
    Draining,
    Timeout,
    IoError,
}

impl HandshakeResult {
    pub const ALL: [HandshakeResult; 11] = [
        HandshakeResult::Ok,
        HandshakeResult::BadRequest,
        HandshakeResult::NotFound,
        HandshakeResult::MethodNotAllowed,
        HandshakeResult::UnsupportedVersion,
        HandshakeResult::HeadTooLarge,
        HandshakeResult::Rejected,
        HandshakeResult::OverCapacity,
        HandshakeResult::Draining,
        HandshakeResult::Timeout,
        HandshakeResult::IoError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::BadRequest => "bad_request",
            HandshakeResult::NotFound => "not_found",
            HandshakeResult::MethodNotAllowed => "method_not_allowed",
            HandshakeResult::UnsupportedVersion => "unsupported_version",
            HandshakeResult::HeadTooLarge => "head_too_large",
            HandshakeResult::Rejected => "rejected",
            HandshakeResult::OverCapacity => "over_capacity",
            HandshakeResult::Draining => "draining",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::IoError => "io_error",
        }
    }

    /// The result for an HTTP error status sent before the upgrade.
    pub fn from_status(status: u16) -> HandshakeResult {
        match status {
            404 => HandshakeResult::NotFound,
            405 => HandshakeResult::MethodNotAllowed,
            426 => HandshakeResult::UnsupportedVersion,
            431 => HandshakeResult::HeadTooLarge,
            400 => HandshakeResult::BadRequest,
            _ => HandshakeResult::Rejected,
        }
    }
}

/// Close codes counted individually in `tether_closes_total{code}`; others count as "other".
/// 1005: the peer's close had no code; 1006: the connection ended without a close handshake.
pub const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1013,
];

fn close_index(code: u16) -> usize {
    CLOSE_CODES
        .iter()
        .position(|&c| c == code)
        .unwrap_or(CLOSE_CODES.len())
}

/// One shard's counters. Written only by its shard.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Upgraded connections open now (gauge).
    pub connections: AtomicU64,
    /// Accepted sockets still in the opening handshake (gauge).
    pub handshaking: AtomicU64,
    pub handshakes: [AtomicU64; HandshakeResult::ALL.len()],
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub closes: [AtomicU64; CLOSE_CODES.len() + 1],
    pub slow_consumer_closes: AtomicU64,
    pub silence_timeouts: AtomicU64,
    pub pings_sent: AtomicU64,
    pub pongs_dropped: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Bytes queued for sending and not yet written, over all connections (gauge).
    pub outbound_queued_bytes: AtomicU64,
    /// Bytes of incomplete frames and messages held for this shard's connections (gauge).
    pub partial_bytes: AtomicU64,
    /// Connections closed with 1013 because the shard's `shard_partial_bytes_max` was used up.
    pub partial_budget_closes: AtomicU64,
    /// Connections closed with 1008 because a message was not completed within
    /// `message_timeout`.
    pub message_timeouts: AtomicU64,
}

/// Adds to a counter that only the calling shard writes.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Subtracts from a gauge that only the calling shard writes.
#[inline]
pub fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).saturating_sub(n), Relaxed);
}

impl ShardMetrics {
    pub fn handshake(&self, r: HandshakeResult) {
        let i = HandshakeResult::ALL
            .iter()
            .position(|&x| x == r)
            .expect("every result is listed in ALL");
        add(&self.handshakes[i], 1);
    }

    pub fn close(&self, code: u16) {
        add(&self.closes[close_index(code)], 1);
    }
}

/// Node-wide values the admin endpoint reports beside the shard counters.
#[derive(Debug, Clone, Copy)]
pub struct NodeGauges {
    pub capacity_connections: u64,
    pub open_files_limit: u64,
    pub draining: bool,
}

fn sum(shards: &[&ShardMetrics], f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
    shards.iter().map(|m| f(m).load(Relaxed)).sum()
}

/// Selects one counter of a shard's metrics.
type Field = fn(&ShardMetrics) -> &AtomicU64;

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(shards: &[&ShardMetrics], node: NodeGauges) -> String {
    use std::fmt::Write;
    let mut o = String::with_capacity(4096);
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    head(
        &mut o,
        "tether_connections",
        "gauge",
        "Open upgraded WebSocket connections per shard.",
    );
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(
            o,
            "tether_connections{{shard=\"{i}\"}} {}",
            m.connections.load(Relaxed)
        );
    }
    head(
        &mut o,
        "tether_handshaking",
        "gauge",
        "Accepted sockets still in the opening handshake per shard.",
    );
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(
            o,
            "tether_handshaking{{shard=\"{i}\"}} {}",
            m.handshaking.load(Relaxed)
        );
    }
    head(
        &mut o,
        "tether_handshakes_total",
        "counter",
        "Upgrade attempts by outcome.",
    );
    for (k, r) in HandshakeResult::ALL.iter().enumerate() {
        let v = sum(shards, |m| &m.handshakes[k]);
        let _ = writeln!(o, "tether_handshakes_total{{result=\"{}\"}} {v}", r.label());
    }
    let counters: [(&str, &str, Field); 11] = [
        (
            "tether_messages_received_total",
            "Complete data messages received.",
            |m| &m.messages_received,
        ),
        (
            "tether_messages_sent_total",
            "Data messages queued for sending.",
            |m| &m.messages_sent,
        ),
        (
            "tether_bytes_received_total",
            "Bytes read from upgraded connections.",
            |m| &m.bytes_received,
        ),
        (
            "tether_bytes_sent_total",
            "Bytes written to upgraded connections.",
            |m| &m.bytes_sent,
        ),
        (
            "tether_slow_consumer_closes_total",
            "Connections closed because their outbound queue exceeded outbound_bytes_max.",
            |m| &m.slow_consumer_closes,
        ),
        (
            "tether_silence_timeouts_total",
            "Connections dropped after silence_timeout without any frame from the peer.",
            |m| &m.silence_timeouts,
        ),
        (
            "tether_partial_budget_closes_total",
            "Connections closed with 1013: the shard's shard_partial_bytes_max of incomplete frames and messages was used up.",
            |m| &m.partial_budget_closes,
        ),
        (
            "tether_message_timeouts_total",
            "Connections closed with 1008: a message was not completed within message_timeout of its first byte.",
            |m| &m.message_timeouts,
        ),
        (
            "tether_pings_sent_total",
            "Pings sent to idle peers.",
            |m| &m.pings_sent,
        ),
        (
            "tether_pongs_dropped_total",
            "Pong replies skipped because control frames were already queued (ping flood).",
            |m| &m.pongs_dropped,
        ),
        (
            "tether_accept_errors_total",
            "accept() failures (e.g. EMFILE).",
            |m| &m.accept_errors,
        ),
    ];
    for (name, help, f) in counters {
        head(&mut o, name, "counter", help);
        let _ = writeln!(o, "{name} {}", sum(shards, f));
    }
    head(
        &mut o,
        "tether_closes_total",
        "counter",
        "Ended upgraded connections by close code (1006: no close handshake).",
    );
    for (k, code) in CLOSE_CODES.iter().enumerate() {
        let _ = writeln!(
            o,
            "tether_closes_total{{code=\"{code}\"}} {}",
            sum(shards, |m| &m.closes[k])
        );
    }
    let _ = writeln!(
        o,
        "tether_closes_total{{code=\"other\"}} {}",
        sum(shards, |m| &m.closes[CLOSE_CODES.len()])
    );
    head(
        &mut o,
        "tether_outbound_queued_bytes",
        "gauge",
        "Bytes queued for sending and not yet written.",
    );
    let _ = writeln!(
        o,
        "tether_outbound_queued_bytes {}",
        sum(shards, |m| &m.outbound_queued_bytes)
    );
    head(
        &mut o,
        "tether_partial_bytes",
        "gauge",
        "Bytes of incomplete frames and fragmented messages held per shard (bounded by shard_partial_bytes_max).",
    );
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(
            o,
            "tether_partial_bytes{{shard=\"{i}\"}} {}",
            m.partial_bytes.load(Relaxed)
        );
    }
    head(
        &mut o,
        "tether_capacity_connections",
        "gauge",
        "Connections this node admits (min of max_connections and the open-files capacity).",
    );
    let _ = writeln!(
        o,
        "tether_capacity_connections {}",
        node.capacity_connections
    );
    head(
        &mut o,
        "tether_open_files_limit",
        "gauge",
        "RLIMIT_NOFILE soft limit after raising it to the hard limit.",
    );
    let _ = writeln!(o, "tether_open_files_limit {}", node.open_files_limit);
    head(
        &mut o,
        "tether_draining",
        "gauge",
        "1 while the node drains (stops accepting, closes with 1001).",
    );
    let _ = writeln!(o, "tether_draining {}", u8::from(node.draining));
    head(
        &mut o,
        "tether_shards",
        "gauge",
        "Shards (pinned threads) of this node.",
    );
    let _ = writeln!(o, "tether_shards {}", shards.len());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_and_labels() {
        let a = ShardMetrics::default();
        let b = ShardMetrics::default();
        add(&a.connections, 3);
        add(&b.connections, 4);
        add(&a.messages_received, 5);
        add(&b.messages_received, 6);
        a.handshake(HandshakeResult::NotFound);
        b.close(1001);
        b.close(4000);
        let text = render(
            &[&a, &b],
            NodeGauges {
                capacity_connections: 10,
                open_files_limit: 20,
                draining: true,
            },
        );
        assert!(text.contains("tether_connections{shard=\"0\"} 3\n"));
        assert!(text.contains("tether_connections{shard=\"1\"} 4\n"));
        assert!(text.contains("tether_messages_received_total 11\n"));
        assert!(text.contains("tether_handshakes_total{result=\"not_found\"} 1\n"));
        assert!(text.contains("tether_closes_total{code=\"1001\"} 1\n"));
        assert!(text.contains("tether_closes_total{code=\"other\"} 1\n"));
        assert!(text.contains("tether_draining 1\n"));
        assert!(text.contains("# TYPE tether_slow_consumer_closes_total counter\n"));
    }
}
