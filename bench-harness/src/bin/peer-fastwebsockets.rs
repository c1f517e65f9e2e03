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
use tokio::net::TcpStream;

fn main() {
    let addr = peer::listen_addr_from_args("peer-fastwebsockets").unwrap_or_else(|e| peer::die(e));
    peer::serve_tokio(addr, serve)
}

/// One connection: hyper's HTTP/1.1 server with upgrades, as in fastwebsockets' echo example.
async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = http1::Builder::new()
        .serve_connection(io, service_fn(upgrade_request))
        .with_upgrades()
        .await;
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
