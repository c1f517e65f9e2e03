//! The NATS bus: one bridge thread between the shards and NATS.
//!
//! The bridge thread (`tether-nats-bridge`) runs async-nats on a tokio current-thread runtime.
//! Shards talk to it over two bounded flume channels (commands: interest, barriers, requests;
//! publishes), and it answers each shard on that shard's bounded control and data channels.
//! Each (shard, subject) interest is one NATS subscription served by one small tokio task that
//! forwards its messages to the shard, so NATS itself routes between the shards of one node as
//! between nodes. A barrier is a NATS flush (PING/PONG) after the subscriptions sent before it:
//! once it completes, the server has registered them.
//!
//! The client reconnects forever with exponential backoff and jitter (100 ms doubling to 5 s,
//! times a random 0.5–1.0), and async-nats re-sends every live subscription after a reconnect,
//! so all interest is restored. State and drops are counted in [`BusStats`].

use super::{
    Backlog, BusConfig, BusError, BusMessage, BusStats, Ctrl, Link, RequestError, ShardBus,
};
use crate::proto::subject;
use ahash::AHashMap;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most commands the bridge handles before it looks at barriers again.
const BATCH_MAX: usize = 1024;
/// Capacity of each async-nats subscription channel (messages held per subscription before
/// async-nats reports a slow consumer and drops).
const SUBSCRIPTION_CAPACITY: usize = 1024;

/// What a shard asks of the bridge.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        shard: usize,
        subject: String,
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
}

pub(crate) struct NatsLink {
    shard: usize,
    cmd_tx: flume::Sender<Command>,
    pub_tx: flume::Sender<BusMessage>,
    backlog: Backlog<Command>,
}

impl NatsLink {
    pub(crate) fn subscribe(&mut self, subject: &str, stats: &BusStats) -> Result<(), BusError> {
        let cmd = Command::Subscribe {
            shard: self.shard,
            subject: subject.to_owned(),
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

/// Reconnect delay: 100 ms doubling per attempt up to 5 s, times a random factor in [0.5, 1).
pub fn reconnect_delay(attempts: usize) -> Duration {
    let base_ms = 100u64.saturating_mul(1u64 << attempts.min(6)).min(5_000);
    let factor = 0.5 + rand::random::<f64>() * 0.5;
    Duration::from_millis((base_ms as f64 * factor) as u64)
}

struct ShardTx {
    ctrl: Vec<flume::Sender<Ctrl>>,
    data: Vec<flume::Sender<BusMessage>>,
}

pub(crate) fn start(
    config: &BusConfig,
    stats: Arc<BusStats>,
) -> Result<(Vec<ShardBus>, BridgeHandle), String> {
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
    let (ctrl_tx, ctrl_rx): (Vec<_>, Vec<_>) =
        (0..n).map(|_| flume::bounded(config.queue_len)).unzip();
    let (data_tx, data_rx): (Vec<_>, Vec<_>) =
        (0..n).map(|_| flume::bounded(config.queue_len)).unzip();
    let (stop_tx, stop_rx) = flume::bounded(1);
    let links = ctrl_rx
        .into_iter()
        .zip(data_rx)
        .enumerate()
        .map(|(shard, (ctrl_rx, data_rx))| ShardBus {
            shard,
            node: node.clone(),
            link: Link::Nats(NatsLink {
                shard,
                cmd_tx: cmd_tx.clone(),
                pub_tx: pub_tx.clone(),
                backlog: Backlog::new(),
            }),
            ctrl_rx,
            data_rx,
            local: VecDeque::new(),
            stats: stats.clone(),
        })
        .collect();
    let tx = ShardTx {
        ctrl: ctrl_tx,
        data: data_tx,
    };
    let node_name = config.node.clone();
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
                addrs, node_name, tx, cmd_rx, pub_rx, stop_rx, stats,
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

fn forward(msg: async_nats::Message) -> BusMessage {
    BusMessage {
        subject: msg.subject.to_string(),
        reply: msg.reply.map(|r| r.to_string()),
        payload: msg.payload,
    }
}

async fn subscribe_forwarding(
    client: &async_nats::Client,
    subject: String,
    to: flume::Sender<BusMessage>,
    stats: Arc<BusStats>,
) -> Option<tokio::task::JoinHandle<()>> {
    match client.subscribe(subject.clone()).await {
        Ok(mut sub) => Some(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match to.try_send(forward(msg)) {
                    Ok(()) => {}
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

async fn bridge_main(
    addrs: Vec<async_nats::ServerAddr>,
    node: String,
    tx: ShardTx,
    cmd_rx: flume::Receiver<Command>,
    pub_rx: flume::Receiver<BusMessage>,
    stop_rx: flume::Receiver<Duration>,
    stats: Arc<BusStats>,
) {
    let events_stats = stats.clone();
    let connected_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = async_nats::ConnectOptions::new()
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
        });
    let client = match options.connect(addrs).await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "NATS connect failed");
            return;
        }
    };
    let mut subs: AHashMap<(usize, String), tokio::task::JoinHandle<()>> = AHashMap::new();
    for (shard, data) in tx.data.iter().enumerate() {
        let inbox = format!("{}*", subject::inbox_prefix(&node, shard));
        if let Some(task) =
            subscribe_forwarding(&client, inbox.clone(), data.clone(), stats.clone()).await
        {
            subs.insert((shard, inbox), task);
        }
    }
    let mut barriers: Vec<(usize, u64)> = Vec::new();
    let flush_timeout = loop {
        tokio::select! {
            biased;
            stop = stop_rx.recv_async() => break stop.unwrap_or(Duration::from_secs(1)),
            cmd = cmd_rx.recv_async() => {
                let Ok(cmd) = cmd else { break Duration::from_secs(1) };
                handle_command(&client, cmd, &tx, &mut subs, &mut barriers, &stats).await;
                for _ in 0..BATCH_MAX {
                    match cmd_rx.try_recv() {
                        Ok(cmd) => handle_command(&client, cmd, &tx, &mut subs, &mut barriers, &stats).await,
                        Err(_) => break,
                    }
                }
            }
            msg = pub_rx.recv_async() => {
                let Ok(msg) = msg else { break Duration::from_secs(1) };
                publish(&client, msg, &stats).await;
                for _ in 0..BATCH_MAX {
                    match pub_rx.try_recv() {
                        Ok(msg) => publish(&client, msg, &stats).await,
                        Err(_) => break,
                    }
                }
            }
        }
        if !barriers.is_empty() {
            let waiting = std::mem::take(&mut barriers);
            let client = client.clone();
            let ctrl = tx.ctrl.clone();
            tokio::spawn(async move {
                let ok = client.flush().await.is_ok();
                for (shard, token) in waiting {
                    let ev = if ok {
                        Ctrl::Ready(token)
                    } else {
                        Ctrl::Failed(token)
                    };
                    let _ = ctrl[shard].send_async(ev).await;
                }
            });
        }
    };
    for (_, task) in subs.drain() {
        task.abort();
    }
    let _ = tokio::time::timeout(flush_timeout, client.flush()).await;
}

async fn publish(client: &async_nats::Client, msg: BusMessage, stats: &BusStats) {
    let result = match msg.reply {
        Some(reply) => {
            client
                .publish_with_reply(msg.subject, reply, msg.payload)
                .await
        }
        None => client.publish(msg.subject, msg.payload).await,
    };
    if let Err(err) = result {
        stats.dropped_outbound_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%err, "NATS publish failed");
    }
}

async fn handle_command(
    client: &async_nats::Client,
    cmd: Command,
    tx: &ShardTx,
    subs: &mut AHashMap<(usize, String), tokio::task::JoinHandle<()>>,
    barriers: &mut Vec<(usize, u64)>,
    stats: &Arc<BusStats>,
) {
    match cmd {
        Command::Subscribe { shard, subject } => {
            let key = (shard, subject);
            if subs.contains_key(&key) {
                return;
            }
            if let Some(task) =
                subscribe_forwarding(client, key.1.clone(), tx.data[shard].clone(), stats.clone())
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
        Command::Barrier { shard, token } => barriers.push((shard, token)),
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
