//! Peer server: a tokio-tungstenite echo server on a multi-thread tokio runtime with one worker
//! per CPU, as a tokio-tungstenite user would write it (default `WebSocketConfig`). Echoes text
//! and binary messages; tungstenite answers pings and closes by itself.
//!
//! Usage: `peer-tungstenite --listen ADDR`. Prints nothing but errors.

use futures_util::{SinkExt, StreamExt};
use tether_bench::peer;
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let addr = peer::listen_addr_from_args("peer-tungstenite").unwrap_or_else(|e| peer::die(e));
    peer::raise_nofile_limit().unwrap_or_else(|e| peer::die(format!("setrlimit: {e}")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(peer::cpus_available())
        .enable_all()
        .build()
        .unwrap_or_else(|e| peer::die(format!("tokio runtime: {e}")));
    runtime.block_on(async move {
        let std_listener =
            peer::bind_listener(addr).unwrap_or_else(|e| peer::die(format!("bind {addr}: {e}")));
        let listener = TcpListener::from_std(std_listener)
            .unwrap_or_else(|e| peer::die(format!("listener: {e}")));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                // EMFILE and friends: say so, back off briefly, keep serving.
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
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
