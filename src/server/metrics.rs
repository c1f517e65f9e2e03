//! Per-shard counters and their Prometheus text rendering.
//!
//! Each shard owns one [`ShardMetrics`] (cache-line aligned, shared with the admin thread by
//! `Arc`). Only the owning shard writes it, with plain relaxed load + store (no locked
//! read-modify-write, no contention on the hot path); the admin thread only reads, and sums
//! over shards when rendering `/metrics`. Gauges that are per shard keep a `shard` label
//! (`tether_connections{shard="N"}`); counters are node totals.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Outcomes of an upgrade attempt, the `result` label of `tether_handshakes_total`. A closed
/// list, so the label has at most `ALL.len()` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Upgraded (101).
    Ok,
    /// 400: a malformed upgrade request.
    BadRequest,
    /// 404: no endpoint at the path.
    NotFound,
    /// 405: not GET.
    MethodNotAllowed,
    /// 426: not WebSocket version 13.
    UnsupportedVersion,
    /// 431: head or header count over the limit.
    HeadTooLarge,
    /// 401: the endpoint needs a token and got none.
    MissingToken,
    /// 401: the token's signature, claims or format are wrong.
    InvalidToken,
    /// 401: the token has expired.
    Expired,
    /// 401: the token is not valid yet (`nbf`).
    NotYetValid,
    /// 400: credentials given more than once.
    AmbiguousCredentials,
    /// 403: the backend authorisation said no.
    Forbidden,
    /// 503: the backend authorisation did not answer in time.
    AuthUnavailable,
    /// The endpoint refused for another reason (its status in the response).
    Rejected,
    /// 403: `Origin` not in `allowed_origins`.
    OriginNotAllowed,
    /// 503: the node is at its connection capacity.
    OverCapacity,
    /// 503: the node is draining.
    Draining,
    /// 408: the request did not arrive within `handshake_timeout`.
    Timeout,
    /// The client went away during the handshake.
    IoError,
    /// A listener that expects a PROXY protocol header did not get a valid one in time: closed
    /// without a response (the reason is in `tether_proxy_headers_total`).
    ProxyHeader,
}

impl HandshakeResult {
    /// Every result, in the order they are rendered.
    pub const ALL: [HandshakeResult; 20] = [
        HandshakeResult::Ok,
        HandshakeResult::BadRequest,
        HandshakeResult::NotFound,
        HandshakeResult::MethodNotAllowed,
        HandshakeResult::UnsupportedVersion,
        HandshakeResult::HeadTooLarge,
        HandshakeResult::MissingToken,
        HandshakeResult::InvalidToken,
        HandshakeResult::Expired,
        HandshakeResult::NotYetValid,
        HandshakeResult::AmbiguousCredentials,
        HandshakeResult::Forbidden,
        HandshakeResult::AuthUnavailable,
        HandshakeResult::Rejected,
        HandshakeResult::OriginNotAllowed,
        HandshakeResult::OverCapacity,
        HandshakeResult::Draining,
        HandshakeResult::Timeout,
        HandshakeResult::IoError,
        HandshakeResult::ProxyHeader,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::BadRequest => "bad_request",
            HandshakeResult::NotFound => "not_found",
            HandshakeResult::MethodNotAllowed => "method_not_allowed",
            HandshakeResult::UnsupportedVersion => "unsupported_version",
            HandshakeResult::HeadTooLarge => "head_too_large",
            HandshakeResult::MissingToken => "missing_token",
            HandshakeResult::InvalidToken => "invalid_token",
            HandshakeResult::Expired => "expired",
            HandshakeResult::NotYetValid => "not_yet_valid",
            HandshakeResult::AmbiguousCredentials => "ambiguous_credentials",
            HandshakeResult::Forbidden => "forbidden",
            HandshakeResult::AuthUnavailable => "auth_unavailable",
            HandshakeResult::Rejected => "rejected",
            HandshakeResult::OriginNotAllowed => "origin_not_allowed",
            HandshakeResult::OverCapacity => "over_capacity",
            HandshakeResult::Draining => "draining",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::IoError => "io_error",
            HandshakeResult::ProxyHeader => "proxy_header",
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

/// Outcomes of reading a PROXY protocol header, the `result` label of
/// `tether_proxy_headers_total`: `ok`, the [`super::proxy_protocol::ProxyError::label`]s, `timeout`
/// (not complete within `handshake_timeout`), and `unexpected` (a header on a `ws://` listener
/// that does not expect one: answered 400).
pub const PROXY_HEADER_RESULTS: [&str; 7] = [
    "ok",
    "missing",
    "too_large",
    "malformed",
    "unsupported",
    "timeout",
    "unexpected",
];

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
    /// `tether_handshakes_total`: upgrade attempts, indexed like [`HandshakeResult::ALL`].
    pub handshakes: [AtomicU64; HandshakeResult::ALL.len()],
    /// `tether_messages_received_total`: complete data messages received.
    pub messages_received: AtomicU64,
    /// `tether_messages_sent_total`: data messages queued for sending.
    pub messages_sent: AtomicU64,
    /// `tether_bytes_received_total`: bytes read from upgraded connections.
    pub bytes_received: AtomicU64,
    /// `tether_bytes_sent_total`: bytes written to upgraded connections.
    pub bytes_sent: AtomicU64,
    /// `tether_closes_total`: ended connections, indexed like [`CLOSE_CODES`]; the last slot
    /// counts every other code.
    pub closes: [AtomicU64; CLOSE_CODES.len() + 1],
    /// `tether_slow_consumer_closes_total`: closed because the outbound queue exceeded
    /// `outbound_bytes_max`.
    pub slow_consumer_closes: AtomicU64,
    /// `tether_silence_timeouts_total`: dropped after `silence_timeout` without a frame.
    pub silence_timeouts: AtomicU64,
    /// `tether_pings_sent_total`: pings sent to idle peers.
    pub pings_sent: AtomicU64,
    /// `tether_pongs_dropped_total`: pongs skipped because control frames were already queued.
    pub pongs_dropped: AtomicU64,
    /// `tether_accept_errors_total`: `accept()` failures (e.g. EMFILE).
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
    /// PROXY protocol headers read, by [`PROXY_HEADER_RESULTS`].
    pub proxy_headers: [AtomicU64; PROXY_HEADER_RESULTS.len()],
    /// From the start of a connection's task (right after accept) to the 101 written.
    pub handshake_duration: Histogram,
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

/// Upper bounds of the latency histograms' buckets, in microseconds: 100 µs to 10 s in the
/// 1-2.5-5 steps Prometheus client libraries use, so quantiles over a handshake (about 100 µs on
/// loopback), a delivery across nodes (about a millisecond) and a timeout (seconds) all land
/// in a bucket of their own. Fixed: the `le` label has 17 values whatever the traffic.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram of one shard, written only by that shard (plain relaxed load + store,
/// like the counters) and summed over shards at scrape time. 18 words: 16 buckets, the
/// `+Inf` bucket and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; the last one is above every bound).
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of the observations, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation. Only the owning shard may call this.
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        self.observe_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one observation in microseconds. Only the owning shard may call this.
    #[inline]
    pub fn observe_us(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        add(&self.buckets[i], 1);
        add(&self.sum_us, us);
    }
}

/// Appends one histogram in Prometheus text format (seconds), summed over `parts` (one per
/// shard).
pub fn render_histogram(out: &mut String, name: &str, help: &str, parts: &[&Histogram]) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += parts
            .iter()
            .map(|h| h.buckets[i].load(Relaxed))
            .sum::<u64>();
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += parts
        .iter()
        .map(|h| h.buckets[LATENCY_BUCKETS_US.len()].load(Relaxed))
        .sum::<u64>();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum_us: u64 = parts.iter().map(|h| h.sum_us.load(Relaxed)).sum();
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

impl ShardMetrics {
    /// Counts one upgrade attempt's outcome.
    pub fn handshake(&self, r: HandshakeResult) {
        let i = HandshakeResult::ALL
            .iter()
            .position(|&x| x == r)
            .expect("every result is listed in ALL");
        add(&self.handshakes[i], 1);
    }

    /// Counts a PROXY header outcome (one of [`PROXY_HEADER_RESULTS`]).
    pub fn proxy_header(&self, result: &str) {
        let i = PROXY_HEADER_RESULTS
            .iter()
            .position(|&x| x == result)
            .expect("every PROXY header result is listed");
        add(&self.proxy_headers[i], 1);
    }

    /// Counts one ended connection under its close code (1006: no close handshake).
    pub fn close(&self, code: u16) {
        add(&self.closes[close_index(code)], 1);
    }
}

/// Node-wide values the admin endpoint reports beside the shard counters.
#[derive(Debug, Clone, Copy)]
pub struct NodeGauges {
    /// `tether_capacity_connections`: connections this node admits (the smaller of
    /// `max_connections` and the open-files capacity).
    pub capacity_connections: u64,
    /// `tether_open_files_limit`: the RLIMIT_NOFILE soft limit after raising it to the hard
    /// limit.
    pub open_files_limit: u64,
    /// `tether_draining`: the node drains (stops accepting, closes with 1001).
    pub draining: bool,
}

fn sum(shards: &[&ShardMetrics], f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
    shards.iter().map(|m| f(m).load(Relaxed)).sum()
}

/// Selects one counter of a shard's metrics.
type Field = fn(&ShardMetrics) -> &AtomicU64;

/// Renders the Prometheus text exposition format (version 0.0.4).
#[expect(
    clippy::too_many_lines,
    reason = "straight-line emitter: one section after another in output order, split it and the format scatters"
)]
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
    head(
        &mut o,
        "tether_proxy_headers_total",
        "counter",
        "PROXY protocol headers on listeners that expect one, by result (unexpected: a header on a ws:// listener that does not, answered 400).",
    );
    for (k, r) in PROXY_HEADER_RESULTS.iter().enumerate() {
        let v = sum(shards, |m| &m.proxy_headers[k]);
        let _ = writeln!(o, "tether_proxy_headers_total{{result=\"{r}\"}} {v}");
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
    let handshakes: Vec<&Histogram> = shards.iter().map(|m| &m.handshake_duration).collect();
    render_histogram(
        &mut o,
        "tether_handshake_duration_seconds",
        "From accept to the 101 response written, for accepted upgrades.",
        &handshakes,
    );
    o
}

/// Appends the standard `process_*` metrics of this process (read from `/proc/self` at
/// scrape time; a value that cannot be read is left out) and `tether_build_info`.
pub fn render_process(out: &mut String) {
    use std::fmt::Write;
    let mut gauge = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    // SAFETY: sysconf and getpagesize only read system constants.
    let (ticks_per_s, page_bytes) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64,
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            (utime + stime) / ticks_per_s,
        );
    }
    if let Some(rss_pages) = field(24) {
        gauge(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_pages * page_bytes,
        );
    }
    if let Some(vsize) = field(23) {
        gauge(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        );
    }
    let boot_s = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    if let (Some(boot_s), Some(start_ticks)) = (boot_s, field(22)) {
        gauge(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            boot_s + start_ticks / ticks_per_s,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            dir.count() as f64,
        );
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        gauge(
            "process_max_fds",
            "gauge",
            "Open-files limit (soft) of the process.",
            lim.rlim_cur as f64,
        );
    }
    let _ = writeln!(
        out,
        "# HELP tether_build_info The running build: version, profile, target. Always 1.\n\
         # TYPE tether_build_info gauge\n\
         tether_build_info{{version=\"{}\",profile=\"{}\",arch=\"{}\",os=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::env::consts::ARCH,
        std::env::consts::OS,
    );
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
        assert!(text.contains("tether_handshake_duration_seconds_count 0\n"));
    }

    #[test]
    fn process_metrics_are_read() {
        let mut out = String::new();
        render_process(&mut out);
        let value = |name: &str| -> f64 {
            let prefix = format!("\n{name} ");
            let at = out
                .find(&prefix)
                .unwrap_or_else(|| panic!("{name} in {out}"));
            out[at + prefix.len()..]
                .lines()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1e5);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now_s + 1.0 && start > now_s - 86_400.0,
            "{start} vs {now_s}"
        );
        assert!(out.contains("tether_build_info{version=\""), "{out}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_summed_over_shards() {
        let (a, b) = (Histogram::default(), Histogram::default());
        a.observe_us(100); // on the first bound: le="0.0001"
        a.observe_us(101);
        b.observe(std::time::Duration::from_millis(3));
        b.observe(std::time::Duration::from_secs(60)); // above every bound
        let mut out = String::new();
        render_histogram(&mut out, "x_seconds", "help", &[&a, &b]);
        assert!(out.contains("# TYPE x_seconds histogram\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(
            out.contains("x_seconds_bucket{le=\"0.00025\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_bucket{le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum 60.003201\n"), "{out}");
    }
}
