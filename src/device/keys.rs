//! Device-token verification keys from a JWKS document, kept current off the shards.
//!
//! This module owns reading a JWKS document from a file or an `http(s)://` URL (bounded in size
//! and time), and the `tether-jwks` helper thread that keeps the [`Verifier`]'s key set current:
//! a file is read again on SIGHUP, a URL is fetched again every `jwt_jwks_refresh` and, at most
//! once per [`EARLY_REFRESH_MIN`], as soon as a token names a `kid` the set does not have (an
//! identity provider that rotated early). A failed reload or fetch keeps the keys in use, is
//! logged and counted (`tether_jwks_reloads_total{result}`). Shards never wait for any of it:
//! they read the current set through [`Verifier::keys`], which the thread replaces at once for
//! every shard with [`Verifier::publish`].

use crate::auth::{KeySet, Verifier};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest JWKS document read, in bytes (identity providers publish a few KiB).
pub const JWKS_BYTES_MAX: usize = 1 << 20;
/// Time one fetch of a JWKS URL may take: connect, TLS, request and the whole body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two refreshes asked for by unknown `kid`s: a client sending tokens with
/// made-up `kid`s cannot make the node fetch more often than this.
pub const EARLY_REFRESH_MIN: Duration = Duration::from_secs(30);

/// Where the JWKS document is.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A file, read at start and on SIGHUP.
    File(PathBuf),
    /// An `http://` or `https://` URL, fetched at start and every `refresh`.
    Url {
        /// The document's URL (`jwt_jwks_url`).
        url: String,
        /// Time between two scheduled fetches (`jwt_jwks_refresh`).
        refresh: Duration,
    },
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url { url, .. } => f.write_str(url),
        }
    }
}

/// Reloads counted by result: `tether_jwks_reloads_total{result="ok"|"failed"}`.
#[derive(Debug, Default)]
pub struct JwksStats {
    /// Reloads that replaced the key set (`result="ok"`).
    pub ok: AtomicU64,
    /// Reloads that failed; the keys in use stayed (`result="failed"`).
    pub failed: AtomicU64,
    /// Keys in the set now.
    pub keys: AtomicU64,
}

impl JwksStats {
    /// Appends the metrics in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP tether_jwks_reloads_total JWKS reloads (SIGHUP, refresh interval, unknown kid) by result.\n\
             # TYPE tether_jwks_reloads_total counter\n\
             tether_jwks_reloads_total{{result=\"ok\"}} {}\n\
             tether_jwks_reloads_total{{result=\"failed\"}} {}\n\
             # HELP tether_jwks_keys Verification keys in use from the JWKS document.\n\
             # TYPE tether_jwks_keys gauge\n\
             tether_jwks_keys {}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.keys.load(Ordering::Relaxed),
        );
    }
}

/// Reads the document once (blocking, bounded by [`JWKS_BYTES_MAX`] and [`FETCH_TIMEOUT`]).
pub fn load(source: &JwksSource) -> Result<KeySet, String> {
    let document = match source {
        JwksSource::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
            if meta.len() > JWKS_BYTES_MAX as u64 {
                return Err(format!(
                    "{}: {} bytes, at most {JWKS_BYTES_MAX}",
                    path.display(),
                    meta.len()
                ));
            }
            std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        JwksSource::Url { url, .. } => fetch(url)?,
    };
    KeySet::from_jwks(&document).map_err(|e| format!("{source}: {e}"))
}

/// Blocks SIGHUP in the calling thread, so that every thread started afterwards inherits the
/// mask and only the server's SIGHUP thread receives it (with `sigwait`; see
/// `Server::on_hangup`). Call it on the main thread before any other thread starts.
pub fn block_sighup() -> Result<(), String> {
    // SAFETY: `set` is a valid sigset_t, initialised by sigemptyset before use; SIGHUP is a
    // valid signal number; the old mask is not wanted (null).
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("cannot block SIGHUP: error {rc}"))
    }
}

/// Loads the keys once (an error stops the start), publishes them to `verifier`, and starts
/// the `tether-jwks` thread that keeps them current. For a file, the returned sender asks for a
/// reload (the caller sends on it on SIGHUP; a request while one is pending is dropped).
pub fn start(
    source: JwksSource,
    verifier: &mut Verifier,
    stats: Arc<JwksStats>,
) -> Result<Option<flume::Sender<()>>, String> {
    if let JwksSource::Url { url, .. } = &source {
        if url.starts_with("http://") {
            tracing::warn!(%url, "the JWKS URL is plain http: whoever is on the path can replace the keys; use https");
        }
    }
    let keys = load(&source)?;
    tracing::info!(source = %source, keys = keys.len(), kids = ?keys.kids(), "JWKS loaded");
    stats.keys.store(keys.len() as u64, Ordering::Relaxed);
    verifier.publish(keys);
    let (early_tx, early_rx) = flume::bounded::<()>(1);
    if matches!(source, JwksSource::Url { .. }) {
        verifier.on_unknown_kid(early_tx);
    }
    let (hangup_tx, hangup_rx) = flume::bounded::<()>(1);
    let hangup = matches!(source, JwksSource::File(_)).then_some(hangup_tx);
    let shared = verifier.clone();
    std::thread::Builder::new()
        .name("tether-jwks".into())
        .spawn(move || run(source, shared, stats, early_rx, hangup_rx))
        .map(|_| hangup)
        .map_err(|e| format!("cannot start the JWKS thread: {e}"))
}

fn run(
    source: JwksSource,
    verifier: Verifier,
    stats: Arc<JwksStats>,
    early: flume::Receiver<()>,
    hangup: flume::Receiver<()>,
) {
    let mut last_fetch = Instant::now();
    loop {
        let why = match &source {
            JwksSource::File(_) => {
                // Every sender is gone: the node is stopping.
                if hangup.recv().is_err() {
                    return;
                }
                "SIGHUP"
            }
            JwksSource::Url { refresh, .. } => {
                match early.recv_timeout(refresh.saturating_sub(last_fetch.elapsed())) {
                    // Within EARLY_REFRESH_MIN of the last fetch the request is dropped; the
                    // next token with an unknown kid after that asks again.
                    Ok(()) if last_fetch.elapsed() < EARLY_REFRESH_MIN => continue,
                    Ok(()) => "unknown kid",
                    Err(flume::RecvTimeoutError::Timeout) => "refresh interval",
                    // Every verifier is gone: the node is stopping.
                    Err(flume::RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        last_fetch = Instant::now();
        match load(&source) {
            Ok(keys) => {
                tracing::info!(source = %source, reason = why, keys = keys.len(), kids = ?keys.kids(), "JWKS reloaded");
                stats.keys.store(keys.len() as u64, Ordering::Relaxed);
                stats.ok.fetch_add(1, Ordering::Relaxed);
                verifier.publish(keys);
            }
            Err(err) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = %source, reason = why, %err, "JWKS reload failed; the keys in use stay");
            }
        }
    }
}

/// GET `url` (http or https) on a private current-thread runtime, within [`FETCH_TIMEOUT`],
/// reading at most [`JWKS_BYTES_MAX`] of body.
fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for the JWKS fetch: {e}"))?;
    runtime.block_on(async {
        tokio::time::timeout(FETCH_TIMEOUT, fetch_async(url))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "{url}: no complete answer within {} s",
                    FETCH_TIMEOUT.as_secs()
                ))
            })
    })
}

async fn fetch_async(url: &str) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: use an http:// or https:// URL")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{url}: connect: {e}"))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host.clone());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let response = if https {
        let tls = tls_connector()?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{url}: {e}"))?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{url}: TLS: {e}"))?;
        send(hyper_util::rt::TokioIo::new(stream), request, url).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), request, url).await?
    };
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), JWKS_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| format!("{url}: body: {e} (at most {JWKS_BYTES_MAX} bytes)"))?;
    Ok(body.to_bytes().to_vec())
}

async fn send<IO>(
    io: IO,
    request: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
    url: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// TLS with the system's trusted certificate authorities.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no trusted certificate authorities found on this system".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
