//! What every peer server built here shares: the `--listen ADDR` command line, raising the
//! open-files soft limit to the hard limit, the listening socket (tether's own `SO_REUSEPORT`
//! listener set-up, so that every peer gets the same backlog as tether), and the tokio peers'
//! runtime and accept loop (`serve_tokio`).
//!
//! The peers are comparison points for tether, so they must not lose for a reason that is not
//! theirs: the same listen backlog (`LISTEN_BACKLOG`, the kernel clamps it to
//! `net.core.somaxconn`), `TCP_NODELAY` on accepted sockets, and as many file descriptors as the
//! process may hold.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

/// Listen backlog asked of the kernel by every peer (clamped to `net.core.somaxconn`, 4096 here).
/// A reconnect storm overflows glommio's and tokio's default of 1024.
pub const LISTEN_BACKLOG: u32 = 65_535;

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

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR`, `SO_REUSEPORT` (so one listener
/// per thread can share the port and the kernel spreads accepts) and `LISTEN_BACKLOG`: the same
/// socket set-up as tether's own listeners (`tether_shards::bind_reuseport`).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = tether_shards::bind_reuseport(addr, LISTEN_BACKLOG).map_err(io::Error::other)?;
    listener.set_nonblocking(true)?;
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

/// Number of CPUs this process may run on (its affinity mask), at least 1.
pub fn cpus_available() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// How long a tokio peer's accept loop waits after a failed accept (EMFILE and friends) before
/// accepting again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Runs a tokio peer: raises the open-files limit, builds a multi-thread runtime with one worker
/// per CPU, listens on `addr` (`bind_listener`) and spawns `serve(stream)` for every accepted
/// socket, forever. A failed accept is printed and retried after `ACCEPT_ERROR_BACKOFF`; a
/// set-up failure exits with status 1 (`die`).
pub fn serve_tokio<F, Fut>(addr: SocketAddr, serve: F) -> !
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    raise_nofile_limit().unwrap_or_else(|e| die(format!("setrlimit: {e}")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus_available())
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(format!("tokio runtime: {e}")));
    runtime.block_on(async move {
        let std_listener = bind_listener(addr).unwrap_or_else(|e| die(format!("bind {addr}: {e}")));
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .unwrap_or_else(|e| die(format!("listener: {e}")));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    })
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
        let a = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_listener(addr).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        // A socket without SO_REUSEPORT cannot take the port: it really is held.
        assert!(TcpListener::bind(addr).is_err());
    }
}
