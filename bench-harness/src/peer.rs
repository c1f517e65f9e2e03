//! What every peer server built here shares: the `--listen ADDR` command line, raising the
//! open-files soft limit to the hard limit, and the listening socket (built with libc so that
//! every peer gets the same backlog and, when asked, `SO_REUSEPORT`).
//!
//! The peers are comparison points for tether, so they must not lose for a reason that is not
//! theirs: the same listen backlog (`LISTEN_BACKLOG`, the kernel clamps it to
//! `net.core.somaxconn`), `TCP_NODELAY` on accepted sockets, and as many file descriptors as the
//! process may hold.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::FromRawFd;

/// Listen backlog asked of the kernel by every peer (clamped to `net.core.somaxconn`, 4096 here).
/// A reconnect storm overflows glommio's and tokio's default of 1024.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// Parses `--listen ADDR` (or `--listen=ADDR`) from the process arguments; anything else is an
/// error that names the usage.
pub fn listen_addr_from_args(program: &str) -> Result<SocketAddr, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    parse_listen_args(program, &args)
}

fn parse_listen_args(program: &str, args: &[String]) -> Result<SocketAddr, String> {
    let usage = format!("usage: {program} --listen ADDR (for example 127.0.0.1:9001)");
    let value = match args {
        [flag, value] if flag == "--listen" => value.as_str(),
        [one] if one.starts_with("--listen=") => &one["--listen=".len()..],
        _ => return Err(usage),
    };
    value
        .parse()
        .map_err(|e| format!("{program}: bad --listen address {value:?}: {e}\n{usage}"))
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid, initialised rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Whether several sockets share the port (one listener per thread, the kernel spreads accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSharing {
    Exclusive,
    ReusePort,
}

/// A non-blocking TCP listener bound to `addr` with `SO_REUSEADDR`, optionally `SO_REUSEPORT`,
/// and `LISTEN_BACKLOG`.
pub fn bind_listener(addr: SocketAddr, sharing: PortSharing) -> io::Result<TcpListener> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket that nothing else owns; the TcpListener takes
    // ownership and closes it on every path (including errors below).
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if sharing == PortSharing::ReusePort {
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the socket's family.
    if unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a bound stream socket.
    if unsafe { libc::listen(fd, LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Sets an integer socket option.
pub fn set_int_opt(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
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
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// Number of CPUs this process may run on (its affinity mask), at least 1.
pub fn cpus_available() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Prints `err` to stderr and exits with status 1: the peers print nothing but errors.
pub fn die(err: impl std::fmt::Display) -> ! {
    eprintln!("{err}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn listen_flag_forms() {
        let want: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        assert_eq!(
            parse_listen_args("p", &args(&["--listen", "127.0.0.1:9001"])).unwrap(),
            want
        );
        assert_eq!(
            parse_listen_args("p", &args(&["--listen=127.0.0.1:9001"])).unwrap(),
            want
        );
        assert!(parse_listen_args("p", &args(&[])).is_err());
        assert!(parse_listen_args("p", &args(&["--listen", "nope"])).is_err());
        assert!(parse_listen_args("p", &args(&["--port", "1"])).is_err());
    }

    #[test]
    fn two_reuseport_listeners_share_a_port() {
        let a = bind_listener("127.0.0.1:0".parse().unwrap(), PortSharing::ReusePort).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_listener(addr, PortSharing::ReusePort).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        assert!(bind_listener(addr, PortSharing::Exclusive).is_err());
    }
}
