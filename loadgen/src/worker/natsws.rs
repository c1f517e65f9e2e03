//! A device as a NATS client over WebSocket (`--protocol nats`), for nats-server's own
//! `websocket` listener: the peer users would pick to expose NATS to devices directly. The
//! WebSocket layer is the worker's (`tether::ws::Context`, client role, binary frames); the
//! NATS operations are [`tether::nats::proto`]; this module is the device's side of the
//! conversation.
//!
//! On the server's first `INFO` the device sends `CONNECT` (with `--device-token` as
//! `auth_token`), `SUB dev.<device id> 1` and `PING`. A server handles one connection's
//! operations in order, so the `PONG` that answers means the subscription is in place: that is
//! the device's `hello` (it is routable; the d2d sends may start). A d2d message is
//! `PUB dev.<partner id>` whose payload is the probe header (index and intended send time, as
//! the echo workload's) padded to `--msg-size`; a `MSG` on the device's subscription is checked
//! and timed like any probe.
//!
//! nats-server's frames are a byte stream (an operation may span frames, a frame may hold
//! several): the bytes of an incomplete operation wait in [`Session::pending`], which is
//! bounded by the parser's limits (a control line of at most `CONTROL_LINE_BYTES_MAX`, a payload
//! of at most the worker's message limit) and empty between operations.

use tether::ws::{encode_frame, OpCode, Role};

use super::{on_probe, TetherSession, Worker};
use crate::plan::MSG_HEADER_BYTES;
use tether::nats::proto::{self as nats_proto, ServerOp};

/// The sid of the device's one subscription.
const SID: u64 = 1;

/// NATS state of one device connection.
#[derive(Debug, Default)]
pub(super) struct Session {
    /// Bytes of an operation that is not complete yet; empty between operations.
    pending: Vec<u8>,
    /// The server's first `INFO` came and the `CONNECT` went.
    connected: bool,
    /// The stream broke (an error was returned): later bytes are ignored.
    failed: bool,
}

/// The `INFO` fields the device reads.
#[derive(serde::Deserialize)]
struct Info {
    #[serde(default)]
    max_payload: Option<usize>,
}

/// The subject device `global` subscribes to.
fn subject(w: &Worker, global: u64) -> String {
    format!("dev.{}{global}", w.plan.device_prefix)
}

/// Takes one WebSocket message of device `global`'s NATS stream; replies go to `out`. An error
/// is the cause the connection ends with.
pub(super) fn on_data(
    w: &Worker,
    n: &mut Session,
    data: &[u8],
    s: &mut TetherSession<'_>,
    global: u64,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if n.failed {
        return Ok(());
    }
    let mut pending = std::mem::take(&mut n.pending);
    let result = if pending.is_empty() {
        handle(w, &mut n.connected, data, s, global, out).map(|used| {
            pending.extend_from_slice(&data[used..]);
        })
    } else {
        pending.extend_from_slice(data);
        handle(w, &mut n.connected, &pending, s, global, out).map(|used| {
            pending.drain(..used);
            if pending.is_empty() {
                // Give the buffer back: most devices never need one.
                pending = Vec::new();
            }
        })
    };
    n.pending = pending;
    if result.is_err() {
        n.failed = true;
        n.pending = Vec::new();
    }
    result
}

/// Handles the complete operations at the start of `buf`; returns the bytes they took.
fn handle(
    w: &Worker,
    connected: &mut bool,
    buf: &[u8],
    s: &mut TetherSession<'_>,
    global: u64,
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    let payload_max = w.decoder_limits.1;
    let mut used = 0;
    let mut reply = Vec::new();
    while let Some((op, n)) = nats_proto::parse(&buf[used..], payload_max).map_err(|e| {
        *w.counters
            .borrow_mut()
            .tether_errors
            .entry(format!("nats_protocol: {e}"))
            .or_default() += 1;
        e.cause().to_string()
    })? {
        debug_assert!(n > 0 && used + n <= buf.len());
        used += n;
        match op {
            ServerOp::Info(json) if !*connected => {
                *connected = true;
                let info: Info = serde_json::from_slice(json).map_err(|_| "nats_bad_info")?;
                let size = w.plan.msg_bytes.max(MSG_HEADER_BYTES);
                if info.max_payload.is_some_and(|max| max < size) {
                    return Err("nats_max_payload_below_msg_size".into());
                }
                nats_proto::encode_connect(
                    &mut reply,
                    &nats_proto::Connect {
                        auth_token: w.plan.device_token.as_deref(),
                        ..nats_proto::Connect::default()
                    },
                );
                nats_proto::encode_sub(&mut reply, &subject(w, global), SID);
                nats_proto::encode_ping(&mut reply);
            }
            // Later INFOs tell of cluster changes: nothing for a device to do.
            ServerOp::Info(_) | ServerOp::Ok => {}
            ServerOp::Ping => nats_proto::encode_pong(&mut reply),
            ServerOp::Pong => {
                *s.hello = true;
                s.ctl.hello.set(true);
            }
            ServerOp::Msg { sid, payload, .. } => {
                if sid != SID || payload.len() < MSG_HEADER_BYTES {
                    w.counters.borrow_mut().messages_foreign += 1;
                    continue;
                }
                let seq = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
                let sent_ns = u64::from_le_bytes(payload[8..16].try_into().expect("8 bytes"));
                let written = super::written_ns(payload);
                on_probe(w, seq, Some(sent_ns), written, s.received, s.expect_seq);
            }
            ServerOp::Err(message) => {
                let message = String::from_utf8_lossy(message);
                *w.counters
                    .borrow_mut()
                    .tether_errors
                    .entry(format!("nats_err: {message}"))
                    .or_default() += 1;
            }
        }
    }
    if !reply.is_empty() {
        encode_frame(out, Role::Client, OpCode::Binary, true, &reply);
    }
    Ok(used)
}

/// Queues message `seq` (intended at `sent_ns`, written at `written_ns`) to device `to`: one
/// `PUB` in one frame.
pub(super) fn publish(
    w: &Worker,
    out: &mut Vec<u8>,
    to: u64,
    seq: u64,
    sent_ns: u64,
    written_ns: u64,
) {
    let mut payload = vec![0u8; w.plan.msg_bytes.max(MSG_HEADER_BYTES)];
    payload[0..8].copy_from_slice(&seq.to_le_bytes());
    payload[8..16].copy_from_slice(&sent_ns.to_le_bytes());
    super::stamp_written(&mut payload, written_ns);
    let mut op = Vec::with_capacity(payload.len() + 64);
    nats_proto::encode_pub(&mut op, &subject(w, to), None, &payload);
    encode_frame(out, Role::Client, OpCode::Binary, true, &op);
}
