//! `wss://`: the TLS listener beside the `ws://` one, certificate reload on SIGHUP (new clients
//! get the new certificate, connected clients stay), a malformed certificate on reload keeps the
//! old one, several certificates chosen by SNI (Python's `ssl` as the client), the record layer
//! across read boundaries. Certificates are made by `openssl` in a temporary directory, never
//! committed.

mod server_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use server_support::tls::{tls_client, tls_port, Pki, Tls};
use server_support::*;

/// Connects over TLS trusting the CAs given, upgrades to `/echo`.
fn connect(port: u16, cas: &[CertificateDer<'static>]) -> Result<Tls, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut s = tls_client(cas, tcp);
    s.write_all(&upgrade_request("/echo"))
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).map_err(|e| e.to_string())?;
        head.push(byte[0]);
    }
    let (status, _) = parse_status(&head);
    assert_eq!(status, 101, "{}", String::from_utf8_lossy(&head));
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    Ok(s)
}

/// Sends a short text message and returns the echo.
fn echo(s: &mut Tls, text: &str) -> String {
    assert!(text.len() < 126);
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 0x81);
    let mut body = vec![0u8; head[1] as usize];
    s.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

fn leaf(s: &Tls) -> CertificateDer<'static> {
    s.conn.peer_certificates().unwrap()[0].clone().into_owned()
}

fn start(pki: &Pki) -> (Server, u16) {
    let (cert, key) = (pki.path("cert.pem"), pki.path("key.pem"));
    let srv = Server::start(&[
        "--shards",
        "2",
        "--echo",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let port = tls_port(&srv);
    (srv, port)
}

#[test]
fn ws_and_wss_side_by_side() {
    let pki = Pki::new("side");
    pki.issue("A");
    std::fs::copy(pki.dir.join("certA.pem"), pki.dir.join("cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("keyA.pem"), pki.dir.join("key.pem")).unwrap();
    let (srv, port) = start(&pki);
    let mut tls = connect(port, &[pki.der("caA.pem")]).unwrap();
    assert_eq!(echo(&mut tls, "over tls"), "over tls");
    let mut plain = Client::connect(srv.port, "/echo");
    plain.send_text("plain");
    assert_eq!(
        plain.recv(Duration::from_secs(5)),
        Got::Text("plain".into())
    );
    // A client that does not trust the CA fails its handshake, counted.
    let other = Pki::new("side-other");
    other.issue("X");
    assert!(connect(port, &[other.der("caX.pem")]).is_err());
    assert!(eventually(Duration::from_secs(5), || srv
        .metric("tether_tls_handshakes_total{result=\"failed\"}")
        == 1));
    assert!(srv.metric("tether_tls_handshakes_total{result=\"full\"}") >= 1);
}

#[test]
fn sighup_serves_the_new_certificate_to_new_clients_and_keeps_connected_ones() {
    let pki = Pki::new("reload");
    pki.issue("A");
    pki.issue("B");
    std::fs::copy(pki.dir.join("certA.pem"), pki.dir.join("cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("keyA.pem"), pki.dir.join("key.pem")).unwrap();
    let (srv, port) = start(&pki);
    let both = [pki.der("caA.pem"), pki.der("caB.pem")];
    let mut old = connect(port, &both).unwrap();
    assert_eq!(leaf(&old), pki.der("certA.pem"));
    assert_eq!(echo(&mut old, "before"), "before");

    std::fs::copy(pki.dir.join("certB.pem"), pki.dir.join("cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("keyB.pem"), pki.dir.join("key.pem")).unwrap();
    srv.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || srv
        .metric("tether_tls_reloads_total{result=\"ok\"}")
        == 1));
    let mut new = connect(port, &both).unwrap();
    assert_eq!(leaf(&new), pki.der("certB.pem"));
    assert_eq!(echo(&mut new, "new"), "new");
    // The client connected before the reload is still served, on its old session.
    assert_eq!(echo(&mut old, "after"), "after");
    assert!(
        connect(port, &[pki.der("caA.pem")]).is_err(),
        "CA A no longer verifies"
    );
}

#[test]
fn malformed_certificate_on_sighup_keeps_the_old_one() {
    let pki = Pki::new("bad");
    pki.issue("A");
    std::fs::copy(pki.dir.join("certA.pem"), pki.dir.join("cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("keyA.pem"), pki.dir.join("key.pem")).unwrap();
    let (srv, port) = start(&pki);
    let mut old = connect(port, &[pki.der("caA.pem")]).unwrap();

    std::fs::write(
        pki.dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    srv.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || srv
        .metric("tether_tls_reloads_total{result=\"failed\"}")
        == 1));
    assert!(
        eventually(Duration::from_secs(5), || srv
            .log()
            .contains("TLS reload failed")),
        "{}",
        srv.log()
    );
    let mut new = connect(port, &[pki.der("caA.pem")]).unwrap();
    assert_eq!(leaf(&new), pki.der("certA.pem"));
    assert_eq!(echo(&mut new, "still A"), "still A");
    assert_eq!(echo(&mut old, "old"), "old");

    // An unreadable key on reload is refused the same way.
    std::fs::copy(pki.dir.join("certA.pem"), pki.dir.join("cert.pem")).unwrap();
    std::fs::write(pki.dir.join("key.pem"), "garbage").unwrap();
    srv.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || srv
        .metric("tether_tls_reloads_total{result=\"failed\"}")
        == 2));
    let mut again = connect(port, &[pki.der("caA.pem")]).unwrap();
    assert_eq!(echo(&mut again, "A"), "A");
}

/// A masked client frame (FIN set) with any payload length.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5au8, 0xa5, 0x3c, 0xc3];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked server frame: (first byte, payload).
fn server_frame(s: &mut Tls) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head[0], body)
}

/// The record layer across read boundaries: a message whose TLS records reach the server a
/// few bytes per TCP segment (every read ends inside a record), a 900 KiB message both ways
/// (many 16 KiB records; the echo is written while the client is still sending, so the
/// server's writes outrun what the socket takes), and a close handshake that ends with the
/// server's close_notify (a clean TLS end of stream, not a truncation).
#[test]
fn records_across_reads_large_messages_and_close_notify() {
    let pki = Pki::new("records");
    pki.issue("A");
    std::fs::copy(pki.dir.join("certA.pem"), pki.dir.join("cert.pem")).unwrap();
    std::fs::copy(pki.dir.join("keyA.pem"), pki.dir.join("key.pem")).unwrap();
    let (srv, port) = start(&pki);
    let mut s = connect(port, &[pki.der("caA.pem")]).unwrap();

    s.sock.set_nodelay(true).unwrap();
    s.conn
        .writer()
        .write_all(&client_frame(0x1, b"dribbled in pieces"))
        .unwrap();
    let mut wire = Vec::new();
    while s.conn.wants_write() {
        s.conn.write_tls(&mut wire).unwrap();
    }
    for piece in wire.chunks(3) {
        s.sock.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(server_frame(&mut s), (0x81, b"dribbled in pieces".to_vec()));

    let big: Vec<u8> = (0..900 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    s.write_all(&client_frame(0x2, &big)).unwrap();
    let (first, echoed) = server_frame(&mut s);
    assert_eq!(first, 0x82);
    assert!(echoed == big, "the 900 KiB echo differs");
    assert_eq!(echo(&mut s, "after the big one"), "after the big one");

    s.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
        .unwrap();
    let (first, body) = server_frame(&mut s);
    assert_eq!((first, &body[..2]), (0x88, &1000u16.to_be_bytes()[..]));
    let mut rest = Vec::new();
    let r = s.read_to_end(&mut rest);
    assert!(
        matches!(r, Ok(0)),
        "expected a close_notify before EOF: {r:?}"
    );
    assert!(srv.metric("tether_tls_handshakes_total{result=\"full\"}") >= 1);
}

/// The certificate (DER, hex) Python's `ssl` gets for each SNI name ("-": no SNI), one
/// connection per name, without verifying (the test compares the certificate itself).
fn certs_by_sni(port: u16, names: &[&str]) -> Vec<String> {
    let script = r#"
import socket, ssl, sys
port = int(sys.argv[1])
for name in sys.argv[2:]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=None if name == "-" else name) as t:
            print(t.getpeercert(binary_form=True).hex())
"#;
    let mut args = vec!["-c".to_string(), script.to_string(), port.to_string()];
    args.extend(names.iter().map(|n| n.to_string()));
    let out = std::process::Command::new("python3")
        .args(&args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn hex(der: &CertificateDer<'_>) -> String {
    der.iter().map(|b| format!("{b:02x}")).collect()
}

/// Three certificates on one listener: exact names, a wildcard (one label deep), the first
/// pair for no SNI and unknown names; SIGHUP reloads all of them, and a bad file among them
/// keeps the whole set in use.
#[test]
fn certificates_chosen_by_sni_and_reloaded_together() {
    let pki = Pki::new("sni");
    pki.issue("A");
    pki.issue_for("B", "DNS:b.test,DNS:b2.test");
    pki.issue_for("C", "DNS:*.wild.test");
    pki.issue_for("B2", "DNS:b.test");
    for (tag, name) in [("A", "a"), ("B", "b"), ("C", "c")] {
        std::fs::copy(
            pki.dir.join(format!("cert{tag}.pem")),
            pki.dir.join(format!("{name}.pem")),
        )
        .unwrap();
        std::fs::copy(
            pki.dir.join(format!("key{tag}.pem")),
            pki.dir.join(format!("{name}.key")),
        )
        .unwrap();
    }
    let srv = Server::start(&[
        "--shards",
        "2",
        "--echo",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &pki.path("a.pem"),
        "--tls-key",
        &pki.path("a.key"),
        "--tls-cert",
        &pki.path("b.pem"),
        "--tls-key",
        &pki.path("b.key"),
        "--tls-cert",
        &pki.path("c.pem"),
        "--tls-key",
        &pki.path("c.key"),
    ]);
    let port = tls_port(&srv);
    let (a, b, c, b2) = (
        hex(&pki.der("certA.pem")),
        hex(&pki.der("certB.pem")),
        hex(&pki.der("certC.pem")),
        hex(&pki.der("certB2.pem")),
    );
    let names = [
        "-",
        "localhost",
        "b.test",
        "B2.Test",
        "x.wild.test",
        "y.x.wild.test",
        "wild.test",
        "other.test",
    ];
    assert_eq!(
        certs_by_sni(port, &names),
        [&a, &a, &b, &b, &c, &a, &a, &a].map(String::clone)
    );
    // A verified upgrade (rustls, name localhost: the first certificate) that stays connected
    // across both reloads.
    let mut tls = connect(port, &[pki.der("caA.pem")]).unwrap();
    assert_eq!(echo(&mut tls, "default"), "default");

    std::fs::copy(pki.dir.join("certB2.pem"), pki.dir.join("b.pem")).unwrap();
    std::fs::copy(pki.dir.join("keyB2.pem"), pki.dir.join("b.key")).unwrap();
    srv.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || srv
        .metric("tether_tls_reloads_total{result=\"ok\"}")
        == 1));
    assert_eq!(
        certs_by_sni(port, &["b.test", "b2.test", "x.wild.test", "-"]),
        [&b2, &a, &c, &a].map(String::clone)
    );

    std::fs::write(pki.dir.join("c.key"), "garbage").unwrap();
    srv.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || srv
        .metric("tether_tls_reloads_total{result=\"failed\"}")
        == 1));
    assert_eq!(
        certs_by_sni(port, &["b.test", "x.wild.test", "-"]),
        [&b2, &c, &a].map(String::clone)
    );
    assert_eq!(echo(&mut tls, "still here"), "still here");
}
