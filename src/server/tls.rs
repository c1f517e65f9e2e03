//! `wss://`: TLS in user space with rustls, driven sans-IO on each shard's own executor.
//!
//! This module owns three things:
//!
//! * [`TlsCerts`], the node's TLS configuration: the certificates and keys loaded from
//!   `--tls-cert`/`--tls-key` (pairs, in order), the one a client gets chosen by the name it
//!   asks for (SNI) among the DNS names of each certificate's subject alternative names (exact
//!   names first, then a wildcard `*.example.com` for one label below it; the first pair for a
//!   client without SNI or a name no certificate has), ALPN `http/1.1`, TLS 1.3 and 1.2, and
//!   one session-ticket key set
//!   for the whole node (rustls' ring `Ticketer`: a ChaCha20-Poly1305 key, rotated every 6 h, the
//!   previous key still accepted) shared by every shard through one `Arc`, so a client resumes
//!   on whichever shard its reconnect lands. [`TlsCerts::reload`] (on SIGHUP) swaps in a freshly
//!   loaded configuration for new connections; connections already open keep theirs; a file that
//!   does not load is logged and the old configuration kept. The ticket keys and the TLS 1.2
//!   session cache survive a reload.
//! * [`ConnStream`], what a connection task reads and writes: the plain glommio `TcpStream` of a
//!   `ws://` listener, or a [`TlsStream`] of a `wss://` listener.
//! * [`TlsStream`]: rustls' unbuffered `UnbufferedServerConnection` over a glommio
//!   `TcpStream`. Ciphertext is read into the shard's receive scratch and decrypted from there
//!   into the caller's buffer; records are encrypted into the shard's send scratch and written
//!   from there. The connection keeps a buffer of its own only for what one poll could not
//!   finish (a partial record, plaintext the caller had no room for, ciphertext the socket
//!   did not take), each freed when emptied. The TLS handshake runs inside the first read of
//!   the HTTP request head, so it is bounded by `handshake_timeout` like the rest of the
//!   upgrade.
//!
//! **Crypto provider: ring.** It is already in the build (the NATS client's TLS uses it), needs no
//! cmake or C toolchain beyond cc, and has the P-256 and RSA signing and AES-GCM/ChaCha20 we
//! need; aws-lc-rs would add a CMake build of a C library to every build for a handshake rate
//! we have not shown we need.
//!
//! **Memory.** An idle connection holds rustls' connection state only (the connection
//! struct, the two record-layer keys, the TLS 1.3 key schedule), no buffers: rustls' buffered
//! `ServerConnection` kept a 4 KiB record-deframing buffer per connection for good. See
//! `docs/benchmarks.md` ("`wss://`: memory per idle TLS connection") for the heap profile and
//! the measured RSS.

use std::{
    cell::RefCell,
    collections::HashMap,
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
    server::{
        ClientHello, ProducesTickets, ResolvesServerCert, ServerConnectionData,
        ServerSessionMemoryCache, StoresServerSessions, UnbufferedServerConnection,
    },
    sign::CertifiedKey,
    unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic},
    ServerConfig,
};

/// Most plaintext one write encrypts; the ciphertext the socket does not take at once is kept
/// until sent, and no write is accepted before. The connection's own outbound queue (bounded
/// by `outbound_bytes_max`) holds the rest.
pub const SEND_BUFFER_BYTES_MAX: usize = 16 * 1024;
/// TLS 1.2 sessions (by session id) remembered for resumption, node-wide; TLS 1.3 and most
/// TLS 1.2 clients resume with tickets, which need no server state.
const SESSION_CACHE_ENTRIES: usize = 4096;
/// TLS 1.3 tickets sent after a full handshake: one reconnect needs one.
const TLS13_TICKETS: usize = 1;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or is not PEM.
    #[error("cannot read certificate file {path}: {reason}")]
    Cert {
        /// The certificate file.
        path: PathBuf,
        /// The IO or PEM error.
        reason: String,
    },
    /// The file is PEM but holds no `CERTIFICATE` block.
    #[error("certificate file {path} holds no PEM certificate")]
    NoCert {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file cannot be read, or holds no private key rustls can use.
    #[error("cannot read private key file {path}: {reason} (PKCS#8, PKCS#1 or SEC1 PEM expected)")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The IO or PEM error.
        reason: String,
    },
    /// rustls refuses the pair (the key does not match the certificate, an unsupported key
    /// type).
    #[error("certificate {cert} and key {key} do not make a usable TLS configuration: {source}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The key that encrypts TLS 1.3 session tickets cannot be made (no randomness).
    #[error("cannot create the session-ticket key: {0}")]
    Ticketer(rustls::Error),
    /// TLS asked for without any certificate pair.
    #[error("no TLS certificate given")]
    NoFiles,
}

/// Where one of the node's certificates and its key come from.
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
    /// TLS handshakes completed with a full key exchange (`result="full"`).
    pub handshakes_full: AtomicU64,
    /// TLS handshakes completed by resuming a session (ticket or cache; `result="resumed"`).
    pub handshakes_resumed: AtomicU64,
    /// Certificate reloads (SIGHUP) that replaced the configuration.
    pub reloads_ok: AtomicU64,
    /// Certificate reloads that failed; the certificates in use stayed.
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
    /// The certificate pairs; the first is the default.
    files: Vec<TlsFiles>,
    current: RwLock<Arc<ServerConfig>>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
    /// Handshake and reload counters of every `wss://` listener of the node.
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
    /// Loads the certificates and keys (the first pair is the default); creates the node's
    /// ticket keys.
    pub fn load(files: Vec<TlsFiles>) -> Result<TlsCerts, TlsError> {
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

    /// Reloads all the files; if any fails, the whole configuration in use stays. Open
    /// connections are not touched either way.
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

    /// The files reloaded on SIGHUP, the default pair first.
    pub fn files(&self) -> &[TlsFiles] {
        &self.files
    }
}

/// Certificates by the names they serve (SNI), from the DNS names in each certificate's subject
/// alternative names (lowercase). A name served by several certificates goes to the first.
#[derive(Debug)]
struct SniCerts {
    /// For a client without SNI or asking for a name no certificate serves: the first pair.
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is kept under `example.com`; it serves names one label below it.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniCerts {
    fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = name.to_ascii_lowercase();
        if let Some(ck) = self.exact.get(&name) {
            return ck;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// Loads one certificate and key; returns them with the certificate's DNS names.
fn load_pair(
    files: &TlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: files.key.clone(),
        reason: e.to_string(),
    })?;
    let names = webpki::EndEntityCert::try_from(&certs[0])
        .map_err(|e| TlsError::Cert {
            path: files.cert.clone(),
            reason: format!("the first certificate does not parse: {e}"),
        })?
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    let ck = CertifiedKey::from_der(certs, key, provider).map_err(|source| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })?;
    Ok((Arc::new(ck), names))
}

fn build_config(
    files: &[TlsFiles],
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut default = None;
    let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
    for f in files {
        let (ck, names) = load_pair(f, &provider)?;
        for name in names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()),
                None => exact.entry(name),
            }
            .or_insert_with(|| ck.clone());
        }
        default.get_or_insert(ck);
    }
    let default = default.ok_or(TlsError::NoFiles)?;
    let first = &files[0];
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Config {
            cert: first.cert.clone(),
            key: first.key.clone(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniCerts {
            default,
            exact,
            wildcard,
        }));
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
    /// A `ws://` connection.
    Plain(TcpStream),
    /// A `wss://` connection after its TLS handshake (boxed: the rustls state is large and
    /// plain connections should not pay for it).
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
                debug_assert!(s.inbuf.is_empty() && !s.counted, "TLS reading has begun");
                Pin::new(&mut s.wire.tcp).poll_read(cx, buf)
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
                debug_assert!(s.inbuf.is_empty(), "TLS reading has begun");
                s.inbuf = ciphertext;
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
            ConnStream::Tls(s) => s.wire.poll_flush_tls(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnStream::Plain(s) => Pin::new(s).poll_close(cx),
            ConnStream::Tls(s) => s.poll_close(cx),
        }
    }
}

/// A server-side TLS connection over a glommio `TcpStream`, on rustls' unbuffered API.
///
/// Nothing but rustls' own connection state is kept per connection while it is idle: ciphertext
/// is read into the shard's receive scratch ([`RX_SCRATCH_BYTES`], one per thread) and processed
/// there; records are encrypted into the shard's send scratch and written straight to the
/// socket. Only what cannot be finished in one poll is copied into the connection's own
/// buffers, which are freed as soon as they are empty:
///
/// * `inbuf`: a partial record (its rest has not arrived), or records not yet decrypted
///   because the caller's buffer is full; at most one socket read ([`RX_READ_BYTES_MAX`])
///   plus one partial record.
/// * `plain`: the rest of a decrypted record that did not fit in the caller's buffer; at most
///   one record (16 KiB).
/// * `outbuf`: ciphertext the socket has not taken yet; a write is accepted only when it is
///   empty, so it holds at most one write's records ([`SEND_BUFFER_BYTES_MAX`] of plaintext)
///   or one handshake flight.
pub struct TlsStream {
    wire: Wire,
    tls: UnbufferedServerConnection,
    certs: Arc<TlsCerts>,
    inbuf: Vec<u8>,
    plain: Vec<u8>,
    /// Bytes of `plain` already returned.
    plain_at: usize,
    /// The peer's close_notify has been processed: reads return end of stream.
    peer_closed: bool,
    /// Our close_notify has been queued.
    close_queued: bool,
    /// The handshake's outcome has been counted.
    counted: bool,
}

/// Size of each shard's receive scratch (allocated on the first TLS read of the thread).
pub const RX_SCRATCH_BYTES: usize = 64 * 1024;
/// Ciphertext read from the socket at once: at least one whole record (16 KiB of plaintext
/// plus the record overhead), more when the caller's buffer is larger.
const RX_READ_BYTES_MIN: usize = 16 * 1024 + 512;
/// At most this much ciphertext is read at once (the receive scratch also holds `inbuf`).
pub const RX_READ_BYTES_MAX: usize = RX_SCRATCH_BYTES / 2;

thread_local! {
    /// The shard's receive scratch: ciphertext is processed here, never across an await.
    static RX_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The shard's send scratch: records are encrypted here and written from here.
    static TX_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Whether `data` begins with a whole TLS record (5-byte header plus its length).
fn has_whole_record(data: &[u8]) -> bool {
    data.len() >= 5 && data.len() >= 5 + usize::from(u16::from_be_bytes([data[3], data[4]]))
}

/// The socket and the ciphertext it has not taken yet (`outbuf[out_at..]`, freed when sent).
struct Wire {
    tcp: TcpStream,
    outbuf: Vec<u8>,
    out_at: usize,
}

impl Wire {
    /// Writes `outbuf` until it is empty (`Ready`, buffer freed) or the socket is full
    /// (`Pending`, the socket has registered the task's waker).
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.outbuf.len() {
            match Pin::new(&mut self.tcp).poll_write(cx, &self.outbuf[self.out_at..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out_at += n,
            }
        }
        self.outbuf = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Appends ciphertext to the send queue.
    fn queue(&mut self, data: &[u8]) {
        if self.out_at == self.outbuf.len() {
            self.outbuf.clear();
            self.out_at = 0;
        }
        self.outbuf.extend_from_slice(data);
    }

    /// Queues a handshake record (flight, ticket, key update) rustls has for the peer.
    fn encode(&mut self, mut e: EncodeTlsData<'_, ServerConnectionData>) -> io::Result<()> {
        let mut chunk = Vec::new();
        loop {
            match e.encode(&mut chunk) {
                Ok(n) => {
                    chunk.truncate(n);
                    break;
                }
                Err(EncodeError::InsufficientSize(s)) => chunk.resize(s.required_size, 0),
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        self.queue(&chunk);
        Ok(())
    }

    /// Writes `data` to the socket as far as it takes it now and queues the rest; behind
    /// anything already queued (a record rustls owed), it is queued whole.
    fn send_now(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<()> {
        if self.out_at < self.outbuf.len() {
            self.queue(data);
            return match self.poll_flush_tls(cx) {
                Poll::Ready(Err(e)) => Err(e),
                _ => Ok(()),
            };
        }
        let mut at = 0;
        while at < data.len() {
            match Pin::new(&mut self.tcp).poll_write(cx, &data[at..]) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(k)) => at += k,
            }
        }
        if at < data.len() {
            self.queue(&data[at..]);
        }
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// Starts a server-side TLS session on an accepted socket.
    pub fn accept(tcp: TcpStream, certs: Arc<TlsCerts>) -> Result<TlsStream, rustls::Error> {
        let tls = UnbufferedServerConnection::new(certs.current())?;
        Ok(TlsStream {
            wire: Wire {
                tcp,
                outbuf: Vec::new(),
                out_at: 0,
            },
            tls,
            certs,
            inbuf: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            peer_closed: false,
            close_queued: false,
            counted: false,
        })
    }

    /// Drives rustls over `incoming` (ciphertext), writing plaintext into `out` until it is
    /// full (`out` is not empty). Returns (plaintext bytes written, bytes consumed at the front
    /// of `incoming`); the rest is a partial record or not processed yet.
    fn process(
        &mut self,
        cx: &mut Context<'_>,
        incoming: &mut [u8],
        out: &mut [u8],
    ) -> io::Result<(usize, usize)> {
        let mut written = 0;
        let mut consumed = 0;
        while written < out.len() {
            let status = self.tls.process_tls_records(&mut incoming[consumed..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    self.fail(cx, &e);
                    return Err(tls_error(e));
                }
            };
            let mut stop = false;
            match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(tls_error)?;
                        discard += rec.discard;
                        let n = rec.payload.len().min(out.len() - written);
                        out[written..written + n].copy_from_slice(&rec.payload[..n]);
                        written += n;
                        if n < rec.payload.len() {
                            debug_assert!(self.plain_at == self.plain.len());
                            self.plain = rec.payload[n..].to_vec();
                            self.plain_at = 0;
                            stop = true;
                            break;
                        }
                    }
                }
                ConnectionState::EncodeTlsData(e) => self.wire.encode(e)?,
                ConnectionState::TransmitTlsData(t) => {
                    // What the socket does not take now stays queued and goes first later.
                    if let Poll::Ready(Err(e)) = self.wire.poll_flush_tls(cx) {
                        return Err(e);
                    }
                    t.done();
                }
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    stop = true;
                }
                ConnectionState::WriteTraffic(_) => stop = true,
                ConnectionState::ReadEarlyData(_) => {
                    // max_early_data_size is 0: rustls never accepts early data here.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    ));
                }
                other => return Err(io::Error::other(format!("unexpected TLS state {other:?}"))),
            }
            consumed += discard;
            self.count_handshake();
            if stop {
                break;
            }
        }
        Ok((written, consumed))
    }

    /// After a TLS error: best effort to send the alert rustls queued.
    fn fail(&mut self, cx: &mut Context<'_>, e: &rustls::Error) {
        self.count_failure(e);
        for _ in 0..4 {
            match self.tls.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(enc)) => {
                    if self.wire.encode(enc).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
        let _ = self.wire.poll_flush_tls(cx);
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
        // Output owed from earlier (handshake flights, records the socket refused).
        if let Poll::Ready(Err(e)) = self.wire.poll_flush_tls(cx) {
            return Poll::Ready(Err(e));
        }
        // The rest of a record decrypted earlier.
        if self.plain_at < self.plain.len() {
            let n = (self.plain.len() - self.plain_at).min(buf.len());
            buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
            self.plain_at += n;
            if self.plain_at == self.plain.len() {
                self.plain = Vec::new();
                self.plain_at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        RX_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            if scratch.len() < RX_SCRATCH_BYTES {
                scratch.resize(RX_SCRATCH_BYTES, 0);
            }
            self.poll_read_with(cx, buf, &mut scratch)
        })
    }

    fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Poll<io::Result<usize>> {
        // Kept ciphertext holding a whole record is processed before reading more; once it
        // made no progress (cannot happen with a whole record, but never spin) read anyway.
        let mut must_read = false;
        loop {
            if self.peer_closed {
                return Poll::Ready(Ok(0));
            }
            let kept = self.inbuf.len();
            let want = buf.len().clamp(RX_READ_BYTES_MIN, RX_READ_BYTES_MAX);
            if scratch.len() < kept + want {
                scratch.resize(kept + want, 0);
            }
            scratch[..kept].copy_from_slice(&self.inbuf);
            self.inbuf = Vec::new();
            let mut end = kept;
            if must_read || !has_whole_record(&scratch[..kept]) {
                match Pin::new(&mut self.wire.tcp).poll_read(cx, &mut scratch[kept..kept + want]) {
                    Poll::Pending => {
                        self.inbuf = scratch[..kept].to_vec();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => {
                        // End of stream without close_notify: a truncation.
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed connection without sending TLS close_notify",
                        )));
                    }
                    Poll::Ready(Ok(n)) => end += n,
                }
            }
            let (out, used) = match self.process(cx, &mut scratch[..end], buf) {
                Ok(x) => x,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if used < end {
                self.inbuf = scratch[used..end].to_vec();
            }
            if let Poll::Ready(Err(e)) = self.wire.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            if out > 0 {
                return Poll::Ready(Ok(out));
            }
            must_read = used == 0;
        }
    }

    /// Encrypts up to [`SEND_BUFFER_BYTES_MAX`] of `buf` and starts sending it.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Records already encrypted go first; new plaintext only when they are all sent.
        std::task::ready!(self.wire.poll_flush_tls(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let plain = &buf[..buf.len().min(SEND_BUFFER_BYTES_MAX)];
        let r = TX_SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            self.encrypt_and_send(cx, plain, &mut scratch)
        });
        match r {
            Ok(true) => Poll::Ready(Ok(plain.len())),
            Ok(false) => {
                // Only before the handshake completes can there be no write state; the
                // handshake runs inside the first read, so this is not reached in practice.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Encrypts `plain` into `scratch` and writes it; what the socket refuses is queued.
    /// Returns false when the connection cannot send data yet.
    fn encrypt_and_send(
        &mut self,
        cx: &mut Context<'_>,
        plain: &[u8],
        scratch: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let Some(n) = self.write_state(cx, |w, out| w.encrypt(plain, out), scratch)? else {
            return Ok(false);
        };
        self.wire.send_now(cx, &scratch[..n])?;
        Ok(true)
    }

    /// Brings rustls to its write state (encoding anything it owes first, e.g. a key update
    /// or a ticket) and runs `f` with it into `scratch`, grown as needed. `None` when the
    /// handshake has not completed.
    fn write_state(
        &mut self,
        cx: &mut Context<'_>,
        mut f: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
        scratch: &mut Vec<u8>,
    ) -> io::Result<Option<usize>> {
        for _ in 0..16 {
            let status = self.tls.process_tls_records(&mut []);
            match status.state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut w) => loop {
                    match f(&mut w, scratch) {
                        Ok(n) => return Ok(Some(n)),
                        Err(EncryptError::InsufficientSize(s)) => {
                            scratch.resize(s.required_size, 0)
                        }
                        Err(e) => return Err(io::Error::other(e.to_string())),
                    }
                },
                ConnectionState::EncodeTlsData(e) => self.wire.encode(e)?,
                ConnectionState::TransmitTlsData(t) => {
                    if let Poll::Ready(Err(e)) = self.wire.poll_flush_tls(cx) {
                        return Err(e);
                    }
                    t.done();
                }
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Queues a close_notify alert (once the handshake is complete; before, there is nothing
    /// to close cleanly).
    fn queue_close_notify(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.tls.is_handshaking() {
            return Ok(());
        }
        let mut alert = Vec::new();
        if let Some(n) = self.write_state(cx, |w, out| w.queue_close_notify(out), &mut alert)? {
            self.wire.queue(&alert[..n]);
        }
        Ok(())
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_queued {
            self.close_queued = true;
            self.queue_close_notify(cx)?;
        }
        std::task::ready!(self.wire.poll_flush_tls(cx))?;
        Pin::new(&mut self.wire.tcp).poll_close(cx)
    }

    async fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            poll_fn(|cx| {
                if !self.close_queued {
                    self.close_queued = true;
                    self.queue_close_notify(cx)?;
                }
                self.wire.poll_flush_tls(cx)
            })
            .await?;
        }
        self.wire.tcp.shutdown(how).await.map_err(io::Error::from)
    }
}
