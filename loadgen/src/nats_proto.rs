//! The NATS client protocol as far as a device needs it (`--protocol nats`), sans-IO: the
//! operations a client sends (`CONNECT`, `SUB`, `PUB`, `PING`, `PONG`) encoded into a buffer,
//! and the ones a server sends (`INFO`, `MSG`, `PING`, `PONG`, `+OK`, `-ERR`) parsed from one.
//! Reference: <https://docs.nats.io/reference/reference-protocols/nats-protocol>.
//!
//! The parser takes the bytes received so far and returns the first complete operation with
//! the bytes it consumed, or `None` when the operation is incomplete (nothing is consumed; the
//! caller keeps the bytes and calls again with more). Over WebSocket, nats-server's frames are
//! a byte stream: one frame may hold several operations and one operation may span frames, so
//! the caller concatenates message payloads. Limits are checked before anything is kept: a
//! control line is at most [`CONTROL_LINE_BYTES_MAX`] (nats-server's own default), a `MSG`
//! payload at most the caller's `payload_bytes_max`.
//!
//! Not supported, and refused as such: `HMSG` (messages with headers; a client that sends
//! `"headers":false` in its `CONNECT` never gets one).

use std::fmt;

/// Longest control line accepted (the operation and its arguments, without CRLF): nats-server's
/// `max_control_line` default.
pub const CONTROL_LINE_BYTES_MAX: usize = 4096;

/// One operation from the server. Slices borrow the parsed buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO {json}`: the server's description (first operation of every connection, and
    /// again when it changes).
    Info(&'a [u8]),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg {
        subject: &'a [u8],
        sid: u64,
        reply_to: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    /// `+OK` (only in verbose mode).
    Ok,
    /// `-ERR <message>`, with the message as sent (usually in single quotes).
    Err(&'a [u8]),
}

/// Why the bytes are not a server operation; the connection cannot continue.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No CRLF within the longest control line allowed.
    ControlLineTooLong { len: usize, max: usize },
    /// A `MSG` announces more payload than allowed.
    PayloadTooLarge { size: usize, max: usize },
    /// An operation name this client does not know (the first bytes, lossily).
    UnknownOp(String),
    /// `HMSG`: headers were not asked for.
    HeadersUnsupported,
    /// A `MSG` line without subject, sid and size, or with a non-number for either number.
    BadMsgArgs,
    /// A `MSG` payload not followed by CRLF.
    BadPayloadEnd,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::ControlLineTooLong { len, max } => {
                write!(f, "control line of {len}+ bytes (max {max})")
            }
            ParseError::PayloadTooLarge { size, max } => {
                write!(f, "MSG payload of {size} bytes (max {max})")
            }
            ParseError::UnknownOp(op) => write!(f, "unknown operation {op:?}"),
            ParseError::HeadersUnsupported => write!(f, "HMSG without headers asked for"),
            ParseError::BadMsgArgs => write!(f, "bad MSG arguments"),
            ParseError::BadPayloadEnd => write!(f, "MSG payload not followed by CRLF"),
        }
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    /// A short name for error counters.
    pub fn cause(&self) -> &'static str {
        match self {
            ParseError::ControlLineTooLong { .. } => "nats_control_line_too_long",
            ParseError::PayloadTooLarge { .. } => "nats_payload_too_large",
            ParseError::UnknownOp(_) => "nats_unknown_op",
            ParseError::HeadersUnsupported => "nats_hmsg_unsupported",
            ParseError::BadMsgArgs => "nats_bad_msg_args",
            ParseError::BadPayloadEnd => "nats_bad_payload_end",
        }
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Parses the first server operation in `buf`: `Ok(None)` when it is not complete yet.
pub fn parse(
    buf: &[u8],
    payload_bytes_max: usize,
) -> Result<Option<(ServerOp<'_>, usize)>, ParseError> {
    // The control line ends at the first CRLF; look no further than the limit allows.
    let window = &buf[..buf.len().min(CONTROL_LINE_BYTES_MAX + 2)];
    let Some(line_len) = window.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= CONTROL_LINE_BYTES_MAX + 2 {
            return Err(ParseError::ControlLineTooLong {
                len: buf.len(),
                max: CONTROL_LINE_BYTES_MAX,
            });
        }
        return Ok(None);
    };
    debug_assert!(line_len <= CONTROL_LINE_BYTES_MAX);
    let line = &buf[..line_len];
    let after_line = line_len + 2;
    let name_len = line.iter().position(|&b| is_space(b)).unwrap_or(line.len());
    let (name, args) = line.split_at(name_len);
    let args = trim(args);
    let op = match name.to_ascii_uppercase().as_slice() {
        b"MSG" => return parse_msg(buf, args, after_line, payload_bytes_max),
        b"HMSG" => return Err(ParseError::HeadersUnsupported),
        b"INFO" => ServerOp::Info(args),
        b"PING" => ServerOp::Ping,
        b"PONG" => ServerOp::Pong,
        b"+OK" => ServerOp::Ok,
        b"-ERR" => ServerOp::Err(args),
        _ => {
            let shown = &name[..name.len().min(16)];
            return Err(ParseError::UnknownOp(
                String::from_utf8_lossy(shown).into_owned(),
            ));
        }
    };
    Ok(Some((op, after_line)))
}

/// The `MSG` operation whose arguments are `args` and whose payload starts at `payload_at`.
fn parse_msg<'a>(
    buf: &'a [u8],
    args: &'a [u8],
    payload_at: usize,
    payload_bytes_max: usize,
) -> Result<Option<(ServerOp<'a>, usize)>, ParseError> {
    let mut fields = args.split(|&b| is_space(b)).filter(|f| !f.is_empty());
    let (subject, sid, a3, a4) = (fields.next(), fields.next(), fields.next(), fields.next());
    if fields.next().is_some() {
        return Err(ParseError::BadMsgArgs);
    }
    let (subject, sid, reply_to, size) = match (subject, sid, a3, a4) {
        (Some(s), Some(id), Some(n), None) => (s, id, None, n),
        (Some(s), Some(id), Some(r), Some(n)) => (s, id, Some(r), n),
        _ => return Err(ParseError::BadMsgArgs),
    };
    let sid = number(sid).ok_or(ParseError::BadMsgArgs)?;
    let size = number(size).ok_or(ParseError::BadMsgArgs)?;
    let size = usize::try_from(size).map_err(|_| ParseError::BadMsgArgs)?;
    if size > payload_bytes_max {
        return Err(ParseError::PayloadTooLarge {
            size,
            max: payload_bytes_max,
        });
    }
    let end = payload_at + size;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ParseError::BadPayloadEnd);
    }
    let op = ServerOp::Msg {
        subject,
        sid,
        reply_to,
        payload: &buf[payload_at..end],
    };
    Ok(Some((op, end + 2)))
}

/// A decimal number of at most 19 digits (no sign, no overflow).
fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// A subject or token as the protocol carries it: non-empty, no whitespace or control bytes.
fn check_token(s: &str) {
    assert!(
        !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f),
        "not a NATS subject: {s:?}"
    );
}

/// `CONNECT {...}`: no `+OK` per operation (verbose off), no headers, the protocol version that
/// allows asynchronous `INFO`; with `auth_token` when the server wants one.
pub fn encode_connect(out: &mut Vec<u8>, auth_token: Option<&str>) {
    let mut options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": false,
        "no_responders": false,
    });
    if let Some(token) = auth_token {
        options["auth_token"] = serde_json::Value::from(token);
    }
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(options.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `SUB <subject> <sid>`.
pub fn encode_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    check_token(subject);
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

/// `PUB <subject> <#bytes>` and the payload.
pub fn encode_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    check_token(subject);
    out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

pub fn encode_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

pub fn encode_pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of `stream`, parsed in order (the stream must end on an operation).
    fn parse_all(stream: &[u8], max: usize) -> Result<Vec<String>, ParseError> {
        let mut at = 0;
        let mut ops = Vec::new();
        while at < stream.len() {
            let (op, n) = parse(&stream[at..], max)?.expect("a complete operation");
            assert!(n > 0);
            ops.push(format!("{op:?}"));
            at += n;
        }
        Ok(ops)
    }

    const STREAM: &[u8] = b"INFO {\"server_id\":\"X\",\"max_payload\":1048576} \r\n\
        PING\r\n+OK\r\nMSG dev.a 1 5\r\nhello\r\nmsg dev.b\t22  _INBOX.x  0\r\n\r\n\
        PONG\r\n-ERR 'Authorization Violation'\r\nMSG a.b 3 4\r\nab\r\n\r\n";

    #[test]
    fn a_stream_of_server_operations() {
        let mut at = 0;
        let mut got = Vec::new();
        while at < STREAM.len() {
            let (op, n) = parse(&STREAM[at..], 1024).unwrap().unwrap();
            got.push(match op {
                ServerOp::Info(j) => format!("INFO {}", String::from_utf8_lossy(j)),
                ServerOp::Msg {
                    subject,
                    sid,
                    reply_to,
                    payload,
                } => format!(
                    "MSG {} {sid} {:?} {:?}",
                    String::from_utf8_lossy(subject),
                    reply_to.map(|r| String::from_utf8_lossy(r).into_owned()),
                    String::from_utf8_lossy(payload)
                ),
                ServerOp::Ping => "PING".into(),
                ServerOp::Pong => "PONG".into(),
                ServerOp::Ok => "+OK".into(),
                ServerOp::Err(e) => format!("-ERR {}", String::from_utf8_lossy(e)),
            });
            at += n;
        }
        assert_eq!(
            got,
            [
                "INFO {\"server_id\":\"X\",\"max_payload\":1048576}",
                "PING",
                "+OK",
                "MSG dev.a 1 None \"hello\"",
                "MSG dev.b 22 Some(\"_INBOX.x\") \"\"",
                "PONG",
                "-ERR 'Authorization Violation'",
                // The payload may hold CRLF: only the announced size counts.
                "MSG a.b 3 None \"ab\\r\\n\"",
            ]
        );
    }

    /// Split at every offset: the first part gives every operation that is complete in it
    /// and `None` for the rest (consuming nothing); with the second part appended, the same
    /// operations as the whole stream.
    #[test]
    fn split_at_every_offset() {
        let whole = parse_all(STREAM, 1024).unwrap();
        for cut in 0..=STREAM.len() {
            let mut buf = STREAM[..cut].to_vec();
            let mut ops = Vec::new();
            let mut consumed = 0;
            while let Some((op, n)) = parse(&buf[consumed..], 1024).unwrap() {
                ops.push(format!("{op:?}"));
                consumed += n;
            }
            assert!(whole.starts_with(&ops), "cut {cut}");
            buf.extend_from_slice(&STREAM[cut..]);
            let rest = parse_all(&buf[consumed..], 1024).unwrap();
            ops.extend(rest);
            assert_eq!(ops, whole, "cut {cut}");
        }
    }

    /// Byte by byte: only the last byte of each operation completes it.
    #[test]
    fn one_byte_at_a_time() {
        let mut buf = Vec::new();
        let mut ops = 0;
        for &b in STREAM {
            buf.push(b);
            if let Some((_, n)) = parse(&buf, 1024).unwrap() {
                assert_eq!(n, buf.len());
                buf.clear();
                ops += 1;
            }
        }
        assert!(buf.is_empty());
        assert_eq!(ops, 8);
    }

    #[test]
    fn limits_are_checked_before_the_bytes_arrive() {
        // A payload above the limit is refused from its control line alone.
        assert_eq!(
            parse(b"MSG a 1 2000\r\n", 1024),
            Err(ParseError::PayloadTooLarge {
                size: 2000,
                max: 1024
            })
        );
        // A control line without CRLF: incomplete up to the limit, then refused.
        let long = vec![b'x'; CONTROL_LINE_BYTES_MAX + 1];
        assert_eq!(parse(&long, 1024), Ok(None));
        let longer = vec![b'x'; CONTROL_LINE_BYTES_MAX + 2];
        assert!(matches!(
            parse(&longer, 1024),
            Err(ParseError::ControlLineTooLong { .. })
        ));
        let mut at_limit = b"INFO ".to_vec();
        at_limit.resize(CONTROL_LINE_BYTES_MAX, b'x');
        at_limit.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse(&at_limit, 1024),
            Ok(Some((ServerOp::Info(_), _)))
        ));
    }

    #[test]
    fn malformed_operations_are_refused() {
        for (bytes, want) in [
            (&b"MSG a 1\r\n"[..], ParseError::BadMsgArgs),
            (b"MSG a x 3\r\nabc\r\n", ParseError::BadMsgArgs),
            (b"MSG a 1 -3\r\n", ParseError::BadMsgArgs),
            (b"MSG a 1 r 3 4\r\n", ParseError::BadMsgArgs),
            (b"MSG a 1 99999999999999999999\r\n", ParseError::BadMsgArgs),
            (b"MSG a 1 3\r\nabcd\r\n", ParseError::BadPayloadEnd),
            (b"HMSG a 1 3 5\r\n", ParseError::HeadersUnsupported),
            (b"HELLO\r\n", ParseError::UnknownOp("HELLO".into())),
        ] {
            assert_eq!(
                parse(bytes, 1024),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn client_operations() {
        let mut out = Vec::new();
        encode_sub(&mut out, "dev.lg-1", 1);
        encode_pub(&mut out, "dev.lg-2", b"ab\r\n");
        encode_ping(&mut out);
        encode_pong(&mut out);
        assert_eq!(
            out,
            b"SUB dev.lg-1 1\r\nPUB dev.lg-2 4\r\nab\r\n\r\nPING\r\nPONG\r\n"
        );
        out.clear();
        encode_connect(&mut out, Some("to\"ken"));
        let line = std::str::from_utf8(&out).unwrap();
        let json = line
            .strip_prefix("CONNECT ")
            .and_then(|l| l.strip_suffix("\r\n"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["auth_token"], "to\"ken");
        assert_eq!(v["verbose"], false);
        assert_eq!(v["headers"], false);
        out.clear();
        encode_connect(&mut out, None);
        assert!(!String::from_utf8_lossy(&out).contains("auth_token"));
    }

    #[test]
    #[should_panic(expected = "not a NATS subject")]
    fn subjects_with_spaces_are_a_bug() {
        encode_sub(&mut Vec::new(), "dev a", 1);
    }
}
