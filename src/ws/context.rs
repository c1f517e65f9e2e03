//! The connection layer above the frame decoder, runtime-free: feed it the bytes read from the
//! peer, get the messages and what RFC 6455 §5.5 obliges you to send back.
//!
//! A [`Context`] keeps what must survive between reads: the [`Decoder`] (fragmented message,
//! UTF-8 state), the bytes of an incomplete frame (`leftover`, held only while a frame is
//! split across reads and freed as soon as it is consumed), and the close handshake's
//! [`CloseState`] (stored in the decoder's spare padding: an idle connection's context is the
//! size of a decoder and an empty `Vec`). It does no IO and owns no socket or queue: the load
//! generator (tokio, `loadgen/src/worker.rs`) and `examples/msgbench.rs` drive it and differ only
//! in how they read and where they queue what they send. The server's frame loop
//! (`src/server/conn_task.rs`) still keeps its own copy of this layer, because it charges every
//! leftover byte to the shard's partial-message budget; moving that budget behind a hook here is
//! the next step. This is tungstenite's `WebSocketContext` without its stream: the stream is the
//! caller's.
//!
//! The rules that live here (RFC 6455 §5.5):
//! - a ping is handed out as [`Incoming::Ping`] only while we have not sent our close: the
//!   caller owes a pong with the same payload ([`encode_pong`]); after our close nothing is owed;
//! - the peer's close ends the feed with [`Ended::PeerClosed`]; we owe the close echo unless ours
//!   is already sent ([`Context::encode_close`] writes it at most once);
//! - a protocol violation ends the feed with [`Ended::Violation`], whose
//!   [`ProtocolError::close_code`] is the code to close with (the stream cannot be read past
//!   it, so the state becomes [`CloseState::Closed`]: the caller writes its close frame with
//!   [`super::encode_close`] and does not wait for the peer's);
//! - after either end, [`Context::feed`] hands out nothing more.

use super::close::CloseState;
use super::frame::{
    encode_close, encode_frame, Decoder, DecoderLimits, Event, MessageKind, OpCode, ProtocolError,
    Role,
};

/// What [`Context::feed`] found in the peer's bytes, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A complete message (text is valid UTF-8); `data` is valid during the call only.
    Message {
        /// Text or binary.
        kind: MessageKind,
        /// The payload, unmasked and reassembled.
        data: &'a [u8],
    },
    /// The peer pinged: a pong with this payload is owed ([`encode_pong`]). A sender under a
    /// ping flood may answer only the latest (RFC 6455 §5.5.3).
    Ping(&'a [u8]),
    /// The peer's pong (an answer, or unsolicited).
    Pong(&'a [u8]),
}

/// Why [`Context::feed`] stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The peer's close frame arrived, with its code if it had one. Unless our close went out
    /// first, the echo is owed ([`Context::encode_close`]).
    PeerClosed(Option<u16>),
    /// The peer broke the protocol: close with [`ProtocolError::close_code`].
    Violation(ProtocolError),
}

/// One WebSocket connection's receive state and close handshake, for either role.
#[derive(Debug)]
pub struct Context {
    decoder: Decoder,
    /// Bytes of an incomplete frame; empty (no capacity) between frames.
    leftover: Vec<u8>,
}

impl Context {
    /// A context for the `role` side of a freshly opened connection.
    pub fn new(role: Role, limits: DecoderLimits) -> Context {
        Context {
            decoder: Decoder::new(role, limits),
            leftover: Vec::new(),
        }
    }

    /// The side this context runs on.
    pub fn role(&self) -> Role {
        self.decoder.role()
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> CloseState {
        self.decoder.close_state
    }

    /// Bytes of an incomplete frame held between reads.
    pub fn buffered_bytes(&self) -> usize {
        self.leftover.len()
    }

    /// Decodes every complete frame of the bytes held from earlier reads followed by `new`,
    /// handing each message, ping and pong to `on` in order; keeps the bytes of a trailing
    /// incomplete frame. `new` is unmasked in place. Returns `Some` once the peer's close or a
    /// violation is seen: the bytes after it are not looked at, and once the peer's close is
    /// in, later calls hand out nothing and return `None`.
    pub fn feed(&mut self, new: &mut [u8], on: impl FnMut(Incoming<'_>)) -> Option<Ended> {
        if matches!(
            self.decoder.close_state,
            CloseState::CloseReceived | CloseState::Closed
        ) {
            return None;
        }
        let ended = if self.leftover.is_empty() {
            let (used, ended) = decode_all(&mut self.decoder, new, on);
            if ended.is_none() && used < new.len() {
                self.leftover.extend_from_slice(&new[used..]);
            }
            ended
        } else {
            self.leftover.extend_from_slice(new);
            let (used, ended) = decode_all(&mut self.decoder, &mut self.leftover, on);
            if ended.is_some() || used == self.leftover.len() {
                self.leftover = Vec::new();
            } else {
                self.leftover.drain(..used);
            }
            ended
        };
        // The reassembly buffer of a delivered fragmented message is not needed any more.
        self.decoder.release_delivered();
        ended
    }

    /// Records that our close frame is queued (by a caller that encodes it itself, e.g. into
    /// its own outbound queue): from now on pings are owed nothing.
    pub fn close_sent(&mut self) {
        self.decoder.close_state = self.decoder.close_state.on_close_sent();
    }

    /// Encodes our close frame into `out` (with `code` and `reason`; `None`: the empty close
    /// frame, the echo of a close that had no code) and records it as sent. Writes nothing and
    /// returns false when our close was already sent.
    pub fn encode_close(&mut self, out: &mut Vec<u8>, code: Option<u16>, reason: &str) -> bool {
        if !self.decoder.close_state.may_send_data() {
            return false;
        }
        let role = self.role();
        match code {
            Some(code) => encode_close(out, role, code, reason),
            None => encode_frame(out, role, OpCode::Close, true, b""),
        }
        self.close_sent();
        true
    }
}

/// Encodes the pong owed for a ping with `payload`, as `role` sends it.
pub fn encode_pong(out: &mut Vec<u8>, role: Role, payload: &[u8]) {
    encode_frame(out, role, OpCode::Pong, true, payload);
}

/// Decodes the complete frames at the front of `buf`; returns the bytes used and how the
/// connection ended, if it did.
fn decode_all(
    decoder: &mut Decoder,
    buf: &mut [u8],
    mut on: impl FnMut(Incoming<'_>),
) -> (usize, Option<Ended>) {
    let len = buf.len();
    let mut off = 0;
    while off < len {
        let state = decoder.close_state;
        let (event, used) = match decoder.decode(&mut buf[off..]) {
            Err(e) => {
                decoder.close_state = CloseState::Closed;
                return (off, Some(Ended::Violation(e)));
            }
            Ok(None) => break,
            Ok(Some(x)) => x,
        };
        debug_assert!(used > 0 && used <= len - off, "decoder used {used}");
        off += used;
        match event {
            None => {}
            Some(Event::Message { kind, data }) => on(Incoming::Message { kind, data }),
            // After our close, a ping is owed nothing.
            Some(Event::Ping(p)) if state == CloseState::Open => on(Incoming::Ping(p)),
            Some(Event::Ping(_)) => {}
            Some(Event::Pong(p)) => on(Incoming::Pong(p)),
            Some(Event::Close(c)) => {
                let code = c.map(|(code, _)| code);
                decoder.close_state = state.on_close_received();
                return (off, Some(Ended::PeerClosed(code)));
            }
        }
    }
    (off, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned copy of what a feed produced.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Message(MessageKind, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        End(Ended),
    }

    fn limits() -> DecoderLimits {
        DecoderLimits {
            frame_bytes_max: 1 << 16,
            message_bytes_max: 1 << 16,
        }
    }

    /// Client frames: a text split in two fragments around a ping, a binary, a pong, a close.
    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        encode_frame(&mut s, Role::Client, OpCode::Text, false, b"hel");
        encode_frame(&mut s, Role::Client, OpCode::Ping, true, b"p1");
        encode_frame(&mut s, Role::Client, OpCode::Continuation, true, b"lo");
        encode_frame(&mut s, Role::Client, OpCode::Binary, true, &[0, 1, 2, 255]);
        encode_frame(&mut s, Role::Client, OpCode::Pong, true, b"");
        encode_close(&mut s, Role::Client, 1000, "bye");
        encode_frame(&mut s, Role::Client, OpCode::Text, true, b"after the close");
        s
    }

    fn expected() -> Vec<Seen> {
        vec![
            Seen::Ping(b"p1".to_vec()),
            Seen::Message(MessageKind::Text, b"hello".to_vec()),
            Seen::Message(MessageKind::Binary, vec![0, 1, 2, 255]),
            Seen::Pong(Vec::new()),
            Seen::End(Ended::PeerClosed(Some(1000))),
        ]
    }

    /// Feeds `input` cut at `cuts` like successive reads.
    fn run(ctx: &mut Context, input: &[u8], cuts: &[usize]) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            let mut chunk = input[start..end].to_vec();
            start = end;
            let ended = ctx.feed(&mut chunk, |ev| {
                seen.push(match ev {
                    Incoming::Message { kind, data } => Seen::Message(kind, data.to_vec()),
                    Incoming::Ping(p) => Seen::Ping(p.to_vec()),
                    Incoming::Pong(p) => Seen::Pong(p.to_vec()),
                })
            });
            if let Some(e) = ended {
                seen.push(Seen::End(e));
            }
        }
        seen
    }

    #[test]
    fn every_split_of_the_input_gives_the_same_events() {
        let input = stream();
        let whole = run(&mut Context::new(Role::Server, limits()), &input, &[]);
        assert_eq!(whole, expected());
        for k in 0..=input.len() {
            let mut ctx = Context::new(Role::Server, limits());
            assert_eq!(run(&mut ctx, &input, &[k]), expected(), "split at {k}");
            assert_eq!(ctx.state(), CloseState::CloseReceived);
            assert_eq!(ctx.buffered_bytes(), 0);
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        let mut ctx = Context::new(Role::Server, limits());
        assert_eq!(
            run(&mut ctx, &input, &bytes),
            expected(),
            "one byte at a time"
        );
    }

    #[test]
    fn a_violation_ends_the_feed_with_its_close_code_at_every_split() {
        let mut input = Vec::new();
        encode_frame(&mut input, Role::Client, OpCode::Text, true, b"ok");
        // Unmasked frame from a client: 1002.
        encode_frame(&mut input, Role::Server, OpCode::Text, true, b"bad");
        for k in 0..=input.len() {
            let seen = run(&mut Context::new(Role::Server, limits()), &input, &[k]);
            assert_eq!(seen.len(), 2, "split at {k}: {seen:?}");
            assert_eq!(seen[0], Seen::Message(MessageKind::Text, b"ok".to_vec()));
            let Seen::End(Ended::Violation(e)) = &seen[1] else {
                panic!("split at {k}: {seen:?}");
            };
            assert_eq!(e.close_code(), 1002);
        }
        let mut ctx = Context::new(Role::Server, limits());
        run(&mut ctx, &input, &[]);
        assert!(ctx.state().is_closed(), "nothing is read past a violation");
        assert_eq!(ctx.buffered_bytes(), 0);
    }

    #[test]
    fn after_our_close_pings_are_owed_nothing_and_the_peer_close_ends_it() {
        let mut ctx = Context::new(Role::Client, limits());
        let mut out = Vec::new();
        assert!(ctx.encode_close(&mut out, Some(1000), ""));
        assert!(!ctx.encode_close(&mut out, Some(1000), ""), "sent once");
        let mut input = Vec::new();
        encode_frame(&mut input, Role::Server, OpCode::Ping, true, b"late");
        encode_frame(&mut input, Role::Server, OpCode::Text, true, b"echo");
        encode_frame(&mut input, Role::Server, OpCode::Close, true, b"");
        let seen = run(&mut ctx, &input, &[]);
        assert_eq!(
            seen,
            vec![
                Seen::Message(MessageKind::Text, b"echo".to_vec()),
                Seen::End(Ended::PeerClosed(None)),
            ]
        );
        assert!(ctx.state().is_closed());
        let mut more = input.clone();
        assert_eq!(
            ctx.feed(&mut more, |_| panic!("nothing after the end")),
            None
        );
    }

    #[test]
    fn the_close_echo_and_the_pong_are_the_frames_the_peer_expects() {
        let mut ctx = Context::new(Role::Server, limits());
        let mut out = Vec::new();
        encode_pong(&mut out, Role::Server, b"p");
        assert_eq!(out, [0x8A, 0x01, b'p']);
        out.clear();
        assert!(ctx.encode_close(&mut out, None, ""));
        assert_eq!(out, [0x88, 0x00]);
        out.clear();
        let mut ctx = Context::new(Role::Server, limits());
        assert!(ctx.encode_close(&mut out, Some(1001), "going"));
        assert_eq!(&out[..4], &[0x88, 0x07, 0x03, 0xE9]);
    }
}
