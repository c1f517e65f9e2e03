//! The admin port under hostile or unlucky conditions (issue 12, defects 3 and 4): a client
//! trickling its request and idle connections do not delay `/healthz` or `/readyz`; `HEAD` is
//! answered; `/readyz` is 503 while the bus is down and again 200 once NATS is back; on SIGTERM
//! readiness turns 503 first and the listeners keep serving for `--drain-delay`.

mod messaging_support;
mod server_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use messaging_support::NatsServer;
use server_support::*;

/// Time a healthy admin request may take here (2 shared cores, other suites running).
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// GET or HEAD with its own timing; (status, head+body text, elapsed).
fn timed(port: u16, method: &str, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let elapsed = started.elapsed();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (status, out, elapsed)
}

#[test]
fn a_trickling_client_and_idle_connections_do_not_stall_health_or_readiness() {
    let srv = Server::start(&["--shards", "1", "--echo"]);
    let admin = srv.admin;

    // One byte every 1.5 s of a valid request, as in the reproduction; returns when
    // the server ends the connection.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let started = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" {
            if s.write_all(&[*b]).is_err() {
                return Some(started.elapsed());
            }
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // EOF, reset or an answer: the server is done with it.
                _ => return Some(started.elapsed()),
            }
        }
        None
    });
    // Ten idle connections that never send a byte.
    let idle: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", admin)).unwrap())
        .collect();

    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(5) {
        for path in ["/healthz", "/readyz"] {
            let (status, _, took) = timed(admin, "GET", path);
            assert_eq!(status, 200, "{path}");
            worst = worst.max(took);
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{n} admin requests with a trickling client and 10 idle connections: worst {worst:?}"
    );
    assert!(worst <= ANSWER_WITHIN, "an admin request took {worst:?}");

    // The trickling client is cut off by the whole-request deadline (2 s), not served forever.
    let closed_after = slow.join().unwrap().expect("slow client never closed");
    assert!(
        closed_after <= Duration::from_secs(4),
        "slow client closed after {closed_after:?}"
    );
    // The idle ones too.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }
    assert!(srv.metric("tether_admin_timeouts_total") >= 11);
}

#[test]
fn head_is_answered_without_a_body_and_other_methods_get_405() {
    let srv = Server::start(&["--shards", "1", "--echo"]);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, out, _) = timed(srv.admin, "HEAD", path);
        assert_eq!(status, 200, "{out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(body.is_empty(), "HEAD {path} sent a body: {body:?}");
        assert!(
            head.to_ascii_lowercase().contains("content-length:"),
            "{head}"
        );
    }
    let (status, out, _) = timed(srv.admin, "POST", "/healthz");
    assert_eq!(status, 405, "{out}");
    assert!(
        out.to_ascii_lowercase().contains("allow: get, head"),
        "{out}"
    );
}

#[test]
fn readyz_follows_the_nats_connection() {
    let mut nats = NatsServer::start();
    let (port, monitor) = (nats.port, nats.monitor_port);
    let srv = Server::start(&[
        "--shards",
        "2",
        "--nats",
        &nats.url(),
        "--jwt-secret",
        "readiness-test-secret-0123456789",
    ]);
    assert!(
        eventually(Duration::from_secs(10), || http_get(srv.admin, "/readyz").0
            == 200),
        "not ready with NATS up: {:?}",
        http_get(srv.admin, "/readyz")
    );

    nats.stop();
    assert!(
        eventually(Duration::from_secs(10), || http_get(srv.admin, "/readyz")
            == (503, "not ready: bus disconnected\n".to_string())),
        "still {:?} with NATS down",
        http_get(srv.admin, "/readyz")
    );
    // Alive all the same.
    assert_eq!(http_get(srv.admin, "/healthz").0, 200);

    let _nats = (0..50)
        .find_map(|_| {
            NatsServer::start_on(port, monitor).or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        })
        .expect("nats-server did not restart on its port");
    assert!(
        eventually(Duration::from_secs(15), || http_get(srv.admin, "/readyz").0
            == 200),
        "not ready again after NATS came back: {:?}",
        http_get(srv.admin, "/readyz")
    );
}

#[test]
fn sigterm_turns_readyz_503_and_keeps_serving_for_the_drain_delay() {
    let mut srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--drain-delay",
        "2s",
        "--drain-time",
        "1s",
    ]);
    let mut before = Client::connect(srv.port, "/echo");
    let started = Instant::now();
    srv.signal(libc::SIGTERM);
    assert!(
        eventually(Duration::from_millis(500), || http_get(
            srv.admin, "/readyz"
        ) == (
            503,
            "not ready: draining\n".to_string()
        )),
        "readyz after SIGTERM: {:?}",
        http_get(srv.admin, "/readyz")
    );
    // Within the delay: new clients are accepted and served, old ones too.
    let mut during = Client::connect(srv.port, "/echo");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "too slow to test"
    );
    during.send_text("late");
    assert_eq!(
        during.recv(Duration::from_secs(2)),
        Got::Text("late".into())
    );
    before.send_text("early");
    assert_eq!(
        before.recv(Duration::from_secs(2)),
        Got::Text("early".into())
    );
    // Then the drain: both get 1001, not before the delay is over.
    for c in [&mut before, &mut during] {
        assert_eq!(c.recv_close(Duration::from_secs(5)), Got::Close(Some(1001)));
        let at = started.elapsed();
        assert!(at >= Duration::from_millis(1900), "closed after {at:?}");
        c.send_close(1001);
    }
    assert_eq!(srv.wait_exit(Duration::from_secs(5)), Some(0));
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(3800), "exited after {took:?}");
}

#[test]
fn a_second_signal_during_the_drain_delay_stops_at_once() {
    let mut srv = Server::start(&["--shards", "1", "--echo", "--drain-delay", "30s"]);
    let _c = Client::connect(srv.port, "/echo");
    srv.signal(libc::SIGTERM);
    assert!(eventually(Duration::from_millis(500), || http_get(
        srv.admin, "/readyz"
    )
    .0 == 503));
    let started = Instant::now();
    srv.signal(libc::SIGTERM);
    assert!(srv.wait_exit(Duration::from_secs(5)).is_some());
    assert!(started.elapsed() < Duration::from_secs(2));
}
