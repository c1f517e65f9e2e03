//! Baseline for the idle-memory measurement (tether-bench's `hold101` server kind, scenario
//! `idle-memory-19k`): the least a glommio server on `tether-shards` can hold per connection.
//! Each shard accepts on its SO_REUSEPORT socket; each connection's task reads the request once
//! into a small stack buffer, answers a fixed `101`, then waits for more input (which it
//! discards) until EOF.
//!
//!   cargo run --release -p tether-shards --example hold101 -- 127.0.0.1:0 2
//!
//! Prints `listen=ADDR` once all shards run.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
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
                    let mut buf = [0u8; 64];
                    // Read the request head (small requests arrive in one segment), answer.
                    if s.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                        )
                        .await;
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
