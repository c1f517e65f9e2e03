//! The per-shard device hub: every device session of one shard, and its bus interest.
//!
//! The hub owns the shard's view of messaging: which devices and topics have sessions here
//! (refcounted, so the shard holds one bus subscription per subject however many sessions share
//! it), the operations devices ask for (protocol v1, [`crate::proto`]), deliveries arriving from
//! the bus, `send` acknowledgements waiting for a receipt on the shard's inbox, messages
//! delivered to its sessions that wait for the device's `ack` (receipts, `docs/protocol.md`
//! section 9), backend requests waiting for a device's `reply`, and the connection events and
//! node heartbeat it publishes for backends, and each session's durable mailbox
//! ([`super::mailbox`]: replay after `hello`, live durable messages, acks, receipts), whose
//! JetStream reads and removals go through the bus. It is `!Send`, lives on its shard, never blocks,
//! and talks to sockets only through [`Outlet`], so it is tested without a server.
//!
//! Two clocks: `now_ms` (monotonic, from the shard) times everything local; the wall clock
//! (unix ms) only stamps what crosses nodes: the delivery deadline of a `send` with `ack` and
//! the `at` of events and heartbeats.

use super::mailbox::{self, Mailbox, MailboxLimits};
use super::tick::{TickAlarm, IDLE_TICK_MS, TICK_MS};
use crate::auth::{AuthError, Claims};
use crate::bus::{BusError, BusEvent, BusMessage, DurableEvent, ShardBus};
use crate::few::{Few, Removed};
use crate::proto::{self, subject, AckRef, ClientOp, Delivery, ErrorCode, EventKind, NotDelivered};
use crate::server::metrics::{render_histogram, Histogram};
use ahash::AHashMap;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Connection id (the server's node-unique id).
pub type ConnId = u64;

/// Where the hub writes to a connection.
pub trait Outlet {
    /// Queues one text message; `false` when the connection refused it (closing, slow consumer).
    fn send_text(&self, text: &str) -> bool;
    /// Starts closing the connection.
    fn close(&self, code: u16, reason: &'static str);
}

/// Limits and timeouts of the hub (defaults and reasons in `docs/protocol.md`, section 10).
#[derive(Clone, Debug)]
pub struct HubLimits {
    /// Topics one connection may hold (default 64: a remote, a room, a few feeds).
    pub topics_per_connection_max: usize,
    /// `send` with `ack` (and `up` with `id` on NATS) waiting per connection (default 256).
    pub pending_acks_per_connection_max: usize,
    /// Backend requests waiting per connection (default 64).
    pub pending_requests_per_connection_max: usize,
    /// How long a `send` with `ack` waits for a confirmation (default 2000 ms).
    pub ack_timeout_ms: u64,
    /// How long a backend request stays answerable (default 30000 ms).
    pub request_lifetime_ms: u64,
    /// How long a new session may wait for its interest to be registered before it is closed
    /// with 1013 (default 10000 ms).
    pub ready_timeout_ms: u64,
    /// Seconds past its token's `exp` a session lives (the node's `jwt_leeway`, default 0).
    pub token_leeway_secs: u64,
    /// Messages delivered to one connection that wait for its `ack` (default 256, like the
    /// sends a connection may have waiting: a device that keeps up acknowledges within a round
    /// trip, so more only means it is not keeping up).
    pub unacked_per_connection_max: usize,
    /// How often the node publishes its heartbeat on NATS (default 1000 ms; a backend then
    /// declares a silent node dead after 2.5 intervals, within 3 s).
    pub heartbeat_interval_ms: u64,
    /// Durable mailbox limits per session.
    pub mailbox: MailboxLimits,
}

impl Default for HubLimits {
    fn default() -> HubLimits {
        HubLimits {
            topics_per_connection_max: 64,
            pending_acks_per_connection_max: 256,
            pending_requests_per_connection_max: 64,
            ack_timeout_ms: 2_000,
            request_lifetime_ms: 30_000,
            ready_timeout_ms: 10_000,
            token_leeway_secs: 0,
            unacked_per_connection_max: 256,
            heartbeat_interval_ms: 1_000,
            mailbox: MailboxLimits::default(),
        }
    }
}

/// Counters of the device endpoint, shared by all shards; rendered in `/metrics`.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// `tether_device_sessions_opened_total`: Device sessions opened on /ws.
    pub sessions_opened_total: AtomicU64,
    /// `tether_device_sessions_closed_total`: Device sessions closed.
    pub sessions_closed_total: AtomicU64,
    /// `tether_device_ops_total`: Protocol operations received from devices.
    pub ops_total: AtomicU64,
    /// `tether_device_errors_total`: error envelopes sent to devices.
    pub errors_total: AtomicU64,
    /// `tether_device_deliveries_total`: msg/request envelopes queued to devices.
    pub deliveries_total: AtomicU64,
    /// `tether_device_bad_bus_payloads_total`: Bus payloads that were not valid v1 JSON (dropped).
    pub bad_bus_payloads_total: AtomicU64,
    /// `tether_device_acks_timed_out_total`: sends with ack answered delivered:false at their
    /// deadline (timeout or closed).
    pub acks_timed_out_total: AtomicU64,
    /// `tether_device_ready_failures_total`: Sessions closed because their interest could not be
    /// registered.
    pub ready_failures_total: AtomicU64,
    /// `tether_device_insecure_sessions_total`: Sessions accepted with --insecure-no-auth.
    pub insecure_sessions_total: AtomicU64,
    /// `tether_device_receipts_acked_total`: Messages a device acknowledged with ack_id (receipt
    /// sent to the sender).
    pub receipts_acked_total: AtomicU64,
    /// `tether_device_sends_offline_total`: sends with ack answered delivered:false at once: no
    /// session anywhere (offline).
    pub sends_offline_total: AtomicU64,
    /// `tether_device_deliveries_expired_total`: Messages that reached this node at or after their
    /// deadline_ms (dropped).
    pub deliveries_expired_total: AtomicU64,
    /// `tether_device_events_published_total`: Connection events and heartbeats published for
    /// backends.
    pub events_published_total: AtomicU64,
    /// When the node started (unix ms; set by [`DeviceStats::starting_now`]), carried by
    /// events and heartbeats.
    pub node_started_at_unix_ms: u64,
    /// `tether_device_sessions_expired_total`: Sessions closed with 4001 because their token
    /// expired without a refresh.
    pub sessions_expired_total: AtomicU64,
    /// `tether_device_forged_from_total`: Backend pushes on tether.dev.* dropped because their from
    /// was not svc:... (only nodes speak for devices).
    pub forged_from_total: AtomicU64,
    /// `tether_device_token_refreshes_total`: refresh operations accepted (a fresh token for the
    /// same device).
    pub token_refreshes_total: AtomicU64,
    /// `tether_device_token_refresh_failures_total`: refresh operations refused with bad_token.
    pub token_refresh_failures_total: AtomicU64,
    /// `tether_device_durable_deliveries_total`: Durable (mailbox) messages queued to devices,
    /// replayed or live.
    pub durable_deliveries_total: AtomicU64,
    /// `tether_device_durable_acks_total`: Durable acknowledgements taken from devices (ack seq or
    /// last_seq).
    pub durable_acks_total: AtomicU64,
    /// `tether_device_receipts_total`: Receipts published on `tether.receipt.<device>`.
    pub receipts_total: AtomicU64,
    /// Refused /ws upgrades by reason.
    pub auth_failures: crate::auth::AuthFailureStats,
    /// JWKS reloads and keys in use (all zero without a JWKS).
    pub jwks: std::sync::Arc<crate::device::keys::JwksStats>,
    /// Latency histograms, one set per shard (written only by that shard's hub); empty: none
    /// kept (hubs of unit tests).
    pub latency: Vec<DeviceLatency>,
}

/// One shard's device latency histograms (see `docs/operations.md`, "Metrics").
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct DeviceLatency {
    /// From the message's arrival at the first node to its queueing on a receiving `/ws`
    /// connection.
    pub delivery: Histogram,
    /// From a `send` with `ack` to its answer (delivered, not delivered, or the timeout).
    pub ack_wait: Histogram,
    /// From an interest change (hello, `sub` with id) to the bus confirming it is in effect.
    pub bus_round_trip: Histogram,
}

/// The wall clock, in unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl DeviceStats {
    /// Counters at zero and the node's start time set to now.
    pub fn starting_now() -> DeviceStats {
        DeviceStats {
            node_started_at_unix_ms: unix_ms(),
            ..DeviceStats::default()
        }
    }

    /// The same stats with latency histograms for `shards` shards.
    pub fn with_latency_for(self, shards: usize) -> DeviceStats {
        DeviceStats {
            latency: (0..shards).map(|_| DeviceLatency::default()).collect(),
            ..self
        }
    }

    /// Device sessions open on the node now.
    pub fn sessions_open(&self) -> u64 {
        let opened = self.sessions_opened_total.load(Ordering::Relaxed);
        opened.saturating_sub(self.sessions_closed_total.load(Ordering::Relaxed))
    }

    /// Appends the device metrics in Prometheus text format.
    #[expect(
        clippy::too_many_lines,
        reason = "straight-line emitter: one section after another in output order, split it and the format scatters"
    )]
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let rows: [(&str, &str, &AtomicU64); 20] = [
            (
                "tether_device_durable_deliveries_total",
                "Durable (mailbox) messages queued to devices, replayed or live.",
                &self.durable_deliveries_total,
            ),
            (
                "tether_device_durable_acks_total",
                "Durable acknowledgements taken from devices (ack seq or last_seq).",
                &self.durable_acks_total,
            ),
            (
                "tether_device_receipts_total",
                "Receipts published on tether.receipt.<device>.",
                &self.receipts_total,
            ),
            (
                "tether_device_sessions_opened_total",
                "Device sessions opened on /ws.",
                &self.sessions_opened_total,
            ),
            (
                "tether_device_sessions_closed_total",
                "Device sessions closed.",
                &self.sessions_closed_total,
            ),
            (
                "tether_device_ops_total",
                "Protocol operations received from devices.",
                &self.ops_total,
            ),
            (
                "tether_device_errors_total",
                "error envelopes sent to devices.",
                &self.errors_total,
            ),
            (
                "tether_device_deliveries_total",
                "msg/request envelopes queued to devices.",
                &self.deliveries_total,
            ),
            (
                "tether_device_bad_bus_payloads_total",
                "Bus payloads that were not valid v1 JSON (dropped).",
                &self.bad_bus_payloads_total,
            ),
            (
                "tether_device_acks_timed_out_total",
                "sends with ack answered delivered:false at their deadline (timeout or closed).",
                &self.acks_timed_out_total,
            ),
            (
                "tether_device_sends_offline_total",
                "sends with ack answered delivered:false at once: no session anywhere (offline).",
                &self.sends_offline_total,
            ),
            (
                "tether_device_receipts_acked_total",
                "Messages a device acknowledged with ack_id (receipt sent to the sender).",
                &self.receipts_acked_total,
            ),
            (
                "tether_device_deliveries_expired_total",
                "Messages that reached this node at or after their deadline_ms (dropped).",
                &self.deliveries_expired_total,
            ),
            (
                "tether_device_events_published_total",
                "Connection events and heartbeats published for backends.",
                &self.events_published_total,
            ),
            (
                "tether_device_ready_failures_total",
                "Sessions closed because their interest could not be registered.",
                &self.ready_failures_total,
            ),
            (
                "tether_device_insecure_sessions_total",
                "Sessions accepted with --insecure-no-auth.",
                &self.insecure_sessions_total,
            ),
            (
                "tether_device_sessions_expired_total",
                "Sessions closed with 4001 because their token expired without a refresh.",
                &self.sessions_expired_total,
            ),
            (
                "tether_device_forged_from_total",
                "Backend pushes on tether.dev.* dropped because their from was not svc:... (only nodes speak for devices).",
                &self.forged_from_total,
            ),
            (
                "tether_device_token_refreshes_total",
                "refresh operations accepted (a fresh token for the same device).",
                &self.token_refreshes_total,
            ),
            (
                "tether_device_token_refresh_failures_total",
                "refresh operations refused with bad_token.",
                &self.token_refresh_failures_total,
            ),
        ];
        for (name, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        self.auth_failures.render_prometheus(out);
        self.jwks.render_prometheus(out);
        let parts = |f: fn(&DeviceLatency) -> &Histogram| -> Vec<&Histogram> {
            self.latency.iter().map(f).collect()
        };
        render_histogram(
            out,
            "tether_delivery_latency_seconds",
            "From a message's arrival at the node that took it in (a device's frame, a backend's \
             publish) to its queueing on a receiving /ws connection, across nodes included.",
            &parts(|l| &l.delivery),
        );
        render_histogram(
            out,
            "tether_ack_wait_seconds",
            "From a send with ack to its answer (delivered, not delivered, or ack_timeout).",
            &parts(|l| &l.ack_wait),
        );
        render_histogram(
            out,
            "tether_bus_round_trip_seconds",
            "From an interest change (hello, sub with id) to the bus confirming it is in effect.",
            &parts(|l| &l.bus_round_trip),
        );
    }
}

/// Records one delivery `delay_us` after the message's arrival (`None`: arrival unknown).
fn observe_delivery(stats: &DeviceStats, shard: usize, delay_us: Option<u64>) {
    if let (Some(l), Some(us)) = (stats.latency.get(shard), delay_us) {
        l.delivery.observe_us(us);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Session<O> {
    out: O,
    claims: Rc<Claims>,
    /// `send` with `ack` (and `up` with `id`) waiting (at most
    /// `pending_acks_per_connection_max`).
    pending_acks: u32,
    ready: bool,
    /// The `last_seq` the device presented (0: none).
    last_seq: u64,
    /// What a session holds only once it uses it: boxed, so that an idle session pays 8 bytes
    /// for all of it.
    more: Option<Box<SessionMore>>,
}

/// The part of a [`Session`] that an idle device does not use.
#[derive(Default)]
struct SessionMore {
    topics: Vec<String>,
    /// rid -> (reply subject, deadline ms)
    requests: TokenMap<(String, u64)>,
    /// ack_id -> (receipt subject, deadline ms): delivered, waiting for the device's `ack`.
    unacked: TokenMap<(String, u64)>,
    /// Durable delivery state, from `hello` on (NATS with `--durable`).
    mailbox: Option<Mailbox>,
}

impl<O> Session<O> {
    /// The part used by a busy session, made on first use.
    fn more(&mut self) -> &mut SessionMore {
        self.more.get_or_insert_with(Box::default)
    }

    /// The topics the session holds.
    fn topics(&self) -> &[String] {
        self.more.as_ref().map_or(&[], |m| &m.topics)
    }

    /// The session's durable mailbox, if it has one.
    fn mailbox(&mut self) -> Option<&mut Mailbox> {
        self.more.as_mut()?.mailbox.as_mut()
    }
}

/// A map keyed by numbers the hub hands out itself (request ids, delivery tokens): nobody can
/// choose keys that collide, so the hasher needs no per-map random state, and an empty map
/// is 32 bytes instead of `AHashMap`'s 64 (two of them in every session).
type TokenMap<V> = std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<ahash::AHasher>>;

enum Waiting {
    Hello(ConnId),
    SubAck(ConnId, String),
}

struct PendingAck {
    conn: ConnId,
    id: String,
    deadline_ms: u64,
    /// Why not, if a receiving shard said so before the deadline.
    reason: Option<NotDelivered>,
    /// When the send was published (for `tether_ack_wait_seconds`).
    sent: Instant,
}

struct HeartbeatClock {
    seq: u64,
    next_due_ms: u64,
}

/// The hub of one shard.
pub struct Hub<O: Outlet> {
    bus: ShardBus,
    node: Arc<str>,
    shard: usize,
    inbox_prefix: String,
    limits: HubLimits,
    stats: Arc<DeviceStats>,
    /// Boxed: the table's slots stay 16 bytes, and its spare capacity (up to half of it after
    /// a growth) costs slots, not whole sessions.
    sessions: AHashMap<ConnId, Box<Session<O>>>,
    /// device id -> local sessions, oldest first
    /// (The key is the id from the claims, `Arc`-shared with the bus tables and the node's
    /// session count.)
    devices: AHashMap<Arc<str>, Few<ConnId>>,
    /// topic -> local subscribed sessions
    topics: AHashMap<String, Vec<ConnId>>,
    /// token -> (what waits, deadline ms, when the barrier started)
    waiting: AHashMap<u64, (Waiting, u64, Instant)>,
    acks: AHashMap<u64, PendingAck>,
    /// Mailbox reads in flight: token -> session (one per session at most).
    reads: AHashMap<u64, ConnId>,
    /// `up` with `id` waiting for the bus (and JetStream): token -> (session, id).
    uploads: AHashMap<u64, (ConnId, String)>,
    /// Durable `ack` with `id` waiting for the stream: token -> (session, id).
    ack_waits: AHashMap<u64, (ConnId, String)>,
    /// This shard's NATS reconnect count last seen by the mailboxes: a reconnect makes every
    /// mailbox of this shard read again (an announcement published while its connection was
    /// down is lost).
    mailbox_reconnects_seen: u64,
    /// When every mailbox reads again once more after a reconnect.
    resync_at_ms: Option<u64>,
    next_seq: u64,
    /// (expiry in seconds since the epoch, session): the sessions whose token runs out, soonest
    /// first (tokens without a real `exp`, as in insecure mode, are not in it).
    expiries: BTreeSet<(u64, ConnId)>,
    /// Verifies the token of a `refresh` (absent: `refresh` is refused with `bad_token`).
    token_check: Option<TokenCheck>,
    /// Unix ms now (a function so tests can move it).
    wall_clock: fn() -> u64,
    /// Events and heartbeats go out (NATS only: on the embedded bus there is no backend).
    events: bool,
    /// Shard 0 of a NATS node publishes the node heartbeat.
    heartbeat: Option<HeartbeatClock>,
    /// This shard's NATS reconnections already answered with a resync of its sessions.
    reconnects_seen: u64,
    /// When [`Hub::tick`] is next due; the shard's tick task waits for it.
    alarm: Rc<TickAlarm>,
}

/// The shard-clock time (ms) at which a token expiry `at` (unix seconds) is due, given the
/// shard clock `now_ms` now: when [`Hub::expire_tokens`] with the real clock sees it.
fn expiry_due_ms(at_secs: u64, now_ms: u64) -> u64 {
    now_ms + at_secs.saturating_mul(1000).saturating_sub(unix_ms())
}

/// Verifies a token presented in a `refresh` (the node's `Verifier`).
pub type TokenCheck = Box<dyn Fn(&str) -> Result<Claims, AuthError>>;

/// Close code of a session whose token expired without a `refresh` (`docs/protocol.md`).
pub const TOKEN_EXPIRED_CLOSE_CODE: u16 = 4001;
/// Close reason sent with [`TOKEN_EXPIRED_CLOSE_CODE`].
pub const TOKEN_EXPIRED_CLOSE_REASON: &str = "token expired";

impl<O: Outlet> Hub<O> {
    /// A hub for the shard that owns `bus`.
    pub fn new(bus: ShardBus, limits: HubLimits, stats: Arc<DeviceStats>) -> Hub<O> {
        let node: Arc<str> = Arc::from(bus.node());
        let shard = bus.shard();
        let events = bus.has_backends();
        let heartbeat =
            (events && shard == 0 && limits.heartbeat_interval_ms > 0).then_some(HeartbeatClock {
                seq: 0,
                next_due_ms: 0,
            });
        Hub {
            inbox_prefix: subject::inbox_prefix(&node, shard),
            bus,
            node,
            shard,
            limits,
            stats,
            sessions: AHashMap::new(),
            devices: AHashMap::new(),
            topics: AHashMap::new(),
            waiting: AHashMap::new(),
            acks: AHashMap::new(),
            reads: AHashMap::new(),
            uploads: AHashMap::new(),
            ack_waits: AHashMap::new(),
            mailbox_reconnects_seen: 0,
            resync_at_ms: None,
            next_seq: 1,
            expiries: BTreeSet::new(),
            token_check: None,
            wall_clock: unix_ms,
            events,
            heartbeat,
            reconnects_seen: 0,
            alarm: Rc::new(TickAlarm::new()),
        }
    }

    /// Replaces the wall clock (tests).
    pub fn set_wall_clock(&mut self, clock: fn() -> u64) {
        self.wall_clock = clock;
    }

    /// Lets devices present a fresh token with `refresh`, checked by `check`.
    pub fn set_token_check(&mut self, check: TokenCheck) {
        self.token_check = Some(check);
    }

    /// When a session with these claims must end: `exp` plus the leeway; `None` for claims
    /// that do not expire (insecure mode).
    fn expiry_of(&self, claims: &Claims) -> Option<u64> {
        (claims.exp != u64::MAX).then(|| claims.exp.saturating_add(self.limits.token_leeway_secs))
    }

    /// When [`Hub::tick`] is next due (shard ms): the task that runs the tick waits for it
    /// ([`super::tick::wait_due`]).
    pub fn alarm(&self) -> Rc<TickAlarm> {
        self.alarm.clone()
    }

    /// Call after every operation on the hub ([`Hub::open`], [`Hub::text`], [`Hub::close`],
    /// [`Hub::on_bus`]): brings the next tick forward to what the operation made due (a token
    /// expiry, a pending ack, a bus backlog, a reconnect to answer). Cheap: no walk over the
    /// sessions.
    pub fn poke(&mut self, now_ms: u64) {
        // The tick notes every reconnect here (and answers it with the resync).
        if self.bus.reconnects() != self.mailbox_reconnects_seen {
            self.alarm.at_most(now_ms);
        }
        if !self.acks.is_empty() || self.bus.has_backlog() {
            self.alarm.at_most(now_ms + TICK_MS);
        }
        if let Some(&(at, _)) = self.expiries.first() {
            self.alarm.at_most(expiry_due_ms(at, now_ms));
        }
    }

    /// The shard's bus link (for requests, the inbox, maintenance).
    pub fn bus(&mut self) -> &mut ShardBus {
        &mut self.bus
    }

    /// Number of live sessions on this shard.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn error(&self, conn: ConnId, id: Option<&str>, code: ErrorCode, message: &str) {
        if let Some(s) = self.sessions.get(&conn) {
            bump(&self.stats.errors_total);
            s.out.send_text(&proto::encode_error(id, code, message));
        }
    }

    fn reply_ack(&self, conn: ConnId, id: Option<&str>) {
        if let (Some(s), Some(id)) = (self.sessions.get(&conn), id) {
            s.out.send_text(&proto::encode_ack(id, None));
        }
    }

    /// Answers a `send` with `ack` once and for all.
    fn settle(&mut self, seq: u64, outcome: Result<(), NotDelivered>) {
        let Some(ack) = self.acks.remove(&seq) else {
            return;
        };
        if let Some(l) = self.stats.latency.get(self.shard) {
            l.ack_wait.observe(ack.sent.elapsed());
        }
        if let Some(s) = self.sessions.get_mut(&ack.conn) {
            s.pending_acks = s.pending_acks.saturating_sub(1);
            s.out.send_text(&proto::encode_ack(&ack.id, Some(outcome)));
        }
    }

    /// Publishes a connection event for backends (NATS only).
    fn publish_event(&mut self, kind: EventKind, device: &str, conn: ConnId) {
        if !self.events {
            return;
        }
        let text = proto::encode_event(&proto::Event {
            kind,
            device,
            node: &self.node,
            shard: self.shard,
            session: conn,
            node_started_at_ms: self.stats.node_started_at_unix_ms,
            at_ms: (self.wall_clock)(),
        });
        if self
            .bus
            .publish(&subject::event(device), None, Bytes::from(text))
            .is_ok()
        {
            bump(&self.stats.events_published_total);
        }
    }

    /// A device session opened: registers its interest; `hello` follows once it is in effect.
    /// `last_seq` is the durable sequence the device says it processed (`?last_seq=`).
    pub fn open(
        &mut self,
        conn: ConnId,
        out: O,
        claims: Rc<Claims>,
        last_seq: Option<u64>,
        now_ms: u64,
    ) {
        bump(&self.stats.sessions_opened_total);
        if let Some(at) = self.expiry_of(&claims) {
            self.expiries.insert((at, conn));
        }
        let device = claims.sub.clone();
        let first = match self.devices.get_mut(&*device) {
            Some(list) => {
                list.push(conn);
                false
            }
            None => {
                self.devices.insert(device.clone(), Few::new(conn));
                true
            }
        };
        self.sessions.insert(
            conn,
            Box::new(Session {
                out,
                claims,
                pending_acks: 0,
                ready: false,
                last_seq: last_seq.unwrap_or(0),
                more: None,
            }),
        );
        if first && self.bus.subscribe_device(device).is_err() {
            self.fail_session(conn, "bus unavailable");
            return;
        }
        let token = self.seq();
        let deadline_ms = now_ms + self.limits.ready_timeout_ms;
        self.waiting
            .insert(token, (Waiting::Hello(conn), deadline_ms, Instant::now()));
        self.alarm.at_most(deadline_ms + 1);
        self.bus.barrier(token);
        self.drain_local(now_ms);
    }

    fn fail_session(&mut self, conn: ConnId, reason: &'static str) {
        bump(&self.stats.ready_failures_total);
        if let Some(s) = self.sessions.get(&conn) {
            s.out.close(1013, reason);
        }
    }

    /// After the drain: ends every session still open (its client did not finish the close
    /// handshake by the drain deadline) as closed with `code`, so that backends get its
    /// `disconnect` before the shard's bus connection closes. The connection's own end, if it
    /// comes, finds the session gone.
    pub fn close_remaining(&mut self, code: u16, now_ms: u64) {
        let open: Vec<ConnId> = self.sessions.keys().copied().collect();
        for conn in open {
            self.close(conn, code, now_ms);
        }
        debug_assert!(self.sessions.is_empty());
    }

    /// A session ended (with this close code): its interest goes with it, every message it
    /// received without acknowledging is reported `closed` to its sender, and backends get a
    /// `disconnect` event if they had a `connect`.
    pub fn close(&mut self, conn: ConnId, code: u16, now_ms: u64) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        bump(&self.stats.sessions_closed_total);
        if let Some(at) = self.expiry_of(&session.claims) {
            self.expiries.remove(&(at, conn));
        }
        let closed = Bytes::from(proto::encode_receipt(Err(NotDelivered::Closed)));
        for (reply, deadline_ms) in session.more.iter().flat_map(|m| m.unacked.values()) {
            if *deadline_ms >= now_ms {
                let _ = self.bus.publish(reply, None, closed.clone());
            }
        }
        let device = &session.claims.sub;
        if session.ready {
            self.publish_event(EventKind::Disconnect(code), device, conn);
        }
        if let Some(list) = self.devices.get_mut(&**device) {
            if list.remove(conn) == Removed::Last {
                if let Some((device, _)) = self.devices.remove_entry(&**device) {
                    self.bus.unsubscribe_device(device);
                }
            }
        }
        for topic in session.topics() {
            self.leave_topic(conn, topic);
        }
    }

    fn leave_topic(&mut self, conn: ConnId, topic: &str) {
        if let Some(list) = self.topics.get_mut(topic) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.topics.remove(topic);
                self.bus.unsubscribe(&subject::topic(topic));
            }
        }
    }

    /// A binary frame: not part of v1 (section 6).
    pub fn binary(&mut self, conn: ConnId) {
        self.error(
            conn,
            None,
            ErrorCode::BinaryUnsupported,
            "binary frames are not used by tether.v1; send base64 in b64",
        );
    }

    /// A text frame from a device.
    #[expect(
        clippy::too_many_lines,
        reason = "one match arm per operation, in protocol order: a dispatcher reads best whole"
    )]
    pub fn text(&mut self, conn: ConnId, text: &str, now_ms: u64) {
        bump(&self.stats.ops_total);
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        let claims = session.claims.clone();
        let frame = match proto::parse_client(text) {
            Ok(frame) => frame,
            Err(err) => {
                bump(&self.stats.errors_total);
                session.out.send_text(&err.encode());
                return;
            }
        };
        let id = frame.id.as_deref();
        let me = &*claims.sub;
        match frame.op {
            ClientOp::Send { to, payload, ack } => {
                let subj = subject::peer(&to);
                if ack {
                    let Some(id) = id else { return };
                    if session.pending_acks as usize >= self.limits.pending_acks_per_connection_max
                    {
                        let msg = format!(
                            "{} sends are waiting for a confirmation",
                            session.pending_acks
                        );
                        self.error(conn, Some(id), ErrorCode::TooManyPending, &msg);
                        return;
                    }
                    if !self.bus.is_connected() {
                        // Published now, it would wait in the NATS client's buffer and arrive
                        // whenever the connection comes back: refuse instead.
                        self.error(
                            conn,
                            Some(id),
                            ErrorCode::BusUnavailable,
                            "the node is disconnected from NATS: not sent",
                        );
                        return;
                    }
                    let timeout_ms = self.limits.ack_timeout_ms;
                    let deadline_unix_ms = (self.wall_clock)() + timeout_ms;
                    let body = Bytes::from(proto::encode_bus_from_until(
                        me,
                        &payload,
                        Some(deadline_unix_ms),
                    ));
                    let seq = self.seq();
                    let reply = format!("{}{seq}", self.inbox_prefix);
                    match self.bus.publish(&subj, Some(&reply), body) {
                        Ok(()) => {
                            self.acks.insert(
                                seq,
                                PendingAck {
                                    conn,
                                    id: id.to_owned(),
                                    deadline_ms: now_ms + timeout_ms,
                                    reason: None,
                                    sent: Instant::now(),
                                },
                            );
                            if let Some(s) = self.sessions.get_mut(&conn) {
                                s.pending_acks += 1;
                            }
                        }
                        Err(err) => self.bus_error(conn, Some(id), err),
                    }
                } else {
                    let body = Bytes::from(proto::encode_bus_from(me, &payload));
                    if let Err(err) = self.bus.publish(&subj, None, body) {
                        self.bus_error(conn, id, err);
                    }
                }
            }
            ClientOp::Sub { topic } => {
                if !claims.may_subscribe(&topic) {
                    self.error(
                        conn,
                        id,
                        ErrorCode::Forbidden,
                        &format!("topics_sub does not allow {topic}"),
                    );
                    return;
                }
                if session.topics().iter().any(|t| *t == topic) {
                    self.reply_ack(conn, id);
                    return;
                }
                if session.topics().len() >= self.limits.topics_per_connection_max {
                    let msg = format!(
                        "at most {} topics per connection",
                        self.limits.topics_per_connection_max
                    );
                    self.error(conn, id, ErrorCode::TooManyTopics, &msg);
                    return;
                }
                let topic = topic.into_owned();
                let first = {
                    let list = self.topics.entry(topic.clone()).or_default();
                    list.push(conn);
                    list.len() == 1
                };
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.more().topics.push(topic.clone());
                }
                if first && self.bus.subscribe(&subject::topic(&topic)).is_err() {
                    self.error(
                        conn,
                        id,
                        ErrorCode::BusUnavailable,
                        "bus control queue full",
                    );
                    return;
                }
                if let Some(id) = id {
                    let token = self.seq();
                    let deadline_ms = now_ms + self.limits.ready_timeout_ms;
                    self.waiting.insert(
                        token,
                        (
                            Waiting::SubAck(conn, id.to_owned()),
                            deadline_ms,
                            Instant::now(),
                        ),
                    );
                    self.alarm.at_most(deadline_ms + 1);
                    self.bus.barrier(token);
                }
            }
            ClientOp::Unsub { topic } => {
                if let Some(m) = self.sessions.get_mut(&conn).and_then(|s| s.more.as_mut()) {
                    let before = m.topics.len();
                    m.topics.retain(|t| *t != topic);
                    if m.topics.len() != before {
                        self.leave_topic(conn, &topic);
                    }
                }
                self.reply_ack(conn, id);
            }
            ClientOp::Pub { topic, payload } => {
                if !claims.may_publish(&topic) {
                    self.error(
                        conn,
                        id,
                        ErrorCode::Forbidden,
                        &format!("topics_pub does not allow {topic}"),
                    );
                    return;
                }
                let body = Bytes::from(proto::encode_bus_from(me, &payload));
                match self.bus.publish(&subject::topic(&topic), None, body) {
                    Ok(()) => self.reply_ack(conn, id),
                    Err(err) => self.bus_error(conn, id, err),
                }
            }
            ClientOp::Up { service, payload } => {
                if !self.bus.has_backends() {
                    self.error(
                        conn,
                        id,
                        ErrorCode::NoBackend,
                        "this node has no NATS bus, so no backend services",
                    );
                    return;
                }
                if !claims.may_send_upstream(&service) {
                    self.error(
                        conn,
                        id,
                        ErrorCode::Forbidden,
                        &format!("services does not allow {service}"),
                    );
                    return;
                }
                let body = Bytes::from(proto::encode_bus_up(me, &self.node, self.shard, &payload));
                if let Some(id) = id {
                    // Answered once published, or stored when a stream captures the subject.
                    if session.pending_acks as usize >= self.limits.pending_acks_per_connection_max
                    {
                        let msg = format!("{} operations are waiting", session.pending_acks);
                        self.error(conn, Some(id), ErrorCode::TooManyPending, &msg);
                        return;
                    }
                    let token = self.seq();
                    self.uploads.insert(token, (conn, id.to_owned()));
                    if let Some(s) = self.sessions.get_mut(&conn) {
                        s.pending_acks += 1;
                    }
                    self.bus
                        .publish_upstream(&subject::upstream(&service), body, token);
                } else if let Err(err) = self.bus.publish(&subject::upstream(&service), None, body)
                {
                    self.bus_error(conn, id, err);
                }
            }
            ClientOp::Reply { rid, payload } => {
                let pending = rid.parse::<u64>().ok().and_then(|rid| {
                    self.sessions
                        .get_mut(&conn)
                        .and_then(|s| s.more.as_mut()?.requests.remove(&rid))
                });
                match pending {
                    Some((reply, deadline)) if deadline >= now_ms => {
                        let body = Bytes::from(proto::encode_bus_from(me, &payload));
                        match self.bus.publish(&reply, None, body) {
                            Ok(()) => self.reply_ack(conn, id),
                            Err(err) => self.bus_error(conn, id, err),
                        }
                    }
                    _ => {
                        let shown: String = rid.chars().take(proto::RID_BYTES_MAX).collect();
                        let msg =
                            format!("no open request {shown:?} (unknown, answered or expired)");
                        self.error(conn, id, ErrorCode::UnknownRequest, &msg);
                    }
                }
            }
            ClientOp::Ack(AckRef::Ephemeral(ack_id)) => {
                let waiting = ack_id.parse::<u64>().ok().and_then(|token| {
                    self.sessions
                        .get_mut(&conn)
                        .and_then(|s| s.more.as_mut()?.unacked.remove(&token))
                });
                match waiting {
                    Some((reply, deadline_ms)) if deadline_ms >= now_ms => {
                        let receipt = Bytes::from(proto::encode_receipt(Ok(())));
                        match self.bus.publish(&reply, None, receipt) {
                            Ok(()) => {
                                bump(&self.stats.receipts_acked_total);
                                self.reply_ack(conn, id);
                            }
                            Err(err) => self.bus_error(conn, id, err),
                        }
                    }
                    _ => {
                        let shown: String = ack_id.chars().take(proto::ACK_ID_BYTES_MAX).collect();
                        let msg = format!(
                            "no message {shown:?} waits for an ack (unknown, acknowledged, or past \
                             its deadline: its sender was told it was not delivered)"
                        );
                        self.error(conn, id, ErrorCode::UnknownAck, &msg);
                    }
                }
            }
            ClientOp::Ack(AckRef::Durable(seq)) => {
                let mut actions = Vec::new();
                let result = match self.sessions.get_mut(&conn).and_then(|s| s.mailbox()) {
                    None => Err((
                        ErrorCode::DurableUnavailable,
                        self.durable_missing().to_owned(),
                    )),
                    Some(m) => m.ack(seq, now_ms, &mut actions).map_err(|e| match e {
                        mailbox::AckError::NotDelivered {
                            seq,
                            highest_delivered,
                        } => (
                            ErrorCode::BadField,
                            format!(
                                "seq {seq} was not delivered to this session (highest {highest_delivered})"
                            ),
                        ),
                    }),
                };
                match result {
                    Ok(()) => {
                        bump(&self.stats.durable_acks_total);
                        let removes = actions
                            .iter()
                            .any(|a| matches!(a, mailbox::Action::Remove(_)));
                        match id {
                            // Confirmed once the stream applied it.
                            Some(id) if removes => {
                                let token = self.seq();
                                self.ack_waits.insert(token, (conn, id.to_owned()));
                                self.mailbox_actions(conn, actions, Some(token));
                            }
                            _ => {
                                self.mailbox_actions(conn, actions, None);
                                self.reply_ack(conn, id);
                            }
                        }
                    }
                    Err((code, msg)) => self.error(conn, id, code, &msg),
                }
            }
            ClientOp::Ping => {
                session.out.send_text(&proto::encode_pong(id));
            }
            ClientOp::Refresh { token } => {
                let checked = match &self.token_check {
                    Some(check) => check(&token).map_err(|e| e.body()),
                    None => Err("this node does not verify tokens".into()),
                };
                match checked {
                    Ok(fresh) if fresh.sub == claims.sub => {
                        bump(&self.stats.token_refreshes_total);
                        let exp = fresh.exp;
                        if let Some(at) = self.expiry_of(&claims) {
                            self.expiries.remove(&(at, conn));
                        }
                        if let Some(at) = self.expiry_of(&fresh) {
                            self.expiries.insert((at, conn));
                        }
                        if let Some(s) = self.sessions.get_mut(&conn) {
                            s.claims = Rc::new(fresh);
                            s.out.send_text(&proto::encode_refreshed(id, exp));
                        }
                    }
                    Ok(fresh) => {
                        bump(&self.stats.token_refresh_failures_total);
                        let msg = format!(
                            "the token is for {:?}, this session is {:?}",
                            fresh.sub, claims.sub
                        );
                        self.error(conn, id, ErrorCode::BadToken, &msg);
                    }
                    Err(why) => {
                        bump(&self.stats.token_refresh_failures_total);
                        self.error(conn, id, ErrorCode::BadToken, &why);
                    }
                }
            }
        }
        self.drain_local(now_ms);
    }

    fn bus_error(&self, conn: ConnId, id: Option<&str>, err: BusError) {
        match err {
            BusError::Full => self.error(
                conn,
                id,
                ErrorCode::BusUnavailable,
                "bus queue full: message dropped",
            ),
            BusError::NoBackend => self.error(
                conn,
                id,
                ErrorCode::NoBackend,
                "no backend bus on this node",
            ),
            BusError::NoDurable => self.error(
                conn,
                id,
                ErrorCode::DurableUnavailable,
                self.durable_missing(),
            ),
        }
    }

    fn durable_missing(&self) -> &'static str {
        if self.bus.has_backends() {
            "durable delivery is off on this node (tether serve --durable)"
        } else {
            "durable delivery needs NATS JetStream; this node runs the embedded bus"
        }
    }

    /// Carries out what a session's mailbox asked for; a removal carries `ack_token` when the
    /// device wants its `ack` confirmed.
    fn mailbox_actions(
        &mut self,
        conn: ConnId,
        actions: Vec<mailbox::Action>,
        ack_token: Option<u64>,
    ) {
        if actions.is_empty() {
            return;
        }
        let Some(device) = self.sessions.get(&conn).map(|s| s.claims.sub.clone()) else {
            return;
        };
        for action in actions {
            match action {
                mailbox::Action::Read { from } => {
                    let token = self.seq();
                    self.reads.insert(token, conn);
                    self.bus.mailbox_read(&device, from, token);
                }
                mailbox::Action::Deliver(msg) => {
                    let text = match proto::encode_delivery(
                        &msg.payload,
                        Delivery::Durable(msg.seq),
                        None,
                    ) {
                        Ok(encoded) => encoded.text,
                        Err(why) => {
                            tracing::warn!(%device, seq = msg.seq, %why, "durable message is not a v1 bus payload; skipped (a later ack removes it)");
                            bump(&self.stats.bad_bus_payloads_total);
                            continue;
                        }
                    };
                    if let Some(s) = self.sessions.get(&conn) {
                        if s.out.send_text(&text) {
                            bump(&self.stats.deliveries_total);
                            bump(&self.stats.durable_deliveries_total);
                        }
                    }
                }
                mailbox::Action::Receipt(seq) => {
                    let at_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    let body = proto::encode_durable_receipt(&device, seq, &self.node, at_ms);
                    if self
                        .bus
                        .publish(&subject::receipt(&device), None, Bytes::from(body))
                        .is_ok()
                    {
                        bump(&self.stats.receipts_total);
                    }
                }
                mailbox::Action::Remove(seqs) => {
                    if let Err(err) = self.bus.mailbox_ack(&device, seqs, ack_token) {
                        tracing::warn!(%device, ?err, "acknowledgement not passed to the bus; the device will get those messages again");
                    }
                }
            }
        }
    }

    fn on_durable(&mut self, event: DurableEvent, now_ms: u64) {
        match event {
            DurableEvent::Read { token, message } => {
                let Some(conn) = self.reads.remove(&token) else {
                    return;
                };
                let mut actions = Vec::new();
                if let Some(m) = self.sessions.get_mut(&conn).and_then(|s| s.mailbox()) {
                    m.read_done(message, now_ms, &mut actions);
                }
                self.mailbox_actions(conn, actions, None);
            }
            DurableEvent::ReadFailed { token, reason } => {
                let Some(conn) = self.reads.remove(&token) else {
                    return;
                };
                tracing::debug!(conn, %reason, "mailbox read failed; retrying");
                if let Some(m) = self.sessions.get_mut(&conn).and_then(|s| s.mailbox()) {
                    m.read_failed(now_ms);
                }
            }
            DurableEvent::Acked { token, result } => {
                let Some((conn, id)) = self.ack_waits.remove(&token) else {
                    return;
                };
                match result {
                    Ok(()) => self.reply_ack(conn, Some(&id)),
                    Err(why) => self.error(
                        conn,
                        Some(&id),
                        ErrorCode::NotStored,
                        &format!("ack not applied, those messages will come again: {why}"),
                    ),
                }
            }
            DurableEvent::Upstream { token, result } => {
                let Some((conn, id)) = self.uploads.remove(&token) else {
                    return;
                };
                if let Some(s) = self.sessions.get_mut(&conn) {
                    s.pending_acks = s.pending_acks.saturating_sub(1);
                }
                match result {
                    Ok(Some(seq)) => {
                        if let Some(s) = self.sessions.get(&conn) {
                            s.out.send_text(&proto::encode_ack_stored(&id, seq));
                        }
                    }
                    Ok(None) => self.reply_ack(conn, Some(&id)),
                    Err(why) => self.error(
                        conn,
                        Some(&id),
                        ErrorCode::NotStored,
                        &format!("not stored: {why}"),
                    ),
                }
            }
        }
    }

    fn drain_local(&mut self, now_ms: u64) {
        while let Some(ev) = self.bus.poll_local() {
            self.on_bus(ev, now_ms);
        }
    }

    /// An event from the bus.
    pub fn on_bus(&mut self, event: BusEvent, now_ms: u64) {
        match event {
            BusEvent::Ready(token) => match self.waiting.remove(&token) {
                Some((Waiting::Hello(conn), _, started)) => {
                    self.observe_round_trip(started);
                    if let Some(s) = self.sessions.get_mut(&conn) {
                        s.ready = true;
                        s.out.send_text(&proto::encode_hello(
                            &s.claims.sub,
                            &self.node,
                            self.shard,
                        ));
                        let claims = s.claims.clone();
                        self.publish_event(EventKind::Connect, &claims.sub, conn);
                    }
                    self.start_mailbox(conn, now_ms);
                }
                Some((Waiting::SubAck(conn, id), _, started)) => {
                    self.observe_round_trip(started);
                    self.reply_ack(conn, Some(&id));
                }
                None => {}
            },
            BusEvent::NoResponders(reply) => {
                if let subject::Parsed::Inbox { seq, .. } = subject::parse(&reply) {
                    if self.acks.contains_key(&seq) {
                        bump(&self.stats.sends_offline_total);
                        self.settle(seq, Err(NotDelivered::Offline));
                    }
                }
            }
            BusEvent::Failed(token) => match self.waiting.remove(&token) {
                Some((Waiting::Hello(conn), _, _)) => self.fail_session(conn, "bus unavailable"),
                Some((Waiting::SubAck(conn, id), _, _)) => self.error(
                    conn,
                    Some(&id),
                    ErrorCode::BusUnavailable,
                    "subscription not confirmed by the bus",
                ),
                None => {}
            },
            BusEvent::Message(msg) => self.on_message(msg, now_ms),
            BusEvent::Durable(ev) => self.on_durable(ev, now_ms),
        }
    }

    /// Records how long an interest change took to take effect on the bus.
    fn observe_round_trip(&self, started: Instant) {
        if let Some(l) = self.stats.latency.get(self.shard) {
            l.bus_round_trip.observe(started.elapsed());
        }
    }

    /// After `hello`: replay what the device has not acknowledged, then live durable messages.
    fn start_mailbox(&mut self, conn: ConnId, now_ms: u64) {
        let durable = self.bus.has_durable();
        let limits = self.limits.mailbox.clone();
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if !durable {
            if s.last_seq > 0 {
                let msg = self.durable_missing();
                self.error(conn, None, ErrorCode::DurableUnavailable, msg);
            }
            return;
        }
        let mut actions = Vec::new();
        let mut m = Mailbox::new(limits, s.last_seq);
        m.start(&mut actions);
        s.more().mailbox = Some(m);
        self.alarm.at_most(now_ms + TICK_MS);
        self.mailbox_actions(conn, actions, None);
    }

    /// Routes one bus message to the step for its subject.
    fn on_message(&mut self, msg: BusMessage, now_ms: u64) {
        let delay_us = (msg.arrived_unix_us != 0)
            .then(|| crate::bus::unix_us().saturating_sub(msg.arrived_unix_us));
        match subject::parse(&msg.subject) {
            subject::Parsed::Device(device) => {
                if subject::is_backend_push(&msg.subject) && !proto::from_is_backend(&msg.payload) {
                    // Only nodes speak for devices (on `tether.peer.*`).
                    tracing::debug!(subject = %msg.subject, "dropped: a backend push with a device's from");
                    bump(&self.stats.forged_from_total);
                    return;
                }
                match msg.reply {
                    None => self.deliver_direct(device, &msg.payload, delay_us),
                    Some(reply) => {
                        let device = device.to_owned();
                        self.deliver_for_receipt(&device, &msg.payload, reply, now_ms, delay_us);
                    }
                }
            }
            subject::Parsed::Request(device) => {
                if let Some(reply) = msg.reply {
                    self.deliver_request(device, &msg.payload, reply, now_ms, delay_us);
                }
            }
            subject::Parsed::Presence(device) => {
                if let Some(reply) = msg.reply.as_deref() {
                    self.answer_presence(device, reply);
                }
            }
            subject::Parsed::Topic(topic) => self.deliver_topic(topic, &msg.payload, delay_us),
            subject::Parsed::Inbox { seq, .. } => self.on_receipt(seq, &msg.payload),
            subject::Parsed::MailboxNotify(device) => {
                self.on_mailbox_notify(device, &msg.payload, now_ms)
            }
            subject::Parsed::Other => {}
        }
    }

    /// A message for `device` that wants no receipt: the same text to each of its sessions
    /// here, unless it is past its `deadline_ms`.
    fn deliver_direct(&mut self, device: &str, payload: &[u8], delay_us: Option<u64>) {
        let Some(conns) = self.devices.get(device) else {
            return;
        };
        let text = match proto::encode_delivery(payload, Delivery::Direct, None) {
            Ok(encoded) => match encoded.deadline_unix_ms {
                Some(d) if d <= (self.wall_clock)() => {
                    return bump(&self.stats.deliveries_expired_total)
                }
                _ => encoded.text,
            },
            Err(_) => return bump(&self.stats.bad_bus_payloads_total),
        };
        for conn in conns.iter() {
            if let Some(s) = self.sessions.get(&conn) {
                if s.out.send_text(&text) {
                    bump(&self.stats.deliveries_total);
                    observe_delivery(&self.stats, self.shard, delay_us);
                }
            }
        }
    }

    /// A backend's request for `device`: each session here with room for another pending
    /// request gets it under its own `rid`; when none could take it, the backend is answered
    /// `too_many_pending` at once.
    fn deliver_request(
        &mut self,
        device: &str,
        payload: &[u8],
        reply: String,
        now_ms: u64,
        delay_us: Option<u64>,
    ) {
        let Some(conns) = self.devices.get(device).map(Few::to_vec) else {
            return;
        };
        let mut delivered = 0usize;
        for conn in conns {
            let rid = self.seq();
            let max = self.limits.pending_requests_per_connection_max;
            let lifetime = self.limits.request_lifetime_ms;
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            if s.more().requests.len() >= max {
                continue;
            }
            let rid_text = rid.to_string();
            let text = match proto::encode_delivery(payload, Delivery::Request(&rid_text), None) {
                Ok(encoded) => encoded.text,
                Err(_) => return bump(&self.stats.bad_bus_payloads_total),
            };
            if s.out.send_text(&text) {
                s.more()
                    .requests
                    .insert(rid, (reply.clone(), now_ms + lifetime));
                self.alarm.at_most(now_ms + TICK_MS);
                delivered += 1;
                bump(&self.stats.deliveries_total);
                observe_delivery(&self.stats, self.shard, delay_us);
            }
        }
        if delivered == 0 {
            let _ = self.bus.publish(
                &reply,
                None,
                Bytes::from(proto::encode_bus_error(ErrorCode::TooManyPending)),
            );
        }
    }

    /// A presence request: this shard answers with its session count of `device` when it
    /// holds any (shards without one stay silent).
    fn answer_presence(&mut self, device: &str, reply: &str) {
        let Some(conns) = self.devices.get(device) else {
            return;
        };
        let body = proto::encode_presence(device, &self.node, self.shard, conns.len());
        let _ = self.bus.publish(reply, None, Bytes::from(body));
    }

    /// A publish on `topic`: the same text to every session here subscribed to it.
    fn deliver_topic(&mut self, topic: &str, payload: &[u8], delay_us: Option<u64>) {
        let Some(conns) = self.topics.get(topic) else {
            return;
        };
        let text = match proto::encode_delivery(payload, Delivery::Topic(topic), None) {
            Ok(encoded) => encoded.text,
            Err(_) => return bump(&self.stats.bad_bus_payloads_total),
        };
        for conn in conns {
            if let Some(s) = self.sessions.get(conn) {
                if s.out.send_text(&text) {
                    bump(&self.stats.deliveries_total);
                    observe_delivery(&self.stats, self.shard, delay_us);
                }
            }
        }
    }

    /// A receipt on this shard's inbox for the `send` with `ack` numbered `seq`.
    fn on_receipt(&mut self, seq: u64, payload: &[u8]) {
        match proto::parse_receipt(payload) {
            Some(Ok(())) => self.settle(seq, Ok(())),
            // Another session of the target may still acknowledge: remember why, answer at
            // the deadline.
            Some(Err(reason)) => {
                if let Some(ack) = self.acks.get_mut(&seq) {
                    ack.reason = Some(reason);
                }
            }
            None => bump(&self.stats.bad_bus_payloads_total),
        }
    }

    /// The mailbox stream stored message `seq` (the payload, decimal) for `device`: each of
    /// its sessions here with a mailbox learns of it.
    fn on_mailbox_notify(&mut self, device: &str, payload: &[u8], now_ms: u64) {
        // "<seq> <previous seq on the same subject>" (the bus's rendering of the stream's
        // republish headers).
        let Some((seq, previous)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.split_once(' '))
            .and_then(|(s, p)| Some((s.parse::<u64>().ok()?, p.parse::<u64>().ok()?)))
            .filter(|(s, p)| p < s)
        else {
            return bump(&self.stats.bad_bus_payloads_total);
        };
        let Some(conns) = self.devices.get(device).map(Few::to_vec) else {
            return;
        };
        for conn in conns {
            let mut actions = Vec::new();
            if let Some(m) = self.sessions.get_mut(&conn).and_then(|s| s.mailbox()) {
                m.announced(seq, previous, now_ms, &mut actions);
            }
            self.mailbox_actions(conn, actions, None);
        }
    }

    /// Closes, with 4001, every session whose token (plus leeway) ran out by `now_secs` and was
    /// not refreshed. The session leaves the hub when its close completes ([`Hub::close`]).
    pub fn expire_tokens(&mut self, now_secs: u64) {
        while let Some(&(at, conn)) = self.expiries.first() {
            if at > now_secs {
                break;
            }
            self.expiries.remove(&(at, conn));
            if let Some(s) = self.sessions.get(&conn) {
                bump(&self.stats.sessions_expired_total);
                tracing::debug!(device = %s.claims.sub, exp = s.claims.exp, "token expired: closing the session");
                s.out
                    .close(TOKEN_EXPIRED_CLOSE_CODE, TOKEN_EXPIRED_CLOSE_REASON);
            }
        }
    }

    /// A message on the device's subject that asks for a receipt (a `send` with `ack`, or a
    /// backend push made as a request): each session gets it with its own `ack_id` and keeps
    /// it until it acknowledges, closes, or the deadline passes. A message that arrives at or
    /// after its `deadline_ms` is dropped: its sender has been (or is being) told it was not
    /// delivered.
    fn deliver_for_receipt(
        &mut self,
        device: &str,
        payload: &[u8],
        reply: String,
        now_ms: u64,
        delay_us: Option<u64>,
    ) {
        let Some(conns) = self.devices.get(device).map(Few::to_vec) else {
            return;
        };
        let now_unix_ms = (self.wall_clock)();
        let max = self.limits.unacked_per_connection_max;
        let mut delivered = 0usize;
        let mut refused = None;
        for conn in conns {
            let token = self.seq();
            let ack_id = token.to_string();
            let encoded = match proto::encode_delivery(payload, Delivery::Direct, Some(&ack_id)) {
                Ok(encoded) => encoded,
                Err(_) => return bump(&self.stats.bad_bus_payloads_total),
            };
            let deadline_ms = match encoded.deadline_unix_ms {
                Some(d) if d <= now_unix_ms => return bump(&self.stats.deliveries_expired_total),
                Some(d) => now_ms + (d - now_unix_ms),
                None => now_ms + self.limits.ack_timeout_ms,
            };
            let Some(s) = self.sessions.get_mut(&conn) else {
                continue;
            };
            if s.more().unacked.len() >= max {
                refused = Some(NotDelivered::Busy);
            } else if s.out.send_text(&encoded.text) {
                s.more().unacked.insert(token, (reply.clone(), deadline_ms));
                self.alarm.at_most(now_ms + TICK_MS);
                delivered += 1;
                bump(&self.stats.deliveries_total);
                observe_delivery(&self.stats, self.shard, delay_us);
            } else {
                refused = Some(NotDelivered::Closed);
            }
        }
        if let (0, Some(reason)) = (delivered, refused) {
            let _ = self.bus.publish(
                &reply,
                None,
                Bytes::from(proto::encode_receipt(Err(reason))),
            );
        }
    }

    /// Periodic work, when [`Hub::alarm`] says it is due: ack, receipt and request expiry,
    /// readiness timeouts, token expiry, bus backlog retries, the node heartbeat, and a resync
    /// of this shard's sessions after a NATS reconnect. Sets the alarm to the next tick:
    /// [`TICK_MS`] ahead while acks, requests, receipts, mailboxes, a bus backlog or a resync
    /// wait; else the earliest readiness deadline, token expiry or heartbeat, at most
    /// [`IDLE_TICK_MS`] ahead.
    pub fn tick(&mut self, now_ms: u64) {
        self.bus.maintain();
        self.expire_tokens(crate::auth::now_secs());
        let expired: Vec<(u64, Option<NotDelivered>)> = self
            .acks
            .iter()
            .filter(|(_, a)| a.deadline_ms < now_ms)
            .map(|(k, a)| (*k, a.reason))
            .collect();
        for (seq, reason) in expired {
            bump(&self.stats.acks_timed_out_total);
            self.settle(seq, Err(reason.unwrap_or(NotDelivered::Timeout)));
        }
        let reconnects = self.bus.reconnects();
        let mut resync = false;
        if reconnects != self.mailbox_reconnects_seen {
            // Read now, and once more a second later (subscriptions are restored meanwhile).
            self.mailbox_reconnects_seen = reconnects;
            self.resync_at_ms = Some(now_ms + 1_000);
            resync = true;
        } else if self.resync_at_ms.is_some_and(|at| at <= now_ms) {
            self.resync_at_ms = None;
            resync = true;
        }
        let mut due: Vec<(ConnId, Vec<mailbox::Action>)> = Vec::new();
        // Some session holds requests, receipts or a mailbox: the next tick is a fast one.
        let mut timed = false;
        for (conn, s) in self.sessions.iter_mut() {
            let Some(more) = s.more.as_mut() else {
                continue;
            };
            if !more.requests.is_empty() {
                more.requests.retain(|_, (_, deadline)| *deadline >= now_ms);
            }
            if !more.unacked.is_empty() {
                more.unacked.retain(|_, (_, deadline)| *deadline >= now_ms);
            }
            timed |= !more.requests.is_empty() || !more.unacked.is_empty();
            if let Some(m) = more.mailbox.as_mut() {
                timed = true;
                let mut actions = Vec::new();
                if resync {
                    m.resync(now_ms, &mut actions);
                }
                m.tick(now_ms, &mut actions);
                if !actions.is_empty() {
                    due.push((*conn, actions));
                }
            }
        }
        for (conn, actions) in due {
            self.mailbox_actions(conn, actions, None);
        }
        self.heartbeat(now_ms);
        self.resync_after_reconnect();
        let late: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, d, _))| *d < now_ms)
            .map(|(k, _)| *k)
            .collect();
        for token in late {
            self.on_bus(BusEvent::Failed(token), now_ms);
        }
        self.alarm.set(self.next_tick_ms(now_ms, timed));
    }

    /// When the tick after the one at `now_ms` is due; `timed`: some session holds requests,
    /// receipts or a mailbox.
    fn next_tick_ms(&self, now_ms: u64, timed: bool) -> u64 {
        let fast =
            timed || !self.acks.is_empty() || self.resync_at_ms.is_some() || self.bus.has_backlog();
        let mut next = now_ms + if fast { TICK_MS } else { IDLE_TICK_MS };
        // A readiness deadline passes when the clock is beyond it (see above).
        if let Some(d) = self.waiting.values().map(|(_, d, _)| d + 1).min() {
            next = next.min(d);
        }
        if let Some(clock) = &self.heartbeat {
            next = next.min(clock.next_due_ms);
        }
        if let Some(&(at, _)) = self.expiries.first() {
            next = next.min(expiry_due_ms(at, now_ms));
        }
        next.max(now_ms + 1)
    }

    /// Shard 0 of a NATS node: the node heartbeat on `tether.node.<node>`, every
    /// `heartbeat_interval_ms`.
    fn heartbeat(&mut self, now_ms: u64) {
        let interval_ms = self.limits.heartbeat_interval_ms;
        let Some(clock) = self.heartbeat.as_mut() else {
            return;
        };
        if now_ms < clock.next_due_ms {
            return;
        }
        clock.seq += 1;
        clock.next_due_ms = now_ms + interval_ms;
        let text = proto::encode_heartbeat(&proto::Heartbeat {
            node: &self.node,
            node_started_at_ms: self.stats.node_started_at_unix_ms,
            seq: clock.seq,
            at_ms: (self.wall_clock)(),
            sessions: self.stats.sessions_open(),
            shards: self.bus.shards(),
            interval_ms,
            dead_after_ms: interval_ms * 5 / 2,
        });
        let subject = subject::node_heartbeat(&self.node);
        if self.bus.publish(&subject, None, Bytes::from(text)).is_ok() {
            bump(&self.stats.events_published_total);
        }
    }

    /// After a NATS reconnect, re-announces every routable session of this shard (`connect`
    /// with reason `resync`): a backend that declared the node dead during the outage learns
    /// what it still holds.
    fn resync_after_reconnect(&mut self) {
        if !self.events {
            return;
        }
        let reconnects = self.bus.reconnects();
        if reconnects == self.reconnects_seen {
            return;
        }
        self.reconnects_seen = reconnects;
        let ready: Vec<(ConnId, Rc<Claims>)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(c, s)| (*c, s.claims.clone()))
            .collect();
        for (conn, claims) in ready {
            self.publish_event(EventKind::Resync, &claims.sub, conn);
        }
    }

    /// Did this session get its `hello` yet?
    pub fn is_ready(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_some_and(|s| s.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{self, BusConfig};
    use serde_json::Value;
    use std::cell::RefCell;

    #[derive(Clone, Default)]
    struct Fake {
        got: Rc<RefCell<Vec<Value>>>,
        closed: Rc<RefCell<Option<u16>>>,
    }

    impl Outlet for Fake {
        fn send_text(&self, text: &str) -> bool {
            self.got
                .borrow_mut()
                .push(serde_json::from_str(text).expect("server sends JSON"));
            true
        }
        fn close(&self, code: u16, _reason: &'static str) {
            *self.closed.borrow_mut() = Some(code);
        }
    }

    impl Fake {
        fn take(&self) -> Vec<Value> {
            std::mem::take(&mut *self.got.borrow_mut())
        }
    }

    fn hubs(shards: usize) -> Vec<Hub<Fake>> {
        let (buses, _node) = bus::start(&BusConfig {
            node: "n1".into(),
            shards,
            queue_len: 64,
            nats_urls: vec![],
            durable: None,
        })
        .unwrap();
        let stats = Arc::new(DeviceStats::default());
        buses
            .into_iter()
            .map(|b| Hub::new(b, HubLimits::default(), stats.clone()))
            .collect()
    }

    /// Moves every pending bus input to its hub until all are quiet.
    fn pump(hubs: &mut [Hub<Fake>], now_ms: u64) {
        loop {
            let mut any = false;
            for hub in hubs.iter_mut() {
                let inbox = hub.bus().inbox();
                while let Some(Some(raw)) = futures::FutureExt::now_or_never(inbox.next()) {
                    any = true;
                    if let Some(ev) = hub.bus().accept(raw) {
                        hub.on_bus(ev, now_ms);
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    fn claims(sub: &str) -> Rc<Claims> {
        Rc::new(Claims {
            sub: sub.into(),
            exp: u64::MAX,
            topics_sub: Box::new(["news.*".into()]),
            topics_pub: Box::new(["news.sports".into()]),
            ..Claims::default()
        })
    }

    thread_local! {
        /// The wall clock the hubs of one test see (unix ms).
        static WALL_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(1_000_000) };
    }

    fn wall() -> u64 {
        WALL_MS.with(|w| w.get())
    }

    fn set_wall(ms: u64) {
        WALL_MS.with(|w| w.set(ms));
    }

    /// The per-device budget (issue 15: a device session in <= 2 KiB of RSS, `/echo`'s
    /// ~1,450 B plus the session's own): what each idle session adds to the hub's tables,
    /// fixed here so that it cannot silently regrow. A slot of a table costs its size times
    /// up to 2 (spare capacity after a growth); the `Box<Session>` its size, once.
    #[test]
    fn a_session_s_structures_stay_within_their_budget() {
        use crate::server::conn::ConnHandle;
        use std::mem::size_of;
        // sessions: ConnId -> Box<Session>: 16-byte slots, and the session itself.
        assert_eq!(size_of::<(ConnId, Box<Session<ConnHandle>>)>(), 16);
        // 40 bytes: a 48-byte malloc chunk; topics, requests, receipts and the mailbox are in
        // `more`, allocated when first used.
        assert!(
            size_of::<Session<ConnHandle>>() <= 40,
            "Session is {} bytes",
            size_of::<Session<ConnHandle>>()
        );
        // The two maps of a busy session carry no hasher state.
        assert_eq!(size_of::<TokenMap<(String, u64)>>(), 32);
        // devices: device id (shared with the bus tables and the node count) -> its sessions
        // here, one inline.
        assert_eq!(size_of::<(Arc<str>, Few<ConnId>)>(), 32);
        // expiries: 16 bytes per session in the B-tree.
        assert_eq!(size_of::<(u64, ConnId)>(), 16);
        // The claims, shared by the endpoint's session and the hub (one `Rc`: with its two
        // counts 120 bytes, a 128-byte malloc chunk).
        assert!(
            size_of::<Claims>() <= 104,
            "Claims is {} bytes",
            size_of::<Claims>()
        );
    }
    #[test]
    fn send_with_ack_is_delivered_only_once_a_receiver_acks() {
        let mut h = hubs(2);
        for hub in h.iter_mut() {
            hub.set_wall_clock(wall);
        }
        let (a, b, b2) = (Fake::default(), Fake::default(), Fake::default());
        h[0].open(1, a.clone(), claims("phone"), None, 0);
        h[1].open(2, b.clone(), claims("tv"), None, 0);
        h[1].open(3, b2.clone(), claims("tv"), None, 0);
        pump(&mut h, 0);
        assert_eq!(a.take()[0]["op"], "hello");
        assert_eq!(b.take()[0]["shard"], 1);
        b2.take();
        h[0].text(
            1,
            r#"{"op":"send","to":"tv","from":"admin","data":{"k":1},"id":"m1","ack":true}"#,
            0,
        );
        pump(&mut h, 0);
        let mut ack_ids = Vec::new();
        for s in [&b, &b2] {
            let got = s.take();
            assert_eq!(got.len(), 1);
            let ack_id = got[0]["ack_id"].as_str().expect("ack_id").to_owned();
            assert_eq!(
                got[0],
                serde_json::json!({"op":"msg","from":"phone","ack_id":ack_id,"data":{"k":1}})
            );
            ack_ids.push(ack_id);
        }
        // Queued on both sessions is not delivered: nothing until one acknowledges.
        h[0].tick(1_000);
        assert!(a.take().is_empty());
        let ack = format!(r#"{{"op":"ack","ack_id":"{}","id":"a1"}}"#, ack_ids[1]);
        h[1].text(3, &ack, 1_000);
        assert_eq!(b2.take(), vec![serde_json::json!({"op":"ack","id":"a1"})]);
        pump(&mut h, 1_000);
        assert_eq!(
            a.take(),
            vec![serde_json::json!({"op":"ack","id":"m1","delivered":true})]
        );
        // Acknowledging twice, or something unknown: unknown_ack.
        h[1].text(3, &ack, 1_000);
        assert_eq!(b2.take()[0]["code"], "unknown_ack");
        // To nobody: offline at once (no shard is interested).
        h[0].text(
            1,
            r#"{"op":"send","to":"ghost","data":1,"id":"m2","ack":true}"#,
            1_000,
        );
        pump(&mut h, 1_000);
        assert_eq!(
            a.take(),
            vec![serde_json::json!({"op":"ack","id":"m2","delivered":false,"reason":"offline"})]
        );
        // Received by both, one closes, the other never acks: closed, at the deadline.
        h[0].text(
            1,
            r#"{"op":"send","to":"tv","data":3,"id":"m3","ack":true}"#,
            1_000,
        );
        pump(&mut h, 1_000);
        let late_id = b.take()[0]["ack_id"].as_str().unwrap().to_owned();
        b2.take();
        h[1].close(3, 1008, 1_500);
        pump(&mut h, 1_500);
        assert!(a.take().is_empty(), "another session may still acknowledge");
        h[0].tick(3_001);
        set_wall(wall() + 2_001);
        assert_eq!(
            a.take(),
            vec![serde_json::json!({"op":"ack","id":"m3","delivered":false,"reason":"closed"})]
        );
        // Its receiver acknowledges too late: refused, and nothing reaches the sender.
        h[1].tick(3_001);
        h[1].text(
            2,
            &format!(r#"{{"op":"ack","ack_id":"{late_id}","id":"a2"}}"#),
            3_001,
        );
        assert_eq!(b.take()[0]["code"], "unknown_ack");
        pump(&mut h, 3_001);
        assert!(a.take().is_empty());
    }

    #[test]
    fn a_message_past_its_deadline_is_dropped_where_it_arrives() {
        let mut h = hubs(2);
        for hub in h.iter_mut() {
            hub.set_wall_clock(wall);
        }
        let (a, b) = (Fake::default(), Fake::default());
        h[0].open(1, a.clone(), claims("phone"), None, 0);
        h[1].open(2, b.clone(), claims("tv"), None, 0);
        pump(&mut h, 0);
        a.take();
        b.take();
        h[0].text(
            1,
            r#"{"op":"send","to":"tv","data":1,"id":"m","ack":true}"#,
            0,
        );
        // The message is late (a NATS buffer flushed after an outage): the receiving node's
        // clock has passed the deadline when it arrives.
        set_wall(wall() + 2_000);
        pump(&mut h, 0);
        assert!(b.take().is_empty());
        h[0].tick(2_001);
        assert_eq!(
            a.take(),
            vec![serde_json::json!({"op":"ack","id":"m","delivered":false,"reason":"timeout"})]
        );
        let mut text = String::new();
        h[1].stats.render_prometheus(&mut text);
        assert!(
            text.contains("tether_device_deliveries_expired_total 1"),
            "{text}"
        );
    }

    #[test]
    fn topics_follow_claims_and_interest_ends_with_the_session() {
        let mut h = hubs(2);
        let (a, b) = (Fake::default(), Fake::default());
        h[0].open(1, a.clone(), claims("phone"), None, 0);
        h[1].open(2, b.clone(), claims("tv"), None, 0);
        pump(&mut h, 0);
        a.take();
        b.take();
        h[1].text(2, r#"{"op":"sub","topic":"sport.x","id":"s0"}"#, 0);
        assert_eq!(b.take()[0]["code"], "forbidden");
        h[1].text(2, r#"{"op":"sub","topic":"news.sports","id":"s1"}"#, 0);
        pump(&mut h, 0);
        assert_eq!(b.take(), vec![serde_json::json!({"op":"ack","id":"s1"})]);
        h[0].text(
            1,
            r#"{"op":"pub","topic":"news.weather","data":1,"id":"p0"}"#,
            0,
        );
        assert_eq!(a.take()[0]["code"], "forbidden");
        h[0].text(
            1,
            r#"{"op":"pub","topic":"news.sports","b64":"AAE=","id":"p1"}"#,
            0,
        );
        pump(&mut h, 0);
        assert_eq!(a.take(), vec![serde_json::json!({"op":"ack","id":"p1"})]);
        assert_eq!(
            b.take(),
            vec![serde_json::json!({"op":"msg","from":"phone","topic":"news.sports","b64":"AAE="})]
        );
        h[1].close(2, 1000, 0);
        pump(&mut h, 0);
        h[0].text(1, r#"{"op":"pub","topic":"news.sports","data":2}"#, 0);
        h[0].text(
            1,
            r#"{"op":"send","to":"tv","data":2,"id":"m","ack":true}"#,
            0,
        );
        pump(&mut h, 0);
        assert!(b.take().is_empty());
        assert_eq!(a.take()[0]["reason"], "offline");
    }

    #[test]
    fn errors_reply_ping_and_embedded_upstream() {
        let mut h = hubs(1);
        let a = Fake::default();
        h[0].open(1, a.clone(), claims("phone"), None, 0);
        pump(&mut h, 0);
        assert_eq!(a.take()[0]["op"], "hello");
        h[0].text(1, "nope", 0);
        h[0].text(1, r#"{"op":"ping","id":"k"}"#, 0);
        h[0].text(1, r#"{"op":"reply","rid":"77","data":1,"id":"r"}"#, 0);
        h[0].text(1, r#"{"op":"up","service":"billing","data":1,"id":"u"}"#, 0);
        h[0].binary(1);
        let codes: Vec<Value> = a
            .take()
            .iter()
            .map(|v| v.get("code").cloned().unwrap_or(v["op"].clone()))
            .collect();
        assert_eq!(
            codes,
            [
                "bad_json",
                "pong",
                "unknown_request",
                "no_backend",
                "binary_unsupported"
            ]
        );
    }
}
