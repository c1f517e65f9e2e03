//! tether: a thread-per-core WebSocket gateway for fleets of persistently connected devices.
//!
//! The library holds the sans-IO RFC 6455 core ([`ws`]), the server ([`server`]), the device
//! wire protocol ([`proto`]), device authentication ([`auth`]), routing by subject interest
//! ([`bus`]) and the device endpoint `/ws` ([`device`]).

// Every public item says what it is for (denied in CI through `clippy -D warnings`).
#![warn(missing_docs)]

pub mod auth;
pub mod bus;
pub mod config;
pub mod device;
mod few;
pub mod nats;
pub mod proto;
pub mod server;
pub mod ws;
