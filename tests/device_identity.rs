//! Device identity on `/ws` against the real `tether` binary over real sockets: ambiguous
//! credentials, wrong-typed protocol fields, tokens from identity providers (audience, issuer,
//! `kid`, JWKS from a file and a URL, leeway) and token lifetime (close at expiry, `refresh`).

mod server_support;

use std::time::Duration;

use server_support::*;
use tether::auth::{mint_hs256, Claims};

const SECRET: &str = "device-identity-test-secret-0123456789";

fn token(sub: &str, ttl_secs: u64) -> String {
    mint_hs256(SECRET.as_bytes(), &Claims::device(sub, ttl_secs)).unwrap()
}

fn hello(client: &mut Client) -> serde_json::Value {
    match client.recv(Duration::from_secs(10)) {
        Got::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["op"], "hello", "{t}");
            v
        }
        other => panic!("expected hello, got {other:?}"),
    }
}

fn next_json(client: &mut Client) -> serde_json::Value {
    match client.recv(Duration::from_secs(10)) {
        Got::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[test]
fn ambiguous_credentials_are_refused_with_400() {
    let server = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let good = token("tv-1", 60);
    let bearer = format!("Bearer {good}");
    let bad = "Bearer not-a-token".to_string();
    let sample = r#"tether_device_auth_failures_total{reason="ambiguous_credentials"}"#;
    assert_eq!(server.metric(sample), 0);
    // Two Authorization headers, the first bad and the second good: once accepted with 101.
    let r = Client::try_connect_with(
        server.port,
        "/ws",
        &[],
        &[("Authorization", &bad), ("Authorization", &bearer)],
    );
    assert_eq!(r.err(), Some(400));
    // A header and a query token (even the same token), a header and a subprotocol token.
    let path = format!("/ws?token={good}");
    let r = Client::try_connect_with(server.port, &path, &[], &[("Authorization", &bearer)]);
    assert_eq!(r.err(), Some(400));
    let entry = format!("tether.token.{good}");
    let r = Client::try_connect_with(
        server.port,
        "/ws",
        &["tether.v1", &entry],
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.err(), Some(400));
    let path = format!("/ws?token={good}&token={good}");
    assert_eq!(
        Client::try_connect_with(server.port, &path, &[], &[]).err(),
        Some(400)
    );
    assert_eq!(server.metric(sample), 4);
    assert!(
        eventually(Duration::from_secs(5), || server
            .log()
            .contains("device refused: ambiguous credentials")),
        "no log line: {}",
        server.log()
    );
    // One token in one place is still fine.
    let mut c = Client::try_connect_with(server.port, "/ws", &[], &[("Authorization", &bearer)])
        .expect("one Authorization header");
    assert_eq!(hello(&mut c)["device"], "tv-1");
}

#[test]
fn wrong_typed_fields_get_bad_field_with_the_id() {
    let server = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let path = format!("/ws?token={}", token("tv-2", 60));
    let mut c = Client::try_connect_with(server.port, &path, &[], &[]).unwrap();
    hello(&mut c);
    for (field, frame) in [
        ("to", r#"{"op":"send","to":5,"data":1,"id":"w1"}"#),
        (
            "ack",
            r#"{"op":"send","to":"a","ack":"yes","data":1,"id":"w1"}"#,
        ),
        ("topic", r#"{"op":"sub","topic":7,"id":"w1"}"#),
        ("service", r#"{"op":"up","service":[],"data":1,"id":"w1"}"#),
        ("rid", r#"{"op":"reply","rid":3,"data":1,"id":"w1"}"#),
        ("op", r#"{"op":2,"id":"w1"}"#),
    ] {
        c.send_text(frame);
        let e = next_json(&mut c);
        assert_eq!(e["op"], "error", "{frame}: {e}");
        assert_eq!(e["code"], "bad_field", "{frame}: {e}");
        assert_eq!(e["id"], "w1", "{frame}: {e}");
        assert!(
            e["message"].as_str().unwrap().starts_with(field),
            "{frame}: {e}"
        );
    }
    c.send_text(r#"{"op":"ping","id":9}"#);
    let e = next_json(&mut c);
    assert_eq!(e["code"], "bad_field");
    assert!(e.get("id").is_none(), "{e}");
    // The session is still usable.
    c.send_text(r#"{"op":"ping","id":"p"}"#);
    assert_eq!(next_json(&mut c)["op"], "pong");
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A token from the test "identity provider": RS256 with fixture key `a` or `b`, with `kid`.
fn idp_token(key: &str, kid: &str, claims: &serde_json::Value) -> String {
    let pem = fixture(match key {
        "a" => "rs256-private.pem",
        _ => "rs256-b-private.pem",
    });
    tether::auth::mint_pem_kid(jsonwebtoken::Algorithm::RS256, Some(kid), &pem, claims).unwrap()
}

fn idp_claims(sub: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "exp": tether::auth::now_secs() + 300,
        "aud": ["tether", "account"],
        "iss": "https://id.example/realms/fleet",
    })
}

fn status_with(port: u16, token: &str) -> Result<(), u16> {
    let bearer = format!("Bearer {token}");
    Client::try_connect_with(port, "/ws", &[], &[("Authorization", &bearer)]).map(|_| ())
}

/// A scratch directory for one test (removed at the end).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tether-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.0.join(name);
        let tmp = self.0.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn audience_and_issuer_of_an_identity_provider() {
    let secret_claims = |aud: Option<&str>| {
        let mut c = serde_json::json!({"sub": "tv-5", "exp": tether::auth::now_secs() + 60,
            "iss": "https://id.example/"});
        if let Some(aud) = aud {
            c["aud"] = aud.into();
        }
        mint_hs256(SECRET.as_bytes(), &c).unwrap()
    };
    // Without jwt_audience a token with aud is refused (documented), one without is fine.
    let plain = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    assert_eq!(
        status_with(plain.port, &secret_claims(Some("tether"))),
        Err(401)
    );
    assert_eq!(status_with(plain.port, &secret_claims(None)), Ok(()));
    drop(plain);
    let node = Server::start(&[
        "--shards",
        "1",
        "--jwt-secret",
        SECRET,
        "--jwt-audience",
        "tether",
        "--jwt-issuer",
        "https://id.example/",
    ]);
    assert_eq!(
        status_with(node.port, &secret_claims(Some("tether"))),
        Ok(())
    );
    assert_eq!(
        status_with(node.port, &secret_claims(Some("other"))),
        Err(401)
    );
    assert_eq!(status_with(node.port, &secret_claims(None)), Err(401));
    let wrong_iss = mint_hs256(
        SECRET.as_bytes(),
        &serde_json::json!({"sub": "tv-5", "exp": tether::auth::now_secs() + 60,
            "aud": "tether", "iss": "https://evil.example/"}),
    )
    .unwrap();
    assert_eq!(status_with(node.port, &wrong_iss), Err(401));
    // Leeway: a token expired 3 s ago passes with --jwt-leeway 30s.
    let late = mint_hs256(
        SECRET.as_bytes(),
        &Claims {
            exp: tether::auth::now_secs() - 3,
            ..Claims::device("tv-6", 0)
        },
    )
    .unwrap();
    assert_eq!(status_with(node.port, &late), Err(401));
    let lenient = Server::start(&[
        "--shards",
        "1",
        "--jwt-secret",
        SECRET,
        "--jwt-leeway",
        "30s",
    ]);
    assert_eq!(status_with(lenient.port, &late), Ok(()));
}

#[test]
fn jwks_file_keys_by_kid_reloaded_on_sighup() {
    let dir = Scratch::new("jwks-file");
    let path = dir.write("jwks.json", &fixture("jwks-a.json"));
    let node = Server::start(&[
        "--shards",
        "1",
        "--jwt-jwks-file",
        &path,
        "--jwt-audience",
        "tether",
    ]);
    let claims = idp_claims("stb-7");
    let a = idp_token("a", "rsa-a", &claims);
    let b = idp_token("b", "rsa-b", &claims);
    assert_eq!(status_with(node.port, &a), Ok(()));
    assert_eq!(status_with(node.port, &b), Err(401));
    assert_eq!(node.metric("tether_jwks_keys"), 2);
    // Rotation: the provider publishes a and b, then only b.
    dir.write("jwks.json", &fixture("jwks-ab.json"));
    node.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || node
        .metric(r#"tether_jwks_reloads_total{result="ok"}"#)
        == 1));
    assert_eq!(status_with(node.port, &a), Ok(()));
    assert_eq!(status_with(node.port, &b), Ok(()));
    dir.write("jwks.json", &fixture("jwks-b.json"));
    node.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || node
        .metric(r#"tether_jwks_reloads_total{result="ok"}"#)
        == 2));
    assert_eq!(status_with(node.port, &a), Err(401));
    assert_eq!(status_with(node.port, &b), Ok(()));
    // A broken document keeps the keys in use; the node still runs.
    dir.write("jwks.json", b"{\"keys\": [");
    node.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || node
        .metric(r#"tether_jwks_reloads_total{result="failed"}"#)
        == 1));
    assert_eq!(status_with(node.port, &b), Ok(()));
    assert!(node.log().contains("JWKS reload failed"), "{}", node.log());
}

/// `python3 -m http.server` on a free port serving `dir`; killed on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &std::path::Path) -> HttpServer {
        HttpServer::start_with(
            dir,
            &["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
        )
    }

    /// `python3 ARGS` in `dir`, which prints "... port N ..." on its first line.
    fn start_with(dir: &std::path::Path, args: &[&str]) -> HttpServer {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split(" port ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("http.server said {line:?}"));
        std::thread::spawn(move || for _ in out.lines() {});
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn jwks_url_fetched_at_start_and_refreshed() {
    let dir = Scratch::new("jwks-url");
    dir.write("jwks.json", &fixture("jwks-a.json"));
    let http = HttpServer::start(&dir.0);
    let url = format!("http://127.0.0.1:{}/jwks.json", http.port);
    let node = Server::start(&[
        "--shards",
        "1",
        "--jwt-jwks-url",
        &url,
        "--jwt-jwks-refresh",
        "1s",
        "--jwt-audience",
        "tether",
        "--jwt-issuer",
        "https://id.example/realms/fleet",
    ]);
    let claims = idp_claims("phone-8");
    let a = idp_token("a", "rsa-a", &claims);
    let b = idp_token("b", "rsa-b", &claims);
    assert_eq!(status_with(node.port, &a), Ok(()));
    assert_eq!(status_with(node.port, &b), Err(401));
    dir.write("jwks.json", &fixture("jwks-b.json"));
    assert!(
        eventually(Duration::from_secs(15), || status_with(node.port, &b)
            .is_ok()),
        "key b never arrived: {}",
        node.log()
    );
    assert_eq!(status_with(node.port, &a), Err(401));
    assert!(node.metric(r#"tether_jwks_reloads_total{result="ok"}"#) >= 1);
    // The provider goes away: refreshes fail, the keys in use stay.
    drop(http);
    assert!(eventually(Duration::from_secs(15), || node
        .metric(r#"tether_jwks_reloads_total{result="failed"}"#)
        >= 1));
    assert_eq!(status_with(node.port, &b), Ok(()));
}

#[test]
fn jwks_url_that_does_not_answer_stops_the_start() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = std::process::Command::new(tether_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args([
            "--jwt-jwks-url",
            &format!("http://127.0.0.1:{port}/jwks.json"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jwks.json") && err.contains("connect"),
        "{err}"
    );
}

fn short_token(sub: &str, ttl_secs: u64) -> String {
    mint_hs256(SECRET.as_bytes(), &Claims::device(sub, ttl_secs)).unwrap()
}

#[test]
fn a_session_ends_with_4001_when_its_token_expires() {
    let server = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let path = format!("/ws?token={}", short_token("tv-exp", 2));
    let mut c = Client::try_connect_with(server.port, &path, &[], &[]).unwrap();
    hello(&mut c);
    // A token for another device and a broken token are refused, and change nothing.
    let other = short_token("tv-other", 60);
    c.send_text(&format!(
        r#"{{"op":"refresh","token":"{other}","id":"r1"}}"#
    ));
    let e = next_json(&mut c);
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("bad_token"), Some("r1")),
        "{e}"
    );
    c.send_text(r#"{"op":"refresh","token":"not.a.jwt","id":"r2"}"#);
    let e = next_json(&mut c);
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("bad_token"), Some("r2")),
        "{e}"
    );
    // The token (2 s) runs out: close 4001 (the tick looks every 100 ms).
    assert_eq!(c.recv_close(Duration::from_secs(8)), Got::Close(Some(4001)));
    assert!(eventually(Duration::from_secs(5), || server
        .metric("tether_device_sessions_expired_total")
        == 1));
    assert_eq!(
        server.metric("tether_device_token_refresh_failures_total"),
        2
    );
}

#[test]
fn a_refreshed_session_outlives_its_first_token() {
    let server = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let first = Claims::device("tv-ref", 2);
    let path = format!(
        "/ws?token={}",
        mint_hs256(SECRET.as_bytes(), &first).unwrap()
    );
    let mut c = Client::try_connect_with(server.port, &path, &[], &[]).unwrap();
    hello(&mut c);
    let fresh = Claims::device("tv-ref", 60);
    let token = mint_hs256(SECRET.as_bytes(), &fresh).unwrap();
    c.send_text(&format!(r#"{{"op":"refresh","token":"{token}","id":"r"}}"#));
    let r = next_json(&mut c);
    assert_eq!(
        (r["op"].as_str(), r["id"].as_str()),
        (Some("refreshed"), Some("r")),
        "{r}"
    );
    assert_eq!(r["exp"].as_u64(), Some(fresh.exp));
    // Watch past the first token's expiry (plus the 100 ms tick): no close arrives.
    let until_s = first.exp + 2 - tether::auth::now_secs();
    assert_eq!(c.recv(Duration::from_secs(until_s)), Got::Timeout);
    c.send_text(r#"{"op":"ping","id":"p"}"#);
    assert_eq!(next_json(&mut c)["op"], "pong");
    assert_eq!(server.metric("tether_device_sessions_expired_total"), 0);
    assert_eq!(server.metric("tether_device_token_refreshes_total"), 1);
}

#[test]
fn jwks_url_over_https_is_verified_against_the_trusted_cas() {
    let dir = Scratch::new("jwks-https");
    dir.write("jwks.json", &fixture("jwks-a.json"));
    let pki = server_support::tls::Pki::new("jwks-https");
    pki.issue_for("", "IP:127.0.0.1");
    let server_py = "import http.server, ssl, sys\n\
        s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
        c.load_cert_chain(sys.argv[1], sys.argv[2])\n\
        s.socket = c.wrap_socket(s.socket, server_side=True)\n\
        print('Serving HTTPS on 127.0.0.1 port', s.server_address[1], flush=True)\n\
        s.serve_forever()\n";
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let https = HttpServer::start_with(&dir.0, &["-u", "-c", server_py, &cert, &key]);
    let url = format!("https://127.0.0.1:{}/jwks.json", https.port);
    // The provider's CA is trusted (SSL_CERT_FILE is read like the system store): it starts.
    let ca_file = pki.path("ca.pem");
    let node = Server::start_with_env(
        &[
            "--shards",
            "1",
            "--jwt-jwks-url",
            &url,
            "--jwt-audience",
            "tether",
        ],
        &[("SSL_CERT_FILE", &ca_file)],
    );
    let a = idp_token("a", "rsa-a", &idp_claims("tv-tls"));
    assert_eq!(status_with(node.port, &a), Ok(()));
    drop(node);
    // An untrusted certificate stops the start, naming TLS.
    let empty = dir.write("empty.pem", b"");
    let out = std::process::Command::new(tether_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--jwt-jwks-url", &url])
        .env("SSL_CERT_FILE", &cert)
        .env("SSL_CERT_DIR", &empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS"), "{err}");
}
