//! tether-loadgen's tether-protocol workloads (docs/protocol.md) against real tether nodes:
//! device-to-device `send` through the server (embedded bus), and pushes from a NATS publisher
//! to every device through a node on NATS, and durable delivery through JetStream (a preload
//! replayed at connect, a burst to connected devices). One-way delivery latency and sequence
//! checks.

mod common;

use common::{
    assert_all_delivered, assert_latency, assert_split, loadgen, nats_server, nats_server_js,
    tether_node_with, u, usage_refused, Run, Server,
};

/// A nats-server and a node with 2 shards on it, devices admitted without a token (each
/// stops when dropped).
fn nats_and_node() -> (Server, Server) {
    let nats = nats_server();
    let node = tether_node_with(2, &["--insecure-no-auth", "--nats", &nats.nats_url()]);
    (nats, node)
}

/// A device-to-device run against `url`: `clients` devices connecting at 400/s, held 2 s after
/// the last connect and until every device has its `hello` and has sent 5 messages
/// (`--msg-min`: on a loaded machine the handshakes can end well after the scheduled connects),
/// each sending 5 messages/s to its partner.
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
        "--msg-min",
        "5",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

#[test]
fn device_to_device_through_tether() {
    let node = tether_node_with(2, &["--insecure-no-auth"]);
    let url = node.ws_url();
    let run = d2d(&url, "200", &["--msg-size", "100"]);
    let v = run.succeeded();
    assert_eq!(u(v, "handshake_errors_total"), 0, "{v:#}");
    let sent = assert_all_delivered(v, 200, 5);
    assert_latency(v, "message_delivery_us", sent);
    assert_split(v, "message_delivery_us", sent, sent);
    assert!(v["tether_errors"].as_object().unwrap().is_empty(), "{v:#}");
}

#[test]
fn device_tokens_are_minted_per_device() {
    let secret = "lg-test-secret-0123456789";
    let node = tether_node_with(2, &["--jwt-secret", secret]);
    let url = node.ws_url();
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
    let (nats, node) = nats_and_node();
    let (url, nats_url) = (node.ws_url(), nats.nats_url());
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
        "--msg-min",
        "5",
        "--quiet",
    ]);
    let v = run.succeeded();
    let sent = assert_all_delivered(v, 200, 5);
    assert_latency(v, "message_delivery_us", sent);
}

#[test]
fn push_needs_nats() {
    let err = usage_refused(&[
        "--url",
        "ws://127.0.0.1:9/ws",
        "--clients",
        "1",
        "--workload",
        "push",
    ]);
    assert!(err.contains("--nats"), "{err}");
}

/// Durable delivery end to end: messages stored while the devices are offline (`--preload`)
/// are replayed at connect and acknowledged, then a burst stored while they are connected
/// arrives live; every device has all of them exactly once, in order, with its last ack
/// confirmed. Messages stored *before* the preload are older than the `?last_seq=` the devices
/// present, so they must not arrive (they would show up as duplicates and gaps).
#[test]
fn durable_preload_replays_and_burst_arrives_live() {
    const DEVICES: u64 = 60;
    let nats = nats_server_js();
    let nats_url = nats.nats_url();
    let node = tether_node_with(
        2,
        &[
            "--insecure-no-auth",
            "--nats",
            &nats_url,
            "--durable",
            "--durable-storage",
            "memory",
        ],
    );
    node.wait_mailbox_ready();
    // Three old messages per device, processed "before" (below the presented last_seq).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
            for device in 0..DEVICES {
                for k in 0..3u64 {
                    let body = format!(r#"{{"from":"svc:old","data":{{"s":{k}}}}}"#);
                    js.publish(format!("tether.mbox.dur-{device}"), body.into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
            }
        });
    let url = node.ws_url();
    let devices = DEVICES.to_string();
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        &devices,
        "--rate",
        "2000",
        "--hold",
        "1s",
        "--workload",
        "durable",
        "--nats",
        &nats_url,
        "--device-prefix",
        "dur-",
        "--preload",
        "4",
        "--burst",
        "6",
        "--ack-every",
        "3",
        "--drain-timeout",
        "20s",
        "--quiet",
    ]);
    let v = run.succeeded();
    assert_eq!(u(v, "handshakes_ok"), DEVICES, "{v:#}");
    assert_eq!(u(v, "delivery.preload.stored"), 4 * DEVICES, "{v:#}");
    assert_eq!(u(v, "delivery.published"), 6 * DEVICES, "{v:#}");
    assert_eq!(u(v, "delivery.devices_complete"), DEVICES, "{v:#}");
    assert_eq!(u(v, "delivery.acks_confirmed"), DEVICES, "{v:#}");
    assert_eq!(u(v, "delivery.redelivered"), 0, "{v:#}");
    assert!(u(v, "delivery.messages_per_s") > 0, "{v:#}");
    assert_eq!(u(v, "complete_us.count"), DEVICES, "{v:#}");
    let sent = assert_all_delivered(v, DEVICES, 10);
    assert_eq!(sent, 10 * DEVICES, "{v:#}");
    // Only the burst carries a send time.
    assert_latency(v, "message_delivery_us", 6 * DEVICES);
    assert!(v["tether_errors"].as_object().unwrap().is_empty(), "{v:#}");
    // Everything acknowledged is gone: a second run of the same devices gets only its own.
    let v = loadgen(&[
        "--url",
        &url,
        "--clients",
        &devices,
        "--rate",
        "2000",
        "--hold",
        "0s",
        "--workload",
        "durable",
        "--nats",
        &nats_url,
        "--device-prefix",
        "dur-",
        "--burst",
        "2",
        "--drain-timeout",
        "20s",
        "--quiet",
    ]);
    let v = v.succeeded();
    assert_eq!(u(v, "delivery.devices_complete"), DEVICES, "{v:#}");
    assert_all_delivered(v, DEVICES, 2);
}

#[test]
fn push_burst_reaches_every_connected_device() {
    let (nats, node) = nats_and_node();
    let (url, nats_url) = (node.ws_url(), nats.nats_url());
    let run = loadgen(&[
        "--url",
        &url,
        "--clients",
        "100",
        "--rate",
        "2000",
        // The RSS sample takes the connected count from the workers' per-second reports: a
        // hold of several seconds lets them arrive on a loaded machine.
        "--hold",
        "5s",
        "--workload",
        "push",
        "--nats",
        &nats_url,
        "--burst",
        "8",
        "--drain-timeout",
        "20s",
        "--quiet",
        "--server-pid",
        &node.child.id().to_string(),
    ]);
    let v = run.succeeded();
    assert_eq!(u(v, "delivery.devices_complete"), 100, "{v:#}");
    assert_all_delivered(v, 100, 8);
    assert_latency(v, "message_delivery_us", 800);
    let p = &v["server_rss"]["processes"][0];
    assert_eq!(p["name"], "tether", "{v:#}");
    assert!(u(p, "start_kib") > 0 && u(p, "held_kib") > 0, "{v:#}");
    // Sampled at the end of the hold, from the workers' reports of the second before.
    assert_eq!(u(v, "server_rss.connected_at_sample"), 100, "{v:#}");
}

#[test]
fn durable_needs_its_messages() {
    for (args, want) in [
        (&["--workload", "durable"][..], "--nats"),
        (
            &["--workload", "durable", "--nats", "nats://127.0.0.1:9"][..],
            "--preload",
        ),
        (
            &["--workload", "echo", "--preload", "3"][..],
            "--workload durable",
        ),
        (
            &["--workload", "d2d", "--burst", "3"][..],
            "--workload push or durable",
        ),
        (&["--workload", "d2d", "--msg-min", "3"][..], "--msg-rate"),
    ] {
        let mut all = vec!["--url", "ws://127.0.0.1:9/ws", "--clients", "1"];
        all.extend_from_slice(args);
        let err = usage_refused(&all);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
