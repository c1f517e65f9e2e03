//! `tether serve`: the thread-per-core WebSocket server.
//!
//! One node is one process; it runs one shard per CPU of its placement (see `tether-shards`).
//! Each shard has its own `SO_REUSEPORT` listener, accepts and owns its connections outright,
//! and keeps all per-connection state in `!Send` structures on its thread. This module wires
//! the pieces: [`config`] (flags, env, TOML), [`node`] (admission and open-files capacity),
//! [`outbound`] (a connection's outbound queue, plain data), [`conn`] (the handle sessions get),
//! [`endpoint`] (pluggable endpoints and sessions), [`shard`] (per-shard state and the
//! connection registry), [`conn_task`] (a connection's task: handshake, frame loop, close),
//! [`tasks`] (the shard's accept loop, sweeper and drain), [`metrics`] and [`admin`]
//! (Prometheus, health, readiness), [`notify`] (systemd readiness), and [`Server::run`]
//! (start, signals, drain, exit). The
//! files import each other in that order only (`tests/import_cycles.rs`).
//!
//! # The seam for applications (endpoints, connection registry, per-shard services)
//!
//! - **Per-shard services.** [`Server::per_shard`] registers a factory (seastar's
//!   `sharded<Service>`) called on every shard while it starts (before the start latch: an
//!   error, a [`ServiceError`], fails the whole node). It returns the shard's [`ShardService`]:
//!   the endpoints it serves and the tasks it runs for the shard's life (e.g. a bus link), built
//!   side by side so they share state through plain `Rc`s. A value made for each shard before
//!   the node starts (a bus link) is moved to its shard with [`Server::per_shard_with`].
//!   Work a shard does after its drain (flushing its NATS connection) is a
//!   [`ShardService::on_drained`] hook.
//! - **Endpoints are pluggable.** [`Server::endpoint`] (a per-shard service with one endpoint)
//!   maps a request path to a factory that builds one [`endpoint::Endpoint`] per shard, on that
//!   shard. For each upgrade request on
//!   the path the endpoint gets the parsed [`crate::ws::UpgradeRequest`] before the 101 and
//!   answers, possibly asynchronously (e.g. an auth request over NATS), with
//!   [`endpoint::Rejected`] (any HTTP status, e.g. 401) or [`endpoint::Accepted`] (an optional
//!   subprotocol and a [`endpoint::Session`]). The session gets `on_open` with the
//!   connection's handle, `on_message` for each complete message, and `on_close` with the code.
//!   Unknown paths get 404; `/echo` is registered when `--echo` is given.
//! - **Every upgraded connection is in its shard's registry.** [`shard::ShardCtx::conn`] looks
//!   up a [`conn::ConnHandle`] (`Rc<Conn>`, `!Send`) by its node-unique [`conn::ConnId`];
//!   through it any code on the same shard can enqueue a message ([`conn::Conn::send`], subject
//!   to `outbound_bytes_max` and the slow-consumer policy) or close the connection
//!   ([`conn::Conn::close`]). Other shards reach it with [`shard::ShardCtx::invoke_on`]
//!   (seastar's `invoke_on`: a closure run on that shard, carried over the node's mesh as a
//!   [`shard::ShardMsg::Run`]; the shard of an id is [`shard::ShardCtx::shard_of`]).
//!
//! # Drain
//!
//! On SIGTERM or SIGINT `/readyz` turns 503 at once; the listeners keep accepting and serving
//! for `drain_delay` (so that load balancers probing `/readyz` take the node out first), then
//! the node stops accepting (each shard closes its listener), upgrade requests still in flight
//! get 503, and each shard closes its connections
//! with 1001 in batches spread over `drain_time` (see [`tasks::drain`]). A shard is done when
//! every connection is closed or at the deadline, whichever comes first, and then runs its
//! [`ShardService::on_drained`] hooks (at most [`DRAINED_HOOKS_TIME_MAX`]); the process exits 0
//! when every shard is done. A second signal stops at once.

pub mod admin;
pub mod config;
pub mod conn;
pub mod conn_task;
pub mod endpoint;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod outbound;
pub mod proxy_protocol;
pub mod shard;
pub mod tasks;
pub mod tls;

use std::{
    future::Future,
    pin::Pin,
    rc::Rc,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use ahash::AHashMap;
use tether_shards::{cpus::format_cpu_list, listener, Node, NodeConfig, Placement};

pub use config::ServerConfig;
use endpoint::Endpoint;
use metrics::ShardMetrics;
use node::NodeShared;
use shard::{ShardControl, ShardCtx, ShardMsg};

/// Builds one per-shard service on its shard (seastar's `sharded<Service>::start`): called on
/// every shard while it starts, before the start latch; an error fails the whole node.
pub type ServiceFactory =
    Arc<dyn Fn(&Rc<ShardCtx>) -> Result<ShardService, ServiceError> + Send + Sync>;

/// A task that runs on its shard for the shard's life.
pub type ShardTask = Pin<Box<dyn Future<Output = ()>>>;

/// What one per-shard service puts on its shard: the endpoints it serves and the tasks it runs.
/// Values built together (e.g. an endpoint and the task that feeds it) share state through
/// plain `Rc`s: the factory builds them side by side on the shard's thread.
#[derive(Default)]
pub struct ShardService {
    routes: Vec<(String, Rc<dyn Endpoint>)>,
    tasks: Vec<ShardTask>,
    drained: Vec<DrainedHook>,
}

/// Work a shard does once its drain is over, before it stops (see
/// [`ShardService::on_drained`]).
pub type DrainedHook = Box<dyn FnOnce() -> ShardTask>;

/// How long a shard's [`ShardService::on_drained`] hooks may take together: the node's
/// drain watchdog stops the shards this long (plus 200 ms) after the drain deadline.
pub const DRAINED_HOOKS_TIME_MAX: Duration = Duration::from_secs(1);

impl ShardService {
    /// A service with no endpoint and no task yet.
    pub fn new() -> ShardService {
        ShardService::default()
    }

    /// Serves upgrade requests for `path` on this shard with `endpoint`.
    pub fn endpoint(mut self, path: &str, endpoint: Rc<dyn Endpoint>) -> ShardService {
        self.routes.push((path.to_string(), endpoint));
        self
    }

    /// Runs `task` on this shard for the shard's life.
    pub fn task(mut self, task: impl Future<Output = ()> + 'static) -> ShardService {
        self.tasks.push(Box::pin(task));
        self
    }

    /// Runs the future `hook` makes on this shard once its drain is over (its connections
    /// closed), and waits for it before the shard stops: e.g. flushing what the drain queued
    /// for NATS. The hook bounds its own time: a shard's hooks together within
    /// [`DRAINED_HOOKS_TIME_MAX`]. Not run when the node stops without a drain.
    pub fn on_drained<F: Future<Output = ()> + 'static>(
        mut self,
        hook: impl FnOnce() -> F + 'static,
    ) -> ShardService {
        self.drained
            .push(Box::new(move || -> ShardTask { Box::pin(hook()) }));
        self
    }
}

/// Why a per-shard service could not start on its shard (the node does not start).
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: {reason}")]
pub struct ServiceError {
    /// The shard it could not start on.
    pub shard: usize,
    /// What was missing or failed.
    pub reason: String,
}

/// Why the server did not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `--shards`/`--cpus` name CPUs this process may not use, or too few.
    #[error(transparent)]
    Placement(#[from] tether_shards::PlacementError),
    /// A listener (`ws://` or `wss://`) could not be bound on every shard.
    #[error(transparent)]
    Listen(#[from] tether_shards::ListenerError),
    /// The admin address is taken or not local.
    #[error("cannot bind the admin endpoint on {addr}: {source} (choose another --admin address)")]
    Admin {
        /// The `--admin` address.
        addr: std::net::SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A shard's thread or its service did not start (the node starts whole or not at all).
    #[error(transparent)]
    Start(#[from] tether_shards::StartError),
    /// io_uring is refused (seccomp, sysctl) or missing: no shard could start.
    #[error(transparent)]
    IoUring(#[from] tether_shards::IoUringUnavailable),
    /// SIGTERM/SIGINT/SIGHUP could not be blocked for the signal thread.
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    /// A bound listener cannot report its address.
    #[error("cannot read the {scheme} listener's address: {source}")]
    ListenerAddress {
        /// `ws://` or `wss://`.
        scheme: &'static str,
        /// The `getsockname` error.
        source: std::io::Error,
    },
    /// A node thread beside the shards (admin, reload, signal) could not be spawned.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// Which thread.
        name: &'static str,
        /// The spawn error (thread limit, memory).
        source: std::io::Error,
    },
    /// A shard panicked while the node ran.
    #[error(transparent)]
    Shards(#[from] tether_shards::ShardsPanicked),
    /// A certificate or key cannot be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Node-level work run on every SIGHUP (e.g. reading a key file again).
type HangupHook = Box<dyn Fn() + Send>;

/// A node about to run: configuration, placement, per-shard services and node-level hooks.
pub struct Server {
    config: ServerConfig,
    placement: Placement,
    services: Vec<ServiceFactory>,
    metrics_sources: Vec<admin::MetricsSource>,
    readiness: Vec<admin::ReadinessCheck>,
    on_hangup: Vec<HangupHook>,
}

impl Server {
    /// A server on the placement `config` asks for (discovered here, once), with `/echo`
    /// registered when `config.echo` is set.
    pub fn new(config: ServerConfig) -> Result<Server, ServeError> {
        let placement = Placement::discover(config.shards, config.cpus.as_deref())?;
        let mut s = Server {
            config,
            placement,
            services: Vec::new(),
            metrics_sources: Vec::new(),
            readiness: Vec::new(),
            on_hangup: Vec::new(),
        };
        if s.config.echo {
            s = s.endpoint("/echo", |_| Rc::new(endpoint::Echo));
        }
        Ok(s)
    }

    /// Shards the node will run (one per CPU of its placement).
    pub fn shard_count(&self) -> usize {
        self.placement.shards()
    }

    /// Adds a per-shard service: `factory` runs on every shard while it starts and returns the
    /// endpoints and tasks of that shard's instance.
    pub fn per_shard(
        mut self,
        factory: impl Fn(&Rc<ShardCtx>) -> Result<ShardService, ServiceError> + Send + Sync + 'static,
    ) -> Server {
        self.services.push(Arc::new(factory));
        self
    }

    /// Adds a per-shard service built from one value per shard: `values[i]` is moved to shard
    /// `i` and handed to `factory` there (e.g. the shard's bus link, made before the node
    /// starts). Panics unless there is exactly one value per shard.
    pub fn per_shard_with<T: Send + 'static>(
        self,
        values: Vec<T>,
        factory: impl Fn(&Rc<ShardCtx>, T) -> Result<ShardService, ServiceError> + Send + Sync + 'static,
    ) -> Server {
        assert_eq!(values.len(), self.shard_count(), "one value per shard");
        // Each shard takes its own slot, once, while it starts.
        let slots = Mutex::new(values.into_iter().map(Some).collect::<Vec<_>>());
        self.per_shard(move |ctx| {
            let value = slots
                .lock()
                .ok()
                .and_then(|mut s| s.get_mut(ctx.index).and_then(Option::take))
                .ok_or_else(|| ServiceError {
                    shard: ctx.index,
                    reason: "the shard's value was taken already".to_string(),
                })?;
            factory(ctx, value)
        })
    }

    /// Serves `path` with the endpoint `factory` builds on each shard (a per-shard service
    /// with one endpoint and no task).
    pub fn endpoint(
        self,
        path: &str,
        factory: impl Fn(&Rc<ShardCtx>) -> Rc<dyn Endpoint> + Send + Sync + 'static,
    ) -> Server {
        let path = path.to_string();
        self.per_shard(move |ctx| Ok(ShardService::new().endpoint(&path, factory(ctx))))
    }

    /// Runs `hook` on every SIGHUP, on the node's one SIGHUP thread, after the TLS certificate
    /// reload (a process-directed signal reaches one waiting thread only, so nothing else may
    /// wait for SIGHUP itself).
    pub fn on_hangup(mut self, hook: impl Fn() + Send + 'static) -> Server {
        self.on_hangup.push(Box::new(hook));
        self
    }

    /// Adds text to every `/metrics` answer (Prometheus format; e.g. the bus's counters).
    pub fn metrics_source(
        mut self,
        source: impl Fn(&mut String) + Send + Sync + 'static,
    ) -> Server {
        self.metrics_sources.push(Arc::new(source));
        self
    }

    /// Adds a condition to `/readyz` (e.g. "the bus is connected"); `Err` carries the reason
    /// shown in the 503 answer. Called on the admin thread for every readiness request.
    pub fn readiness_check(
        mut self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Server {
        self.readiness.push(Arc::new(check));
        self
    }

    /// Starts the node, serves until SIGTERM/SIGINT, drains, returns. Blocks the calling
    /// thread, which must be the process's main thread before any other thread is spawned
    /// (it blocks SIGTERM/SIGINT for every thread and waits for them itself).
    pub fn run(self) -> Result<(), ServeError> {
        let signals = Signals::block().map_err(ServeError::Signals)?;
        tether_shards::uring::probe()?;
        let cfg = Arc::new(self.config);

        let open_files_limit = match node::raise_open_files_limit() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE");
                1024
            }
        };
        let placement = self.placement;
        let n = placement.shards();
        let Listeners {
            ws: listeners,
            ws_addr: listen_addr,
            wss: tls_listeners,
            wss_addr: tls_addr,
            certs: tls_certs,
        } = bind_listeners(&cfg, n)?;
        let admin_listener =
            std::net::TcpListener::bind(cfg.admin).map_err(|source| ServeError::Admin {
                addr: cfg.admin,
                source,
            })?;
        let admin_addr = admin_listener.local_addr().unwrap_or(cfg.admin);

        // Until the shards exist, estimate their descriptors (eventfd, io_uring rings, timers).
        let estimate = open_files_capacity(&cfg, open_files_limit, node::open_fds() + n * 16);
        let node_shared = Arc::new(NodeShared::new(estimate.connections, open_files_limit));
        let metrics: Vec<Arc<ShardMetrics>> = (0..n).map(|_| Arc::default()).collect();
        let (controls, pings, payloads) = shard_payloads(listeners, tls_listeners, &metrics);

        let services = self.services;
        let on_hangup = self.on_hangup;
        let mut metrics_sources = self.metrics_sources;
        if let Some(certs) = &tls_certs {
            let certs = certs.clone();
            metrics_sources.push(Arc::new(move |out: &mut String| certs.metrics.render(out)));
        }
        let shard_tls = tls_certs.clone();
        let readiness = self.readiness;
        let shared = node_shared.clone();
        let cfg2 = cfg.clone();
        let node = Node::start::<ShardMsg, _, _, _>(
            NodeConfig::new(placement.clone()),
            payloads,
            move |shard, payload| {
                shard_main(
                    shard,
                    payload,
                    &services,
                    shard_tls.as_ref(),
                    &cfg2,
                    &shared,
                )
            },
        )?;

        let capacity = open_files_capacity(&cfg, open_files_limit, node::open_fds());
        node_shared.set_capacity(capacity.connections);
        log_serving(
            &cfg,
            (listen_addr, tls_addr, admin_addr),
            &placement,
            open_files_limit,
            &capacity,
        );
        admin::spawn(
            admin_listener,
            admin::AdminState {
                shards: metrics.clone(),
                node: node_shared.clone(),
                extra: metrics_sources,
                readiness,
                pings,
            },
        )
        .map_err(|source| ServeError::Thread {
            name: "admin",
            source,
        })?;
        // Listeners and admin endpoint are up: tell systemd (Type=notify) we are ready.
        notify::notify_or_log("READY=1");

        spawn_reload_thread(tls_certs, on_hangup)?;

        spawn_signal_thread(
            signals,
            node_shared,
            node.stop_handle(),
            controls,
            (cfg.drain_delay, cfg.drain_time),
        )?;

        node.join().map_err(ServeError::Shards)?;
        tracing::info!("tether stopped");
        Ok(())
    }
}

/// The node's client listeners, one socket per shard, bound before any shard starts.
struct Listeners {
    /// The `ws://` sockets.
    ws: Vec<std::net::TcpListener>,
    /// The address they are bound to (the port chosen when `listen` asked for port 0).
    ws_addr: std::net::SocketAddr,
    /// The `wss://` socket of each shard; all `None` without TLS.
    wss: Vec<Option<std::net::TcpListener>>,
    /// The `wss://` address; `None` without TLS.
    wss_addr: Option<std::net::SocketAddr>,
    /// The certificates, loaded; `None` without TLS.
    certs: Option<Arc<tls::TlsCerts>>,
}

/// Binds `n` `SO_REUSEPORT` sockets on `listen` and, with TLS, loads the certificates and
/// binds `n` on `tls.listen`.
fn bind_listeners(cfg: &ServerConfig, n: usize) -> Result<Listeners, ServeError> {
    let ws = listener::bind_reuseport_group(cfg.listen, n, cfg.backlog)?;
    let ws_addr = ws[0]
        .local_addr()
        .map_err(|source| ServeError::ListenerAddress {
            scheme: "ws://",
            source,
        })?;
    let Some(t) = &cfg.tls else {
        return Ok(Listeners {
            ws,
            ws_addr,
            wss: (0..n).map(|_| None).collect(),
            wss_addr: None,
            certs: None,
        });
    };
    let certs = Arc::new(tls::TlsCerts::load(t.files.clone())?);
    let wss = listener::bind_reuseport_group(t.listen, n, cfg.backlog)?;
    let wss_addr = wss[0]
        .local_addr()
        .map_err(|source| ServeError::ListenerAddress {
            scheme: "wss://",
            source,
        })?;
    Ok(Listeners {
        ws,
        ws_addr,
        wss: wss.into_iter().map(Some).collect(),
        wss_addr: Some(wss_addr),
        certs: Some(certs),
    })
}

/// How many connections the node admits with `open_fds` descriptors already in use.
struct Capacity {
    /// Descriptors in use when it was worked out.
    open_fds: usize,
    /// Connections the open-files limit leaves room for.
    fds: usize,
    /// `fds`, capped by `max_connections` when that is set.
    connections: usize,
}

/// The "tether serving" line (tests and operators read the bound addresses from it), and a
/// warning when the open-files limit leaves room for few connections.
fn log_serving(
    cfg: &ServerConfig,
    (listen_addr, tls_addr, admin_addr): (
        std::net::SocketAddr,
        Option<std::net::SocketAddr>,
        std::net::SocketAddr,
    ),
    placement: &Placement,
    open_files_limit: u64,
    capacity: &Capacity,
) {
    tracing::info!(
        listen = %listen_addr,
        tls_listen = %tls_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        admin = %admin_addr,
        shards = placement.shards(),
        cpus = %format_cpu_list(&placement.cpus),
        open_files_limit,
        open_fds = capacity.open_fds,
        open_files_capacity = capacity.fds,
        max_connections = cfg.max_connections,
        capacity_connections = capacity.connections,
        echo = cfg.echo,
        "tether serving"
    );
    if (capacity.fds as u64) < open_files_limit / 2 || capacity.fds < 1024 {
        tracing::warn!(
            open_files_limit,
            "open-files limit allows only {} connections; raise LimitNOFILE / ulimit -Hn (docs/operations.md)",
            capacity.fds
        );
    }
}

/// The connections the node admits: the open-files limit's room with `open_fds` descriptors in
/// use, capped by `max_connections` when set.
fn open_files_capacity(cfg: &ServerConfig, open_files_limit: u64, open_fds: usize) -> Capacity {
    let fds = node::open_files_capacity(open_files_limit, open_fds);
    let connections = if cfg.max_connections > 0 {
        fds.min(cfg.max_connections)
    } else {
        fds
    };
    Capacity {
        open_fds,
        fds,
        connections,
    }
}

/// What [`Node::start`] moves to each shard: its `ws://` and `wss://` listeners, its counters,
/// its control queue and its readiness-ping queue.
type ShardPayload = (
    (std::net::TcpListener, Option<std::net::TcpListener>),
    Arc<ShardMetrics>,
    flume::Receiver<ShardControl>,
    flume::Receiver<admin::ShardPing>,
);

/// Each shard's payload, and the node's ends of their control and readiness-ping queues (in
/// shard order).
fn shard_payloads(
    listeners: Vec<std::net::TcpListener>,
    tls_listeners: Vec<Option<std::net::TcpListener>>,
    metrics: &[Arc<ShardMetrics>],
) -> (
    Vec<flume::Sender<ShardControl>>,
    Vec<flume::Sender<admin::ShardPing>>,
    Vec<ShardPayload>,
) {
    let n = listeners.len();
    let mut controls = Vec::with_capacity(n);
    let mut pings = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    for ((l, tl), m) in listeners.into_iter().zip(tls_listeners).zip(metrics) {
        let (tx, rx) = flume::bounded::<ShardControl>(4);
        let (ping_tx, ping_rx) = flume::bounded::<admin::ShardPing>(admin::SHARD_PING_QUEUE);
        controls.push(tx);
        pings.push(ping_tx);
        payloads.push(((l, tl), m.clone(), rx, ping_rx));
    }
    (controls, pings, payloads)
}

/// A shard's `init`, on its thread: its listeners handed to glommio, its [`ShardCtx`], the
/// routes and tasks of every per-shard service; returns the shard's main future.
fn shard_main(
    shard: tether_shards::Shard<ShardMsg>,
    ((std_listener, tls_listener), metrics, control, pings): ShardPayload,
    services: &[ServiceFactory],
    shard_tls: Option<&Arc<tls::TlsCerts>>,
    cfg: &Arc<ServerConfig>,
    shared: &Arc<NodeShared>,
) -> Result<impl Future<Output = ()>, String> {
    let listener = listener::into_glommio(std_listener)
        .map_err(|e| format!("cannot make the listener non-blocking: {e}"))?;
    let tls_listener = match (tls_listener, shard_tls) {
        (Some(l), Some(certs)) => Some((
            listener::into_glommio(l)
                .map_err(|e| format!("cannot make the wss:// listener non-blocking: {e}"))?,
            certs.clone(),
        )),
        _ => None,
    };
    let ctx = Rc::new(ShardCtx::new(
        shard.index,
        shard.count,
        shard.cpu,
        cfg.clone(),
        metrics,
        shared.clone(),
        shard.mesh,
    ));
    let mut routes: AHashMap<String, Rc<dyn Endpoint>> = AHashMap::new();
    let mut tasks = Vec::new();
    let mut drained = Vec::new();
    for f in services {
        let service = f(&ctx).map_err(|e| e.to_string())?;
        routes.extend(service.routes);
        tasks.extend(service.tasks);
        drained.extend(service.drained);
    }
    ctx.set_routes(routes);
    Ok(run_shard(
        ctx,
        listener,
        tls_listener,
        control,
        pings,
        (tasks, drained),
    ))
}

/// SIGHUP reloads the TLS certificates (new connections get the new ones) and runs the
/// `on_hangup` hooks, on the `tether-reload` thread; with neither it is logged and ignored.
fn spawn_reload_thread(
    tls_certs: Option<Arc<tls::TlsCerts>>,
    on_hangup: Vec<HangupHook>,
) -> Result<(), ServeError> {
    // SIGHUP reloads the TLS certificate (new connections get the new one) and runs the
    // `on_hangup` hooks; with neither it is logged and ignored.
    std::thread::Builder::new()
        .name("tether-reload".to_string())
        .spawn(move || {
            while Signals::wait_hangup().is_ok() {
                if let Some(certs) = &tls_certs {
                    let certs_files = certs.files().iter().map(|f| f.cert.display().to_string()).collect::<Vec<_>>().join(",");
                    match certs.reload() {
                        Ok(()) => tracing::info!(certs = %certs_files, "SIGHUP: TLS certificates reloaded; new connections get them"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; the certificates in use stay"),
                    }
                } else if on_hangup.is_empty() {
                    tracing::info!("SIGHUP: nothing to reload");
                }
                for hook in &on_hangup {
                    hook();
                }
            }
        })
        .map_err(|source| ServeError::Thread {
            name: "reload",
            source,
        })?;
    Ok(())
}

/// The `tether-signals` thread: the first SIGTERM/SIGINT makes the node unready, then (after
/// `drain_delay`) sends every shard the drain with its deadline, and a watchdog stops the
/// shards `drain_time` + [`DRAINED_HOOKS_TIME_MAX`] later; a second signal stops at once.
fn spawn_signal_thread(
    signals: Signals,
    node_shared: Arc<NodeShared>,
    stop: tether_shards::node::StopHandle,
    controls: Vec<flume::Sender<ShardControl>>,
    (drain_delay, drain_time): (Duration, Duration),
) -> Result<(), ServeError> {
    std::thread::Builder::new()
        .name("tether-signals".to_string())
        .spawn(move || {
            let Ok(sig) = signals.wait() else { return };
            node_shared.draining.store(true, Ordering::SeqCst);
            notify::notify_or_log("STOPPING=1");
            if !drain_delay.is_zero() {
                tracing::info!(
                    signal = sig,
                    drain_delay_ms = drain_delay.as_millis() as u64,
                    "not ready; still accepting for drain_delay before draining"
                );
                if let Some(sig) = signals.wait_timeout(drain_delay) {
                    tracing::warn!(signal = sig, "second signal: stopping now");
                    stop.stop();
                    return;
                }
            }
            let deadline = Instant::now() + drain_time;
            tracing::info!(
                signal = sig,
                drain_ms = drain_time.as_millis() as u64,
                "draining"
            );
            for c in &controls {
                let _ = c.send(ShardControl::Drain { deadline });
            }
            let watchdog = stop.clone();
            let _ = std::thread::Builder::new()
                .name("tether-deadline".to_string())
                .spawn(move || {
                    // A shard that drained at the deadline still runs its hooks (a NATS
                    // connection writing the drain's `disconnect` events).
                    std::thread::sleep(
                        drain_time + DRAINED_HOOKS_TIME_MAX + Duration::from_millis(200),
                    );
                    tracing::warn!("drain deadline passed: stopping shards");
                    watchdog.stop();
                });
            if let Ok(sig) = signals.wait() {
                tracing::warn!(signal = sig, "second signal: stopping now");
                stop.stop();
            }
        })
        .map_err(|source| ServeError::Thread {
            name: "signal",
            source,
        })?;
    Ok(())
}

/// A shard's main future: starts its tasks, waits for the drain command, drains.
async fn run_shard(
    ctx: Rc<ShardCtx>,
    listener: tether_shards::listener::ShardListener,
    tls_listener: Option<(tether_shards::listener::ShardListener, Arc<tls::TlsCerts>)>,
    control: flume::Receiver<ShardControl>,
    pings: flume::Receiver<admin::ShardPing>,
    (services, drained): (Vec<ShardTask>, Vec<DrainedHook>),
) {
    for s in services {
        glommio::spawn_local(s).detach();
    }
    glommio::spawn_local(tasks::answer_pings(pings)).detach();
    let (stop_accept, stop_rx) = flume::bounded::<()>(2);
    glommio::spawn_local(tasks::accept_loop(
        ctx.clone(),
        listener,
        None,
        stop_rx.clone(),
    ))
    .detach();
    if let Some((l, certs)) = tls_listener {
        glommio::spawn_local(tasks::accept_loop(ctx.clone(), l, Some(certs), stop_rx)).detach();
    }
    glommio::spawn_local(tasks::sweeper(ctx.clone())).detach();
    glommio::spawn_local(tasks::mesh_loop(ctx.clone())).detach();
    match control.recv_async().await {
        Ok(ShardControl::Drain { deadline }) => {
            // One stop per accept loop (the channel holds two).
            let _ = stop_accept.try_send(());
            let _ = stop_accept.try_send(());
            tasks::drain(ctx, deadline).await;
            for hook in drained {
                hook().await;
            }
        }
        Err(_) => {
            // The node's main thread is gone: stop.
        }
    }
}

/// SIGTERM and SIGINT, blocked in every thread and awaited with `sigwait`.
struct Signals {
    set: libc::sigset_t,
}

// SAFETY: a sigset_t is a plain bit set; sharing it between threads is sound.
unsafe impl Send for Signals {}

impl Signals {
    fn block() -> std::io::Result<Signals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
        }
        // SIGHUP (certificate reload) is blocked too, and awaited by its own thread
        // ([`Signals::wait_hangup`]).
        let mut blocked = set;
        // SAFETY: `blocked` is an initialised sigset_t; SIGHUP is a valid signal number.
        unsafe { libc::sigaddset(&mut blocked, libc::SIGHUP) };
        // SAFETY: `blocked` is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Signals { set })
    }

    /// Waits for the next SIGHUP (blocked in every thread by [`Signals::block`]).
    fn wait_hangup() -> std::io::Result<()> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; SIGHUP is a valid signal number.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGHUP);
        }
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised and SIGHUP is blocked; `sig` is writable.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Waits for the next SIGTERM/SIGINT; returns its number.
    fn wait(&self) -> std::io::Result<i32> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is an initialised sigset_t whose signals are blocked; `sig` is
        // writable.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }

    /// Waits up to `timeout` for the next SIGTERM/SIGINT; its number, or None at the timeout.
    fn wait_timeout(&self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `self.set` is an initialised sigset_t whose signals are blocked; `ts` is
            // a valid timespec; the siginfo out-pointer may be null.
            let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            if sig > 0 {
                return Some(sig);
            }
            // EAGAIN: the timeout passed; EINTR: another signal interrupted the wait.
        }
    }
}
