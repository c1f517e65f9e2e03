//! Measurements and the worker report format: counters, the four latency HdrHistograms, and the
//! JSON-lines messages a worker and its coordinator exchange (histograms travel in HdrHistogram's
//! own V2 serialisation, base64-encoded, so the coordinator merges them exactly).

use std::collections::BTreeMap;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded, in microseconds (one hour); larger values saturate.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits kept by every latency histogram.
pub const LATENCY_SIGFIG: u8 = 3;

/// A new, empty latency histogram (microseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Counters of one worker (cumulative since the start); the coordinator sums them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Counters {
    /// Connections open right now (after a 101, before the close).
    pub connected: u64,
    /// Highest `connected` this worker saw.
    pub connected_peak: u64,
    /// Connect attempts started (initial, churn and storm reconnects).
    pub attempts: u64,
    pub handshakes_ok: u64,
    /// Scheduled clients never started because the run ended first (generator far behind).
    pub clients_not_started: u64,
    /// Successful handshakes of the initial connect schedule only.
    pub initial_handshakes_ok: u64,
    /// When the last initial handshake completed, in microseconds from the start.
    pub initial_last_ok_us: u64,
    /// Failed connects and upgrades, by cause.
    pub handshake_errors: BTreeMap<String, u64>,
    /// Connections that ended other than by our own close, by cause.
    pub disconnects: BTreeMap<String, u64>,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub message_gaps: u64,
    pub message_duplicates: u64,
    /// Received data messages that did not carry our header.
    pub messages_foreign: u64,
    /// tether workloads: `error` envelopes by code (and NATS publish failures).
    pub tether_errors: BTreeMap<String, u64>,
    /// Sends skipped because the connection had `msg_in_flight_max` unanswered messages.
    pub messages_skipped_in_flight: u64,
    /// Message sends that started later than the lag threshold.
    pub message_lag_events: u64,
    /// Connect attempts that started later than the lag threshold.
    pub schedule_lag_events: u64,
    pub schedule_lag_max_us: u64,
    pub churn_disconnects: u64,
    pub storm_dropped: u64,
    pub storm_reconnected: u64,
    pub storm_gave_up: u64,
    /// Time from the storm's drop until the last dropped client of this worker was back.
    pub storm_recovery_us: Option<u64>,
    /// Our closes answered by the server's close frame.
    pub closes_clean: u64,
    /// Our closes not answered in time.
    pub closes_timed_out: u64,
    /// Clients still running when the worker's drain deadline passed.
    pub closes_unfinished: u64,
    /// Devices that received every message meant for them (`--preload`, `--burst`) and, in
    /// the durable workload, whose last acknowledgement the node confirmed.
    pub devices_complete: u64,
    /// When the last device became complete, in microseconds from the start.
    pub complete_last_us: u64,
    /// When this worker started its burst, in microseconds from the start.
    pub burst_started_us: Option<u64>,
    /// Burst publishes the NATS server (core) or JetStream (durable) took.
    pub published: u64,
    /// Durable workload: `{"op":"ack","seq":N}` sent, and those with an `id` confirmed.
    pub durable_acks_sent: u64,
    pub durable_acks_confirmed: u64,
    /// Durable messages whose `seq` was at or below one the device had already processed
    /// (a redelivery; the device deduplicates them by `seq`).
    pub durable_redelivered: u64,
    /// `wss://` handshakes that were full ones.
    #[serde(default)]
    pub tls_full: u64,
    /// `wss://` handshakes that resumed an earlier session.
    #[serde(default)]
    pub tls_resumed: u64,
}

impl Counters {
    pub fn handshake_errors_total(&self) -> u64 {
        self.handshake_errors.values().sum()
    }

    pub fn error(&mut self, cause: impl Into<String>) {
        *self.handshake_errors.entry(cause.into()).or_default() += 1;
    }

    pub fn disconnect(&mut self, cause: impl Into<String>) {
        *self.disconnects.entry(cause.into()).or_default() += 1;
    }

    /// Adds another worker's counters into these (gauges and totals add; maxima take the max).
    pub fn add(&mut self, o: &Counters) {
        self.connected += o.connected;
        self.connected_peak += o.connected_peak;
        self.attempts += o.attempts;
        self.clients_not_started += o.clients_not_started;
        self.handshakes_ok += o.handshakes_ok;
        self.initial_handshakes_ok += o.initial_handshakes_ok;
        self.initial_last_ok_us = self.initial_last_ok_us.max(o.initial_last_ok_us);
        for (k, v) in &o.handshake_errors {
            *self.handshake_errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.disconnects {
            *self.disconnects.entry(k.clone()).or_default() += v;
        }
        self.messages_sent += o.messages_sent;
        self.messages_received += o.messages_received;
        self.message_gaps += o.message_gaps;
        self.message_duplicates += o.message_duplicates;
        self.messages_foreign += o.messages_foreign;
        for (k, v) in &o.tether_errors {
            *self.tether_errors.entry(k.clone()).or_default() += v;
        }
        self.messages_skipped_in_flight += o.messages_skipped_in_flight;
        self.message_lag_events += o.message_lag_events;
        self.schedule_lag_events += o.schedule_lag_events;
        self.schedule_lag_max_us = self.schedule_lag_max_us.max(o.schedule_lag_max_us);
        self.churn_disconnects += o.churn_disconnects;
        self.storm_dropped += o.storm_dropped;
        self.storm_reconnected += o.storm_reconnected;
        self.storm_gave_up += o.storm_gave_up;
        self.storm_recovery_us = match (self.storm_recovery_us, o.storm_recovery_us) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.closes_clean += o.closes_clean;
        self.closes_timed_out += o.closes_timed_out;
        self.closes_unfinished += o.closes_unfinished;
        self.devices_complete += o.devices_complete;
        self.complete_last_us = self.complete_last_us.max(o.complete_last_us);
        self.burst_started_us = match (self.burst_started_us, o.burst_started_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.published += o.published;
        self.durable_acks_sent += o.durable_acks_sent;
        self.durable_acks_confirmed += o.durable_acks_confirmed;
        self.durable_redelivered += o.durable_redelivered;
        self.tls_full += o.tls_full;
        self.tls_resumed += o.tls_resumed;
    }
}

/// The latency histograms, all in microseconds.
pub struct Hists {
    /// Intended connect start -> TCP connection established.
    pub connect: Histogram<u64>,
    /// TCP established -> valid 101 response parsed.
    pub upgrade: Histogram<u64>,
    /// Intended connect start -> valid 101 response parsed.
    pub handshake: Histogram<u64>,
    /// Intended send time of an echo message -> its echo received.
    pub rtt: Histogram<u64>,
    /// A device's reference instant (its first intended connect with `--preload`, else the
    /// start of the burst) -> it had all its messages (durable: its last ack confirmed).
    pub complete: Histogram<u64>,
    /// Intended send time of a scheduled message -> handed to the socket (how late the
    /// generator itself was).
    pub send_lag: Histogram<u64>,
    /// A message handed to the socket -> received (echo: its echo; d2d: at the partner), for
    /// messages that carry their write time; the path's own latency without the generator's
    /// sending lateness.
    pub transit: Histogram<u64>,
}

/// Histogram names, in the order used for files and reports.
pub const HIST_NAMES: [&str; 7] = [
    "connect",
    "upgrade",
    "handshake",
    "rtt",
    "complete",
    "send_lag",
    "transit",
];

impl Default for Hists {
    fn default() -> Self {
        Hists {
            connect: new_histogram(),
            upgrade: new_histogram(),
            handshake: new_histogram(),
            rtt: new_histogram(),
            complete: new_histogram(),
            send_lag: new_histogram(),
            transit: new_histogram(),
        }
    }
}

impl Hists {
    pub fn all(&self) -> [&Histogram<u64>; 7] {
        [
            &self.connect,
            &self.upgrade,
            &self.handshake,
            &self.rtt,
            &self.complete,
            &self.send_lag,
            &self.transit,
        ]
    }

    fn all_mut(&mut self) -> [&mut Histogram<u64>; 7] {
        [
            &mut self.connect,
            &mut self.upgrade,
            &mut self.handshake,
            &mut self.rtt,
            &mut self.complete,
            &mut self.send_lag,
            &mut self.transit,
        ]
    }

    pub fn reset(&mut self) {
        for h in self.all_mut() {
            h.reset();
        }
    }

    /// Merges another set in exactly (bucket counts add).
    pub fn add(&mut self, o: &Hists) {
        for (a, b) in self.all_mut().into_iter().zip(o.all()) {
            a.add(b).expect("histograms share bounds");
        }
    }

    /// V2-serialised, base64-encoded blobs.
    pub fn encode(&self) -> HistBlobs {
        let mut ser = V2Serializer::new();
        let enc = |h: &Histogram<u64>, ser: &mut V2Serializer| {
            let mut buf = Vec::new();
            ser.serialize(h, &mut buf)
                .expect("serialising into a Vec does not fail");
            base64::engine::general_purpose::STANDARD.encode(buf)
        };
        HistBlobs {
            connect: enc(&self.connect, &mut ser),
            upgrade: enc(&self.upgrade, &mut ser),
            handshake: enc(&self.handshake, &mut ser),
            rtt: enc(&self.rtt, &mut ser),
            complete: enc(&self.complete, &mut ser),
            send_lag: enc(&self.send_lag, &mut ser),
            transit: enc(&self.transit, &mut ser),
        }
    }

    pub fn decode(b: &HistBlobs) -> Result<Hists, String> {
        let mut de = Deserializer::new();
        let mut dec = |s: &str| -> Result<Histogram<u64>, String> {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("histogram base64: {e}"))?;
            let h: Histogram<u64> = de
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| format!("histogram V2: {e:?}"))?;
            // Re-home into the common bounds so that merges never fail.
            let mut out = new_histogram();
            out.add(&h)
                .map_err(|e| format!("histogram bounds: {e:?}"))?;
            Ok(out)
        };
        Ok(Hists {
            connect: dec(&b.connect)?,
            upgrade: dec(&b.upgrade)?,
            handshake: dec(&b.handshake)?,
            rtt: dec(&b.rtt)?,
            complete: dec(&b.complete)?,
            send_lag: dec(&b.send_lag)?,
            transit: dec(&b.transit)?,
        })
    }
}

/// Serialised histograms (base64 of HdrHistogram V2).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistBlobs {
    pub connect: String,
    pub upgrade: String,
    pub handshake: String,
    pub rtt: String,
    pub complete: String,
    pub send_lag: String,
    pub transit: String,
}

/// Coordinator -> worker, line 1 on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub plan: crate::plan::Plan,
    pub worker: u32,
}

/// Coordinator -> worker, line 2 on stdin: the common start time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StartSignal {
    pub start_unix_ns: u64,
}

/// Coordinator -> worker, any later line on stdin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum WorkerCmd {
    /// Interrupted (Ctrl-C): stop the schedule and drain now (close every client with 1000).
    Stop,
}

/// Worker -> coordinator, one JSON object per line on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// Set up and waiting for the start signal; `fd_soft_limit` after raising it.
    Ready { fd_soft_limit: u64 },
    /// Sent at start + k seconds: cumulative counters and the histograms of the interval.
    Tick {
        k: u64,
        counters: Counters,
        hist: HistBlobs,
        /// Connected-gauge samples `(slot, connected)`, slot = 100 ms periods from the start.
        samples: Vec<(u64, u64)>,
    },
    /// The run is over: final counters, the last partial interval, resource use.
    Final {
        counters: Counters,
        hist: HistBlobs,
        samples: Vec<(u64, u64)>,
        /// Microseconds from the start to the end of this worker's drain.
        elapsed_us: u64,
        cpu_us: u64,
        max_rss_kib: u64,
    },
    /// The worker could not run.
    Failed { error: String },
}

/// Percentile summary of a latency histogram.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_merge_exactly() {
        let mut a = Hists::default();
        let mut b = Hists::default();
        for v in 1..=1000u64 {
            a.handshake.record(v).unwrap();
            b.handshake.record(v * 1000).unwrap();
        }
        b.rtt.record(42).unwrap();
        let mut merged = Hists::decode(&a.encode()).unwrap();
        merged.add(&Hists::decode(&b.encode()).unwrap());
        let mut direct = Hists::default();
        direct.add(&a);
        direct.add(&b);
        assert_eq!(merged.handshake, direct.handshake);
        assert_eq!(merged.handshake.len(), 2000);
        assert_eq!(merged.rtt.len(), 1);
        assert_eq!(merged.connect.len(), 0);
    }

    #[test]
    fn counters_add() {
        let mut a = Counters::default();
        a.error("refused");
        a.schedule_lag_max_us = 5;
        let mut b = Counters::default();
        b.error("refused");
        b.error("status_503");
        b.schedule_lag_max_us = 3;
        b.storm_recovery_us = Some(7);
        a.add(&b);
        assert_eq!(a.handshake_errors_total(), 3);
        assert_eq!(a.handshake_errors["refused"], 2);
        assert_eq!(a.schedule_lag_max_us, 5);
        assert_eq!(a.storm_recovery_us, Some(7));
    }
}
