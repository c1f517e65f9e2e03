//! Per-shard state ([`ShardCtx`]) and the shard's own tasks: accept loop, liveness sweeper,
//! mesh receiver, readiness pings, drain.
//!
//! A [`ShardCtx`] is created on its shard's thread and is `!Send`; everything on the shard
//! reaches it through `Rc<ShardCtx>`. It owns the shard's registry of upgraded connections
//! (id -> [`ConnHandle`]), the scratch buffer all its connections read into, the endpoints of
//! this shard, and its metrics. Code from other shards or threads reaches it only through the
//! mesh ([`ShardMsg`]).

use std::{
    cell::{Cell, OnceCell, RefCell},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use ahash::AHashMap;
use tether_shards::{listener::ShardListener, MeshEndpoint};

use super::{
    config::ServerConfig,
    conn::{self, ConnHandle, ConnId},
    endpoint::Endpoint,
    metrics::{self, ShardMetrics},
    node::NodeShared,
};

/// Bytes of the shard's read buffer, shared by all its connections (one read at a time).
pub const SCRATCH_BYTES: usize = 64 * 1024;
/// Connections accepted back to back before the accept loop lets other tasks run.
const ACCEPT_BURST: u32 = 16;

/// Longest pause of the accept loop after an accept error (e.g. EMFILE).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

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
    Drain { deadline: Instant },
}

/// One shard's state. Lives on its shard; `!Send`.
pub struct ShardCtx {
    /// Dense shard index `0..count`.
    pub index: usize,
    /// Shards in the node.
    pub count: usize,
    /// CPU the shard is pinned to.
    pub cpu: usize,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<ShardMetrics>,
    pub(super) node: Arc<NodeShared>,
    mesh: MeshEndpoint<ShardMsg>,
    conns: RefCell<AHashMap<ConnId, ConnHandle>>,
    pub(super) scratch: RefCell<Box<[u8]>>,
    next_seq: Cell<u64>,
    draining: Cell<bool>,
    deadline: Cell<Option<Instant>>,
    handshaking: Cell<usize>,
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
        (id >> 48) as usize
    }

    /// This shard's end of the mesh (send to other shards with `send_to`/`try_send_to`).
    pub fn mesh(&self) -> &MeshEndpoint<ShardMsg> {
        &self.mesh
    }

    /// True once the node drains.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Milliseconds since the shard started (the liveness clock).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(super) fn next_conn_id(&self) -> ConnId {
        let seq = self.next_seq.get() + 1;
        self.next_seq.set(seq);
        ((self.index as u64) << 48) | (seq & ((1 << 48) - 1))
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

    pub(super) fn handshaking_add(&self, delta: i64) {
        let v = self.handshaking.get() as i64 + delta;
        self.handshaking.set(v.max(0) as usize);
        if delta > 0 {
            metrics::add(&self.metrics.handshaking, delta as u64);
        } else {
            metrics::sub(&self.metrics.handshaking, (-delta) as u64);
        }
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

/// Accepts until `stop` fires; each socket gets its own task.
pub(super) async fn accept_loop(
    ctx: Rc<ShardCtx>,
    listener: ShardListener,
    stop: flume::Receiver<()>,
) {
    let accepting = async {
        let mut last_error_log: Option<Instant> = None;
        let mut accepted = 0u32;
        loop {
            // One accept4 while the queue has connections; glommio's accept (which waits) only
            // when it is empty. TCP_NODELAY comes from the listener.
            let next = listener.accept().await;
            match next {
                Ok((stream, peer)) => {
                    let admitted = ctx.node.try_admit();
                    glommio::spawn_local(conn::run(ctx.clone(), stream, peer, admitted)).detach();
                    // Let the new connections' tasks run between bursts of accepts.
                    accepted = accepted.wrapping_add(1);
                    if accepted.is_multiple_of(ACCEPT_BURST) {
                        futures_lite::future::yield_now().await;
                    }
                }
                Err(e) => {
                    metrics::add(&ctx.metrics.accept_errors, 1);
                    if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(shard = ctx.index, error = %e, "accept failed (open files exhausted? see docs/operations.md)");
                        last_error_log = Some(Instant::now());
                    }
                    glommio::timer::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    };
    futures_lite::future::or(accepting, async {
        let _ = stop.recv_async().await;
    })
    .await;
    drop(listener);
    tracing::info!(shard = ctx.index, "listener closed");
}

/// Pings silent connections and drops those silent past `silence_timeout`.
pub(super) async fn sweeper(ctx: Rc<ShardCtx>) {
    let cfg = &ctx.config;
    let ping_ms = cfg.ping_idle.as_millis() as u64;
    let silence_ms = cfg.silence_timeout.as_millis() as u64;
    let tick = (cfg.ping_idle.min(cfg.silence_timeout - cfg.ping_idle) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        glommio::timer::sleep(tick).await;
        let now = ctx.now_ms();
        for conn in ctx.conns.borrow().values() {
            conn.sweep(now, ping_ms, silence_ms);
        }
    }
}

/// Answers the admin thread's readiness pings (see [`super::admin`]): an answer shows the
/// shard's executor is running its tasks.
pub(super) async fn answer_pings(pings: flume::Receiver<super::admin::ShardPing>) {
    while let Ok(reply) = pings.recv_async().await {
        let _ = reply.send(());
    }
}

/// Runs closures other shards send over the mesh.
pub(super) async fn mesh_loop(ctx: Rc<ShardCtx>) {
    while let Some(msg) = ctx.mesh.recv().await {
        match msg {
            ShardMsg::Run(f) => f(&ctx),
        }
    }
}

/// Drains the shard: the caller has stopped the listener. Closes connections with 1001 in
/// batches spread over the first three quarters of the time left (the rest is for close
/// handshakes), then waits until every connection and handshake is gone or the deadline.
pub(super) async fn drain(ctx: Rc<ShardCtx>, deadline: Instant) {
    ctx.draining.set(true);
    ctx.deadline.set(Some(deadline));
    let start = Instant::now();
    let window = deadline.saturating_duration_since(start) * 3 / 4;
    let tick = (window / 20).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let ticks = (window.as_millis() / tick.as_millis().max(1)).max(1) as usize;
    let targets: Vec<ConnId> = ctx.conns.borrow().keys().copied().collect();
    tracing::info!(
        shard = ctx.index,
        connections = targets.len(),
        window_ms = window.as_millis() as u64,
        "draining: closing connections with 1001"
    );
    let mut next = 0;
    for i in 0..ticks {
        // Cumulative schedule: by the end of tick i, (i+1)/ticks of the connections are closed.
        let due = (targets.len() * (i + 1)).div_ceil(ticks);
        for id in &targets[next..due] {
            if let Some(c) = ctx.conn(*id) {
                c.close(1001, "server draining");
            }
        }
        next = due;
        if next == targets.len() || ctx.conns.borrow().is_empty() {
            break;
        }
        glommio::timer::sleep(tick).await;
    }
    loop {
        // Connections upgraded after the snapshot (handshake finished just before the drain).
        for c in ctx.connections() {
            c.close(1001, "server draining");
        }
        if ctx.conns.borrow().is_empty() && ctx.handshaking.get() == 0 {
            tracing::info!(
                shard = ctx.index,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "drained"
            );
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                shard = ctx.index,
                connections = ctx.connection_count(),
                "drain deadline reached with connections open"
            );
            return;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}
