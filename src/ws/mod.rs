//! The sans-IO RFC 6455 core: opening handshake (server and client side), frame codec for both
//! roles, message reassembly, incremental UTF-8 validation, close codes and the fast unmask.
//!
//! Every function here takes bytes and returns results; nothing imports a runtime, so the server
//! (glommio), the load generator (tokio) and the fuzz targets share exactly this code.
//!
//! The layers, bottom up: [`mask`] and [`utf8`] (byte-level helpers), [`frame`] (the frame
//! codec: [`Decoder`] and the encoders), [`close`] (close codes and the close-handshake state),
//! [`context`] (one connection's receive state above the decoder: leftover bytes, the pongs and
//! the close echo owed, RFC 6455 §5.5), and [`handshake`] (the opening handshake, both sides).

pub mod close;
pub mod context;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::CloseState;
pub use context::{encode_pong, Budget, Context, Ended, Incoming, Unbudgeted};
pub use frame::{
    encode_close, encode_frame, write_frame_header, Decoder, DecoderLimits, Event, MessageKind,
    OpCode, ProtocolError, Role, MAX_HEADER_BYTES,
};
pub use handshake::{
    accept_key, parse_request, write_accept_response, write_error_response, write_handshake_error,
    ClientHandshake, ClientHandshakeError, ClientResponse, HandshakeError, HandshakeLimits,
    UpgradeRequest,
};
