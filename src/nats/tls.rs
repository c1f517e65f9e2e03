//! The NATS connection's byte stream: plain TCP, or TLS over TCP with rustls' client.
//!
//! The server side (`crate::server::tls`) drives rustls' unbuffered API to keep no buffers per
//! idle device connection; here there is one connection per shard, so the buffered
//! `ClientConnection` is used as it is, its plaintext limits bounding what it holds
//! ([`TLS_BUFFER_BYTES_MAX`]). Nothing of `crate::server` is used: this module sits below the
//! bus, which sits beside the server (`docs/architecture.md`, "Floors").

use std::io::{self, Read as _, Write as _};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Most plaintext rustls holds not yet encrypted, and most ciphertext read and not yet
/// decrypted per poll.
pub(super) const TLS_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// The TLS client configuration: the CA file's roots (else the system's), the client
/// certificate if given.
pub(super) fn client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            let certs = read_certs("nats_tls_ca", ca)?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("nats_tls_ca {}: {e}", ca.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is skipped, as every client does.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = read_certs("nats_tls_cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("nats_tls_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("nats_tls_cert/nats_tls_key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The certificates of a PEM file (at least one), or why not, naming `setting`.
fn read_certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting} {}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// What the connection reads and writes.
pub(super) enum Stream {
    Plain(TcpStream),
    /// Boxed: the rustls state is large.
    Tls(Box<TlsClient>),
}

impl Stream {
    /// Starts TLS on `tcp` (the handshake runs within the first reads and writes).
    pub(super) fn tls(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<Stream, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
        let mut tls = ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
        tls.set_buffer_limit(Some(TLS_BUFFER_BYTES_MAX));
        Ok(Stream::Tls(Box::new(TlsClient {
            tcp,
            tls,
            rx: vec![0; 16 * 1024].into_boxed_slice(),
            rx_at: 0,
            rx_end: 0,
            tx: Vec::new(),
            tx_at: 0,
        })))
    }

    /// Reads what is there (0: the peer closed).
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => tls.poll_read(cx, buf),
        }
    }

    /// Writes some of `buf` (for TLS: takes it into rustls and sends what it can).
    pub(super) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => tls.poll_write(cx, buf),
        }
    }

    /// Sends everything accepted so far.
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => tls.poll_flush_tls(cx),
        }
    }

    /// Ends the writing side after everything written so far: TLS sends its `close_notify`
    /// first, then TCP its FIN. The peer reads all of it before it sees the end.
    pub(super) async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => Ok(tcp.shutdown(std::net::Shutdown::Write).await?),
            Stream::Tls(tls) => {
                tls.tls.send_close_notify();
                futures_lite::future::poll_fn(|cx| tls.poll_flush_tls(cx)).await?;
                Ok(tls.tcp.shutdown(std::net::Shutdown::Write).await?)
            }
        }
    }

    /// The plain TCP stream, for a TLS upgrade (`None` when TLS runs already).
    pub(super) fn into_tcp(self) -> Option<TcpStream> {
        match self {
            Stream::Plain(tcp) => Some(tcp),
            Stream::Tls(_) => None,
        }
    }
}

/// rustls' client over a glommio `TcpStream`.
pub(super) struct TlsClient {
    tcp: TcpStream,
    tls: ClientConnection,
    /// Ciphertext read and not yet taken by rustls: `rx[rx_at..rx_end]`.
    rx: Box<[u8]>,
    rx_at: usize,
    rx_end: usize,
    /// Ciphertext made and not yet written: `tx[tx_at..]`.
    tx: Vec<u8>,
    tx_at: usize,
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsClient {
    /// Writes every record rustls has made.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.tx_at == self.tx.len() {
                self.tx.clear();
                self.tx_at = 0;
                if !self.tls.wants_write() {
                    return Poll::Ready(Ok(()));
                }
                self.tls.write_tls(&mut self.tx)?;
                continue;
            }
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.tx[self.tx_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_at += n;
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.rx_at < self.rx_end {
                let mut pending = &self.rx[self.rx_at..self.rx_end];
                let n = self.tls.read_tls(&mut pending)?;
                self.rx_at += n;
                let state = self.tls.process_new_packets();
                if let Err(e) = state {
                    // Tell the server why (the alert is queued by rustls), then give up.
                    let _ = self.poll_flush_tls(cx);
                    return Poll::Ready(Err(tls_error(e)));
                }
                if n == 0 {
                    return Poll::Ready(Err(io::Error::other("TLS receive buffer full")));
                }
                continue;
            }
            // Handshake messages and alerts go out before waiting for the server.
            if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            let n = ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut self.rx))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            self.rx_at = 0;
            self.rx_end = n;
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // What rustls holds is bounded: older records go out first.
        ready!(self.poll_flush_tls(cx))?;
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            // Plaintext held back during the handshake fills the buffer: the handshake's reads
            // (which the driver always polls too) wake the task.
            return Poll::Pending;
        }
        let _ = self.poll_flush_tls(cx)?;
        Poll::Ready(Ok(n))
    }
}
