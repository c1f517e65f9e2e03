//! NATS, spoken by each shard itself.
//!
//! This module owns the gateway's NATS client, in three layers:
//!
//! * [`proto`]: the wire codec, sans-IO (parse server operations from a byte slice, encode
//!   client operations into a buffer).
//! * [`Client`]: the protocol state of one connection, sans-IO: the subscription table that is
//!   restored after every reconnect, pings as round-trip markers that complete in order, the
//!   bounded outbound buffer, the answers to server pings, the login (`CONNECT` with the
//!   credentials, the server's nonce signed with an NKey).
//! * [`Connection`]: the driver, one glommio task on the shard's own executor that owns the
//!   socket (TCP, optionally TLS with rustls), connects and reconnects forever across the
//!   configured URLs and the ones the server announces, writes everything queued in one write
//!   per wake-up, parses what arrives in place and hands each event to the shard's callback
//!   synchronously, and answers `request()`s through one wildcard inbox subscription.
//!
//! Also here, as the bus shares them: [`NatsAuth`] (the login and TLS settings),
//! [`reconnect_delay`] (the backoff) and [`RequestError`].
//!
//! Nothing here crosses a thread: a subscription is one entry in the client's table, not a
//! task or a channel, and a message is handed to the callback as a slice of the read buffer.

mod client;
mod conn;
mod options;
pub mod proto;
mod tls;

pub use client::{
    Client, ClientError, ClientOptions, Event, Login, Msg, PublishError, ServerInfo, Sid,
    SubjectText,
};
pub use conn::{ConnStats, ConnectConfig, ConnectError, Connection, OwnedMsg};
pub use options::{reconnect_delay, NatsAuth, RequestError};
