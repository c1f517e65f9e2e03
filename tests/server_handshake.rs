//! Opening-handshake outcomes of `tether serve` over real sockets: statuses for bad, slow,
//! oversized and unknown requests, and 503 beyond `--max-connections`.

mod server_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use server_support::*;

#[test]
fn bad_requests_get_their_statuses_and_are_counted() {
    let srv = Server::start(&["--shards", "1", "--echo"]);
    let p = srv.port;

    // Unknown path: 404 before the upgrade.
    let (s, _) = raw_request(p, &upgrade_request("/nope"));
    assert_eq!(s, 404);
    // `/ws` is not served by this build's server alone.
    let (s, _) = raw_request(p, &upgrade_request("/ws"));
    assert_eq!(s, 404);
    // Missing key: 400.
    let (s, _) = raw_request(
        p,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(s, 400);
    // POST: 405.
    let req = String::from_utf8(upgrade_request("/echo"))
        .unwrap()
        .replacen("GET", "POST", 1);
    let (s, _) = raw_request(p, req.as_bytes());
    assert_eq!(s, 405);
    // Version 8: 426.
    let req = String::from_utf8(upgrade_request("/echo"))
        .unwrap()
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let (s, _) = raw_request(p, req.as_bytes());
    assert_eq!(s, 426);
    // A plain HTTP GET (no upgrade): 400.
    let (s, _) = raw_request(p, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(s, 400);

    let m = srv.metrics();
    assert_eq!(
        metric_value(&m, "tether_handshakes_total{result=\"not_found\"}"),
        2
    );
    assert_eq!(
        metric_value(&m, "tether_handshakes_total{result=\"bad_request\"}"),
        2
    );
    assert_eq!(
        metric_value(&m, "tether_handshakes_total{result=\"method_not_allowed\"}"),
        1
    );
    assert_eq!(
        metric_value(
            &m,
            "tether_handshakes_total{result=\"unsupported_version\"}"
        ),
        1
    );
    assert_eq!(
        metric_value(&m, "tether_handshakes_total{result=\"ok\"}"),
        0
    );
}

#[test]
fn endless_head_is_cut_off_with_431() {
    let srv = Server::start(&["--shards", "1", "--echo", "--head-bytes-max", "1024"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    // Keep sending header lines, never the blank line: the server must answer 431 and close
    // (our writes may start failing once it has closed).
    let line =
        b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    for _ in 0..40 {
        if s.write_all(line).is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let (status, _) = parse_status(&out);
    assert_eq!(status, 431);
    assert!(eventually(Duration::from_secs(2), || srv
        .metric("tether_handshakes_total{result=\"head_too_large\"}")
        == 1));
}

#[test]
fn slow_head_times_out_with_408() {
    let srv = Server::start(&["--shards", "1", "--echo", "--handshake-timeout", "300ms"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let elapsed = started.elapsed();
    let (status, _) = parse_status(&out);
    assert_eq!(status, 408);
    assert!(
        elapsed >= Duration::from_millis(250),
        "cut off too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "cut off too late: {elapsed:?}"
    );
    assert!(eventually(Duration::from_secs(2), || srv
        .metric("tether_handshakes_total{result=\"timeout\"}")
        == 1));
}

#[test]
fn beyond_max_connections_gets_503_and_capacity_returns() {
    let srv = Server::start(&["--shards", "1", "--echo", "--max-connections", "2"]);
    assert_eq!(srv.metric("tether_capacity_connections"), 2);
    let a = Client::connect(srv.port, "/echo");
    let _b = Client::connect(srv.port, "/echo");
    assert_eq!(Client::try_connect(srv.port, "/echo").err(), Some(503));
    assert_eq!(
        srv.metric("tether_handshakes_total{result=\"over_capacity\"}"),
        1
    );
    a.shutdown();
    drop(a);
    // The slot comes back once the server has seen the first client go.
    assert!(eventually(Duration::from_secs(5), || srv
        .metric("tether_connections{shard=\"0\"}")
        == 1));
    let _c = Client::connect(srv.port, "/echo");
}

#[test]
fn pipelined_frames_after_the_head_are_not_lost() {
    let srv = Server::start(&["--shards", "1", "--echo"]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let mut bytes = upgrade_request("/echo");
    tether::ws::encode_frame(
        &mut bytes,
        tether::ws::Role::Client,
        tether::ws::OpCode::Text,
        true,
        b"early",
    );
    s.write_all(&bytes).unwrap();
    // Read the 101 and the echo of the early frame from one stream.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(5).any(|w| w == b"early") {
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed before the echo: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
}

#[test]
fn origin_outside_the_allow_list_gets_403_and_no_origin_passes() {
    let srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--allowed-origins",
        "https://app.example.com,https://other.example.com:8443",
    ]);
    let with_origin = |origin: &str| {
        let mut req = upgrade_request("/echo");
        req.truncate(req.len() - 2);
        req.extend_from_slice(format!("Origin: {origin}\r\n\r\n").as_bytes());
        req
    };
    let (s, body) = raw_request(srv.port, &with_origin("https://evil.example.com"));
    assert_eq!((s, body.as_str()), (403, "origin not allowed"));
    // Same host, other scheme or port: another origin.
    assert_eq!(
        raw_request(srv.port, &with_origin("http://app.example.com")).0,
        403
    );
    assert_eq!(
        raw_request(srv.port, &with_origin("https://other.example.com")).0,
        403
    );
    assert!(eventually(Duration::from_secs(5), || srv.metric(
        "tether_handshakes_total{result=\"origin_not_allowed\"}"
    ) == 3));

    let mut ok = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    ok.write_all(&with_origin("https://app.example.com"))
        .unwrap();
    let mut buf = [0u8; 12];
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ok.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
    // A device sends no Origin: not checked.
    let mut dev = Client::connect(srv.port, "/echo");
    dev.send_text("device");
    assert_eq!(dev.recv(Duration::from_secs(5)), Got::Text("device".into()));
}
