//! The NATS client protocol, sans-IO: the operations a client sends (`CONNECT`, `PUB`, `HPUB`,
//! `SUB`, `UNSUB`, `PING`, `PONG`) encoded into a buffer, and the ones a server sends (`INFO`,
//! `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`) parsed from one.
//! Reference: <https://docs.nats.io/reference/reference-protocols/nats-protocol>.
//!
//! One codec for the tree: the gateway's own NATS connection ([`super::Client`]) and the
//! loadgen's NATS-over-WebSocket devices both use it.
//!
//! The parser takes the bytes received so far and returns the first complete operation with
//! the bytes it consumed, or `None` when the operation is incomplete (nothing is consumed; the
//! caller keeps the bytes and calls again with more). Slices borrow the caller's buffer: a
//! message is never copied here. Limits are checked before anything is kept: a control line is
//! at most [`CONTROL_LINE_BYTES_MAX`] (nats-server's own default), a `MSG`/`HMSG` (header block
//! and payload together, as nats-server counts `max_payload`) at most the caller's
//! `payload_bytes_max`; an `HMSG` header block must start with `NATS/1.0` and end with an empty
//! line.

use std::fmt;
use std::io::Write as _;

/// Longest control line accepted (the operation and its arguments, without CRLF): nats-server's
/// `max_control_line` default.
pub const CONTROL_LINE_BYTES_MAX: usize = 4096;

/// First bytes of every header block (`NATS/1.0`, then an optional status code and description).
pub const HEADER_VERSION: &str = "NATS/1.0";

/// One operation from the server. Slices borrow the parsed buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO {json}`: the server's description (first operation of every connection, and
    /// again when it changes).
    Info(&'a [u8]),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` or `HMSG <subject> <sid> [reply-to]
    /// <#header bytes> <#total bytes>`, and its header block (`HMSG` only) and payload.
    Msg {
        /// The subject it was published on.
        subject: &'a [u8],
        /// The subscription it came through.
        sid: u64,
        /// Where an answer goes.
        reply_to: Option<&'a [u8]>,
        /// The whole header block of an `HMSG`, from `NATS/1.0` to the empty line that ends it
        /// (read it with [`Headers`]).
        headers: Option<&'a [u8]>,
        /// The body.
        payload: &'a [u8],
    },
    /// `PING`: the server wants a `PONG`.
    Ping,
    /// `PONG`: the answer to the client's oldest unanswered `PING`.
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
    ControlLineTooLong {
        /// Bytes seen without CRLF.
        len: usize,
        /// [`CONTROL_LINE_BYTES_MAX`].
        max: usize,
    },
    /// A `MSG`/`HMSG` announces more bytes (headers and payload) than allowed.
    PayloadTooLarge {
        /// The size announced.
        size: usize,
        /// The caller's limit.
        max: usize,
    },
    /// An operation name this client does not know (the first bytes, lossily).
    UnknownOp(String),
    /// A `MSG`/`HMSG` line without subject, sid and sizes, with a non-number for a number, or
    /// with a header size above the total size.
    BadMsgArgs,
    /// A `MSG`/`HMSG` payload not followed by CRLF.
    BadPayloadEnd,
    /// An `HMSG` header block that does not start with `NATS/1.0` or does not end with an
    /// empty line.
    BadHeaders,
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
            ParseError::BadMsgArgs => write!(f, "bad MSG arguments"),
            ParseError::BadPayloadEnd => write!(f, "MSG payload not followed by CRLF"),
            ParseError::BadHeaders => write!(f, "HMSG header block malformed"),
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
            ParseError::BadMsgArgs => "nats_bad_msg_args",
            ParseError::BadPayloadEnd => "nats_bad_payload_end",
            ParseError::BadHeaders => "nats_bad_headers",
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
    let op = if name.eq_ignore_ascii_case(b"MSG") {
        return parse_msg(buf, args, after_line, payload_bytes_max, false);
    } else if name.eq_ignore_ascii_case(b"HMSG") {
        return parse_msg(buf, args, after_line, payload_bytes_max, true);
    } else if name.eq_ignore_ascii_case(b"INFO") {
        ServerOp::Info(args)
    } else if name.eq_ignore_ascii_case(b"PING") {
        ServerOp::Ping
    } else if name.eq_ignore_ascii_case(b"PONG") {
        ServerOp::Pong
    } else if name.eq_ignore_ascii_case(b"+OK") {
        ServerOp::Ok
    } else if name.eq_ignore_ascii_case(b"-ERR") {
        ServerOp::Err(args)
    } else {
        let shown = &name[..name.len().min(16)];
        return Err(ParseError::UnknownOp(
            String::from_utf8_lossy(shown).into_owned(),
        ));
    };
    Ok(Some((op, after_line)))
}

/// The `MSG`/`HMSG` operation whose arguments are `args` and whose body (header block, then
/// payload) starts at `body_at`.
fn parse_msg<'a>(
    buf: &'a [u8],
    args: &'a [u8],
    body_at: usize,
    payload_bytes_max: usize,
    with_headers: bool,
) -> Result<Option<(ServerOp<'a>, usize)>, ParseError> {
    let mut fields = args.split(|&b| is_space(b)).filter(|f| !f.is_empty());
    let mut f = [None; 5];
    let mut count = 0;
    for field in fields.by_ref().take(5) {
        f[count] = Some(field);
        count += 1;
    }
    if fields.next().is_some() {
        return Err(ParseError::BadMsgArgs);
    }
    let numbers = if with_headers { 2 } else { 1 };
    // subject, sid, [reply-to], sizes...
    let reply_to = match count.checked_sub(2 + numbers) {
        Some(0) => None,
        Some(1) => f[2],
        _ => return Err(ParseError::BadMsgArgs),
    };
    let (Some(subject), Some(sid)) = (f[0], f[1]) else {
        return Err(ParseError::BadMsgArgs);
    };
    let size_of = |i: usize| -> Result<usize, ParseError> {
        let n = f[i].and_then(number).ok_or(ParseError::BadMsgArgs)?;
        usize::try_from(n).map_err(|_| ParseError::BadMsgArgs)
    };
    let sid = number(sid).ok_or(ParseError::BadMsgArgs)?;
    let total = size_of(count - 1)?;
    let header_size = if with_headers { size_of(count - 2)? } else { 0 };
    if total > payload_bytes_max {
        return Err(ParseError::PayloadTooLarge {
            size: total,
            max: payload_bytes_max,
        });
    }
    if header_size > total {
        return Err(ParseError::BadMsgArgs);
    }
    let end = body_at + total;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ParseError::BadPayloadEnd);
    }
    let headers = if with_headers {
        let block = &buf[body_at..body_at + header_size];
        if !block.starts_with(HEADER_VERSION.as_bytes()) || !block.ends_with(b"\r\n\r\n") {
            return Err(ParseError::BadHeaders);
        }
        Some(block)
    } else {
        None
    };
    let op = ServerOp::Msg {
        subject,
        sid,
        reply_to,
        headers,
        payload: &buf[body_at + header_size..end],
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

/// A header block as `HMSG` carries it (checked by [`parse`]: starts with `NATS/1.0`, ends with
/// an empty line), read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers<'a> {
    block: &'a [u8],
}

impl<'a> Headers<'a> {
    /// The block of an `HMSG` ([`ServerOp::Msg::headers`]).
    pub fn new(block: &'a [u8]) -> Headers<'a> {
        Headers { block }
    }

    /// The raw block, CRLFs included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.block
    }

    fn first_line(&self) -> &'a [u8] {
        let end = self
            .block
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(self.block.len());
        &self.block[..end]
    }

    /// The status code of the first line (`NATS/1.0 503` for "no responders"), if it has one.
    pub fn status(&self) -> Option<u16> {
        let rest = self.first_line().get(HEADER_VERSION.len()..)?;
        let rest = trim(rest);
        let code = &rest[..rest.iter().position(|&b| is_space(b)).unwrap_or(rest.len())];
        if code.len() != 3 {
            return None;
        }
        number(code).and_then(|n| u16::try_from(n).ok())
    }

    /// The `name: value` pairs after the first line, in order; lines that are not UTF-8 or have
    /// no colon are skipped.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let first = self.first_line().len();
        self.block[first..]
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let colon = line.iter().position(|&b| b == b':')?;
                let name = std::str::from_utf8(&line[..colon]).ok()?;
                let value = std::str::from_utf8(trim(&line[colon + 1..])).ok()?;
                Some((name.trim(), value))
            })
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// Whether `s` can be a subject, reply subject or queue token on the wire: non-empty, no
/// whitespace or control bytes.
pub fn is_valid_subject(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// Whether `(name, value)` can be a header: a name of visible ASCII without `:`, a value
/// without CR or LF.
pub fn is_valid_header(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b > b' ' && b < 0x7f && b != b':')
        && !value.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// A subject or token as the protocol carries it: a caller that passes anything else has a bug.
fn check_token(s: &str) {
    assert!(is_valid_subject(s), "not a NATS subject: {s:?}");
}

/// What `CONNECT` says. Verbose and pedantic are always off (no `+OK` per operation); protocol
/// 1 (asynchronous `INFO`).
#[derive(Clone, Debug, Default)]
pub struct Connect<'a> {
    /// The client's name, shown by the server's monitoring (`/connz`).
    pub name: Option<&'a str>,
    /// `headers`: the client understands `HMSG` and may send `HPUB`.
    pub headers: bool,
    /// `no_responders`: a request to a subject nobody subscribes to gets an immediate `HMSG`
    /// with status 503 (needs `headers`).
    pub no_responders: bool,
    /// The client speaks TLS.
    pub tls_required: bool,
    /// `auth_token`.
    pub auth_token: Option<&'a str>,
    /// `user` and `pass`.
    pub user_password: Option<(&'a str, &'a str)>,
    /// `jwt`: the user JWT of a `.creds` file.
    pub jwt: Option<&'a str>,
    /// `nkey`: the public user NKey (`U...`), without a JWT.
    pub nkey: Option<&'a str>,
    /// `sig`: the server's nonce signed with the user's NKey, base64url without padding.
    pub sig: Option<&'a str>,
}

/// `CONNECT {...}`.
pub fn encode_connect(out: &mut Vec<u8>, connect: &Connect<'_>) {
    let mut options = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": connect.tls_required,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": connect.headers,
        "no_responders": connect.no_responders && connect.headers,
    });
    let fields = [
        ("name", connect.name),
        ("auth_token", connect.auth_token),
        ("user", connect.user_password.map(|(u, _)| u)),
        ("pass", connect.user_password.map(|(_, p)| p)),
        ("jwt", connect.jwt),
        ("nkey", connect.nkey),
        ("sig", connect.sig),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            options[key] = serde_json::Value::from(value);
        }
    }
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(options.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `SUB <subject> <sid>`.
pub fn encode_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    check_token(subject);
    let _ = write!(out, "SUB {subject} {sid}\r\n");
}

/// `UNSUB <sid>`.
pub fn encode_unsub(out: &mut Vec<u8>, sid: u64) {
    let _ = write!(out, "UNSUB {sid}\r\n");
}

/// `PUB <subject> [reply-to] <#bytes>` and the payload.
pub fn encode_pub(out: &mut Vec<u8>, subject: &str, reply_to: Option<&str>, payload: &[u8]) {
    check_token(subject);
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    if let Some(reply) = reply_to {
        check_token(reply);
        out.push(b' ');
        out.extend_from_slice(reply.as_bytes());
    }
    let _ = write!(out, " {}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Bytes of the header block [`encode_hpub`] writes for `headers`.
pub fn header_block_len(headers: &[(&str, &str)]) -> usize {
    HEADER_VERSION.len()
        + 2
        + headers
            .iter()
            .map(|(n, v)| n.len() + 2 + v.len() + 2)
            .sum::<usize>()
        + 2
}

/// `HPUB <subject> [reply-to] <#header bytes> <#total bytes>`, the header block and the payload.
/// Every header must pass [`is_valid_header`] (a caller that passes anything else has a bug).
pub fn encode_hpub(
    out: &mut Vec<u8>,
    subject: &str,
    reply_to: Option<&str>,
    headers: &[(&str, &str)],
    payload: &[u8],
) {
    check_token(subject);
    let header_len = header_block_len(headers);
    out.extend_from_slice(b"HPUB ");
    out.extend_from_slice(subject.as_bytes());
    if let Some(reply) = reply_to {
        check_token(reply);
        out.push(b' ');
        out.extend_from_slice(reply.as_bytes());
    }
    let _ = write!(
        out,
        " {header_len} {}\r\n{HEADER_VERSION}\r\n",
        header_len + payload.len()
    );
    for (name, value) in headers {
        assert!(is_valid_header(name, value), "not a NATS header: {name:?}");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// `PING`.
pub fn encode_ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

/// `PONG`.
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
        PONG\r\n-ERR 'Authorization Violation'\r\nMSG a.b 3 4\r\nab\r\n\r\n\
        HMSG _INBOX.k.1 9 12 14\r\nNATS/1.0\r\n\r\nhi\r\n\
        hmsg _INBOX.k.2 9 r.x 16 16\r\nNATS/1.0 503\r\n\r\n\r\n\
        HMSG a 1 29 32\r\nNATS/1.0\r\nK: v\r\nLong: a b\r\n\r\nx\r\n\r\n";

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
                    headers,
                    payload,
                } => format!(
                    "MSG {} {sid} {:?} {:?}{}",
                    String::from_utf8_lossy(subject),
                    reply_to.map(|r| String::from_utf8_lossy(r).into_owned()),
                    String::from_utf8_lossy(payload),
                    headers.map_or(String::new(), |h| {
                        let h = Headers::new(h);
                        format!(
                            " status {:?} {:?}",
                            h.status(),
                            h.iter().collect::<Vec<_>>()
                        )
                    })
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
                "MSG _INBOX.k.1 9 None \"hi\" status None []",
                "MSG _INBOX.k.2 9 Some(\"r.x\") \"\" status Some(503) []",
                // The payload may hold CRLF; a header value keeps its inner spaces.
                "MSG a 1 None \"x\\r\\n\" status None [(\"K\", \"v\"), (\"Long\", \"a b\")]",
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
        assert_eq!(ops, 11);
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
            (b"HMSG a 1 5\r\nhello\r\n", ParseError::BadMsgArgs),
            (b"HMSG a 1 6 5\r\nhello\r\n", ParseError::BadMsgArgs),
            (b"HMSG a 1 2 5\r\nhello\r\n", ParseError::BadHeaders),
            (
                b"HMSG a 1 12 12\r\nNATS/1.0\r\nxx\r\n",
                ParseError::BadHeaders,
            ),
            (
                b"HMSG a 1 r 10 2000\r\n",
                ParseError::PayloadTooLarge {
                    size: 2000,
                    max: 1024,
                },
            ),
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
        encode_pub(&mut out, "dev.lg-2", None, b"ab\r\n");
        encode_pub(&mut out, "a", Some("_INBOX.x.1"), b"");
        encode_unsub(&mut out, 7);
        encode_ping(&mut out);
        encode_pong(&mut out);
        assert_eq!(
            out,
            b"SUB dev.lg-1 1\r\nPUB dev.lg-2 4\r\nab\r\n\r\nPUB a _INBOX.x.1 0\r\n\r\n\
              UNSUB 7\r\nPING\r\nPONG\r\n"
        );
        out.clear();
        encode_connect(
            &mut out,
            &Connect {
                auth_token: Some("to\"ken"),
                name: Some("tether n1"),
                headers: true,
                no_responders: true,
                ..Connect::default()
            },
        );
        let line = std::str::from_utf8(&out).unwrap();
        let json = line
            .strip_prefix("CONNECT ")
            .and_then(|l| l.strip_suffix("\r\n"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["auth_token"], "to\"ken");
        assert_eq!(v["verbose"], false);
        assert_eq!(v["pedantic"], false);
        assert_eq!(v["headers"], true);
        assert_eq!(v["no_responders"], true);
        assert_eq!(v["name"], "tether n1");
        out.clear();
        encode_connect(
            &mut out,
            &Connect {
                user_password: Some(("u", "p")),
                no_responders: true,
                ..Connect::default()
            },
        );
        let line = String::from_utf8_lossy(&out);
        assert!(!line.contains("auth_token") && !line.contains("\"name\""));
        assert!(line.contains("\"user\":\"u\"") && line.contains("\"pass\":\"p\""));
        // No responders needs headers (the 503 status is a header block).
        assert!(line.contains("\"no_responders\":false") && line.contains("\"headers\":false"));
    }

    #[test]
    #[should_panic(expected = "not a NATS subject")]
    fn subjects_with_spaces_are_a_bug() {
        encode_sub(&mut Vec::new(), "dev a", 1);
    }

    /// HPUB as nats-server reads it: header size counts the block, total counts block and
    /// payload; the block parses back through `Headers`.
    #[test]
    fn hpub_round_trips_through_hmsg() {
        let headers = [("Tether-Arrival-Us", "1700000000000000"), ("K", "a b")];
        let mut out = Vec::new();
        encode_hpub(&mut out, "dev.x", Some("_INBOX.y.2"), &headers, b"body");
        let text = String::from_utf8(out.clone()).unwrap();
        let block_len = header_block_len(&headers);
        assert!(text.starts_with(&format!(
            "HPUB dev.x _INBOX.y.2 {block_len} {}\r\nNATS/1.0\r\n",
            block_len + 4
        )));
        // The server relays the same body as HMSG with a sid.
        let relayed = text.replacen("HPUB dev.x _INBOX.y.2", "HMSG dev.x 5 _INBOX.y.2", 1);
        let (op, n) = parse(relayed.as_bytes(), 1024).unwrap().unwrap();
        assert_eq!(n, relayed.len());
        let ServerOp::Msg {
            headers: Some(block),
            payload,
            sid: 5,
            ..
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(payload, b"body");
        let h = Headers::new(block);
        assert_eq!(h.status(), None);
        assert_eq!(h.iter().collect::<Vec<_>>(), headers);
        assert_eq!(h.get("tether-arrival-us"), Some("1700000000000000"));
    }

    #[test]
    fn status_lines() {
        for (block, want) in [
            (&b"NATS/1.0 503\r\n\r\n"[..], Some(503)),
            (b"NATS/1.0 408 Request Timeout\r\n\r\n", Some(408)),
            (b"NATS/1.0\r\nA: b\r\n\r\n", None),
            (b"NATS/1.0 5030\r\n\r\n", None),
        ] {
            assert_eq!(Headers::new(block).status(), want);
        }
    }

    proptest::proptest! {
        /// Any subject, reply, headers and payload published come back whole from the parser
        /// (as the server relays them), however the stream is cut.
        #[test]
        fn published_messages_parse_back(
            subject in "[a-z0-9_.>*-]{1,40}",
            reply in proptest::option::of("[A-Za-z0-9_.]{1,30}"),
            headers in proptest::collection::vec(("[A-Za-z0-9-]{1,12}", "[ -~]{0,20}"), 0..4),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            cut in 0usize..1000,
        ) {
            let pairs: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let mut wire = Vec::new();
            let block_len = if pairs.is_empty() { 0 } else { header_block_len(&pairs) };
            if pairs.is_empty() {
                encode_pub(&mut wire, &subject, reply.as_deref(), &payload);
            } else {
                encode_hpub(&mut wire, &subject, reply.as_deref(), &pairs, &payload);
            }
            // PUB/HPUB <subject> [reply] sizes -> MSG/HMSG <subject> 1 [reply] sizes.
            let line_end = wire.windows(2).position(|w| w == b"\r\n").unwrap();
            let line = String::from_utf8(wire[..line_end].to_vec()).unwrap();
            let mut words: Vec<&str> = line.split(' ').collect();
            words[0] = if pairs.is_empty() { "MSG" } else { "HMSG" };
            words.insert(2, "1");
            let mut relayed = words.join(" ").into_bytes();
            relayed.extend_from_slice(&wire[line_end..]);
            let cut = cut % (relayed.len() + 1);
            if cut < relayed.len() {
                proptest::prop_assert_eq!(parse(&relayed[..cut], 4096).unwrap(), None);
            }
            let (op, n) = parse(&relayed, 4096).unwrap().unwrap();
            proptest::prop_assert_eq!(n, relayed.len());
            let ServerOp::Msg { subject: s, sid, reply_to, headers: block, payload: p } = op else {
                panic!("{op:?}")
            };
            proptest::prop_assert_eq!(s, subject.as_bytes());
            proptest::prop_assert_eq!(sid, 1);
            proptest::prop_assert_eq!(reply_to, reply.as_deref().map(str::as_bytes));
            proptest::prop_assert_eq!(p, &payload[..]);
            proptest::prop_assert_eq!(block.map_or(0, <[u8]>::len), block_len);
            let got: Vec<(&str, &str)> = block.map(|b| Headers::new(b).iter().collect()).unwrap_or_default();
            let want: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (*n, v.trim_matches([' ', '\t']))).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
