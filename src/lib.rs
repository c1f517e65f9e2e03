//! tether: a thread-per-core WebSocket gateway for fleets of persistently connected devices.
//!
//! The library holds the sans-IO RFC 6455 core ([`ws`]), the server ([`server`]), the device
//! wire protocol ([`proto`]), device authentication ([`auth`]), routing by subject interest
//! ([`bus`]) and the device endpoint `/ws` ([`device`]).

pub mod auth;
pub mod bus;
pub mod config;
pub mod device;
pub mod proto;
pub mod server;
// Held to `missing_docs` and `unreachable_pub` (denied in CI through `clippy -D warnings`).
#[warn(missing_docs, unreachable_pub)]
pub mod ws;
