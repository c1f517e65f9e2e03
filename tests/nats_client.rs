//! `tether::nats::Connection` against real nats-server processes, on a glommio executor:
//! publish/subscribe/unsubscribe, headers, request/reply and "no responders", the ping barrier
//! (a message another client publishes right after our `PONG` is delivered), reconnection after
//! the server is killed and restarted (subscriptions restored, a ping and a publish made during
//! the outage go through afterwards, counters), two URLs with the first dead, and the logins:
//! token, user and password, NKey, `.creds` (operator mode, JWTs made here with `nkeys`), TLS
//! with a CA and a client certificate, TLS first.
//!
//! The other client of these tests is a plain blocking socket speaking the NATS text protocol
//! ([`Raw`]), so that nothing here checks our client against itself.

mod messaging_support;
mod server_support;

use messaging_support::{free_port, Nats, NatsServer, Scratch};
use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tether::nats::{ConnectConfig, Connection, Event, NatsAuth, RequestError, Sid};

/// What the callback saw, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Msg {
        sid: Sid,
        subject: String,
        reply: Option<String>,
        headers: Vec<(String, String)>,
        payload: String,
    },
    Pong(u64),
    Connected {
        reconnect: bool,
    },
    Disconnected,
    ServerError(String),
}

type Log = Rc<RefCell<Vec<Seen>>>;

fn record(log: &Log) -> impl FnMut(Event<'_>) + 'static {
    let log = log.clone();
    move |event| {
        let seen = match event {
            Event::Msg(m) => Seen::Msg {
                sid: m.sid,
                subject: m.subject.to_owned(),
                reply: m.reply.map(str::to_owned),
                headers: m
                    .headers
                    .map(|h| {
                        h.iter()
                            .map(|(n, v)| (n.to_owned(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                payload: String::from_utf8_lossy(m.payload).into_owned(),
            },
            Event::Pong(n) => Seen::Pong(n),
            Event::Connected { reconnect } => Seen::Connected { reconnect },
            Event::Disconnected => Seen::Disconnected,
            Event::ServerError(text) => Seen::ServerError(text.to_owned()),
        };
        log.borrow_mut().push(seen);
    }
}

/// Runs `f` on a fresh glommio executor on this thread.
fn on_executor<F: std::future::Future<Output = ()> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .expect("glommio executor (io_uring, RLIMIT_MEMLOCK)")
        .run(f());
}

/// Polls `cond` (letting the executor run) until it holds; panics with `what` and the log
/// after `timeout`.
async fn until(timeout: Duration, what: &str, log: &Log, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; events: {:?}",
            log.borrow()
        );
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

fn has(log: &Log, want: &Seen) -> bool {
    log.borrow().contains(want)
}

fn payloads(log: &Log, sid: Sid) -> Vec<String> {
    log.borrow()
        .iter()
        .filter_map(|s| match s {
            Seen::Msg {
                sid: got, payload, ..
            } if *got == sid => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

/// Pings and waits for the pong: every earlier SUB is in effect on the server.
async fn barrier(conn: &Connection, log: &Log) {
    let n = conn.ping();
    until(Duration::from_secs(10), "the pong", log, || {
        has(log, &Seen::Pong(n))
    })
    .await;
}

fn config(urls: Vec<String>) -> ConnectConfig {
    ConnectConfig::new(urls, "nats_client test".into())
}

async fn connected(config: ConnectConfig) -> (Connection, Log) {
    let log: Log = Rc::default();
    let conn = Connection::spawn(config, record(&log)).expect("config accepted");
    until(Duration::from_secs(10), "the connection", &log, || {
        has(&log, &Seen::Connected { reconnect: false })
    })
    .await;
    (conn, log)
}

/// Another client: a blocking socket speaking the NATS text protocol.
struct Raw(std::net::TcpStream);

impl Raw {
    fn connect(port: u16) -> Raw {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
            .unwrap();
        let mut raw = Raw(s);
        raw.sync();
        raw
    }

    /// `PING` and read up to its `PONG` (the server handled everything sent before).
    fn sync(&mut self) {
        self.0.write_all(b"PING\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(6).any(|w| w == b"PONG\r\n") {
            let n = match self.0.read(&mut buf) {
                // glommio's executor on this thread gets signals.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.expect("PONG from the server"),
            };
            assert!(n > 0, "server closed");
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// Reads until `needle` has arrived (5 s at most).
    fn expect(&mut self, needle: &str) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            let n = match self.0.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.unwrap_or_else(|e| {
                    panic!(
                        "{needle:?} not received: {e}; got {:?}",
                        String::from_utf8_lossy(&got)
                    )
                }),
            };
            assert!(n > 0, "server closed");
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// Publishes, confirmed by a round trip.
    fn publish(&mut self, subject: &str, payload: &str) {
        write!(self.0, "PUB {subject} {}\r\n{payload}\r\n", payload.len()).unwrap();
        self.sync();
    }
}

#[test]
fn pub_sub_unsub_and_headers() {
    let server = NatsServer::start();
    let url = server.url();
    let port = server.port;
    on_executor(move || async move {
        let (conn, log) = connected(config(vec![url.clone()])).await;
        let mut raw = Raw::connect(port);
        let a = conn.subscribe("t.a").unwrap();
        barrier(&conn, &log).await;
        raw.publish("t.a", "from-raw");
        until(Duration::from_secs(5), "the raw message", &log, || {
            payloads(&log, a) == ["from-raw"]
        })
        .await;
        // Our own publish with headers and a reply subject comes back through our subscription.
        conn.publish(
            "t.a",
            Some("r.1"),
            &[("K", "v"), ("Tether-Arrival-Us", "42")],
            b"own",
        )
        .unwrap();
        until(Duration::from_secs(5), "our own message", &log, || {
            payloads(&log, a).len() == 2
        })
        .await;
        let own = log
            .borrow()
            .iter()
            .rev()
            .find(|s| matches!(s, Seen::Msg { .. }))
            .cloned();
        assert_eq!(
            own,
            Some(Seen::Msg {
                sid: a,
                subject: "t.a".into(),
                reply: Some("r.1".into()),
                headers: vec![
                    ("K".into(), "v".into()),
                    ("Tether-Arrival-Us".into(), "42".into())
                ],
                payload: "own".into(),
            })
        );
        // After UNSUB and a barrier, nothing more on that sid: a later message on another
        // subject from the same publisher arrives, the one on t.a does not.
        let b = conn.subscribe("t.b").unwrap();
        assert!(conn.unsubscribe(a));
        barrier(&conn, &log).await;
        raw.publish("t.a", "after-unsub");
        raw.publish("t.b", "marker");
        until(Duration::from_secs(5), "the marker", &log, || {
            payloads(&log, b) == ["marker"]
        })
        .await;
        assert_eq!(payloads(&log, a).len(), 2, "{:?}", log.borrow());

        let stats = conn.stats();
        assert_eq!(
            (stats.connects, stats.reconnects, stats.disconnects),
            (1, 0, 0)
        );
        conn.close(Duration::from_secs(1)).await;
    });
}

#[test]
fn requests_answers_no_responders_and_timeouts() {
    let server = NatsServer::start();
    let url = server.url();
    on_executor(move || async move {
        let (conn, log) = connected(config(vec![url.clone()])).await;
        // A responder on a second connection answers from its callback.
        let responder_slot: Rc<RefCell<Option<Connection>>> = Rc::default();
        let slot = responder_slot.clone();
        let responder = Connection::spawn(config(vec![url.clone()]), move |event| {
            if let Event::Msg(m) = event {
                let reply = m.reply.expect("a request has a reply subject");
                let x = m.headers.and_then(|h| h.get("X")).unwrap_or("-").to_owned();
                let body = format!("echo:{}:{x}", String::from_utf8_lossy(m.payload));
                let conn = slot.borrow();
                conn.as_ref()
                    .unwrap()
                    .publish(reply, None, &[], body.as_bytes())
                    .unwrap();
            }
        })
        .unwrap();
        *responder_slot.borrow_mut() = Some(responder.clone());
        responder.subscribe("svc.echo").unwrap();
        until(
            Duration::from_secs(10),
            "the responder's interest",
            &log,
            || server.subjects().iter().any(|s| s == "svc.echo"),
        )
        .await;
        let answer = conn
            .request("svc.echo", &[("X", "1")], b"hi", Duration::from_secs(5))
            .await
            .expect("an answer");
        assert_eq!(answer.payload.as_ref(), b"echo:hi:1");
        assert!(answer.subject.starts_with("_INBOX."));
        // Many at once complete each with its own answer.
        let many: Vec<_> = (0..50)
            .map(|i| {
                conn.request(
                    "svc.echo",
                    &[],
                    format!("m{i}").as_bytes(),
                    Duration::from_secs(5),
                )
            })
            .collect();
        for (i, r) in futures::future::join_all(many)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r.unwrap().payload, format!("echo:m{i}:-").into_bytes());
        }
        // Nobody subscribes: the server says so at once (status 503), long before the timeout.
        let started = Instant::now();
        let none = conn
            .request("svc.nobody", &[], b"x", Duration::from_secs(5))
            .await;
        assert_eq!(none.unwrap_err(), RequestError::NoResponders);
        assert!(started.elapsed() < Duration::from_secs(2));
        // A subscriber that never answers: the request times out.
        conn.subscribe("svc.silent").unwrap();
        barrier(&conn, &log).await;
        let silent = conn
            .request("svc.silent", &[], b"x", Duration::from_millis(300))
            .await;
        assert_eq!(silent.unwrap_err(), RequestError::Timeout);
        // Inbox answers never reach the callback.
        assert!(!log
            .borrow()
            .iter()
            .any(|s| matches!(s, Seen::Msg { subject, .. } if subject.starts_with("_INBOX."))));
        responder.close(Duration::from_secs(1)).await;
        drop(responder_slot);
        conn.close(Duration::from_secs(1)).await;
    });
}

/// A burst far above the socket buffers and the read buffer arrives whole and in order; what
/// the outbound bound refuses is refused with `Full` (and can be sent again later); a message
/// of nearly `max_payload` grows the read buffer and arrives too.
#[test]
fn a_burst_and_a_large_message_arrive_whole_and_in_order() {
    let server = NatsServer::start();
    let url = server.url();
    on_executor(move || async move {
        let mut cfg = config(vec![url]);
        cfg.outbound_bytes_max = 1536 * 1024;
        let log: Log = Rc::default();
        let received: Rc<RefCell<(u64, u64, usize)>> = Rc::default(); // (count, next expected, big)
        let r = received.clone();
        let mut rec = record(&log);
        let conn = Connection::spawn(cfg, move |event| {
            let Event::Msg(m) = event else {
                return rec(event);
            };
            let mut r = r.borrow_mut();
            if m.subject == "big" {
                r.2 = m.payload.len();
                return;
            }
            let n: u64 = std::str::from_utf8(&m.payload[..8])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(n, r.1, "in order, none lost");
            r.0 += 1;
            r.1 += 1;
        })
        .unwrap();
        until(Duration::from_secs(10), "the connection", &log, || {
            conn.is_connected()
        })
        .await;
        conn.subscribe("burst").unwrap();
        conn.subscribe("big").unwrap();
        barrier(&conn, &log).await;
        let total = 40_000u64;
        let (mut sent, mut refused) = (0u64, 0u64);
        let body = [b'.'; 120];
        while sent < total {
            let mut payload = format!("{sent:08}").into_bytes();
            payload.extend_from_slice(&body);
            match conn.publish("burst", None, &[], &payload) {
                Ok(()) => sent += 1,
                Err(tether::nats::PublishError::Full) => {
                    refused += 1;
                    glommio::executor().yield_now().await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0, "1.5 MiB cannot hold 40,000 messages of 128 B");
        until(Duration::from_secs(30), "the whole burst", &log, || {
            received.borrow().0 == total
        })
        .await;
        let big = vec![b'x'; 1024 * 1024 - 100];
        conn.publish("big", None, &[], &big).unwrap();
        until(Duration::from_secs(10), "the big message", &log, || {
            received.borrow().2 == big.len()
        })
        .await;
        let too_big = vec![b'x'; 1024 * 1024 + 1];
        assert!(matches!(
            conn.publish("big", None, &[], &too_big),
            Err(tether::nats::PublishError::TooLarge { .. })
        ));
        assert_eq!(conn.stats().disconnects, 0);
        conn.close(Duration::from_secs(1)).await;
    });
}

/// `close` writes what is queued before it closes the socket.
#[test]
fn close_flushes_what_is_queued() {
    let server = NatsServer::start();
    let url = server.url();
    let mut raw = Raw::connect(server.port);
    raw.0.write_all(b"SUB last.words 1\r\n").unwrap();
    raw.sync();
    on_executor(move || async move {
        let (conn, _log) = connected(config(vec![url])).await;
        for i in 0..1000 {
            conn.publish("last.words", None, &[], format!("m{i:04}").as_bytes())
                .unwrap();
        }
        assert!(
            conn.queued_bytes() > 0,
            "nothing written yet: the task has not run"
        );
        conn.close(Duration::from_secs(5)).await;
    });
    raw.expect("m0999");
}

/// The interest barrier: after `PONG`, a message another client publishes at once is ours.
#[test]
fn a_ping_after_sub_is_an_interest_barrier() {
    let server = NatsServer::start();
    let url = server.url();
    let port = server.port;
    on_executor(move || async move {
        let (conn, log) = connected(config(vec![url])).await;
        let mut raw = Raw::connect(port);
        for i in 0..100 {
            let subject = format!("barrier.{i}");
            let sid = conn.subscribe(&subject).unwrap();
            barrier(&conn, &log).await;
            raw.publish(&subject, "x");
            until(
                Duration::from_secs(5),
                "the message after the barrier",
                &log,
                || payloads(&log, sid) == ["x"],
            )
            .await;
        }
        conn.close(Duration::from_secs(1)).await;
    });
}

#[test]
fn reconnects_after_a_restart_with_subscriptions_pings_and_publishes() {
    let mut server = NatsServer::start();
    let (port, monitor) = (server.port, server.monitor_port);
    let url = server.url();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<NatsServer>();
    // The server is stopped and started by another thread when the executor asks.
    let controller = std::thread::spawn(move || {
        stop_rx.recv().unwrap();
        server.stop();
        stop_rx.recv().unwrap();
        let restarted = (0..20)
            .find_map(|_| NatsServer::start_on(port, monitor))
            .expect("restart on the same port");
        started_tx.send(restarted).unwrap();
    });
    on_executor(move || async move {
        let (conn, log) = connected(config(vec![url])).await;
        let a = conn.subscribe("r.a").unwrap();
        barrier(&conn, &log).await;
        stop_tx.send(()).unwrap();
        until(Duration::from_secs(10), "the disconnect", &log, || {
            has(&log, &Seen::Disconnected)
        })
        .await;
        assert!(!conn.is_connected());
        // During the outage: a ping, a subscription, a publish to our own subject.
        let during = conn.ping();
        let b = conn.subscribe("r.b").unwrap();
        conn.publish("r.a", None, &[], b"queued-during-outage")
            .unwrap();
        stop_tx.send(()).unwrap();
        let server = loop {
            if let Ok(s) = started_rx.try_recv() {
                break s;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        };
        until(Duration::from_secs(15), "the reconnect", &log, || {
            has(&log, &Seen::Connected { reconnect: true })
        })
        .await;
        // The ping completes, and the publish went out after the restored SUB: we get it.
        until(
            Duration::from_secs(5),
            "the ping of the outage",
            &log,
            || has(&log, &Seen::Pong(during)),
        )
        .await;
        until(Duration::from_secs(5), "the queued publish", &log, || {
            payloads(&log, a) == ["queued-during-outage"]
        })
        .await;
        let subjects = server.subjects();
        assert!(
            subjects.iter().any(|s| s == "r.a") && subjects.iter().any(|s| s == "r.b"),
            "{subjects:?}"
        );
        assert!(
            subjects.iter().any(|s| s.starts_with("_INBOX.")),
            "{subjects:?}"
        );
        let mut raw = Raw::connect(port);
        raw.publish("r.b", "after");
        until(
            Duration::from_secs(5),
            "a message on the SUB made during the outage",
            &log,
            || payloads(&log, b) == ["after"],
        )
        .await;
        let stats = conn.stats();
        assert_eq!(
            (stats.connects, stats.reconnects, stats.disconnects),
            (2, 1, 1),
            "{stats:?}"
        );
        assert!(stats.connected);
        conn.close(Duration::from_secs(1)).await;
        drop(server);
    });
    controller.join().unwrap();
}

#[test]
fn two_urls_the_first_dead() {
    let server = NatsServer::start();
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let urls = vec![dead, server.url()];
    on_executor(move || async move {
        // The connection starts at a random one of the two: at most the dead one fails.
        let (conn, log) = connected(config(urls)).await;
        assert!(conn.stats().failed_attempts <= 1, "{:?}", conn.stats());
        barrier(&conn, &log).await;
        conn.close(Duration::from_secs(1)).await;
    });
}

/// A cluster of two: configured with the first server only, the client learns the second from
/// `INFO` `connect_urls` and moves there when the first dies, its subscriptions with it.
#[test]
fn learns_the_cluster_and_fails_over_to_an_announced_server() {
    let (dir_a, dir_b) = (Scratch::new("nats-client-a"), Scratch::new("nats-client-b"));
    let (route_a, route_b) = (free_port(), free_port());
    let cluster = |me: u16, other: u16| {
        format!(
            "cluster {{ name: \"t\"\nlisten: \"127.0.0.1:{me}\"\nroutes: [\"nats-route://127.0.0.1:{other}\"] }}"
        )
    };
    let a = Nats::start(&dir_a.0, &cluster(route_a, route_b));
    let b = Nats::start(&dir_b.0, &cluster(route_b, route_a));
    let url_a = a.url("nats");
    let port_b = b.port;
    let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        kill_rx.recv().unwrap();
        drop(a);
    });
    on_executor(move || async move {
        let (conn, log) = connected(config(vec![url_a])).await;
        let sid = conn.subscribe("fail.over").unwrap();
        barrier(&conn, &log).await;
        until(Duration::from_secs(15), "server B announced", &log, || {
            conn.stats().announced_servers >= 1
        })
        .await;
        kill_tx.send(()).unwrap();
        until(Duration::from_secs(15), "the reconnect to B", &log, || {
            has(&log, &Seen::Connected { reconnect: true })
        })
        .await;
        barrier(&conn, &log).await;
        let mut raw = Raw::connect(port_b);
        raw.publish("fail.over", "on-b");
        until(
            Duration::from_secs(5),
            "the message through B",
            &log,
            || payloads(&log, sid) == ["on-b"],
        )
        .await;
        conn.close(Duration::from_secs(1)).await;
    });
    killer.join().unwrap();
    drop(b);
}

/// Connects with `auth` to a server started with `conf` and returns the counters once a login
/// was accepted (and a round trip made) or the first attempt failed.
fn login(dir: &Scratch, conf: &str, scheme: &str, auth: NatsAuth) -> tether::nats::ConnStats {
    let nats = Nats::start(&dir.0, conf);
    let url = nats.url(scheme);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        on_executor(move || async move {
            let log: Log = Rc::default();
            let mut cfg = config(vec![url]);
            cfg.auth = auth;
            let conn = Connection::spawn(cfg, record(&log)).expect("config accepted");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !conn.is_connected()
                && conn.stats().failed_attempts == 0
                && Instant::now() < deadline
            {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            if conn.is_connected() {
                // Logged in: a round trip works.
                barrier(&conn, &log).await;
            }
            tx.send(conn.stats()).unwrap();
            conn.close(Duration::from_millis(100)).await;
        });
    })
    .join()
    .unwrap();
    drop(nats);
    rx.recv().unwrap()
}

#[test]
fn logins_token_user_password_nkey_and_creds() {
    let dir = Scratch::new("nats-client-login");
    let ok = |s: tether::nats::ConnStats| s.connected && s.connects == 1;
    let refused =
        |s: tether::nats::ConnStats| !s.connected && s.connects == 0 && s.failed_attempts >= 1;

    let token = r#"authorization { token: "t0ken-abc" }"#;
    let with_token = |t: &str| NatsAuth {
        token: Some(t.into()),
        ..NatsAuth::default()
    };
    assert!(ok(login(&dir, token, "nats", with_token("t0ken-abc"))));
    assert!(refused(login(&dir, token, "nats", with_token("wrong"))));

    let users = r#"authorization { users = [ { user: "node", password: "s3cret-pw" } ] }"#;
    let with_password = |p: &str| NatsAuth {
        user_password: Some(("node".into(), p.into())),
        ..NatsAuth::default()
    };
    assert!(ok(login(&dir, users, "nats", with_password("s3cret-pw"))));
    assert!(refused(login(&dir, users, "nats", with_password("wrong"))));
    assert!(refused(login(&dir, users, "nats", NatsAuth::default())));

    let user = nkeys::KeyPair::new_user();
    let seed = dir.file("node.nk", &format!("{}\n", user.seed().unwrap()));
    let nkey_conf = format!(
        r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    );
    let with_seed = |path: &str| NatsAuth {
        nkey_seed_file: Some(path.into()),
        ..NatsAuth::default()
    };
    assert!(ok(login(&dir, &nkey_conf, "nats", with_seed(&seed))));
    let other = dir.file("other.nk", &nkeys::KeyPair::new_user().seed().unwrap());
    assert!(refused(login(&dir, &nkey_conf, "nats", with_seed(&other))));

    let (operator_conf, creds) = messaging_support::operator_mode();
    let creds = dir.file("node.creds", &creds);
    let with_creds = NatsAuth {
        creds_file: Some(creds.into()),
        ..NatsAuth::default()
    };
    assert!(ok(login(&dir, &operator_conf, "nats", with_creds)));

    // Files that cannot be used stop the start, naming the setting.
    let bad = |auth: NatsAuth| {
        let mut cfg = config(vec!["nats://127.0.0.1:1".into()]);
        cfg.auth = auth;
        // Checked before anything is spawned: no executor needed for a refusal.
        let (tx, rx) = std::sync::mpsc::channel();
        on_executor(move || async move {
            tx.send(Connection::spawn(cfg, |_| {}).err().map(|e| e.to_string()))
                .unwrap();
        });
        rx.recv().unwrap().expect("refused")
    };
    assert!(bad(with_seed("/nonexistent.nk")).contains("nats_nkey_seed_file"));
    assert!(bad(with_seed(&dir.path("node.creds"))).contains("not an NKey seed"));
    let both = NatsAuth {
        token: Some("t".into()),
        user_password: Some(("u".into(), "p".into())),
        ..NatsAuth::default()
    };
    assert!(bad(both).contains("give one NATS login"));
}

#[test]
fn tls_with_a_ca_a_client_certificate_and_tls_first() {
    let pki = server_support::tls::Pki::new("nats-client");
    pki.issue("srv");
    pki.issue("cli");
    let cas = format!(
        "{}{}",
        std::fs::read_to_string(pki.dir.join("casrv.pem")).unwrap(),
        std::fs::read_to_string(pki.dir.join("cacli.pem")).unwrap()
    );
    std::fs::write(pki.dir.join("both.pem"), cas).unwrap();
    let dir = Scratch::new("nats-client-tls");
    let tls = |extra: &str| {
        format!(
            "tls {{ cert_file: \"{}\"\nkey_file: \"{}\"\nca_file: \"{}\"\nverify: true\n{extra} }}",
            pki.path("certsrv.pem"),
            pki.path("keysrv.pem"),
            pki.path("both.pem"),
        )
    };
    let client = |tls_first: bool, with_cert: bool| NatsAuth {
        tls_ca: Some(pki.path("casrv.pem").into()),
        tls_client: with_cert.then(|| {
            (
                pki.path("certcli.pem").into(),
                pki.path("keycli.pem").into(),
            )
        }),
        tls_first,
        ..NatsAuth::default()
    };
    let conf = tls("");
    let s = login(&dir, &conf, "tls", client(false, true));
    assert!(s.connected && s.connects == 1, "{s:?}");
    // The server verifies clients: without a certificate, no login.
    let s = login(&dir, &conf, "tls", client(false, false));
    assert!(!s.connected && s.failed_attempts >= 1, "{s:?}");
    // A CA that did not sign the server's certificate: refused by us.
    let wrong_ca = NatsAuth {
        tls_ca: Some(pki.path("cacli.pem").into()),
        ..client(false, true)
    };
    let s = login(&dir, &conf, "tls", wrong_ca);
    assert!(!s.connected && s.failed_attempts >= 1, "{s:?}");
    // handshake_first: TLS before the server's INFO.
    let first = tls("handshake_first: true");
    let s = login(&dir, &first, "tls", client(true, true));
    assert!(s.connected && s.connects == 1, "{s:?}");
}
