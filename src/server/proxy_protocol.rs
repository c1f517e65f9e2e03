//! The PROXY protocol header (HAProxy's "PROXY protocol", versions 1 and 2), sans-IO: what an
//! L4 load balancer sends before the client's first byte to tell the server who the client is.
//!
//! This module owns the parser only: [`parse`] takes the bytes received so far and returns the
//! header and its length once it is complete, `Ok(None)` while it may still be completed (so a
//! header split over any number of reads parses the same), or an error as soon as the bytes can
//! no longer be one. It imports no runtime; the connection task reads the socket
//! (`server::conn_task`), under `handshake_timeout`, on the listeners configured with
//! `proxy_protocol`.
//!
//! **What is accepted.**
//! * v1 (text): `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, `TCP6` likewise, and
//!   `PROXY UNKNOWN...\r\n`; at most [`V1_BYTES_MAX`] (107) bytes including the CRLF, single
//!   spaces, ports in decimal without leading zeros, addresses of the family named.
//! * v2 (binary): the 12-byte signature, version 2, command `LOCAL` (a balancer's own health
//!   check: the socket's addresses apply) or `PROXY`; for `PROXY` the families `AF_INET` and
//!   `AF_INET6` over `STREAM` (TCP), or `AF_UNSPEC` (addresses unknown, the socket's apply).
//!   UDP and unix-socket families are refused. The TLVs after the address block are checked to
//!   lie within the header and otherwise skipped. The payload after the 16-byte fixed part is at
//!   most [`V2_PAYLOAD_BYTES_MAX`] bytes.
//!
//! Specification: <https://www.haproxy.org/download/3.0/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest v1 header, `\r\n` included (the specification's bound: a `TCP6` line with the
/// longest addresses and ports).
pub const V1_BYTES_MAX: usize = 107;
/// Largest v2 payload (address block and TLVs) after the 16-byte fixed part. The address
/// block is at most 216 bytes (unix sockets); 2 KiB leaves room for the TLVs balancers add
/// (authority up to 255 bytes, unique id up to 128, AWS/GCP/Azure endpoint ids, SSL details)
/// while bounding what a connection may make us hold before its first request byte.
pub const V2_PAYLOAD_BYTES_MAX: usize = 2048;
/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Length of the fixed part of a v2 header (signature, version/command, family, length).
pub const V2_FIXED_BYTES: usize = 16;
/// The start of every v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// A header's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// The balancer does not know them or speaks for itself (v1 `UNKNOWN`, v2 `LOCAL` or
    /// `AF_UNSPEC`): the socket's own addresses apply.
    Unknown,
    /// A proxied TCP connection: the client's address and the address it connected to.
    Tcp {
        /// The client.
        source: SocketAddr,
        /// The address the client connected to (on the balancer).
        destination: SocketAddr,
    },
}

/// A complete, valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Text or binary.
    pub version: Version,
    /// The addresses it carries.
    pub addresses: Addresses,
}

impl ProxyHeader {
    /// The client's address, or `socket_peer` when the header names none.
    pub fn source_or(&self, socket_peer: SocketAddr) -> SocketAddr {
        match self.addresses {
            Addresses::Unknown => socket_peer,
            Addresses::Tcp { source, .. } => source,
        }
    }
}

/// Why the bytes are not a header this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The first bytes are neither `PROXY ` nor the v2 signature.
    #[error("no PROXY protocol header (the connection did not come through the balancer?)")]
    Missing,
    /// A v1 line longer than 107 bytes (`size` is then the least it has: 108), or a v2
    /// payload over [`V2_PAYLOAD_BYTES_MAX`].
    #[error("PROXY header of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Bytes the header has (or, for v1, has at least).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not well-formed.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// Well-formed, but not a TCP connection (UDP, unix socket) or an unknown version/command.
    #[error("unsupported PROXY header: {0}")]
    Unsupported(&'static str),
}

impl ProxyError {
    /// The `reason` label under which the failure is counted.
    pub fn label(&self) -> &'static str {
        match self {
            ProxyError::Missing => "missing",
            ProxyError::TooLarge { .. } => "too_large",
            ProxyError::Malformed(_) => "malformed",
            ProxyError::Unsupported(_) => "unsupported",
        }
    }
}

/// Parses a PROXY header at the start of `buf`: `Ok(Some((header, length)))` once complete
/// (the bytes after `length` are the client's), `Ok(None)` while `buf` is a valid beginning
/// (nothing is consumed; call again with more bytes), an error once it cannot be one.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == V1_PREFIX[0] {
        let n = buf.len().min(V1_PREFIX.len());
        if buf[..n] != V1_PREFIX[..n] {
            return Err(ProxyError::Missing);
        }
        parse_v1(buf)
    } else if buf[0] == V2_SIGNATURE[0] {
        let n = buf.len().min(V2_SIGNATURE.len());
        if buf[..n] != V2_SIGNATURE[..n] {
            return Err(ProxyError::Missing);
        }
        parse_v2(buf)
    } else {
        Err(ProxyError::Missing)
    }
}

/// Whether `buf` begins with a whole PROXY signature (`PROXY ` or the 12-byte v2 signature):
/// how a listener that does not expect the protocol recognises a balancer sending it.
pub fn starts_with_signature(buf: &[u8]) -> bool {
    buf.starts_with(V1_PREFIX) || buf.starts_with(&V2_SIGNATURE)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_BYTES_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_BYTES_MAX {
            // No LF within the first 107 bytes: the line has at least 108.
            return Err(ProxyError::TooLarge {
                size: V1_BYTES_MAX + 1,
                max: V1_BYTES_MAX,
            });
        }
        return Ok(None);
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ProxyError::Malformed("v1 line does not end with CRLF"));
    }
    let line = &window[V1_PREFIX.len().min(lf - 1)..lf - 1];
    let len = lf + 1;
    if line.contains(&b'\r') {
        return Err(ProxyError::Malformed("v1 line holds a CR"));
    }
    let line =
        std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 line is not ASCII"))?;
    if let Some(rest) = line.strip_prefix("UNKNOWN") {
        // The specification: whatever follows UNKNOWN up to the CRLF is ignored.
        if !(rest.is_empty() || rest.starts_with(' ')) {
            return Err(ProxyError::Malformed("unknown v1 protocol"));
        }
        return Ok(Some((
            ProxyHeader {
                version: Version::V1,
                addresses: Addresses::Unknown,
            },
            len,
        )));
    }
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or_default();
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::Malformed("unknown v1 protocol")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::Malformed(
            "v1 line is not: protocol, two addresses, two ports, single spaces",
        ));
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyError> {
        if v6 {
            text.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| ProxyError::Malformed("v1 address is not an IPv6 address"))
        } else {
            text.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| ProxyError::Malformed("v1 address is not an IPv4 address"))
        }
    };
    let source = SocketAddr::new(ip(src)?, v1_port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, v1_port(dport)?);
    Ok(Some((
        ProxyHeader {
            version: Version::V1,
            addresses: Addresses::Tcp {
                source,
                destination,
            },
        },
        len,
    )))
}

fn v1_port(text: &str) -> Result<u16, ProxyError> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(ProxyError::Malformed(
            "v1 port is not a decimal number without leading zeros",
        ));
    }
    text.parse::<u16>()
        .map_err(|_| ProxyError::Malformed("v1 port is over 65535"))
}

/// v2 address families (high nibble of byte 13) and transports (low nibble).
const AF_UNSPEC: u8 = 0x0;
const AF_INET: u8 = 0x1;
const AF_INET6: u8 = 0x2;
const AF_UNIX: u8 = 0x3;
const TRANSPORT_UNSPEC: u8 = 0x0;
const TRANSPORT_STREAM: u8 = 0x1;
/// Bytes of the v2 address blocks.
const INET_BLOCK_BYTES: usize = 12;
const INET6_BLOCK_BYTES: usize = 36;

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < V2_FIXED_BYTES {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let payload_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Unsupported(
            "v2 signature with a version other than 2",
        ));
    }
    let local = match ver_cmd & 0x0f {
        0x0 => true,
        0x1 => false,
        _ => {
            return Err(ProxyError::Unsupported(
                "v2 command other than LOCAL or PROXY",
            ))
        }
    };
    if payload_len > V2_PAYLOAD_BYTES_MAX {
        return Err(ProxyError::TooLarge {
            size: V2_FIXED_BYTES + payload_len,
            max: V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX,
        });
    }
    let len = V2_FIXED_BYTES + payload_len;
    if buf.len() < len {
        return Ok(None);
    }
    let payload = &buf[V2_FIXED_BYTES..len];
    let unknown = Ok(Some((
        ProxyHeader {
            version: Version::V2,
            addresses: Addresses::Unknown,
        },
        len,
    )));
    if local {
        // A balancer's own connection (health check): the family and block are ignored.
        return unknown;
    }
    let (family, transport) = (fam >> 4, fam & 0x0f);
    let block = match (family, transport) {
        (AF_UNSPEC, _) => return unknown,
        (AF_INET, TRANSPORT_STREAM) => INET_BLOCK_BYTES,
        (AF_INET6, TRANSPORT_STREAM) => INET6_BLOCK_BYTES,
        (AF_INET | AF_INET6 | AF_UNIX, TRANSPORT_UNSPEC) => {
            return Err(ProxyError::Unsupported(
                "v2 transport UNSPEC with an address family",
            ))
        }
        (AF_INET | AF_INET6 | AF_UNIX, _) => {
            return Err(ProxyError::Unsupported(
                "v2 header for a UDP or unix-socket connection, not TCP",
            ))
        }
        _ => return Err(ProxyError::Unsupported("v2 address family unknown")),
    };
    if payload.len() < block {
        return Err(ProxyError::Malformed(
            "v2 length shorter than its address block",
        ));
    }
    let (source, destination) = if family == AF_INET {
        let ip = |at: usize| {
            IpAddr::V4(Ipv4Addr::new(
                payload[at],
                payload[at + 1],
                payload[at + 2],
                payload[at + 3],
            ))
        };
        let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
        (
            SocketAddr::new(ip(0), port(8)),
            SocketAddr::new(ip(4), port(10)),
        )
    } else {
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&payload[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
        (
            SocketAddr::new(ip(0), port(32)),
            SocketAddr::new(ip(16), port(34)),
        )
    };
    check_tlvs(&payload[block..])?;
    Ok(Some((
        ProxyHeader {
            version: Version::V2,
            addresses: Addresses::Tcp {
                source,
                destination,
            },
        },
        len,
    )))
}

/// Walks the TLVs (type, 16-bit length, value) after the address block: each must end within
/// the header. Their contents are not used.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(ProxyError::Malformed("v2 TLV cut short"));
        }
        let value_len = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        let end = 3 + value_len;
        if end > tlvs.len() {
            return Err(ProxyError::Malformed("v2 TLV runs past the header"));
        }
        tlvs = &tlvs[end..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | cmd);
        out.push(fam);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn inet_block() -> Vec<u8> {
        let mut b = vec![127, 0, 0, 7, 10, 0, 0, 1];
        b.extend_from_slice(&51234u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b
    }

    fn tcp(source: &str, destination: &str) -> Addresses {
        Addresses::Tcp {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    /// Parses `input` whole and at every split into a prefix and the rest: each strict prefix
    /// of a complete header is `Ok(None)` (or, for an invalid header, the same error or `None`),
    /// and the whole gives the same result as any longer input with client bytes after it.
    fn check_split(input: &[u8], expected: Result<(ProxyHeader, usize), ProxyError>) {
        let whole = parse(input);
        match expected {
            Ok((h, n)) => {
                assert_eq!(whole, Ok(Some((h, n))), "{input:?}");
                for cut in 0..n {
                    assert_eq!(parse(&input[..cut]), Ok(None), "cut at {cut} of {input:?}");
                }
                let mut more = input.to_vec();
                more.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(parse(&more), Ok(Some((h, n))));
            }
            Err(e) => {
                assert_eq!(whole, Err(e), "{input:?}");
                let mut seen_error = false;
                for cut in 0..=input.len() {
                    match parse(&input[..cut]) {
                        Ok(None) => assert!(!seen_error, "None after an error at {cut}"),
                        Err(got) => {
                            assert_eq!(got, e, "cut at {cut} of {input:?}");
                            seen_error = true;
                        }
                        Ok(Some(x)) => panic!("cut at {cut}: {x:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 127.0.0.7 10.0.0.1 51234 443\r\n";
        check_split(
            line,
            Ok((
                ProxyHeader {
                    version: Version::V1,
                    addresses: tcp("127.0.0.7:51234", "10.0.0.1:443"),
                },
                line.len(),
            )),
        );
        let line = b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n";
        check_split(
            line,
            Ok((
                ProxyHeader {
                    version: Version::V1,
                    addresses: tcp("[2001:db8::7]:65535", "[::1]:0"),
                },
                line.len(),
            )),
        );
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n",
        ] {
            check_split(
                line,
                Ok((
                    ProxyHeader {
                        version: Version::V1,
                        addresses: Addresses::Unknown,
                    },
                    line.len(),
                )),
            );
        }
    }

    #[test]
    fn v1_longest_line_is_accepted_and_one_more_byte_is_not() {
        // The specification's worst case: UNKNOWN followed by the longest TCP6 fields.
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_BYTES_MAX);
        assert!(matches!(parse(longest), Ok(Some((_, V1_BYTES_MAX)))));
        let tcp6 = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert!(matches!(parse(tcp6), Ok(Some((_, 104)))));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_BYTES_MAX, b'x');
        long.extend_from_slice(b"\r\n");
        check_split(
            &long,
            Err(ProxyError::TooLarge {
                size: V1_BYTES_MAX + 1,
                max: V1_BYTES_MAX,
            }),
        );
    }

    #[test]
    fn v1_malformed() {
        for line in [
            &b"PROXY TCP4 127.0.0.7 10.0.0.1 51234 443\n"[..],
            b"PROXY TCP4 127.0.0.7 10.0.0.1 51234 443 \r\n",
            b"PROXY TCP4 127.0.0.7  10.0.0.1 51234 443\r\n",
            b"PROXY TCP4 127.0.0.7 10.0.0.1 51234\r\n",
            b"PROXY TCP4 ::1 10.0.0.1 51234 443\r\n",
            b"PROXY TCP6 127.0.0.7 ::1 51234 443\r\n",
            b"PROXY TCP4 127.0.0.7 10.0.0.1 051234 443\r\n",
            b"PROXY TCP4 127.0.0.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 127.0.0.7 10.0.0.1 +1 443\r\n",
            b"PROXY TCP4 127.000.0.7 10.0.0.1 1 443\r\n",
            b"PROXY UDP4 127.0.0.7 10.0.0.1 1 443\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4 127.0.0.7 10.0.0.1 1\r443\r\n",
            b"PROXY \r\n",
        ] {
            match parse(line) {
                Err(ProxyError::Malformed(_)) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
            }
            let e = parse(line).unwrap_err();
            check_split(line, Err(e));
        }
    }

    #[test]
    fn missing_header_is_seen_at_the_first_byte_that_differs() {
        check_split(b"GET / HTTP/1.1\r\n\r\n", Err(ProxyError::Missing));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PROX"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyError::Missing));
        // A TLS ClientHello starts with 0x16.
        assert_eq!(parse(&[0x16, 0x03, 0x01]), Err(ProxyError::Missing));
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn v2_inet_inet6_with_tlvs() {
        let mut payload = inet_block();
        // PP2_TYPE_AUTHORITY "example.com", then an empty NOOP.
        payload.extend_from_slice(&[0x02, 0x00, 11]);
        payload.extend_from_slice(b"example.com");
        payload.extend_from_slice(&[0x04, 0x00, 0x00]);
        let h = v2(1, 0x11, &payload);
        check_split(
            &h,
            Ok((
                ProxyHeader {
                    version: Version::V2,
                    addresses: tcp("127.0.0.7:51234", "10.0.0.1:443"),
                },
                h.len(),
            )),
        );
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&1u16.to_be_bytes());
        block.extend_from_slice(&8443u16.to_be_bytes());
        let h = v2(1, 0x21, &block);
        check_split(
            &h,
            Ok((
                ProxyHeader {
                    version: Version::V2,
                    addresses: tcp("[2001:db8::7]:1", "[::1]:8443"),
                },
                h.len(),
            )),
        );
    }

    #[test]
    fn v2_local_and_unspec_use_the_socket_address() {
        let socket: SocketAddr = "192.0.2.1:9".parse().unwrap();
        for h in [
            v2(0, 0x00, &[]),
            v2(0, 0x11, &inet_block()),
            v2(1, 0x00, &[]),
        ] {
            let (header, n) = parse(&h).unwrap().unwrap();
            assert_eq!(n, h.len());
            assert_eq!(header.addresses, Addresses::Unknown);
            assert_eq!(header.source_or(socket), socket);
            check_split(&h, Ok((header, n)));
        }
    }

    #[test]
    fn v2_refusals() {
        let mut bad_version = v2(1, 0x11, &inet_block());
        bad_version[12] = 0x11;
        check_split(
            &bad_version,
            Err(ProxyError::Unsupported(
                "v2 signature with a version other than 2",
            )),
        );
        assert!(matches!(
            parse(&v2(2, 0x11, &inet_block())),
            Err(ProxyError::Unsupported(_))
        ));
        // UDP over IPv4, unix stream.
        assert!(matches!(
            parse(&v2(1, 0x12, &inet_block())),
            Err(ProxyError::Unsupported(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x31, &[0; 216])),
            Err(ProxyError::Unsupported(_))
        ));
        assert!(matches!(
            parse(&v2(1, 0x41, &[])),
            Err(ProxyError::Unsupported(_))
        ));
        // An address block longer than the length.
        assert_eq!(
            parse(&v2(1, 0x21, &inet_block())),
            Err(ProxyError::Malformed(
                "v2 length shorter than its address block"
            ))
        );
        // TLVs running past the header.
        let mut payload = inet_block();
        payload.extend_from_slice(&[0x02, 0x00, 12, b'x']);
        assert_eq!(
            parse(&v2(1, 0x11, &payload)),
            Err(ProxyError::Malformed("v2 TLV runs past the header"))
        );
        let mut payload = inet_block();
        payload.extend_from_slice(&[0x02, 0x00]);
        assert_eq!(
            parse(&v2(1, 0x11, &payload)),
            Err(ProxyError::Malformed("v2 TLV cut short"))
        );
    }

    #[test]
    fn v2_length_limit_is_checked_before_the_payload_arrives() {
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11]);
        fixed.extend_from_slice(&((V2_PAYLOAD_BYTES_MAX + 1) as u16).to_be_bytes());
        assert_eq!(
            parse(&fixed),
            Err(ProxyError::TooLarge {
                size: V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX + 1,
                max: V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX
            })
        );
        let mut payload = inet_block();
        let tlv = V2_PAYLOAD_BYTES_MAX - payload.len() - 3;
        payload.push(0x04);
        payload.extend_from_slice(&(tlv as u16).to_be_bytes());
        payload.resize(V2_PAYLOAD_BYTES_MAX, 0);
        let h = v2(1, 0x11, &payload);
        assert_eq!(
            parse(&h).map(|r| r.map(|(_, n)| n)),
            Ok(Some(V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX))
        );
    }

    #[test]
    fn signatures_are_recognised_only_whole() {
        assert!(starts_with_signature(b"PROXY TCP4 ..."));
        assert!(starts_with_signature(&v2(0, 0, &[])));
        assert!(!starts_with_signature(b"PROXY"));
        assert!(!starts_with_signature(&V2_SIGNATURE[..11]));
        assert!(!starts_with_signature(b"GET / HTTP/1.1\r\n"));
    }
}
