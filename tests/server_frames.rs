//! The upgraded frame loop of `tether serve --echo` over real sockets: echo of text, binary
//! and fragmented messages, pings, protocol violations with their close codes, the close
//! handshake, idle pings and the silence timeout, the slow-consumer policy.

mod server_support;

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use server_support::*;
use tether::ws::OpCode;

const T: Duration = Duration::from_secs(5);

#[test]
fn echoes_text_binary_fragmented_and_large_messages() {
    let srv = Server::start(&["--shards", "1", "--echo"]);
    let mut c = Client::connect(srv.port, "/echo");
    c.send_text("hello");
    assert_eq!(c.recv(T), Got::Text("hello".into()));
    c.send_frame(OpCode::Binary, true, &[0, 1, 2, 255]);
    assert_eq!(c.recv(T), Got::Binary(vec![0, 1, 2, 255]));
    // Fragmented text with a ping between the fragments: pong first, then one message.
    c.send_frame(OpCode::Text, false, "frag".as_bytes());
    c.send_frame(OpCode::Ping, true, b"p1");
    c.send_frame(OpCode::Continuation, false, "men".as_bytes());
    c.send_frame(OpCode::Continuation, true, "ted ✓".as_bytes());
    assert_eq!(c.recv(T), Got::Pong(b"p1".to_vec()));
    assert_eq!(c.recv(T), Got::Text("fragmented ✓".into()));
    // Empty messages.
    c.send_frame(OpCode::Text, true, b"");
    assert_eq!(c.recv(T), Got::Text(String::new()));
    // A message bigger than the shard's 64 KiB scratch buffer, in several reads.
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    c.send_frame(OpCode::Binary, true, &big);
    assert_eq!(c.recv(T), Got::Binary(big));
    // Many small messages in one write.
    let mut burst = Vec::new();
    for i in 0..100 {
        tether::ws::encode_frame(
            &mut burst,
            tether::ws::Role::Client,
            OpCode::Text,
            true,
            format!("m{i}").as_bytes(),
        );
    }
    c.send_raw(&burst);
    for i in 0..100 {
        assert_eq!(c.recv(T), Got::Text(format!("m{i}")));
    }
    // Close handshake: our 1000 comes back, then the server closes TCP.
    c.send_close(1000);
    assert_eq!(c.recv(T), Got::Close(Some(1000)));
    assert!(c.wait_eof(T));
    drop(c);
    // Counted once the server has seen our FIN.
    assert!(eventually(T, || srv
        .metric("tether_closes_total{code=\"1000\"}")
        == 1));
    let m = srv.metrics();
    assert_eq!(metric_value(&m, "tether_messages_received_total"), 105);
    assert_eq!(metric_value(&m, "tether_messages_sent_total"), 105);
    assert!(metric_value(&m, "tether_bytes_received_total") > 700_000);
    assert!(metric_value(&m, "tether_bytes_sent_total") > 700_000);
}

/// Sends `bytes` after the upgrade and expects a close frame with `code`, then EOF.
fn violation(srv: &Server, bytes: &[u8], code: u16) {
    let mut c = Client::connect(srv.port, "/echo");
    c.send_raw(bytes);
    assert_eq!(c.recv_close(T), Got::Close(Some(code)), "for {bytes:02x?}");
    assert!(
        c.wait_eof(T),
        "server kept the connection open after {code}"
    );
}

#[test]
fn protocol_violations_get_their_close_codes() {
    let srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--frame-bytes-max",
        "1000",
        "--message-bytes-max",
        "1500",
    ]);
    // Unmasked client frame.
    violation(&srv, &[0x81, 0x02, b'h', b'i'], 1002);
    // Reserved bits set (no extension negotiated).
    violation(&srv, &[0xC1, 0x80, 0, 0, 0, 0], 1002);
    // Reserved opcode 3.
    violation(&srv, &[0x83, 0x80, 0, 0, 0, 0], 1002);
    // Fragmented ping.
    violation(&srv, &[0x09, 0x80, 0, 0, 0, 0], 1002);
    // Continuation without a message.
    violation(&srv, &[0x80, 0x80, 0, 0, 0, 0], 1002);
    // Invalid UTF-8 in a text message: 1007.
    violation(&srv, &[0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28], 1007);
    // A frame above frame_bytes_max: 1009 (only the header is sent).
    violation(&srv, &[0x82, 0xFE, 0x07, 0xD0, 0, 0, 0, 0], 1009);
    // A close frame with an invalid code (999): 1002.
    violation(&srv, &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE7], 1002);
    // Counted once each connection is fully closed (after our FIN reached the server).
    assert!(eventually(T, || {
        let m = srv.metrics();
        metric_value(&m, "tether_closes_total{code=\"1002\"}") == 6
            && metric_value(&m, "tether_closes_total{code=\"1007\"}") == 1
            && metric_value(&m, "tether_closes_total{code=\"1009\"}") == 1
    }));

    // A message over message_bytes_max across fragments: 1009.
    let mut c = Client::connect(srv.port, "/echo");
    c.send_frame(OpCode::Binary, false, &[1; 900]);
    c.send_frame(OpCode::Continuation, true, &[2; 900]);
    assert_eq!(c.recv_close(T), Got::Close(Some(1009)));
}

#[test]
fn idle_peer_is_pinged_and_a_silent_one_is_dropped() {
    let srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--ping-idle",
        "200ms",
        "--silence-timeout",
        "700ms",
    ]);
    // A peer that answers pings stays connected well past the silence timeout.
    let mut alive = Client::connect(srv.port, "/echo");
    // A peer that never answers is dropped after silence_timeout.
    let mut silent = Client::connect(srv.port, "/echo");
    let started = Instant::now();
    let deadline = started + Duration::from_millis(1600);
    let mut pings = 0;
    while Instant::now() < deadline {
        match alive.recv(Duration::from_millis(100)) {
            Got::Ping(p) => {
                pings += 1;
                alive.send_frame(OpCode::Pong, true, &p);
            }
            Got::Timeout => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 2, "expected repeated idle pings, got {pings}");
    assert_eq!(silent.recv(T), Got::Ping(vec![]));
    assert!(silent.wait_eof(T));
    let dropped_after = started.elapsed();
    assert!(
        dropped_after >= Duration::from_millis(650),
        "{dropped_after:?}"
    );
    // Still alive: it echoes.
    alive.send_text("still here");
    loop {
        match alive.recv(T) {
            Got::Ping(_) => continue,
            got => {
                assert_eq!(got, Got::Text("still here".into()));
                break;
            }
        }
    }
    assert!(eventually(T, || srv
        .metric("tether_closes_total{code=\"1006\"}")
        == 1));
    let m = srv.metrics();
    assert_eq!(metric_value(&m, "tether_silence_timeouts_total"), 1);
    assert!(metric_value(&m, "tether_pings_sent_total") >= 3);
}

#[test]
fn slow_consumer_is_closed_with_1008_and_counted() {
    // The close timeout is long: after its close frame the server waits that long for ours,
    // then drops the socket, and a reset destroys the close frame still queued behind the
    // echoes this client has not read (its receive buffer is tiny). On a loaded machine this
    // client may be descheduled for seconds between the server's close and its first read.
    let srv = Server::start(&[
        "--shards",
        "1",
        "--echo",
        "--outbound-bytes-max",
        "65536",
        "--close-timeout",
        "60s",
    ]);
    // A small receive buffer so the kernel cannot absorb much of what the server sends.
    let stream = small_rcvbuf_connect(srv.port);
    let mut c = Client::upgrade(stream, "/echo").unwrap();
    let payload = vec![7u8; 16 * 1024];
    let mut frame = Vec::new();
    tether::ws::encode_frame(
        &mut frame,
        tether::ws::Role::Client,
        OpCode::Binary,
        true,
        &payload,
    );
    // Send without reading until the server gives up on us (or 64 MiB went out).
    c.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut sent = 0usize;
    while sent < 64 << 20 {
        if c.try_send_raw(&frame).is_err() {
            break;
        }
        sent += frame.len();
        if sent % (256 << 10) < frame.len() && srv.metric("tether_slow_consumer_closes_total") == 1
        {
            break;
        }
    }
    assert!(eventually(T, || srv
        .metric("tether_slow_consumer_closes_total")
        == 1));
    // Now read: the echoes that made it, then the close with 1008.
    assert_eq!(
        c.recv_close(Duration::from_secs(10)),
        Got::Close(Some(1008))
    );
    // Answered as a client does: the server counts the close once the handshake is over (an
    // unanswered one only when the close timeout runs out, here 60 s).
    let mut close = Vec::new();
    tether::ws::encode_close(&mut close, tether::ws::Role::Client, 1008, "");
    let _ = c.try_send_raw(&close);
    assert!(eventually(Duration::from_secs(5) + T, || srv
        .metric("tether_closes_total{code=\"1008\"}")
        == 1));
    assert!(eventually(T, || srv.metric("tether_outbound_queued_bytes") == 0));
}

fn small_rcvbuf_connect(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is checked and moved into a TcpStream below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    let size: libc::c_int = 4096;
    // SAFETY: `fd` is a socket; the option value is a c_int of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: `fd` is a connected socket we own.
    unsafe { TcpStream::from_raw_fd(fd) }
}
