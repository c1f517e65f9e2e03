//! The PROXY protocol (`--proxy-protocol`): the client's real address through an L4 balancer.
//!
//! Behind HAProxy (Debian package, TCP mode, `send-proxy` and `send-proxy-v2`): a client bound
//! to its own loopback address (127.0.0.7, ...) connects through HAProxy, and tether's device
//! endpoint, its `--auth-subject` backend (a real nats-server and an async-nats responder) and
//! its log lines see that address and port, on `ws://` and on `wss://` (the header before the
//! ClientHello). HAProxy sending a header to a listener that does not expect one gets 400.
//! Without HAProxy: a header split over several writes, v2 `LOCAL`, and the refusals (no
//! header, a malformed one, none within `handshake_timeout`) with their metrics.
//!
//! The HAProxy test is skipped with a message when `haproxy` is not installed (CI installs it:
//! `scripts/setup.d/50-haproxy.sh`).

mod messaging_support;
mod server_support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use messaging_support::{free_port, NatsServer};
use server_support::tls::{tls_client, tls_port, Pki};
use server_support::*;
use tether::auth::{mint_hs256, Claims};

const SECRET: &str = "proxy-test-secret-of-32-bytes-ok";

fn token(device: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    mint_hs256(
        SECRET.as_bytes(),
        &Claims {
            sub: device.into(),
            exp,
            ..Claims::default()
        },
    )
    .unwrap()
}

/// A TCP connection from `source` (a loopback address of its own) to `port`.
fn connect_from(source: &str, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap()
            .into_std()
            .unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// The HTTP status of the answer to an upgrade of `/ws` with `device`'s token over `stream`.
fn upgrade_status<S: Read + Write>(stream: &mut S, device: &str) -> u16 {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        token(device)
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "no answer ({other:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    parse_status(&head).0
}

/// An HAProxy process in TCP mode: one frontend per `(name, backend port, server option)`.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    ports: Vec<(String, u16)>,
}

impl Haproxy {
    fn start(routes: &[(&str, u16, &str)]) -> Haproxy {
        let dir = std::env::temp_dir().join(format!("tether-haproxy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = String::from(
            "global\n    maxconn 100\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 60s\n    timeout server 60s\n",
        );
        let mut ports = Vec::new();
        for (name, backend, option) in routes {
            let port = free_port();
            cfg.push_str(&format!(
                "frontend fe_{name}\n    bind 127.0.0.1:{port}\n    default_backend be_{name}\n\
                 backend be_{name}\n    server tether 127.0.0.1:{backend} {option}\n"
            ));
            ports.push((name.to_string(), port));
        }
        std::fs::write(dir.join("haproxy.cfg"), &cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        let h = Haproxy { child, dir, ports };
        // Listening once our own bind of its ports fails (a test connection would be passed
        // on to tether and counted there).
        for (_, port) in &h.ports {
            assert!(
                eventually(Duration::from_secs(10), || std::net::TcpListener::bind((
                    "127.0.0.1",
                    *port
                ))
                .is_err()),
                "haproxy does not listen on {port}:\n{cfg}"
            );
        }
        h
    }

    fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| n == name).unwrap().1
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Answers `subject` on NATS with `{"allow":true}` and keeps each request's `client_addr` by
/// device, on a thread of its own.
struct AuthBackend {
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl AuthBackend {
    fn start(url: String, subject: &'static str) -> AuthBackend {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen2 = seen.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let nc = async_nats::connect(url).await.unwrap();
                let mut sub = nc.subscribe(subject).await.unwrap();
                nc.flush().await.unwrap();
                ready_tx.send(()).unwrap();
                while let Some(msg) = sub.next().await {
                    let req: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                    seen2.lock().unwrap().push((
                        req["device"].as_str().unwrap_or_default().to_string(),
                        req["client_addr"].as_str().unwrap_or_default().to_string(),
                    ));
                    if let Some(reply) = msg.reply {
                        nc.publish(reply, r#"{"allow":true}"#.into()).await.unwrap();
                    }
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("auth backend connected");
        AuthBackend { seen }
    }

    fn client_addr(&self, device: &str) -> Option<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|(d, _)| d == device)
            .map(|(_, a)| a.clone())
    }
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario read top to bottom")]
fn haproxy_in_front_passes_the_client_address() {
    if !haproxy_installed() {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy; scripts/setup.sh installs it)");
        return;
    }
    let nats = NatsServer::start();
    let backend = AuthBackend::start(nats.url(), "tether.auth");
    let pki = Pki::new("proxy");
    pki.issue("");
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let env = [("TETHER_JWT_SECRET", SECRET)];
    let proxied = Server::start_with_env(
        &[
            "--shards",
            "1",
            "--proxy-protocol",
            "all",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--nats",
            &nats.url(),
            "--auth-subject",
            "tether.auth",
        ],
        &env,
    );
    let plain = Server::start_with_env(
        &[
            "--shards",
            "1",
            "--insecure-no-auth",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[],
    );
    let haproxy = Haproxy::start(&[
        ("v1", proxied.port, "send-proxy"),
        ("v2", proxied.port, "send-proxy-v2"),
        ("v2tls", tls_port(&proxied), "send-proxy-v2"),
        ("plain", plain.port, "send-proxy"),
        ("plaintls", tls_port(&plain), "send-proxy-v2"),
    ]);

    // ws:// through send-proxy (v1) and send-proxy-v2: the auth backend gets the client's
    // own address and port.
    for (route, source, device) in [("v1", "127.0.0.7", "dev-v1"), ("v2", "127.0.0.8", "dev-v2")] {
        let mut s = connect_from(source, haproxy.port(route));
        let client = s.local_addr().unwrap().to_string();
        assert_eq!(upgrade_status(&mut s, device), 101, "{route}");
        assert_eq!(
            backend.client_addr(device).as_deref(),
            Some(&*client),
            "{route}"
        );
    }

    // wss://: HAProxy's v2 header, then the ClientHello.
    let tcp = connect_from("127.0.0.9", haproxy.port("v2tls"));
    let client = tcp.local_addr().unwrap().to_string();
    let mut tls = tls_client(&[pki.der("ca.pem")], tcp);
    assert_eq!(upgrade_status(&mut tls, "dev-tls"), 101);
    assert_eq!(backend.client_addr("dev-tls").as_deref(), Some(&*client));

    // The device endpoint's refusal log line names the client, not HAProxy.
    let mut s = connect_from("127.0.0.10", haproxy.port("v1"));
    let client = s.local_addr().unwrap().to_string();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Authorization: Bearer not-a-token\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(parse_status(&answer).0, 401);
    assert!(
        eventually(Duration::from_secs(5), || proxied.log().lines().any(|l| l
            .contains("device refused")
            && l.contains(&format!("peer={client}")))),
        "no refusal naming {client}:\n{}",
        proxied.log()
    );
    assert_eq!(
        proxied.metric("tether_proxy_headers_total{result=\"ok\"}"),
        4
    );
    assert_eq!(proxied.metric("tether_handshakes_total{result=\"ok\"}"), 3);

    // A header on a listener that does not expect one: 400 through HAProxy, counted.
    let mut s = connect_from("127.0.0.11", haproxy.port("plain"));
    s.write_all(&upgrade_request("/echo")).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(
        parse_status(&answer).0,
        400,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The v2 signature likewise (sent directly).
    let mut v2_local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2_local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    v2_local.extend_from_slice(&upgrade_request("/echo"));
    assert_eq!(raw_request(plain.port, &v2_local).0, 400);
    assert_eq!(
        plain.metric("tether_proxy_headers_total{result=\"unexpected\"}"),
        2
    );
    assert_eq!(
        plain.metric("tether_handshakes_total{result=\"bad_request\"}"),
        2
    );
    // On a wss:// listener that does not expect one, the header is not a TLS record: the TLS
    // handshake fails.
    let mut tls = tls_client(
        &[pki.der("ca.pem")],
        connect_from("127.0.0.12", haproxy.port("plaintls")),
    );
    assert!(tls.write_all(&upgrade_request("/echo")).is_err());
    assert!(eventually(Duration::from_secs(5), || plain
        .metric("tether_tls_handshakes_total{result=\"failed\"}")
        == 1));

    // A wss:// listener that expects a header and gets a ClientHello: closed without a byte.
    let mut s = TcpStream::connect(("127.0.0.1", tls_port(&proxied))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        proxied.metric("tether_proxy_headers_total{result=\"missing\"}"),
        1
    );
}

/// Reads a response head; its status.
fn read_head_status(s: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    parse_status(&head).0
}

/// Reads until EOF; true when the server closed without sending a byte.
fn closed_silently(s: &mut TcpStream) -> bool {
    let mut out = Vec::new();
    s.read_to_end(&mut out).is_ok() && out.is_empty()
}

#[test]
fn headers_split_local_and_refusals() {
    let srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--proxy-protocol",
        "ws",
        "--handshake-timeout",
        "1s",
    ]);
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n";
    let mut frame = Vec::new();
    tether::ws::encode_frame(
        &mut frame,
        tether::ws::Role::Client,
        tether::ws::OpCode::Text,
        true,
        b"through",
    );
    // Header, request and a first frame in one write, then in pieces of 1, 5 and 9 bytes: the
    // 101 and the echo come back each time.
    for piece in [usize::MAX, 1, 5, 9] {
        let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut bytes = v1.to_vec();
        bytes.extend_from_slice(&upgrade_request("/echo"));
        bytes.extend_from_slice(&frame);
        for chunk in bytes.chunks(piece.min(bytes.len())) {
            s.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(read_head_status(&mut s), 101, "pieces of {piece}");
        let mut echo = [0u8; 9];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"\x81\x07through", "pieces of {piece}");
    }
    // v2 LOCAL (a balancer's own health check): served, with the socket's address.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.write_all(&local).unwrap();
    Client::upgrade(s, "/echo").unwrap();
    assert_eq!(srv.metric("tether_proxy_headers_total{result=\"ok\"}"), 5);

    // No header, a malformed one, and none in time: closed without a response.
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&upgrade_request("/echo")).unwrap();
    assert!(closed_silently(&mut s));
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 040000 80\r\n")
        .unwrap();
    assert!(closed_silently(&mut s));
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(b"PROXY TCP4 203.0.113.7").unwrap();
    assert!(closed_silently(&mut s));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let m = srv.metrics();
    for (result, n) in [("missing", 1), ("malformed", 1), ("timeout", 1)] {
        assert_eq!(
            metric_value(
                &m,
                &format!("tether_proxy_headers_total{{result=\"{result}\"}}")
            ),
            n,
            "{result}"
        );
    }
    assert_eq!(
        metric_value(&m, "tether_handshakes_total{result=\"proxy_header\"}"),
        3
    );
    assert!(srv.log().contains("bad PROXY header: closing"));
}

#[test]
fn config_check_refuses_wss_without_a_wss_listener_and_unknown_values() {
    let dir = std::env::temp_dir().join(format!("tether-proxy-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, ok) in [
        ("proxy_protocol = \"all\"\n", true),
        ("proxy_protocol = \"ws\"\n", true),
        ("proxy_protocol = \"wss\"\n", false),
        ("proxy_protocol = \"yes\"\n", false),
    ] {
        let file = dir.join("c.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(tether_bin())
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if ok {
            assert_eq!(out.status.code(), Some(0), "{text}: {stderr}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
            assert!(stderr.contains("proxy_protocol"), "{text}: {stderr}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
