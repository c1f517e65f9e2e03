//! Hostile clients against the connection path (issue 12): over capacity, a complete request
//! gets 503 promptly however many silent sockets came first (defect 5); one device token
//! cannot hold more than `--sessions-per-device-max` sessions, so one message to it is copied
//! a bounded number of times (defect 2).

mod server_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use server_support::*;

/// Sum of a per-shard gauge over every shard the node reports.
fn shard_sum(srv: &Server, name: &str) -> u64 {
    let m = srv.metrics();
    (0..64)
        .map(|i| format!("{name}{{shard=\"{i}\"}}"))
        .filter(|k| m.contains(k.as_str()))
        .map(|k| metric_value(&m, &k))
        .sum()
}

#[test]
fn over_capacity_a_complete_request_gets_503_promptly_despite_silent_sockets() {
    // Capacity comes from a small open-files limit, so the node runs on its descriptor
    // reserve once it is full: the case where silent sockets used to exhaust the reserve.
    let srv = Server::start_with_open_files(
        &["--shards", "1", "--echo", "--handshake-timeout", "60s"],
        256,
    );
    let capacity = srv.metric("tether_capacity_connections") as usize;
    assert!((20..200).contains(&capacity), "capacity {capacity}");

    // Fill the node with admitted sockets that never send a byte.
    let held: Vec<TcpStream> = (0..capacity)
        .map(|_| TcpStream::connect(("127.0.0.1", srv.port)).unwrap())
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || shard_sum(
            &srv,
            "tether_handshaking"
        ) == capacity as u64),
        "not all {capacity} sockets admitted"
    );
    // Twice the descriptor reserve in silent sockets beyond capacity.
    let silent: Vec<TcpStream> = (0..128)
        .map(|_| TcpStream::connect(("127.0.0.1", srv.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // A proper request now: 503 within a second, not after the silent ones time out.
    for attempt in 0..3 {
        let started = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&upgrade_request("/echo")).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let took = started.elapsed();
        assert!(
            !out.is_empty(),
            "attempt {attempt}: no answer after {took:?}"
        );
        assert_eq!(parse_status(&out).0, 503, "attempt {attempt}");
        assert!(
            took <= Duration::from_secs(1),
            "attempt {attempt}: 503 after {took:?}"
        );
    }
    assert!(srv.metric("tether_handshakes_total{result=\"over_capacity\"}") >= 3);
    assert!(srv.log().contains("at connection capacity"));
    drop((held, silent));
}

const SECRET: &str = "hostile-test-secret-0123456789";

/// A device token minted by `tether token`.
fn token(device: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["token", "--sub", device, "--jwt-secret", SECRET])
        .output()
        .expect("tether token");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Connects a device session and waits for its `hello`.
fn device(port: u16, token: &str) -> Client {
    let mut c = Client::connect(port, &format!("/ws?token={token}"));
    match c.recv(Duration::from_secs(10)) {
        Got::Text(t) if t.contains("\"hello\"") => c,
        other => panic!("expected hello, got {other:?}"),
    }
}

#[test]
fn one_device_holds_at_most_its_session_cap_and_the_oldest_is_replaced() {
    let srv = Server::start(&[
        "--shards",
        "2",
        "--jwt-secret",
        SECRET,
        "--sessions-per-device-max",
        "3",
    ]);
    let tv = token("tv");
    // Ten sessions of one device (on both shards), none of which reads after its hello.
    let mut sessions: Vec<Client> = (0..10).map(|_| device(srv.port, &tv)).collect();
    // The seven oldest are closed with 4409, the three newest stay.
    for (i, c) in sessions.iter_mut().enumerate() {
        let got = c.recv(Duration::from_millis(if i < 7 { 5000 } else { 300 }));
        if i < 7 {
            assert_eq!(got, Got::Close(Some(4409)), "session {i}");
        } else {
            assert_eq!(got, Got::Timeout, "session {i}");
        }
    }
    assert_eq!(srv.metric("tether_device_sessions_replaced_total"), 7);

    // A message to the device is copied to the three live sessions only.
    let sent_before = srv.metric("tether_messages_sent_total");
    let mut phone = device(srv.port, &token("phone"));
    let data = "x".repeat(100_000);
    phone.send_text(&format!(r#"{{"op":"send","to":"tv","data":"{data}"}}"#));
    for c in &mut sessions[7..] {
        match c.recv(Duration::from_secs(5)) {
            Got::Text(t) => assert!(t.contains(&data), "{}", &t[..80]),
            other => panic!("expected the message, got {other:?}"),
        }
    }
    // hello to the phone + three copies.
    assert!(eventually(Duration::from_secs(2), || srv
        .metric("tether_messages_sent_total")
        - sent_before
        == 4));
}
