//! JetStream wire calls behind the bus: the durable mailbox stream and durable upstream.
//!
//! This module owns every JetStream request tether makes, all on the NATS bridge thread and all
//! as plain JetStream API messages (JSON over core NATS), so a different NATS transport can
//! replace async-nats underneath without touching the device hub:
//!
//! - **The mailbox stream** (default `TETHER_MBOX`), created or updated at start (and again after
//!   it disappears). It captures `tether.mbox.<device>` and `tether.mbox.<device>.<key>`; a
//!   subject transform stores the plain subject as `tether.mbox.<device>._`, so that one filter,
//!   `tether.mbox.<device>.>`, reads a device's whole mailbox in stream order. After storing a
//!   message the stream republishes its headers (with `Nats-Sequence`) to
//!   `tether.mboxn.<device>`, a subject the per-device wildcard `tether.*.<device>` the shard
//!   already holds matches: live delivery needs no extra subscription and no consumer.
//! - **Reads** ([`JetStream::read`]): one batched direct get (`$JS.API.DIRECT.GET.<stream>` with
//!   `seq`, `next_by_subj`, `batch`; the stream has `allow_direct`), answered on one wildcard
//!   inbox subscription per node. No JetStream consumer per device, none at all.
//! - **Acknowledgement** ([`JetStream::purge`]): the stream is its own position store. An ack
//!   through `N` purges the device's messages up to `N` (`$JS.API.STREAM.PURGE` with a subject
//!   filter and `seq`), so what is left for a device is exactly what it has not acknowledged,
//!   on every node and after any restart, and an acknowledged message stops costing storage.
//! - **Durable upstream** ([`JetStream::publish_upstream`]): whether a stream captures a
//!   service's subject is asked once (`$JS.API.STREAM.NAMES` with `subject`) and cached; a
//!   captured subject is published as a JetStream publish and answered with its `seq` only once
//!   the stream stored it.
//!
//! Bounds: at most [`DurableConfig::api_concurrency`] JetStream requests in flight (the rest wait
//! for a permit), each with [`DurableConfig::api_timeout`]; a read collects at most the batch it
//! asked for; the capture cache holds at most [`CAPTURE_CACHE_MAX`] subjects.
//!
//! **No gap from a lost reply.** A direct get's answer is core NATS: the inbox subscription's
//! bounded queue drops what does not fit (async-nats' slow-consumer rule). Two things keep a
//! dropped reply from becoming a gap in a device's mailbox. The reads in flight together may
//! expect at most the inbox queue's capacity in replies (each read reserves its batch plus the
//! end-of-batch status from a budget of that size before it asks), so the queue cannot fill with
//! answers to live reads. And every read checks the batch's chain: nats-server stamps each message
//! of a batch, and the end-of-batch status, with `Nats-Last-Sequence`, the stream sequence of the
//! message it sent before (0 for the first); a broken chain means a reply was lost on the way,
//! and the read fails (counted in `tether_mailbox_read_failures_total`) and is retried from the
//! session's cursor, so nothing after the hole is delivered before the hole is filled.

use super::{BusStats, StoredMessage};
use crate::proto::subject;
use ahash::AHashMap;
use bytes::Bytes;
use futures::StreamExt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most service subjects whose capture by a stream is remembered.
pub const CAPTURE_CACHE_MAX: usize = 4096;
/// How long an answer about a subject's capture is trusted.
const CAPTURE_TTL: Duration = Duration::from_secs(10);
/// How often the stream's state (messages, bytes) is refreshed for `/metrics`, and how soon a
/// missing stream is created again.
const STREAM_REFRESH: Duration = Duration::from_secs(5);
/// Attempts of a purge (a leader change in a cluster fails requests for a moment).
const PURGE_ATTEMPTS: u32 = 3;

/// Where the mailbox stream keeps its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// Settings of durable delivery (flags `--durable-*`; defaults and reasons in
/// `docs/operations.md`).
#[derive(Clone, Debug)]
pub struct DurableConfig {
    /// Name of the mailbox stream (default `TETHER_MBOX`).
    pub stream: String,
    /// Oldest message kept (default 7 days).
    pub max_age: Duration,
    /// Unacknowledged messages kept per device (`max_msgs_per_subject`, default 1000); a
    /// collapse key keeps its own latest one.
    pub max_msgs_per_device: i64,
    /// Bytes the whole stream may hold (default 1 GiB); the oldest go first.
    pub max_bytes: i64,
    /// Largest message accepted by the stream (default 64 KiB, the device frame limit).
    pub max_msg_bytes: i32,
    /// Replicas (default 1; 3 on a cluster).
    pub replicas: usize,
    pub storage: Storage,
    /// Deadline of each JetStream request (default 5 s).
    pub api_timeout: Duration,
    /// JetStream requests in flight per node (default 256).
    pub api_concurrency: usize,
}

impl Default for DurableConfig {
    fn default() -> DurableConfig {
        DurableConfig {
            stream: "TETHER_MBOX".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_msgs_per_device: 1000,
            max_bytes: 1 << 30,
            max_msg_bytes: 64 * 1024,
            replicas: 1,
            storage: Storage::File,
            api_timeout: Duration::from_secs(5),
            api_concurrency: 256,
        }
    }
}

impl DurableConfig {
    /// The stream configuration tether creates (JetStream API JSON).
    pub fn stream_config(&self) -> serde_json::Value {
        let max_age_ns = self.max_age.as_nanos().min(i64::MAX as u128) as i64;
        // The duplicate window may not exceed the max age.
        let dup_ns = max_age_ns.min(120_000_000_000);
        serde_json::json!({
            "name": self.stream,
            "subjects": ["tether.mbox.*", "tether.mbox.*.*"],
            "retention": "limits",
            "discard": "old",
            "max_age": max_age_ns,
            "duplicate_window": dup_ns,
            "max_msgs_per_subject": self.max_msgs_per_device,
            "max_bytes": self.max_bytes,
            "max_msg_size": self.max_msg_bytes,
            "storage": match self.storage { Storage::File => "file", Storage::Memory => "memory" },
            "num_replicas": self.replicas,
            "allow_direct": true,
            "allow_msg_ttl": true,
            "allow_rollup_hdrs": true,
            "subject_transform": {"src": "tether.mbox.*", "dest": "tether.mbox.{{wildcard(1)}}._"},
            "republish": {"src": "tether.mbox.*.*", "dest": "tether.mboxn.{{wildcard(1)}}", "headers_only": true},
        })
    }
}

/// Counters and gauges of durable delivery; rendered in `/metrics` with the bus metrics.
#[derive(Debug, Default)]
pub struct MailboxStats {
    /// 1 when durable delivery is configured.
    pub enabled: AtomicI64,
    /// 1 once the mailbox stream exists with tether's configuration.
    pub stream_ready: AtomicI64,
    pub stream_messages: AtomicI64,
    pub stream_bytes: AtomicI64,
    pub limit_max_age_seconds: AtomicI64,
    pub limit_max_msgs_per_device: AtomicI64,
    pub limit_max_bytes: AtomicI64,
    pub limit_replicas: AtomicI64,
    pub reads_total: AtomicU64,
    pub read_messages_total: AtomicU64,
    pub read_failures_total: AtomicU64,
    pub purges_total: AtomicU64,
    pub purge_failures_total: AtomicU64,
    pub upstream_stored_total: AtomicU64,
    pub upstream_store_failures_total: AtomicU64,
    /// JetStream requests in flight.
    pub api_in_flight: AtomicI64,
}

impl MailboxStats {
    /// Appends the durable-delivery metrics (Prometheus text); nothing when it is off.
    pub fn render_prometheus(&self, out: &mut String) {
        if self.enabled.load(Ordering::Relaxed) == 0 {
            return;
        }
        let gauges: [(&str, &str, &AtomicI64); 8] = [
            (
                "tether_mailbox_stream_ready",
                "1 once the mailbox stream exists with tether's configuration.",
                &self.stream_ready,
            ),
            (
                "tether_mailbox_stream_messages",
                "Messages in the mailbox stream (unacknowledged, unexpired).",
                &self.stream_messages,
            ),
            (
                "tether_mailbox_stream_bytes",
                "Bytes in the mailbox stream.",
                &self.stream_bytes,
            ),
            (
                "tether_mailbox_limit_max_age_seconds",
                "Oldest message the mailbox stream keeps.",
                &self.limit_max_age_seconds,
            ),
            (
                "tether_mailbox_limit_max_msgs_per_device",
                "Messages kept per device (max_msgs_per_subject).",
                &self.limit_max_msgs_per_device,
            ),
            (
                "tether_mailbox_limit_max_bytes",
                "Bytes the mailbox stream may hold.",
                &self.limit_max_bytes,
            ),
            (
                "tether_mailbox_limit_replicas",
                "Replicas of the mailbox stream.",
                &self.limit_replicas,
            ),
            (
                "tether_mailbox_api_in_flight",
                "JetStream requests in flight.",
                &self.api_in_flight,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "tether_mailbox_reads_total",
                "Direct-get reads of a device mailbox.",
                &self.reads_total,
            ),
            (
                "tether_mailbox_read_messages_total",
                "Messages returned by mailbox reads.",
                &self.read_messages_total,
            ),
            (
                "tether_mailbox_read_failures_total",
                "Mailbox reads that failed (retried).",
                &self.read_failures_total,
            ),
            (
                "tether_mailbox_purges_total",
                "Acknowledgements applied to the stream (purges).",
                &self.purges_total,
            ),
            (
                "tether_mailbox_purge_failures_total",
                "Acknowledgements the stream did not take (redelivered later).",
                &self.purge_failures_total,
            ),
            (
                "tether_upstream_stored_total",
                "up messages stored by a JetStream stream before their ack.",
                &self.upstream_stored_total,
            ),
            (
                "tether_upstream_store_failures_total",
                "up messages to a captured subject that were not stored.",
                &self.upstream_store_failures_total,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

type Waiters = Arc<Mutex<AHashMap<u64, tokio::sync::mpsc::UnboundedSender<async_nats::Message>>>>;

/// The node's JetStream door (lives on the bridge thread; cheap to clone into tasks).
#[derive(Clone)]
pub(crate) struct JetStream {
    client: async_nats::Client,
    config: Arc<DurableConfig>,
    stats: Arc<BusStats>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Replies the reads in flight may expect on the inbox, together (its queue's capacity).
    reply_budget: Arc<tokio::sync::Semaphore>,
    reply_budget_max: usize,
    inbox: Arc<str>,
    waiters: Waiters,
    next_token: Arc<AtomicU64>,
    captured: Arc<Mutex<AHashMap<String, (bool, Instant)>>>,
}

fn header<'a>(msg: &'a async_nats::Message, name: &str) -> Option<&'a str> {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// The stream sequence a republished mailbox announcement carries (`Nats-Sequence`).
pub(crate) fn announced_seq(msg: &async_nats::Message) -> Option<u64> {
    header(msg, "Nats-Sequence").and_then(|s| s.parse().ok())
}

impl JetStream {
    /// Subscribes the node's direct-get inbox and starts keeping the mailbox stream. `durable`
    /// is `None` when only durable upstream is wanted. `inbox_capacity` is the client's
    /// subscription queue capacity (messages a subscription holds before async-nats drops).
    pub(crate) async fn start(
        client: async_nats::Client,
        durable: Option<DurableConfig>,
        stats: Arc<BusStats>,
        inbox_capacity: usize,
    ) -> JetStream {
        assert!(
            inbox_capacity >= 2,
            "a read needs room for a message and its end of batch"
        );
        let config = Arc::new(durable.clone().unwrap_or_default());
        let inbox: Arc<str> = Arc::from(client.new_inbox());
        let waiters: Waiters = Arc::new(Mutex::new(AHashMap::new()));
        let js = JetStream {
            permits: Arc::new(tokio::sync::Semaphore::new(config.api_concurrency.max(1))),
            reply_budget: Arc::new(tokio::sync::Semaphore::new(inbox_capacity)),
            reply_budget_max: inbox_capacity,
            client: client.clone(),
            config,
            stats,
            inbox: inbox.clone(),
            waiters: waiters.clone(),
            next_token: Arc::new(AtomicU64::new(1)),
            captured: Arc::new(Mutex::new(AHashMap::new())),
        };
        // The direct-get inbox serves mailbox reads only: no subscription without them.
        let inbox_sub = if durable.is_some() {
            Some(client.subscribe(format!("{inbox}.*")).await)
        } else {
            None
        };
        match inbox_sub {
            None => {}
            Some(Ok(mut sub)) => {
                tokio::spawn(async move {
                    while let Some(msg) = sub.next().await {
                        let token = msg
                            .subject
                            .rsplit('.')
                            .next()
                            .and_then(|t| t.parse::<u64>().ok());
                        let Some(token) = token else { continue };
                        let tx = waiters.lock().ok().and_then(|w| w.get(&token).cloned());
                        if let Some(tx) = tx {
                            let _ = tx.send(msg);
                        }
                    }
                });
            }
            Some(Err(err)) => {
                tracing::error!(%err, "cannot subscribe the JetStream reply inbox")
            }
        }
        if durable.is_some() {
            let m = &js.stats.mailbox;
            m.enabled.store(1, Ordering::Relaxed);
            let c = &js.config;
            m.limit_max_age_seconds
                .store(c.max_age.as_secs() as i64, Ordering::Relaxed);
            m.limit_max_msgs_per_device
                .store(c.max_msgs_per_device, Ordering::Relaxed);
            m.limit_max_bytes.store(c.max_bytes, Ordering::Relaxed);
            m.limit_replicas.store(c.replicas as i64, Ordering::Relaxed);
            let keeper = js.clone();
            tokio::spawn(async move { keeper.keep_stream().await });
        }
        js
    }

    async fn api(&self, subject: String, body: Bytes) -> Result<serde_json::Value, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "JetStream door closed".to_owned())?;
        self.stats
            .mailbox
            .api_in_flight
            .fetch_add(1, Ordering::Relaxed);
        let answer =
            tokio::time::timeout(self.config.api_timeout, self.client.request(subject, body)).await;
        self.stats
            .mailbox
            .api_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        let msg = match answer {
            Err(_) => return Err("JetStream did not answer in time".into()),
            Ok(Err(err)) => return Err(format!("JetStream request: {err}")),
            Ok(Ok(msg)) => msg,
        };
        let value: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("JetStream answer is not JSON: {e}"))?;
        Ok(value)
    }

    fn api_error(value: &serde_json::Value) -> Option<(u64, String)> {
        let err = value.get("error")?;
        Some((
            err.get("err_code").and_then(|c| c.as_u64()).unwrap_or(0),
            err.get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("unknown JetStream error")
                .to_owned(),
        ))
    }

    /// Creates the mailbox stream when it is missing (or updates it to tether's settings), then
    /// refreshes its state for `/metrics` forever.
    async fn keep_stream(self) {
        let name = self.config.stream.clone();
        let body = Bytes::from(self.config.stream_config().to_string());
        let m = &self.stats.mailbox;
        loop {
            let info = self
                .api(format!("$JS.API.STREAM.INFO.{name}"), Bytes::new())
                .await;
            let ready = match info {
                Ok(v) if Self::api_error(&v).is_none() => {
                    if m.stream_ready.load(Ordering::Relaxed) == 0 {
                        self.configure(&name, "UPDATE", body.clone()).await
                    } else {
                        let state = &v["state"];
                        m.stream_messages
                            .store(state["messages"].as_i64().unwrap_or(0), Ordering::Relaxed);
                        m.stream_bytes
                            .store(state["bytes"].as_i64().unwrap_or(0), Ordering::Relaxed);
                        true
                    }
                }
                Ok(v) => match Self::api_error(&v) {
                    // 10059: stream not found.
                    Some((10059, _)) => self.configure(&name, "CREATE", body.clone()).await,
                    Some((code, why)) => {
                        tracing::error!(stream = %name, code, %why, "mailbox stream unavailable");
                        false
                    }
                    None => false,
                },
                Err(why) => {
                    tracing::warn!(stream = %name, %why, "mailbox stream info unavailable (is JetStream enabled: nats-server -js?)");
                    false
                }
            };
            m.stream_ready.store(i64::from(ready), Ordering::Relaxed);
            tokio::time::sleep(if ready {
                STREAM_REFRESH
            } else {
                Duration::from_secs(1)
            })
            .await;
        }
    }

    async fn configure(&self, name: &str, verb: &str, body: Bytes) -> bool {
        match self
            .api(format!("$JS.API.STREAM.{verb}.{name}"), body)
            .await
        {
            Ok(v) => match Self::api_error(&v) {
                None => {
                    tracing::info!(stream = %name, action = verb, config = %v["config"], "mailbox stream ready");
                    true
                }
                Some((code, why)) => {
                    tracing::error!(stream = %name, action = verb, code, %why,
                        "cannot configure the mailbox stream (durable delivery needs nats-server 2.11+ with -js)");
                    false
                }
            },
            Err(why) => {
                tracing::warn!(stream = %name, action = verb, %why, "mailbox stream not configured yet");
                false
            }
        }
    }

    /// Reads at most `max` messages of `device` with a sequence above `after`, in stream order;
    /// the flag is true when nothing else was pending after them.
    pub(crate) async fn read(
        &self,
        device: &str,
        after: u64,
        max: usize,
    ) -> Result<(Vec<StoredMessage>, bool), String> {
        let m = &self.stats.mailbox;
        m.reads_total.fetch_add(1, Ordering::Relaxed);
        let result = self.read_inner(device, after, max).await;
        match &result {
            Ok((msgs, _)) => {
                m.read_messages_total
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                m.read_failures_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn read_inner(
        &self,
        device: &str,
        after: u64,
        max: usize,
    ) -> Result<(Vec<StoredMessage>, bool), String> {
        // The batch and its end-of-batch status, within what the inbox queue holds.
        let max = max.clamp(1, self.reply_budget_max - 1);
        let replies = u32::try_from(max + 1).expect("the inbox capacity fits a u32");
        let _replies = self
            .reply_budget
            .acquire_many(replies)
            .await
            .map_err(|_| "JetStream door closed".to_owned())?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "JetStream door closed".to_owned())?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(token, tx);
        }
        let request = serde_json::json!({
            "seq": after + 1,
            "next_by_subj": subject::mailbox_filter(device),
            "batch": max,
        });
        let reply = format!("{}.{token}", self.inbox);
        let stream = &self.config.stream;
        let _guard = WaiterGuard {
            waiters: &self.waiters,
            token,
        };
        self.stats
            .mailbox
            .api_in_flight
            .fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(self.config.api_timeout, async {
            self.client
                .publish_with_reply(
                    format!("$JS.API.DIRECT.GET.{stream}"),
                    reply,
                    Bytes::from(request.to_string()),
                )
                .await
                .map_err(|e| format!("direct get publish: {e}"))?;
            let mut messages = Vec::new();
            let mut chain = BatchChain::default();
            // The server answers at most `batch` messages then an end-of-batch status; the
            // channel is unbounded but never holds more than that.
            while let Some(msg) = rx.recv().await {
                if let Some(status) = msg.status {
                    return match status.as_u16() {
                        // End of batch: Nats-Num-Pending says whether more are waiting.
                        204 => {
                            chain.link(header(&msg, "Nats-Last-Sequence"), None)?;
                            let pending: u64 = header(&msg, "Nats-Num-Pending")
                                .and_then(|p| p.parse().ok())
                                .unwrap_or(1);
                            Ok((messages, pending == 0))
                        }
                        404 => Ok((messages, true)),
                        code => Err(format!(
                            "direct get answered {code} {}",
                            msg.description.as_deref().unwrap_or("")
                        )),
                    };
                }
                let seq = header(&msg, "Nats-Sequence")
                    .and_then(|s| s.parse().ok())
                    .ok_or("direct get message without Nats-Sequence")?;
                chain.link(header(&msg, "Nats-Last-Sequence"), Some(seq))?;
                messages.push(StoredMessage {
                    seq,
                    payload: msg.payload,
                });
                if messages.len() > max {
                    return Err("direct get returned more than the batch".into());
                }
            }
            Err("the reply inbox closed".to_owned())
        })
        .await;
        self.stats
            .mailbox
            .api_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Err(_) => Err("direct get did not finish in time".into()),
            Ok(result) => result,
        }
    }

    /// Removes every message of `device` up to and including `through` (its acknowledgement).
    pub(crate) async fn purge(&self, device: &str, through: u64) -> Result<(), String> {
        let body = Bytes::from(
            serde_json::json!({"filter": subject::mailbox_filter(device), "seq": through + 1})
                .to_string(),
        );
        let subject = format!("$JS.API.STREAM.PURGE.{}", self.config.stream);
        let mut last = String::new();
        for attempt in 0..PURGE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            match self.api(subject.clone(), body.clone()).await {
                Ok(v) => match Self::api_error(&v) {
                    None => {
                        self.stats
                            .mailbox
                            .purges_total
                            .fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    Some((_, why)) => last = why,
                },
                Err(why) => last = why,
            }
        }
        self.stats
            .mailbox
            .purge_failures_total
            .fetch_add(1, Ordering::Relaxed);
        Err(last)
    }

    /// Publishes an upstream message: as a JetStream publish answered with its stream sequence
    /// when a stream captures `subject`, else as a plain publish (`Ok(None)`).
    pub(crate) async fn publish_upstream(
        &self,
        subject: String,
        payload: Bytes,
    ) -> Result<Option<u64>, String> {
        if !self.is_captured(&subject).await? {
            self.client
                .publish(subject, payload)
                .await
                .map_err(|e| format!("publish: {e}"))?;
            return Ok(None);
        }
        let result = match self.api(subject, payload).await {
            Ok(v) => match (Self::api_error(&v), v.get("seq").and_then(|s| s.as_u64())) {
                (None, Some(seq)) => Ok(Some(seq)),
                (Some((_, why)), _) => Err(why),
                (None, None) => {
                    Err("the answer was not a JetStream publish acknowledgement".into())
                }
            },
            Err(why) => Err(why),
        };
        let m = &self.stats.mailbox;
        match &result {
            Ok(_) => m.upstream_stored_total.fetch_add(1, Ordering::Relaxed),
            Err(_) => m
                .upstream_store_failures_total
                .fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    async fn is_captured(&self, subject: &str) -> Result<bool, String> {
        if let Some((captured, at)) = self
            .captured
            .lock()
            .ok()
            .and_then(|c| c.get(subject).copied())
        {
            if at.elapsed() < CAPTURE_TTL {
                return Ok(captured);
            }
        }
        let body = Bytes::from(serde_json::json!({ "subject": subject }).to_string());
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "JetStream door closed".to_owned())?;
        let answer = tokio::time::timeout(
            self.config.api_timeout,
            self.client.request("$JS.API.STREAM.NAMES", body),
        )
        .await;
        let captured = match answer {
            Err(_) => {
                return Err(
                    "JetStream did not say in time whether a stream captures the service".into(),
                )
            }
            Ok(Err(err)) if err.kind() == async_nats::RequestErrorKind::NoResponders => false,
            Ok(Err(err)) => return Err(format!("JetStream request: {err}")),
            Ok(Ok(msg)) => serde_json::from_slice::<serde_json::Value>(&msg.payload)
                .ok()
                .and_then(|v| {
                    v.get("streams")
                        .and_then(|s| s.as_array())
                        .map(|a| !a.is_empty())
                })
                .unwrap_or(false),
        };
        if let Ok(mut cache) = self.captured.lock() {
            if cache.len() >= CAPTURE_CACHE_MAX {
                cache.clear();
            }
            cache.insert(subject.to_owned(), (captured, Instant::now()));
        }
        Ok(captured)
    }
}

struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    token: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&self.token);
        }
    }
}

/// The chain of one direct-get batch: each reply names, in `Nats-Last-Sequence`, the stream
/// sequence of the message sent before it (0 before the first), so a reply lost between the
/// server and the read shows as a broken link.
#[derive(Default)]
struct BatchChain {
    /// Sequence of the last message received in this batch (0: none yet).
    last_seq: u64,
}

impl BatchChain {
    /// Checks the next reply: a message with its sequence, or the end of batch (`None`).
    fn link(&mut self, last_sequence: Option<&str>, seq: Option<u64>) -> Result<(), String> {
        let named: u64 = last_sequence
            .and_then(|s| s.parse().ok())
            .ok_or("direct get reply without Nats-Last-Sequence")?;
        if named != self.last_seq {
            return Err(format!(
                "direct get batch lost a reply: the server sent {named} before this one, the last \
                 received was {}",
                self.last_seq
            ));
        }
        if let Some(seq) = seq {
            debug_assert!(seq > self.last_seq, "a batch is in stream order");
            self.last_seq = seq;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_chain_holds_only_when_no_reply_was_lost() {
        // 1, 3, 5 then the end of batch, as nats-server stamps them.
        let mut chain = BatchChain::default();
        chain.link(Some("0"), Some(1)).unwrap();
        chain.link(Some("1"), Some(3)).unwrap();
        chain.link(Some("3"), Some(5)).unwrap();
        chain.link(Some("5"), None).unwrap();
        // The middle message lost: 5 names 3, the read last saw 1.
        let mut chain = BatchChain::default();
        chain.link(Some("0"), Some(1)).unwrap();
        assert!(chain.link(Some("3"), Some(5)).is_err());
        // The first message lost.
        assert!(BatchChain::default().link(Some("1"), Some(3)).is_err());
        // Every message lost, the end of batch arrived.
        assert!(BatchChain::default().link(Some("5"), None).is_err());
        // An empty batch, and a reply from a server that does not stamp the chain.
        BatchChain::default().link(Some("0"), None).unwrap();
        assert!(BatchChain::default().link(None, Some(1)).is_err());
    }

    #[test]
    fn stream_config_reads_one_filter_and_announces_on_the_device_wildcard() {
        let c = DurableConfig {
            max_age: Duration::from_secs(60),
            replicas: 3,
            ..DurableConfig::default()
        }
        .stream_config();
        assert_eq!(c["num_replicas"], 3);
        assert_eq!(c["max_age"], 60_000_000_000i64);
        assert_eq!(c["duplicate_window"], 60_000_000_000i64);
        assert_eq!(c["allow_direct"], true);
        assert_eq!(c["allow_msg_ttl"], true);
        // The republished subject of device `tv` matches the shard's `tether.*.tv`.
        let dest = c["republish"]["dest"]
            .as_str()
            .unwrap()
            .replace("{{wildcard(1)}}", "tv");
        assert_eq!(dest, subject::mailbox_notify("tv"));
        assert!(crate::proto::pattern_matches(
            &subject::device_wildcard("tv"),
            &dest
        ));
        // The plain subject is stored under the one filter a read uses.
        let stored = c["subject_transform"]["dest"]
            .as_str()
            .unwrap()
            .replace("{{wildcard(1)}}", "tv");
        assert!(crate::proto::pattern_matches(
            &subject::mailbox_filter("tv"),
            &stored
        ));
    }
}
