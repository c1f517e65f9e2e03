//! The connection layer above the frame decoder, runtime-free: feed it the bytes read from the
//! peer, get the messages and what RFC 6455 §5.5 obliges you to send back.
//!
//! A [`Context`] keeps what must survive between reads: the [`Decoder`] (fragmented message,
//! UTF-8 state), the bytes of an incomplete frame (`leftover`, held only while a frame is
//! split across reads and freed as soon as it is consumed), and the close handshake's
//! [`CloseState`] (stored in the decoder's spare padding: an idle connection's context is the
//! size of a decoder, an empty `Vec` and a counter). It does no IO and owns no socket or queue:
//! the server (glommio, `src/server/conn_task.rs`) and the load generator (tokio,
//! `loadgen/src/worker.rs`) drive it and differ only in how they
//! read, where they queue what they send, and what memory they let a connection keep. This is
//! tungstenite's `WebSocketContext` without its stream: the stream is the caller's.
//!
//! **Memory held between reads is budgeted by the caller.** [`Context::feed_within`] takes a
//! [`Budget`]: before `leftover` grows it takes the growth from the budget (the buffer grows by
//! doubling, never past the frame its front belongs to), and after each feed it brings the
//! budget in line with what it holds (`leftover`'s capacity plus the decoder's reassembly
//! buffer, [`Context::held_bytes`]). A refusal ends the feed for good: the caller closes (the
//! server with 1013) and calls [`Context::release`]. [`Context::feed`] is the unbudgeted form.
//! [`Context::is_partial`] tells the caller a frame or message is incomplete, so it can bound
//! how long that may last (the server's `message_timeout`).
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
//! - after either end, [`Context::feed`] hands out nothing more, and what the context held is
//!   freed (and given back to the budget).

use std::convert::Infallible;

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
    /// Bytes taken from the caller's [`Budget`] and not given back; equals
    /// [`Context::held_bytes`] after every feed that did not end.
    charged: usize,
}

/// Where a [`Context`] takes the memory it keeps between reads (an incomplete frame, a
/// fragmented message). Implemented by the caller: the server charges its shard-wide budget
/// (`shard_partial_bytes_max`); a client that trusts its peer uses [`Unbudgeted`].
pub trait Budget {
    /// What a refused growth reports to the caller.
    type Refused;
    /// Takes `bytes` more for this connection, or refuses and takes nothing.
    fn take(&mut self, bytes: usize) -> Result<(), Self::Refused>;
    /// Gives back `bytes` taken earlier.
    fn give(&mut self, bytes: usize);
}

/// The budget with no limit: growth is never refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unbudgeted;

impl Budget for Unbudgeted {
    type Refused = Infallible;

    #[inline]
    fn take(&mut self, _bytes: usize) -> Result<(), Infallible> {
        Ok(())
    }

    #[inline]
    fn give(&mut self, _bytes: usize) {}
}

impl Context {
    /// A context for the `role` side of a freshly opened connection.
    pub fn new(role: Role, limits: DecoderLimits) -> Context {
        Context {
            decoder: Decoder::new(role, limits),
            leftover: Vec::new(),
            charged: 0,
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

    /// Bytes the context holds between reads: `leftover`'s capacity and the decoder's
    /// reassembly buffer (what a [`Budget`] is charged for).
    pub fn held_bytes(&self) -> usize {
        self.leftover.capacity() + self.decoder.buffered_bytes()
    }

    /// Whether a frame or a fragmented message is incomplete (bytes of it have arrived, not all).
    pub fn is_partial(&self) -> bool {
        !self.leftover.is_empty() || !self.decoder.is_idle()
    }

    /// [`Context::feed_within`] with no limit on what the context may hold.
    pub fn feed(&mut self, new: &mut [u8], on: impl FnMut(Incoming<'_>)) -> Option<Ended> {
        match self.feed_within(new, &mut Unbudgeted, on) {
            Ok(ended) => ended,
            Err(never) => match never {},
        }
    }

    /// Decodes every complete frame of the bytes held from earlier reads followed by `new`,
    /// handing each message, ping and pong to `on` in order; keeps the bytes of a trailing
    /// incomplete frame, taking their memory from `budget` first. `new` is unmasked in place.
    /// Returns `Ok(Some)` once the peer's close or a violation is seen: the bytes after it are
    /// not looked at, what the context held is released, and later calls hand out nothing and
    /// return `Ok(None)`. Returns `Err` when `budget` refuses a growth: nothing more is
    /// decoded, and the caller closes the connection and calls [`Context::release`].
    pub fn feed_within<B: Budget>(
        &mut self,
        new: &mut [u8],
        budget: &mut B,
        on: impl FnMut(Incoming<'_>),
    ) -> Result<Option<Ended>, B::Refused> {
        if matches!(
            self.decoder.close_state,
            CloseState::CloseReceived | CloseState::Closed
        ) {
            return Ok(None);
        }
        let ended = if self.leftover.is_empty() {
            let (used, ended) = decode_all(&mut self.decoder, new, on);
            if ended.is_none() && used < new.len() {
                self.grow_leftover(budget, new.len() - used)
                    .map_err(|r| self.refused(r))?;
                self.leftover.extend_from_slice(&new[used..]);
            }
            ended
        } else {
            self.grow_leftover(budget, new.len())
                .map_err(|r| self.refused(r))?;
            self.leftover.extend_from_slice(new);
            let (used, ended) = decode_all(&mut self.decoder, &mut self.leftover, on);
            if ended.is_some() || used == self.leftover.len() {
                self.leftover = Vec::new();
            } else {
                self.leftover.drain(..used);
                // The rest is the start of the next frame: do not keep a large buffer for it.
                if self.leftover.capacity() > 4 * self.leftover.len().max(1024) {
                    self.leftover.shrink_to(self.leftover.len());
                }
            }
            ended
        };
        if ended.is_some() {
            self.release(budget);
            return Ok(ended);
        }
        // The reassembly buffer of a delivered fragmented message is not needed any more.
        self.decoder.release_delivered();
        self.settle(budget).map_err(|r| self.refused(r))?;
        debug_assert_eq!(self.charged, self.held_bytes(), "budget out of step");
        Ok(None)
    }

    /// Frees what the context holds (an incomplete frame, a fragmented message) and gives it
    /// back to `budget`; the connection is closing and will not be decoded on.
    pub fn release<B: Budget>(&mut self, budget: &mut B) {
        self.leftover = Vec::new();
        self.decoder.reset();
        budget.give(self.charged);
        self.charged = 0;
    }

    /// A budget refusal ends the feed for good: nothing more is decoded.
    fn refused<R>(&mut self, refusal: R) -> R {
        self.decoder.close_state = CloseState::Closed;
        refusal
    }

    /// Makes room in `leftover` for `add` more bytes, taking the growth from `budget` before
    /// allocating (nothing is allocated when it refuses). The buffer grows by doubling, but
    /// never past the frame its front belongs to.
    fn grow_leftover<B: Budget>(&mut self, budget: &mut B, add: usize) -> Result<(), B::Refused> {
        let len = self.leftover.len();
        let cap = self.leftover.capacity();
        let need = len + add;
        if need <= cap {
            return Ok(());
        }
        let target = match self.decoder.frame_bytes_needed(&self.leftover) {
            Some(frame) if frame > need => need.max((2 * cap).min(frame)),
            _ => need,
        };
        budget.take(target - cap)?;
        self.charged += target - cap;
        self.leftover.reserve_exact(target - len);
        debug_assert!(self.leftover.capacity() >= need);
        Ok(())
    }

    /// Brings `budget` in line with what the context holds now (the decoder's reassembly buffer
    /// grows and shrinks inside `decode`, `leftover` shrinks when drained).
    fn settle<B: Budget>(&mut self, budget: &mut B) -> Result<(), B::Refused> {
        let held = self.held_bytes();
        if held > self.charged {
            budget.take(held - self.charged)?;
        } else {
            budget.give(self.charged - held);
        }
        self.charged = held;
        Ok(())
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

    /// A budget of `max_bytes` that counts what it lent.
    struct Capped {
        held_bytes: usize,
        max_bytes: usize,
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Refused;

    impl Budget for Capped {
        type Refused = Refused;

        fn take(&mut self, bytes: usize) -> Result<(), Refused> {
            if self.held_bytes + bytes > self.max_bytes {
                return Err(Refused);
            }
            self.held_bytes += bytes;
            Ok(())
        }

        fn give(&mut self, bytes: usize) {
            self.held_bytes = self
                .held_bytes
                .checked_sub(bytes)
                .expect("gave back too much");
        }
    }

    #[test]
    fn what_is_held_between_reads_is_charged_and_given_back() {
        let mut input = Vec::new();
        encode_frame(&mut input, Role::Client, OpCode::Text, false, b"hel");
        encode_frame(
            &mut input,
            Role::Client,
            OpCode::Continuation,
            true,
            &[b'o'; 1000],
        );
        let mut ctx = Context::new(Role::Server, limits());
        let mut budget = Capped {
            held_bytes: 0,
            max_bytes: 1 << 20,
        };
        let mut messages = 0;
        let chunks: Vec<&[u8]> = input.chunks(100).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let r = ctx.feed_within(&mut chunk.to_vec(), &mut budget, |ev| {
                assert!(matches!(ev, Incoming::Message { data, .. } if data.len() == 1003));
                messages += 1;
            });
            assert_eq!(r, Ok(None));
            assert_eq!(budget.held_bytes, ctx.held_bytes(), "after read {i}");
            if i + 1 < chunks.len() {
                assert!(ctx.is_partial(), "read {i}");
                assert!(ctx.held_bytes() > 0);
                // Never more than the frame in progress and the fragment before it.
                assert!(ctx.held_bytes() <= input.len() + 3, "read {i}");
            }
        }
        assert_eq!(messages, 1);
        assert!(!ctx.is_partial());
        assert_eq!((ctx.held_bytes(), budget.held_bytes), (0, 0));
    }

    #[test]
    fn a_refused_growth_ends_the_feed_and_release_gives_everything_back() {
        let mut input = Vec::new();
        encode_frame(&mut input, Role::Client, OpCode::Binary, true, &[7; 1000]);
        let mut ctx = Context::new(Role::Server, limits());
        let mut budget = Capped {
            held_bytes: 0,
            max_bytes: 500,
        };
        let mut refused_at = None;
        for (i, chunk) in input.chunks(100).enumerate() {
            match ctx.feed_within(&mut chunk.to_vec(), &mut budget, |_| panic!("incomplete")) {
                Ok(None) => assert_eq!(budget.held_bytes, ctx.held_bytes()),
                Ok(Some(e)) => panic!("ended: {e:?}"),
                Err(Refused) => {
                    refused_at = Some(i);
                    break;
                }
            }
        }
        assert!(refused_at.is_some(), "a 1000-byte frame cannot fit in 500");
        assert!(budget.held_bytes <= 500);
        assert!(
            ctx.state().is_closed(),
            "nothing is decoded after a refusal"
        );
        ctx.release(&mut budget);
        assert_eq!((ctx.held_bytes(), budget.held_bytes), (0, 0));
        let mut more = input.clone();
        assert_eq!(
            ctx.feed_within(&mut more, &mut budget, |_| panic!("after the refusal")),
            Ok(None)
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
