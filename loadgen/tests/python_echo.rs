//! tether-loadgen against an independent server (Python `websockets`): counts, latencies,
//! message round trips and sequence checks, errors by cause, schedules, churn, storm, sources.

mod common;

use std::collections::BTreeSet;

use common::{assert_accounted, assert_latency, assert_split, loadgen, python_peer, scratch, u};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

#[test]
fn echo_counts_latencies_and_sequences_over_two_workers() {
    let peer = python_peer("echo", &[]);
    let url = format!("ws://127.0.0.1:{}/echo", peer.port);
    let hdr = scratch("hdr");
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "300",
        "--rate",
        "300",
        "--hold",
        "1s",
        "--workers",
        "2",
        "--msg-rate",
        "4",
        "--msg-size",
        "100",
        "--quiet",
        "--hdr-dir",
        hdr.to_str().unwrap(),
    ]);
    let v = run.succeeded();
    assert_eq!(u(v, "clients_target"), 300);
    assert_eq!(u(v, "workers"), 2);
    assert_eq!(u(v, "handshakes_ok"), 300, "{v:#}");
    assert_eq!(u(v, "handshake_errors_total"), 0, "{v:#}");
    assert_eq!(u(v, "connected_peak"), 300, "{v:#}");
    assert_latency(v, "handshake_latency_us", 300);
    assert_latency(v, "tcp_connect_latency_us", 300);
    assert_latency(v, "upgrade_latency_us", 300);
    // Handshake latency counts from the intended start, so it is at least the upgrade time.
    assert!(u(v, "handshake_latency_us.max") >= u(v, "upgrade_latency_us.max"));
    let sent = u(v, "messages.sent");
    let received = u(v, "messages.received");
    // 300 clients x 4/s for at least the 1 s hold.
    assert!(sent >= 1000, "{v:#}");
    assert_eq!(
        sent, received,
        "every echo comes back before the close: {v:#}"
    );
    assert_eq!(u(v, "messages.gaps"), 0);
    assert_eq!(u(v, "messages.duplicates"), 0);
    assert_latency(v, "message_rtt_us", received);
    assert_split(v, "message_rtt_us", sent, received);
    assert_eq!(u(v, "closes.clean"), 300, "{v:#}");
    // Open loop: the achieved rate cannot beat the schedule (300 connects over 299/300 s).
    let achieved = v["connect_rate_achieved_per_s"].as_f64().unwrap();
    assert!(
        achieved > 0.0 && achieved <= 300.0 * 300.0 / 299.0 + 0.1,
        "{v:#}"
    );

    // The interval logs hold exactly the merged handshakes.
    let log = std::fs::read(hdr.join("handshake.hlog")).expect("handshake.hlog");
    let mut total = 0;
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&log) {
        if let Ok(LogEntry::Interval(i)) = entry {
            let bytes = base64_decode(i.encoded_histogram());
            let h: Histogram<u64> = de.deserialize(&mut bytes.as_slice()).unwrap();
            total += h.len();
        }
    }
    assert_eq!(total, 300);
    for name in ["connect", "upgrade", "rtt", "send_lag", "transit"] {
        assert!(hdr.join(format!("{name}.hlog")).exists());
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn errors_are_counted_by_cause() {
    // Refused: a port nobody listens on (bound, then released).
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let run = loadgen(&[
        "--url",
        &format!("ws://127.0.0.1:{port}/"),
        "--clients",
        "20",
        "--rate",
        "200",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshake_errors.refused"), 20, "{v:#}");
    assert_eq!(u(v, "handshake_errors_total"), 20);
    assert_eq!(u(v, "handshakes_ok"), 0);

    let peer = python_peer("status503", &[]);
    let run = loadgen(&[
        "--url",
        &format!("ws://127.0.0.1:{}/", peer.port),
        "--clients",
        "20",
        "--rate",
        "200",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshake_errors.status_503"), 20, "{v:#}");
    assert_accounted(v);
    assert_latency(v, "tcp_connect_latency_us", 20);
    assert_eq!(u(v, "handshake_latency_us.count"), 0);

    let peer = python_peer("silent", &[]);
    let run = loadgen(&[
        "--url",
        &format!("ws://127.0.0.1:{}/", peer.port),
        "--clients",
        "10",
        "--rate",
        "100",
        "--handshake-timeout",
        "300ms",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshake_errors.timeout_upgrade"), 10, "{v:#}");
    assert_accounted(v);

    let peer = python_peer("close1001", &[]);
    let run = loadgen(&[
        "--url",
        &format!("ws://127.0.0.1:{}/", peer.port),
        "--clients",
        "20",
        "--rate",
        "200",
        "--hold",
        "1s",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshakes_ok"), 20, "{v:#}");
    assert_eq!(u(v, "disconnects.closed_by_server_1001"), 20, "{v:#}");
    assert_eq!(u(v, "connected_peak"), 20, "{v:#}");
}

#[test]
fn churn_and_reconnect_storm() {
    let peer = python_peer("echo", &[]);
    let url = format!("ws://127.0.0.1:{}/", peer.port);
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "100",
        "--rate",
        "200",
        "--hold",
        "500ms",
        "--churn",
        "40/s",
        "--churn-for",
        "1s",
        "--storm-drop",
        "50%",
        "--storm-backoff",
        "300ms",
        "--quiet",
    ]);
    let v = run.succeeded();
    assert_eq!(u(v, "handshake_errors_total"), 0, "{v:#}");
    assert_eq!(u(v, "churn.disconnects"), 40, "{v:#}");
    assert_eq!(u(v, "storm.dropped"), 50, "{v:#}");
    assert_eq!(u(v, "storm.reconnected"), 50, "{v:#}");
    assert_eq!(v["storm"]["recovered"], true, "{v:#}");
    let recovery = v["storm"]["recovery_s"].as_f64().unwrap();
    assert!(recovery > 0.0 && recovery < 5.0, "{v:#}");
    assert_eq!(u(v, "handshakes_ok"), 100 + 40 + 50, "{v:#}");
    assert_eq!(u(v, "closes.clean"), 100 + 40, "{v:#}");
}

#[test]
fn ramp_and_poisson_schedules() {
    let peer = python_peer("echo", &[]);
    let url = format!("ws://127.0.0.1:{}/", peer.port);
    // A ramp 100 -> 400/s over 1 s holds 100 + 300/2 = 250 connects.
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "250",
        "--rate",
        "100:400",
        "--ramp",
        "1s",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshakes_ok"), 250, "{v:#}");
    let end = v["phases_s"]["connect_end"].as_f64().unwrap();
    assert!((0.98..=1.0).contains(&end), "{v:#}");

    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "200",
        "--rate",
        "400",
        "--arrivals",
        "poisson",
        "--seed",
        "7",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshakes_ok"), 200, "{v:#}");
    let end = v["phases_s"]["connect_end"].as_f64().unwrap();
    assert!(end > 0.2 && end < 1.0, "{v:#}");
}

#[test]
fn source_addresses_are_used_round_robin() {
    let log = scratch("peers.log");
    let peer = python_peer("echo", &[("PEER_LOG", log.to_str().unwrap())]);
    let url = format!("ws://127.0.0.1:{}/", peer.port);
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "40",
        "--rate",
        "400",
        "--source",
        "127.0.0.2-127.0.0.5",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshakes_ok"), 40, "{v:#}");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 40);
    let seen: BTreeSet<&str> = lines.iter().copied().collect();
    let want: BTreeSet<&str> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"].into();
    assert_eq!(seen, want);
    for ip in want {
        assert_eq!(lines.iter().filter(|l| **l == ip).count(), 10, "{ip}");
    }
}
