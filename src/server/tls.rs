//! `wss://`: TLS in user space with rustls, driven sans-IO on each shard's own executor.
//!
//! This module owns three things:
//!
//! * [`TlsCerts`], the node's TLS configuration: the certificate and key loaded from
//!   `--tls-cert`/`--tls-key`, ALPN `http/1.1`, TLS 1.3 and 1.2, and one session-ticket key set
//!   for the whole node (rustls' ring `Ticketer`: a ChaCha20-Poly1305 key, rotated every 6 h, the
//!   previous key still accepted) shared by every shard through one `Arc`, so a client resumes
//!   on whichever shard its reconnect lands. [`TlsCerts::reload`] (on SIGHUP) swaps in a freshly
//!   loaded configuration for new connections; connections already open keep theirs; a file that
//!   does not load is logged and the old configuration kept. The ticket keys and the TLS 1.2
//!   session cache survive a reload.
//! * [`ConnStream`], what a connection task reads and writes: the plain glommio `TcpStream` of a
//!   `ws://` listener, or a [`TlsStream`] of a `wss://` listener.
//! * [`TlsStream`]: a `rustls::ServerConnection` over a glommio `TcpStream`. Ciphertext is read
//!   into the caller's buffer (the shard's scratch buffer), handed to rustls, and the plaintext
//!   copied back into that same buffer, so no read buffer of ours lives across an await. Output
//!   (handshake flights, records, alerts) is written from rustls' queue whenever the connection is
//!   polled. The TLS handshake itself runs inside the first read of the HTTP request head, so it
//!   is bounded by `handshake_timeout` like the rest of the upgrade.
//!
//! **Crypto provider: ring.** It is already in the build (async-nats' TLS uses it), needs no
//! cmake or C toolchain beyond cc, and has the P-256 and RSA signing and AES-GCM/ChaCha20 we
//! need; aws-lc-rs would add a CMake build of a C library to every build for a handshake rate
//! we have not shown we need.
//!
//! **Memory.** rustls keeps per connection its record deframing buffer (4 KiB after the first
//! read, shrunk back to 4 KiB when empty) and its queues (empty `VecDeque`s when idle); the
//! sendable-plaintext queue is capped by `set_buffer_limit` at [`SEND_BUFFER_BYTES_MAX`]. See
//! `docs/benchmarks.md` for the measured RSS of an idle `wss://` connection.

use std::{
    fmt, io,
    net::Shutdown,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
    task::{Context, Poll},
};

use futures_lite::{
    future::poll_fn,
    io::{AsyncRead, AsyncWrite},
};
use glommio::net::TcpStream;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions},
    ServerConfig, ServerConnection,
};

/// Plaintext rustls may hold encrypted but unsent for one connection; the connection's own
/// outbound queue (bounded by `outbound_bytes_max`) holds the rest.
pub const SEND_BUFFER_BYTES_MAX: usize = 16 * 1024;
/// TLS 1.2 sessions (by session id) remembered for resumption, node-wide; TLS 1.3 and most
/// TLS 1.2 clients resume with tickets, which need no server state.
const SESSION_CACHE_ENTRIES: usize = 4096;
/// TLS 1.3 tickets sent after a full handshake: one reconnect needs one.
const TLS13_TICKETS: usize = 1;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate file {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("certificate file {path} holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read private key file {path}: {reason} (PKCS#8, PKCS#1 or SEC1 PEM expected)")]
    Key { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not make a usable TLS configuration: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot create the session-ticket key: {0}")]
    Ticketer(rustls::Error),
}

/// Where the node's certificate and key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// TLS counters, rendered into `/metrics`.
#[derive(Default)]
pub struct TlsMetrics {
    /// TLS handshakes that failed (bad client hello, no common version or cipher, alert).
    pub handshake_failures: AtomicU64,
    /// TLS handshakes completed, by kind.
    pub handshakes_full: AtomicU64,
    pub handshakes_resumed: AtomicU64,
    /// Certificate reloads, by outcome.
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

impl TlsMetrics {
    /// Appends the counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP tether_tls_handshakes_total TLS handshakes on wss:// listeners, by result.\n\
             # TYPE tether_tls_handshakes_total counter\n\
             tether_tls_handshakes_total{{result=\"full\"}} {}\n\
             tether_tls_handshakes_total{{result=\"resumed\"}} {}\n\
             tether_tls_handshakes_total{{result=\"failed\"}} {}\n\
             # HELP tether_tls_reloads_total Certificate reloads (SIGHUP), by result.\n\
             # TYPE tether_tls_reloads_total counter\n\
             tether_tls_reloads_total{{result=\"ok\"}} {}\n\
             tether_tls_reloads_total{{result=\"failed\"}} {}",
            self.handshakes_full.load(Relaxed),
            self.handshakes_resumed.load(Relaxed),
            self.handshake_failures.load(Relaxed),
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed),
        );
    }
}

/// The node's TLS configuration, shared by its shards; swapped whole on reload.
pub struct TlsCerts {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    pub metrics: TlsMetrics,
}

impl fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCerts")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsCerts {
    /// Loads the certificate and key; creates the node's ticket keys.
    pub fn load(files: TlsFiles) -> Result<TlsCerts, TlsError> {
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Ticketer)?;
        let sessions: Arc<dyn StoresServerSessions> =
            ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        let config = build_config(&files, &ticketer, &sessions)?;
        Ok(TlsCerts {
            files,
            current: RwLock::new(config),
            ticketer,
            sessions,
            metrics: TlsMetrics::default(),
        })
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the files; on failure the configuration in use stays. Open connections are
    /// not touched either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        match build_config(&self.files, &self.ticketer, &self.sessions) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                self.metrics.reloads_ok.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }

    /// The files reloaded on SIGHUP.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn build_config(
    files: &TlsFiles,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let config_error = |source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(config_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = ticketer.clone();
    config.session_storage = sessions.clone();
    config.send_tls13_tickets = TLS13_TICKETS;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A connection's byte stream: plain TCP (`ws://`) or TLS over TCP (`wss://`).
pub enum ConnStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl ConnStream {
    /// Shuts the stream down; for TLS, `Write`/`Both` first send `close_notify` and flush
    /// what rustls still holds (callers bound this with their own timeout).
    pub async fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        match self {
            ConnStream::Plain(s) => s.shutdown(how).await.map_err(io::Error::from),
            ConnStream::Tls(s) => s.shutdown(how).await,
        }
    }

    /// Whether this is a `wss://` connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnStream::Tls(_))
    }

    /// Reads from the socket itself, below TLS: for what precedes the ClientHello (a PROXY
    /// protocol header). Only before the first [`AsyncRead`] read.
    pub fn poll_read_socket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            ConnStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnStream::Tls(s) => {
                debug_assert!(s.stash.is_empty() && !s.counted, "TLS reading has begun");
                Pin::new(&mut s.tcp).poll_read(cx, buf)
            }
        }
    }

    /// Hands TLS the ciphertext [`Self::poll_read_socket`] read past what preceded the
    /// ClientHello; the first TLS read takes it before reading the socket. For a plain stream
    /// the caller keeps such bytes itself (they are the request head): passing any is a bug.
    pub fn unread_ciphertext(&mut self, ciphertext: Vec<u8>) {
        match self {
            ConnStream::Plain(_) => {
                debug_assert!(ciphertext.is_empty(), "a plain stream has no TLS layer")
            }
            ConnStream::Tls(s) => {
                debug_assert!(s.stash.is_empty(), "TLS reading has begun");
                s.stash = ciphertext;
            }
        }
    }
}

impl AsyncRead for ConnStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnStream::Tls(s) => s.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnStream::Tls(s) => s.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnStream::Tls(s) => s.poll_flush_tls(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_close(cx),
            ConnStream::Tls(s) => {
                s.tls.send_close_notify();
                std::task::ready!(s.poll_flush_tls(cx))?;
                Pin::new(&mut s.tcp).poll_close(cx)
            }
        }
    }
}

/// A server-side TLS connection over a glommio `TcpStream`.
pub struct TlsStream {
    tcp: TcpStream,
    tls: ServerConnection,
    certs: Arc<TlsCerts>,
    /// Ciphertext read but not yet handed to rustls because its plaintext buffer was full;
    /// empty (no allocation) otherwise.
    stash: Vec<u8>,
    /// The handshake's outcome has been counted.
    counted: bool,
}

/// `io::Write` over a glommio socket inside a poll: `Pending` becomes `WouldBlock` (the socket
/// has registered the task's waker).
struct SyncWriter<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl io::Write for SyncWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsStream {
    /// Starts a server-side TLS session on an accepted socket.
    pub fn accept(tcp: TcpStream, certs: Arc<TlsCerts>) -> Result<TlsStream, rustls::Error> {
        let mut tls = ServerConnection::new(certs.current())?;
        tls.set_buffer_limit(Some(SEND_BUFFER_BYTES_MAX));
        Ok(TlsStream {
            tcp,
            tls,
            certs,
            stash: Vec::new(),
            counted: false,
        })
    }

    /// Writes what rustls holds until it is empty (`Ready`) or the socket is full (`Pending`).
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            let mut w = SyncWriter {
                tcp: &mut self.tcp,
                cx,
            };
            match self.tls.write_tls(&mut w) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Hands `cipher` to rustls and decrypts; the plaintext goes to `out`, which may be the
    /// front of the buffer `cipher` lies in (plaintext never outruns the ciphertext consumed,
    /// except for a record begun in an earlier read: that plaintext stays in rustls and is
    /// returned by the next read). Returns (ciphertext consumed, plaintext written).
    fn feed(
        &mut self,
        buf: &mut [u8],
        cipher_at: usize,
        cipher_end: usize,
    ) -> io::Result<(usize, usize)> {
        let mut off = cipher_at;
        let mut out = 0;
        while off < cipher_end {
            let k = match self.tls.read_tls(&mut &buf[off..cipher_end]) {
                Ok(k) => k,
                // The plaintext buffer is full: the caller stashes the rest.
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => return Err(e),
            };
            if k == 0 {
                break;
            }
            off += k;
            if let Err(e) = self.tls.process_new_packets() {
                self.count_failure(&e);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            self.count_handshake();
            // `buf[out..off]` is ciphertext rustls has taken: free for plaintext.
            while out < off {
                match io::Read::read(&mut self.tls.reader(), &mut buf[out..off]) {
                    Ok(0) | Err(_) => break,
                    Ok(m) => out += m,
                }
            }
        }
        Ok((off - cipher_at, out))
    }

    fn count_handshake(&mut self) {
        if self.counted || self.tls.is_handshaking() {
            return;
        }
        self.counted = true;
        let m = &self.certs.metrics;
        if self.tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            m.handshakes_resumed.fetch_add(1, Relaxed);
        } else {
            m.handshakes_full.fetch_add(1, Relaxed);
        }
    }

    fn count_failure(&mut self, e: &rustls::Error) {
        if !self.counted {
            self.counted = true;
            self.certs.metrics.handshake_failures.fetch_add(1, Relaxed);
            tracing::debug!(error = %e, "TLS handshake failed");
        } else {
            tracing::debug!(error = %e, "TLS error");
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Output owed from earlier (handshake flights, records of writes the socket refused).
        if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            match io::Read::read(&mut self.tls.reader(), buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let (start, end) = if self.stash.is_empty() {
                let n = match Pin::new(&mut self.tcp).poll_read(cx, buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(n)) => n,
                };
                if n == 0 {
                    // EOF: rustls tells a clean close_notify (Ok(0)) from a truncation (error).
                    let _ = self.tls.read_tls(&mut &[][..]);
                    if let Err(e) = self.tls.process_new_packets() {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                    }
                    return match io::Read::read(&mut self.tls.reader(), buf) {
                        Ok(n) => Poll::Ready(Ok(n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(0)),
                        Err(e) => Poll::Ready(Err(e)),
                    };
                }
                (0, n)
            } else {
                // Stashed ciphertext goes first; it is moved into `buf` as far as it fits.
                let n = self.stash.len().min(buf.len());
                buf[..n].copy_from_slice(&self.stash[..n]);
                self.stash.drain(..n);
                if self.stash.is_empty() {
                    self.stash = Vec::new();
                }
                (0, n)
            };
            let (used, out) = match self.feed(buf, start, end) {
                Ok(x) => x,
                Err(e) => {
                    // Best effort: the alert rustls queued.
                    let _ = self.poll_flush_tls(cx);
                    return Poll::Ready(Err(e));
                }
            };
            if start + used < end {
                let mut rest = buf[start + used..end].to_vec();
                rest.extend_from_slice(&self.stash);
                self.stash = rest;
            }
            if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            if out > 0 {
                return Poll::Ready(Ok(out));
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Records already encrypted go first; new plaintext only when rustls has room.
        std::task::ready!(self.poll_flush_tls(cx))?;
        let n = io::Write::write(&mut self.tls.writer(), buf)?;
        // Start sending now; what the socket refuses is written on the next poll (read or
        // write) of this connection, whose waker the socket has registered.
        if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
            return Poll::Ready(Err(e));
        }
        if n == 0 && !buf.is_empty() {
            // Only before the handshake completes can rustls refuse plaintext; try again.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(n))
    }

    async fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            self.tls.send_close_notify();
            poll_fn(|cx| self.poll_flush_tls(cx)).await?;
        }
        self.tcp.shutdown(how).await.map_err(io::Error::from)
    }
}
