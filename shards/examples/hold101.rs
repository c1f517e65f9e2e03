//! Baseline for the idle-memory measurement (tether-bench's `hold101` server kind, scenario
//! `idle-memory-19k`): the least a glommio server on `tether-shards` can hold per connection.
//! Each shard accepts on its SO_REUSEPORT socket; each connection's task reads the request head
//! into a buffer it frees once it has answered `101` (with the `Sec-WebSocket-Accept` a client
//! checks), then waits for more input (read into a small stack buffer and discarded) until EOF.
//!
//!   cargo run --release -p tether-shards --example hold101 -- 127.0.0.1:0 2
//!
//! Prints `listen=ADDR` once all shards run.

use base64::Engine as _;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use sha1::{Digest, Sha1};
use tether_shards::{cpus::ShardCount, listener, Node, NodeConfig, Placement};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()
        .expect("ADDR");
    let shards: ShardCount = args
        .next()
        .unwrap_or_else(|| "auto".into())
        .parse()
        .expect("SHARDS");
    let placement = Placement::discover(shards, None).expect("placement");
    let n = placement.shards();
    let listeners = listener::bind_reuseport_group(addr, n, 4096).expect("bind");
    let local = listeners[0].local_addr().expect("local addr");
    let node = Node::start::<(), _, _, _>(NodeConfig::new(placement), listeners, |_, l| {
        let l = listener::into_glommio(l).map_err(|e| e.to_string())?;
        Ok(async move {
            loop {
                let Ok((mut s, _peer)) = l.accept().await else {
                    continue;
                };
                glommio::spawn_local(async move {
                    {
                        // Boxed: the head's buffers are freed with it, not kept in the task.
                        let Some(response) = Box::pin(read_upgrade(&mut s)).await else {
                            return;
                        };
                        if s.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let mut buf = [0u8; 64];
                    while s.read(&mut buf).await.unwrap_or(0) > 0 {}
                })
                .detach();
            }
        })
    })
    .expect("start");
    println!("listen={local}");
    node.join().expect("join");
}

/// Largest request head read.
const HEAD_BYTES_MAX: usize = 4096;

/// Reads a request head and returns the `101` that answers it, or `None` (EOF, no key, too
/// long).
async fn read_upgrade(s: &mut glommio::net::TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&chunk[..n]);
        if head.len() > HEAD_BYTES_MAX {
            return None;
        }
    }
    let text = std::str::from_utf8(&head).ok()?;
    let key = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })?;
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    Some(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}
