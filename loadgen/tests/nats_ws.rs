//! tether-loadgen's `--protocol nats` against a real nats-server with its own WebSocket
//! listener (`websocket { no_tls: true }`) and token authentication: devices as NATS clients
//! over WebSocket publishing to each other's subjects (the `d2d` workload), every message
//! delivered once, in order, and timed; a wrong token refused for every device.

mod common;

use common::{
    assert_all_delivered, assert_latency, assert_split, loadgen, nats_server_with, scratch, u,
    Server,
};

const TOKEN: &str = "natsws-test-token";

/// nats-server with a `websocket` listener on a free port and `TOKEN` required; returns the
/// server and the listener's `ws://` URL once it accepts.
fn nats_ws_server() -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let conf = scratch("nats-ws.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ token: \"{TOKEN}\" }}\n\
             websocket {{ listen: \"127.0.0.1:{port}\", no_tls: true }}\n"
        ),
    )
    .expect("writes the config");
    let server = nats_server_with(&["-c", conf.to_str().expect("a UTF-8 temp path")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server's websocket listener did not accept on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (server, format!("ws://127.0.0.1:{port}/"))
}

fn d2d(url: &str, token: &str) -> common::Run {
    loadgen(&[
        "--url",
        url,
        "--clients",
        "60",
        "--rate",
        "300",
        "--hold",
        "2s",
        "--workload",
        "d2d",
        "--protocol",
        "nats",
        "--device-token",
        token,
        "--msg-rate",
        "5",
        // The hold lasts until every device has its `hello` and sent 5 (a loaded machine can end
        // the handshakes late), so that `assert_all_delivered`'s floor of 5 each holds.
        "--msg-min",
        "5",
        "--msg-size",
        "100",
        "--quiet",
    ])
}

#[test]
fn devices_publish_to_each_other_over_nats_websocket() {
    let (_nats, url) = nats_ws_server();
    let run = d2d(&url, TOKEN);
    let v = run.succeeded();
    assert_eq!(v["protocol"], "nats", "{v:#}");
    assert_eq!(u(v, "handshake_errors_total"), 0, "{v:#}");
    let sent = assert_all_delivered(v, 60, 5);
    assert_latency(v, "message_delivery_us", sent);
    assert_split(v, "message_delivery_us", sent, sent);
    assert!(v["tether_errors"].as_object().unwrap().is_empty(), "{v:#}");
    assert_eq!(u(v, "closes.clean"), 60, "{v:#}");

    // Another token: the server answers every CONNECT with -ERR and closes with 1008; no
    // device becomes routable, so none sends.
    let v = d2d(&url, "not-the-token").json().clone();
    assert_eq!(u(&v, "handshakes_ok"), 60, "{v:#}");
    assert_eq!(u(&v, "disconnects.closed_by_server_1008"), 60, "{v:#}");
    assert_eq!(
        u(&v, "tether_errors.nats_err: 'Authorization Violation'"),
        60,
        "{v:#}"
    );
}

#[test]
fn nats_devices_run_d2d_only() {
    for args in [
        &["--workload", "echo", "--protocol", "nats"][..],
        &["--workload", "d2d", "--device-token", "t"],
        &[
            "--workload",
            "d2d",
            "--protocol",
            "nats",
            "--device-jwt-secret",
            "a-secret-of-24-bytes-xyz",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether-loadgen"))
            .args(["--url", "ws://127.0.0.1:9/", "--clients", "1"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--protocol nats") || err.contains("--device-token"),
            "{err}"
        );
    }
}
