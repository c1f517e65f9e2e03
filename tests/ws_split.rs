//! Every input split at every byte offset (and fed one byte at a time) gives the same result
//! as the whole input: handshake requests and responses, frame streams for both roles,
//! including streams that end in a protocol error.

use tether::ws::{
    encode_close, encode_frame, parse_request, write_accept_response, ClientHandshake, Decoder,
    DecoderLimits, Event, HandshakeLimits, MessageKind, OpCode, ProtocolError, Role,
};

/// An owned copy of an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Message(MessageKind, Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Fragment,
}

fn own(ev: Option<Event<'_>>) -> Owned {
    match ev {
        None => Owned::Fragment,
        Some(Event::Message { kind, data }) => Owned::Message(kind, data.to_vec()),
        Some(Event::Ping(p)) => Owned::Ping(p.to_vec()),
        Some(Event::Pong(p)) => Owned::Pong(p.to_vec()),
        Some(Event::Close(c)) => Owned::Close(c.map(|(code, r)| (code, r.to_owned()))),
    }
}

/// Feeds `chunks` like reads from a socket; returns every event and the error, if any, and
/// the bytes left over.
fn run(
    role: Role,
    limits: DecoderLimits,
    chunks: &[&[u8]],
) -> (Vec<Owned>, Option<ProtocolError>, usize) {
    let mut d = Decoder::new(role, limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&mut buf) {
                Ok(Some((ev, n))) => {
                    events.push(own(ev));
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(e) => return (events, Some(e), buf.len()),
            }
        }
    }
    (events, None, buf.len())
}

fn check_stream(role: Role, limits: DecoderLimits, stream: &[u8]) {
    let whole = run(role, limits, &[stream]);
    for cut in 0..=stream.len() {
        let (events, err, _) = run(role, limits, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(
            (&events, &err),
            (&whole.0, &whole.1),
            "{role:?} cut at {cut}"
        );
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    let (events, err, _) = run(role, limits, &bytes);
    assert_eq!(
        (&events, &err),
        (&whole.0, &whole.1),
        "{role:?} byte by byte"
    );
}

/// A stream with every frame kind: single-frame text and binary, a fragmented text message
/// with a code point split across fragments and a ping between fragments, all three length
/// forms, and a close.
fn good_stream(role_sending: Role) -> Vec<u8> {
    let r = role_sending;
    let mut s = Vec::new();
    encode_frame(&mut s, r, OpCode::Text, true, "Hello, κόσμε".as_bytes());
    encode_frame(&mut s, r, OpCode::Binary, true, &[]);
    encode_frame(&mut s, r, OpCode::Text, false, &[b'a', 0xce]);
    encode_frame(&mut s, r, OpCode::Ping, true, b"ping");
    encode_frame(&mut s, r, OpCode::Continuation, false, &[0xba]);
    encode_frame(&mut s, r, OpCode::Continuation, true, b"z");
    encode_frame(&mut s, r, OpCode::Binary, true, &[5u8; 300]);
    encode_frame(&mut s, r, OpCode::Binary, false, &[6u8; 70000]);
    encode_frame(&mut s, r, OpCode::Pong, true, b"");
    encode_frame(&mut s, r, OpCode::Continuation, true, &[7u8; 10]);
    encode_close(&mut s, r, 1001, "going");
    s
}

#[test]
fn good_streams_both_roles() {
    let limits = DecoderLimits::default();
    let server_sees = good_stream(Role::Client);
    let whole = run(Role::Server, limits, &[&server_sees]);
    assert_eq!(whole.1, None);
    assert_eq!(whole.0.len(), 11);
    assert_eq!(
        whole.0[5],
        Owned::Message(MessageKind::Text, "aκz".as_bytes().to_vec())
    );
    assert_eq!(whole.0[10], Owned::Close(Some((1001, "going".into()))));
    // 70 KiB frame makes every-offset splitting slow in debug builds: check a smaller stream
    // at every offset and the big one at a stride.
    let mut small = Vec::new();
    encode_frame(
        &mut small,
        Role::Client,
        OpCode::Text,
        false,
        "κό".as_bytes(),
    );
    encode_frame(&mut small, Role::Client, OpCode::Ping, true, b"p");
    encode_frame(
        &mut small,
        Role::Client,
        OpCode::Continuation,
        true,
        "σμε".as_bytes(),
    );
    encode_frame(&mut small, Role::Client, OpCode::Binary, true, &[1u8; 200]);
    encode_close(&mut small, Role::Client, 1000, "");
    check_stream(Role::Server, limits, &small);
    let mut small_server = Vec::new();
    encode_frame(&mut small_server, Role::Server, OpCode::Text, true, b"hi");
    encode_frame(
        &mut small_server,
        Role::Server,
        OpCode::Binary,
        false,
        &[2u8; 130],
    );
    encode_frame(
        &mut small_server,
        Role::Server,
        OpCode::Continuation,
        true,
        &[3u8; 3],
    );
    check_stream(Role::Client, limits, &small_server);
    for (role, stream) in [
        (Role::Server, &server_sees),
        (Role::Client, &good_stream(Role::Server)),
    ] {
        let whole = run(role, limits, &[stream]);
        for cut in (0..=stream.len())
            .step_by(97)
            .chain(stream.len() - 100..=stream.len())
        {
            let split = run(role, limits, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                (&split.0, &split.1),
                (&whole.0, &whole.1),
                "{role:?} cut {cut}"
            );
        }
    }
}

#[test]
fn error_streams_fail_identically_at_every_split() {
    let limits = DecoderLimits {
        frame_bytes_max: 256,
        message_bytes_max: 300,
    };
    let mut cases: Vec<(Role, Vec<u8>, ProtocolError)> = Vec::new();
    // Valid frames, then invalid UTF-8 in the middle fragment of a text message.
    let mut s = Vec::new();
    encode_frame(&mut s, Role::Client, OpCode::Text, true, b"ok");
    encode_frame(&mut s, Role::Client, OpCode::Text, false, "κό".as_bytes());
    encode_frame(
        &mut s,
        Role::Client,
        OpCode::Continuation,
        false,
        &[0xf4, 0x90],
    );
    encode_frame(&mut s, Role::Client, OpCode::Continuation, true, b"x");
    cases.push((Role::Server, s, ProtocolError::InvalidUtf8));
    // A message over the limit across fragments.
    let mut s = Vec::new();
    encode_frame(&mut s, Role::Client, OpCode::Binary, false, &[0u8; 200]);
    encode_frame(
        &mut s,
        Role::Client,
        OpCode::Continuation,
        true,
        &[0u8; 101],
    );
    cases.push((
        Role::Server,
        s,
        ProtocolError::MessageTooLarge {
            size: 301,
            max: 300,
        },
    ));
    // An unmasked frame sent to a server after a good one.
    let mut s = Vec::new();
    encode_frame(&mut s, Role::Client, OpCode::Ping, true, b"x");
    encode_frame(&mut s, Role::Server, OpCode::Text, true, b"unmasked");
    cases.push((Role::Server, s, ProtocolError::UnmaskedClientFrame));
    // Masked frame to a client; bad close code; reserved opcode.
    let mut s = Vec::new();
    encode_frame(&mut s, Role::Client, OpCode::Text, true, b"masked");
    cases.push((Role::Client, s, ProtocolError::MaskedServerFrame));
    let mut s = Vec::new();
    encode_frame(&mut s, Role::Server, OpCode::Text, true, b"a");
    encode_frame(&mut s, Role::Server, OpCode::Close, true, &[0x03, 0xee]);
    cases.push((Role::Client, s, ProtocolError::InvalidCloseCode(1006)));
    let mut s = Vec::new();
    encode_frame(&mut s, Role::Server, OpCode::Binary, true, &[0u8; 130]);
    s.extend_from_slice(&[0x8c, 0x00]);
    cases.push((Role::Client, s, ProtocolError::ReservedOpcode(0xc)));
    for (role, stream, want) in cases {
        let whole = run(role, limits, &[&stream]);
        assert_eq!(whole.1, Some(want), "{stream:x?}");
        check_stream(role, limits, &stream);
    }
}

fn request_result(
    chunks: &[&[u8]],
    limits: &HandshakeLimits,
) -> Result<Option<(String, usize)>, u16> {
    let mut buf = Vec::new();
    let mut last = Ok(None);
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        last = match parse_request(&buf, limits) {
            Ok(Some((req, n))) => return Ok(Some((format!("{req:?}"), n))),
            Ok(None) => Ok(None),
            Err(e) => return Err(e.status()),
        };
    }
    last
}

#[test]
fn handshake_requests_at_every_split() {
    let limits = HandshakeLimits {
        head_bytes_max: 300,
        headers_max: 10,
    };
    let good = b"GET /ws?id=7 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a, b\r\n\r\n\x81\x80";
    let inputs: Vec<Vec<u8>> = vec![
        good.to_vec(),
        good.iter()
            .copied()
            .map(|b| if b == b'3' { b'8' } else { b })
            .collect(),
        b"POST /ws HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        b"GET /ws HTTP/1.1\r\nHo\x01st: h\r\n\r\n".to_vec(),
        [&b"GET /"[..], &[b'a'; 400][..], b" HTTP/1.1\r\n\r\n"].concat(),
    ];
    let expected: [Result<bool, u16>; 6] =
        [Ok(true), Err(426), Err(405), Err(400), Err(400), Err(431)];
    for (input, want) in inputs.iter().zip(expected) {
        let whole = request_result(&[input], &limits);
        match want {
            Ok(_) => assert!(matches!(whole, Ok(Some(_))), "{whole:?}"),
            Err(status) => assert_eq!(whole, Err(status)),
        }
        for cut in 0..=input.len() {
            assert_eq!(
                request_result(&[&input[..cut], &input[cut..]], &limits),
                whole,
                "cut {cut}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(request_result(&bytes, &limits), whole, "byte by byte");
    }
}

#[test]
fn handshake_responses_at_every_split() {
    let (hs, request) = ClientHandshake::new("h", "/ws", &["v1"], &[]);
    let (req, _) = parse_request(&request, &HandshakeLimits::default())
        .unwrap()
        .unwrap();
    let mut good = Vec::new();
    write_accept_response(&mut good, &req, Some("v1"));
    good.extend_from_slice(&[0x81, 0x00]);
    let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec();
    for input in [good, refused] {
        let result = |chunks: &[&[u8]]| {
            let mut buf = Vec::new();
            let mut last = Ok(None);
            for chunk in chunks {
                buf.extend_from_slice(chunk);
                last = hs.parse_response(&buf);
                if !matches!(last, Ok(None)) {
                    break;
                }
            }
            last
        };
        let whole = result(&[&input]);
        assert!(!matches!(whole, Ok(None)));
        for cut in 0..=input.len() {
            assert_eq!(result(&[&input[..cut], &input[cut..]]), whole, "cut {cut}");
        }
    }
}
