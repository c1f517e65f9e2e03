//! `SO_REUSEPORT` listening sockets with a configurable backlog.
//!
//! glommio's `TcpListener::bind` always listens with a backlog of 1024, too small for a
//! reconnect storm, so the sockets are built here with libc and handed to glommio through
//! `FromRawFd` (glommio 0.9 implements it for `glommio::net::TcpListener`). The kernel caps the
//! backlog at `net.core.somaxconn`.
//!
//! [`bind_reuseport_group`] binds one socket per shard on the same address before any shard
//! starts: binding port 0 resolves the port once (on the first socket) and the others join it,
//! so every shard listens on the same port and the kernel spreads new connections over them.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
};

/// Why a listening socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// A system call on the way to a listening socket failed.
    #[error("cannot {step} listening socket on {addr}: {source}{hint}")]
    Socket {
        /// The step that failed (`create`, `set SO_REUSEPORT on`, `bind`, `listen on`, `read the
        /// address of`).
        step: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The system call's error.
        source: std::io::Error,
        /// The likely cause and fix (e.g. the address is in use), or empty.
        hint: &'static str,
    },
}

fn check(rc: libc::c_int, step: &'static str, addr: SocketAddr) -> Result<(), ListenerError> {
    if rc == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            " (address in use by a socket without SO_REUSEPORT, or by another user)"
        }
        Some(libc::EACCES) => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        Some(libc::EADDRNOTAVAIL) => " (the address is not configured on this host)",
        _ => "",
    };
    Err(ListenerError::Socket {
        step,
        addr,
        source,
        hint,
    })
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
    step: &'static str,
    addr: SocketAddr,
) -> Result<(), ListenerError> {
    // SAFETY: `fd` is an open socket; the option value is a c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, step, addr)
}

/// Binds one `SO_REUSEPORT` socket on `addr` and listens with `backlog`.
pub fn bind_reuseport(
    addr: SocketAddr,
    backlog: u32,
) -> Result<std::net::TcpListener, ListenerError> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        check(-1, "create", addr)?;
    }
    // SAFETY: `raw` is a freshly created socket we own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        1,
        "set SO_REUSEADDR on",
        addr,
    )?;
    set_int_opt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        1,
        "set SO_REUSEPORT on",
        addr,
    )?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux), which saves a setsockopt
    // per connection; every server here answers small frames that must not wait for Nagle.
    set_int_opt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        1,
        "set TCP_NODELAY on",
        addr,
    )?;
    if addr.is_ipv6() {
        set_int_opt(
            &fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            1,
            "set IPV6_V6ONLY on",
            addr,
        )?;
    }
    let (storage, len) = sockaddr(&addr);
    // SAFETY: `storage` holds a valid sockaddr of length `len` for this socket's family.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    check(rc, "bind", addr)?;
    let backlog = backlog.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: `fd` is a bound stream socket.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    check(rc, "listen on", addr)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Binds `count` `SO_REUSEPORT` sockets on the same address (port 0 is resolved once).
pub fn bind_reuseport_group(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> Result<Vec<std::net::TcpListener>, ListenerError> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let l = bind_reuseport(addr, backlog)?;
        if addr.port() == 0 {
            addr = l.local_addr().map_err(|source| ListenerError::Socket {
                step: "read the address of",
                addr,
                source,
                hint: "",
            })?;
        }
        out.push(l);
    }
    Ok(out)
}

/// The peer address reported when the kernel gives none (the peer already left).
const UNKNOWN_PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// A shard's listening socket on its glommio executor, with an accept that costs one syscall
/// while connections are queued.
#[derive(Debug)]
pub struct ShardListener {
    inner: glommio::net::TcpListener,
    /// The listening socket, owned by `inner` (open for as long as `self` lives).
    fd: RawFd,
}

/// Hands a listening socket to the glommio executor of the calling thread, non-blocking so
/// that [`ShardListener::try_accept`] never waits (glommio's own accept keeps working: it
/// restores the flags it finds, and its io_uring accept arms a poll when the queue is empty).
///
/// # Panics
/// When called outside a glommio executor (glommio needs its reactor).
pub fn into_glommio(listener: std::net::TcpListener) -> std::io::Result<ShardListener> {
    listener.set_nonblocking(true)?;
    let fd = listener.into_raw_fd();
    // SAFETY: `fd` is an open, bound, listening TCP socket whose ownership moves to glommio.
    let inner = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
    Ok(ShardListener { inner, fd })
}

impl ShardListener {
    /// The next connection and its peer address: [`Self::try_accept`], or glommio's accept
    /// (which waits) when the queue is empty.
    pub async fn accept(&self) -> std::io::Result<(glommio::net::TcpStream, SocketAddr)> {
        if let Some(pair) = self.try_accept()? {
            return Ok(pair);
        }
        let stream = self.inner.accept().await?;
        let peer = stream.peer_addr().unwrap_or(UNKNOWN_PEER);
        Ok((stream, peer))
    }

    /// Takes one connection from the accept queue with a single `accept4`, or `None` when the
    /// queue is empty. glommio's accept costs three `fcntl`s and an `accept` per call, plus an
    /// io_uring accept when that finds nothing; under a connection storm the queue is rarely
    /// empty, so this is the path most sockets take. The peer address comes with the socket.
    pub fn try_accept(&self) -> std::io::Result<Option<(glommio::net::TcpStream, SocketAddr)>> {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `self.fd` is open while `self` lives; `storage` and `len` describe a
        // writable buffer of `len` bytes for the peer address.
        let raw = unsafe {
            libc::accept4(
                self.fd,
                &mut storage as *mut libc::sockaddr_storage as *mut libc::sockaddr,
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                // Empty queue, or the peer gave up between its handshake and our accept.
                Some(libc::EAGAIN) | Some(libc::ECONNABORTED) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: `raw` is a socket accept4 just created; its ownership moves to glommio.
        let stream = unsafe { glommio::net::TcpStream::from_raw_fd(raw) };
        let peer = socket_addr(&storage).unwrap_or(UNKNOWN_PEER);
        Ok(Some((stream, peer)))
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, for which it is large
            // and aligned enough.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_shares_one_port() {
        let ls = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 3, 4096).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        // A plain connect succeeds (the kernel picks one of the sockets).
        std::net::TcpStream::connect(ls[0].local_addr().unwrap()).unwrap();
    }

    #[test]
    fn bind_error_names_the_address() {
        // TEST-NET-1 is not configured here: bind fails with EADDRNOTAVAIL.
        let err = bind_reuseport("192.0.2.1:0".parse().unwrap(), 16).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("192.0.2.1"), "{msg}");
    }
}
