//! The device wire protocol v1 (`docs/protocol.md`), sans-IO.
//!
//! This module owns the JSON envelope in both directions and the bus payloads: it parses what a
//! device sends into a typed [`ClientFrame`] (borrowing from the input, the application `data`
//! kept as raw JSON so it is forwarded byte for byte), validates every name that ends up in a bus
//! subject, and encodes what the server sends. It imports no runtime and does no I/O.

pub mod subject;

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt::Write as _;

/// The subprotocol name negotiated in `Sec-WebSocket-Protocol`.
pub const PROTOCOL_V1: &str = "tether.v1";
/// Prefix of a `Sec-WebSocket-Protocol` entry that carries a token (`tether.token.<jwt>`).
pub const TOKEN_PROTOCOL_PREFIX: &str = "tether.token.";
/// Longest client-chosen `id`, in bytes.
pub const CLIENT_ID_BYTES_MAX: usize = 64;
/// Longest device id, in bytes.
pub const DEVICE_ID_BYTES_MAX: usize = 128;
/// Longest topic, in bytes.
pub const TOPIC_BYTES_MAX: usize = 200;
/// Most dot-separated tokens in a topic.
pub const TOPIC_TOKENS_MAX: usize = 8;
/// Longest service name, in bytes.
pub const SERVICE_BYTES_MAX: usize = 64;
/// Longest token in a `refresh`, in bytes (the handshake head is 8 KiB by default; a token
/// that could not be presented at the handshake cannot be presented here either).
pub const TOKEN_BYTES_MAX: usize = 8192;
/// Longest `rid`, in bytes (server-chosen, so anything longer is certainly unknown).
pub const RID_BYTES_MAX: usize = 32;
/// Longest `ack_id`, in bytes (server-chosen like `rid`).
pub const ACK_ID_BYTES_MAX: usize = 32;

/// Stable error codes (section 7 of `docs/protocol.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// `bad_json`: the frame is not a JSON object.
    BadJson,
    /// `bad_op`: `op` missing or unknown.
    BadOp,
    /// `bad_field`: a field is missing, of the wrong type or invalid; the message names it.
    BadField,
    /// `binary_unsupported`: a binary frame; payloads travel as `b64` in text frames.
    BinaryUnsupported,
    /// `forbidden`: the token's claims do not allow this topic or service.
    Forbidden,
    /// `unknown_request`: `reply` to a `rid` that is unknown, answered or expired.
    UnknownRequest,
    /// `unknown_ack`: `ack` of an `ack_id` that is unknown, already acknowledged or expired.
    UnknownAck,
    /// `too_many_topics`: the per-connection topic limit is reached.
    TooManyTopics,
    /// `too_many_pending`: too many `send`s with `ack` (or `up`s with `id`) wait for an answer.
    TooManyPending,
    /// `bus_unavailable`: the bus queue is full or NATS is disconnected; nothing was sent.
    BusUnavailable,
    /// `no_backend`: `up` on a node without NATS.
    NoBackend,
    /// `bad_token`: a `refresh` token that does not verify or names another device.
    BadToken,
    /// `durable_unavailable`: a durable operation on a node without durable delivery.
    DurableUnavailable,
    /// `not_stored`: JetStream did not store a durable `up` or apply an `ack` with `seq`.
    NotStored,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadOp => "bad_op",
            ErrorCode::BadField => "bad_field",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::UnknownAck => "unknown_ack",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::TooManyPending => "too_many_pending",
            ErrorCode::BusUnavailable => "bus_unavailable",
            ErrorCode::NoBackend => "no_backend",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::DurableUnavailable => "durable_unavailable",
            ErrorCode::NotStored => "not_stored",
        }
    }
}

/// A rejected device frame: the `id` (when it could be read), the code and a message for people.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtoError {
    /// The frame's `id`, echoed in the `error` envelope; `None` when it could not be read.
    pub id: Option<String>,
    /// The stable code a device program acts on.
    pub code: ErrorCode,
    /// What was wrong, for people (names the field and the limit).
    pub message: String,
}

impl ProtoError {
    fn new(id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            id: id.map(str::to_owned),
            code,
            message: message.into(),
        }
    }

    /// The `error` envelope for this rejection.
    pub fn encode(&self) -> String {
        encode_error(self.id.as_deref(), self.code, &self.message)
    }
}

/// Application payload: JSON `data` or base64 `b64`, both kept as the raw JSON the sender wrote.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Any JSON value, raw.
    Data(&'a RawValue),
    /// A JSON string holding base64 (not decoded by the server), raw including its quotes.
    B64(&'a RawValue),
}

impl Payload<'_> {
    /// Writes `"data":RAW` or `"b64":RAW`.
    fn write_field(&self, out: &mut String) {
        match self {
            Payload::Data(raw) => {
                out.push_str("\"data\":");
                out.push_str(raw.get());
            }
            Payload::B64(raw) => {
                out.push_str("\"b64\":");
                out.push_str(raw.get());
            }
        }
    }
}

/// One operation a device can ask for.
#[derive(Debug)]
pub enum ClientOp<'a> {
    /// `send`: a message to every live session of another device.
    Send {
        /// The receiving device's id (checked: a valid device id).
        to: Cow<'a, str>,
        /// What to deliver, verbatim.
        payload: Payload<'a>,
        /// Whether the sender wants the outcome (`delivered`) answered in its `ack`.
        ack: bool,
    },
    /// `sub`: receive publishes on a topic (allowed by the token's `topics_sub`).
    Sub {
        /// The topic (checked by [`check_topic`]).
        topic: Cow<'a, str>,
    },
    /// `unsub`: stop receiving a topic.
    Unsub {
        /// The topic (checked by [`check_topic`]).
        topic: Cow<'a, str>,
    },
    /// `pub`: publish to a topic (allowed by the token's `topics_pub`).
    Pub {
        /// The topic (checked by [`check_topic`]).
        topic: Cow<'a, str>,
        /// What subscribers receive, verbatim.
        payload: Payload<'a>,
    },
    /// `up`: a message to a backend service over NATS.
    Up {
        /// The service name (checked by [`valid_service`]).
        service: Cow<'a, str>,
        /// What the service receives, verbatim.
        payload: Payload<'a>,
    },
    /// `reply`: the answer to a backend's `request`.
    Reply {
        /// The server-chosen request id the device was given (at most [`RID_BYTES_MAX`]).
        rid: Cow<'a, str>,
        /// The answer, verbatim.
        payload: Payload<'a>,
    },
    /// The device acknowledges a message it received.
    Ack(AckRef<'a>),
    /// `ping`: answered with `pong` (an application-level liveness check).
    Ping,
    /// A fresh token for this session (same `sub`), before the current one expires.
    Refresh {
        /// The compact JWT (at most [`TOKEN_BYTES_MAX`]).
        token: Cow<'a, str>,
    },
}

/// What an `ack` from a device acknowledges.
#[derive(Debug, PartialEq, Eq)]
pub enum AckRef<'a> {
    /// An ephemeral message that carried `"ack_id"` (a `send` with `ack`, or a backend push
    /// made as a request): `{"op":"ack","ack_id":"..."}`.
    Ephemeral(Cow<'a, str>),
    /// Durable messages up to this stream sequence (cumulative): `{"op":"ack","seq":N}`.
    Durable(u64),
}

/// A parsed device frame: the optional client `id` and the operation.
#[derive(Debug)]
pub struct ClientFrame<'a> {
    /// The device's correlation id (at most [`CLIENT_ID_BYTES_MAX`]), echoed in the answer.
    pub id: Option<Cow<'a, str>>,
    /// The operation.
    pub op: ClientOp<'a>,
}

/// Deserialises a present field as `Some(raw)` (so that `"data":null` is data, not absence).
fn raw_some<'de, D>(de: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(de).map(Some)
}

/// The envelope with every field raw, so that a field of the wrong type is reported as that
/// field's `bad_field` (with the `id` echoed) rather than as unreadable JSON.
#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    topic: Option<&'a RawValue>,
    #[serde(borrow, default)]
    service: Option<&'a RawValue>,
    #[serde(borrow, default)]
    rid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ack: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ack_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_some")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_some")]
    b64: Option<&'a RawValue>,
}

/// A field of the wrong JSON type.
struct WrongType {
    field: &'static str,
    expected: &'static str,
}

impl WrongType {
    fn error(&self, id: Option<&str>) -> ProtoError {
        ProtoError::new(
            id,
            ErrorCode::BadField,
            format!("{} must be {}", self.field, self.expected),
        )
    }
}

/// A string field: absent (or `null`) is `None`; any other type is [`WrongType`]. Borrows
/// from the input unless the string has escapes.
fn str_field<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, WrongType> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok(None);
    };
    let wrong = WrongType {
        field,
        expected: "a string",
    };
    if !raw.get().starts_with('"') {
        return Err(wrong);
    }
    if let Ok(s) = serde_json::from_str::<&'a str>(raw.get()) {
        return Ok(Some(Cow::Borrowed(s)));
    }
    serde_json::from_str::<String>(raw.get())
        .map(|s| Some(Cow::Owned(s)))
        .map_err(|_| wrong)
}

/// A boolean field: absent (or `null`) is `None`.
fn bool_field(field: &'static str, raw: Option<&RawValue>) -> Result<Option<bool>, WrongType> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(WrongType {
            field,
            expected: "true or false",
        }),
    }
}

/// A non-negative integer field: absent (or `null`) is `None`.
fn u64_field(field: &'static str, raw: Option<&RawValue>) -> Result<Option<u64>, WrongType> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| WrongType {
            field,
            expected: "a non-negative integer",
        }),
    }
}

/// Parses one text frame from a device. Never panics; every rejection names its field.
#[expect(
    clippy::too_many_lines,
    reason = "one match arm per client operation, in the order of docs/protocol.md"
)]
pub fn parse_client<'a>(text: &'a str) -> Result<ClientFrame<'a>, ProtoError> {
    // serde would also read a JSON array into the envelope, field by field.
    if !text.trim_start().starts_with('{') {
        return Err(ProtoError::new(
            None,
            ErrorCode::BadJson,
            "not a v1 JSON object",
        ));
    }
    let env: RawEnvelope<'a> = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(err) => {
            return Err(ProtoError::new(
                None,
                ErrorCode::BadJson,
                format!("not a v1 JSON object: {err}"),
            ))
        }
    };
    let id = str_field("id", env.id).map_err(|w| w.error(None))?;
    if let Some(id) = &id {
        if id.len() > CLIENT_ID_BYTES_MAX {
            return Err(ProtoError::new(
                None,
                ErrorCode::BadField,
                format!("id is {} bytes, at most {CLIENT_ID_BYTES_MAX}", id.len()),
            ));
        }
    }
    let idr = id.as_deref();
    let field = |name: &'static str,
                 raw: Option<&'a RawValue>|
     -> Result<Option<Cow<'a, str>>, ProtoError> {
        str_field(name, raw).map_err(|w| w.error(idr))
    };
    let payload = || -> Result<Payload<'_>, ProtoError> {
        match (env.data, env.b64) {
            (Some(data), None) => Ok(Payload::Data(data)),
            (None, Some(b64)) if b64.get().starts_with('"') => Ok(Payload::B64(b64)),
            (None, Some(_)) => Err(ProtoError::new(
                idr,
                ErrorCode::BadField,
                "b64 must be a string",
            )),
            (Some(_), Some(_)) => Err(ProtoError::new(
                idr,
                ErrorCode::BadField,
                "give data or b64, not both",
            )),
            (None, None) => Err(ProtoError::new(idr, ErrorCode::BadField, "data missing")),
        }
    };
    let op_name = field("op", env.op)?;
    let op = match op_name.as_deref() {
        Some("send") => {
            let to = required("to", field("to", env.to)?, idr)?;
            if !valid_device_id(&to) {
                return Err(ProtoError::new(
                    idr,
                    ErrorCode::BadField,
                    "to is not a valid device id",
                ));
            }
            let ack = bool_field("ack", env.ack)
                .map_err(|w| w.error(idr))?
                .unwrap_or(false);
            if ack && idr.is_none() {
                return Err(ProtoError::new(idr, ErrorCode::BadField, "ack needs an id"));
            }
            ClientOp::Send {
                to,
                payload: payload()?,
                ack,
            }
        }
        Some(kind @ ("sub" | "unsub" | "pub")) => {
            let topic = required("topic", field("topic", env.topic)?, idr)?;
            if let Err(why) = check_topic(&topic) {
                return Err(ProtoError::new(idr, ErrorCode::BadField, why.to_string()));
            }
            match kind {
                "sub" => ClientOp::Sub { topic },
                "unsub" => ClientOp::Unsub { topic },
                _ => ClientOp::Pub {
                    topic,
                    payload: payload()?,
                },
            }
        }
        Some("up") => {
            let service = required("service", field("service", env.service)?, idr)?;
            if !valid_service(&service) {
                return Err(ProtoError::new(
                    idr,
                    ErrorCode::BadField,
                    "service is not a valid name",
                ));
            }
            ClientOp::Up {
                service,
                payload: payload()?,
            }
        }
        Some("reply") => {
            let rid = required("rid", field("rid", env.rid)?, idr)?;
            ClientOp::Reply {
                rid,
                payload: payload()?,
            }
        }
        Some("ack") => match (
            field("ack_id", env.ack_id)?,
            u64_field("seq", env.seq).map_err(|w| w.error(idr))?,
        ) {
            (Some(ack_id), None) => ClientOp::Ack(AckRef::Ephemeral(ack_id)),
            (None, Some(seq)) => ClientOp::Ack(AckRef::Durable(seq)),
            (Some(_), Some(_)) => {
                return Err(ProtoError::new(
                    idr,
                    ErrorCode::BadField,
                    "give ack_id or seq, not both",
                ))
            }
            (None, None) => {
                return Err(ProtoError::new(
                    idr,
                    ErrorCode::BadField,
                    "ack needs ack_id (ephemeral) or seq (durable)",
                ))
            }
        },
        Some("ping") => ClientOp::Ping,
        Some("refresh") => {
            let token = required("token", field("token", env.token)?, idr)?;
            if token.len() > TOKEN_BYTES_MAX {
                return Err(ProtoError::new(
                    idr,
                    ErrorCode::BadField,
                    format!("token is {} bytes, at most {TOKEN_BYTES_MAX}", token.len()),
                ));
            }
            ClientOp::Refresh { token }
        }
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(ProtoError::new(
                idr,
                ErrorCode::BadOp,
                format!("unknown op {shown:?}"),
            ));
        }
        None => return Err(ProtoError::new(idr, ErrorCode::BadOp, "op missing")),
    };
    Ok(ClientFrame { id, op })
}

fn required<'a>(
    name: &str,
    value: Option<Cow<'a, str>>,
    id: Option<&str>,
) -> Result<Cow<'a, str>, ProtoError> {
    value.ok_or_else(|| ProtoError::new(id, ErrorCode::BadField, format!("{name} missing")))
}

/// One subject token: non-empty, only `A-Z a-z 0-9 _ -`, at most `max` bytes.
fn valid_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A device id (the JWT `sub`): 1–128 bytes of `A-Z a-z 0-9 _ -`.
pub fn valid_device_id(s: &str) -> bool {
    valid_token(s, DEVICE_ID_BYTES_MAX)
}

/// A backend service name: 1–64 bytes of `A-Z a-z 0-9 _ -`.
pub fn valid_service(s: &str) -> bool {
    valid_token(s, SERVICE_BYTES_MAX)
}

/// Why a topic is refused (the text goes to the device in a `bad_field` error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Longer than [`TOPIC_BYTES_MAX`].
    #[error("topic is {bytes} bytes, at most {max}")]
    TooLong {
        /// The topic's length in bytes.
        bytes: usize,
        /// [`TOPIC_BYTES_MAX`].
        max: usize,
    },
    /// An empty token, or a byte outside `A-Z a-z 0-9 _ -` (wildcards included).
    #[error("topic tokens are non-empty A-Z a-z 0-9 _ - separated by dots")]
    BadToken,
    /// More than [`TOPIC_TOKENS_MAX`] dot-separated tokens.
    #[error("topic has {tokens} tokens, at most {max}")]
    TooManyTokens {
        /// The topic's token count.
        tokens: usize,
        /// [`TOPIC_TOKENS_MAX`].
        max: usize,
    },
}

/// Checks a topic: 1–8 dot-separated tokens, at most 200 bytes, no wildcards.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    if topic.len() > TOPIC_BYTES_MAX {
        return Err(TopicError::TooLong {
            bytes: topic.len(),
            max: TOPIC_BYTES_MAX,
        });
    }
    let mut tokens = 0usize;
    for token in topic.split('.') {
        tokens += 1;
        if !valid_token(token, TOPIC_BYTES_MAX) {
            return Err(TopicError::BadToken);
        }
    }
    if tokens > TOPIC_TOKENS_MAX {
        return Err(TopicError::TooManyTokens {
            tokens,
            max: TOPIC_TOKENS_MAX,
        });
    }
    Ok(())
}

/// NATS-style pattern match of a claim pattern against a topic: `*` is one token, a final `>`
/// one or more tokens.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let mut pat = pattern.split('.');
    let mut top = topic.split('.');
    loop {
        match (pat.next(), top.next()) {
            (Some(">"), Some(_)) => return pat.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(p), Some(t)) if p == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// `{"op":"hello",...}`: the device is routable.
pub fn encode_hello(device: &str, node: &str, shard: usize) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("{\"op\":\"hello\",\"device\":");
    push_json_str(&mut out, device);
    out.push_str(",\"node\":");
    push_json_str(&mut out, node);
    let _ = write!(out, ",\"shard\":{shard},\"protocol\":\"{PROTOCOL_V1}\"}}");
    out
}

/// Why a `send` with `ack` was not delivered (the `reason` of `"delivered":false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotDelivered {
    /// No session of the target existed when the message was published (no interest anywhere).
    Offline,
    /// No receiving session acknowledged it before the deadline.
    Timeout,
    /// A session received it and closed before acknowledging (and no other acknowledged).
    Closed,
    /// The receiving sessions already hold their maximum of unacknowledged messages.
    Busy,
}

impl NotDelivered {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            NotDelivered::Offline => "offline",
            NotDelivered::Timeout => "timeout",
            NotDelivered::Closed => "closed",
            NotDelivered::Busy => "busy",
        }
    }

    fn parse(s: &str) -> Option<NotDelivered> {
        [
            NotDelivered::Offline,
            NotDelivered::Timeout,
            NotDelivered::Closed,
            NotDelivered::Busy,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// `{"op":"ack","id":ID}`; for a `send` with `ack`, with its outcome: `"delivered":true`, or
/// `"delivered":false,"reason":...`.
pub fn encode_ack(id: &str, outcome: Option<Result<(), NotDelivered>>) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("{\"op\":\"ack\",\"id\":");
    push_json_str(&mut out, id);
    match outcome {
        None => {}
        Some(Ok(())) => out.push_str(",\"delivered\":true"),
        Some(Err(reason)) => {
            let _ = write!(
                out,
                ",\"delivered\":false,\"reason\":\"{}\"",
                reason.as_str()
            );
        }
    }
    out.push('}');
    out
}

/// `{"op":"refreshed","id":ID,"exp":EXP}`: the session now lives until `exp` (seconds since the
/// epoch) of the new token.
pub fn encode_refreshed(id: Option<&str>, exp: u64) -> String {
    let mut out = String::from("{\"op\":\"refreshed\"");
    if let Some(id) = id {
        out.push_str(",\"id\":");
        push_json_str(&mut out, id);
    }
    let _ = write!(out, ",\"exp\":{exp}}}");
    out
}

/// `{"op":"error",...}`.
pub fn encode_error(id: Option<&str>, code: ErrorCode, message: &str) -> String {
    let mut out = String::with_capacity(64 + message.len());
    out.push_str("{\"op\":\"error\",");
    if let Some(id) = id {
        out.push_str("\"id\":");
        push_json_str(&mut out, id);
        out.push(',');
    }
    out.push_str("\"code\":\"");
    out.push_str(code.as_str());
    out.push_str("\",\"message\":");
    push_json_str(&mut out, message);
    out.push('}');
    out
}

/// `{"op":"pong","id":ID}`.
pub fn encode_pong(id: Option<&str>) -> String {
    let mut out = String::from("{\"op\":\"pong\"");
    if let Some(id) = id {
        out.push_str(",\"id\":");
        push_json_str(&mut out, id);
    }
    out.push('}');
    out
}

/// The payload a shard publishes on `tether.dev.*`, `tether.req.*` or `tether.topic.*` for a
/// device sender, and on reply subjects for a device `reply`: `{"from":DEVICE,"data":RAW}`.
pub fn encode_bus_from(from: &str, payload: &Payload<'_>) -> String {
    encode_bus_from_until(from, payload, None)
}

/// [`encode_bus_from`] with a delivery deadline (a `send` with `ack`):
/// `{"from":DEVICE,"deadline_ms":UNIX_MS,"data":RAW}`. A node that receives it at or after
/// `deadline_ms` (by its own clock) drops it.
pub fn encode_bus_from_until(
    from: &str,
    payload: &Payload<'_>,
    deadline_unix_ms: Option<u64>,
) -> String {
    let mut out = String::with_capacity(56 + raw_len(payload));
    out.push_str("{\"from\":");
    push_json_str(&mut out, from);
    if let Some(deadline) = deadline_unix_ms {
        let _ = write!(out, ",\"deadline_ms\":{deadline}");
    }
    out.push(',');
    payload.write_field(&mut out);
    out.push('}');
    out
}

/// The payload of `tether.up.<service>`: `{"from":DEVICE,"node":NODE,"shard":N,"data":RAW}`.
pub fn encode_bus_up(from: &str, node: &str, shard: usize, payload: &Payload<'_>) -> String {
    let mut out = String::with_capacity(64 + raw_len(payload));
    out.push_str("{\"from\":");
    push_json_str(&mut out, from);
    out.push_str(",\"node\":");
    push_json_str(&mut out, node);
    let _ = write!(out, ",\"shard\":{shard},");
    payload.write_field(&mut out);
    out.push('}');
    out
}

/// The reply a shard sends to `tether.presence.<device>`.
pub fn encode_presence(device: &str, node: &str, shard: usize, sessions: usize) -> String {
    let mut out = String::with_capacity(80);
    out.push_str("{\"device\":");
    push_json_str(&mut out, device);
    out.push_str(",\"node\":");
    push_json_str(&mut out, node);
    let _ = write!(out, ",\"shard\":{shard},\"sessions\":{sessions}}}");
    out
}

/// The receipt a shard sends to the reply subject of a message that asked for one:
/// `{"delivered":1}` once a session acknowledged it, `{"delivered":0,"reason":R}` when it will
/// not be (the sessions it reached closed first, or could hold no more unacknowledged messages).
pub fn encode_receipt(outcome: Result<(), NotDelivered>) -> String {
    match outcome {
        Ok(()) => "{\"delivered\":1}".to_owned(),
        Err(reason) => format!("{{\"delivered\":0,\"reason\":\"{}\"}}", reason.as_str()),
    }
}

/// Reads a receipt ([`encode_receipt`]); `None` when it is not one.
pub fn parse_receipt(payload: &[u8]) -> Option<Result<(), NotDelivered>> {
    #[derive(Deserialize)]
    struct Receipt<'a> {
        delivered: u64,
        #[serde(borrow, default)]
        reason: Option<Cow<'a, str>>,
    }
    let r: Receipt<'_> = serde_json::from_slice(payload).ok()?;
    if r.delivered > 0 {
        return Some(Ok(()));
    }
    Some(Err(r
        .reason
        .as_deref()
        .and_then(NotDelivered::parse)
        .unwrap_or(NotDelivered::Timeout)))
}

/// What a connection event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A session got its `hello` (it is routable).
    Connect,
    /// A session that had its `hello` ended; carries the WebSocket close code.
    Disconnect(u16),
    /// The node re-announces a session it still holds after it reconnected to NATS (backends
    /// that declared the node dead meanwhile learn the session is there).
    Resync,
}

/// Everything a connection event carries.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// Connect, disconnect (with its close code) or resync.
    pub kind: EventKind,
    /// The device id of the session (its token's `sub`).
    pub device: &'a str,
    /// The node's id (`node_id`).
    pub node: &'a str,
    /// The shard (0-based) that holds the session.
    pub shard: usize,
    /// The node-unique id of the session (pairs a connect with its disconnect).
    pub session: u64,
    /// When the node started (unix ms): tells a restarted node from its previous run.
    pub node_started_at_ms: u64,
    /// When it happened (unix ms, the node's clock).
    pub at_ms: u64,
}

/// The name a close code is reported under in a disconnect event.
pub fn close_reason(code: u16) -> &'static str {
    match code {
        1000 => "normal",
        1001 => "going_away",
        1002 => "protocol_error",
        1006 => "abnormal",
        1007 | 1009 => "bad_data",
        1008 => "policy",
        1011 => "server_error",
        1013 => "try_again_later",
        _ => "other",
    }
}

/// The payload on `tether.event.<device>`:
/// `{"event":"connect"|"disconnect","device","node","shard","session","reason","code"?,"at","node_started_at"}`.
pub fn encode_event(e: &Event<'_>) -> String {
    let mut out = String::with_capacity(192);
    let (event, reason, code) = match e.kind {
        EventKind::Connect => ("connect", "hello", None),
        EventKind::Resync => ("connect", "resync", None),
        EventKind::Disconnect(code) => ("disconnect", close_reason(code), Some(code)),
    };
    let _ = write!(out, "{{\"event\":\"{event}\",\"device\":");
    push_json_str(&mut out, e.device);
    out.push_str(",\"node\":");
    push_json_str(&mut out, e.node);
    let _ = write!(
        out,
        ",\"shard\":{},\"session\":\"{}\",\"reason\":\"{reason}\"",
        e.shard, e.session
    );
    if let Some(code) = code {
        let _ = write!(out, ",\"code\":{code}");
    }
    let _ = write!(
        out,
        ",\"at\":{},\"node_started_at\":{}}}",
        e.at_ms, e.node_started_at_ms
    );
    out
}

/// Everything a node heartbeat carries.
#[derive(Clone, Copy, Debug)]
pub struct Heartbeat<'a> {
    /// The node's id (`node_id`).
    pub node: &'a str,
    /// When the node started (unix ms): tells a restarted node from its previous run.
    pub node_started_at_ms: u64,
    /// 1, 2, 3, ... from the node's start: a gap means heartbeats were lost.
    pub seq: u64,
    /// When the heartbeat was sent (unix ms, the node's clock).
    pub at_ms: u64,
    /// Device sessions open on the node.
    pub sessions: u64,
    /// The node's shard count.
    pub shards: usize,
    /// Time between two heartbeats, in milliseconds.
    pub interval_ms: u64,
    /// The silence after which a backend declares the node dead.
    pub dead_after_ms: u64,
}

/// The payload on `tether.node.<node>`.
pub fn encode_heartbeat(h: &Heartbeat<'_>) -> String {
    let mut out = String::with_capacity(192);
    out.push_str("{\"node\":");
    push_json_str(&mut out, h.node);
    let _ = write!(
        out,
        ",\"started_at\":{},\"seq\":{},\"at\":{},\"sessions\":{},\"shards\":{},\"interval_ms\":{},\"dead_after_ms\":{}}}",
        h.node_started_at_ms, h.seq, h.at_ms, h.sessions, h.shards, h.interval_ms, h.dead_after_ms
    );
    out
}

/// `{"op":"ack","id":ID,"seq":N}`: an `up` stored by JetStream at stream sequence `N`.
pub fn encode_ack_stored(id: &str, seq: u64) -> String {
    let mut out = String::with_capacity(48);
    out.push_str("{\"op\":\"ack\",\"id\":");
    push_json_str(&mut out, id);
    let _ = write!(out, ",\"seq\":{seq}}}");
    out
}

/// The receipt published on `tether.receipt.<device>` when the device acknowledged the durable
/// message at `seq`: `{"device":D,"seq":N,"node":NODE,"at_ms":UNIX_MS}`.
pub fn encode_durable_receipt(device: &str, seq: u64, node: &str, at_ms: u64) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("{\"device\":");
    push_json_str(&mut out, device);
    let _ = write!(out, ",\"seq\":{seq},\"node\":");
    push_json_str(&mut out, node);
    let _ = write!(out, ",\"at_ms\":{at_ms}}}");
    out
}

/// A reply a shard sends to a backend when it cannot serve its request: `{"error":CODE}`.
pub fn encode_bus_error(code: ErrorCode) -> String {
    format!("{{\"error\":\"{}\"}}", code.as_str())
}

fn raw_len(payload: &Payload<'_>) -> usize {
    match payload {
        Payload::Data(raw) | Payload::B64(raw) => raw.get().len(),
    }
}

#[derive(Deserialize)]
struct RawBusPayload<'a> {
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(borrow, default, deserialize_with = "raw_some")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_some")]
    b64: Option<&'a RawValue>,
}

/// What a device receives for a bus message: which envelope to build.
#[derive(Clone, Copy, Debug)]
pub enum Delivery<'a> {
    /// A direct message (`tether.dev.*` from backends, `tether.peer.*` from devices).
    Direct,
    /// A topic message (`tether.topic.<topic>`).
    Topic(&'a str),
    /// A backend request (`tether.req.*`) registered under this rid.
    Request(&'a str),
    /// A durable message read from the mailbox stream at this stream sequence.
    Durable(u64),
}

/// May a backend have published this payload? Its `from` must be absent (the device sees
/// `backend`) or start with `svc:`: device ids never contain `:`, so anything else would make a
/// backend look like a device. Unreadable payloads are left to [`encode_delivery`] to refuse.
pub fn from_is_backend(bus_payload: &[u8]) -> bool {
    match serde_json::from_slice::<RawBusPayload<'_>>(bus_payload) {
        Ok(raw) => raw.from.as_deref().is_none_or(|f| f.starts_with("svc:")),
        Err(_) => true,
    }
}

/// Why a bus payload cannot be delivered to a device (the hub counts it in
/// `tether_device_bad_bus_payloads_total` and drops it).
#[derive(Debug, thiserror::Error)]
pub enum BusPayloadError {
    /// Not a JSON object of the v1 bus payload's shape.
    #[error("bus payload: {0}")]
    NotV1(#[from] serde_json::Error),
    /// `b64` is present but is not a JSON string.
    #[error("bus payload: b64 must be a string")]
    B64NotString,
}

/// A device envelope built from a bus payload, and the payload's delivery deadline.
#[derive(Debug)]
pub struct Encoded {
    /// The JSON text frame to send to the device.
    pub text: String,
    /// `deadline_ms` of the bus payload (unix ms): not to be delivered at or after it.
    pub deadline_unix_ms: Option<u64>,
}

/// Turns a bus payload into the device envelope (`msg` or `request`); with `ack_id`, the `msg`
/// carries `"ack_id"` for the device to acknowledge. Payloads that are not a JSON object, or
/// whose `b64` is not a string, are rejected (the caller counts and drops them). A backend that
/// wrote no `from` is shown as `backend`; a payload with neither `data` nor `b64` is delivered
/// with `"data":null`.
pub fn encode_delivery(
    bus_payload: &[u8],
    delivery: Delivery<'_>,
    ack_id: Option<&str>,
) -> Result<Encoded, BusPayloadError> {
    let raw: RawBusPayload<'_> = serde_json::from_slice(bus_payload)?;
    let from = raw.from.as_deref().unwrap_or("backend");
    let payload = match (raw.data, raw.b64) {
        (_, Some(b64)) if b64.get().starts_with('"') => Some(Payload::B64(b64)),
        (_, Some(_)) => return Err(BusPayloadError::B64NotString),
        (Some(data), None) => Some(Payload::Data(data)),
        (None, None) => None,
    };
    let mut out = String::with_capacity(48 + bus_payload.len());
    match delivery {
        Delivery::Direct | Delivery::Topic(_) | Delivery::Durable(_) => {
            out.push_str("{\"op\":\"msg\",\"from\":")
        }
        Delivery::Request(_) => out.push_str("{\"op\":\"request\",\"from\":"),
    }
    push_json_str(&mut out, from);
    match delivery {
        Delivery::Direct => {}
        Delivery::Durable(seq) => {
            let _ = write!(out, ",\"seq\":{seq}");
        }
        Delivery::Topic(topic) => {
            out.push_str(",\"topic\":");
            push_json_str(&mut out, topic);
        }
        Delivery::Request(rid) => {
            out.push_str(",\"rid\":");
            push_json_str(&mut out, rid);
        }
    }
    if let Some(ack_id) = ack_id {
        out.push_str(",\"ack_id\":");
        push_json_str(&mut out, ack_id);
    }
    out.push(',');
    match payload {
        Some(p) => p.write_field(&mut out),
        None => out.push_str("\"data\":null"),
    }
    out.push('}');
    Ok(Encoded {
        text: out,
        deadline_unix_ms: raw.deadline_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).expect("valid json")
    }

    #[test]
    fn topic_refusals_name_what_is_wrong() {
        assert_eq!(check_topic("a.b-c_1"), Ok(()));
        let long = "a".repeat(TOPIC_BYTES_MAX + 1);
        assert_eq!(
            check_topic(&long),
            Err(TopicError::TooLong {
                bytes: TOPIC_BYTES_MAX + 1,
                max: TOPIC_BYTES_MAX
            })
        );
        for bad in ["", "a..b", "a.*", "a.>", "a b"] {
            assert_eq!(check_topic(bad), Err(TopicError::BadToken), "{bad:?}");
        }
        assert_eq!(
            check_topic("a.b.c.d.e.f.g.h.i"),
            Err(TopicError::TooManyTokens {
                tokens: 9,
                max: TOPIC_TOKENS_MAX
            })
        );
    }

    #[test]
    fn parses_send_with_raw_data_kept_verbatim() {
        let f = parse_client(
            r#"{"op":"send","to":"tv-1","data":{"k": [1, 2.50]},"id":"m1","ack":true}"#,
        )
        .unwrap();
        assert_eq!(f.id.as_deref(), Some("m1"));
        match f.op {
            ClientOp::Send {
                to,
                payload: Payload::Data(raw),
                ack,
            } => {
                assert_eq!(to, "tv-1");
                assert_eq!(raw.get(), r#"{"k": [1, 2.50]}"#);
                assert!(ack);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn null_data_is_data_not_absence() {
        let f = parse_client(r#"{"op":"send","to":"a","data":null}"#).unwrap();
        assert!(
            matches!(f.op, ClientOp::Send { payload: Payload::Data(raw), .. } if raw.get() == "null")
        );
    }

    #[test]
    fn rejections_have_stable_codes_and_keep_the_id() {
        let cases: &[(&str, ErrorCode)] = &[
            ("not json", ErrorCode::BadJson),
            ("[1,2]", ErrorCode::BadJson),
            (r#"{"id":"x"}"#, ErrorCode::BadOp),
            (r#"{"op":"fly","id":"x"}"#, ErrorCode::BadOp),
            (r#"{"op":"send","id":"x","data":1}"#, ErrorCode::BadField),
            (
                r#"{"op":"send","id":"x","to":"a.b","data":1}"#,
                ErrorCode::BadField,
            ),
            (
                r#"{"op":"send","id":"x","to":"a>","data":1}"#,
                ErrorCode::BadField,
            ),
            (r#"{"op":"send","id":"x","to":"a"}"#, ErrorCode::BadField),
            (
                r#"{"op":"send","id":"x","to":"a","data":1,"b64":"AA=="}"#,
                ErrorCode::BadField,
            ),
            (
                r#"{"op":"send","id":"x","to":"a","b64":5}"#,
                ErrorCode::BadField,
            ),
            (
                r#"{"op":"sub","id":"x","topic":"a..b"}"#,
                ErrorCode::BadField,
            ),
            (
                r#"{"op":"sub","id":"x","topic":"a.*"}"#,
                ErrorCode::BadField,
            ),
            (
                r#"{"op":"sub","id":"x","topic":"a.b.c.d.e.f.g.h.i"}"#,
                ErrorCode::BadField,
            ),
            (
                r#"{"op":"up","id":"x","service":"a.b","data":1}"#,
                ErrorCode::BadField,
            ),
            (r#"{"op":"reply","id":"x","data":1}"#, ErrorCode::BadField),
        ];
        for (text, code) in cases {
            let err = parse_client(text).unwrap_err();
            assert_eq!(err.code, *code, "{text}");
            if *code != ErrorCode::BadJson {
                assert_eq!(err.id.as_deref(), Some("x"), "{text}");
            }
            let e = json(&err.encode());
            assert_eq!(e["op"], "error");
            assert_eq!(e["code"], code.as_str());
        }
        for (text, want) in [
            (
                r#"{"op":"ack","ack_id":"12"}"#,
                AckRef::Ephemeral("12".into()),
            ),
            (r#"{"op":"ack","seq":7,"id":"x"}"#, AckRef::Durable(7)),
        ] {
            match parse_client(text).unwrap().op {
                ClientOp::Ack(got) => assert_eq!(got, want),
                other => panic!("{other:?}"),
            }
        }
        for bad in [
            r#"{"op":"ack","id":"x"}"#,
            r#"{"op":"ack","id":"x","ack_id":"1","seq":1}"#,
        ] {
            assert_eq!(parse_client(bad).unwrap_err().code, ErrorCode::BadField);
        }
        let err = parse_client(r#"{"op":"send","to":"a","data":1,"ack":true}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadField);
        let long = format!(r#"{{"op":"ping","id":"{}"}}"#, "i".repeat(65));
        assert_eq!(parse_client(&long).unwrap_err().code, ErrorCode::BadField);
    }

    #[test]
    fn wrong_typed_fields_are_bad_field_with_the_id() {
        // (field named in the message, frame): each once gave bad_json without the id.
        let cases: &[(&str, &str)] = &[
            ("to", r#"{"op":"send","to":5,"data":1,"id":"w1"}"#),
            ("to", r#"{"op":"send","to":["a"],"data":1,"id":"w1"}"#),
            (
                "ack",
                r#"{"op":"send","to":"a","ack":"yes","data":1,"id":"w1"}"#,
            ),
            (
                "ack",
                r#"{"op":"send","to":"a","ack":1,"data":1,"id":"w1"}"#,
            ),
            ("topic", r#"{"op":"sub","topic":7,"id":"w1"}"#),
            (
                "topic",
                r#"{"op":"pub","topic":{"a":1},"data":1,"id":"w1"}"#,
            ),
            (
                "service",
                r#"{"op":"up","service":false,"data":1,"id":"w1"}"#,
            ),
            ("rid", r#"{"op":"reply","rid":12,"data":1,"id":"w1"}"#),
            ("op", r#"{"op":1,"id":"w1"}"#),
            ("op", r#"{"op":["send"],"to":"a","data":1,"id":"w1"}"#),
        ];
        for (field, text) in cases {
            let err = parse_client(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadField, "{text}");
            assert_eq!(err.id.as_deref(), Some("w1"), "{text}");
            assert!(
                err.message.starts_with(&format!("{field} must be")),
                "{text}: {}",
                err.message
            );
            assert_eq!(json(&err.encode())["id"], "w1");
        }
        // A wrong-typed id cannot be echoed: bad_field without an id.
        for text in [
            r#"{"op":"ping","id":5}"#,
            r#"{"op":"send","to":"a","data":1,"id":{"x":1}}"#,
        ] {
            let err = parse_client(text).unwrap_err();
            assert_eq!(
                (err.code, err.id.as_deref()),
                (ErrorCode::BadField, None),
                "{text}"
            );
            assert_eq!(err.message, "id must be a string");
        }
        // null stays "absent", as before; a well-typed ack still works.
        let err = parse_client(r#"{"op":"send","to":null,"data":1,"id":"w1"}"#).unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (ErrorCode::BadField, "to missing")
        );
        let f = parse_client(r#"{"op":"send","to":"a","ack":true,"data":1,"id":"w1"}"#).unwrap();
        assert!(matches!(f.op, ClientOp::Send { ack: true, .. }));
        // Not an object at all is still bad_json.
        assert_eq!(parse_client("5").unwrap_err().code, ErrorCode::BadJson);
    }

    #[test]
    fn refresh_carries_a_token() {
        let f = parse_client(r#"{"op":"refresh","token":"a.b.c","id":"r1"}"#).unwrap();
        assert!(matches!(f.op, ClientOp::Refresh { ref token } if token == "a.b.c"));
        for (text, message) in [
            (r#"{"op":"refresh","id":"r1"}"#, "token missing".to_string()),
            (
                r#"{"op":"refresh","token":5,"id":"r1"}"#,
                "token must be a string".into(),
            ),
            (
                &*format!(
                    r#"{{"op":"refresh","token":"{}","id":"r1"}}"#,
                    "t".repeat(8193)
                ),
                "token is 8193 bytes, at most 8192".into(),
            ),
        ] {
            let err = parse_client(text).unwrap_err();
            assert_eq!(
                (err.code, err.id.as_deref()),
                (ErrorCode::BadField, Some("r1"))
            );
            assert_eq!(err.message, message);
        }
        let r = json(&encode_refreshed(Some("r1"), 1_800_000_000));
        assert_eq!(
            (r["op"].as_str(), r["id"].as_str(), r["exp"].as_u64()),
            (Some("refreshed"), Some("r1"), Some(1_800_000_000))
        );
        assert_eq!(ErrorCode::BadToken.as_str(), "bad_token");
    }

    #[test]
    fn client_from_field_is_ignored() {
        // A device cannot choose its sender identity: `from` is not even read.
        let f = parse_client(r#"{"op":"send","to":"b","from":"admin","data":1}"#).unwrap();
        let ClientOp::Send { payload, .. } = f.op else {
            panic!()
        };
        let bus = encode_bus_from("alice", &payload);
        assert_eq!(json(&bus), json(r#"{"from":"alice","data":1}"#));
    }

    #[test]
    fn escaped_strings_parse() {
        let f = parse_client(r#"{"op":"ping","id":"a\"b\\c\u00e9"}"#).unwrap();
        assert_eq!(f.id.as_deref(), Some("a\"b\\cé"));
        assert_eq!(json(&encode_pong(f.id.as_deref()))["id"], "a\"b\\cé");
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("news.*", "news.sports"));
        assert!(!pattern_matches("news.*", "news"));
        assert!(!pattern_matches("news.*", "news.sports.live"));
        assert!(pattern_matches("rooms.42.>", "rooms.42.chat"));
        assert!(pattern_matches("rooms.42.>", "rooms.42.a.b"));
        assert!(!pattern_matches("rooms.42.>", "rooms.42"));
        assert!(pattern_matches(">", "x"));
        assert!(pattern_matches("a.b", "a.b"));
        assert!(!pattern_matches("a.b", "a.c"));
        assert!(!pattern_matches("a.>.c", "a.b.c"));
    }

    #[test]
    fn deliveries_are_valid_json() {
        let bus = br#"{"from":"svc:billing","data":{"x":1}}"#;
        let text = |bus: &[u8], d| encode_delivery(bus, d, None).unwrap().text;
        assert_eq!(
            json(&text(bus, Delivery::Direct)),
            json(r#"{"op":"msg","from":"svc:billing","data":{"x":1}}"#)
        );
        assert_eq!(
            json(&text(br#"{"data":2}"#, Delivery::Topic("news.a"))),
            json(r#"{"op":"msg","from":"backend","topic":"news.a","data":2}"#)
        );
        assert_eq!(
            json(&text(
                br#"{"from":"s","b64":"AA=="}"#,
                Delivery::Request("r1")
            )),
            json(r#"{"op":"request","from":"s","rid":"r1","b64":"AA=="}"#)
        );
        assert_eq!(
            json(&text(b"{}", Delivery::Direct)),
            json(r#"{"op":"msg","from":"backend","data":null}"#)
        );
        assert!(matches!(
            encode_delivery(b"nope", Delivery::Direct, None),
            Err(BusPayloadError::NotV1(_))
        ));
        assert!(matches!(
            encode_delivery(br#"{"b64":1}"#, Delivery::Direct, None),
            Err(BusPayloadError::B64NotString)
        ));
        // A send with ack: the deadline travels on the bus, the ack_id goes to the device.
        let p = Payload::Data(serde_json::from_str::<&RawValue>("[1]").unwrap());
        let bus = encode_bus_from_until("phone", &p, Some(1_700_000_000_123));
        let got = encode_delivery(bus.as_bytes(), Delivery::Direct, Some("77")).unwrap();
        assert_eq!(got.deadline_unix_ms, Some(1_700_000_000_123));
        assert_eq!(
            json(&got.text),
            json(r#"{"op":"msg","from":"phone","ack_id":"77","data":[1]}"#)
        );
    }

    #[test]
    fn durable_ack_and_delivery() {
        let f = parse_client(r#"{"op":"ack","seq":42}"#).unwrap();
        assert!(matches!(f.op, ClientOp::Ack(AckRef::Durable(42))));
        for bad in [
            r#"{"op":"ack","id":"a"}"#,
            r#"{"op":"ack","seq":-1,"id":"a"}"#,
            r#"{"op":"ack","seq":"7","id":"a"}"#,
        ] {
            let err = parse_client(bad).unwrap_err();
            assert!(
                matches!(err.code, ErrorCode::BadField | ErrorCode::BadJson),
                "{bad}"
            );
        }
        assert_eq!(
            json(
                &encode_delivery(
                    br#"{"from":"svc:a","data":[1]}"#,
                    Delivery::Durable(9),
                    None
                )
                .unwrap()
                .text
            ),
            json(r#"{"op":"msg","from":"svc:a","data":[1],"seq":9}"#)
        );
        assert_eq!(json(&encode_ack_stored("u", 5))["seq"], 5);
        assert_eq!(
            json(&encode_durable_receipt("tv", 3, "n1", 7)),
            json(r#"{"device":"tv","seq":3,"node":"n1","at_ms":7}"#)
        );
    }

    #[test]
    fn server_envelopes_are_valid_json() {
        assert_eq!(json(&encode_hello("tv", "n1", 1))["shard"], 1);
        assert_eq!(json(&encode_ack("a\"", Some(Ok(()))))["delivered"], true);
        assert!(json(&encode_ack("a", None)).get("delivered").is_none());
        assert_eq!(
            json(&encode_ack("a", Some(Err(NotDelivered::Closed)))),
            json(r#"{"op":"ack","id":"a","delivered":false,"reason":"closed"}"#)
        );
        for outcome in [
            Ok(()),
            Err(NotDelivered::Offline),
            Err(NotDelivered::Timeout),
            Err(NotDelivered::Closed),
            Err(NotDelivered::Busy),
        ] {
            assert_eq!(
                parse_receipt(encode_receipt(outcome).as_bytes()),
                Some(outcome)
            );
        }
        assert_eq!(parse_receipt(b"{}"), None);
        let e = Event {
            kind: EventKind::Disconnect(1008),
            device: "tv",
            node: "n1",
            shard: 1,
            session: 42,
            node_started_at_ms: 5,
            at_ms: 9,
        };
        assert_eq!(
            json(&encode_event(&e)),
            json(
                r#"{"event":"disconnect","device":"tv","node":"n1","shard":1,"session":"42","reason":"policy","code":1008,"at":9,"node_started_at":5}"#
            )
        );
        let h = Heartbeat {
            node: "n1",
            node_started_at_ms: 5,
            seq: 3,
            at_ms: 9,
            sessions: 2,
            shards: 2,
            interval_ms: 1000,
            dead_after_ms: 2500,
        };
        assert_eq!(json(&encode_heartbeat(&h))["dead_after_ms"], 2500);
        let e = json(&encode_error(None, ErrorCode::Forbidden, "no \"x\""));
        assert_eq!(e["code"], "forbidden");
        let p = Payload::Data(serde_json::from_str::<&RawValue>("[1]").unwrap());
        assert_eq!(json(&encode_bus_up("d", "n", 2, &p))["shard"], 2);
        assert_eq!(json(&encode_presence("d", "n", 0, 3))["sessions"], 3);
        assert_eq!(
            json(&encode_bus_error(ErrorCode::TooManyPending))["error"],
            "too_many_pending"
        );
    }
}
