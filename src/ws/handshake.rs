//! The opening handshake (RFC 6455 §4): server-side parsing and validation of the HTTP/1.1
//! upgrade request, the 101 and error responses, and the client side (request builder and 101
//! validation) used by the load generator.
//!
//! Parsing is incremental in the sans-IO sense: call [`parse_request`] with everything received
//! so far; `Ok(None)` means "need more bytes" and consumes nothing. The head-size limit is
//! enforced on the bytes given, so a peer cannot make the server buffer more than
//! `head_bytes_max` bytes of head.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// GUID appended to the key before hashing (RFC 6455 §1.3).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits on the request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Largest request head (request line + headers + CRLFCRLF). Default 8192 bytes, the
    /// common web-server default; browsers send well under 2 KiB.
    pub head_bytes_max: usize,
    /// Most header lines. Default 64.
    pub headers_max: usize,
}

impl Default for HandshakeLimits {
    fn default() -> HandshakeLimits {
        HandshakeLimits {
            head_bytes_max: 8192,
            headers_max: 64,
        }
    }
}

/// A validated upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Request-target path without the query.
    pub path: String,
    /// Raw query string without '?'.
    pub query: Option<String>,
    /// Host header value.
    pub host: String,
    /// Sec-WebSocket-Key as sent (validated: base64 of 16 bytes).
    pub key: String,
    /// Sec-WebSocket-Protocol tokens, in order, trimmed.
    pub protocols: Vec<String>,
    /// Sec-WebSocket-Extensions offers (raw, comma-separated items trimmed); informational.
    pub extensions: Vec<String>,
    /// Authorization header value.
    pub authorization: Option<String>,
    /// Origin header value.
    pub origin: Option<String>,
}

impl UpgradeRequest {
    /// The first query parameter called `name`, percent-decoded (`+` decodes to a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// The Sec-WebSocket-Accept value for this request.
    pub fn accept_key(&self) -> String {
        accept_key(&self.key)
    }
}

/// Decodes `%XX` and `+`; malformed escapes stay literal, invalid UTF-8 becomes U+FFFD.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Why an upgrade request is rejected; [`HandshakeError::status`] is the HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not valid HTTP/1.1 or a required header is missing or duplicated (400).
    Malformed(&'static str),
    /// A method other than GET (405).
    MethodNotAllowed,
    /// Sec-WebSocket-Version missing or not 13 (426 with `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// No CRLFCRLF within `head_bytes_max` bytes (431).
    HeadTooLarge {
        /// Bytes received without a complete head.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More header lines than `headers_max` (431).
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// `Upgrade: websocket` or `Connection: Upgrade` missing (400).
    NotUpgrade(&'static str),
    /// Sec-WebSocket-Key missing, duplicated, or not base64 of 16 bytes (400).
    BadKey,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Malformed(_)
            | HandshakeError::NotUpgrade(_)
            | HandshakeError::BadKey => 400,
            HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::HeadTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => 431,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(why) => write!(f, "malformed upgrade request: {why}"),
            HandshakeError::MethodNotAllowed => f.write_str("method not allowed: use GET"),
            HandshakeError::UnsupportedVersion => {
                f.write_str("unsupported WebSocket version: use Sec-WebSocket-Version: 13")
            }
            HandshakeError::HeadTooLarge { size, max } => {
                write!(f, "request head {size} bytes > head_bytes_max {max}")
            }
            HandshakeError::TooManyHeaders { max } => {
                write!(f, "more than headers_max {max} header lines")
            }
            HandshakeError::NotUpgrade(why) => write!(f, "not a WebSocket upgrade: {why}"),
            HandshakeError::BadKey => {
                f.write_str("Sec-WebSocket-Key missing or not base64 of 16 bytes")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Sec-WebSocket-Accept for `key`: base64(sha1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WEBSOCKET_GUID);
    BASE64.encode(h.finalize())
}

/// Whether a comma-separated header value contains `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Appends the trimmed, non-empty items of a comma-separated value.
fn push_list(out: &mut Vec<String>, value: &str) {
    out.extend(
        value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
    );
}

fn header_str<'h>(value: &'h [u8], what: &'static str) -> Result<&'h str, HandshakeError> {
    std::str::from_utf8(value)
        .map(str::trim)
        .map_err(|_| HandshakeError::Malformed(what))
}

/// Parses and validates an upgrade request from the front of `buf`.
///
/// `Ok(None)`: the head is incomplete and within limits; nothing consumed.
/// `Ok(Some((request, head_len)))`: bytes after `head_len` belong to the WebSocket stream.
/// `Err`: reject with [`write_handshake_error`] and close. A buffer of more than
/// `head_bytes_max` bytes without the terminating CRLFCRLF is [`HandshakeError::HeadTooLarge`].
pub fn parse_request(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers_max];
    let mut req = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(limits.head_bytes_max)];
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.head_bytes_max => {
            return Err(HandshakeError::HeadTooLarge {
                size: buf.len(),
                max: limits.head_bytes_max,
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders {
                max: limits.headers_max,
            })
        }
        Err(_) => return Err(HandshakeError::Malformed("invalid HTTP request head")),
    };
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::Malformed("HTTP/1.1 required"));
    }
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(HandshakeError::Malformed(
            "request-target must be an absolute path",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };

    let mut host = None;
    let mut key = None;
    let mut version_13 = None;
    let mut upgrade = false;
    let mut connection = false;
    let mut protocols = Vec::new();
    let mut extensions = Vec::new();
    let mut authorization = None;
    let mut origin = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HandshakeError::Malformed("duplicate Host"));
            }
            host = Some(header_str(h.value, "Host is not UTF-8")?.to_owned());
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(HandshakeError::BadKey);
            }
            key = Some(h.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            let ok = h.value.trim_ascii() == b"13";
            version_13 = Some(version_13.unwrap_or(true) && ok);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            push_list(
                &mut protocols,
                header_str(h.value, "Sec-WebSocket-Protocol is not UTF-8")?,
            );
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            push_list(
                &mut extensions,
                header_str(h.value, "Sec-WebSocket-Extensions is not UTF-8")?,
            );
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(header_str(h.value, "Authorization is not UTF-8")?.to_owned());
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(header_str(h.value, "Origin is not UTF-8")?.to_owned());
        }
    }
    let host = host.ok_or(HandshakeError::Malformed("missing Host"))?;
    if !upgrade {
        return Err(HandshakeError::NotUpgrade("missing Upgrade: websocket"));
    }
    if !connection {
        return Err(HandshakeError::NotUpgrade("missing Connection: Upgrade"));
    }
    if version_13 != Some(true) {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = key.ok_or(HandshakeError::BadKey)?.trim_ascii();
    let mut decoded = [0u8; 18];
    match BASE64.decode_slice(key, &mut decoded) {
        Ok(16) => {}
        _ => return Err(HandshakeError::BadKey),
    }
    // Valid base64 of 16 bytes is ASCII.
    let key = String::from_utf8_lossy(key).into_owned();
    let request = UpgradeRequest {
        path,
        query,
        host,
        key,
        protocols,
        extensions,
        authorization,
        origin,
    };
    Ok(Some((request, head_len)))
}

/// Appends the `101 Switching Protocols` response; `protocol` (one of the offered tokens)
/// becomes `Sec-WebSocket-Protocol`.
pub fn write_accept_response(out: &mut Vec<u8>, req: &UpgradeRequest, protocol: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(req.accept_key().as_bytes());
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Appends a complete HTTP/1.1 error response with `Connection: close`, `Content-Length` and
/// `body` as text; 426 adds `Sec-WebSocket-Version: 13`, 405 adds `Allow: GET`.
pub fn write_error_response(out: &mut Vec<u8>, status: u16, body: &str) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    match status {
        426 => out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"),
        405 => out.extend_from_slice(b"Allow: GET\r\n"),
        _ => {}
    }
    let _ = write!(
        out,
        "Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// Appends the error response for `err`: its status and its message as the body.
pub fn write_handshake_error(out: &mut Vec<u8>, err: &HandshakeError) {
    write_error_response(out, err.status(), &format!("{err}\n"));
}

/// Default bound on a 101 response head read by the client.
const RESPONSE_HEAD_BYTES_MAX: usize = 8192;
/// Most header lines accepted in a response.
const RESPONSE_HEADERS_MAX: usize = 64;

/// Client side of the handshake: remembers what it sent to check the server's answer.
#[derive(Clone, Debug)]
pub struct ClientHandshake {
    key: String,
    expected_accept: String,
    protocols: Vec<String>,
    head_bytes_max: usize,
}

/// A validated 101 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// The subprotocol the server chose, one of those offered.
    pub protocol: Option<String>,
}

/// Why the client rejects the server's response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHandshakeError {
    /// A complete response with a status other than 101.
    Status(u16),
    /// Not valid HTTP, or Upgrade/Connection missing, or an unrequested extension.
    Malformed(&'static str),
    /// Sec-WebSocket-Accept missing or wrong.
    BadAccept,
    /// A subprotocol that was not offered.
    BadProtocol,
    /// No complete head within the limit.
    HeadTooLarge {
        /// Bytes received without a complete head.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientHandshakeError::Status(s) => write!(f, "server answered HTTP {s}, not 101"),
            ClientHandshakeError::Malformed(why) => write!(f, "malformed 101 response: {why}"),
            ClientHandshakeError::BadAccept => f.write_str("wrong Sec-WebSocket-Accept"),
            ClientHandshakeError::BadProtocol => {
                f.write_str("server chose a subprotocol not offered")
            }
            ClientHandshakeError::HeadTooLarge { size, max } => {
                write!(f, "response head {size} bytes > {max}")
            }
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

impl ClientHandshake {
    /// Builds the request with a random 16-byte key. `host` is the Host value, `resource` the
    /// path with optional query, `protocols` the offered subprotocols, `headers` extra headers.
    pub fn new(
        host: &str,
        resource: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> (ClientHandshake, Vec<u8>) {
        let key = BASE64.encode(rand::random::<[u8; 16]>());
        let mut req = Vec::with_capacity(256);
        req.extend_from_slice(b"GET ");
        req.extend_from_slice(if resource.is_empty() { "/" } else { resource }.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        req.extend_from_slice(host.as_bytes());
        req.extend_from_slice(
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
        );
        req.extend_from_slice(key.as_bytes());
        req.extend_from_slice(b"\r\nSec-WebSocket-Version: 13\r\n");
        if !protocols.is_empty() {
            req.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            req.extend_from_slice(protocols.join(", ").as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        for (name, value) in headers {
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(value.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        let hs = ClientHandshake {
            expected_accept: accept_key(&key),
            key,
            protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
            head_bytes_max: RESPONSE_HEAD_BYTES_MAX,
        };
        (hs, req)
    }

    /// Sets the bound on the response head (default 8192 bytes).
    pub fn with_head_bytes_max(mut self, head_bytes_max: usize) -> ClientHandshake {
        self.head_bytes_max = head_bytes_max;
        self
    }

    /// The Sec-WebSocket-Key sent.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `Ok(None)`: incomplete. `Ok(Some((response, consumed)))`: a valid 101 with the right
    /// accept value; bytes after `consumed` are already WebSocket frames.
    pub fn parse_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(ClientResponse, usize)>, ClientHandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
        let mut resp = httparse::Response::new(&mut headers);
        let window = &buf[..buf.len().min(self.head_bytes_max)];
        let head_len = match resp.parse(window) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > self.head_bytes_max => {
                return Err(ClientHandshakeError::HeadTooLarge {
                    size: buf.len(),
                    max: self.head_bytes_max,
                })
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => {
                return Err(ClientHandshakeError::Malformed(
                    "invalid HTTP response head",
                ))
            }
        };
        let status = resp.code.unwrap_or(0);
        if status != 101 {
            return Err(ClientHandshakeError::Status(status));
        }
        let mut upgrade = false;
        let mut connection = false;
        let mut accept_ok = false;
        let mut protocol = None;
        for h in resp.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("upgrade") {
                upgrade |= has_token(h.value, "websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                connection |= has_token(h.value, "upgrade");
            } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
                if accept_ok {
                    return Err(ClientHandshakeError::BadAccept);
                }
                accept_ok = h.value.trim_ascii() == self.expected_accept.as_bytes();
                if !accept_ok {
                    return Err(ClientHandshakeError::BadAccept);
                }
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                let p = std::str::from_utf8(h.value)
                    .map_err(|_| ClientHandshakeError::BadProtocol)?
                    .trim();
                if protocol.is_some() || !self.protocols.iter().any(|o| o == p) {
                    return Err(ClientHandshakeError::BadProtocol);
                }
                protocol = Some(p.to_owned());
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                return Err(ClientHandshakeError::Malformed("extension not offered"));
            }
        }
        if !upgrade {
            return Err(ClientHandshakeError::Malformed(
                "missing Upgrade: websocket",
            ));
        }
        if !connection {
            return Err(ClientHandshakeError::Malformed(
                "missing Connection: Upgrade",
            ));
        }
        if !accept_ok {
            return Err(ClientHandshakeError::BadAccept);
        }
        Ok(Some((ClientResponse { protocol }, head_len)))
    }
}
