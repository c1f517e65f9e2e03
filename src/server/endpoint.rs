//! Pluggable endpoints: what happens before the 101, with each message, and at the close.
//!
//! An [`Endpoint`] is created once per shard (by the factory given to
//! [`super::Server::endpoint`]) and serves one request path. For every upgrade request on its
//! path it gets the parsed [`UpgradeRequest`] and decides, possibly asynchronously (e.g. an
//! auth request over the bus), to reject it with an HTTP status or to accept it with an
//! optional subprotocol and a [`Session`]. The session then receives the connection's
//! [`ConnHandle`] at open, each complete message, and the close code at the end. The whole
//! decision runs under the node's `handshake_timeout`.
//!
//! Sessions are `!Send` and live on their shard; they answer by enqueueing on the handle
//! (bounded by `outbound_bytes_max`, see [`super::conn`]) and never block.

use std::{future::Future, net::SocketAddr, pin::Pin};

use crate::ws::{MessageKind, UpgradeRequest};

use super::conn::{ConnHandle, ConnId};
use super::metrics::HandshakeResult;

/// A future on the shard that may borrow from its caller.
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What an endpoint knows about a connection before it is upgraded.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Node-unique id the connection will have in its shard's registry.
    pub id: ConnId,
    /// The client's address: the socket's peer, or on a listener with `proxy_protocol` the
    /// source its PROXY header names (the socket's peer when it names none: v1 `UNKNOWN`, v2
    /// `LOCAL`).
    pub peer: SocketAddr,
    /// Index of the shard that owns the connection.
    pub shard: usize,
}

/// An accepted upgrade.
pub struct Accepted {
    /// Subprotocol to confirm in `Sec-WebSocket-Protocol` (must be one the client offered).
    pub protocol: Option<String>,
    /// Receives the connection's messages.
    pub session: Box<dyn Session>,
}

/// A refused upgrade: the client gets this HTTP status and body, then the socket closes.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// HTTP status of the answer.
    pub status: u16,
    /// Short body of the answer.
    pub body: String,
    /// The `result` label it is counted under in `tether_handshakes_total`.
    pub result: HandshakeResult,
}

impl Rejected {
    /// A refusal counted as `rejected` (or `bad_request` for a 400).
    pub fn new(status: u16, body: impl Into<String>) -> Rejected {
        Rejected {
            status,
            body: body.into(),
            result: match status {
                400 => HandshakeResult::BadRequest,
                _ => HandshakeResult::Rejected,
            },
        }
    }

    /// The same refusal counted under `result`.
    pub fn counted_as(self, result: HandshakeResult) -> Rejected {
        Rejected { result, ..self }
    }
}

/// One request path's behaviour on one shard.
pub trait Endpoint {
    /// Decides on an upgrade request. Runs before the 101 and within `handshake_timeout`.
    fn accept<'a>(
        &'a self,
        req: &'a UpgradeRequest,
        info: &'a ConnInfo,
    ) -> LocalFuture<'a, Result<Accepted, Rejected>>;
}

/// One upgraded connection's behaviour.
pub trait Session {
    /// The connection is registered in its shard's registry and can be sent to.
    fn on_open(&mut self, _conn: &ConnHandle) {}
    /// A complete message (text is valid UTF-8). `data` is only valid during the call.
    fn on_message(&mut self, conn: &ConnHandle, kind: MessageKind, data: &[u8]);
    /// The connection ended with `code` (the peer's or ours; 1006 without a close handshake).
    /// The handle no longer accepts messages.
    fn on_close(&mut self, _conn: &ConnHandle, _code: u16) {}
}

/// `/echo`: each complete message goes back as one message of the same type.
pub struct Echo;

struct EchoSession;

impl Endpoint for Echo {
    fn accept<'a>(
        &'a self,
        _req: &'a UpgradeRequest,
        _info: &'a ConnInfo,
    ) -> LocalFuture<'a, Result<Accepted, Rejected>> {
        Box::pin(async {
            Ok(Accepted {
                protocol: None,
                session: Box::new(EchoSession),
            })
        })
    }
}

impl Session for EchoSession {
    fn on_message(&mut self, conn: &ConnHandle, kind: MessageKind, data: &[u8]) {
        // A refused send has already applied the slow-consumer policy (close 1008, counted).
        let _ = conn.send(kind, data);
    }
}
