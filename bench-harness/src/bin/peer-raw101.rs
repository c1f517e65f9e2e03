//! Peer server: the raw ceiling. A minimal epoll server (libc, non-blocking, edge-triggered
//! connections) with one thread per CPU, each with its own `SO_REUSEPORT` listener and epoll
//! instance. It reads the request head, answers a fixed but correct `101 Switching Protocols`
//! (with the `Sec-WebSocket-Accept` computed from the client's key, so a real client accepts it),
//! then keeps the socket open and discards whatever arrives. It does no WebSocket framing at all:
//! what it achieves is about what the kernel and the client allow, and every server's handshake
//! rate and idle memory can be read as a fraction of it.
//!
//! Usage: `peer-raw101 --listen ADDR`. Prints nothing but errors.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use base64::Engine;
use sha1::{Digest, Sha1};
use tether_bench::peer;

/// A request head longer than this without its terminating blank line is refused (400).
const HEAD_BYTES_MAX: usize = 8192;
/// Scratch buffer per thread for reads; connections keep only an unfinished head.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Events taken from epoll per wait.
const EVENTS_PER_WAIT: usize = 1024;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn main() {
    let addr = peer::listen_addr_from_args("peer-raw101").unwrap_or_else(|e| peer::die(e));
    peer::raise_nofile_limit().unwrap_or_else(|e| peer::die(format!("setrlimit: {e}")));
    let threads = peer::cpus_available();
    // Bind every listener before serving, so that a bad address fails the whole process and a
    // port-0 address resolves once for all threads.
    let first =
        peer::bind_listener(addr).unwrap_or_else(|e| peer::die(format!("bind {addr}: {e}")));
    let bound: SocketAddr = first.local_addr().unwrap_or_else(|e| peer::die(e));
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(
            peer::bind_listener(bound).unwrap_or_else(|e| peer::die(format!("bind {bound}: {e}"))),
        );
    }
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            std::thread::Builder::new()
                .name(format!("raw101-{i}"))
                .spawn(move || {
                    if let Err(e) = serve(listener) {
                        peer::die(format!("raw101 thread {i}: {e}"));
                    }
                })
                .unwrap_or_else(|e| peer::die(format!("spawn: {e}")))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

/// A connection's state: the head read so far, until the 101 is written.
enum Conn {
    Head(Vec<u8>),
    Upgraded,
}

fn serve(listener: TcpListener) -> std::io::Result<()> {
    let lfd = listener.as_raw_fd();
    // SAFETY: plain epoll_create1 call; checked below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error());
    }
    epoll_add(ep, lfd, libc::EPOLLIN as u32)?;
    // Per-thread table indexed by file descriptor (fds are small dense integers).
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut scratch = vec![0u8; READ_BUFFER_BYTES];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    loop {
        // SAFETY: `events` has room for EVENTS_PER_WAIT entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), EVENTS_PER_WAIT as i32, -1) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as i32;
            if fd == lfd {
                accept_all(ep, lfd, &mut conns);
            } else {
                on_readable(fd, &mut conns, &mut scratch);
            }
        }
    }
}

fn epoll_add(ep: i32, fd: i32, events: u32) -> std::io::Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn accept_all(ep: i32, lfd: i32, conns: &mut Vec<Option<Conn>>) {
    loop {
        // SAFETY: accept4 with null address pointers is allowed; the result is checked.
        let fd = unsafe {
            libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => {}
                _ => eprintln!("accept: {err}"),
            }
            return;
        }
        let _ = peer::set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        if let Err(e) = epoll_add(ep, fd, events) {
            eprintln!("epoll_ctl: {e}");
            close(fd);
            continue;
        }
        let idx = fd as usize;
        if conns.len() <= idx {
            conns.resize_with(idx + 1, || None);
        }
        conns[idx] = Some(Conn::Head(Vec::new()));
    }
}

fn close(fd: i32) {
    // SAFETY: `fd` is an open socket owned by this thread; closing removes it from epoll.
    unsafe { libc::close(fd) };
}

fn on_readable(fd: i32, conns: &mut [Option<Conn>], scratch: &mut [u8]) {
    let Some(slot) = conns.get_mut(fd as usize) else {
        return;
    };
    // Edge-triggered: drain until EAGAIN.
    loop {
        // SAFETY: `scratch` is a writable buffer of the given length.
        let n = unsafe { libc::read(fd, scratch.as_mut_ptr() as *mut libc::c_void, scratch.len()) };
        if n == 0 {
            *slot = None;
            close(fd);
            return;
        }
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => return,
                Some(libc::EINTR) => continue,
                _ => {
                    *slot = None;
                    close(fd);
                    return;
                }
            }
        }
        let data = &scratch[..n as usize];
        if let Some(Conn::Head(head)) = slot {
            head.extend_from_slice(data);
            match respond_to_head(head) {
                HeadOutcome::Incomplete => {}
                HeadOutcome::Response(bytes) => {
                    if write_all_now(fd, &bytes) {
                        *slot = Some(Conn::Upgraded);
                    } else {
                        *slot = None;
                        close(fd);
                        return;
                    }
                }
                HeadOutcome::Reject(bytes) => {
                    let _ = write_all_now(fd, &bytes);
                    *slot = None;
                    close(fd);
                    return;
                }
            }
        }
        // Upgraded: the input is discarded.
    }
}

/// Writes `bytes` in one call; a fresh socket's send buffer always holds a response this small,
/// so a short write means the peer is gone.
fn write_all_now(fd: i32, bytes: &[u8]) -> bool {
    // SAFETY: `bytes` is a readable buffer of the given length.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr() as *const libc::c_void,
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    n == bytes.len() as isize
}

enum HeadOutcome {
    Incomplete,
    Response(Vec<u8>),
    Reject(Vec<u8>),
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

fn respond_to_head(head: &[u8]) -> HeadOutcome {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Partial) if head.len() <= HEAD_BYTES_MAX => HeadOutcome::Incomplete,
        Ok(httparse::Status::Complete(_)) => {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|h| h.value.trim_ascii());
            match key {
                Some(key) if !key.is_empty() => HeadOutcome::Response(response_101(key)),
                _ => HeadOutcome::Reject(BAD_REQUEST.to_vec()),
            }
        }
        _ => HeadOutcome::Reject(BAD_REQUEST.to_vec()),
    }
}

fn response_101(key: &[u8]) -> Vec<u8> {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_accept_vector() {
        let head = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let HeadOutcome::Response(resp) = respond_to_head(head) else {
            panic!("expected a 101");
        };
        let text = String::from_utf8(resp).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "));
        assert!(
            text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
        assert!(matches!(
            respond_to_head(&head[..20]),
            HeadOutcome::Incomplete
        ));
        assert!(matches!(
            respond_to_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            HeadOutcome::Reject(_)
        ));
        assert!(matches!(
            respond_to_head(&vec![b'a'; HEAD_BYTES_MAX + 1]),
            HeadOutcome::Reject(_)
        ));
    }
}
