//! tether-loadgen against tether's own `/echo` (the `tether` binary of this workspace, two
//! shards per node): counts, latencies, round trips, two nodes round-robin, server CPU.

mod common;

use common::{assert_latency, loadgen, tether_node, u};

#[test]
fn echo_against_one_tether_node() {
    let node = tether_node(2);
    let url = format!("ws://127.0.0.1:{}/echo", node.port);
    let pid = node.child.id().to_string();
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "400",
        "--rate",
        "400",
        "--hold",
        "2s",
        "--workers",
        "2",
        "--msg-rate",
        "5",
        "--msg-size",
        "64",
        "--server-pid",
        &pid,
        "--quiet",
    ]);
    let v = run.succeeded();
    assert_eq!(u(v, "workers"), 2);
    assert_eq!(u(v, "handshakes_ok"), 400, "{v:#}");
    assert_eq!(u(v, "handshake_errors_total"), 0, "{v:#}");
    assert_eq!(u(v, "connected_peak"), 400, "{v:#}");
    assert_latency(v, "handshake_latency_us", 400);
    assert_latency(v, "tcp_connect_latency_us", 400);
    assert_latency(v, "upgrade_latency_us", 400);
    let sent = u(v, "messages.sent");
    assert!(sent >= 400 * 5 * 2 - 400, "{v:#}");
    assert_eq!(u(v, "messages.received"), sent, "{v:#}");
    assert_eq!(u(v, "messages.gaps"), 0);
    assert_eq!(u(v, "messages.duplicates"), 0);
    assert_latency(v, "message_rtt_us", sent);
    assert_eq!(u(v, "closes.clean"), 400, "{v:#}");
    assert!(v["server_cpu_s"].as_f64().unwrap() > 0.0, "{v:#}");
}

#[test]
fn two_tether_nodes_round_robin() {
    let a = tether_node(1);
    let b = tether_node(1);
    let run = loadgen(&[
        "--url",
        &format!("ws://127.0.0.1:{}/echo", a.port),
        "--url",
        &format!("ws://127.0.0.1:{}/echo", b.port),
        "--clients",
        "300",
        "--rate",
        "600",
        "--hold",
        "1s",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshakes_ok"), 300, "{v:#}");
    assert_eq!(u(v, "handshake_errors_total"), 0, "{v:#}");
    assert_eq!(u(v, "connected_peak"), 300, "{v:#}");
    // Stop one node: its half of the clients now fail with "refused".
    drop(b);
    let run = loadgen(&[
        "--url",
        &format!("ws://127.0.0.1:{}/echo", a.port),
        "--url",
        "ws://127.0.0.1:1/echo",
        "--clients",
        "100",
        "--rate",
        "500",
        "--quiet",
    ]);
    let v = run.json();
    assert_eq!(u(v, "handshakes_ok"), 50, "{v:#}");
    assert_eq!(u(v, "handshake_errors.refused"), 50, "{v:#}");
}
