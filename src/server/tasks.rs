//! The shard's own tasks: the accept loop, the liveness sweeper, the mesh receiver, the
//! readiness pings and the drain. Each runs on its shard with the shard's [`ShardCtx`]; a connection's task is
//! [`super::conn_task::run`], spawned by the accept loop.

use std::{
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use tether_shards::listener::ShardListener;

use super::{
    conn::ConnId,
    conn_task, metrics,
    shard::{ShardCtx, ShardMsg},
    tls::{ConnStream, TlsCerts, TlsStream},
};

/// Connections accepted back to back before the accept loop lets other tasks run.
const ACCEPT_BURST: u32 = 16;

/// Longest pause of the accept loop after an accept error (e.g. EMFILE).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Accepts until `stop` fires; each socket gets its own task (with TLS over it when `tls` is
/// set: a `wss://` listener).
pub(super) async fn accept_loop(
    ctx: Rc<ShardCtx>,
    listener: ShardListener,
    tls: Option<Arc<TlsCerts>>,
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
                Ok((tcp, peer)) => {
                    let stream = match &tls {
                        None => ConnStream::Plain(tcp),
                        Some(certs) => match TlsStream::accept(tcp, certs.clone()) {
                            Ok(s) => ConnStream::Tls(Box::new(s)),
                            Err(e) => {
                                tracing::warn!(shard = ctx.index, error = %e, "cannot start a TLS session");
                                continue;
                            }
                        },
                    };
                    let admitted = ctx.node.try_admit();
                    glommio::spawn_local(conn_task::run(ctx.clone(), stream, peer, admitted))
                        .detach();
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

/// Pings silent connections, drops those silent past `silence_timeout`, and closes those that
/// started a message more than `message_timeout` ago without completing it.
pub(super) async fn sweeper(ctx: Rc<ShardCtx>) {
    let cfg = &ctx.config;
    let ping_ms = cfg.ping_idle.as_millis() as u64;
    let silence_ms = cfg.silence_timeout.as_millis() as u64;
    let message_ms = cfg.message_timeout.as_millis() as u64;
    let tick = (cfg
        .ping_idle
        .min(cfg.silence_timeout - cfg.ping_idle)
        .min(cfg.message_timeout)
        / 4)
    .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        glommio::timer::sleep(tick).await;
        let now = ctx.now_ms();
        ctx.for_each_connection(|conn| conn.sweep(now, ping_ms, silence_ms, message_ms));
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
    while let Some(msg) = ctx.mesh().recv().await {
        match msg {
            ShardMsg::Run(f) => f(&ctx),
        }
    }
}

/// Drains the shard: the caller has stopped the listener. Closes connections with 1001 in
/// batches spread over the first three quarters of the time left (the rest is for close
/// handshakes), then waits until every connection and handshake is gone or the deadline.
pub(super) async fn drain(ctx: Rc<ShardCtx>, deadline: Instant) {
    ctx.start_drain(deadline);
    let start = Instant::now();
    let window = deadline.saturating_duration_since(start) * 3 / 4;
    let tick = (window / 20).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let ticks = (window.as_millis() / tick.as_millis().max(1)).max(1) as usize;
    let targets: Vec<ConnId> = ctx.connection_ids();
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
        if next == targets.len() || ctx.connection_count() == 0 {
            break;
        }
        glommio::timer::sleep(tick).await;
    }
    loop {
        // Connections upgraded after the snapshot (handshake finished just before the drain).
        for c in ctx.connections() {
            c.close(1001, "server draining");
        }
        if ctx.connection_count() == 0 && ctx.handshaking() == 0 {
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
