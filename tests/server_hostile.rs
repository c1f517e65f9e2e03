//! Hostile clients against the connection path (issue 12): over capacity, a complete request
//! gets 503 promptly however many silent sockets came first (defect 5).

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
