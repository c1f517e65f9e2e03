//! Frame codec (RFC 6455 §5): an incremental decoder with message reassembly for both roles and
//! an encoder that writes headers into a stack buffer.
//!
//! [`Decoder::decode`] looks at the front of the caller's buffer, checks the header as soon as
//! its bytes are there (reserved bits, opcode, mask bit for the role, minimal length encoding,
//! control-frame rules, continuation rules, frame and message size limits: all before anything
//! is allocated), waits until the whole frame is buffered, unmasks it in place and returns an
//! [`Event`] borrowing either the caller's buffer (single-frame messages, control frames: no
//! copy) or the decoder's reassembly buffer (fragmented messages). The reassembly buffer holds no
//! capacity while no fragmented message is in progress.

use std::fmt;

use super::close::{self, CloseState};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

/// Which side of the connection this codec runs on. A `Server` decoder requires masked frames
/// and a `Server` encoder does not mask; a `Client` is the opposite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The accepting side.
    Server,
    /// The connecting side.
    Client,
}

/// Frame opcodes defined by RFC 6455 (others are rejected as reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: text (UTF-8).
    Text,
    /// 0x2: binary.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Parses the 4-bit wire value; `None` for reserved opcodes.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Longest frame header: 2 bytes + 8 bytes of length + 4 bytes of mask key.
pub const MAX_HEADER_BYTES: usize = 14;

/// Longest control-frame payload (RFC 6455 §5.5).
const CONTROL_PAYLOAD_BYTES_MAX: u64 = 125;

/// Size limits of the decoder, checked against the declared lengths before buffering or
/// allocating anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Largest payload of a single frame. Default 1 MiB.
    pub frame_bytes_max: usize,
    /// Largest message (sum of its fragments). Default 1 MiB.
    pub message_bytes_max: usize,
}

impl Default for DecoderLimits {
    fn default() -> DecoderLimits {
        DecoderLimits {
            frame_bytes_max: 1 << 20,
            message_bytes_max: 1 << 20,
        }
    }
}

/// The type of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// UTF-8 text (validated before it is handed out).
    Text,
    /// Arbitrary bytes.
    Binary,
}

/// What one decoded frame means to the application.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message; text is already UTF-8 validated.
    Message {
        /// Text or binary.
        kind: MessageKind,
        /// The unmasked payload of the whole message.
        data: &'a [u8],
    },
    /// A ping with its payload (≤ 125 bytes); answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong with its payload.
    Pong(&'a [u8]),
    /// A close frame: `None` when it had no payload, else the validated code and reason.
    Close(Option<(u16, &'a str)>),
}

/// A violation of RFC 6455 or of the limits; fatal for the connection. Answer with a Close
/// carrying [`ProtocolError::close_code`], then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A server received a frame without the MASK bit.
    UnmaskedClientFrame,
    /// A client received a frame with the MASK bit.
    MaskedServerFrame,
    /// RSV1–3 set without a negotiated extension.
    ReservedBits,
    /// Opcode 0x3–0x7 or 0xB–0xF.
    ReservedOpcode(u8),
    /// A control frame with a payload over 125 bytes.
    ControlTooLong {
        /// Declared payload length.
        size: u64,
    },
    /// A control frame without FIN.
    FragmentedControl,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// The payload length used a longer form than needed.
    LengthNotMinimal,
    /// The 64-bit length had its most significant bit set.
    LengthHighBit,
    /// A frame payload over `frame_bytes_max`.
    FrameTooLarge {
        /// Declared payload length.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A message (all fragments) over `message_bytes_max`.
    MessageTooLarge {
        /// Size the message would reach.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Text (or a close reason) that is not valid UTF-8.
    InvalidUtf8,
    /// A close payload of exactly one byte.
    InvalidClosePayload,
    /// A close code that may not be sent on the wire.
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// The close code to answer this error with: 1007 for invalid UTF-8, 1009 for size
    /// limits, 1002 for everything else.
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 => close::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                close::MESSAGE_TOO_BIG
            }
            _ => close::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnmaskedClientFrame => f.write_str("client frame is not masked"),
            ProtocolError::MaskedServerFrame => f.write_str("server frame is masked"),
            ProtocolError::ReservedBits => f.write_str("reserved bits set"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ControlTooLong { size } => {
                write!(f, "control frame payload {size} bytes > 125")
            }
            ProtocolError::FragmentedControl => f.write_str("fragmented control frame"),
            ProtocolError::UnexpectedContinuation => {
                f.write_str("continuation frame without a message in progress")
            }
            ProtocolError::ExpectedContinuation => {
                f.write_str("new data frame while a fragmented message is in progress")
            }
            ProtocolError::LengthNotMinimal => f.write_str("payload length not minimally encoded"),
            ProtocolError::LengthHighBit => {
                f.write_str("64-bit payload length has its high bit set")
            }
            ProtocolError::FrameTooLarge { size, max } => {
                write!(f, "frame payload {size} bytes > frame_bytes_max {max}")
            }
            ProtocolError::MessageTooLarge { size, max } => {
                write!(f, "message {size} bytes > message_bytes_max {max}")
            }
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8"),
            ProtocolError::InvalidClosePayload => f.write_str("close payload of 1 byte"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A parsed frame header.
#[derive(Clone, Copy, Debug)]
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: usize,
    header_len: usize,
}

/// Incremental decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    role: Role,
    limits: DecoderLimits,
    /// Fragments of the message in progress; empty with no capacity while idle.
    reassembly: Vec<u8>,
    /// Kind of the fragmented message in progress, `None` when idle.
    fragmented: Option<MessageKind>,
    /// The previous call handed out `reassembly`: free it on the next call.
    delivered: bool,
    utf8: Utf8Validator,
    /// Payload bytes of the incomplete text frame at the front of the buffer that were already
    /// UTF-8 checked (fail fast: an invalid prefix is refused before the frame is complete).
    partial_checked_bytes: usize,
    /// Validator state after `partial_checked_bytes` of the incomplete text frame.
    partial_utf8: Utf8Validator,
    /// The close handshake of the [`super::Context`] this decoder belongs to; the decoder
    /// itself never reads it. It sits here because this struct has padding to spare, where a
    /// field of `Context` would add 8 bytes to every connection's task.
    pub(super) close_state: CloseState,
}

impl Decoder {
    /// A decoder for frames received by `role`.
    pub fn new(role: Role, limits: DecoderLimits) -> Decoder {
        Decoder {
            role,
            limits,
            reassembly: Vec::new(),
            fragmented: None,
            delivered: false,
            utf8: Utf8Validator::new(),
            partial_checked_bytes: 0,
            partial_utf8: Utf8Validator::new(),
            close_state: CloseState::Open,
        }
    }

    /// The role this decoder receives as.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether no fragmented message is in progress.
    pub fn is_idle(&self) -> bool {
        self.fragmented.is_none()
    }

    /// Bytes the decoder holds: the reassembly buffer of a fragmented message (in progress, or
    /// the last one delivered until [`Decoder::release_delivered`] or the next `decode`).
    pub fn buffered_bytes(&self) -> usize {
        self.reassembly.capacity()
    }

    /// Forgets a fragmented message in progress and frees its buffer (the connection is being
    /// closed and will not read on).
    pub fn reset(&mut self) {
        self.reassembly = Vec::new();
        self.fragmented = None;
        self.delivered = false;
        self.utf8 = Utf8Validator::new();
        self.partial_checked_bytes = 0;
    }

    /// Frees the buffer of the message the last `decode` delivered, once the caller is done
    /// with it (else it is freed at the next `decode`).
    pub fn release_delivered(&mut self) {
        if self.delivered {
            self.delivered = false;
            self.reassembly = Vec::new();
        }
    }

    /// Total bytes (header + payload) of the frame at the front of `buf` once its header is
    /// complete and within limits; `None` while the header is incomplete or invalid.
    pub fn frame_bytes_needed(&self, buf: &[u8]) -> Option<usize> {
        match self.parse_header(buf) {
            Ok(Some(h)) => Some(h.header_len + h.payload_len),
            _ => None,
        }
    }

    /// Checks the header at the front of `buf` as far as its bytes are present.
    #[inline]
    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0f))?;
        if opcode.is_control() && !fin {
            return Err(ProtocolError::FragmentedControl);
        }
        match opcode {
            OpCode::Continuation if self.fragmented.is_none() => {
                return Err(ProtocolError::UnexpectedContinuation)
            }
            OpCode::Text | OpCode::Binary if self.fragmented.is_some() => {
                return Err(ProtocolError::ExpectedContinuation)
            }
            _ => {}
        }
        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        let len7 = b1 & 0x7f;
        let (len, mut pos) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                let len = u16::from_be_bytes([b[0], b[1]]) as u64;
                if len < 126 {
                    return Err(ProtocolError::LengthNotMinimal);
                }
                (len, 4)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthHighBit);
                }
                if len <= u16::MAX as u64 {
                    return Err(ProtocolError::LengthNotMinimal);
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        if opcode.is_control() && len > CONTROL_PAYLOAD_BYTES_MAX {
            return Err(ProtocolError::ControlTooLong { size: len });
        }
        if len > self.limits.frame_bytes_max as u64 {
            return Err(ProtocolError::FrameTooLarge {
                size: len,
                max: self.limits.frame_bytes_max,
            });
        }
        let len = len as usize;
        if !opcode.is_control() {
            let held = if self.fragmented.is_some() {
                self.reassembly.len()
            } else {
                0
            };
            let size = held.saturating_add(len);
            if size > self.limits.message_bytes_max {
                return Err(ProtocolError::MessageTooLarge {
                    size,
                    max: self.limits.message_bytes_max,
                });
            }
        }
        let mask = if masked {
            let Some(k) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([k[0], k[1], k[2], k[3]])
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            payload_len: len,
            header_len: pos,
        }))
    }

    /// Appends a fragment (already checked against `message_bytes_max`), growing the buffer
    /// geometrically but never past the limit.
    fn append_fragment(&mut self, payload: &[u8]) {
        let len = self.reassembly.len();
        if self.reassembly.capacity() - len < payload.len() {
            let doubled = (2 * self.reassembly.capacity()).min(self.limits.message_bytes_max);
            let want = doubled.max(len + payload.len());
            self.reassembly.reserve_exact(want - len);
        }
        self.reassembly.extend_from_slice(payload);
        debug_assert!(
            self.reassembly.len() <= self.limits.message_bytes_max,
            "reassembly past message_bytes_max (the header check refuses it first)"
        );
    }

    /// The decoder's invariants between calls (debug builds: this is on the hot path).
    #[inline]
    fn check_invariants(&self) {
        debug_assert!(
            !(self.delivered && self.fragmented.is_some()),
            "a message delivered while another is in progress"
        );
        debug_assert!(
            self.fragmented.is_some() || self.delivered || self.reassembly.is_empty(),
            "reassembly bytes without a fragmented message"
        );
        debug_assert!(
            self.reassembly.len() <= self.limits.message_bytes_max,
            "reassembly past message_bytes_max"
        );
    }

    /// Decodes at most one frame from the front of `buf`, unmasking its payload in place.
    ///
    /// `Ok(None)`: the frame is incomplete and nothing was consumed (keep the bytes, read
    /// more). `Ok(Some((event, consumed)))`: one frame of `consumed` bytes was decoded; `event`
    /// is `None` for a non-final fragment of a data message. Errors are fatal.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(Option<Event<'a>>, usize)>, ProtocolError> {
        self.check_invariants();
        if self.delivered {
            self.delivered = false;
            self.reassembly = Vec::new();
        }
        let Some(h) = self.parse_header(buf)? else {
            return Ok(None);
        };
        let total = h.header_len + h.payload_len;
        debug_assert!(
            !h.opcode.is_control() || (h.fin && h.payload_len <= 125),
            "control frame checks"
        );
        if buf.len() < total {
            self.check_partial_text(&h, &buf[h.header_len..])?;
            debug_assert!(self.partial_checked_bytes <= buf.len() - h.header_len);
            return Ok(None);
        }
        self.partial_checked_bytes = 0;
        let payload = &mut buf[h.header_len..total];
        if let Some(key) = h.mask {
            apply_mask(payload, key);
        }
        let payload: &'a [u8] = payload;
        let event = match h.opcode {
            OpCode::Ping => Some(Event::Ping(payload)),
            OpCode::Pong => Some(Event::Pong(payload)),
            OpCode::Close => Some(Event::Close(parse_close_payload(payload)?)),
            OpCode::Text | OpCode::Binary => {
                let kind = if h.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if h.fin {
                    if kind == MessageKind::Text && std::str::from_utf8(payload).is_err() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    Some(Event::Message {
                        kind,
                        data: payload,
                    })
                } else {
                    if kind == MessageKind::Text {
                        self.utf8.reset();
                        self.utf8
                            .feed(payload)
                            .map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    self.fragmented = Some(kind);
                    self.append_fragment(payload);
                    None
                }
            }
            OpCode::Continuation => {
                let kind = self.fragmented.unwrap_or(MessageKind::Binary);
                if kind == MessageKind::Text {
                    self.utf8
                        .feed(payload)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                    if h.fin {
                        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                }
                self.append_fragment(payload);
                if h.fin {
                    self.fragmented = None;
                    self.delivered = true;
                    Some(Event::Message {
                        kind,
                        data: &self.reassembly,
                    })
                } else {
                    None
                }
            }
        };
        Ok(Some((event, total)))
    }
}

impl Decoder {
    /// Validates the UTF-8 of the payload prefix of an incomplete text frame (a `Text` frame,
    /// or a `Continuation` of a text message) without unmasking or consuming `available`, so
    /// an invalid prefix fails now rather than when the frame is complete (RFC 6455 §8.1,
    /// Autobahn 6.4.x). Each byte is checked once across calls: `partial_checked_bytes` and
    /// `partial_utf8` carry the progress until the frame completes.
    fn check_partial_text(&mut self, h: &Header, available: &[u8]) -> Result<(), ProtocolError> {
        let continues_text =
            h.opcode == OpCode::Continuation && self.fragmented == Some(MessageKind::Text);
        if h.opcode != OpCode::Text && !continues_text {
            return Ok(());
        }
        if self.partial_checked_bytes == 0 {
            self.partial_utf8 = if continues_text {
                self.utf8
            } else {
                Utf8Validator::new()
            };
        }
        let key = h.mask.unwrap_or([0; 4]);
        let mut chunk = [0u8; 256];
        while self.partial_checked_bytes < available.len() {
            let start = self.partial_checked_bytes;
            let len = (available.len() - start).min(chunk.len());
            for (i, out) in chunk[..len].iter_mut().enumerate() {
                *out = available[start + i] ^ key[(start + i) % 4];
            }
            self.partial_utf8
                .feed(&chunk[..len])
                .map_err(|_| ProtocolError::InvalidUtf8)?;
            self.partial_checked_bytes += len;
        }
        Ok(())
    }
}

/// Validates a close payload: empty, or a 2-byte allowed code followed by UTF-8.
fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close::is_valid_received(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Writes a frame header into `out` and returns its length (2 to 14 bytes). `mask: Some(key)`
/// sets the MASK bit and appends the key; the caller masks the payload.
pub fn write_frame_header(
    out: &mut [u8; MAX_HEADER_BYTES],
    fin: bool,
    opcode: OpCode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as u64 {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[pos..pos + 4].copy_from_slice(&key);
        pos += 4;
    }
    pos
}

/// Appends a whole frame to `out`. `Role::Client` masks with a random key; `Role::Server`
/// sends the payload as is.
pub fn encode_frame(out: &mut Vec<u8>, role: Role, opcode: OpCode, fin: bool, payload: &[u8]) {
    let mask = match role {
        Role::Client => Some(rand::random::<[u8; 4]>()),
        Role::Server => None,
    };
    let mut header = [0u8; MAX_HEADER_BYTES];
    let n = write_frame_header(&mut header, fin, opcode, payload.len() as u64, mask);
    out.reserve(n + payload.len());
    out.extend_from_slice(&header[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

/// Appends a Close frame with `code` and `reason` (cut at a character boundary to fit the
/// 125-byte control payload).
pub fn encode_close(out: &mut Vec<u8>, role: Role, code: u16, reason: &str) {
    let mut cut = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX as usize - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = [0u8; CONTROL_PAYLOAD_BYTES_MAX as usize];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(out, role, OpCode::Close, true, &payload[..2 + cut]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Decoder {
        Decoder::new(Role::Server, DecoderLimits::default())
    }

    fn client() -> Decoder {
        Decoder::new(Role::Client, DecoderLimits::default())
    }

    /// Decodes one frame from `bytes`, which must hold exactly one complete frame.
    fn one(d: &mut Decoder, bytes: &[u8]) -> Result<Option<String>, ProtocolError> {
        let mut buf = bytes.to_vec();
        let len = buf.len();
        match d.decode(&mut buf)? {
            Some((ev, n)) => {
                assert_eq!(n, len);
                Ok(ev.map(|e| format!("{e:?}")))
            }
            None => panic!("incomplete"),
        }
    }

    fn err(d: &mut Decoder, bytes: &[u8]) -> ProtocolError {
        let mut buf = bytes.to_vec();
        d.decode(&mut buf).expect_err("must fail")
    }

    /// Autobahn 6.4.3: one masked text frame arrives in pieces; the piece holding U+110000
    /// must fail at once, before the frame is complete, and valid prefixes must not.
    #[test]
    fn invalid_utf8_prefix_of_incomplete_text_frame_fails_fast() {
        let payload: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited";
        let mut frame = Vec::new();
        encode_frame(&mut frame, Role::Client, OpCode::Text, true, payload);
        let header_len = frame.len() - payload.len();
        let mut s = server();
        // Header plus the valid prefix (11 bytes): incomplete, accepted.
        let mut buf = frame[..header_len + 11].to_vec();
        assert!(s.decode(&mut buf).unwrap().is_none());
        assert_eq!(
            &buf[..],
            &frame[..header_len + 11],
            "nothing unmasked or consumed"
        );
        // One more byte (0xf4) is still a valid prefix; the next (0x90) is not.
        let mut buf = frame[..header_len + 12].to_vec();
        assert!(s.decode(&mut buf).unwrap().is_none());
        let mut buf = frame[..header_len + 13].to_vec();
        assert_eq!(s.decode(&mut buf), Err(ProtocolError::InvalidUtf8));

        // A continuation of a text message carries the message's validator state: a code
        // point split across the fragment boundary stays valid while incomplete.
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, Role::Client, OpCode::Text, false, b"\xe2\x82");
        let first = bytes.len();
        encode_frame(
            &mut bytes,
            Role::Client,
            OpCode::Continuation,
            true,
            b"\xac and more",
        );
        let mut s = server();
        let mut buf = bytes[..first].to_vec();
        assert!(matches!(s.decode(&mut buf), Ok(Some((None, _)))));
        let cont = &bytes[first..];
        let mut buf = cont[..cont.len() - 3].to_vec();
        assert!(s.decode(&mut buf).unwrap().is_none());
        let mut buf = cont.to_vec();
        let (ev, _) = s.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            ev,
            Some(Event::Message {
                kind: MessageKind::Text,
                data: "\u{20ac} and more".as_bytes()
            })
        );
    }

    #[test]
    fn rfc_5_7_examples() {
        // A single-frame unmasked text message.
        let mut c = client();
        let mut buf = vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (ev, n) = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(n, 7);
        assert_eq!(
            ev,
            Some(Event::Message {
                kind: MessageKind::Text,
                data: b"Hello"
            })
        );
        // A single-frame masked text message.
        let mut s = server();
        let mut buf = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (ev, _) = s.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            ev,
            Some(Event::Message {
                kind: MessageKind::Text,
                data: b"Hello"
            })
        );
        // A fragmented unmasked text message.
        let mut c = client();
        let mut buf = vec![0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let (ev, n) = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!((ev, n), (None, 5));
        assert!(!c.is_idle());
        let (ev, n) = c.decode(&mut buf[5..]).unwrap().unwrap();
        assert_eq!(n, 4);
        assert_eq!(
            ev,
            Some(Event::Message {
                kind: MessageKind::Text,
                data: b"Hello"
            })
        );
        assert!(c.is_idle());
        // Unmasked ping, masked pong.
        let mut buf = vec![0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            c.decode(&mut buf).unwrap().unwrap().0,
            Some(Event::Ping(b"Hello"))
        );
        let mut buf = vec![
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            s.decode(&mut buf).unwrap().unwrap().0,
            Some(Event::Pong(b"Hello"))
        );
        // 256 bytes binary in a single unmasked frame; 64 KiB in one frame.
        let mut buf = vec![0x82, 0x7e, 0x01, 0x00];
        buf.extend(std::iter::repeat_n(7u8, 256));
        let (ev, n) = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(n, 260);
        assert!(
            matches!(ev, Some(Event::Message { kind: MessageKind::Binary, data }) if data.len() == 256)
        );
        let mut buf = vec![0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0];
        buf.extend(std::iter::repeat_n(7u8, 65536));
        let (ev, n) = c.decode(&mut buf).unwrap().unwrap();
        assert_eq!(n, 65546);
        assert!(
            matches!(ev, Some(Event::Message { kind: MessageKind::Binary, data }) if data.len() == 65536)
        );
    }

    #[test]
    fn encoder_matches_rfc_bytes() {
        let mut out = Vec::new();
        encode_frame(&mut out, Role::Server, OpCode::Text, true, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        let mut h = [0u8; MAX_HEADER_BYTES];
        let n = write_frame_header(
            &mut h,
            true,
            OpCode::Text,
            5,
            Some([0x37, 0xfa, 0x21, 0x3d]),
        );
        assert_eq!(&h[..n], [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            write_frame_header(&mut h, true, OpCode::Binary, 256, None),
            4
        );
        assert_eq!(&h[..4], [0x82, 0x7e, 0x01, 0x00]);
        assert_eq!(
            write_frame_header(&mut h, false, OpCode::Binary, 65536, Some([1, 2, 3, 4])),
            14
        );
        assert_eq!(&h[..14], [0x02, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4]);
        // A client frame decodes on a server and the mask is random but applied.
        let mut out = Vec::new();
        encode_frame(&mut out, Role::Client, OpCode::Binary, true, b"abc");
        assert_eq!(out[1], 0x83);
        let mut s = server();
        assert_eq!(
            s.decode(&mut out).unwrap().unwrap().0,
            Some(Event::Message {
                kind: MessageKind::Binary,
                data: b"abc"
            })
        );
    }

    #[test]
    fn close_frames() {
        let mut out = Vec::new();
        encode_close(&mut out, Role::Server, 1000, "bye");
        assert_eq!(out, [0x88, 0x05, 0x03, 0xe8, b'b', b'y', b'e']);
        let mut c = client();
        assert_eq!(
            one(&mut c, &out).unwrap().unwrap(),
            "Close(Some((1000, \"bye\")))"
        );
        assert_eq!(one(&mut c, &[0x88, 0x00]).unwrap().unwrap(), "Close(None)");
        // Long reasons are cut at a character boundary to fit 125 bytes.
        let mut out = Vec::new();
        encode_close(&mut out, Role::Client, 4000, &"é".repeat(100));
        assert_eq!(out[1] & 0x7f, 124);
        let mut s = server();
        assert!(
            matches!(s.decode(&mut out).unwrap().unwrap().0, Some(Event::Close(Some((4000, r)))) if r.len() == 122)
        );
    }

    #[test]
    #[expect(clippy::too_many_lines, reason = "one scenario read top to bottom")]
    fn every_protocol_error_has_its_close_code() {
        let cases: Vec<(Role, Vec<u8>, ProtocolError, u16)> = vec![
            (
                Role::Server,
                vec![0x81, 0x00],
                ProtocolError::UnmaskedClientFrame,
                1002,
            ),
            (
                Role::Client,
                vec![0x81, 0x80, 0, 0, 0, 0],
                ProtocolError::MaskedServerFrame,
                1002,
            ),
            (
                Role::Client,
                vec![0xc1, 0x00],
                ProtocolError::ReservedBits,
                1002,
            ),
            (
                Role::Client,
                vec![0x91, 0x00],
                ProtocolError::ReservedBits,
                1002,
            ),
            (
                Role::Client,
                vec![0xa1, 0x00],
                ProtocolError::ReservedBits,
                1002,
            ),
            (
                Role::Client,
                vec![0x83, 0x00],
                ProtocolError::ReservedOpcode(3),
                1002,
            ),
            (
                Role::Client,
                vec![0x8b, 0x00],
                ProtocolError::ReservedOpcode(0xb),
                1002,
            ),
            (
                Role::Client,
                vec![0x89, 0x7e, 0x00, 0x7e],
                ProtocolError::ControlTooLong { size: 126 },
                1002,
            ),
            (
                Role::Client,
                vec![0x09, 0x00],
                ProtocolError::FragmentedControl,
                1002,
            ),
            (
                Role::Client,
                vec![0x80, 0x00],
                ProtocolError::UnexpectedContinuation,
                1002,
            ),
            (
                Role::Client,
                vec![0x82, 0x7e, 0x00, 0x7d],
                ProtocolError::LengthNotMinimal,
                1002,
            ),
            (
                Role::Client,
                vec![0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
                ProtocolError::LengthNotMinimal,
                1002,
            ),
            (
                Role::Client,
                vec![0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0],
                ProtocolError::LengthHighBit,
                1002,
            ),
            (
                Role::Client,
                vec![0x82, 0x7f, 0, 0, 0, 0, 0, 0x10, 0, 1],
                ProtocolError::FrameTooLarge {
                    size: (1 << 20) + 1,
                    max: 1 << 20,
                },
                1009,
            ),
            (
                Role::Client,
                vec![0x81, 0x02, 0xc3, 0x28],
                ProtocolError::InvalidUtf8,
                1007,
            ),
            (
                Role::Client,
                vec![0x88, 0x01, 0x03],
                ProtocolError::InvalidClosePayload,
                1002,
            ),
            (
                Role::Client,
                vec![0x88, 0x02, 0x03, 0xed],
                ProtocolError::InvalidCloseCode(1005),
                1002,
            ),
            (
                Role::Client,
                vec![0x88, 0x02, 0x03, 0xe7],
                ProtocolError::InvalidCloseCode(999),
                1002,
            ),
            (
                Role::Client,
                vec![0x88, 0x03, 0x03, 0xe8, 0xff],
                ProtocolError::InvalidUtf8,
                1007,
            ),
        ];
        for (role, bytes, want, code) in cases {
            let mut d = Decoder::new(role, DecoderLimits::default());
            let got = err(&mut d, &bytes);
            assert_eq!(got, want, "{bytes:x?}");
            assert_eq!(got.close_code(), code, "{got}");
            // The header errors are reported as soon as their bytes are present.
            if !matches!(
                want,
                ProtocolError::InvalidUtf8
                    | ProtocolError::InvalidClosePayload
                    | ProtocolError::InvalidCloseCode(_)
            ) {
                let mut d = Decoder::new(role, DecoderLimits::default());
                let mut header_only = bytes[..bytes.len().min(10)].to_vec();
                assert_eq!(d.decode(&mut header_only).unwrap_err(), want);
            }
        }
    }

    #[test]
    fn continuation_rules_and_interleaved_control() {
        let mut c = client();
        assert_eq!(one(&mut c, &[0x01, 0x02, b'H', b'e']).unwrap(), None);
        // New data frame while fragmented.
        assert_eq!(
            err(&mut c, &[0x81, 0x00]),
            ProtocolError::ExpectedContinuation
        );
        let mut c = client();
        assert_eq!(one(&mut c, &[0x02, 0x01, 1]).unwrap(), None);
        // Control frames may come between fragments.
        assert_eq!(
            one(&mut c, &[0x89, 0x01, b'p']).unwrap().unwrap(),
            "Ping([112])"
        );
        assert_eq!(one(&mut c, &[0x00, 0x01, 2]).unwrap(), None);
        assert_eq!(
            one(&mut c, &[0x80, 0x01, 3]).unwrap().unwrap(),
            "Message { kind: Binary, data: [1, 2, 3] }"
        );
        assert!(c.is_idle());
        assert_eq!(
            err(&mut c, &[0x80, 0x00]),
            ProtocolError::UnexpectedContinuation
        );
    }

    #[test]
    fn message_limit_checked_before_buffering() {
        let limits = DecoderLimits {
            frame_bytes_max: 100,
            message_bytes_max: 150,
        };
        let mut c = Decoder::new(Role::Client, limits);
        let mut first = vec![0x02, 100];
        first.extend([0u8; 100]);
        assert_eq!(one(&mut c, &first).unwrap(), None);
        // Only the header of the next fragment: rejected before its payload arrives.
        assert_eq!(
            err(&mut c, &[0x00, 51]),
            ProtocolError::MessageTooLarge {
                size: 151,
                max: 150
            }
        );
        let mut c = Decoder::new(Role::Client, limits);
        assert_eq!(
            err(&mut c, &[0x82, 101]),
            ProtocolError::FrameTooLarge {
                size: 101,
                max: 100
            }
        );
        let limits = DecoderLimits {
            frame_bytes_max: 100,
            message_bytes_max: 50,
        };
        let mut c = Decoder::new(Role::Client, limits);
        assert_eq!(
            err(&mut c, &[0x82, 51]),
            ProtocolError::MessageTooLarge { size: 51, max: 50 }
        );
        assert_eq!(
            ProtocolError::MessageTooLarge { size: 51, max: 50 }.close_code(),
            1009
        );
    }

    #[test]
    fn fragmented_text_fails_fast_and_reassembly_is_freed() {
        let mut c = client();
        // "κό" then an invalid continuation byte in the second fragment (not the last).
        assert_eq!(one(&mut c, &[0x01, 0x03, 0xce, 0xba, 0xe1]).unwrap(), None);
        assert_eq!(err(&mut c, &[0x00, 0x01, 0x28]), ProtocolError::InvalidUtf8);
        // A code point split across fragments is fine.
        let mut c = client();
        assert_eq!(one(&mut c, &[0x01, 0x01, 0xce]).unwrap(), None);
        assert_eq!(
            one(&mut c, &[0x80, 0x01, 0xba]).unwrap().unwrap(),
            "Message { kind: Text, data: [206, 186] }"
        );
        // An incomplete code point at the end of the message is not.
        let mut c = client();
        assert_eq!(one(&mut c, &[0x01, 0x01, b'a']).unwrap(), None);
        assert_eq!(err(&mut c, &[0x80, 0x01, 0xce]), ProtocolError::InvalidUtf8);
        // After delivery the next call frees the buffer.
        let mut c = client();
        assert_eq!(one(&mut c, &[0x02, 0x01, 1]).unwrap(), None);
        assert!(c.reassembly.capacity() > 0);
        assert!(one(&mut c, &[0x80, 0x01, 2]).unwrap().is_some());
        assert_eq!(c.decode(&mut []).unwrap(), None);
        assert_eq!(c.reassembly.capacity(), 0);
    }

    #[test]
    fn incomplete_consumes_nothing() {
        let mut out = Vec::new();
        encode_frame(&mut out, Role::Client, OpCode::Binary, true, &[9u8; 300]);
        let mut s = server();
        for cut in 0..out.len() {
            let mut part = out[..cut].to_vec();
            assert_eq!(s.decode(&mut part).unwrap(), None, "cut {cut}");
        }
        assert_eq!(s.frame_bytes_needed(&out[..8]), Some(out.len()));
        assert_eq!(s.frame_bytes_needed(&out[..3]), None);
    }
}
