//! The `/ws` endpoint on the server's seam: authentication before the 101, then each session
//! handed to its shard's [`Hub`], and the shard's bus loop as a per-shard service.
//!
//! [`install`] starts the bus (embedded, or one NATS connection per shard) for the server's
//! shards and adds one per-shard service to the [`Server`] ([`Server::per_shard_with`]): each
//! shard is handed its own [`ShardBus`], starts it, builds its hub, and returns the `/ws`
//! endpoint and the hub's bus loop (with its tick, run when the hub says it is due) side by
//! side, sharing the hub, and
//! the bus's flush and close after the drain. It also registers the bus and device metrics and
//! the bus's readiness check, so `main` only parses and runs.

use super::config::{AuthMode, MessagingConfig};
use super::hub::{DeviceStats, Hub, Outlet};
use super::keys;
use super::sessions::{DeviceSessions, REPLACED_CLOSE_CODE, REPLACED_CLOSE_REASON};
use super::tick;
use crate::auth::{self, AuthError, AuthRequest, Claims};
use crate::bus::{self, BusConfig, ShardBus};
use crate::server::conn::ConnHandle;
use crate::server::endpoint::{Accepted, ConnInfo, Endpoint, LocalFuture, Rejected, Session};
use crate::server::metrics::HandshakeResult;
use crate::server::shard::ShardCtx;
use crate::server::{Server, ServiceError, ShardService};
use crate::ws::{MessageKind, UpgradeRequest};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Bus inputs handled in one go before the hub loop yields to the shard's other tasks.
const BATCH_MAX: usize = 256;

type ShardHub = Rc<RefCell<Hub<ConnHandle>>>;

impl Outlet for ConnHandle {
    fn send_text(&self, text: &str) -> bool {
        self.send(MessageKind::Text, text.as_bytes()).is_ok()
    }

    fn close(&self, code: u16, reason: &'static str) {
        crate::server::conn::Conn::close(self, code, reason);
    }
}

/// How long a shard's NATS connection gets to flush after the drain before it closes (the
/// shard's only drained hook: all the time hooks get).
const BUS_STOP_TIMEOUT: Duration = crate::server::DRAINED_HOOKS_TIME_MAX;

/// Starts the bus for the server's shards and adds `/ws`, the per-shard hub, the messaging
/// metrics, the bus's readiness check and the bus's stop. `Err`: the bus or the JWKS refresh
/// did not start.
pub fn install(mut server: Server, mut config: MessagingConfig) -> Result<Server, String> {
    let shards = server.shard_count();
    let devices = Arc::new(DeviceStats::starting_now().with_latency_for(shards));
    // Before any thread starts (the JWKS and bus threads just below, the shards later), so that
    // all inherit the mask and SIGHUP reaches only the server's SIGHUP thread, never the default
    // action (exit) on a thread that does not block it.
    keys::block_sighup()?;
    if let (Some(source), AuthMode::Jwt(verifier)) = (config.jwks.clone(), &mut config.auth) {
        if let Some(hangup) = keys::start(source, verifier, devices.jwks.clone())? {
            server = server.on_hangup(move || {
                // Full: a reload is already pending, which reads the file as it is now.
                let _ = hangup.try_send(());
            });
        }
    }
    let (links, bus_node) = bus::start_with(
        &BusConfig {
            node: config.node_id.clone(),
            shards,
            queue_len: config.bus_queue_len,
            nats_urls: config.nats.clone(),
            durable: config.durable.clone(),
        },
        &config.nats_auth,
    )?;
    match &config.auth {
        AuthMode::Insecure => tracing::warn!(
            "INSECURE: --insecure-no-auth is set; /ws accepts any device without a token. \
             Never run this outside a closed test network."
        ),
        AuthMode::Jwt(_) => tracing::info!(node = %config.node_id, "device authentication: JWT"),
    }
    tracing::info!(
        node = %config.node_id,
        bus = if config.nats.is_empty() { "embedded" } else { "nats" },
        nats = %config.nats.join(","),
        "messaging bus started"
    );
    let sessions = Arc::new(DeviceSessions::new(config.sessions_per_device_max));
    let sessions_metrics = sessions.clone();
    let config = Arc::new(config);
    let stats = devices.clone();
    let bus_stats = bus_node.stats();
    let bus_connected = bus_stats.clone();
    let device_stats = devices.clone();
    let server = server
        .per_shard_with(links, move |ctx: &Rc<ShardCtx>, mut bus: ShardBus| {
            // On the shard: its NATS connection runs on its own executor.
            bus.start().map_err(|reason| ServiceError {
                shard: ctx.index,
                reason,
            })?;
            let mut hub = Hub::new(bus, config.limits.clone(), stats.clone());
            if let AuthMode::Jwt(verifier) = &config.auth {
                let verifier = verifier.clone();
                hub.set_token_check(Box::new(move |token| verifier.verify(token)));
            }
            let hub = Rc::new(RefCell::new(hub));
            let endpoint = Rc::new(DeviceEndpoint {
                shared: Rc::new(Shared {
                    shard: ctx.clone(),
                    hub: hub.clone(),
                    sessions: sessions.clone(),
                }),
                config: config.clone(),
                stats: stats.clone(),
            });
            let (drained, drained_ctx) = (hub.clone(), ctx.clone());
            Ok(ShardService::new()
                .endpoint("/ws", endpoint)
                .task(run_hub(hub, ctx.clone()))
                .on_drained(move || {
                    // The drain's disconnect events go out before the shard stops, also those
                    // of sessions whose client did not answer the close by the deadline (the
                    // drain closed them with 1001).
                    let mut hub = drained.borrow_mut();
                    hub.close_remaining(1001, drained_ctx.now_ms());
                    hub.bus().close(BUS_STOP_TIMEOUT)
                }))
        })
        .metrics_source(move |out| {
            sessions_metrics.render_prometheus(out);
            bus_stats.render_prometheus(out);
            device_stats.render_prometheus(out);
        })
        .readiness_check(move || {
            if bus_connected.is_connected() {
                Ok(())
            } else {
                Err("bus disconnected".to_string())
            }
        });
    Ok(server)
}

/// The shard's bus loop: bus inputs to the hub, and the hub's tick whenever its alarm is due
/// (no wake-ups on a shard with nothing due, `super::tick`).
async fn run_hub(hub: ShardHub, ctx: Rc<ShardCtx>) {
    let ticker = {
        let (hub, ctx) = (hub.clone(), ctx.clone());
        let alarm = hub.borrow().alarm();
        glommio::spawn_local(async move {
            loop {
                tick::wait_due(&alarm, || ctx.now_ms()).await;
                hub.borrow_mut().tick(ctx.now_ms());
            }
        })
    };
    ticker.detach();
    let inbox = hub.borrow_mut().bus().inbox();
    while let Some(raw) = inbox.next().await {
        {
            let mut h = hub.borrow_mut();
            let now = ctx.now_ms();
            if let Some(ev) = h.bus().accept(raw) {
                h.on_bus(ev, now);
            }
            for _ in 0..BATCH_MAX {
                let Some(raw) = inbox.try_next() else { break };
                if let Some(ev) = h.bus().accept(raw) {
                    h.on_bus(ev, now);
                }
            }
            h.poke(now);
        }
        glommio::yield_if_needed().await;
    }
}

struct DeviceEndpoint {
    /// What every session of the shard uses, behind one `Rc` each.
    shared: Rc<Shared>,
    config: Arc<MessagingConfig>,
    stats: Arc<DeviceStats>,
}

/// The shard's part of every device session.
struct Shared {
    /// The shard's context (its liveness clock).
    shard: Rc<ShardCtx>,
    hub: ShardHub,
    sessions: Arc<DeviceSessions>,
}

impl DeviceEndpoint {
    /// Counts and logs a refused device, and builds its HTTP answer.
    fn refuse(&self, info: &ConnInfo, err: AuthError) -> Rejected {
        self.stats.auth_failures.count(&err);
        match &err {
            AuthError::Ambiguous(what) => {
                tracing::info!(peer = %info.peer, reason = err.metric_label(), %what, "device refused: ambiguous credentials")
            }
            AuthError::Invalid(why) => {
                tracing::info!(peer = %info.peer, reason = err.metric_label(), %why, "device refused")
            }
            _ => tracing::debug!(peer = %info.peer, reason = err.metric_label(), "device refused"),
        }
        let result = match &err {
            AuthError::Missing => HandshakeResult::MissingToken,
            AuthError::Ambiguous(_) => HandshakeResult::AmbiguousCredentials,
            AuthError::Invalid(_) => HandshakeResult::InvalidToken,
            AuthError::Expired => HandshakeResult::Expired,
            AuthError::NotYetValid => HandshakeResult::NotYetValid,
            AuthError::Denied(_) => HandshakeResult::Forbidden,
            AuthError::Unavailable => HandshakeResult::AuthUnavailable,
        };
        Rejected::new(err.status(), err.body()).counted_as(result)
    }
}

impl Endpoint for DeviceEndpoint {
    fn accept<'a>(
        &'a self,
        req: &'a UpgradeRequest,
        info: &'a ConnInfo,
    ) -> LocalFuture<'a, Result<Accepted, Rejected>> {
        Box::pin(async move {
            let hub = self.shared.hub.clone();
            let protocol =
                auth::negotiate_protocol(&req.protocols).map_err(|m| Rejected::new(400, m))?;
            let claims = match &self.config.auth {
                AuthMode::Insecure => {
                    let device = req
                        .query_param("device")
                        .filter(|d| crate::proto::valid_device_id(d))
                        .ok_or_else(|| {
                            Rejected::new(400, "insecure mode: give ?device=ID (A-Z a-z 0-9 _ -)")
                        })?;
                    self.stats
                        .insecure_sessions_total
                        .fetch_add(1, Ordering::Relaxed);
                    Claims::insecure(&device)
                }
                AuthMode::Jwt(verifier) => {
                    let query_tokens: Vec<String> = req.query_params("token").collect();
                    let (token, _) =
                        auth::extract_token(&req.authorization, &query_tokens, &req.protocols)
                            .and_then(|found| found.ok_or(AuthError::Missing))
                            .map_err(|e| self.refuse(info, e))?;
                    verifier.verify(&token).map_err(|e| self.refuse(info, e))?
                }
            };
            if let Some(subject) = &self.config.auth_subject {
                let request = AuthRequest {
                    device: &claims.sub,
                    node: &self.config.node_id,
                    client_addr: info.peer,
                    claims: &claims,
                };
                let payload = serde_json::to_vec(&request)
                    .map_err(|_| self.refuse(info, AuthError::Unavailable))?;
                let reply = hub.borrow_mut().bus().request(
                    subject,
                    payload.into(),
                    self.config.auth_timeout,
                );
                match reply.await {
                    Ok(answer) => {
                        auth::parse_auth_reply(&answer).map_err(|e| self.refuse(info, e))?
                    }
                    Err(err) => {
                        tracing::warn!(?err, device = %claims.sub, "backend authorisation unavailable");
                        return Err(self.refuse(info, AuthError::Unavailable));
                    }
                }
            }
            let last_seq = match req.query_param("last_seq") {
                None => 0,
                Some(text) => text.parse::<u64>().map_err(|_| {
                    Rejected::new(
                        400,
                        "last_seq must be a durable seq (a non-negative integer)",
                    )
                })?,
            };
            Ok(Accepted {
                protocol: protocol.map(str::to_owned),
                session: Box::new(DeviceSession {
                    shared: self.shared.clone(),
                    claims: Rc::new(claims),
                    last_seq,
                }),
            })
        })
    }
}

/// One device session's part in the endpoint: 24 bytes (issue 15's budget; kept by a test).
struct DeviceSession {
    shared: Rc<Shared>,
    /// Shared with the hub at open.
    claims: Rc<Claims>,
    /// The durable sequence the device says it processed (`?last_seq=N`; 0: none, which is
    /// what the hub makes of an absent one).
    last_seq: u64,
}

impl Session for DeviceSession {
    fn on_open(&mut self, conn: &ConnHandle) {
        let now = self.shared.shard.now_ms();
        {
            let mut hub = self.shared.hub.borrow_mut();
            hub.open(
                conn.id(),
                conn.clone(),
                self.claims.clone(),
                Some(self.last_seq),
                now,
            );
            hub.poke(now);
        }
        if let Some(oldest) = self
            .shared
            .sessions
            .open(self.claims.sub.clone(), conn.id())
        {
            tracing::info!(
                device = %self.claims.sub,
                conn = oldest,
                new_conn = conn.id(),
                max = self.shared.sessions.max(),
                "too many sessions of this device: closing its oldest with {REPLACED_CLOSE_CODE}"
            );
            close_replaced(&self.shared.shard, oldest);
        }
    }

    fn on_message(&mut self, conn: &ConnHandle, kind: MessageKind, data: &[u8]) {
        let mut hub = self.shared.hub.borrow_mut();
        let now = self.shared.shard.now_ms();
        match (kind, std::str::from_utf8(data)) {
            (MessageKind::Text, Ok(text)) => hub.text(conn.id(), text, now),
            _ => hub.binary(conn.id()),
        }
        hub.poke(now);
    }

    fn on_close(&mut self, conn: &ConnHandle, code: u16) {
        {
            let mut hub = self.shared.hub.borrow_mut();
            let now = self.shared.shard.now_ms();
            hub.close(conn.id(), code, now);
            hub.poke(now);
        }
        self.shared.sessions.close(&self.claims.sub, conn.id());
    }
}

/// Closes the replaced session `id` with [`REPLACED_CLOSE_CODE`], on whichever shard holds it.
fn close_replaced(ctx: &Rc<ShardCtx>, id: u64) {
    ctx.invoke_on(ShardCtx::shard_of(id), move |ctx| {
        if let Some(c) = ctx.conn(id) {
            c.close(REPLACED_CLOSE_CODE, REPLACED_CLOSE_REASON);
        }
    });
}

#[cfg(test)]
mod tests {
    /// The endpoint's part of every session (issue 15's budget): 24 bytes, a 32-byte chunk.
    #[test]
    fn a_device_session_stays_within_its_budget() {
        assert!(std::mem::size_of::<super::DeviceSession>() <= 24);
    }
}
