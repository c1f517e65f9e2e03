//! Node-wide state shared by the shards and the admin thread, and the open-files capacity.
//!
//! The only cross-shard state is here and is touched off the hot path: the admission counter
//! (once per accept and once per close), the draining flag (read per handshake) and a few
//! values the admin endpoint reports.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use super::metrics::NodeGauges;

/// File descriptors kept free beyond those open at start: accepted sockets that get 503,
/// the admin endpoint's connections, log files.
pub const FDS_RESERVED: usize = 64;
/// Refused sockets (503 over capacity) that may linger for the client's FIN at once: half the
/// reserve, so that refusals cannot use up the descriptors the admin endpoint
/// (`admin::ADMIN_CONNECTIONS_MAX`) and further refusals need.
pub const REFUSING_MAX: usize = FDS_RESERVED / 2;

/// Shared by every shard of a node.
#[derive(Debug)]
pub struct NodeShared {
    /// True from the first SIGTERM/SIGINT on.
    pub draining: AtomicBool,
    /// Client sockets admitted now (in the handshake or upgraded).
    admitted: AtomicUsize,
    /// Refused sockets lingering after their 503 now.
    refusing: AtomicUsize,
    /// Most sockets admitted at once: min(max_connections, open-files capacity).
    capacity: AtomicUsize,
    open_files_limit: u64,
}

impl NodeShared {
    /// A node admitting at most `capacity` sockets at once, not draining; `open_files_limit`
    /// is reported in `/metrics`.
    pub fn new(capacity: usize, open_files_limit: u64) -> NodeShared {
        NodeShared {
            draining: AtomicBool::new(false),
            admitted: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity),
            open_files_limit,
        }
    }

    /// Takes one admission slot; false when the node is at capacity.
    pub fn try_admit(&self) -> bool {
        let cap = self.capacity.load(Ordering::Relaxed);
        let prev = self.admitted.fetch_add(1, Ordering::Relaxed);
        if prev >= cap {
            self.admitted.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Returns an admission slot.
    pub fn release(&self) {
        self.admitted.fetch_sub(1, Ordering::Relaxed);
    }

    /// One of the [`REFUSING_MAX`] slots for a refused socket that lingers; None when all are
    /// taken (the socket is then closed right after its 503).
    pub fn try_refusing(self: &Arc<Self>) -> Option<RefusingSlot> {
        let prev = self.refusing.fetch_add(1, Ordering::Relaxed);
        if prev >= REFUSING_MAX {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RefusingSlot(self.clone()))
    }

    /// Sets the most sockets admitted at once (once the open-files limit is known).
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// The most sockets admitted at once.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// The node-wide gauges of `/metrics`.
    pub fn gauges(&self) -> NodeGauges {
        NodeGauges {
            capacity_connections: self.capacity() as u64,
            open_files_limit: self.open_files_limit,
            draining: self.draining.load(Ordering::Relaxed),
        }
    }
}

/// A lingering refused socket; returns its slot when dropped.
pub struct RefusingSlot(Arc<NodeShared>);

impl Drop for RefusingSlot {
    fn drop(&mut self) {
        self.0.refusing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the open-files soft limit to the hard limit; returns the new soft limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        return Ok(lim.rlim_max);
    }
    Ok(lim.rlim_cur)
}

/// File descriptors open in this process now.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1)) // the directory handle itself
        .unwrap_or(0)
}

/// Connections the open-files limit allows, given the descriptors already open.
pub fn open_files_capacity(limit: u64, open_now: usize) -> usize {
    (limit as usize).saturating_sub(open_now + FDS_RESERVED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_is_bounded() {
        let n = NodeShared::new(2, 100);
        assert!(n.try_admit());
        assert!(n.try_admit());
        assert!(!n.try_admit());
        n.release();
        assert!(n.try_admit());
    }

    #[test]
    fn lingering_refusals_are_bounded() {
        let n = Arc::new(NodeShared::new(2, 100));
        let slots: Vec<_> = (0..REFUSING_MAX)
            .map(|_| n.try_refusing().unwrap())
            .collect();
        assert!(n.try_refusing().is_none());
        drop(slots);
        assert!(n.try_refusing().is_some());
    }

    #[test]
    fn capacity_leaves_room() {
        assert_eq!(open_files_capacity(20_000, 36), 20_000 - 36 - FDS_RESERVED);
        assert_eq!(open_files_capacity(10, 36), 0);
        assert!(raise_open_files_limit().unwrap() > 0);
        assert!(open_fds() >= 3);
    }
}
