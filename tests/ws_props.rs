//! Property tests: random messages with random fragmentation and interleaved control frames
//! round-trip through encoder and decoder in both roles, whatever the read chunking; random
//! bytes never panic the decoder or the handshake parsers.

use proptest::prelude::*;
use tether::ws::{
    encode_frame, parse_request, ClientHandshake, Decoder, DecoderLimits, Event, HandshakeLimits,
    MessageKind, OpCode, Role,
};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    /// Fragment sizes (the last fragment takes the rest).
    cuts: Vec<usize>,
    /// Ping payload sent after the first fragment, if any.
    ping: Option<Vec<u8>>,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        prop_oneof![
            9 => proptest::collection::vec(any::<u8>(), 0..200),
            1 => proptest::collection::vec(any::<u8>(), 200..70_000),
        ],
        proptest::collection::vec(0usize..300, 0..5),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=125)),
    )
        .prop_map(|(text, payload, cuts, ping)| {
            let payload = if text {
                String::from_utf8_lossy(&payload).into_owned().into_bytes()
            } else {
                payload
            };
            Msg {
                text,
                payload,
                cuts,
                ping,
            }
        })
}

/// Encodes the messages as `sender` and returns the stream and the events the receiver must
/// report.
fn encode(sender: Role, msgs: &[Msg]) -> (Vec<u8>, Vec<Got>) {
    let mut out = Vec::new();
    let mut want = Vec::new();
    for m in msgs {
        let kind = if m.text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        let op = if m.text { OpCode::Text } else { OpCode::Binary };
        let mut rest = &m.payload[..];
        let mut first = true;
        for &cut in &m.cuts {
            let cut = cut.min(rest.len());
            let code = if first { op } else { OpCode::Continuation };
            encode_frame(&mut out, sender, code, false, &rest[..cut]);
            rest = &rest[cut..];
            if first {
                if let Some(p) = &m.ping {
                    encode_frame(&mut out, sender, OpCode::Ping, true, p);
                    want.push(Got::Ping(p.clone()));
                }
            }
            first = false;
        }
        let code = if first { op } else { OpCode::Continuation };
        encode_frame(&mut out, sender, code, true, rest);
        want.push(Got::Message(kind, m.payload.clone()));
    }
    (out, want)
}

fn decode_chunked(receiver: Role, stream: &[u8], chunk_sizes: &[usize]) -> Vec<Got> {
    let mut d = Decoder::new(receiver, DecoderLimits::default());
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut pos = 0;
    let mut sizes = chunk_sizes.iter().cycle();
    while pos < stream.len() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        while let Some((ev, used)) = d.decode(&mut buf).expect("valid stream") {
            match ev {
                Some(Event::Message { kind, data }) => got.push(Got::Message(kind, data.to_vec())),
                Some(Event::Ping(p)) => got.push(Got::Ping(p.to_vec())),
                None => {}
                Some(other) => panic!("unexpected {other:?}"),
            }
            buf.drain(..used);
        }
    }
    assert!(buf.is_empty());
    assert!(d.is_idle());
    got
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trip_both_roles(
        msgs in proptest::collection::vec(msg(), 1..6),
        chunks in proptest::collection::vec(1usize..5000, 1..8),
    ) {
        for (sender, receiver) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
            let (stream, want) = encode(sender, &msgs);
            prop_assert_eq!(decode_chunked(receiver, &stream, &chunks), want);
        }
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        frame_max in 0usize..300,
        message_max in 0usize..600,
    ) {
        for role in [Role::Server, Role::Client] {
            let limits = DecoderLimits { frame_bytes_max: frame_max, message_bytes_max: message_max };
            let mut d = Decoder::new(role, limits);
            let mut buf = bytes.clone();
            let mut seen = 0usize;
            while let Ok(Some((_, used))) = d.decode(&mut buf[seen..]) {
                prop_assert!(used > 0 && used <= buf.len() - seen);
                seen += used;
            }
        }
        let _ = parse_request(&bytes, &HandshakeLimits { head_bytes_max: 256, headers_max: 8 });
        let _ = ClientHandshake::new("h", "/", &["p"], &[]).0.parse_response(&bytes);
    }

    #[test]
    fn random_payload_behind_valid_headers_never_panics(
        b0 in prop_oneof![Just(0x00u8), Just(0x01), Just(0x02), Just(0x81), Just(0x82), Just(0x88), Just(0x89), Just(0x8a)],
        len in 0u8..126,
        key in any::<[u8; 4]>(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = vec![b0, 0x80 | len];
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&body);
        let mut d = Decoder::new(Role::Server, DecoderLimits::default());
        let mut seen = 0usize;
        while let Ok(Some((_, used))) = d.decode(&mut bytes[seen..]) {
            seen += used;
        }
    }

    #[test]
    fn random_request_heads_never_panic(
        method in prop_oneof![Just("GET"), Just("POST"), Just("get")],
        headers in proptest::collection::vec(("[A-Za-z-]{1,24}", "[ -~]{0,40}"), 0..12),
    ) {
        let mut s = format!("{method} /p?q=%zz&a=%41 HTTP/1.1\r\n");
        for (n, v) in &headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        if let Ok(Some((req, n))) = parse_request(s.as_bytes(), &HandshakeLimits::default()) {
            prop_assert_eq!(n, s.len());
            let _ = req.query_param("q");
        }
    }
}
