//! The peer servers against an independent client (tungstenite's client, and for the raw
//! ceiling a plain socket): each echoes text and binary messages (the raw 101 server completes
//! a handshake a real client accepts and then holds the connection open), and each refuses a
//! bad command line. Node `ws` is tested when the module is installed.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::Message;

struct Peer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(mut cmd: Command) -> Peer {
    let addr = free_addr();
    cmd.arg("--listen").arg(addr.to_string());
    let child = cmd.stdin(Stdio::null()).spawn().unwrap();
    let mut peer = Peer { child, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            peer.child.try_wait().unwrap().is_none(),
            "peer exited at start"
        );
        assert!(Instant::now() < deadline, "peer did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    peer
}

fn check_echo(peer: &Peer) {
    let url = format!("ws://{}/echo", peer.addr);
    let tcp = TcpStream::connect(peer.addr).unwrap();
    let (mut ws, resp) = tungstenite::client(url, tcp).unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("héllo")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("héllo"));
    let big = vec![7u8; 70_000];
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
    ws.close(None).unwrap();
}

#[test]
fn tungstenite_peer_echoes() {
    check_echo(&start(Command::new(env!("CARGO_BIN_EXE_peer-tungstenite"))));
}

#[test]
fn fastwebsockets_peer_echoes() {
    check_echo(&start(Command::new(env!(
        "CARGO_BIN_EXE_peer-fastwebsockets"
    ))));
}

#[test]
fn raw101_peer_upgrades_and_holds() {
    let peer = start(Command::new(env!("CARGO_BIN_EXE_peer-raw101")));
    // A real client accepts its 101 (tungstenite checks Sec-WebSocket-Accept).
    let url = format!("ws://{}/echo", peer.addr);
    let tcp = TcpStream::connect(peer.addr).unwrap();
    let (mut ws, resp) = tungstenite::client(url, tcp).unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("discarded")).unwrap();
    // Nothing comes back and the connection stays open.
    let tcp = ws.get_mut();
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    let err = tcp.read(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    // A request without a key gets a 400 and a close.
    let mut raw = TcpStream::connect(peer.addr).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
}

#[test]
fn node_ws_peer_echoes_when_installed() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let Some(ws_module) = tether_bench::runner::find_ws_module(&repo) else {
        eprintln!("skipped: Node `ws` not installed (tests/node/node_modules/ws or global)");
        return;
    };
    let mut cmd = Command::new("node");
    cmd.arg(repo.join("bench-harness/peers/ws-echo.mjs"))
        .arg("--ws-module")
        .arg(ws_module);
    check_echo(&start(cmd));
}

#[test]
fn peers_refuse_a_bad_command_line() {
    for bin in [
        env!("CARGO_BIN_EXE_peer-tungstenite"),
        env!("CARGO_BIN_EXE_peer-fastwebsockets"),
        env!("CARGO_BIN_EXE_peer-raw101"),
    ] {
        let out = Command::new(bin)
            .args(["--listen", "nowhere"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bin}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bad --listen address"), "{bin}: {stderr}");
        assert!(out.stdout.is_empty(), "{bin} printed to stdout");
    }
}
