//! Admin endpoint and shards: metrics content, health/readiness, connections spread over
//! pinned shard threads.

mod server_support;

use std::time::Duration;

use server_support::*;

#[test]
fn admin_endpoints_and_metric_names() {
    let srv = Server::start(&["--shards", "1", "--echo"]);
    assert_eq!(http_get(srv.admin, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(srv.admin, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(http_get(srv.admin, "/nope").0, 404);
    let m = srv.metrics();
    for name in [
        "tether_connections{shard=\"0\"}",
        "tether_handshakes_total{result=\"ok\"}",
        "tether_messages_received_total",
        "tether_messages_sent_total",
        "tether_bytes_received_total",
        "tether_bytes_sent_total",
        "tether_closes_total{code=\"1000\"}",
        "tether_slow_consumer_closes_total",
        "tether_capacity_connections",
        "tether_open_files_limit",
    ] {
        metric_value(&m, name);
    }
    // Every sample is ours (`tether_`) or the standard process collector's (`process_`), with a
    // finite value (histogram sums and CPU seconds are fractional).
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(
            name.starts_with("tether_") || name.starts_with("process_"),
            "{line}"
        );
        let value = value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(value.is_finite(), "{line}");
    }
    // Gauges move with connections.
    let c = Client::connect(srv.port, "/echo");
    assert!(eventually(Duration::from_secs(2), || srv
        .metric("tether_connections{shard=\"0\"}")
        == 1));
    c.shutdown();
    assert!(eventually(Duration::from_secs(2), || srv
        .metric("tether_connections{shard=\"0\"}")
        == 0));
    assert_eq!(srv.metric("tether_closes_total{code=\"1006\"}"), 1);
}

/// CPUs this test process may use.
fn usable_cpus() -> usize {
    tether_shards::cpus::usable_cpus().unwrap().len()
}

#[test]
fn two_shards_share_1000_connections_and_are_pinned() {
    if usable_cpus() < 2 {
        eprintln!("skipped: needs 2 usable CPUs");
        return;
    }
    let srv = Server::start(&["--shards", "2", "--echo"]);
    let clients: Vec<Client> = (0..1000)
        .map(|_| Client::connect(srv.port, "/echo"))
        .collect();
    assert!(eventually(Duration::from_secs(10), || {
        let m = srv.metrics();
        metric_value(&m, "tether_connections{shard=\"0\"}")
            + metric_value(&m, "tether_connections{shard=\"1\"}")
            == 1000
    }));
    let m = srv.metrics();
    let (a, b) = (
        metric_value(&m, "tether_connections{shard=\"0\"}"),
        metric_value(&m, "tether_connections{shard=\"1\"}"),
    );
    assert!(a >= 300 && b >= 300, "uneven spread: {a} / {b}");

    // Each shard thread is pinned to a single, different CPU.
    let mut pinned = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", srv.pid())).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
        if !comm.starts_with("tether-shard-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        pinned.push((comm.trim().to_string(), cpus));
    }
    pinned.sort();
    pinned.dedup_by(|x, y| x.0 == y.0);
    assert_eq!(pinned.len(), 2, "{pinned:?}");
    for (_, cpus) in &pinned {
        assert!(
            cpus.parse::<usize>().is_ok(),
            "not pinned to one CPU: {pinned:?}"
        );
    }
    assert_ne!(pinned[0].1, pinned[1].1, "{pinned:?}");
    drop(clients);
}
