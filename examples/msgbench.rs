//! Routed device-to-device messaging benchmark (docs/benchmarks.md, "Messaging").
//!
//! `pairs` sender devices each send to their own receiver device through tether (`send`
//! operations over `/ws`), open loop at a fixed total rate: each message carries its *intended*
//! send time, and the receiver records `now - intended` into an HdrHistogram, so a stall in the
//! path shows up as latency instead of silently lowering the offered load (wrk2's correction).
//! Senders connect to `--send-url`, receivers to `--recv-url` (the same node, or another node
//! joined by NATS). One blocking thread per connection; the handshake and frames use
//! `tether::ws`'s client side.
//!
//! ```text
//! cargo run --release --example msgbench -- --send-url ws://127.0.0.1:P/ws \
//!     --recv-url ws://127.0.0.1:Q/ws --secret S --pairs 20 --rate 20000 --secs 10
//! ```
//! Prints one JSON line: offered and achieved rates, received count, latency percentiles (µs).

use hdrhistogram::Histogram;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether::auth::{mint_hs256, Claims};
use tether::ws::{
    encode_frame, encode_pong, ClientHandshake, Context, DecoderLimits, Ended, Incoming,
    MessageKind, OpCode, Role,
};

struct Args {
    send_url: String,
    recv_url: String,
    secret: String,
    pairs: usize,
    rate: u64,
    secs: u64,
    payload_bytes: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        send_url: String::new(),
        recv_url: String::new(),
        secret: std::env::var("TETHER_JWT_SECRET").unwrap_or_default(),
        pairs: 10,
        rate: 10_000,
        secs: 10,
        payload_bytes: 64,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = argv[i + 1].clone();
        match argv[i].as_str() {
            "--send-url" => a.send_url = v,
            "--recv-url" => a.recv_url = v,
            "--secret" => a.secret = v,
            "--pairs" => a.pairs = v.parse().expect("--pairs N"),
            "--rate" => a.rate = v.parse().expect("--rate MSGS_PER_S"),
            "--secs" => a.secs = v.parse().expect("--secs N"),
            "--payload-bytes" => a.payload_bytes = v.parse().expect("--payload-bytes N"),
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    assert!(
        !a.send_url.is_empty() && !a.recv_url.is_empty(),
        "--send-url and --recv-url are required"
    );
    a
}

/// An upgraded client connection.
struct Client {
    stream: TcpStream,
    /// The connection layer shared with the server and loadgen (leftover bytes, owed pongs).
    ws: Context,
}

fn connect(url: &str, token: &str) -> Client {
    let rest = url.strip_prefix("ws://").expect("ws:// URL");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = TcpStream::connect(host).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let auth = format!("Bearer {token}");
    let (hs, request) =
        ClientHandshake::new(host, &path, &["tether.v1"], &[("Authorization", &auth)]);
    stream.write_all(&request).expect("send handshake");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read handshake");
        assert!(n > 0, "closed during handshake");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((_, consumed)) = hs.parse_response(&buf).expect("101 Switching Protocols") {
            buf.drain(..consumed);
            break;
        }
    }
    let mut client = Client {
        stream,
        ws: Context::new(Role::Client, DecoderLimits::default()),
    };
    let hello = client.next_text(buf);
    assert!(hello.contains("\"hello\""), "expected hello, got {hello}");
    client
}

impl Client {
    /// Feeds `data` (bytes read from the server) to the context: answers pings, hands each text
    /// message to `on_text`; panics if the server closes or breaks the protocol.
    fn feed(&mut self, data: &mut [u8], mut on_text: impl FnMut(&[u8])) {
        let mut pongs = Vec::new();
        let ended = self.ws.feed(data, |incoming| match incoming {
            Incoming::Message {
                kind: MessageKind::Text,
                data,
            } => on_text(data),
            Incoming::Ping(p) => encode_pong(&mut pongs, Role::Client, p),
            Incoming::Message { .. } | Incoming::Pong(_) => {}
        });
        match ended {
            None => {}
            Some(Ended::PeerClosed(code)) => panic!("server closed the connection ({code:?})"),
            Some(Ended::Violation(e)) => panic!("server broke the protocol: {e}"),
        }
        if !pongs.is_empty() {
            self.stream.write_all(&pongs).expect("pong");
        }
    }

    /// The first text message, from the bytes after the 101 (`first`) and then from the socket.
    fn next_text(&mut self, mut first: Vec<u8>) -> String {
        let mut text: Option<String> = None;
        let keep = |text: &mut Option<String>, data: &[u8]| {
            text.get_or_insert_with(|| String::from_utf8_lossy(data).into_owned());
        };
        self.feed(&mut first, |data| keep(&mut text, data));
        let mut chunk = [0u8; 16384];
        while text.is_none() {
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed");
            self.feed(&mut chunk[..n], |data| keep(&mut text, data));
        }
        text.expect("a text message")
    }
}

fn token(secret: &str, device: &str) -> String {
    mint_hs256(secret.as_bytes(), &Claims::device(device, 3600)).expect("sign token")
}

/// The intended send time (µs since the run started) carried in the payload as `"t":N`.
fn field_t(text: &str) -> Option<u64> {
    let at = text.find("\"t\":")? + 4;
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn main() {
    let args = parse_args();
    let run_id = format!("{:x}", rand::random::<u32>());
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for i in 0..args.pairs {
        let c = connect(
            &args.recv_url,
            &token(&args.secret, &format!("bench-rx-{run_id}-{i}")),
        );
        c.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        receivers.push(c);
    }
    let senders: Vec<Client> = (0..args.pairs)
        .map(|i| {
            connect(
                &args.send_url,
                &token(&args.secret, &format!("bench-tx-{run_id}-{i}")),
            )
        })
        .collect();
    let start = Instant::now() + Duration::from_millis(200);
    let per_sender_interval_ns = (1e9 * args.pairs as f64 / args.rate as f64) as u64;
    let total = Duration::from_secs(args.secs);
    let padding = "x".repeat(args.payload_bytes);
    let mut threads = Vec::new();
    for mut rx in receivers {
        let (hist, received, stop) = (hist.clone(), received.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut chunk = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                // Read and decode (timeouts let the loop see `stop`).
                match rx.stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => rx.feed(&mut chunk[..n], |data| {
                        let now_us = start.elapsed().as_micros() as u64;
                        if let Some(t) = field_t(&String::from_utf8_lossy(data)) {
                            local.saturating_record(now_us.saturating_sub(t).max(1));
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }),
                    Err(_) => {}
                }
            }
            hist.lock()
                .expect("histogram lock")
                .add(&local)
                .expect("same bounds");
        }));
    }
    let mut send_threads = Vec::new();
    for (i, mut tx) in senders.into_iter().enumerate() {
        let sent = sent.clone();
        let to = format!("bench-rx-{run_id}-{i}");
        let padding = padding.clone();
        send_threads.push(std::thread::spawn(move || {
            // Stagger senders across one interval so the total load is smooth.
            let offset_ns = per_sender_interval_ns * i as u64 / args.pairs as u64;
            let mut k: u64 = 0;
            let mut out = Vec::with_capacity(256);
            loop {
                let intended = Duration::from_nanos(offset_ns + k * per_sender_interval_ns);
                if intended >= total {
                    break;
                }
                let due = start + intended;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let t_us = intended.as_micros() as u64;
                let body =
                    format!(r#"{{"op":"send","to":"{to}","data":{{"t":{t_us},"p":"{padding}"}}}}"#);
                out.clear();
                encode_frame(&mut out, Role::Client, OpCode::Text, true, body.as_bytes());
                tx.stream.write_all(&out).expect("send");
                sent.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
            tx
        }));
    }
    let senders: Vec<Client> = send_threads
        .into_iter()
        .map(|t| t.join().expect("sender"))
        .collect();
    let send_elapsed = start.elapsed();
    // Let in-flight messages arrive (bounded), then stop the receivers.
    let expected = sent.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("receiver");
    }
    drop(senders);
    let h = hist.lock().expect("histogram lock");
    let got = received.load(Ordering::Relaxed);
    println!(
        "{{\"pairs\":{},\"offered_msgs_per_s\":{},\"secs\":{},\"sent\":{},\"received\":{},\"lost\":{},\"achieved_msgs_per_s\":{:.0},\"latency_us_p50\":{},\"latency_us_p99\":{},\"latency_us_p999\":{},\"latency_us_max\":{}}}",
        args.pairs,
        args.rate,
        args.secs,
        expected,
        got,
        expected.saturating_sub(got),
        got as f64 / send_elapsed.as_secs_f64(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    );
}
