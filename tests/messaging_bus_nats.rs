//! The NATS bus against a real nats-server: routing between two nodes by interest, barriers,
//! interest withdrawn on unsubscribe (checked on the server's `/subsz`), interest restored after
//! the server restarts, and backend requests with their timeouts.

mod messaging_support;

use bytes::Bytes;
use messaging_support::NatsServer;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tether::bus::{self, BusConfig, BusEvent, BusNode, RequestError, ShardBus};

fn node(name: &str, shards: usize, server: &NatsServer) -> (Vec<ShardBus>, BusNode) {
    bus::start(&BusConfig {
        node: name.into(),
        shards,
        queue_len: 1024,
        nats_urls: vec![server.url()],
        durable: None,
    })
    .expect("bus starts")
}

fn recv_timeout(bus: &mut ShardBus, timeout: Duration) -> Option<BusEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ev) = futures::FutureExt::now_or_never(bus.recv()).flatten() {
            return Some(ev);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_ready(bus: &mut ShardBus, token: u64) {
    match recv_timeout(bus, Duration::from_secs(10)) {
        Some(BusEvent::Ready(t)) if t == token => {}
        other => panic!("expected Ready({token}), got {other:?}"),
    }
}

fn recv_message(bus: &mut ShardBus, timeout: Duration) -> Option<bus::BusMessage> {
    match recv_timeout(bus, timeout)? {
        BusEvent::Message(m) => Some(m),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn two_nodes_route_by_interest_and_withdraw_it() {
    let server = NatsServer::start();
    let (mut n1, stop1) = node("n1", 2, &server);
    let (mut n2, stop2) = node("n2", 1, &server);

    n1[1].subscribe("tether.dev.tv-1").unwrap();
    n1[1].barrier(1);
    wait_ready(&mut n1[1], 1);
    // The barrier guarantees the server has the interest now.
    assert!(server.subjects().iter().any(|s| s == "tether.dev.tv-1"));

    n2[0]
        .publish("tether.dev.tv-1", None, Bytes::from_static(b"{\"data\":1}"))
        .unwrap();
    let msg = recv_message(&mut n1[1], Duration::from_secs(5)).expect("delivered across nodes");
    assert_eq!(msg.subject, "tether.dev.tv-1");
    assert_eq!(&msg.payload[..], b"{\"data\":1}");
    // Not to the shard that holds no interest.
    assert!(recv_timeout(&mut n1[0], Duration::from_millis(200)).is_none());

    // Inbox replies reach exactly the shard named in the subject, across nodes.
    n2[0]
        .publish(
            "tether.inbox.n1.0.9",
            None,
            Bytes::from_static(b"{\"delivered\":1}"),
        )
        .unwrap();
    let reply = recv_message(&mut n1[0], Duration::from_secs(5)).expect("inbox reply");
    assert_eq!(reply.subject, "tether.inbox.n1.0.9");

    n1[1].unsubscribe("tether.dev.tv-1");
    server.wait_subjects(
        Duration::from_secs(5),
        "the device subscription to go",
        |subs| !subs.iter().any(|s| s == "tether.dev.tv-1"),
    );
    assert_eq!(stop1.stats().subscriptions.load(Ordering::Relaxed), 0);
    stop1.stop(Duration::from_secs(1));
    stop2.stop(Duration::from_secs(1));
    // Both nodes gone: nothing of theirs is left on the server.
    server.wait_subjects(Duration::from_secs(5), "no subscriptions", |subs| {
        subs.is_empty()
    });
}

#[test]
fn interest_is_restored_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let (port, monitor) = (server.port, server.monitor_port);
    let (mut n1, stop1) = node("n1", 1, &server);
    let (mut n2, stop2) = node("n2", 1, &server);
    n1[0].subscribe("tether.topic.news").unwrap();
    n1[0].barrier(1);
    wait_ready(&mut n1[0], 1);

    server.stop();
    let stats = stop1.stats();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats.connected.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "disconnect not noticed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = NatsServer::start_on(port, monitor).expect("restart on the same ports");
    server.wait_subjects(Duration::from_secs(15), "interest restored", |subs| {
        subs.iter().any(|s| s == "tether.topic.news")
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while stop2.stats().connected.load(Ordering::Relaxed) != 1 {
        assert!(Instant::now() < deadline, "node 2 did not reconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Retry: a publish can race node 2's own reconnection handshake.
    let mut got = None;
    for _ in 0..50 {
        n2[0]
            .publish("tether.topic.news", None, Bytes::from_static(b"{}"))
            .unwrap();
        if let Some(m) = recv_message(&mut n1[0], Duration::from_millis(200)) {
            got = Some(m);
            break;
        }
    }
    assert_eq!(
        got.expect("delivered after restart").subject,
        "tether.topic.news"
    );
    assert!(stats.reconnects_total.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.connected.load(Ordering::Relaxed), 1);
    let mut text = String::new();
    stats.render_prometheus(&mut text);
    assert!(
        text.contains("tether_bus_connected{bus=\"nats\"} 1"),
        "{text}"
    );
    stop1.stop(Duration::from_secs(1));
    stop2.stop(Duration::from_secs(1));
}

#[test]
fn requests_reply_time_out_and_report_no_responders() {
    let server = NatsServer::start();
    let (mut n1, stop1) = node("n1", 1, &server);
    let (mut n2, stop2) = node("n2", 1, &server);

    // n2 answers on "svc.echo"; a subscriber that never answers sits on "svc.silent".
    n2[0].subscribe("svc.echo").unwrap();
    n2[0].subscribe("svc.silent").unwrap();
    n2[0].barrier(1);
    wait_ready(&mut n2[0], 1);

    let pending = n1[0].request(
        "svc.echo",
        Bytes::from_static(b"ping"),
        Duration::from_secs(5),
    );
    let req = recv_message(&mut n2[0], Duration::from_secs(5)).expect("request arrives");
    assert_eq!(&req.payload[..], b"ping");
    n2[0]
        .publish(
            req.reply.as_deref().expect("reply subject"),
            None,
            Bytes::from_static(b"pong"),
        )
        .unwrap();
    assert_eq!(
        futures::executor::block_on(pending),
        Ok(Bytes::from_static(b"pong"))
    );

    let started = Instant::now();
    let silent = n1[0].request("svc.silent", Bytes::new(), Duration::from_millis(300));
    assert_eq!(
        futures::executor::block_on(silent),
        Err(RequestError::Timeout)
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(3));

    let nobody = n1[0].request("svc.nobody", Bytes::new(), Duration::from_secs(5));
    assert_eq!(
        futures::executor::block_on(nobody),
        Err(RequestError::NoResponders)
    );
    stop1.stop(Duration::from_secs(1));
    stop2.stop(Duration::from_secs(1));
}

#[test]
fn embedded_bus_has_no_backends() {
    let (mut buses, _node) = bus::start(&BusConfig {
        node: "n1".into(),
        shards: 2,
        queue_len: 16,
        nats_urls: vec![],
        durable: None,
    })
    .unwrap();
    assert!(!buses[0].has_backends());
    let r = buses[0].request("x", Bytes::new(), Duration::from_millis(10));
    assert_eq!(futures::executor::block_on(r), Err(RequestError::NoBackend));
}

#[test]
fn bad_nats_url_is_a_clear_start_error() {
    let err = bus::start(&BusConfig {
        node: "n1".into(),
        shards: 1,
        queue_len: 16,
        nats_urls: vec!["http://[bad".into()],
        durable: None,
    })
    .err()
    .expect("refused");
    assert!(err.contains("not a NATS URL"), "{err}");
}

/// Routable means routable: once a barrier completes, a publish from another connection (here
/// another node) reaches the new interest. Many subjects at once, so that a barrier that only
/// flushed the client's socket (and so raced with the server reading the SUB) would show.
#[test]
fn a_completed_barrier_means_the_server_routes_to_the_new_interest() {
    let server = NatsServer::start();
    let (mut n1, stop1) = node("n1", 1, &server);
    let (mut n2, stop2) = node("n2", 1, &server);
    const ROUNDS: u64 = 100;
    const SUBJECTS_PER_ROUND: u64 = 20;
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let subjects: Vec<String> = (0..SUBJECTS_PER_ROUND)
            .map(|i| format!("tether.topic.r{round}-{i}"))
            .collect();
        for (i, subject) in subjects.iter().enumerate() {
            n1[0].subscribe(subject).unwrap();
            n1[0].barrier(round * 1000 + i as u64);
        }
        let mut ready = 0;
        let mut got = std::collections::HashSet::new();
        while ready < SUBJECTS_PER_ROUND {
            match recv_timeout(&mut n1[0], Duration::from_secs(10)) {
                Some(BusEvent::Ready(token)) => {
                    // Publish from the other node the moment each barrier completes.
                    let subject = &subjects[(token % 1000) as usize];
                    n2[0]
                        .publish(subject, None, Bytes::from_static(b"{}"))
                        .unwrap();
                    ready += 1;
                }
                // A publish made after an earlier barrier may come back before the next one.
                Some(BusEvent::Message(m)) => {
                    got.insert(m.subject);
                }
                other => panic!("expected a barrier or a message, got {other:?}"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < subjects.len() && Instant::now() < deadline {
            if let Some(m) = recv_message(&mut n1[0], Duration::from_millis(100)) {
                got.insert(m.subject);
            }
        }
        lost.extend(subjects.into_iter().filter(|s| !got.contains(s)));
    }
    assert!(
        lost.is_empty(),
        "{} of {} publishes made right after a barrier were lost: {:?}",
        lost.len(),
        ROUNDS * SUBJECTS_PER_ROUND,
        &lost[..lost.len().min(10)]
    );
    stop1.stop(Duration::from_secs(1));
    stop2.stop(Duration::from_secs(1));
}

/// Defect 5: a device subscribed to a one-token topic named like itself gets each publish once
/// (its wildcard `tether.*.<device>` also matches `tether.topic.<device>` on the server), and
/// the other subjects ending in its id (events, upstream) never reach its shard.
#[test]
fn the_device_wildcard_does_not_duplicate_a_topic_named_like_the_device() {
    let server = NatsServer::start();
    let (mut n1, stop1) = node("n1", 1, &server);
    let (mut n2, stop2) = node("n2", 1, &server);
    n1[0].subscribe_device("tv-1").unwrap();
    n1[0].subscribe("tether.topic.tv-1").unwrap();
    n1[0].barrier(1);
    wait_ready(&mut n1[0], 1);
    for subject in [
        "tether.topic.tv-1",
        "tether.event.tv-1",
        "tether.up.tv-1",
        "tether.dev.tv-1",
    ] {
        n2[0]
            .publish(subject, None, Bytes::from_static(b"{}"))
            .unwrap();
    }
    let mut got = Vec::new();
    while let Some(m) = recv_message(&mut n1[0], Duration::from_millis(500)) {
        got.push(m.subject);
    }
    got.sort();
    assert_eq!(got, ["tether.dev.tv-1", "tether.topic.tv-1"]);
    stop1.stop(Duration::from_secs(1));
    stop2.stop(Duration::from_secs(1));
}
