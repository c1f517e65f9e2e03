//! The bus: routing by subject interest, behind one interface with two implementations.
//!
//! This module owns how a shard reaches every other shard and node. Each shard gets one
//! [`ShardBus`], its only door to the bus: it declares interest in subjects
//! ([`ShardBus::subscribe`] / [`ShardBus::unsubscribe`]), publishes ([`ShardBus::publish`]),
//! asks for a barrier ([`ShardBus::barrier`]: a [`BusEvent::Ready`] arrives once every earlier
//! interest change is in effect everywhere) and receives ([`ShardBus::recv`]).
//!
//! Each shard receives on two lanes, each one shard mesh (`tether_shards::Mesh`, bounded
//! channels into every shard, FIFO per sender) of its own message type: control (interest
//! changes, barriers and their acknowledgements, answers) and data (messages). Two meshes, not
//! one, so that a flood of data cannot hold back an interest change or a barrier: each lane is
//! bounded on its own and control is read first.
//!
//! - **Embedded** ([`embedded`], the default): the node's shards route among themselves over
//!   those meshes. Each shard keeps its own replica of the node's interest table (subject ->
//!   shards), updated by interest messages that every shard sends to every other on the control
//!   mesh; a publish looks up its local replica and sends to the interested shards over the data
//!   mesh. No shared map, no lock.
//! - **NATS** ([`nats`], `--nats URL[,URL...]`): every shard speaks NATS itself, over its own
//!   connection ([`crate::nats::Connection`], a task on the shard's executor, started by
//!   [`ShardBus::start`] on the shard). Its subscriptions are entries in the shard's own table,
//!   and what arrives is copied once into the shard's own two lanes (a mesh of one shard).
//!   NATS's interest graph is the routing table, across shards and nodes alike, so shards send
//!   nothing to each other.
//!
//! Every queue is bounded. Data that meets a full queue is dropped and counted
//! ([`BusStats`]); interest changes and barrier messages are never dropped: when their channel is
//! full they wait in a shard-local ordered backlog (itself capped at [`CONTROL_BACKLOG_MAX`]) that
//! is retried on every [`ShardBus::recv`] and [`ShardBus::maintain`].

pub mod embedded;
pub mod jetstream;
pub mod nats;

use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_shards::{Mesh, MeshEndpoint, MeshSendError};

/// Most control messages a shard may hold back while the control channel is full.
pub const CONTROL_BACKLOG_MAX: usize = 1 << 20;

/// A message on the bus.
#[derive(Clone, Debug)]
pub struct BusMessage {
    /// The subject it was published on (what [`crate::proto::subject::parse`] classifies).
    pub subject: String,
    /// Where an answer goes (a NATS request's inbox, or a shard inbox for a receipt).
    pub reply: Option<String>,
    /// The message body, not parsed by the bus.
    pub payload: Bytes,
    /// When the message entered the node that took it in: published by a shard of this node,
    /// or received from NATS (then the publishing tether node's time from the
    /// [`ARRIVAL_HEADER`] header, if it has one). Wall clock, microseconds since the Unix
    /// epoch, so that it means the same on every node; 0: unknown.
    pub arrived_unix_us: u64,
}

/// NATS header that carries [`BusMessage::arrived_unix_us`] between nodes (decimal).
pub const ARRIVAL_HEADER: &str = "Tether-Arrival-Us";

/// The wall clock in microseconds since the Unix epoch (0 before 1970).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One message of a device mailbox, as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The stream sequence (what the backend's publish acknowledgement said).
    pub seq: u64,
    /// The body the backend published.
    pub payload: Bytes,
}

/// The outcome of a durable operation a shard asked for ([`ShardBus::mailbox_read`],
/// [`ShardBus::publish_upstream`]), under the token it gave.
#[derive(Debug)]
pub enum DurableEvent {
    /// A mailbox read: the device's first message at or after the sequence asked for, or none.
    Read {
        /// The token of [`ShardBus::mailbox_read`].
        token: u64,
        /// The message, `None` when the device has nothing there (yet, on this replica).
        message: Option<StoredMessage>,
    },
    /// A mailbox read failed (retry later).
    ReadFailed {
        /// The token of [`ShardBus::mailbox_read`].
        token: u64,
        /// Why, for the log.
        reason: String,
    },
    /// A mailbox acknowledgement asked for with a token: applied to the stream, or not.
    Acked {
        /// The token of [`ShardBus::mailbox_ack`].
        token: u64,
        /// `Err` with the reason when a message was not removed (it comes again).
        result: Result<(), String>,
    },
    /// An upstream publish: `Some(seq)` when a stream stored it, `None` when no stream captures
    /// its subject (published as a plain message).
    Upstream {
        /// The token of [`ShardBus::publish_upstream`].
        token: u64,
        /// The stream sequence, `None` for a plain publish, `Err` with the reason when not sent
        /// or not stored.
        result: Result<Option<u64>, String>,
    },
}

/// What a shard receives from the bus.
#[derive(Debug)]
pub enum BusEvent {
    /// The answer to a durable operation.
    Durable(DurableEvent),
    /// A message on a subject this shard is interested in (or on its inbox).
    Message(BusMessage),
    /// Every interest change made before [`ShardBus::barrier`] with this token is in effect.
    Ready(u64),
    /// A message this shard published with this reply subject reached no subscriber at all
    /// (NATS "no responders"; on the embedded bus, no shard was interested).
    NoResponders(String),
    /// The barrier with this token could not be started (its control queue and backlog are
    /// full). A barrier during a NATS outage does not fail: it completes after the reconnect, and
    /// the hub bounds the wait with its readiness timeout.
    Failed(u64),
}

/// Why a bus operation was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum BusError {
    /// A bounded queue is full: the message was dropped (and counted).
    Full,
    /// The operation needs NATS (backends) and this node runs the embedded bus.
    NoBackend,
    /// The operation needs durable delivery (`--durable` on NATS with JetStream).
    NoDurable,
}

/// Why a request over the bus failed.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No answer within the request's timeout.
    Timeout,
    /// Nobody subscribes to the subject (NATS "no responders").
    NoResponders,
    /// Requests need NATS and this node runs the embedded bus.
    NoBackend,
    /// The bus could not carry the request (queue full, connection closed, NATS error); the text
    /// says which, for the log.
    Unavailable(String),
}

impl From<crate::nats::RequestError> for RequestError {
    fn from(e: crate::nats::RequestError) -> RequestError {
        match e {
            crate::nats::RequestError::Timeout => RequestError::Timeout,
            crate::nats::RequestError::NoResponders => RequestError::NoResponders,
            crate::nats::RequestError::Unavailable(why) => RequestError::Unavailable(why),
        }
    }
}

/// Counters and gauges of the bus, shared by the shards; rendered in `/metrics`.
#[derive(Debug, Default)]
pub struct BusStats {
    /// `embedded` or `nats`.
    pub kind: &'static str,
    /// `tether_bus_published_total`: messages handed to the bus by shards.
    pub published_total: AtomicU64,
    /// `tether_bus_received_total`: messages the bus delivered to shards.
    pub received_total: AtomicU64,
    /// Messages dropped because a queue towards the bus (or another shard) was full.
    pub dropped_outbound_total: AtomicU64,
    /// Messages dropped because a queue towards a shard was full.
    pub dropped_inbound_total: AtomicU64,
    /// Shards whose bus is usable now: on NATS, shards whose connection is up; on the embedded
    /// bus, every shard.
    pub connected_shards: AtomicI64,
    /// The node's shards (what [`BusStats::connected_shards`] reaches when all are connected).
    pub shards: AtomicI64,
    /// `tether_bus_reconnects_total`: reconnections to NATS.
    pub reconnects_total: AtomicU64,
    /// `tether_bus_disconnects_total`: losses of the NATS connection.
    pub disconnects_total: AtomicU64,
    /// Subscriptions this node holds on the bus (per shard and subject).
    pub subscriptions: AtomicI64,
    /// Control messages (interest changes and barriers between shards, barrier completions,
    /// durable answers, "no responders") that found their queue full and waited in a backlog.
    pub control_backlogged_total: AtomicU64,
    /// Mailbox announcements (NATS) that found the shard's data queue full and waited in
    /// their own queue.
    pub announcements_held_total: AtomicU64,
    /// Durable delivery (JetStream) counters and the mailbox stream's limits.
    pub mailbox: jetstream::MailboxStats,
}

impl BusStats {
    pub(crate) fn new(kind: &'static str, shards: usize) -> BusStats {
        let stats = BusStats {
            kind,
            ..BusStats::default()
        };
        stats.shards.store(shards as i64, Ordering::Relaxed);
        stats
    }

    /// True when every shard's bus is usable (`tether_bus_connected` 1): always on the embedded
    /// bus; on NATS, when every shard's connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected_shards.load(Ordering::Relaxed) >= self.shards.load(Ordering::Relaxed)
    }

    /// Appends the bus metrics in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let kind = self.kind;
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let g = |v: &AtomicI64| v.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP tether_bus_connected 1 while the bus is usable on every shard (NATS: every shard's connection up).\n\
             # TYPE tether_bus_connected gauge\n\
             tether_bus_connected{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_connected_shards Shards whose bus is usable (NATS: whose connection is up).\n\
             # TYPE tether_bus_connected_shards gauge\n\
             tether_bus_connected_shards{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_published_total Messages handed to the bus by shards.\n\
             # TYPE tether_bus_published_total counter\n\
             tether_bus_published_total{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_received_total Messages the bus delivered to shards.\n\
             # TYPE tether_bus_received_total counter\n\
             tether_bus_received_total{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_dropped_total Messages dropped on a full bus queue.\n\
             # TYPE tether_bus_dropped_total counter\n\
             tether_bus_dropped_total{{bus=\"{kind}\",direction=\"outbound\"}} {}\n\
             tether_bus_dropped_total{{bus=\"{kind}\",direction=\"inbound\"}} {}\n\
             # HELP tether_bus_reconnects_total Reconnections to NATS (all shards' connections).\n\
             # TYPE tether_bus_reconnects_total counter\n\
             tether_bus_reconnects_total{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_disconnects_total Losses of a NATS connection (all shards' connections).\n\
             # TYPE tether_bus_disconnects_total counter\n\
             tether_bus_disconnects_total{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_subscriptions Subscriptions held on the bus (per shard and subject).\n\
             # TYPE tether_bus_subscriptions gauge\n\
             tether_bus_subscriptions{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_control_backlogged_total Control messages (interest changes, barriers, their completions, durable answers, no responders) that waited for a full queue.\n\
             # TYPE tether_bus_control_backlogged_total counter\n\
             tether_bus_control_backlogged_total{{bus=\"{kind}\"}} {}\n\
             # HELP tether_bus_announcements_held_total Mailbox announcements that waited for a full data queue (NATS).\n\
             # TYPE tether_bus_announcements_held_total counter\n\
             tether_bus_announcements_held_total{{bus=\"{kind}\"}} {}\n",
            i64::from(self.is_connected()),
            g(&self.connected_shards),
            c(&self.published_total),
            c(&self.received_total),
            c(&self.dropped_outbound_total),
            c(&self.dropped_inbound_total),
            c(&self.reconnects_total),
            c(&self.disconnects_total),
            g(&self.subscriptions),
            c(&self.control_backlogged_total),
            c(&self.announcements_held_total),
        );
        self.mailbox.render_prometheus(out);
    }
}

/// How the node's bus is built.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// This node's id (embedded in inbox subjects and presence answers).
    pub node: String,
    /// Number of shards.
    pub shards: usize,
    /// Length of every bounded queue, in messages.
    pub queue_len: usize,
    /// NATS server URLs; empty = embedded bus.
    pub nats_urls: Vec<String>,
    /// Durable delivery (the mailbox stream on JetStream); NATS only.
    pub durable: Option<jetstream::DurableConfig>,
}

pub use crate::nats::NatsAuth;

/// The node-level handle of the bus: its statistics.
pub struct BusNode {
    stats: Arc<BusStats>,
}

impl BusNode {
    /// The shared statistics (for `/metrics`).
    pub fn stats(&self) -> Arc<BusStats> {
        self.stats.clone()
    }
}

/// Builds the bus: one [`ShardBus`] per shard (move each to its shard) and the node handle.
/// With NATS URLs nothing connects yet: each shard starts its own connection on its shard
/// ([`ShardBus::start`]), which connects in the background and keeps trying forever.
pub fn start(config: &BusConfig) -> Result<(Vec<ShardBus>, BusNode), String> {
    start_with(config, &NatsAuth::default())
}

/// [`start`] with NATS credentials and TLS options (ignored by the embedded bus). The URLs and
/// the credential and TLS files are checked here, so that a typo stops the start with the
/// setting's name instead of an endless reconnect loop.
pub fn start_with(config: &BusConfig, auth: &NatsAuth) -> Result<(Vec<ShardBus>, BusNode), String> {
    if config.shards == 0 {
        return Err("the bus needs at least one shard".into());
    }
    if config.queue_len == 0 {
        return Err("bus queue length must be at least 1".into());
    }
    if config.nats_urls.is_empty() && config.durable.is_some() {
        return Err("durable delivery keeps messages in NATS JetStream: give --nats too".into());
    }
    if config.nats_urls.is_empty() {
        let stats = Arc::new(BusStats::new("embedded", config.shards));
        stats
            .connected_shards
            .store(config.shards as i64, Ordering::Relaxed);
        let links = embedded::build(config, stats.clone());
        Ok((links, BusNode { stats }))
    } else {
        let stats = Arc::new(BusStats::new("nats", config.shards));
        let links = nats::start(config, auth, stats.clone())?;
        Ok((links, BusNode { stats }))
    }
}

/// Internal control messages between a shard and the rest of the bus.
#[derive(Debug)]
pub(crate) enum Ctrl {
    /// Embedded: shard `shard` gained (`add`) or lost interest in `key`: an exact subject, or
    /// with `device` every subject of that device id.
    Interest {
        key: Arc<str>,
        device: bool,
        shard: usize,
        add: bool,
    },
    /// Embedded: shard `from` asks for an acknowledgement once earlier interest is applied.
    Barrier { from: usize, token: u64 },
    /// Embedded: acknowledgement of a barrier.
    BarrierAck { token: u64 },
    /// Barrier complete.
    Ready(u64),
    /// A publish with this reply subject reached nobody.
    NoResponders(String),
    /// NATS: the answer to a durable operation.
    Durable(DurableEvent),
    /// NATS: this shard's connection logged in again; wakes the hub's loop, which then ticks
    /// at once to answer the reconnect (resync, mailbox re-reads).
    Reconnected,
}

enum Link {
    Embedded(embedded::EmbeddedLink),
    Nats(nats::NatsLink),
}

/// One shard's ends of the bus's two meshes: what it receives, and (embedded bus) how it
/// reaches every other shard.
pub(crate) struct Lanes {
    /// Interest changes, barriers, acknowledgements and answers; never dropped (senders
    /// backlog what does not fit).
    pub(crate) ctrl: MeshEndpoint<Ctrl>,
    /// Messages; dropped and counted when the destination's lane is full.
    pub(crate) data: MeshEndpoint<BusMessage>,
}

impl Lanes {
    /// One [`Lanes`] per shard, each lane holding `queue_len` messages per destination.
    pub(crate) fn build(shards: usize, queue_len: usize) -> Vec<Lanes> {
        Mesh::build(shards, queue_len)
            .into_iter()
            .zip(Mesh::build(shards, queue_len))
            .map(|(ctrl, data)| Lanes { ctrl, data })
            .collect()
    }
}

/// One shard's door to the bus. Created on the main thread, then moved to and used only by its
/// shard.
pub struct ShardBus {
    shard: usize,
    shards: usize,
    node: Arc<str>,
    link: Link,
    lanes: Lanes,
    local: VecDeque<BusEvent>,
    stats: Arc<BusStats>,
}

impl ShardBus {
    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The node's number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// True when backends can be reached (NATS).
    pub fn has_backends(&self) -> bool {
        matches!(self.link, Link::Nats(_))
    }

    /// True while the bus can carry messages now (always on the embedded bus; on NATS, while
    /// this shard's connection is up: what is published during an outage waits in the
    /// connection's bounded buffer and may arrive much later).
    pub fn is_connected(&self) -> bool {
        match &self.link {
            Link::Nats(l) => l.is_connected(),
            Link::Embedded(_) => true,
        }
    }

    /// How often this shard's own NATS connection logged in again after its first login (0 on
    /// the embedded bus): what was published to this shard while it was away is lost, so the
    /// shard re-reads its sessions' mailboxes and re-announces its sessions when this changes.
    /// Other shards' connections do not count here.
    pub fn reconnects(&self) -> u64 {
        match &self.link {
            Link::Nats(l) => l.reconnects(),
            Link::Embedded(_) => 0,
        }
    }

    /// Starts this shard's side of the bus; call it on the shard, before anything else (the
    /// device endpoint does when it builds the shard's hub). On NATS it starts the shard's
    /// connection task on the current executor (it connects in the background and keeps trying
    /// forever); nothing to do on the embedded bus. Operations before it start it too.
    pub fn start(&mut self) -> Result<(), String> {
        match &mut self.link {
            Link::Nats(l) => l.start(),
            Link::Embedded(_) => Ok(()),
        }
    }

    /// Ends this shard's side of the bus after a drain: on NATS, writes what is queued (the
    /// drain's disconnect events) for at most `flush_timeout` and closes the connection. The
    /// future owns what it needs, so the shard may await it without borrowing the bus.
    pub fn close(&mut self, flush_timeout: Duration) -> impl std::future::Future<Output = ()> {
        let conn = match &mut self.link {
            Link::Nats(l) => l.close(),
            Link::Embedded(_) => None,
        };
        async move {
            if let Some(conn) = conn {
                conn.close(flush_timeout).await;
            }
        }
    }

    /// True when durable delivery is on (NATS with `--durable`).
    pub fn has_durable(&self) -> bool {
        match &self.link {
            Link::Nats(l) => l.durable(),
            Link::Embedded(_) => false,
        }
    }

    /// Reads the first mailbox message of `device` at or after stream sequence `from`; the
    /// answer is a [`DurableEvent::Read`] or [`DurableEvent::ReadFailed`] with `token`.
    pub fn mailbox_read(&mut self, device: &str, from: u64, token: u64) {
        let refused = match &mut self.link {
            Link::Nats(l) if l.durable() => l.mailbox_read(device, from, token).err(),
            _ => Some(BusError::NoDurable),
        };
        if let Some(err) = refused {
            self.local
                .push_back(BusEvent::Durable(DurableEvent::ReadFailed {
                    token,
                    reason: format!("{err:?}"),
                }));
        }
    }

    /// Acknowledges messages of `device`'s mailbox: removes the stream sequences `seqs` (all
    /// the device's, as its reads returned them) from the stream. With a token the outcome
    /// comes back as [`DurableEvent::Acked`]; without, an acknowledgement that does not reach
    /// the stream only means redelivery (logged and counted).
    pub fn mailbox_ack(
        &mut self,
        device: &str,
        seqs: Vec<u64>,
        token: Option<u64>,
    ) -> Result<(), BusError> {
        match &mut self.link {
            Link::Nats(l) if l.durable() => l.mailbox_ack(device, seqs, token),
            _ => Err(BusError::NoDurable),
        }
    }

    /// Publishes an upstream message: a JetStream publish when a stream captures `subject`
    /// (answered once stored), else a plain one. The answer is a [`DurableEvent::Upstream`].
    pub fn publish_upstream(&mut self, subject: &str, payload: Bytes, token: u64) {
        let refused = match &mut self.link {
            Link::Nats(l) => l.publish_upstream(subject, payload, token).err(),
            Link::Embedded(_) => Some(BusError::NoBackend),
        };
        if let Some(err) = refused {
            self.local
                .push_back(BusEvent::Durable(DurableEvent::Upstream {
                    token,
                    result: Err(format!("{err:?}")),
                }));
        }
    }

    /// The shared statistics.
    pub fn stats(&self) -> &Arc<BusStats> {
        &self.stats
    }

    /// Declares this shard's interest in `subject` (exact subject; a device's own subjects are
    /// declared with [`ShardBus::subscribe_device`]). The caller refcounts: call once per shard
    /// and subject.
    pub fn subscribe(&mut self, subject: &str) -> Result<(), BusError> {
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        match &mut self.link {
            Link::Embedded(l) => l.interest(&self.lanes, subject, true, &self.stats),
            Link::Nats(l) => l.subscribe(subject),
        }
    }

    /// Declares this shard's interest in everything addressed to `device` (its direct, request
    /// and presence subjects), and in nothing else. On NATS this is one wildcard subscription
    /// `tether.*.<device>` (one entry in the shard's table and one interest on the server
    /// instead of three per device) whose other matches are filtered out before they reach the
    /// shard; on the embedded bus, one entry for the device id in every shard's device table,
    /// which routes all four subjects. Refcounted by the caller like [`ShardBus::subscribe`].
    /// Pass the device id as an `Arc<str>` to share it: the embedded bus keys every shard's
    /// table with that one allocation.
    pub fn subscribe_device<D: Into<Arc<str>> + AsRef<str>>(
        &mut self,
        device: D,
    ) -> Result<(), BusError> {
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        match &mut self.link {
            Link::Nats(l) => l.subscribe_device(device.into()),
            Link::Embedded(l) => l.device_interest(&self.lanes, &device.into(), true, &self.stats),
        }
    }

    /// Withdraws what [`ShardBus::subscribe_device`] declared.
    pub fn unsubscribe_device<D: Into<Arc<str>> + AsRef<str>>(&mut self, device: D) {
        match &mut self.link {
            Link::Nats(l) => {
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
                let _ = l.unsubscribe_device(device.as_ref());
            }
            Link::Embedded(l) => {
                self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
                let _ = l.device_interest(&self.lanes, &device.into(), false, &self.stats);
            }
        }
    }

    /// Withdraws this shard's interest in `subject`. Never lost: a full channel defers it.
    pub fn unsubscribe(&mut self, subject: &str) {
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let _ = match &mut self.link {
            Link::Embedded(l) => l.interest(&self.lanes, subject, false, &self.stats),
            Link::Nats(l) => l.unsubscribe(subject),
        };
    }

    /// Asks for [`BusEvent::Ready`]`(token)` once every earlier interest change of this shard is
    /// in effect on the whole bus (every shard, or the NATS server).
    pub fn barrier(&mut self, token: u64) {
        match &mut self.link {
            Link::Embedded(l) => {
                if let Some(done) = l.barrier(&self.lanes, token, &self.stats) {
                    self.local.push_back(done);
                }
            }
            Link::Nats(l) => {
                if l.barrier(token).is_err() {
                    self.local.push_back(BusEvent::Failed(token));
                }
            }
        }
    }

    /// Publishes a message. `Err(Full)`: dropped on a full queue (counted). A message with a
    /// reply subject that reaches no subscriber produces [`BusEvent::NoResponders`] later.
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let msg = BusMessage {
            subject: subject.to_owned(),
            reply: reply.map(str::to_owned),
            payload,
            arrived_unix_us: unix_us(),
        };
        let result = match &mut self.link {
            Link::Embedded(l) => {
                let reply = msg.reply.clone();
                let reached = l.publish(&self.lanes, msg, &self.stats);
                if let (Ok(0), Some(reply)) = (&reached, reply) {
                    self.local.push_back(BusEvent::NoResponders(reply));
                }
                reached.map(|_| ())
            }
            Link::Nats(l) => l.publish(msg, &self.stats),
        };
        if result.is_ok() {
            self.stats.published_total.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Sends a request to a backend (NATS only) and returns a future for its reply; the future
    /// owns everything it needs, so the shard may await it in any of its tasks.
    pub fn request(
        &mut self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Bytes, RequestError>> + 'static {
        let reply = match &mut self.link {
            Link::Embedded(_) => None,
            Link::Nats(l) => Some(l.request(subject, payload, timeout)),
        };
        async move {
            match reply {
                None => Err(RequestError::NoBackend),
                Some(reply) => reply.await,
            }
        }
    }

    /// Retries deferred control messages; call it now and then (the device endpoint does on its
    /// timer tick).
    pub fn maintain(&mut self) {
        match &mut self.link {
            Link::Embedded(l) => l.flush_backlog(&self.lanes),
            Link::Nats(l) => l.flush_backlog(),
        }
    }

    /// True while control messages or mailbox announcements wait for room in a full channel
    /// ([`ShardBus::maintain`] retries them).
    pub fn has_backlog(&self) -> bool {
        match &self.link {
            Link::Embedded(l) => l.has_backlog(),
            Link::Nats(l) => l.has_backlog(),
        }
    }

    /// A handle that waits for this shard's next raw bus input without borrowing the
    /// [`ShardBus`] (so a shard can await it while other code on the shard publishes). Hand
    /// what it returns to [`ShardBus::accept`].
    pub fn inbox(&self) -> BusInbox {
        BusInbox {
            ctrl_rx: self.lanes.ctrl.receiver(),
            data_rx: self.lanes.data.receiver(),
        }
    }

    /// Events produced locally (e.g. a barrier on a one-shard node), to handle after an
    /// operation.
    pub fn poll_local(&mut self) -> Option<BusEvent> {
        self.local.pop_front()
    }

    /// Interprets one raw input from [`BusInbox::next`]; `None` when it was internal.
    pub fn accept(&mut self, incoming: Incoming) -> Option<BusEvent> {
        match incoming.0 {
            Raw::Data(msg) => {
                self.stats.received_total.fetch_add(1, Ordering::Relaxed);
                if let Link::Nats(l) = &mut self.link {
                    // Room for a mailbox announcement that waits for it.
                    l.flush_backlog();
                }
                Some(BusEvent::Message(msg))
            }
            Raw::Ctrl(Ctrl::Ready(token)) => Some(BusEvent::Ready(token)),
            Raw::Ctrl(Ctrl::NoResponders(reply)) => Some(BusEvent::NoResponders(reply)),
            Raw::Ctrl(Ctrl::Durable(ev)) => Some(BusEvent::Durable(ev)),
            Raw::Ctrl(other) => match &mut self.link {
                Link::Embedded(l) => l.on_ctrl(&self.lanes, other, &self.stats),
                Link::Nats(_) => None,
            },
        }
    }

    /// The next event for this shard (local events, then control, then data). Returns `None`
    /// only when the bus is gone.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        let inbox = self.inbox();
        loop {
            if let Some(ev) = self.local.pop_front() {
                return Some(ev);
            }
            self.maintain();
            let incoming = inbox.next().await?;
            if let Some(ev) = self.accept(incoming) {
                return Some(ev);
            }
        }
    }
}

enum Raw {
    Ctrl(Ctrl),
    Data(BusMessage),
}

/// One raw input from the bus, to be interpreted by [`ShardBus::accept`].
pub struct Incoming(Raw);

/// The receiving side of a shard's bus link (see [`ShardBus::inbox`]).
#[derive(Clone)]
pub struct BusInbox {
    ctrl_rx: flume::Receiver<Ctrl>,
    data_rx: flume::Receiver<BusMessage>,
}

impl BusInbox {
    /// The next input if one is queued now (control before data).
    pub fn try_next(&self) -> Option<Incoming> {
        if let Ok(ctrl) = self.ctrl_rx.try_recv() {
            return Some(Incoming(Raw::Ctrl(ctrl)));
        }
        self.data_rx
            .try_recv()
            .ok()
            .map(|msg| Incoming(Raw::Data(msg)))
    }

    /// Waits for the next input, control before data. `None` when the bus is gone.
    pub async fn next(&self) -> Option<Incoming> {
        match self.ctrl_rx.try_recv() {
            Ok(ctrl) => return Some(Incoming(Raw::Ctrl(ctrl))),
            Err(flume::TryRecvError::Disconnected) => return None,
            Err(flume::TryRecvError::Empty) => {}
        }
        let c = std::pin::pin!(self.ctrl_rx.recv_async());
        let d = std::pin::pin!(self.data_rx.recv_async());
        match futures::future::select(c, d).await {
            futures::future::Either::Left((Ok(ctrl), _)) => Some(Incoming(Raw::Ctrl(ctrl))),
            futures::future::Either::Right((Ok(msg), _)) => Some(Incoming(Raw::Data(msg))),
            _ => None,
        }
    }
}

/// Where a [`Backlog`] sends: a bounded channel that may be full.
pub(crate) trait Lane<T> {
    /// Puts `msg` in the channel now, or gives it back.
    fn try_put(&self, msg: T) -> Result<(), MeshSendError<T>>;
}

/// A shard's own lane, as the NATS link feeds it.
impl<T> Lane<T> for flume::Sender<T> {
    fn try_put(&self, msg: T) -> Result<(), MeshSendError<T>> {
        self.try_send(msg).map_err(MeshSendError::from)
    }
}

/// The channel of a mesh towards one shard.
pub(crate) struct ToShard<'a, T>(pub(crate) &'a MeshEndpoint<T>, pub(crate) usize);

impl<T> Lane<T> for ToShard<'_, T> {
    fn try_put(&self, msg: T) -> Result<(), MeshSendError<T>> {
        self.0.try_send_to(self.1, msg)
    }
}

/// An ordered backlog of messages for one [`Lane`]: a message goes straight to the lane only
/// when nothing is already waiting, so order is kept.
pub(crate) struct Backlog<T> {
    queue: VecDeque<T>,
}

impl<T> Backlog<T> {
    pub(crate) fn new() -> Backlog<T> {
        Backlog {
            queue: VecDeque::new(),
        }
    }

    /// Sends or defers. `Err(Full)` only when the backlog itself is at its cap. A stopped
    /// destination takes the message as sent (nobody is left to need it).
    pub(crate) fn send(
        &mut self,
        lane: &impl Lane<T>,
        msg: T,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        if self.queue.is_empty() {
            match lane.try_put(msg) {
                Ok(()) | Err(MeshSendError::Stopped(_) | MeshSendError::NoSuchShard(_)) => {
                    return Ok(())
                }
                Err(MeshSendError::Full(msg)) => {
                    stats
                        .control_backlogged_total
                        .fetch_add(1, Ordering::Relaxed);
                    self.queue.push_back(msg);
                    return Ok(());
                }
            }
        }
        if self.queue.len() >= CONTROL_BACKLOG_MAX {
            return Err(BusError::Full);
        }
        stats
            .control_backlogged_total
            .fetch_add(1, Ordering::Relaxed);
        self.queue.push_back(msg);
        Ok(())
    }

    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Moves as much of the backlog as fits into the channel.
    pub(crate) fn flush(&mut self, lane: &impl Lane<T>) {
        while let Some(msg) = self.queue.pop_front() {
            match lane.try_put(msg) {
                Ok(()) => {}
                Err(MeshSendError::Full(msg)) => {
                    self.queue.push_front(msg);
                    return;
                }
                Err(MeshSendError::Stopped(_) | MeshSendError::NoSuchShard(_)) => {
                    self.queue.clear();
                    return;
                }
            }
        }
    }
}
