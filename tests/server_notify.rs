//! systemd readiness (`Type=notify`): with `$NOTIFY_SOCKET` set, the node sends `READY=1` once
//! its listeners and admin endpoint answer, and `STOPPING=1` at SIGTERM, before it drains.

mod server_support;

use std::{os::unix::net::UnixDatagram, time::Duration};

use server_support::{http_get, Server};

fn recv(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_once_listening_and_stopping_at_sigterm() {
    let dir = std::env::temp_dir().join(format!("tether-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut srv = Server::start_with_env(
        &["--shards", "1", "--echo", "--drain-time", "1s"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    assert_eq!(recv(&socket), "READY=1");
    // Ready means serving: the admin endpoint and the listener answer now.
    assert_eq!(http_get(srv.admin, "/readyz").0, 200);
    assert!(server_support::Client::try_connect(srv.port, "/echo").is_ok());
    srv.signal(libc::SIGTERM);
    assert_eq!(recv(&socket), "STOPPING=1");
    assert_eq!(srv.wait_exit(Duration::from_secs(20)), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn abstract_socket_names_work_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("tether-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut srv = Server::start_with_env(
        &["--shards", "1"],
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    );
    assert_eq!(recv(&socket), "READY=1");
    srv.signal(libc::SIGKILL);
    let _ = srv.wait_exit(Duration::from_secs(10));
}
