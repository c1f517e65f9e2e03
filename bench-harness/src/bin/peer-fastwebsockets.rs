//! Peer server: a fastwebsockets echo server, upgraded through hyper 1 as in fastwebsockets' own
//! echo example, on a multi-thread tokio runtime with one worker per CPU. `FragmentCollector`
//! reassembles fragmented messages; fastwebsockets answers pings and closes by itself.
//!
//! Usage: `peer-fastwebsockets --listen ADDR`. Prints nothing but errors.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tether_bench::peer;
use tokio::net::TcpListener;

fn main() {
    let addr = peer::listen_addr_from_args("peer-fastwebsockets").unwrap_or_else(|e| peer::die(e));
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
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(async move {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http1::Builder::new()
                            .serve_connection(io, service_fn(upgrade_request))
                            .with_upgrades()
                            .await;
                    });
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    });
}

async fn upgrade_request(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = echo(fut).await;
    });
    Ok(response)
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}
