//! Hostile clients against the connection path (issue 12): over capacity, a complete request
//! gets 503 promptly however many silent sockets came first (defect 5); one device token
//! cannot hold more than `--sessions-per-device-max` sessions, so one message to it is copied
//! a bounded number of times (defect 2); connections parked mid-frame cannot hold more than
//! the shard's budget for incomplete messages, nor hold it longer than `--message-timeout`
//! (defect 1).

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

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A masked binary frame header announcing `len` payload bytes (mask key 0; the shortest
/// length encoding, as RFC 6455 requires).
fn binary_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82];
    if len <= 125 {
        h.push(0x80 | len as u8);
    } else if len <= u16::MAX as u64 {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

#[test]
fn connections_parked_mid_frame_are_bounded_by_the_shard_budget_and_healthy_clients_go_on() {
    const PARKED: usize = 300;
    const FRAME: usize = 256 << 10;
    const BUDGET: usize = 4 << 20;
    let srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--frame-bytes-max",
        &FRAME.to_string(),
        "--message-bytes-max",
        &FRAME.to_string(),
        "--shard-partial-bytes-max",
        &BUDGET.to_string(),
    ]);
    let mut healthy: Vec<Client> = (0..20)
        .map(|_| Client::connect(srv.port, "/echo"))
        .collect();
    let parked: Vec<Client> = (0..PARKED)
        .map(|_| Client::connect(srv.port, "/echo"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = rss_kib(srv.pid());

    // Each parked client announces a frame and sends all of it but the last byte.
    let senders: Vec<_> = parked
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let mut bytes = binary_header(FRAME as u64);
                bytes.resize(bytes.len() + FRAME - 1, b'p');
                let _ = c.try_send_raw(&bytes);
                c
            })
        })
        .collect();
    // Healthy clients keep getting their echoes meanwhile.
    for round in 0..5 {
        for (i, c) in healthy.iter_mut().enumerate() {
            let text = format!("healthy {i} round {round}");
            c.send_text(&text);
            assert_eq!(c.recv(Duration::from_secs(5)), Got::Text(text));
        }
    }
    let mut parked: Vec<Client> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let held = srv.metric("tether_partial_bytes{shard=\"0\"}") as usize;
    assert!(held <= BUDGET, "shard holds {held} bytes of partial frames");
    let rss_after = rss_kib(srv.pid());
    let per_conn_kib = rss_after.saturating_sub(rss_before) as f64 / PARKED as f64;
    eprintln!(
        "{PARKED} parked mid-frame ({FRAME} B frames): RSS {rss_before} -> {rss_after} KiB, \
         {per_conn_kib:.1} KiB per parked connection; held {held} B"
    );
    // Unbounded, each would pin its frame (256 KiB); the budget spreads 4 MiB over them.
    assert!(
        per_conn_kib <= 48.0,
        "RSS grew {per_conn_kib:.1} KiB per parked connection"
    );
    // Those beyond the budget were told to come back later.
    let refused = srv.metric("tether_partial_budget_closes_total") as usize;
    assert!(
        refused >= PARKED - BUDGET / FRAME,
        "only {refused} closed with 1013"
    );
    let mut got_1013 = 0;
    for c in parked.iter_mut().take(50) {
        if c.recv_close(Duration::from_millis(200)) == Got::Close(Some(1013)) {
            got_1013 += 1;
        }
    }
    assert!(got_1013 > 0, "no parked client saw 1013");
    for (i, c) in healthy.iter_mut().enumerate() {
        c.send_text("still here");
        assert_eq!(
            c.recv(Duration::from_secs(5)),
            Got::Text("still here".into()),
            "healthy client {i}"
        );
    }
    assert!(srv
        .log()
        .contains("partial-message budget of the shard used up"));
}

#[test]
fn a_message_trickled_past_message_timeout_is_closed_with_1008() {
    let srv = Server::start(&["--shards", "1", "--echo", "--message-timeout", "1s"]);
    let mut c = Client::connect(srv.port, "/echo");
    let started = Instant::now();
    let mut header = binary_header(1000);
    header.extend_from_slice(&[b't'; 100]);
    c.send_raw(&header);
    // One byte every 300 ms: never silent, never complete.
    let got = loop {
        if c.try_send_raw(b"t").is_err() {
            break c.recv_close(Duration::from_secs(1));
        }
        match c.recv(Duration::from_millis(300)) {
            Got::Timeout => {}
            other => break other,
        }
        if started.elapsed() > Duration::from_secs(6) {
            break Got::Timeout;
        }
    };
    let took = started.elapsed();
    assert_eq!(got, Got::Close(Some(1008)), "after {took:?}");
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(3500),
        "closed after {took:?}"
    );
    assert_eq!(srv.metric("tether_message_timeouts_total"), 1);
    assert!(eventually(Duration::from_secs(2), || srv
        .metric("tether_partial_bytes{shard=\"0\"}")
        == 0));
}
