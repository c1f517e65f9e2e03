//! A connection's task from accept to close: the upgrade, the frame loop, the close handshake.
//! It owns the socket; the [`Conn`] handle it registers in its shard holds what other code may
//! touch (the outbound queue, the close request).
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
//! scratch buffer and is fed to the connection's [`ws::Context`] (the RFC 6455 layer above the
//! decoder, shared with the load generator), which decodes it there in place and keeps only the
//! bytes of an incomplete frame (freed as soon as they are consumed). An idle connection
//! therefore holds its glommio stream, the context, the [`Conn`] with its (empty) queues, and
//! the task: see `docs/benchmarks.md` for the measured RSS.
//!
//! **Incomplete messages are budgeted per shard.** What a connection keeps of an incomplete
//! frame and of a fragmented message ([`ws::Context::held_bytes`]) is taken from the shard's
//! `shard_partial_bytes_max` (the context's [`ws::Budget`], [`ShardBudget`]) before the buffer
//! grows; a connection whose
//! growth the budget cannot cover is closed with 1013 (try again later), counted in
//! `tether_partial_budget_closes_total` and logged, and its bytes go back at once. So clients
//! parked mid-frame pin at most the budget per shard, whatever their number. A frame or
//! message must also be complete within `message_timeout` of its first byte (the sweeper
//! closes it with 1008, `tether_message_timeouts_total`), so a peer trickling a byte now and
//! then cannot hold its part of the budget for long.
//!
//! **Close.** Each protocol violation is answered with a close frame carrying
//! [`crate::ws::ProtocolError::close_code`]. Whoever starts it, the close handshake is bounded:
//! after our close frame we wait at most `close_timeout` (less when the drain deadline is
//! nearer) for the peer's close and FIN, then close the socket.

use std::{
    io,
    net::{Shutdown, SocketAddr},
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_lite::{future::poll_fn, io::AsyncRead, io::AsyncWrite, AsyncWriteExt};

use crate::ws::{
    self, parse_request, write_accept_response, write_error_response, write_handshake_error,
    DecoderLimits, Ended, HandshakeError, HandshakeLimits, Incoming, ProtocolError, Role,
};

use super::{
    conn::{CloseRequest, Conn, ConnHandle, ExitRequest},
    endpoint::{ConnInfo, Session},
    metrics::{self, HandshakeResult},
    node::NodeShared,
    proxy_protocol,
    shard::ShardCtx,
    tls::ConnStream,
};

/// How long a rejected client's socket lingers for its FIN after our response.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait to write a 503 to a refused socket that may not linger (a fresh socket's send
/// buffer is empty, so this only bounds a pathological case).
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);
/// Reads handled in one poll of a connection before it yields to the others.
const READS_PER_POLL: usize = 4;

/// How the frame loop ended.
enum Exit {
    /// The peer sent a close frame (with its code, if any).
    Peer(Option<u16>),
    /// We close (drain, slow consumer, application).
    Local(CloseRequest),
    /// The peer broke the protocol.
    Protocol(ProtocolError),
    /// EOF or reset without a close handshake.
    Gone,
    /// Silent past `silence_timeout`.
    Silence,
    /// A shard limit on what a connection may hold or how long it may take (1013, 1008): our
    /// close frame, then input is discarded, not decoded.
    Limit { code: u16, reason: &'static str },
}

/// The shard's partial-message budget (`shard_partial_bytes_max`) as the [`ws::Budget`] a
/// connection's [`ws::Context`] takes the bytes of its incomplete frame and message from.
struct ShardBudget<'a>(&'a ShardCtx);

/// The shard's budget could not cover a connection's growth.
struct OverBudget;

impl ws::Budget for ShardBudget<'_> {
    type Refused = OverBudget;

    #[inline]
    fn take(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if self.0.partial_take(bytes) {
            Ok(())
        } else {
            Err(OverBudget)
        }
    }

    #[inline]
    fn give(&mut self, bytes: usize) {
        self.0.partial_give(bytes);
    }
}

/// Decodes what the peer sent (`new`, after what the context held), hands each message to the
/// session and queues the pongs owed; records whether a frame or message is incomplete (the
/// sweeper's `message_timeout`, from `now_ms`, the shard clock read once for the whole read).
/// Growth of what the connection holds is taken from the shard's budget first; when the
/// budget cannot cover it the connection ends with [`Exit::Limit`] (1013).
fn feed(
    ws: &mut ws::Context,
    new: &mut [u8],
    conn: &ConnHandle,
    session: &mut dyn Session,
    shard: &ShardCtx,
    now_ms: u64,
) -> Option<Exit> {
    let m = &shard.metrics;
    let fed = ws.feed_within(new, &mut ShardBudget(shard), |incoming| match incoming {
        Incoming::Message { kind, data } => {
            metrics::add(&m.messages_received, 1);
            session.on_message(conn, kind, data);
        }
        Incoming::Ping(p) => conn.queue_pong(p),
        Incoming::Pong(_) => {}
    });
    let exit = match fed {
        Ok(None) => None,
        Ok(Some(Ended::PeerClosed(code))) => Some(Exit::Peer(code)),
        Ok(Some(Ended::Violation(e))) => Some(Exit::Protocol(e)),
        Err(OverBudget) => Some(over_budget(ws, shard, conn)),
    };
    conn.set_partial(ws.is_partial(), now_ms);
    exit
}

/// The budget is used up: count, log, give the connection's bytes back, and end it with 1013.
fn over_budget(ws: &mut ws::Context, shard: &ShardCtx, conn: &Conn) -> Exit {
    metrics::add(&shard.metrics.partial_budget_closes, 1);
    tracing::info!(
        conn = conn.id(),
        peer = %conn.peer(),
        held_bytes = ws.held_bytes(),
        shard_partial_bytes = shard.partial_bytes(),
        shard_partial_bytes_max = shard.config.shard_partial_bytes_max,
        "partial-message budget of the shard used up: closing with 1013"
    );
    ws.release(&mut ShardBudget(shard));
    Exit::Limit {
        code: 1013,
        reason: "server busy: too many incomplete messages, try again later",
    }
}

/// Reads once into the shard's scratch buffer and hands the bytes to `f`.
fn poll_read_scratch<R>(
    shard: &ShardCtx,
    stream: &mut ConnStream,
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
    shard: &ShardCtx,
    conn: &ConnHandle,
    stream: &mut ConnStream,
    ws: &mut ws::Context,
    session: &mut dyn Session,
    cx: &mut Context<'_>,
) -> Poll<Exit> {
    conn.set_waker(cx);
    let mut reads = 0;
    loop {
        match conn.take_exit_request() {
            Some(ExitRequest::Close(req)) => return Poll::Ready(Exit::Local(req)),
            Some(ExitRequest::Silence) => return Poll::Ready(Exit::Silence),
            Some(ExitRequest::MessageTimeout) => {
                return Poll::Ready(Exit::Limit {
                    code: 1008,
                    reason: "message not completed within message_timeout",
                })
            }
            None => {}
        }
        if let Poll::Ready(Err(_)) = poll_flush(conn, stream, cx) {
            return Poll::Ready(Exit::Gone);
        }
        if reads == READS_PER_POLL {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        reads += 1;
        let r = poll_read_scratch(shard, stream, cx, usize::MAX, |data| {
            metrics::add(&shard.metrics.bytes_received, data.len() as u64);
            let now_ms = shard.now_ms();
            conn.touch(now_ms);
            conn.set_in_poll(true);
            let exit = feed(ws, data, conn, session, shard, now_ms);
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
        shard.handshake_started();
        Handshaking(shard.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshake_ended();
    }
}

/// Serves one accepted socket until it closes. `admitted` is false when the node was at
/// capacity at accept time (the client then gets 503).
pub(super) async fn run(
    shard: Rc<ShardCtx>,
    mut stream: ConnStream,
    peer: SocketAddr,
    admitted: bool,
) {
    let _admission = admitted.then(|| Admission(shard.node.clone()));
    let id = shard.next_conn_id();
    // Locals of the handshake stay inside blocks: a local in scope across an await is stored in
    // the task for the connection's whole life (see `connection_state_stays_small`).
    let upgraded = {
        let _hs = Handshaking::new(&shard);
        let mut info = ConnInfo {
            id,
            peer,
            shard: shard.index,
        };
        Box::pin(handshake(&shard, &mut stream, &mut info, admitted))
            .await
            .map(|(session, leftover)| (session, leftover, info.peer))
    };
    // `peer` is now the client's address (the PROXY header's on a listener that reads one).
    let Some((mut session, leftover, peer)) = upgraded else {
        return;
    };

    let conn: ConnHandle = Rc::new(Conn::new(
        id,
        peer,
        shard.metrics.clone(),
        shard.config.outbound_bytes_max,
        shard.now_ms(),
    ));
    shard.register(conn.clone());
    session.on_open(&conn);
    let cfg = &shard.config;
    let mut ws = ws::Context::new(
        Role::Server,
        DecoderLimits {
            frame_bytes_max: cfg.frame_bytes_max,
            message_bytes_max: cfg.message_bytes_max,
        },
    );
    let early = {
        let mut first = leftover;
        if first.is_empty() {
            None
        } else {
            feed(
                &mut ws,
                &mut first,
                &conn,
                &mut *session,
                &shard,
                shard.now_ms(),
            )
        }
    };
    let exit = if let Some(exit) = early {
        exit
    } else {
        poll_fn(|cx| poll_open(&shard, &conn, &mut stream, &mut ws, &mut *session, cx)).await
    };
    let code = Box::pin(close(&shard, &conn, &mut stream, &mut ws, exit)).await;
    ws.release(&mut ShardBudget(&shard));
    conn.discard_all();
    shard.deregister(conn.id());
    shard.metrics.close(code);
    session.on_close(&conn, code);
}

/// Writes what the connection's queue holds (control frames at frame boundaries, then data).
fn poll_flush(conn: &Conn, stream: &mut ConnStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    conn.poll_write_queued(|buf| Pin::new(&mut *stream).poll_write(cx, buf))
}

/// The close phase; returns the code to count.
async fn close(
    shard: &ShardCtx,
    conn: &ConnHandle,
    stream: &mut ConnStream,
    ws: &mut ws::Context,
    exit: Exit,
) -> u16 {
    let wait = shard.close_wait(shard.config.close_timeout);
    match exit {
        Exit::Gone | Exit::Silence => {
            let _ = stream.shutdown(Shutdown::Both).await;
            1006
        }
        Exit::Peer(code) => {
            // Echo the peer's code (RFC 6455 §5.5.1), then close our side and wait for its FIN.
            conn.queue_close_frame(code, "", false);
            finish_close(shard, conn, stream, wait).await;
            code.unwrap_or(1005)
        }
        Exit::Protocol(e) => {
            tracing::debug!(conn = conn.id(), peer = %conn.peer(), error = %e, code = e.close_code(), "protocol violation");
            let reason = e.to_string();
            // Echoes of the messages completed before the violation go out first (Autobahn
            // 3.2-3.4, 4.x, 5.15 expect them); the queue is bounded and the flush timed.
            conn.queue_close_frame(Some(e.close_code()), &reason, false);
            finish_close(shard, conn, stream, wait).await;
            e.close_code()
        }
        Exit::Limit { code, reason } => {
            ws.release(&mut ShardBudget(shard));
            conn.queue_close_frame(Some(code), reason, false);
            finish_close(shard, conn, stream, wait).await;
            code
        }
        Exit::Local(req) => {
            conn.queue_close_frame(Some(req.code), req.reason, req.discard_queued);
            ws.close_sent();
            let _ = glommio::timer::timeout(wait, async {
                // Flush while reading: the peer may be sending while we close.
                poll_fn(|cx| {
                    let flushed = poll_flush(conn, stream, cx)?;
                    loop {
                        let r = poll_read_scratch(shard, stream, cx, usize::MAX, |data| {
                            closing_feed(shard, ws, data)
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

/// After the peer's close or a violation: flush our close frame, shut down our side, and
/// discard input until the peer's FIN, all within `wait`.
async fn finish_close(shard: &ShardCtx, conn: &Conn, stream: &mut ConnStream, wait: Duration) {
    let _ = glommio::timer::timeout(wait, async {
        poll_fn(|cx| poll_flush(conn, stream, cx)).await?;
        let _ = stream.shutdown(Shutdown::Write).await;
        discard_until_eof(shard, stream).await;
        Ok(())
    })
    .await;
}

/// Decodes frames while waiting for the peer's close; data is ignored and no ping is answered
/// (our close is sent). True once the peer's close frame (or a violation) is seen, or when what
/// is kept of an incomplete frame would exceed the shard's budget (then we stop waiting).
fn closing_feed(shard: &ShardCtx, ws: &mut ws::Context, data: &mut [u8]) -> bool {
    !matches!(
        ws.feed_within(data, &mut ShardBudget(shard), |_| {}),
        Ok(None)
    )
}

/// Reads and drops input until EOF (bounded by the caller's timeout).
async fn discard_until_eof(shard: &ShardCtx, stream: &mut ConnStream) {
    loop {
        let r = poll_fn(|cx| poll_read_scratch(shard, stream, cx, usize::MAX, |_| ())).await;
        match r {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

/// Writes an HTTP error response, then lingers briefly so it is not lost to a reset.
async fn reject(shard: &ShardCtx, stream: &mut ConnStream, response: &[u8]) {
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
    /// Closed without a response (a bad PROXY header: what the balancer sent was not a client).
    Closed(HandshakeResult),
    Gone,
}

/// Reads and answers the upgrade request (after the PROXY header on a listener that expects
/// one, which sets `info.peer`). `Some((session, leftover))` once the 101 is sent.
async fn handshake(
    shard: &Rc<ShardCtx>,
    stream: &mut ConnStream,
    info: &mut ConnInfo,
    admitted: bool,
) -> Option<(Box<dyn Session>, Vec<u8>)> {
    if !admitted {
        refuse_over_capacity(shard, stream, info).await;
        return None;
    }
    let started = Instant::now();
    let proxied = shard.config.proxy_protocol.expected_on(stream.is_tls());
    let mut proxy_pending = proxied;
    let timed = glommio::timer::timeout(shard.config.handshake_timeout, async {
        let mut head = Vec::new();
        if proxied {
            if let Err(outcome) = read_proxy_header(shard, stream, info, &mut head).await {
                return Ok(outcome);
            }
            proxy_pending = false;
        }
        Ok(handshake_inner(shard, stream, info, head, proxied).await)
    })
    .await;
    let outcome = timed.unwrap_or_else(|_| {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if proxy_pending {
            shard.metrics.proxy_header("timeout");
            tracing::info!(peer = %info.peer, elapsed_ms, "PROXY header not received within handshake_timeout: closing");
            return HandshakeOutcome::Closed(HandshakeResult::ProxyHeader);
        }
        tracing::debug!(peer = %info.peer, elapsed_ms, "handshake timeout");
        HandshakeOutcome::Refused(
            HandshakeResult::Timeout,
            error_response(408, "request head not received within handshake_timeout"),
        )
    });
    match outcome {
        HandshakeOutcome::Upgraded(session, leftover) => {
            shard.metrics.handshake(HandshakeResult::Ok);
            shard.metrics.handshake_duration.observe(started.elapsed());
            Some((session, leftover))
        }
        HandshakeOutcome::Refused(result, response) => {
            shard.metrics.handshake(result);
            reject(shard, stream, &response).await;
            None
        }
        HandshakeOutcome::Closed(result) => {
            // The caller drops the socket: nothing is written (on `wss://` not even an alert).
            shard.metrics.handshake(result);
            None
        }
        HandshakeOutcome::Gone => {
            shard.metrics.handshake(HandshakeResult::IoError);
            None
        }
    }
}

/// Most bytes read while looking for a PROXY header: the longest v2 header. Whatever follows
/// the header in them is the client's (its request head, or its TLS ClientHello).
const PROXY_READ_BYTES_MAX: usize =
    proxy_protocol::V2_FIXED_BYTES + proxy_protocol::V2_PAYLOAD_BYTES_MAX;

/// Reads the PROXY header a listener with `proxy_protocol` expects before anything else, from
/// the socket (below TLS on a `wss://` listener), and sets `info.peer` to the client it names.
/// The bytes read past it go to `head` (`ws://`) or back to TLS (`wss://`). A missing or bad
/// header is counted, logged, and the socket closed without a response.
async fn read_proxy_header(
    shard: &ShardCtx,
    stream: &mut ConnStream,
    info: &mut ConnInfo,
    head: &mut Vec<u8>,
) -> Result<(), HandshakeOutcome> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let room = PROXY_READ_BYTES_MAX - buf.len();
        let r = poll_fn(|cx| {
            let mut scratch = shard.scratch.borrow_mut();
            let lim = room.min(scratch.len());
            match stream.poll_read_socket(cx, &mut scratch[..lim]) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
                Poll::Ready(Ok(n)) => {
                    buf.extend_from_slice(&scratch[..n]);
                    Poll::Ready(Ok(true))
                }
            }
        })
        .await;
        if !matches!(r, Ok(true)) {
            return Err(HandshakeOutcome::Gone);
        }
        match proxy_protocol::parse(&buf) {
            Ok(None) => {
                // Every header fits in PROXY_READ_BYTES_MAX, so a full buffer has an answer.
                assert!(
                    buf.len() < PROXY_READ_BYTES_MAX,
                    "PROXY parser wants more than its limit"
                );
            }
            Ok(Some((header, len))) => {
                shard.metrics.proxy_header("ok");
                let client = header.source_or(info.peer);
                tracing::debug!(balancer = %info.peer, peer = %client, version = ?header.version, "PROXY header");
                info.peer = client;
                let rest = buf.split_off(len);
                if stream.is_tls() {
                    stream.unread_ciphertext(rest);
                } else {
                    *head = rest;
                }
                return Ok(());
            }
            Err(e) => {
                shard.metrics.proxy_header(e.label());
                tracing::info!(peer = %info.peer, reason = e.label(), error = %e, "bad PROXY header: closing");
                return Err(HandshakeOutcome::Closed(HandshakeResult::ProxyHeader));
            }
        }
    }
}

/// Reads (after the bytes already in `head`) and answers the request head. `proxied`: the
/// listener read a PROXY header before it; on one that did not, a PROXY header is a 400.
async fn handshake_inner(
    shard: &Rc<ShardCtx>,
    stream: &mut ConnStream,
    info: &ConnInfo,
    mut head: Vec<u8>,
    proxied: bool,
) -> HandshakeOutcome {
    let cfg = &shard.config;
    let limits = HandshakeLimits {
        head_bytes_max: cfg.head_bytes_max,
        headers_max: cfg.headers_max,
    };
    let (req, head_len) = loop {
        if head.is_empty() {
            let room = limits.head_bytes_max + 1;
            let r = poll_fn(|cx| {
                poll_read_scratch(shard, stream, cx, room, |data| head.extend_from_slice(data))
            })
            .await;
            match r {
                Ok(Some(())) => {}
                Ok(None) | Err(_) => return HandshakeOutcome::Gone,
            }
        }
        if !proxied && proxy_protocol::starts_with_signature(&head) {
            shard.metrics.proxy_header("unexpected");
            tracing::info!(peer = %info.peer, "PROXY header on a listener without proxy_protocol: 400");
            return HandshakeOutcome::Refused(
                HandshakeResult::BadRequest,
                error_response(
                    400,
                    "PROXY protocol header on a listener that does not expect one",
                ),
            );
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
            Ok(None) => {
                let room = limits.head_bytes_max + 1 - head.len().min(limits.head_bytes_max);
                let r = poll_fn(|cx| {
                    poll_read_scratch(shard, stream, cx, room, |data| head.extend_from_slice(data))
                })
                .await;
                match r {
                    Ok(Some(())) => {}
                    Ok(None) | Err(_) => return HandshakeOutcome::Gone,
                }
            }
            Ok(Some(x)) => break x,
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, status = e.status(), "upgrade refused");
                let mut out = Vec::new();
                write_handshake_error(&mut out, &e);
                return HandshakeOutcome::Refused(HandshakeResult::from_status(e.status()), out);
            }
        }
    };
    if !cfg.origin_allowed(req.origin.as_deref()) {
        tracing::debug!(peer = %info.peer, origin = ?req.origin, "origin not allowed");
        return HandshakeOutcome::Refused(
            HandshakeResult::OriginNotAllowed,
            error_response(403, "origin not allowed"),
        );
    }
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
            return HandshakeOutcome::Refused(rej.result, error_response(rej.status, &rej.body));
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
async fn refuse_over_capacity(shard: &Rc<ShardCtx>, stream: &mut ConnStream, info: &ConnInfo) {
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
    use crate::server::config::ServerConfig;
    use crate::server::metrics::ShardMetrics;

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
            let task = run(ctx, ConnStream::Plain(stream), addr, true);
            let task_bytes = std::mem::size_of_val(&task);
            let conn_bytes = std::mem::size_of::<Conn>();
            let stream_bytes = std::mem::size_of::<ConnStream>();
            eprintln!(
                "task future {task_bytes} B, Conn {conn_bytes} B, ConnStream {stream_bytes} B"
            );
            assert!(
                task_bytes <= 768,
                "connection task future grew to {task_bytes} bytes"
            );
            assert!(conn_bytes <= 320, "Conn grew to {conn_bytes} bytes");
            let outbound_bytes = std::mem::size_of::<crate::server::outbound::Outbound>();
            assert!(
                outbound_bytes <= 104,
                "Outbound grew to {outbound_bytes} bytes"
            );
        });
    }
}
