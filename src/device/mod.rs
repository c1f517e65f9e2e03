//! The device endpoint `/ws`: protocol v1 sessions on the server's shards.
//!
//! [`hub`] holds the per-shard logic (sessions, interest, deliveries, acks, requests) and is
//! independent of the server; the glue to the server's endpoint seam lives beside it.

pub mod hub;
