//! Drain: on SIGTERM the node stops accepting, `/readyz` turns 503, every client is closed
//! with 1001 within `--drain-time`, paced rather than all at once, and the process exits 0.

mod server_support;

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use server_support::*;

#[test]
fn sigterm_closes_every_client_with_1001_within_drain_time_and_exits_0() {
    let mut srv = Server::start(&["--shards", "auto", "--echo", "--drain-time", "2s"]);
    assert_eq!(http_get(srv.admin, "/readyz").0, 200);
    let n = 60;
    let clients: Vec<Client> = (0..n).map(|_| Client::connect(srv.port, "/echo")).collect();
    assert!(eventually(Duration::from_secs(5), || {
        let m = srv.metrics();
        (0..8)
            .map(|i| {
                let key = format!("tether_connections{{shard=\"{i}\"}}");
                if m.contains(&key) {
                    metric_value(&m, &key)
                } else {
                    0
                }
            })
            .sum::<u64>()
            == n as u64
    }));

    let started = Instant::now();
    srv.signal(libc::SIGTERM);
    // Each client reads on its own thread and records when its close frame came.
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let got = c.recv_close(Duration::from_secs(10));
                let at = started.elapsed();
                // Answer the close as a client should; the server then closes TCP.
                if got == Got::Close(Some(1001)) {
                    c.send_close(1001);
                }
                let eof = c.wait_eof(Duration::from_secs(5));
                (got, at, eof)
            })
        })
        .collect();

    // While draining: not ready, and no new connections.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(http_get(srv.admin, "/readyz").0, 503);
    assert_eq!(http_get(srv.admin, "/healthz").0, 200);
    assert_eq!(srv.metric("tether_draining"), 1);
    assert!(
        TcpStream::connect(("127.0.0.1", srv.port)).is_err(),
        "listener still accepting while draining"
    );

    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let code = srv.wait_exit(Duration::from_secs(5));
    let exited_after = started.elapsed();
    assert_eq!(code, Some(0), "exit status; log:\n{}", srv.log());
    assert!(
        exited_after <= Duration::from_millis(2600),
        "exited after {exited_after:?}"
    );

    let mut times: Vec<Duration> = Vec::new();
    for (got, at, eof) in &results {
        assert_eq!(*got, Got::Close(Some(1001)));
        assert!(*eof, "server did not close TCP after the close handshake");
        assert!(*at <= Duration::from_secs(2), "closed after {at:?}");
        times.push(*at);
    }
    times.sort();
    // Paced: the closes are spread out, not all in the first instant.
    let spread = times[times.len() - 1] - times[0];
    assert!(
        spread >= Duration::from_millis(700),
        "closes not paced: spread {spread:?}"
    );
    assert!(srv.log().contains("drained"));
}

#[test]
fn drain_with_no_connections_exits_at_once() {
    let mut srv = Server::start(&["--shards", "1", "--echo", "--drain-time", "10s"]);
    let started = Instant::now();
    srv.signal(libc::SIGINT);
    assert_eq!(srv.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn clients_that_ignore_the_close_do_not_hold_the_node_past_the_deadline() {
    let mut srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--drain-time",
        "1s",
        "--close-timeout",
        "30s",
    ]);
    // These clients never read nor answer: the node must still exit by the deadline.
    let _clients: Vec<Client> = (0..5).map(|_| Client::connect(srv.port, "/echo")).collect();
    let started = Instant::now();
    srv.signal(libc::SIGTERM);
    assert_eq!(srv.wait_exit(Duration::from_secs(5)), Some(0));
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(1600), "took {took:?}");
}
