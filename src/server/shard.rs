//! Per-shard state ([`ShardCtx`]): the registry of upgraded connections and what the shard's
//! connections share. The shard's tasks are in [`super::tasks`], a connection's in
//! [`super::conn_task`].
//!
//! A [`ShardCtx`] is created on its shard's thread and is `!Send`; everything on the shard
//! reaches it through `Rc<ShardCtx>`. It owns the shard's registry of upgraded connections
//! (id -> [`ConnHandle`]), the scratch buffer all its connections read into, the endpoints of
//! this shard, and its metrics. Code from other shards reaches it only through the node's mesh
//! ([`ShardCtx::invoke_on`], carried as a [`ShardMsg`]).

use std::{
    cell::{Cell, OnceCell, RefCell},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use ahash::AHashMap;
use tether_shards::{MeshEndpoint, MeshSendError};

use super::{
    config::ServerConfig,
    conn::{ConnHandle, ConnId, CONN_SEQ_BITS},
    endpoint::Endpoint,
    metrics::{self, ShardMetrics},
    node::NodeShared,
};

/// Bytes of the shard's read buffer, shared by all its connections (one read at a time).
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// Work sent to a shard: runs there with the shard's context.
pub type ShardTask = Box<dyn FnOnce(&Rc<ShardCtx>) + Send>;

/// A message to a shard over the mesh. `Send`; it runs on the receiving shard.
pub enum ShardMsg {
    /// Run a closure with the receiving shard's context.
    Run(ShardTask),
}

/// Commands from the node's main thread.
#[derive(Debug, Clone, Copy)]
pub enum ShardControl {
    /// Stop accepting, close every connection with 1001 paced until `deadline`, then end.
    Drain {
        /// When every connection must be closed (from `drain_time`).
        deadline: Instant,
    },
}

/// One shard's state. Lives on its shard; `!Send`.
pub struct ShardCtx {
    /// Dense shard index `0..count`.
    pub index: usize,
    /// Shards in the node.
    pub count: usize,
    /// CPU the shard is pinned to.
    pub cpu: usize,
    /// The node's checked configuration (limits, timeouts), shared by every shard.
    pub config: Arc<ServerConfig>,
    /// This shard's counters (written only here; the admin thread reads them).
    pub metrics: Arc<ShardMetrics>,
    pub(super) node: Arc<NodeShared>,
    mesh: MeshEndpoint<ShardMsg>,
    conns: RefCell<AHashMap<ConnId, ConnHandle>>,
    pub(super) scratch: RefCell<Box<[u8]>>,
    next_seq: Cell<u64>,
    draining: Cell<bool>,
    deadline: Cell<Option<Instant>>,
    handshaking: Cell<usize>,
    /// Bytes of incomplete frames and messages held for this shard's connections, at most
    /// `shard_partial_bytes_max`.
    partial_bytes: Cell<usize>,
    /// When "at capacity" was last logged (`now_ms`), to log it at most once a second.
    over_capacity_logged_ms: Cell<Option<u64>>,
    epoch: Instant,
    routes: OnceCell<AHashMap<String, Rc<dyn Endpoint>>>,
}

impl ShardCtx {
    pub(super) fn new(
        index: usize,
        count: usize,
        cpu: usize,
        config: Arc<ServerConfig>,
        metrics: Arc<ShardMetrics>,
        node: Arc<NodeShared>,
        mesh: MeshEndpoint<ShardMsg>,
    ) -> ShardCtx {
        ShardCtx {
            index,
            count,
            cpu,
            config,
            metrics,
            node,
            mesh,
            conns: RefCell::new(AHashMap::new()),
            scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
            next_seq: Cell::new(0),
            draining: Cell::new(false),
            deadline: Cell::new(None),
            handshaking: Cell::new(0),
            partial_bytes: Cell::new(0),
            over_capacity_logged_ms: Cell::new(None),
            epoch: Instant::now(),
            routes: OnceCell::new(),
        }
    }

    /// The upgraded connection with this id, if it is on this shard and open.
    pub fn conn(&self, id: ConnId) -> Option<ConnHandle> {
        self.conns.borrow().get(&id).cloned()
    }

    /// Upgraded connections open on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Handles of every open connection (a snapshot).
    pub fn connections(&self) -> Vec<ConnHandle> {
        self.conns.borrow().values().cloned().collect()
    }

    /// The shard index a connection id belongs to.
    pub fn shard_of(id: ConnId) -> usize {
        (id >> CONN_SEQ_BITS) as usize
    }

    /// This shard's end of the node's mesh (its receiver is the shard's mesh loop).
    pub(super) fn mesh(&self) -> &MeshEndpoint<ShardMsg> {
        &self.mesh
    }

    /// Runs `f` with shard `to`'s context (seastar's `invoke_on`): at once when `to` is this
    /// shard, else on `to` as a [`ShardMsg::Run`] over the node's mesh, after everything this
    /// shard sent it before. When `to`'s mesh channel is full, a task of this shard waits for
    /// room, so `f` is not lost while both shards run. Panics if `to` is not a shard of the node.
    pub fn invoke_on(self: &Rc<Self>, to: usize, f: impl FnOnce(&Rc<ShardCtx>) + Send + 'static) {
        assert!(to < self.count, "shard {to} of {}", self.count);
        if to == self.index {
            f(self);
            return;
        }
        match self.mesh.try_send_to(to, ShardMsg::Run(Box::new(f))) {
            // A stopped shard has nothing left to run it on.
            Ok(()) | Err(MeshSendError::Stopped(_)) => {}
            Err(MeshSendError::Full(msg)) => {
                let ctx = self.clone();
                glommio::spawn_local(async move {
                    let _ = ctx.mesh.send_to(to, msg).await;
                })
                .detach();
            }
            Err(MeshSendError::NoSuchShard(_)) => unreachable!("shard {to} checked above"),
        }
    }

    /// True once the node drains.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Milliseconds since the shard started (the liveness clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next node-unique connection id: this shard's index above [`CONN_SEQ_BITS`] bits
    /// of sequence. At a million connections per second the sequence lasts nine years; it is
    /// checked rather than allowed to wrap into ids still in use.
    pub(super) fn next_conn_id(&self) -> ConnId {
        let seq = self.next_seq.get() + 1;
        assert!(seq < 1 << CONN_SEQ_BITS, "connection id sequence exhausted");
        assert!(
            self.index < 1 << (64 - CONN_SEQ_BITS),
            "shard index {}",
            self.index
        );
        self.next_seq.set(seq);
        ((self.index as u64) << CONN_SEQ_BITS) | seq
    }

    pub(super) fn endpoint(&self, path: &str) -> Option<Rc<dyn Endpoint>> {
        self.routes.get().and_then(|r| r.get(path).cloned())
    }

    pub(super) fn set_routes(&self, routes: AHashMap<String, Rc<dyn Endpoint>>) {
        let _ = self.routes.set(routes);
    }

    pub(super) fn register(&self, conn: ConnHandle) {
        self.conns.borrow_mut().insert(conn.id(), conn);
        metrics::add(&self.metrics.connections, 1);
    }

    pub(super) fn deregister(&self, id: ConnId) {
        if self.conns.borrow_mut().remove(&id).is_some() {
            metrics::sub(&self.metrics.connections, 1);
        }
    }

    /// A socket enters the handshake.
    pub(super) fn handshake_started(&self) {
        self.handshaking.set(self.handshaking.get() + 1);
        metrics::add(&self.metrics.handshaking, 1);
    }

    /// A socket leaves the handshake (upgraded, refused or gone).
    pub(super) fn handshake_ended(&self) {
        let n = self.handshaking.get();
        assert!(n > 0, "handshake count underflow");
        self.handshaking.set(n - 1);
        metrics::sub(&self.metrics.handshaking, 1);
    }

    /// Sockets in the handshake now.
    pub(super) fn handshaking(&self) -> usize {
        self.handshaking.get()
    }

    /// Ids of every open connection (a snapshot).
    pub(super) fn connection_ids(&self) -> Vec<ConnId> {
        self.conns.borrow().keys().copied().collect()
    }

    /// Calls `f` with every open connection; `f` must not register or deregister any.
    pub(super) fn for_each_connection(&self, mut f: impl FnMut(&ConnHandle)) {
        for c in self.conns.borrow().values() {
            f(c);
        }
    }

    /// Takes `n` bytes from the shard's budget for incomplete frames and messages; false
    /// (nothing taken) when that would exceed `shard_partial_bytes_max`.
    pub(super) fn partial_take(&self, n: usize) -> bool {
        let held = self.partial_bytes.get();
        if held + n > self.config.shard_partial_bytes_max {
            return false;
        }
        self.partial_bytes.set(held + n);
        metrics::add(&self.metrics.partial_bytes, n as u64);
        true
    }

    /// Returns `n` bytes to the shard's budget.
    pub(super) fn partial_give(&self, n: usize) {
        self.partial_bytes
            .set(self.partial_bytes.get().saturating_sub(n));
        metrics::sub(&self.metrics.partial_bytes, n as u64);
    }

    /// Bytes of the budget in use.
    pub fn partial_bytes(&self) -> usize {
        self.partial_bytes.get()
    }

    /// Logs a 503 for lack of capacity, at most once a second per shard (every one is counted
    /// in `tether_handshakes_total{result="over_capacity"}`).
    pub(super) fn log_over_capacity(&self, peer: std::net::SocketAddr) {
        let now = self.now_ms();
        if self
            .over_capacity_logged_ms
            .get()
            .is_none_or(|t| now.saturating_sub(t) >= 1000)
        {
            self.over_capacity_logged_ms.set(Some(now));
            tracing::warn!(
                shard = self.index,
                peer = %peer,
                capacity_connections = self.node.capacity(),
                "at connection capacity: answering 503 (see docs/operations.md, Capacity)"
            );
        }
    }

    /// Enters the drain: upgrades are refused from now on and close handshakes end by
    /// `deadline`.
    pub(super) fn start_drain(&self, deadline: Instant) {
        self.draining.set(true);
        self.deadline.set(Some(deadline));
    }

    /// How long a close handshake may wait: `close_timeout`, less when the drain deadline
    /// is nearer.
    pub(super) fn close_wait(&self, close_timeout: Duration) -> Duration {
        match self.deadline.get() {
            Some(d) => close_timeout
                .min(d.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(1)),
            None => close_timeout,
        }
    }
}
