//! The NATS bus: every shard speaks NATS itself, over its own connection.
//!
//! Each shard's [`NatsLink`] holds one [`Connection`] (`crate::nats`: a glommio task on the
//! shard's own executor), started on the shard by [`NatsLink::start`] when the shard builds its
//! hub. Nothing crosses a thread: a subscription is one entry in the client's table (sid ->
//! subject; a device's `tether.*.<id>` shares the session's id instead of a copy) and one in the
//! link's (the device id, or the exact subject, -> sid); the connection hands each message to the
//! shard's callback as a slice of its read buffer, and the callback copies it once into the
//! shard's bounded inbound queues (the shard's two lanes, see [`super::Lanes`]), which
//! [`super::ShardBus::recv`] awaits. NATS's interest graph routes between the shards of one node
//! as between nodes: shards send nothing to each other.
//!
//! - **Inbound data** that finds the data lane full is dropped and counted
//!   (`tether_bus_dropped_total{direction="inbound"}`). Mailbox announcements
//!   (`tether.mboxn.<device>`) are not: they wait, in order, in a shard-local queue capped at
//!   [`CONTROL_BACKLOG_MAX`] that moves into the lane as the shard reads it (beyond the cap an
//!   announcement is dropped, counted and logged; the session's next announcement or its next
//!   scan finds the message).
//! - **A barrier** is a ping on the shard's own connection: the server handles one client's
//!   lines in order, so its `PONG` comes back once every `SUB` written before the `PING` is in
//!   effect on that server. A ping written before or during an outage completes after the
//!   reconnect, once every live subscription has been sent again.
//! - **Requests and receipts**: requests go through the connection's inbox; receipts for a
//!   shard's sends with `ack` come to its inbox `tether.inbox.<node>.<shard>.*`, where a
//!   "no responders" status becomes [`BusEvent::NoResponders`](super::BusEvent::NoResponders).
//! - **JetStream** ([`super::jetstream`]) runs as shard-local tasks over requests on the same
//!   connection; shard 0 keeps the mailbox stream.
//! - **Reconnect**: forever, with the backoff of [`crate::nats::reconnect_delay`] across the
//!   cluster's URLs; every subscription is restored by the connection itself.

use super::jetstream::{self, CallError, DurableConfig, JetStream, Reply, Transport};
use super::{
    Backlog, BusConfig, BusError, BusMessage, BusStats, Ctrl, DurableEvent, Lanes, Link, NatsAuth,
    RequestError, ShardBus, CONTROL_BACKLOG_MAX,
};
use crate::nats::{ConnectConfig, Connection, Event, Msg, PublishError, Sid};
use crate::proto::subject;
use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The part of the link the connection's callback reaches (shared with the link on the shard).
struct Inbound {
    ctrl: flume::Sender<Ctrl>,
    data: flume::Sender<BusMessage>,
    /// Control events (barrier completions, durable answers, no responders) that found the
    /// control lane full; never dropped below [`CONTROL_BACKLOG_MAX`].
    ctrl_backlog: Backlog<Ctrl>,
    /// Mailbox announcements that found the data lane full, in order.
    announcements: VecDeque<BusMessage>,
    /// The sids of exact subjects: their messages are forwarded whole. Every other sid but
    /// `inbox` is a device wildcard `tether.*.<device>`, whose matches are filtered (the
    /// client hands out messages of live sids only, so no table of those is needed here).
    exact: AHashSet<u64>,
    /// The shard's inbox subscription: receipts, and "no responders" as a control event.
    inbox: Option<Sid>,
    /// Barriers waiting for their ping (marker, token), in ping order.
    barriers: VecDeque<(u64, u64)>,
    connected: bool,
    stats: Arc<BusStats>,
}

impl Inbound {
    fn on_event(&mut self, event: Event<'_>) {
        match event {
            Event::Msg(msg) => self.on_msg(&msg),
            Event::Pong(marker) => {
                while let Some(&(waits_for, token)) = self.barriers.front() {
                    if waits_for > marker {
                        break;
                    }
                    self.barriers.pop_front();
                    self.control(Ctrl::Ready(token));
                }
            }
            Event::Connected { reconnect } => {
                if !self.connected {
                    self.connected = true;
                    self.stats.connected_shards.fetch_add(1, Ordering::Relaxed);
                }
                // The connection logs its own connects and losses.
                if reconnect {
                    self.stats.reconnects_total.fetch_add(1, Ordering::Relaxed);
                    self.control(Ctrl::Reconnected);
                }
            }
            Event::Disconnected => {
                if self.connected {
                    self.connected = false;
                    self.stats.connected_shards.fetch_sub(1, Ordering::Relaxed);
                }
                self.stats.disconnects_total.fetch_add(1, Ordering::Relaxed);
            }
            // Logged by the connection.
            Event::ServerError(_) => {}
        }
    }

    fn on_msg(&mut self, msg: &Msg<'_>) {
        if Some(msg.sid) == self.inbox {
            if msg.is_no_responders() {
                self.control(Ctrl::NoResponders(msg.subject.to_owned()));
                return;
            }
        } else if !self.exact.contains(&msg.sid.0) {
            // A device wildcard `tether.*.<device>`: the server matched the subject against
            // it, and a device id is one token, so the device is the subject's last token.
            // Keep only that device's own subjects; the other matches are addressed to a
            // topic, a service or a backend, and another subscription (or nobody) takes them.
            let device = msg.subject.rsplit('.').next().unwrap_or_default();
            if !subject::is_device_subject(msg.subject, device) {
                return;
            }
        }
        self.deliver(bus_message(msg));
    }

    /// Into the data lane; a full lane drops data (counted) and queues announcements.
    fn deliver(&mut self, msg: BusMessage) {
        let announcement = msg.subject.starts_with("tether.mboxn.");
        if announcement && !self.announcements.is_empty() {
            self.hold_announcement(msg);
            return;
        }
        match self.data.try_send(msg) {
            Ok(()) | Err(flume::TrySendError::Disconnected(_)) => {}
            Err(flume::TrySendError::Full(msg)) if announcement => self.hold_announcement(msg),
            Err(flume::TrySendError::Full(_)) => {
                self.stats
                    .dropped_inbound_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn hold_announcement(&mut self, msg: BusMessage) {
        if self.announcements.len() >= CONTROL_BACKLOG_MAX {
            self.stats
                .dropped_inbound_total
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %msg.subject, "mailbox announcement dropped: its queue is full");
            return;
        }
        self.stats
            .announcements_held_total
            .fetch_add(1, Ordering::Relaxed);
        self.announcements.push_back(msg);
    }

    fn control(&mut self, ctrl: Ctrl) {
        if self
            .ctrl_backlog
            .send(&self.ctrl, ctrl, &self.stats)
            .is_err()
        {
            tracing::error!("bus control backlog full: a control event was dropped");
        }
    }

    /// True while a control event or an announcement waits for room.
    fn has_backlog(&self) -> bool {
        !self.ctrl_backlog.is_empty() || !self.announcements.is_empty()
    }

    /// Moves what waits into the lanes, as far as they have room.
    fn flush(&mut self) {
        self.ctrl_backlog.flush(&self.ctrl);
        while let Some(msg) = self.announcements.pop_front() {
            if let Err(flume::TrySendError::Full(msg)) = self.data.try_send(msg) {
                self.announcements.push_front(msg);
                return;
            }
        }
    }
}

/// A NATS message as a shard sees it. A mailbox announcement (`tether.mboxn.<device>`, headers
/// only) becomes its stream sequence and the previous sequence stored on the same subject, as
/// decimal text `"<seq> <previous>"`: the one thing a shard needs from it.
fn bus_message(msg: &Msg<'_>) -> BusMessage {
    let header = |name: &str| msg.headers.and_then(|h| h.get(name));
    let payload = match msg
        .subject
        .starts_with("tether.mboxn.")
        .then(|| jetstream::announced(header))
        .flatten()
    {
        Some((seq, previous)) => Bytes::from(format!("{seq} {previous}")),
        None => Bytes::copy_from_slice(msg.payload),
    };
    let arrived_unix_us = header(super::ARRIVAL_HEADER)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(super::unix_us);
    BusMessage {
        subject: msg.subject.to_owned(),
        reply: msg.reply.map(str::to_owned),
        payload,
        arrived_unix_us,
    }
}

/// The JetStream calls' [`Transport`] on the shard's connection.
#[derive(Clone)]
pub(crate) struct ShardConn(Connection);

impl Transport for ShardConn {
    async fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        match self.0.request(&subject, &[], &payload, timeout).await {
            Ok(msg) => {
                let headers = msg.headers();
                Ok(Reply {
                    status: headers.and_then(|h| h.status()),
                    description: None,
                    headers: headers
                        .iter()
                        .flat_map(|h| h.iter())
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .collect(),
                    payload: msg.payload,
                })
            }
            Err(crate::nats::RequestError::Timeout) => Err(CallError::Timeout),
            Err(crate::nats::RequestError::NoResponders) => Err(CallError::NoResponders),
            Err(crate::nats::RequestError::Unavailable(why)) => Err(CallError::Failed(why)),
        }
    }

    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), String> {
        self.0
            .publish(&subject, None, &[], &payload)
            .map_err(|e| e.to_string())
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}

/// The link once started on its shard.
struct Live {
    conn: Connection,
    inbound: Rc<RefCell<Inbound>>,
    /// device id -> sid of this shard's device wildcards (the key is the session's own id).
    devices: AHashMap<Arc<str>, Sid>,
    /// exact subject -> sid of this shard's other subscriptions (topics).
    subjects: AHashMap<Box<str>, Sid>,
    js: JetStream<ShardConn>,
}

/// How a shard starts its connection (moved to the shard with its [`ShardBus`]).
struct Start {
    connect: ConnectConfig,
    durable: Option<DurableConfig>,
    ctrl: flume::Sender<Ctrl>,
    data: flume::Sender<BusMessage>,
}

pub(crate) struct NatsLink {
    shard: usize,
    node: Arc<str>,
    durable: bool,
    /// Until the shard starts it (boxed: only the first moments of the shard's life need it).
    start: Option<Box<Start>>,
    live: Option<OnShard<Live>>,
    stats: Arc<BusStats>,
}

impl NatsLink {
    pub(crate) fn durable(&self) -> bool {
        self.durable
    }

    /// Starts the shard's connection on the current (the shard's) executor: it connects in the
    /// background and keeps trying forever. Idempotent.
    pub(crate) fn start(&mut self) -> Result<(), String> {
        let Some(start) = self.start.take().map(|s| *s) else {
            return Ok(());
        };
        let inbound = Rc::new(RefCell::new(Inbound {
            ctrl: start.ctrl,
            data: start.data,
            ctrl_backlog: Backlog::new(),
            announcements: VecDeque::new(),
            exact: AHashSet::new(),
            inbox: None,
            barriers: VecDeque::new(),
            connected: false,
            stats: self.stats.clone(),
        }));
        let events = inbound.clone();
        let conn = Connection::spawn(start.connect, move |event| {
            events.borrow_mut().on_event(event);
        })
        .map_err(|e| e.to_string())?;
        let inbox = format!("{}*", subject::inbox_prefix(&self.node, self.shard));
        let sid = conn.subscribe(&inbox).map_err(|e| e.to_string())?;
        inbound.borrow_mut().inbox = Some(sid);
        let keep_stream = self.shard == 0 && start.durable.is_some();
        let js = JetStream::new(ShardConn(conn.clone()), start.durable, self.stats.clone());
        if keep_stream {
            glommio::spawn_local(js.clone().keep_stream()).detach();
        }
        self.live = Some(OnShard::new(Live {
            conn,
            inbound,
            devices: AHashMap::new(),
            subjects: AHashMap::new(),
            js,
        }));
        Ok(())
    }

    fn live(&mut self) -> Result<&mut Live, BusError> {
        if self.live.is_none() {
            if let Err(why) = self.start() {
                tracing::error!(%why, "NATS connection not started");
            }
        }
        self.live
            .as_mut()
            .map(OnShard::get_mut)
            .ok_or(BusError::Full)
    }

    /// Runs `op` on the shard and hands its outcome to the shard's control lane.
    fn durable_task(
        &mut self,
        op: impl FnOnce(
            JetStream<ShardConn>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<DurableEvent>>>>,
    ) -> Result<(), BusError> {
        let live = self.live()?;
        let inbound = live.inbound.clone();
        let fut = op(live.js.clone());
        glommio::spawn_local(async move {
            if let Some(ev) = fut.await {
                inbound.borrow_mut().control(Ctrl::Durable(ev));
            }
        })
        .detach();
        Ok(())
    }

    pub(crate) fn mailbox_read(
        &mut self,
        device: &str,
        from: u64,
        token: u64,
    ) -> Result<(), BusError> {
        let device = device.to_owned();
        self.durable_task(move |js| {
            Box::pin(async move {
                Some(match js.read(&device, from).await {
                    Ok(message) => DurableEvent::Read { token, message },
                    Err(reason) => {
                        tracing::debug!(%device, %reason, "mailbox read failed");
                        DurableEvent::ReadFailed { token, reason }
                    }
                })
            })
        })
    }

    pub(crate) fn mailbox_ack(
        &mut self,
        device: &str,
        seqs: Vec<u64>,
        token: Option<u64>,
    ) -> Result<(), BusError> {
        let device = device.to_owned();
        self.durable_task(move |js| {
            Box::pin(async move {
                let result = js.remove(&seqs).await;
                if let Err(why) = &result {
                    tracing::warn!(%device, ?seqs, %why, "acknowledgement not applied to the mailbox stream; the device will get those messages again");
                }
                token.map(|token| DurableEvent::Acked { token, result })
            })
        })
    }

    pub(crate) fn publish_upstream(
        &mut self,
        subject: &str,
        payload: Bytes,
        token: u64,
    ) -> Result<(), BusError> {
        let subject = subject.to_owned();
        self.durable_task(move |js| {
            Box::pin(async move {
                let result = js.publish_upstream(subject, payload).await;
                Some(DurableEvent::Upstream { token, result })
            })
        })
    }

    /// Subscribes to an exact subject (idempotent).
    pub(crate) fn subscribe(&mut self, subject: &str) -> Result<(), BusError> {
        let live = self.live()?;
        if live.subjects.contains_key(subject) {
            return Ok(());
        }
        let sid = live.conn.subscribe(subject).map_err(|err| {
            tracing::warn!(%err, %subject, "NATS subscribe refused");
            BusError::Full
        })?;
        live.inbound.borrow_mut().exact.insert(sid.0);
        live.subjects.insert(subject.into(), sid);
        Ok(())
    }

    /// Subscribes to the device wildcard `tether.*.<device>` (idempotent); the client's table
    /// and this link's share `device` instead of copying it.
    pub(crate) fn subscribe_device(&mut self, device: Arc<str>) -> Result<(), BusError> {
        let live = self.live()?;
        if live.devices.contains_key(&*device) {
            return Ok(());
        }
        let sid = live
            .conn
            .subscribe_joined(&subject::DEVICE_WILDCARD_PREFIX, device.clone())
            .map_err(|err| {
                tracing::warn!(%err, %device, "NATS subscribe refused");
                BusError::Full
            })?;
        live.devices.insert(device, sid);
        Ok(())
    }

    pub(crate) fn unsubscribe(&mut self, subject: &str) -> Result<(), BusError> {
        let live = self.live()?;
        if let Some(sid) = live.subjects.remove(subject) {
            live.conn.unsubscribe(sid);
            live.inbound.borrow_mut().exact.remove(&sid.0);
        }
        Ok(())
    }

    pub(crate) fn unsubscribe_device(&mut self, device: &str) -> Result<(), BusError> {
        let live = self.live()?;
        if let Some(sid) = live.devices.remove(device) {
            // From now on the client drops what still arrives on this sid.
            live.conn.unsubscribe(sid);
        }
        Ok(())
    }

    pub(crate) fn barrier(&mut self, token: u64) -> Result<(), BusError> {
        let live = self.live()?;
        let mut inbound = live.inbound.borrow_mut();
        if inbound.barriers.len() >= CONTROL_BACKLOG_MAX {
            return Err(BusError::Full);
        }
        let marker = live.conn.ping();
        inbound.barriers.push_back((marker, token));
        Ok(())
    }

    pub(crate) fn publish(&mut self, msg: BusMessage, stats: &BusStats) -> Result<(), BusError> {
        let live = self.live()?;
        let arrived = msg.arrived_unix_us.to_string();
        match live.conn.publish(
            &msg.subject,
            msg.reply.as_deref(),
            &[(super::ARRIVAL_HEADER, &arrived)],
            &msg.payload,
        ) {
            Ok(()) => Ok(()),
            Err(err) => {
                stats.dropped_outbound_total.fetch_add(1, Ordering::Relaxed);
                if !matches!(err, PublishError::Full) {
                    tracing::debug!(%err, subject = %msg.subject, "NATS publish refused");
                }
                Err(BusError::Full)
            }
        }
    }

    pub(crate) fn request(
        &mut self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Bytes, RequestError>> + 'static {
        let reply = self
            .live()
            .map(|live| live.conn.request(subject, &[], &payload, timeout));
        async move {
            match reply {
                Ok(reply) => reply.await.map(|msg| msg.payload).map_err(Into::into),
                Err(_) => Err(RequestError::Unavailable(
                    "the NATS connection did not start".into(),
                )),
            }
        }
    }

    /// Moves waiting control events and announcements into the lanes.
    pub(crate) fn flush_backlog(&mut self) {
        if let Some(live) = &self.live {
            live.get().inbound.borrow_mut().flush();
        }
    }

    /// True while control events or announcements wait for room in this shard's lanes.
    pub(crate) fn has_backlog(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| l.get().inbound.borrow().has_backlog())
    }

    /// True while this shard's connection is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| l.get().conn.is_connected())
    }

    /// How often this shard's connection logged in again after its first login.
    pub(crate) fn reconnects(&self) -> u64 {
        self.live
            .as_ref()
            .map_or(0, |l| l.get().conn.stats().reconnects)
    }

    /// Takes the connection out of the link, for [`super::ShardBus::close`] to flush and close.
    pub(crate) fn close(&mut self) -> Option<Connection> {
        self.live.take().map(|live| live.into_inner().conn)
    }
}

/// A number that tells the calling thread from every other live thread: the address of a
/// thread-local (cheaper than `std::thread::current().id()`, which clones the thread handle;
/// [`OnShard`] checks it on every message).
fn this_thread() -> usize {
    thread_local! {
        static MARK: u8 = const { 0 };
    }
    MARK.with(|mark| std::ptr::from_ref(mark) as usize)
}

/// A value made on a shard and used only there. `Send` so that the [`ShardBus`] holding it
/// (empty until its shard starts it) can be built on the main thread and moved to its shard;
/// every use checks that it is on the thread that made the value.
struct OnShard<T> {
    /// [`this_thread`] of the thread that made it.
    thread: usize,
    value: std::mem::ManuallyDrop<T>,
}

// SAFETY: the value is reached only through `get`, `get_mut` and `into_inner`, and dropped only
// in `Drop`, all of which assert (or, in `Drop`, check) that the caller runs on the thread that
// made it (while that thread lives, no other thread has its mark); so the value is never touched
// from two threads, whatever its own `Send`-ness. Its shard drops it (with the hub) before the
// shard's thread ends.
unsafe impl<T> Send for OnShard<T> {}

impl<T> OnShard<T> {
    fn new(value: T) -> OnShard<T> {
        OnShard {
            thread: this_thread(),
            value: std::mem::ManuallyDrop::new(value),
        }
    }

    fn check(&self) {
        assert_eq!(
            this_thread(),
            self.thread,
            "a shard's NATS link used off its shard"
        );
    }

    fn get(&self) -> &T {
        self.check();
        &self.value
    }

    fn get_mut(&mut self) -> &mut T {
        self.check();
        &mut self.value
    }

    fn into_inner(self) -> T {
        self.check();
        let mut this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so the value is moved out once.
        unsafe { std::mem::ManuallyDrop::take(&mut this.value) }
    }
}

impl<T> Drop for OnShard<T> {
    fn drop(&mut self) {
        if this_thread() == self.thread {
            // SAFETY: dropped once, here, on the thread that made it.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.value) }
        } else {
            // Dropping it here could race with its shard; leaking is the safe choice.
            tracing::error!("a shard's NATS link dropped off its shard: leaked");
        }
    }
}

/// Builds one link per shard; nothing connects until each shard starts its own.
pub(crate) fn start(
    config: &BusConfig,
    auth: &NatsAuth,
    stats: Arc<BusStats>,
) -> Result<Vec<ShardBus>, String> {
    let n = config.shards;
    let node: Arc<str> = Arc::from(config.node.as_str());
    let mut connect = ConnectConfig::new(config.nats_urls.clone(), String::new());
    connect.auth = auth.clone();
    connect.check().map_err(|e| e.to_string())?;
    Ok((0..n)
        .map(|shard| {
            // One mesh per shard: the lanes are its own inbound queues.
            let lanes = Lanes::build(1, config.queue_len)
                .pop()
                .expect("one lane set");
            let mut connect = connect.clone();
            connect.name = format!("tether node {} shard {shard}", config.node);
            let start = Start {
                connect,
                durable: config.durable.clone(),
                ctrl: lanes.ctrl.sender(0).expect("own control sender"),
                data: lanes.data.sender(0).expect("own data sender"),
            };
            ShardBus {
                shard,
                shards: n,
                node: node.clone(),
                link: Link::Nats(NatsLink {
                    shard,
                    node: node.clone(),
                    durable: config.durable.is_some(),
                    start: Some(Box::new(start)),
                    live: None,
                    stats: stats.clone(),
                }),
                lanes,
                local: VecDeque::new(),
                stats: stats.clone(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(data_len: usize) -> (Inbound, flume::Receiver<BusMessage>) {
        let (ctrl, _) = flume::bounded(4);
        let (data, data_rx) = flume::bounded(data_len);
        let inbound = Inbound {
            ctrl,
            data,
            ctrl_backlog: Backlog::new(),
            announcements: VecDeque::new(),
            exact: AHashSet::new(),
            inbox: Some(Sid(1)),
            barriers: VecDeque::new(),
            connected: true,
            stats: Arc::new(BusStats::new("nats", 1)),
        };
        (inbound, data_rx)
    }

    fn msg<'a>(sid: u64, subject: &'a str) -> Msg<'a> {
        Msg {
            sid: Sid(sid),
            subject,
            reply: None,
            headers: None,
            payload: b"x",
        }
    }

    fn subjects(rx: &flume::Receiver<BusMessage>) -> Vec<String> {
        rx.try_iter().map(|m| m.subject).collect()
    }

    #[test]
    fn a_device_wildcard_keeps_only_that_device_s_subjects() {
        let (mut inbound, rx) = inbound(16);
        inbound.exact.insert(3);
        // sid 2: `tether.*.tv` (no entry here: not exact, not the inbox).
        for s in [
            "tether.dev.tv",
            "tether.peer.tv",
            "tether.req.tv",
            "tether.presence.tv",
            "tether.topic.tv",
            "tether.up.tv",
            "tether.event.tv",
        ] {
            inbound.on_msg(&msg(2, s));
        }
        // sid 3: the exact `tether.topic.tv`.
        inbound.on_msg(&msg(3, "tether.topic.tv"));
        assert_eq!(
            subjects(&rx),
            [
                "tether.dev.tv",
                "tether.peer.tv",
                "tether.req.tv",
                "tether.presence.tv",
                "tether.topic.tv"
            ]
        );
    }

    #[test]
    fn held_announcements_have_their_own_counter() {
        let (mut inbound, rx) = inbound(1);
        inbound.on_msg(&msg(2, "tether.dev.a"));
        // The data lane is full: data is dropped, announcements wait in order.
        inbound.on_msg(&msg(2, "tether.dev.a"));
        inbound.on_msg(&msg(2, "tether.mboxn.a"));
        inbound.on_msg(&msg(2, "tether.mboxn.b"));
        let stats = inbound.stats.clone();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(count(&stats.announcements_held_total), 2);
        assert_eq!(count(&stats.dropped_inbound_total), 1);
        assert_eq!(count(&stats.control_backlogged_total), 0, "not control");
        let mut text = String::new();
        stats.render_prometheus(&mut text);
        assert!(text.contains("\ntether_bus_announcements_held_total{bus=\"nats\"} 2\n"));
        assert!(text.contains("\ntether_bus_control_backlogged_total{bus=\"nats\"} 0\n"));
        assert_eq!(subjects(&rx), ["tether.dev.a"]);
        inbound.flush();
        assert_eq!(subjects(&rx), ["tether.mboxn.a"]);
        inbound.flush();
        assert_eq!(subjects(&rx), ["tether.mboxn.b"]);
    }

    #[test]
    fn a_device_subscription_s_link_entry_stays_small() {
        // Per device and shard on NATS: this slot (the session's shared id and the sid, no
        // allocation) and the client's sid -> subject slot (see `nats::client`'s own test).
        assert_eq!(std::mem::size_of::<(Arc<str>, Sid)>(), 24);
    }
}
