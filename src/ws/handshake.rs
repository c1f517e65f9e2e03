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
    /// Every Authorization header value, in order. HTTP allows the header once; a request that
    /// repeats it is passed on as is so the endpoint can refuse it as ambiguous.
    pub authorization: Vec<String>,
    /// Origin header value.
    pub origin: Option<String>,
}

impl UpgradeRequest {
    /// The first query parameter called `name`, percent-decoded (`+` decodes to a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_params(name).next()
    }

    /// Every query parameter called `name`, in order, percent-decoded.
    pub fn query_params<'a>(&'a self, name: &'a str) -> impl Iterator<Item = String> + 'a {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter_map(move |pair| {
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
#[expect(
    clippy::too_many_lines,
    reason = "the RFC 6455 section 4.2.1 checks in the RFC's order"
)]
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
    let mut authorization = Vec::new();
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
            authorization.push(header_str(h.value, "Authorization is not UTF-8")?.to_owned());
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
        Self::new_with_key(host, resource, protocols, headers, rand::random())
    }

    /// [`ClientHandshake::new`] with a given key (its 16 raw bytes): for reproducible tests
    /// and fuzzing. Real clients use `new`, whose key is random as RFC 6455 §4.1 requires.
    pub fn new_with_key(
        host: &str,
        resource: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
        key: [u8; 16],
    ) -> (ClientHandshake, Vec<u8>) {
        let key = BASE64.encode(key);
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

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQUEST: &str = "GET /chat?device=stb%2D1&x=a+b HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(s: &str) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
        parse_request(s.as_bytes(), &HandshakeLimits::default())
    }

    fn err(s: &str) -> HandshakeError {
        parse(s).expect_err("must be rejected")
    }

    fn with_headers(method: &str, headers: &[&str]) -> String {
        let mut s = format!("{method} /ws HTTP/1.1\r\n");
        for h in headers {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s
    }

    const HOST: &str = "Host: a";
    const UPGRADE: &str = "Upgrade: websocket";
    const CONNECTION: &str = "Connection: Upgrade";
    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    const VERSION: &str = "Sec-WebSocket-Version: 13";

    #[test]
    fn rfc_accept_vector() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_rfc_request() {
        let (req, n) = parse(RFC_REQUEST).unwrap().unwrap();
        assert_eq!(n, RFC_REQUEST.len());
        assert_eq!(req.path, "/chat");
        assert_eq!(req.query.as_deref(), Some("device=stb%2D1&x=a+b"));
        assert_eq!(req.query_param("device").as_deref(), Some("stb-1"));
        assert_eq!(req.query_param("x").as_deref(), Some("a b"));
        assert_eq!(req.query_param("nope"), None);
        assert_eq!(req.host, "server.example.com");
        assert_eq!(req.protocols, vec!["chat", "superchat"]);
        assert_eq!(req.origin.as_deref(), Some("http://example.com"));
        assert_eq!(req.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let mut out = Vec::new();
        write_accept_response(&mut out, &req, Some("chat"));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn incomplete_consumes_nothing_and_trailing_bytes_are_not_head() {
        for cut in 0..RFC_REQUEST.len() {
            assert_eq!(parse(&RFC_REQUEST[..cut]), Ok(None), "cut {cut}");
        }
        let mut with_frame = RFC_REQUEST.as_bytes().to_vec();
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, n) = parse_request(&with_frame, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, RFC_REQUEST.len());
    }

    #[test]
    fn tokens_are_case_insensitive_in_lists() {
        let s = with_headers(
            "GET",
            &[
                HOST,
                "upgrade: WebSocket",
                "connection: keep-alive, UPGRADE",
                KEY,
                VERSION,
            ],
        );
        assert!(parse(&s).unwrap().is_some());
        let s = with_headers(
            "GET",
            &[
                HOST,
                "Upgrade: h2c ,  websocket",
                "Connection: keep-alive",
                "Connection: Upgrade",
                KEY,
                VERSION,
            ],
        );
        assert!(parse(&s).unwrap().is_some());
        // "upgraded" is not the token "upgrade".
        let s = with_headers(
            "GET",
            &[HOST, UPGRADE, "Connection: upgraded", KEY, VERSION],
        );
        assert_eq!(
            err(&s),
            HandshakeError::NotUpgrade("missing Connection: Upgrade")
        );
    }

    #[test]
    fn every_failure_has_its_status() {
        let cases: Vec<(String, u16)> = vec![
            ("POST /ws HTTP/1.1\r\nHost: a\r\n\r\n".into(), 405),
            (
                with_headers("PUT", &[HOST, UPGRADE, CONNECTION, KEY, VERSION]),
                405,
            ),
            ("GET /ws HTTP/1.0\r\nHost: a\r\n\r\n".into(), 400),
            ("GARBAGE\0\r\n\r\n".into(), 400),
            ("GET ws HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400),
            (
                with_headers("GET", &[UPGRADE, CONNECTION, KEY, VERSION]),
                400,
            ),
            (
                with_headers("GET", &[HOST, HOST, UPGRADE, CONNECTION, KEY, VERSION]),
                400,
            ),
            (with_headers("GET", &[HOST, CONNECTION, KEY, VERSION]), 400),
            (with_headers("GET", &[HOST, UPGRADE, KEY, VERSION]), 400),
            (
                with_headers("GET", &[HOST, UPGRADE, CONNECTION, VERSION]),
                400,
            ),
            (
                with_headers(
                    "GET",
                    &[
                        HOST,
                        UPGRADE,
                        CONNECTION,
                        "Sec-WebSocket-Key: c2hvcnQ=",
                        VERSION,
                    ],
                ),
                400,
            ),
            (
                with_headers(
                    "GET",
                    &[HOST, UPGRADE, CONNECTION, "Sec-WebSocket-Key: !!!", VERSION],
                ),
                400,
            ),
            (
                with_headers("GET", &[HOST, UPGRADE, CONNECTION, KEY, KEY, VERSION]),
                400,
            ),
            (
                with_headers(
                    "GET",
                    &[HOST, UPGRADE, CONNECTION, KEY, "Sec-WebSocket-Version: 8"],
                ),
                426,
            ),
            (with_headers("GET", &[HOST, UPGRADE, CONNECTION, KEY]), 426),
            (
                with_headers(
                    "GET",
                    &[
                        HOST,
                        UPGRADE,
                        CONNECTION,
                        KEY,
                        VERSION,
                        "Sec-WebSocket-Version: 7",
                    ],
                ),
                426,
            ),
        ];
        for (req, status) in cases {
            let e = err(&req);
            assert_eq!(e.status(), status, "{req:?} -> {e:?}");
        }
    }

    #[test]
    fn head_over_limit_is_431() {
        let limits = HandshakeLimits {
            head_bytes_max: 64,
            headers_max: 64,
        };
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        let e = parse_request(long.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            e,
            HandshakeError::HeadTooLarge {
                size: long.len(),
                max: 64
            }
        );
        assert_eq!(e.status(), 431);
        // Exactly at the limit without CRLFCRLF is still "incomplete".
        assert_eq!(parse_request(&long.as_bytes()[..64], &limits), Ok(None));
        // A complete head longer than the limit is rejected even when fully buffered.
        let full = with_headers("GET", &[HOST, UPGRADE, CONNECTION, KEY, VERSION]);
        let e = parse_request(full.as_bytes(), &limits).unwrap_err();
        assert_eq!(e.status(), 431);
        let many: Vec<String> = (0..70).map(|i| format!("X-H{i}: v")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = err(&with_headers("GET", &refs));
        assert_eq!(e, HandshakeError::TooManyHeaders { max: 64 });
        assert_eq!(e.status(), 431);
    }

    #[test]
    fn error_responses() {
        let mut out = Vec::new();
        write_handshake_error(&mut out, &HandshakeError::UnsupportedVersion);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{s}");
        assert!(s.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(s.contains("\r\nConnection: close\r\n"));
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let mut out = Vec::new();
        write_handshake_error(&mut out, &HandshakeError::MethodNotAllowed);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("HTTP/1.1 405 Method Not Allowed\r\n")
                && s.contains("\r\nAllow: GET\r\n")
        );
        let mut out = Vec::new();
        write_error_response(&mut out, 431, "too big");
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 431 ") && s.ends_with("\r\n\r\ntoo big"));
    }

    fn server_answer(request: &[u8], protocol: Option<&str>) -> Vec<u8> {
        let (req, _) = parse_request(request, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_accept_response(&mut out, &req, protocol);
        out
    }

    #[test]
    fn client_round_trip() {
        let (hs, request) = ClientHandshake::new(
            "h:1",
            "/ws?token=abc",
            &["v1", "v2"],
            &[("Authorization", "Bearer t")],
        );
        let (req, n) = parse_request(&request, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, request.len());
        assert_eq!(req.key, hs.key());
        assert_eq!(req.protocols, vec!["v1", "v2"]);
        assert_eq!(req.authorization, vec!["Bearer t".to_string()]);
        assert_eq!(req.query_param("token").as_deref(), Some("abc"));
        // A repeated Authorization header and a repeated query parameter are all kept, in order.
        let (_, repeated) = ClientHandshake::new(
            "h:1",
            "/ws?token=a&x=1&token=b",
            &[],
            &[
                ("Authorization", "Bearer bad"),
                ("authorization", "Bearer good"),
            ],
        );
        let (req2, _) = parse_request(&repeated, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(req2.authorization, vec!["Bearer bad", "Bearer good"]);
        assert_eq!(
            req2.query_params("token").collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let mut resp = server_answer(&request, Some("v2"));
        let head = resp.len();
        for cut in 0..head {
            assert_eq!(hs.parse_response(&resp[..cut]), Ok(None));
        }
        resp.extend_from_slice(&[0x81, 0x00]);
        let (r, consumed) = hs.parse_response(&resp).unwrap().unwrap();
        assert_eq!(r.protocol.as_deref(), Some("v2"));
        assert_eq!(consumed, head);
    }

    #[test]
    fn client_with_rfc_key() {
        let (hs, request) = ClientHandshake::new_with_key("h", "/", &[], &[], *b"the sample nonce");
        assert_eq!(hs.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        let resp =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(hs.parse_response(resp.as_bytes()).unwrap().is_some());
        assert!(parse_request(&request, &HandshakeLimits::default())
            .unwrap()
            .is_some());
    }

    #[test]
    fn client_rejections() {
        let (hs, request) = ClientHandshake::new("h", "/", &["v1"], &[]);
        let good = String::from_utf8(server_answer(&request, None)).unwrap();
        assert_eq!(
            hs.parse_response(good.as_bytes())
                .unwrap()
                .unwrap()
                .0
                .protocol,
            None
        );
        let bad_proto = String::from_utf8(server_answer(&request, Some("v9"))).unwrap();
        assert_eq!(
            hs.parse_response(bad_proto.as_bytes()),
            Err(ClientHandshakeError::BadProtocol)
        );
        let other = ClientHandshake::new("h", "/", &[], &[]).0;
        assert_eq!(
            other.parse_response(good.as_bytes()),
            Err(ClientHandshakeError::BadAccept)
        );
        let no_accept = good.replace("Sec-WebSocket-Accept", "X-Accept");
        assert_eq!(
            hs.parse_response(no_accept.as_bytes()),
            Err(ClientHandshakeError::BadAccept)
        );
        let no_upgrade = good.replace("Upgrade: websocket", "Upgrade: h2c");
        assert!(matches!(
            hs.parse_response(no_upgrade.as_bytes()),
            Err(ClientHandshakeError::Malformed(_))
        ));
        let ext = good.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert!(matches!(
            hs.parse_response(ext.as_bytes()),
            Err(ClientHandshakeError::Malformed(_))
        ));
        let refused = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            hs.parse_response(refused.as_bytes()),
            Err(ClientHandshakeError::Status(401))
        );
        let huge = format!("HTTP/1.1 101 OK\r\nX: {}", "a".repeat(9000));
        assert!(matches!(
            hs.parse_response(huge.as_bytes()),
            Err(ClientHandshakeError::HeadTooLarge { .. })
        ));
        assert!(matches!(
            hs.parse_response(b"\0\0\0\r\n\r\n"),
            Err(ClientHandshakeError::Malformed(_))
        ));
    }
}
