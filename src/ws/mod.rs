//! The sans-IO RFC 6455 core: opening handshake (server and client side), frame codec for both
//! roles, message reassembly, incremental UTF-8 validation, close codes and the fast unmask.
//!
//! Every function here takes bytes and returns results; nothing imports a runtime, so the server
//! (glommio), the load generator (tokio) and the fuzz targets share exactly this code.
//!
//! Deviations from the contract in `WS-API.md` (all additive):
//! - [`Decoder::frame_bytes_needed`] reports the total size of the frame at the front of a
//!   buffer once its header is complete (for sizing reads).
//! - [`ClientHandshake::with_head_bytes_max`] bounds the response head (default 8192 bytes).
//! - [`ClientHandshake::new_with_key`] takes the key bytes (reproducible tests and fuzzing).
//! - The error enums implement `Display` and `std::error::Error`.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use frame::{
    encode_close, encode_frame, write_frame_header, Decoder, DecoderLimits, Event, MessageKind,
    OpCode, ProtocolError, Role, MAX_HEADER_BYTES,
};
pub use handshake::{
    accept_key, parse_request, write_accept_response, write_error_response, write_handshake_error,
    ClientHandshake, ClientHandshakeError, ClientResponse, HandshakeError, HandshakeLimits,
    UpgradeRequest,
};
