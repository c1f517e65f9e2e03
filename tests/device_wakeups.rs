//! Per-node fixed costs (issue 15 item 4): a shard with device sessions but nothing due does
//! not wake up ten times a second for the hub's tick, and what the tick serves still happens on
//! time (readiness, token expiry: covered with their deadlines in the device tests).

mod server_support;

use std::time::{Duration, Instant};

use server_support::*;

/// Voluntary context switches of the process's threads named `name` (each is one park and
/// wake of that thread).
fn parks(pid: i32, name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
    }
    total
}

#[test]
fn an_idle_shard_with_sessions_parks_a_few_times_a_second_not_ten() {
    let srv = Server::start(&["--shards", "1", "--insecure-no-auth"]);
    let mut devices: Vec<Client> = (0..20)
        .map(|i| Client::connect(srv.port, &format!("/ws?device=idle-{i}")))
        .collect();
    for d in &mut devices {
        match d.recv(Duration::from_secs(10)) {
            Got::Text(t) => assert!(t.contains("\"hello\""), "{t}"),
            other => panic!("expected hello, got {other:?}"),
        }
    }
    assert!(
        parks(srv.pid(), "tether-shard-0") > 0,
        "no shard thread found"
    );
    // Let the sessions' first ticks pass, then count the shard's parks while nothing happens.
    std::thread::sleep(Duration::from_millis(1500));
    let window = Duration::from_secs(4);
    let start = Instant::now();
    let before = parks(srv.pid(), "tether-shard-0");
    std::thread::sleep(window);
    let after = parks(srv.pid(), "tether-shard-0");
    let per_s = (after - before) as f64 / start.elapsed().as_secs_f64();
    // The liveness sweeper (1/s) and the hub's idle tick (1/s), with room for the odd timer;
    // a 100 ms tick alone was 10/s.
    assert!(
        per_s < 5.0,
        "the idle shard parked {per_s:.1} times a second ({} in {:?})",
        after - before,
        start.elapsed()
    );
    // Still served after the quiet period: a subscription confirmed through the bus's barrier.
    devices[0].send_text(r#"{"op":"sub","topic":"quiet.after","id":"s1"}"#);
    match devices[0].recv(Duration::from_secs(5)) {
        Got::Text(t) => assert!(t.contains(r#""id":"s1""#) && t.contains("ack"), "{t}"),
        other => panic!("expected an answer, got {other:?}"),
    }
}
