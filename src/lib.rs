//! tether: a thread-per-core WebSocket gateway for fleets of persistently connected devices.
//!
//! The library holds everything that is not the runtime: the sans-IO RFC 6455 core ([`ws`]).

pub mod ws;
