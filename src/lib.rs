//! tether: a thread-per-core WebSocket gateway for fleets of persistently connected devices.
//!
//! The library holds the sans-IO RFC 6455 core ([`ws`]) and the server ([`server`]).

pub mod server;
pub mod ws;
