//! Peer server: a tokio-tungstenite echo server on a multi-thread tokio runtime with one worker
//! per CPU, as a tokio-tungstenite user would write it (default `WebSocketConfig`). Echoes text
//! and binary messages; tungstenite answers pings and closes by itself.
//!
//! Usage: `peer-tungstenite --listen ADDR`. Prints nothing but errors.

use futures_util::{SinkExt, StreamExt};
use tether_bench::peer;
use tokio::net::TcpStream;

fn main() {
    let addr = peer::listen_addr_from_args("peer-tungstenite").unwrap_or_else(|e| peer::die(e));
    peer::serve_tokio(addr, serve)
}

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}
