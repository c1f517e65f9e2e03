//! JetStream wire calls behind the bus: the durable mailbox stream and durable upstream.
//!
//! This module owns every JetStream request tether makes, all as plain JetStream API messages
//! (JSON over core NATS) through a small [`Transport`] (request/reply, publish, a timer) that
//! the NATS link implements on its connection, so the NATS client underneath can change without
//! touching this module or the device hub:
//!
//! - **The mailbox stream** (default `TETHER_MBOX`), created or updated at start (and again after
//!   it disappears). It captures `tether.mbox.<device>` and `tether.mbox.<device>.<key>`; a
//!   subject transform stores the plain subject as `tether.mbox.<device>._`, so that one filter,
//!   `tether.mbox.<device>.>`, reads a device's whole mailbox in stream order. After storing a
//!   message the stream republishes its headers (with `Nats-Sequence`) to
//!   `tether.mboxn.<device>`, a subject the per-device wildcard `tether.*.<device>` the shard
//!   already holds matches: live delivery needs no extra subscription and no consumer.
//! - **Reads** ([`JetStream::read`]): one direct get (`$JS.API.DIRECT.GET.<stream>` with `seq`
//!   and `next_by_subj`, no batch; the stream has `allow_direct`) returns the device's first
//!   message at or after a sequence, as one request (its answer comes back on the connection's
//!   request inbox). No JetStream consumer per device, none at all. Why one message per
//!   request: nats-server finds "the next message of this subject after S" by walking its
//!   block from S, and a batch also counts what is pending after it by walking the rest of the
//!   block; a read that starts at the sequence an announcement named finds it at once
//!   (docs/operations.md, "Durable delivery").
//! - **Acknowledgement** ([`JetStream::remove`]): the stream is its own position store. Each
//!   acknowledged message is deleted by its sequence (`$JS.API.STREAM.MSG.DELETE`), so what is
//!   left for a device is exactly what it has not acknowledged, on every node and after any
//!   restart, and an acknowledged message stops costing storage.
//! - **Durable upstream** ([`JetStream::publish_upstream`]): whether a stream captures a
//!   service's subject is asked once (`$JS.API.STREAM.NAMES` with `subject`) and cached; a
//!   captured subject is published as a JetStream publish and answered with its `seq` only once
//!   the stream stored it.
//!
//! Bounds: at most [`DurableConfig::api_concurrency`] JetStream requests in flight per shard (the
//! rest wait for a permit), each with [`DurableConfig::api_timeout`]; a read returns at most one
//! message; the capture cache holds at most [`CAPTURE_CACHE_MAX`] subjects.
//!
//! **No gap from a lost reply.** A direct get is a request: its one answer is handed to the
//! read that asked (no shared queue between reads that could overflow), and an answer that is
//! lost anyway (a disconnect, a leader change) makes its read time out: it fails (counted in
//! `tether_mailbox_read_failures_total`) and the session reads again from the same sequence, so
//! nothing after it is delivered first.

use super::{BusStats, StoredMessage};
use crate::proto::subject;
use ahash::AHashMap;
use bytes::Bytes;
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
/// Attempts of a removal (a leader change in a cluster fails requests for a moment).
const REMOVE_ATTEMPTS: u32 = 3;

/// Where the mailbox stream keeps its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// On disk (`"file"`): survives a nats-server restart (the default).
    File,
    /// In memory (`"memory"`): lost when the nats-server holding it stops.
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
    /// Where the stream keeps its messages (default [`Storage::File`]).
    pub storage: Storage,
    /// Deadline of each JetStream request (default 5 s).
    pub api_timeout: Duration,
    /// JetStream requests in flight per shard connection (default 256).
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
    /// Messages in the stream (`tether_mailbox_stream_messages`), refreshed every 5 s.
    pub stream_messages: AtomicI64,
    /// Bytes in the stream (`tether_mailbox_stream_bytes`), refreshed every 5 s.
    pub stream_bytes: AtomicI64,
    /// The configured max age, seconds (`tether_mailbox_limit_max_age_seconds`).
    pub limit_max_age_seconds: AtomicI64,
    /// The configured messages kept per device (`tether_mailbox_limit_max_msgs_per_device`).
    pub limit_max_msgs_per_device: AtomicI64,
    /// The configured stream size limit, bytes (`tether_mailbox_limit_max_bytes`).
    pub limit_max_bytes: AtomicI64,
    /// The configured replicas (`tether_mailbox_limit_replicas`).
    pub limit_replicas: AtomicI64,
    /// Direct-get reads of a device mailbox (`tether_mailbox_reads_total`).
    pub reads_total: AtomicU64,
    /// Messages those reads returned (`tether_mailbox_read_messages_total`).
    pub read_messages_total: AtomicU64,
    /// Reads that failed: no answer in time, or an error (`tether_mailbox_read_failures_total`).
    pub read_failures_total: AtomicU64,
    /// Acknowledged messages removed from the stream (`tether_mailbox_removed_total`).
    pub removed_total: AtomicU64,
    /// Acknowledged messages the stream did not remove (`tether_mailbox_remove_failures_total`).
    pub remove_failures_total: AtomicU64,
    /// `up` messages a stream stored before their ack (`tether_upstream_stored_total`).
    pub upstream_stored_total: AtomicU64,
    /// `up` messages to a captured subject that were not stored (`tether_upstream_store_failures_total`).
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
                "tether_mailbox_removed_total",
                "Acknowledged messages removed from the stream.",
                &self.removed_total,
            ),
            (
                "tether_mailbox_remove_failures_total",
                "Acknowledged messages the stream did not remove (redelivered later).",
                &self.remove_failures_total,
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

/// Why a request to NATS got no answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// No answer within the request's timeout.
    Timeout,
    /// Nobody subscribes to the subject (NATS "no responders").
    NoResponders,
    /// The request could not be sent (connection closed, client error), for the log.
    Failed(String),
}

/// The one message that answered a request.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status of a status message (`NATS/1.0 404 ...`), `None` for a plain answer.
    pub(crate) status: Option<u16>,
    /// The description that follows the status, if any.
    pub(crate) description: Option<String>,
    /// The header block, name and value, in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) payload: Bytes,
}

impl Reply {
    /// The first value of header `name` (exact name).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the JetStream calls need from a NATS connection: request/reply, a plain publish and a
/// timer. The NATS link implements it on its connection; nothing here knows which client or
/// runtime carries it.
pub(crate) trait Transport: Clone + 'static {
    /// Publishes `payload` on `subject` with a fresh reply subject and waits at most `timeout`
    /// for the one answer.
    fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Reply, CallError>>;
    /// Publishes `payload` on `subject` (no reply, no headers).
    fn publish(
        &self,
        subject: String,
        payload: Bytes,
    ) -> impl std::future::Future<Output = Result<(), String>>;
    /// Waits `duration`.
    fn sleep(&self, duration: Duration) -> impl std::future::Future<Output = ()>;
}

/// A shard's JetStream door on its connection (cheap to clone into the shard's tasks).
#[derive(Clone)]
pub(crate) struct JetStream<T: Transport> {
    transport: T,
    config: Arc<DurableConfig>,
    stats: Arc<BusStats>,
    permits: Arc<tokio::sync::Semaphore>,
    captured: Arc<Mutex<AHashMap<String, (bool, Instant)>>>,
}

/// The stream sequence a republished mailbox announcement carries (`Nats-Sequence`) and the
/// previous sequence stored on the same subject (`Nats-Last-Sequence`, 0 when none), from its
/// headers (`header` looks one up by name).
pub(crate) fn announced<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<(u64, u64)> {
    let seq = header("Nats-Sequence")?.parse().ok()?;
    let previous = header("Nats-Last-Sequence").map_or(Some(0), |p| p.parse().ok())?;
    (previous < seq).then_some((seq, previous))
}

impl<T: Transport> JetStream<T> {
    /// The JetStream door on `transport`. `durable` is `None` when only durable upstream is
    /// wanted; with it, the mailbox metrics are enabled, and whoever keeps the stream runs
    /// [`JetStream::keep_stream`].
    pub(crate) fn new(
        transport: T,
        durable: Option<DurableConfig>,
        stats: Arc<BusStats>,
    ) -> JetStream<T> {
        let config = Arc::new(durable.clone().unwrap_or_default());
        let js = JetStream {
            permits: Arc::new(tokio::sync::Semaphore::new(config.api_concurrency.max(1))),
            transport,
            config,
            stats,
            captured: Arc::new(Mutex::new(AHashMap::new())),
        };
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
        let answer = self
            .transport
            .request(subject, body, self.config.api_timeout)
            .await;
        self.stats
            .mailbox
            .api_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        let msg = match answer {
            Err(CallError::Timeout) => return Err("JetStream did not answer in time".into()),
            Err(CallError::NoResponders) => {
                return Err("JetStream request: no responders (is JetStream enabled?)".into())
            }
            Err(CallError::Failed(why)) => return Err(format!("JetStream request: {why}")),
            Ok(msg) => msg,
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
    pub(crate) async fn keep_stream(self) {
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
            self.transport
                .sleep(if ready {
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

    /// Reads the first message of `device` at or after stream sequence `from` (none when the
    /// device has nothing there, or this replica does not have it yet).
    pub(crate) async fn read(
        &self,
        device: &str,
        from: u64,
    ) -> Result<Option<StoredMessage>, String> {
        let m = &self.stats.mailbox;
        m.reads_total.fetch_add(1, Ordering::Relaxed);
        let result = self.next(device, from).await;
        match &result {
            Ok(msg) => {
                m.read_messages_total
                    .fetch_add(u64::from(msg.is_some()), Ordering::Relaxed);
            }
            Err(_) => {
                m.read_failures_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn next(&self, device: &str, from: u64) -> Result<Option<StoredMessage>, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "JetStream door closed".to_owned())?;
        let request = serde_json::json!({
            "seq": from,
            "next_by_subj": subject::mailbox_filter(device),
        });
        let m = &self.stats.mailbox;
        m.api_in_flight.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .transport
            .request(
                format!("$JS.API.DIRECT.GET.{}", self.config.stream),
                Bytes::from(request.to_string()),
                self.config.api_timeout,
            )
            .await;
        m.api_in_flight.fetch_sub(1, Ordering::Relaxed);
        let msg = match answer {
            Ok(msg) => msg,
            Err(CallError::Timeout) => return Err("direct get did not finish in time".into()),
            Err(CallError::NoResponders) => return Err("direct get: no responders".into()),
            Err(CallError::Failed(why)) => return Err(format!("direct get: {why}")),
        };
        match msg.status {
            None => {}
            // Nothing of the device at or after `from` (yet, on this replica).
            Some(404) => return Ok(None),
            Some(code) => {
                return Err(format!(
                    "direct get answered {code} {}",
                    msg.description.as_deref().unwrap_or("")
                ))
            }
        }
        let seq = msg
            .header("Nats-Sequence")
            .and_then(|s| s.parse().ok())
            .ok_or("direct get message without Nats-Sequence")?;
        if seq < from {
            return Err(format!("direct get for {from} returned {seq}"));
        }
        Ok(Some(StoredMessage {
            seq,
            payload: msg.payload,
        }))
    }

    /// Removes acknowledged messages from the stream, each by its sequence
    /// (`$JS.API.STREAM.MSG.DELETE`). One already gone (expired, collapsed, removed through
    /// another session) counts as removed. A purge with the device's subject filter would take
    /// one request, but nats-server walks every message between the device's first and the
    /// acknowledged one to apply it; a delete by sequence costs the same whatever the stream
    /// holds.
    pub(crate) async fn remove(&self, seqs: &[u64]) -> Result<(), String> {
        let subject = format!("$JS.API.STREAM.MSG.DELETE.{}", self.config.stream);
        let results = futures::future::join_all(seqs.iter().map(|&seq| {
            let body = Bytes::from(serde_json::json!({"seq": seq, "no_erase": true}).to_string());
            let subject = subject.clone();
            async move { self.remove_one(subject, body).await }
        }))
        .await;
        let m = &self.stats.mailbox;
        let mut first_err = None;
        for result in results {
            match result {
                Ok(()) => m.removed_total.fetch_add(1, Ordering::Relaxed),
                Err(why) => {
                    first_err.get_or_insert(why);
                    m.remove_failures_total.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn remove_one(&self, subject: String, body: Bytes) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..REMOVE_ATTEMPTS {
            if attempt > 0 {
                self.transport
                    .sleep(Duration::from_millis(250 << attempt))
                    .await;
            }
            match self.api(subject.clone(), body.clone()).await {
                Ok(v) => match Self::api_error(&v) {
                    None => return Ok(()),
                    // Already gone (also: an earlier attempt was applied and its answer lost
                    // in a leader change): 10043 "sequence N not found", or 10057 with the
                    // store's "no message found".
                    Some((10043, _)) => return Ok(()),
                    Some((10057, why)) if why == "no message found" => return Ok(()),
                    Some((_, why)) => last = why,
                },
                Err(why) => last = why,
            }
        }
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
            self.transport
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
        let answer = self
            .transport
            .request(
                "$JS.API.STREAM.NAMES".to_owned(),
                body,
                self.config.api_timeout,
            )
            .await;
        let captured = match answer {
            Err(CallError::Timeout) => {
                return Err(
                    "JetStream did not say in time whether a stream captures the service".into(),
                )
            }
            Err(CallError::NoResponders) => false,
            Err(CallError::Failed(why)) => return Err(format!("JetStream request: {why}")),
            Ok(msg) => serde_json::from_slice::<serde_json::Value>(&msg.payload)
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

#[cfg(test)]
mod tests {
    use super::*;

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
