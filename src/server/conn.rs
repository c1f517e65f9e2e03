//! The handle of an upgraded connection ([`Conn`], shared as [`ConnHandle`]): what a session or
//! any other code on the connection's shard can do with it (send, close, look at the queue),
//! and the connection's policies that do not need the socket.
//!
//! **Outbound queue and slow consumers.** Data frames are encoded into one byte queue per
//! connection ([`super::outbound::Outbound`]), bounded by `outbound_bytes_max` of unsent bytes.
//! A message that would push a non-empty queue past the bound is refused and the connection is
//! closed with 1008 ("slow consumer", counted in `tether_slow_consumer_closes_total`); queued
//! data is discarded so the close frame goes out next. An empty queue always accepts one
//! message (so one message up to `message_bytes_max` always fits). Control frames (pong, ping)
//! wait in their own small queue and are written at the next data-frame boundary, so they never
//! wait behind more than the frame being written; a ping flood beyond
//! [`CONTROL_QUEUE_BYTES_MAX`] of unsent control bytes drops pongs (RFC 6455 allows answering
//! only the latest ping) and counts them.
//!
//! **Liveness.** The shard's sweeper (see [`super::tasks::sweeper`]) calls [`Conn::sweep`]: a
//! connection whose peer has been silent for `ping_idle` is pinged, and after
//! `silence_timeout` of silence it is dropped (no close frame: the peer is presumed gone;
//! counted as 1006 and in `tether_silence_timeouts_total`). A connection with a frame or
//! message incomplete for `message_timeout` is closed with 1008
//! (`tether_message_timeouts_total`; see [`super::conn_task`]).
//!
//! The handle holds its shard's metrics and its limit, not the shard: the socket, the
//! handshake and the frame loop are the connection task's ([`super::conn_task`]), which writes
//! the queue out through [`Conn::poll_write_queued`].

use std::{
    cell::RefCell,
    io,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use crate::ws::{MessageKind, OpCode};

use super::{
    metrics::{self, ShardMetrics},
    outbound::{Lane, Outbound},
};

/// Node-unique connection id: shard index in the top 16 bits, a per-shard sequence below.
pub type ConnId = u64;
/// A shard-local handle to an upgraded connection (`!Send`).
pub type ConnHandle = Rc<Conn>;

/// Bits of a [`ConnId`] below the shard index (the per-shard sequence).
pub const CONN_SEQ_BITS: u32 = 48;
/// Unsent control-frame bytes beyond which pongs are dropped.
pub const CONTROL_QUEUE_BYTES_MAX: usize = 512;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or closed.
    Closed,
    /// The queue would exceed `outbound_bytes_max`: the connection is being closed with 1008.
    SlowConsumer,
}

/// A close asked for by code on the shard (drain, slow consumer, application).
#[derive(Debug, Clone, Copy)]
pub(super) struct CloseRequest {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    /// Drop queued data not yet started so the close frame goes out next.
    pub(super) discard_queued: bool,
}

/// What the connection task must do instead of reading on.
#[derive(Debug, Clone, Copy)]
pub(super) enum ExitRequest {
    /// Close with this code (our close frame, then the bounded close handshake).
    Close(CloseRequest),
    /// Drop without a close handshake: silent past `silence_timeout`.
    Silence,
    /// Close with 1008: a message was started more than `message_timeout` ago and is not
    /// complete.
    MessageTimeout,
}

/// `ConnState::partial_since_ms` when no frame or message is incomplete.
const NOT_PARTIAL: u64 = u64::MAX;

struct ConnState {
    out: Outbound,
    /// No more data frames are accepted (a close is requested or under way).
    closing: bool,
    close_req: Option<CloseRequest>,
    /// Drop the connection without a close handshake (silence timeout).
    abort: bool,
    /// Liveness clock (the shard's `now_ms`) of the last bytes received.
    last_rx_ms: u64,
    /// Since when (`now_ms`) a received frame or message is incomplete; [`NOT_PARTIAL`] when
    /// none is.
    partial_since_ms: u64,
    /// The sweeper found a message incomplete past `message_timeout`.
    message_timed_out: bool,
    ping_outstanding: bool,
    /// `outbound_bytes_max`, saturated at 4 GiB (it sits in this struct's padding, where a
    /// `usize` field of [`Conn`] would add 16 bytes to each connection's allocation).
    outbound_bytes_max: u32,
    /// The connection task is running (it flushes by itself; no wake-up needed).
    in_poll: bool,
    waker: Option<Waker>,
}

/// An upgraded connection as seen by other code on its shard.
pub struct Conn {
    id: ConnId,
    peer: SocketAddr,
    metrics: Arc<ShardMetrics>,
    st: RefCell<ConnState>,
}

impl Conn {
    /// A connection that has just been upgraded at `now_ms` (the liveness clock).
    pub(super) fn new(
        id: ConnId,
        peer: SocketAddr,
        metrics: Arc<ShardMetrics>,
        outbound_bytes_max: usize,
        now_ms: u64,
    ) -> Conn {
        Conn {
            id,
            peer,
            metrics,
            st: RefCell::new(ConnState {
                out: Outbound::default(),
                closing: false,
                close_req: None,
                abort: false,
                last_rx_ms: now_ms,
                partial_since_ms: NOT_PARTIAL,
                message_timed_out: false,
                ping_outstanding: false,
                outbound_bytes_max: u32::try_from(outbound_bytes_max).unwrap_or(u32::MAX),
                in_poll: false,
                waker: None,
            }),
        }
    }

    /// Node-unique id (also the key in the shard's registry).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Unsent bytes of data frames.
    pub fn queued_bytes(&self) -> usize {
        self.st.borrow().out.queued_bytes()
    }

    /// Whether a close is requested or under way.
    pub fn is_closing(&self) -> bool {
        self.st.borrow().closing
    }

    /// Queues one message (one frame) subject to `outbound_bytes_max` and the slow-consumer
    /// policy described in the module docs.
    pub fn send(&self, kind: MessageKind, payload: &[u8]) -> Result<(), SendError> {
        let pushed = {
            let mut st = self.st.borrow_mut();
            if st.closing {
                return Err(SendError::Closed);
            }
            let max = st.outbound_bytes_max as usize;
            st.out.push_message(kind, payload, max)
        };
        match pushed {
            Ok(frame_bytes) => {
                metrics::add(&self.metrics.messages_sent, 1);
                metrics::add(&self.metrics.outbound_queued_bytes, frame_bytes as u64);
                self.wake();
                Ok(())
            }
            Err(refused) => {
                metrics::add(&self.metrics.slow_consumer_closes, 1);
                tracing::info!(
                    conn = self.id,
                    peer = %self.peer,
                    queued_bytes = refused.queued_bytes,
                    frame_bytes = refused.frame_bytes,
                    "slow consumer: closing with 1008"
                );
                self.request_close(1008, "slow consumer", true);
                Err(SendError::SlowConsumer)
            }
        }
    }

    /// Starts the close handshake with `code`: data already queued is sent first, then the
    /// close frame; later sends are refused.
    pub fn close(&self, code: u16, reason: &'static str) {
        self.request_close(code, reason, false);
    }

    /// Starts the close; with `discard_queued` the data not yet started is dropped.
    pub(super) fn request_close(&self, code: u16, reason: &'static str, discard_queued: bool) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing {
                return;
            }
            st.closing = true;
            st.close_req = Some(CloseRequest {
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
    /// `silence_ms`, close after `message_ms` with a message incomplete.
    pub(super) fn sweep(&self, now_ms: u64, ping_idle_ms: u64, silence_ms: u64, message_ms: u64) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing || st.abort || st.message_timed_out {
                return;
            }
            let silent = now_ms.saturating_sub(st.last_rx_ms);
            if st.partial_since_ms != NOT_PARTIAL
                && now_ms.saturating_sub(st.partial_since_ms) >= message_ms
            {
                st.message_timed_out = true;
                metrics::add(&self.metrics.message_timeouts, 1);
                tracing::info!(
                    conn = self.id,
                    peer = %self.peer,
                    message_timeout_ms = message_ms,
                    "message not completed within message_timeout: closing with 1008"
                );
            } else if silent >= silence_ms {
                st.abort = true;
                metrics::add(&self.metrics.silence_timeouts, 1);
            } else if silent >= ping_idle_ms && !st.ping_outstanding {
                st.ping_outstanding = true;
                st.out.push_control(OpCode::Ping, b"");
                metrics::add(&self.metrics.pings_sent, 1);
            } else {
                return;
            }
        }
        self.wake();
    }

    /// Answers a ping, unless closing or more than [`CONTROL_QUEUE_BYTES_MAX`] of control
    /// frames are unsent (then the pong is dropped and counted).
    pub(super) fn queue_pong(&self, payload: &[u8]) {
        let mut st = self.st.borrow_mut();
        if st.closing {
            return;
        }
        if st.out.control_bytes() > CONTROL_QUEUE_BYTES_MAX {
            metrics::add(&self.metrics.pongs_dropped, 1);
            return;
        }
        st.out.push_control(OpCode::Pong, payload);
    }

    /// Bytes arrived at `now_ms`: the peer is alive.
    pub(super) fn touch(&self, now_ms: u64) {
        let mut st = self.st.borrow_mut();
        st.last_rx_ms = now_ms;
        st.ping_outstanding = false;
    }

    /// Remembers the connection task's waker (woken by sends and closes from elsewhere).
    pub(super) fn set_waker(&self, cx: &Context<'_>) {
        let mut st = self.st.borrow_mut();
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
    }

    /// Marks the connection task as running (sends during it need no wake-up).
    pub(super) fn set_in_poll(&self, v: bool) {
        self.st.borrow_mut().in_poll = v;
    }

    /// A pending close or abort, taken once.
    pub(super) fn take_exit_request(&self) -> Option<ExitRequest> {
        let mut st = self.st.borrow_mut();
        if st.abort {
            return Some(ExitRequest::Silence);
        }
        if st.message_timed_out {
            st.message_timed_out = false;
            st.closing = true;
            return Some(ExitRequest::MessageTimeout);
        }
        st.close_req.take().map(ExitRequest::Close)
    }

    /// Records whether a received frame or message is incomplete now (the sweeper closes the
    /// connection when one stays incomplete past `message_timeout`).
    pub(super) fn set_partial(&self, partial: bool, now_ms: u64) {
        let mut st = self.st.borrow_mut();
        if !partial {
            st.partial_since_ms = NOT_PARTIAL;
        } else if st.partial_since_ms == NOT_PARTIAL {
            st.partial_since_ms = now_ms;
        }
    }

    /// Queues our close frame (after the queued data, or instead of it).
    pub(super) fn queue_close_frame(&self, code: Option<u16>, reason: &str, discard_queued: bool) {
        let queued = {
            let mut st = self.st.borrow_mut();
            st.closing = true;
            st.out.push_close(code, reason, discard_queued)
        };
        metrics::sub(
            &self.metrics.outbound_queued_bytes,
            queued.discarded_bytes as u64,
        );
        metrics::add(
            &self.metrics.outbound_queued_bytes,
            queued.close_frame_bytes as u64,
        );
    }

    /// Writes queued frames through `write` (control frames at data-frame boundaries, then
    /// data) until it is `Pending` or everything is written (`Ready(Ok(()))`). `write` is one
    /// non-blocking write of a prefix of its argument.
    pub(super) fn poll_write_queued(
        &self,
        mut write: impl FnMut(&[u8]) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<()>> {
        let m = &self.metrics;
        let mut st = self.st.borrow_mut();
        loop {
            let Some((lane, buf)) = st.out.next_write() else {
                return Poll::Ready(Ok(()));
            };
            let n = match write(buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
            };
            metrics::add(&m.bytes_sent, n as u64);
            if lane == Lane::Data {
                metrics::sub(&m.outbound_queued_bytes, n as u64);
            }
            st.out.advance(lane, n);
        }
    }

    /// Forgets unsent data when the connection ends (keeps the gauge right).
    pub(super) fn discard_all(&self) {
        let mut st = self.st.borrow_mut();
        let dropped = st.out.clear();
        metrics::sub(&self.metrics.outbound_queued_bytes, dropped as u64);
        st.closing = true;
        st.waker = None;
    }
}
