//! The service manager's readiness protocol (systemd `sd_notify(3)`), written by hand: one
//! datagram with `READY=1` once the listeners and the admin endpoint are up, `STOPPING=1` when
//! the first SIGTERM/SIGINT arrives, sent to the unix socket named by `$NOTIFY_SOCKET` (a path,
//! or `@name` in the abstract namespace). Without the variable (not started by a service
//! manager with `Type=notify`) nothing is sent.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to the service manager. `Ok(false)`: no `$NOTIFY_SOCKET`.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// [`notify`], logging a failure (a service manager that cannot be told is not fatal: with
/// `Type=notify` it will time the start out and say so).
pub fn notify_or_log(state: &str) {
    if let Err(err) = notify(state) {
        tracing::warn!(%err, state, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}
