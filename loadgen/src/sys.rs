//! The few operating-system calls the generator needs that std and tokio do not offer: the
//! open-files limit, `IP_BIND_ADDRESS_NO_PORT`, the parent-death signal for workers, and the
//! process's own CPU time and peak RSS. All `unsafe` of the crate lives here.

use std::io;
use std::os::fd::RawFd;

/// The open-files limit of this process as `(soft, hard)`.
pub fn nofile_limits() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_to_hard() -> io::Result<u64> {
    let (_, hard) = nofile_limits()?;
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit read by the call only.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hard)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on a TCP socket: a later `bind(addr, 0)` then fixes only the
/// source address, and the port is picked at `connect` from the whole 4-tuple, so one source
/// address serves the full port range towards every destination separately.
pub fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by the caller; the option value points at a live
    // c_int and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the kernel to send SIGKILL to this process when its parent exits, so that workers never
/// outlive a coordinator that was killed.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number as its only argument; no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (user + system) and peak RSS of this process or of its waited-for children.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_us: u64,
    pub max_rss_kib: u64,
}

fn usage(who: libc::c_int) -> Usage {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return Usage::default();
    }
    let tv_us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Usage {
        cpu_us: tv_us(ru.ru_utime) + tv_us(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss as u64,
    }
}

/// This process's own CPU time and peak RSS.
pub fn self_usage() -> Usage {
    usage(libc::RUSAGE_SELF)
}

/// CPU time of a process from `/proc/PID/stat` (utime + stime), in microseconds.
pub fn proc_cpu_us(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after the last ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let parse = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc stat field"))
    };
    let ticks = parse(11)? + parse(12)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(ticks * 1_000_000 / hz)
}

/// Number of CPUs this process may run on.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Resident set size of a process (`VmRSS` in `/proc/PID/status`), in KiB.
pub fn proc_rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc status"))
}

/// A process's command name (`/proc/PID/comm`).
pub fn proc_name(pid: u32) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/comm"))?
        .trim()
        .to_string())
}
