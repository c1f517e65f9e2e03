//! Close codes (RFC 6455 §7.4) and the close-handshake state of one connection.
//!
//! The server answers each protocol violation with the code from
//! [`ProtocolError::close_code`](super::ProtocolError::close_code) and then walks
//! [`CloseState`] to know whether it still may send data and when the TCP connection may go.

/// 1000: normal closure.
pub const NORMAL: u16 = 1000;
/// 1001: endpoint going away (server shutdown, browser navigating away).
pub const GOING_AWAY: u16 = 1001;
/// 1002: protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003: data type the endpoint cannot accept.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1007: payload inconsistent with the message type (invalid UTF-8 in text).
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008: policy violation (authentication, rate limits).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009: message too big to process.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011: unexpected condition on the server.
pub const INTERNAL_ERROR: u16 = 1011;
/// 1013: try again later (overload).
pub const TRY_AGAIN_LATER: u16 = 1013;

/// Whether `code` may appear in a received Close frame: the registered codes that an endpoint
/// may send (1000–1003, 1007–1014) and the application/private ranges 3000–4999. 1004–1006 and
/// 1015 are reserved and never sent on the wire.
pub fn is_valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Close-handshake state (RFC 6455 §7.1). Start at [`CloseState::Open`]; call
/// [`CloseState::on_close_sent`] after queueing our Close frame and
/// [`CloseState::on_close_received`] on the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Data may flow both ways.
    Open,
    /// We sent Close; we send nothing more and wait for the peer's Close.
    CloseSent,
    /// The peer sent Close; we must answer with Close (then the state is `Closed`).
    CloseReceived,
    /// Both Close frames exchanged: the TCP connection may be closed.
    Closed,
}

impl CloseState {
    /// Transition after we sent a Close frame.
    pub fn on_close_sent(self) -> CloseState {
        match self {
            CloseState::Open | CloseState::CloseSent => CloseState::CloseSent,
            CloseState::CloseReceived | CloseState::Closed => CloseState::Closed,
        }
    }

    /// Transition after the peer's Close frame arrived.
    pub fn on_close_received(self) -> CloseState {
        match self {
            CloseState::Open | CloseState::CloseReceived => CloseState::CloseReceived,
            CloseState::CloseSent | CloseState::Closed => CloseState::Closed,
        }
    }

    /// Whether we may still send data frames (only before we sent Close).
    pub fn may_send_data(self) -> bool {
        matches!(self, CloseState::Open | CloseState::CloseReceived)
    }

    /// Whether we still owe the peer a Close frame in reply to theirs.
    pub fn must_reply_close(self) -> bool {
        self == CloseState::CloseReceived
    }

    /// Whether both sides have exchanged Close.
    pub fn is_closed(self) -> bool {
        self == CloseState::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            assert!(is_valid_received(c), "{c}");
        }
        for c in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_received(c), "{c}");
        }
    }

    #[test]
    fn transitions() {
        let s = CloseState::Open;
        assert!(s.may_send_data());
        let sent = s.on_close_sent();
        assert_eq!(sent, CloseState::CloseSent);
        assert!(!sent.may_send_data());
        assert_eq!(sent.on_close_received(), CloseState::Closed);
        let recv = s.on_close_received();
        assert!(recv.must_reply_close());
        let done = recv.on_close_sent();
        assert!(done.is_closed());
        assert!(!done.may_send_data());
    }
}
