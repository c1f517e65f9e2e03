//! The NATS bus against a real nats-server: routing between two nodes by interest, barriers,
//! interest withdrawn on unsubscribe (checked on the server's `/subsz`), interest restored after
//! the server restarts, and backend requests with their timeouts.

mod messaging_support;

use bytes::Bytes;
use futures::future::Either;
use messaging_support::NatsServer;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tether::bus::{self, BusConfig, BusEvent, BusNode, BusStats, RequestError, ShardBus};

type Job = Box<dyn FnOnce(&mut ShardBus) + Send>;

/// One shard's bus on its own glommio executor and thread (its NATS connection runs there, as
/// on a real shard), driven from the test thread: jobs go in, events come out.
struct Shard {
    jobs: Option<flume::Sender<Job>>,
    events: flume::Receiver<BusEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shard {
    fn start(bus: ShardBus) -> Shard {
        let (jobs, job_rx) = flume::unbounded::<Job>();
        let (event_tx, events) = flume::unbounded();
        let thread = std::thread::spawn(move || {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .io_memory(256 * 1024)
                .make()
                .expect("glommio executor (io_uring, RLIMIT_MEMLOCK)")
                .run(async move {
                    let mut bus = bus;
                    bus.start().expect("the shard's connection starts");
                    let inbox = bus.inbox();
                    loop {
                        while let Some(ev) = bus.poll_local() {
                            let _ = event_tx.send(ev);
                        }
                        let job = std::pin::pin!(job_rx.recv_async());
                        let next = std::pin::pin!(inbox.next());
                        match futures::future::select(job, next).await {
                            Either::Left((Ok(job), _)) => job(&mut bus),
                            Either::Left((Err(_), _)) | Either::Right((None, _)) => break,
                            Either::Right((Some(raw), _)) => {
                                if let Some(ev) = bus.accept(raw) {
                                    let _ = event_tx.send(ev);
                                }
                            }
                        }
                    }
                    bus.close(Duration::from_secs(1)).await;
                });
        });
        Shard {
            jobs: Some(jobs),
            events,
            thread: Some(thread),
        }
    }

    /// Runs `f` on the shard and returns what it returns.
    fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut ShardBus) -> R + Send + 'static) -> R {
        let (tx, rx) = flume::bounded(1);
        self.jobs
            .as_ref()
            .expect("running")
            .send(Box::new(move |bus: &mut ShardBus| {
                let _ = tx.send(f(bus));
            }))
            .expect("the shard runs");
        rx.recv().expect("the shard answers")
    }

    fn subscribe(&self, subject: &str) {
        let subject = subject.to_owned();
        self.with(move |b| b.subscribe(&subject)).unwrap();
    }

    fn unsubscribe(&self, subject: &str) {
        let subject = subject.to_owned();
        self.with(move |b| b.unsubscribe(&subject));
    }

    fn barrier(&self, token: u64) {
        self.with(move |b| b.barrier(token));
    }

    fn publish(&self, subject: &str, payload: &'static [u8]) {
        let subject = subject.to_owned();
        self.with(move |b| b.publish(&subject, None, Bytes::from_static(payload)))
            .unwrap();
    }

    /// Starts a request on the shard; its answer comes on the returned channel.
    fn request(
        &self,
        subject: &str,
        payload: &'static [u8],
        timeout: Duration,
    ) -> flume::Receiver<Result<Bytes, RequestError>> {
        let subject = subject.to_owned();
        self.with(move |b| {
            let reply = b.request(&subject, Bytes::from_static(payload), timeout);
            let (tx, rx) = flume::bounded(1);
            glommio::spawn_local(async move {
                let _ = tx.send(reply.await);
            })
            .detach();
            rx
        })
    }

    fn recv_timeout(&self, timeout: Duration) -> Option<BusEvent> {
        self.events.recv_timeout(timeout).ok()
    }

    fn wait_ready(&self, token: u64) {
        match self.recv_timeout(Duration::from_secs(10)) {
            Some(BusEvent::Ready(t)) if t == token => {}
            other => panic!("expected Ready({token}), got {other:?}"),
        }
    }

    fn recv_message(&self, timeout: Duration) -> Option<bus::BusMessage> {
        match self.recv_timeout(timeout)? {
            BusEvent::Message(m) => Some(m),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

impl Drop for Shard {
    /// Stops the shard: its connection flushes and closes.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn node(name: &str, shards: usize, server: &NatsServer) -> (Vec<Shard>, BusNode) {
    let (buses, node) = bus::start(&BusConfig {
        node: name.into(),
        shards,
        queue_len: 1024,
        nats_urls: vec![server.url()],
        durable: None,
    })
    .expect("bus starts");
    (buses.into_iter().map(Shard::start).collect(), node)
}

/// Waits until `cond` holds on the node's stats.
fn wait_stats(stats: &BusStats, what: &str, timeout: Duration, cond: impl Fn(&BusStats) -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond(stats) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_nodes_route_by_interest_and_withdraw_it() {
    let server = NatsServer::start();
    let (n1, stop1) = node("n1", 2, &server);
    let (n2, stop2) = node("n2", 1, &server);

    n1[1].subscribe("tether.dev.tv-1");
    n1[1].barrier(1);
    n1[1].wait_ready(1);
    // The barrier guarantees the server has the interest now.
    assert!(server.subjects().iter().any(|s| s == "tether.dev.tv-1"));

    n2[0].publish("tether.dev.tv-1", b"{\"data\":1}");
    let msg = n1[1]
        .recv_message(Duration::from_secs(5))
        .expect("delivered across nodes");
    assert_eq!(msg.subject, "tether.dev.tv-1");
    assert_eq!(&msg.payload[..], b"{\"data\":1}");
    // Not to the shard that holds no interest.
    assert!(n1[0].recv_timeout(Duration::from_millis(200)).is_none());

    // Inbox replies reach exactly the shard named in the subject, across nodes.
    n2[0].publish("tether.inbox.n1.0.9", b"{\"delivered\":1}");
    let reply = n1[0]
        .recv_message(Duration::from_secs(5))
        .expect("inbox reply");
    assert_eq!(reply.subject, "tether.inbox.n1.0.9");

    n1[1].unsubscribe("tether.dev.tv-1");
    server.wait_subjects(
        Duration::from_secs(5),
        "the device subscription to go",
        |subs| !subs.iter().any(|s| s == "tether.dev.tv-1"),
    );
    assert_eq!(stop1.stats().subscriptions.load(Ordering::Relaxed), 0);
    drop((n1, n2, stop1, stop2));
    // Both nodes gone: nothing of theirs is left on the server.
    server.wait_subjects(Duration::from_secs(5), "no subscriptions", |subs| {
        subs.is_empty()
    });
}

#[test]
fn interest_is_restored_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let (port, monitor) = (server.port, server.monitor_port);
    let (n1, stop1) = node("n1", 1, &server);
    let (n2, stop2) = node("n2", 1, &server);
    n1[0].subscribe("tether.topic.news");
    n1[0].barrier(1);
    n1[0].wait_ready(1);

    server.stop();
    let stats = stop1.stats();
    wait_stats(&stats, "the disconnect", Duration::from_secs(5), |s| {
        s.connected_shards.load(Ordering::Relaxed) == 0
    });
    let server = NatsServer::start_on(port, monitor).expect("restart on the same ports");
    server.wait_subjects(Duration::from_secs(15), "interest restored", |subs| {
        subs.iter().any(|s| s == "tether.topic.news")
    });
    wait_stats(
        &stop2.stats(),
        "node 2's reconnect",
        Duration::from_secs(15),
        |s| s.is_connected(),
    );
    // Retry: a publish can race node 2's own reconnection handshake.
    let mut got = None;
    for _ in 0..50 {
        n2[0].publish("tether.topic.news", b"{}");
        if let Some(m) = n1[0].recv_message(Duration::from_millis(200)) {
            got = Some(m);
            break;
        }
    }
    assert_eq!(
        got.expect("delivered after restart").subject,
        "tether.topic.news"
    );
    assert!(stats.reconnects_total.load(Ordering::Relaxed) >= 1);
    assert!(stats.is_connected());
    let mut text = String::new();
    stats.render_prometheus(&mut text);
    assert!(
        text.contains("tether_bus_connected{bus=\"nats\"} 1"),
        "{text}"
    );
}

#[test]
fn requests_reply_time_out_and_report_no_responders() {
    let server = NatsServer::start();
    let (n1, _stop1) = node("n1", 1, &server);
    let (n2, _stop2) = node("n2", 1, &server);

    // n2 answers on "svc.echo"; a subscriber that never answers sits on "svc.silent".
    n2[0].subscribe("svc.echo");
    n2[0].subscribe("svc.silent");
    n2[0].barrier(1);
    n2[0].wait_ready(1);

    let pending = n1[0].request("svc.echo", b"ping", Duration::from_secs(5));
    let req = n2[0]
        .recv_message(Duration::from_secs(5))
        .expect("request arrives");
    assert_eq!(&req.payload[..], b"ping");
    n2[0].publish(req.reply.as_deref().expect("reply subject"), b"pong");
    assert_eq!(pending.recv(), Ok(Ok(Bytes::from_static(b"pong"))));

    let started = Instant::now();
    let silent = n1[0].request("svc.silent", b"", Duration::from_millis(300));
    assert_eq!(silent.recv(), Ok(Err(RequestError::Timeout)));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(3));

    let nobody = n1[0].request("svc.nobody", b"", Duration::from_secs(5));
    assert_eq!(nobody.recv(), Ok(Err(RequestError::NoResponders)));
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
    let (n1, _stop1) = node("n1", 1, &server);
    let (n2, _stop2) = node("n2", 1, &server);
    const ROUNDS: u64 = 100;
    const SUBJECTS_PER_ROUND: u64 = 20;
    let mut lost = Vec::new();
    for round in 0..ROUNDS {
        let subjects: Vec<String> = (0..SUBJECTS_PER_ROUND)
            .map(|i| format!("tether.topic.r{round}-{i}"))
            .collect();
        for (i, subject) in subjects.iter().enumerate() {
            n1[0].subscribe(subject);
            n1[0].barrier(round * 1000 + i as u64);
        }
        let mut ready = 0;
        let mut got = std::collections::HashSet::new();
        while ready < SUBJECTS_PER_ROUND {
            match n1[0].recv_timeout(Duration::from_secs(10)) {
                Some(BusEvent::Ready(token)) => {
                    // Publish from the other node the moment each barrier completes.
                    let subject = &subjects[(token % 1000) as usize];
                    n2[0].publish(subject, b"{}");
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
            if let Some(m) = n1[0].recv_message(Duration::from_millis(100)) {
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
}

/// Defect 5: a device subscribed to a one-token topic named like itself gets each publish once
/// (its wildcard `tether.*.<device>` also matches `tether.topic.<device>` on the server), and
/// the other subjects ending in its id (events, upstream) never reach its shard.
#[test]
fn the_device_wildcard_does_not_duplicate_a_topic_named_like_the_device() {
    let server = NatsServer::start();
    let (n1, _stop1) = node("n1", 1, &server);
    let (n2, _stop2) = node("n2", 1, &server);
    n1[0].with(|b| b.subscribe_device("tv-1")).unwrap();
    n1[0].subscribe("tether.topic.tv-1");
    n1[0].barrier(1);
    n1[0].wait_ready(1);
    for subject in [
        "tether.topic.tv-1",
        "tether.event.tv-1",
        "tether.up.tv-1",
        "tether.dev.tv-1",
    ] {
        n2[0].publish(subject, b"{}");
    }
    let mut got = Vec::new();
    while let Some(m) = n1[0].recv_message(Duration::from_millis(500)) {
        got.push(m.subject);
    }
    got.sort();
    assert_eq!(got, ["tether.dev.tv-1", "tether.topic.tv-1"]);
}

/// A TCP proxy in front of nats-server that can cut one client's connection: it reads the
/// client's `CONNECT` line as it passes and remembers the connection under the name in it
/// (`tether node <node> shard <i>`).
struct CuttingProxy {
    port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<(String, std::net::TcpStream)>>>,
}

impl CuttingProxy {
    fn start(upstream_port: u16) -> CuttingProxy {
        use std::io::{BufRead, Read, Write};
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let registry = conns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (mut client_w, mut server_w) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let registry = registry.clone();
                let kill = client.try_clone().unwrap();
                // Client to server, line by line until CONNECT names the client, then raw.
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(client);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if server_w.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        if let Some(connect) = line.strip_prefix("CONNECT ") {
                            let json: serde_json::Value = serde_json::from_str(connect).unwrap();
                            let name = json["name"].as_str().unwrap_or("").to_owned();
                            registry.lock().unwrap().push((name, kill));
                            break;
                        }
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if server_w.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = server_w.shutdown(std::net::Shutdown::Both);
                });
                // Server to client, raw.
                std::thread::spawn(move || {
                    let mut server = server;
                    let _ = std::io::copy(&mut server, &mut client_w);
                    let _ = client_w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingProxy { port, conns }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts every live connection whose client name ends with `suffix`; how many it cut.
    fn cut(&self, suffix: &str) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let mut cut = 0;
        conns.retain(|(name, stream)| {
            if name.ends_with(suffix) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                cut += 1;
                false
            } else {
                true
            }
        });
        cut
    }
}

/// Each shard has its own connection: losing one shard's connection leaves the other shards
/// connected and receiving, `tether_bus_connected` says 0 until every shard is back, and the
/// lost shard's interest is restored by its own reconnect.
#[test]
fn a_shard_that_loses_its_connection_gets_its_interest_back_while_the_others_carry_on() {
    let server = NatsServer::start();
    let proxy = CuttingProxy::start(server.port);
    let (buses, node1) = bus::start(&BusConfig {
        node: "n1".into(),
        shards: 2,
        queue_len: 1024,
        nats_urls: vec![proxy.url()],
        durable: None,
    })
    .expect("bus starts");
    let n1: Vec<Shard> = buses.into_iter().map(Shard::start).collect();
    let (n2, _node2) = node("n2", 1, &server);
    let stats = node1.stats();
    wait_stats(
        &stats,
        "both shards connected",
        Duration::from_secs(10),
        |s| s.connected_shards.load(Ordering::Relaxed) == 2 && s.is_connected(),
    );
    n1[0].subscribe("tether.topic.zero");
    n1[0].barrier(1);
    n1[0].wait_ready(1);
    n1[1].subscribe("tether.topic.one");
    n1[1].barrier(2);
    n1[1].wait_ready(2);

    assert_eq!(proxy.cut(" shard 1"), 1, "shard 1's connection found");
    wait_stats(
        &stats,
        "shard 1's disconnect",
        Duration::from_secs(5),
        |s| s.disconnects_total.load(Ordering::Relaxed) >= 1,
    );
    // While shard 1 is away (or just back), shard 0 keeps its connection and its messages.
    n2[0].publish("tether.topic.zero", b"{\"during\":1}");
    let msg = n1[0]
        .recv_message(Duration::from_secs(5))
        .expect("shard 0 still receives");
    assert_eq!(msg.subject, "tether.topic.zero");

    wait_stats(
        &stats,
        "shard 1's reconnect",
        Duration::from_secs(15),
        |s| s.reconnects_total.load(Ordering::Relaxed) >= 1 && s.is_connected(),
    );
    assert_eq!(
        stats.disconnects_total.load(Ordering::Relaxed),
        1,
        "only shard 1 was lost"
    );
    assert_eq!(stats.reconnects_total.load(Ordering::Relaxed), 1);
    // Shard 1's interest came back with its reconnect: a barrier on its connection, then a
    // publish from another node reaches it.
    n1[1].barrier(3);
    n1[1].wait_ready(3);
    n2[0].publish("tether.topic.one", b"{\"after\":1}");
    let msg = n1[1]
        .recv_message(Duration::from_secs(5))
        .expect("shard 1 receives again");
    assert_eq!(msg.subject, "tether.topic.one");
    let mut text = String::new();
    stats.render_prometheus(&mut text);
    assert!(
        text.contains("tether_bus_connected{bus=\"nats\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("tether_bus_connected_shards{bus=\"nats\"} 2"),
        "{text}"
    );
}
