//! One client connection from accept to close: handshake, frame loop, close handshake.
//!
//! **Handshake.** The request head is read (in pieces, through the shard's scratch buffer)
//! into a transient buffer of at most `head_bytes_max + 1` bytes and parsed by
//! [`crate::ws::parse_request`]. Everything until the 101 (reading the head, the endpoint's
//! decision) runs under `handshake_timeout`; a slow or endless head gets 408 or 431, a bad
//! request its status from [`crate::ws::HandshakeError::status`], an unknown path 404, a request
//! arriving while the node drains 503. A client beyond the node's capacity gets 503 at once,
//! before its request is read (see [`refuse_over_capacity`]). Error responses are
//! followed by a bounded linger (shut down our side, discard input until EOF or
//! [`LINGER_TIMEOUT`]) so the response is not destroyed by a reset.
//!
//! **Frame loop.** No read buffer lives in the connection: each read goes into the shard's
//! scratch buffer and is decoded there in place; only the bytes of an incomplete frame are kept
//! (`leftover`, freed as soon as it is consumed). An idle connection therefore holds its glommio
//! stream, the decoder, the [`Conn`] with its (empty) queues, and the task: see
//! `docs/benchmarks.md` for the measured RSS.
//!
//! **Outbound queue and slow consumers.** Data frames are encoded into one byte queue per
//! connection, bounded by `outbound_bytes_max` of unsent bytes. A message that would push a
//! non-empty queue past the bound is refused and the connection is closed with 1008 ("slow
//! consumer", counted in `tether_slow_consumer_closes_total`); queued data is discarded so the
//! close frame goes out next. An empty queue always accepts one message (so one message up to
//! `message_bytes_max` always fits). Control frames (pong, ping) wait in their own small queue
//! and are written at the next data-frame boundary, so they never wait behind more than the
//! frame being written; a ping flood beyond [`CONTROL_QUEUE_BYTES_MAX`] of unsent control bytes
//! drops pongs (RFC 6455 allows answering only the latest ping) and counts them.
//!
//! **Liveness.** The shard's sweeper (see [`super::shard`]) pings a connection whose peer has
//! been silent for `ping_idle` and drops it after `silence_timeout` of silence (no close frame:
//! the peer is presumed gone; counted as 1006 and in `tether_silence_timeouts_total`).
//!
//! **Close.** Each protocol violation is answered with a close frame carrying
//! [`crate::ws::ProtocolError::close_code`]. Whoever starts it, the close handshake is bounded:
//! after our close frame we wait at most `close_timeout` (less when the drain deadline is
//! nearer) for the peer's close and FIN, then close the socket.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    net::{Shutdown, SocketAddr},
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use futures_lite::{future::poll_fn, io::AsyncRead, io::AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::ws::{
    encode_close, encode_frame, parse_request, write_accept_response, write_error_response,
    write_frame_header, write_handshake_error, Decoder, DecoderLimits, Event, HandshakeError,
    HandshakeLimits, MessageKind, OpCode, ProtocolError, Role, MAX_HEADER_BYTES,
};

use super::{
    endpoint::{ConnInfo, Session},
    metrics::{self, HandshakeResult},
    node::NodeShared,
    shard::ShardCtx,
};

/// Node-unique connection id: shard index in the top 16 bits, a per-shard sequence below.
pub type ConnId = u64;
/// A shard-local handle to an upgraded connection (`!Send`).
pub type ConnHandle = Rc<Conn>;

/// Unsent control-frame bytes beyond which pongs are dropped.
pub const CONTROL_QUEUE_BYTES_MAX: usize = 512;
/// How long a rejected client's socket lingers for its FIN after our response.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait to write a 503 to a refused socket that may not linger (a fresh socket's send
/// buffer is empty, so this only bounds a pathological case).
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// Reads handled in one poll of a connection before it yields to the others.
const READS_PER_POLL: usize = 4;
/// Consumed bytes at the front of the outbound queue that trigger compaction.
const COMPACT_BYTES: usize = 64 * 1024;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or closed.
    Closed,
    /// The queue would exceed `outbound_bytes_max`: the connection is being closed with 1008.
    SlowConsumer,
}

#[derive(Debug, Clone, Copy)]
struct CloseReq {
    code: u16,
    reason: &'static str,
    discard_queued: bool,
}

#[derive(Default)]
struct ConnState {
    /// Encoded data frames (and finally our close frame); bytes before `out_pos` are written.
    out: Vec<u8>,
    out_pos: usize,
    /// End offsets in `out` of frames not completely written.
    frame_ends: VecDeque<usize>,
    /// Start of the frame `out_pos` is in; `out_pos == cur_frame_start` at a frame boundary.
    cur_frame_start: usize,
    /// Encoded control frames (pong, ping), written at the next data-frame boundary.
    ctl: Vec<u8>,
    ctl_pos: usize,
    /// No more data frames are accepted (a close is requested or under way).
    closing: bool,
    close_req: Option<CloseReq>,
    /// Drop the connection without a close handshake (silence timeout).
    abort: bool,
    last_rx_ms: u64,
    ping_outstanding: bool,
    /// The connection task is running (it flushes by itself; no wake-up needed).
    in_poll: bool,
    waker: Option<Waker>,
}

/// An upgraded connection as seen by other code on its shard.
pub struct Conn {
    id: ConnId,
    peer: SocketAddr,
    shard: Rc<ShardCtx>,
    st: RefCell<ConnState>,
}

impl Conn {
    /// Node-unique id (also the key in the shard's registry).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The owning shard.
    pub fn shard(&self) -> &Rc<ShardCtx> {
        &self.shard
    }

    /// Unsent bytes of data frames.
    pub fn queued_bytes(&self) -> usize {
        let st = self.st.borrow();
        st.out.len() - st.out_pos
    }

    /// Whether a close is requested or under way.
    pub fn is_closing(&self) -> bool {
        self.st.borrow().closing
    }

    /// Queues one message (one frame) subject to `outbound_bytes_max` and the slow-consumer
    /// policy described in the module docs.
    pub fn send(&self, kind: MessageKind, payload: &[u8]) -> Result<(), SendError> {
        let mut hdr = [0u8; MAX_HEADER_BYTES];
        let opcode = match kind {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        };
        let hlen = write_frame_header(&mut hdr, true, opcode, payload.len() as u64, None);
        let frame_len = hlen + payload.len();
        let m = &self.shard.metrics;
        {
            let mut st = self.st.borrow_mut();
            if st.closing {
                return Err(SendError::Closed);
            }
            let pending = st.out.len() - st.out_pos;
            if pending > 0 && pending + frame_len > self.shard.config.outbound_bytes_max {
                drop(st);
                metrics::add(&m.slow_consumer_closes, 1);
                tracing::info!(
                    conn = self.id,
                    peer = %self.peer,
                    queued_bytes = pending,
                    frame_bytes = frame_len,
                    "slow consumer: closing with 1008"
                );
                self.request_close(1008, "slow consumer", true);
                return Err(SendError::SlowConsumer);
            }
            st.out.extend_from_slice(&hdr[..hlen]);
            st.out.extend_from_slice(payload);
            let end = st.out.len();
            st.frame_ends.push_back(end);
        }
        metrics::add(&m.messages_sent, 1);
        metrics::add(&m.outbound_queued_bytes, frame_len as u64);
        self.wake();
        Ok(())
    }

    /// Starts the close handshake with `code`: data already queued is sent first, then the
    /// close frame; later sends are refused.
    pub fn close(&self, code: u16, reason: &'static str) {
        self.request_close(code, reason, false);
    }

    pub(super) fn request_close(&self, code: u16, reason: &'static str, discard_queued: bool) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing {
                return;
            }
            st.closing = true;
            st.close_req = Some(CloseReq {
                code,
                reason,
                discard_queued,
            });
        }
        self.wake();
    }

    fn wake(&self) {
        let w = {
            let mut st = self.st.borrow_mut();
            if st.in_poll {
                return;
            }
            st.waker.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Called by the shard's sweeper: ping after `ping_idle_ms` of silence, drop after
    /// `silence_ms`.
    pub(super) fn sweep(&self, now_ms: u64, ping_idle_ms: u64, silence_ms: u64) {
        let m = &self.shard.metrics;
        {
            let mut st = self.st.borrow_mut();
            if st.closing || st.abort {
                return;
            }
            let silent = now_ms.saturating_sub(st.last_rx_ms);
            if silent >= silence_ms {
                st.abort = true;
                metrics::add(&m.silence_timeouts, 1);
            } else if silent >= ping_idle_ms && !st.ping_outstanding {
                st.ping_outstanding = true;
                encode_frame(&mut st.ctl, Role::Server, OpCode::Ping, true, b"");
                metrics::add(&m.pings_sent, 1);
            } else {
                return;
            }
        }
        self.wake();
    }

    fn queue_pong(&self, payload: &[u8]) {
        let mut st = self.st.borrow_mut();
        if st.closing {
            return;
        }
        if st.ctl.len() - st.ctl_pos > CONTROL_QUEUE_BYTES_MAX {
            metrics::add(&self.shard.metrics.pongs_dropped, 1);
            return;
        }
        encode_frame(&mut st.ctl, Role::Server, OpCode::Pong, true, payload);
    }

    fn touch(&self, now_ms: u64) {
        let mut st = self.st.borrow_mut();
        st.last_rx_ms = now_ms;
        st.ping_outstanding = false;
    }

    fn set_waker(&self, cx: &Context<'_>) {
        let mut st = self.st.borrow_mut();
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
    }

    fn set_in_poll(&self, v: bool) {
        self.st.borrow_mut().in_poll = v;
    }

    fn take_exit_request(&self) -> Option<Exit> {
        let mut st = self.st.borrow_mut();
        if st.abort {
            return Some(Exit::Silence);
        }
        st.close_req.take().map(Exit::Local)
    }

    /// Queues our close frame (after the queued data, or instead of it).
    fn queue_close_frame(&self, code: Option<u16>, reason: &str, discard_queued: bool) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        st.closing = true;
        if discard_queued {
            let cut = if st.out_pos == st.cur_frame_start {
                st.out_pos
            } else {
                st.frame_ends.front().copied().unwrap_or(st.out.len())
            };
            let dropped = st.out.len() - cut;
            st.out.truncate(cut);
            st.frame_ends.retain(|&e| e <= cut);
            metrics::sub(&self.shard.metrics.outbound_queued_bytes, dropped as u64);
        }
        let before = st.out.len();
        match code {
            Some(code) => encode_close(&mut st.out, Role::Server, code, truncate_reason(reason)),
            None => st.out.extend_from_slice(&[0x88, 0x00]),
        }
        let end = st.out.len();
        st.frame_ends.push_back(end);
        metrics::add(
            &self.shard.metrics.outbound_queued_bytes,
            (end - before) as u64,
        );
    }

    /// Writes queued frames: control frames at data-frame boundaries, then data.
    /// `Ready(Ok(()))` when everything is written.
    fn poll_flush(&self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let m = &self.shard.metrics;
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        loop {
            let ctl_pending = st.ctl_pos < st.ctl.len();
            let at_boundary = st.out_pos == st.cur_frame_start;
            let is_ctl = ctl_pending && at_boundary;
            let buf: &[u8] = if is_ctl {
                &st.ctl[st.ctl_pos..]
            } else if st.out_pos < st.out.len() {
                let end = if ctl_pending {
                    st.frame_ends.front().copied().unwrap_or(st.out.len())
                } else {
                    st.out.len()
                };
                &st.out[st.out_pos..end]
            } else {
                return Poll::Ready(Ok(()));
            };
            let n = match Pin::new(&mut *stream).poll_write(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
            };
            metrics::add(&m.bytes_sent, n as u64);
            if is_ctl {
                st.ctl_pos += n;
                if st.ctl_pos == st.ctl.len() {
                    st.ctl = Vec::new();
                    st.ctl_pos = 0;
                }
                continue;
            }
            metrics::sub(&m.outbound_queued_bytes, n as u64);
            st.out_pos += n;
            while let Some(&e) = st.frame_ends.front() {
                if e > st.out_pos {
                    break;
                }
                st.cur_frame_start = e;
                st.frame_ends.pop_front();
            }
            if st.out_pos == st.out.len() {
                st.out = Vec::new();
                st.frame_ends = VecDeque::new();
                st.out_pos = 0;
                st.cur_frame_start = 0;
            } else if st.out_pos >= COMPACT_BYTES && st.out_pos * 2 >= st.out.len() {
                let k = st.out_pos;
                st.out.drain(..k);
                for e in st.frame_ends.iter_mut() {
                    *e -= k;
                }
                st.cur_frame_start -= k;
                st.out_pos = 0;
            }
        }
    }

    /// Forgets unsent data when the connection ends (keeps the gauge right).
    fn discard_all(&self) {
        let mut st = self.st.borrow_mut();
        let pending = st.out.len() - st.out_pos;
        metrics::sub(&self.shard.metrics.outbound_queued_bytes, pending as u64);
        st.out = Vec::new();
        st.frame_ends = VecDeque::new();
        st.ctl = Vec::new();
        st.out_pos = 0;
        st.ctl_pos = 0;
        st.cur_frame_start = 0;
        st.closing = true;
        st.waker = None;
    }
}

/// Close reasons are at most 123 bytes (125 minus the code); cut at a char boundary.
fn truncate_reason(reason: &str) -> &str {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// How the frame loop ended.
enum Exit {
    /// The peer sent a close frame (with its code, if any).
    Peer(Option<u16>),
    /// We close (drain, slow consumer, application).
    Local(CloseReq),
    /// The peer broke the protocol.
    Protocol(ProtocolError),
    /// EOF or reset without a close handshake.
    Gone,
    /// Silent past `silence_timeout`.
    Silence,
}

/// Reading state of an upgraded connection.
struct FrameIo {
    decoder: Decoder,
    /// Bytes of an incomplete frame; empty (no allocation) between frames.
    leftover: Vec<u8>,
}

impl FrameIo {
    /// Decodes every complete frame of `leftover ++ new`, dispatching events; keeps the rest.
    fn feed(
        &mut self,
        new: &mut [u8],
        conn: &ConnHandle,
        session: &mut dyn Session,
    ) -> Option<Exit> {
        if self.leftover.is_empty() {
            let (used, exit) = decode_all(&mut self.decoder, new, conn, session);
            if exit.is_none() && used < new.len() {
                self.leftover.extend_from_slice(&new[used..]);
            }
            exit
        } else {
            self.leftover.extend_from_slice(new);
            let (used, exit) = decode_all(&mut self.decoder, &mut self.leftover, conn, session);
            if used == self.leftover.len() {
                self.leftover = Vec::new();
            } else {
                self.leftover.drain(..used);
            }
            exit
        }
    }
}

fn decode_all(
    decoder: &mut Decoder,
    buf: &mut [u8],
    conn: &ConnHandle,
    session: &mut dyn Session,
) -> (usize, Option<Exit>) {
    let m = &conn.shard.metrics;
    let mut off = 0;
    while off < buf.len() {
        let (event, used) = match decoder.decode(&mut buf[off..]) {
            Err(e) => return (off, Some(Exit::Protocol(e))),
            Ok(None) => break,
            Ok(Some(x)) => x,
        };
        match event {
            None | Some(Event::Pong(_)) => {}
            Some(Event::Message { kind, data }) => {
                metrics::add(&m.messages_received, 1);
                session.on_message(conn, kind, data);
            }
            Some(Event::Ping(p)) => conn.queue_pong(p),
            Some(Event::Close(c)) => {
                let code = c.map(|(code, _)| code);
                return (off + used, Some(Exit::Peer(code)));
            }
        }
        off += used;
    }
    (off, None)
}

/// Reads once into the shard's scratch buffer and hands the bytes to `f`.
fn poll_read_scratch<R>(
    shard: &ShardCtx,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    limit: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> Poll<io::Result<Option<R>>> {
    let mut scratch = shard.scratch.borrow_mut();
    let lim = limit.min(scratch.len());
    match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..lim]) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
        Poll::Ready(Ok(n)) => Poll::Ready(Ok(Some(f(&mut scratch[..n])))),
    }
}

fn poll_open(
    conn: &ConnHandle,
    stream: &mut TcpStream,
    io: &mut FrameIo,
    session: &mut dyn Session,
    cx: &mut Context<'_>,
) -> Poll<Exit> {
    let shard = conn.shard.clone();
    conn.set_waker(cx);
    let mut reads = 0;
    loop {
        if let Some(exit) = conn.take_exit_request() {
            return Poll::Ready(exit);
        }
        if let Poll::Ready(Err(_)) = conn.poll_flush(stream, cx) {
            return Poll::Ready(Exit::Gone);
        }
        if reads == READS_PER_POLL {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        reads += 1;
        let r = poll_read_scratch(&shard, stream, cx, usize::MAX, |data| {
            metrics::add(&shard.metrics.bytes_received, data.len() as u64);
            conn.touch(shard.now_ms());
            conn.set_in_poll(true);
            let exit = io.feed(data, conn, session);
            conn.set_in_poll(false);
            exit
        });
        match r {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) | Poll::Ready(Ok(None)) => return Poll::Ready(Exit::Gone),
            Poll::Ready(Ok(Some(Some(exit)))) => return Poll::Ready(exit),
            Poll::Ready(Ok(Some(None))) => {}
        }
    }
}

/// Releases the node-wide admission slot when the connection's task ends (or is dropped).
struct Admission(Arc<NodeShared>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Counts the shard's sockets in the handshake while alive.
struct Handshaking(Rc<ShardCtx>);

impl Handshaking {
    fn new(shard: &Rc<ShardCtx>) -> Handshaking {
        shard.handshaking_add(1);
        Handshaking(shard.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking_add(-1);
    }
}

/// Serves one accepted socket until it closes. `admitted` is false when the node was at
/// capacity at accept time (the client then gets 503).
pub(super) async fn run(
    shard: Rc<ShardCtx>,
    mut stream: TcpStream,
    peer: SocketAddr,
    admitted: bool,
) {
    let _admission = admitted.then(|| Admission(shard.node.clone()));
    let id = shard.next_conn_id();
    // Locals of the handshake stay inside blocks: a local in scope across an await is stored in
    // the task for the connection's whole life (see `connection_state_stays_small`).
    let upgraded = {
        let _hs = Handshaking::new(&shard);
        let info = ConnInfo {
            id,
            peer,
            shard: shard.index,
        };
        Box::pin(handshake(&shard, &mut stream, &info, admitted)).await
    };
    let Some((mut session, leftover)) = upgraded else {
        return;
    };

    let conn: ConnHandle = Rc::new(Conn {
        id,
        peer,
        shard: shard.clone(),
        st: RefCell::new(ConnState {
            last_rx_ms: shard.now_ms(),
            ..ConnState::default()
        }),
    });
    shard.register(conn.clone());
    session.on_open(&conn);
    let cfg = &shard.config;
    let mut io = FrameIo {
        decoder: Decoder::new(
            Role::Server,
            DecoderLimits {
                frame_bytes_max: cfg.frame_bytes_max,
                message_bytes_max: cfg.message_bytes_max,
            },
        ),
        leftover: Vec::new(),
    };
    let early = {
        let mut first = leftover;
        if first.is_empty() {
            None
        } else {
            io.feed(&mut first, &conn, &mut *session)
        }
    };
    let exit = if let Some(exit) = early {
        exit
    } else {
        poll_fn(|cx| poll_open(&conn, &mut stream, &mut io, &mut *session, cx)).await
    };
    let code = Box::pin(close(&conn, &mut stream, &mut io, exit)).await;
    conn.discard_all();
    shard.deregister(conn.id);
    shard.metrics.close(code);
    session.on_close(&conn, code);
}

/// The close phase; returns the code to count.
async fn close(conn: &ConnHandle, stream: &mut TcpStream, io: &mut FrameIo, exit: Exit) -> u16 {
    let shard = conn.shard.clone();
    let wait = shard.close_wait(shard.config.close_timeout);
    match exit {
        Exit::Gone | Exit::Silence => {
            let _ = stream.shutdown(Shutdown::Both).await;
            1006
        }
        Exit::Peer(code) => {
            // Echo the peer's code (RFC 6455 §5.5.1), then close our side and wait for its FIN.
            conn.queue_close_frame(code, "", false);
            let _ = glommio::timer::timeout(wait, async {
                poll_fn(|cx| conn.poll_flush(stream, cx)).await?;
                let _ = stream.shutdown(Shutdown::Write).await;
                discard_until_eof(&shard, stream).await;
                Ok(())
            })
            .await;
            code.unwrap_or(1005)
        }
        Exit::Protocol(e) => {
            tracing::debug!(conn = conn.id, peer = %conn.peer, error = %e, code = e.close_code(), "protocol violation");
            let reason = e.to_string();
            // Echoes of the messages completed before the violation go out first (Autobahn
            // 3.2-3.4, 4.x, 5.15 expect them); the queue is bounded and the flush timed.
            conn.queue_close_frame(Some(e.close_code()), &reason, false);
            let _ = glommio::timer::timeout(wait, async {
                poll_fn(|cx| conn.poll_flush(stream, cx)).await?;
                let _ = stream.shutdown(Shutdown::Write).await;
                discard_until_eof(&shard, stream).await;
                Ok(())
            })
            .await;
            e.close_code()
        }
        Exit::Local(req) => {
            conn.queue_close_frame(Some(req.code), req.reason, req.discard_queued);
            let _ = glommio::timer::timeout(wait, async {
                // Flush while reading: the peer may be sending while we close.
                poll_fn(|cx| {
                    let flushed = conn.poll_flush(stream, cx)?;
                    loop {
                        let r = poll_read_scratch(&shard, stream, cx, usize::MAX, |data| {
                            closing_feed(io, data)
                        });
                        match r {
                            Poll::Pending => break,
                            Poll::Ready(Ok(Some(false))) => continue,
                            // EOF, error, or the peer's close: done once our frame is out.
                            Poll::Ready(Ok(Some(true)))
                            | Poll::Ready(Ok(None))
                            | Poll::Ready(Err(_)) => {
                                return match flushed {
                                    Poll::Ready(()) => Poll::Ready(Ok(())),
                                    Poll::Pending => Poll::Ready(Err(io::Error::from(
                                        io::ErrorKind::UnexpectedEof,
                                    ))),
                                };
                            }
                        }
                    }
                    Poll::Pending
                })
                .await
                .map_err(glommio::GlommioError::from)
            })
            .await;
            let _ = stream.shutdown(Shutdown::Both).await;
            req.code
        }
    }
}

/// Decodes frames while waiting for the peer's close; data and pings are ignored (we already
/// sent our close). True once the peer's close frame (or a violation) is seen.
fn closing_feed(io: &mut FrameIo, data: &mut [u8]) -> bool {
    let mut owned;
    let buf: &mut [u8] = if io.leftover.is_empty() {
        data
    } else {
        io.leftover.extend_from_slice(data);
        owned = std::mem::take(&mut io.leftover);
        &mut owned[..]
    };
    let mut off = 0;
    while off < buf.len() {
        match io.decoder.decode(&mut buf[off..]) {
            Err(_) => return true,
            Ok(None) => break,
            Ok(Some((Some(Event::Close(_)), _))) => return true,
            Ok(Some((_, used))) => off += used,
        }
    }
    if off < buf.len() {
        io.leftover = buf[off..].to_vec();
    }
    false
}

/// Reads and drops input until EOF (bounded by the caller's timeout).
async fn discard_until_eof(shard: &ShardCtx, stream: &mut TcpStream) {
    loop {
        let r = poll_fn(|cx| poll_read_scratch(shard, stream, cx, usize::MAX, |_| ())).await;
        match r {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

/// Writes an HTTP error response, then lingers briefly so it is not lost to a reset.
async fn reject(shard: &ShardCtx, stream: &mut TcpStream, response: &[u8]) {
    let _ = glommio::timer::timeout(LINGER_TIMEOUT, async {
        stream.write_all(response).await?;
        let _ = stream.shutdown(Shutdown::Write).await;
        discard_until_eof(shard, stream).await;
        Ok(())
    })
    .await;
}

fn error_response(status: u16, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    write_error_response(&mut out, status, body);
    out
}

enum HandshakeOutcome {
    Upgraded(Box<dyn Session>, Vec<u8>),
    Refused(HandshakeResult, Vec<u8>),
    Gone,
}

/// Reads and answers the upgrade request. `Some((session, leftover))` once the 101 is sent.
async fn handshake(
    shard: &Rc<ShardCtx>,
    stream: &mut TcpStream,
    info: &ConnInfo,
    admitted: bool,
) -> Option<(Box<dyn Session>, Vec<u8>)> {
    if !admitted {
        refuse_over_capacity(shard, stream, info).await;
        return None;
    }
    let started = Instant::now();
    let timed = glommio::timer::timeout(shard.config.handshake_timeout, async {
        Ok(handshake_inner(shard, stream, info).await)
    })
    .await;
    let outcome = timed.unwrap_or_else(|_| {
        tracing::debug!(peer = %info.peer, elapsed_ms = started.elapsed().as_millis() as u64, "handshake timeout");
        HandshakeOutcome::Refused(
            HandshakeResult::Timeout,
            error_response(408, "request head not received within handshake_timeout"),
        )
    });
    match outcome {
        HandshakeOutcome::Upgraded(session, leftover) => {
            shard.metrics.handshake(HandshakeResult::Ok);
            Some((session, leftover))
        }
        HandshakeOutcome::Refused(result, response) => {
            shard.metrics.handshake(result);
            reject(shard, stream, &response).await;
            None
        }
        HandshakeOutcome::Gone => {
            shard.metrics.handshake(HandshakeResult::IoError);
            None
        }
    }
}

async fn handshake_inner(
    shard: &Rc<ShardCtx>,
    stream: &mut TcpStream,
    info: &ConnInfo,
) -> HandshakeOutcome {
    let cfg = &shard.config;
    let limits = HandshakeLimits {
        head_bytes_max: cfg.head_bytes_max,
        headers_max: cfg.headers_max,
    };
    let mut head: Vec<u8> = Vec::new();
    let (req, head_len) = loop {
        let room = limits.head_bytes_max + 1 - head.len().min(limits.head_bytes_max);
        let r = poll_fn(|cx| {
            poll_read_scratch(shard, stream, cx, room, |data| head.extend_from_slice(data))
        })
        .await;
        match r {
            Ok(Some(())) => {}
            Ok(None) | Err(_) => return HandshakeOutcome::Gone,
        }
        let parsed = if head.len() > limits.head_bytes_max && !contains_head_end(&head) {
            Err(HandshakeError::HeadTooLarge {
                size: head.len(),
                max: limits.head_bytes_max,
            })
        } else {
            parse_request(&head, &limits)
        };
        match parsed {
            Ok(None) => continue,
            Ok(Some(x)) => break x,
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, status = e.status(), "upgrade refused");
                let mut out = Vec::new();
                write_handshake_error(&mut out, &e);
                return HandshakeOutcome::Refused(HandshakeResult::from_status(e.status()), out);
            }
        }
    };
    if shard.is_draining() {
        return HandshakeOutcome::Refused(
            HandshakeResult::Draining,
            error_response(503, "node is draining; reconnect to another node"),
        );
    }
    let Some(endpoint) = shard.endpoint(&req.path) else {
        return HandshakeOutcome::Refused(
            HandshakeResult::NotFound,
            error_response(404, "no such endpoint"),
        );
    };
    let accepted = match endpoint.accept(&req, info).await {
        Ok(a) => a,
        Err(rej) => {
            return HandshakeOutcome::Refused(
                HandshakeResult::Rejected,
                error_response(rej.status, &rej.body),
            );
        }
    };
    let mut out = Vec::with_capacity(256);
    write_accept_response(&mut out, &req, accepted.protocol.as_deref());
    if stream.write_all(&out).await.is_err() {
        return HandshakeOutcome::Gone;
    }
    let leftover = if head.len() > head_len {
        head[head_len..].to_vec()
    } else {
        Vec::new()
    };
    HandshakeOutcome::Upgraded(accepted.session, leftover)
}

/// A socket beyond the node's capacity gets `503` at once, without waiting for its request:
/// it holds a descriptor from the small reserve ([`super::node::FDS_RESERVED`]), and silent sockets
/// waiting out `handshake_timeout` would use the reserve up, leaving the next client with a
/// complete request unanswered in the kernel's queue. At most [`super::node::REFUSING_MAX`] refused
/// sockets linger for the client's FIN at once; beyond that the answer is written and the
/// socket closed at once.
async fn refuse_over_capacity(shard: &Rc<ShardCtx>, stream: &mut TcpStream, info: &ConnInfo) {
    shard.metrics.handshake(HandshakeResult::OverCapacity);
    shard.log_over_capacity(info.peer);
    let response = error_response(503, "node at connection capacity");
    match shard.node.try_refusing() {
        Some(_slot) => reject(shard, stream, &response).await,
        None => {
            let _ = glommio::timer::timeout(REFUSE_WRITE_TIMEOUT, async {
                stream.write_all(&response).await?;
                Ok(())
            })
            .await;
        }
    }
}

fn contains_head_end(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{config::ServerConfig, metrics::ShardMetrics, node::NodeShared};

    /// The memory budget of an idle connection (docs/benchmarks.md) depends on these sizes;
    /// this keeps them from growing unnoticed.
    #[test]
    fn connection_state_stays_small() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .unwrap();
        ex.run(async {
            let mesh = tether_shards::Mesh::build(1, 1).pop().unwrap();
            let ctx = Rc::new(ShardCtx::new(
                0,
                1,
                0,
                Arc::new(ServerConfig::default()),
                Arc::new(ShardMetrics::default()),
                Arc::new(NodeShared::new(10, 100)),
                mesh,
            ));
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = std::net::TcpStream::connect(addr).unwrap();
            let stream = listener.accept().await.unwrap();
            let task = run(ctx, stream, addr, true);
            let task_bytes = std::mem::size_of_val(&task);
            let conn_bytes = std::mem::size_of::<Conn>();
            let stream_bytes = std::mem::size_of::<TcpStream>();
            eprintln!(
                "task future {task_bytes} B, Conn {conn_bytes} B, TcpStream {stream_bytes} B"
            );
            assert!(
                task_bytes <= 768,
                "connection task future grew to {task_bytes} bytes"
            );
            assert!(conn_bytes <= 320, "Conn grew to {conn_bytes} bytes");
        });
    }
}
