//! The device endpoint `/ws`: protocol v1 sessions on the server's shards.
//!
//! [`hub`] holds the per-shard logic (sessions, interest, deliveries, acks, requests) and is
//! independent of the server; [`endpoint`] is the glue to the server's endpoint seam;
//! [`sessions`] counts each device's sessions on the node and caps them; [`mailbox`] is one
//! session's durable replay/ack state machine;
//! [`config`] holds the messaging flags of `tether serve` and `tether token`; [`keys`] keeps
//! JWKS verification keys current on a helper thread.

pub mod config;
pub mod endpoint;
pub mod hub;
pub mod keys;
pub mod mailbox;
pub mod sessions;
pub mod tick;
