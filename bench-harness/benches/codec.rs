//! Codec micro-benchmarks: tether's sans-IO WebSocket core beside tungstenite 0.26 doing the
//! same work on the same bytes in the same run.
//!
//! - `unmask/*`: tether's `apply_mask` (8 bytes per step), the byte loop reference, and
//!   tungstenite's `apply_mask_fast32` (private in the crate, so its 0.26.2 body is copied
//!   below verbatim).
//! - `header_parse/*`: parsing a masked frame header (7-bit, 16-bit and 64-bit length forms):
//!   `Decoder::frame_bytes_needed` vs `tungstenite::protocol::frame::FrameHeader::parse`.
//! - `decode/*`: one masked binary frame of 16 B / 1 KiB / 64 KiB decoded as a server into a
//!   complete, unmasked message. tether: copy the frame into a reused buffer (what a socket
//!   read does) and `Decoder::decode`. tungstenite: `WebSocket::read` over a stream that
//!   yields the same frame forever (it copies from the stream into its read buffer, parses,
//!   unmasks and returns a `Message`).
//! - `handshake_accept`: a browser-like upgrade request to a 101 response in a byte buffer.
//!   tether: `parse_request` + `write_accept_response`. tungstenite: `tungstenite::accept` over
//!   a stream holding the same request bytes (includes building its `WebSocket`).
//!
//! Run: `cargo bench -p tether-bench --bench codec -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::{self, Cursor, Read, Write};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tether::ws::mask::{apply_mask, apply_mask_bytewise};
use tether::ws::{
    parse_request, write_accept_response, write_frame_header, Decoder, DecoderLimits, Event,
    HandshakeLimits, OpCode, Role, MAX_HEADER_BYTES,
};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::{Role as TRole, WebSocket, WebSocketConfig};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// tungstenite 0.26.2 `protocol::frame::mask::apply_mask_fallback` (copied: not public).
fn tungstenite_mask_fallback(buf: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// tungstenite 0.26.2 `protocol::frame::mask::apply_mask_fast32` (copied: not public).
fn tungstenite_mask_fast32(buf: &mut [u8], mask: [u8; 4]) {
    let mask_u32 = u32::from_ne_bytes(mask);
    // SAFETY: every bit pattern is a valid u32 and a valid u8; align_to_mut only splits the
    // slice at alignment boundaries, so the three parts cover `buf` exactly once.
    let (prefix, words, suffix) = unsafe { buf.align_to_mut::<u32>() };
    tungstenite_mask_fallback(prefix, mask);
    let head = prefix.len() & 3;
    let mask_u32 = if head > 0 {
        if cfg!(target_endian = "big") {
            mask_u32.rotate_left(8 * head as u32)
        } else {
            mask_u32.rotate_right(8 * head as u32)
        }
    } else {
        mask_u32
    };
    for word in words.iter_mut() {
        *word ^= mask_u32;
    }
    tungstenite_mask_fallback(suffix, mask_u32.to_ne_bytes());
}

/// A masked, final binary frame with `len` payload bytes.
fn masked_frame(len: usize) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_BYTES];
    let n = write_frame_header(&mut header, true, OpCode::Binary, len as u64, Some(KEY));
    let mut frame = header[..n].to_vec();
    let start = frame.len();
    frame.extend((0..len).map(|i| (i * 7) as u8));
    apply_mask(&mut frame[start..], KEY);
    frame
}

fn unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for len in [16usize, 125, 1024, 65536] {
        let mut buf = vec![0xa5u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("tether_fast", len), &len, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY)))
        });
        g.bench_with_input(BenchmarkId::new("byte_loop", len), &len, |b, _| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY)))
        });
        g.bench_with_input(BenchmarkId::new("tungstenite_fast32", len), &len, |b, _| {
            b.iter(|| tungstenite_mask_fast32(black_box(&mut buf), black_box(KEY)))
        });
    }
    g.finish();
}

fn header_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("header_parse");
    let decoder = Decoder::new(
        Role::Server,
        DecoderLimits {
            frame_bytes_max: 1 << 20,
            message_bytes_max: 1 << 20,
        },
    );
    for len in [16usize, 1024, 65536] {
        let mut header = [0u8; MAX_HEADER_BYTES];
        let n = write_frame_header(&mut header, true, OpCode::Binary, len as u64, Some(KEY));
        let header = header[..n].to_vec();
        g.bench_with_input(BenchmarkId::new("tether", len), &header, |b, h| {
            b.iter(|| decoder.frame_bytes_needed(black_box(h)))
        });
        g.bench_with_input(BenchmarkId::new("tungstenite", len), &header, |b, h| {
            b.iter(|| {
                FrameHeader::parse(&mut Cursor::new(black_box(h.as_slice())))
                    .ok()
                    .flatten()
                    .map(|(_, l)| l)
            })
        });
    }
    g.finish();
}

/// A stream that yields the same bytes forever and swallows writes.
struct Repeat {
    data: Vec<u8>,
    pos: usize,
}

impl Read for Repeat {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        while written < out.len() {
            let n = (self.data.len() - self.pos).min(out.len() - written);
            out[written..written + n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            written += n;
            self.pos = (self.pos + n) % self.data.len();
        }
        Ok(written)
    }
}

impl Write for Repeat {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for len in [16usize, 1024, 65536] {
        let frame = masked_frame(len);
        g.throughput(Throughput::Bytes(len as u64));
        let limits = DecoderLimits {
            frame_bytes_max: 1 << 20,
            message_bytes_max: 1 << 20,
        };
        let mut decoder = Decoder::new(Role::Server, limits);
        let mut buf = vec![0u8; frame.len()];
        g.bench_with_input(BenchmarkId::new("tether", len), &frame, |b, f| {
            b.iter(|| {
                buf.copy_from_slice(f);
                match decoder.decode(&mut buf) {
                    Ok(Some((Some(Event::Message { data, .. }), n))) => {
                        black_box(data);
                        n
                    }
                    other => panic!("unexpected {other:?}"),
                }
            })
        });
        let config = WebSocketConfig::default()
            .max_frame_size(Some(1 << 20))
            .max_message_size(Some(1 << 20));
        let mut ws = WebSocket::from_raw_socket(
            Repeat {
                data: frame.clone(),
                pos: 0,
            },
            TRole::Server,
            Some(config),
        );
        g.bench_with_input(BenchmarkId::new("tungstenite", len), &frame, |b, _| {
            b.iter(|| match ws.read() {
                Ok(tungstenite::Message::Binary(data)) => black_box(data).len(),
                other => panic!("unexpected {other:?}"),
            })
        });
    }
    g.finish();
}

const REQUEST: &[u8] = b"GET /ws?token=abc HTTP/1.1\r\n\
Host: gateway.example.com:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

/// The request bytes to read once, and a sink for the response.
struct OneRequest {
    input: Cursor<&'static [u8]>,
    output: Vec<u8>,
}

impl Read for OneRequest {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.input.read(out)
    }
}

impl Write for OneRequest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn handshake_accept(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake_accept");
    let limits = HandshakeLimits::default();
    let mut out = Vec::with_capacity(256);
    g.bench_function("tether", |b| {
        b.iter(|| {
            out.clear();
            let (req, n) = parse_request(black_box(REQUEST), &limits)
                .expect("valid")
                .expect("complete");
            write_accept_response(&mut out, &req, None);
            black_box(&out);
            n
        })
    });
    g.bench_function("tungstenite", |b| {
        b.iter(|| {
            let stream = OneRequest {
                input: Cursor::new(black_box(REQUEST)),
                output: Vec::with_capacity(256),
            };
            let ws = tungstenite::accept(stream).expect("valid");
            black_box(ws.get_ref().output.len())
        })
    });
    g.finish();
}

criterion_group!(benches, unmask, header_parse, decode, handshake_accept);
criterion_main!(benches);
