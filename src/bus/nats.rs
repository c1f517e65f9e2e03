//! The NATS bus: one bridge thread between the shards and NATS.
//!
//! The bridge thread (`tether-nats-bridge`) runs async-nats on a tokio current-thread runtime.
//! It is not a shard (no glommio executor, no shard index), so it is no peer on the shard
//! meshes: shards talk to it over two bounded flume channels of its own (commands: interest,
//! barriers, requests; publishes), and it answers each shard on that shard's bounded control and
//! data lanes, through the lanes' mesh senders.
//! Each (shard, subject) interest is one NATS subscription served by one small tokio task that
//! forwards its messages to the shard, so NATS itself routes between the shards of one node as
//! between nodes.
//!
//! A barrier is a round trip through the server on the bridge's own connection: the bridge
//! publishes a probe on `tether.barrier.<node>`, which it subscribes to itself, and a barrier is
//! complete when a probe published after it comes back. The server handles one client's
//! protocol lines in order, so by the time it routes the probe it has registered every SUB the
//! bridge wrote before it. (async-nats's `Client::flush` is not such a round trip: it only
//! writes the client's buffer to the socket, so the server may not have read the SUB yet; that
//! is why `hello` and `sub` acks used to race with pushes.) In a NATS cluster the server then
//! forwards the interest to the other servers asynchronously (see `docs/protocol.md`,
//! section 9).
//!
//! The client reconnects forever with exponential backoff and jitter (100 ms doubling to 5 s,
//! times a random 0.5–1.0), and async-nats re-sends every live subscription after a reconnect,
//! so all interest is restored. State and drops are counted in [`BusStats`].

use super::jetstream::{self, CallError, DurableConfig, JetStream, Reply, Transport};
use super::{
    Backlog, BusConfig, BusError, BusMessage, BusStats, Ctrl, DurableEvent, Lanes, Link, NatsAuth,
    RequestError, ShardBus,
};
use crate::proto::subject;
use ahash::AHashMap;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most commands the bridge handles before it looks at barriers again.
const BATCH_MAX: usize = 1024;
/// How long the newest barrier probe may stay unanswered before another is sent: a probe
/// written just before a disconnect is lost with the connection (async-nats re-sends
/// subscriptions after a reconnect, not publishes already written), and the next one covers
/// every waiting barrier. One second is far above a loopback or LAN round trip and well inside
/// the hub's 10 s readiness timeout.
const PROBE_RESEND: Duration = Duration::from_millis(1_000);
/// How long a barrier may wait for a probe (during a NATS outage) before the bridge forgets
/// it: six times the hub's 10 s readiness timeout, after which nobody waits for it any more.
/// Keeps the barrier queue bounded by the sessions opened in one minute.
const BARRIER_WAIT_MAX: Duration = Duration::from_secs(60);
/// Capacity of each async-nats subscription channel (messages held per subscription before
/// async-nats reports a slow consumer and drops).
const SUBSCRIPTION_CAPACITY: usize = 1024;

/// What a shard asks of the bridge.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        shard: usize,
        subject: String,
        /// `Some(device)` for the device wildcard: forward only that device's own subjects.
        device: Option<String>,
    },
    Unsubscribe {
        shard: usize,
        subject: String,
    },
    Barrier {
        shard: usize,
        token: u64,
    },
    Request {
        subject: String,
        payload: Bytes,
        timeout: Duration,
        reply: flume::Sender<Result<Bytes, RequestError>>,
    },
    MailboxRead {
        shard: usize,
        device: String,
        from: u64,
        token: u64,
    },
    MailboxAck {
        shard: usize,
        device: String,
        seqs: Vec<u64>,
        token: Option<u64>,
    },
    PublishUpstream {
        shard: usize,
        subject: String,
        payload: Bytes,
        token: u64,
    },
}

pub(crate) struct NatsLink {
    shard: usize,
    durable: bool,
    cmd_tx: flume::Sender<Command>,
    pub_tx: flume::Sender<BusMessage>,
    backlog: Backlog<Command>,
}

impl NatsLink {
    pub(crate) fn durable(&self) -> bool {
        self.durable
    }

    pub(crate) fn mailbox_read(
        &mut self,
        device: &str,
        from: u64,
        token: u64,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        let cmd = Command::MailboxRead {
            shard: self.shard,
            device: device.to_owned(),
            from,
            token,
        };
        self.backlog.send(&self.cmd_tx, cmd, stats)
    }

    pub(crate) fn mailbox_ack(
        &mut self,
        device: &str,
        seqs: Vec<u64>,
        token: Option<u64>,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        let cmd = Command::MailboxAck {
            shard: self.shard,
            device: device.to_owned(),
            seqs,
            token,
        };
        self.backlog.send(&self.cmd_tx, cmd, stats)
    }

    pub(crate) fn publish_upstream(
        &mut self,
        subject: &str,
        payload: Bytes,
        token: u64,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        let cmd = Command::PublishUpstream {
            shard: self.shard,
            subject: subject.to_owned(),
            payload,
            token,
        };
        self.backlog.send(&self.cmd_tx, cmd, stats)
    }

    pub(crate) fn subscribe(
        &mut self,
        subject: &str,
        device: Option<&str>,
        stats: &BusStats,
    ) -> Result<(), BusError> {
        let cmd = Command::Subscribe {
            shard: self.shard,
            subject: subject.to_owned(),
            device: device.map(str::to_owned),
        };
        self.backlog.send(&self.cmd_tx, cmd, stats)
    }

    pub(crate) fn unsubscribe(&mut self, subject: &str, stats: &BusStats) -> Result<(), BusError> {
        let cmd = Command::Unsubscribe {
            shard: self.shard,
            subject: subject.to_owned(),
        };
        self.backlog.send(&self.cmd_tx, cmd, stats)
    }

    pub(crate) fn barrier(&mut self, token: u64, stats: &BusStats) -> Result<(), BusError> {
        self.backlog.send(
            &self.cmd_tx,
            Command::Barrier {
                shard: self.shard,
                token,
            },
            stats,
        )
    }

    pub(crate) fn publish(&mut self, msg: BusMessage, stats: &BusStats) -> Result<(), BusError> {
        match self.pub_tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(_) => {
                stats.dropped_outbound_total.fetch_add(1, Ordering::Relaxed);
                Err(BusError::Full)
            }
        }
    }

    pub(crate) fn request(
        &mut self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
        stats: &BusStats,
    ) -> flume::Receiver<Result<Bytes, RequestError>> {
        let (reply, rx) = flume::bounded(1);
        let cmd = Command::Request {
            subject: subject.to_owned(),
            payload,
            timeout,
            reply: reply.clone(),
        };
        if self.backlog.send(&self.cmd_tx, cmd, stats).is_err() {
            let _ = reply.try_send(Err(RequestError::Unavailable("bus queue full".into())));
        }
        rx
    }

    pub(crate) fn flush_backlog(&mut self) {
        self.backlog.flush(&self.cmd_tx);
    }
}

/// The bridge thread, owned by [`super::BusNode`].
pub(crate) struct BridgeHandle {
    stop_tx: flume::Sender<Duration>,
    thread: std::thread::JoinHandle<()>,
}

impl BridgeHandle {
    pub(crate) fn stop(self, flush_timeout: Duration) {
        let _ = self.stop_tx.send(flush_timeout);
        if self.thread.join().is_err() {
            tracing::error!("the NATS bridge thread panicked");
        }
    }
}

use crate::nats::reconnect_delay;

/// The bridge's senders into each shard's two lanes (the meshes' senders, see [`Lanes`]).
struct ShardTx {
    ctrl: Vec<flume::Sender<Ctrl>>,
    data: Vec<flume::Sender<BusMessage>>,
}

/// The connect options that carry `auth`: credentials and TLS. Files are read and checked here,
/// at start, so that a typo stops the start with the setting's name instead of an endless
/// reconnect loop.
fn auth_options(auth: &NatsAuth) -> Result<async_nats::ConnectOptions, String> {
    let given = [
        auth.user_password.is_some(),
        auth.token.is_some(),
        auth.nkey_seed_file.is_some(),
        auth.creds_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err("give one NATS login: nats_user/nats_password, nats_token, \
                    nats_nkey_seed_file or nats_creds_file"
            .into());
    }
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = &auth.user_password {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.clone());
    }
    if let Some(path) = &auth.nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| format!("nats_nkey_seed_file {}: {e}", path.display()))?;
        let seed = seed.trim().to_owned();
        nkeys::KeyPair::from_seed(&seed).map_err(|e| {
            format!(
                "nats_nkey_seed_file {}: not an NKey seed: {e}",
                path.display()
            )
        })?;
        options = options.nkey(seed);
    }
    if let Some(path) = &auth.creds_file {
        let creds = std::fs::read_to_string(path)
            .map_err(|e| format!("nats_creds_file {}: {e}", path.display()))?;
        options = options.credentials(&creds).map_err(|e| {
            format!(
                "nats_creds_file {}: not a NATS credentials file: {e}",
                path.display()
            )
        })?;
    }
    let readable = |setting: &str, path: &PathBuf| {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| format!("{setting} {}: {e}", path.display()))
    };
    let mut tls = false;
    if let Some(ca) = &auth.tls_ca {
        readable("nats_tls_ca", ca)?;
        options = options.add_root_certificates(ca.clone());
        tls = true;
    }
    if let Some((cert, key)) = &auth.tls_client {
        readable("nats_tls_cert", cert)?;
        readable("nats_tls_key", key)?;
        options = options.add_client_certificate(cert.clone(), key.clone());
        tls = true;
    }
    if auth.tls_first {
        options = options.tls_first();
        tls = true;
    }
    Ok(options.require_tls(tls))
}

pub(crate) fn start(
    config: &BusConfig,
    auth: &NatsAuth,
    stats: Arc<BusStats>,
) -> Result<(Vec<ShardBus>, BridgeHandle), String> {
    let options = auth_options(auth)?;
    let mut addrs = Vec::new();
    for url in &config.nats_urls {
        let addr: async_nats::ServerAddr = url
            .parse()
            .map_err(|e| format!("--nats: {url:?} is not a NATS URL: {e}"))?;
        addrs.push(addr);
    }
    let n = config.shards;
    let node: Arc<str> = Arc::from(config.node.as_str());
    let (cmd_tx, cmd_rx) = flume::bounded(config.queue_len);
    let (pub_tx, pub_rx) = flume::bounded(config.queue_len);
    let (stop_tx, stop_rx) = flume::bounded(1);
    let lanes = Lanes::build(n, config.queue_len);
    // The bridge feeds every shard's lanes; shards send nothing to each other on them.
    let tx = ShardTx {
        ctrl: (0..n).filter_map(|to| lanes[0].ctrl.sender(to)).collect(),
        data: (0..n).filter_map(|to| lanes[0].data.sender(to)).collect(),
    };
    assert_eq!(tx.ctrl.len(), n, "one control sender per shard");
    assert_eq!(tx.data.len(), n, "one data sender per shard");
    let links = lanes
        .into_iter()
        .enumerate()
        .map(|(shard, lanes)| ShardBus {
            shard,
            shards: n,
            node: node.clone(),
            link: Link::Nats(NatsLink {
                shard,
                durable: config.durable.is_some(),
                cmd_tx: cmd_tx.clone(),
                pub_tx: pub_tx.clone(),
                backlog: Backlog::new(),
            }),
            lanes,
            local: VecDeque::new(),
            stats: stats.clone(),
        })
        .collect();
    let node_name = config.node.clone();
    let durable = config.durable.clone();
    let thread = std::thread::Builder::new()
        .name("tether-nats-bridge".into())
        .spawn(move || {
            block_termination_signals();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    tracing::error!(%err, "cannot build the NATS bridge runtime");
                    return;
                }
            };
            runtime.block_on(bridge_main(
                options, addrs, node_name, durable, tx, cmd_rx, pub_rx, stop_rx, stats,
            ));
        })
        .map_err(|e| format!("cannot spawn the NATS bridge thread: {e}"))?;
    Ok((links, BridgeHandle { stop_tx, thread }))
}

/// Keeps SIGTERM/SIGINT away from the bridge thread (and the threads its runtime spawns): the
/// server waits for them on its own signal thread, and a signal delivered here would take the
/// default action and kill the process without a drain.
fn block_termination_signals() {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signal numbers are valid; the old mask is not
    // needed. pthread_sigmask only changes the calling thread's mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        tracing::warn!(rc, "cannot block SIGTERM/SIGINT on the NATS bridge thread");
    }
}

/// A NATS message as a shard sees it. A mailbox announcement (`tether.mboxn.<device>`, headers
/// only) becomes its stream sequence and the previous sequence stored on the same subject, as
/// decimal text `"<seq> <previous>"`: the one thing a shard needs from it.
fn forward(msg: async_nats::Message) -> BusMessage {
    let payload = if msg.subject.starts_with("tether.mboxn.") {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        match jetstream::announced(header) {
            Some((seq, previous)) => Bytes::from(format!("{seq} {previous}")),
            None => msg.payload,
        }
    } else {
        msg.payload
    };
    let arrived_unix_us = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(super::ARRIVAL_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .unwrap_or_else(super::unix_us);
    BusMessage {
        subject: msg.subject.to_string(),
        reply: msg.reply.map(|r| r.to_string()),
        payload,
        arrived_unix_us,
    }
}

/// Subscribes and spawns the task that forwards what arrives to a shard. With `device`, the
/// subscription is that device's wildcard and only its own subjects are forwarded
/// ([`subject::is_device_subject`]): the rest also matches the wildcard on the server but is
/// addressed to a topic, a service or a backend, and another subscription (or nobody) takes it.
///
/// With `no_responders` (the shard's inbox), a "no responders" status (a publish of the shard
/// with that reply subject reached nobody) goes to the shard's control channel as
/// [`Ctrl::NoResponders`] instead of as an empty message.
async fn subscribe_forwarding(
    client: &async_nats::Client,
    subject: String,
    device: Option<String>,
    to: flume::Sender<BusMessage>,
    no_responders: Option<flume::Sender<Ctrl>>,
    stats: Arc<BusStats>,
) -> Option<tokio::task::JoinHandle<()>> {
    match client.subscribe(subject.clone()).await {
        Ok(mut sub) => Some(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(ctrl) = &no_responders {
                    if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                        // The sender times out instead when its control queue is full.
                        let _ = ctrl.try_send(Ctrl::NoResponders(msg.subject.to_string()));
                        continue;
                    }
                }
                if let Some(device) = &device {
                    if !subject::is_device_subject(msg.subject.as_str(), device) {
                        continue;
                    }
                }
                match to.try_send(forward(msg)) {
                    Ok(()) => {}
                    // A mailbox announcement is a few bytes and the shard fetches by it: it
                    // waits for room (holding back this device's subscription) instead of
                    // being dropped, so the session does not have to scan for what it named.
                    Err(flume::TrySendError::Full(msg))
                        if msg.subject.starts_with("tether.mboxn.") =>
                    {
                        if to.send_async(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(flume::TrySendError::Full(_)) => {
                        stats.dropped_inbound_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(flume::TrySendError::Disconnected(_)) => return,
                }
            }
        })),
        Err(err) => {
            tracing::warn!(%err, %subject, "NATS subscribe failed");
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn bridge_main(
    options: async_nats::ConnectOptions,
    addrs: Vec<async_nats::ServerAddr>,
    node: String,
    durable: Option<DurableConfig>,
    tx: ShardTx,
    cmd_rx: flume::Receiver<Command>,
    pub_rx: flume::Receiver<BusMessage>,
    stop_rx: flume::Receiver<Duration>,
    stats: Arc<BusStats>,
) {
    let options = with_reconnects(options, &node, &stats);
    let client = match options.connect(addrs).await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "NATS connect failed");
            return;
        }
    };
    let keep_stream = durable.is_some();
    let js = JetStream::new(AsyncNats(client.clone()), durable, stats.clone());
    if keep_stream {
        tokio::spawn(js.clone().keep_stream());
    }
    let mut subs = subscribe_inboxes(&client, &node, &tx, &stats).await;
    let mut barriers = Barriers::new(subject::barrier(&node));
    let mut probes = match client.subscribe(barriers.subject.clone()).await {
        Ok(sub) => sub,
        Err(err) => {
            tracing::error!(%err, "cannot subscribe to the barrier subject");
            return;
        }
    };
    let flush_timeout = loop {
        tokio::select! {
            biased;
            stop = stop_rx.recv_async() => break stop.unwrap_or(Duration::from_secs(1)),
            Some(probe) = probes.next() => {
                for (shard, token) in barriers.on_probe(&probe.payload) {
                    let ready = Ctrl::Ready(token);
                    if let Err(flume::TrySendError::Full(ready)) = tx.ctrl[shard].try_send(ready) {
                        let ctrl = tx.ctrl[shard].clone();
                        tokio::spawn(async move { ctrl.send_async(ready).await });
                    }
                }
            }
            () = tokio::time::sleep(PROBE_RESEND), if barriers.waiting() => {}
            cmd = cmd_rx.recv_async() => {
                let Ok(cmd) = cmd else { break Duration::from_secs(1) };
                // The first command and up to BATCH_MAX more that are already queued.
                let queued = std::iter::once(cmd).chain(std::iter::from_fn(|| cmd_rx.try_recv().ok()));
                for cmd in queued.take(1 + BATCH_MAX) {
                    handle_command(&client, &js, cmd, &tx, &mut subs, &mut barriers, &stats).await;
                }
            }
            msg = pub_rx.recv_async() => {
                let Ok(msg) = msg else { break Duration::from_secs(1) };
                let queued = std::iter::once(msg).chain(std::iter::from_fn(|| pub_rx.try_recv().ok()));
                for msg in queued.take(1 + BATCH_MAX) {
                    publish(&client, msg, &stats).await;
                }
            }
        }
        if let Some(probe) = barriers.probe_due(std::time::Instant::now()) {
            // Through the same client (and so after every SUB handed to it before).
            if let Err(err) = client.publish(barriers.subject.clone(), probe).await {
                tracing::warn!(%err, "barrier probe not published; retried");
            }
        }
    };
    for (_, task) in subs.drain() {
        task.abort();
    }
    // What the shards queued before the stop (e.g. the disconnect events of a drain) goes out
    // too, within the same bound.
    let _ = tokio::time::timeout(flush_timeout, async {
        while let Ok(msg) = pub_rx.try_recv() {
            publish(&client, msg, &stats).await;
        }
        client.flush().await
    })
    .await;
}

/// The bridge's connection options: named after the node, reconnecting for ever with backoff,
/// and NATS events reflected in the bus stats (connected, reconnects, disconnects, slow-consumer
/// drops) and the log.
fn with_reconnects(
    options: async_nats::ConnectOptions,
    node: &str,
    stats: &Arc<BusStats>,
) -> async_nats::ConnectOptions {
    let events_stats = stats.clone();
    let connected_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    options
        .name(format!("tether node {node}"))
        .retry_on_initial_connect()
        .max_reconnects(None::<usize>)
        .reconnect_delay_callback(reconnect_delay)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(move |event| {
            let stats = events_stats.clone();
            let connected_once = connected_once.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.connected.store(1, Ordering::Relaxed);
                        if connected_once.swap(true, Ordering::Relaxed) {
                            stats.reconnects_total.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("NATS reconnected; subscriptions restored");
                        } else {
                            tracing::info!("NATS connected");
                        }
                    }
                    async_nats::Event::Disconnected => {
                        stats.connected.store(0, Ordering::Relaxed);
                        stats.disconnects_total.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("NATS disconnected; reconnecting with backoff");
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        stats.dropped_inbound_total.fetch_add(1, Ordering::Relaxed);
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
}

/// Subscribes each shard's inbox (`tether.inbox.<node>.<shard>.*`: receipts for its sends
/// with `ack`), forwarded to that shard; returns the subscriptions by (shard, subject).
async fn subscribe_inboxes(
    client: &async_nats::Client,
    node: &str,
    tx: &ShardTx,
    stats: &Arc<BusStats>,
) -> AHashMap<(usize, String), tokio::task::JoinHandle<()>> {
    let mut subs: AHashMap<(usize, String), tokio::task::JoinHandle<()>> = AHashMap::new();
    for (shard, data) in tx.data.iter().enumerate() {
        let inbox = format!("{}*", subject::inbox_prefix(node, shard));
        if let Some(task) = subscribe_forwarding(
            client,
            inbox.clone(),
            None,
            data.clone(),
            Some(tx.ctrl[shard].clone()),
            stats.clone(),
        )
        .await
        {
            subs.insert((shard, inbox), task);
        }
    }
    subs
}

async fn publish(client: &async_nats::Client, msg: BusMessage, stats: &BusStats) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        super::ARRIVAL_HEADER,
        msg.arrived_unix_us.to_string().as_str(),
    );
    let result = match msg.reply {
        Some(reply) => {
            client
                .publish_with_reply_and_headers(msg.subject, reply, headers, msg.payload)
                .await
        }
        None => {
            client
                .publish_with_headers(msg.subject, headers, msg.payload)
                .await
        }
    };
    if let Err(err) = result {
        stats.dropped_outbound_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%err, "NATS publish failed");
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per operation, in protocol order: a dispatcher reads best whole"
)]
async fn handle_command(
    client: &async_nats::Client,
    js: &JetStream<AsyncNats>,
    cmd: Command,
    tx: &ShardTx,
    subs: &mut AHashMap<(usize, String), tokio::task::JoinHandle<()>>,
    barriers: &mut Barriers,
    stats: &Arc<BusStats>,
) {
    match cmd {
        Command::Subscribe {
            shard,
            subject,
            device,
        } => {
            let key = (shard, subject);
            if subs.contains_key(&key) {
                return;
            }
            if let Some(task) = subscribe_forwarding(
                client,
                key.1.clone(),
                device,
                tx.data[shard].clone(),
                None,
                stats.clone(),
            )
            .await
            {
                subs.insert(key, task);
            }
        }
        Command::Unsubscribe { shard, subject } => {
            // Aborting the task drops its Subscriber, which sends UNSUB.
            if let Some(task) = subs.remove(&(shard, subject)) {
                task.abort();
            }
        }
        Command::Barrier { shard, token } => barriers.add(shard, token, std::time::Instant::now()),
        Command::MailboxRead {
            shard,
            device,
            from,
            token,
        } => {
            let (js, ctrl) = (js.clone(), tx.ctrl[shard].clone());
            tokio::spawn(async move {
                let ev = match js.read(&device, from).await {
                    Ok(message) => DurableEvent::Read { token, message },
                    Err(reason) => {
                        tracing::debug!(%device, %reason, "mailbox read failed");
                        DurableEvent::ReadFailed { token, reason }
                    }
                };
                let _ = ctrl.send_async(Ctrl::Durable(ev)).await;
            });
        }
        Command::MailboxAck {
            shard,
            device,
            seqs,
            token,
        } => {
            let (js, ctrl) = (js.clone(), tx.ctrl[shard].clone());
            tokio::spawn(async move {
                let result = js.remove(&seqs).await;
                if let Err(why) = &result {
                    tracing::warn!(%device, ?seqs, %why, "acknowledgement not applied to the mailbox stream; the device will get those messages again");
                }
                if let Some(token) = token {
                    let _ = ctrl
                        .send_async(Ctrl::Durable(DurableEvent::Acked { token, result }))
                        .await;
                }
            });
        }
        Command::PublishUpstream {
            shard,
            subject,
            payload,
            token,
        } => {
            let (js, ctrl) = (js.clone(), tx.ctrl[shard].clone());
            tokio::spawn(async move {
                let result = js.publish_upstream(subject, payload).await;
                let _ = ctrl
                    .send_async(Ctrl::Durable(DurableEvent::Upstream { token, result }))
                    .await;
            });
        }
        Command::Request {
            subject,
            payload,
            timeout,
            reply,
        } => {
            let client = client.clone();
            tokio::spawn(async move {
                let result = match tokio::time::timeout(timeout, client.request(subject, payload))
                    .await
                {
                    Err(_) => Err(RequestError::Timeout),
                    Ok(Ok(msg)) => Ok(msg.payload),
                    Ok(Err(err)) => Err(match err.kind() {
                        async_nats::RequestErrorKind::TimedOut => RequestError::Timeout,
                        async_nats::RequestErrorKind::NoResponders => RequestError::NoResponders,
                        _ => RequestError::Unavailable(err.to_string()),
                    }),
                };
                let _ = reply.send_async(result).await;
            });
        }
    }
}

/// The JetStream calls' [`Transport`] on the bridge's async-nats client (its request muxer hands
/// each answer to the request that asked).
#[derive(Clone)]
pub(crate) struct AsyncNats(async_nats::Client);

impl Transport for AsyncNats {
    async fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        match tokio::time::timeout(timeout, self.0.request(subject, payload)).await {
            Err(_) => Err(CallError::Timeout),
            Ok(Ok(msg)) => Ok(Reply {
                status: msg.status.map(|s| s.as_u16()),
                description: msg.description,
                headers: msg
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .flat_map(|(name, values)| {
                        values
                            .iter()
                            .map(move |v| (name.to_string(), v.as_str().to_owned()))
                    })
                    .collect(),
                payload: msg.payload,
            }),
            Ok(Err(err)) => Err(match err.kind() {
                async_nats::RequestErrorKind::TimedOut => CallError::Timeout,
                async_nats::RequestErrorKind::NoResponders => CallError::NoResponders,
                _ => CallError::Failed(err.to_string()),
            }),
        }
    }

    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), String> {
        self.0
            .publish(subject, payload)
            .await
            .map_err(|e| e.to_string())
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The barriers waiting for a probe to come back (see the module doc). Probes carry
/// `<nonce>.<generation>`; a barrier added while generation `g` is the next to be sent is
/// complete when a probe of generation `g` or later comes back with this bridge's nonce (a
/// second node misconfigured with the same node id cannot complete our barriers).
struct Barriers {
    subject: String,
    nonce: u64,
    /// (shard, token, first generation that covers it, when added), in generation order.
    queue: VecDeque<(usize, u64, u64, std::time::Instant)>,
    next_generation: u64,
    last_sent: Option<std::time::Instant>,
}

impl Barriers {
    fn new(subject: String) -> Barriers {
        Barriers {
            subject,
            nonce: rand::random(),
            queue: VecDeque::new(),
            next_generation: 0,
            last_sent: None,
        }
    }

    fn waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    fn add(&mut self, shard: usize, token: u64, now: std::time::Instant) {
        self.queue
            .push_back((shard, token, self.next_generation, now));
    }

    /// The probe to publish now, if one is due: a waiting barrier is not covered by a sent
    /// probe yet, or the last probe has been out for [`PROBE_RESEND`]. Forgets barriers older
    /// than [`BARRIER_WAIT_MAX`].
    fn probe_due(&mut self, now: std::time::Instant) -> Option<Bytes> {
        while let Some(&(_, _, _, added)) = self.queue.front() {
            if now.duration_since(added) < BARRIER_WAIT_MAX {
                break;
            }
            self.queue.pop_front();
        }
        let &(_, _, newest, _) = self.queue.back()?;
        let stale = self
            .last_sent
            .is_none_or(|sent| now.duration_since(sent) >= PROBE_RESEND);
        if newest < self.next_generation && !stale {
            return None;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.last_sent = Some(now);
        Some(Bytes::from(format!("{}.{generation}", self.nonce)))
    }

    /// A probe came back: the barriers it completes.
    fn on_probe(&mut self, payload: &[u8]) -> Vec<(usize, u64)> {
        let generation = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.split_once('.'))
            .filter(|(nonce, _)| nonce.parse() == Ok(self.nonce))
            .and_then(|(_, generation)| generation.parse::<u64>().ok());
        let Some(generation) = generation else {
            return Vec::new();
        };
        let mut done = Vec::new();
        while let Some(&(shard, token, needs, _)) = self.queue.front() {
            if needs > generation {
                break;
            }
            self.queue.pop_front();
            done.push((shard, token));
        }
        if self.queue.is_empty() {
            self.last_sent = None;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_barrier_completes_only_with_a_probe_sent_after_it() {
        let mut b = Barriers::new("tether.barrier.n1".into());
        let t0 = Instant::now();
        assert!(b.probe_due(t0).is_none(), "nothing waiting, no probe");
        b.add(0, 10, t0);
        let p0 = b.probe_due(t0).expect("probe for the first barrier");
        assert!(b.probe_due(t0).is_none(), "covered, not stale yet");
        b.add(1, 11, t0);
        let p1 = b.probe_due(t0).expect("a new barrier needs a new probe");
        // The first probe completes only the barrier added before it was sent.
        assert_eq!(b.on_probe(&p0), vec![(0, 10)]);
        assert!(b.waiting());
        // A probe of another bridge (same subject, other nonce) completes nothing.
        let foreign = format!("{}.99", b.nonce.wrapping_add(1));
        assert!(b.on_probe(foreign.as_bytes()).is_empty());
        assert!(b.on_probe(b"garbage").is_empty());
        assert_eq!(b.on_probe(&p1), vec![(1, 11)]);
        assert!(!b.waiting());
    }

    #[test]
    fn a_lost_probe_is_sent_again() {
        let mut b = Barriers::new("s".into());
        let t0 = Instant::now();
        b.add(0, 1, t0);
        let lost = b.probe_due(t0).unwrap();
        assert!(b.probe_due(t0 + PROBE_RESEND / 2).is_none());
        let again = b.probe_due(t0 + PROBE_RESEND).expect("resent");
        assert_ne!(lost, again);
        assert_eq!(b.on_probe(&again), vec![(0, 1)]);
        // During a long outage, barriers nobody waits for any more are forgotten.
        b.add(0, 2, t0);
        assert!(b.probe_due(t0 + BARRIER_WAIT_MAX).is_none());
        assert!(!b.waiting());
    }
}
