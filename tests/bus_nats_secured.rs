//! A node logs in to a NATS server that requires it: user and password, token, NKey, `.creds`
//! file (operator mode), TLS with a client certificate, and TLS first. Each server here is a
//! real nats-server configured to require that one method; the node proves it is connected by
//! greeting a device with `hello`, which needs a probe round trip through NATS. Last, the
//! permission sets of `docs/operations.md` ("Security"): a node with them routes, and a backend
//! with them cannot publish upstream as a device.

mod messaging_support;
mod server_support;

use messaging_support::{Nats, Scratch};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use server_support::{openssl, Client, Got, Server};
use tether::auth::{mint_hs256, Claims};

const SECRET: &str = "secured-nats-test-secret-0123456789";

fn node(nats_url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "1", "--jwt-secret", SECRET, "--nats", nats_url];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn device(server: &Server, sub: &str) -> Client {
    let token = mint_hs256(SECRET.as_bytes(), &Claims::device(sub, 300)).unwrap();
    Client::try_connect_with(server.port, &format!("/ws?token={token}"), &[], &[]).expect("upgrade")
}

/// The device's `hello` arrives: the node's NATS connection works (login, SUB, PUB, probe).
fn assert_hello(server: &Server, sub: &str) -> Client {
    let mut c = device(server, sub);
    match c.recv(Duration::from_secs(15)) {
        Got::Text(t) if t.contains("\"hello\"") => c,
        other => panic!("no hello for {sub}: {other:?}\nnode log:\n{}", server.log()),
    }
}

#[test]
fn user_password_token_and_nkey() {
    let dir = Scratch::new("nats-login");
    // User and password.
    let nats = Nats::start(
        &dir.0,
        r#"authorization { users = [ { user: "node", password: "s3cret-pw" } ] }"#,
    );
    let url = nats.url("nats");
    // (nats_user without nats_password is refused at start, before any connect.)
    let out = Command::new(server_support::tether_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args([
            "--jwt-secret",
            SECRET,
            "--nats",
            &url,
            "--nats-user",
            "node",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nats_password"));
    let mut cmd_env = vec![("TETHER_NATS_PASSWORD", "s3cret-pw")];
    let n = start_with_env(&url, &["--nats-user", "node"], &cmd_env);
    assert_hello(&n, "tv-user");
    drop(n);
    // A wrong password: no hello, and the log says why.
    cmd_env[0].1 = "wrong";
    let n = start_with_env(&url, &["--nats-user", "node"], &cmd_env);
    let mut c = device(&n, "tv-user");
    assert_eq!(c.recv(Duration::from_secs(3)), Got::Timeout);
    assert!(
        server_support::eventually(Duration::from_secs(5), || n
            .log()
            .to_lowercase()
            .contains("authorization violation")),
        "{}",
        n.log()
    );
    drop((c, n, nats));

    // Token.
    let nats = Nats::start(&dir.0, r#"authorization { token: "t0ken-abc" }"#);
    let n = start_with_env(
        &nats.url("nats"),
        &[],
        &[("TETHER_NATS_TOKEN", "t0ken-abc")],
    );
    assert_hello(&n, "tv-token");
    drop((n, nats));

    // NKey.
    let user = nkeys::KeyPair::new_user();
    let seed = dir.file("node.nk", &format!("{}\n", user.seed().unwrap()));
    let nats = Nats::start(
        &dir.0,
        &format!(
            r#"authorization {{ users = [ {{ nkey: "{}" }} ] }}"#,
            user.public_key()
        ),
    );
    let n = node(&nats.url("nats"), &["--nats-nkey-seed-file", &seed]);
    assert_hello(&n, "tv-nkey");
}

fn start_with_env(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args = vec!["--shards", "1", "--jwt-secret", SECRET, "--nats", url];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, env)
}

#[test]
fn creds_file_in_operator_mode() {
    let dir = Scratch::new("nats-creds");
    let (conf, creds) = messaging_support::operator_mode();
    let creds = dir.file("node.creds", &creds);
    let nats = Nats::start(&dir.0, &conf);
    let n = node(&nats.url("nats"), &["--nats-creds-file", &creds]);
    assert_hello(&n, "tv-creds");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn certificates(dir: &Path) {
    let ext = dir.join("san.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
    );
    for name in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                "san.ext",
            ],
        );
    }
}

#[test]
fn tls_with_client_certificate_and_tls_first() {
    let dir = Scratch::new("nats-tls");
    certificates(&dir.0);
    let tls = |extra: &str| {
        format!(
            "tls {{ cert_file: \"{}\"\nkey_file: \"{}\"\nca_file: \"{}\"\nverify: true\n{extra} }}",
            dir.path("server.pem"),
            dir.path("server-key.pem"),
            dir.path("ca.pem")
        )
    };
    let (ca, cert, key) = (
        dir.path("ca.pem"),
        dir.path("client.pem"),
        dir.path("client-key.pem"),
    );
    let client_tls = [
        "--nats-tls-ca",
        ca.as_str(),
        "--nats-tls-cert",
        cert.as_str(),
        "--nats-tls-key",
        key.as_str(),
    ];
    let nats = Nats::start(&dir.0, &tls(""));
    let n = node(&nats.url("tls"), &client_tls);
    assert_hello(&n, "tv-tls");
    drop(n);
    // Without the client certificate the server refuses the node.
    let n = node(&nats.url("tls"), &["--nats-tls-ca", &ca]);
    let mut c = device(&n, "tv-tls");
    assert_eq!(c.recv(Duration::from_secs(3)), Got::Timeout);
    drop((c, n, nats));
    // TLS first (`handshake_first`): the node must not wait for a plain-text INFO.
    let nats = Nats::start(&dir.0, &tls("handshake_first: true"));
    let mut args = client_tls.to_vec();
    args.push("--nats-tls-first");
    let n = node(&nats.url("tls"), &args);
    assert_hello(&n, "tv-tls-first");
}

/// The permission sets documented in `docs/operations.md` ("Security"), as nats-server config.
const PERMISSIONS: &str = r#"authorization {
  users = [
    { user: "node", password: "node-pw", permissions: {
        publish: { allow: ["tether.>", "_INBOX.>"] },
        subscribe: { allow: ["tether.>", "_INBOX.>"] } } },
    { user: "backend", password: "backend-pw", permissions: {
        publish: { allow: ["tether.dev.>", "tether.req.>", "tether.presence.>", "tether.topic.>"] },
        subscribe: { allow: ["tether.up.>", "_INBOX.>"] },
        allow_responses: true } }
  ]
}"#;

#[test]
fn node_and_backend_permission_sets() {
    let dir = Scratch::new("nats-perms");
    let nats = Nats::start(&dir.0, PERMISSIONS);
    let n = start_with_env(
        &nats.url("nats"),
        &["--nats-user", "node"],
        &[("TETHER_NATS_PASSWORD", "node-pw")],
    );
    let mut dev = assert_hello(&n, "tv-perm");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures::StreamExt;
        let (err_tx, err_rx) = flume::unbounded();
        let backend = async_nats::ConnectOptions::with_user_and_password(
            "backend".into(),
            "backend-pw".into(),
        )
        .event_callback(move |event| {
            let err_tx = err_tx.clone();
            async move {
                let _ = err_tx.send(event.to_string());
            }
        })
        .connect(nats.url("nats"))
        .await
        .expect("backend connects");
        let mut up = backend.subscribe("tether.up.billing").await.unwrap();
        backend.flush().await.unwrap();
        // A device's upstream message reaches the backend, stamped by the node.
        dev.send_text(r#"{"op":"up","service":"billing","data":{"n":1}}"#);
        let msg = tokio::time::timeout(Duration::from_secs(10), up.next())
            .await
            .expect("upstream message")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(v["from"], "tv-perm");
        // The backend cannot publish as a device, upstream or device to device: the server
        // refuses and says so.
        for subject in ["tether.up.billing", "tether.peer.tv-perm"] {
            backend
                .publish(subject, r#"{"from":"phone-x","data":"forged"}"#.into())
                .await
                .unwrap();
            backend.flush().await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = tokio::time::timeout(left, err_rx.recv_async())
                    .await
                    .expect("a permissions violation reported within 10 s")
                    .expect("the backend's event channel is open");
                if event.contains(&format!(
                    "Permissions Violation for Publish to \"{subject}\""
                )) {
                    break;
                }
            }
        }
        // On the push subject it may publish, a device's `from` is dropped by the node; its own
        // `svc:` identity goes through.
        for payload in [
            r#"{"from":"phone-x","data":"forged"}"#,
            r#"{"from":"svc:billing","data":2}"#,
        ] {
            backend
                .publish("tether.dev.tv-perm", payload.into())
                .await
                .unwrap();
        }
        backend.flush().await.unwrap();
        // The forged upstream message never reached the subscriber.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), up.next())
                .await
                .is_err(),
            "the forged upstream message was delivered"
        );
    });
    // The first message the device gets is the backend's own (same publisher, same subject:
    // NATS keeps the order, so the forged one was dropped, not late).
    match dev.recv(Duration::from_secs(10)) {
        Got::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                (v["op"].as_str(), v["from"].as_str()),
                (Some("msg"), Some("svc:billing")),
                "{t}"
            );
        }
        other => panic!("no push: {other:?}"),
    }
    assert_eq!(n.metric("tether_device_forged_from_total"), 1);
    // Device to device through NATS with the node's permission set, stamped by the node.
    let mut phone = assert_hello(&n, "phone-q");
    phone.send_text(r#"{"op":"send","to":"tv-perm","data":3,"id":"s","ack":true}"#);
    match dev.recv(Duration::from_secs(10)) {
        Got::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                (v["op"].as_str(), v["from"].as_str()),
                (Some("msg"), Some("phone-q")),
                "{t}"
            );
        }
        other => panic!("no device-to-device message: {other:?}"),
    }
}
