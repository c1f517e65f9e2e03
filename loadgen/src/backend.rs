//! The backend publisher of the tether workloads: what a service would publish to devices
//! (docs/protocol.md section 8). The coordinator's `--preload` stores durable messages in every
//! device's JetStream mailbox before the devices connect; the workers' `--burst` (in
//! [`crate::worker`]) publishes once they are connected. Both put the message's index for its
//! device in the body, so that a device can tell a gap or a duplicate.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

use crate::plan::Plan;

/// A backend's push body (`{"from":...,"data":...}`) carrying the message's index `s` for its
/// device and its intended send time `t` (ns from the run's start; none for a preload, stored
/// before the start), padded to about `size` bytes.
pub fn backend_body(size: usize, index: u64, sent_ns: Option<u64>) -> Vec<u8> {
    let head = match sent_ns {
        Some(t) => format!(r#"{{"from":"svc:loadgen","data":{{"s":{index},"t":{t},"p":""#),
        None => format!(r#"{{"from":"svc:loadgen","data":{{"s":{index},"p":""#),
    };
    let pad = "x".repeat(size.saturating_sub(head.len() + 3));
    format!("{head}{pad}\"}}}}").into_bytes()
}

/// What the preload did.
#[derive(Clone, Debug, Serialize)]
pub struct Preload {
    /// The mailbox stream (the one that captures `tether.mbox.<device>`).
    pub stream: String,
    /// Its last sequence before the preload: the devices present it as `?last_seq=`.
    pub last_seq_before: u64,
    /// Publishes JetStream acknowledged (stored).
    pub stored: u64,
    pub seconds: f64,
    pub stored_per_s: f64,
}

/// Stores `preload_per_device` messages for every device of the plan (message by message
/// across devices, at most `publish_in_flight` unacknowledged), each publish acknowledged by
/// JetStream. Any failed publish fails the preload: the devices' counts would be wrong.
pub fn preload(plan: &Plan) -> Result<Preload, String> {
    let url = plan
        .nats_url
        .as_deref()
        .ok_or("--preload publishes through NATS: give --nats URL")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("preload runtime: {e}"))?;
    rt.block_on(async {
        let nats = async_nats::connect(url)
            .await
            .map_err(|e| format!("preload: connecting to NATS at {url}: {e}"))?;
        let js = async_nats::jetstream::new(nats);
        let probe = format!("tether.mbox.{}0", plan.device_prefix);
        let stream = js.stream_by_subject(probe.as_str()).await.map_err(|e| {
            format!(
                "preload: no JetStream stream captures {probe} ({e}): start a tether node with \
                 --durable first (it creates the mailbox stream)"
            )
        })?;
        let mut handle = js
            .get_stream(&stream)
            .await
            .map_err(|e| format!("preload: stream {stream}: {e}"))?;
        let last_seq_before = handle
            .info()
            .await
            .map_err(|e| format!("preload: stream {stream} info: {e}"))?
            .state
            .last_sequence;
        let started = Instant::now();
        let mut acks = VecDeque::new();
        let mut stored = 0u64;
        for k in 0..plan.preload_per_device {
            for device in 0..plan.clients {
                let subject = format!("tether.mbox.{}{device}", plan.device_prefix);
                let body = backend_body(plan.msg_bytes, k, None);
                let ack = js
                    .publish(subject, body.into())
                    .await
                    .map_err(|e| format!("preload: publish: {e}"))?;
                acks.push_back(ack);
                while acks.len() >= plan.publish_in_flight {
                    let ack = acks.pop_front().expect("not empty");
                    ack.await.map_err(|e| format!("preload: not stored: {e}"))?;
                    stored += 1;
                }
            }
        }
        for ack in acks {
            ack.await.map_err(|e| format!("preload: not stored: {e}"))?;
            stored += 1;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(Preload {
            stream,
            last_seq_before,
            stored,
            seconds: (seconds * 1000.0).round() / 1000.0,
            stored_per_s: (stored as f64 / seconds.max(1e-9)).round(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_index_and_are_padded() {
        let b = backend_body(100, 7, Some(42));
        assert_eq!(b.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["from"], "svc:loadgen");
        assert_eq!(v["data"]["s"], 7);
        assert_eq!(v["data"]["t"], 42);
        let v: serde_json::Value = serde_json::from_slice(&backend_body(10, 3, None)).unwrap();
        assert_eq!(v["data"]["s"], 3);
        assert!(v["data"].get("t").is_none());
    }
}
