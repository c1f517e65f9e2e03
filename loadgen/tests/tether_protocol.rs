//! tether-loadgen's tether-protocol workloads (docs/protocol.md) against real tether nodes:
//! device-to-device `send` through the server (embedded bus), and pushes from a NATS publisher
//! to every device through a node on NATS. One-way delivery latency and sequence checks.

mod common;

use common::{
    assert_all_delivered, assert_latency, loadgen, nats_server, tether_node_with, u, Run,
};

/// A device-to-device run against `url`: `clients` devices connecting at 400/s, held 2 s after
/// the last connect, each sending 5 messages/s to its partner.
fn d2d(url: &str, clients: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "--url",
        url,
        "--clients",
        clients,
        "--rate",
        "400",
        "--hold",
        "2s",
        "--workload",
        "d2d",
        "--msg-rate",
        "5",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

#[test]
fn device_to_device_through_tether() {
    let node = tether_node_with(2, &["--insecure-no-auth"]);
    let url = format!("ws://127.0.0.1:{}/ws", node.port);
    let run = d2d(&url, "200", &["--msg-size", "100"]);
    let v = run.succeeded();
    assert_eq!(u(v, "handshake_errors_total"), 0, "{v:#}");
    let sent = assert_all_delivered(v, 200, 5);
    assert_latency(v, "message_delivery_us", sent);
    assert!(v["tether_errors"].as_object().unwrap().is_empty(), "{v:#}");
}

#[test]
fn device_tokens_are_minted_per_device() {
    let secret = "lg-test-secret-0123456789";
    let node = tether_node_with(2, &["--jwt-secret", secret]);
    let url = format!("ws://127.0.0.1:{}/ws", node.port);
    let run = d2d(&url, "100", &["--device-jwt-secret", secret]);
    let v = run.succeeded();
    assert_all_delivered(v, 100, 5);
    assert!(v["tether_errors"].as_object().unwrap().is_empty(), "{v:#}");

    // A token signed with another secret is refused before the upgrade, for every client.
    let v = d2d(&url, "100", &["--device-jwt-secret", "not-the-node-secret"])
        .json()
        .clone();
    assert_eq!(u(&v, "handshakes_ok"), 0, "{v:#}");
    assert_eq!(u(&v, "handshake_errors.status_401"), 100, "{v:#}");
}

#[test]
fn nats_pushes_reach_every_device() {
    let nats = nats_server();
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let node = tether_node_with(2, &["--insecure-no-auth", "--nats", &nats_url]);
    let url = format!("ws://127.0.0.1:{}/ws", node.port);
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "200",
        "--rate",
        "400",
        "--hold",
        "2s",
        "--workload",
        "push",
        "--nats",
        &nats_url,
        "--msg-rate",
        "5",
        "--quiet",
    ]);
    let v = run.succeeded();
    let sent = assert_all_delivered(v, 200, 5);
    assert_latency(v, "message_delivery_us", sent);
}

#[test]
fn push_needs_nats() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
        .args([
            "--url",
            "ws://127.0.0.1:9/ws",
            "--clients",
            "1",
            "--workload",
            "push",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nats"));
}
