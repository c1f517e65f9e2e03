//! The node's count of each device's live sessions, and the cap on them
//! (`sessions_per_device_max`).
//!
//! A device's sessions may sit on any shard, so the count is node-wide: one map behind a mutex,
//! touched twice per session (open and close), never per message. When a device opens one
//! session more than the cap, its **oldest** session on this node is closed with
//! [`REPLACED_CLOSE_CODE`]: a device that reconnects after a network change gets in at once
//! instead of waiting for its stale sessions to time out, and one token cannot hold more than
//! the cap, so one message to a device is copied to at most `sessions_per_device_max` outbound
//! queues of this node. The count is per node: a device can hold the cap on each node it
//! reaches.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::few::{Few, Removed};
use ahash::AHashMap;

/// Connection id (the server's node-unique id).
pub type ConnId = u64;

/// Close code of a session replaced by a newer session of the same device (4000 + HTTP 409
/// Conflict, in the private range; see `docs/protocol.md`). A client that gets it should not
/// reconnect on its own: a newer session of its device holds the place.
pub const REPLACED_CLOSE_CODE: u16 = 4409;
/// Close reason sent with [`REPLACED_CLOSE_CODE`].
pub const REPLACED_CLOSE_REASON: &str = "replaced: too many sessions of this device";

/// Each device's open sessions on this node, oldest first.
#[derive(Debug)]
pub struct DeviceSessions {
    max: usize,
    /// Keyed by the device id the hub shares (one allocation per device on the shard).
    open: Mutex<AHashMap<Arc<str>, Few<ConnId>>>,
    replaced: AtomicU64,
}

impl DeviceSessions {
    /// A registry allowing `max` (at least 1) sessions per device.
    pub fn new(max: usize) -> DeviceSessions {
        DeviceSessions {
            max: max.max(1),
            open: Mutex::new(AHashMap::new()),
            replaced: AtomicU64::new(0),
        }
    }

    /// Sessions allowed per device.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Records `conn` as the newest session of `device`; returns the session to close when the
    /// device is over the cap (its oldest).
    pub fn open<D: Into<Arc<str>> + AsRef<str>>(&self, device: D, conn: ConnId) -> Option<ConnId> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = open.get_mut(device.as_ref()) else {
            open.insert(device.into(), Few::new(conn));
            return None;
        };
        list.push(conn);
        if list.len() > self.max {
            self.replaced.fetch_add(1, Ordering::Relaxed);
            list.pop_front()
        } else {
            None
        }
    }

    /// Forgets `conn` (closed, or already replaced).
    pub fn close(&self, device: &str, conn: ConnId) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = open.get_mut(device) {
            if list.remove(conn) == Removed::Last {
                open.remove(device);
            }
        }
    }

    /// Appends `tether_device_sessions_replaced_total` (Prometheus text).
    pub fn render_prometheus(&self, out: &mut String) {
        let _ = write!(
            out,
            "# HELP tether_device_sessions_replaced_total Sessions closed with {REPLACED_CLOSE_CODE} because their device opened more than {} on this node.\n\
             # TYPE tether_device_sessions_replaced_total counter\n\
             tether_device_sessions_replaced_total {}\n",
            self.max,
            self.replaced.load(Ordering::Relaxed)
        );
    }

    /// Sessions of `device` on this node.
    pub fn count(&self, device: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(device).map_or(0, Few::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_session_over_the_cap_is_replaced() {
        let s = DeviceSessions::new(2);
        assert_eq!(s.open("tv", 1), None);
        assert_eq!(s.open("tv", 2), None);
        assert_eq!(s.open("phone", 3), None);
        assert_eq!(s.open("tv", 4), Some(1));
        assert_eq!(s.count("tv"), 2);
        // The replaced session's own close later finds nothing to remove.
        s.close("tv", 1);
        assert_eq!(s.count("tv"), 2);
        s.close("tv", 2);
        s.close("tv", 4);
        assert_eq!(s.count("tv"), 0);
        assert!(s.open.lock().unwrap().get("tv").is_none());
        assert_eq!(s.count("phone"), 1);
    }
}
