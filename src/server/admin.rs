//! The admin HTTP endpoint: `GET /metrics` (Prometheus text), `/healthz`, `/readyz`.
//!
//! It runs on its own small thread with blocking std sockets, away from the shards, so a
//! scrape never delays connection work and a stuck shard cannot hide the metrics that would
//! show it. One request per connection, served in turn; each connection gets
//! [`ADMIN_IO_TIMEOUT`] for its request and response and a head of at most
//! [`ADMIN_HEAD_BYTES_MAX`] bytes, so a slow or hostile client holds the thread only briefly.
//! `/healthz` is 200 while the process runs; `/readyz` is 200 while the node accepts
//! connections and 503 from the moment it starts draining.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use super::{
    metrics::{self, ShardMetrics},
    node::NodeShared,
};

/// Time an admin client has to send its request and to read the response.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest admin request head.
pub const ADMIN_HEAD_BYTES_MAX: usize = 8192;

/// Appends more metrics text to `/metrics` (registered with `Server::metrics_source`).
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// What the admin thread reads.
pub struct AdminState {
    pub shards: Vec<Arc<ShardMetrics>>,
    pub node: Arc<NodeShared>,
    /// Other parts of the node (e.g. the messaging bus).
    pub extra: Vec<MetricsSource>,
}

/// Serves admin requests on `listener` until the process exits.
pub fn spawn(listener: TcpListener, state: AdminState) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tether-admin".to_string())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_one(stream, &state) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .map(|_| ())
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn serve_one(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut buf = vec![0u8; ADMIN_HEAD_BYTES_MAX];
    let mut len = 0;
    let (method, path) = loop {
        if len == buf.len() {
            return respond(
                &mut stream,
                431,
                "Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            );
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => {
                return respond(
                    &mut stream,
                    400,
                    "Bad Request",
                    "text/plain",
                    "malformed request\n",
                )
            }
        }
    };
    if method != "GET" {
        return respond(
            &mut stream,
            405,
            "Method Not Allowed",
            "text/plain",
            "use GET\n",
        );
    }
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let shards: Vec<&ShardMetrics> = state.shards.iter().map(|m| m.as_ref()).collect();
            let mut body = metrics::render(&shards, state.node.gauges());
            for source in &state.extra {
                source(&mut body);
            }
            respond(&mut stream, 200, "OK", "text/plain; version=0.0.4", &body)
        }
        "/healthz" => respond(&mut stream, 200, "OK", "text/plain", "ok\n"),
        "/readyz" => {
            if state.node.draining.load(Ordering::Relaxed) {
                respond(
                    &mut stream,
                    503,
                    "Service Unavailable",
                    "text/plain",
                    "draining\n",
                )
            } else {
                respond(&mut stream, 200, "OK", "text/plain", "ready\n")
            }
        }
        _ => respond(&mut stream, 404, "Not Found", "text/plain", "not found\n"),
    }
}
