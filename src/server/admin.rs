//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`; `GET` and
//! `HEAD`.
//!
//! It runs on its own thread, away from the shards, so a scrape never delays connection work
//! and a stuck shard cannot hide the metrics that would show it. The thread runs a tokio
//! current-thread runtime and serves HTTP/1.1 with hyper (the maintained HTTP library; tokio
//! and hyper are already in the tree through the JWKS fetcher and the bench harness), one task per
//! connection, so a slow client holds only its own task: `/healthz` is answered while others
//! trickle. Limits: at most [`ADMIN_CONNECTIONS_MAX`] connections at once (more are closed at
//! accept and counted in `tether_admin_refused_total`), one request per connection, a head of
//! at most [`ADMIN_HEAD_BYTES_MAX`] bytes (431 beyond), and [`ADMIN_REQUEST_TIMEOUT`] from
//! accept until the response is written, whatever the client does (then the connection is
//! closed and counted in `tether_admin_timeouts_total`).
//!
//! `/healthz` is 200 while the process runs. `/readyz` is 200 when a new device would be
//! served: the node is not draining, every shard answers a ping within
//! [`SHARD_PING_TIMEOUT`], and every registered readiness check passes (the bus is connected);
//! otherwise 503 with the first reason in the body.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::TcpListener,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{
    metrics::{self, ShardMetrics},
    node::NodeShared,
};

/// Time an admin client has from accept until its response is written.
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest admin request head (hyper's smallest allowed read buffer).
pub const ADMIN_HEAD_BYTES_MAX: usize = 8192;
/// Admin connections served at once; each is a task and a descriptor from the node's reserve
/// (`node::FDS_RESERVED`). Probes and scrapes need a handful.
pub const ADMIN_CONNECTIONS_MAX: usize = 16;
/// Time every shard has to answer the readiness ping.
pub const SHARD_PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Readiness pings that may wait in a shard's queue; a full queue means the shard is not
/// answering.
pub const SHARD_PING_QUEUE: usize = 16;

/// Appends more metrics text to `/metrics` (registered with `Server::metrics_source`).
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;
/// A condition `/readyz` requires (registered with `Server::readiness_check`); `Err` holds the
/// reason shown in the 503 body.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// A readiness ping to a shard: the shard answers by sending on it.
pub type ShardPing = tokio::sync::oneshot::Sender<()>;

/// What the admin thread reads.
pub struct AdminState {
    /// Every shard's counters, in shard order (summed or labelled by shard in `/metrics`).
    pub shards: Vec<Arc<ShardMetrics>>,
    /// Node-wide state: draining, capacity, open-files limit.
    pub node: Arc<NodeShared>,
    /// Other parts of the node (e.g. the messaging bus).
    pub extra: Vec<MetricsSource>,
    /// Conditions of readiness besides the shards answering (e.g. the bus connected).
    pub readiness: Vec<ReadinessCheck>,
    /// One ping queue per shard, in shard order.
    pub pings: Vec<flume::Sender<ShardPing>>,
}

/// The admin endpoint's own counters.
#[derive(Debug, Default)]
struct AdminCounters {
    open: AtomicUsize,
    refused: AtomicU64,
    timeouts: AtomicU64,
}

/// Serves admin requests on `listener` until the process exits.
pub fn spawn(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("tether-admin".to_string())
        .spawn(move || runtime.block_on(serve(listener, Arc::new(state))))
        .map(|_| ())
}

async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin endpoint cannot start");
            return;
        }
    };
    let counters = Arc::new(AdminCounters::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if counters.open.load(Ordering::Relaxed) >= ADMIN_CONNECTIONS_MAX {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                max = ADMIN_CONNECTIONS_MAX,
                "admin connection refused: too many open"
            );
            drop(stream);
            continue;
        }
        counters.open.fetch_add(1, Ordering::Relaxed);
        let (state, counters) = (state.clone(), counters.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            // The whole-request deadline below is the only timer (hyper's own header timeout
            // is off so that every cut-off is counted in one place).
            http.keep_alive(false)
                .max_buf_size(ADMIN_HEAD_BYTES_MAX)
                .header_read_timeout(None);
            let service = hyper::service::service_fn(|req| {
                let (state, counters) = (state.clone(), counters.clone());
                async move { Ok::<_, Infallible>(respond(&state, &counters, req).await) }
            });
            let conn = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(ADMIN_REQUEST_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "admin request failed"),
                Err(_) => {
                    counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        timeout_ms = ADMIN_REQUEST_TIMEOUT.as_millis() as u64,
                        "admin request not completed in time: connection closed"
                    );
                }
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

async fn respond(
    state: &AdminState,
    counters: &AdminCounters,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let shards: Vec<&ShardMetrics> = state.shards.iter().map(|m| m.as_ref()).collect();
            let mut body = metrics::render(&shards, state.node.gauges());
            render_admin(counters, &mut body);
            metrics::render_process(&mut body);
            for source in &state.extra {
                source(&mut body);
            }
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness(state).await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Why `/readyz` answers 503 (the text follows "not ready: " in the body).
#[derive(Debug, thiserror::Error)]
enum NotReady {
    /// The node is draining (SIGTERM): it takes no new connections.
    #[error("draining")]
    Draining,
    /// A registered [`ReadinessCheck`] failed, with its reason.
    #[error("{0}")]
    Check(String),
    /// The shard's ping queue ([`SHARD_PING_QUEUE`]) is full.
    #[error("shard {shard} is not answering (ping queue full)")]
    PingQueueFull {
        /// The shard's index.
        shard: usize,
    },
    /// The shard dropped the ping without answering: its executor has stopped.
    #[error("shard {shard} has stopped")]
    Stopped {
        /// The shard's index.
        shard: usize,
    },
    /// The shard did not answer within [`SHARD_PING_TIMEOUT`].
    #[error("shard {shard} did not answer within {waited_ms} ms")]
    Silent {
        /// The shard's index.
        shard: usize,
        /// [`SHARD_PING_TIMEOUT`] in milliseconds.
        waited_ms: u128,
    },
}

/// Whether a new device would be served now; `Err` says why not.
async fn readiness(state: &AdminState) -> Result<(), NotReady> {
    if state.node.draining.load(Ordering::Relaxed) {
        return Err(NotReady::Draining);
    }
    for check in &state.readiness {
        check().map_err(NotReady::Check)?;
    }
    let mut answers = Vec::with_capacity(state.pings.len());
    for (shard, ping) in state.pings.iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if ping.try_send(tx).is_err() {
            return Err(NotReady::PingQueueFull { shard });
        }
        answers.push((shard, rx));
    }
    let deadline = tokio::time::Instant::now() + SHARD_PING_TIMEOUT;
    for (shard, rx) in answers {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NotReady::Stopped { shard }),
            Err(_) => {
                return Err(NotReady::Silent {
                    shard,
                    waited_ms: SHARD_PING_TIMEOUT.as_millis(),
                })
            }
        }
    }
    Ok(())
}

fn render_admin(c: &AdminCounters, out: &mut String) {
    let _ = write!(
        out,
        "# HELP tether_admin_refused_total Admin connections closed at accept: {ADMIN_CONNECTIONS_MAX} already open.\n\
         # TYPE tether_admin_refused_total counter\n\
         tether_admin_refused_total {}\n\
         # HELP tether_admin_timeouts_total Admin connections closed because the request and response took longer than {} ms.\n\
         # TYPE tether_admin_timeouts_total counter\n\
         tether_admin_timeouts_total {}\n",
        c.refused.load(Ordering::Relaxed),
        ADMIN_REQUEST_TIMEOUT.as_millis(),
        c.timeouts.load(Ordering::Relaxed),
    );
}
