//! Fuzz harnesses for the WebSocket core and the PROXY protocol header, shared by the cargo-fuzz targets and by the unit
//! test that replays the committed seed corpus (`tests/ws_corpus.rs` includes this file).
//! Each harness feeds arbitrary bytes through a parser and checks invariants that must hold
//! whatever the input; a panic is a bug.

use std::convert::Infallible;

use tether::ws::{
    parse_request, write_accept_response, write_handshake_error, Budget, ClientHandshake, Context,
    Decoder, DecoderLimits, Ended, Event, HandshakeLimits, Incoming, MessageKind, Role,
};

/// The RFC 6455 §1.3 sample key, so seeds can carry the matching accept value.
pub(crate) const SAMPLE_KEY: [u8; 16] = *b"the sample nonce";

/// Server-side request parsing, whole and with the input delivered in two reads.
pub(crate) fn handshake_request(data: &[u8]) {
    let limits = HandshakeLimits {
        head_bytes_max: 4096,
        headers_max: 32,
    };
    let whole = parse_request(data, &limits);
    match &whole {
        Ok(Some((req, n))) => {
            assert!(*n <= data.len() && *n <= limits.head_bytes_max);
            let mut out = Vec::new();
            write_accept_response(&mut out, req, req.protocols.first().map(String::as_str));
            let _ = req.query_param("token");
        }
        Ok(None) => assert!(data.len() <= limits.head_bytes_max),
        Err(e) => {
            let mut out = Vec::new();
            write_handshake_error(&mut out, e);
            assert!(out.starts_with(format!("HTTP/1.1 {} ", e.status()).as_bytes()));
        }
    }
    // Any prefix that already completes must give the same request and length.
    if let (Some(&cut), Ok(Some((req, n)))) = (data.first(), &whole) {
        let cut = (cut as usize).min(data.len());
        if cut >= *n {
            assert_eq!(
                parse_request(&data[..cut], &limits).ok().flatten().as_ref(),
                Some(&(req.clone(), *n))
            );
        }
    }
}

/// Client-side response parsing against a handshake made with [`SAMPLE_KEY`].
pub(crate) fn handshake_response(data: &[u8]) {
    let (hs, _) =
        ClientHandshake::new_with_key("server.example.com", "/chat", &["chat"], &[], SAMPLE_KEY);
    let hs = hs.with_head_bytes_max(4096);
    if let Ok(Some((_, n))) = hs.parse_response(data) {
        assert!(n <= data.len() && n <= 4096);
    }
}

/// Frame decoding with reassembly. Byte 0 picks the role (bit 0), the read size (bits 1..7)
/// and small or default limits (bit 7); the rest is the stream.
pub(crate) fn frame_decode(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let role = if ctl & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let read_bytes = (((ctl >> 1) & 0x3f) as usize).max(1) * 7;
    let limits = if ctl & 0x80 != 0 {
        DecoderLimits {
            frame_bytes_max: 200,
            message_bytes_max: 300,
        }
    } else {
        DecoderLimits::default()
    };
    let mut d = Decoder::new(role, limits);
    let mut buf: Vec<u8> = Vec::new();
    for chunk in stream.chunks(read_bytes) {
        buf.extend_from_slice(chunk);
        loop {
            let held = buf.len();
            match d.decode(&mut buf) {
                Ok(Some((ev, n))) => {
                    assert!(n >= 2 && n <= held);
                    match ev {
                        Some(Event::Message {
                            kind: MessageKind::Text,
                            data,
                        }) => {
                            assert!(std::str::from_utf8(data).is_ok());
                            assert!(data.len() <= limits.message_bytes_max);
                        }
                        Some(Event::Message { data, .. }) => {
                            assert!(data.len() <= limits.message_bytes_max)
                        }
                        Some(Event::Ping(p)) | Some(Event::Pong(p)) => assert!(p.len() <= 125),
                        Some(Event::Close(_)) | None => {}
                    }
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    return;
                }
            }
        }
    }
}

/// An owned copy of what a [`Context`] handed out.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    End(Ended),
}

/// A budget that refuses nothing and counts what is held: the context's charge must always match
/// what it holds.
#[derive(Default)]
struct Counted {
    held_bytes: usize,
}

impl Budget for Counted {
    type Refused = Infallible;

    fn take(&mut self, bytes: usize) -> Result<(), Infallible> {
        self.held_bytes += bytes;
        Ok(())
    }

    fn give(&mut self, bytes: usize) {
        self.held_bytes = self
            .held_bytes
            .checked_sub(bytes)
            .expect("gave back more than was taken");
    }
}

/// Feeds `stream` to `ctx` in reads of `read_bytes`; returns everything handed out. After every
/// read the budget holds exactly what the context holds.
fn feed_in_reads(ctx: &mut Context, stream: &[u8], read_bytes: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut budget = Counted::default();
    for chunk in stream.chunks(read_bytes) {
        let mut chunk = chunk.to_vec();
        let fed = ctx.feed_within(&mut chunk, &mut budget, |incoming| {
            seen.push(match incoming {
                Incoming::Message { kind, data } => Seen::Message(kind, data.to_vec()),
                Incoming::Ping(p) => Seen::Ping(p.to_vec()),
                Incoming::Pong(p) => Seen::Pong(p.to_vec()),
            })
        });
        let ended = match fed {
            Ok(ended) => ended,
            Err(never) => match never {},
        };
        assert_eq!(budget.held_bytes, ctx.held_bytes(), "charge out of step");
        if let Some(e) = ended {
            seen.push(Seen::End(e));
            break;
        }
    }
    seen
}

/// The connection context: the stream fed whole and in reads of any size hands out the same
/// messages, pings, pongs and end; nothing follows the end; an incomplete frame is all it
/// holds. Byte 0 as in [`frame_decode`].
pub(crate) fn context_feed(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let role = if ctl & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let read_bytes = (((ctl >> 1) & 0x3f) as usize).max(1) * 7;
    let limits = if ctl & 0x80 != 0 {
        DecoderLimits {
            frame_bytes_max: 200,
            message_bytes_max: 300,
        }
    } else {
        DecoderLimits::default()
    };
    let mut whole_ctx = Context::new(role, limits);
    let whole = feed_in_reads(&mut whole_ctx, stream, stream.len().max(1));
    let mut split_ctx = Context::new(role, limits);
    let split = feed_in_reads(&mut split_ctx, stream, read_bytes);
    assert_eq!(whole, split, "reads of {read_bytes} bytes");
    assert_eq!(whole_ctx.state(), split_ctx.state());
    match whole.last() {
        Some(Seen::End(_)) => {
            assert_eq!(whole_ctx.held_bytes(), 0, "released at the end");
            assert_eq!(
                whole_ctx.feed(&mut stream.to_vec(), |_| panic!("after the end")),
                None
            );
        }
        _ => assert!(whole_ctx.buffered_bytes() <= stream.len()),
    }
    if !whole_ctx.is_partial() {
        assert_eq!(whole_ctx.buffered_bytes(), 0);
    }
    for s in &whole {
        if let Seen::Message(MessageKind::Text, t) = s {
            assert!(std::str::from_utf8(t).is_ok());
        }
    }
}

/// The PROXY protocol header parser (`tether::server::proxy_protocol`): a complete header is
/// no longer than its limits and parses the same from any input it begins; every shorter
/// prefix of it (byte 0 picks one) is incomplete; an error stays the same error whatever
/// follows; an incomplete input is shorter than the longest header.
pub(crate) fn proxy_header(data: &[u8]) {
    use tether::server::proxy_protocol::{
        parse, V1_BYTES_MAX, V2_FIXED_BYTES, V2_PAYLOAD_BYTES_MAX,
    };
    let max = V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX;
    let mut longer = data.to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    match parse(data) {
        Ok(Some((header, n))) => {
            assert!(n <= data.len() && n <= max);
            if data.starts_with(b"PROXY ") {
                assert!(n <= V1_BYTES_MAX);
            }
            assert_eq!(parse(&data[..n]), Ok(Some((header, n))));
            assert_eq!(parse(&longer), Ok(Some((header, n))));
            let cut = usize::from(data.first().copied().unwrap_or(0)) % n.max(1);
            assert_eq!(parse(&data[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        Ok(None) => assert!(data.len() < max),
        Err(e) => {
            assert!(!e.label().is_empty());
            assert_eq!(parse(&longer), Err(e));
        }
    }
}
